"""The R2000 "0xA0" serial protocol of UHF RFID readers built on the Impinj R2000 module.

Most Shenzhen-made UHF readers (sold under many names) speak it over RS-232/RS-485 or a TCP socket. Facts
here come from the vendors' "UHF RFID Reader Serial Interface Protocol" (V3.x) as quoted by public client
libraries.

A frame, in both directions::

    Head  Len  Address  Cmd  Data...  Check
    0xA0  n    0..255   op   n-3 B    two's complement of the sum of every byte before it (head included)

``Len`` counts the bytes after itself (Address, Cmd, Data, Check), so it is at least 3. Address 0xFF is
broadcast.

This module is pure (no I/O, clocks or asyncio): :func:`encode_frame` / :func:`decode_frame` for one frame,
:class:`R2000Framer` for a byte stream, request builders (host to reader) with :func:`parse_request` for the
simulator, and :func:`parse_reply` / :func:`encode_reply` for what the reader sends. Each payload has one
construct definition used in both directions, except on the hot path: tag frames (thousands a second) are
decoded by a few lines of indexing that the tests check against the construct definition :data:`TAG_DATA`
(through construct, compiled, a tag frame costs 10-30 us on a small gateway CPU; the fast path about 3 us).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    Int8ub,
    Int16ub,
    Int24ub,
    Int32ub,
    Padding,
    Rebuild,
    Struct,
    Terminated,
    len_,
    this,
)

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer

__all__ = [
    "BROADCAST",
    "FREQUENCY_MHZ",
    "HEAD",
    "MAX_POWER_DBM",
    "RSSI_DBM",
    "AntennaMissing",
    "Command",
    "CommandStatus",
    "ErrorCode",
    "FastSwitchInventory",
    "FirmwareVersion",
    "Frame",
    "GetFirmwareVersion",
    "GetOutputPower",
    "GetWorkAntenna",
    "InventoryEnd",
    "OutputPower",
    "R2000Framer",
    "RawTag",
    "RealTimeInventory",
    "Reply",
    "Request",
    "Reset",
    "SetOutputPower",
    "SetWorkAntenna",
    "TagRead",
    "WorkAntenna",
    "checksum",
    "decode_frame",
    "encode_frame",
    "encode_reply",
    "fast_switch_inventory",
    "frequency_mhz",
    "get_firmware_version",
    "get_work_antenna",
    "parse_reply",
    "parse_request",
    "parse_tag_data_spec",
    "real_time_inventory",
    "reset",
    "rssi_dbm",
    "rssi_raw",
    "set_work_antenna",
]

HEAD: Final = 0xA0
BROADCAST: Final = 0xFF
MIN_LEN: Final = 3
"""Smallest legal Len: Address, Cmd and Check with no data."""
MAX_DATA: Final = 255 - MIN_LEN
"""Most data bytes a frame can carry (Len is one byte)."""
MAX_ANTENNAS: Final = 8


class Command(IntEnum):
    """Command codes (the ``Cmd`` byte). Only some have codecs here; the rest name what a reader may echo."""

    GET_GPIO_VALUE = 0x60
    SET_GPIO_VALUE = 0x61
    SET_ANT_CONNECTION_DETECTOR = 0x62
    GET_ANT_CONNECTION_DETECTOR = 0x63
    SET_TEMPORARY_OUTPUT_POWER = 0x66
    SET_READER_IDENTIFIER = 0x67
    GET_READER_IDENTIFIER = 0x68
    SET_RF_LINK_PROFILE = 0x69
    GET_RF_LINK_PROFILE = 0x6A
    RESET = 0x70
    SET_UART_BAUDRATE = 0x71
    GET_FIRMWARE_VERSION = 0x72
    SET_READER_ADDRESS = 0x73
    SET_WORK_ANTENNA = 0x74
    GET_WORK_ANTENNA = 0x75
    SET_OUTPUT_POWER = 0x76
    GET_OUTPUT_POWER = 0x77
    SET_FREQUENCY_REGION = 0x78
    GET_FREQUENCY_REGION = 0x79
    SET_BEEPER_MODE = 0x7A
    GET_READER_TEMPERATURE = 0x7B
    GET_RF_PORT_RETURN_LOSS = 0x7E
    INVENTORY = 0x80
    READ = 0x81
    WRITE = 0x82
    LOCK = 0x83
    KILL = 0x84
    SET_ACCESS_EPC_MATCH = 0x85
    GET_ACCESS_EPC_MATCH = 0x86
    REAL_TIME_INVENTORY = 0x89
    FAST_SWITCH_ANT_INVENTORY = 0x8A
    CUSTOMIZED_SESSION_TARGET_INVENTORY = 0x8B
    SET_IMPINJ_FAST_TID = 0x8C
    SET_AND_SAVE_IMPINJ_FAST_TID = 0x8D
    GET_IMPINJ_FAST_TID = 0x8E
    GET_INVENTORY_BUFFER = 0x90
    GET_AND_RESET_INVENTORY_BUFFER = 0x91
    GET_INVENTORY_BUFFER_TAG_COUNT = 0x92
    RESET_INVENTORY_BUFFER = 0x93
    ISO18000_6B_INVENTORY = 0xB0
    ISO18000_6B_READ = 0xB1
    ISO18000_6B_WRITE = 0xB2
    ISO18000_6B_LOCK = 0xB3
    ISO18000_6B_QUERY_LOCK = 0xB4


class ErrorCode(IntEnum):
    """The one-byte status (``ErrorCode``) the reader returns for commands that have no other answer."""

    SUCCESS = 0x10
    FAIL = 0x11
    MCU_RESET_ERROR = 0x20
    CW_ON_ERROR = 0x21
    ANTENNA_MISSING = 0x22
    WRITE_FLASH_ERROR = 0x23
    READ_FLASH_ERROR = 0x24
    SET_OUTPUT_POWER_ERROR = 0x25
    TAG_INVENTORY_ERROR = 0x31
    TAG_READ_ERROR = 0x32
    TAG_WRITE_ERROR = 0x33
    TAG_LOCK_ERROR = 0x34
    TAG_KILL_ERROR = 0x35
    NO_TAG = 0x36
    INVENTORY_OK_ACCESS_FAIL = 0x37
    BUFFER_EMPTY = 0x38
    NXP_CUSTOM_COMMAND_FAIL = 0x3C
    ACCESS_OR_PASSWORD_ERROR = 0x40
    PARAMETER_INVALID = 0x41
    WORD_COUNT_TOO_LONG = 0x42
    MEMBANK_OUT_OF_RANGE = 0x43
    LOCK_REGION_OUT_OF_RANGE = 0x44
    LOCK_TYPE_OUT_OF_RANGE = 0x45
    READER_ADDRESS_INVALID = 0x46
    ANTENNA_ID_OUT_OF_RANGE = 0x47
    OUTPUT_POWER_OUT_OF_RANGE = 0x48
    FREQUENCY_REGION_OUT_OF_RANGE = 0x49
    BAUDRATE_OUT_OF_RANGE = 0x4A
    BEEPER_MODE_OUT_OF_RANGE = 0x4B
    EPC_MATCH_LEN_TOO_LONG = 0x4C
    EPC_MATCH_LEN_ERROR = 0x4D
    EPC_MATCH_MODE_INVALID = 0x4E
    FREQUENCY_RANGE_INVALID = 0x4F
    FAIL_TO_GET_RN16 = 0x50
    DRM_MODE_INVALID = 0x51
    PLL_LOCK_FAIL = 0x52
    RF_CHIP_NO_RESPONSE = 0x53
    FAIL_TO_ACHIEVE_OUTPUT_POWER = 0x54
    COPYRIGHT_AUTHENTICATION_FAIL = 0x55
    SPECTRUM_REGULATION_ERROR = 0x56
    OUTPUT_POWER_TOO_LOW = 0x57
    FAIL_TO_GET_RETURN_LOSS = 0xEE


# ----------------------------------------------------------------------------------------------------
# Conversions (vendor tables)


def frequency_mhz(index: int) -> float | None:
    """Carrier frequency of a frequency-point index, from the protocol's frequency table.

    Points 0..6 are 865.0..868.0 MHz (ETSI), 7..59 are 902.0..928.0 MHz (FCC), both in 0.5 MHz steps;
    indices 60..63 are not in the table (None).
    """
    if 0 <= index <= 6:
        return 865.0 + 0.5 * index
    if 7 <= index <= 59:
        return 902.0 + 0.5 * (index - 7)
    return None


def rssi_dbm(raw: int) -> int:
    """RSSI in dBm for the reader's raw 7-bit RSSI, after the protocol's RSSI table.

    The table maps 127 -> -2 dBm down to 90 -> -39 dBm (raw - 129), then 89 -> -41 dBm down to
    0 -> -130 dBm (raw - 130): the table skips -40 dBm. Source: the RSSI table of "UHF RFID Reader Serial
    Interface Protocol" as transcribed by the rust-invelion client (raw > 89: raw - 129, else raw - 130);
    it agrees with the common quote "98 -> -31 dBm".
    """
    return raw - 129 if raw > 89 else raw - 130


def rssi_raw(dbm: float) -> int:
    """The raw RSSI (0..127) whose table value is nearest ``dbm`` (the inverse of :func:`rssi_dbm`)."""
    value = round(dbm)
    raw = value + 129 if value >= -40 else value + 130
    return max(0, min(127, raw))


# ----------------------------------------------------------------------------------------------------
# Frames


def checksum(data: bytes) -> int:
    """The Check byte for ``data`` (every byte before Check, head included): two's complement of the sum."""
    return (-sum(data)) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame, without head, length and checksum."""

    address: int
    command: int
    data: bytes


FRAME = Struct(
    "head" / Const(HEAD, Int8ub),
    "length" / Rebuild(Int8ub, len_(this.data) + MIN_LEN),
    "address" / Int8ub,
    "command" / Int8ub,
    "data" / Bytes(this.length - MIN_LEN),
    "check" / Int8ub,
    Terminated,
)
"""The frame layout (the checksum is computed and checked by :func:`encode_frame` / :func:`decode_frame`)."""
_FRAME_BODY = FRAME.compile()


def encode_frame(frame: Frame) -> bytes:
    """The bytes of ``frame`` on the wire."""
    if not 0 <= frame.address <= 0xFF:
        raise EncodeError(f"address {frame.address} out of range 0..255")
    if not 0 <= frame.command <= 0xFF:
        raise EncodeError(f"command {frame.command} out of range 0..255")
    if len(frame.data) > MAX_DATA:
        raise EncodeError(f"{len(frame.data)} data bytes: a frame carries at most {MAX_DATA}")
    raw = bytearray(
        _FRAME_BODY.build(
            {"address": frame.address, "command": frame.command, "data": frame.data, "check": 0}
        )
    )
    raw[-1] = checksum(bytes(raw[:-1]))
    return bytes(raw)


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one whole frame; :class:`DecodeError` says what is wrong with it."""
    if len(raw) < MIN_LEN + 2:
        raise DecodeError(f"truncated: {len(raw)} bytes, a frame has at least {MIN_LEN + 2}")
    if raw[0] != HEAD:
        raise DecodeError(f"bad head 0x{raw[0]:02X}")
    length = raw[1]
    if length < MIN_LEN:
        raise DecodeError(f"bad length: Len is {length}, at least {MIN_LEN}")
    if length != len(raw) - 2:
        raise DecodeError(f"length mismatch: Len says {length}, {len(raw) - 2} bytes follow")
    expected = checksum(raw[:-1])
    if raw[-1] != expected:
        raise DecodeError(f"bad checksum: expected 0x{expected:02X}, found 0x{raw[-1]:02X}")
    parsed = _FRAME_BODY.parse(raw)
    return Frame(parsed.address, parsed.command, bytes(parsed.data))


