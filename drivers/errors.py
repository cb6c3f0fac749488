"""The driver error tree. The supervisor decides what to do by branch.

::

    DriverError
     +-- ConfigurationError      the device's options cannot work: the device stops for good
     |    +-- MissingDependencyError  an optional package the driver needs is not installed
     +-- TransientError          retried by the supervisor with backoff
          +-- DeviceUnavailable  the port or host cannot be opened / connected
          +-- ConnectionLost     the link dropped while reading (EOF, reset, port unplugged)
          +-- DeviceTimeout      the device stopped answering within its deadline
          +-- ProtocolFailure    the device answers, but not with what the protocol says (after resync failed)

Translate a library's exception at the driver boundary with ``raise ... from err``. An ``OSError`` escaping
a driver is treated as transient too, so a forgotten translation never stops a device for good.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error."""


class ConfigurationError(DriverError):
    """The device's options cannot work; not retried."""


class MissingDependencyError(ConfigurationError):
    """An optional package this driver needs is not installed."""


class TransientError(DriverError):
    """A failure that may pass: the supervisor restarts the device after a backoff."""


class DeviceUnavailable(TransientError):
    """The port or host could not be opened or connected."""


class ConnectionLost(TransientError):
    """The link dropped while in use."""


class DeviceTimeout(TransientError):
    """The device did not answer within its deadline."""


class ProtocolFailure(TransientError):
    """The device's replies make no sense for its protocol."""
