"""``modbus``: energy meters, partial-discharge monitors and analysers on Modbus RTU (RS-485) or Modbus TCP.

A device is one unit id on one transport, and its points::

    - name: meter-3
      driver: modbus
      transport: rtu                 # rtu (serial port), tcp, or rtu-over-tcp (serial-to-Ethernet converter)
      port: /dev/ttyUSB0             # rtu: the serial port; tcp / rtu-over-tcp: host + tcp_port (502)
      baudrate: 9600
      parity: N
      unit_id: 3
      poll_s: 1.0
      byte_order: CDAB               # the default of this device's points
      points:
        - {name: voltage_a, table: holding, address: 0, type: float32, unit: V, deadband: 0.5}
        - {name: energy_import, table: holding, address: 40, type: float32, unit: kWh}
        - {name: breaker_closed, table: discrete, address: 0}
        - {name: alarm, table: holding, address: 100, type: bit, bit: 3, report_on_change: true}

Addresses are the 0-based protocol addresses; a manual's "40001" is ``table: holding, address: 0`` (see
:mod:`protocols.modbus` for the 0xxxx/1xxxx/3xxxx/4xxxx convention, the types and the byte orders).

Every poll of a device is one ``meter.reading`` event with the values read, after scale and offset::

    {"values": {"voltage_a": 230.1, "energy_import": 1206.42, "breaker_closed": true},
     "units": {"voltage_a": "V", "energy_import": "kWh"}}

A point with ``report_on_change`` (or a ``deadband``: ``0.5`` absolute, ``"1%"`` of the last reported value)
is in the event only when it changed (by more than the deadband) or its ``max_interval_s`` has passed since
it was last reported; a poll with nothing to report emits no event. Points with their own ``poll_s`` are
polled on their own schedule, in their own events.

Devices on one serial port, or one ``host:tcp_port``, share a bus (:mod:`drivers.bus`): one request at a
time, round robin across devices, a timeout per request and a backoff per silent device. A device whose
requests time out ``lost_after`` polls in a row is reported disconnected (the supervisor retries it with
backoff). Points are read in as few requests as possible (:func:`protocols.modbus.plan`); a request the
device refuses with exception 02 is split, and the split is kept for the life of the device's session. A
reply with a bad CRC, a wrong unit id, function or length is counted (``bad_crc``, ``wrong_unit``,
``wrong_function``, ``wrong_length``), never decoded, and the request is tried again (``retries``). On top
of those, the counters every driver shares (:mod:`drivers.counters`): RTU frames are found by
:class:`protocols.modbus.RtuReplyFramer`, so line noise counts ``bytes_skipped`` and a damaged frame
``frames_rejected``; a whole reply of the wrong function or length, or that does not decode, counts
``decode_errors``; a Modbus TCP header of another protocol counts ``frames_rejected``.

pymodbus (pinned to 3.16.x) is used only through :class:`ModbusLink`, the one place that knows its API, and
only as the codec: its framers (``FramerSocket``, ``FramerRTU``) build the requests and its PDU classes decode
the replies. The link takes the bytes as the transport pushes them (:mod:`drivers.transport`: from the TCP
connection's protocol, or the serial port's reader callback, with no task in between) and runs one request
at a time. pymodbus's client is not used: its machinery (a transaction manager, ``wait_for`` per request,
its own transport) costs more CPU per request than its framer, and its retries, timeouts and reconnects
belong to the bus (which would otherwise lose a shared TCP connection to a few timeouts of one dead unit,
taking every healthy unit behind the same converter with it).

Commands (:mod:`drivers.commands`): ``write`` (``{"point": NAME, "value": V}`` or ``{"values": {NAME: V}}``)
sets points marked ``writable: true`` (holding registers and coils), each value checked against the point's
type, ``min``, ``max`` and ``enum`` and whether its register can hold it before anything is sent
(:func:`encode_write`: a refusal reaches nothing), then written with function 05, 06, 15 or 16
(:func:`plan_writes` merges neighbours; a bit of a register is read and written back); ``read``
(``{"points": [...]}`` or ``{}``) reads points now. Both go on the bus as urgent requests
(:meth:`drivers.bus.Port.request`): the next turn of the line, never behind a whole poll cycle.

The driver stands on :mod:`drivers.polled` (the schedules, their stagger and ``polls_missed``, the events)
and :mod:`drivers.link` (the link's keys and opening).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerBase, FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from protocols import modbus as mb
from protocols.errors import EncodeError
from protocols.modbus import ByteOrder, DataType, ReplyCheck, Table

from . import bus, reporting
from .base import DeviceContext
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec
from .counters import DECODE_ERRORS, FRAMES_REJECTED, TIMEOUTS, Count, FramerTally
from .errors import ConnectionLost, DeviceTimeout, DeviceUnavailable
from .kinds import METER_READING
from .link import Parity, SerialOrTcpOptions
from .link import open_link as open_byte_link
from .polled import PolledDevice, PolledDriver, Schedule
from .reporting import Deadband, MaxInterval, Reporter, ReportOnChange, Reports
from .transport import ByteLink

__all__ = ["BadReply", "ExceptionReply", "ModbusDriver", "ModbusLink", "ModbusOptions", "ModbusPoint"]

# The driver's own counters, on top of drivers.counters' (bytes_skipped, frames_rejected, decode_errors,
# timeouts, polls, polls_missed, polls_unchanged, empty_polls).
BAD_CRC: Final = "bad_crc"
"""RTU replies to a read whose CRC (or byte count) was damaged (the framer also counts frames_rejected)."""
WRONG_UNIT: Final = "wrong_unit"
"""Replies from another unit id (on a shared line, a late reply of another device; waited past)."""
WRONG_FUNCTION: Final = "wrong_function"
"""Replies of another function code (also decode_errors)."""
WRONG_LENGTH: Final = "wrong_length"
"""Replies whose byte count does not fit the request (also decode_errors)."""
UNDECODABLE_REPLIES: Final = "undecodable_replies"
"""Replies pymodbus's PDU class could not decode (also decode_errors)."""
BAD_HEADER: Final = "bad_header"
"""Modbus TCP: a header of another protocol; the connection is dropped (also frames_rejected)."""
STALE_REPLIES: Final = "stale_replies"
"""Modbus TCP: replies to an earlier transaction (one that timed out)."""
FAILED_READS: Final = "failed_reads"
"""Requests whose every attempt got a damaged reply."""
REQUESTS_SPLIT: Final = "requests_split"
"""Requests split in two after exception 02 (illegal data address)."""
UNREADABLE_POINTS: Final = "unreadable_points"
"""Points the device refuses with exception 02 on their own: no longer read."""
WRONG_ECHO: Final = "wrong_echo"
"""Replies to a write whose echo names another address, value or quantity than was written."""
EXCEPTION_PREFIX: Final = "exception_"
"""Replies with a Modbus exception, counted per code: ``exception_02``, ``exception_04``, ..."""

