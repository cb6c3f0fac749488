"""Position stamping: the events of a device carry where they happened, from a GPS receiver's latest fix.

A device (or the whole gateway, ``gateway: {position_from: gps}``) names a device whose driver emits
``gps.fix`` (``position_from: gps``). Its events then carry::

    "position": {"lat": 30.2614, "lon": 120.1702, "time": "2026-12-03T09:27:25.000Z"}

the latest fix that receiver made, reported upstream or not (the gps driver shares every fix through the
runner's ``share_fix``, :data:`drivers.gps.ShareFix`; a receiver's ``gps.fix`` events count too), if that
fix is within the receiver's ``max_fix_age_s`` of the event's time; otherwise the event goes on without a
position, counted as ``position_stale`` on the device (``edgegw_driver_counter``). ``device.status`` events
are not stamped.

The cost on the hot path is one dictionary lookup and a comparison per event; the event's data is wrapped in
a :class:`Positioned` record, whose JSON is the data's own JSON with the fix's pre-encoded position spliced
in (a tens-of-thousands-of-reads-a-second reader keeps its lazy :class:`~drivers.event.Record`\\ s: nothing
is built as a dict that was not before).

:class:`Positions` keeps the latest fix of every receiver (the runtime calls :meth:`Positions.record` with
the fixes those devices share and emit); :meth:`Positions.stamper` gives a device's :class:`Stamper`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from drivers.event import RECORD_TYPES, Event, Record, encode
from drivers.kinds import DEVICE_STATUS

__all__ = ["DEFAULT_MAX_AGE_S", "POSITION_STALE", "Fix", "Positioned", "Positions", "Stamper"]

DEFAULT_MAX_AGE_S: Final = 10.0
"""How old a fix may be when its receiver says nothing of it (the gps driver's default ``max_fix_age_s``)."""

POSITION_STALE: Final = "position_stale"
"""Events of a stamped device that went on without a position: no fix yet, or none young enough."""


@dataclass(frozen=True, slots=True)
class Fix:
    """A receiver's latest reported fix, ready to stamp: its time (epoch seconds), the ``position``
    mapping and that mapping's JSON."""

    ts: float
    position: Mapping[str, Any]
    json: bytes
    suffix: bytes = b""
    """What follows a JSON object's members to add the position: ``,"position":{...}}``."""

    def __post_init__(self) -> None:
        if not self.suffix:
            object.__setattr__(self, "suffix", b',"position":' + self.json + b"}")


class Positions:
    """The latest reported fix of each receiver, and how old it may be to stamp, by device name."""

    __slots__ = ("latest", "max_age_s")

    def __init__(self) -> None:
        self.latest: dict[str, Fix] = {}
        self.max_age_s: dict[str, float] = {}
        """Each receiver's ``max_fix_age_s`` (set when it starts: a reload that changes it applies)."""

    def receiver(self, device: str, max_age_s: float) -> Callable[[Event], None]:
        """Declare ``device`` a receiver whose fixes may be ``max_age_s`` old; what to call with its
        ``gps.fix`` events."""
        self.max_age_s[device] = max_age_s
        return self.record

    def record(self, event: Event) -> None:
        """Keep ``event`` (a ``gps.fix``) as its device's latest fix (a fix older than the one kept, from a
        receiver whose clock went back, replaces it too: it is what the receiver says now)."""
        data = event.data
        try:
            position = {"lat": float(data["lat"]), "lon": float(data["lon"]), "time": str(data["time"])}
        except (KeyError, TypeError, ValueError):
            return
        self.latest[event.device] = Fix(event.ts, position, encode(position).encode())

    def stamper(self, source: str, count: Callable[[str, int], None]) -> Stamper:
        """What stamps a device's events with ``source``'s fix, no further from the event's time than that
        receiver's ``max_fix_age_s``; ``count`` is the device's counter (:data:`POSITION_STALE`)."""
        return Stamper(self, source, count)


class Stamper:
    """Stamps one device's events (see the module docstring)."""

    __slots__ = ("_ages", "_count", "_latest", "source")

    def __init__(self, positions: Positions, source: str, count: Callable[[str, int], None]) -> None:
        self._latest = positions.latest
        self._ages = positions.max_age_s
        self.source = source
        self._count = count

    def _fix(self, ts: float) -> Fix | None:
        fix = self._latest.get(self.source)
        if fix is None or abs(ts - fix.ts) > self._ages.get(self.source, DEFAULT_MAX_AGE_S):
            return None
        return fix

    def __call__(self, event: Event) -> None:
        """Give ``event`` its position, in place (its ``data`` becomes a :class:`Positioned`)."""
        if event.kind == DEVICE_STATUS:
            return
        fix = self._fix(event.ts)
        if fix is None:
            self._count(POSITION_STALE, 1)
            return
        event.data = Positioned(event.data, fix)

    def batch(self, kind: str, ts: float, n: int) -> Fix | None:
        """The fix for ``n`` events of ``kind`` at ``ts`` (one decision for a batch: wrap each one's data in
        a :class:`Positioned` with it), or None (not stamped; counted unless a status)."""
        if kind == DEVICE_STATUS:
            return None
        fix = self._fix(ts)
        if fix is None:
            self._count(POSITION_STALE, n)
        return fix


class Positioned(Record):
    """An event's data with ``position`` added: built or encoded only when asked, like the data it wraps
    (whose own laziness it keeps). The wrapped data must not have a ``position`` of its own (no driver's
    has: the key is the gateway's)."""

    __slots__ = ("_fix", "_inner")

    def __init__(self, inner: Mapping[str, Any], fix: Fix) -> None:
        self._encoded = None
        self._decoded = None
        self._inner = inner
        self._fix = fix

    def _build(self) -> dict[str, Any]:
        data = dict(self._inner)
        data["position"] = dict(self._fix.position)
        return data

    def _encode(self) -> bytes:
        inner = self._inner
        if type(inner) in RECORD_TYPES:
            body: bytes = inner.json  # type: ignore[attr-defined]  # a Record, by RECORD_TYPES
        else:
            body = encode(inner).encode()  # ValueError for a NaN: the buffer then sanitises the mapping
        if body == b"{}":
            return b'{"position":' + self._fix.json + b"}"
        return body[:-1] + self._fix.suffix
