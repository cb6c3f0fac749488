"""Device simulators on loopback (pty and TCP), built on the same ``protocols`` codecs the drivers use.

Never imports ``drivers`` or ``gateway``: a simulator that shared the driver's code could not catch the
driver's mistakes.
"""
