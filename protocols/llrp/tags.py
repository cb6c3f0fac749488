"""Tag reports, the hot path: TagReportData decoded by hand (tested against the construct definitions),
and RO_ACCESS_REPORT."""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple

from construct import ConstructError, Struct, Terminated

from protocols.errors import DecodeError, EncodeError

from .constants import CUSTOM, EPC96_BITS, MessageType, ParamType
from .params import (
    _BITS_ARRAY,
    _TLV_LAYOUTS,
    _TV_SIZE,
    TV_VALUES,
    Parameter,
    _custom,
    _plain,
    _split,
    _tlv_bytes,
    encode_parameter,
    parameter_name,
)


class TagReport(NamedTuple):
    """One TagReportData: a tag seen, and whatever the reader was asked to say about it.

    Timestamps are microseconds: ``*_utc`` since the Unix epoch, ``*_uptime`` since the reader started.
    ``peak_rssi`` is dBm. ``epc_bits`` is 96 for an EPC-96 parameter, else EPCData's bit count (``epc`` then
    holds that many bits, padded to whole bytes). ``extra`` keeps, raw and in order, what this codec does not
    read (vendor Custom parameters, op-spec results, unknown TLVs, TV OpSpecID and the like).

    A named tuple rather than a frozen dataclass: reports are decoded by the tens of thousands a second, and
    a frozen dataclass of this many fields costs some 5 us to build here, a named tuple under 1.
    """

    epc: bytes
    epc_bits: int = EPC96_BITS
    antenna: int | None = None
    peak_rssi: int | None = None
    channel_index: int | None = None
    first_seen_utc: int | None = None
    last_seen_utc: int | None = None
    first_seen_uptime: int | None = None
    last_seen_uptime: int | None = None
    seen_count: int | None = None
    pc: int | None = None
    xpc_w1: int | None = None
    xpc_w2: int | None = None
    crc: int | None = None
    rospec_id: int | None = None
    spec_index: int | None = None
    inventory_parameter_spec_id: int | None = None
    access_spec_id: int | None = None
    extra: tuple[Parameter, ...] = ()

    @property
    def skipped(self) -> int:
        """Parameters this codec skipped (``extra``)."""
        return len(self.extra)


_TAG_TV_FIELDS: Final[Mapping[int, str]] = {
    ParamType.ANTENNA_ID: "antenna",
    ParamType.FIRST_SEEN_TIMESTAMP_UTC: "first_seen_utc",
    ParamType.FIRST_SEEN_TIMESTAMP_UPTIME: "first_seen_uptime",
    ParamType.LAST_SEEN_TIMESTAMP_UTC: "last_seen_utc",
    ParamType.LAST_SEEN_TIMESTAMP_UPTIME: "last_seen_uptime",
    ParamType.PEAK_RSSI: "peak_rssi",
    ParamType.CHANNEL_INDEX: "channel_index",
    ParamType.TAG_SEEN_COUNT: "seen_count",
    ParamType.ROSPEC_ID: "rospec_id",
    ParamType.INVENTORY_PARAMETER_SPEC_ID: "inventory_parameter_spec_id",
    ParamType.C1G2_CRC: "crc",
    ParamType.C1G2_PC: "pc",
    ParamType.SPEC_INDEX: "spec_index",
    ParamType.ACCESS_SPEC_ID: "access_spec_id",
    ParamType.C1G2_XPC_W1: "xpc_w1",
    ParamType.C1G2_XPC_W2: "xpc_w2",
}
"""TV parameters of a TagReportData and the :class:`TagReport` field each fills."""
_TAG_ORDER: Final = (
    ParamType.ROSPEC_ID,
    ParamType.SPEC_INDEX,
    ParamType.INVENTORY_PARAMETER_SPEC_ID,
    ParamType.ANTENNA_ID,
    ParamType.PEAK_RSSI,
    ParamType.CHANNEL_INDEX,
    ParamType.FIRST_SEEN_TIMESTAMP_UTC,
    ParamType.FIRST_SEEN_TIMESTAMP_UPTIME,
    ParamType.LAST_SEEN_TIMESTAMP_UTC,
    ParamType.LAST_SEEN_TIMESTAMP_UPTIME,
    ParamType.TAG_SEEN_COUNT,
    ParamType.C1G2_PC,
    ParamType.C1G2_XPC_W1,
    ParamType.C1G2_XPC_W2,
    ParamType.C1G2_CRC,
    ParamType.ACCESS_SPEC_ID,
)
"""The standard's order of the optional parameters after the EPC."""
_TAG_RAW_TV: Final = frozenset(range(1, 21)) - frozenset(_TAG_TV_FIELDS) - {ParamType.EPC_96}
"""TV parameters a TagReportData may carry that a TagReport keeps raw in ``extra``."""
_EPC_DATA_LAYOUT = Struct("epc" / _BITS_ARRAY, Terminated)
_CUSTOM_LAYOUT = _TLV_LAYOUTS[ParamType.CUSTOM]


