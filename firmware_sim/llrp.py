"""A simulated LLRP reader on a TCP port: the reader's side of :mod:`protocols.llrp`, built on the same
codec the driver uses.

Each TCP connection is one client session. The reader first sends READER_EVENT_NOTIFICATION with a
ConnectionAttemptEvent (status 0; or the refusal status of the ``refuse`` fault, after which it closes), then
answers:

- GET_READER_CAPABILITIES: GeneralDeviceCapabilities and the rest of what the standard requires
  (:func:`~protocols.llrp.capabilities_parameters`); GET_READER_CONFIG: identification, antenna properties,
  keepalive and report specs;
- SET_READER_CONFIG: keeps the event notifications, default report spec and keepalive period (a KEEPALIVE
  every period, numbered; the client's KEEPALIVE_ACKs are counted), and each AntennaConfiguration's
  RFTransmitter power (antenna 0: every antenna; an index outside the power table or an antenna the reader
  lacks: an LLRPStatus error, and nothing of the message is applied);
- ADD_ROSPEC / DELETE_ROSPEC (0: all) / ENABLE_ROSPEC / START_ROSPEC / STOP_ROSPEC / DISABLE_ROSPEC /
  GET_ROSPECS, with the standard's state machine (an ROSpec is added disabled, enabled to inactive, started to
  active; IMMEDIATE start triggers start on enable). Start triggers NULL and IMMEDIATE, stop triggers NULL and
  DURATION, AISpec stop triggers NULL, DURATION and TAG_OBSERVATION (every TagObservationTrigger type, with
  its timeout: what sllurp's ``report_every_n_tags`` sends) are run; others are refused with an LLRPStatus;
- ADD_ACCESSSPEC / DELETE_ACCESSSPEC (0: all) / ENABLE_ACCESSSPEC / DISABLE_ACCESSSPEC (0: all) /
  GET_ACCESSSPECS: AccessSpecs are checked, kept and listed as a reader keeps them, never run (no tag memory
  is simulated: reports carry no OpSpec results);
- GET_REPORT: the TagReportData held, at once; CLOSE_CONNECTION: the response, then the connection closes;
- anything else: ERROR_MESSAGE (M_UnsupportedMessage; a body that does not decode: M_ParameterError).

A session that enabled them in SET_READER_CONFIG is sent ROSpecEvents (start, end) and AISpecEvents (end of
each AISpec; with C1G2SingulationDetails when AISPEC_WITH_SINGULATION is enabled); these are off until
enabled, while antenna, buffer and reader-exception events are on until disabled.

While an ROSpec is active it inventories: every ``round_ms`` it reads ``rate * round_ms / 1000`` tags
(fractions carried over), each a random tag of the population on a random antenna of the AISpec (those
connected), with an RSSI around a per-tag, per-antenna level, on a channel that hops per round. Each read
is a TagReportData with what the report spec's TagReportContentSelector enables (the ROSpecID, SpecIndex and
InventoryParameterSpecID of the spec that read it among them); an RO_ACCESS_REPORT goes out every N tags
(report triggers 1 and 2), every N seconds or milliseconds (triggers 3 to 6, LLRP 1.1), at the end of an
AISpec or ROSpec as the trigger says, and on GET_REPORT.

Faults (:class:`Faults`, or on demand): unknown vendor (Custom) parameters and unknown TLVs in the reports,
no KEEPALIVEs (the client must notice), connections refused with a ConnectionAttemptEvent status, a report
cut in the middle by a disconnect, a report whose length field lies. On demand only: a request refused with
an LLRPStatus or an ERROR_MESSAGE (:meth:`LlrpSimulator.fail`), reader events (antenna, buffer warning,
reader exception), an unsolicited ERROR_MESSAGE, a disconnect announced by a ConnectionCloseEvent, an empty
field (:meth:`LlrpSimulator.pause`). Counters live in :attr:`LlrpSimulator.stats`; tests wait on them with
:meth:`LlrpSimulator.wait_for`, never by sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TextIO

from protocols import llrp
from protocols.errors import DecodeError

from . import serving
from .tags import antenna_list, check_inventory, parse_epc, random_population, rssi_levels

__all__ = [
    "Faults",
    "LlrpSimulator",
    "Origin",
    "Read",
    "SimOptions",
    "SimStats",
    "add_parser",
    "parse_faults",
    "population",
    "run_from_args",
    "serve_tcp",
]

PC_96_BITS: Final = 0x3000
CHANNELS: Final = 50
"""Channels of the simulated hop table (ChannelIndex 1..50)."""
RSSI_JITTER: Final = (-2, -1, 0, 1, 2)
UNKNOWN_VENDOR: Final = 4_194_303
"""A private enterprise number no client knows (the largest a u22 holds: no vendor has it)."""
UNKNOWN_TLV: Final = 1000
"""A TLV parameter type the standard does not define."""
_STAMP: Final = bytes.fromhex("EDCE5EED0BADF00D")
"""Stands for the timestamp in cached TagReportData (split out and replaced per read)."""
CACHE_LIMIT: Final = 100_000
MAX_LAG_ROUNDS: Final = 4
"""Rounds an inventory may fall behind its schedule before it skips them (reads lost, not bunched)."""


class Read(NamedTuple):
    """One tag read: which tag of the population, where, its RSSI jitter (an index of
    :data:`RSSI_JITTER`) and the channel."""

    tag: int
    antenna: int
    jitter: int
    channel: int


class Origin(NamedTuple):
    """Which spec made a read: the ROSpec, the AISpec's place in it (from 1) and the id of the AISpec's
    InventoryParameterSpec (what ROSpecID, SpecIndex and InventoryParameterSpecID report)."""

    rospec_id: int = 0
    spec_index: int = 1
    inventory_parameter_spec_id: int = 1


NO_SPEC: Final = Origin()
"""The origin of a read outside any spec (ids 0, indexes 1)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong."""

    vendor_params: float = 0.0
    """Probability per TagReportData of an unknown vendor Custom parameter and an unknown TLV inside it
    (a report with any also carries a Custom parameter of its own)."""
    no_keepalive: bool = False
    """Never send KEEPALIVE: the client's keepalive watchdog must fire."""
    refuse: int = 0
    """ConnectionAttemptEvent status for every connection; 0 accepts, anything else refuses and closes."""
    cut_report_every: int = 0
    """Every Nth RO_ACCESS_REPORT is cut in the middle and the connection dropped; 0: never."""
    lie_length_every: int = 0
    """Every Nth RO_ACCESS_REPORT has a length field that lies; 0: never."""
    lie_length: int = 0xFFFFFFFF
    """What a lying length field says."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.vendor_params <= 1.0:
            raise ValueError(f"fault vendor-params={self.vendor_params}: a probability is 0..1")
        if not 0 <= self.refuse <= 0xFFFF:
            raise ValueError(f"fault refuse={self.refuse}: a status is 0..65535")
        if self.cut_report_every < 0 or self.lie_length_every < 0:
            raise ValueError("fault periods must not be negative")
        if not 0 <= self.lie_length <= 0xFFFFFFFF:
            raise ValueError(f"fault lying length {self.lie_length}: a length is 0..2**32-1")


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How the simulated reader behaves."""

    tags: int = 20
    """Tag population size (random SGTIN-96-headed EPCs; ignored when ``epcs`` is given)."""
    epcs: tuple[bytes, ...] = ()
    """The tag population, explicitly: 96-bit EPCs (12 bytes each)."""
    rate: float = 1000.0
    """Tag reads per second while an ROSpec is active."""
    antennas: tuple[int, ...] = (1, 2, 3, 4)
    """Antennas connected."""
    max_antennas: int = 4
    rssi_mean: float = -60.0
    rssi_spread: float = 6.0
    round_ms: float = 50.0
    seed: int = 0
    utc_clock: bool = True
    """Timestamps in UTC (FirstSeenTimestampUTC); without a clock, uptime (FirstSeenTimestampUptime)."""
    manufacturer: int = 0
    model: int = 1
    firmware: str = "edgegw-sim 1.0"
    power_table_cdbm: tuple[int, ...] = tuple(range(1000, 3251, 25))
    """Transmit power levels offered (index 1 first), centi-dBm: 10.00 to 32.50 dBm in 0.25 dB steps."""
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        check_inventory(self.tags, self.epcs, self.rate, self.round_ms)
        if not 1 <= self.max_antennas <= 0xFFFF:
            raise ValueError("max_antennas is 1..65535")
        if any(not 1 <= a <= self.max_antennas for a in self.antennas):
            raise ValueError(f"antennas {self.antennas}: each is 1..{self.max_antennas}")