ALSO_COUNTED: Final = {
    WRONG_ECHO: DECODE_ERRORS,
    WRONG_FUNCTION: DECODE_ERRORS,
    WRONG_LENGTH: DECODE_ERRORS,
    UNDECODABLE_REPLIES: DECODE_ERRORS,
    BAD_HEADER: FRAMES_REJECTED,
}
"""The well-known counter each of the link's reports is also counted under (``bad_crc`` is counted as
``frames_rejected`` by the RTU framer itself)."""


class ModbusPoint(BaseModel):
    """One value of a device: where it lives, how to decode it, when to report it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="The key of the value in the event.")
    table: Table = Field(Table.HOLDING, description="holding, input, coil or discrete.")
    address: int = Field(
        ge=0, le=65535, description="0-based protocol address (a manual's 40001 is holding 0)."
    )
    type: DataType | None = Field(
        None,
        description="bool (coil, discrete), bit (of a register, with bit:), int16, uint16, int32, "
        "uint32, int64, uint64, float32, float64, string (with length:). Default: bool for coil and "
        "discrete, uint16 for registers.",
    )
    length: int | None = Field(None, ge=1, description="A string's characters (two per register).")
    bit: int | None = Field(None, ge=0, le=15, description="For type bit: the bit, 0 = least significant.")
    byte_order: ByteOrder | None = Field(None, description="ABCD, CDAB, BADC or DCBA; default: the device's.")
    scale: float = Field(1.0, description="value = raw * scale + offset (numeric types).")
    offset: float = Field(0.0, description="See scale.")
    unit: str | None = Field(None, max_length=32, description="Engineering unit, reported in the event.")
    poll_s: float | None = Field(None, gt=0, le=86400, description="Own poll period; default: the device's.")
    deadband: Deadband | None = None
    report_on_change: ReportOnChange = False
    max_interval_s: MaxInterval = None
    writable: bool = Field(
        False,
        description="The write command may set this point (a holding register or a coil). Nothing is "
        "writable unless marked so.",
    )
    min: float | None = Field(None, description="With writable: the lowest value a write may set.")
    max: float | None = Field(None, description="With writable: the highest value a write may set.")
    enum: list[bool | int | float | str] | None = Field(
        None,
        min_length=1,
        description="With writable: the only values a write may set (a mode, a state: [0, 1, 2]).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        dtype = self.data_type
        if self.writable and self.table not in (Table.HOLDING, Table.COIL):
            _fail(
                "writable", f"a {self.table.value} is read-only: only holding registers and coils are written"
            )
        for key in ("min", "max", "enum"):
            if getattr(self, key) is not None and not self.writable:
                _fail(key, f"{key} limits what a write may set: it goes with writable: true")
        if (self.min is not None or self.max is not None) and not dtype.is_numeric:
            _fail("min" if self.min is not None else "max", f"a {dtype.value} point has no range")
        if self.min is not None and self.max is not None and self.min > self.max:
            _fail("max", f"max {self.max:g} is below min {self.min:g}")
        if self.table.is_bits and dtype is not DataType.BOOL:
            _fail("type", f"a {self.table.value} is one bit: its type is bool")
        if not self.table.is_bits and dtype is DataType.BOOL:
            _fail("type", "a register is not a bool: read one of its bits with type: bit and bit: N")
        if dtype is DataType.BIT and self.bit is None:
            _fail("type", "type: bit needs bit: N (0-15), the bit of the register")
        if self.bit is not None and dtype is not DataType.BIT:
            _fail("bit", "bit: N goes with type: bit")
        if dtype is DataType.STRING and self.length is None:
            _fail("type", "type: string needs length: N, its characters")
        if self.length is not None and dtype is not DataType.STRING:
            _fail("length", "length: N goes with type: string")
        if not dtype.is_numeric:
            if self.scale != 1 or self.offset != 0:
                _fail("scale" if self.scale != 1 else "offset", f"a {dtype.value} point cannot be scaled")
            if self.deadband is not None:
                _fail("deadband", f"a deadband needs a numeric point, not {dtype.value}")
        if not math.isfinite(self.scale) or self.scale == 0:
            _fail("scale", "scale must be a finite number other than 0")
        if not math.isfinite(self.offset):
            _fail("offset", "offset must be a finite number")
        span = self.span
        if span.count > mb.read_limit(self.table):
            _fail("length", f"{span.count} registers cannot be read in one request (at most 125)")
        if span.end > 65536:
            _fail("address", f"the point runs past the last address 65535 ({span.count} registers)")
        return self

    @property
    def data_type(self) -> DataType:
        if self.type is not None:
            return self.type
        return DataType.BOOL if self.table.is_bits else DataType.UINT16

    @property
    def span(self) -> mb.Span:
        return mb.Span(self.table, self.address, mb.register_count(self.data_type, self.length))

    @property
    def reports_on_change(self) -> bool:
        return reporting.reports_on_change(self)


def _fail(field_name: str, message: str) -> None:
    raise ValidationError.from_exception_data(
        "ModbusPoint",
        [
            InitErrorDetails(
                type=PydanticCustomError("modbus_point", _escape(message)), loc=(field_name,), input=None
            )
        ],
    )


def _escape(message: str) -> str:
    return message.replace("{", "(").replace("}", ")")


Transport = Literal["tcp", "rtu", "rtu-over-tcp"]


class ModbusOptions(SerialOrTcpOptions):
    port: str | None = Field(None, description="rtu: the serial port, e.g. /dev/ttyUSB0.")
    host: str | None = Field(None, description="tcp, rtu-over-tcp: the device's or converter's host.")
    tcp_port: int = Field(502, ge=1, le=65535, description="tcp, rtu-over-tcp: its TCP port.")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = Field(
        9600, description="rtu: line speed."
    )
    transport: Transport | None = Field(
        None,
        description="tcp, rtu (a serial port) or rtu-over-tcp (RTU frames through a serial-to-Ethernet "
        "converter). Default: rtu with port, tcp with host.",
    )
    parity: Parity = Field("N", description="rtu: parity (N, E, O).")
    stopbits: Literal[1, 2] = Field(1, description="rtu: stop bits.")
    unit_id: int = Field(1, ge=0, le=255, description="The unit (slave) id: 1-247 on a serial line.")
    poll_s: float = Field(1.0, gt=0, le=86400, description="Poll period of points without their own.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="A reply must start within this after a request.")
    retries: int = Field(
        0,
        ge=0,
        le=3,
        description="Tries after the first (a timeout or a corrupt reply). Keep 0-1: a retry "
        "of a silent unit holds the shared line for another timeout.",
    )
    lost_after: int = Field(
        3, ge=1, le=1000, description="Polls in a row without an answer before the device is disconnected."
    )
    max_gap: int = Field(
        16,
        ge=0,
        le=mb.MAX_READ_REGISTERS,
        description="Read across gaps of up to this many unused registers.",
    )
    byte_order: ByteOrder = Field(ByteOrder.ABCD, description="Default byte order of the points.")
    backoff_initial_s: float = Field(
        1.0, gt=0, le=3600, description="A silent device waits this long before its next request (doubling)."
    )
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="The longest such wait.")
    points: list[ModbusPoint] = Field(min_length=1, description="The values to read.")

    def check_link(self) -> None:
        """The link keys are checked with the transport, below, each problem at its key."""

    @model_validator(mode="after")
    def _consistent(self) -> ModbusOptions:
        errors: list[InitErrorDetails] = []

        def problem(loc: tuple[str | int, ...], message: str) -> None:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("modbus_options", _escape(message)), loc=loc, input=None
                )
            )

        transport = self.link_transport
        if self.transport is None and self.port is not None and self.host is not None:
            problem(("host",), "give either port (a serial port) or host (TCP), not both")
        elif transport == "rtu":
            if self.port is None:
                problem(("port",), "a serial (rtu) device needs port: the serial port")
            elif self.host is not None:
                problem(("host",), "host goes with transport tcp or rtu-over-tcp, not with a serial port")
            if not 1 <= self.unit_id <= 247:
                problem(("unit_id",), "a unit id on a serial line is 1-247")
        else:
            if self.host is None:
                problem(("host",), f"transport {transport} needs host (and tcp_port, default 502)")
            if self.port is not None:
                problem(("port",), "port is a serial port: with a TCP transport give host and tcp_port")
        if self.backoff_max_s < self.backoff_initial_s:
            problem(("backoff_max_s",), "must not be below backoff_initial_s")
        seen: dict[str, int] = {}
        for index, point in enumerate(self.points):
            if point.name in seen:
                problem(
                    ("points", index, "name"),
                    f"duplicate point name {point.name!r} (see points[{seen[point.name]}])",
                )
            else:
                seen[point.name] = index
        for index, other in _overlaps(self.points):
            mine, theirs = self.points[index], self.points[other]
            problem(
                ("points", index, "address"),
                f"{mine.name!r} ({_describe(mine)}) overlaps {theirs.name!r} ({_describe(theirs)})",
            )
        if errors:
            raise ValidationError.from_exception_data("ModbusOptions", errors)
        return self

    @property
    def link_transport(self) -> Transport:
        if self.transport is not None:
            return self.transport
        return "rtu" if self.port is not None or self.host is None else "tcp"

    def shared_line(self) -> bus.SharedLine:
        """The bus this device uses (its serial port, or its host:tcp_port) and the settings every device
        on it must share."""
        transport = self.link_transport
        settings: tuple[tuple[str, Hashable], ...] = (("driver", "modbus"), ("transport", transport))
        if transport == "rtu":
            settings += (("baudrate", self.baudrate), ("parity", self.parity), ("stopbits", self.stopbits))
        return bus.SharedLine(self.link.key, settings)

    def point_byte_order(self, point: ModbusPoint) -> ByteOrder:
        return point.byte_order or self.byte_order

    def point_poll_s(self, point: ModbusPoint) -> float:
        return point.poll_s or self.poll_s


def _describe(point: ModbusPoint) -> str:
    span = point.span
    where = f"{point.table.value} {span.address}" + (f"-{span.end - 1}" if span.count > 1 else "")
    return where + (f" bit {point.bit}" if point.bit is not None else "")


def _overlaps(points: Sequence[ModbusPoint]) -> list[tuple[int, int]]:
    """(later point, the earlier point it overlaps), by address order per table. Bits of one register do
    not overlap unless they are the same bit."""
    found: list[tuple[int, int]] = []
    order = sorted(range(len(points)), key=lambda i: (points[i].table, points[i].address, i))
    active: list[int] = []
    for i in order:
        p = points[i]
        span = p.span
        active = [j for j in active if points[j].table == p.table and points[j].span.end > span.address]
        for j in active:
            q = points[j]
            both_bits = p.data_type is DataType.BIT and q.data_type is DataType.BIT
            if both_bits and p.address == q.address and p.bit != q.bit:
                continue
            found.append((max(i, j), min(i, j)))
            break
        active.append(i)
    return sorted(set(found))


# -- the pymodbus adapter ---------------------------------------------------------------------------------


class BadReply(Exception):
    """A reply that is not an answer to the request (bad CRC, wrong unit id, function or length)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}{': ' + detail if detail else ''}")
        self.kind = kind