def _holds_a_frame(buffer: bytearray, begin: int, end: int) -> bool:
    """Whether a whole frame with a valid checksum lies within ``buffer[begin:end]``.

    The checksum is 8 bits: a false start in garbage (a stray 0xA0 with a large Len after it) passes it one
    time in 256, and would swallow every real frame inside its span. A genuine frame holding a whole valid
    frame in its data is far rarer (about 1e-6 per tag frame), so such a candidate is rejected and the real
    frames inside it are found on the rescan."""
    inner = buffer.find(HEAD, begin, end)
    while inner >= 0 and inner + 1 < end:
        inner_end = inner + buffer[inner + 1] + 2
        if buffer[inner + 1] >= MIN_LEN and inner_end <= end and not sum(buffer[inner:inner_end]) & 0xFF:
            return True
        inner = buffer.find(HEAD, inner + 1, end)
    return False


class R2000Framer(Framer[Frame]):
    """Splits a byte stream from (or to) a reader into :class:`Frame`\\ s.

    It hunts for 0xA0, reads Len, waits for the whole frame, checks the checksum. A candidate with an
    impossible Len (below 3) or a bad checksum is counted and only its 0xA0 is skipped, so a real frame that
    starts inside it is still found; so is a candidate that holds a whole valid frame (see
    :func:`_holds_a_frame`). Every byte discarded is counted in ``stats.bytes_skipped``. It never raises on
    input.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        return self._scan(data, False)  # type: ignore[return-value]  # no RawTag without raw_tags

    def feed_reads(self, data: bytes) -> list[Frame | RawTag]:
        """Like :meth:`feed`, but a well-formed tag frame of an inventory command comes out as a
        :data:`RawTag` tuple instead of a :class:`Frame`: a busy reader sends tens of thousands a second,
        and skipping the Frame, the :class:`TagRead` and :func:`parse_reply`'s dispatch is most of the
        cost of reading them. A tag frame whose PC disagrees with its length stays a Frame, so
        :func:`parse_reply` reports it."""
        return self._scan(data, True)

    def _scan(self, data: bytes, raw_tags: bool) -> list[Frame | RawTag]:
        buffer = self._buffer
        buffer += data
        stats = self.stats
        frames: list[Frame | RawTag] = []
        append = frames.append
        size = len(buffer)
        pos = 0
        while pos < size:
            start = buffer.find(HEAD, pos)
            if start < 0:
                stats.bytes_skipped += size - pos
                pos = size
                break
            if start > pos:
                stats.bytes_skipped += start - pos
                pos = start
            if size - start < 2:
                break
            length = buffer[start + 1]
            if length < MIN_LEN:
                stats.bad_length += 1
                stats.bytes_skipped += 1
                pos = start + 1
                continue
            end = start + length + 2
            if end > size:
                break
            if sum(buffer[start:end]) & 0xFF:
                stats.bad_checksum += 1
                stats.bytes_skipped += 1
                pos = start + 1
                continue
            if buffer.find(HEAD, start + 1, end) >= 0 and _holds_a_frame(buffer, start + 1, end):
                stats.overlapping += 1
                stats.bytes_skipped += 1
                pos = start + 1
                continue
            pos = end
            command = buffer[start + 3]
            if raw_tags and command in (_REAL_TIME, _FAST_SWITCH) and length >= 7:
                # Data = FreqAnt, PC (2), EPC (2 * (PC >> 11)), RSSI: Len = 3 + 4 + EPC length.
                pc = (buffer[start + 5] << 8) | buffer[start + 6]
                if length == 7 + ((pc >> 11) << 1):
                    freq_ant = buffer[start + 4]
                    rssi = buffer[end - 2]
                    append(
                        (
                            buffer[start + 2],
                            command,
                            (((rssi >> 7) << 2) | (freq_ant & 0x03)) + 1,
                            freq_ant >> 2,
                            pc,
                            bytes(buffer[start + 7 : end - 2]),
                            rssi & 0x7F,
                        )
                    )
                    continue
            append(Frame(buffer[start + 2], command, bytes(buffer[start + 4 : end - 1])))
        if pos:
            del buffer[:pos]
        stats.frames += len(frames)
        return frames


_REAL_TIME: Final = int(Command.REAL_TIME_INVENTORY)
_FAST_SWITCH: Final = int(Command.FAST_SWITCH_ANT_INVENTORY)
RawTag = tuple[int, int, int, int, int, bytes, int]
"""A tag frame as :meth:`R2000Framer.feed_reads` gives it: (address, command, antenna 1..8, frequency
index, PC, EPC, raw RSSI), the fields of :class:`TagRead` plus the frame's address."""

