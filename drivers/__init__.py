"""Device drivers, and what every driver shares.

One module per device family (``r2000``, ``llrp``, ``modbus``, ``dlt645``), standing on:

- ``base``: the driver contract (:class:`~drivers.base.Driver`, :class:`~drivers.base.DeviceContext`);
- ``session`` and ``polled``: the two templates, for devices that push frames and devices that are asked;
- ``link`` and ``transport``: where a device is (:class:`~drivers.link.LinkOptions`) and the byte links to
  it (serial, TCP, TLS), pulled or pushed;
- ``bus`` and ``interfaces``: a line shared by devices asked in turn, an interface heard by many;
- ``counters`` and ``kinds``: the counter names and event kinds, each with one meaning;
- ``event``, ``errors``, ``reporting``, ``rfid``, ``registry``: the event, the error tree, report on
  change, what RFID drivers share, the lazy registry.

A driver never imports the runtime (``gateway``); the runtime finds drivers through :mod:`drivers.registry`.
"""