class ExceptionReply(Exception):
    """The device answered with a Modbus exception."""

    def __init__(self, code: int) -> None:
        try:
            text = mb.ExceptionCode(code).name.lower().replace("_", " ")
        except ValueError:
            text = "unknown exception"
        super().__init__(f"exception {code:02X} ({text})")
        self.code = code


_BAD_KINDS = {
    ReplyCheck.BAD_CRC: "bad_crc",
    ReplyCheck.WRONG_UNIT: "wrong_unit",
    ReplyCheck.WRONG_FUNCTION: "wrong_function",
    ReplyCheck.WRONG_LENGTH: "wrong_length",
}

_REQUESTS: dict[Table, type[ModbusPDU]] = {
    Table.COIL: ReadCoilsRequest,
    Table.DISCRETE: ReadDiscreteInputsRequest,
    Table.HOLDING: ReadHoldingRegistersRequest,
    Table.INPUT: ReadInputRegistersRequest,
}
_RESPONSES: dict[int, type[ModbusPDU]] = {
    1: ReadCoilsResponse,
    2: ReadDiscreteInputsResponse,
    3: ReadHoldingRegistersResponse,
    4: ReadInputRegistersResponse,
    5: WriteSingleCoilResponse,
    6: WriteSingleRegisterResponse,
    15: WriteMultipleCoilsResponse,
    16: WriteMultipleRegistersResponse,
}
"""By function code: the replies a link decodes (to its reads, and to the write command's writes)."""