FREQUENCY_MHZ: Final = tuple(frequency_mhz(i) for i in range(64))
""":func:`frequency_mhz` by frequency index, for the hot path."""
RSSI_DBM: Final = tuple(rssi_dbm(i) for i in range(128))
"""`rssi_dbm` by raw RSSI, for the hot path."""


# ----------------------------------------------------------------------------------------------------
# Requests (host -> reader)


def _check_antenna(antenna: int) -> None:
    if not 1 <= antenna <= MAX_ANTENNAS:
        raise EncodeError(f"antenna {antenna} out of range 1..{MAX_ANTENNAS}")


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise EncodeError(f"{name} {value} out of range 0..255")


def _frame_bytes(address: int, command: int, data: bytes = b"") -> bytes:
    return encode_frame(Frame(address, command, data))


@dataclass(frozen=True, slots=True)
class Reset:
    """cmd_reset: the reader restarts; it answers only on failure (an error code)."""

    command: ClassVar[Command] = Command.RESET

    def encode(self, address: int = 1) -> bytes:
        return _frame_bytes(address, self.command)


@dataclass(frozen=True, slots=True)
class GetFirmwareVersion:
    """cmd_get_firmware_version: answered by :class:`FirmwareVersion`."""

    command: ClassVar[Command] = Command.GET_FIRMWARE_VERSION

    def encode(self, address: int = 1) -> bytes:
        return _frame_bytes(address, self.command)


