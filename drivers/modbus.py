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
``wrong_function``, ``wrong_length``), never decoded, and the request is tried again (``retries``).

pymodbus (pinned to 3.16.x) is used only through :class:`ModbusLink`, the one place that knows its API, and
only as the codec: its framers (``FramerSocket``, ``FramerRTU``) build the requests and its PDU classes decode
the replies. The link carries the bytes itself (an ``asyncio.Protocol`` on the TCP connection, a reader on
the serial port) and runs one request at a time. pymodbus's client is not used: its machinery (a
transaction manager, ``wait_for`` per request, its own transport) costs more CPU per request than its
framer, and its retries, timeouts and reconnects belong to the bus (which would otherwise lose a shared TCP
connection to a few timeouts of one dead unit, taking every healthy unit behind the same converter with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
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
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from protocols import modbus as mb
from protocols.modbus import ByteOrder, DataType, ReplyCheck, Table

from . import bus, reporting
from .base import DeviceContext, Driver, DriverOptions
from .errors import ConnectionLost, DeviceTimeout, DeviceUnavailable
from .reporting import Deadband, MaxInterval, Reporter, ReportOnChange
from .transport import SerialLink, open_serial

__all__ = ["BadReply", "ExceptionReply", "ModbusDriver", "ModbusLink", "ModbusOptions", "ModbusPoint"]


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

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        dtype = self.data_type
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


class ModbusOptions(DriverOptions):
    transport: Transport | None = Field(
        None,
        description="tcp, rtu (a serial port) or rtu-over-tcp (RTU frames through a serial-to-Ethernet "
        "converter). Default: rtu with port, tcp with host.",
    )
    port: str | None = Field(None, description="rtu: the serial port, e.g. /dev/ttyUSB0.")
    host: str | None = Field(None, description="tcp, rtu-over-tcp: the device's or converter's host.")
    tcp_port: int = Field(502, ge=1, le=65535, description="tcp, rtu-over-tcp: its TCP port.")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = Field(
        9600, description="rtu: line speed."
    )
    parity: Literal["N", "E", "O"] = Field("N", description="rtu: parity (N, E, O).")
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
    connect_timeout_s: float = Field(5.0, gt=0, le=300, description="Opening the port or TCP connection.")
    backoff_initial_s: float = Field(
        1.0, gt=0, le=3600, description="A silent device waits this long before its next request (doubling)."
    )
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="The longest such wait.")
    points: list[ModbusPoint] = Field(min_length=1, description="The values to read.")

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
        if transport == "rtu":
            assert self.port is not None  # guaranteed by the validator
            settings: tuple[tuple[str, Hashable], ...] = (
                ("driver", "modbus"),
                ("transport", transport),
                ("baudrate", self.baudrate),
                ("parity", self.parity),
                ("stopbits", self.stopbits),
            )
            return bus.SharedLine(bus.serial_key(self.port), settings)
        assert self.host is not None  # guaranteed by the validator
        settings = (("driver", "modbus"), ("transport", transport))
        return bus.SharedLine(bus.tcp_key(self.host, self.tcp_port), settings)

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
}
"""By function code: the replies a link decodes (the only requests it sends are these reads)."""

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
    PDU; the link owns the bytes in between. Every received frame is classified with
    :func:`protocols.modbus.check_tcp_reply` / ``check_rtu_reply`` before anything is decoded: a corrupt
    reply is counted on the device that asked and fails its request at once rather than after its timeout; a
    late reply to an earlier request (``stale_replies``) or an RTU frame of another unit (``wrong_unit``) is
    counted and skipped while the awaited reply may still come. The bus owns timeouts (it cancels
    :meth:`read`), retries and reconnects."""

    def __init__(self, name: str, *, mbap: bool, lost: Callable[[BaseException], None]) -> None:
        self.name = name
        self._mbap = mbap
        """Modbus TCP (MBAP header, transaction ids); else RTU frames (unit id, PDU, CRC)."""
        self._framer: FramerBase = FramerSocket(_DECODER) if mbap else FramerRTU(_DECODER)
        self._loop = asyncio.get_running_loop()
        self._lost = lost
        self._transport: asyncio.Transport | None = None
        self._serial: SerialLink | None = None
        self._reader: asyncio.Task[None] | None = None
        self._buffer = b""
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
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))
        if self._mbap:
            self._transaction = transaction = self._transaction % 0xFFFF + 1  # 1..65535: 0 matches any reply
        else:
            transaction = 0
            self._buffer = b""  # a late reply to a timed-out request must not pass for this one's answer
        frame = self._framer.buildFrame(
            _REQUESTS[table](address=address, count=count, dev_id=unit, transaction_id=transaction)
        )
        future: asyncio.Future[ModbusPDU] = self._loop.create_future()
        self._pending = future
        self._unit, self._function, self._count, self._report = unit, table.function, count, report
        try:
            if self._serial is not None:
                await self._serial.write(frame)
            else:
                assert self._transport is not None
                self._transport.write(frame)
            response = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # settled as we were cancelled: retrieved, so asyncio does not log it
            raise
        finally:
            if self._pending is future:
                self._pending = None  # a reply landing from now on answers nobody
            self._report = _ignore
        if table.is_bits:
            bits = response.bits
            if len(bits) < count:
                report("wrong_length")
                raise BadReply("wrong_length", f"{len(bits)} bits for {count}")
            return [1 if b else 0 for b in bits[:count]]
        registers = list(response.registers)
        if len(registers) != count:
            report("wrong_length")
            raise BadReply("wrong_length", f"{len(registers)} registers for {count}")
        return registers

    def close(self) -> None:
        """Release the port or connection; a read in flight raises ConnectionLost. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None:
            self._failure = ConnectionLost(f"{self.name}: closed")
        self._release(self._failure)

    # -- receiving ------------------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        """Bytes that arrived (the TCP protocol's ``data_received``, the serial reader's chunks)."""
        buf = self._buffer + data if self._buffer else data
        buf = self._take_tcp(buf) if self._mbap else self._take_rtu(buf)
        self._buffer = buf[-_MAX_BUFFERED:] if len(buf) > _MAX_BUFFERED else buf

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
                    self._report("bad_header")
                self._fail(ConnectionLost(f"{self.name}: not a Modbus TCP stream (bad MBAP header)"))
                return b""
            if future is not None:
                self._settle(future, verdict, buf[7:size])
            buf = buf[size:]
        return buf

    def _take_rtu(self, buf: bytes) -> bytes:
        """Judge the RTU frames at the start of ``buf`` (skipping noise); what may still become one."""
        future = self._waiting()
        while future is not None and len(buf) >= 5:
            unit, function, count = self._unit, self._function, self._count
            verdict, size = mb.check_rtu_reply(buf, unit, function, count)
            if verdict is ReplyCheck.INCOMPLETE:
                size = _rtu_stray_size(buf, function)
                if size == 0:
                    break  # a frame is arriving
                if size > 0:  # a whole reply to another read, or noise that merely looks like one
                    verdict, size = mb.check_rtu_reply(buf[:size], unit, function, count)
                if verdict is ReplyCheck.INCOMPLETE:
                    buf = buf[1:]  # no frame starts here: hunt for the next one
                    continue
            self._settle(future, verdict, buf[1 : size - 2])
            buf = buf[size:]
            future = self._pending
        return buf if future is not None else b""  # nobody waits: a late reply or noise

    def _settle(self, future: asyncio.Future[ModbusPDU], verdict: ReplyCheck, pdu: bytes) -> None:
        """Answer the waiting read with the frame judged ``verdict`` (its ``pdu``: function code, data), or
        count the frame and let the read wait on."""
        if verdict is ReplyCheck.OK:
            response = _RESPONSES[self._function]()
            try:
                response.decode(pdu[1:])
            except (ModbusException, ValueError, IndexError, struct.error) as err:
                self._report("undecodable_replies")
                future.set_exception(BadReply("undecodable", str(err)))
            else:
                future.set_result(response)
        elif verdict is ReplyCheck.EXCEPTION:
            reply = ExceptionResponse(self._function)
            reply.decode(pdu[1:])
            future.set_exception(ExceptionReply(reply.exception_code))
        elif verdict is ReplyCheck.STALE:
            self._report("stale_replies")
            return
        elif verdict is ReplyCheck.WRONG_UNIT and not self._mbap:
            self._report("wrong_unit")  # on a shared line, a late reply from another unit; ours may come
            return
        else:
            kind = _BAD_KINDS[verdict]
            self._report(kind)
            future.set_exception(BadReply(kind))
        self._pending = None

    # -- the transport --------------------------------------------------------------------------------
    def _attach_serial(self, serial: SerialLink) -> None:
        self._serial = serial
        self._reader = asyncio.create_task(self._read_serial(serial), name=f"modbus reader {self.name}")

    async def _read_serial(self, serial: SerialLink) -> None:
        try:
            while True:
                self._received(await serial.read())
        except ConnectionLost as err:
            detail = str(err).removeprefix(f"{self.name}: ")
            self._fail(ConnectionLost(f"{self.name}: connection lost: {detail}"))
        except Exception as err:  # a bug here must not leave the line deaf: fail it, the bus reopens it
            self._fail(ConnectionLost(f"{self.name}: reader failed: {err!r}"))

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
        self._buffer = b""
        if self._transport is not None:
            self._transport.close()
        if self._serial is not None:
            self._serial.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()


