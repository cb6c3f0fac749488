"""Modbus data model, register codecs and the read planner: the parts of Modbus that are pure.

Facts come from the Modbus Application Protocol Specification V1.1b3 (function codes 01-04, exception codes,
the 125-register and 2,000-bit read limits) and the Modbus over Serial Line Specification V1.02 (RTU frame,
CRC-16 with polynomial 0xA001 reflected, initial 0xFFFF, sent low byte first). The wire itself (connections,
one request at a time, pymodbus's framers and PDU classes as the codec) is ``drivers/modbus.py``'s
``ModbusLink``, which judges every received frame with :func:`check_tcp_reply` / :func:`check_rtu_reply`
below; this module holds what a device's *configuration* means and how reply words become values, so that it
can be tested to exhaustion without a socket.

**Tables and addresses.** Four tables, each addressed from 0 on the wire: coils (read with function 01),
discrete inputs (02), holding registers (03), input registers (04). Manuals often print the "Modicon"
reference instead: a leading digit naming the table and a 1-based number, ``0xxxx`` coils, ``1xxxx``
discrete inputs, ``3xxxx`` input registers, ``4xxxx`` holding registers (``4xxxxx`` with six digits for the
extended range). So holding register 40001 is table ``holding``, address 0; 40108 is address 107; 30001 is
``input`` 0. When a manual gives bare register numbers, check whether they start at 0 or 1.

**Types** (:class:`DataType`) and their size in registers: ``bool`` (a coil or discrete input: one bit),
``bit`` (one bit, 0 = least significant, of a holding or input register), ``int16``/``uint16`` (1),
``int32``/``uint32``/``float32`` (2), ``int64``/``uint64``/``float64`` (4), ``string`` (``length``
characters, two per register).

**Byte orders** (:class:`ByteOrder`), named by where the bytes of the big-endian value A B C D (A most
significant) land in the registers as they come off the wire:

=====  =====================  ==============================================================
ABCD   ``[AB] [CD]``          big endian, the Modbus convention (the default)
CDAB   ``[CD] [AB]``          words swapped: the low word first (many energy meters' floats)
BADC   ``[BA] [DC]``          bytes swapped within each register
DCBA   ``[DC] [BA]``          little endian
=====  =====================  ==============================================================

For 64-bit values the same two rules (word order reversed for CDAB/DCBA, bytes swapped within each
register for BADC/DCBA) apply to four registers. A 16-bit value has one register: only the byte swap counts.
A string has its first character in the high byte of the first register (ABCD, CDAB) or in the low byte
(BADC, DCBA); register order is never reversed for text. Trailing NULs and spaces are stripped.

**Scale and offset**: value = raw * scale + offset, rounded to the decimals the scale and offset carry
(``0.1`` -> one decimal), so 2301 * 0.1 reads 230.1 and not 230.10000000000002. A float32 is reported as
the shortest decimal that maps back to the same float32 (230.1, not 230.10000610351562): digits beyond a
float32's precision are not information. Non-finite floats (NaN is many meters' "not available") decode to
None.

**Read planner**: :func:`plan` coalesces points into as few read requests as possible, merging neighbours in
one table while the gap between them is at most ``max_gap`` registers (bits for coils and discrete inputs)
and the request stays within 125 registers (2,000 bits); :func:`split` halves a request that the device
refused with exception 02 (illegal data address: the merged span crossed a hole in its map), down to
single points.

**Reply checks**: :func:`crc16`, :func:`check_rtu_reply` and :func:`check_tcp_reply` classify a received
frame (complete? CRC? unit? length?) without raising, so that a driver can count corrupt replies instead of
letting them pass for silence.

**RTU framing**: :class:`RtuReplyFramer` splits what a master receives on a serial line (replies, with line
noise, damage and replies to other masters' requests mixed in) into :class:`RtuFrame`\\ s whose CRC holds,
counting what it skips and rejects like every framer of :mod:`protocols.framing`; :func:`judge_rtu_reply`
then says whether a whole frame answers a given read. :func:`encode_rtu_frame` / :func:`decode_rtu_frame`
build and take apart one frame.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Final

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "WRITE_FUNCTIONS",
    "ByteOrder",
    "DataType",
    "ExceptionCode",
    "ReadRequest",
    "ReplyCheck",
    "RtuFrame",
    "RtuReplyFramer",
    "Span",
    "Table",
    "Value",
    "check_rtu_reply",
    "check_tcp_reply",
    "crc16",
    "decode",
    "decode_rtu_frame",
    "encode",
    "encode_rtu_frame",
    "judge_rtu_reply",
    "make_decoder",
    "make_scaler",
    "plan",
    "read_limit",
    "register_count",
    "rtu_frame",
    "split",
]

MAX_READ_REGISTERS: Final = 125
"""Function codes 03/04 read at most 125 registers (a reply's byte count is one byte: 250 data bytes)."""
MAX_READ_BITS: Final = 2000
"""Function codes 01/02 read at most 2,000 bits."""

Value = bool | int | float | str | None
"""A decoded point value (None: a float that is not a number, which meters use for "not available")."""


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def function(self) -> int:
        """The read function code."""
        return _FUNCTION[self]

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


_FUNCTION: Final = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}


