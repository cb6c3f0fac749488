"""The Zigbee Cluster Library (ZCL) as sensors speak it: frames, attribute records, data types, and the
clusters a gateway names.

Written from the Zigbee Cluster Library Specification (Zigbee document 07-5123, revision 6 onwards):
section 2.4 (general ZCL frame), 2.5 (general commands), 2.6 (data types), and the cluster chapters for the
attribute tables (measurement and sensing, 4.x; security and safety, 8.2 IAS Zone; smart energy metering
0x0702; electrical measurement 0x0B04). Everything on the air is little-endian.

A ZCL frame::

    frame control (u8)  [manufacturer code (u16) if bit 2]  sequence (u8)  command (u8)  payload

Frame control: bits 0-1 frame type (0 a global command, 1 a cluster-specific one), bit 2 manufacturer
specific, bit 3 direction (1 = server to client), bit 4 disable default response.

What is here, all pure:

- :func:`parse_header` / :func:`encode_header` (:class:`Header`, a construct definition);
- attribute records: :func:`parse_report` (Report Attributes, 0x0A), :func:`parse_read_response` (Read
  Attributes Response, 0x01), and their builders for a simulated sensor; :func:`read_attributes` (0x00),
  :func:`configure_reporting` (0x06) and the response (0x07); IAS Zone's status change notification
  (:func:`parse_zone_status_change`);
- the data types (:class:`DataType`): bool, data8..64, bitmap8..64, uint8..64, int8..64, enum8/16,
  semi (half), single and double floats, octet and character strings (short and long), time of day,
  date, UTC time, cluster and attribute ids, IEEE address, 128-bit key. Each type has one construct
  definition (:data:`VALUE`) that builds values and is the reference its fast decoder
  (:func:`decode_value`, plain ``int.from_bytes``/``struct``) is tested against: a report carries several
  records, each a tagged union, and construct's parse of one costs ten times the fast path;
- :data:`CLUSTERS`: the clusters named with their attributes' names, scales and units
  (:func:`describe`). A cluster or an attribute not in it, or a type that cannot be decoded, is never
  dropped: it comes out raw (the value's bytes in hex) with its type.

A payload whose lengths lie (a string longer than what is left, a record cut short) or whose data type is
unknown (its length is then unknowable) yields the records before the damage and a :class:`RecordError`
saying what stopped it: the caller counts and skips the rest.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    BytesInteger,
    Const,
    ConstructError,
    Flag,
    Float16l,
    Float32l,
    Float64l,
    GreedyBytes,
    If,
    Int8ul,
    Int16ul,
    Int64ul,
    PascalString,
    Prefixed,
    Struct,
    Switch,
    Terminated,
    this,
)

from protocols.errors import DecodeError, EncodeError

__all__ = [
    "CLUSTERS",
    "PROFILE_HA",
    "VALUE",
    "ZONE_STATUS_BITS",
    "AttributeSpec",
    "Cluster",
    "ClusterId",
    "Command",
    "DataType",
    "Described",
    "Header",
    "ReadRecord",
    "Record",
    "RecordError",
    "ReportingRecord",
    "Status",
    "ZoneStatusChange",
    "configure_reporting",
    "configure_reporting_response",
    "decode_value",
    "describe",
    "encode_header",
    "encode_value",
    "parse_configure_reporting",
    "parse_configure_reporting_response",
    "parse_header",
    "parse_read_attributes",
    "parse_read_response",
    "parse_report",
    "parse_zone_status_change",
    "read_attributes",
    "read_response",
    "report_attributes",
    "type_name",
    "zone_enroll_response",
    "zone_status_bits",
    "zone_status_change",
]

PROFILE_HA: Final = 0x0104
"""The Home Automation profile (Zigbee 3.0 devices use it too)."""

FRAME_GLOBAL: Final = 0
FRAME_CLUSTER: Final = 1


class Command(IntEnum):
    """Global commands (frame type 0)."""

    READ_ATTRIBUTES = 0x00
    READ_ATTRIBUTES_RESPONSE = 0x01
    WRITE_ATTRIBUTES = 0x02
    WRITE_ATTRIBUTES_RESPONSE = 0x04
    CONFIGURE_REPORTING = 0x06
    CONFIGURE_REPORTING_RESPONSE = 0x07
    REPORT_ATTRIBUTES = 0x0A
    DEFAULT_RESPONSE = 0x0B


ZONE_STATUS_CHANGE_NOTIFICATION: Final = 0x00
"""IAS Zone's cluster-specific command, server to client."""
ZONE_ENROLL_REQUEST: Final = 0x01


