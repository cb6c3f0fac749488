"""``can``: a CAN bus heard through python-can 4.x: J1939 (built-in PGN table, passive transport-protocol
reassembly, DM1), a DBC file (cantools), raw frames.

Interfaces are python-can's own (``socketcan``: can0 through the kernel, slcand or candleLight adapters on
the kernel's gs_usb driver; ``slcan``: LAWICEL serial adapters such as a CANable on /dev/ttyACM0;
``gs_usb``: python-can's gs_usb interface over pyusb, for candleLight-type adapters on kernels without that
driver; ``virtual``: tests). The interface's library does the talking; the driver writes no adapter
protocol. Listen-only is the controller's own mode where the driver opens it: slcan opens with ``L``, gs_usb
starts the controller with GS_CAN_MODE_LISTEN_ONLY (an adapter without the feature is refused); socketcan's
mode is the kernel's. A device::

    - name: chassis
      driver: can
      interface: slcan           # socketcan | slcan | gs_usb | virtual
      channel: /dev/ttyACM0      # can0 (socketcan); the serial path (slcan); the adapter's index (gs_usb)
      bitrate: 250000
      listen_only: true          # the default: never transmit, never acknowledge
      j1939: true                # decode J1939 and reassemble its transport protocol
      dbc: vehicle.dbc           # optional: decode with this DBC (relative to the config file)
      raw_frames: false          # the default: no can.frame events
      filters: [{id: 0x18FEF100, mask: 0x00FFFF00}]   # optional: frames to keep (any filter matches)
      report:                    # rate control, per signal (see below)
        default: {report_on_change: true, min_interval_s: 1, max_interval_s: 60}
        pgns: {EEC1: {every_s: 0.5}}
        signals: {wheel_based_vehicle_speed: {deadband: 1}}

Events (``data``):

- ``j1939.pgn``: ``{pgn, name, source, destination, values, units}``, ``name`` the PGN's acronym (``CCVS``),
  ``destination`` None for broadcast; ``values`` only the SPNs that are values (not "not available", not
  "error") and due by the rate control.
- ``j1939.dm1``: ``{source, malfunction, red_stop, amber_warning, protect, dtcs: [{spn, fmi, occurrence}]}``,
  the lamps True/False (None: not available); when a source's set of active codes or its lamps change, and
  every ``dm1_repeat_s`` while it has a code.
- ``can.signals``: ``{message, frame_id, signals, units}`` (+ ``source`` for a J1939 DBC): a DBC message's
  signals due by the rate control; a value outside the signal's [minimum, maximum] is left out and counted
  (``out_of_range``).
- ``can.frame`` (``raw_frames: true``): ``{id, extended, dlc, data}`` (``data`` in hex).

Rate control per signal (:mod:`drivers.reporting`'s deadband, report on change, maximum interval, plus a
minimum interval and a fixed sampling period) turns a bus of thousands of frames a second into an event
stream; a signal's rule is the first of ``report.signals`` (by name), ``report.pgns`` / ``report.messages``
(by PGN number or acronym, by DBC message name) and ``report.default``.

One interface, many consumers: every device on one channel shares one python-can bus and its one reader
(:mod:`drivers.interfaces`); each device has its own bounded queue and its own filters. The bus is read on
the event loop when it has a file descriptor (slcan, socketcan: ``add_reader``, then ``recv(0)`` until
empty) and by one thread otherwise (virtual, gs_usb); either stops reading while the interface's own
bounded queue is full (the kernel's or the adapter's buffer then holds, or drops and counts, what comes),
so nothing here grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple

import can
import usb.core  # type: ignore[import-untyped]  # pyusb ships no type hints
import usb.util  # type: ignore[import-untyped]
from can.exceptions import error_check
from can.interfaces.gs_usb import GsUsbBus
from can.interfaces.slcan import slcanBus
from gs_usb.constants import GS_CAN_MODE_LISTEN_ONLY, GS_CAN_MODE_NORMAL  # type: ignore[import-untyped]
from gs_usb.gs_usb import GsUsb  # type: ignore[import-untyped]  # gs-usb ships no type hints
from gs_usb.gs_usb_frame import GS_USB_FRAME_SIZE, GS_USB_NONE_ECHO_ID, GsUsbFrame  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from protocols import j1939
from protocols.errors import DecodeError

from . import interfaces
from .base import DeviceContext, Driver, DriverOptions, config_path
from .bus import SharedLine
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec
from .counters import DECODE_ERRORS
from .errors import ConfigurationError, ConnectionLost, DeviceUnavailable, MissingDependencyError
from .kinds import CAN_FRAME, CAN_SIGNALS, J1939_DM1, J1939_PGN
from .reporting import Deadband, MaxInterval, Reporter, ReportOnChange

__all__ = ["CanDriver", "CanFilter", "CanOptions", "ReportOptions", "ReportRule", "load_dbc"]

# The driver's own counters, on top of drivers.counters' decode_errors (a line the adapter's library could
# not read, a frame whose DLC disagrees with its data, a DBC message too short for its signals, a DM1 that
# is not one) and drivers.interfaces' frames_dropped.
ERROR_FRAMES: Final = "error_frames"
"""CAN error frames reported by the controller."""
OUT_OF_RANGE: Final = "out_of_range"
"""DBC signal values outside the signal's [minimum, maximum]: left out of the event."""
TP_TIMED_OUT: Final = "tp_timed_out"
"""J1939 multi-packet messages lost because a packet did not come in time (a TP.DT missing)."""
TP_ABORTED: Final = "tp_aborted"
"""J1939 RTS/CTS sessions aborted by one of their two nodes."""
TP_REPLACED: Final = "tp_replaced"
"""J1939 sessions abandoned because their source started another (a second BAM before the first ended)."""
TP_INCOMPLETE: Final = "tp_incomplete"
"""J1939 RTS/CTS sessions acknowledged while this tap had missed some of their packets."""
TP_INVALID: Final = "tp_invalid"
"""J1939 TP.CM frames that make no sense, and TP.DT frames out of their session's range."""
TP_ORPHANS: Final = "tp_orphans"
"""J1939 TP.DT frames of no session heard (listening began mid-session)."""
TP_EVICTED: Final = "tp_evicted"
"""J1939 sessions dropped because too many were open at once."""