class DataType(StrEnum):
    """How a point's registers (or bit) are read."""

    BOOL = "bool"
    BIT = "bit"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    @property
    def is_numeric(self) -> bool:
        return self not in (DataType.BOOL, DataType.BIT, DataType.STRING)


class ByteOrder(StrEnum):
    """Where the bytes A B C D of a big-endian value land in the registers (see the module docstring)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def words_reversed(self) -> bool:
        return self in (ByteOrder.CDAB, ByteOrder.DCBA)

    @property
    def bytes_swapped(self) -> bool:
        return self in (ByteOrder.BADC, ByteOrder.DCBA)


class ExceptionCode(IntEnum):
    """Exception codes of an exception reply (function code | 0x80)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED_TO_RESPOND = 0x0B


_WIDTH: Final = {
    DataType.BOOL: 1,
    DataType.BIT: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}

_STRUCT: Final = {
    DataType.INT16: struct.Struct(">h"),
    DataType.UINT16: struct.Struct(">H"),
    DataType.INT32: struct.Struct(">i"),
    DataType.UINT32: struct.Struct(">I"),
    DataType.FLOAT32: struct.Struct(">f"),
    DataType.INT64: struct.Struct(">q"),
    DataType.UINT64: struct.Struct(">Q"),
    DataType.FLOAT64: struct.Struct(">d"),
}


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Registers (or bits, for ``bool``) one value of ``dtype`` occupies; ``length`` is a string's
    characters."""
    if dtype is DataType.STRING:
        if length is None or length < 1:
            raise ValueError("a string needs a length of at least 1 character")
        return (length + 1) // 2
    return _WIDTH[dtype]


def read_limit(table: Table) -> int:
    """The most registers (or bits) one read of ``table`` may ask for."""
    return MAX_READ_BITS if table.is_bits else MAX_READ_REGISTERS


# -- words <-> bytes ----------------------------------------------------------------------------------------


def _words_to_bytes(words: Sequence[int], order: ByteOrder) -> bytes:
    """The big-endian bytes A B C D ... of the value held in ``words`` stored in ``order``."""
    seq = reversed(words) if order.words_reversed else words
    raw = b"".join(int(w).to_bytes(2, "big") for w in seq)
    if order.bytes_swapped:
        swapped = bytearray(raw)
        swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
        raw = bytes(swapped)
    return raw


def _bytes_to_words(raw: bytes, order: ByteOrder) -> list[int]:
    if order.bytes_swapped:
        swapped = bytearray(raw)
        swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
        raw = bytes(swapped)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order.words_reversed:
        words.reverse()
    return words


def _text_order(order: ByteOrder) -> ByteOrder:
    return ByteOrder.BADC if order.bytes_swapped else ByteOrder.ABCD


# -- decoding ----------------------------------------------------------------------------------------------

_F32: Final = struct.Struct(">f")


def _shortest_f32(x: float) -> float | None:
    """The shortest decimal that is the same float32 as ``x`` (None for NaN and infinities)."""
    if not math.isfinite(x):
        return None
    packed = _F32.pack(x)
    for digits in (6, 7, 8):
        y = float(f"{x:.{digits}g}")
        if _F32.pack(y) == packed:
            return y
    return x


Decoder = Callable[[Sequence[int], int], Value]
"""``decoder(words, offset)``: the value whose first register (or bit) is ``words[offset]``."""


def make_decoder(
    dtype: DataType, order: ByteOrder = ByteOrder.ABCD, *, length: int | None = None, bit: int | None = None
) -> Decoder:
    """A fast decoder for one point's layout (built once per point; called every poll).

    ``words`` holds registers as unsigned 16-bit ints (or, for ``bool``, bits as ints or bools)."""
    if dtype is DataType.BOOL:
        return lambda words, i: bool(words[i])
    if dtype is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise ValueError("a bit point needs bit 0..15")
        mask = 1 << bit
        return lambda words, i: bool(words[i] & mask)
    if dtype is DataType.STRING:
        n = register_count(dtype, length)
        text_order = _text_order(order)

        def text(words: Sequence[int], i: int) -> str:
            raw = _words_to_bytes(words[i : i + n], text_order)
            return raw.decode("latin-1").rstrip("\x00 ")

        return text
    if dtype is DataType.UINT16:
        if order.bytes_swapped:
            return lambda words, i: ((words[i] & 0xFF) << 8) | (words[i] >> 8)
        return lambda words, i: words[i]
    if dtype is DataType.INT16:
        if order.bytes_swapped:
            return lambda words, i: _signed16(((words[i] & 0xFF) << 8) | (words[i] >> 8))
        return lambda words, i: _signed16(words[i])
    width = _WIDTH[dtype]
    unpack = _STRUCT[dtype].unpack
    if order is ByteOrder.ABCD and width == 2:
        if dtype is DataType.UINT32:
            return lambda words, i: (words[i] << 16) | words[i + 1]
        pack2 = struct.Struct(">HH").pack
        if dtype is DataType.FLOAT32:
            return lambda words, i: _shortest_f32(unpack(pack2(words[i], words[i + 1]))[0])
        return lambda words, i: unpack(pack2(words[i], words[i + 1]))[0]
    if order is ByteOrder.CDAB and width == 2:
        pack2 = struct.Struct(">HH").pack
        if dtype is DataType.UINT32:
            return lambda words, i: (words[i + 1] << 16) | words[i]
        if dtype is DataType.FLOAT32:
            return lambda words, i: _shortest_f32(unpack(pack2(words[i + 1], words[i]))[0])
        return lambda words, i: unpack(pack2(words[i + 1], words[i]))[0]

    def general(words: Sequence[int], i: int) -> Value:
        value: int | float = unpack(_words_to_bytes(words[i : i + width], order))[0]
        if dtype is DataType.FLOAT32:
            return _shortest_f32(value)
        if dtype is DataType.FLOAT64:
            return value if math.isfinite(value) else None
        return value

    if dtype is DataType.FLOAT64 and order is ByteOrder.ABCD:
        pack4 = struct.Struct(">HHHH").pack

        def f64(words: Sequence[int], i: int) -> Value:
            value: float = unpack(pack4(words[i], words[i + 1], words[i + 2], words[i + 3]))[0]
            return value if math.isfinite(value) else None

        return f64
    return general


def _signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def decode(
    words: Sequence[int],
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    length: int | None = None,
    bit: int | None = None,
) -> Value:
    """The value held in ``words`` (exactly the point's registers). Raises ValueError on a wrong count."""
    expected = register_count(dtype, length)
    if len(words) != expected:
        raise ValueError(f"{dtype.value} needs {expected} register(s), got {len(words)}")
    return make_decoder(dtype, order, length=length, bit=bit)(words, 0)


# -- encoding (the simulator's direction) ------------------------------------------------------------------

_INT_RANGE: Final = {
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}


def encode(
    value: bool | int | float | str,
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    length: int | None = None,
    bit: int | None = None,
) -> list[int]:
    """The registers (or the bit, for ``bool``) holding ``value``; EncodeError if it does not fit.

    A ``bit`` point encodes as a register with only that bit set (or none): the simulator ORs it into the
    register it shares with other bits."""
    if dtype is DataType.BOOL:
        return [1 if value else 0]
    if dtype is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise EncodeError("a bit point needs bit 0..15")
        return [(1 << bit) if value else 0]
    if dtype is DataType.STRING:
        if not isinstance(value, str):
            raise EncodeError(f"a string point needs text, got {type(value).__name__}")
        n = register_count(dtype, length)
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError as err:
            raise EncodeError(f"{value!r}: only latin-1 text fits in registers") from err
        if len(raw) > 2 * n:
            raise EncodeError(f"{value!r} is longer than {length} characters")
        return _bytes_to_words(raw.ljust(2 * n, b"\x00"), _text_order(order))
    if isinstance(value, str):
        raise EncodeError(f"{dtype.value} needs a number, got text")
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        try:
            raw = _STRUCT[dtype].pack(float(value))
        except (OverflowError, struct.error) as err:
            raise EncodeError(f"{value!r} does not fit a {dtype.value}") from err
    else:
        if isinstance(value, float) and not value.is_integer():
            raise EncodeError(f"{value!r} is not an integer ({dtype.value})")
        number = int(value)
        low, high = _INT_RANGE[dtype]
        if not low <= number <= high:
            raise EncodeError(f"{number} is out of range for {dtype.value} ({low}..{high})")
        raw = _STRUCT[dtype].pack(number)
    return _bytes_to_words(raw, order)


# -- scale and offset ----------------------------------------------------------------------------------------


def _decimals(x: float) -> int:
    text = repr(float(x))
    if "e" in text:
        mantissa, _, exponent = text.partition("e")
        fraction = mantissa.partition(".")[2].rstrip("0")
        return max(0, len(fraction) - int(exponent))
    return len(text.partition(".")[2].rstrip("0"))


def make_scaler(dtype: DataType, scale: float = 1.0, offset: float = 0.0) -> Callable[[Value], Value]:
    """``raw -> raw * scale + offset`` for numeric types, rounded as the module docstring says."""
    if not dtype.is_numeric or (scale == 1 and offset == 0):
        return lambda raw: raw
    integral = dtype not in (DataType.FLOAT32, DataType.FLOAT64)
    if integral and float(scale).is_integer() and float(offset).is_integer():
        int_scale, int_offset = int(scale), int(offset)
        return lambda raw: raw * int_scale + int_offset if isinstance(raw, int) else raw
    digits = min(15, max(_decimals(scale), _decimals(offset)))
    if integral:
        return lambda raw: round(raw * scale + offset, digits) if isinstance(raw, int) else raw
    significant = 7 if dtype is DataType.FLOAT32 else 15

    def scaled_float(raw: Value) -> Value:
        if not isinstance(raw, float):
            return raw
        value = raw * scale + offset
        return float(f"{value:.{significant}g}") if math.isfinite(value) else None

    return scaled_float


# -- the read planner ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Where one point lives: its table, first address and size (registers, or bits)."""

    table: Table
    address: int
    count: int

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers (or bits) of ``table`` from ``address``, covering ``points`` (indexes
    into the span list it was planned from, in address order)."""

    table: Table
    address: int
    count: int
    points: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


def _request(table: Table, members: Sequence[int], spans: Sequence[Span]) -> ReadRequest:
    start = min(spans[i].address for i in members)
    end = max(spans[i].end for i in members)
    return ReadRequest(table, start, end - start, tuple(members))


def plan(spans: Sequence[Span], *, max_gap: int = 16) -> list[ReadRequest]:
    """Coalesce ``spans`` into reads: neighbours in one table merge while the gap between them is at most
    ``max_gap`` and the read stays within :func:`read_limit`. Each span is covered by exactly one read.

    Raises ValueError for a span that cannot fit one read on its own (the config should have said so)."""
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    order = sorted(range(len(spans)), key=lambda i: (spans[i].table, spans[i].address, spans[i].count))
    requests: list[ReadRequest] = []
    members: list[int] = []
    table: Table | None = None
    start = end = 0
    for i in order:
        span = spans[i]
        limit = read_limit(span.table)
        if span.count < 1 or span.count > limit:
            raise ValueError(f"a span of {span.count} cannot be read in one request (limit {limit})")
        if members and span.table == table and span.address - end <= max_gap:
            new_end = max(end, span.end)
            if new_end - start <= limit:
                members.append(i)
                end = new_end
                continue
        if members:
            assert table is not None
            requests.append(ReadRequest(table, start, end - start, tuple(members)))
        members, table, start, end = [i], span.table, span.address, span.end
    if members:
        assert table is not None
        requests.append(ReadRequest(table, start, end - start, tuple(members)))
    return requests


def split(request: ReadRequest, spans: Sequence[Span]) -> tuple[ReadRequest, ...]:
    """Halve a read the device refused (exception 02): its points in two reads, each as tight as its points
    allow. A read of a single point cannot be split: ``()`` means that point itself is unreadable."""
    members = sorted(request.points, key=lambda i: (spans[i].address, spans[i].count))
    if len(members) < 2:
        return ()
    half = len(members) // 2
    return (_request(request.table, members[:half], spans), _request(request.table, members[half:], spans))


# -- reply checks ------------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus RTU CRC-16 of ``data``, as an int whose *low* byte is sent first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC (low byte first)."""
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


class ReplyCheck(Enum):
    """What a received frame is, for a request of a given unit and function."""

    INCOMPLETE = "incomplete"
    """Too few bytes yet to judge."""
    OK = "ok"
    EXCEPTION = "exception"
    """A well-formed exception reply (function | 0x80, one code byte)."""
    BAD_CRC = "bad_crc"
    WRONG_UNIT = "wrong_unit"
    WRONG_FUNCTION = "wrong_function"
    WRONG_LENGTH = "wrong_length"
    """Well-formed, but its byte count does not match what was asked for."""
    STALE = "stale"
    """Modbus TCP: a reply to an earlier transaction (one that timed out)."""
    BAD_HEADER = "bad_header"
    """Modbus TCP: a protocol id other than 0, or an impossible length."""


WRITE_FUNCTIONS: Final = frozenset((5, 6, 15, 16))
"""Write single coil, write single register, write multiple coils, write multiple registers: each answered
by an echo of 4 bytes (the address, then the value written or the quantity)."""
_WRITE_ECHO: Final = 4


def _expected_data_bytes(function: int, count: int) -> int:
    return (count + 7) // 8 if function in (1, 2) else 2 * count


def check_rtu_reply(buf: bytes | bytearray, unit: int, function: int, count: int) -> tuple[ReplyCheck, int]:
    """Classify the RTU reply at the start of ``buf`` to a read of ``count`` items with ``function`` from
    ``unit``: ``(verdict, frame length)`` (length 0 while incomplete). Never raises."""
    n = len(buf)
    if n < 5:
        return ReplyCheck.INCOMPLETE, 0
    fc = buf[1]
    if fc == function | 0x80:
        size = 5
    elif fc == function:
        size = 5 + buf[2]
    else:
        # Nothing says how long a frame of another function is: judge it by its CRC over what arrived.
        if crc16(buf[: n - 2]) == int.from_bytes(buf[n - 2 : n], "little"):
            return (ReplyCheck.WRONG_UNIT if buf[0] != unit else ReplyCheck.WRONG_FUNCTION), n
        return ReplyCheck.INCOMPLETE, 0
    if n < size:
        return ReplyCheck.INCOMPLETE, 0
    if crc16(buf[: size - 2]) != int.from_bytes(buf[size - 2 : size], "little"):
        return ReplyCheck.BAD_CRC, size
    if buf[0] != unit:
        return ReplyCheck.WRONG_UNIT, size
    if fc != function:
        return ReplyCheck.EXCEPTION, size
    if buf[2] != _expected_data_bytes(function, count):
        return ReplyCheck.WRONG_LENGTH, size
    return ReplyCheck.OK, size


def check_tcp_reply(
    buf: bytes | bytearray, unit: int, function: int, count: int, transaction: int
) -> tuple[ReplyCheck, int]:
    """Classify the Modbus TCP (MBAP) reply at the start of ``buf`` to a read of ``count`` items with
    ``function`` (or a write, 05, 06, 15 or 16: a four-byte echo): ``(verdict, frame length)``. Never
    raises. ``transaction`` 0 accepts any transaction id."""
    n = len(buf)
    if n < 8:
        return ReplyCheck.INCOMPLETE, 0
    tid = int.from_bytes(buf[0:2], "big")
    protocol = int.from_bytes(buf[2:4], "big")
    length = int.from_bytes(buf[4:6], "big")
    if protocol != 0 or not 2 <= length <= 254:
        return ReplyCheck.BAD_HEADER, n
    size = 6 + length
    if n < size:
        return ReplyCheck.INCOMPLETE, 0
    if transaction and tid != transaction:
        return ReplyCheck.STALE, size
    if buf[6] != unit:
        return ReplyCheck.WRONG_UNIT, size
    fc = buf[7]
    if fc == function | 0x80:
        return (ReplyCheck.EXCEPTION if length == 3 else ReplyCheck.WRONG_LENGTH), size
    if fc != function:
        return ReplyCheck.WRONG_FUNCTION, size
    if function in WRITE_FUNCTIONS:
        return (ReplyCheck.OK if length == 2 + _WRITE_ECHO else ReplyCheck.WRONG_LENGTH), size
    if length < 3 or buf[8] != length - 3 or buf[8] != _expected_data_bytes(function, count):
        return ReplyCheck.WRONG_LENGTH, size
    return ReplyCheck.OK, size


# -- RTU framing -------------------------------------------------------------------------------------------

_BYTE_COUNTED: Final = frozenset((1, 2, 3, 4))
"""Replies whose third byte counts the data bytes that follow (the reads)."""
_FIXED_SIZE: Final = {5: 8, 6: 8, 15: 8, 16: 8}
"""Replies of a fixed size (the writes: an echo of the address and value or quantity)."""
_KNOWN: Final = _BYTE_COUNTED | frozenset(_FIXED_SIZE)
RTU_MAX_FRAME: Final = 256
"""The longest RTU frame (Modbus over Serial Line V1.02, 2.5.1.1): unit, PDU of at most 253, CRC."""


@dataclass(frozen=True, slots=True)
class RtuFrame:
    """One whole RTU frame whose CRC holds: the unit id and the PDU (function code, then its data)."""

    unit: int
    pdu: bytes

    @property
    def function(self) -> int:
        return self.pdu[0]


def encode_rtu_frame(frame: RtuFrame) -> bytes:
    """The frame's bytes: unit, PDU, CRC (low byte first)."""
    if not 0 <= frame.unit <= 255:
        raise EncodeError(f"unit id {frame.unit} is not 0..255")
    if not 1 <= len(frame.pdu) <= RTU_MAX_FRAME - 3:
        raise EncodeError(f"a PDU of {len(frame.pdu)} bytes does not fit an RTU frame (1..253)")
    return rtu_frame(frame.unit, frame.pdu)


def _reply_size(buffer: bytes | bytearray, start: int) -> int:
    """The size of the reply whose header is at ``start`` (at least 2 bytes there): -1 when its function
    is not one a reply has here, 0 while its size is not known yet (the byte count has not arrived), -2
    when its byte count is impossible."""
    function = buffer[start + 1]
    if function in _BYTE_COUNTED:
        if len(buffer) - start < 3:
            return 0
        count = buffer[start + 2]
        if count == 0 or count > 2 * MAX_READ_REGISTERS:
            return -2
        return 5 + count
    size = _FIXED_SIZE.get(function)
    if size is not None:
        return size
    if function & 0x80 and function & 0x7F in _KNOWN:
        return 5
    return -1


def decode_rtu_frame(raw: bytes) -> RtuFrame:
    """Exactly one whole reply frame; :class:`~protocols.errors.DecodeError` says what is wrong with it."""
    if len(raw) < 4:
        raise DecodeError(f"truncated: {len(raw)} bytes, an RTU frame has at least 4")
    size = _reply_size(raw, 0)
    if size == -1:
        raise DecodeError(f"function 0x{raw[1]:02X} is not one this side reads replies of")
    if size == -2:
        raise DecodeError(f"impossible byte count {raw[2]} for function {raw[1]}")
    if size != len(raw):
        raise DecodeError(f"length mismatch: the header says {size} bytes, {len(raw)} given")
    expected = crc16(raw[:-2])
    found = int.from_bytes(raw[-2:], "little")
    if expected != found:
        raise DecodeError(f"bad CRC: expected 0x{expected:04X}, found 0x{found:04X}")
    return RtuFrame(raw[0], raw[1:-2])


class RtuReplyFramer(Framer[RtuFrame]):
    """Splits what a Modbus RTU master receives into :class:`RtuFrame`\\ s: replies (reads 01-04, writes
    05/06/15/16 and the exception replies of those), whatever device sent them.

    RTU has no start marker: any byte may begin a frame. At each position it reads the function code and
    from it (and a read's byte count) the frame's size, waits for the whole frame and checks its CRC. A
    function no reply has here is not a frame start (that byte is skipped); an impossible byte count (0 or
    above 250: ``bad_length``) or a bad CRC (``bad_checksum``) is counted and only that
    first byte is skipped, so a real frame that starts inside the candidate is still found. A candidate
    whose claimed size runs past what has arrived is held until that many bytes have come (at most 256),
    unless a whole frame whose CRC holds already starts inside it: then it is a false start in noise
    (``bad_length``), and the frame is taken at once.
    Every byte discarded is counted in ``stats.bytes_skipped``; it never raises on input. (The 16-bit CRC
    lets pass one damaged frame in 65,536, so no check for frames hidden inside a passing one is needed,
    unlike the R2000's 8-bit checksum.)

    :attr:`rejected` lists the unit and function of every candidate the last :meth:`feed` rejected, so that
    a master can tell its own reply damaged (and ask again at once) from noise that looked like a frame.
    """

    __slots__ = ("_buffer", "rejected")

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self.rejected: list[tuple[int, int]] = []
        """(unit, function) of the candidates rejected by the last :meth:`feed`."""

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def held(self) -> bytes:
        """The bytes held back as the start of a frame not yet complete."""
        return bytes(self._buffer)

    def discard(self) -> None:
        """Drop what is held (a partial frame that must not be completed by what comes next: a master
        does this before each request, so a late reply to an abandoned one is not taken for its answer).
        The bytes count as skipped."""
        self.stats.bytes_skipped += len(self._buffer)
        self._buffer.clear()

    def feed(self, data: bytes) -> list[RtuFrame]:
        buffer = self._buffer
        buffer += data
        stats = self.stats
        rejected: list[tuple[int, int]] = []
        self.rejected = rejected
        frames: list[RtuFrame] = []
        size = len(buffer)
        pos = 0  # the first byte not yet accounted for
        scan = 0  # where the next candidate is looked for
        while size - scan >= 2:
            end = _reply_size(buffer, scan)
            if end == -1:
                scan += 1
                continue
            if end == -2:
                stats.bad_length += 1
                rejected.append((buffer[scan], buffer[scan + 1]))
                scan += 1
                continue
            if end == 0:
                break  # its byte count is on its way
            end += scan
            if end > size:
                # Wait for the whole candidate, unless a whole frame already starts inside it: then this is
                # a false start in noise (its claimed size would swallow the frame, and with nothing more
                # to come, a master would wait in vain for its reply).
                hidden = _first_frame(buffer, scan + 1, size)
                if hidden < 0:
                    break
                stats.bad_length += 1
                rejected.append((buffer[scan], buffer[scan + 1]))
                scan = hidden
                continue
            if crc16(buffer[scan : end - 2]) != buffer[end - 2] | buffer[end - 1] << 8:
                stats.bad_checksum += 1
                rejected.append((buffer[scan], buffer[scan + 1]))
                scan += 1
                continue
            stats.bytes_skipped += scan - pos
            frames.append(RtuFrame(buffer[scan], bytes(buffer[scan + 1 : end - 2])))
            pos = scan = end
        # Keep from where a frame may still begin: the candidate waited for, or the last byte (a unit id
        # whose function code has not arrived).
        keep = min(scan, size)
        if keep > pos:
            stats.bytes_skipped += keep - pos
        if keep:
            del buffer[:keep]
        stats.frames += len(frames)
        return frames


def _first_frame(buffer: bytearray, start: int, size: int) -> int:
    """Where the first whole frame whose CRC holds begins in ``buffer[start:size]``; -1 if none does."""
    for at in range(start, size - 3):
        end = _reply_size(buffer, at)
        if end <= 0:
            continue
        end += at
        if end <= size and crc16(buffer[at : end - 2]) == buffer[end - 2] | buffer[end - 1] << 8:
            return at
    return -1


def judge_rtu_reply(frame: RtuFrame, unit: int, function: int, count: int) -> ReplyCheck:
    """Whether ``frame`` (whole, its CRC checked: from :class:`RtuReplyFramer`) answers a read of ``count``
    items with ``function`` from ``unit`` (or a write, function 05, 06, 15 or 16, whose echo is four bytes;
    ``count`` is not used): OK, EXCEPTION, WRONG_UNIT, WRONG_FUNCTION or WRONG_LENGTH."""
    if frame.unit != unit:
        return ReplyCheck.WRONG_UNIT
    pdu = frame.pdu
    fc = pdu[0]
    if fc == function | 0x80:
        return ReplyCheck.EXCEPTION
    if fc != function:
        return ReplyCheck.WRONG_FUNCTION
    if function in WRITE_FUNCTIONS:
        return ReplyCheck.OK if len(pdu) == 1 + _WRITE_ECHO else ReplyCheck.WRONG_LENGTH
    if len(pdu) < 2 or pdu[1] != _expected_data_bytes(function, count):
        return ReplyCheck.WRONG_LENGTH
    return ReplyCheck.OK