@dataclass(slots=True)
class SimStats:
    """Counters since the simulator started (monotonic)."""

    connections: int = 0
    """TCP connections accepted (refused ones included)."""
    refused: int = 0
    """Connections refused with a ConnectionAttemptEvent status."""
    messages_received: int = 0
    """Whole messages from clients."""
    received: dict[str, int] = field(default_factory=dict)
    """Messages from clients by type name (``GET_READER_CAPABILITIES``, ``KEEPALIVE_ACK``...)."""
    errors_sent: int = 0
    """ERROR_MESSAGEs and responses with a failed LLRPStatus."""
    keepalives_sent: int = 0
    keepalive_acks: int = 0
    """KEEPALIVE_ACKs whose message id matches a KEEPALIVE sent."""
    rospecs_started: int = 0
    rospecs_ended: int = 0
    """ROSpecs that ran to their end (stop trigger, or every AISpec done)."""
    tag_reads_made: int = 0
    """Tag reads inventoried (sent, held, or lost to a fault)."""
    reports_sent: int = 0
    """RO_ACCESS_REPORTs written whole and true."""
    tag_reads_sent: int = 0
    """TagReportData in those reports."""
    vendor_params_sent: int = 0
    """Unknown Custom parameters and TLVs written."""
    events_sent: int = 0
    """READER_EVENT_NOTIFICATIONs other than the connection's."""
    close_connections: int = 0
    """CLOSE_CONNECTIONs answered."""
    reports_cut: int = 0
    lies_told: int = 0
    disconnects: int = 0
    """Connections the reader dropped (cut reports, refusals, :meth:`LlrpSimulator.disconnect`)."""
    sessions_ended: int = 0
    """Sessions over, whoever closed them."""

    def count(self, message_type: int) -> int:
        """Messages of ``message_type`` received from clients."""
        name = llrp.MessageType(message_type).name if message_type in _TYPE_NAMES else str(message_type)
        return self.received.get(name, 0)


_TYPE_NAMES: Final = frozenset(int(t) for t in llrp.MessageType)


def population(tags: int, seed: int = 0) -> tuple[bytes, ...]:
    """The EPCs (12 bytes, distinct, SGTIN-96 header 0x30) of a simulated population, from ``seed``."""
    return random_population("llrp", tags, seed)


