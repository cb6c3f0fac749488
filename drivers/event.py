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


class EncodedData(dict[str, Any]):
    """Event data that carries its own compact JSON encoding, UTF-8, in ``json``.

    A driver on a hot path (tens of thousands of reads a second) fills a template instead of leaving the
    buffer to run ``json.dumps`` on every event: a quarter of the cost. ``json`` must be exactly what the
    buffer would have produced for the mapping (compact separators, no ASCII escaping, no NaN); a driver
    that uses this tests it. Treat it as read-only like any event data: a processor that wants other data
    makes a new mapping (a plain dict), which the buffer encodes itself.
    """

    __slots__ = ("json",)

    json: bytes
