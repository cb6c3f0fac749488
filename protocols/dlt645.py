"""DL/T 645-2007, the multi-function watt-hour meter protocol of Chinese electricity meters on RS-485.

Facts here come from the standard (DL/T 645-2007 "Multi-function watt-hour meter communication protocol",
clause 4 "frame format", clause 7 "read data", Appendix A "data identifiers") and are checked against the
reference frames of the issue that introduced this module.

A frame, in both directions::

    [FE x 0..4]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA (L bytes)  CS  16
    preamble         address, LSB first     |  |  each byte +0x33  sum of 68..DATA mod 256

- The preamble wakes a meter's receiver; it is outside the checksum and carries nothing.
- The address is 12 BCD digits as printed on the nameplate, sent least significant byte first; a byte 0xAA is
  a wildcard (abbreviated addressing: AAAAAAAAAAAA reaches whichever meter is alone on the line), and
  999999999999 is the broadcast address (time sync only: no meter answers it).
- The control byte: bit 7 is the direction (1: a meter's reply), bit 6 an abnormal (error) reply, bit 5 "more
  frames follow", bits 4..0 the function (0x11 read data, 0x12 read follow-up data, 0x13 read address, ...).
- ``L`` counts the data bytes: at most 200 for reads. On the wire every data byte has 0x33 added (mod 256),
  so a meter's reply of zeros never looks like a quiet line.
- A read names a data identifier (DI3 DI2 DI1 DI0, written ``00010000``) sent DI0 first. A value is BCD,
  least significant byte first; for currents, powers and power factors (and the combined energies) the top
  bit of the most significant byte is the sign (1: negative).

This module is pure (no I/O, clocks or asyncio): :func:`encode_frame` / :func:`decode_frame` for one frame,
:class:`Dlt645Framer` for a byte stream, request builders with :func:`parse_request` for the simulator,
:func:`parse_reply` / :func:`encode_reply` for a meter's answers, and the data identifier table
(:data:`ITEMS`, :func:`find_item`) with :func:`decode_value` / :func:`encode_value`. One construct definition
per layout serves both directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Final

from construct import (
    Bytes,
    Const,
    ConstructError,
    ExprAdapter,
    Int8ub,
    Int32ul,
    Rebuild,
    Struct,
    Terminated,
    len_,
    this,
)

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer, FramerStats

__all__ = [
    "BROADCAST",
    "END",
    "ERROR_BIT",
    "FUNCTION_MASK",
    "ITEMS",
    "MAX_DATA",
    "MAX_PREAMBLE",
    "MORE_BIT",
    "OFFSET",
    "OVERHEAD",
    "PREAMBLE",
    "REPLY_BIT",
    "START",
    "WILDCARD",
    "AddressReply",
    "BroadcastTime",
    "Control",
    "DataItem",
    "DataReply",
    "Dlt645Framer",
    "Dlt645FramerStats",
    "ErrorFlag",
    "ErrorReply",
    "Frame",
    "ReadAddress",
    "ReadData",
    "ReadFollowUp",
    "Reply",
    "Request",
    "address_matches",
    "broadcast_time",
    "check_address",
    "checksum",
    "decode_frame",
    "decode_value",
    "di_text",
    "encode_frame",
    "encode_reply",
    "encode_value",
    "find_item",
    "is_meter_address",
    "item_for",
    "parse_di",
    "parse_reply",
    "parse_request",
    "read_address",
    "read_data",
    "read_follow_up",
]

PREAMBLE: Final = 0xFE
START: Final = 0x68
END: Final = 0x16
OFFSET: Final = 0x33
"""Added to every data byte on the wire."""
MAX_PREAMBLE: Final = 4
MAX_DATA: Final = 200
"""Most data bytes a read frame carries (L <= 200, clause 4.1)."""
OVERHEAD: Final = 12
"""Bytes of a frame around its data: 68, address (6), 68, C, L, CS, 16."""
_HEADER: Final = 10
"""68, address, 68, C, L: what must be seen before the frame's length is known."""
WILDCARD: Final = "AAAAAAAAAAAA"
"""Abbreviated address: whichever meter is alone on the line answers (used by read address)."""
BROADCAST: Final = "999999999999"
"""Broadcast address: every meter listens, none answers."""