def _extra_tlv(ptype: int, body: bytes) -> Parameter:
    """A TLV that a TagReportData or report carries and this codec does not read: Custom parameters are
    split into vendor, subtype and data; anything else is kept raw."""
    if ptype == CUSTOM:
        try:
            parsed = _CUSTOM_LAYOUT.parse(body)
        except ConstructError as err:
            raise DecodeError(f"Custom parameter of {len(body)} bytes: at least 8 (vendor, subtype)") from err
        return _custom(parsed.fields.vendor, parsed.fields.subtype, bytes(parsed.fields.data))
    return Parameter(ptype, {"data": body})


def _epc_data(body: bytes) -> tuple[bytes, int]:
    try:
        parsed = _EPC_DATA_LAYOUT.parse(body)
    except ConstructError as err:
        raise DecodeError(f"EPCData of {len(body)} bytes does not hold its bit count") from err
    return bytes(parsed.epc.data), parsed.epc.bits


class _Layout(NamedTuple):
    """How to decode, in two C calls, a TagReportData made of TV parameters only, laid out as one seen
    before: readers send every tag of a session with the same parameters in the same order."""

    leads: Callable[[bytes], Any]
    """The lead byte (TV type) of each parameter, by offset."""
    expected: Any
    unpack: Callable[[bytes], tuple[Any, ...]]
    """Every value in one struct call (lead bytes skipped)."""
    assemble: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    """The TagReport's fields out of the values and :data:`_LAYOUT_DEFAULTS`."""


_TV_FORMATS: Final[Mapping[int, str]] = {
    ParamType.ANTENNA_ID: "H",
    ParamType.FIRST_SEEN_TIMESTAMP_UTC: "Q",
    ParamType.FIRST_SEEN_TIMESTAMP_UPTIME: "Q",
    ParamType.LAST_SEEN_TIMESTAMP_UTC: "Q",
    ParamType.LAST_SEEN_TIMESTAMP_UPTIME: "Q",
    ParamType.PEAK_RSSI: "b",
    ParamType.CHANNEL_INDEX: "H",
    ParamType.TAG_SEEN_COUNT: "H",
    ParamType.ROSPEC_ID: "I",
    ParamType.INVENTORY_PARAMETER_SPEC_ID: "H",
    ParamType.C1G2_CRC: "H",
    ParamType.C1G2_PC: "H",
    ParamType.EPC_96: "12s",
    ParamType.SPEC_INDEX: "H",
    ParamType.ACCESS_SPEC_ID: "I",
    ParamType.C1G2_XPC_W1: "H",
    ParamType.C1G2_XPC_W2: "H",
}
"""struct formats of the TV parameters a :class:`_Layout` may hold (those a TagReport has a field for)."""
_LAYOUT_DEFAULTS: Final = (None, EPC96_BITS, ())
_LAYOUTS_MAX: Final = 64
_layouts: dict[int, _Layout] = {}
"""Layouts learnt, by body length (a memo: what is decoded never depends on it)."""


def _learn_layout(data: bytes, start: int, end: int) -> _Layout | None:
    """The layout of a TagReportData already decoded by the walk, if it is TV parameters only."""
    offsets: list[int] = []
    slots = [-1] * len(TagReport._fields)
    fmt = ">"
    pos = start
    while pos < end:
        ptype = data[pos] & 0x7F
        if not data[pos] & 0x80 or ptype not in _TV_FORMATS:
            return None
        value_index = len(offsets)
        offsets.append(pos - start)
        fmt += "x" + _TV_FORMATS[ptype]
        field_name = "epc" if ptype == ParamType.EPC_96 else _TAG_TV_FIELDS[ptype]
        slots[TagReport._fields.index(field_name)] = (
            value_index  # the last of a duplicate wins, as in the walk
        )
        pos += 1 + _TV_SIZE[ptype]
    count = len(offsets)
    if pos != end or slots[0] < 0:
        return None
    slots[1] = count + 1  # epc_bits: 96
    slots[-1] = count + 2  # extra: ()
    slots = [count if slot < 0 else slot for slot in slots]  # absent: None
    leads = operator.itemgetter(*offsets)
    return _Layout(leads, leads(data[start:end]), struct.Struct(fmt).unpack, operator.itemgetter(*slots))