class LlrpSimulator(serving.Simulator[SimStats]):
    """The reader's configuration, counters and controls; served by :func:`serve_tcp`."""

    def __init__(self, options: SimOptions | None = None) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        self.population = self.options.epcs or population(self.options.tags, self.options.seed)
        self.port: int | None = None
        self.capabilities = llrp.DeviceCapabilities(
            self.options.max_antennas,
            self.options.manufacturer,
            self.options.model,
            self.options.firmware,
            has_utc_clock=self.options.utc_clock,
        )
        self.connected_antennas = set(self.options.antennas)
        table = self.options.power_table_cdbm
        self.transmit_power_cdbm = dict.fromkeys(
            range(1, self.options.max_antennas + 1), 3000 if 3000 in table else max(table)
        )
        """The transmit power of each antenna (centi-dBm), as SET_READER_CONFIG last set it."""
        self.refuse_status = self.options.faults.refuse
        self.keepalives_on = not self.options.faults.no_keepalive
        self._cut_next = 0
        self._lie_next: int | None = None
        self._started = time.monotonic()
        self._rssi_level = rssi_levels(
            "llrp",
            self.options.seed,
            tags=len(self.population),
            antennas=self.options.max_antennas,
            mean=self.options.rssi_mean,
            spread=self.options.rssi_spread,
        )
        self._rng = random.Random(f"edgegw-llrp-sim-{self.options.seed}")
        self._cache: dict[tuple[llrp.TagReportContent, bool, Read, Origin], list[bytes]] = {}
        self._sessions: set[_Session] = set()
        self.reports_made = 0
        """RO_ACCESS_REPORTs with tags begun (what the periodic report faults count)."""
        self.paused = False
        self.failures: dict[int, tuple[llrp.LlrpStatus, bool]] = {}
        self.versions_seen: set[int] = set()
        """Protocol versions of the clients' messages."""
        self.configs: list[llrp.SetReaderConfig] = []
        """Every SET_READER_CONFIG received, in order."""
        self.rospecs_added: list[llrp.RoSpec] = []
        """Every ROSpec added, in order."""
        self.access_specs_added: list[llrp.AccessSpec] = []
        """Every AccessSpec added, in order."""

    # ---------------------------------------------------------------- controls for tests and the CLI

    def refuse_connections(
        self, status: int = llrp.ConnectionAttemptStatus.READER_INITIATED_CONNECTION_EXISTS
    ) -> None:
        """Refuse new connections with this ConnectionAttemptEvent status (0 accepts again)."""
        self.refuse_status = status

    def stop_keepalives(self) -> None:
        self.keepalives_on = False

    def resume_keepalives(self) -> None:
        self.keepalives_on = True

    def pause(self) -> None:
        """Stop reading tags (active ROSpecs keep running, with nothing in the field)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def fail(self, message_type: int, status: llrp.LlrpStatus, *, error_message: bool = False) -> None:
        """Answer the next request of ``message_type`` with ``status`` (or an ERROR_MESSAGE carrying it)."""
        self.failures[message_type] = (status, error_message)

    def cut_next_report(self) -> None:
        """The next RO_ACCESS_REPORT stops in the middle and the connection is dropped."""
        self._cut_next += 1

    def lie_in_next_report(self, length: int = 0xFFFFFFFF) -> None:
        """The next RO_ACCESS_REPORT's length field says ``length``."""
        self._lie_next = length

    async def antenna_event(self, antenna: int, connected: bool) -> None:
        """Connect or disconnect an antenna; sessions that asked for antenna events are told."""
        if connected:
            self.connected_antennas.add(antenna)
        else:
            self.connected_antennas.discard(antenna)
        await self._notify_sessions(llrp.ReaderEventType.ANTENNA, llrp.AntennaEvent(antenna, connected))

    async def buffer_warning(self, percent_full: int) -> None:
        """Tell sessions that asked for it that the report buffer is ``percent_full``."""
        await self._notify_sessions(
            llrp.ReaderEventType.REPORT_BUFFER_FILL_WARNING, llrp.BufferLevelWarningEvent(percent_full)
        )

    async def reader_exception(self, message: str) -> None:
        await self._notify_sessions(llrp.ReaderEventType.READER_EXCEPTION, llrp.ReaderExceptionEvent(message))

    async def send_error(self, status: llrp.LlrpStatus) -> None:
        """An unsolicited ERROR_MESSAGE (message id 0) on every session."""
        await self.send(llrp.ErrorMessage(status), 0)
        self.stats.errors_sent += len(self._sessions)
        self._notify()

    async def send(self, message: llrp.Message, message_id: int | None = None) -> None:
        """Any message, on every session (an :class:`~protocols.llrp.UnknownMessage` sends its body as it
        is: a vendor message, or a known type with a body that does not decode)."""
        for session in list(self._sessions):
            with contextlib.suppress(ConnectionError):
                await session.send(message, message_id)

    async def disconnect(self, *, notify: bool = True) -> None:
        """Drop every connection, after a ConnectionCloseEvent when ``notify``."""
        for session in list(self._sessions):
            if notify:
                with contextlib.suppress(ConnectionError):
                    await session.event(llrp.ConnectionCloseEvent())
            session.abort()

    async def _notify_sessions(self, kind: int, event: llrp.ReaderEvent) -> None:
        for session in list(self._sessions):
            if session.events_enabled.get(kind, True):
                with contextlib.suppress(ConnectionError):
                    await session.event(event)
                    self.stats.events_sent += 1
        self._notify()

    # ---------------------------------------------------------------- what the reader reports

    def timestamp_us(self) -> int:
        if self.options.utc_clock:
            return time.time_ns() // 1000
        return int((time.monotonic() - self._started) * 1_000_000)

    def tag_bytes(
        self, content: llrp.TagReportContent, read: Read, stamp_us: int, origin: Origin = NO_SPEC
    ) -> bytes:
        """The TagReportData of one read. Cached without its timestamp (reads repeat: the population is
        small), so tens of thousands a second are reachable; tested against the codec."""
        key = (content, self.options.utc_clock, read, origin)
        parts = self._cache.get(key)
        if parts is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            sentinel = int.from_bytes(_STAMP, "big")
            parts = self._cache[key] = llrp.encode_tag_report(
                self.tag_report(content, read, sentinel, origin)
            ).split(_STAMP)
        return stamp_us.to_bytes(8, "big").join(parts)

    def tag_report(
        self, content: llrp.TagReportContent, read: Read, stamp_us: int, origin: Origin = NO_SPEC
    ) -> llrp.TagReport:
        """One read by the spec ``origin``, with what ``content`` enables."""
        utc = self.options.utc_clock
        seen = content.first_seen
        last = content.last_seen
        level = self._rssi_level[read.tag][read.antenna - 1] + RSSI_JITTER[read.jitter]
        return llrp.TagReport(
            epc=self.population[read.tag],
            antenna=read.antenna if content.antenna else None,
            peak_rssi=max(-128, min(127, round(level))) if content.peak_rssi else None,
            channel_index=read.channel if content.channel_index else None,
            first_seen_utc=stamp_us if seen and utc else None,
            last_seen_utc=stamp_us if last and utc else None,
            first_seen_uptime=stamp_us if seen and not utc else None,
            last_seen_uptime=stamp_us if last and not utc else None,
            seen_count=1 if content.seen_count else None,
            pc=PC_96_BITS if content.pc else None,
            crc=0xFFFF & (read.tag * 40503 + 1) if content.crc else None,
            rospec_id=origin.rospec_id if content.rospec_id else None,
            spec_index=origin.spec_index if content.spec_index else None,
            inventory_parameter_spec_id=(
                origin.inventory_parameter_spec_id if content.inventory_parameter_spec_id else None
            ),
            access_spec_id=0 if content.access_spec_id else None,
        )

    def _report_fault(self) -> tuple[str, int] | None:
        """Whether the report about to be sent is cut or lies (and what it says)."""
        self.reports_made += 1
        faults = self.options.faults
        if self._cut_next:
            self._cut_next -= 1
            return ("cut", 0)
        if self._lie_next is not None:
            length, self._lie_next = self._lie_next, None
            return ("lie", length)
        if faults.cut_report_every and self.reports_made % faults.cut_report_every == 0:
            return ("cut", 0)
        if faults.lie_length_every and self.reports_made % faults.lie_length_every == 0:
            return ("lie", faults.lie_length)
        return None


class _Aborted(Exception):
    """The session ends (the reader dropped the connection)."""


@dataclass(slots=True)
class _RoSpecState:
    spec: llrp.RoSpec
    state: int = llrp.RoSpecState.DISABLED
    task: asyncio.Task[None] | None = None
    announced: bool = False
    """Whether this run's start was told (its ROSpecEvent), so that its end is told after it."""