REPLY_BIT: Final = 0x80
"""Control bit 7: the frame comes from a meter."""
ERROR_BIT: Final = 0x40
"""Control bit 6: the meter refuses the request (one error byte follows)."""
MORE_BIT: Final = 0x20
"""Control bit 5: more frames follow (read them with read follow-up, 0x12)."""
FUNCTION_MASK: Final = 0x1F


class Control(IntEnum):
    """Function codes (control bits 4..0) of a master's request; a reply sets bit 7 (and 6 or 5)."""

    BROADCAST_TIME = 0x08
    READ_DATA = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE_DATA = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD_RATE = 0x17
    CHANGE_PASSWORD = 0x18
    RESET_MAX_DEMAND = 0x19
    RESET_METER = 0x1A
    RESET_EVENTS = 0x1B


class ErrorFlag(IntFlag):
    """Bits of the error byte (ERR) of an abnormal reply (clause 7.1, error information word)."""

    OTHER = 0x01
    NO_DATA = 0x02
    UNAUTHORISED = 0x04
    BAUD_RATE_FIXED = 0x08
    TOO_MANY_YEAR_ZONES = 0x10
    TOO_MANY_DAY_PERIODS = 0x20
    TOO_MANY_TARIFFS = 0x40


_ERROR_TEXT: Final = {
    ErrorFlag.OTHER: "other error",
    ErrorFlag.NO_DATA: "no such data (the meter does not have this data identifier)",
    ErrorFlag.UNAUTHORISED: "wrong password or not authorised",
    ErrorFlag.BAUD_RATE_FIXED: "the baud rate cannot be changed",
    ErrorFlag.TOO_MANY_YEAR_ZONES: "too many yearly time zones",
    ErrorFlag.TOO_MANY_DAY_PERIODS: "too many daily time periods",
    ErrorFlag.TOO_MANY_TARIFFS: "too many tariffs",
}

_ADD: Final = bytes((b + OFFSET) & 0xFF for b in range(256))
_SUB: Final = bytes((b - OFFSET) & 0xFF for b in range(256))


# ----------------------------------------------------------------------------------------------------
# Addresses and data identifiers


def check_address(address: str) -> str:
    """``address`` normalised (upper case) if it can go in a frame, else :class:`EncodeError`.

    12 characters, most significant first as on the nameplate; each pair is two decimal digits or ``AA``
    (wildcard)."""
    text = address.upper()
    if len(text) != 12:
        raise EncodeError(f"address {address!r}: a DL/T 645 address has 12 digits, not {len(text)}")
    for i in range(0, 12, 2):
        pair = text[i : i + 2]
        if pair != "AA" and not (pair.isascii() and pair.isdigit()):
            raise EncodeError(f"address {address!r}: {pair!r} is neither two BCD digits nor AA (wildcard)")
    return text


def is_meter_address(address: str) -> bool:
    """Whether ``address`` is one meter's own address: 12 decimal digits, not the broadcast address."""
    return len(address) == 12 and address.isascii() and address.isdigit() and address != BROADCAST


def address_matches(meter: str, target: str) -> bool:
    """Whether a meter at ``meter`` is addressed by a frame sent to ``target`` (AA bytes match any pair)."""
    return all(target[i : i + 2] == "AA" or target[i : i + 2] == meter[i : i + 2] for i in range(0, 12, 2))


def _address_wire(address: str) -> bytes:
    return bytes.fromhex(check_address(address))[::-1]


def _address_text(wire: bytes) -> str:
    return wire[::-1].hex().upper()


def di_text(di: int) -> str:
    """The usual spelling of a data identifier: DI3 DI2 DI1 DI0 as 8 hex digits (``02010100``)."""
    return f"{di:08X}"


def parse_di(text: str) -> int | None:
    """A data identifier from ``02010100`` or ``0x02010100`` (case and ``_`` / spaces ignored); None if the
    text is not 8 hex digits."""
    compact = text.strip().replace("_", "").replace(" ", "")
    if compact[:2].lower() == "0x":
        compact = compact[2:]
    if len(compact) != 8 or not all(c in _HEX_DIGITS for c in compact):
        return None
    return int(compact, 16)


_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _check_di(di: int) -> None:
    if not 0 <= di <= 0xFFFFFFFF:
        raise EncodeError(f"data identifier {di} out of range 0..0xFFFFFFFF")


# ----------------------------------------------------------------------------------------------------
# Frames