def _echo_value(response: ModbusPDU, function: int) -> int:
    """What a write's echo says was written: the coil's 0xFF00 / 0x0000, the register's value, or the
    quantity of a multiple write."""
    if function == 5:
        return 0xFF00 if response.bits and response.bits[0] else 0x0000
    if function == 6:
        return int(response.registers[0]) if response.registers else -1
    return int(response.count)


_DECODER = DecodePDU(False)
"""What pymodbus's framers are built with. The link only uses their ``buildFrame``: it decodes a reply's PDU
with that reply's own class, once :mod:`protocols.modbus` has checked the frame."""

_MAX_BUFFERED = 1024
"""Bytes held while a frame is incomplete (a Modbus frame is at most 260)."""


def _ignore(_name: str) -> None:
    return None


class ModbusLink:
    """One serial port or TCP connection, shared by the devices of a bus: one read at a time.

    :meth:`read` is the whole API the driver uses. pymodbus builds each request frame and decodes each reply
    PDU; the link owns the bytes in between. RTU frames are found by
    :class:`protocols.modbus.RtuReplyFramer` (noise and damaged frames counted there, charged to the device
    whose exchange is running by :meth:`account`) and judged with :func:`protocols.modbus.judge_rtu_reply`;
    Modbus TCP frames with :func:`protocols.modbus.check_tcp_reply`; nothing is decoded before: a corrupt
    reply is counted on the device that asked and fails its request at once rather than after its timeout; a
    late reply to an earlier request (``stale_replies``) or an RTU frame of another unit (``wrong_unit``) is
    counted and skipped while the awaited reply may still come. The bus owns timeouts (it cancels
    :meth:`read`), retries and reconnects."""

    def __init__(self, name: str, *, mbap: bool, lost: Callable[[BaseException], None]) -> None:
        self.name = name
        self._mbap = mbap
        """Modbus TCP (MBAP header, transaction ids); else RTU frames (unit id, PDU, CRC)."""
        self._framer: FramerBase = FramerSocket(_DECODER) if mbap else FramerRTU(_DECODER)
        self._rtu: mb.RtuReplyFramer | None = None if mbap else mb.RtuReplyFramer()
        self._tally: FramerTally | None = None if self._rtu is None else FramerTally(self._rtu.stats)
        self._loop = asyncio.get_running_loop()
        self._lost = lost
        self._link: ByteLink | None = None
        self._tcp_buffer = b""
        self._pending: asyncio.Future[ModbusPDU] | None = None
        self._unit = 0
        self._function = 0
        self._count = 0
        self._transaction = 0
        self._report: Callable[[str], None] = _ignore
        self._failure: ConnectionLost | None = None
        self._closed = False

    async def read(
        self, table: Table, unit: int, address: int, count: int, report: Callable[[str], None] = _ignore
    ) -> list[int]:
        """``count`` registers (or bits, as 0/1) of ``table`` from ``address`` of ``unit``.

        Raises :class:`ExceptionReply`, :class:`BadReply` (already reported through ``report``),
        :class:`~drivers.errors.ConnectionLost`. A timeout is the caller's (the bus cancels this)."""
        response = await self._transact(
            lambda transaction: _REQUESTS[table](
                address=address, count=count, dev_id=unit, transaction_id=transaction
            ),
            unit,
            table.function,
            count,
            report,
        )
        if table.is_bits:
            bits = response.bits
            if len(bits) < count:
                report(WRONG_LENGTH)
                raise BadReply(WRONG_LENGTH, f"{len(bits)} bits for {count}")
            return [1 if b else 0 for b in bits[:count]]
        registers = list(response.registers)
        if len(registers) != count:
            report(WRONG_LENGTH)
            raise BadReply(WRONG_LENGTH, f"{len(registers)} registers for {count}")
        return registers

    async def write(
        self,
        table: Table,
        unit: int,
        address: int,
        values: Sequence[int],
        report: Callable[[str], None] = _ignore,
    ) -> None:
        """Write ``values`` (registers, or bits as 0/1) to ``table`` (holding or coil) from ``address`` of
        ``unit``: function 05 (one coil), 06 (one register), 15 (coils) or 16 (registers). The device's echo
        must name the same address and the value or quantity written.

        Raises :class:`ExceptionReply`, :class:`BadReply` (already reported through ``report``),
        :class:`~drivers.errors.ConnectionLost`. A timeout is the caller's (the bus cancels this)."""
        count = len(values)
        if table is Table.COIL:
            bits = [bool(v) for v in values]
            if count == 1:
                function, echo = 5, 0xFF00 if bits[0] else 0x0000

                def build(transaction: int) -> ModbusPDU:
                    return WriteSingleCoilRequest(
                        address=address, bits=bits, dev_id=unit, transaction_id=transaction
                    )
            else:
                function, echo = 15, count

                def build(transaction: int) -> ModbusPDU:
                    return WriteMultipleCoilsRequest(
                        address=address, bits=bits, dev_id=unit, transaction_id=transaction
                    )
        elif table is Table.HOLDING:
            registers = [int(v) for v in values]
            if count == 1:
                function, echo = 6, registers[0]

                def build(transaction: int) -> ModbusPDU:
                    return WriteSingleRegisterRequest(
                        address=address, registers=registers, dev_id=unit, transaction_id=transaction
                    )
            else:
                function, echo = 16, count

                def build(transaction: int) -> ModbusPDU:
                    return WriteMultipleRegistersRequest(
                        address=address, registers=registers, dev_id=unit, transaction_id=transaction
                    )
        else:
            raise ValueError(f"a {table.value} cannot be written")
        response = await self._transact(build, unit, function, count, report)
        echoed = response.address, _echo_value(response, function)
        if echoed != (address, echo):
            report(WRONG_ECHO)
            raise BadReply(
                WRONG_ECHO, f"wrote {echo} at {address}, the device echoed {echoed[1]} at {echoed[0]}"
            )

    async def _transact(
        self,
        build: Callable[[int], ModbusPDU],
        unit: int,
        function: int,
        count: int,
        report: Callable[[str], None],
    ) -> ModbusPDU:
        """Send the request ``build(transaction id)`` makes and return the reply that answers it."""
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))
        if self._rtu is None:
            self._transaction = transaction = self._transaction % 0xFFFF + 1  # 1..65535: 0 matches any reply
        else:
            transaction = 0
            self._rtu.discard()  # a late reply to a timed-out request must not pass for this one's answer
        frame = self._framer.buildFrame(build(transaction))
        future: asyncio.Future[ModbusPDU] = self._loop.create_future()
        self._pending = future
        self._unit, self._function, self._count, self._report = unit, function, count, report
        try:
            assert self._link is not None
            await self._link.write(frame)
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # settled as we were cancelled: retrieved, so asyncio does not log it
            raise
        finally:
            if self._pending is future:
                self._pending = None  # a reply landing from now on answers nobody
            self._report = _ignore

    def account(self, count: Count) -> None:
        """Charge what the RTU framer skipped and rejected since the last charge to ``count`` (the counters
        of the device whose exchange is running; nothing on Modbus TCP, which has no framing to lose)."""
        if self._tally is not None:
            self._tally.charge(count)

    @property
    def _buffer(self) -> bytes:
        """The bytes held as the start of a frame not yet complete."""
        return self._tcp_buffer if self._rtu is None else self._rtu.held

    def close(self) -> None:
        """Release the port or connection; a read in flight raises ConnectionLost. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None:
            self._failure = ConnectionLost(f"{self.name}: closed")
        self._release(self._failure)

    # -- receiving ------------------------------------------------------------------------------------
    def _on_bytes(self, data: bytes) -> None:
        """The transport's receiver (looked up at each call, so a test may wrap :meth:`_received`)."""
        self._received(data)

    def _received(self, data: bytes) -> None:
        """Bytes that arrived, as the transport pushes them."""
        rtu = self._rtu
        if rtu is not None:
            self._take_rtu(rtu, rtu.feed(data))
            return
        buf = self._tcp_buffer + data if self._tcp_buffer else data
        buf = self._take_tcp(buf)
        self._tcp_buffer = buf[-_MAX_BUFFERED:] if len(buf) > _MAX_BUFFERED else buf

    def _waiting(self) -> asyncio.Future[ModbusPDU] | None:
        """The future of the read waiting for a reply, if any (not one its caller abandoned)."""
        future = self._pending
        if future is not None and future.done():
            self._pending = future = None
        return future

    def _take_tcp(self, buf: bytes) -> bytes:
        """Consume the whole MBAP frames at the start of ``buf``; the rest (a partial frame)."""
        while len(buf) >= 8:
            future = self._waiting()
            if future is None:  # nobody waits: frame the stream, drop what is whole
                verdict, size = mb.check_tcp_reply(buf, 0, 0, 0, 0)
            else:
                verdict, size = mb.check_tcp_reply(
                    buf, self._unit, self._function, self._count, self._transaction
                )
            if verdict is ReplyCheck.INCOMPLETE:
                break
            if verdict is ReplyCheck.BAD_HEADER:
                if future is not None:
                    self._report(BAD_HEADER)
                self._fail(ConnectionLost(f"{self.name}: not a Modbus TCP stream (bad MBAP header)"))
                return b""
            if future is not None:
                self._settle(future, verdict, buf[7:size])
            buf = buf[size:]
        return buf

    def _take_rtu(self, rtu: mb.RtuReplyFramer, frames: list[mb.RtuFrame]) -> None:
        """Judge the RTU frames just framed against the read waiting (nobody waits: a late reply, dropped)."""
        future = self._waiting()
        if future is None:
            return
        unit, function, count = self._unit, self._function, self._count
        for frame in frames:
            self._settle(future, mb.judge_rtu_reply(frame, unit, function, count), frame.pdu)
            if self._pending is None:
                return  # answered (what follows it in this chunk answers nobody)
        # No answer yet: if a candidate the framer rejected was our reply, damaged, it will not come.
        for rejected_unit, rejected_function in rtu.rejected:
            if rejected_unit == unit and rejected_function & 0x7F == function:
                self._report(BAD_CRC)
                future.set_exception(BadReply(BAD_CRC))
                self._pending = None
                return

    def _settle(self, future: asyncio.Future[ModbusPDU], verdict: ReplyCheck, pdu: bytes) -> None:
        """Answer the waiting read with the frame judged ``verdict`` (its ``pdu``: function code, data), or
        count the frame and let the read wait on."""
        if verdict is ReplyCheck.OK:
            response = _RESPONSES[self._function]()
            try:
                response.decode(pdu[1:])
            except (ModbusException, ValueError, IndexError, struct.error) as err:
                self._report(UNDECODABLE_REPLIES)
                future.set_exception(BadReply("undecodable", str(err)))
            else:
                future.set_result(response)
        elif verdict is ReplyCheck.EXCEPTION:
            reply = ExceptionResponse(self._function)
            reply.decode(pdu[1:])
            future.set_exception(ExceptionReply(reply.exception_code))
        elif verdict is ReplyCheck.STALE:
            self._report(STALE_REPLIES)
            return
        elif verdict is ReplyCheck.WRONG_UNIT and not self._mbap:
            self._report(WRONG_UNIT)  # on a shared line, a late reply from another unit; ours may come
            return
        else:
            kind = _BAD_KINDS[verdict]
            self._report(kind)
            future.set_exception(BadReply(kind))
        self._pending = None

    # -- the transport --------------------------------------------------------------------------------
    def _on_lost(self, err: ConnectionLost) -> None:
        """The transport dropped (or its receiver, :meth:`_received`, failed)."""
        detail = str(err).removeprefix(f"{self.name}: ")
        self._fail(ConnectionLost(f"{self.name}: connection lost: {detail}"))

    def _fail(self, error: ConnectionLost) -> None:
        """The link is gone: fail the read in flight and tell the bus (once; not after :meth:`close`)."""
        if self._failure is not None:
            return
        self._failure = error
        self._release(error)
        self._lost(error)

    def _release(self, error: ConnectionLost) -> None:
        future = self._waiting()
        if future is not None:
            self._pending = None
            future.set_exception(error)
        self._tcp_buffer = b""
        if self._link is not None:
            self._link.close()


