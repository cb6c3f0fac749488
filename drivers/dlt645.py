"""``dlt645``: DL/T 645-2007 energy meters on an RS-485 line (default 2400 baud, 8E1), or behind a
serial-to-Ethernet converter (TCP).

One device is one meter (one 12-digit address). Several meters on one line share it through
:mod:`drivers.bus`: one request at a time, fair across the meters, and a dead meter costs the others at most
its own timeout per attempt. Every ``poll_s`` the driver reads each of its ``points`` and emits one
``meter.reading`` event, each value under its name in :data:`protocols.dlt645.ITEMS` (whether the point
gave the identifier by hex or by name)::

    {"values": {"energy_active_forward": 1206.42, "voltage_a": 229.8, ...},
     "units": {"energy_active_forward": "kWh", "voltage_a": "V", ...}}

A point is a data identifier, 8 hex digits (DI3..DI0, quoted: ``"02010100"``) or a table name
(``voltage_a``); or a mapping with that identifier under ``point:`` and when to report it (the options and
their meaning are the Modbus driver's, :mod:`drivers.reporting`)::

    points:
      - energy_active_forward                                   # reported at every poll
      - {point: voltage_a, deadband: 0.5, max_interval_s: 300}  # a change > 0.5 V, or every 5 minutes
      - {point: "02020100", deadband: "5%"}                     # > 5% of the last reported current
      - {point: power_factor, report_on_change: true}           # any change

(The key is ``point``, not ``name``: a value's key in the event is always its table name, never one given
here.) A point with a ``deadband`` or ``report_on_change`` is in an event only when it changed by more than
its deadband since it was last reported, when its ``max_interval_s`` has passed, or the first time it is read
after (re)connecting; a poll with nothing to report emits no event (``polls_unchanged``).

Nothing doubtful becomes a value. A reply that fails the framer (bad checksum, no 0x16 where its length
says: ``frames_rejected``, with ``bytes_skipped`` for garbage), that does not decode (``bad_replies``) or
with a value of the wrong length or not BCD (``bad_values``; both also ``decode_errors``) is counted and the
request asked again at once (``retries`` times); a frame from another address (``wrong_address``) or for
another identifier (``unexpected_replies``) is counted and waited past, and the request is asked again if
its own reply does not come within ``timeout_s``. A point still without a good reply after the retries is
left out of that reading (``points_missed``); so is one the meter refuses with an error reply
(``meter_errors``; the reason is logged). A poll with no value emits nothing (``empty_polls``). Frames left
from an abandoned exchange are dropped (``stale_frames``).

A meter that never answers is a :class:`~drivers.errors.DeviceTimeout`: the supervisor restarts the device
with backoff, and the bus makes the meter wait its own backoff before it may claim the line again. The
counters of the shared line (bytes skipped, frames rejected) go to the meter whose exchange saw them.

Commands (:mod:`drivers.commands`), each an urgent request on the line (it takes the next turn, before the
polls queued):

- ``read``: ``{"point": "02010100"}`` (or a table name, ``voltage_a``): that identifier read now, whether it
  is polled or not; ``data`` is ``{"values": {name: value}, "units": {name: unit}}``;
- ``time_sync``: a broadcast time (control 0x08 to 999999999999) that sets the clock of every meter on the
  line (all of them hear it: one command per line is enough); ``{"ts": <epoch s>}`` sets that time, by
  default the gateway's clock now, in the meters' local time (``utc_offset_min``, by default the gateway's
  own zone). No meter answers a broadcast, so ``ok`` means it was sent; each meter applies its own rules to
  it (commonly once a day and a few minutes at most).

No point is writable: what this driver reads are measurements (energies, voltages, powers), which the
protocol has no write for. Its write data (0x14) sets parameters with the meter's password and operator
code, which this gateway neither holds nor sends; ``writable: true`` on a point is a configuration error
that says so.

The driver stands on :mod:`drivers.polled` (the schedule, its stagger and ``polls_missed``, the event) and
:mod:`drivers.link` (the link's keys and opening).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from protocols import dlt645
from protocols.errors import DecodeError, EncodeError

from . import bus
from .base import DeviceContext
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec
from .counters import DECODE_ERRORS, FramerTally
from .errors import ConnectionLost, DeviceTimeout
from .kinds import METER_READING
from .link import Parity, SerialOrTcpOptions, open_link
from .polled import PolledDevice, PolledDriver, Schedule
from .reporting import Deadband, MaxInterval, Reporter, ReportOnChange, Reports
from .transport import ByteLink

# The driver's own counters, on top of drivers.counters' (decode_errors, bytes_skipped, frames_rejected,
# polls_missed, polls_unchanged, empty_polls, polls).
BAD_REPLIES: Final = "bad_replies"
"""Replies that passed the framer but do not decode (also counted as decode_errors)."""
BAD_VALUES: Final = "bad_values"
"""Data replies whose value is of the wrong length or not BCD (also counted as decode_errors)."""
WRONG_ADDRESS: Final = "wrong_address"
"""Replies from another meter's address (a late reply, or a meter with a wrong address on the line)."""
UNEXPECTED_REPLIES: Final = "unexpected_replies"
"""Replies from this meter to another request (another identifier, a continuation)."""
STALE_FRAMES: Final = "stale_frames"
"""Frames left from an abandoned exchange, dropped before the next request."""
POINTS_MISSED: Final = "points_missed"
"""Points left out of a reading: no good reply after every attempt."""
METER_ERRORS: Final = "meter_errors"
"""Points the meter refused with an error reply (the reason is logged)."""

