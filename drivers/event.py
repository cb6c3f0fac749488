"""The one type that crosses the pipeline."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from json import loads as _loads
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


class EncodedData(Mapping[str, Any]):
    """Event data carried as its own compact JSON encoding (UTF-8 bytes, ``json``), decoded only when read.

    A driver on a hot path (tens of thousands of reads a second) fills a template instead of leaving the
    buffer to run ``json.dumps`` on every event (a quarter of the cost), and builds no dict at all: the
    buffer stores ``json`` as it is, so an event that nobody reads as a mapping (no processor on its device)
    never has one. That also halves what a queued event weighs (about 340 bytes instead of 770 for a read),
    which is what the bounded queue holds when commits fall behind. Read as a mapping (a processor, a test),
    it decodes ``json`` once and keeps the result.

    ``json`` must be exactly what the buffer would have produced for the mapping it decodes to (compact
    separators, no ASCII escaping, no NaN); a driver that uses this tests it. Read-only: a processor that
    wants other data makes a new mapping (a plain dict), which the buffer encodes itself.
    """

    __slots__ = ("_decoded", "json")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._decoded: dict[str, Any] | None = None

    def _mapping(self) -> dict[str, Any]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = _loads(self.json)
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def get(self, key: str, default: Any = None) -> Any:
        return self._mapping().get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedData):
            return self.json == other.json or self._mapping() == other._mapping()
        if isinstance(other, Mapping):
            return self._mapping() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mapping: unhashable, like dict

    def __repr__(self) -> str:
        return f"EncodedData({self.json.decode()!r})"