async def open_link(options: ModbusOptions, lost: Callable[[BaseException], None]) -> ModbusLink:
    """Open the serial port or TCP connection of ``options``' transport (the bus's opener)."""
    where = options.link
    link = ModbusLink(where.name, mbap=options.link_transport == "tcp", lost=lost)
    try:
        link._link = await open_byte_link(where, receiver=link._on_bytes, lost=link._on_lost)
    except DeviceUnavailable as err:
        verb = "cannot open" if where.serial else "cannot connect"
        detail = str(err).removeprefix(f"{where.name}: ")
        raise DeviceUnavailable(f"{where.name}: {verb}: {detail}") from (err.__cause__ or err)
    return link


# -- the driver ---------------------------------------------------------------------------------------------


_Scale = Callable[[mb.Value], mb.Value]


@dataclass(slots=True)
class _Point:
    """A point as the poller uses it: resolved options and a compiled decoder."""

    name: str
    span: mb.Span
    decode: mb.Decoder
    scale: _Scale | None
    unit: str | None


@dataclass(slots=True, eq=False)
class _Group(Schedule):
    """Points sharing a poll period: one plan of reads, one event per poll."""

    points: list[int] = field(default_factory=list)
    requests: list[mb.ReadRequest] = field(default_factory=list)


def _point(options: ModbusOptions, p: ModbusPoint) -> _Point:
    dtype = p.data_type
    return _Point(
        name=p.name,
        span=p.span,
        decode=mb.make_decoder(dtype, options.point_byte_order(p), length=p.length, bit=p.bit),
        scale=None if (p.scale == 1 and p.offset == 0) else mb.make_scaler(dtype, p.scale, p.offset),
        unit=p.unit,
    )


