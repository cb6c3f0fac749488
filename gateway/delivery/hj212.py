"""The ``hj212`` upstream: the gateway as an HJ 212-2017 data logger reporting to an environmental platform.

The packets are :mod:`protocols.hj212`'s. What the platform gets, over one TCP connection to ``address``:

- **Real-time data** (CN 2011) every ``realtime_s``: the latest value of each pollutant
  (``<code>-Rtd``) with its data flag (``<code>-Flag``). Only ever the present: a real-time upload that
  cannot be sent is not kept.
- **Minute data** (CN 2051) every ``minute_interval_min`` minutes, **hourly data** (CN 2061) and **daily
  data** (CN 2031): computed here from the ``meter.reading`` events of the routed devices: ``Min``,
  ``Avg``, ``Max`` of the readings in the interval, and ``Cou`` (the cumulative amount: the average rate
  times the interval) for a pollutant configured as a flow; each with a flag. ``DataTime`` is the start of
  the interval, in the station's local time (``timezone``).

Values come from ``meter.reading`` events (``data.values[<point>]``), a point named in ``pollutants``
becoming that pollutant code. A value's flag is ``N`` unless the device's last ``device.status`` says
otherwise (``status_flags``: ``disconnected`` -> ``B`` communication fault, ``failed`` -> ``D`` fault,
``stopped`` -> ``F`` stopped, by default) or the pollutant's ``flag_point`` carries a flag (a letter, or a
number looked up in ``flag_codes``: an analyser's status register saying maintenance or calibration).
An interval's flag is ``N`` when every reading in it was, else the last other flag seen.

Reliability: every upload is sent with Flag A (a reply is required) and waited for: the CN 9014 data
reply (or a CN 9012 ``ExeRtn=1``) acknowledges it. A reply that does not come within ``reply_timeout_s``
makes it go again with the same QN, ``retries`` times, then the connection is dropped and made again
(with backoff), and sending resumes from the first unacknowledged record. A CN 9011 with ``QnRtn`` other
than 1 (or a 9012 with ``ExeRtn`` other than 1) is a refusal: counted, logged with its reason, the record
kept and sent again after a reconnect. A reply with a bad CRC is counted by the framer and is no reply.

Durability: events are acknowledged to the buffer only once the hourly record that covers them was
acknowledged by the platform, so after an outage, or a restart, the platform gets every missed minute and
hourly record from the buffer, oldest first, each with the ``DataTime`` of its own interval (that is how
the standard tells a record's time), while real-time uploads keep going at their own pace between them.
Daily sums are built from the acknowledged hours and kept in ``state_file`` (JSON, rewritten atomically)
across restarts; without one they are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import re
import time
import zoneinfo
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from gateway.backoff import Backoff
from gateway.config.models import ReconnectConfig, SecretEnv, SecretFile, resolve_secret
from gateway.config.models import _field_error as field_error
from gateway.delivery.buffer import Stored
from gateway.delivery.upstream import (
    Cursor,
    Upstream,
    UpstreamContext,
    UpstreamOptions,
    UpstreamStats,
    save_state,
)
from protocols import hj212
from protocols.errors import DecodeError, EncodeError

__all__ = ["Hj212Options", "Hj212Upstream", "PollutantOptions"]

log = logging.getLogger("edgegw.hj212")

_READ_LIMIT: Final = 500
_MAX_QUEUED_RECORDS: Final = 64
"""Records waiting to be sent: past this, the events stay in the buffer (an outage of days costs disk,
not memory)."""
_LOG_INTERVAL_S: Final = 10.0
_FLAGS: Final = frozenset(flag.value for flag in hj212.DataFlag)
_FUTURE_S: Final = 300.0
"""A reading stamped further than this ahead of the gateway's clock is left out of the records."""

_CODE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{1,11}")
_MN_RE: Final = re.compile(r"[A-Za-z0-9]{1,24}")


# -- configuration -------------------------------------------------------------------------------------------


def _check_code(value: str) -> str:
    if not _CODE_RE.fullmatch(value):
        raise ValueError("a pollutant code is a letter and 2 to 12 letters or digits (w01018, a34004)")
    return value


def _code_or_object(schema: dict[str, Any]) -> None:
    """The JSON Schema of a pollutant: its code alone, or the object."""
    as_object = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string", "description": "The pollutant's code alone."}, as_object]


