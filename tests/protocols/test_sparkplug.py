"""The Sparkplug B payload codec (protocols/sparkplug.py): every datatype's value both ways (signed integers
in two's complement, as the specification says), payloads both ways, arbitrary bytes never raising anything
but DecodeError, and topics both ways."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import sparkplug as sp
from protocols.errors import DecodeError, EncodeError

INTS = {
    sp.DataType.INT8: st.integers(-(1 << 7), (1 << 7) - 1),
    sp.DataType.INT16: st.integers(-(1 << 15), (1 << 15) - 1),
    sp.DataType.INT32: st.integers(-(1 << 31), (1 << 31) - 1),
    sp.DataType.INT64: st.integers(-(1 << 63), (1 << 63) - 1),
    sp.DataType.UINT8: st.integers(0, 255),
    sp.DataType.UINT16: st.integers(0, 65535),
    sp.DataType.UINT32: st.integers(0, (1 << 32) - 1),
    sp.DataType.UINT64: st.integers(0, (1 << 64) - 1),
}
VALUES = st.one_of(
    *(st.tuples(st.just(t), s) for t, s in INTS.items()),
    st.tuples(st.just(sp.DataType.DOUBLE), st.floats(allow_nan=False)),
    st.tuples(st.just(sp.DataType.FLOAT), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    st.tuples(st.just(sp.DataType.BOOLEAN), st.booleans()),
    st.tuples(st.just(sp.DataType.STRING), st.text()),
    st.tuples(st.just(sp.DataType.BYTES), st.binary()),
    st.tuples(st.sampled_from(list(INTS)), st.none()),
)


@given(st.lists(VALUES, max_size=8), st.integers(0, 255), st.integers(0, (1 << 64) - 1))
def test_payloads_round_trip(values: list[tuple[sp.DataType, object]], seq: int, timestamp: int) -> None:
    payload = sp.Payload()
    payload.seq = seq
    payload.timestamp = timestamp
    for i, (datatype, value) in enumerate(values):
        metric = payload.metrics.add()
        metric.name = f"m{i}"
        metric.alias = i + 1
        metric.datatype = datatype
        sp.set_metric_value(metric, datatype, value)
    back = sp.decode_payload(payload.SerializeToString())
    assert (back.seq, back.timestamp, len(back.metrics)) == (seq, timestamp, len(values))
    for metric, (datatype, value) in zip(back.metrics, values, strict=True):
        got = sp.metric_value(metric)
        if datatype is sp.DataType.FLOAT and isinstance(value, float):
            assert isinstance(got, float) and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-37)
        else:
            assert got == value


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        payload = sp.decode_payload(raw)
        for metric in payload.metrics:
            with contextlib.suppress(DecodeError):
                sp.metric_value(metric, int(sp.DataType.INT32))


def test_signed_values_are_twos_complement_in_the_unsigned_fields() -> None:
    payload = sp.Payload()
    metric = payload.metrics.add()
    sp.set_metric_value(metric, sp.DataType.INT16, -2)
    assert metric.int_value == 0xFFFFFFFE  # the specification: sign-extended into the uint32 field
    metric.datatype = sp.DataType.INT16
    assert sp.metric_value(metric) == -2
    other = payload.metrics.add()
    sp.set_metric_value(other, sp.DataType.INT64, -1)
    assert other.long_value == (1 << 64) - 1


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (sp.DataType.INT8, 128),
        (sp.DataType.UINT8, -1),
        (sp.DataType.INT32, 1.5),
        (sp.DataType.BOOLEAN, 1),
        (sp.DataType.STRING, 3),
        (sp.DataType.DOUBLE, "x"),
        (sp.DataType.DATASET, 1),
    ],
)
def test_values_of_another_type_are_refused(datatype: sp.DataType, value: object) -> None:
    with pytest.raises(EncodeError):
        sp.set_metric_value(sp.Payload().metrics.add(), datatype, value)


def test_a_value_field_that_does_not_fit_the_datatype_is_a_decode_error() -> None:
    metric = sp.Payload().metrics.add()
    metric.datatype = sp.DataType.BOOLEAN
    metric.string_value = "true"
    with pytest.raises(DecodeError, match="string_value for datatype BOOLEAN"):
        sp.metric_value(metric)


IDS = st.text(st.characters(exclude_characters="/+#", codec="utf-8"), min_size=1, max_size=20)


@given(IDS, st.sampled_from(list(sp.MessageType)), IDS, IDS)
def test_topics_round_trip(group: str, message: sp.MessageType, edge: str, device: str) -> None:
    node_level = message in (
        sp.MessageType.NBIRTH,
        sp.MessageType.NDEATH,
        sp.MessageType.NDATA,
        sp.MessageType.NCMD,
    )
    topic = sp.topic(group, message, edge, None if node_level else device)
    assert sp.parse_topic(topic) == sp.TopicParts(group, message, edge, None if node_level else device)


def test_bad_topics_and_ids() -> None:
    for bad in ["spBv1.0/g/NBIRTH/e/d", "spBv1.0/g/DDATA/e", "spBv1.0/g/XDATA/e", "other/g/NBIRTH/e"]:
        with pytest.raises(DecodeError):
            sp.parse_topic(bad)
    for bad_id in ["", "a/b", "a+", "#"]:
        with pytest.raises(ValueError):
            sp.check_id("group", bad_id)