def checksum(data: bytes) -> int:
    """The CS byte for ``data`` (every byte from the first 68 through the data): their sum mod 256."""
    return sum(data) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: address (12 digits, as printed), control byte, and data with the 0x33 offset removed."""

    address: str
    control: int
    data: bytes


FRAME = Struct(
    "start" / Const(START, Int8ub),
    "address" / Bytes(6),
    "start2" / Const(START, Int8ub),
    "control" / Int8ub,
    "length" / Rebuild(Int8ub, len_(this.data)),
    "data"
    / ExprAdapter(
        Bytes(this.length),
        lambda obj, ctx: bytes(obj).translate(_SUB),
        lambda obj, ctx: bytes(obj).translate(_ADD),
    ),
    "checksum" / Int8ub,
    "end" / Const(END, Int8ub),
    Terminated,
)
"""The frame layout after the preamble; the data field removes / adds the 0x33 offset. The checksum is
computed and checked by :func:`encode_frame` / :func:`decode_frame`."""
_FRAME = FRAME.compile()


def encode_frame(frame: Frame, preamble: int = 0) -> bytes:
    """The bytes of ``frame`` on the wire, after ``preamble`` (0..4) wake-up bytes 0xFE."""
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise EncodeError(f"preamble of {preamble} bytes: 0..{MAX_PREAMBLE}")
    if not 0 <= frame.control <= 0xFF:
        raise EncodeError(f"control {frame.control} out of range 0..255")
    if len(frame.data) > MAX_DATA:
        raise EncodeError(f"{len(frame.data)} data bytes: a frame carries at most {MAX_DATA}")
    raw = bytearray(
        _FRAME.build(
            {
                "address": _address_wire(frame.address),
                "control": frame.control,
                "data": frame.data,
                "checksum": 0,
            }
        )
    )
    raw[-2] = checksum(bytes(raw[:-2]))
    return bytes((PREAMBLE,)) * preamble + bytes(raw)


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one whole frame (with its preamble, if any); :class:`DecodeError` says what is wrong.

    The address is not checked for BCD: a meter's reply is taken as it comes, and the caller compares it
    with the address it asked."""
    skip = 0
    while skip < len(raw) and raw[skip] == PREAMBLE:
        skip += 1
    if skip > MAX_PREAMBLE:
        raise DecodeError(f"preamble of {skip} bytes 0xFE: at most {MAX_PREAMBLE}")
    body = raw[skip:]
    if len(body) < OVERHEAD:
        raise DecodeError(f"truncated: {len(body)} bytes, a frame has at least {OVERHEAD}")
    if body[0] != START:
        raise DecodeError(f"bad start 0x{body[0]:02X}, expected 0x68")
    if body[7] != START:
        raise DecodeError(f"bad second start 0x{body[7]:02X} after the address, expected 0x68")
    length = body[9]
    if length > MAX_DATA:
        raise DecodeError(f"bad length: L is {length}, at most {MAX_DATA}")
    if length != len(body) - OVERHEAD:
        raise DecodeError(f"length mismatch: L says {length}, {len(body) - OVERHEAD} data bytes follow")
    if body[-1] != END:
        raise DecodeError(f"bad end 0x{body[-1]:02X}, expected 0x16")
    expected = checksum(body[:-2])
    if body[-2] != expected:
        raise DecodeError(f"bad checksum: expected 0x{expected:02X}, found 0x{body[-2]:02X}")
    parsed = _FRAME.parse(body)
    return Frame(_address_text(parsed.address), parsed.control, parsed.data)


@dataclass(slots=True)
class Dlt645FramerStats(FramerStats):
    """:class:`FramerStats` plus the wake-up bytes, which are not garbage and are not counted as skipped."""

    preamble_bytes: int = 0
    """0xFE bytes (up to 4) directly before a frame found."""