@dataclass(frozen=True, slots=True)
class SetWorkAntenna:
    """cmd_set_work_antenna (antenna 1..8 here, 0..7 on the wire): answered by :class:`CommandStatus`."""

    antenna: int
    command: ClassVar[Command] = Command.SET_WORK_ANTENNA

    def encode(self, address: int = 1) -> bytes:
        _check_antenna(self.antenna)
        return _frame_bytes(address, self.command, bytes([self.antenna - 1]))


@dataclass(frozen=True, slots=True)
class GetWorkAntenna:
    """cmd_get_work_antenna: answered by :class:`WorkAntenna`."""

    command: ClassVar[Command] = Command.GET_WORK_ANTENNA

    def encode(self, address: int = 1) -> bytes:
        return _frame_bytes(address, self.command)


@dataclass(frozen=True, slots=True)
class RealTimeInventory:
    """cmd_real_time_inventory on the work antenna, ``repeat`` rounds (Data = Repeat).

    Answered by :class:`TagRead` frames then one :class:`InventoryEnd` (or a :class:`CommandStatus` error).
    """

    repeat: int = 1
    command: ClassVar[Command] = Command.REAL_TIME_INVENTORY

    def encode(self, address: int = 1) -> bytes:
        _check_byte("repeat", self.repeat)
        return _frame_bytes(address, self.command, bytes([self.repeat]))


SKIP_ANTENNA: Final = 0xFF
"""Antenna id in an unused fast-switch slot (any id above 7 means "skip this slot")."""

_SLOT = Struct("antenna" / Int8ub, "stay" / Int8ub)
FAST_SWITCH_4 = Struct(
    "slots" / Array(4, _SLOT),
    "interval_ms" / Int8ub,
    "repeat" / Int8ub,
    Terminated,
)
"""cmd_fast_switch_ant_inventory, 4-antenna form (Len 0x0D): A, Astay .. D, Dstay, Interval, Repeat."""
FAST_SWITCH_8 = Struct(
    "slots" / Array(8, _SLOT),
    "interval_ms" / Int8ub,
    Padding(5),
    "session" / Int8ub,
    "target" / Int8ub,
    "optimize" / Int8ub,
    "ongoing" / Int8ub,
    "target_quantity" / Int8ub,
    "phase" / Int8ub,
    "repeat" / Int8ub,
    Terminated,
)
"""cmd_fast_switch_ant_inventory, 8-antenna form (Len 0x20): A, Astay .. H, Hstay, Interval, 5 reserved bytes,
Session, Target, Optimize, Ongoing, TargetQuantity, Phase, Repeat (Optimize, Ongoing, TargetQuantity are sent
as 0)."""
_FAST_SWITCH_4_LEN: Final = 10
_FAST_SWITCH_8_LEN: Final = 29