class _Session:
    """One client connection: the reader's configuration as this client set it, its ROSpecs, and the tasks
    that inventory and send keepalives."""

    def __init__(
        self, sim: LlrpSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.version = 1
        self.next_id = 1
        self.events_enabled: dict[int, bool] = {}
        self.report = llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, 1)
        self.keepalive_ms = 0
        self.rospecs: dict[int, _RoSpecState] = {}
        self.access_specs: dict[int, llrp.AccessSpec] = {}
        self.pending: list[bytes] = []
        self.keepalive_ids: set[int] = set()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._closed = False

    # ---------------------------------------------------------------- writing

    def _id(self) -> int:
        message_id = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        return message_id

    async def write(self, data: bytes) -> None:
        if self._closed or self.writer.is_closing():
            raise ConnectionError("connection closed")
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: llrp.Message, message_id: int | None = None) -> None:
        await self.write(
            llrp.encode_message(message, self._id() if message_id is None else message_id, self.version)
        )

    async def event(self, event: llrp.ReaderEvent) -> None:
        await self.send(
            llrp.ReaderEventNotification((event,), self.sim.timestamp_us(), not self.sim.options.utc_clock)
        )

    def abort(self) -> None:
        """Drop the connection now (the reader's side)."""
        if not self._closed:
            self._closed = True
            self.sim.stats.disconnects += 1
            self.writer.close()
            self.sim._notify()

    # ---------------------------------------------------------------- the session

    async def run(self) -> None:
        sim = self.sim
        stats = sim.stats
        stats.connections += 1
        sim._notify()
        status = sim.refuse_status
        await self.event(llrp.ConnectionAttemptEvent(status))
        if status != llrp.ConnectionAttemptStatus.SUCCESS:
            stats.refused += 1
            self.abort()
            return
        framer = llrp.LlrpFramer()
        try:
            while not self._closed:
                try:
                    data = await self.reader.read(65536)
                except OSError:
                    return
                if not data:
                    return
                for frame in framer.feed(data):
                    await self._handle(frame)
                if framer.broken is not None:
                    self.abort()
                    return
        except (ConnectionError, _Aborted):
            return
        finally:
            await self._stop_all()

    async def _stop_all(self) -> None:
        tasks = [state.task for state in self.rospecs.values() if state.task is not None]
        if self._keepalive_task is not None:
            tasks.append(self._keepalive_task)
        await serving.cancel_all(tasks)

    async def _handle(self, frame: llrp.Frame) -> None:
        sim = self.sim
        stats = sim.stats
        stats.messages_received += 1
        name = (
            llrp.MessageType(frame.message_type).name
            if frame.message_type in _TYPE_NAMES
            else str(frame.message_type)
        )
        stats.received[name] = stats.received.get(name, 0) + 1
        self.version = frame.version
        sim.versions_seen.add(frame.version)
        try:
            message = llrp.parse_message(frame)
        except DecodeError as err:
            await self._error(frame.message_id, llrp.StatusCode.M_PARAMETER_ERROR, str(err))
            return
        finally:
            sim._notify()
        await self._dispatch(frame.message_id, message)
        sim._notify()

    async def _error(self, message_id: int, code: int, description: str) -> None:
        self.sim.stats.errors_sent += 1
        await self.send(llrp.ErrorMessage(llrp.LlrpStatus(code, description)), message_id)

    async def _respond(
        self,
        request: llrp.Message,
        message_id: int,
        status: llrp.LlrpStatus | None = None,
        params: tuple[llrp.Parameter, ...] = (),
    ) -> None:
        response_type = llrp.response_type(request.message_type)
        assert response_type is not None
        status = status or llrp.LlrpStatus()
        if not status.ok:
            self.sim.stats.errors_sent += 1
        await self.send(llrp.Response(response_type, status, params), message_id)

    async def _dispatch(self, message_id: int, message: llrp.Message) -> None:
        sim = self.sim
        failure = sim.failures.pop(message.message_type, None)
        if failure is not None:
            status, error_message = failure
            if error_message or llrp.response_type(message.message_type) is None:
                await self._error(message_id, status.code, status.description)
            else:
                await self._respond(message, message_id, status)
            return
        if isinstance(message, llrp.GetReaderCapabilities):
            await self._respond(
                message,
                message_id,
                params=llrp.capabilities_parameters(sim.capabilities, sim.options.power_table_cdbm),
            )
        elif isinstance(message, llrp.GetReaderConfig):
            await self._respond(message, message_id, params=self._config())
        elif isinstance(message, llrp.SetReaderConfig):
            await self._respond(message, message_id, self._set_config(message))
        elif isinstance(message, llrp.AddRoSpec):
            await self._respond(message, message_id, self._add(message.rospec))
        elif isinstance(message, llrp.DeleteRoSpec):
            await self._respond(message, message_id, await self._delete(message.rospec_id))
        elif isinstance(message, llrp.EnableRoSpec):
            await self._respond(message, message_id, self._enable(message.rospec_id))
        elif isinstance(message, llrp.StartRoSpec):
            await self._respond(message, message_id, self._start(message.rospec_id))
        elif isinstance(message, llrp.StopRoSpec):
            await self._respond(
                message, message_id, await self._stop(message.rospec_id, llrp.RoSpecState.INACTIVE)
            )
        elif isinstance(message, llrp.DisableRoSpec):
            await self._respond(
                message, message_id, await self._stop(message.rospec_id, llrp.RoSpecState.DISABLED)
            )
        elif isinstance(message, llrp.GetRoSpecs):
            params = tuple(
                dataclasses.replace(s.spec, state=s.state).parameter() for s in self.rospecs.values()
            )
            await self._respond(message, message_id, params=params)
        elif isinstance(message, llrp.AddAccessSpec):
            await self._respond(message, message_id, self._add_access_spec(message.access_spec))
        elif isinstance(message, llrp.DeleteAccessSpec):
            await self._respond(message, message_id, self._access_specs(message.access_spec_id, None))
        elif isinstance(message, llrp.EnableAccessSpec):
            await self._respond(message, message_id, self._access_specs(message.access_spec_id, True))
        elif isinstance(message, llrp.DisableAccessSpec):
            await self._respond(message, message_id, self._access_specs(message.access_spec_id, False))
        elif isinstance(message, llrp.GetAccessSpecs):
            params = tuple(spec.parameter() for spec in self.access_specs.values())
            await self._respond(message, message_id, params=params)
        elif isinstance(message, llrp.GetReport):
            await self.flush(always=True)
        elif isinstance(message, llrp.KeepaliveAck):
            if message_id in self.keepalive_ids:
                self.keepalive_ids.discard(message_id)
                sim.stats.keepalive_acks += 1
        elif isinstance(message, llrp.CloseConnection):
            await self._stop_all()
            await self._respond(message, message_id)
            sim.stats.close_connections += 1
            self._closed = True
            self.writer.close()
            raise _Aborted
        elif isinstance(message, llrp.EnableEventsAndReports):
            pass
        elif isinstance(message, llrp.UnknownMessage):
            await self._error(
                message_id, llrp.StatusCode.M_UNSUPPORTED_MESSAGE, f"message type {message.message_type}"
            )
        else:
            await self._error(
                message_id,
                llrp.StatusCode.M_UNEXPECTED_MESSAGE,
                f"a reader does not take {type(message).__name__}",
            )

    # ---------------------------------------------------------------- configuration

    def _config(self) -> tuple[llrp.Parameter, ...]:
        sim = self.sim
        identification = llrp.Parameter(
            llrp.ParamType.IDENTIFICATION, {"id_type": 0, "reader_id": (sim.port or 0).to_bytes(8, "big")}
        )
        antennas = tuple(
            llrp.Parameter(
                llrp.ParamType.ANTENNA_PROPERTIES,
                {"flags": {"connected": a in sim.connected_antennas}, "antenna": a, "gain_cdbi": 0},
            )
            for a in range(1, sim.options.max_antennas + 1)
        )
        keepalive = llrp.KeepaliveSpec(self.keepalive_ms > 0, self.keepalive_ms).parameter()
        return (identification, *antennas, self.report.parameter(), keepalive)

    def _set_config(self, message: llrp.SetReaderConfig) -> llrp.LlrpStatus | None:
        self.sim.configs.append(message)
        powers = self._antenna_powers(message.extra)
        if isinstance(powers, llrp.LlrpStatus):
            return powers
        self.sim.transmit_power_cdbm.update(powers)
        if message.reset_to_factory_default:
            self.events_enabled.clear()
            self.report = llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, 1)
            self.keepalive_ms = 0
        for kind, enabled in message.event_notifications:
            self.events_enabled[kind] = enabled
        if message.report is not None:
            self.report = message.report
        if message.keepalive is not None:
            self.keepalive_ms = message.keepalive.period_ms if message.keepalive.periodic else 0
            if self._keepalive_task is not None:
                self._keepalive_task.cancel()
                self._keepalive_task = None
            if self.keepalive_ms > 0:
                self._keepalive_task = asyncio.create_task(self._keepalives(self.keepalive_ms / 1000))
        return None

    def _antenna_powers(self, extra: tuple[llrp.Parameter, ...]) -> dict[int, int] | llrp.LlrpStatus:
        """The transmit powers the AntennaConfigurations among ``extra`` set, by antenna; or the status
        that refuses them."""
        sim = self.sim
        table = sim.options.power_table_cdbm
        antennas = range(1, sim.options.max_antennas + 1)
        powers: dict[int, int] = {}
        for param in extra:
            if param.type != llrp.ParamType.ANTENNA_CONFIGURATION:
                continue
            antenna = param.fields["antenna"]
            if antenna != 0 and antenna not in antennas:
                return _failure(llrp.StatusCode.P_FIELD_ERROR, f"no antenna {antenna}")
            for child in param.params:
                if child.type != llrp.ParamType.RF_TRANSMITTER:
                    continue
                index = child.fields["transmit_power_index"]
                if not 1 <= index <= len(table):
                    return _failure(llrp.StatusCode.P_FIELD_ERROR, f"no transmit power index {index}")
                for a in antennas if antenna == 0 else (antenna,):
                    powers[a] = table[index - 1]
        return powers

    async def _keepalives(self, period: float) -> None:
        sim = self.sim
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(period)
                if not sim.keepalives_on:
                    continue
                message_id = self._id()
                self.keepalive_ids.add(message_id)
                if len(self.keepalive_ids) > 1000:
                    self.keepalive_ids.discard(min(self.keepalive_ids))
                await self.send(llrp.Keepalive(), message_id)
                sim.stats.keepalives_sent += 1
                sim._notify()

    # ---------------------------------------------------------------- ROSpecs

    def _add(self, spec: llrp.RoSpec) -> llrp.LlrpStatus:
        max_antennas = self.sim.options.max_antennas
        if spec.rospec_id == 0:
            return _failure(llrp.StatusCode.A_INVALID, "ROSpecID 0 is reserved")
        if spec.rospec_id in self.rospecs:
            return _failure(llrp.StatusCode.A_INVALID, f"ROSpec {spec.rospec_id} exists")
        if spec.state != llrp.RoSpecState.DISABLED:
            return _failure(llrp.StatusCode.A_INVALID, "an ROSpec is added disabled")
        if spec.start_trigger not in (llrp.StartTrigger.NULL, llrp.StartTrigger.IMMEDIATE):
            return _failure(llrp.StatusCode.P_UNSUPPORTED_PARAMETER, f"start trigger {spec.start_trigger}")
        if spec.stop_trigger not in (llrp.StopTrigger.NULL, llrp.StopTrigger.DURATION):
            return _failure(llrp.StatusCode.P_UNSUPPORTED_PARAMETER, f"stop trigger {spec.stop_trigger}")
        if not spec.ai_specs:
            return _failure(llrp.StatusCode.M_MISSING_PARAMETER, "no AISpec")
        for ai in spec.ai_specs:
            if ai.stop_trigger not in _AISPEC_STOP_TRIGGERS:
                return _failure(
                    llrp.StatusCode.P_UNSUPPORTED_PARAMETER, f"AISpec stop trigger {ai.stop_trigger}"
                )
            if ai.stop_trigger == llrp.StopTrigger.TAG_OBSERVATION:
                if ai.tag_observation is None:
                    return llrp.LlrpStatus(
                        llrp.StatusCode.M_PARAMETER_ERROR,
                        "AISpecStopTrigger of type Tag observation without its TagObservationTrigger",
                        parameter_error=(
                            llrp.ParamType.AISPEC_STOP_TRIGGER,
                            llrp.StatusCode.P_MISSING_PARAMETER,
                        ),
                    )
                if ai.tag_observation.trigger not in _TAG_OBSERVATION_TYPES:
                    return _failure(
                        llrp.StatusCode.A_OUT_OF_RANGE,
                        f"TagObservationTrigger type {ai.tag_observation.trigger} (0..4)",
                    )
            bad = [a for a in ai.antennas if not 0 <= a <= max_antennas]
            if bad or not ai.antennas:
                return _failure(
                    llrp.StatusCode.A_OUT_OF_RANGE,
                    f"antennas {list(ai.antennas)}: this reader has 1..{max_antennas}",
                )
            if any(protocol != llrp.AIR_PROTOCOL_C1G2 for _, protocol in ai.inventory):
                return _failure(llrp.StatusCode.A_INVALID, "only EPCglobal Class 1 Gen 2 (air protocol 1)")
        self.rospecs[spec.rospec_id] = _RoSpecState(spec)
        self.sim.rospecs_added.append(spec)
        return llrp.LlrpStatus()

    # ---------------------------------------------------------------- AccessSpecs

    def _add_access_spec(self, spec: llrp.AccessSpec) -> llrp.LlrpStatus:
        """Keep an AccessSpec, checked as a reader checks it. It is listed, enabled, disabled and deleted as
        the standard says, but never run: no tag memory is simulated, so reports carry no OpSpec results."""
        max_antennas = self.sim.options.max_antennas
        if spec.access_spec_id == 0:
            return _failure(llrp.StatusCode.A_INVALID, "AccessSpecID 0 is reserved")
        if spec.access_spec_id in self.access_specs:
            return _failure(llrp.StatusCode.A_INVALID, f"AccessSpec {spec.access_spec_id} exists")
        if spec.enabled:
            return _failure(llrp.StatusCode.A_INVALID, "an AccessSpec is added disabled")
        if not 0 <= spec.antenna <= max_antennas:
            return _failure(
                llrp.StatusCode.A_OUT_OF_RANGE, f"antenna {spec.antenna}: this reader has 1..{max_antennas}"
            )
        if spec.protocol != llrp.AIR_PROTOCOL_C1G2:
            return _failure(llrp.StatusCode.A_INVALID, "only EPCglobal Class 1 Gen 2 (air protocol 1)")
        if spec.stop_trigger not in tuple(llrp.AccessSpecStopTriggerType):
            return _failure(llrp.StatusCode.A_OUT_OF_RANGE, f"AccessSpec stop trigger {spec.stop_trigger}")
        tag_specs = [p for p in spec.command if p.type == llrp.ParamType.C1G2_TAG_SPEC]
        if len(tag_specs) != 1 or not tag_specs[0].find_all(llrp.ParamType.C1G2_TARGET_TAG):
            return _failure(llrp.StatusCode.M_MISSING_PARAMETER, "AccessCommand without its C1G2TagSpec")
        if len(spec.command) < 2:
            return _failure(llrp.StatusCode.M_MISSING_PARAMETER, "AccessCommand without an OpSpec")
        self.access_specs[spec.access_spec_id] = spec
        self.sim.access_specs_added.append(spec)
        return llrp.LlrpStatus()

    def _access_specs(self, access_spec_id: int, enable: bool | None) -> llrp.LlrpStatus:
        """Enable (True), disable (False) or delete (None) AccessSpec ``access_spec_id`` (0: every one)."""
        if access_spec_id == 0:
            ids = list(self.access_specs)
        elif access_spec_id in self.access_specs:
            ids = [access_spec_id]
        else:
            return _failure(llrp.StatusCode.A_INVALID, f"no AccessSpec {access_spec_id}")
        for key in ids:
            if enable is None:
                del self.access_specs[key]
            else:
                self.access_specs[key] = dataclasses.replace(self.access_specs[key], enabled=enable)
        return llrp.LlrpStatus()

    def _targets(self, rospec_id: int) -> list[_RoSpecState] | None:
        if rospec_id == 0:
            return list(self.rospecs.values())
        state = self.rospecs.get(rospec_id)
        return None if state is None else [state]

    async def _delete(self, rospec_id: int) -> llrp.LlrpStatus:
        targets = self._targets(rospec_id)
        if targets is None:
            return _failure(llrp.StatusCode.A_INVALID, f"no ROSpec {rospec_id}")
        for state in targets:
            was_active = state.state == llrp.RoSpecState.ACTIVE
            await self._halt(state)
            del self.rospecs[state.spec.rospec_id]
            if was_active:
                await self._stopped(state)
        return llrp.LlrpStatus()

    def _enable(self, rospec_id: int) -> llrp.LlrpStatus:
        targets = self._targets(rospec_id)
        if targets is None:
            return _failure(llrp.StatusCode.A_INVALID, f"no ROSpec {rospec_id}")
        for state in targets:
            if state.state == llrp.RoSpecState.DISABLED:
                state.state = llrp.RoSpecState.INACTIVE
                if state.spec.start_trigger == llrp.StartTrigger.IMMEDIATE:
                    self._activate(state)
        return llrp.LlrpStatus()

    def _start(self, rospec_id: int) -> llrp.LlrpStatus:
        state = self.rospecs.get(rospec_id)
        if state is None:
            return _failure(llrp.StatusCode.A_INVALID, f"no ROSpec {rospec_id}")
        if state.state != llrp.RoSpecState.INACTIVE:
            return _failure(llrp.StatusCode.A_INVALID, f"ROSpec {rospec_id} is not inactive")
        self._activate(state)
        return llrp.LlrpStatus()

    async def _stop(self, rospec_id: int, to: int) -> llrp.LlrpStatus:
        targets = self._targets(rospec_id)
        if targets is None:
            return _failure(llrp.StatusCode.A_INVALID, f"no ROSpec {rospec_id}")
        for state in targets:
            was_active = state.state == llrp.RoSpecState.ACTIVE
            await self._halt(state)
            state.state = to
            if was_active:
                await self.flush()
                await self._stopped(state)
        return llrp.LlrpStatus()

    def _activate(self, state: _RoSpecState) -> None:
        state.state = llrp.RoSpecState.ACTIVE
        state.announced = False
        self.sim.stats.rospecs_started += 1
        state.task = asyncio.create_task(self._inventory(state))

    async def _halt(self, state: _RoSpecState) -> None:
        task, state.task = state.task, None
        if task is not None and task is not asyncio.current_task():
            await serving.cancel_all((task,))

    # ---------------------------------------------------------------- inventory and reports

    async def _inventory(self, state: _RoSpecState) -> None:
        spec = state.spec
        report = spec.report or self.report
        loop = asyncio.get_running_loop()
        clock = loop.time()
        ro_end = (
            clock + spec.stop_duration_ms / 1000 if spec.stop_trigger == llrp.StopTrigger.DURATION else None
        )
        carry = 0.0
        round_s = self.sim.options.round_ms / 1000
        last_flush = clock
        period = _report_period(report)
        try:
            state.announced = True
            await self._rospec_event(llrp.RoSpecEventType.START, spec.rospec_id)
            for index, ai in enumerate(spec.ai_specs, 1):
                progress = _AiSpecProgress(ai, clock)
                origin = Origin(spec.rospec_id, index, ai.inventory[0][0])
                while not progress.done(clock) and (ro_end is None or clock < ro_end):
                    carry = await self._round(
                        ai, report, carry, origin=origin, progress=progress, clock=clock
                    )
                    progress.attempts += 1
                    clock += round_s
                    now = loop.time()
                    # Always yield (keepalives and requests share the loop); a reader that fell behind
                    # (a loaded machine) does not burst to catch up: its radio reads at its own pace.
                    await asyncio.sleep(max(0.0, clock - now))
                    clock = max(clock, now - MAX_LAG_ROUNDS * round_s)
                    if period is not None and clock - last_flush >= period:
                        last_flush = clock
                        await self.flush()
                if report.trigger in _END_OF_AISPEC:
                    await self.flush()
                await self._aispec_event(spec.rospec_id, index)
                if ro_end is not None and clock >= ro_end:
                    break  # the ROSpec's own stop trigger ends it, and the AISpecs after this one
            if report.trigger != llrp.ReportTrigger.NONE:
                await self.flush()
            state.state = llrp.RoSpecState.INACTIVE
            state.task = None
            self.sim.stats.rospecs_ended += 1
            await self._rospec_event(llrp.RoSpecEventType.END, spec.rospec_id)
            self.sim._notify()
        except (ConnectionError, _Aborted):
            self.abort()

    async def _round(
        self,
        ai: llrp.AiSpec,
        report: llrp.RoReportSpec,
        carry: float,
        *,
        origin: Origin,
        progress: _AiSpecProgress,
        clock: float,
    ) -> float:
        sim = self.sim
        options = sim.options
        carry += options.rate * options.round_ms / 1000
        count = int(carry)
        carry -= count
        antennas = sorted(
            sim.connected_antennas if 0 in ai.antennas else sim.connected_antennas.intersection(ai.antennas)
        )
        if not antennas or not sim.population or not count or sim.paused:
            return carry
        rng = sim._rng
        tags = len(sim.population)
        channel = rng.randint(1, CHANNELS)
        content = report.content
        vendor = options.faults.vendor_params
        n = report.n if report.trigger in _N_TAGS else 0
        watching = progress.observation is not None  # only a TagObservationTrigger counts reads
        pending = self.pending
        stamp = sim.timestamp_us()
        for _ in range(count):
            read = Read(
                int(rng.random() * tags),
                antennas[int(rng.random() * len(antennas))],
                int(rng.random() * 5),
                channel,
            )
            if vendor and rng.random() < vendor:
                report_ = sim.tag_report(content, read, stamp, origin)
                custom = llrp.Parameter(
                    llrp.CUSTOM,
                    {"vendor": UNKNOWN_VENDOR, "subtype": rng.randrange(1 << 32), "data": rng.randbytes(6)},
                )
                unknown = llrp.Parameter(UNKNOWN_TLV, {"data": rng.randbytes(3)})
                pending.append(llrp.encode_tag_report(report_._replace(extra=(custom, unknown))))
                sim.stats.vendor_params_sent += 2
            else:
                pending.append(sim.tag_bytes(content, read, stamp, origin))
            sim.stats.tag_reads_made += 1
            if n and len(pending) >= n:
                await self.flush()
                pending = self.pending
            if watching:
                progress.observe(read.tag, clock)
                if progress.observed_enough():
                    break  # the AISpec's TagObservationTrigger ends it at this read
        sim._notify()
        return carry

    # ---------------------------------------------------------------- the spec events

    async def _rospec_event(self, event_type: int, rospec_id: int) -> None:
        """A ROSpecEvent, if this client enabled them (they are off until SET_READER_CONFIG says)."""
        if self.events_enabled.get(llrp.ReaderEventType.ROSPEC, False):
            await self.event(llrp.RoSpecEvent(event_type, rospec_id))
            self.sim.stats.events_sent += 1

    async def _stopped(self, state: _RoSpecState) -> None:
        """The ROSpecEvents of a run the client ended (its start too, if its task never got to tell it)."""
        if not state.announced:
            state.announced = True
            await self._rospec_event(llrp.RoSpecEventType.START, state.spec.rospec_id)
        await self._rospec_event(llrp.RoSpecEventType.END, state.spec.rospec_id)

    async def _aispec_event(self, rospec_id: int, spec_index: int) -> None:
        """The end of an AISpec, if this client enabled AISpec events (with singulation details too, if it
        enabled those: the simulated air protocol has no slots, so they count none)."""
        enabled = self.events_enabled
        details = enabled.get(llrp.ReaderEventType.AISPEC_WITH_SINGULATION, False)
        if details or enabled.get(llrp.ReaderEventType.AISPEC, False):
            params = (
                (
                    llrp.Parameter(
                        llrp.ParamType.C1G2_SINGULATION_DETAILS,
                        {"value": {"collision_slots": 0, "empty_slots": 0}},
                    ),
                )
                if details
                else ()
            )
            await self.event(llrp.AiSpecEvent(llrp.AISPEC_EVENT_END, rospec_id, spec_index, params))
            self.sim.stats.events_sent += 1

    async def flush(self, *, always: bool = False) -> None:
        """Send the TagReportData held as one RO_ACCESS_REPORT; with none held, only when ``always`` (the
        answer to GET_REPORT)."""
        sim = self.sim
        if not self.pending and not always:
            return
        tags, self.pending = self.pending, []
        body = b"".join(tags)
        vendor_tags = any(_has_vendor(t) for t in tags) if sim.options.faults.vendor_params else False
        if vendor_tags:
            body += llrp.encode_parameter(
                llrp.Parameter(llrp.CUSTOM, {"vendor": UNKNOWN_VENDOR, "subtype": 1, "data": b"sim"})
            )
            sim.stats.vendor_params_sent += 1
        raw = llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, self._id(), body, self.version))
        fault = sim._report_fault() if tags else None  # an empty report cannot be cut
        if fault is None:
            await self.write(raw)
            sim.stats.reports_sent += 1
            sim.stats.tag_reads_sent += len(tags)
        elif fault[0] == "cut":
            sim.stats.reports_cut += 1
            with contextlib.suppress(ConnectionError):
                await self.write(raw[: max(llrp.HEADER_SIZE + 1, len(raw) // 2)])
            self.abort()
            sim._notify()
            raise _Aborted
        else:
            sim.stats.lies_told += 1
            await self.write(raw[:2] + fault[1].to_bytes(4, "big") + raw[6:])
        sim._notify()


class _AiSpecProgress:
    """Where a running AISpec stands against its stop trigger: its end time (a duration, or a
    TagObservationTrigger's timeout) and, for a TagObservationTrigger, the observations, distinct tags,
    attempts (inventory rounds) and when the last new one came."""

    __slots__ = ("attempts", "end", "last_new", "observation", "observations", "unique")

    def __init__(self, ai: llrp.AiSpec, start: float) -> None:
        self.observation = ai.tag_observation if ai.stop_trigger == llrp.StopTrigger.TAG_OBSERVATION else None
        self.end: float | None = None
        if ai.stop_trigger == llrp.StopTrigger.DURATION:
            self.end = start + ai.duration_ms / 1000
        elif self.observation is not None and self.observation.timeout_ms:
            self.end = start + self.observation.timeout_ms / 1000
        self.observations = 0
        self.unique: set[int] = set()
        self.attempts = 0
        self.last_new = start

    def observe(self, tag: int, clock: float) -> None:
        self.observations += 1
        new_tag = tag not in self.unique
        self.unique.add(tag)
        if self.observation is not None and (
            new_tag or self.observation.trigger == llrp.TagObservationType.NO_NEW_TAGS_FOR_T_OR_TIMEOUT
        ):
            self.last_new = clock

    def observed_enough(self) -> bool:
        """Whether the N tags (or N distinct tags) of the TagObservationTrigger have been seen."""
        observation = self.observation
        if observation is None or not observation.number_of_tags:
            return False
        if observation.trigger == llrp.TagObservationType.N_TAGS_OR_TIMEOUT:
            return self.observations >= observation.number_of_tags
        if observation.trigger == llrp.TagObservationType.N_UNIQUE_TAGS_OR_TIMEOUT:
            return len(self.unique) >= observation.number_of_tags
        return False

    def done(self, clock: float) -> bool:
        if self.end is not None and clock >= self.end:
            return True
        observation = self.observation
        if observation is None:
            return False
        kind = observation.trigger
        if kind == llrp.TagObservationType.N_ATTEMPTS_OR_TIMEOUT:
            return bool(observation.number_of_attempts) and self.attempts >= observation.number_of_attempts
        if kind in (
            llrp.TagObservationType.NO_NEW_TAGS_FOR_T_OR_TIMEOUT,
            llrp.TagObservationType.NO_NEW_UNIQUE_TAGS_FOR_T_OR_TIMEOUT,
        ):
            return bool(observation.t_ms) and clock - self.last_new >= observation.t_ms / 1000
        return self.observed_enough()


_AISPEC_STOP_TRIGGERS: Final = frozenset(
    {llrp.StopTrigger.NULL, llrp.StopTrigger.DURATION, llrp.StopTrigger.TAG_OBSERVATION}
)
_TAG_OBSERVATION_TYPES: Final = frozenset(int(t) for t in llrp.TagObservationType)
_N_TAGS: Final = frozenset(
    {llrp.ReportTrigger.N_TAGS_OR_END_OF_AISPEC, llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC}
)
_END_OF_AISPEC: Final = frozenset(
    {
        llrp.ReportTrigger.N_TAGS_OR_END_OF_AISPEC,
        llrp.ReportTrigger.N_SECONDS_OR_END_OF_AISPEC,
        llrp.ReportTrigger.N_MILLISECONDS_OR_END_OF_AISPEC,
    }
)


def _report_period(report: llrp.RoReportSpec) -> float | None:
    """Seconds between reports for the time triggers of LLRP 1.1 (None: not a time trigger, or N = 0)."""
    if not report.n:
        return None
    if report.trigger in (
        llrp.ReportTrigger.N_SECONDS_OR_END_OF_AISPEC,
        llrp.ReportTrigger.N_SECONDS_OR_END_OF_ROSPEC,
    ):
        return float(report.n)
    if report.trigger in (
        llrp.ReportTrigger.N_MILLISECONDS_OR_END_OF_AISPEC,
        llrp.ReportTrigger.N_MILLISECONDS_OR_END_OF_ROSPEC,
    ):
        return report.n / 1000
    return None


def _has_vendor(tag: bytes) -> bool:
    return UNKNOWN_VENDOR.to_bytes(4, "big") in tag


def _failure(code: int, description: str) -> llrp.LlrpStatus:
    return llrp.LlrpStatus(code, description)


@contextlib.asynccontextmanager
async def serve_tcp(
    host: str, port: int, options: SimOptions | None = None, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[LlrpSimulator]:
    """Serve a simulated reader on a TCP port (0: any free port, see ``sim.port``), a session a connection;
    with a server ``tls`` context, LLRP over TLS."""
    sim = LlrpSimulator(options)

    async def run_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(sim, reader, writer)
        sim._sessions.add(session)
        try:
            await session.run()
        finally:
            sim._sessions.discard(session)
            writer.close()
            sim.stats.sessions_ended += 1
            sim._notify()

    async with serving.tcp_server(host, port, run_session, tls=tls) as server:
        sim.port = server.port
        try:
            yield sim
        finally:
            for session in list(sim._sessions):
                session.abort()


# ----------------------------------------------------------------------------------------------------
# edgegw sim llrp

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  vendor-params=P     an unknown vendor (Custom) parameter and an unknown TLV in a TagReportData, with
                      probability P per tag (0..1)
  no-keepalive        never send KEEPALIVE (the client should reconnect)
  refuse[=STATUS]     refuse every connection with this ConnectionAttemptEvent status (default 1)
  cut-report=N        every Nth RO_ACCESS_REPORT stops in the middle and the connection drops
  lying-length=N[/L]  every Nth RO_ACCESS_REPORT's length field says L (default 4294967295)
example: --fault vendor-params=0.01 --fault cut-report=500,lying-length=1000/5
"""


def parse_faults(specs: Iterable[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def _fault_fields(name: str, value: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if name == "vendor-params":
        fields["vendor_params"] = float(value or "")
    elif name == "no-keepalive":
        if value is not None:
            raise ValueError("takes no value")
        fields["no_keepalive"] = True
    elif name == "refuse":
        fields["refuse"] = 1 if value is None else int(value)
        if fields["refuse"] == 0:
            raise ValueError("status 0 is success, not a refusal")
    elif name == "cut-report":
        fields["cut_report_every"] = int(value or "")
        if fields["cut_report_every"] <= 0:
            raise ValueError("N must be positive")
    elif name == "lying-length":
        every, slash, length = (value or "").partition("/")
        fields["lie_length_every"] = int(every)
        if fields["lie_length_every"] <= 0:
            raise ValueError("N must be positive")
        if slash:
            fields["lie_length"] = int(length)
    else:
        raise ValueError(f"unknown fault {name!r}")
    Faults(**fields)  # each value checked here, so that the error names its SPEC
    return fields


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``llrp`` to ``edgegw sim``'s subcommands."""
    parser = sub.add_parser(
        "llrp",
        help="UHF RFID reader, LLRP over TCP",
        description="Simulated LLRP 1.1 UHF RFID reader on a TCP port (the standard's port is 5084).",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tcp",
        type=serving.host_port,
        required=True,
        metavar="HOST:PORT",
        help="serve on a TCP port (0: any)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="tag reads per second (default 1000)")
    parser.add_argument("--tags", type=int, default=20, help="tag population size (default 20)")
    parser.add_argument(
        "--epc",
        type=parse_epc,
        action="append",
        default=[],
        metavar="EPC",
        help="a tag of the population, as 24 hex digits or an EPC URI; repeat for more; replaces --tags",
    )
    parser.add_argument(
        "--antennas", type=antenna_list(0xFFFF), default=(1, 2, 3, 4), help="connected antennas (1,2,3,4)"
    )
    parser.add_argument(
        "--max-antennas", type=int, default=4, help="antenna ports the reader has (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the population and randomness")
    parser.add_argument("--round-ms", type=float, default=50.0, help="inventory round duration (default 50)")
    parser.add_argument("--rssi-mean", type=float, default=-60.0, help="mean RSSI in dBm (default -60)")
    parser.add_argument("--rssi-spread", type=float, default=6.0, help="RSSI spread in dB (default 6)")
    parser.add_argument("--uptime-clock", action="store_true", help="no UTC clock: timestamps are uptime")
    serving.add_seed_and_faults(parser, "llrp", seed=None)
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """The simulator's options from ``edgegw sim llrp`` arguments; ValueError names a bad one."""
    return SimOptions(
        tags=args.tags,
        epcs=tuple(args.epc),
        rate=args.rate,
        antennas=args.antennas,
        max_antennas=max(args.max_antennas, *args.antennas),
        rssi_mean=args.rssi_mean,
        rssi_spread=args.rssi_spread,
        round_ms=args.round_ms,
        seed=args.seed,
        utc_clock=not args.uptime_clock,
        faults=parse_faults(args.llrp_faults),
    )


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Run ``edgegw sim llrp`` with parsed ``args`` until ``stop`` is set (forever without one). Prints
    ``llrp simulator on tcp HOST:PORT`` once it listens."""
    options = options_from_args(args)
    await serving.serve_until_stopped("llrp simulator", args, options, None, serve_tcp, stop=stop, out=out)
