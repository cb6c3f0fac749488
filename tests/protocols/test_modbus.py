"""protocols.modbus: register codecs for every type and byte order, scale/offset, the read planner and the
reply checks. Known answers come from the Modbus specifications' conventions (big-endian registers, CRC sent
low byte first) and from pymodbus's independent CRC implementation."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from protocols import modbus as mb
from protocols.errors import EncodeError
from protocols.modbus import ByteOrder, DataType, ReplyCheck, Span, Table

ORDERS = list(ByteOrder)
NUMERIC = [t for t in DataType if t.is_numeric]

# -- known answers ---------------------------------------------------------------------------------------

# 230.1 as float32 is 0x43661999A... big endian bytes 43 66 19 9A.
F32_230_1 = {
    ByteOrder.ABCD: [0x4366, 0x199A],
    ByteOrder.CDAB: [0x199A, 0x4366],
    ByteOrder.BADC: [0x6643, 0x9A19],
    ByteOrder.DCBA: [0x9A19, 0x6643],
}


@pytest.mark.parametrize("order", ORDERS)
def test_float32_in_every_byte_order(order: ByteOrder) -> None:
    assert struct.pack(">f", 230.1) == bytes.fromhex("4366199a")
    assert mb.decode(F32_230_1[order], DataType.FLOAT32, order) == 230.1
    assert mb.encode(230.1, DataType.FLOAT32, order) == F32_230_1[order]


def test_integers_known_answers() -> None:
    assert mb.decode([0xFFFF, 0xFFFE], DataType.INT32) == -2
    assert mb.decode([0xFFFE, 0xFFFF], DataType.INT32, ByteOrder.CDAB) == -2
    assert mb.decode([0x0001, 0x0000], DataType.UINT32, ByteOrder.CDAB) == 1
    assert mb.decode([0x1234], DataType.UINT16, ByteOrder.BADC) == 0x3412
    assert mb.decode([0x8000], DataType.INT16) == -32768
    assert mb.decode([0x0080], DataType.INT16, ByteOrder.DCBA) == -32768
    assert mb.decode([0x0102, 0x0304, 0x0506, 0x0708], DataType.UINT64) == 0x0102030405060708
    assert mb.decode([0x0708, 0x0506, 0x0304, 0x0102], DataType.UINT64, ByteOrder.CDAB) == 0x0102030405060708
    assert mb.decode([0x0201, 0x0403, 0x0605, 0x0807], DataType.UINT64, ByteOrder.BADC) == 0x0102030405060708
    assert mb.decode([0x0807, 0x0605, 0x0403, 0x0201], DataType.UINT64, ByteOrder.DCBA) == 0x0102030405060708
    assert mb.decode([0x3FF0, 0, 0, 0], DataType.FLOAT64) == 1.0


def test_strings_bits_and_bools() -> None:
    assert mb.decode([0x4142, 0x4300], DataType.STRING, length=3) == "ABC"
    assert mb.decode([0x4241, 0x0043], DataType.STRING, ByteOrder.BADC, length=3) == "ABC"
    assert mb.decode([0x4142, 0x2020], DataType.STRING, length=4) == "AB"  # trailing spaces stripped
    assert mb.encode("ABC", DataType.STRING, length=4) == [0x4142, 0x4300]
    assert mb.decode([0b1000], DataType.BIT, bit=3) is True
    assert mb.decode([0b0111], DataType.BIT, bit=3) is False
    assert mb.decode([1], DataType.BOOL) is True
    assert mb.encode(True, DataType.BIT, bit=15) == [0x8000]


def test_non_finite_floats_are_none() -> None:
    assert mb.decode([0x7FC0, 0x0000], DataType.FLOAT32) is None  # NaN: "not available"
    assert mb.decode([0x7F80, 0x0000], DataType.FLOAT32) is None  # +inf
    assert mb.decode([0x7FF8, 0, 0, 0], DataType.FLOAT64) is None


def test_register_counts_and_limits() -> None:
    assert [mb.register_count(t) for t in NUMERIC] == [1, 1, 2, 2, 4, 4, 2, 4]
    assert mb.register_count(DataType.STRING, 5) == 3
    assert mb.read_limit(Table.HOLDING) == 125
    assert mb.read_limit(Table.COIL) == 2000
    with pytest.raises(ValueError):
        mb.register_count(DataType.STRING)
    with pytest.raises(ValueError):
        mb.decode([1, 2], DataType.UINT16)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(70000, DataType.UINT16), (-1, DataType.UINT32), (1 << 63, DataType.INT64), (1.5, DataType.INT16)],
)
def test_values_that_do_not_fit_are_refused(value: float, dtype: DataType) -> None:
    with pytest.raises(EncodeError):
        mb.encode(value, dtype)


def test_encode_refuses_text_that_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        mb.encode("too long", DataType.STRING, length=4)
    with pytest.raises(EncodeError):
        mb.encode("€", DataType.STRING, length=4)
    with pytest.raises(EncodeError):
        mb.encode("1", DataType.FLOAT32)


def test_scale_and_offset_give_the_meant_decimals() -> None:
    assert mb.make_scaler(DataType.UINT16, 0.1)(2301) == 230.1
    assert mb.make_scaler(DataType.INT16, 0.01, -40)(6543) == 25.43
    assert mb.make_scaler(DataType.UINT32, 10)(7) == 70
    assert isinstance(mb.make_scaler(DataType.UINT32, 10, 5)(7), int)
    assert mb.make_scaler(DataType.FLOAT32, 1000)(1.2345) == 1234.5
    assert mb.make_scaler(DataType.UINT16)(7) == 7
    assert mb.make_scaler(DataType.STRING, 2.0)("x") == "x"
    assert mb.make_scaler(DataType.FLOAT32, 2.0)(None) is None


# -- round trips -----------------------------------------------------------------------------------------

INT_BOUNDS = {
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}


@given(data=st.data(), dtype=st.sampled_from(list(INT_BOUNDS)), order=st.sampled_from(ORDERS))
def test_integers_round_trip(data: st.DataObject, dtype: DataType, order: ByteOrder) -> None:
    low, high = INT_BOUNDS[dtype]
    value = data.draw(st.integers(low, high))
    words = mb.encode(value, dtype, order)
    assert len(words) == mb.register_count(dtype)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert mb.decode(words, dtype, order) == value


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False), order=st.sampled_from(ORDERS))
def test_float32_round_trips_to_the_same_float32(value: float, order: ByteOrder) -> None:
    decoded = mb.decode(mb.encode(value, DataType.FLOAT32, order), DataType.FLOAT32, order)
    assert isinstance(decoded, float)
    assert struct.pack(">f", decoded) == struct.pack(">f", value)
    assert len(repr(decoded)) <= len(repr(value))  # never longer than needed


@given(value=st.floats(allow_nan=False, allow_infinity=False), order=st.sampled_from(ORDERS))
def test_float64_round_trips(value: float, order: ByteOrder) -> None:
    assert mb.decode(mb.encode(value, DataType.FLOAT64, order), DataType.FLOAT64, order) == value


@given(
    text=st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=40),
    extra=st.integers(0, 5),
    order=st.sampled_from(ORDERS),
)
def test_strings_round_trip(text: str, extra: int, order: ByteOrder) -> None:
    length = max(1, len(text) + extra)
    words = mb.encode(text, DataType.STRING, order, length=length)
    assert len(words) == (length + 1) // 2
    assert mb.decode(words, DataType.STRING, order, length=length) == text


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
    dtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(ORDERS),
)
def test_words_round_trip_through_values(words: list[int], dtype: DataType, order: ByteOrder) -> None:
    n = mb.register_count(dtype)
    value = mb.decode(words[:n], dtype, order)
    if value is None:  # NaN or infinity: no value to encode back
        assert dtype in (DataType.FLOAT32, DataType.FLOAT64)
        return
    assert mb.encode(value, dtype, order) == words[:n]


@given(word=st.integers(0, 0xFFFF), bit=st.integers(0, 15))
def test_bits_of_a_register(word: int, bit: int) -> None:
    assert mb.decode([word], DataType.BIT, bit=bit) == bool(word >> bit & 1)
    assert mb.decode(mb.encode(True, DataType.BIT, bit=bit), DataType.BIT, bit=bit) is True


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8),
    offset=st.integers(0, 4),
    dtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(ORDERS),
)
def test_compiled_decoder_reads_at_an_offset(
    words: list[int], offset: int, dtype: DataType, order: ByteOrder
) -> None:
    n = mb.register_count(dtype)
    direct = mb.decode(words[offset : offset + n], dtype, order)
    at_offset = mb.make_decoder(dtype, order)(words, offset)
    assert direct == at_offset or (direct is None and at_offset is None)


@given(raw=st.integers(-(1 << 31), (1 << 31) - 1), places=st.integers(0, 4), offset=st.integers(-100, 100))
def test_scaling_integers_keeps_only_meaningful_decimals(raw: int, places: int, offset: int) -> None:
    scale = 10.0**-places
    value = mb.make_scaler(DataType.INT32, scale, offset)(raw)
    assert isinstance(value, int | float)
    assert math.isclose(value, raw * scale + offset, rel_tol=1e-12, abs_tol=10.0**-places)
    assert round(value, places) == value


# -- the planner -----------------------------------------------------------------------------------------


@st.composite
def point_spans(draw: st.DrawFn) -> list[Span]:
    """Non-overlapping points in the four tables, as a device map would have them."""
    spans: list[Span] = []
    for table in draw(st.lists(st.sampled_from(list(Table)), min_size=1, max_size=4, unique=True)):
        address = draw(st.integers(0, 200))
        for _ in range(draw(st.integers(1, 25))):
            limit = 40 if table.is_bits else 20
            count = draw(st.integers(1, limit))
            if address + count > 65536:
                break
            spans.append(Span(table, address, count))
            address += count + draw(st.one_of(st.just(0), st.integers(0, 40)))
    return spans


def _check_plan(spans: list[Span], requests: list[mb.ReadRequest], max_gap: int) -> None:
    covered = sorted(i for r in requests for i in r.points)
    assert covered == list(range(len(spans)))  # every point in exactly one request
    for r in requests:
        assert 1 <= r.count <= mb.read_limit(r.table)
        members = sorted((spans[i] for i in r.points), key=lambda s: s.address)
        assert all(s.table == r.table for s in members)
        assert r.address == members[0].address  # tight at the start ...
        assert r.end == max(s.end for s in members)  # ... and at the end
        for a, b in itertools.pairwise(members):
            assert b.address - a.end <= max_gap  # no gap wider than allowed inside a request


@given(spans=point_spans(), max_gap=st.integers(0, 40))
def test_plan_covers_every_point_once_within_the_limits(spans: list[Span], max_gap: int) -> None:
    requests = mb.plan(spans, max_gap=max_gap)
    _check_plan(spans, requests, max_gap)
    # Greedy is not wasteful: two neighbouring reads of one table could not have been one.
    by_table = sorted(requests, key=lambda r: (r.table, r.address))
    for a, b in itertools.pairwise(by_table):
        if a.table == b.table:
            assert b.address - a.end > max_gap or b.end - a.address > mb.read_limit(a.table)


def test_plan_merges_across_small_gaps_only() -> None:
    spans = [Span(Table.HOLDING, 0, 2), Span(Table.HOLDING, 10, 2), Span(Table.HOLDING, 40, 2)]
    assert [(r.address, r.count, r.points) for r in mb.plan(spans)] == [(0, 12, (0, 1)), (40, 2, (2,))]
    assert [(r.address, r.count) for r in mb.plan(spans, max_gap=0)] == [(0, 2), (10, 2), (40, 2)]
    assert [(r.address, r.count) for r in mb.plan(spans, max_gap=30)] == [(0, 42)]


def test_plan_respects_the_125_register_and_2000_bit_limits() -> None:
    registers = [Span(Table.HOLDING, 2 * i, 2) for i in range(100)]  # 200 contiguous registers
    assert [r.count for r in mb.plan(registers)] == [124, 76]
    bits = [Span(Table.COIL, i, 1) for i in range(4500)]
    assert [r.count for r in mb.plan(bits)] == [2000, 2000, 500]
    with pytest.raises(ValueError):
        mb.plan([Span(Table.INPUT, 0, 126)])


def test_tables_never_merge() -> None:
    spans = [Span(Table.HOLDING, 0, 1), Span(Table.INPUT, 1, 1), Span(Table.COIL, 0, 1)]
    assert len(mb.plan(spans)) == 3


@given(spans=point_spans(), max_gap=st.integers(0, 40), data=st.data())
def test_splitting_converges_to_single_points(spans: list[Span], max_gap: int, data: st.DataObject) -> None:
    requests = mb.plan(spans, max_gap=max_gap)
    splits = 0
    while any(len(r.points) > 1 for r in requests):
        candidates = [r for r in requests if len(r.points) > 1]
        victim = data.draw(st.sampled_from(candidates))
        parts = mb.split(victim, spans)
        assert len(parts) == 2
        assert sorted(parts[0].points + parts[1].points) == sorted(victim.points)
        assert all(victim.address <= p.address and p.end <= victim.end for p in parts)
        requests.remove(victim)
        requests.extend(parts)
        splits += 1
        _check_plan(spans, requests, max_gap)
    assert splits == len(spans) - len(mb.plan(spans, max_gap=max_gap))  # n - 1 splits per request
    assert all(mb.split(r, spans) == () for r in requests)


# -- CRC and reply checks --------------------------------------------------------------------------------


def test_crc16_known_answer() -> None:
    # Read one holding register of unit 1: 01 03 00 00 00 01, CRC 84 0A on the wire.
    assert mb.rtu_frame(1, bytes.fromhex("0300000001")) == bytes.fromhex("010300000001840a")


@given(data=st.binary(max_size=300))
def test_crc16_matches_pymodbus(data: bytes) -> None:
    assert mb.crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def _rtu_reply(unit: int, function: int, payload: bytes) -> bytes:
    return mb.rtu_frame(unit, bytes((function, len(payload))) + payload)


def _tcp_reply(tid: int, unit: int, function: int, payload: bytes) -> bytes:
    pdu = bytes((function, len(payload))) + payload
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes((unit,)) + pdu


def test_rtu_reply_checks() -> None:
    good = _rtu_reply(7, 3, bytes(4))
    assert mb.check_rtu_reply(good, 7, 3, 2) == (ReplyCheck.OK, 9)
    assert mb.check_rtu_reply(good + b"\x00\x01", 7, 3, 2) == (ReplyCheck.OK, 9)
    assert mb.check_rtu_reply(good[:6], 7, 3, 2) == (ReplyCheck.INCOMPLETE, 0)
    assert mb.check_rtu_reply(good[:-1] + b"\x00", 7, 3, 2)[0] is ReplyCheck.BAD_CRC
    assert mb.check_rtu_reply(good, 8, 3, 2)[0] is ReplyCheck.WRONG_UNIT
    assert mb.check_rtu_reply(good, 7, 3, 3)[0] is ReplyCheck.WRONG_LENGTH
    assert mb.check_rtu_reply(mb.rtu_frame(7, b"\x83\x02"), 7, 3, 2) == (ReplyCheck.EXCEPTION, 5)
    assert mb.check_rtu_reply(_rtu_reply(7, 1, b"\x05"), 7, 1, 3)[0] is ReplyCheck.OK  # 3 bits in one byte
    assert mb.check_rtu_reply(_rtu_reply(7, 4, bytes(4)), 7, 3, 2)[0] is ReplyCheck.WRONG_FUNCTION


def test_tcp_reply_checks() -> None:
    good = _tcp_reply(9, 7, 3, bytes(4))
    assert mb.check_tcp_reply(good, 7, 3, 2, 9) == (ReplyCheck.OK, len(good))
    assert mb.check_tcp_reply(good, 7, 3, 2, 8)[0] is ReplyCheck.STALE
    assert mb.check_tcp_reply(good, 6, 3, 2, 9)[0] is ReplyCheck.WRONG_UNIT
    assert mb.check_tcp_reply(good, 7, 3, 1, 9)[0] is ReplyCheck.WRONG_LENGTH
    assert mb.check_tcp_reply(good, 7, 4, 2, 9)[0] is ReplyCheck.WRONG_FUNCTION
    assert mb.check_tcp_reply(good[:-1], 7, 3, 2, 9)[0] is ReplyCheck.INCOMPLETE
    assert mb.check_tcp_reply(b"\x00\x09\x00\x01" + good[4:], 7, 3, 2, 9)[0] is ReplyCheck.BAD_HEADER
    exception = b"\x00\x09\x00\x00\x00\x03\x07\x83\x02"
    assert mb.check_tcp_reply(exception, 7, 3, 2, 9) == (ReplyCheck.EXCEPTION, 9)


@given(
    unit=st.integers(1, 247),
    function=st.sampled_from([1, 2, 3, 4]),
    payload=st.binary(min_size=1, max_size=250),
    position=st.integers(0, 300),
    flip=st.integers(1, 255),
)
def test_a_damaged_rtu_reply_is_never_ok(
    unit: int, function: int, payload: bytes, position: int, flip: int
) -> None:
    count = len(payload) * 8 if function in (1, 2) else len(payload) // 2
    assume(count > 0 and (function in (1, 2) or len(payload) % 2 == 0))
    frame = bytearray(_rtu_reply(unit, function, payload))
    assert mb.check_rtu_reply(frame, unit, function, count)[0] is ReplyCheck.OK
    frame[position % len(frame)] ^= flip
    assert mb.check_rtu_reply(frame, unit, function, count)[0] is not ReplyCheck.OK


@given(
    data=st.binary(max_size=300),
    unit=st.integers(0, 255),
    function=st.integers(1, 4),
    tid=st.integers(0, 65535),
)
def test_reply_checks_never_raise_on_arbitrary_bytes(data: bytes, unit: int, function: int, tid: int) -> None:
    verdict, size = mb.check_rtu_reply(data, unit, function, 10)
    assert 0 <= size <= len(data)
    assert (size == 0) == (verdict is ReplyCheck.INCOMPLETE)
    verdict, size = mb.check_tcp_reply(data, unit, function, 10, tid)
    assert 0 <= size <= len(data)