class _TcpStream(asyncio.Protocol):
    """A TCP connection's events, handed to its link."""

    def __init__(self, link: ModbusLink) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link._transport = transport

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        link = self.link
        if exc is None:
            detail = "closed by peer"
        else:
            detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        link._fail(ConnectionLost(f"{link.name}: connection lost: {detail}"))


def _rtu_stray_size(buf: bytes, function: int) -> int:
    """For bytes ``check_rtu_reply`` found incomplete: 0 while the frame at their start may still be
    arriving (a reply to this ``function``, or too few bytes to tell); the length of a reply to another read
    (its header says how long), to be judged alone; -1 when no reply starts here."""
    if len(buf) < 5:
        return 0
    fc = buf[1]
    if fc & 0x7F == function:
        return 0
    if fc & 0x7F not in _RESPONSES:
        return -1
    size = 5 if fc & 0x80 else 5 + buf[2]
    return size if len(buf) >= size else 0


async def open_link(options: ModbusOptions, lost: Callable[[BaseException], None]) -> ModbusLink:
    """Open the serial port or TCP connection of ``options``' transport (the bus's opener)."""
    transport = options.link_transport
    if transport == "rtu":
        assert options.port is not None
        name = f"serial port {options.port}"
        try:
            serial = await open_serial(
                options.port, options.baudrate, parity=options.parity, stopbits=options.stopbits
            )
        except DeviceUnavailable as err:
            cause = err.__cause__ or err
            raise DeviceUnavailable(f"{name}: cannot open: {cause}") from cause
        link = ModbusLink(name, mbap=False, lost=lost)
        link._attach_serial(serial)
        return link
    assert options.host is not None
    name = f"tcp {options.host}:{options.tcp_port}"
    link = ModbusLink(name, mbap=transport == "tcp", lost=lost)
    try:
        async with asyncio.timeout(options.connect_timeout_s):
            await link._loop.create_connection(partial(_TcpStream, link), options.host, options.tcp_port)
    except TimeoutError as err:
        link.close()
        raise DeviceUnavailable(
            f"{name}: cannot connect: no answer within {options.connect_timeout_s:g} s"
        ) from err
    except OSError as err:
        link.close()
        raise DeviceUnavailable(f"{name}: cannot connect: {err.strerror or err}") from err
    except BaseException:
        link.close()
        raise
    return link


