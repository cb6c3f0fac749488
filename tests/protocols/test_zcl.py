"""ZCL and ZDO codecs: reference frames, every data type against its construct definition, records whose
lengths lie or whose types are unknown (the records before survive, a RecordError says why, nothing else
is raised), the named clusters, IAS zones, reporting configuration and the ZDO messages both ways."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import zcl, zdo
from protocols.errors import DecodeError, EncodeError

T = zcl.DataType

# A temperature sensor's Report Attributes (ZCL spec 2.5.11 layout): frame control 0x18 (global,
# server to client, default response disabled), sequence 0x01, command 0x0A, attribute 0x0000 int16
# 0x09D2 = 2514 -> 25.14 °C.
TEMPERATURE_REPORT = bytes.fromhex("18 01 0A 00 00 29 D2 09")
# A Read Attributes Response of the Basic cluster: attribute 0x0005 (model identifier) character string
# "TH01", then attribute 0x0004 unsupported (0x86).
BASIC_READ_RESPONSE = bytes.fromhex("18 2A 01 05 00 00 42 04 54 48 30 31 04 00 86")
# An IAS Zone status change notification (cluster-specific, command 0x00): alarm1 and battery low set,
# extended status 0, zone id 3, delay 0.
ZONE_CHANGE = bytes.fromhex("19 07 00 09 00 00 03 00 00")


def test_reference_temperature_report() -> None:
    header, offset = zcl.parse_header(TEMPERATURE_REPORT)
    assert header == zcl.Header(1, zcl.Command.REPORT_ATTRIBUTES)
    (record,) = zcl.parse_report(TEMPERATURE_REPORT, offset)
    assert (record.attribute, record.data_type, record.value) == (0x0000, T.INT16, 2514)
    shown = zcl.describe(0x0402, record.attribute, record.data_type, record.value, raw=record.raw)
    assert shown == zcl.Described("temperature_measurement", "temperature", 25.14, "°C")
    assert zcl.report_attributes(1, [(0, T.INT16, 2514)]) == TEMPERATURE_REPORT


def test_reference_read_response() -> None:
    header, offset = zcl.parse_header(BASIC_READ_RESPONSE)
    assert (header.sequence, header.command) == (0x2A, zcl.Command.READ_ATTRIBUTES_RESPONSE)
    assert zcl.parse_read_response(BASIC_READ_RESPONSE, offset) == [
        zcl.ReadRecord(0x0005, 0, T.CHARACTER_STRING, "TH01", b"\x04TH01"),
        zcl.ReadRecord(0x0004, zcl.Status.UNSUPPORTED_ATTRIBUTE),
    ]
    built = zcl.read_response(0x2A, [(5, 0, T.CHARACTER_STRING, "TH01"), (4, 0x86, None, None)])
    assert built == BASIC_READ_RESPONSE


def test_reference_zone_status_change() -> None:
    header, offset = zcl.parse_header(ZONE_CHANGE)
    assert header.cluster_specific and header.server_to_client and header.command == 0
    change = zcl.parse_zone_status_change(ZONE_CHANGE, offset)
    assert change == zcl.ZoneStatusChange(0x0009, 0, 3, 0)
    bits = zcl.zone_status_bits(change.zone_status)
    assert [name for name, on in bits.items() if on] == ["alarm1", "battery_low"]
    assert set(bits) == set(zcl.ZONE_STATUS_BITS) and len(bits) == 10
    assert zcl.zone_status_change(7, change) == ZONE_CHANGE


def test_manufacturer_specific_header() -> None:
    header = zcl.Header(5, 0x0A, manufacturer=0x115F)
    raw = zcl.encode_header(header)
    assert raw == bytes.fromhex("1C 5F 11 05 0A")
    assert zcl.parse_header(raw + b"\x00") == (header, 5)
    with pytest.raises(DecodeError):
        zcl.parse_header(bytes.fromhex("1C 5F 11 05"))
    with pytest.raises(DecodeError):
        zcl.parse_header(bytes.fromhex("1B 01 0A"))  # frame type 3 is reserved


# -- data types ------------------------------------------------------------------------------------------


def _values(data_type: int) -> st.SearchStrategy[Any]:
    name = zcl.type_name(data_type)
    if data_type == T.BOOL:
        return st.booleans()
    for prefix in ("uint", "data", "bitmap", "int"):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            bits = int(name[len(prefix) :])
            if prefix == "int":
                return st.integers(-(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1)
            top = (1 << bits) - (2 if prefix == "uint" else 1)
            return st.integers(0, top)
    if data_type in (T.ENUM8, T.ENUM16):
        return st.integers(0, (1 << (8 if data_type == T.ENUM8 else 16)) - 2)
    if data_type in (T.UTC_TIME, T.CLUSTER_ID, T.ATTRIBUTE_ID):
        return st.integers(0, (1 << (32 if data_type == T.UTC_TIME else 16)) - 2)
    if data_type == T.SEMI:
        return st.floats(width=16, allow_nan=False)
    if data_type == T.SINGLE:
        return st.floats(width=32, allow_nan=False)
    if data_type == T.DOUBLE:
        return st.floats(allow_nan=False)
    if data_type in (T.OCTET_STRING, T.LONG_OCTET_STRING):
        return st.binary(max_size=40)
    if data_type in (T.CHARACTER_STRING, T.LONG_CHARACTER_STRING):
        return st.text(max_size=20)
    if data_type == T.IEEE_ADDRESS:
        return st.integers(0, (1 << 64) - 1)
    if data_type in (T.TIME_OF_DAY, T.DATE):
        return st.binary(min_size=4, max_size=4)
    if data_type == T.SECURITY_KEY:
        return st.binary(min_size=16, max_size=16)
    return st.none()


typed_values = st.sampled_from(list(T)).flatmap(lambda t: st.tuples(st.just(int(t)), _values(t)))


@given(typed=typed_values, tail=st.binary(max_size=8))
def test_every_type_decodes_as_its_construct_definition_builds(typed: tuple[int, Any], tail: bytes) -> None:
    data_type, value = typed
    raw = zcl.encode_value(data_type, value)
    assert zcl.VALUE.build(int(value) if data_type == T.BOOL else value, type=data_type) == raw
    decoded, end = zcl.decode_value(data_type, raw + tail, 0)
    assert end == len(raw)
    reference = zcl.VALUE.parse(raw, type=data_type)
    if data_type == T.BOOL:
        assert decoded is bool(reference)
    elif isinstance(decoded, float):
        assert decoded == reference or (math.isnan(decoded) and math.isnan(reference))
    elif data_type == T.NO_DATA:
        assert decoded is None
    else:
        assert decoded == reference == value


@pytest.mark.parametrize(
    ("data_type", "raw"),
    [
        (T.UINT8, b"\xff"),
        (T.UINT16, b"\xff\xff"),
        (T.UINT48, b"\xff" * 6),
        (T.INT16, b"\x00\x80"),
        (T.INT24, b"\x00\x00\x80"),
        (T.ENUM8, b"\xff"),
        (T.BOOL, b"\xff"),
        (T.SINGLE, struct.pack("<f", math.nan)),
        (T.CHARACTER_STRING, b"\xff"),
        (T.LONG_OCTET_STRING, b"\xff\xff"),
    ],
)
def test_invalid_values_are_none(data_type: int, raw: bytes) -> None:
    assert zcl.decode_value(data_type, raw, 0) == (None, len(raw))
    if data_type != T.SINGLE:
        assert zcl.encode_value(data_type, None) == raw


def test_bitmaps_and_data_have_no_invalid_value() -> None:
    assert zcl.decode_value(T.BITMAP16, b"\xff\xff", 0) == (0xFFFF, 2)
    assert zcl.decode_value(T.DATA8, b"\xff", 0) == (0xFF, 1)
    with pytest.raises(EncodeError):
        zcl.encode_value(T.BITMAP8, None)


def test_type_names() -> None:
    assert [zcl.type_name(t) for t in (0x10, 0x21, 0x29, 0x30, 0x38, 0x41, 0x42, 0x44, 0xF0, 0x48)] == [
        "bool", "uint16", "int16", "enum8", "semi", "octet_string", "char_string", "long_char_string",
        "ieee_address", "0x48",
    ]  # fmt: skip


# -- records whose lengths lie or whose types are unknown -----------------------------------------------


def test_a_string_longer_than_the_payload_keeps_the_records_before() -> None:
    payload = bytes.fromhex("00 00 29 D2 09  01 00 42 10 41 42")  # the string says 16 bytes, 2 follow
    with pytest.raises(zcl.RecordError, match="says 16 bytes") as caught:
        zcl.parse_report(payload)
    assert [(r.attribute, r.value) for r in caught.value.records] == [(0, 2514)]


def test_an_unknown_type_keeps_the_records_before() -> None:
    payload = bytes.fromhex("00 00 29 D2 09  01 00 48 20 02 00 01 02")  # 0x48: an array
    with pytest.raises(zcl.RecordError, match="unknown data type 0x48") as caught:
        zcl.parse_report(payload)
    assert len(caught.value.records) == 1


def test_a_record_cut_short() -> None:
    with pytest.raises(zcl.RecordError, match="cut short"):
        zcl.parse_report(bytes.fromhex("00 00 29 D2"))
    with pytest.raises(zcl.RecordError, match="cut short"):
        zcl.parse_read_response(bytes.fromhex("00 00 00"))


@given(payload=st.binary(max_size=120))
def test_arbitrary_record_bytes_give_records_or_a_record_error(payload: bytes) -> None:
    for parse in (zcl.parse_report, zcl.parse_read_response):
        try:
            records = parse(payload, 0)
        except zcl.RecordError as err:
            records = err.records
        for record in records:
            assert 0 <= record.attribute <= 0xFFFF


@given(
    records=st.lists(st.tuples(st.integers(0, 0xFFFF), typed_values), max_size=6),
    garbage=st.binary(max_size=12),
)
def test_reports_round_trip_and_damage_after_them_keeps_them(
    records: list[tuple[int, tuple[int, Any]]], garbage: bytes
) -> None:
    flat = [(attribute, data_type, value) for attribute, (data_type, value) in records]
    frame = zcl.report_attributes(9, flat)
    _header, offset = zcl.parse_header(frame)
    parsed = zcl.parse_report(frame, offset)
    assert [(r.attribute, r.data_type) for r in parsed] == [(a, t) for a, t, _ in flat]
    try:
        damaged = zcl.parse_report(frame + garbage, offset)
    except zcl.RecordError as err:
        damaged = err.records
    assert damaged[: len(parsed)] == parsed


@given(header=st.binary(max_size=6))
def test_arbitrary_headers_decode_or_raise_decode_error(header: bytes) -> None:
    with contextlib.suppress(DecodeError):
        zcl.parse_header(header)


# -- clusters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "attribute", "data_type", "value", "expected"),
    [
        (0x0001, 0x0021, T.UINT8, 170, ("power_configuration", "battery_percentage", 85.0, "%")),
        (0x0001, 0x0020, T.UINT8, 30, ("power_configuration", "battery_voltage", 3.0, "V")),
        (0x0006, 0x0000, T.BOOL, True, ("on_off", "on_off", True, None)),
        (0x0402, 0x0000, T.INT16, -1050, ("temperature_measurement", "temperature", -10.5, "°C")),
        (0x0403, 0x0000, T.INT16, 1013, ("pressure_measurement", "pressure", 1013.0, "hPa")),
        (0x0405, 0x0000, T.UINT16, 4550, ("relative_humidity_measurement", "humidity", 45.5, "%")),
        (0x0406, 0x0000, T.BITMAP8, 1, ("occupancy_sensing", "occupancy", True, None)),
        (0x0500, 0x0001, T.ENUM16, 0x0028, ("ias_zone", "zone_type", "fire_sensor", None)),
        (0x0500, 0x0002, T.BITMAP16, 0x0005, ("ias_zone", "zone_status", ["alarm1", "tamper"], None)),
        (0x0702, 0x0300, T.ENUM8, 0, ("metering", "unit_of_measure", "kWh", None)),
        (0x0B04, 0x0510, T.INT8, 95, ("electrical_measurement", "power_factor", 0.95, None)),
        (0x0402, 0x0000, T.INT16, None, ("temperature_measurement", "temperature", None, "°C")),
    ],
)
def test_named_clusters(
    cluster: int, attribute: int, data_type: int, value: Any, expected: tuple[Any, ...]
) -> None:
    raw = zcl.encode_value(data_type, value)
    shown = zcl.describe(cluster, attribute, data_type, value, raw=raw)
    assert (shown.cluster_name, shown.name, shown.value, shown.unit) == expected


def test_multiplier_and_divisor_scale_once_known() -> None:
    raw = zcl.encode_value(T.UINT48, 1_234_567)
    unscaled = zcl.describe(0x0702, 0x0000, T.UINT48, 1_234_567, raw=raw)
    assert (unscaled.value, unscaled.unit) == (1_234_567, None)
    scaled = zcl.describe(0x0702, 0x0000, T.UINT48, 1_234_567, raw=raw, factors={0x0301: 1, 0x0302: 1000})
    assert (scaled.name, scaled.value, scaled.unit) == ("summation_delivered", 1234.567, "kWh")
    volts = zcl.describe(0x0B04, 0x0505, T.UINT16, 2301, raw=b"", factors={0x0600: 1, 0x0601: 10})
    assert (volts.value, volts.unit) == (230.1, "V")
    assert (0x0702, 0x0302) in zcl.SCALING_ATTRIBUTES and (0x0B04, 0x0601) in zcl.SCALING_ATTRIBUTES


def test_unknown_clusters_and_attributes_pass_through_raw() -> None:
    assert zcl.describe(0xFC00, 1, T.UINT16, 0x7E7D, raw=b"\x7d\x7e") == zcl.Described(
        None, None, "7d7e", None
    )
    assert zcl.describe(0x0402, 0x4000, T.UINT8, 1, raw=b"\x01") == zcl.Described(
        "temperature_measurement", None, "01", None
    )


# -- reporting configuration and reads ---------------------------------------------------------------------


@given(
    records=st.lists(
        st.builds(
            zcl.ReportingRecord,
            st.integers(0, 0xFFFF),
            st.sampled_from([T.INT16, T.UINT16, T.BOOL, T.BITMAP8, T.UINT48, T.SINGLE]),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.integers(0, 100),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_configure_reporting_round_trips(records: list[zcl.ReportingRecord]) -> None:
    frame = zcl.configure_reporting(3, records)
    header, offset = zcl.parse_header(frame)
    assert header.command == zcl.Command.CONFIGURE_REPORTING and not header.server_to_client
    parsed = zcl.parse_configure_reporting(frame, offset)
    for mine, theirs in zip(records, parsed, strict=True):
        analog = mine.data_type not in (T.BOOL, T.BITMAP8)
        assert theirs == zcl.ReportingRecord(
            mine.attribute, mine.data_type, mine.min_interval_s, mine.max_interval_s,
            mine.reportable_change if analog else None,
        )  # fmt: skip


def test_configure_reporting_responses() -> None:
    ok = zcl.configure_reporting_response(4, [(0, 0x0000)])
    assert zcl.parse_configure_reporting_response(ok, 3) == [(0, None)]
    mixed = zcl.configure_reporting_response(4, [(0, 0x0000), (0x86, 0x0010)])
    assert zcl.parse_configure_reporting_response(mixed, 3) == [(0, 0x0000), (0x86, 0x0010)]
    with pytest.raises(DecodeError):
        zcl.parse_configure_reporting_response(b"\x00\x00", 0)


def test_read_attributes_both_ways() -> None:
    frame = zcl.read_attributes(8, [0x0000, 0x0005])
    header, offset = zcl.parse_header(frame)
    assert header.command == zcl.Command.READ_ATTRIBUTES and not header.server_to_client
    assert zcl.parse_read_attributes(frame, offset) == [0x0000, 0x0005]
    with pytest.raises(DecodeError):
        zcl.parse_read_attributes(b"\x01", 0)


def test_zone_enroll_response() -> None:
    frame = zcl.zone_enroll_response(12, zone_id=5)
    header, offset = zcl.parse_header(frame)
    assert header.cluster_specific and not header.server_to_client and frame[offset:] == b"\x00\x05"


# -- ZDO -----------------------------------------------------------------------------------------------------

# A device announce as sniffed from an end device: sequence 0x81, nwk 0x3A5C, IEEE 00:13:A2:00:41:A7:B2:C3,
# capability 0x80 (allocate address).
DEVICE_ANNOUNCE = bytes.fromhex("81 5C 3A C3 B2 A7 41 00 A2 13 00 80")

zdo_messages = st.one_of(
    st.builds(
        zdo.DeviceAnnounce, st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1),
        st.integers(0, 255),
    ),
    st.builds(
        zdo.BindRequest, st.integers(0, 255), st.integers(0, (1 << 64) - 1), st.integers(0, 255),
        st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1), st.integers(0, 255),
    ),
    st.builds(zdo.BindResponse, st.integers(0, 255), st.integers(0, 255)),
    st.builds(zdo.PermitJoinRequest, st.integers(0, 255), st.integers(0, 255), st.integers(0, 1)),
    st.builds(zdo.PermitJoinResponse, st.integers(0, 255), st.integers(0, 255)),
)  # fmt: skip


def test_reference_device_announce() -> None:
    assert zdo.parse(zdo.ZdoCluster.DEVICE_ANNOUNCE, DEVICE_ANNOUNCE) == zdo.DeviceAnnounce(
        0x81, 0x3A5C, 0x0013A20041A7B2C3, 0x80
    )


@given(message=zdo_messages)
def test_zdo_messages_round_trip(message: zdo.Message) -> None:
    cluster, payload = zdo.encode(message)
    assert zdo.parse(cluster, payload) == message


@given(cluster=st.sampled_from(list(zdo.ZdoCluster)), payload=st.binary(max_size=30))
def test_arbitrary_zdo_payloads_decode_or_raise_decode_error(cluster: int, payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        zdo.parse(cluster, payload)
    assert zdo.parse(0x0005, payload) is None  # a ZDO message not decoded here
