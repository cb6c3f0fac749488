"""``edgegw decode PROTOCOL HEX``: what a captured frame says, or exactly what is wrong with it.

A field technician holds a frame copied from a serial sniffer, a Wireshark dump or the gateway's debug log
and wants to know whether the device or the line is at fault. Every protocol the gateway speaks has one
entry in :data:`DECODERS`: a function from the frame's bytes to a :class:`Decoded`, built on the
protocol's own codec in ``protocols/`` (so the tool and the driver can never disagree about a frame). A
decoder never raises for bad input: a frame that does not decode comes back with ``problems`` (bad
checksum with the expected and found values, length mismatch, unknown command, an error the codec recorded
while skipping a part, ...), and any problem makes the frame bad.

What a frame says is data, rendered two ways from the same :class:`Decoded`: :meth:`Decoded.render` for a
person (aligned ``name  value`` lines) and :meth:`Decoded.to_json` for a machine. Every protocol uses the
same vocabulary of values, so a frame reads the same way whatever the protocol:

- a code the protocol names is a :class:`Named`: ``0x89 (real_time_inventory)``, ``00010000
  (energy_active_forward)``, ``61 (RO_ACCESS_REPORT)``; JSON ``{"code": ..., "name": ...}``;
- bytes are a :class:`Hex`: ``30 08 33 (3 bytes)``; JSON ``"300833"``; an EPC is its hex (``epc``), with
  its pure-identity URI (``epc_uri``) when :mod:`protocols.epc` gives one, as in the ``rfid.read`` event;
- a value with a unit that varies is a :class:`Quantity` (``1206.42 kWh``); a fixed unit is in the key
  (``rssi_dbm``, ``duration_ms``);
- a field the frame does not carry is left out (never ``None``).

Adding a protocol is a few lines::

    @decoder("modbus-rtu")
    def _modbus_rtu(raw: bytes) -> Decoded:
        out = Decoded("modbus-rtu", raw)
        ...  # out.field(...) for each part on the wire, out.read(...) for what it says, out.problems
        return out
"""

from __future__ import annotations

import datetime as dt
import json
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeAlias

from protocols import dlt645, llrp, modbus, r2000
from protocols.epc import epc_uri
from protocols.errors import ProtocolError

__all__ = [
    "DECODERS",
    "Decoded",
    "Decoder",
    "Hex",
    "Named",
    "Note",
    "Quantity",
    "Reading",
    "Section",
    "UnknownProtocol",
    "decode",
    "decoder",
    "parse_hex",
]

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"


class Named(NamedTuple):
    """A code and the protocol's name for it. Text ``0x89 (real_time_inventory)``; JSON ``{"code": 137,
    "name": "real_time_inventory"}`` (no ``name`` when the protocol has none for the code: the text then
    says ``unknown``)."""

    code: int | str
    shown: str
    """The code as the protocol's documents write it (``0x89``, ``00010000``, ``61``)."""
    name: str | None
    unknown: str = "unknown"
    """What the text says in place of a missing name."""


class Quantity(NamedTuple):
    """A number whose unit depends on the frame (a meter's value). JSON ``{"value": ..., "unit": ...}``."""

    value: int | float
    unit: str


class Hex(NamedTuple):
    """Bytes. Text ``30 08 33 (3 bytes)``; JSON ``"300833"``."""

    data: bytes


class Note(NamedTuple):
    """A value whose text says more than the value alone (``0xCB (ok)``): JSON ``value``, text ``text``."""

    value: Json
    text: str


class Section(NamedTuple):
    """One item of a list of parts (a tag of a report, a parameter of a message): its ``record`` under a
    ``title``. In JSON, ``head`` (what the title says, as data) and the record's entries."""

    title: str
    head: Record
    record: Record


