"""Event data: Record (built as a mapping or as JSON on first use), EncodedData (a record that arrives as
JSON, decoded only when read as a mapping), the one encoder, and the drivers' records."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.event import EncodedData, Record, encode, encode_data
from drivers.llrp import _Read as LlrpRead
from drivers.r2000 import _Read as R2000Read
from drivers.rfid import ReadShape, UriCache
from protocols import r2000
from protocols.epc import epc_uri
from protocols.llrp.tags import TagReport

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
MAPPINGS = st.dictionaries(st.text(), JSON_VALUES, max_size=8)


@given(MAPPINGS)
def test_reads_as_the_mapping_its_json_encodes(mapping: dict[str, Any]) -> None:
    data = EncodedData(encode_data(mapping)[0])
    assert dict(data) == mapping
    assert data == mapping and mapping == data
    assert len(data) == len(mapping)
    assert list(data) == list(mapping)
    for key, value in mapping.items():
        assert key in data
        assert data[key] == value
        assert data.get(key) == value
    assert "\x00absent" not in data or "\x00absent" in mapping
    assert data.get("\x00absent", 7) == mapping.get("\x00absent", 7)


def test_a_missing_key_raises_key_error_like_a_dict() -> None:
    data = EncodedData(b'{"epc":"3008","antenna":1}')
    with pytest.raises(KeyError):
        data["rssi_dbm"]
    assert data.get("rssi_dbm") is None


def test_two_encodings_of_equal_mappings_are_equal_and_neither_is_hashable() -> None:
    a = EncodedData(b'{"a":1,"b":2}')
    b = EncodedData(b'{"b":2,"a":1}')
    assert a == b and a == EncodedData(b'{"a":1,"b":2}')
    assert a != EncodedData(b'{"a":1}')
    assert a != [("a", 1), ("b", 2)]
    with pytest.raises(TypeError):
        hash(a)


def test_repr_shows_the_json() -> None:
    assert repr(EncodedData('{"name":"車線"}'.encode())) == 'EncodedData(\'{"name":"車線"}\')'


def test_its_json_is_kept_as_given_not_re_encoded() -> None:
    raw = b'{"frequency_mhz":916.0,"epc":"30"}'
    data = EncodedData(raw)
    assert data["frequency_mhz"] == 916.0
    assert data.json is raw
    assert json.loads(data.json) == dict(data)


# ---- Record: the hot path's record, built as a mapping or as JSON on first use ---------------------------


class Point(Record):
    """A record as a driver writes one that leaves its JSON to the default encoding."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__()
        self._values = values

    def _build(self) -> dict[str, Any]:
        return dict(self._values)


@given(MAPPINGS)
def test_a_record_reads_as_its_mapping_and_encodes_as_the_buffer_would(mapping: dict[str, Any]) -> None:
    data = Point(mapping)
    assert dict(data) == mapping and data == mapping and mapping == data
    assert len(data) == len(mapping) and list(data) == list(mapping)
    for key, value in mapping.items():
        assert key in data and data[key] == value and data.get(key) == value
    assert data.get("\x00absent", 7) == mapping.get("\x00absent", 7)
    assert data.to_dict() == mapping and data.to_dict() is not data.to_dict()
    assert data.json == encode_data(mapping)[0]
    assert data == EncodedData(data.json) and EncodedData(data.json) == data


def test_a_record_builds_only_what_is_asked_and_only_once() -> None:
    read = Point({"epc": "3008", "antenna": 1})
    assert read["antenna"] == 1
    assert read._encoded is None  # read as a mapping: no JSON
    built = read._decoded
    assert read.json == b'{"epc":"3008","antenna":1}'
    assert read._decoded is built and read.json is read.json
    with pytest.raises(KeyError):
        read["rssi_dbm"]
    with pytest.raises(TypeError):
        hash(read)
    assert repr(read) == 'Point(\'{"epc":"3008","antenna":1}\')'


def test_a_record_json_cannot_carry_raises_value_error() -> None:
    with pytest.raises(ValueError, match="JSON"):
        _ = Point({"rssi_dbm": math.nan}).json


def test_there_is_one_encoder() -> None:
    assert encode({"name": '車線 "1"\t', "f": 916.0}) == '{"name":"車線 \\"1\\"\\t","f":916.0}'
    assert encode_data({"f": math.inf}) == (b'{"f":null}', True)


# The drivers' reads: their JSON, filled into a template, must be exactly encode_data of their mapping,
# for any antenna name (escapes, control characters, non-ASCII, surrogates aside: config names are str).
NAMES = st.dictionaries(st.integers(1, 8), st.text(min_size=1, max_size=64), max_size=8)
EPCS = st.binary(min_size=0, max_size=62) | st.sampled_from([bytes.fromhex("300833B2DDD9014000000001")])


@given(
    NAMES,
    st.tuples(
        st.integers(0, 255),
        st.just(0x89),
        st.integers(1, 8),
        st.sampled_from([i for i, mhz in enumerate(r2000.FREQUENCY_MHZ) if mhz is not None]),
        st.integers(0, 0xFFFF),
        EPCS,
        st.integers(0, len(r2000.RSSI_DBM) - 1),
    ),
)
def test_an_r2000_read_encodes_as_the_buffer_would(names: dict[int, str], tag: r2000.RawTag) -> None:
    read = R2000Read(tag, ReadShape(names, UriCache()))
    as_json = R2000Read(tag, ReadShape(names, UriCache()))
    mapping = dict(read)
    assert as_json.json == encode_data(mapping)[0]
    assert json.loads(as_json.json) == mapping
    assert mapping["epc"] == tag[5].hex().upper() and mapping["antenna_name"] == names.get(tag[2])
    assert mapping.get("epc_uri") == (epc_uri(tag[5]) or None)


OPTIONAL_INTS = st.none() | st.integers(-(2**31), 2**32)


@given(
    NAMES,
    st.tuples(EPCS, st.none() | st.integers(1, 9), *[OPTIONAL_INTS] * 3, st.none() | st.integers(0, 0xFFFF)),
)
def test_an_llrp_read_encodes_as_the_buffer_would(names: dict[int, str], fields: tuple[Any, ...]) -> None:
    epc, antenna, rssi, channel, seen, pc = fields
    tag = TagReport(epc, antenna=antenna, peak_rssi=rssi, channel_index=channel, seen_count=seen, pc=pc)
    read = LlrpRead(tag, ReadShape(names, UriCache()))
    as_json = LlrpRead(tag, ReadShape(names, UriCache()))
    mapping = dict(read)
    assert as_json.json == encode_data(mapping)[0]
    assert json.loads(as_json.json) == mapping
    assert mapping["antenna_name"] == (None if tag.antenna is None else names.get(tag.antenna))
    assert mapping.get("epc_uri") == (epc_uri(tag.epc) or None)