_TP_COUNTERS: Final = (
    ("timed_out", TP_TIMED_OUT),
    ("aborted", TP_ABORTED),
    ("replaced", TP_REPLACED),
    ("incomplete", TP_INCOMPLETE),
    ("invalid", TP_INVALID),
    ("orphans", TP_ORPHANS),
    ("evicted", TP_EVICTED),
)

SLCAN_BITRATES: Final = (10000, 20000, 50000, 100000, 125000, 250000, 500000, 750000, 1000000)
"""What a LAWICEL adapter sets with S0..S8."""
READ_BATCH: Final = 256
"""Frames the reader takes from the bus in one turn of the loop."""
SOURCE_QUEUE: Final = 4096
"""Frames the interface's source holds before it stops reading the bus."""


# -- options ----------------------------------------------------------------------------------------------


class CanFilter(BaseModel):
    """Frames to keep: those whose identifier matches ``id`` in the bits of ``mask``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, le=0x1FFFFFFF, description="The identifier (11 or 29 bits).")
    mask: int = Field(0x1FFFFFFF, ge=0, le=0x1FFFFFFF, description="The bits of the identifier compared.")
    extended: bool | None = Field(
        None, description="Only 29-bit (true) or 11-bit (false) frames; either when absent."
    )

    def matches(self, arbitration_id: int, is_extended: bool) -> bool:
        if self.extended is not None and self.extended != is_extended:
            return False
        return (arbitration_id ^ self.id) & self.mask == 0

    def for_python_can(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"can_id": self.id, "can_mask": self.mask}
        if self.extended is not None:
            spec["extended"] = self.extended
        return spec


class ReportRule(BaseModel):
    """When a signal is worth an event. Without a condition, every value heard is reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    report_on_change: ReportOnChange = False
    deadband: Deadband | None = None
    max_interval_s: MaxInterval = None
    min_interval_s: float = Field(
        0.0, ge=0, le=86400, description="Never report the signal more often than this (seconds)."
    )
    every_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="A fixed sampling period: the latest value once per period (seconds); with "
        "report_on_change or deadband, only if it is due.",
    )

    @property
    def gap_s(self) -> float:
        """The least time between two reports of the signal."""
        return max(self.min_interval_s, self.every_s or 0.0)


DEFAULT_RULE: Final = ReportRule(report_on_change=True, min_interval_s=1.0, max_interval_s=60.0, every_s=None)
"""Each signal on change, at most once a second, and at least once a minute."""

PgnKey = Annotated[int | str, Field(description="A PGN number (65265) or its acronym (CCVS).")]