Value: TypeAlias = "str | int | float | bool | Named | Quantity | Hex | Note | Section | Record | list[Value]"
Record: TypeAlias = "dict[str, Value]"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _inline(value: Value) -> str | None:
    """The one-line text of ``value``, or None for a value shown as nested lines."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Named):
        return f"{value.shown} ({value.name or value.unknown})"
    if isinstance(value, Quantity):
        return f"{value.value} {value.unit}".rstrip()
    if isinstance(value, Hex):
        return (
            f"{value.data.hex(' ').upper()} ({_count(len(value.data), 'byte')})" if value.data else "(none)"
        )
    if isinstance(value, Note):
        return value.text
    if isinstance(value, dict) and value and all(isinstance(flag, bool) for flag in value.values()):
        return ", ".join(f"{name}: {_inline(flag)}" for name, flag in value.items())  # a byte of flags
    if isinstance(value, Section | dict):
        return None
    if isinstance(value, list):
        texts = [_inline(item) for item in value]
        if any(text is None for text in texts):
            return None
        return ", ".join(text for text in texts if text is not None) if texts else "(none)"
    if isinstance(value, str):
        return value or "(empty)"
    return str(value)


def _lines(entries: Iterable[tuple[str, Value]], indent: int) -> list[str]:
    """``name  value`` lines, values aligned; nested records and lists indented below their name."""
    pad = " " * indent
    texts = [(name, value, _inline(value)) for name, value in entries]
    width = max((len(name) for name, _, text in texts if text is not None), default=0)
    lines: list[str] = []
    for name, value, text in texts:
        if text is not None:
            lines.append(f"{pad}{name:<{width}}  {text}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{name}:")
            lines.extend(_lines(value.items(), indent + 2))
        else:
            lines.append(f"{pad}{name}:")
            lines.extend(_item_lines(value, indent + 2))
    return lines


def _item_lines(value: Value, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Section):
        if not value.record:
            return [f"{pad}{value.title}"]
        return [f"{pad}{value.title}:", *_lines(value.record.items(), indent + 2)]
    text = _inline(value)
    if text is not None:
        return [f"{pad}- {text}"]
    if isinstance(value, dict):
        return [f"{pad}-", *_lines(value.items(), indent + 2)]
    assert isinstance(value, list)  # _inline is None only for sections, records and lists holding them
    return [line for item in value for line in _item_lines(item, indent)]


def _json(value: Value) -> Json:
    if isinstance(value, Named):
        named: dict[str, Json] = {"code": value.code}
        if value.name is not None:
            named["name"] = value.name
        return named
    if isinstance(value, Quantity):
        return {"value": value.value, "unit": value.unit}
    if isinstance(value, Hex):
        return value.data.hex().upper()
    if isinstance(value, Note):
        return value.value
    if isinstance(value, Section):
        return {**_json_record(value.head), **_json_record(value.record)}
    if isinstance(value, dict):
        return _json_record(value)
    if isinstance(value, list):
        return [_json(item) for item in value]
    return value


def _json_record(record: Mapping[str, Value]) -> dict[str, Json]:
    return {name: _json(value) for name, value in record.items()}


@dataclass
class Reading:
    """What a frame says, read in one direction: ``kind`` of message and its ``content``."""

    direction: str
    """``request``, ``reply``, ``message``, ..."""
    sender: str
    receiver: str
    kind: str
    content: Record = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.direction} ({self.sender} -> {self.receiver}): {self.kind}"

    def to_json(self) -> dict[str, Json]:
        return {
            "direction": self.direction,
            "from": self.sender,
            "to": self.receiver,
            "kind": self.kind,
            "content": _json_record(self.content),
        }


@dataclass
class Decoded:
    """A frame taken apart. ``fields`` are its parts in wire order (as far as the bytes go, even when the
    frame is bad, so the technician sees where it went wrong); ``readings`` what a good frame says (two when
    the same bytes make sense in both directions); ``problems`` what is wrong (empty for a good frame)."""

    protocol: str
    raw: bytes
    fields: list[tuple[str, Value]] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def field(self, name: str, value: Value) -> None:
        self.fields.append((name, value))

    def read(self, direction: str, sender: str, receiver: str, kind: str, content: Record) -> None:
        self.readings.append(Reading(direction, sender, receiver, kind, content))

    @property
    def field_texts(self) -> list[tuple[str, str]]:
        """The wire fields as the text shows them (nested values as their JSON)."""
        return [(name, _inline(value) or json.dumps(_json(value))) for name, value in self.fields]

    def render(self) -> str:
        """For a person: the bytes, the wire fields, each reading, then ``OK`` or a ``BAD:`` line per
        problem."""
        lines = [f"{self.protocol}: {_count(len(self.raw), 'byte')}: {self.raw.hex(' ').upper()}"]
        lines.extend(_lines(self.fields, 2))
        for reading in self.readings:
            lines.append(reading.title)
            lines.extend(_lines(reading.content.items(), 2))
        if self.ok:
            lines.append("OK")
        else:
            lines.extend(f"BAD: {problem}" for problem in self.problems)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Json]:
        """For a machine: the same content, every key always there."""
        return {
            "protocol": self.protocol,
            "bytes": self.raw.hex().upper(),
            "size": len(self.raw),
            "ok": self.ok,
            "fields": _json_record(dict(self.fields)),
            "readings": [reading.to_json() for reading in self.readings],
            "problems": list(self.problems),
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


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


def _enum_name(enum: Any, code: int) -> str | None:
    try:
        return str(enum(code).name)
    except ValueError:
        return None


def _epc(epc: bytes, bits: int = 96) -> Record:
    """An EPC as the ``rfid.read`` event carries it: hex, and its pure-identity URI when it has one."""
    record: Record = {"epc": epc.hex().upper()}
    if bits != 8 * len(epc):
        record["epc_bits"] = bits
    uri = epc_uri(epc) if bits == 96 else None
    if uri:
        record["epc_uri"] = uri
    return record


# --------------------------------------------------------------------------------------------------------
# R2000 "0xA0"

_HOST_TO_READER: Final = ("request", "host", "reader")
_READER_TO_HOST: Final = ("reply", "reader", "host")


def _r2000_command(code: int) -> Named:
    name = _enum_name(r2000.Command, code)
    return Named(code, f"0x{code:02X}", name and name.lower(), "not a command of this protocol")


def _r2000_status(code: int) -> Named:
    name = _enum_name(r2000.ErrorCode, code)
    return Named(code, f"0x{code:02X}", name and name.lower(), "not a status code of this protocol")


def _r2000_reply(reply: r2000.Reply) -> tuple[str, Record, list[str]]:
    """What a reply says, and what makes it implausible (the driver drops such frames)."""
    if isinstance(reply, r2000.TagRead):
        record = _epc(reply.epc)
        record.update(
            pc=f"{reply.pc:04X}", antenna=reply.antenna, rssi_dbm=reply.rssi_dbm, rssi_raw=reply.rssi
        )
        mhz = reply.frequency_mhz
        if mhz is not None:
            record["frequency_mhz"] = mhz
        record["frequency_index"] = reply.frequency_index
        if mhz is None:
            doubt = f"frequency index {reply.frequency_index} is not in the frequency table (0..59)"
            return "tag read", record, [doubt]
        return "tag read", record, []
    if isinstance(reply, r2000.InventoryEnd):
        if reply.antenna is not None:
            record = {"antenna": reply.antenna}
            if reply.read_rate is not None:
                record["read_rate_per_s"] = reply.read_rate
            record["total_read"] = reply.total_read
            return "end of real-time inventory", record, []
        record = {"total_read": reply.total_read}
        if reply.duration_ms is not None:
            record["duration_ms"] = reply.duration_ms
        return "end of fast-switch inventory", record, []
    if isinstance(reply, r2000.AntennaMissing):
        return (
            "fast-switch inventory skipped a missing antenna",
            {"antenna": reply.antenna, "status": _r2000_status(reply.code)},
            [],
        )
    if isinstance(reply, r2000.FirmwareVersion):
        return "firmware version", {"version": f"{reply.major}.{reply.minor}"}, []
    if isinstance(reply, r2000.WorkAntenna):
        return "work antenna", {"antenna": reply.antenna}, []
    if isinstance(reply, r2000.OutputPower):
        return "output power (dBm)", {"power_dbm": list(reply.powers)}, []
    status = _r2000_status(reply.code)
    doubts = [] if status.name else [f"status code 0x{reply.code:02X} is not one the protocol defines"]
    return "command status", {"command": _r2000_command(reply.command), "status": status}, doubts


def _r2000_request(request: r2000.Request) -> tuple[str, Record]:
    if isinstance(request, r2000.RealTimeInventory):
        return "real-time inventory on the work antenna", {"repeat": request.repeat}
    if isinstance(request, r2000.SetWorkAntenna):
        return "set the work antenna", {"antenna": request.antenna}
    if isinstance(request, r2000.FastSwitchInventory):
        record: Record = {
            "antennas": [
                Note({"antenna": antenna, "stay": stay}, f"{antenna} (stay {stay})")
                for antenna, stay in request.antennas
            ],
            "interval_ms": request.interval_ms,
            "repeat": request.repeat,
        }
        if request.session is not None:
            record.update(session=request.session, target="B" if request.target else "A", phase=request.phase)
        return "fast-switch inventory", record
    if isinstance(request, r2000.GetFirmwareVersion):
        return "get the firmware version", {}
    if isinstance(request, r2000.GetWorkAntenna):
        return "get the work antenna", {}
    if isinstance(request, r2000.SetOutputPower):
        return "set the output power (dBm)", {"power_dbm": list(request.powers)}
    if isinstance(request, r2000.GetOutputPower):
        return "get the output power", {}
    return "reset the reader", {}


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
        out.field("head", Note(raw[0], f"0x{raw[0]:02X}" + ("" if ok else f" (expected 0x{r2000.HEAD:02X})")))
    if size >= 2:
        end = raw[1] + 2  # where the frame ends by its Len
        given = "" if end == size else f", {_count(size, 'byte')} given"
        out.field("length", Note(raw[1], f"{raw[1]}: a frame of {_count(end, 'byte')}{given}"))
    if size >= 3:
        broadcast = raw[2] == r2000.BROADCAST
        out.field("address", Note(raw[2], f"{raw[2]}" + (" (broadcast)" if broadcast else "")))
    if size >= 4:
        out.field("command", _r2000_command(raw[3]))
    if size >= 2 and raw[1] >= r2000.MIN_LEN:
        data = raw[4 : min(end - 1, size)]
        if data:
            out.field("data", Hex(data))
        if end <= size:
            expected = r2000.checksum(raw[: end - 1])
            verdict = "ok" if raw[end - 1] == expected else f"expected 0x{expected:02X}"
            out.field("check", Note(raw[end - 1], f"0x{raw[end - 1]:02X} ({verdict})"))
        else:
            out.field("check", Note(None, f"missing: the frame is cut short by {_count(end - size, 'byte')}"))
        if size > end:
            trailing = raw[end:]
            out.field(
                "trailing",
                Note(
                    trailing.hex().upper(),
                    f"{trailing.hex(' ').upper()} ({_count(size - end, 'byte')} after the frame)",
                ),
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

    readings: list[tuple[tuple[str, str, str], str, Record, list[str]]] = []
    reasons: list[str] = []
    try:
        request = r2000.parse_request(frame)
    except ProtocolError as err:
        reasons.append(f"as a request (host -> reader): {err}")
    else:
        readings.append((_HOST_TO_READER, *_r2000_request(request), []))
    try:
        reply = r2000.parse_reply(frame)
    except ProtocolError as err:
        reasons.append(f"as a reply (reader -> host): {err}")
    else:
        readings.append((_READER_TO_HOST, *_r2000_reply(reply)))
    if len(readings) == 2:  # the same bytes read both ways: keep the plausible reading
        readings = [r for r in readings if not r[3]] or readings
    if not readings:
        out.problems.extend(reasons)
        return out
    for (direction, sender, receiver), kind, content, doubts in readings:
        out.read(direction, sender, receiver, kind, content)
        out.problems.extend(doubts)
    return out


# --------------------------------------------------------------------------------------------------------
# DL/T 645-2007

_MASTER_TO_METER: Final = ("request", "master", "meter")
_METER_TO_MASTER: Final = ("reply", "meter", "master")


def _dlt645_function(function: int) -> Named:
    name = _enum_name(dlt645.Control, function)
    return Named(function, f"0x{function:02X}", name and name.lower(), "not a function of this protocol")


def _dlt645_control(control: int) -> Named:
    function = _dlt645_function(control & dlt645.FUNCTION_MASK)
    if function.name is None:
        return Named(control, f"0x{control:02X}", None, function.unknown)
    if not control & dlt645.REPLY_BIT:
        return Named(control, f"0x{control:02X}", function.name)
    if control & dlt645.ERROR_BIT:
        return Named(control, f"0x{control:02X}", f"abnormal reply to {function.name}")
    more = ", more frames follow" if control & dlt645.MORE_BIT else ""
    return Named(control, f"0x{control:02X}", f"reply to {function.name}{more}")


def _dlt645_di(di: int) -> Named:
    item = dlt645.item_for(di)
    text = dlt645.di_text(di)
    return Named(text, text, None if item is None else item.name, "not in this gateway's table")


@decoder("dlt645")
def decode_dlt645(raw: bytes) -> Decoded:
    """A DL/T 645-2007 frame: [FE..] 68 A0..A5 68 C L DATA CS 16."""
    out = Decoded("dlt645", raw)
    try:
        frame = dlt645.decode_frame(raw)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    preamble = len(raw) - len(frame.data) - dlt645.OVERHEAD
    if preamble:
        out.field("preamble", Note(preamble, f"{_count(preamble, 'byte')} 0xFE"))
    out.field("address", frame.address)
    try:
        dlt645.check_address(frame.address)
    except ProtocolError as err:
        out.problems.append(str(err))
    out.field("control", _dlt645_control(frame.control))
    data = frame.data
    shown = f"{data.hex(' ').upper()} ({_count(len(data), 'byte')}, 0x33 removed)" if data else "(none)"
    out.field("data", Note(data.hex().upper(), shown))
    try:
        if frame.control & dlt645.REPLY_BIT:
            _dlt645_reply(out, dlt645.parse_reply(frame))
        else:
            _dlt645_request(out, dlt645.parse_request(frame))
    except ProtocolError as err:
        out.problems.append(str(err))
    return out


def _dlt645_request(out: Decoded, request: dlt645.Request) -> None:
    if isinstance(request, dlt645.ReadData):
        out.read(*_MASTER_TO_METER, "read data", {"di": _dlt645_di(request.di)})
    elif isinstance(request, dlt645.ReadFollowUp):
        out.read(*_MASTER_TO_METER, "read follow-up data", {"di": _dlt645_di(request.di), "seq": request.seq})
    elif isinstance(request, dlt645.BroadcastTime):
        when = dt.datetime(
            request.year, request.month, request.day, request.hour, request.minute, request.second
        )
        out.read(*_MASTER_TO_METER, "broadcast time (every meter sets its clock)", {"time": when.isoformat()})
    else:
        out.read(*_MASTER_TO_METER, "read address", {})


def _dlt645_reply(out: Decoded, reply: dlt645.Reply) -> None:
    if isinstance(reply, dlt645.ErrorReply):
        content: Record = {
            "function": _dlt645_function(reply.function),
            "error": Note(reply.code, f"0x{reply.code:02X}"),
            "reasons": list(reply.reasons),
        }
        out.read(*_METER_TO_MASTER, "abnormal reply: the meter refused", content)
        return
    if isinstance(reply, dlt645.AddressReply):
        out.read(*_METER_TO_MASTER, "read address", {"address": reply.address})
        return
    content = {"di": _dlt645_di(reply.di)}
    item = dlt645.item_for(reply.di)
    problem = None
    if item is not None:
        try:
            content["value"] = Quantity(dlt645.decode_value(item, reply.payload), item.unit)
        except ProtocolError as err:
            problem = str(err)
    if "value" not in content:
        content["payload"] = Hex(reply.payload)
    if reply.more:
        content["more_frames"] = True
    if reply.seq is not None:
        content["seq"] = reply.seq
    out.read(*_METER_TO_MASTER, "read data" if reply.seq is None else "read follow-up data", content)
    if problem is not None:
        out.problems.append(problem)


# --------------------------------------------------------------------------------------------------------
# LLRP

_LLRP_VERSIONS: Final = {1: "LLRP 1.0.1", 2: "LLRP 1.1"}
_LLRP_FROM_READER: Final = frozenset(
    {
        *(t for t in (llrp.response_type(m) for m in llrp.MessageType) if t is not None),
        llrp.MessageType.RO_ACCESS_REPORT,
        llrp.MessageType.KEEPALIVE,
        llrp.MessageType.READER_EVENT_NOTIFICATION,
        llrp.MessageType.ERROR_MESSAGE,
    }
)
"""Message types only a reader sends (the rest but CUSTOM_MESSAGE only a client)."""
_P = llrp.ParamType
_LLRP_ENUMS: Final[Mapping[tuple[int, str], Any]] = {
    (_P.LLRP_STATUS, "status_code"): llrp.StatusCode,
    (_P.EVENT_NOTIFICATION_STATE, "event_type"): llrp.ReaderEventType,
    (_P.ROSPEC, "current_state"): llrp.RoSpecState,
    (_P.ROSPEC_START_TRIGGER, "trigger"): llrp.StartTrigger,
    (_P.ROSPEC_STOP_TRIGGER, "trigger"): llrp.StopTrigger,
    (_P.AISPEC_STOP_TRIGGER, "trigger"): llrp.StopTrigger,
    (_P.RO_REPORT_SPEC, "trigger"): llrp.ReportTrigger,
    (_P.CONNECTION_ATTEMPT_EVENT, "status"): llrp.ConnectionAttemptStatus,
}
"""Fields whose numbers the standard names."""
_LLRP_TIMESTAMPS: Final = frozenset(
    {_P.UTC_TIMESTAMP, _P.FIRST_SEEN_TIMESTAMP_UTC, _P.LAST_SEEN_TIMESTAMP_UTC}
)
del _P
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(microseconds: int) -> str:
    """An LLRP UTC timestamp (microseconds since the epoch) as ISO 8601."""
    try:
        stamp = _EPOCH + dt.timedelta(microseconds=microseconds)
    except OverflowError:
        return f"{microseconds} us after 1970-01-01 (beyond any date)"
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _llrp_type(ptype: int) -> Named:
    name = llrp.parameter_name(ptype)
    return Named(ptype, str(ptype), None if name.startswith("Unknown(") else name)


def _llrp_value(ptype: int, key: str, value: Any) -> Value:
    """A parameter's field as a :data:`Value`: bytes as hex, the standard's numbers with their names."""
    if isinstance(value, bytes | bytearray):
        return Hex(bytes(value))
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        if ptype in _LLRP_TIMESTAMPS:
            return Note(value, f"{_utc(value)} ({value})")
        enum = _LLRP_ENUMS.get((ptype, key))
        if enum is not None:
            return Named(value, str(value), _enum_name(enum, value))
        if key == "parameter_type":
            return _llrp_type(value)
        return value
    if isinstance(value, Mapping):
        return {
            str(k): _llrp_value(ptype, str(k), v)
            for k, v in value.items()
            if not str(k).startswith("_") and v is not None
        }
    if isinstance(value, list | tuple):
        return [_llrp_value(ptype, key, v) for v in value]
    return str(value)


def _llrp_parameter(param: llrp.Parameter) -> Section:
    record: Record = {
        key: _llrp_value(param.type, key, value) for key, value in param.fields.items() if value is not None
    }
    if param.params:
        record["parameters"] = [_llrp_parameter(p) for p in param.params]
    kind = _llrp_type(param.type)
    title = f"{kind.name or 'unknown parameter'} ({param.type})"
    return Section(title, {"parameter": kind}, record)


_TAG_FIELDS: Final = (
    ("antenna", "antenna"),
    ("peak_rssi", "rssi_dbm"),
    ("channel_index", "channel_index"),
    ("first_seen_utc", "first_seen_utc"),
    ("last_seen_utc", "last_seen_utc"),
    ("first_seen_uptime", "first_seen_uptime_us"),
    ("last_seen_uptime", "last_seen_uptime_us"),
    ("seen_count", "seen_count"),
    ("rospec_id", "rospec_id"),
    ("spec_index", "spec_index"),
    ("inventory_parameter_spec_id", "inventory_parameter_spec_id"),
    ("access_spec_id", "access_spec_id"),
)
"""TagReport fields shown as they are (under the event's name where the ``rfid.read`` event has one)."""
_TAG_WORDS: Final = ("pc", "xpc_w1", "xpc_w2", "crc")
"""TagReport fields shown as 16-bit hex words."""


def _llrp_tag(tag: llrp.TagReport) -> Record:
    record = _epc(tag.epc, tag.epc_bits)
    for attribute, key in _TAG_FIELDS:
        value = getattr(tag, attribute)
        if value is not None:
            record[key] = _utc(value) if key.endswith("_utc") else value
    for attribute in _TAG_WORDS:
        word = getattr(tag, attribute)
        if word is not None:
            record[attribute] = f"{word:04X}"
    if tag.extra:
        record["parameters"] = [_llrp_parameter(p) for p in tag.extra]
    return record


def _llrp_content(frame: llrp.Frame, message: llrp.Message) -> Record:
    """What a decoded message carries: the tags of a report; for the others their fields and the
    parameter tree, named."""
    if isinstance(message, llrp.RoAccessReport):
        content: Record = {
            "tags": [Section(f"tag {n}", {}, _llrp_tag(tag)) for n, tag in enumerate(message.tags, 1)]
        }
        if message.extra:
            content["parameters"] = [_llrp_parameter(p) for p in message.extra]
        return content
    content = {}
    body = frame.body
    layout = llrp.MESSAGE_FIELDS.get(frame.message_type)
    if layout is not None:  # parse_message has read these fields from this body already
        fields = _llrp_value(0, "", layout.parse(body))
        if isinstance(fields, dict):
            content.update(fields)
        body = body[layout.sizeof() :]
    if body:
        content["parameters"] = [_llrp_parameter(p) for p in llrp.decode_parameters(body)]
    return content


@decoder("llrp")
def decode_llrp(raw: bytes) -> Decoded:
    """One LLRP message: a 10-byte header (version, type, length, id) and its parameters."""
    out = Decoded("llrp", raw)
    try:
        frame = llrp.decode_frame(raw)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    name = _enum_name(llrp.MessageType, frame.message_type)
    if name is None:
        out.problems.append(f"unknown message type {frame.message_type}")
        return out
    out.field("version", Named(frame.version, str(frame.version), _LLRP_VERSIONS.get(frame.version)))
    out.field("type", Named(frame.message_type, str(frame.message_type), name))
    out.field("id", frame.message_id)
    out.field("body", Note(len(frame.body), _count(len(frame.body), "byte")))
    try:
        message = llrp.parse_message(frame)
    except ProtocolError as err:
        out.problems.append(str(err))
        return out
    if isinstance(message, llrp.UnknownMessage):
        out.problems.append(f"message type {frame.message_type} ({name}) is not one this codec models")
        return out
    sender, receiver = (
        ("reader", "client") if frame.message_type in _LLRP_FROM_READER else ("client", "reader")
    )
    out.read("message", sender, receiver, name, _llrp_content(frame, message))
    if isinstance(message, llrp.RoAccessReport):
        # The codec skips a TagReportData (or parameter) it cannot decode and records why, so that a driver
        # still delivers the rest; for the technician each of those is a fault of the frame.
        out.problems.extend(message.errors)
    return out


# --------------------------------------------------------------------------------------------------------
# Modbus RTU

_MASTER_TO_DEVICE: Final = ("request", "master", "device")
_DEVICE_TO_MASTER: Final = ("reply", "device", "master")
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

_ModbusReading = tuple[tuple[str, str, str], str, Record]


def _registers(data: bytes) -> list[Value]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]