def parse_tag_report(data: bytes, start: int = 0, end: int | None = None) -> TagReport:
    """The TagReportData whose body (after its TLV header) is ``data[start:end]``. The fast path, tested to
    agree with :func:`parse_tag_report_spec`; DecodeError if it does not decode.

    A body laid out like one decoded before (the same TV parameters in the same order) is decoded in two
    struct calls; anything else is walked parameter by parameter."""
    if end is None:
        end = len(data)
    layout = _layouts.get(end - start)
    if layout is not None:
        chunk = data[start:end]
        if layout.leads(chunk) == layout.expected:
            return TagReport._make(layout.assemble(layout.unpack(chunk) + _LAYOUT_DEFAULTS))
    tag = _walk_tag_report(data, start, end)
    if layout is None and not tag.extra and len(_layouts) < _LAYOUTS_MAX:
        learnt = _learn_layout(data, start, end)
        if learnt is not None:
            _layouts[end - start] = learnt
    return tag


def _walk_tag_report(data: bytes, start: int, end: int) -> TagReport:
    # TV values by type, decoded by size (every TV field of a TagReport is an unsigned integer but PeakRSSI,
    # the only 1-byte one, and EPC-96, the only 12-byte one).
    values: list[Any] = [None] * 21
    epc: bytes | None = None
    epc_bits = EPC96_BITS
    extra: list[Parameter] | None = None
    tv_size = _TV_SIZE
    i = start
    while i < end:
        lead = data[i]
        if lead & 0x80:
            ptype = lead & 0x7F
            size = tv_size[ptype]
            j = i + 1 + size
            if not size:
                raise DecodeError(f"TagReportData: unknown TV parameter type {ptype}: its size is unknown")
            if j > end:
                raise DecodeError(f"TagReportData: {parameter_name(ptype)} truncated")
            if ptype in _TAG_RAW_TV:
                if extra is None:
                    extra = []
                extra.append(Parameter(ptype, {"value": _plain(TV_VALUES[ptype].parse(data[i + 1 : j]))}))
            elif size == 2:
                values[ptype] = (data[i + 1] << 8) | data[i + 2]
            elif size == 12:
                epc = data[i + 1 : j]
                epc_bits = EPC96_BITS
            elif size == 1:
                rssi = data[i + 1]
                values[ptype] = rssi - 256 if rssi > 127 else rssi
            else:
                values[ptype] = int.from_bytes(data[i + 1 : j], "big")
            i = j
        else:
            if end - i < 4:
                raise DecodeError(f"TagReportData: {end - i} bytes left, a TLV header has 4")
            ptype = ((lead & 0x03) << 8) | data[i + 1]
            length = (data[i + 2] << 8) | data[i + 3]
            j = i + length
            if length < 4 or j > end:
                raise DecodeError(f"TagReportData: {parameter_name(ptype)} with impossible length {length}")
            if ptype == 241:
                epc, epc_bits = _epc_data(bytes(data[i + 4 : j]))
            else:
                if extra is None:
                    extra = []
                extra.append(_extra_tlv(ptype, bytes(data[i + 4 : j])))
            i = j
    if epc is None:
        raise DecodeError("TagReportData without an EPC (EPC-96 or EPCData)")
    return TagReport(
        bytes(epc),
        epc_bits,
        values[1],
        values[6],
        values[7],
        values[2],
        values[4],
        values[3],
        values[5],
        values[8],
        values[12],
        values[19],
        values[20],
        values[11],
        values[9],
        values[14],
        values[10],
        values[16],
        tuple(extra) if extra else (),
    )


def parse_tag_report_spec(body: bytes) -> TagReport:
    """:func:`parse_tag_report`'s decoding, through the construct definitions (:data:`TV_VALUES`, EPCData's
    and Custom's in :data:`TLV_SPECS`): the reference the fast path is tested against."""
    values: dict[str, Any] = {}
    extra: list[Parameter] = []
    epc: bytes | None = None
    epc_bits = EPC96_BITS
    for ptype, tv, value in _split(body, "TagReportData"):
        if not tv:
            if ptype == ParamType.EPC_DATA:
                epc, epc_bits = _epc_data(value)
            else:
                extra.append(_extra_tlv(ptype, value))
        elif ptype == ParamType.EPC_96:
            epc, epc_bits = value, EPC96_BITS
        elif ptype in _TAG_TV_FIELDS:
            values[_TAG_TV_FIELDS[ptype]] = value
        else:
            extra.append(Parameter(ptype, {"value": value}))
    if epc is None:
        raise DecodeError("TagReportData without an EPC (EPC-96 or EPCData)")
    return TagReport(epc, epc_bits, **values, extra=tuple(extra))