class Status(IntEnum):
    """ZCL status codes (the common ones)."""

    SUCCESS = 0x00
    FAILURE = 0x01
    UNSUPPORTED_ATTRIBUTE = 0x86
    INVALID_DATA_TYPE = 0x8D
    UNREPORTABLE_ATTRIBUTE = 0x8C
    INVALID_VALUE = 0x87


class ClusterId(IntEnum):
    BASIC = 0x0000
    POWER_CONFIGURATION = 0x0001
    ON_OFF = 0x0006
    TEMPERATURE = 0x0402
    PRESSURE = 0x0403
    HUMIDITY = 0x0405
    OCCUPANCY = 0x0406
    IAS_ZONE = 0x0500
    METERING = 0x0702
    ELECTRICAL_MEASUREMENT = 0x0B04


class DataType(IntEnum):
    """ZCL data types (spec table 2-10) this module decodes."""

    NO_DATA = 0x00
    DATA8 = 0x08
    DATA16 = 0x09
    DATA24 = 0x0A
    DATA32 = 0x0B
    DATA40 = 0x0C
    DATA48 = 0x0D
    DATA56 = 0x0E
    DATA64 = 0x0F
    BOOL = 0x10
    BITMAP8 = 0x18
    BITMAP16 = 0x19
    BITMAP24 = 0x1A
    BITMAP32 = 0x1B
    BITMAP40 = 0x1C
    BITMAP48 = 0x1D
    BITMAP56 = 0x1E
    BITMAP64 = 0x1F
    UINT8 = 0x20
    UINT16 = 0x21
    UINT24 = 0x22
    UINT32 = 0x23
    UINT40 = 0x24
    UINT48 = 0x25
    UINT56 = 0x26
    UINT64 = 0x27
    INT8 = 0x28
    INT16 = 0x29
    INT24 = 0x2A
    INT32 = 0x2B
    INT40 = 0x2C
    INT48 = 0x2D
    INT56 = 0x2E
    INT64 = 0x2F
    ENUM8 = 0x30
    ENUM16 = 0x31
    SEMI = 0x38
    SINGLE = 0x39
    DOUBLE = 0x3A
    OCTET_STRING = 0x41
    CHARACTER_STRING = 0x42
    LONG_OCTET_STRING = 0x43
    LONG_CHARACTER_STRING = 0x44
    TIME_OF_DAY = 0xE0
    DATE = 0xE1
    UTC_TIME = 0xE2
    CLUSTER_ID = 0xE8
    ATTRIBUTE_ID = 0xE9
    IEEE_ADDRESS = 0xF0
    SECURITY_KEY = 0xF1


_INTEGERS: Final[dict[int, tuple[int, bool]]] = {
    **{DataType.DATA8 + n: (n + 1, False) for n in range(8)},
    **{DataType.BITMAP8 + n: (n + 1, False) for n in range(8)},
    **{DataType.UINT8 + n: (n + 1, False) for n in range(8)},
    **{DataType.INT8 + n: (n + 1, True) for n in range(8)},
    DataType.ENUM8: (1, False),
    DataType.ENUM16: (2, False),
    DataType.UTC_TIME: (4, False),
    DataType.CLUSTER_ID: (2, False),
    DataType.ATTRIBUTE_ID: (2, False),
}
"""Integer types: (size, signed)."""
_NO_INVALID: Final = frozenset(
    [*(DataType.DATA8 + n for n in range(8)), *(DataType.BITMAP8 + n for n in range(8))]
)
"""Integer types without an "invalid" value (every bit pattern means something)."""
_FLOATS: Final[dict[int, tuple[int, str]]] = {
    DataType.SEMI: (2, "<e"),
    DataType.SINGLE: (4, "<f"),
    DataType.DOUBLE: (8, "<d"),
}
_FIXED_BYTES: Final[dict[int, int]] = {
    DataType.TIME_OF_DAY: 4,
    DataType.DATE: 4,
    DataType.SECURITY_KEY: 16,
}
_STRINGS: Final[dict[int, tuple[int, bool]]] = {
    DataType.OCTET_STRING: (1, False),
    DataType.CHARACTER_STRING: (1, True),
    DataType.LONG_OCTET_STRING: (2, False),
    DataType.LONG_CHARACTER_STRING: (2, True),
}


def type_name(data_type: int) -> str:
    """``int16``, ``char_string``...; ``0x48`` for a type not decoded here."""
    try:
        name = DataType(data_type).name.lower()
    except ValueError:
        return f"0x{data_type:02x}"
    return name.replace("character", "char").replace("_string", "_str").replace("_str", "_string")


def _int_construct(size: int, signed: bool) -> Any:
    return BytesInteger(size, signed=signed, swapped=True)