def _modbus_read(function: int, name: str, data: bytes) -> tuple[list[_ModbusReading], list[str]]:
    """The readings of a read (01..04) frame's data, and what makes each implausible."""
    readings: list[_ModbusReading] = []
    doubts: list[str] = []
    if len(data) == 4:
        address, count = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
        limit = _MODBUS_READ_LIMIT[function]
        if 1 <= count <= limit:
            readings.append((_MASTER_TO_DEVICE, name, {"address": address, "count": count}))
        else:
            doubts.append(f"{name}: count {count}, 1..{limit} allowed")
    if data and data[0] == len(data) - 1:
        values = data[1:]
        if function in (3, 4) and data[0] % 2:
            doubts.append(f"{name}: reply of {data[0]} bytes, registers come in pairs of bytes")
        elif function in (3, 4):
            content: Record = {"byte_count": data[0], "registers": _registers(values), "data": Hex(values)}
            readings.append((_DEVICE_TO_MASTER, name, content))
        else:
            readings.append((_DEVICE_TO_MASTER, name, {"byte_count": data[0], "data": Hex(values)}))
    if not readings and not doubts:
        count_byte = data[0] if data else "-"
        follow = len(data) - 1 if data else 0
        doubts.append(
            f"neither a read request (4 data bytes) nor a reply (byte count {count_byte}, "
            f"{follow} bytes follow)"
        )
    return readings, ([] if readings else doubts)


