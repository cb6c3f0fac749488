"""Device drivers, and what every driver shares: the event, the driver contract, the error tree, transports.

A driver never imports the runtime (``gateway``); the runtime finds drivers through :mod:`drivers.registry`.
"""
