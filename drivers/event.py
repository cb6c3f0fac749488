"""The one type that crosses the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    """Something a device reported.

    ``device`` is the device's name from the config; ``kind`` a dotted type (``rfid.read``,
    ``device.status``, ...); ``ts`` the event time in UTC epoch seconds (device time where the device gives
    one, else receive time); ``data`` a JSON-compatible mapping documented per kind; ``seq`` is assigned by
    the buffer when the event is committed (None before), strictly increasing per gateway, never reused.
    """

    device: str
    kind: str
    ts: float
    data: Mapping[str, Any]
    seq: int | None = None