def _modbus_write(function: int, name: str, data: bytes) -> tuple[list[_ModbusReading], list[str]]:
    """The reading of a write (05, 06, 15, 16) frame's data, or what is wrong with it."""
    if function in (5, 6):  # the request and its echo have one shape: address, value
        if len(data) != 4:
            return [], [f"{name} takes 4 data bytes (address, value), {len(data)} given"]
        address, value = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
        echo = ("request or its echo", "master", "device")
        if function == 6:
            return [(echo, name, {"address": address, "value": value})], []
        if value not in (0xFF00, 0x0000):
            return [], [f"{name}: value 0x{value:04X}, only 0xFF00 (on) or 0x0000 (off)"]
        state = Note(value == 0xFF00, f"0x{value:04X} ({'on' if value else 'off'})")
        return [(echo, name, {"address": address, "value": state})], []
    limit = _MODBUS_WRITE_LIMIT[function]
    unit = "coils" if function == 15 else "registers"
    if len(data) < 4:
        return [], [f"neither a {name} request nor its reply: {len(data)} data bytes"]
    address, count = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
    if not 1 <= count <= limit:
        return [], [f"{name}: count {count}, 1..{limit} allowed"]
    if len(data) == 4:
        return [(_DEVICE_TO_MASTER, name, {"address": address, "count": count})], []
    byte_count, follow = data[4], len(data) - 5
    if byte_count != follow:
        return [], [f"neither a {name} request nor its reply: byte count {byte_count}, {follow} bytes follow"]
    needed = (count + 7) // 8 if function == 15 else 2 * count
    if byte_count != needed:
        return [], [f"{name}: {count} {unit} take {needed} bytes, byte count is {byte_count}"]
    content: Record = {"address": address, "count": count, "byte_count": byte_count}
    if function == 16:
        content["registers"] = _registers(data[5:])
    content["data"] = Hex(data[5:])
    return [(_MASTER_TO_DEVICE, name, content)], []