class ReportOptions(BaseModel):
    """Rate control: a rule per signal, per PGN or DBC message, and a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ReportRule = Field(DEFAULT_RULE, description="The rule of every signal without its own.")
    pgns: dict[PgnKey, ReportRule] = Field(
        default_factory=dict, description="Rules for the SPNs of a J1939 PGN, by number or acronym."
    )
    messages: dict[str, ReportRule] = Field(
        default_factory=dict, description="Rules for the signals of a DBC message, by message name."
    )
    signals: dict[str, ReportRule] = Field(
        default_factory=dict, description="Rules for one signal (an SPN or a DBC signal), by name."
    )

    @field_validator("pgns")
    @classmethod
    def _known_pgns(cls, pgns: dict[int | str, ReportRule]) -> dict[int | str, ReportRule]:
        acronyms = {p.acronym: number for number, p in j1939.PGNS.items()}
        resolved: dict[int | str, ReportRule] = {}
        for written, rule in pgns.items():
            key = int(written) if isinstance(written, str) and written.isdigit() else written
            if isinstance(key, str):
                if key.upper() not in acronyms:
                    raise ValueError(f"unknown PGN {key!r} (known: {', '.join(sorted(acronyms))})")
                key = acronyms[key.upper()]
            resolved[key] = rule
        return resolved

    def rule(self, group: int | str, signal: str) -> ReportRule:
        """The rule of ``signal`` of the PGN (a number) or DBC message (a name) ``group``."""
        rule = self.signals.get(signal)
        if rule is not None:
            return rule
        rule = self.pgns.get(group) if isinstance(group, int) else self.messages.get(group)
        return rule if rule is not None else self.default


class CanOptions(DriverOptions):
    interface: Literal["socketcan", "slcan", "gs_usb", "virtual"] = Field(
        description="python-can interface: socketcan (can0 via the kernel), slcan (a LAWICEL serial "
        "adapter), gs_usb (python-can's gs_usb over pyusb), virtual (tests)."
    )
    channel: str = Field(
        min_length=1,
        description="can0 for socketcan; the serial path for slcan; the device index for gs_usb; any name "
        "for virtual.",
    )
    bitrate: int = Field(
        250000,
        gt=0,
        le=1_000_000,
        description="Bus speed in bit/s (slcan and gs_usb set it; for socketcan the kernel's setting is "
        "used, as ip link set can0 type can bitrate ... made it).",
    )
    listen_only: bool = Field(
        True,
        description="Never transmit: the controller neither sends nor acknowledges (slcan opens with L, "
        "gs_usb starts listen-only and an adapter that cannot is refused; socketcan: the kernel's setting). "
        "false allows the transmit command.",
    )
    j1939: bool = Field(
        False, description="Decode J1939 with the built-in PGN table, its transport protocol, DM1."
    )
    dbc: Path | None = Field(None, description="Decode with this DBC file (relative to the config file).")
    raw_frames: bool = Field(False, description="Emit every frame kept as a can.frame event.")
    filters: list[CanFilter] = Field(
        default_factory=list, description="Keep only frames matching one of these (all when empty)."
    )
    report: ReportOptions = Field(ReportOptions(default=DEFAULT_RULE), description="Rate control per signal.")
    dm1_repeat_s: float = Field(
        60.0, gt=0, le=86400, description="Repeat a j1939.dm1 this often while a code is active."
    )
    tty_baudrate: int = Field(115200, gt=0, description="slcan: the serial line's speed.")
    open_delay_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description="slcan: seconds python-can waits after opening the serial port (adapters that reset on "
        "open need it; python-can's default).",
    )
    reader: Literal["auto", "loop", "thread"] = Field(
        "auto",
        description="Read the bus on the event loop (its file descriptor), in a thread, or auto (the loop "
        "where the bus has a file descriptor).",
    )
    queue_size: int = Field(
        interfaces.DEFAULT_QUEUE_SIZE, ge=1, le=1_000_000, description="Frames queued for this device."
    )

    @field_validator("dbc", mode="after")
    @classmethod
    def _dbc_loads(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = config_path(value, info)
        load_dbc(path)  # a DBC that does not parse is a configuration problem, with its file and line
        return path

    @model_validator(mode="after")
    def _coherent(self) -> CanOptions:
        if not (self.j1939 or self.dbc is not None or self.raw_frames):
            raise ValueError("nothing to decode: set j1939, dbc or raw_frames")
        if self.interface == "slcan" and self.bitrate not in SLCAN_BITRATES:
            raise ValueError(
                f"bitrate: an slcan adapter sets one of {', '.join(map(str, SLCAN_BITRATES))}, "
                f"not {self.bitrate}"
            )
        if self.interface == "gs_usb" and not self.channel.isdigit():
            raise ValueError("channel: for gs_usb, the adapter's index (0 for the first)")
        return self

    @property
    def key(self) -> str:
        """The shared interface's key: devices on one CAN channel share one reader."""
        if self.interface == "socketcan":
            return interfaces.netdev_key(self.channel)
        if self.interface == "slcan":
            return interfaces.serial_key(self.channel)
        return f"{self.interface}:{self.channel}"

    @property
    def settings(self) -> tuple[tuple[str, Any], ...]:
        """What every device on the interface must agree on."""
        return (("interface", self.interface), ("bitrate", self.bitrate), ("reader", self.reader))

    def shared_line(self) -> SharedLine:
        """The CAN channel as a shared line of the config: ``edgegw check`` refuses two devices on one channel
        that disagree on its settings (naming both), before anything opens it."""
        return SharedLine(self.key, (("driver", "can"), *self.settings, ("listen_only", self.listen_only)))


# -- the DBC ----------------------------------------------------------------------------------------------


def load_dbc(path: Path) -> Any:
    """The cantools database of the DBC file ``path``; ValueError naming the file and the line when it does
    not load (MissingDependencyError without cantools)."""
    try:
        import cantools  # noqa: PLC0415 - imported only by a device with a DBC (it takes a while)
    except ImportError as err:  # pragma: no cover - a dependency of the distribution
        raise MissingDependencyError("dbc needs cantools (pip install cantools)") from err
    try:
        return cantools.database.load_file(str(path), database_format="dbc", strict=True)
    except OSError as err:
        raise ValueError(f"{path}: cannot read it: {err.strerror or err}") from None
    except Exception as err:  # cantools' errors carry textparser's with the line, or a plain message
        where = f"{path}"
        for inner in (getattr(err, "e_dbc", None), err.__cause__, err):
            line = getattr(inner, "line", None)
            if isinstance(line, int):
                where = f"{path}:{line}"
                text = str(inner)
                break
        else:
            text = str(err)
        raise ValueError(f"{where}: not a valid DBC file: {text}") from None


class _DbcMessage(NamedTuple):
    name: str
    decode: Callable[..., Mapping[str, Any]]
    ranges: Mapping[str, tuple[float | None, float | None]]
    units: Mapping[str, str]
    length: int
    j1939: bool


class _Dbc:
    """A DBC's messages by how a frame finds them: J1939 messages by PGN (the source address masked, so any
    source matches), the others by identifier and format."""

    def __init__(self, db: Any) -> None:
        self.by_id: dict[tuple[int, bool], _DbcMessage] = {}
        self.by_pgn: dict[int, _DbcMessage] = {}
        protocol = None
        with contextlib.suppress(Exception):
            attribute = db.dbc.attributes.get("ProtocolType")
            protocol = attribute.value if attribute is not None else None
        for message in db.messages:
            is_j1939 = message.is_extended_frame and (
                message.protocol == "j1939" or str(protocol).upper() == "J1939"
            )
            entry = _DbcMessage(
                message.name,
                message.decode,
                {s.name: (s.minimum, s.maximum) for s in message.signals},
                {s.name: s.unit for s in message.signals if s.unit},
                message.length,
                is_j1939,
            )
            if is_j1939:
                self.by_pgn[j1939.parse_id(message.frame_id).pgn] = entry
            else:
                self.by_id[(message.frame_id, message.is_extended_frame)] = entry

    def find(self, arbitration_id: int, extended: bool) -> _DbcMessage | None:
        found = self.by_id.get((arbitration_id, extended))
        if found is None and extended and self.by_pgn:
            found = self.by_pgn.get(j1939.parse_id(arbitration_id).pgn)
        return found