VALUE: Final = Switch(
    this.type,
    {
        DataType.NO_DATA: Const(b""),
        DataType.BOOL: Int8ul,
        **{t: _int_construct(size, signed) for t, (size, signed) in _INTEGERS.items()},
        DataType.SEMI: Float16l,
        DataType.SINGLE: Float32l,
        DataType.DOUBLE: Float64l,
        DataType.OCTET_STRING: Prefixed(Int8ul, GreedyBytes),
        DataType.CHARACTER_STRING: PascalString(Int8ul, "utf8"),
        DataType.LONG_OCTET_STRING: Prefixed(Int16ul, GreedyBytes),
        DataType.LONG_CHARACTER_STRING: PascalString(Int16ul, "utf8"),
        DataType.TIME_OF_DAY: Bytes(4),
        DataType.DATE: Bytes(4),
        DataType.SECURITY_KEY: Bytes(16),
        DataType.IEEE_ADDRESS: Int64ul,
    },
)
"""One value of a data type (``this.type``): builds every value, and is the reference that
:func:`decode_value` is tested against."""


class RecordError(DecodeError):
    """Attribute records stopped by damage: :attr:`records` holds those decoded before it."""

    def __init__(self, message: str, records: list[Any]) -> None:
        super().__init__(message)
        self.records = records


_UNPACK_FLOAT: Final[dict[int, Any]] = {t: struct.Struct(fmt).unpack_from for t, (_, fmt) in _FLOATS.items()}


def decode_value(data_type: int, buffer: bytes, pos: int) -> tuple[Any, int]:
    """The value of ``data_type`` at ``buffer[pos:]`` and where it ends. Integers come out as ``int``
    (None for the type's "invalid" value, e.g. 0xFFFF for uint16, 0x8000 for int16), bool as ``bool``
    (None for 0xFF), floats as ``float`` (None for NaN), strings as ``str`` (character strings) or
    ``bytes`` (octet strings), None for the length 0xFF/0xFFFF that marks an invalid string; other fixed
    types as ``bytes``. :class:`DecodeError` for an unknown type or a value cut short."""
    spec = _INTEGERS.get(data_type)
    if spec is not None:
        size, signed = spec
        end = pos + size
        if end > len(buffer):
            raise DecodeError(f"{type_name(data_type)} cut short: {len(buffer) - pos} of {size} bytes")
        value = int.from_bytes(buffer[pos:end], "little", signed=signed)
        if data_type not in _NO_INVALID:
            if signed:
                if value == -(1 << (size * 8 - 1)):
                    return None, end
            elif value == (1 << (size * 8)) - 1:
                return None, end
        return value, end
    if data_type == DataType.BOOL:
        if pos >= len(buffer):
            raise DecodeError("bool cut short")
        raw = buffer[pos]
        return (None if raw == 0xFF else bool(raw)), pos + 1
    floats = _FLOATS.get(data_type)
    if floats is not None:
        size = floats[0]
        if pos + size > len(buffer):
            raise DecodeError(f"{type_name(data_type)} cut short")
        number: float = _UNPACK_FLOAT[data_type](buffer, pos)[0]
        return (None if math.isnan(number) else number), pos + size
    strings = _STRINGS.get(data_type)
    if strings is not None:
        prefix, characters = strings
        if pos + prefix > len(buffer):
            raise DecodeError(f"{type_name(data_type)} length cut short")
        length = int.from_bytes(buffer[pos : pos + prefix], "little")
        start = pos + prefix
        if length == (1 << (8 * prefix)) - 1:
            return None, start  # the invalid string
        end = start + length
        if end > len(buffer):
            raise DecodeError(f"{type_name(data_type)} says {length} bytes, {len(buffer) - start} are left")
        raw_bytes = bytes(buffer[start:end])
        return (raw_bytes.decode("utf-8", "replace") if characters else raw_bytes), end
    if data_type == DataType.IEEE_ADDRESS:
        if pos + 8 > len(buffer):
            raise DecodeError("IEEE address cut short")
        return int.from_bytes(buffer[pos : pos + 8], "little"), pos + 8
    fixed = _FIXED_BYTES.get(data_type)
    if fixed is not None:
        if pos + fixed > len(buffer):
            raise DecodeError(f"{type_name(data_type)} cut short")
        return bytes(buffer[pos : pos + fixed]), pos + fixed
    if data_type == DataType.NO_DATA:
        return None, pos
    raise DecodeError(f"unknown data type 0x{data_type:02x}: the records after it cannot be found")


