"""``edgegw decode PROTOCOL HEX``: what a captured frame says, or exactly what is wrong with it.

A field technician holds a frame copied from a serial sniffer, a Wireshark dump or the gateway's debug log
and wants to know whether the device or the line is at fault. Every protocol the gateway speaks has one
entry in :data:`DECODERS`: a function from the frame's bytes to a :class:`Decoded`, built on the
protocol's own codec in ``protocols/`` (so the tool and the driver can never disagree about a frame). A
decoder never raises for bad input: a frame that does not decode comes back with ``problems`` (bad
checksum with the expected and found values, length mismatch, unknown command, ...).

Adding a protocol is a few lines::

    @decoder("modbus-rtu")
    def _modbus_rtu(raw: bytes) -> Decoded:
        out = Decoded("modbus-rtu", raw)
        ...  # out.field(...) for each part on the wire, out.meaning / out.problems from the codec
        return out
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from protocols import dlt645, llrp, modbus, r2000
from protocols.errors import ProtocolError

__all__ = ["DECODERS", "Decoded", "Decoder", "UnknownProtocol", "decode", "decoder", "parse_hex"]


@dataclass
class Decoded:
    """A frame taken apart. ``fields`` are its parts in wire order (as far as the bytes go, even when the
    frame is bad, so the technician sees where it went wrong); ``meaning`` what a good frame carries;
    ``problems`` what is wrong (empty for a good frame)."""

    protocol: str
    raw: bytes
    fields: list[tuple[str, str]] = field(default_factory=list)
    meaning: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def field(self, name: str, value: str) -> None:
        self.fields.append((name, value))

    def render(self) -> str:
        lines = [f"{self.protocol}: {_count(len(self.raw), 'byte')}: {self.raw.hex(' ').upper()}"]
        width = max((len(name) for name, _ in self.fields), default=0)
        lines.extend(f"  {name:<{width}}  {value}" for name, value in self.fields)
        lines.extend(self.meaning)
        if self.ok:
            lines.append("OK")
        else:
            lines.extend(f"BAD: {problem}" for problem in self.problems)
        return "\n".join(lines)


Decoder = Callable[[bytes], Decoded]

DECODERS: dict[str, Decoder] = {}
"""Protocol name (as given on the command line) -> decoder."""


def decoder(*names: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder under one or more names."""

    def register(fn: Decoder) -> Decoder:
        for name in names:
            DECODERS[name] = fn
        return fn

    return register


class UnknownProtocol(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown protocol {name!r} (known: {', '.join(sorted(DECODERS))})")


def decode(protocol: str, raw: bytes) -> Decoded:
    """Decode ``raw`` as one frame of ``protocol``; :class:`UnknownProtocol` for a name not registered."""
    fn = DECODERS.get(protocol.lower())
    if fn is None:
        raise UnknownProtocol(protocol)
    return fn(raw)


_SEPARATORS: Final = re.compile(r"[\s:,;.\-]+")


def parse_hex(text: str) -> bytes:
    """Bytes from hex as people paste it: ``A0 04 01 89 01 D1``, ``a0:04:01``, ``0xA0, 0x04``,
    ``A00401``, any case. ``ValueError`` says what is wrong with the text."""
    tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
    digits = "".join(t[2:] if t[:2] in ("0x", "0X") else t for t in tokens)
    if not digits:
        raise ValueError("no hex digits given")
    for position, char in enumerate(digits):
        if char not in string.hexdigits:
            raise ValueError(f"{char!r} is not a hex digit (hex digit {position + 1})")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)}): each byte is two digits")
    return bytes.fromhex(digits)


# --------------------------------------------------------------------------------------------------------
# R2000 "0xA0"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _r2000_command(code: int) -> str:
    try:
        return f"0x{code:02X} {r2000.Command(code).name.lower()}"
    except ValueError:
        return f"0x{code:02X} (not a command of this protocol)"


def _r2000_status(code: int) -> str:
    try:
        return f"0x{code:02X} {r2000.ErrorCode(code).name.lower()}"
    except ValueError:
        return f"0x{code:02X} (not a status code of this protocol)"