# -- the driver ---------------------------------------------------------------------------------------------


_Scale = Callable[[mb.Value], mb.Value]


@dataclass(slots=True)
class _Point:
    """A point as the poller uses it: resolved options, a compiled decoder, its reporting state."""

    name: str
    span: mb.Span
    decode: mb.Decoder
    scale: _Scale | None
    unit: str | None
    report: Reporter

    @property
    def on_change(self) -> bool:
        return self.report.on_change


@dataclass(slots=True)
class _Group:
    """Points sharing a poll period: one plan of reads, one event per poll."""

    period: float
    points: list[int]
    requests: list[mb.ReadRequest] = field(default_factory=list)
    next_due: float = 0.0
    on_change: bool = False
    """Some point reports on change (else every value read is reported)."""
    units: dict[str, str] = field(default_factory=dict)
    """The units of the points that have one (shared by the events: never mutated)."""


def _point(options: ModbusOptions, p: ModbusPoint) -> _Point:
    dtype = p.data_type
    return _Point(
        name=p.name,
        span=p.span,
        decode=mb.make_decoder(dtype, options.point_byte_order(p), length=p.length, bit=p.bit),
        scale=None if (p.scale == 1 and p.offset == 0) else mb.make_scaler(dtype, p.scale, p.offset),
        unit=p.unit,
        report=Reporter.of(p),
    )


class ModbusDriver(Driver[ModbusOptions]):
    name: ClassVar[str] = "modbus"
    Options: ClassVar[type[ModbusOptions]] = ModbusOptions

    async def run(self, ctx: DeviceContext) -> None:
        opts = self.options
        line = opts.shared_line()
        async with bus.attach(
            line.key,
            partial(open_link, opts),
            settings=line.settings,
            device=self.device,
            open_timeout_s=opts.connect_timeout_s,
            backoff_initial_s=opts.backoff_initial_s,
            backoff_max_s=opts.backoff_max_s,
        ) as port:
            await _Poller(opts, port, ctx).run()


_WAKE_TICK_S: Final = 0.010
"""Polls start on a grid of this many seconds (or a 16th of the device's fastest period, if finer)."""