def encode_tag_report(tag: TagReport) -> bytes:
    """The TagReportData parameter (header included) for ``tag``: EPC-96 when ``epc_bits`` is 96, else
    EPCData; then the fields that are not None, in the standard's order; then ``extra``."""
    if tag.epc_bits == EPC96_BITS and len(tag.epc) == 12:
        parts = [b"\x8d" + tag.epc]
    else:
        if not 0 <= tag.epc_bits <= 0xFFFF or len(tag.epc) != (tag.epc_bits + 7) // 8:
            raise EncodeError(f"an EPC of {len(tag.epc)} bytes cannot hold {tag.epc_bits} bits")
        parts = [
            encode_parameter(Parameter(ParamType.EPC_DATA, {"epc": {"bits": tag.epc_bits, "data": tag.epc}}))
        ]
    for ptype in _TAG_ORDER:
        value = getattr(tag, _TAG_TV_FIELDS[ptype])
        if value is not None:
            parts.append(encode_parameter(Parameter(ptype, {"value": value})))
    parts.extend(encode_parameter(p) for p in tag.extra)
    return _tlv_bytes(ParamType.TAG_REPORT_DATA, b"".join(parts))


@dataclass(frozen=True, slots=True)
class RoAccessReport:
    """RO_ACCESS_REPORT: the tags seen. ``extra`` keeps, raw, the other parameters (RFSurveyReportData,
    vendor Custom parameters, unknown TLVs); ``errors`` says why each TagReportData that could not be
    decoded was skipped (the others are still delivered)."""

    tags: tuple[TagReport, ...] = ()
    extra: tuple[Parameter, ...] = ()
    errors: tuple[str, ...] = ()
    message_type: ClassVar[int] = MessageType.RO_ACCESS_REPORT

    @property
    def skipped(self) -> int:
        """Parameters skipped, at the report's level and inside its tags."""
        return len(self.extra) + sum(len(tag.extra) for tag in self.tags if tag.extra)


def parse_ro_access_report(body: bytes) -> RoAccessReport:
    """An RO_ACCESS_REPORT's body: the fast path. A TagReportData that does not decode is skipped and its
    error recorded; a parameter header that lies about its length ends the report there (error recorded:
    nothing after it can be found)."""
    tags: list[TagReport] = []
    extra: list[Parameter] = []
    errors: list[str] = []
    end = len(body)
    i = 0
    parse = parse_tag_report
    while i < end:
        lead = body[i]
        if lead & 0x80:
            ptype = lead & 0x7F
            size = _TV_SIZE[ptype]
            if not size or i + 1 + size > end:
                errors.append(f"RO_ACCESS_REPORT: undecodable TV parameter type {ptype} at byte {i}")
                break
            extra.append(
                Parameter(ptype, {"value": _plain(TV_VALUES[ptype].parse(body[i + 1 : i + 1 + size]))})
            )
            i += 1 + size
            continue
        if end - i < 4:
            errors.append(f"RO_ACCESS_REPORT: {end - i} bytes left at byte {i}, a TLV header has 4")
            break
        ptype = ((lead & 0x03) << 8) | body[i + 1]
        length = (body[i + 2] << 8) | body[i + 3]
        j = i + length
        if length < 4 or j > end:
            errors.append(
                f"RO_ACCESS_REPORT: {parameter_name(ptype)} at byte {i} with impossible length {length}"
            )
            break
        if ptype == 240:
            try:
                tags.append(parse(body, i + 4, j))
            except DecodeError as err:
                errors.append(str(err))
        else:
            try:
                extra.append(_extra_tlv(ptype, bytes(body[i + 4 : j])))
            except DecodeError as err:
                errors.append(str(err))
        i = j
    return RoAccessReport(tuple(tags), tuple(extra), tuple(errors))


def parse_ro_access_report_spec(body: bytes) -> RoAccessReport:
    """:func:`parse_ro_access_report` through the construct definitions (whole reports only: DecodeError
    where the fast path would record an error and stop)."""
    tags: list[TagReport] = []
    extra: list[Parameter] = []
    errors: list[str] = []
    for ptype, tv, value in _split(body, "RO_ACCESS_REPORT"):
        if tv:
            extra.append(Parameter(ptype, {"value": value}))
        elif ptype == ParamType.TAG_REPORT_DATA:
            try:
                tags.append(parse_tag_report_spec(value))
            except DecodeError as err:
                errors.append(str(err))
        else:
            extra.append(_extra_tlv(ptype, value))
    return RoAccessReport(tuple(tags), tuple(extra), tuple(errors))