def encode_value(data_type: int, value: Any) -> bytes:
    """``value`` as ``data_type`` (None: the type's invalid value where it has one)."""
    try:
        if data_type == DataType.NO_DATA:
            return b""
        if value is None:
            spec = _INTEGERS.get(data_type)
            if spec is not None and data_type not in _NO_INVALID:
                size, signed = spec
                return ((1 << (size * 8 - 1)) if signed else (1 << (size * 8)) - 1).to_bytes(size, "little")
            if data_type == DataType.BOOL:
                return b"\xff"
            if data_type in _STRINGS:
                return b"\xff" * _STRINGS[data_type][0]
            raise EncodeError(f"{type_name(data_type)} has no invalid value")
        if data_type == DataType.BOOL:
            value = int(bool(value))
        built: bytes = VALUE.build(value, type=data_type)
        return built
    except (ConstructError, KeyError, struct.error, OverflowError) as err:
        raise EncodeError(f"{value!r} as {type_name(data_type)}: {err}") from None


# ----------------------------------------------------------------------------------------------------
# The frame header

_FRAME_CONTROL = BitStruct(
    "reserved" / BitsInteger(3),
    "disable_default_response" / Flag,
    "server_to_client" / Flag,
    "manufacturer_specific" / Flag,
    "frame_type" / BitsInteger(2),
)
HEADER: Final = Struct(
    "control" / _FRAME_CONTROL,
    "manufacturer" / If(this.control.manufacturer_specific, Int16ul),
    "sequence" / Int8ul,
    "command" / Int8ul,
)
"""The ZCL frame header (spec 2.4.1)."""
_HEADER = HEADER.compile()


@dataclass(frozen=True, slots=True)
class Header:
    """A ZCL frame's header."""

    sequence: int
    command: int
    cluster_specific: bool = False
    server_to_client: bool = True
    disable_default_response: bool = True
    manufacturer: int | None = None


def parse_header(payload: bytes) -> tuple[Header, int]:
    """The header of a ZCL frame and the offset of its payload; :class:`DecodeError` if cut short or of
    a reserved frame type."""
    if len(payload) < 3:
        raise DecodeError(f"ZCL frame of {len(payload)} bytes: a header has at least 3")
    control = payload[0]
    frame_type = control & 0x03
    if frame_type > FRAME_CLUSTER:
        raise DecodeError(f"reserved ZCL frame type {frame_type}")
    if control & 0x04:
        if len(payload) < 5:
            raise DecodeError("manufacturer-specific ZCL header cut short")
        manufacturer: int | None = payload[1] | payload[2] << 8
        offset = 3
    else:
        manufacturer = None
        offset = 1
    return (
        Header(
            payload[offset],
            payload[offset + 1],
            frame_type == FRAME_CLUSTER,
            bool(control & 0x08),
            bool(control & 0x10),
            manufacturer,
        ),
        offset + 2,
    )


def encode_header(header: Header) -> bytes:
    """The bytes of ``header``."""
    try:
        built: bytes = _HEADER.build(
            {
                "control": {
                    "reserved": 0,
                    "disable_default_response": header.disable_default_response,
                    "server_to_client": header.server_to_client,
                    "manufacturer_specific": header.manufacturer is not None,
                    "frame_type": FRAME_CLUSTER if header.cluster_specific else FRAME_GLOBAL,
                },
                "manufacturer": header.manufacturer,
                "sequence": header.sequence,
                "command": header.command,
            }
        )
    except (ConstructError, struct.error) as err:
        raise EncodeError(f"ZCL header: {err}") from None
    return built


# ----------------------------------------------------------------------------------------------------
# Attribute records