class Dlt645Framer(Framer[Frame]):
    """Splits a byte stream on a DL/T 645 line into :class:`Frame`\\ s.

    It hunts for 68, requires the second 68 seven bytes on, reads L, waits for the whole frame and checks
    the trailing 16 and the checksum. A candidate with L above 200 (``bad_length``), without its 16 (bytes
    lost or added: ``bad_length``) or with a bad checksum (``bad_checksum``) is counted and only its first
    68 is skipped, so a real frame that starts inside it is still found. Up to four 0xFE directly before a
    frame are its preamble (``preamble_bytes``); every other byte discarded is counted in
    ``bytes_skipped``. It never raises on input; what it holds back is bounded by one frame and a preamble.
    """

    __slots__ = ("_buffer",)

    stats: Dlt645FramerStats

    def __init__(self) -> None:
        super().__init__()
        self.stats = Dlt645FramerStats()
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _account(self, buffer: bytearray, begin: int, end: int) -> None:
        """Count ``buffer[begin:end]``, the bytes before a frame: its preamble, and garbage before that."""
        run = 0
        while run < MAX_PREAMBLE and end - run > begin and buffer[end - run - 1] == PREAMBLE:
            run += 1
        self.stats.preamble_bytes += run
        self.stats.bytes_skipped += end - begin - run

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        stats = self.stats
        frames: list[Frame] = []
        size = len(buffer)
        pos = 0  # the first byte not yet accounted for
        scan = 0  # where the next candidate is looked for
        waiting = -1  # an incomplete candidate: wait for more bytes
        while True:
            start = buffer.find(START, scan)
            if start < 0:
                break
            if size - start >= 8 and buffer[start + 7] != START:
                scan = start + 1
                continue
            if size - start < _HEADER:
                waiting = start
                break
            length = buffer[start + 9]
            if length > MAX_DATA:
                stats.bad_length += 1
                scan = start + 1
                continue
            end = start + length + OVERHEAD
            if end > size:
                waiting = start
                break
            if buffer[end - 1] != END:
                stats.bad_length += 1
                scan = start + 1
                continue
            if sum(buffer[start : end - 2]) & 0xFF != buffer[end - 2]:
                stats.bad_checksum += 1
                scan = start + 1
                continue
            self._account(buffer, pos, start)
            frames.append(
                Frame(
                    bytes(buffer[start + 1 : start + 7])[::-1].hex().upper(),
                    buffer[start + 8],
                    bytes(buffer[start + _HEADER : end - 2]).translate(_SUB),
                )
            )
            pos = scan = end
        # Keep what may still begin a frame: the incomplete candidate, or a trailing run of 0xFE (a
        # preamble whose frame has not arrived), with the preamble before the candidate.
        keep = waiting if waiting >= 0 else size
        run = 0
        while run < MAX_PREAMBLE and keep - run > pos and buffer[keep - run - 1] == PREAMBLE:
            run += 1
        keep -= run
        if keep > pos:
            stats.bytes_skipped += keep - pos
        if keep:
            del buffer[:keep]
        stats.frames += len(frames)
        return frames


# ----------------------------------------------------------------------------------------------------
# Requests (master -> meter)


_DI = Struct("di" / Int32ul, Terminated)
"""Read data (0x11): the data identifier, DI0 first."""
_DI_SEQ = Struct("di" / Int32ul, "seq" / Int8ub, Terminated)
"""Read follow-up data (0x12): the data identifier and the frame sequence number (1 for the first)."""


@dataclass(frozen=True, slots=True)
class ReadData:
    """Read one data identifier (0x11). Answered by :class:`DataReply` or :class:`ErrorReply`."""

    di: int
    control: ClassVar[int] = Control.READ_DATA

    def encode(self, address: str, preamble: int = 0) -> bytes:
        _check_di(self.di)
        return encode_frame(Frame(address, self.control, _DI.build({"di": self.di})), preamble)


@dataclass(frozen=True, slots=True)
class ReadFollowUp:
    """Read the next frame of a reply that said more frames follow (0x12); ``seq`` counts from 1."""

    di: int
    seq: int
    control: ClassVar[int] = Control.READ_FOLLOW_UP

    def encode(self, address: str, preamble: int = 0) -> bytes:
        _check_di(self.di)
        if not 0 <= self.seq <= 0xFF:
            raise EncodeError(f"frame sequence number {self.seq} out of range 0..255")
        return encode_frame(
            Frame(address, self.control, _DI_SEQ.build({"di": self.di, "seq": self.seq})), preamble
        )


@dataclass(frozen=True, slots=True)
class ReadAddress:
    """Ask the meter alone on the line for its address (0x13, sent to the wildcard address)."""

    control: ClassVar[int] = Control.READ_ADDRESS

    def encode(self, address: str = WILDCARD, preamble: int = 0) -> bytes:
        return encode_frame(Frame(address, self.control, b""), preamble)