class PollutantOptions(BaseModel):
    """One pollutant: the code the platform knows it by, and how its values are read. In YAML, the code
    alone (``cod: w01018``) is ``{code: w01018}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_code_or_object)

    @model_validator(mode="before")
    @classmethod
    def _code_alone(cls, data: Any) -> Any:
        return {"code": data} if isinstance(data, str) else data

    code: Annotated[str, Field(strict=True), AfterValidator(_check_code)] = Field(
        description="The pollutant's code (HJ 212-2017 Appendix B): w01018 COD, w21003 ammonia nitrogen, "
        "w20122 total copper, w00000 waste water flow, ..."
    )
    flow: bool = Field(
        default=False,
        description="A flow (a rate): its records carry Cou, the interval's cumulative amount (average rate "
        "times the interval's length, in the rate's unit of amount).",
    )
    per: Literal["s", "min", "h"] = Field(
        default="s", description="A flow's time unit (L/s: 's'; m3/h: 'h'), for Cou."
    )
    flag_point: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None,
        description="A point of the same meter.reading event whose value is this pollutant's data flag: "
        "a letter (N, F, M, S, D, C, T, B) or a number looked up in flag_codes.",
    )
    device: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None, description="Take the point from this device only (default: any routed device)."
    )


Flag = Literal["N", "F", "M", "S", "D", "C", "T", "B"]
_FLAG_CODES: Final[dict[int, Flag]] = {0: "N", 1: "M", 2: "D", 3: "C"}


class StatusFlags(BaseModel):
    """``status_flags:`` the data flag of a device's values while its last ``device.status`` says so."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    disconnected: Flag = Field(default="B", description="The device does not answer (B: communication).")
    failed: Flag = Field(default="D", description="The device failed for good (D: fault).")
    stopped: Flag = Field(default="F", description="The gateway stopped the device (F: stopped).")


def _not_empty(
    value: dict[str, PollutantOptions],
) -> dict[str, PollutantOptions]:
    if not value or "" in value:
        raise ValueError("name at least one pollutant: point name -> code (names not empty)")
    return value


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT (10.1.2.3:9001)")
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name: Asia/Shanghai)") from None
    return value


def _check_mn(value: str) -> str:
    if not _MN_RE.fullmatch(value):
        raise ValueError("MN is 1 to 24 letters or digits")
    return value