# -- the source: one python-can bus, read on the loop or in a thread -------------------------------------


class BadFrame(NamedTuple):
    """What the interface's library could not read (a malformed adapter line): each device counts it."""

    reason: str


Frame = Any  # can.Message | BadFrame: python-can's Message is untyped for mypy's purposes


class CanSource:
    """The interface's source (:class:`drivers.interfaces.SharedSource`): one python-can bus, and the bounded
    queue between it and the interface's reader."""

    def __init__(self, bus: Any, options: CanOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.bus = bus
        self.loop = loop
        self._frames: deque[Frame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._fd = -1
        self._paused = False
        self._thread: threading.Thread | None = None
        self._room = threading.Event()
        self._room.set()
        self.filters: dict[str, tuple[CanFilter, ...]] = {}
        """device -> its filters: the bus filters on their union (the kernel's or the adapter's filter
        where it has one), each device on its own."""
        fd = -1
        if options.reader != "thread":
            try:
                fd = int(bus.fileno())
            except Exception:  # NotImplementedError: no descriptor (virtual, gs_usb)
                fd = -1
            if fd < 0 and options.reader == "loop":
                raise ConfigurationError(f"{options.interface} has no file descriptor: use reader: thread")
        if fd >= 0:
            self._fd = fd
            loop.add_reader(fd, self._readable)
        else:
            self._thread = threading.Thread(
                target=self._read_thread, name=f"can {options.channel}", daemon=True
            )
            self._thread.start()

    # -- reading ---------------------------------------------------------------------------------------
    def _take(self) -> Frame | None:
        """One frame from the bus without waiting; None when there is none. Raises when the bus is gone."""
        try:
            return self.bus.recv(0)
        except (ValueError, IndexError, KeyError) as err:  # the library choked on a malformed line
            return BadFrame(f"{type(err).__name__}: {err}")

    def _pending(self) -> bool:
        """Whether the bus holds lines it read from the port and has not handed out yet (our slcan bus reads
        whole chunks: the port is then no longer readable, though frames wait)."""
        return bool(getattr(self.bus, "_lines", None))

    def _readable(self) -> None:
        if self._fd < 0:  # closed or failed since this call was scheduled
            return
        frames = self._frames
        try:
            for _ in range(READ_BATCH):
                frame = self._take()
                if frame is None:
                    # nothing, or a line that was no frame (a reply, a frame a filter refused): go on while
                    # lines wait
                    if self._pending():
                        continue
                    break
                frames.append(frame)
        except Exception as err:  # CanOperationError, OSError: the adapter is gone
            self._fail(err)
            return
        if len(frames) >= SOURCE_QUEUE and not self._paused:
            self.loop.remove_reader(self._fd)
            self._paused = True
        elif self._pending() and not self._paused:
            self.loop.call_soon(self._readable)  # the batch ended with lines waiting: the port will not say
        self._wake()

    def _read_thread(self) -> None:
        batch: list[Frame] = []
        try:
            while not self._closed:
                if not self._room.wait(0.2):
                    continue
                try:
                    frame = self.bus.recv(0.1 if not batch else 0)
                except (ValueError, IndexError, KeyError) as err:
                    frame = BadFrame(f"{type(err).__name__}: {err}")
                if frame is not None:
                    batch.append(frame)
                    if len(batch) < READ_BATCH:
                        continue
                if batch:
                    if len(self._frames) + len(batch) >= SOURCE_QUEUE:
                        self._room.clear()
                    self.loop.call_soon_threadsafe(self._deliver, batch)
                    batch = []
        except Exception as err:
            if not self._closed:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self._fail, err)
        finally:
            with contextlib.suppress(Exception):
                self.bus.shutdown()

    def _deliver(self, batch: list[Frame]) -> None:
        self._frames.extend(batch)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, err: BaseException) -> None:
        if self._failure is None:
            self._failure = err
        self._stop_reading()
        self._wake()

    def _stop_reading(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._fd)
            self._fd = -1

    async def receive(self) -> Frame:
        frames = self._frames
        while not frames:
            if self._failure is not None:
                raise ConnectionLost(str(self._failure) or type(self._failure).__name__) from self._failure
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = frames.popleft()
        if len(frames) < SOURCE_QUEUE // 2:
            if self._paused and self._fd >= 0:
                self.loop.add_reader(self._fd, self._readable)
                self._paused = False
                if self._pending():
                    self.loop.call_soon(self._readable)
            if not self._room.is_set():
                self._room.set()
        return frame

    # -- sending ---------------------------------------------------------------------------------------
    async def send(self, message: Any) -> None:
        try:
            await asyncio.to_thread(self.bus.send, message, 1.0)
        except Exception as err:
            if isinstance(err, can.CanOperationError | OSError):
                raise ConnectionLost(f"transmit failed: {err}") from err
            raise

    # -- filters ---------------------------------------------------------------------------------------
    def set_filters(self, device: str, filters: Sequence[CanFilter] | None) -> None:
        """Set (or with None, forget) ``device``'s filters; the bus keeps the union of every device's."""
        if filters is None:
            self.filters.pop(device, None)
        else:
            self.filters[device] = tuple(filters)
        union: list[dict[str, Any]] | None = []
        for kept in self.filters.values():
            if not kept:
                union = None  # a device that keeps everything: the bus cannot filter
                break
            assert union is not None
            union.extend(f.for_python_can() for f in kept)
        with contextlib.suppress(Exception):  # an interface without filtering filters in software
            self.bus.set_filters(union or None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        self._room.set()
        if self._thread is None:
            with contextlib.suppress(Exception):
                self.bus.shutdown()


_LINE: Final = re.compile(rb"[^\r\x07]*[\r\x07]")
"""One adapter line with its terminator: CR, or BEL (an error reply)."""


class _SlcanBus(slcanBus):
    """python-can's slcan interface with one change: what is waiting on the serial port is read in one call.

    python-can 4.6's ``slcanBus._read`` reads the port one byte per call (pyserial: a ``select`` and a
    ``read`` system call per byte, about 150 us of CPU per frame on this machine: a loaded bus of 8,000
    frames/s would take more than a core). This ``_read`` takes everything waiting, splits it into lines
    (terminator kept, as python-can's own ``_read`` returns them) and hands them out one by one; parsing the
    lines, the adapter commands and everything else stay python-can's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lines: deque[str] = deque()
        super().__init__(*args, **kwargs)

    def _read(self, timeout: float | None) -> str | None:
        line = self._read_line(timeout)
        return None if line is None else self._checked(line)  # outside error_check: the port is fine

    def _read_line(self, timeout: float | None) -> str | None:
        lines = self._lines
        if lines:
            return lines.popleft()
        port = self.serialPortOrig
        try:
            port.fileno()
        except Exception:  # a pyserial URL without a descriptor (socket://...): python-can's own read
            line: str | None = super()._read(timeout)
            return line
        deadline = None if timeout is None else time.monotonic() + timeout
        with error_check("Could not read from serial device"):
            while True:
                waiting = port.in_waiting
                if waiting:
                    self._buffer += port.read(waiting)
                else:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    ready, _, _ = select.select([port.fileno()], [], [], left)
                    if not ready:
                        return None
                    # readable with nothing waiting: data that just came, or the end of the port (pyserial
                    # raises "device reports readiness to read but returned no data" for an unplugged one)
                    chunk = port.read(max(1, port.in_waiting))
                    if not chunk:
                        raise OSError("the serial port reports readiness but returned no data (unplugged?)")
                    self._buffer += chunk
                buffer = self._buffer
                found = _LINE.findall(buffer)
                if found:
                    used = sum(map(len, found))
                    del buffer[:used]
                    lines.extend(line.decode("ascii", "replace") for line in found)
                    return lines.popleft()
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    @staticmethod
    def _checked(line: str) -> str:
        """``line``, if it is one an adapter sends (a frame, a reply, CR or BEL); python-can would pass over
        any other in silence: it is raised as the malformed line it is (the source counts it)."""
        if line[0] not in _ADAPTER_LINES:
            raise ValueError(f"not an slcan line: {line[:16]!r}")
        return line


_ADAPTER_LINES: Final = frozenset("tTrRdDbBxzZVvNF\r\x07")
"""What an adapter's line starts with: a frame (classic, FD, CANdapter's x), a transmit acknowledgement,
a version, serial number or status reply, or the bare CR / BEL of an answer."""


GS_CAN_FEATURE_LISTEN_ONLY: Final = 1 << 0
"""BT_CONST's feature flag of a controller that can be started listen-only (Linux's gs_usb.c; the gs-usb
package names the mode flag of the same bit, not the feature)."""
GS_USB_SAMPLE_POINT: Final = 87.5
"""Percent: CiA's recommended sample point (the one python-can's gs_usb and the gs-usb package use)."""
GS_USB_IN: Final = 0x81
"""The gs_usb bulk IN endpoint: the frames the adapter hears."""


class _GsUsbBus(GsUsbBus):
    """python-can's gs_usb interface (a candleLight-type adapter over pyusb), opened the way a tap must be.

    python-can 4.6's ``GsUsbBus`` starts the controller with the gs-usb package's default flags, normal mode:
    a controller that acknowledges every frame it hears, one node more on a vehicle's bus, whatever the
    gateway sends or not. It also reads through ``GsUsb.read``, which takes every USB error for "no frame":
    an unplugged adapter would be silence, never a lost device. This bus differs in four points; sending and
    the frame layout stay python-can's and the gs-usb package's:

    - the controller is started with GS_CAN_MODE_LISTEN_ONLY when ``listen_only``, and an adapter whose
      BT_CONST feature flags lack GS_CAN_FEATURE_LISTEN_ONLY is refused (:class:`ConfigurationError`): the
      gs-usb package clears a flag the adapter lacks and would start it in normal mode without a word;
    - no hardware timestamps are asked for (the adapter's count microseconds since its own start and wrap
      every 71 minutes: no time of day); a frame is stamped when it is read, as with the virtual interface;
    - the bulk IN endpoint is read here: a timeout is no frame, any other USB error (ENODEV: unplugged) is
      :class:`can.CanOperationError`, which the source reports as the connection lost (the device is
      reopened with backoff); the adapter's echoes of frames this bus sent are passed over, as socketcan
      does without ``receive_own_messages``;
    - shutdown resets the controller and releases pyusb's claim and handle. python-can's own re-scans the
      adapter and starts it once more, in normal mode, before stopping it (its workaround for a reopen that
      failed): on a vehicle bus, a moment of acknowledging frames. Here the next open starts from a device
      nothing holds (reopening after a close and after an unplug is tested on a faked adapter, no real one).
    """

    def __init__(self, index: int, bitrate: int, *, listen_only: bool) -> None:
        try:
            adapters = GsUsb.scan()
        except usb.core.NoBackendError as err:
            raise MissingDependencyError("gs_usb: pyusb finds no libusb (install libusb-1.0)") from err
        if index >= len(adapters):
            raise can.CanInitializationError(f"no gs_usb adapter {index} (found {len(adapters)})")
        adapter = adapters[index]
        try:
            capability = adapter.device_capability
            if listen_only and not capability.feature & GS_CAN_FEATURE_LISTEN_ONLY:
                raise ConfigurationError(
                    f"gs_usb adapter {index} ({_usb_name(adapter.gs_usb)}) cannot listen only: its feature "
                    f"flags 0x{capability.feature:08X} lack GS_CAN_FEATURE_LISTEN_ONLY, and started it would "
                    "acknowledge every frame on the bus; use an adapter that can, or set listen_only: false"
                )
            try:
                timing = can.BitTiming.from_sample_point(
                    f_clock=capability.fclk_can, bitrate=bitrate, sample_point=GS_USB_SAMPLE_POINT
                )
            except ValueError as err:
                raise ConfigurationError(
                    f"gs_usb adapter {index}: bitrate {bitrate} cannot be set on its "
                    f"{capability.fclk_can} Hz clock: {err}"
                ) from None
            # the controller's TSEG1 is prop_seg + phase_seg1; python-can's BitTiming gives it whole
            prop_seg = 1
            adapter.set_timing(prop_seg, timing.tseg1 - prop_seg, timing.tseg2, timing.sjw, timing.brp)
            adapter.start(GS_CAN_MODE_LISTEN_ONLY if listen_only else GS_CAN_MODE_NORMAL)
        except BaseException:
            with contextlib.suppress(Exception):
                usb.util.dispose_resources(adapter.gs_usb)
            raise
        self.gs_usb = adapter
        self.channel_info = f"gs_usb {index}"
        self._index = index
        self._bitrate = bitrate
        can.BusABC.__init__(self, channel=str(index))  # not GsUsbBus.__init__: it opens in normal mode

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        timeout_ms = 1000 if timeout is None else max(1, round(timeout * 1000))  # libusb's 0 waits forever
        try:
            data = self.gs_usb.gs_usb.read(GS_USB_IN, GS_USB_FRAME_SIZE, timeout_ms)
        except usb.core.USBTimeoutError:
            return None, False
        except usb.core.USBError as err:
            raise can.CanOperationError(f"gs_usb adapter {self._index}: {err}") from err
        if len(data) != GS_USB_FRAME_SIZE:
            raise ValueError(f"a gs_usb frame of {len(data)} bytes, not {GS_USB_FRAME_SIZE}")
        frame = GsUsbFrame()
        GsUsbFrame.unpack_into(frame, bytes(data), False)
        if frame.echo_id != GS_USB_NONE_ECHO_ID:
            return None, False  # the echo of a frame this bus sent: the adapter's receipt, not bus traffic
        message = can.Message(
            timestamp=time.time(),
            arbitration_id=frame.arbitration_id,
            is_extended_id=frame.is_extended_id,
            is_remote_frame=frame.is_remote_frame,
            is_error_frame=frame.is_error_frame,
            channel=self.channel_info,
            dlc=frame.can_dlc,
            data=bytes(frame.data[: frame.can_dlc]),
        )
        return message, False

    def shutdown(self) -> None:
        if self._is_shutdown:
            return
        can.BusABC.shutdown(self)
        self.gs_usb.stop()  # MODE reset; the gs-usb package ignores the USB error of an unplugged adapter
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(self.gs_usb.gs_usb)


def _usb_name(device: Any) -> str:
    """A USB device as lsusb names it (from its descriptor: no transfer)."""
    return f"{device.idVendor:04x}:{device.idProduct:04x} on bus {device.bus} address {device.address}"


def _open_bus(options: CanOptions) -> Any:
    """python-can's bus for ``options`` (blocking: python-can's slcan waits after opening the port)."""
    kwargs: dict[str, Any] = {}
    if options.interface == "slcan":
        return _SlcanBus(
            channel=options.channel,
            bitrate=options.bitrate,
            listen_only=options.listen_only,
            tty_baudrate=options.tty_baudrate,
            sleep_after_open=options.open_delay_s,
        )
    elif options.interface == "gs_usb":
        return _GsUsbBus(int(options.channel), options.bitrate, listen_only=options.listen_only)
    elif options.interface == "virtual":
        kwargs = {"rx_queue_size": SOURCE_QUEUE * 4}
    elif options.interface == "socketcan":
        kwargs = {"receive_own_messages": False}
    return can.Bus(interface=options.interface, channel=options.channel, **kwargs)


# -- rate control -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Signal:
    reporter: Reporter
    gap_s: float
    next_check: float = -math.inf
    """A signal with a minimum interval or a period is looked at once per ``gap_s``, no sooner."""


class _Group:
    """The signals of one PGN from one source (or of one DBC message): their rules, and when the first of
    them is next looked at; until then the group's frames are not even decoded (on a loaded bus, most
    frames repeat what was reported a moment ago)."""

    __slots__ = ("quiet_until", "signals")

    def __init__(self, group: int | str, rules: ReportOptions, names: frozenset[str]) -> None:
        self.signals: dict[str, _Signal] = {}
        for name in names:
            rule = rules.rule(group, name)
            self.signals[name] = _Signal(Reporter.of(rule), rule.gap_s)
        self.quiet_until = -math.inf

    def due(self, values: Mapping[str, Any], now: float) -> dict[str, Any]:
        """The values of ``values`` to report now (they become their signals' last reported)."""
        report: dict[str, Any] = {}
        quiet = math.inf
        for name, signal in self.signals.items():
            if now >= signal.next_check:
                if name in values:  # absent: not available, out of range; looked at again after its gap
                    value = values[name]
                    if signal.reporter.offer(value, now):
                        report[name] = value
                signal.next_check = now + signal.gap_s
            quiet = min(quiet, signal.next_check)
        self.quiet_until = quiet
        return report


# -- DM1 --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Dm1State:
    codes: frozenset[tuple[int, int]]
    lamps: j1939.Lamps
    emitted_at: float


# -- commands ---------------------------------------------------------------------------------------------


class TransmitArgs(CommandArgs):
    """One frame to send on the bus."""

    id: int = Field(ge=0, le=0x1FFFFFFF, description="The identifier.")
    data: str = Field("", pattern=r"^([0-9A-Fa-f]{2}){0,8}$", description="Up to 8 bytes, in hex.")
    extended: bool = Field(True, description="A 29-bit identifier (else 11 bits).")


# -- the driver -------------------------------------------------------------------------------------------


class CanDriver(Driver[CanOptions]):
    name: ClassVar[str] = "can"
    Options: ClassVar[type[CanOptions]] = CanOptions
    emits: ClassVar[frozenset[str]] = frozenset({CAN_FRAME, CAN_SIGNALS, J1939_PGN, J1939_DM1})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "transmit": CommandSpec(TransmitArgs, "Send one frame on the bus (only with listen_only: false)."),
    }

    def __init__(self, device: str, options: CanOptions) -> None:
        super().__init__(device, options)
        self._subscription: interfaces.Subscription[Frame, Any] | None = None

    async def run(self, ctx: DeviceContext) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        dbc = None
        if options.dbc is not None:
            try:
                dbc = _Dbc(await asyncio.to_thread(load_dbc, options.dbc))
            except ValueError as err:
                raise ConfigurationError(str(err)) from None

        async def open_source() -> CanSource:
            try:
                bus = await asyncio.to_thread(_open_bus, options)
            except can.CanInterfaceNotImplementedError as err:
                raise MissingDependencyError(f"{options.interface}: {err}") from err
            except (can.CanError, OSError, ValueError) as err:
                raise DeviceUnavailable(f"{options.interface} {options.channel}: {err}") from err
            try:
                return CanSource(bus, options, loop)
            except BaseException:
                with contextlib.suppress(Exception):
                    bus.shutdown()
                raise

        filters = tuple(options.filters)
        accept: Callable[[Frame], bool] | None = None
        if filters:

            def accept(frame: Frame) -> bool:
                if isinstance(frame, BadFrame):
                    return True
                aid, extended = frame.arbitration_id, frame.is_extended_id
                return any(f.matches(aid, extended) for f in filters)

        async with interfaces.attach(
            options.key,
            open_source,
            settings=options.settings,
            device=self.device,
            listen_only=options.listen_only,
            accept=accept,
            queue_size=options.queue_size,
            count=ctx.count,
        ) as sub:
            source = sub.interface._source
            if isinstance(source, CanSource):
                source.set_filters(self.device, filters)
            self._subscription = sub
            try:
                ctx.connected(f"{options.interface} {options.channel}, {options.bitrate} bit/s")
                await _Decoder(self.device, options, ctx, dbc).consume(sub)
            finally:
                self._subscription = None
                source = sub.interface._source
                if isinstance(source, CanSource):
                    source.set_filters(self.device, None)

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        if name != "transmit" or not isinstance(args, TransmitArgs):
            return await super().command(name, args)
        if self.options.listen_only:
            raise CommandRefused(f"{self.device} is listen-only: set listen_only: false to transmit")
        if not args.extended and args.id > 0x7FF:
            raise CommandRefused(f"an 11-bit identifier is at most 0x7FF, not 0x{args.id:X}")
        sub = self._subscription
        if sub is None:
            raise CommandFailed(f"{self.device} is not connected")
        data = bytes.fromhex(args.data)
        message = can.Message(arbitration_id=args.id, is_extended_id=args.extended, data=data)
        try:
            await sub.send(message)
        except ConnectionLost as err:
            raise CommandFailed(str(err)) from err
        except can.CanError as err:
            raise CommandFailed(f"transmit failed: {err}") from err
        return {"id": args.id, "extended": args.extended, "data": data.hex()}