def _bcd_byte(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd_byte(raw: int) -> int:
    high, low = raw >> 4, raw & 0x0F
    if high > 9 or low > 9:
        raise DecodeError(f"0x{raw:02X} is not a BCD byte")
    return high * 10 + low


@dataclass(frozen=True, slots=True)
class BroadcastTime:
    """Broadcast time (control 0x08, the standard's broadcast time setting): the date and time every meter
    on the line sets its clock to, as YYMMDDhhmmss BCD sent seconds first, to the broadcast address. No
    meter answers.
    (Meters apply their own rules to it: commonly once a day, a few minutes of correction at most, never
    across midnight; a meter outside them ignores it without a word.)"""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    control: ClassVar[int] = Control.BROADCAST_TIME

    def __post_init__(self) -> None:
        if not 2000 <= self.year <= 2099:
            raise EncodeError(f"year {self.year}: a meter's clock holds 2000..2099")
        try:
            datetime(self.year, self.month, self.day, self.hour, self.minute, self.second)
        except ValueError as err:
            raise EncodeError(f"not a date and time: {err}") from err

    def encode(self, address: str = BROADCAST, preamble: int = 0) -> bytes:
        fields = (self.second, self.minute, self.hour, self.day, self.month, self.year % 100)
        return encode_frame(Frame(address, self.control, bytes(_bcd_byte(v) for v in fields)), preamble)


Request = ReadData | ReadFollowUp | ReadAddress | BroadcastTime


def broadcast_time(when: datetime, preamble: int = 0) -> bytes:
    """Broadcast-time frame setting every meter's clock to ``when`` (its local time: meters keep local
    time; seconds kept, microseconds dropped)."""
    return BroadcastTime(when.year, when.month, when.day, when.hour, when.minute, when.second).encode(
        BROADCAST, preamble
    )


def read_data(address: str, di: int, preamble: int = 0) -> bytes:
    """Read-data frame for data identifier ``di`` (e.g. ``0x00010000``) at ``address``."""
    return ReadData(di).encode(address, preamble)


def read_follow_up(address: str, di: int, seq: int, preamble: int = 0) -> bytes:
    """Read-follow-up-data frame: frame ``seq`` (1, 2, ...) after the first reply to ``di``."""
    return ReadFollowUp(di, seq).encode(address, preamble)


def read_address(preamble: int = 0) -> bytes:
    """Read-address frame, to the wildcard address."""
    return ReadAddress().encode(WILDCARD, preamble)


def parse_request(frame: Frame) -> Request:
    """The request carried by ``frame`` (the meter's side); :class:`DecodeError` if it is not one we know."""
    control = frame.control
    data = frame.data
    if control & REPLY_BIT:
        raise DecodeError(f"control 0x{control:02X} is a meter's reply, not a request")
    if control == Control.READ_DATA:
        if len(data) != 4:
            # 5 or 10 bytes: a block count and a start time (load records), which we do not serve.
            raise DecodeError(f"read data with {len(data)} data bytes: only the 4-byte form is supported")
        return ReadData(_DI.parse(data).di)
    if control == Control.READ_FOLLOW_UP:
        if len(data) != 5:
            raise DecodeError(f"read follow-up data takes 5 data bytes, {len(data)} given")
        parsed = _DI_SEQ.parse(data)
        return ReadFollowUp(parsed.di, parsed.seq)
    if control == Control.READ_ADDRESS:
        if data:
            raise DecodeError(f"read address takes no data, {len(data)} bytes given")
        return ReadAddress()
    if control == Control.BROADCAST_TIME:
        if len(data) != 6:
            raise DecodeError(f"broadcast time takes 6 data bytes, {len(data)} given")
        second, minute, hour, day, month, year = (_from_bcd_byte(b) for b in data)
        try:
            return BroadcastTime(2000 + year, month, day, hour, minute, second)
        except EncodeError as err:
            raise DecodeError(str(err)) from err
    raise DecodeError(f"unknown or unsupported request control 0x{control:02X}")


# ----------------------------------------------------------------------------------------------------
# Replies (meter -> master)


@dataclass(frozen=True, slots=True)
class DataReply:
    """A normal reply to read data (0x91, or 0xB1 when ``more`` frames follow) or to read follow-up data
    (0x92 / 0xB2, with ``seq``). ``payload`` is what follows the data identifier, offset removed, still
    BCD: see :func:`decode_value`."""

    di: int
    payload: bytes
    more: bool = False
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An abnormal reply (0xD1 to read data, 0xD2 to read follow-up, ...): the meter refuses the request of
    function ``function``; ``code`` is its error byte (bits in :class:`ErrorFlag`)."""

    function: int
    code: int

    @property
    def flags(self) -> ErrorFlag:
        return ErrorFlag(self.code & 0x7F)

    @property
    def reasons(self) -> tuple[str, ...]:
        """What the error byte means, one text per bit set (bit 7 is reserved)."""
        found = tuple(text for flag, text in _ERROR_TEXT.items() if self.code & flag)
        return found or (f"unspecified error (0x{self.code:02X})",)

    def describe(self) -> str:
        return f"meter refused function 0x{self.function:02X}: {'; '.join(self.reasons)}"


@dataclass(frozen=True, slots=True)
class AddressReply:
    """Answer to read address (0x93): the meter's address."""

    address: str


Reply = DataReply | ErrorReply | AddressReply

_ADDRESS_DATA = Struct("address" / Bytes(6), Terminated)


def parse_reply(frame: Frame) -> Reply:
    """The reply carried by ``frame`` (the master's side); :class:`DecodeError` for a request, an unknown
    function or data of the wrong size."""
    control = frame.control
    data = frame.data
    size = len(data)
    if not control & REPLY_BIT:
        raise DecodeError(f"control 0x{control:02X} is a request, not a meter's reply")
    function = control & FUNCTION_MASK
    if control & ERROR_BIT:
        if size != 1:
            raise DecodeError(f"abnormal reply (0x{control:02X}) with {size} data bytes, expected 1")
        return ErrorReply(function, data[0])
    more = bool(control & MORE_BIT)
    if function == Control.READ_DATA:
        if size < 4:
            raise DecodeError(f"read data reply with {size} data bytes: no data identifier")
        return DataReply(int.from_bytes(data[:4], "little"), data[4:], more)
    if function == Control.READ_FOLLOW_UP:
        if size < 5:
            raise DecodeError(f"follow-up data reply with {size} data bytes: no identifier and sequence")
        return DataReply(int.from_bytes(data[:4], "little"), data[4:-1], more, data[-1])
    if function == Control.READ_ADDRESS:
        if size != 6 or more:
            raise DecodeError(f"read address reply (0x{control:02X}) with {size} data bytes, expected 6")
        return AddressReply(_address_text(_ADDRESS_DATA.parse(data).address))
    raise DecodeError(f"unknown or unsupported reply control 0x{control:02X}")


def encode_reply(reply: Reply, address: str, preamble: int = 0) -> bytes:
    """The frame a meter at ``address`` sends for ``reply`` (the simulator's side)."""
    try:
        control, data = _reply_body(reply)
    except ConstructError as err:
        raise EncodeError(f"cannot encode {reply!r}: {err}") from err
    return encode_frame(Frame(address, control, data), preamble)


def _reply_body(reply: Reply) -> tuple[int, bytes]:
    if isinstance(reply, DataReply):
        _check_di(reply.di)
        control = REPLY_BIT | (MORE_BIT if reply.more else 0)
        if reply.seq is None:
            return control | Control.READ_DATA, _DI.build({"di": reply.di}) + reply.payload
        if not 0 <= reply.seq <= 0xFF:
            raise EncodeError(f"frame sequence number {reply.seq} out of range 0..255")
        body = _DI.build({"di": reply.di}) + reply.payload + bytes((reply.seq,))
        return control | Control.READ_FOLLOW_UP, body
    if isinstance(reply, ErrorReply):
        if not 0 <= reply.function <= FUNCTION_MASK:
            raise EncodeError(f"function {reply.function} out of range 0..0x1F")
        if not 0 <= reply.code <= 0xFF:
            raise EncodeError(f"error byte {reply.code} out of range 0..255")
        return REPLY_BIT | ERROR_BIT | reply.function, bytes((reply.code,))
    if isinstance(reply, AddressReply):
        return REPLY_BIT | Control.READ_ADDRESS, _ADDRESS_DATA.build(
            {"address": _address_wire(reply.address)}
        )
    raise EncodeError(f"not a reply: {reply!r}")


# ----------------------------------------------------------------------------------------------------
# Values and the data identifier table


def _bcd_decode(raw: bytes, decimals: int, signed: bool) -> float:
    top = raw[-1]
    negative = signed and bool(top & 0x80)
    digits = (bytes((top & 0x7F,)) + raw[-2::-1]).hex() if negative else raw[::-1].hex()
    if not digits.isdigit():
        raise DecodeError(f"value {raw.hex().upper()} is not BCD")
    magnitude = int(digits)
    value: float = magnitude / 10**decimals if decimals or signed else magnitude
    return -value if negative else value


def _limit(length: int, signed: bool) -> int:
    """One more than the largest magnitude of ``length`` BCD bytes (the sign bit takes the top digit's 8)."""
    digits = 2 * length
    return int(8 * 10 ** (digits - 1)) if signed else int(10**digits)


def _bcd_encode(value: float, length: int, decimals: int, signed: bool) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EncodeError(f"value {value!r} is not a finite number")
    negative = math.copysign(1.0, value) < 0 if signed else False
    if value < 0 and not signed:
        raise EncodeError(f"value {value} is negative: this data item is unsigned")
    magnitude = round(abs(value) * 10**decimals)
    limit = _limit(length, signed)
    if magnitude >= limit:
        top = (limit - 1) / 10**decimals
        raise EncodeError(f"value {value} out of range: at most {top:.{decimals}f} in magnitude")
    raw = bytearray(bytes.fromhex(f"{magnitude:0{2 * length}d}")[::-1])
    if negative:
        raw[-1] |= 0x80
    return bytes(raw)


@dataclass(frozen=True, slots=True)
class DataItem:
    """One line of the data identifier table: a value's name in events, its unit and its BCD format
    (``length`` bytes, ``decimals`` after the point, ``signed``: the top bit of the last byte is the sign)."""

    di: int
    name: str
    unit: str
    length: int
    decimals: int
    signed: bool = False
    description: str = ""

    @property
    def codec(self) -> Any:
        """The construct for the value's bytes: parses to a number, builds from one."""
        return _value_construct(self.length, self.decimals, self.signed)

    @property
    def largest(self) -> float:
        """The largest magnitude the format holds."""
        return float((_limit(self.length, self.signed) - 1) / 10**self.decimals)


_CONSTRUCTS: dict[tuple[int, int, bool], Any] = {}


def _value_construct(length: int, decimals: int, signed: bool) -> Any:
    key = (length, decimals, signed)
    built = _CONSTRUCTS.get(key)
    if built is None:
        built = ExprAdapter(
            Bytes(length),
            lambda obj, ctx: _bcd_decode(bytes(obj), decimals, signed),
            lambda obj, ctx: _bcd_encode(obj, length, decimals, signed),
        )
        _CONSTRUCTS[key] = built
    return built


def _energy(di: int, name: str, unit: str, description: str, signed: bool = False) -> list[DataItem]:
    """The total and tariffs 1..4 of an energy register (DI1 selects the tariff)."""
    items = [DataItem(di, name, unit, 4, 2, signed, description)]
    items += [
        DataItem(di | (t << 8), f"{name}_t{t}", unit, 4, 2, signed, f"{description}, tariff {t}")
        for t in range(1, 5)
    ]
    return items


def _phases(
    di: int, name: str, unit: str, *, length: int, decimals: int, signed: bool, description: str
) -> list[DataItem]:
    """Phases A, B, C of a variable (DI1 = 1, 2, 3)."""
    return [
        DataItem(
            di | (n << 8), f"{name}_{p}", unit, length, decimals, signed, f"{description}, phase {p.upper()}"
        )
        for n, p in ((1, "a"), (2, "b"), (3, "c"))
    ]


def _total_and_phases(
    di: int, name: str, unit: str, *, length: int, decimals: int, description: str
) -> list[DataItem]:
    """The total (DI1 = 0) and phases A, B, C of a signed variable."""
    return [
        DataItem(di, name, unit, length, decimals, True, f"{description}, total"),
        *_phases(di, name, unit, length=length, decimals=decimals, signed=True, description=description),
    ]


ITEMS: Final[tuple[DataItem, ...]] = (
    # Energies (Appendix A, table A.1): XXXXXX.XX, 4 bytes. The combined registers carry a sign bit.
    *_energy(0x00000000, "energy_active_combined", "kWh", "combined active energy", signed=True),
    *_energy(0x00010000, "energy_active_forward", "kWh", "forward active energy"),
    *_energy(0x00020000, "energy_active_reverse", "kWh", "reverse active energy"),
    *_energy(0x00030000, "energy_reactive_combined_1", "kvarh", "combined reactive energy 1", signed=True),
    *_energy(0x00040000, "energy_reactive_combined_2", "kvarh", "combined reactive energy 2", signed=True),
    DataItem(0x00050000, "energy_reactive_q1", "kvarh", 4, 2, False, "quadrant I reactive energy"),
    DataItem(0x00060000, "energy_reactive_q2", "kvarh", 4, 2, False, "quadrant II reactive energy"),
    DataItem(0x00070000, "energy_reactive_q3", "kvarh", 4, 2, False, "quadrant III reactive energy"),
    DataItem(0x00080000, "energy_reactive_q4", "kvarh", 4, 2, False, "quadrant IV reactive energy"),
    DataItem(0x00090000, "energy_apparent_forward", "kVAh", 4, 2, False, "forward apparent energy"),
    DataItem(0x000A0000, "energy_apparent_reverse", "kVAh", 4, 2, False, "reverse apparent energy"),
    # Variables (table A.3). Currents, powers and power factors carry a sign bit (direction).
    *_phases(0x02010000, "voltage", "V", length=2, decimals=1, signed=False, description="voltage"),  # XXX.X
    *_phases(0x02020000, "current", "A", length=3, decimals=3, signed=True, description="current"),  # XXX.XXX
    *_total_and_phases(0x02030000, "power_active", "kW", length=3, decimals=4, description="active power"),
    *_total_and_phases(
        0x02040000, "power_reactive", "kvar", length=3, decimals=4, description="reactive power"
    ),
    *_total_and_phases(
        0x02050000, "power_apparent", "kVA", length=3, decimals=4, description="apparent power"
    ),
    *_total_and_phases(0x02060000, "power_factor", "", length=2, decimals=3, description="power factor"),
    *_phases(0x02070000, "phase_angle", "°", length=2, decimals=1, signed=False, description="phase angle"),
    *_phases(
        0x02080000, "voltage_thd", "%", length=2, decimals=2, signed=False, description="voltage distortion"
    ),
    *_phases(
        0x02090000, "current_thd", "%", length=2, decimals=2, signed=False, description="current distortion"
    ),
    DataItem(0x02800001, "current_neutral", "A", 3, 3, True, "neutral current"),
    DataItem(0x02800002, "frequency", "Hz", 2, 2, False, "grid frequency"),  # XX.XX
    DataItem(0x02800003, "power_active_1min", "kW", 3, 4, True, "one-minute mean active power"),
    DataItem(0x02800004, "demand_active", "kW", 3, 4, True, "present active demand"),
    DataItem(0x02800005, "demand_reactive", "kvar", 3, 4, True, "present reactive demand"),
    DataItem(0x02800006, "demand_apparent", "kVA", 3, 4, True, "present apparent demand"),
    DataItem(0x02800007, "temperature", "°C", 2, 1, True, "meter temperature"),  # XXX.X
    DataItem(0x02800008, "clock_battery_voltage", "V", 2, 2, False, "clock battery voltage"),
    DataItem(0x02800009, "reading_battery_voltage", "V", 2, 2, False, "meter-reading battery voltage"),
    DataItem(0x0280000A, "battery_runtime", "min", 4, 0, False, "internal battery working time"),
)
"""The data identifiers this module knows, one line each. More are one line each too."""

_BY_DI: Final = {item.di: item for item in ITEMS}
_BY_NAME: Final = {item.name: item for item in ITEMS}
if len(_BY_DI) != len(ITEMS) or len(_BY_NAME) != len(ITEMS):  # pragma: no cover - a table typo
    raise RuntimeError("duplicate data identifier or name in the DL/T 645 table")


def item_for(di: int) -> DataItem | None:
    """The table line for data identifier ``di``, or None."""
    return _BY_DI.get(di)


def find_item(key: str) -> DataItem | None:
    """The table line named ``key`` (``voltage_a``) or with the data identifier ``key`` (``02010100``)."""
    item = _BY_NAME.get(key.strip())
    if item is not None:
        return item
    di = parse_di(key)
    return None if di is None else _BY_DI.get(di)


def decode_value(item: DataItem, payload: bytes) -> float:
    """The value in a reply's ``payload`` for ``item``: DecodeError for a wrong length or non-BCD bytes."""
    if len(payload) != item.length:
        raise DecodeError(
            f"{di_text(item.di)} ({item.name}): {len(payload)} value bytes, expected {item.length}"
        )
    return _bcd_decode(payload, item.decimals, item.signed)


def encode_value(item: DataItem, value: float) -> bytes:
    """The payload of ``value`` for ``item``, rounded to its decimals; EncodeError if it does not fit."""
    try:
        return _bcd_encode(value, item.length, item.decimals, item.signed)
    except EncodeError as err:
        raise EncodeError(f"{di_text(item.di)} ({item.name}): {err}") from err
