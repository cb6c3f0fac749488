"""EncodedData: event data that carries its JSON and decodes it only when read as a mapping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.event import EncodedData
from gateway.delivery.buffer import encode_data

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