DEFAULT_POINTS = (
    "energy_active_forward",
    "energy_active_reverse",
    "voltage_a",
    "voltage_b",
    "voltage_c",
    "current_a",
    "current_b",
    "current_c",
    "power_active",
    "power_factor",
    "frequency",
)


_UNKNOWN_POINT = (
    "{point!r} is not a known data identifier: give 8 hex digits (DI3..DI0, e.g. '02010100') or a name such "
    "as voltage_a, current_a, power_active, energy_active_forward, frequency"
)


class Dlt645Point(BaseModel):
    """A point in its long form: the data identifier, and when its value is worth reporting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    point: str = Field(
        description="The data identifier: 8 hex digits ('02010100') or its name in the table ('voltage_a'). "
        "The value's key in the event is the table's name either way."
    )
    deadband: Deadband | None = None
    report_on_change: ReportOnChange = False
    max_interval_s: MaxInterval = None
    writable: Literal[False] = Field(
        default=False,
        description="Always false: DL/T 645 has no write for the measurements read here (its write data, "
        "0x14, sets parameters with the meter's password, which this driver does not send).",
    )

    @field_validator("writable", mode="before")
    @classmethod
    def _not_writable(cls, value: Any) -> Any:
        if value is True:
            raise ValueError(
                "a DL/T 645 point cannot be writable: the identifiers read here are measurements, which the "
                "protocol has no write for (its write data, 0x14, sets parameters with the meter's password "
                "and operator code, which this driver does not send)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _named_point(cls, data: Any) -> Any:
        if isinstance(data, dict) and "point" not in data:
            for key in ("name", "di"):
                if key in data:
                    raise ValueError(
                        f"give the data identifier as point: ..., not {key}: ... (a value's key in the "
                        "event is its table name, e.g. voltage_a)"
                    )
        return data

    @field_validator("point")
    @classmethod
    def _known(cls, text: str) -> str:
        if dlt645.find_item(text) is None:
            raise ValueError(_UNKNOWN_POINT.format(point=text))
        return text

    @property
    def item(self) -> dlt645.DataItem:
        """The point's line of the data identifier table."""
        item = dlt645.find_item(self.point)
        assert item is not None  # checked by the validator
        return item


def _point_from_text(value: Any) -> Any:
    """The short form of a point (its identifier alone) as the long one."""
    if isinstance(value, str):
        return {"point": value}
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"quote the data identifier, e.g. '02010100': unquoted, YAML reads digits as a number (here "
            f"{value!r}), dropping leading zeros or reading them as octal"
        )
    if not isinstance(value, dict | Dlt645Point):
        raise ValueError(
            "a point is a data identifier ('02010100' or a name such as voltage_a) or a mapping "
            "{point: <identifier>, deadband: ..., report_on_change: ..., max_interval_s: ...}"
        )
    return value


Point = Annotated[Dlt645Point, BeforeValidator(_point_from_text, json_schema_input_type=str | Dlt645Point)]
"""A point in either form: a string (identifier only) or a mapping (:class:`Dlt645Point`)."""