@dataclass(frozen=True, slots=True)
class FastSwitchInventory:
    """cmd_fast_switch_ant_inventory: inventory on several antennas in turn.

    ``antennas`` holds (antenna 1..8, stay rounds) in the order visited; skipped slots are not listed.
    ``session`` None selects the 4-antenna form (at most 4 pairs, no session/target/phase fields); a session
    (0..3) selects the 8-antenna form, which is also chosen (with session 1) when more than 4 pairs are given.
    Answered by :class:`TagRead` frames, :class:`AntennaMissing` for an absent antenna, then
    :class:`InventoryEnd`.
    """

    antennas: tuple[tuple[int, int], ...]
    interval_ms: int = 0
    repeat: int = 1
    session: int | None = None
    target: int = 0
    phase: bool = False
    command: ClassVar[Command] = Command.FAST_SWITCH_ANT_INVENTORY

    def __post_init__(self) -> None:
        object.__setattr__(self, "antennas", tuple((int(a), int(s)) for a, s in self.antennas))
        if self.session is None and len(self.antennas) > 4:
            object.__setattr__(self, "session", 1)

    def encode(self, address: int = 1) -> bytes:
        slots_count = 4 if self.session is None else 8
        if not self.antennas:
            raise EncodeError("fast-switch inventory needs at least one antenna")
        if len(self.antennas) > slots_count:
            raise EncodeError(f"{len(self.antennas)} antennas: this form has {slots_count} slots")
        for antenna, stay in self.antennas:
            _check_antenna(antenna)
            _check_byte("stay", stay)
        _check_byte("interval_ms", self.interval_ms)
        _check_byte("repeat", self.repeat)
        slots = [{"antenna": antenna - 1, "stay": stay} for antenna, stay in self.antennas]
        slots += [{"antenna": SKIP_ANTENNA, "stay": 0}] * (slots_count - len(slots))
        if self.session is None:
            if self.target or self.phase:
                raise EncodeError("target and phase need the 8-antenna form (give a session)")
            data = FAST_SWITCH_4.build(
                {"slots": slots, "interval_ms": self.interval_ms, "repeat": self.repeat}
            )
        else:
            if not 0 <= self.session <= 3:
                raise EncodeError(f"session {self.session} out of range 0..3")
            if self.target not in (0, 1):
                raise EncodeError(f"target {self.target} must be 0 (A) or 1 (B)")
            data = FAST_SWITCH_8.build(
                {
                    "slots": slots,
                    "interval_ms": self.interval_ms,
                    "session": self.session,
                    "target": self.target,
                    "optimize": 0,
                    "ongoing": 0,
                    "target_quantity": 0,
                    "phase": int(self.phase),
                    "repeat": self.repeat,
                }
            )
        return _frame_bytes(address, self.command, data)


MAX_POWER_DBM: Final = 33
"""The highest output power an R2000 reader takes (dBm, in whole dB: 0..33)."""
_POWER_FORMS: Final = (1, 4, 8)
"""Output power data: one byte for every antenna, or one per antenna of a 4- or 8-port reader."""


def _check_powers(powers: Sequence[int]) -> None:
    if len(powers) not in _POWER_FORMS:
        raise EncodeError(f"{len(powers)} powers: give 1 (every antenna), 4 or 8 (one per antenna port)")
    for power in powers:
        if not 0 <= power <= MAX_POWER_DBM:
            raise EncodeError(f"output power {power} dBm out of range 0..{MAX_POWER_DBM}")


@dataclass(frozen=True, slots=True)
class SetOutputPower:
    """cmd_set_output_power: ``powers`` in dBm, one for every antenna or one per port (4 or 8, antenna 1
    first). Answered by :class:`CommandStatus` (0x10, or 0x48 for a power out of range)."""

    powers: tuple[int, ...]
    command: ClassVar[Command] = Command.SET_OUTPUT_POWER

    def encode(self, address: int = 1) -> bytes:
        _check_powers(self.powers)
        return _frame_bytes(address, self.command, bytes(self.powers))


@dataclass(frozen=True, slots=True)
class GetOutputPower:
    """cmd_get_output_power: answered by :class:`OutputPower`."""

    command: ClassVar[Command] = Command.GET_OUTPUT_POWER

    def encode(self, address: int = 1) -> bytes:
        return _frame_bytes(address, self.command)


Request = (
    Reset
    | GetFirmwareVersion
    | SetWorkAntenna
    | GetWorkAntenna
    | RealTimeInventory
    | FastSwitchInventory
    | SetOutputPower
    | GetOutputPower
)


def reset(address: int = 1) -> bytes:
    """cmd_reset frame."""
    return Reset().encode(address)


