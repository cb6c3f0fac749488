"""Tag smoothing for RFID readers: arrivals, departures, zone moves and lane counts out of raw reads.

A reader reports a tag many times a second while it is in the field; an operator wants one event when a
vehicle (or container, or asset) arrives, one when it leaves, which lane or zone it is in, and how many
passed per lane per minute. :class:`RfidSmoothing` turns a device's ``rfid.read`` events into those, and
drops the raw reads unless ``forward_reads`` is set (the roadside default: only arrivals and departures
leave the box). Events of other kinds pass through untouched.

Zones: a read's zone is ``zones[antenna]``, else the read's ``antenna_name`` (the driver's name for the
port), else the antenna number as text. A tag's zone is the zone of its first read; it *moves* when another
zone has been stronger by more than ``move_hysteresis_db`` on every read for ``move_holdoff_s``. A zone's
strength for a tag is a moving average of the RSSI of its reads there (the newest read weighs half); a zone
that has not read the tag for ``depart_after_s`` no longer counts (so a tag that left a zone's field moves to
wherever it is still read, even more weakly); reads without RSSI give a zone a floor strength of -200 dBm.

Events (``ts`` in UTC epoch seconds; ``epc_uri`` is present only when the EPC decodes, see
:mod:`protocols.epc`):

``rfid.arrived``, ts = the read's time. A tag not tracked (new, or back after it departed) was read.
    ``epc``, ``epc_uri``, ``zone``, ``antenna``, ``rssi_dbm`` (of this read, or null), ``first_seen``.
``rfid.moved``, ts = the read's time. The tag's strongest zone changed.
    ``epc``, ``epc_uri``, ``zone`` (the new one), ``from_zone``, ``antenna`` (of the read that decided),
    ``rssi_dbm`` (the new zone's strength, or null without RSSI), ``from_rssi_dbm`` (the old zone's, null
    when it no longer reads the tag), ``first_seen``, ``dwell_s`` (time spent in ``from_zone``).
``rfid.departed``, ts = ``last_seen`` (when the tag was last read: the best estimate of when it left; the
    event itself comes ``depart_after_s`` later, from :meth:`RfidSmoothing.tick`, or at once when the tag
    is read again after that gap, before its new ``rfid.arrived``).
    ``epc``, ``epc_uri``, ``zone`` (its last), ``first_seen``, ``last_seen``, ``dwell_s`` (last_seen -
    first_seen), ``count`` (reads), ``antennas`` (a list, by antenna number, of ``{"antenna", "zone",
    "count", "rssi_peak_dbm", "rssi_mean_dbm"}``; the RSSI figures null when no read carried one),
    ``reason``: ``timeout`` (unseen for ``depart_after_s``), ``evicted`` (dropped to make room under
    ``max_tags``: the least recently seen tag goes, counted in ``evicted``) or ``stopped`` (tracked when the
    device stopped: :meth:`RfidSmoothing.flush`).
``rfid.flow``, ts = ``period_end``. One per lane per period, zero included (a chart shows a gap as zero,
    not as missing data), emitted by ``tick`` once ``flow_grace_s`` has passed after the period's end.
    ``lane``, ``period_start``, ``period_end`` (UTC epoch seconds, multiples of ``flow_period_s``: a 60 s
    period ends on a whole minute), ``count`` (distinct tags that *arrived* in that lane during the period,
    by their arrival time; a tag that moves into a lane is not counted again, so the lanes add up to the
    traffic), ``partial`` (true for the period in which counting started: it covers only part of it).

Filters (``include``, ``exclude``: EPC hex prefixes, case-insensitive, or EPC pattern URIs) are applied
before tracking: a tag they refuse is never tracked and its reads are dropped, even with ``forward_reads``.
Times in the data are epoch seconds as the reads carried them; ``dwell_s`` is rounded to the millisecond.

Every arrival is followed, sooner or later, by exactly one departure: by timeout, eviction or flush. The
state is bounded: ``max_tags`` tracked tags, 64 antennas per tag, max(``max_tags``, 1000) distinct tags
per lane and period for the uniqueness of counts (more are still counted, without deduplication), and 64
open periods.

Counters (:meth:`RfidSmoothing.counters`): ``tracked`` (a gauge), ``arrived``, ``departed``, ``moved``,
``evicted``, ``filtered`` (reads refused by the filters), ``invalid_reads`` (no usable ``epc`` or
``antenna``), ``antennas_overflow`` (reads from a tag's 65th antenna on, kept out of its statistics),
``flows``, ``flow_uncounted`` (lane arrivals no flow counts: their period was emitted already, the event
time lagging the ticks by more than ``flow_grace_s``, or it would hold more than 64 periods open: a device
clock far ahead of the ticks) and
``flow_periods_skipped`` (zero periods not emitted after a long gap between ticks).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from drivers.event import Event
from drivers.kinds import RFID_ARRIVED, RFID_DEPARTED, RFID_FLOW, RFID_MOVED, RFID_READ
from gateway.processors.base import Processor
from protocols.epc import EpcPattern, epc_uri, parse_pattern

__all__ = ["RfidSmoothing", "SmoothingOptions", "zone_of"]

NO_RSSI_DBM: Final = -200.0
"""The strength of a zone whose reads carry no RSSI: weaker than any real reading."""
SMOOTHING: Final = 0.5
"""Weight of the newest read in a zone's moving-average strength."""
MAX_ANTENNAS_PER_TAG: Final = 64
MIN_UNIQUE_PER_PERIOD: Final = 1000
"""Lane counts remember max(max_tags, this) distinct tags per lane and period: a tag beyond that is counted
without deduplication (no real lane sees that many vehicles in a period)."""
MAX_OPEN_PERIODS: Final = 64
"""Lane-count periods held open at once (a device clock far ahead of the ticks cannot grow this)."""
MAX_CATCHUP_PERIODS: Final = 1440
"""After a long gap between ticks (a suspended box, a clock step), at most this many zero-count periods are
emitted per lane; periods that counted arrivals are always emitted."""