# -- commands -------------------------------------------------------------------------------------------

Scalar = bool | int | float | str
"""A value a command writes: JSON true/false, a number, or text."""


class ModbusWriteArgs(CommandArgs):
    """``{"point": NAME, "value": V}`` or ``{"values": {NAME: V, ...}}``."""

    point: str | None = Field(None, description="The point to write (with value).")
    value: Scalar | None = Field(
        None, description="Its new value in the units it is read in (the point's scale and offset undone)."
    )
    values: dict[str, Scalar] | None = Field(
        None,
        min_length=1,
        description="Several points at once, by name: every one is checked before any is written.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ModbusWriteArgs:
        if self.values is not None:
            if self.point is not None or self.value is not None:
                raise ValueError("give point and value, or values: not both")
        elif self.point is None or self.value is None:
            raise ValueError("give point and value, or values")
        return self

    def items(self) -> dict[str, Scalar]:
        """The values to write, by point name."""
        if self.values is not None:
            return dict(self.values)
        assert self.point is not None and self.value is not None
        return {self.point: self.value}


class ModbusReadArgs(CommandArgs):
    """``{"points": [NAME, ...]}``, or ``{}`` for every point."""

    points: list[str] | None = Field(
        None, min_length=1, description="The points to read now, by name (default: every point)."
    )


_INTEGRAL: Final = frozenset(
    (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64)
)


def _same(a: Scalar, b: Scalar) -> bool:
    """Equal and of one kind (true is not 1 here)."""
    return isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str) and a == b


def encode_write(options: ModbusOptions, point: ModbusPoint, value: Scalar) -> list[int]:
    """The registers (or the bit) a write of ``value`` to ``point`` puts on the line: the point's scale and
    offset undone, its type and byte order applied. :class:`~drivers.commands.CommandRefused` if the point
    is not writable, or the value is of the wrong type, out of the point's range or its type's, not a
    multiple of its scale, or not one of its ``enum``."""
    name = point.name
    if not point.writable:
        raise CommandRefused(f"point {name!r} is not writable (its config does not say writable: true)")
    dtype = point.data_type
    if dtype in (DataType.BOOL, DataType.BIT):
        if not isinstance(value, bool):
            raise CommandRefused(f"point {name!r} ({dtype.value}) takes true or false, not {value!r}")
        raw: Scalar = value
    elif dtype is DataType.STRING:
        if not isinstance(value, str):
            raise CommandRefused(f"point {name!r} (string) takes text, not {value!r}")
        raw = value
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandRefused(f"point {name!r} ({dtype.value}) takes a number, not {value!r}")
        if not math.isfinite(value):
            raise CommandRefused(f"point {name!r} takes a finite number, not {value!r}")
        if point.min is not None and value < point.min:
            raise CommandRefused(f"{value!r} is below the minimum {point.min:g} of point {name!r}")
        if point.max is not None and value > point.max:
            raise CommandRefused(f"{value!r} is above the maximum {point.max:g} of point {name!r}")
        number: int | float = value
        if point.scale != 1 or point.offset != 0:
            number = (value - point.offset) / point.scale
        if dtype in _INTEGRAL:
            nearest = round(number)
            if abs(number - nearest) > 1e-9 * max(1.0, abs(number)):
                raise CommandRefused(
                    f"{value!r} is not a value point {name!r} can hold "
                    f"({dtype.value}, scale {point.scale:g}, offset {point.offset:g})"
                )
            number = nearest
        else:
            number = float(number)
        raw = number
    if point.enum is not None and not any(_same(value, allowed) for allowed in point.enum):
        allowed = ", ".join(repr(v) for v in point.enum)
        raise CommandRefused(f"{value!r} is not one of the values of point {name!r} ({allowed})")
    try:
        return mb.encode(raw, dtype, options.point_byte_order(point), length=point.length, bit=point.bit)
    except EncodeError as err:
        raise CommandRefused(f"{value!r} does not fit point {name!r}: {err}") from err


@dataclass(frozen=True, slots=True)
class _Write:
    """One write on the line: ``words`` from ``address`` of ``table`` (a bit point: its register's
    ``mask`` set or cleared by a read, then a write of that register)."""

    table: Table
    address: int
    words: tuple[int, ...]
    names: tuple[str, ...]
    mask: int | None = None

    @property
    def exchanges(self) -> int:
        return 2 if self.mask is not None else 1


