"""Per-device processors between the drivers and the buffer (see :mod:`gateway.processors.base`).

- :class:`RfidSmoothing` (options :class:`SmoothingOptions`, the ``smoothing:`` block of an RFID device):
  arrivals, departures, zone moves and lane counts out of raw tag reads.
"""

from gateway.processors.base import Chain, Processor
from gateway.processors.rfid import RfidSmoothing, SmoothingOptions, zone_of

__all__ = ["Chain", "Processor", "RfidSmoothing", "SmoothingOptions", "zone_of"]