def _r2000_reply(reply: r2000.Reply) -> tuple[str, list[str]]:
    """What a reply says, and what makes it implausible (the driver drops such frames)."""
    if isinstance(reply, r2000.TagRead):
        mhz = reply.frequency_mhz
        freq = f"{mhz} MHz (index {reply.frequency_index})" if mhz is not None else "not in the table"
        epc = reply.epc.hex().upper() or "(empty)"
        text = (
            f"tag read: EPC {epc}, PC {reply.pc:04X}, antenna {reply.antenna}, "
            f"RSSI {reply.rssi_dbm} dBm (raw {reply.rssi}), frequency {freq}"
        )
        if mhz is None:
            return text, [f"frequency index {reply.frequency_index} is not in the frequency table (0..59)"]
        return text, []
    if isinstance(reply, r2000.InventoryEnd):
        if reply.antenna is not None:
            return (
                f"end of real-time inventory on antenna {reply.antenna}: {reply.read_rate} tags/s, "
                f"{reply.total_read} reads",
                [],
            )
        return f"end of fast-switch inventory: {reply.total_read} reads in {reply.duration_ms} ms", []
    if isinstance(reply, r2000.AntennaMissing):
        return f"fast-switch inventory skipped antenna {reply.antenna}: {_r2000_status(reply.code)}", []
    if isinstance(reply, r2000.FirmwareVersion):
        return f"firmware version {reply.major}.{reply.minor}", []
    if isinstance(reply, r2000.WorkAntenna):
        return f"the work antenna is {reply.antenna}", []
    if isinstance(reply, r2000.CommandStatus):
        text = f"status of {_r2000_command(reply.command)}: {_r2000_status(reply.code)}"
        known = reply.code in r2000.ErrorCode.__members__.values()
        return text, [] if known else [f"status code 0x{reply.code:02X} is not one the protocol defines"]
    return repr(reply), []


def _r2000_request(request: r2000.Request) -> str:
    if isinstance(request, r2000.RealTimeInventory):
        return f"real-time inventory on the work antenna, repeat {request.repeat}"
    if isinstance(request, r2000.SetWorkAntenna):
        return f"set the work antenna to {request.antenna}"
    if isinstance(request, r2000.FastSwitchInventory):
        slots = ", ".join(f"antenna {a} x{stay}" for a, stay in request.antennas)
        return f"fast-switch inventory: {slots}; interval {request.interval_ms} ms, repeat {request.repeat}"
    names = {
        r2000.Reset: "reset the reader",
        r2000.GetFirmwareVersion: "get the firmware version",
        r2000.GetWorkAntenna: "get the work antenna",
    }
    return names.get(type(request), repr(request))