def plan_writes(options: ModbusOptions, values: Mapping[str, Scalar]) -> list[_Write]:
    """Every value checked (:func:`encode_write`), then the writes that set them: neighbours in one table
    merged into one write (function 15 or 16), within the standard's limits (123 registers, 1968 coils)."""
    by_name = {p.name: p for p in options.points}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise CommandRefused(f"no point named {', '.join(repr(n) for n in unknown)} on this device")
    single: list[_Write] = []
    for name, value in values.items():
        point = by_name[name]
        words = tuple(encode_write(options, point, value))
        mask = (1 << point.bit) if point.data_type is DataType.BIT and point.bit is not None else None
        single.append(_Write(point.table, point.address, words, (name,), mask))
    bits = [w for w in single if w.mask is not None]
    taken = {(w.table, w.address) for w in bits}
    clash = [w for w in single if w.mask is None and (w.table, w.address) in taken]
    if len(taken) < len(bits) or clash:
        raise CommandRefused("two of these points share a register: write them one command at a time")
    merged: list[_Write] = []
    for w in sorted((w for w in single if w.mask is None), key=lambda w: (w.table, w.address)):
        last = merged[-1] if merged else None
        limit = _WRITE_LIMIT[w.table]
        if (
            last is not None
            and last.table == w.table
            and last.address + len(last.words) == w.address
            and len(last.words) + len(w.words) <= limit
        ):
            merged[-1] = _Write(w.table, last.address, last.words + w.words, last.names + w.names)
        else:
            merged.append(w)
    return merged + bits


_WRITE_LIMIT: Final = {Table.HOLDING: 123, Table.COIL: 1968}
"""The most registers (coils) one write request may carry (Modbus Application Protocol 6.11, 6.12)."""


class ModbusDriver(PolledDriver[ModbusOptions, ModbusLink]):
    name: ClassVar[str] = "modbus"
    Options: ClassVar[type[ModbusOptions]] = ModbusOptions
    emits: ClassVar[frozenset[str]] = frozenset({METER_READING})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "write": CommandSpec(
            ModbusWriteArgs,
            "Write points marked writable: true (holding registers, coils: functions 05, 06, 15, 16), each "
            "value checked against the point's type, min, max and enum before anything is sent.",
        ),
        "read": CommandSpec(
            ModbusReadArgs, "Read points now (default: all); their values in data, as a poll reports them."
        ),
    }

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        if name == "write":
            assert isinstance(args, ModbusWriteArgs)
            writes = plan_writes(self.options, args.items())  # refused here: nothing reached the line
            poller = self.live_session()
            assert isinstance(poller, _Poller)
            await poller.write(writes)
            return {"written": args.items()}
        if name == "read":
            assert isinstance(args, ModbusReadArgs)
            names = args.points or [p.name for p in self.options.points]
            index = {p.name: i for i, p in enumerate(self.options.points)}
            unknown = [n for n in names if n not in index]
            if unknown:
                raise CommandRefused(f"no point named {', '.join(repr(n) for n in unknown)} on this device")
            poller = self.live_session()
            assert isinstance(poller, _Poller)
            return await poller.read_now(sorted({index[n] for n in names}))
        return await super().command(name, args)

    async def open_line(self, lost: Callable[[BaseException], None]) -> ModbusLink:
        return await open_link(self.options, lost)

    def backoff(self) -> tuple[float, float]:
        return self.options.backoff_initial_s, self.options.backoff_max_s

    def session(self, port: bus.Port[ModbusLink], ctx: DeviceContext) -> _Poller:
        return _Poller(self.options, port, ctx)