def get_firmware_version(address: int = 1) -> bytes:
    """cmd_get_firmware_version frame."""
    return GetFirmwareVersion().encode(address)


def set_work_antenna(antenna: int, address: int = 1) -> bytes:
    """cmd_set_work_antenna frame for antenna 1..8."""
    return SetWorkAntenna(antenna).encode(address)


def get_work_antenna(address: int = 1) -> bytes:
    """cmd_get_work_antenna frame."""
    return GetWorkAntenna().encode(address)


def real_time_inventory(repeat: int = 1, address: int = 1) -> bytes:
    """cmd_real_time_inventory frame: ``repeat`` rounds on the work antenna."""
    return RealTimeInventory(repeat).encode(address)


def fast_switch_inventory(
    antennas: Sequence[tuple[int, int]], interval_ms: int = 0, repeat: int = 1, address: int = 1
) -> bytes:
    """cmd_fast_switch_ant_inventory frame over (antenna 1..8, stay rounds) pairs.

    Up to 4 pairs use the 4-antenna form; 5 to 8 pairs use the 8-antenna form (session S1, target A).
    """
    return FastSwitchInventory(tuple(antennas), interval_ms, repeat).encode(address)


def _no_data(frame: Frame) -> None:
    if frame.data:
        raise DecodeError(f"command 0x{frame.command:02X} takes no data, {len(frame.data)} bytes given")


def _wire_antenna(wire: int) -> int:
    if wire >= MAX_ANTENNAS:
        raise DecodeError(f"antenna id {wire} out of range 0..{MAX_ANTENNAS - 1}")
    return wire + 1


def parse_request(frame: Frame) -> Request:
    """The request carried by ``frame`` (the reader's side); :class:`DecodeError` if it is not one we know."""
    command = frame.command
    data = frame.data
    if command == Command.RESET:
        _no_data(frame)
        return Reset()
    if command == Command.GET_FIRMWARE_VERSION:
        _no_data(frame)
        return GetFirmwareVersion()
    if command == Command.GET_WORK_ANTENNA:
        _no_data(frame)
        return GetWorkAntenna()
    if command == Command.SET_WORK_ANTENNA:
        if len(data) != 1:
            raise DecodeError(f"set work antenna takes 1 data byte, {len(data)} given")
        return SetWorkAntenna(_wire_antenna(data[0]))
    if command == Command.REAL_TIME_INVENTORY:
        if len(data) != 1:
            raise DecodeError(f"real-time inventory takes 1 data byte, {len(data)} given")
        return RealTimeInventory(data[0])
    if command == Command.FAST_SWITCH_ANT_INVENTORY:
        return _parse_fast_switch(data)
    if command == Command.SET_OUTPUT_POWER:
        if len(data) not in _POWER_FORMS:
            raise DecodeError(f"set output power takes 1, 4 or 8 data bytes, {len(data)} given")
        return SetOutputPower(tuple(data))
    if command == Command.GET_OUTPUT_POWER:
        _no_data(frame)
        return GetOutputPower()
    raise DecodeError(f"unknown or unsupported request command 0x{command:02X}")


def _parse_fast_switch(data: bytes) -> FastSwitchInventory:
    try:
        if len(data) == _FAST_SWITCH_4_LEN:
            parsed: Any = FAST_SWITCH_4.parse(data)
            session: int | None = None
            target, phase = 0, False
        elif len(data) == _FAST_SWITCH_8_LEN:
            parsed = FAST_SWITCH_8.parse(data)
            session, target, phase = parsed.session, parsed.target, bool(parsed.phase)
        else:
            raise DecodeError(
                f"fast-switch inventory takes {_FAST_SWITCH_4_LEN} or {_FAST_SWITCH_8_LEN} data bytes, "
                f"{len(data)} given"
            )
    except ConstructError as err:  # pragma: no cover - lengths are checked above
        raise DecodeError(f"fast-switch inventory: {err}") from err
    antennas = tuple((slot.antenna + 1, slot.stay) for slot in parsed.slots if slot.antenna < MAX_ANTENNAS)
    if not antennas:
        raise DecodeError("fast-switch inventory lists no antenna")
    return FastSwitchInventory(antennas, parsed.interval_ms, parsed.repeat, session, target, phase)


# ----------------------------------------------------------------------------------------------------
# Replies (reader -> host)


TAG_DATA = Struct(
    "freq_ant" / Int8ub,  # frequency index << 2 | antenna (low two bits of the 0-based antenna id)
    "pc" / Int16ub,
    "epc" / Bytes((this.pc >> 11) * 2),  # PC bits 15..11: EPC length in 16-bit words
    "rssi" / Int8ub,  # bit 7: antennas 5..8 (third bit of the antenna id); bits 6..0: RSSI
    Terminated,
)
"""A tag frame's data (real-time and fast-switch inventory): FreqAnt, PC, EPC, RSSI."""
_TAG_DATA = TAG_DATA.compile()
INVENTORY_END_REAL_TIME = Struct(
    "antenna" / Int8ub, "read_rate" / Int16ub, "total_read" / Int32ub, Terminated
)
"""End of a real-time inventory (0x89): AntID, ReadRate (tags/s), TotalRead."""
INVENTORY_END_FAST_SWITCH = Struct("total_read" / Int24ub, "duration_ms" / Int32ub, Terminated)
"""End of a fast-switch inventory (0x8A): TotalRead (3 bytes), CommandDuration (ms)."""
FIRMWARE_VERSION = Struct("major" / Int8ub, "minor" / Int8ub, Terminated)
_INVENTORY_END_LEN: Final = 7
_INVENTORY_COMMANDS: Final = (Command.REAL_TIME_INVENTORY, Command.FAST_SWITCH_ANT_INVENTORY)