def _r2000_frames_inside(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every whole, valid frame within ``raw``: what a capture with extra bytes holds."""
    found = []
    for start in range(len(raw) - 4):
        if raw[start] == r2000.HEAD and raw[start + 1] >= 3:
            end = start + raw[start + 1] + 2
            if end <= len(raw) and not sum(raw[start:end]) & 0xFF and (start, end) != (0, len(raw)):
                found.append((start, end - start))
    return found


@decoder("r2000", "uhf-r2000")
def decode_r2000(raw: bytes) -> Decoded:
    """An R2000 frame, either direction: ``A0 Len Address Cmd Data... Check``."""
    out = Decoded("r2000", raw)
    size = len(raw)
    if size >= 1:
        ok = raw[0] == r2000.HEAD
        out.field("head", f"0x{raw[0]:02X}" + ("" if ok else f" (expected 0x{r2000.HEAD:02X})"))
    if size >= 2:
        end = raw[1] + 2  # where the frame ends by its Len
        given = "" if end == size else f", {_count(size, 'byte')} given"
        out.field("length", f"{raw[1]}: a frame of {_count(end, 'byte')}{given}")
    if size >= 3:
        out.field("address", f"{raw[2]}" + (" (broadcast)" if raw[2] == r2000.BROADCAST else ""))
    if size >= 4:
        out.field("command", _r2000_command(raw[3]))
    if size >= 2 and raw[1] >= r2000.MIN_LEN:
        data = raw[4 : min(end - 1, size)]
        if data:
            out.field("data", f"{data.hex(' ').upper()} ({_count(len(data), 'byte')})")
        if end <= size:
            expected = r2000.checksum(raw[: end - 1])
            verdict = "ok" if raw[end - 1] == expected else f"expected 0x{expected:02X}"
            out.field("check", f"0x{raw[end - 1]:02X} ({verdict})")
        else:
            out.field("check", f"missing: the frame is cut short by {_count(end - size, 'byte')}")
        if size > end:
            out.field(
                "trailing", f"{raw[end:].hex(' ').upper()} ({_count(size - end, 'byte')} after the frame)"
            )
    try:
        frame = r2000.decode_frame(raw)
    except ProtocolError as err:
        out.problems.append(str(err))
        inside = _r2000_frames_inside(raw)
        if inside:
            where = ", ".join(f"{length} bytes at offset {offset}" for offset, length in inside[:8])
            out.problems.append(f"the bytes hold {len(inside)} valid frame(s) ({where}): decode each alone")
        return out
    if frame.command not in r2000.Command.__members__.values():
        out.problems.append(f"unknown command 0x{frame.command:02X}")
        return out

    readings: list[tuple[str, str, list[str]]] = []
    reasons: list[str] = []
    try:
        request = r2000.parse_request(frame)
    except ProtocolError as err:
        reasons.append(f"as a request (host -> reader): {err}")
    else:
        readings.append(("request (host -> reader)", _r2000_request(request), []))
    try:
        reply = r2000.parse_reply(frame)
    except ProtocolError as err:
        reasons.append(f"as a reply (reader -> host): {err}")
    else:
        text, doubts = _r2000_reply(reply)
        readings.append(("reply (reader -> host)", text, doubts))
    if len(readings) == 2:  # the same bytes read both ways: keep the plausible reading
        readings = [r for r in readings if not r[2]] or readings
    if not readings:
        out.problems.extend(reasons)
        return out
    for direction, text, doubts in readings:
        out.meaning.append(f"{direction}: {text}")
        out.problems.extend(doubts)
    return out


@decoder("dlt645")
def decode_dlt645(raw: bytes) -> Decoded:
    """A DL/T 645-2007 frame: [FE..] 68 A0..A5 68 C L DATA CS 16."""
    out = Decoded("dlt645", raw)
    try:
        frame = dlt645.decode_frame(raw)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    out.field("address", frame.address)
    out.field("control", f"0x{frame.control:02X}")
    out.field("data", f"{frame.data.hex(' ').upper()} ({_count(len(frame.data), 'byte')}, 0x33 removed)")
    try:
        if frame.control & dlt645.REPLY_BIT:
            reply = dlt645.parse_reply(frame)
            if isinstance(reply, dlt645.DataReply):
                item = dlt645.item_for(reply.di)
                value = ""
                if item is not None:
                    value = f" = {dlt645.decode_value(item, reply.payload)} {item.unit} ({item.name})"
                out.meaning.append(f"reply (meter -> master): DI {dlt645.di_text(reply.di)}{value}")
            elif isinstance(reply, dlt645.ErrorReply):
                out.meaning.append(f"reply (meter -> master): {reply.describe()}")
            else:
                out.meaning.append(f"reply (meter -> master): address {reply.address}")
        else:
            out.meaning.append(f"request (master -> meter): {dlt645.parse_request(frame)!r}")
    except ProtocolError as err:
        out.problems.append(str(err))
    return out


@decoder("llrp")
def decode_llrp(raw: bytes) -> Decoded:
    """One LLRP message: a 10-byte header (version, type, length, id) and its parameters."""
    out = Decoded("llrp", raw)
    try:
        frame = llrp.decode_frame(raw)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    try:
        name = llrp.MessageType(frame.message_type).name
    except ValueError:
        out.problems.append(f"unknown message type {frame.message_type}")
        return out
    out.field("version", str(frame.version))
    out.field("type", f"{frame.message_type} {name}")
    out.field("id", str(frame.message_id))
    out.field("body", _count(len(frame.body), "byte"))
    try:
        message = llrp.parse_message(frame)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    if isinstance(message, llrp.UnknownMessage):
        out.problems.append(f"message type {frame.message_type} ({name}) is not one this codec models")
    else:
        out.meaning.append(f"{name}: {message!r}")
    if isinstance(message, llrp.RoAccessReport):
        # The codec skips a TagReportData (or parameter) it cannot decode and records why, so that a driver
        # still delivers the rest; for the technician each of those is a fault of the frame.
        out.problems.extend(message.errors)
    return out


_MODBUS_FUNCTIONS: Final = {
    1: "read coils",
    2: "read discrete inputs",
    3: "read holding registers",
    4: "read input registers",
    5: "write single coil",
    6: "write single register",
    15: "write multiple coils",
    16: "write multiple registers",
}


_MODBUS_READ_LIMIT: Final = {1: 2000, 2: 2000, 3: 125, 4: 125}
"""Most bits (01, 02) or registers (03, 04) one read may ask for."""
_MODBUS_WRITE_LIMIT: Final = {15: 1968, 16: 123}
"""Most coils (15) or registers (16) one write may carry."""


def _modbus_read(function: int, name: str, data: bytes) -> tuple[list[str], list[str]]:
    """The readings of a read (01..04) frame's data, and what makes each implausible."""
    meanings: list[str] = []
    doubts: list[str] = []
    if len(data) == 4:
        address, count = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
        limit = _MODBUS_READ_LIMIT[function]
        if 1 <= count <= limit:
            meanings.append(f"request: {name}, {count} from address {address}")
        else:
            doubts.append(f"{name}: count {count}, 1..{limit} allowed")
    if data and data[0] == len(data) - 1:
        if function in (3, 4) and data[0] % 2:
            doubts.append(f"{name}: reply of {data[0]} bytes, registers come in pairs of bytes")
        else:
            meanings.append(f"reply: {name}, {data[0]} data bytes: {data[1:].hex(' ').upper()}")
    if not meanings and not doubts:
        count_byte = data[0] if data else "-"
        follow = len(data) - 1 if data else 0
        doubts.append(
            f"neither a read request (4 data bytes) nor a reply (byte count {count_byte}, "
            f"{follow} bytes follow)"
        )
    return meanings, ([] if meanings else doubts)


def _modbus_write(function: int, name: str, data: bytes) -> tuple[list[str], list[str]]:
    """The reading of a write (05, 06, 15, 16) frame's data, or what is wrong with it."""
    if function in (5, 6):  # the request and its echo have one shape: address, value
        if len(data) != 4:
            return [], [f"{name} takes 4 data bytes (address, value), {len(data)} given"]
        address, value = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
        if function == 5 and value not in (0xFF00, 0x0000):
            return [], [f"{name}: value 0x{value:04X}, only 0xFF00 (on) or 0x0000 (off)"]
        return [f"{name}: address {address}, value 0x{value:04X}"], []
    limit = _MODBUS_WRITE_LIMIT[function]
    unit = "coils" if function == 15 else "registers"
    if len(data) < 4:
        return [], [f"neither a {name} request nor its reply: {len(data)} data bytes"]
    address, count = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
    if not 1 <= count <= limit:
        return [], [f"{name}: count {count}, 1..{limit} allowed"]
    if len(data) == 4:
        return [f"reply: {name}, {count} {unit} from address {address}"], []
    byte_count, follow = data[4], len(data) - 5
    if byte_count != follow:
        return [], [f"neither a {name} request nor its reply: byte count {byte_count}, {follow} bytes follow"]
    needed = (count + 7) // 8 if function == 15 else 2 * count
    if byte_count != needed:
        return [], [f"{name}: {count} {unit} take {needed} bytes, byte count is {byte_count}"]
    return [f"request: {name}, {count} {unit} from address {address}: {data[5:].hex(' ').upper()}"], []


@decoder("modbus-rtu", "modbus")
def decode_modbus_rtu(raw: bytes) -> Decoded:
    """A Modbus RTU frame: unit, function, data, CRC-16 (low byte first). A read request and its reply have
    different shapes for the same function code: both readings are tried."""
    out = Decoded("modbus-rtu", raw)
    if len(raw) < 4:
        out.problems.append(f"truncated: {_count(len(raw), 'byte')}, a frame has at least 4")
        return out
    unit, function, data = raw[0], raw[1], raw[2:-2]
    found = int.from_bytes(raw[-2:], "little")
    expected = modbus.crc16(raw[:-2])
    name = _MODBUS_FUNCTIONS.get(function & 0x7F, "unknown")
    out.field("unit", str(unit))
    out.field("function", f"0x{function:02X} {name}" + (" (exception)" if function & 0x80 else ""))
    out.field("data", f"{data.hex(' ').upper()} ({_count(len(data), 'byte')})")
    out.field("crc", f"0x{found:04X} " + ("(ok)" if found == expected else f"(expected 0x{expected:04X})"))
    if found != expected:
        out.problems.append(f"bad CRC: expected 0x{expected:04X}, found 0x{found:04X}")
        return out
    if function & 0x80:
        if len(data) != 1:
            out.problems.append(f"exception reply with {_count(len(data), 'data byte')}, expected 1")
            return out
        try:
            reason = modbus.ExceptionCode(data[0]).name.lower()
        except ValueError:
            out.problems.append(f"exception code 0x{data[0]:02X} is not one the standard defines")
            return out
        out.meaning.append(f"exception reply to function 0x{function & 0x7F:02X}: 0x{data[0]:02X} {reason}")
        return out
    if function not in _MODBUS_FUNCTIONS:
        out.problems.append(f"unknown function 0x{function:02X}")
        return out
    reader = _modbus_read if function in _MODBUS_READ_LIMIT else _modbus_write
    meanings, doubts = reader(function, name, data)
    out.meaning.extend(meanings)
    out.problems.extend(doubts)
    return out
