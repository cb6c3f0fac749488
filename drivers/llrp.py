"""``llrp``: network UHF RFID readers (Impinj, Zebra, ...) speaking LLRP 1.1 (EPCglobal) over TCP, port 5084.

The session, as the standard lays it out: the reader speaks first, with a READER_EVENT_NOTIFICATION carrying a
ConnectionAttemptEvent (status 0 lets the client in; any other is reported and retried with backoff). Then
GET_READER_CAPABILITIES (the configured antennas must exist), SET_READER_CONFIG (which events to report,
the default report spec, a KEEPALIVE every ``keepalive_s``), DELETE_ROSPEC 0 (whatever an earlier client
left), ADD_ROSPEC (one AISpec over the configured antennas, running until stopped, a report every
``report_every_n_tags`` tags), ENABLE_ROSPEC and START_ROSPEC; the reader is then *connected*. With
``report_period_ms`` the driver also asks for what the reader holds (GET_REPORT) that often, so a quiet lane
still reports within the period: this works on every LLRP 1.0.1 reader, where the time-based report triggers
are LLRP 1.1 only.

Each TagReportData becomes an ``rfid.read`` event, with the R2000 driver's field names where they mean the
same thing; ``ts`` is the tag's FirstSeenTimestampUTC (the receive time when the reader has no UTC clock)::

    {"epc": "300833B2DDD9014000000001", "pc": "3000", "antenna": 1, "antenna_name": "lane1-in",
     "rssi_dbm": -61, "channel_index": 7, "seen_count": 1}

Fields the reader did not send are None. READER_EVENT_NOTIFICATIONs become ``device.status`` events whose
``state`` tells them from the supervisor's connected/disconnected: ``antenna_connected`` /
``antenna_disconnected`` (with ``antenna`` and ``antenna_name``), ``buffer_warning`` (``fill_percent``: the
reader holds reports faster than they are read), ``buffer_overflow`` (reports lost), ``reader_exception``,
``connection_attempt`` (another client tried to connect), each with a ``detail`` sentence. An unsolicited
ERROR_MESSAGE is a ``device.status`` with state ``reader_error`` and is logged; one that answers a request,
or a response whose LLRPStatus is not success, fails the session with the reader's status in the reason.

Failures: every KEEPALIVE is answered with KEEPALIVE_ACK; ``keepalive_misses`` periods without one is a
:class:`~drivers.errors.DeviceTimeout`. A length field that lies (the stream can no longer be framed) is a
:class:`~drivers.errors.ProtocolFailure`; a connection dropped in the middle of a message is a
:class:`~drivers.errors.ConnectionLost`; the supervisor reconnects with backoff. A message or tag that does
not decode is counted (``decode_errors``) and skipped; unknown vendor parameters are skipped and counted
(``params_skipped``), never an error. On shutdown the driver sends CLOSE_CONNECTION and waits briefly for its
response.

Commands (:mod:`drivers.commands`), carried out in the session between two messages, the reports read and
emitted meanwhile as always:

- ``stop`` / ``start``: STOP_ROSPEC / START_ROSPEC of the gateway's ROSpec (the inventory pauses and
  resumes; asking for the state it is in already changes nothing and asks the reader nothing); a reconnected
  reader is started again, as at every connect;
- ``set_power``: ``{"dbm": 30.0}`` for every configured antenna, or ``{"dbm": 27.5, "antennas": [2]}``:
  SET_READER_CONFIG with an AntennaConfiguration per antenna whose RFTransmitter names the reader's power
  level of exactly that many dBm (from its TransmitPowerLevelTableEntry list, read at connect); a power the
  reader does not offer is refused with the nearest levels it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import Field, field_validator, model_validator

from protocols import llrp
from protocols.errors import DecodeError

from . import bus
from .base import DeviceContext, DriverOptions
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec, NoArgs
from .counters import DECODE_ERRORS
from .errors import ConfigurationError, ConnectionLost, DeviceTimeout, DeviceUnavailable, ProtocolFailure
from .event import Record
from .kinds import DEVICE_STATUS, RFID_READ
from .link import LinkOptions, TlsOptions
from .rfid import ReadShape, UriCache
from .session import StreamDriver, StreamSession
from .transport import ByteLink

AntennaId = Annotated[int, Field(ge=1, le=65535)]
AntennaName = Annotated[str, Field(min_length=1, max_length=64)]

# The driver's own counters, on top of drivers.counters' (decode_errors, bytes_skipped, frames_rejected).
TRUNCATED_MESSAGES: Final = "truncated_messages"
"""Connections that dropped in the middle of a message."""
KEEPALIVES: Final = "keepalives"
"""KEEPALIVEs answered."""
READER_ERRORS: Final = "reader_errors"
"""ERROR_MESSAGEs the reader sent on its own."""
UNKNOWN_MESSAGES: Final = "unknown_messages"
"""Messages of a type this client does not know (a vendor's): skipped."""
UNEXPECTED_MESSAGES: Final = "unexpected_messages"
"""Known messages that answer nothing we asked (a response to another client's request, say)."""
PARAMS_SKIPPED: Final = "params_skipped"
"""Parameters skipped because this client does not know them (vendor extensions)."""
READER_EVENTS: Final = "reader_events"
"""Reader events that are not reported as device.status (hopping, GPI, ROSpec, AISpec, ...)."""

CLOSE_TIMEOUT_S: Final = 1.0
"""How long shutdown waits for CLOSE_CONNECTION_RESPONSE."""
INVENTORY_SPEC_ID: Final = 1
MANUFACTURERS: Final = {25882: "Impinj"}
"""IANA private enterprise numbers of reader makers, for the connected detail."""
EVENTS: Final = (
    (llrp.ReaderEventType.HOPPING, False),
    (llrp.ReaderEventType.GPI, False),
    (llrp.ReaderEventType.ROSPEC, False),
    (llrp.ReaderEventType.REPORT_BUFFER_FILL_WARNING, True),
    (llrp.ReaderEventType.READER_EXCEPTION, True),
    (llrp.ReaderEventType.RF_SURVEY, False),
    (llrp.ReaderEventType.AISPEC, False),
    (llrp.ReaderEventType.AISPEC_WITH_SINGULATION, False),
    (llrp.ReaderEventType.ANTENNA, True),
)
"""The reader events asked for (LLRP 1.0.1's list: SpecLoop is 1.1 only)."""
CONTENT: Final = llrp.TagReportContent(
    antenna=True, channel_index=True, peak_rssi=True, first_seen=True, seen_count=True, pc=True
)
"""What each TagReportData carries besides the EPC."""


PORT: Final = 5084
TLS_PORT: Final = 5085
"""LLRP's IANA ports: plain, and over TLS."""


class LlrpOptions(DriverOptions):
    host: str = Field(min_length=1, description="The reader's host name or IP address.")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The reader's LLRP port (default: the standard's, 5084, or 5085 with tls).",
    )
    tls: bool = Field(default=False, description="LLRP over TLS (the standard's port 5085).")
    ca_file: str | None = Field(
        default=None,
        description="With tls: the CA bundle that signed the reader's certificate (default: the system's).",
    )
    cert_file: str | None = Field(
        default=None, description="With tls: a client certificate, if the reader wants one (and key_file)."
    )
    key_file: str | None = Field(default=None, description="With tls: the client certificate's key.")
    tls_check_hostname: bool = Field(
        default=True,
        description="With tls: the certificate must name `host`. Readers often carry certificates for a name "
        "nobody uses; false still verifies the chain.",
    )
    antennas: dict[AntennaId, AntennaName] = Field(
        default_factory=lambda: {1: "antenna-1"},
        description="Antenna ports to inventory and their names (lane or zone).",
    )
    report_every_n_tags: int | None = Field(
        default=100,
        ge=1,
        le=65535,
        description="The reader sends a report every this many tag reads (None: only on period).",
    )
    report_period_ms: int | None = Field(
        default=250,
        ge=10,
        le=3_600_000,
        description="Ask for the reads the reader holds this often (GET_REPORT), so a quiet lane still "
        "reports within the period (None: only every N tags).",
    )
    keepalive_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="The reader sends a KEEPALIVE this often (0: none, no watchdog).",
    )
    keepalive_misses: int = Field(
        default=3, ge=1, le=100, description="This many keepalive periods without a KEEPALIVE: reconnect."
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="TCP connect, and the reader's first word."
    )
    reply_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Longest wait for the answer to a request."
    )
    rospec_id: int = Field(
        default=1, ge=1, le=0xFFFFFFFF, description="The ROSpec this gateway adds to the reader."
    )
    reset_to_factory_default: bool = Field(
        default=False, description="Reset the reader's configuration to its factory defaults at each connect."
    )
    llrp_version: Literal[1, 2] = Field(default=1, description="1: LLRP 1.0.1 (every reader), 2: LLRP 1.1.")
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=64 << 20,
        description="A message longer than this is taken for a length field that lies: reconnect.",
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value!r}")
        return value

    @model_validator(mode="after")
    def _sane(self) -> LlrpOptions:
        if not self.antennas:
            raise ValueError("antennas: at least one antenna is needed")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("ca_file, cert_file and key_file need tls: true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if self.report_every_n_tags is None and self.report_period_ms is None:
            raise ValueError("give report_every_n_tags, report_period_ms, or both")
        return self

    def exclusive_link(self) -> str:
        """A reader takes one LLRP client at a time: this device owns the connection."""
        return bus.tcp_key(self.host, self.reader_port)

    @property
    def reader_port(self) -> int:
        if self.port is not None:
            return self.port
        return TLS_PORT if self.tls else PORT

    @property
    def link(self) -> LinkOptions:
        """The reader's TCP (or TLS) link."""
        tls = None
        if self.tls:
            tls = TlsOptions(
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
                check_hostname=self.tls_check_hostname,
            )
        return LinkOptions(
            host=self.host, tcp_port=self.reader_port, tls=tls, connect_timeout_s=self.connect_timeout_s
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The client's TLS context (chain always verified), or None without tls."""
        tls = self.link.tls
        return tls.context() if tls is not None else None

    def report_spec(self) -> llrp.RoReportSpec:
        """Reports every N tags (0: only when asked, or at the end of the ROSpec, which never ends)."""
        return llrp.RoReportSpec(
            llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, self.report_every_n_tags or 0, CONTENT
        )

    def rospec(self) -> llrp.RoSpec:
        """Started by START_ROSPEC, stopped by nothing but the next client: one AISpec over the antennas."""
        inventory = llrp.AiSpec(
            antennas=tuple(sorted(self.antennas)),
            stop_trigger=llrp.StopTrigger.NULL,
            inventory=((INVENTORY_SPEC_ID, llrp.AIR_PROTOCOL_C1G2),),
        )
        return llrp.RoSpec(self.rospec_id, (inventory,), report=self.report_spec())


class SetPowerArgs(CommandArgs):
    """``{"dbm": 30.0}``, or ``{"dbm": 27.5, "antennas": [2]}``."""

    dbm: float = Field(
        ge=-100, le=100, description="Transmit power in dBm: one of the reader's power levels (e.g. 30.25)."
    )
    antennas: list[AntennaId] | None = Field(
        None,
        min_length=1,
        description="The antennas to set (configured ones); default: every configured one.",
    )


class LlrpDriver(StreamDriver[LlrpOptions]):
    name: ClassVar[str] = "llrp"
    Options: ClassVar[type[LlrpOptions]] = LlrpOptions
    emits: ClassVar[frozenset[str]] = frozenset({RFID_READ, DEVICE_STATUS})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "start": CommandSpec(NoArgs, "START_ROSPEC: resume the inventory."),
        "stop": CommandSpec(NoArgs, "STOP_ROSPEC: pause the inventory (until start, or a reconnect)."),
        "set_power": CommandSpec(
            SetPowerArgs,
            "Set the transmit power of the configured antennas (or some) to a level the reader has.",
        ),
    }

    def link(self) -> LinkOptions:
        return self.options.link

    def session(self, link: ByteLink, ctx: DeviceContext) -> _Session:
        return _Session(link, self.options, ctx)

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        session = self.live
        if name not in self.commands:
            return await super().command(name, args)
        if name == "set_power":
            assert isinstance(args, SetPowerArgs)
            unknown = sorted(set(args.antennas or ()) - set(self.options.antennas))
            if unknown:
                configured = ", ".join(str(a) for a in sorted(self.options.antennas))
                raise CommandRefused(f"antenna {unknown[0]} is not configured on this reader ({configured})")
        if not isinstance(session, _Session):
            raise CommandFailed(f"device {self.device!r} is not connected")
        action: Callable[[], Awaitable[CommandData]]
        if name == "set_power":
            assert isinstance(args, SetPowerArgs)
            index, cdbm = session.power_level(args.dbm)  # refused here: nothing reached the reader
            antennas = sorted(args.antennas or self.options.antennas)

            def action() -> Awaitable[CommandData]:
                return session.set_power(antennas, index, cdbm)
        else:

            def action() -> Awaitable[CommandData]:
                return session.run_rospec(name == "start")

        return await session.call(action)


class _Session(StreamSession[llrp.Frame, LlrpOptions]):
    """One connection: requests and their answers, and every message the reader sends on its own."""

    rejections: ClassVar[tuple[str, ...]] = ("bad_length", "bad_version")
    device_noun: ClassVar[str] = "reader"

    def __init__(self, link: ByteLink, options: LlrpOptions, ctx: DeviceContext) -> None:
        self._framer = llrp.LlrpFramer(max_length=options.max_message_bytes)
        super().__init__(link, options, ctx, self._framer)
        self.next_id = 1
        self.last_keepalive = self.loop.time()
        self.uris = UriCache()
        self._shape = ReadShape(options.antennas, self.uris)
        self.power_table: dict[int, int] = {}
        """The reader's transmit power levels (index -> centi-dBm), from its capabilities."""
        self.rospec_active = False
        self._idle_wait: asyncio.Timeout | None = None

    # ---------------------------------------------------------------- the sequence

    async def start(self) -> str:
        await self.wait_for_admission()
        return await self.configure()

    async def wait_for_admission(self) -> None:
        """The reader's ConnectionAttemptEvent: status 0 lets us in."""
        deadline = self.loop.time() + self.options.connect_timeout_s
        while True:
            got = await self._next(deadline)
            if got is None:
                raise DeviceTimeout(
                    f"no ConnectionAttemptEvent from the reader within {self.options.connect_timeout_s:g} s"
                )
            _, message = got
            if isinstance(message, llrp.ReaderEventNotification):
                for event in message.events:
                    if isinstance(event, llrp.ConnectionAttemptEvent):
                        if not event.ok:
                            raise DeviceUnavailable(
                                f"the reader refused the connection: ConnectionAttemptEvent status "
                                f"{event.status} ({event.text})"
                            )
                        return
            await self._handle(got[0], message)

    async def configure(self) -> str:
        """Capabilities, configuration and the ROSpec, started; returns what the reader is."""
        opts = self.options
        answer = await self.request(llrp.GetReaderCapabilities(), "GET_READER_CAPABILITIES")
        caps = llrp.device_capabilities(answer.params)
        self.power_table = llrp.transmit_power_table(answer.params)
        if caps is not None and caps.max_antennas:
            missing = sorted(a for a in opts.antennas if a > caps.max_antennas)
            if missing:
                raise ConfigurationError(
                    f"antennas {missing}: the reader has antenna ports 1..{caps.max_antennas} only"
                )
        keepalive = llrp.KeepaliveSpec(opts.keepalive_s > 0, round(opts.keepalive_s * 1000))
        await self.request(
            llrp.SetReaderConfig(
                reset_to_factory_default=opts.reset_to_factory_default,
                event_notifications=EVENTS,
                report=opts.report_spec(),
                keepalive=keepalive,
            ),
            "SET_READER_CONFIG",
        )
        self.last_keepalive = self.loop.time()
        await self.request(llrp.DeleteRoSpec(0), "DELETE_ROSPEC")
        await self.request(llrp.AddRoSpec(opts.rospec()), "ADD_ROSPEC")
        await self.request(llrp.EnableRoSpec(opts.rospec_id), "ENABLE_ROSPEC")
        await self.request(llrp.StartRoSpec(opts.rospec_id), "START_ROSPEC")
        self.rospec_active = True
        antennas = ",".join(str(a) for a in sorted(opts.antennas))
        if caps is None:
            return f"LLRP reader, antennas {antennas}"
        maker = MANUFACTURERS.get(caps.manufacturer, f"PEN {caps.manufacturer}")
        return f"LLRP reader {maker} model {caps.model}, firmware {caps.firmware}, antennas {antennas}"

    async def stream(self) -> None:
        """Read until the connection fails: reports, keepalives, events; GET_REPORT every period."""
        opts = self.options
        loop = self.loop
        period = None if opts.report_period_ms is None else opts.report_period_ms / 1000
        watchdog = opts.keepalive_s * opts.keepalive_misses if opts.keepalive_s > 0 else None
        next_report = loop.time() + period if period is not None else None
        while True:
            await self.serve_calls()
            keepalive_due = None if watchdog is None else self.last_keepalive + watchdog
            deadlines = [d for d in (next_report, keepalive_due) if d is not None]
            got = await self._next_or_woken(min(deadlines) if deadlines else None)
            if got is not None:
                frame, message = got
                await self._handle(frame, message)
                if isinstance(message, llrp.RoAccessReport):
                    # Backpressure: while the pipeline is congested, stop reading; the reader holds its
                    # reports (and says so with buffer warnings). That wait is not the reader's silence.
                    self.last_keepalive += await self.room()
            now = loop.time()
            if watchdog is not None and now - self.last_keepalive > watchdog:
                raise DeviceTimeout(
                    f"no KEEPALIVE from the reader for {now - self.last_keepalive:.1f} s "
                    f"({opts.keepalive_misses} periods of {opts.keepalive_s:g} s missed)"
                )
            if next_report is not None and period is not None and now >= next_report:
                await self.send(llrp.GetReport())
                next_report += period
                if next_report <= now:  # fell behind (a long pause for room): start over from now
                    next_report = now + period

    async def _next_or_woken(self, deadline: float | None) -> tuple[llrp.Frame, llrp.Message] | None:
        """:meth:`_next`, cut short (None) when a command's action waits (:meth:`wake`)."""
        if self.called.is_set():
            return None
        try:
            async with asyncio.timeout(None) as wait:
                self._idle_wait = wait
                return await self._next(deadline)
        except TimeoutError:
            if wait.expired():
                return None
            raise
        finally:
            self._idle_wait = None

    def wake(self) -> None:
        wait = self._idle_wait
        if wait is not None and not wait.expired():
            wait.reschedule(self.loop.time())

    # ---------------------------------------------------------------- commands (in the session's task)

    def power_level(self, dbm: float) -> tuple[int, int]:
        """The reader's power level of exactly ``dbm`` (to the centi-dBm): (index, centi-dBm);
        CommandRefused, naming the nearest levels, when it has none."""
        table = self.power_table
        if not table:
            raise CommandRefused("the reader lists no transmit power levels in its capabilities")
        wanted = round(dbm * 100)
        for index, cdbm in table.items():
            if cdbm == wanted:
                return index, cdbm
        below = max((c for c in table.values() if c < wanted), default=None)
        above = min((c for c in table.values() if c > wanted), default=None)
        near = " or ".join(f"{c / 100:.2f}" for c in (below, above) if c is not None)
        low, high = min(table.values()) / 100, max(table.values()) / 100
        raise CommandRefused(
            f"{dbm:g} dBm is not a power level of this reader ({low:.2f}-{high:.2f} dBm; nearest: {near})"
        )

    async def set_power(self, antennas: list[int], index: int, cdbm: int) -> CommandData:
        """SET_READER_CONFIG with one AntennaConfiguration per antenna, its RFTransmitter at ``index``."""
        config = llrp.SetReaderConfig(extra=tuple(llrp.antenna_power(a, index) for a in antennas))
        await self._command_request(config, "SET_READER_CONFIG")
        dbm = cdbm / 100
        return {"power_dbm": {str(a): dbm for a in antennas}, "power_index": index}

    async def run_rospec(self, start: bool) -> CommandData:
        """START_ROSPEC or STOP_ROSPEC of our ROSpec, unless it is in that state already."""
        rospec_id = self.options.rospec_id
        if start and not self.rospec_active:
            await self._command_request(llrp.StartRoSpec(rospec_id), "START_ROSPEC")
        elif not start and self.rospec_active:
            await self._command_request(llrp.StopRoSpec(rospec_id), "STOP_ROSPEC")
        else:
            return {"rospec": "active" if start else "inactive", "changed": False}
        self.rospec_active = start
        return {"rospec": "active" if start else "inactive", "changed": True}

    async def _command_request(self, message: llrp.Message, name: str) -> llrp.Response:
        """:meth:`request` for a command: the reader refusing it fails the command, not the session."""
        try:
            return await self.request(message, name)
        except ProtocolFailure as err:
            raise CommandFailed(str(err)) from err

    async def stop(self) -> None:
        """CLOSE_CONNECTION, then its response (or the connection's end) within a second; never raises."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                message_id = await self.send(llrp.CloseConnection())
                while True:
                    got = await self._next(None)
                    if got is None:
                        return
                    frame, message = got
                    if (
                        isinstance(message, llrp.Response | llrp.ErrorMessage)
                        and frame.message_id == message_id
                    ):
                        return

    # ---------------------------------------------------------------- requests

    async def send(self, message: llrp.Message, message_id: int | None = None) -> int:
        if message_id is None:
            message_id = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF or 1
        await self.link.write(llrp.encode_message(message, message_id, self.options.llrp_version))
        return message_id

    async def request(self, message: llrp.Message, name: str) -> llrp.Response:
        """Send ``message``; handle whatever else arrives until its response, which must say success."""
        expected = llrp.response_type(message.message_type)
        message_id = await self.send(message)
        deadline = self.loop.time() + self.options.reply_timeout_s
        while True:
            got = await self._next(deadline)
            if got is None:
                raise DeviceTimeout(f"no answer to {name} within {self.options.reply_timeout_s:g} s")
            frame, answer = got
            if frame.message_id == message_id:
                if isinstance(answer, llrp.Response) and answer.message_type == expected:
                    if not answer.status.ok:
                        raise ProtocolFailure(f"the reader refused {name}: {answer.status}")
                    return answer
                if isinstance(answer, llrp.ErrorMessage):
                    raise ProtocolFailure(f"the reader could not take {name}: ERROR_MESSAGE {answer.status}")
            await self._handle(frame, answer)

    # ---------------------------------------------------------------- reading

    async def _next(self, deadline: float | None) -> tuple[llrp.Frame, llrp.Message] | None:
        """The next message that decodes (the others are counted and skipped); None once ``deadline`` (loop
        time) passes without one."""
        ctx = self.ctx
        while True:
            frame = await self.recv(deadline)
            if frame is None:
                return None
            try:
                return frame, llrp.parse_message(frame)
            except DecodeError as err:
                ctx.count(DECODE_ERRORS, 1)
                ctx.log.debug("undecodable message (type %d): %s", frame.message_type, err)

    def check(self) -> None:
        if self._framer.broken is not None:
            raise ProtocolFailure(f"{self._framer.broken}; reconnecting")

    def link_lost(self, error: ConnectionLost) -> ConnectionLost:
        pending = self._framer.pending
        if not pending:
            return error
        self.ctx.count(TRUNCATED_MESSAGES, 1)
        return ConnectionLost(f"{error} (in the middle of a message, {pending} bytes in)")

    # ---------------------------------------------------------------- what the reader says on its own

    async def _handle(self, frame: llrp.Frame, message: llrp.Message) -> None:
        ctx = self.ctx
        if isinstance(message, llrp.RoAccessReport):
            self._emit_reads(message)
        elif isinstance(message, llrp.Keepalive):
            self.last_keepalive = self.loop.time()
            await self.send(llrp.KeepaliveAck(), frame.message_id)
            ctx.count(KEEPALIVES, 1)
        elif isinstance(message, llrp.ReaderEventNotification):
            self._events(message)
        elif isinstance(message, llrp.ErrorMessage):
            ctx.count(READER_ERRORS, 1)
            ctx.log.warning("reader error (message %d): %s", frame.message_id, message.status)
            ctx.emit(DEVICE_STATUS, {"state": "reader_error", "detail": f"ERROR_MESSAGE: {message.status}"})
        elif isinstance(message, llrp.UnknownMessage):
            ctx.count(UNKNOWN_MESSAGES, 1)
            ctx.log.debug("skipped message type %d (%d bytes)", message.message_type, len(message.body))
        else:
            ctx.count(UNEXPECTED_MESSAGES, 1)
            ctx.log.debug("unexpected %s (message %d)", type(message).__name__, frame.message_id)

    def _emit_reads(self, report: llrp.RoAccessReport) -> None:
        ctx = self.ctx
        if report.errors:
            ctx.count(DECODE_ERRORS, len(report.errors))
            ctx.log.debug("skipped %d undecodable tag reports: %s", len(report.errors), report.errors[0])
        skipped = report.skipped
        if skipped:
            ctx.count(PARAMS_SKIPPED, skipped)
        emit = ctx.emit
        received = self.received_at
        shape = self._shape
        for tag in report.tags:
            seen = tag.first_seen_utc
            emit(RFID_READ, _Read(tag, shape), received if seen is None else seen / 1e6)

    def _events(self, message: llrp.ReaderEventNotification) -> None:
        ctx = self.ctx
        ts = None if message.uptime else message.timestamp_us / 1e6
        if message.extra:
            ctx.count(PARAMS_SKIPPED, len(message.extra))
        names = self.options.antennas
        for event in message.events:
            if isinstance(event, llrp.AntennaEvent):
                state = "connected" if event.connected else "disconnected"
                name = names.get(event.antenna)
                label = f"antenna {event.antenna}" + (f" ({name})" if name else "")
                ctx.emit(
                    DEVICE_STATUS,
                    {
                        "state": f"antenna_{state}",
                        "antenna": event.antenna,
                        "antenna_name": name,
                        "detail": f"{label} {state}",
                    },
                    ts,
                )
            elif isinstance(event, llrp.BufferLevelWarningEvent):
                ctx.emit(
                    DEVICE_STATUS,
                    {
                        "state": "buffer_warning",
                        "fill_percent": event.percent_full,
                        "detail": f"the reader's report buffer is {event.percent_full}% full",
                    },
                    ts,
                )
            elif isinstance(event, llrp.BufferOverflowEvent):
                ctx.log.warning("the reader's report buffer overflowed: reads were lost")
                ctx.emit(
                    DEVICE_STATUS,
                    {
                        "state": "buffer_overflow",
                        "detail": "the reader's report buffer overflowed: reads were lost",
                    },
                    ts,
                )
            elif isinstance(event, llrp.ReaderExceptionEvent):
                ctx.log.warning("reader exception: %s", event.message)
                ctx.emit(DEVICE_STATUS, {"state": "reader_exception", "detail": event.message}, ts)
            elif isinstance(event, llrp.ConnectionCloseEvent):
                raise ConnectionLost("the reader is closing the connection (ConnectionCloseEvent)")
            elif isinstance(event, llrp.ConnectionAttemptEvent):
                ctx.emit(
                    DEVICE_STATUS,
                    {"state": "connection_attempt", "detail": f"connection attempt event: {event.text}"},
                    ts,
                )
            else:
                ctx.count(READER_EVENTS, 1)


class _Read(Record):
    """An ``rfid.read`` as the codec decoded it (:class:`llrp.TagReport`): its mapping or its JSON is built
    when first asked for (a processor reads the one, the buffer stores the other)."""

    __slots__ = ("_shape", "_tag")

    def __init__(self, tag: llrp.TagReport, shape: ReadShape) -> None:
        self._encoded = None
        self._decoded = None
        self._tag = tag
        self._shape = shape

    def _build(self) -> dict[str, Any]:
        tag = self._tag
        antenna = tag.antenna
        pc = tag.pc
        data: dict[str, Any] = {
            "epc": tag.epc.hex().upper(),
            "pc": None if pc is None else f"{pc:04X}",
            "antenna": antenna,
            "antenna_name": self._shape.names.get(antenna) if antenna is not None else None,
            "rssi_dbm": tag.peak_rssi,
            "channel_index": tag.channel_index,
            "seen_count": tag.seen_count,
        }
        uri = self._shape.uris.get(tag.epc)
        if uri:
            data["epc_uri"] = uri
        return data

    def _encode(self) -> bytes:
        tag = self._tag
        antenna = tag.antenna
        pc = tag.pc
        rssi = tag.peak_rssi
        channel = tag.channel_index
        seen = tag.seen_count
        shape = self._shape
        text = _READ_JSON % (
            tag.epc.hex().upper(),
            "null" if pc is None else f'"{pc:04X}"',
            "null" if antenna is None else antenna,
            "null" if antenna is None else shape.names_json.get(antenna, "null"),
            "null" if rssi is None else rssi,
            "null" if channel is None else channel,
            "null" if seen is None else seen,
        )
        uri = shape.uris.get(tag.epc)
        if uri:
            # Pure-identity URIs of the 96-bit schemes are digits, dots, colons and letters: nothing JSON
            # escapes.
            text = f'{text[:-1]},"epc_uri":"{uri}"}}'
        return text.encode()


# An rfid.read's data as drivers.event.encode writes it (compact, no ASCII escaping), filled in instead of
# encoding a dict per read (the fields are ints or None, antenna names pre-encoded). Tested against
# encode_data of the same mapping.
_READ_JSON: Final = (
    '{"epc":"%s","pc":%s,"antenna":%s,"antenna_name":%s,"rssi_dbm":%s,"channel_index":%s,"seen_count":%s}'
)