@dataclass(frozen=True, slots=True)
class TagRead:
    """One tag seen during an inventory."""

    antenna: int
    """1..8."""
    frequency_index: int
    """0..63, see :func:`frequency_mhz`."""
    pc: int
    epc: bytes
    rssi: int
    """Raw 0..127, see :func:`rssi_dbm`."""
    command: int = Command.REAL_TIME_INVENTORY
    """The inventory command that produced it (0x89 or 0x8A)."""

    @property
    def rssi_dbm(self) -> int:
        return rssi_dbm(self.rssi)

    @property
    def frequency_mhz(self) -> float | None:
        return frequency_mhz(self.frequency_index)


@dataclass(frozen=True, slots=True)
class InventoryEnd:
    """The end of an inventory command.

    For 0x89 (real-time): ``antenna`` (1..8), ``read_rate`` (tags/s) and ``total_read``; for 0x8A (fast
    switch): ``total_read`` and ``duration_ms``. The fields of the other form are None.
    """

    command: int
    total_read: int
    antenna: int | None = None
    read_rate: int | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AntennaMissing:
    """A fast-switch inventory skipped an antenna the reader found unconnected (code 0x22)."""

    antenna: int
    code: int = ErrorCode.ANTENNA_MISSING


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class WorkAntenna:
    """Answer to cmd_get_work_antenna: antenna 1..8."""

    antenna: int


@dataclass(frozen=True, slots=True)
class OutputPower:
    """Answer to cmd_get_output_power: dBm, one for every antenna (1 byte) or one per port (4 or 8)."""

    powers: tuple[int, ...]

    def for_antenna(self, antenna: int) -> int:
        """The power of ``antenna`` (1..8)."""
        return self.powers[0] if len(self.powers) == 1 else self.powers[antenna - 1]


@dataclass(frozen=True, slots=True)
class CommandStatus:
    """A one-byte status reply: ``code`` is an :class:`ErrorCode` value (0x10 success)."""

    command: int
    code: int

    @property
    def ok(self) -> bool:
        return self.code == ErrorCode.SUCCESS


Reply = TagRead | InventoryEnd | AntennaMissing | FirmwareVersion | WorkAntenna | OutputPower | CommandStatus


def parse_reply(frame: Frame) -> Reply:
    """The reply carried by ``frame`` (the host's side); DecodeError for unknown or inconsistent data."""
    command = frame.command
    data = frame.data
    size = len(data)
    if command in _INVENTORY_COMMANDS:
        if size >= 4 and not size & 1:
            return _parse_tag(command, data)
        if size == _INVENTORY_END_LEN:
            if command == Command.REAL_TIME_INVENTORY:
                end: Any = INVENTORY_END_REAL_TIME.parse(data)
                return InventoryEnd(command, end.total_read, antenna=end.antenna + 1, read_rate=end.read_rate)
            end = INVENTORY_END_FAST_SWITCH.parse(data)
            return InventoryEnd(command, end.total_read, duration_ms=end.duration_ms)
        if size == 1:
            return CommandStatus(command, data[0])
        if size == 2 and command == Command.FAST_SWITCH_ANT_INVENTORY:
            return AntennaMissing(_wire_antenna(data[0]), data[1])
        raise DecodeError(f"inventory reply (0x{command:02X}) with {size} data bytes")
    if command == Command.GET_FIRMWARE_VERSION:
        if size == 2:
            return FirmwareVersion(data[0], data[1])
    elif command == Command.GET_WORK_ANTENNA:
        if size == 1 and data[0] < ErrorCode.SUCCESS:
            return WorkAntenna(_wire_antenna(data[0]))
    elif command == Command.GET_OUTPUT_POWER:
        # Never a status: one byte is the power of every antenna (16..33 dBm overlap the error codes).
        if size in _POWER_FORMS:
            return OutputPower(tuple(data))
    elif command not in _KNOWN_COMMANDS:
        raise DecodeError(f"unknown command 0x{command:02X}")
    if size == 1:
        return CommandStatus(command, data[0])
    raise DecodeError(f"unexpected reply to 0x{command:02X}: {size} data bytes")


_KNOWN_COMMANDS: Final = frozenset(int(c) for c in Command)