class Dlt645Options(SerialOrTcpOptions):
    baudrate: Literal[1200, 2400, 4800, 9600, 19200] = Field(default=2400, description="Serial line speed.")
    parity: Parity = Field(default="E", description="Serial parity (DL/T 645: even, 8E1).")
    address: str = Field(
        description="The meter's address: 12 digits as on its nameplate, quoted ('000102030425')."
    )
    points: list[Point] = Field(
        default_factory=lambda: [Dlt645Point(point=name) for name in DEFAULT_POINTS],
        min_length=1,
        description="Data identifiers to read each poll: 8 hex digits ('02010100') or a name ('voltage_a'); "
        "or a mapping {point: <identifier>, deadband: 0.5 | '1%', report_on_change: true, "
        "max_interval_s: 300} to report the value only when it changed.",
    )
    poll_s: float = Field(
        default=10.0, gt=0, le=86400, description="Seconds between the starts of two polls."
    )
    timeout_s: float = Field(
        default=1.0, gt=0, le=30, description="A reply not complete this long after its request is lost."
    )
    retries: int = Field(default=1, ge=0, le=5, description="Further attempts for a lost or damaged reply.")
    preamble: int = Field(
        default=4, ge=0, le=4, description="Wake-up bytes 0xFE sent before each request (0-4)."
    )

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                "quote the address: 12 digits as a string, e.g. '000102030425' (unquoted, YAML reads a "
                "number and drops its leading zeros)"
            )
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.upper() == dlt645.WILDCARD or text == dlt645.BROADCAST:
            raise ValueError(
                f"{text} is the {'wildcard' if text.upper() == dlt645.WILDCARD else 'broadcast'} address, "
                "not a meter's: give the 12 digits on the meter's nameplate"
            )
        if not dlt645.is_meter_address(text):
            raise ValueError(
                f"{value!r} is not a DL/T 645 meter address (12 BCD digits 0-9, e.g. '000102030425')"
            )
        return text

    @field_validator("points")
    @classmethod
    def _points(cls, points: list[Dlt645Point]) -> list[Dlt645Point]:
        errors: list[InitErrorDetails] = []
        seen: dict[int, str] = {}
        for index, point in enumerate(points):
            item = point.item
            if item.di in seen:
                message = f"{point.point!r} repeats {seen[item.di]!r} ({dlt645.di_text(item.di)} {item.name})"
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("dlt645_point", message.replace("{", "(").replace("}", ")")),
                        loc=(index,),
                        input=None,
                    )
                )
            else:
                seen[item.di] = point.point
        if errors:
            raise ValidationError.from_exception_data("Dlt645Options", errors)
        return points

    @property
    def items(self) -> list[dlt645.DataItem]:
        """The table lines of ``points``, in order."""
        return [point.item for point in self.points]

    @property
    def bus_key(self) -> str:
        """The line this meter hangs on: meters with the same key share it."""
        return self.link.key

    def shared_line(self) -> bus.SharedLine:
        """The line this meter hangs on and the settings every device on it must share."""
        settings: tuple[tuple[str, Hashable], ...] = (("driver", "dlt645"),)
        if self.port is not None:
            settings += (("baudrate", self.baudrate), ("parity", self.parity))
        return bus.SharedLine(self.bus_key, settings)


class BadReply(Exception):
    """A reply that must not be decoded into a value (already counted); the request is asked again."""