def _modbus_function(function: int) -> Named:
    name = _MODBUS_FUNCTIONS.get(function & 0x7F)
    if name is not None and function & 0x80:
        name = f"exception to {name}"
    return Named(function, f"0x{function:02X}", name)


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
    out.field("unit", unit)
    out.field("function", _modbus_function(function))
    out.field("data", Hex(data))
    verdict = "ok" if found == expected else f"expected 0x{expected:04X}"
    out.field("crc", Note(found, f"0x{found:04X} ({verdict})"))
    if found != expected:
        out.problems.append(f"bad CRC: expected 0x{expected:04X}, found 0x{found:04X}")
        return out
    name = _MODBUS_FUNCTIONS.get(function & 0x7F)
    if name is None:
        out.problems.append(f"unknown function 0x{function:02X}")
        return out
    if function & 0x80:
        if len(data) != 1:
            out.problems.append(f"exception reply with {_count(len(data), 'data byte')}, expected 1")
            return out
        reason = _enum_name(modbus.ExceptionCode, data[0])
        if reason is None:
            out.problems.append(f"exception code 0x{data[0]:02X} is not one the standard defines")
            return out
        exception = Named(data[0], f"0x{data[0]:02X}", reason.lower())
        out.read(*_DEVICE_TO_MASTER, f"exception to {name}", {"exception": exception})
        return out
    reader = _modbus_read if function in _MODBUS_READ_LIMIT else _modbus_write
    readings, doubts = reader(function, name, data)
    for (direction, sender, receiver), kind, content in readings:
        out.read(direction, sender, receiver, kind, content)
    out.problems.extend(doubts)
    return out