def _parse_tag(command: int, data: bytes) -> TagRead:
    # Fast path, tested to agree with TAG_DATA (construct, compiled or not, costs 10-30 us a frame here;
    # this costs about 3 us, most of it the dataclass).
    pc = (data[1] << 8) | data[2]
    epc_len = (pc >> 11) * 2
    if len(data) != epc_len + 4:
        raise DecodeError(
            f"EPC length mismatch: PC 0x{pc:04X} says {epc_len} bytes, frame has {len(data) - 4}"
        )
    freq_ant = data[0]
    rssi = data[-1]
    return TagRead(
        (((rssi >> 7) << 2) | (freq_ant & 0x03)) + 1, freq_ant >> 2, pc, data[3:-1], rssi & 0x7F, command
    )


def parse_tag_data_spec(command: int, data: bytes) -> TagRead:
    """:func:`parse_reply`'s decoding of tag data, through the construct definition :data:`TAG_DATA`.

    The spec the fast path is tested against; DecodeError if ``data`` does not fit.
    """
    try:
        tag = TAG_DATA.parse(data)
    except ConstructError as err:
        raise DecodeError(f"tag data: {err}") from err
    wire = ((tag.rssi >> 7) << 2) | (tag.freq_ant & 0x03)
    return TagRead(wire + 1, tag.freq_ant >> 2, tag.pc, bytes(tag.epc), tag.rssi & 0x7F, command)


def encode_reply(reply: Reply, address: int = 1) -> bytes:
    """The frame a reader at ``address`` sends for ``reply`` (the simulator's side)."""
    return encode_frame(Frame(address, *_reply_body(reply)))


def _reply_body(reply: Reply) -> tuple[int, bytes]:
    try:
        return _reply_body_unchecked(reply)
    except ConstructError as err:
        raise EncodeError(f"cannot encode {reply!r}: {err}") from err


def _reply_body_unchecked(reply: Reply) -> tuple[int, bytes]:
    if isinstance(reply, TagRead):
        if reply.command not in _INVENTORY_COMMANDS:
            raise EncodeError(f"tag reads come from an inventory command, not 0x{reply.command:02X}")
        _check_antenna(reply.antenna)
        if not 0 <= reply.frequency_index <= 63:
            raise EncodeError(f"frequency index {reply.frequency_index} out of range 0..63")
        if not 0 <= reply.rssi <= 127:
            raise EncodeError(f"rssi {reply.rssi} out of range 0..127")
        if not 0 <= reply.pc <= 0xFFFF:
            raise EncodeError(f"PC {reply.pc} out of range 0..0xFFFF")
        if len(reply.epc) != (reply.pc >> 11) * 2:
            raise EncodeError(
                f"EPC of {len(reply.epc)} bytes, PC 0x{reply.pc:04X} says {(reply.pc >> 11) * 2}"
            )
        wire = reply.antenna - 1
        data = _TAG_DATA.build(
            {
                "freq_ant": (reply.frequency_index << 2) | (wire & 0x03),
                "pc": reply.pc,
                "epc": reply.epc,
                "rssi": ((wire >> 2) << 7) | reply.rssi,
            }
        )
        return reply.command, data
    if isinstance(reply, InventoryEnd):
        if reply.command == Command.REAL_TIME_INVENTORY:
            if reply.antenna is None or reply.read_rate is None or reply.duration_ms is not None:
                raise EncodeError("a real-time inventory end has antenna and read_rate, no duration")
            _check_antenna(reply.antenna)
            data = INVENTORY_END_REAL_TIME.build(
                {"antenna": reply.antenna - 1, "read_rate": reply.read_rate, "total_read": reply.total_read}
            )
        elif reply.command == Command.FAST_SWITCH_ANT_INVENTORY:
            if reply.duration_ms is None or reply.antenna is not None or reply.read_rate is not None:
                raise EncodeError("a fast-switch inventory end has duration_ms, no antenna or read_rate")
            data = INVENTORY_END_FAST_SWITCH.build(
                {"total_read": reply.total_read, "duration_ms": reply.duration_ms}
            )
        else:
            raise EncodeError(f"inventory end for non-inventory command 0x{reply.command:02X}")
        return reply.command, data
    if isinstance(reply, AntennaMissing):
        _check_antenna(reply.antenna)
        _check_byte("code", reply.code)
        return Command.FAST_SWITCH_ANT_INVENTORY, bytes([reply.antenna - 1, reply.code])
    if isinstance(reply, FirmwareVersion):
        return Command.GET_FIRMWARE_VERSION, FIRMWARE_VERSION.build(
            {"major": reply.major, "minor": reply.minor}
        )
    if isinstance(reply, WorkAntenna):
        _check_antenna(reply.antenna)
        return Command.GET_WORK_ANTENNA, bytes([reply.antenna - 1])
    if isinstance(reply, OutputPower):
        _check_powers(reply.powers)
        return Command.GET_OUTPUT_POWER, bytes(reply.powers)
    if isinstance(reply, CommandStatus):
        _check_byte("command", reply.command)
        _check_byte("code", reply.code)
        if reply.command == Command.GET_WORK_ANTENNA and reply.code < ErrorCode.SUCCESS:
            raise EncodeError(f"status 0x{reply.code:02X} to get-work-antenna would read as an antenna id")
        return reply.command, bytes([reply.code])
    raise EncodeError(f"not a reply: {reply!r}")