class Line:
    """One open link to a meter line, shared by the meters on it (the bus's link object).

    Every chunk that arrives is framed at once (the link pushes it: :mod:`drivers.transport`), so a late
    reply to an abandoned request is consumed (and discarded) rather than mistaken for the answer to the next
    one. Framer counters are charged to the meter whose exchange is running."""

    def __init__(self, lost: Callable[[BaseException], None]) -> None:
        self.framer = dlt645.Dlt645Framer()
        self.link: ByteLink | None = None
        self.tally = FramerTally(self.framer.stats)
        self._frames: deque[dlt645.Frame] = deque()
        self._arrived = asyncio.Event()
        self._lost = lost
        self._error: BaseException | None = None

    @classmethod
    async def open(cls, options: Dlt645Options, lost: Callable[[BaseException], None]) -> Line:
        """The line of ``options``, opened (the bus's opener)."""
        line = cls(lost)
        line.link = await open_link(options.link, receiver=line._received, lost=line._link_lost)
        return line

    def _received(self, data: bytes) -> None:
        self._frames.extend(self.framer.feed(data))
        self._arrived.set()

    def _link_lost(self, err: ConnectionLost) -> None:
        self._error = err
        self._arrived.set()
        self._lost(err)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()

    async def read(self, request: bytes, address: str, di: int, ctx: DeviceContext) -> dlt645.Reply:
        """Send a read-data request and return the meter's reply to it (data or error).

        Frames already framed belong to earlier, abandoned requests: they are dropped. Request frames
        (an adapter's echo) are ignored; a frame from another address or for another identifier is counted
        and waited past (the right reply may still come); a damaged frame is counted and raises
        :class:`BadReply` at once, since the reply it was is lost."""
        count = ctx.count
        stale = len(self._frames)
        if stale:
            count(STALE_FRAMES, stale)
            self._frames.clear()
        tally = self.tally
        tally.charge(count)
        assert self.link is not None
        await self.link.write(request)
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if not frame.control & dlt645.REPLY_BIT:
                    continue
                if frame.address != address:
                    count(WRONG_ADDRESS, 1)
                    continue
                try:
                    reply = dlt645.parse_reply(frame)
                except DecodeError as err:
                    count(BAD_REPLIES, 1)
                    count(DECODE_ERRORS, 1)
                    raise BadReply(str(err)) from err
                if isinstance(reply, dlt645.ErrorReply) and reply.function == dlt645.Control.READ_DATA:
                    return reply
                if isinstance(reply, dlt645.DataReply) and reply.di == di and reply.seq is None:
                    return reply
                count(UNEXPECTED_REPLIES, 1)
            rejected = tally.rejected_since()
            tally.charge(count)
            if self._error is not None:
                raise ConnectionLost(str(self._error)) from self._error
            if rejected:
                raise BadReply(f"{rejected} damaged frame(s) on the line")
            self._arrived.clear()
            await self._arrived.wait()


class ReadArgs(CommandArgs):
    """``{"point": "02010100"}`` or ``{"point": "voltage_a"}``."""

    point: str = Field(
        description="The data identifier to read now: 8 hex digits ('02010100') or its table name "
        "('voltage_a')."
    )


class TimeSyncArgs(CommandArgs):
    """``{}`` (the gateway's clock now), or ``{"ts": 1764772529, "utc_offset_min": 480}``."""

    ts: float | None = Field(
        None, gt=946_684_800, lt=4_102_444_800, description="The time to set, epoch seconds (default: now)."
    )
    utc_offset_min: int | None = Field(
        None,
        ge=-720,
        le=840,
        description="The meters' local time, in minutes east of UTC (480: China Standard Time); default: the "
        "gateway's own time zone.",
    )