class _Poller:
    """One device's polling: its schedule, its reads through the bus, its events."""

    def __init__(self, options: ModbusOptions, port: bus.Port[ModbusLink], ctx: DeviceContext) -> None:
        self.options = options
        self.port = port
        self.ctx = ctx
        self.points = [_point(options, p) for p in options.points]
        self.spans = [p.span for p in self.points]
        periods: dict[float, list[int]] = {}
        for index, p in enumerate(options.points):
            periods.setdefault(options.point_poll_s(p), []).append(index)
        self.groups: list[_Group] = []
        for period, members in sorted(periods.items()):
            group = _Group(period, members)
            group.on_change = any(self.points[i].on_change for i in members)
            group.units = {self.points[i].name: u for i in members if (u := self.points[i].unit) is not None}
            sub = [self.spans[i] for i in members]
            group.requests = [
                mb.ReadRequest(r.table, r.address, r.count, tuple(members[j] for j in r.points))
                for r in mb.plan(sub, max_gap=options.max_gap)
            ]
            self.groups.append(group)
        self._layouts: dict[mb.ReadRequest, list[tuple[str, mb.Decoder, int, _Scale | None]]] = {}
        self._exchanges: dict[mb.ReadRequest, Callable[[ModbusLink], Awaitable[list[int]]]] = {}
        self.connected = False
        self.silent_polls = 0
        self.unreadable: set[int] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Staggered start: this device's place in the fastest period, the same for all its groups.
        start = loop.time() + self.port.phase * min(g.period for g in self.groups)
        for group in self.groups:
            group.next_due = start
        tick = min(_WAKE_TICK_S, min(g.period for g in self.groups) / 16)
        while True:
            group = min(self.groups, key=lambda g: g.next_due)
            # Wake on the tick grid, not at the exact due time: the devices due within one tick wake in one
            # turn of the event loop and queue on their bus together, instead of one wake-up each.
            delay = math.ceil(group.next_due / tick) * tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ctx.room()
            await self.poll(group)
            group.next_due += group.period
            now = loop.time()
            if group.next_due <= now:
                missed = math.floor((now - group.next_due) / group.period) + 1
                self.ctx.count("polls_missed", missed)
                group.next_due += missed * group.period

    async def poll(self, group: _Group) -> None:
        """Read every request of ``group``; emit what is due. Raises DeviceTimeout after ``lost_after``
        silent polls in a row."""
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
                exchange = self._exchanges[request] = partial(_read, request, unit, ctx.count)
            try:
                words = await self.port.request(
                    exchange, timeout=opts.timeout_s, attempts=attempts, retry_on=(BadReply,)
                )
            except DeviceTimeout as err:
                ctx.count("timeouts")
                ctx.log.debug("%s", err)
                timed_out = True
                break  # the device is silent: the rest of this poll would only cost the bus more timeouts
            except BadReply:
                answered = True
                ctx.count("failed_reads")
                continue
            except ExceptionReply as err:
                answered = True
                ctx.count(f"exception_{err.code:02x}")
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
            ctx.count("polls")
            self.silent_polls = 0
            if not self.connected:
                self.connected = True
                where = opts.port if opts.link_transport == "rtu" else f"{opts.host}:{opts.tcp_port}"
                ctx.connected(f"unit {unit} on {where} ({opts.link_transport})")
        elif timed_out:
            self.silent_polls += 1
            if self.silent_polls >= opts.lost_after:
                raise DeviceTimeout(
                    f"unit {unit} silent for {self.silent_polls} polls (timeout {opts.timeout_s:g} s)"
                )
        if values:
            self._emit(group, values)

    def _split(self, group: _Group, request: mb.ReadRequest) -> tuple[mb.ReadRequest, ...]:
        """Exception 02: replace ``request`` in the group's plan by its halves (kept for later polls); a
        single point that is refused is unreadable and dropped from the plan."""
        parts = mb.split(request, self.spans)
        with contextlib.suppress(ValueError):
            at = group.requests.index(request)
            group.requests[at : at + 1] = list(parts)
        if parts:
            self.ctx.count("requests_split")
        else:
            for index in request.points:
                if index not in self.unreadable:
                    self.unreadable.add(index)
                    self.ctx.count("unreadable_points")
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

    def _emit(self, group: _Group, values: dict[str, mb.Value]) -> None:
        if not group.on_change:
            # Every point reports at every poll (the common case, and the hot path): no per-point state.
            units = (
                group.units
                if len(values) == len(group.points)
                else {name: unit for name, unit in group.units.items() if name in values}
            )
            self.ctx.emit("meter.reading", {"values": values, "units": units})
            return
        now = time.monotonic()
        report: dict[str, mb.Value] = {}
        units = {}
        for index in group.points:
            point = self.points[index]
            if point.name not in values:
                continue
            value = values[point.name]
            if point.report.offer(value, now):
                report[point.name] = value
                if point.unit is not None:
                    units[point.name] = point.unit
        if report:
            self.ctx.emit("meter.reading", {"values": report, "units": units})
        else:
            self.ctx.count("polls_unchanged")


async def _read(
    request: mb.ReadRequest, unit: int, report: Callable[[str], None], link: ModbusLink
) -> list[int]:
    return await link.read(request.table, unit, request.address, request.count, report)