class _Decoder:
    """One device's decoding of the frames its subscription gets."""

    def __init__(self, device: str, options: CanOptions, ctx: DeviceContext, dbc: _Dbc | None) -> None:
        self.device = device
        self.options = options
        self.ctx = ctx
        self.dbc = dbc
        self.reassembler = j1939.Reassembler()
        self._tp_seen = {name: 0 for name, _ in _TP_COUNTERS}
        self.groups: dict[tuple[int, int | str], _Group] = {}
        self.dm1: dict[int, _Dm1State] = {}

    async def consume(self, sub: interfaces.Subscription[Frame, Any]) -> None:
        options = self.options
        ctx = self.ctx
        count = ctx.count
        emit = ctx.emit
        raw_frames = options.raw_frames
        do_j1939 = options.j1939
        dbc = self.dbc
        reassembler = self.reassembler
        pgns = j1939.PGNS
        clock = time.monotonic
        while True:
            try:
                batch = await sub.receive_many(READ_BATCH)
            except StopAsyncIteration:  # pragma: no cover - receive_many raises _Left, handled by attach
                return
            now = clock()
            for frame in batch:
                if type(frame) is BadFrame:
                    count(DECODE_ERRORS, 1)
                    continue
                if frame.is_error_frame:
                    count(ERROR_FRAMES, 1)
                    continue
                data = frame.data
                if frame.is_remote_frame:
                    continue
                if len(data) != frame.dlc:
                    count(DECODE_ERRORS, 1)  # the DLC disagrees with the data: not trusted
                    continue
                ts = frame.timestamp or None
                if raw_frames:
                    emit(
                        CAN_FRAME,
                        {
                            "id": frame.arbitration_id,
                            "extended": frame.is_extended_id,
                            "dlc": frame.dlc,
                            "data": bytes(data).hex(),
                        },
                        ts,
                    )
                aid = frame.arbitration_id
                if do_j1939 and frame.is_extended_id:
                    pf = (aid >> 16) & 0xFF
                    if pf in {0xEC, 0xEB}:
                        for message in reassembler.feed(aid, bytes(data), now):
                            self._j1939(message, now, ts)
                    else:
                        pgn = (aid >> 8) & 0x3FF00 if pf < 240 else (aid >> 8) & 0x3FFFF
                        if pgn in pgns or pgn == j1939.DM1:
                            source = aid & 0xFF
                            group = self.groups.get((source, pgn))
                            if group is None or now >= group.quiet_until:
                                da = (aid >> 8) & 0xFF
                                destination = None if pf >= 240 or da == 0xFF else da
                                self._j1939(j1939.Message(pgn, source, destination, bytes(data)), now, ts)
                if dbc is not None:
                    message_def = dbc.find(aid, frame.is_extended_id)
                    if message_def is not None:
                        self._dbc(message_def, aid, data, now, ts)
            if do_j1939:
                if reassembler.sessions:
                    reassembler.expire(now)
                self._charge_tp()

    def _charge_tp(self) -> None:
        stats = self.reassembler.stats
        seen = self._tp_seen
        for name, counter in _TP_COUNTERS:
            value = getattr(stats, name)
            if value != seen[name]:
                self.ctx.count(counter, value - seen[name])
                seen[name] = value

    def _group(self, source: int, key: int | str, names: frozenset[str]) -> _Group:
        group = self.groups.get((source, key))
        if group is None:
            group = self.groups[(source, key)] = _Group(key, self.options.report, names)
        return group

    def _j1939(self, message: j1939.Message, now: float, ts: float | None) -> None:
        pgn, source, destination, data = message.pgn, message.source, message.destination, message.data
        if pgn == j1939.DM1:
            self._dm1(source, data, now, ts)
            return
        table = j1939.PGNS.get(pgn)
        if table is None:
            return
        group = self._group(source, pgn, table.names)
        values = group.due(table.decode(data), now)
        if not values:
            return
        units = table.units
        self.ctx.emit(
            J1939_PGN,
            {
                "pgn": pgn,
                "name": table.acronym,
                "source": source,
                "destination": destination,
                "values": values,
                "units": {name: units[name] for name in values if name in units},
            },
            ts,
        )

    def _dm1(self, source: int, data: bytes, now: float, ts: float | None) -> None:
        try:
            dm1 = j1939.decode_dm1(data)
        except DecodeError:
            self.ctx.count(DECODE_ERRORS, 1)
            return
        codes = frozenset((d.spn, d.fmi) for d in dm1.dtcs)
        state = self.dm1.get(source)
        if (
            state is not None
            and state.codes == codes
            and state.lamps == dm1.lamps
            and (not codes or now - state.emitted_at < self.options.dm1_repeat_s)
        ):
            return
        self.dm1[source] = _Dm1State(codes, dm1.lamps, now)
        lamps = dm1.lamps
        self.ctx.emit(
            J1939_DM1,
            {
                "source": source,
                "malfunction": lamps.malfunction,
                "red_stop": lamps.red_stop,
                "amber_warning": lamps.amber_warning,
                "protect": lamps.protect,
                "dtcs": [{"spn": d.spn, "fmi": d.fmi, "occurrence": d.occurrence} for d in dm1.dtcs],
            },
            ts,
        )

    def _dbc(self, message: _DbcMessage, aid: int, data: Any, now: float, ts: float | None) -> None:
        source = aid & 0xFF if message.j1939 else -1
        group = self._group(source, message.name, frozenset(message.ranges))
        if now < group.quiet_until:
            return
        try:
            decoded = message.decode(bytes(data), decode_choices=True, scaling=True)
        except Exception:  # cantools: too short for its signals, a multiplexer value it does not know
            self.ctx.count(DECODE_ERRORS, 1)
            return
        values: dict[str, Any] = {}
        ranges = message.ranges
        for name, value in decoded.items():
            if isinstance(value, int | float):
                low, high = ranges.get(name, (None, None))
                if (low is not None and value < low) or (high is not None and value > high):
                    self.ctx.count(OUT_OF_RANGE, 1)
                    continue
                values[name] = value
            else:
                values[name] = str(value)  # a choice: its name
        values = group.due(values, now)
        if not values:
            return
        units = message.units
        data_out: dict[str, Any] = {
            "message": message.name,
            "frame_id": aid,
            "signals": values,
            "units": {name: units[name] for name in values if name in units},
        }
        if message.j1939:
            data_out["source"] = aid & 0xFF
        self.ctx.emit(CAN_SIGNALS, data_out, ts)