class Hj212Options(UpstreamOptions):
    """``kind: hj212``: an HJ 212-2017 platform over TCP."""

    kind: Literal["hj212"] = Field(default="hj212", description="HJ 212-2017 over TCP.")
    address: Annotated[str, Field(strict=True), AfterValidator(_check_address)] = Field(
        description="The platform, HOST:PORT."
    )
    mn: Annotated[str, Field(strict=True), AfterValidator(_check_mn)] = Field(
        description="The station's unique id (MN), as the platform registered it (up to 24 characters)."
    )
    st: Annotated[int, Field(strict=True, ge=0, le=99)] = Field(
        description="System code (ST): 32 waste water, 31 exhaust gas, 21 surface water, 22 air quality, ..."
    )
    password: SecretStr | None = Field(
        default=None, description="The access password (PW), inline (prefer password_file or password_env)."
    )
    password_file: SecretFile | None = Field(
        default=None, description="File holding PW (read at load time; one trailing newline ignored)."
    )
    password_env: SecretEnv | None = Field(default=None, description="Environment variable holding PW.")
    realtime_s: Annotated[float, Field(strict=False, ge=0, le=86400)] = Field(
        default=30.0, description="Seconds between real-time uploads (CN 2011); 0: none."
    )
    minute_interval_min: Literal[1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30] = Field(
        default=10, description="Minutes of one minute-data record (CN 2051); divides the hour."
    )
    pollutants: Annotated[dict[str, PollutantOptions], AfterValidator(_not_empty)] = Field(
        description="Point name -> pollutant code (or {code, flow, per, flag_point, device}): which values "
        "of the routed meter.reading events are reported, and as what.",
    )
    timezone: Annotated[str, Field(strict=True), AfterValidator(_check_timezone)] = Field(
        default="Asia/Shanghai", description="The time zone of QN and DataTime (IANA name)."
    )
    decimals: Annotated[int, Field(strict=True, ge=0, le=9)] = Field(
        default=3, description="Most decimals of a value (trailing zeros dropped)."
    )
    status_flags: StatusFlags = Field(
        default_factory=StatusFlags,
        description="The data flag of a device's values while its last device.status is this state.",
    )
    flag_codes: dict[int, Flag] = Field(
        default_factory=lambda: dict(_FLAG_CODES),
        description="A flag_point's numeric value -> data flag.",
    )
    realtime_reply: bool = Field(
        default=True,
        description="Ask for the platform's reply to real-time uploads (Flag A); false for a platform that "
        "does not answer them (they are never sent again anyway). Records always ask for one.",
    )
    reply_timeout_s: Annotated[float, Field(strict=False, gt=0, le=600)] = Field(
        default=10.0, description="How long to wait for the platform's reply to one packet (OverTime)."
    )
    retries: Annotated[int, Field(strict=True, ge=0, le=10)] = Field(
        default=3, description="Times a packet goes again without a reply before reconnecting (ReCount)."
    )
    close_after_s: Annotated[float, Field(strict=False, ge=0, le=3600)] = Field(
        default=5.0, description="How long after an interval ends its late readings are still waited for."
    )
    state_file: Path | None = Field(
        default=None,
        description="Where the daily sums of the acknowledged hours are kept across restarts (JSON); "
        "default: in memory only (a restart mid-day sends that day's record with only the hours after it).",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between connection attempts."
    )

    @property
    def points(self) -> dict[str, PollutantOptions]:
        """``pollutants`` with every entry as :class:`PollutantOptions` (a bare code is ``{code: ...}``)."""
        return dict(self.pollutants)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @model_validator(mode="wrap")
    @classmethod
    def _resolve(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Hj212Options:
        options: Hj212Options = handler(data)
        names = ("password", "password_file", "password_env")
        secret = resolve_secret(info, names, options.password, options.password_file, options.password_env)
        if secret is None:
            raise field_error("password_file", "PW is required: give password_file or password_env")
        if any(c in secret.get_secret_value() for c in ";=&\r\n,"):
            raise field_error("password_file", "PW cannot hold ';', '=', '&', ',' or line breaks")
        if secret is not options.password:
            options = options.model_copy(update={"password": secret})
        return options


# -- aggregation ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stat:
    """Readings of one pollutant in one interval (or the merged hours of a day)."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    cou: float = 0.0
    flags: Counter[str] = field(default_factory=Counter)
    last_flag: str = "N"

    def add(self, value: float, flag: str) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.flags[flag] += 1
        if flag != "N":
            self.last_flag = flag

    def merge(self, other: _Stat) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.cou += other.cou
        self.flags.update(other.flags)
        if other.last_flag != "N":
            self.last_flag = other.last_flag

    @property
    def avg(self) -> float:
        return self.total / self.count

    @property
    def flag(self) -> str:
        return "N" if set(self.flags) <= {"N"} else self.last_flag

    def to_json(self) -> list[Any]:
        return [self.count, self.total, self.low, self.high, self.cou, dict(self.flags), self.last_flag]

    @classmethod
    def from_json(cls, raw: list[Any]) -> _Stat:
        count, total, low, high, cou, flags, last = raw
        return cls(int(count), float(total), float(low), float(high), float(cou), Counter(flags), str(last))


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    stats: dict[str, _Stat] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Record:
    """One upload still to be acknowledged."""

    cn: hj212.Command
    start: float
    groups: list[hj212.Group]
    seqs: list[int] = field(default_factory=list)
    """Events acknowledged to the buffer once this record is (an hourly record's)."""
    hour: dict[str, _Stat] | None = None
    """An hourly record's stats, folded into its day once acknowledged."""
    day: str | None = None
    """A daily record's day (removed from the state once acknowledged)."""


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoReply(Exception):
    pass


# -- the upstream --------------------------------------------------------------------------------------------


class Hj212Upstream(Upstream):
    """Reports the routed devices' readings to an HJ 212-2017 platform."""

    kind: ClassVar[str] = "hj212"
    Options: ClassVar[type[UpstreamOptions]] = Hj212Options

    def __init__(
        self,
        options: UpstreamOptions,
        cursor: Cursor,
        context: UpstreamContext,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(options, cursor, context)
        assert isinstance(options, Hj212Options)
        self.o: Hj212Options = options
        self._clock = clock or getattr(context, "clock", None) or time.time
        self._tz = zoneinfo.ZoneInfo(options.timezone)
        self._pw = options.password.get_secret_value() if options.password else ""
        self._by_point: dict[str, list[PollutantOptions]] = {}
        for point, p in options.points.items():
            self._by_point.setdefault(point, []).append(p)
        self._flag_points = {p.flag_point for p in options.points.values() if p.flag_point}
        self._order = {p.code: i for i, p in enumerate(options.points.values())}
        self._minute_s = options.minute_interval_min * 60
        self._status_flags: dict[str, str] = dict(options.status_flags.model_dump())
        # live view (real-time uploads)
        self._latest: dict[str, tuple[float, str, float]] = {}  # code -> (value, flag, ts)
        self._live_status: dict[str, str] = {}
        # records
        self._rec_status: dict[str, str] = {}
        self._minutes: dict[float, _Window] = {}
        self._hours: dict[float, _Window] = {}
        self._closed_until = -math.inf
        self._hour_bounds = (0.0, 0.0)
        self._watermark = -math.inf
        self._max_ts = -math.inf
        self._records: deque[_Record] = deque()
        self._record_room = asyncio.Event()
        self._record_room.set()
        self._work = asyncio.Event()
        self._realtime_due = False
        self._days: dict[str, dict[str, Any]] = self._load_state()
        self._to_ack: list[int] = []
        self._last_qn = ""
        # the connection
        self._writer: asyncio.StreamWriter | None = None
        self._replies: dict[str, asyncio.Future[hj212.Packet]] = {}
        self._connected = False
        self._idle = asyncio.Event()
        self._backoff = Backoff(options.reconnect.initial_s, options.reconnect.max_s)
        self._logged_at: dict[str, float] = {}
        self.published = self.acked = self.resent = self.refused = 0
        self.connects = self.disconnects = 0
        self.last_error: str | None = None
        self.realtime_sent = 0
        self.records_acked: Counter[int] = Counter()
        """Records acknowledged, by CN (2051, 2061, 2031)."""

    # -- the Upstream contract ---------------------------------------------------------------------------

    def stats(self) -> UpstreamStats:
        """Here ``published`` counts packets sent (real-time, records, resends), ``acked`` and ``refused``
        records: an HJ 212 record is made of many events, and an event of no record on its own."""
        return UpstreamStats(
            connected=self._connected,
            published=self.published,
            acked=self.acked,
            resent=self.resent,
            refused=self.refused,
            connects=self.connects,
            disconnects=self.disconnects,
            last_error=self.last_error,
        )

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_live())
                tasks.create_task(self._read_records())
                if self.o.realtime_s > 0:
                    tasks.create_task(self._tick_realtime())
                tasks.create_task(self._connection_loop())
        finally:  # what the platform acknowledged reaches the buffer even at a stop
            with contextlib.suppress(Exception):
                await self._flush_acks()

    async def drain(self) -> str | None:
        """Wait until every record already made was acknowledged (intervals still open are not records
        yet: their events stay buffered for the next start)."""
        while self._records:
            if not self._connected:
                return f"the platform {self.o.address} is unreachable ({self.last_error})"
            self._idle.clear()
            await self._idle.wait()
        await self._flush_acks()
        return None

    # -- reading: the live view --------------------------------------------------------------------------

    async def _read_live(self) -> None:
        after = 0
        while True:
            rows = await self.cursor.read(after, _READ_LIMIT)
            if not rows:
                await self.cursor.wait_for_new(after)
                continue
            after = rows[-1].seq
            for row in rows:
                data = self._data(row, count=False)
                if data is None:
                    continue
                if row.kind == "device.status":
                    self._live_status[row.device] = str(data.get("state", ""))
                    continue
                for code, value, flag in self._readings(row, data, self._live_status):
                    self._latest[code] = (value, flag, row.ts)

    async def _tick_realtime(self) -> None:
        period = self.o.realtime_s
        while True:
            now = self._clock()
            await asyncio.sleep(period - (now % period) if period >= 1 else period)
            self._realtime_due = True
            self._work.set()

    # -- reading: the records ----------------------------------------------------------------------------

    async def _read_records(self) -> None:
        after = 0
        while True:
            while len(self._records) >= _MAX_QUEUED_RECORDS:
                self._record_room.clear()
                await self._record_room.wait()
            rows = await self.cursor.read(after, _READ_LIMIT)
            if rows:
                after = rows[-1].seq
                for row in rows:
                    self._fold(row)
            caught_up = len(rows) < _READ_LIMIT
            watermark = self._max_ts - self.o.close_after_s
            if caught_up:
                watermark = max(watermark, self._clock() - self.o.close_after_s)
            self._watermark = watermark
            self._close(watermark)
            await self._flush_acks()
            if caught_up:
                # New events, or the next interval's end (closing it by the clock).
                next_end = min((w.end for w in self._minutes.values()), default=None)
                try:
                    async with asyncio.timeout(
                        None
                        if next_end is None
                        else max(0.05, next_end + self.o.close_after_s - self._clock())
                    ):
                        await self.cursor.wait_for_new(after)
                except TimeoutError:
                    pass

    def _data(self, row: Stored, *, count: bool) -> dict[str, Any] | None:
        if row.kind not in ("meter.reading", "device.status"):
            if count:
                self.counters["unmapped"] += 1
            return None
        try:
            data = json.loads(row.data_json)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if count:
                self.counters["unmapped"] += 1
            return None
        return data

    def _readings(
        self, row: Stored, data: dict[str, Any], statuses: dict[str, str]
    ) -> list[tuple[str, float, str]]:
        values = data.get("values")
        if not isinstance(values, dict):
            return []
        status = statuses.get(row.device, "connected")
        status_flag = self._status_flags.get(status, "N")
        out = []
        for point, value in values.items():
            for p in self._by_point.get(point, ()):
                if p.device is not None and p.device != row.device:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    self.counters["not_a_number"] += 1
                    continue
                flag = status_flag
                if flag == "N" and p.flag_point is not None:
                    flag = self._point_flag(values.get(p.flag_point))
                out.append((p.code, float(value), flag))
        return out

    def _point_flag(self, value: object) -> str:
        if isinstance(value, str) and value in _FLAGS:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and int(value) == value:
            return self.o.flag_codes.get(int(value), "N")
        return "N"

    def _fold(self, row: Stored) -> None:
        data = self._data(row, count=True)
        if data is None:
            self._to_ack.append(row.seq)
            return
        if row.kind == "device.status":
            self._rec_status[row.device] = str(data.get("state", ""))
            self._to_ack.append(row.seq)
            return
        readings = self._readings(row, data, self._rec_status)
        if not readings:
            self.counters["unmapped"] += 1
            self._to_ack.append(row.seq)
            return
        ts = row.ts
        if ts < self._closed_until:
            self.counters["late_readings"] += 1
            self._to_ack.append(row.seq)
            return
        if ts > self._clock() + _FUTURE_S:  # a device clock far ahead would close every interval early
            self.counters["future_readings"] += 1
            self._log(
                "future",
                logging.WARNING,
                "hj212 %s: %s's reading at %s is in the future; left out",
                self.name,
                row.device,
                dt.datetime.fromtimestamp(ts, self._tz).isoformat(),
            )
            self._to_ack.append(row.seq)
            return
        self._max_ts = max(self._max_ts, ts)
        m_start = ts - ts % self._minute_s
        h_start = self._hour_start(ts)
        minute = self._minutes.get(m_start)
        if minute is None:
            minute = self._minutes[m_start] = _Window(m_start, m_start + self._minute_s)
        hour = self._hours.get(h_start)
        if hour is None:
            hour = self._hours[h_start] = _Window(h_start, h_start + 3600)
        for code, value, flag in readings:
            minute.stats.setdefault(code, _Stat()).add(value, flag)
            hour.stats.setdefault(code, _Stat()).add(value, flag)
        hour.seqs.append(row.seq)

    def _hour_start(self, ts: float) -> float:
        start, end = self._hour_bounds
        if start <= ts < end:  # most readings fall in the hour of the one before
            return start
        local = dt.datetime.fromtimestamp(ts, self._tz).replace(minute=0, second=0, microsecond=0)
        start = local.timestamp()
        self._hour_bounds = (start, start + 3600)
        return start

    def _close(self, watermark: float) -> None:
        """Turn the intervals that ended by ``watermark`` into records, in time order."""
        closed: list[tuple[float, int, _Window, hj212.Command]] = []
        for start in [s for s, w in self._minutes.items() if w.end <= watermark]:
            w = self._minutes.pop(start)
            closed.append((w.end, 0, w, hj212.Command.MINUTE))
        for start in [s for s, w in self._hours.items() if w.end <= watermark]:
            w = self._hours.pop(start)
            closed.append((w.end, 1, w, hj212.Command.HOUR))
        if not closed:
            self._close_days(watermark)
            return
        closed.sort(key=lambda c: (c[0], c[1]))
        for end, _, window, cn in closed:
            self._closed_until = max(self._closed_until, end)
            record = _Record(cn, window.start, self._groups(window.start, window.end, window.stats, cn))
            if cn is hj212.Command.HOUR:
                record.seqs = window.seqs
                record.hour = window.stats
                for code, stat in window.stats.items():  # the hour's amount, for its day's sum
                    stat.cou = self._cou(code, stat, window.end - window.start)
            self._records.append(record)
        self._close_days(watermark)
        self._work.set()

    def _cou(self, code: str, stat: _Stat, seconds: float) -> float:
        for p in self.o.points.values():
            if p.code == code and p.flow:
                return stat.avg * seconds / {"s": 1.0, "min": 60.0, "h": 3600.0}[p.per]
        return 0.0

    def _groups(
        self, start: float, end: float, stats: dict[str, _Stat], cn: hj212.Command
    ) -> list[hj212.Group]:
        when = dt.datetime.fromtimestamp(start, self._tz)
        groups: list[hj212.Group] = [(("DataTime", hj212.data_time(when)),)]
        for code in sorted(stats, key=lambda c: self._order.get(c, 0)):
            stat = stats[code]
            fields: list[tuple[str, str]] = []
            cou = stat.cou if cn is hj212.Command.DAY else self._cou(code, stat, end - start)
            if any(p.code == code and p.flow for p in self.o.points.values()):
                fields.append((f"{code}-Cou", self._num(cou)))
            fields += [
                (f"{code}-Min", self._num(stat.low)),
                (f"{code}-Avg", self._num(stat.avg)),
                (f"{code}-Max", self._num(stat.high)),
                (f"{code}-Flag", stat.flag),
            ]
            groups.append(tuple(fields))
        return groups

    def _num(self, value: float) -> str:
        text = f"{value:.{self.o.decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text

    # -- days ----------------------------------------------------------------------------------------------

    def _day_of(self, start: float) -> str:
        return dt.datetime.fromtimestamp(start, self._tz).strftime("%Y%m%d")

    def _day_end(self, day: str) -> float:
        first = dt.datetime.strptime(day, "%Y%m%d").replace(tzinfo=self._tz)
        return (first + dt.timedelta(days=1)).timestamp()

    def _fold_hour(self, record: _Record) -> None:
        assert record.hour is not None
        day = self._day_of(record.start)
        state = self._days.setdefault(day, {"hours": [], "queued": False, "stats": {}})
        if record.start in state["hours"]:
            return  # folded before a restart, its events not yet acknowledged then
        state["hours"].append(record.start)
        for code, stat in record.hour.items():
            raw = state["stats"].get(code)
            merged = _Stat.from_json(raw) if raw is not None else _Stat()
            merged.merge(stat)
            state["stats"][code] = merged.to_json()
        self._save_state()

    def _close_days(self, watermark: float) -> None:
        pending_days = {self._day_of(r.start) for r in self._records if r.cn is hj212.Command.HOUR}
        pending_days |= {self._day_of(w.start) for w in self._hours.values()}
        for day, state in sorted(self._days.items()):
            if state["queued"] or self._day_end(day) > watermark or day in pending_days:
                continue
            stats = {code: _Stat.from_json(raw) for code, raw in state["stats"].items()}
            start = dt.datetime.strptime(day, "%Y%m%d").replace(tzinfo=self._tz).timestamp()
            groups = self._groups(start, self._day_end(day), stats, hj212.Command.DAY)
            self._records.append(_Record(hj212.Command.DAY, start, groups, day=day))
            state["queued"] = True
            self._work.set()

    def _load_state(self) -> dict[str, dict[str, Any]]:
        path = self.o.state_file
        if path is None:
            return {}
        try:
            raw = json.loads(path.read_text())
            days = raw["days"]
            for state in days.values():
                state["queued"] = False  # queued records died with the process: queue them again
            return dict(days)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.error("hj212 %s: state file %s unusable (%s); daily sums start afresh", self.name, path, err)
            return {}

    def _save_state(self) -> None:
        path = self.o.state_file
        if path is None:
            return
        try:
            save_state(path, {"days": self._days})
        except OSError as err:
            self._log("state", logging.ERROR, "cannot write the state file %s: %s", path, err)

    async def _flush_acks(self) -> None:
        if self._to_ack:
            seqs, self._to_ack = self._to_ack, []
            try:
                await self.cursor.ack(seqs)
            except asyncio.CancelledError:
                self._to_ack[:0] = seqs
                raise

    # -- sending -------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt = 0
        o = self.o
        while True:
            try:
                async with asyncio.timeout(o.reply_timeout_s):
                    reader, writer = await asyncio.open_connection(o.host, o.port)
            except (OSError, TimeoutError) as err:
                self.last_error = f"connecting to {o.address}: {err or 'timed out'}"
                delay = self._backoff.delay(attempt)
                attempt += 1
                self._log(
                    "connect",
                    logging.WARNING,
                    "hj212 %s: %s; retrying in %.2f s",
                    self.name,
                    self.last_error,
                    delay,
                )
                self._idle.set()
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.connects += 1
            self._connected = True
            self._writer = writer
            log.info("hj212 %s: connected to %s", self.name, o.address)
            reason = "closed"
            receiving = asyncio.create_task(self._receive(reader))
            try:
                await self._send_loop(receiving)
            except (_NoReply, _Refused, ConnectionError, OSError) as err:
                reason = str(err) or type(err).__name__
            finally:
                receiving.cancel()
                await asyncio.wait([receiving])
                self._connected = False
                self._writer = None
                for future in self._replies.values():
                    future.cancel()
                self._replies.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                self._idle.set()
            self.disconnects += 1
            self.last_error = reason
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.warning(
                "hj212 %s: connection to %s ended (%s); reconnecting in %.2f s",
                self.name,
                o.address,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._receive_until_closed(reader)
        finally:  # an exchange waiting for a reply learns at once that none will come
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection ended"))

    async def _receive_until_closed(self, reader: asyncio.StreamReader) -> None:
        framer = hj212.Hj212Framer()
        skipped = rejected_crc = rejected_length = 0
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the platform closed the connection")
            segments = framer.feed(data)
            stats = framer.stats
            if stats.bad_checksum != rejected_crc:
                self.counters["reply_bad_crc"] += stats.bad_checksum - rejected_crc
                rejected_crc = stats.bad_checksum
                self._log("bad_crc", logging.WARNING, "hj212 %s: a reply with a bad CRC, ignored", self.name)
            if stats.bad_length != rejected_length:
                self.counters["reply_bad_length"] += stats.bad_length - rejected_length
                rejected_length = stats.bad_length
            if stats.bytes_skipped != skipped:
                self.counters["reply_bytes_skipped"] += stats.bytes_skipped - skipped
                skipped = stats.bytes_skipped
            for segment in segments:
                try:
                    packet = hj212.parse_segment(segment)
                except DecodeError as err:
                    self.counters["reply_malformed"] += 1
                    self._log("malformed", logging.WARNING, "hj212 %s: malformed packet: %s", self.name, err)
                    continue
                try:
                    self._dispatch(packet)
                except DecodeError as err:  # a CP area that does not parse
                    self.counters["reply_malformed"] += 1
                    self._log("malformed", logging.WARNING, "hj212 %s: malformed packet: %s", self.name, err)

    def _dispatch(self, packet: hj212.Packet) -> None:
        cn = packet.cn
        if cn in ("9011", "9012", "9014"):
            future = self._replies.get(packet.qn or "")
            if future is None or future.done():
                self.counters["reply_unmatched"] += 1
                return
            if cn == "9014":
                future.set_result(packet)
                return
            key, table = (
                ("QnRtn", hj212.REQUEST_RESULTS) if cn == "9011" else ("ExeRtn", hj212.EXECUTION_RESULTS)
            )
            code_text = packet.field(key) or ""
            code = int(code_text) if code_text.isdigit() else -1
            if code == 1:
                if cn == "9012":
                    future.set_result(packet)
                return  # 9011 QnRtn=1: ready; the result follows
            future.set_exception(_Refused(f"CN {cn} {key}={code_text}: {table.get(code, 'unknown code')}"))
            return
        self.counters["platform_requests"] += 1
        writer = self._writer
        if writer is None:
            return
        answer = self._answer(packet)
        if answer is None:  # parameters to set, history, controls: not carried out here
            self._log(
                "request",
                logging.INFO,
                "hj212 %s: platform request CN %s not supported; refused",
                self.name,
                cn,
            )
            if packet.needs_reply:
                writer.write(hj212.encode_packet(hj212.request_reply(packet, 2)))
            return
        # The standard's exchange for a request: ready (9011), the data (same CN and QN), done (9012).
        if packet.needs_reply:
            writer.write(hj212.encode_packet(hj212.request_reply(packet, 1)))
        data = hj212.Packet(
            qn=packet.qn,
            st=f"{self.o.st:02d}",
            cn=cn,
            pw=self._pw,
            mn=self.o.mn,
            flag=hj212.VERSION_2017,
            cp=hj212.format_cp(answer),
        )
        writer.write(hj212.encode_packet(data))
        writer.write(hj212.encode_packet(hj212.execution_result(packet, 1)))

    def _answer(self, packet: hj212.Packet) -> list[hj212.Group] | None:
        """What the station answers to a platform's request it supports: its time (CN 1011) and its
        real-time interval (CN 1061); None for any other."""
        if packet.cn == "1011":
            now = dt.datetime.fromtimestamp(self._clock(), self._tz)
            pol = packet.field("PolId")
            group: hj212.Group = (("SystemTime", hj212.data_time(now)),)
            return [(("PolId", pol), *group)] if pol else [group]
        if packet.cn == "1061":
            return [(("RtdInterval", str(round(self.o.realtime_s))),)]
        return None

    async def _send_loop(self, receiving: asyncio.Task[None]) -> None:
        while True:
            if receiving.done():
                receiving.result()  # the connection's end, as an exception
            self._work.clear()
            if self._realtime_due:
                self._realtime_due = False
                await self._send_realtime()
                continue
            if self._records:
                record = self._records[0]
                await self._send_record(record)
                self._records.popleft()
                self._record_done(record)
                await self._flush_acks()
                continue
            self._idle.set()
            waiting = asyncio.ensure_future(self._work.wait())
            await asyncio.wait([waiting, receiving], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()

    def _record_done(self, record: _Record) -> None:
        self.acked += 1
        self.records_acked[int(record.cn)] += 1
        if record.hour is not None:
            self._fold_hour(record)
            self._to_ack.extend(record.seqs)
            self._close_days(self._watermark)  # its day may be complete now
        if record.day is not None:
            self._days.pop(record.day, None)
            self._save_state()
        if len(self._records) < _MAX_QUEUED_RECORDS:
            self._record_room.set()

    async def _send_realtime(self) -> None:
        if not self._latest:
            return
        now = dt.datetime.fromtimestamp(self._clock(), self._tz).replace(microsecond=0)
        groups: list[hj212.Group] = [(("DataTime", hj212.data_time(now)),)]
        for code in sorted(self._latest, key=lambda c: self._order.get(c, 0)):
            value, flag, _ = self._latest[code]
            groups.append(((f"{code}-Rtd", self._num(value)), (f"{code}-Flag", flag)))
        try:
            await self._exchange(hj212.Command.REALTIME, groups, attempts=1, reply=self.o.realtime_reply)
            self.realtime_sent += 1
        except _NoReply:
            self.counters["realtime_unacknowledged"] += 1  # the present passes: not sent again

    async def _send_record(self, record: _Record) -> None:
        try:
            await self._exchange(record.cn, record.groups, attempts=self.o.retries + 1)
        except _Refused as err:
            self.refused += 1
            self.counters["reply_refused"] += 1
            self._log(
                "refused",
                logging.WARNING,
                "hj212 %s: the platform refused CN %d of %s: %s; kept, sent again after a reconnect",
                self.name,
                record.cn,
                record.groups[0][0][1],
                err.reason,
            )
            raise

    async def _exchange(
        self, cn: hj212.Command, groups: list[hj212.Group], *, attempts: int, reply: bool = True
    ) -> None:
        head = hj212.Packet(
            qn=self._next_qn(),
            st=f"{self.o.st:02d}",
            cn=str(int(cn)),
            pw=self._pw,
            mn=self.o.mn,
            flag=hj212.VERSION_2017 | (hj212.FLAG_ACK if reply else 0),
        )
        try:
            packets = hj212.split_packets(head, groups)
        except EncodeError as err:
            self.counters["unencodable"] += 1
            self._log(
                "encode", logging.ERROR, "hj212 %s: cannot encode CN %d: %s; skipped", self.name, cn, err
            )
            return
        for packet in packets:
            await self._send_packet(packet, attempts)

    async def _send_packet(self, packet: hj212.Packet, attempts: int) -> None:
        raw = hj212.encode_packet(packet)
        if not packet.needs_reply:  # nothing to wait for
            if self._writer is None:
                raise ConnectionError("not connected")
            self._writer.write(raw)
            self.published += 1
            await self._writer.drain()
            return
        loop = asyncio.get_running_loop()
        key = packet.qn or ""
        for attempt in range(attempts):
            writer = self._writer
            if writer is None:
                raise ConnectionError("not connected")
            future: asyncio.Future[hj212.Packet] = loop.create_future()
            self._replies[key] = future
            writer.write(raw)
            self.published += 1
            if attempt:
                self.resent += 1
            try:
                await writer.drain()
                async with asyncio.timeout(self.o.reply_timeout_s):
                    await future
                return
            except TimeoutError:
                self.counters["reply_timeout"] += 1
            finally:
                self._replies.pop(key, None)
        raise _NoReply(f"no reply to CN {packet.cn} (QN {packet.qn}) after {attempts} attempt(s)")

    def _next_qn(self) -> str:
        now = dt.datetime.fromtimestamp(self._clock(), self._tz)
        qn = hj212.qn(now)
        if qn <= self._last_qn:  # one exchange, one QN: never twice the same
            qn = str(int(self._last_qn) + 1)
        self._last_qn = qn
        return qn

    def _log(self, what: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(what, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._logged_at[what] = now
            log.log(level, message, *args)