ZoneName = Annotated[str, Field(min_length=1, max_length=64)]
AntennaId = Annotated[int, Field(ge=0, le=65535)]
_HEX = re.compile(r"[0-9A-Fa-f]+")


def _filter_entry(entry: str) -> str:
    """An include/exclude entry: an EPC pattern URI (checked) or an EPC hex prefix (upper-cased)."""
    if entry.startswith("urn:"):
        parse_pattern(entry)  # its ValueError says what is wrong
        return entry
    if _HEX.fullmatch(entry):
        return entry.upper()
    raise ValueError(
        f"{entry!r} is neither an EPC hex prefix (hex digits, e.g. '3008') nor an EPC pattern URI "
        "(e.g. 'urn:epc:pat:sgtin-96:3.0614141.*.*')"
    )


FilterEntry = Annotated[str, AfterValidator(_filter_entry)]


class SmoothingOptions(BaseModel):
    """``smoothing:`` under an RFID device: turns its raw reads into arrivals, departures, moves and lane
    counts (see :mod:`gateway.processors.rfid`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depart_after_s: float = Field(
        default=5.0, gt=0, le=86400, strict=True, description="A tag unseen for this long has departed."
    )
    zones: dict[AntennaId, ZoneName] = Field(
        default_factory=dict,
        description="Antenna number -> zone name. Antennas not listed take the driver's antenna name, else "
        "their number as the zone.",
    )
    lanes: tuple[ZoneName, ...] = Field(
        default=(), description="Zones that are lanes: each gets an rfid.flow event per flow_period_s."
    )
    flow_period_s: int = Field(
        default=60,
        ge=1,
        le=86400,
        strict=True,
        description="Lane count period in seconds; it divides a day, so periods align to the clock (a "
        "60 s period ends on every whole minute).",
    )
    flow_grace_s: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        strict=True,
        description="A period's counts are emitted this long after it ends, so that reads stamped just "
        "before the end but processed after it are still counted.",
    )
    move_hysteresis_db: float = Field(
        default=3.0,
        ge=0,
        le=100,
        strict=True,
        description="A tag moves to another zone only when that zone is stronger by more than this (dB).",
    )
    move_holdoff_s: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        strict=True,
        description="...and has stayed so, on every read, for this long (s).",
    )
    include: tuple[FilterEntry, ...] = Field(
        default=(),
        description="Track only tags matching one of these: EPC hex prefixes (e.g. '3008') or EPC pattern "
        "URIs (e.g. 'urn:epc:pat:sgtin-96:3.0614141.*.*'). Empty: every tag.",
    )
    exclude: tuple[FilterEntry, ...] = Field(
        default=(), description="Never track tags matching one of these (same forms as include)."
    )
    max_tags: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        strict=True,
        description="Most tags tracked at once; beyond it the least recently seen departs (reason "
        "'evicted', counted).",
    )
    forward_reads: bool = Field(
        default=False,
        strict=True,
        description="Pass the raw rfid.read events on as well (default: drop them).",
    )

    @field_validator("flow_period_s")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 86400 % value:
            raise ValueError(
                f"{value} s does not divide a day (86400 s), so periods could not align to the clock: use "
                "e.g. 10, 15, 30, 60, 300, 900 or 3600"
            )
        return value

    @field_validator("lanes")
    @classmethod
    def _distinct_lanes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for lane in value:
            if lane in seen:
                raise ValueError(f"lane {lane!r} is listed twice")
            seen.add(lane)
        return value

    def lanes_without_antenna(self, antenna_names: Mapping[int, str | None]) -> list[str]:
        """The lanes that none of a device's antennas (number -> the driver's name for it) falls in: for a
        config check that knows the device's antennas, since a lane may be named by the driver's antenna
        names rather than by ``zones``."""
        reachable = {zone_of(self.zones, antenna, name) for antenna, name in antenna_names.items()}
        reachable.update(self.zones.values())
        return [lane for lane in self.lanes if lane not in reachable]


def zone_of(zones: Mapping[int, str], antenna: int, antenna_name: str | None) -> str:
    """A read's zone: the configured one, else the driver's antenna name, else the antenna number."""
    zone = zones.get(antenna)
    if zone is None:
        zone = antenna_name if antenna_name else str(antenna)
    return zone


# --------------------------------------------------------------------------------------------------------
# State (plain classes with slots: this is the per-read path)


class _AntennaStats:
    __slots__ = ("count", "rssi_count", "rssi_peak", "rssi_sum", "zone")

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.count = 0
        self.rssi_count = 0
        self.rssi_sum = 0.0
        self.rssi_peak = -math.inf


class _ZoneSignal:
    __slots__ = ("last_seen", "strength")

    def __init__(self, ts: float) -> None:
        self.strength: float | None = None
        self.last_seen = ts


class _Tag:
    __slots__ = (
        "antennas",
        "candidate",
        "candidate_since",
        "count",
        "epc",
        "first_seen",
        "last_seen",
        "signals",
        "uri",
        "zone",
        "zone_since",
    )

    def __init__(self, epc: str, uri: str | None, ts: float, zone: str) -> None:
        self.epc = epc
        self.uri = uri
        self.first_seen = ts
        self.last_seen = ts
        self.count = 0
        self.zone = zone
        self.zone_since = ts
        self.candidate: str | None = None
        self.candidate_since = ts
        self.antennas: dict[int, _AntennaStats] = {}
        self.signals: dict[str, _ZoneSignal] = {}


class _LaneCount:
    __slots__ = ("extra", "tags")

    def __init__(self) -> None:
        self.tags: set[str] = set()
        self.extra = 0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class RfidSmoothing(Processor):
    """Smooths one device's ``rfid.read`` events (see the module's docstring for the events it emits)."""

    def __init__(self, device: str, options: SmoothingOptions) -> None:
        self.device = device
        self.options = options
        self._depart = options.depart_after_s
        self._zones = dict(options.zones)
        self._hysteresis = options.move_hysteresis_db
        self._holdoff = options.move_holdoff_s
        self._max_tags = options.max_tags
        self._forward = options.forward_reads
        self._tags: OrderedDict[str, _Tag] = OrderedDict()
        """Tracked tags, least recently read first."""
        self._include_prefixes = tuple(e for e in options.include if not e.startswith("urn:"))
        self._include_patterns = tuple(parse_pattern(e) for e in options.include if e.startswith("urn:"))
        self._exclude_prefixes = tuple(e for e in options.exclude if not e.startswith("urn:"))
        self._exclude_patterns = tuple(parse_pattern(e) for e in options.exclude if e.startswith("urn:"))
        self._filtering = bool(options.include or options.exclude)
        self._rejected: dict[str, None] = {}
        """EPCs the filters refused, so a refused tag read thousands of times is matched once (bounded)."""
        self._lanes = options.lanes
        self._lane_set = frozenset(options.lanes)
        self._period = options.flow_period_s
        self._unique_cap = max(options.max_tags, MIN_UNIQUE_PER_PERIOD)
        self._grace = options.flow_grace_s
        self._flow_open: int | None = None
        """Start of the oldest period whose counts are not yet emitted."""
        self._flow_started_at = 0.0
        self._buckets: dict[int, dict[str, _LaneCount]] = {}
        # counters
        self.arrived = 0
        self.departed = 0
        self.moved = 0
        self.evicted = 0
        self.filtered = 0
        self.invalid_reads = 0
        self.antennas_overflow = 0
        self.flow_uncounted = 0
        self.flow_periods_skipped = 0
        self.flows = 0

    # ---------------------------------------------------------------------------------------------- API

    @property
    def tracked(self) -> int:
        """Tags tracked now."""
        return len(self._tags)

    def counters(self) -> dict[str, int]:
        """``tracked`` is a gauge; the rest count since the processor was made."""
        return {
            "tracked": len(self._tags),
            "arrived": self.arrived,
            "departed": self.departed,
            "moved": self.moved,
            "evicted": self.evicted,
            "filtered": self.filtered,
            "invalid_reads": self.invalid_reads,
            "antennas_overflow": self.antennas_overflow,
            "flows": self.flows,
            "flow_uncounted": self.flow_uncounted,
            "flow_periods_skipped": self.flow_periods_skipped,
        }

    def describe(self, epc: str) -> dict[str, Any] | None:
        """A tracked tag's state, shaped like an ``rfid.departed`` event's data without ``reason``; None
        when the tag is not tracked."""
        tag = self._tags.get(epc)
        return None if tag is None else self._summary(tag)

    def process(self, event: Event) -> list[Event]:
        if event.kind != RFID_READ:
            return [event]
        data = event.data
        epc = data.get("epc")
        antenna = data.get("antenna")
        if antenna is None:
            antenna = 0
        if type(epc) is not str or not epc or type(antenna) is not int:
            self.invalid_reads += 1
            return [event] if self._forward else []
        ts = event.ts
        rssi = data.get("rssi_dbm")
        if rssi is not None and type(rssi) is not int and not (type(rssi) is float and math.isfinite(rssi)):
            rssi = None  # not a number (or NaN, which JSON cannot carry): as if the reader gave none
        zone = self._zones.get(antenna)
        if zone is None:
            name = data.get("antenna_name")
            zone = name if type(name) is str and name else str(antenna)
        tags = self._tags
        tag = tags.get(epc)
        out: list[Event] = []
        if tag is None:
            if self._filtering and not self._admit(epc):
                self.filtered += 1
                return out
            tag = self._arrive(epc, ts, zone, antenna, rssi=rssi, out=out)
        elif ts - tag.last_seen >= self._depart:
            # Read again after a gap the ticks have not reported yet: the old visit is over.
            del tags[epc]
            out.append(self._depart_event(tag, "timeout"))
            tag = self._arrive(epc, ts, zone, antenna, rssi=rssi, out=out)
        else:
            tags.move_to_end(epc)
            if ts > tag.last_seen:  # noqa: PLR1730 - max() is a call, and this is the per-read path
                tag.last_seen = ts
        tag.count += 1
        stats = tag.antennas.get(antenna)
        if stats is None:
            if len(tag.antennas) >= MAX_ANTENNAS_PER_TAG:
                self.antennas_overflow += 1
                if self._forward:
                    out.append(event)
                return out
            stats = tag.antennas[antenna] = _AntennaStats(zone)
        stats.count += 1
        signal = tag.signals.get(zone)
        if signal is None:
            signal = tag.signals[zone] = _ZoneSignal(ts)
        elif ts > signal.last_seen:
            signal.last_seen = ts
        if rssi is not None:
            stats.rssi_count += 1
            stats.rssi_sum += rssi
            if rssi > stats.rssi_peak:  # noqa: PLR1730 - as above
                stats.rssi_peak = rssi
            strength = signal.strength
            signal.strength = rssi if strength is None else strength + SMOOTHING * (rssi - strength)
        if zone != tag.zone or tag.candidate is not None:
            self._consider_move(tag, ts, antenna, out)
        if self._forward:
            out.append(event)
        return out

    def tick(self, now: float) -> list[Event]:
        out: list[Event] = []
        tags = self._tags
        if tags:
            limit = now - self._depart
            expired = []
            for epc, tag in tags.items():
                if tag.last_seen > limit:
                    break
                expired.append(epc)
            for epc in expired:
                out.append(self._depart_event(tags.pop(epc), "timeout"))
        if self._lanes:
            self._close_periods(now, out)
        return out

    def flush(self) -> list[Event]:
        """Every tracked tag departs, with reason ``stopped`` (the gateway is stopping: without this its
        arrivals would never get their departure). Lane counts of open periods are not emitted: they
        would be partial."""
        out = [self._depart_event(tag, "stopped") for tag in self._tags.values()]
        self._tags.clear()
        return out

    # ----------------------------------------------------------------------------------------- internals

    def _admit(self, epc: str) -> bool:
        if epc in self._rejected:
            return False
        hex_epc = epc.upper()
        ok = True
        if self._include_prefixes or self._include_patterns:
            ok = hex_epc.startswith(self._include_prefixes) or _any_match(self._include_patterns, hex_epc)
        if ok and (hex_epc.startswith(self._exclude_prefixes) or _any_match(self._exclude_patterns, hex_epc)):
            ok = False
        if not ok:
            if len(self._rejected) >= self._max_tags:
                self._rejected.clear()
            self._rejected[epc] = None
        return ok

    def _arrive(
        self, epc: str, ts: float, zone: str, antenna: int, *, rssi: float | None, out: list[Event]
    ) -> _Tag:
        tags = self._tags
        if len(tags) >= self._max_tags:
            _, oldest = tags.popitem(last=False)
            self.evicted += 1
            out.append(self._depart_event(oldest, "evicted"))
        uri = epc_uri(epc)
        tag = tags[epc] = _Tag(epc, uri, ts, zone)
        self.arrived += 1
        data: dict[str, Any] = {
            "epc": epc,
            "epc_uri": uri,
            "zone": zone,
            "antenna": antenna,
            "rssi_dbm": rssi,
            "first_seen": ts,
        }
        if uri is None:
            del data["epc_uri"]
        out.append(Event(self.device, RFID_ARRIVED, ts, data))
        if zone in self._lane_set:
            self._count_arrival(zone, epc, ts)
        return tag

    def _consider_move(self, tag: _Tag, ts: float, antenna: int, out: list[Event]) -> None:
        depart = self._depart
        current_zone = tag.zone
        current = best_strength = -math.inf  # a zone that no longer reads the tag
        best: str | None = None
        for zone, signal in tag.signals.items():
            if ts - signal.last_seen >= depart:
                continue
            strength = NO_RSSI_DBM if signal.strength is None else signal.strength
            if zone == current_zone:
                current = strength
            elif strength > best_strength:
                best, best_strength = zone, strength
        if best is None or not best_strength > current + self._hysteresis:
            tag.candidate = None
            return
        if tag.candidate != best:
            tag.candidate = best
            tag.candidate_since = ts
        if ts - tag.candidate_since < self._holdoff:
            return
        data: dict[str, Any] = {"epc": tag.epc}
        if tag.uri is not None:
            data["epc_uri"] = tag.uri
        data.update(
            zone=best,
            from_zone=tag.zone,
            antenna=antenna,
            rssi_dbm=None if best_strength == NO_RSSI_DBM else round(best_strength, 1),
            from_rssi_dbm=None if current in (NO_RSSI_DBM, -math.inf) else round(current, 1),
            first_seen=tag.first_seen,
            dwell_s=round(ts - tag.zone_since, 3),
        )
        tag.zone = best
        tag.zone_since = ts
        tag.candidate = None
        self.moved += 1
        out.append(Event(self.device, RFID_MOVED, ts, data))

    def _summary(self, tag: _Tag) -> dict[str, Any]:
        data: dict[str, Any] = {"epc": tag.epc}
        if tag.uri is not None:
            data["epc_uri"] = tag.uri
        antennas = []
        for antenna in sorted(tag.antennas):
            stats = tag.antennas[antenna]
            measured = stats.rssi_count > 0
            antennas.append(
                {
                    "antenna": antenna,
                    "zone": stats.zone,
                    "count": stats.count,
                    "rssi_peak_dbm": stats.rssi_peak if measured else None,
                    "rssi_mean_dbm": _rounded(stats.rssi_sum / stats.rssi_count) if measured else None,
                }
            )
        data.update(
            zone=tag.zone,
            first_seen=tag.first_seen,
            last_seen=tag.last_seen,
            dwell_s=round(tag.last_seen - tag.first_seen, 3),
            count=tag.count,
            antennas=antennas,
        )
        return data

    def _depart_event(self, tag: _Tag, reason: str) -> Event:
        self.departed += 1
        data = self._summary(tag)
        data["reason"] = reason
        return Event(self.device, RFID_DEPARTED, tag.last_seen, data)

    # Lane counts ----------------------------------------------------------------------------------------

    def _start_flows(self, t: float) -> None:
        self._flow_open = int(t // self._period) * self._period
        self._flow_started_at = t

    def _count_arrival(self, lane: str, epc: str, ts: float) -> None:
        if self._flow_open is None:
            self._start_flows(ts)
        assert self._flow_open is not None
        start = int(ts // self._period) * self._period
        bucket = self._buckets.get(start)
        if bucket is None:
            if start < self._flow_open or len(self._buckets) >= MAX_OPEN_PERIODS:
                self.flow_uncounted += 1  # its period was emitted already, or the clock is far ahead
                return
            bucket = self._buckets[start] = {}
        count = bucket.get(lane)
        if count is None:
            count = bucket[lane] = _LaneCount()
        if len(count.tags) < self._unique_cap:
            count.tags.add(epc)
        elif epc not in count.tags:
            count.extra += 1

    def _close_periods(self, now: float, out: list[Event]) -> None:
        period = self._period
        if self._flow_open is None:
            self._start_flows(now)
        assert self._flow_open is not None
        first = self._flow_open
        # The last period to close is the latest whose end + grace <= now.
        last = int((now - self._grace) // period) * period - period
        if last < first:
            return
        zero_from = max(first, last - (MAX_CATCHUP_PERIODS - 1) * period)
        if zero_from > first:
            self.flow_periods_skipped += (zero_from - first) // period
            for start in sorted(s for s in self._buckets if s < zero_from):
                self._emit_period(start, out)
        for start in range(zero_from, last + period, period):
            self._emit_period(start, out)
        self._flow_open = last + period

    def _emit_period(self, start: int, out: list[Event]) -> None:
        bucket = self._buckets.pop(start, None) or {}
        end = start + self._period
        partial = start < self._flow_started_at < end
        for lane in self._lanes:
            count = bucket.get(lane)
            n = 0 if count is None else len(count.tags) + count.extra
            data = {"lane": lane, "period_start": start, "period_end": end, "count": n, "partial": partial}
            out.append(Event(self.device, RFID_FLOW, float(end), data))
            self.flows += 1


def _any_match(patterns: tuple[EpcPattern, ...], epc: str) -> bool:
    return any(p.matches(epc) for p in patterns)