class _Poller(PolledDevice[ModbusLink, _Group]):
    """One device's session: its groups of points, their reads through the bus."""

    def __init__(self, options: ModbusOptions, port: bus.Port[ModbusLink], ctx: DeviceContext) -> None:
        self.options = options
        self.points = [_point(options, p) for p in options.points]
        self.spans = [p.span for p in self.points]
        periods: dict[float, list[int]] = {}
        for index, p in enumerate(options.points):
            periods.setdefault(options.point_poll_s(p), []).append(index)
        groups: list[_Group] = []
        for period, members in sorted(periods.items()):
            # A new session reports every value afresh: what was last reported may be long gone.
            reports = Reports(
                {options.points[i].name: Reporter.of(options.points[i]) for i in members},
                {self.points[i].name: u for i in members if (u := self.points[i].unit) is not None},
            )
            sub = [self.spans[i] for i in members]
            requests = [
                mb.ReadRequest(r.table, r.address, r.count, tuple(members[j] for j in r.points))
                for r in mb.plan(sub, max_gap=options.max_gap)
            ]
            groups.append(_Group(period, reports, points=members, requests=requests))
        super().__init__(port, ctx, groups)
        self._layouts: dict[mb.ReadRequest, list[tuple[str, mb.Decoder, int, _Scale | None]]] = {}
        self._exchanges: dict[mb.ReadRequest, Callable[[ModbusLink], Awaitable[list[int]]]] = {}
        self._read = _read if options.link_transport == "tcp" else _read_rtu
        self.silent_polls = 0
        self.unreadable: set[int] = set()

    def describe(self) -> str:
        opts = self.options
        return f"unit {opts.unit_id} on {opts.link.where} ({opts.link_transport})"

    def report_counter(self, kind: str, n: int = 1) -> None:
        """What the link reports about a reply: counted, and under its well-known name too."""
        count = self.ctx.count
        count(kind, n)
        also = ALSO_COUNTED.get(kind)
        if also is not None:
            count(also, n)

    async def poll(self, group: _Group) -> Mapping[str, mb.Value] | None:
        """Read every request of ``group``; the values read, or None if the device did not answer. Raises
        DeviceTimeout after ``lost_after`` silent polls in a row."""
        opts = self.options
        ctx = self.ctx
        unit = opts.unit_id
        attempts = 1 + opts.retries
        values: dict[str, mb.Value] = {}
        answered = False
        timed_out = False
        pending = list(group.requests)
        while pending:
            request = pending.pop(0)
            exchange = self._exchanges.get(request)
            if exchange is None:
                exchange = self._exchanges[request] = partial(
                    self._read, request, unit, self.report_counter, ctx.count
                )
            try:
                words = await self.port.request(
                    exchange, timeout=opts.timeout_s, attempts=attempts, retry_on=(BadReply,)
                )
            except DeviceTimeout as err:
                ctx.count(TIMEOUTS, 1)
                ctx.log.debug("%s", err)
                timed_out = True
                break  # the device is silent: the rest of this poll would only cost the bus more timeouts
            except BadReply:
                answered = True
                ctx.count(FAILED_READS, 1)
                continue
            except ExceptionReply as err:
                answered = True
                ctx.count(f"{EXCEPTION_PREFIX}{err.code:02x}", 1)
                if err.code == mb.ExceptionCode.ILLEGAL_DATA_ADDRESS:
                    parts = self._split(group, request)
                    pending[0:0] = parts
                else:
                    ctx.log.debug(
                        "read %s %d+%d: %s", request.table.value, request.address, request.count, err
                    )
                continue
            answered = True
            layout = self._layouts.get(request)
            if layout is None:
                layout = self._layouts[request] = self._layout(request)
            for name, decode, offset, scale in layout:
                values[name] = decode(words, offset) if scale is None else scale(decode(words, offset))
        if answered:
            self.silent_polls = 0
            return values
        if timed_out:
            self.silent_polls += 1
            if self.silent_polls >= opts.lost_after:
                raise DeviceTimeout(
                    f"unit {unit} silent for {self.silent_polls} polls (timeout {opts.timeout_s:g} s)"
                )
        return None

    def _split(self, group: _Group, request: mb.ReadRequest) -> tuple[mb.ReadRequest, ...]:
        """Exception 02: replace ``request`` in the group's plan by its halves (kept for later polls); a
        single point that is refused is unreadable and dropped from the plan."""
        parts = mb.split(request, self.spans)
        with contextlib.suppress(ValueError):
            at = group.requests.index(request)
            group.requests[at : at + 1] = list(parts)
        if parts:
            self.ctx.count(REQUESTS_SPLIT, 1)
        else:
            for index in request.points:
                if index not in self.unreadable:
                    self.unreadable.add(index)
                    self.ctx.count(UNREADABLE_POINTS, 1)
                    point = self.points[index]
                    self.ctx.log.warning(
                        "point %r (%s %d) refused with exception 02 (illegal data address): no longer read",
                        point.name,
                        point.span.table.value,
                        point.span.address,
                    )
        return parts

    def _layout(self, request: mb.ReadRequest) -> list[tuple[str, mb.Decoder, int, _Scale | None]]:
        """How to take ``request``'s points out of its reply (computed once per request)."""
        layout = []
        for index in request.points:
            point = self.points[index]
            layout.append((point.name, point.decode, point.span.address - request.address, point.scale))
        return layout

    # -- commands ---------------------------------------------------------------------------------------
    async def write(self, writes: Sequence[_Write]) -> None:
        """Carry out ``writes`` (checked already) in one urgent turn of the line: the command's exchange
        comes next, before the polls queued; CommandFailed says what was written before a failure."""
        opts = self.options
        unit = opts.unit_id
        ctx = self.ctx
        report = self.report_counter
        written: list[str] = []

        async def exchange(link: ModbusLink) -> None:
            try:
                for w in writes:
                    if w.mask is None:
                        await link.write(w.table, unit, w.address, w.words, report)
                    else:  # a bit of a holding register: the register as it is now, that bit changed
                        (word,) = await link.read(Table.HOLDING, unit, w.address, 1, report)
                        word = (word | w.mask) if w.words[0] else (word & ~w.mask & 0xFFFF)
                        await link.write(Table.HOLDING, unit, w.address, [word], report)
                    written.extend(w.names)
            finally:
                link.account(ctx.count)

        try:
            await self.port.request(
                exchange, timeout=opts.timeout_s * sum(w.exchanges for w in writes), urgent=True
            )
        except (DeviceTimeout, BadReply, ExceptionReply) as err:
            failed = next(w for w in writes if not set(w.names) <= set(written))
            done = f" (written: {', '.join(written)})" if written else " (nothing written)"
            what = "no answer" if isinstance(err, DeviceTimeout) else str(err)
            raise CommandFailed(
                f"writing {', '.join(failed.names)} ({failed.table.value} {failed.address}): {what}{done}"
            ) from err

    async def read_now(self, indices: Sequence[int]) -> dict[str, object]:
        """The points ``indices`` read now, each request an urgent turn of the line: ``{"values", "units"}``
        and, for points the device refused, ``"errors"`` by name. CommandFailed if the device is silent."""
        opts = self.options
        unit = opts.unit_id
        values: dict[str, mb.Value] = {}
        errors: dict[str, str] = {}
        spans = [self.spans[i] for i in indices]
        pending = [
            mb.ReadRequest(r.table, r.address, r.count, tuple(indices[j] for j in r.points))
            for r in mb.plan(spans, max_gap=opts.max_gap)
        ]
        while pending:
            request = pending.pop(0)
            try:
                words = await self.port.request(
                    partial(self._read, request, unit, self.report_counter, self.ctx.count),
                    timeout=opts.timeout_s,
                    attempts=1 + opts.retries,
                    retry_on=(BadReply,),
                    urgent=True,
                )
            except DeviceTimeout as err:
                raise CommandFailed(f"unit {unit}: no answer within {opts.timeout_s:g} s") from err
            except (BadReply, ExceptionReply) as err:
                parts: tuple[mb.ReadRequest, ...] = ()
                if isinstance(err, ExceptionReply) and err.code == mb.ExceptionCode.ILLEGAL_DATA_ADDRESS:
                    parts = mb.split(request, self.spans)  # the span crossed a hole: read its halves
                pending[0:0] = parts
                if not parts:
                    for i in request.points:
                        errors[self.points[i].name] = str(err)
                continue
            for name, decode, offset, scale in self._layout(request):
                values[name] = decode(words, offset) if scale is None else scale(decode(words, offset))
        if not values and errors:
            raise CommandFailed("; ".join(f"{name}: {reason}" for name, reason in errors.items()))
        units = {
            p.name: p.unit for i in indices if (p := self.points[i]).unit is not None and p.name in values
        }
        data: dict[str, object] = {"values": values, "units": units}
        if errors:
            data["errors"] = errors
        return data


async def _read(
    request: mb.ReadRequest, unit: int, report: Callable[[str], None], count: Count, link: ModbusLink
) -> list[int]:
    return await link.read(request.table, unit, request.address, request.count, report)


async def _read_rtu(
    request: mb.ReadRequest, unit: int, report: Callable[[str], None], count: Count, link: ModbusLink
) -> list[int]:
    """:func:`_read`, then what the RTU framer skipped and rejected meanwhile, charged to this device."""
    try:
        return await link.read(request.table, unit, request.address, request.count, report)
    finally:
        link.account(count)