@dataclass(frozen=True, slots=True)
class Record:
    """One attribute of a report: its id, data type and value (:func:`decode_value`)."""

    attribute: int
    data_type: int
    value: Any
    raw: bytes = b""
    """The value's bytes as sent."""


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One attribute of a Read Attributes Response: a status, and a type and value on success."""

    attribute: int
    status: int
    data_type: int | None = None
    value: Any = None
    raw: bytes = b""


def parse_report(payload: bytes, offset: int = 0) -> list[Record]:
    """The records of a Report Attributes (0x0A) payload from ``offset``; :class:`RecordError` (with the
    records before) if one is cut short or of an unknown type."""
    records: list[Record] = []
    size = len(payload)
    pos = offset
    while pos < size:
        if pos + 3 > size:
            raise RecordError(f"attribute record cut short: {size - pos} bytes", records)
        attribute = payload[pos] | payload[pos + 1] << 8
        data_type = payload[pos + 2]
        try:
            value, end = decode_value(data_type, payload, pos + 3)
        except DecodeError as err:
            raise RecordError(f"attribute 0x{attribute:04x}: {err}", records) from None
        records.append(Record(attribute, data_type, value, payload[pos + 3 : end]))
        pos = end
    return records


def parse_read_response(payload: bytes, offset: int = 0) -> list[ReadRecord]:
    """The records of a Read Attributes Response (0x01) from ``offset``; :class:`RecordError` (with the
    records before) if one is cut short or of an unknown type."""
    records: list[ReadRecord] = []
    size = len(payload)
    pos = offset
    while pos < size:
        if pos + 3 > size:
            raise RecordError(f"read record cut short: {size - pos} bytes", records)
        attribute = payload[pos] | payload[pos + 1] << 8
        status = payload[pos + 2]
        if status != Status.SUCCESS:
            records.append(ReadRecord(attribute, status))
            pos += 3
            continue
        if pos + 4 > size:
            raise RecordError(f"attribute 0x{attribute:04x}: data type cut short", records)
        data_type = payload[pos + 3]
        try:
            value, end = decode_value(data_type, payload, pos + 4)
        except DecodeError as err:
            raise RecordError(f"attribute 0x{attribute:04x}: {err}", records) from None
        records.append(ReadRecord(attribute, status, data_type, value, payload[pos + 4 : end]))
        pos = end
    return records


def _frame(header: Header, body: bytes) -> bytes:
    return encode_header(header) + body


def _request(sequence: int, command: int) -> Header:
    """A global command from a client (the gateway) to a sensor, which answers it."""
    return Header(sequence, command, server_to_client=False, disable_default_response=False)


def report_attributes(sequence: int, records: Sequence[tuple[int, int, Any]], **header: Any) -> bytes:
    """A Report Attributes frame of (attribute, data type, value) records (a sensor's)."""
    body = b"".join(
        struct.pack("<HB", attribute, data_type) + encode_value(data_type, value)
        for attribute, data_type, value in records
    )
    return _frame(Header(sequence, Command.REPORT_ATTRIBUTES, **header), body)


def read_attributes(sequence: int, attributes: list[int]) -> bytes:
    """A Read Attributes frame (client to server)."""
    if not attributes:
        raise EncodeError("read at least one attribute")
    body = b"".join(struct.pack("<H", a) for a in attributes)
    return _frame(
        Header(sequence, Command.READ_ATTRIBUTES, server_to_client=False, disable_default_response=False),
        body,
    )


def parse_read_attributes(payload: bytes, offset: int = 0) -> list[int]:
    """The attribute ids of a Read Attributes payload."""
    body = payload[offset:]
    if len(body) % 2:
        raise DecodeError(f"read attributes: {len(body)} bytes is not a list of u16 ids")
    return [body[i] | body[i + 1] << 8 for i in range(0, len(body), 2)]


def read_response(sequence: int, records: Sequence[tuple[int, int, int | None, Any]]) -> bytes:
    """A Read Attributes Response of (attribute, status, data type, value) records (a sensor's)."""
    body = bytearray()
    for attribute, status, data_type, value in records:
        body += struct.pack("<HB", attribute, status)
        if status == Status.SUCCESS:
            if data_type is None:
                raise EncodeError("a successful read record needs a data type")
            body += bytes((data_type,)) + encode_value(data_type, value)
    return _frame(Header(sequence, Command.READ_ATTRIBUTES_RESPONSE), bytes(body))


@dataclass(frozen=True, slots=True)
class ReportingRecord:
    """One attribute of a Configure Reporting command (direction 0: the sensor reports)."""

    attribute: int
    data_type: int
    min_interval_s: int
    max_interval_s: int
    reportable_change: int | float | None = None
    """Only for analog types (integers, floats, times); None for discrete ones."""


def _analog(data_type: int) -> bool:
    return (DataType.UINT8 <= data_type <= DataType.INT64) or data_type in (
        DataType.SEMI, DataType.SINGLE, DataType.DOUBLE, DataType.TIME_OF_DAY, DataType.DATE,
        DataType.UTC_TIME,
    )  # fmt: skip


def configure_reporting(sequence: int, records: list[ReportingRecord]) -> bytes:
    """A Configure Reporting frame (client to server)."""
    body = bytearray()
    for record in records:
        body += struct.pack(
            "<BHBHH", 0, record.attribute, record.data_type, record.min_interval_s, record.max_interval_s
        )
        if _analog(record.data_type):
            body += encode_value(record.data_type, record.reportable_change or 0)
    header = Header(
        sequence, Command.CONFIGURE_REPORTING, server_to_client=False, disable_default_response=False
    )
    return _frame(header, bytes(body))


def parse_configure_reporting(payload: bytes, offset: int = 0) -> list[ReportingRecord]:
    """The records of a Configure Reporting payload (direction 0 records; a sensor's side)."""
    records: list[ReportingRecord] = []
    pos = offset
    while pos < len(payload):
        if pos + 8 > len(payload) or payload[pos] != 0:
            raise DecodeError("configure reporting record cut short or not of direction 0")
        _, attribute, data_type, low, high = struct.unpack_from("<BHBHH", payload, pos)
        pos += 8
        change = None
        if _analog(data_type):
            change, pos = decode_value(data_type, payload, pos)
        records.append(ReportingRecord(attribute, data_type, low, high, change))
    return records


def configure_reporting_response(sequence: int, statuses: Sequence[tuple[int, int]]) -> bytes:
    """A Configure Reporting Response: (status, attribute) per record, or one SUCCESS for all."""
    body = bytearray()
    if all(status == Status.SUCCESS for status, _ in statuses):
        body.append(Status.SUCCESS)
    else:
        for status, attribute in statuses:
            body += struct.pack("<BBH", status, 0, attribute)
    return _frame(Header(sequence, Command.CONFIGURE_REPORTING_RESPONSE), bytes(body))


def parse_configure_reporting_response(payload: bytes, offset: int = 0) -> list[tuple[int, int | None]]:
    """(status, attribute) per record; a lone SUCCESS byte means every record succeeded (attribute
    None)."""
    body = payload[offset:]
    if len(body) == 1:
        return [(body[0], None)]
    if not body or len(body) % 4:
        raise DecodeError(f"configure reporting response of {len(body)} bytes")
    return [(body[i], body[i + 2] | body[i + 3] << 8) for i in range(0, len(body), 4)]


# ----------------------------------------------------------------------------------------------------
# IAS Zone

ZONE_STATUS_BITS: Final = (
    "alarm1",
    "alarm2",
    "tamper",
    "battery_low",
    "supervision_reports",
    "restore_reports",
    "trouble",
    "ac_mains_fault",
    "test",
    "battery_defect",
)
"""The zone status bits, bit 0 first (ZCL 8.2.2.2.1.3)."""

_ZONE_STATUS_CHANGE = Struct(
    "zone_status" / Int16ul,
    "extended_status" / Int8ul,
    "zone_id" / Int8ul,
    "delay" / Int16ul,
    Terminated,
).compile()
_ZONE_STATUS_CHANGE_SHORT = Struct("zone_status" / Int16ul, "extended_status" / Int8ul, Terminated).compile()


@dataclass(frozen=True, slots=True)
class ZoneStatusChange:
    """IAS Zone status change notification (cluster 0x0500, command 0x00, server to client)."""

    zone_status: int
    extended_status: int = 0
    zone_id: int = 0
    delay_qs: int = 0
    """Quarter seconds since the status changed."""


def parse_zone_status_change(payload: bytes, offset: int = 0) -> ZoneStatusChange:
    """The notification's fields (ZCL 6 form with zone id and delay, or the older three bytes)."""
    body = payload[offset:]
    try:
        if len(body) == 3:
            short: Any = _ZONE_STATUS_CHANGE_SHORT.parse(body)
            return ZoneStatusChange(short.zone_status, short.extended_status)
        p: Any = _ZONE_STATUS_CHANGE.parse(body)
    except (ConstructError, struct.error):
        raise DecodeError(f"zone status change notification of {len(body)} bytes (3 or 6)") from None
    return ZoneStatusChange(p.zone_status, p.extended_status, p.zone_id, p.delay)


def zone_status_change(sequence: int, change: ZoneStatusChange) -> bytes:
    """A zone status change notification frame (a sensor's)."""
    body = _ZONE_STATUS_CHANGE.build(
        {
            "zone_status": change.zone_status,
            "extended_status": change.extended_status,
            "zone_id": change.zone_id,
            "delay": change.delay_qs,
        }
    )
    return _frame(Header(sequence, ZONE_STATUS_CHANGE_NOTIFICATION, cluster_specific=True), body)


def zone_enroll_response(sequence: int, zone_id: int, code: int = 0) -> bytes:
    """Zone Enroll Response (cluster 0x0500 command 0x00, client to server): the CIE accepts (code 0) the
    zone's enrollment and gives it ``zone_id``."""
    header = Header(
        sequence, 0x00, cluster_specific=True, server_to_client=False, disable_default_response=True
    )
    return _frame(header, bytes((code, zone_id)))


def zone_status_bits(status: int) -> dict[str, bool]:
    """Every named zone status bit, set or not."""
    return {name: bool(status >> bit & 1) for bit, name in enumerate(ZONE_STATUS_BITS)}


# ----------------------------------------------------------------------------------------------------
# Clusters: names, scales, units


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """How an attribute's value is shown: its name, a scale (value * scale), a unit, names for an enum's
    values or a bitmap's bits, or the attributes (multiplier, divisor) of the same cluster that scale it."""

    name: str
    unit: str | None = None
    scale: float | None = None
    names: Mapping[int, str] = field(default_factory=dict)
    bits: tuple[str, ...] = ()
    scaled_by: tuple[int, int] | None = None
    boolean_bit: bool = False
    """A bitmap whose bit 0 is the value (occupancy)."""
    data_type: int | None = None
    """The type the specification gives it, where a reporting configuration needs it."""


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    attributes: Mapping[int, AttributeSpec]


_ZONE_TYPES: Final = {
    0x0000: "standard_cie", 0x000D: "motion_sensor", 0x0015: "contact_switch", 0x0016: "door_window_handle",
    0x0028: "fire_sensor", 0x002A: "water_sensor", 0x002B: "carbon_monoxide_sensor",
    0x002C: "personal_emergency_device", 0x002D: "vibration_movement_sensor", 0x010F: "remote_control",
    0x0115: "key_fob", 0x021D: "keypad", 0x0225: "standard_warning_device", 0x0226: "glass_break_sensor",
    0x0229: "security_repeater",
}  # fmt: skip
_METER_UNITS: Final = {
    0: "kWh", 1: "m3", 2: "ft3", 3: "ccf", 4: "us_gal", 5: "imp_gal", 6: "btu", 7: "l", 8: "kpa_gauge",
    9: "kpa_absolute", 10: "mcf", 11: "unitless", 12: "mj",
}  # fmt: skip

CLUSTERS: Final[Mapping[int, Cluster]] = {
    ClusterId.BASIC: Cluster(
        "basic",
        {
            0x0000: AttributeSpec("zcl_version"),
            0x0001: AttributeSpec("application_version"),
            0x0003: AttributeSpec("hw_version"),
            0x0004: AttributeSpec("manufacturer_name"),
            0x0005: AttributeSpec("model_identifier"),
            0x0006: AttributeSpec("date_code"),
            0x0007: AttributeSpec(
                "power_source",
                names={0: "unknown", 1: "mains_single_phase", 2: "mains_three_phase", 3: "battery", 4: "dc"},
            ),
            0x4000: AttributeSpec("sw_build_id"),
        },
    ),
    ClusterId.POWER_CONFIGURATION: Cluster(
        "power_configuration",
        {
            0x0000: AttributeSpec("mains_voltage", "V", 0.1),
            0x0001: AttributeSpec("mains_frequency", "Hz", 0.5),
            0x0020: AttributeSpec("battery_voltage", "V", 0.1, data_type=DataType.UINT8),
            0x0021: AttributeSpec("battery_percentage", "%", 0.5, data_type=DataType.UINT8),
            0x0035: AttributeSpec("battery_alarm_mask"),
            0x003E: AttributeSpec("battery_alarm_state"),
        },
    ),
    ClusterId.ON_OFF: Cluster("on_off", {0x0000: AttributeSpec("on_off", data_type=DataType.BOOL)}),
    ClusterId.TEMPERATURE: Cluster(
        "temperature_measurement",
        {
            0x0000: AttributeSpec("temperature", "°C", 0.01, data_type=DataType.INT16),
            0x0001: AttributeSpec("min_temperature", "°C", 0.01),
            0x0002: AttributeSpec("max_temperature", "°C", 0.01),
            0x0003: AttributeSpec("tolerance", "°C", 0.01),
        },
    ),
    ClusterId.PRESSURE: Cluster(
        "pressure_measurement",
        {
            0x0000: AttributeSpec("pressure", "hPa", 1.0, data_type=DataType.INT16),  # units of 0.1 kPa
            0x0001: AttributeSpec("min_pressure", "hPa", 1.0),
            0x0002: AttributeSpec("max_pressure", "hPa", 1.0),
            0x0003: AttributeSpec("tolerance", "hPa", 1.0),
            0x0010: AttributeSpec("scaled_pressure"),
            0x0014: AttributeSpec("scale"),
        },
    ),
    ClusterId.HUMIDITY: Cluster(
        "relative_humidity_measurement",
        {
            0x0000: AttributeSpec("humidity", "%", 0.01, data_type=DataType.UINT16),
            0x0001: AttributeSpec("min_humidity", "%", 0.01),
            0x0002: AttributeSpec("max_humidity", "%", 0.01),
            0x0003: AttributeSpec("tolerance", "%", 0.01),
        },
    ),
    ClusterId.OCCUPANCY: Cluster(
        "occupancy_sensing",
        {
            0x0000: AttributeSpec("occupancy", boolean_bit=True, data_type=DataType.BITMAP8),
            0x0001: AttributeSpec(
                "occupancy_sensor_type",
                names={0: "pir", 1: "ultrasonic", 2: "pir_and_ultrasonic", 3: "physical_contact"},
            ),
        },
    ),
    ClusterId.IAS_ZONE: Cluster(
        "ias_zone",
        {
            0x0000: AttributeSpec("zone_state", names={0: "not_enrolled", 1: "enrolled"}),
            0x0001: AttributeSpec("zone_type", names=_ZONE_TYPES),
            0x0002: AttributeSpec("zone_status", bits=ZONE_STATUS_BITS, data_type=DataType.BITMAP16),
            0x0010: AttributeSpec("ias_cie_address"),
            0x0011: AttributeSpec("zone_id"),
        },
    ),
    ClusterId.METERING: Cluster(
        "metering",
        {
            0x0000: AttributeSpec(
                "summation_delivered", "kWh", scaled_by=(0x0301, 0x0302), data_type=DataType.UINT48
            ),
            0x0001: AttributeSpec("summation_received", "kWh", scaled_by=(0x0301, 0x0302)),
            0x0200: AttributeSpec("status"),
            0x0300: AttributeSpec("unit_of_measure", names=_METER_UNITS),
            0x0301: AttributeSpec("multiplier"),
            0x0302: AttributeSpec("divisor"),
            0x0306: AttributeSpec("metering_device_type"),
            0x0400: AttributeSpec(
                "instantaneous_demand", "kW", scaled_by=(0x0301, 0x0302), data_type=DataType.INT24
            ),
        },
    ),
    ClusterId.ELECTRICAL_MEASUREMENT: Cluster(
        "electrical_measurement",
        {
            0x0000: AttributeSpec("measurement_type"),
            0x0300: AttributeSpec("ac_frequency", "Hz", scaled_by=(0x0400, 0x0401)),
            0x0505: AttributeSpec("rms_voltage", "V", scaled_by=(0x0600, 0x0601), data_type=DataType.UINT16),
            0x0508: AttributeSpec("rms_current", "A", scaled_by=(0x0602, 0x0603), data_type=DataType.UINT16),
            0x050B: AttributeSpec("active_power", "W", scaled_by=(0x0604, 0x0605), data_type=DataType.INT16),
            0x050E: AttributeSpec("reactive_power", "var", scaled_by=(0x0604, 0x0605)),
            0x050F: AttributeSpec("apparent_power", "VA", scaled_by=(0x0604, 0x0605)),
            0x0510: AttributeSpec("power_factor", None, 0.01),
            0x0400: AttributeSpec("ac_frequency_multiplier"),
            0x0401: AttributeSpec("ac_frequency_divisor"),
            0x0600: AttributeSpec("ac_voltage_multiplier"),
            0x0601: AttributeSpec("ac_voltage_divisor"),
            0x0602: AttributeSpec("ac_current_multiplier"),
            0x0603: AttributeSpec("ac_current_divisor"),
            0x0604: AttributeSpec("ac_power_multiplier"),
            0x0605: AttributeSpec("ac_power_divisor"),
        },
    ),
}
"""The clusters named, by id."""

SCALING_ATTRIBUTES: Final = frozenset(
    (cluster, attribute)
    for cluster, spec in CLUSTERS.items()
    for a in spec.attributes.values()
    if a.scaled_by is not None
    for attribute in a.scaled_by
)
"""(cluster, attribute) of the multipliers and divisors other attributes are scaled by: a driver keeps
their last values per sensor."""


@dataclass(frozen=True, slots=True)
class Described:
    """An attribute as an event shows it."""

    cluster_name: str | None
    name: str | None
    value: Any
    unit: str | None


def describe(
    cluster: int,
    attribute: int,
    data_type: int,
    value: Any,
    *,
    raw: bytes,
    factors: Mapping[int, int] | None = None,
) -> Described:
    """``value`` (of ``data_type``, whose bytes were ``raw``) of ``attribute`` in ``cluster`` named, scaled
    and with its unit. ``factors`` are the sensor's last values of the cluster's multipliers and divisors,
    by attribute id (a value they scale is unscaled until both are known, its unit then None). An
    unknown cluster or attribute comes out with names None and the value's bytes in hex."""
    known = CLUSTERS.get(cluster)
    if known is None:
        return Described(None, None, raw.hex(), None)
    spec = known.attributes.get(attribute)
    if spec is None:
        return Described(known.name, None, raw.hex(), None)
    if value is None:
        return Described(known.name, spec.name, None, spec.unit)
    unit = spec.unit
    if isinstance(value, bytes):
        value = value.hex()
    elif spec.names and isinstance(value, int):
        value = spec.names.get(value, value)
    elif spec.bits and isinstance(value, int):
        value = [name for bit, name in enumerate(spec.bits) if value >> bit & 1]
    elif spec.boolean_bit and isinstance(value, int):
        value = bool(value & 1)
    elif spec.scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
        value = round(value * spec.scale, 6)
    elif spec.scaled_by is not None and isinstance(value, int | float):
        multiplier, divisor = spec.scaled_by
        got = factors or {}
        if multiplier in got and divisor in got and got[divisor]:
            value = round(value * got[multiplier] / got[divisor], 9)
        else:
            unit = None
    elif data_type == DataType.IEEE_ADDRESS and isinstance(value, int):
        value = f"{value:016x}"
    return Described(known.name, spec.name, value, unit)