class Dlt645Driver(PolledDriver[Dlt645Options, Line]):
    name: ClassVar[str] = "dlt645"
    Options: ClassVar[type[Dlt645Options]] = Dlt645Options
    emits: ClassVar[frozenset[str]] = frozenset({METER_READING})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "read": CommandSpec(ReadArgs, "Read one data identifier now; its value in data."),
        "time_sync": CommandSpec(
            TimeSyncArgs, "Broadcast time (0x08): every meter on the line sets its clock (none answers)."
        ),
    }

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        if name == "read":
            assert isinstance(args, ReadArgs)
            item = dlt645.find_item(args.point)
            if item is None:
                raise CommandRefused(_UNKNOWN_POINT.format(point=args.point))
            session = self.live_session()
            assert isinstance(session, _Meter)
            value = await session.read_now(item)
            return {"values": {item.name: value}, "units": {item.name: item.unit} if item.unit else {}}
        if name == "time_sync":
            assert isinstance(args, TimeSyncArgs)
            ts = time.time() if args.ts is None else args.ts
            if args.utc_offset_min is None:
                when = datetime.fromtimestamp(ts).astimezone()
            else:
                when = datetime.fromtimestamp(ts, timezone(timedelta(minutes=args.utc_offset_min)))
            try:
                frame = dlt645.broadcast_time(when, self.options.preamble)
            except EncodeError as err:
                raise CommandRefused(str(err)) from err
            session = self.live_session()

            async def send(line: Line) -> None:
                assert line.link is not None
                await line.link.write(frame)

            await session.port.request(send, timeout=self.options.timeout_s, urgent=True)
            return {"time": when.replace(microsecond=0).isoformat(), "address": dlt645.BROADCAST}
        return await super().command(name, args)

    def __init__(
        self, device: str, options: Dlt645Options, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock``: the monotonic seconds that ``max_interval_s`` is measured in."""
        super().__init__(device, options)
        self._requests = [
            (item, dlt645.read_data(options.address, item.di, options.preamble)) for item in options.items
        ]
        self._refused: set[int] = set()
        """Identifiers the meter refused already (logged at WARNING the first time only)."""
        self._clock = clock

    async def open_line(self, lost: Callable[[BaseException], None]) -> Line:
        return await Line.open(self.options, lost)

    def session(self, port: bus.Port[Line], ctx: DeviceContext) -> _Meter:
        # A new session reports every value afresh: what was last reported may be long gone.
        points = self.options.points
        reports = Reports(
            {point.item.name: Reporter.of(point) for point in points},
            {point.item.name: point.item.unit for point in points if point.item.unit},
            self._clock,
        )
        return _Meter(self, port, ctx, [Schedule(self.options.poll_s, reports)])


class _Meter(PolledDevice[Line, Schedule]):
    """One session of one meter on its line."""

    def __init__(
        self, driver: Dlt645Driver, port: bus.Port[Line], ctx: DeviceContext, schedules: list[Schedule]
    ) -> None:
        super().__init__(port, ctx, schedules)
        self.driver = driver

    def describe(self) -> str:
        return f"meter {self.driver.options.address}"

    async def read_now(self, item: dlt645.DataItem) -> float:
        """``item`` read now, in an urgent turn of the line (the next); CommandFailed if the meter refuses
        it, its replies stay damaged or it does not answer."""
        options = self.driver.options
        ctx = self.ctx
        request = dlt645.read_data(options.address, item.di, options.preamble)

        async def exchange(line: Line) -> float | dlt645.ErrorReply:
            reply = await line.read(request, options.address, item.di, ctx)
            if isinstance(reply, dlt645.ErrorReply):
                return reply
            assert isinstance(reply, dlt645.DataReply)
            try:
                return dlt645.decode_value(item, reply.payload)
            except DecodeError as err:
                ctx.count(BAD_VALUES, 1)
                ctx.count(DECODE_ERRORS, 1)
                raise BadReply(str(err)) from err

        what = f"{item.name} ({dlt645.di_text(item.di)})"
        try:
            result = await self.port.request(
                exchange,
                timeout=options.timeout_s,
                attempts=1 + options.retries,
                retry_on=(BadReply,),
                urgent=True,
            )
        except BadReply as err:
            raise CommandFailed(f"{what}: no good reply ({err})") from err
        except DeviceTimeout as err:
            raise CommandFailed(f"{what}: the meter did not answer ({err})") from err
        if isinstance(result, dlt645.ErrorReply):
            raise CommandFailed(f"{what}: the meter refused: {result.describe()}")
        return result

    async def poll(self, schedule: Schedule) -> Mapping[str, object]:
        """Read every point once, one request per bus turn; the values of those the meter gave.

        A point whose replies were all damaged, or that the meter refuses, is left out of this reading; a
        meter that does not answer at all raises DeviceTimeout (from the bus)."""
        driver = self.driver
        options = driver.options
        address = options.address
        ctx = self.ctx
        values: dict[str, float] = {}
        for item, request in driver._requests:

            async def exchange(
                line: Line, request: bytes = request, item: dlt645.DataItem = item
            ) -> float | dlt645.ErrorReply:
                reply = await line.read(request, address, item.di, ctx)
                if isinstance(reply, dlt645.ErrorReply):
                    return reply
                assert isinstance(reply, dlt645.DataReply)
                try:
                    return dlt645.decode_value(item, reply.payload)
                except DecodeError as err:
                    ctx.count(BAD_VALUES, 1)
                    ctx.count(DECODE_ERRORS, 1)
                    raise BadReply(str(err)) from err

            try:
                result = await self.port.request(
                    exchange,
                    timeout=options.timeout_s,
                    attempts=1 + options.retries,
                    retry_on=(BadReply,),
                )
            except BadReply as err:
                ctx.count(POINTS_MISSED, 1)
                ctx.log.debug("%s (%s): %s", item.name, dlt645.di_text(item.di), err)
                continue
            if isinstance(result, dlt645.ErrorReply):
                ctx.count(METER_ERRORS, 1)
                level = logging.DEBUG if item.di in driver._refused else logging.WARNING
                driver._refused.add(item.di)
                ctx.log.log(level, "%s (%s): %s", item.name, dlt645.di_text(item.di), result.describe())
                continue
            values[item.name] = result
        return values
