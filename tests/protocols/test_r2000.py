"""The R2000 0xA0 codec and framer: reference frames, both directions of every message, the framer contract
(framer_suite.py) and what is particular to this framer (its 8-bit checksum's false starts, the tag fast
path)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols import r2000
from protocols.errors import DecodeError, EncodeError

from .framer_suite import FramerSuite, split

# Reference frames from public documentation of the protocol.
RESET = bytes.fromhex("A0 03 01 70 EC")
REAL_TIME_INVENTORY = bytes.fromhex("A0 04 01 89 01 D1")
TAG_FRAME = bytes.fromhex("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB")
GET_FIRMWARE_VERSION = bytes.fromhex("A0 03 01 72 EA")


def frame_of(raw: bytes) -> r2000.Frame:
    return r2000.decode_frame(raw)


# ------------------------------------------------------------------------------------------ reference frames


def test_reference_reset() -> None:
    assert r2000.reset() == RESET
    assert r2000.parse_request(frame_of(RESET)) == r2000.Reset()


def test_reference_real_time_inventory() -> None:
    assert r2000.real_time_inventory(1) == REAL_TIME_INVENTORY
    assert r2000.parse_request(frame_of(REAL_TIME_INVENTORY)) == r2000.RealTimeInventory(1)


def test_reference_tag_frame() -> None:
    frame = frame_of(TAG_FRAME)
    assert frame == r2000.Frame(1, 0x89, TAG_FRAME[4:-1])
    tag = r2000.parse_reply(frame)
    assert tag == r2000.TagRead(
        antenna=1,
        frequency_index=35,
        pc=0x3000,
        epc=bytes.fromhex("300833B2DDD9014000000001"),
        rssi=0x37,
    )
    assert isinstance(tag, r2000.TagRead)
    assert tag.frequency_mhz == 916.0
    assert tag.rssi_dbm == 0x37 - 130
    assert r2000.encode_reply(tag) == TAG_FRAME


def test_reference_firmware_version_request() -> None:
    assert r2000.get_firmware_version() == GET_FIRMWARE_VERSION


def test_checksum_is_twos_complement_of_the_sum() -> None:
    assert r2000.checksum(bytes([0xA0, 0x03, 0x01, 0x72])) == 0xEA
    assert r2000.checksum(bytes([1, 2, 3, 4])) == 246
    assert r2000.checksum(bytes([134, 200, 3, 253])) == 178


# ------------------------------------------------------------------------------------------ conversions


@pytest.mark.parametrize(
    ("index", "mhz"),
    [(0, 865.0), (5, 867.5), (6, 868.0), (7, 902.0), (14, 905.5), (35, 916.0), (59, 928.0), (60, None)],
)
def test_frequency_table(index: int, mhz: float | None) -> None:
    assert r2000.frequency_mhz(index) == mhz


@pytest.mark.parametrize(("raw", "dbm"), [(127, -2), (98, -31), (90, -39), (89, -41), (55, -75), (0, -130)])
def test_rssi_table(raw: int, dbm: int) -> None:
    assert r2000.rssi_dbm(raw) == dbm


@given(st.integers(0, 127))
def test_rssi_raw_inverts_rssi_dbm(raw: int) -> None:
    assert r2000.rssi_raw(r2000.rssi_dbm(raw)) == raw


# ------------------------------------------------------------------------------------------ frames


def test_decode_frame_errors_say_what_is_wrong() -> None:
    with pytest.raises(DecodeError, match="bad head 0x55"):
        r2000.decode_frame(b"\x55" + RESET[1:])
    with pytest.raises(DecodeError, match="length mismatch: Len says 19, 17 bytes follow"):
        r2000.decode_frame(TAG_FRAME[:-2])
    with pytest.raises(DecodeError, match="bad checksum: expected 0xBB, found 0x12"):
        r2000.decode_frame(TAG_FRAME[:-1] + b"\x12")
    with pytest.raises(DecodeError, match="bad length"):
        r2000.decode_frame(bytes([0xA0, 0x02, 0x01, 0x70, 0xED]))
    with pytest.raises(DecodeError, match="truncated"):
        r2000.decode_frame(b"\xa0\x03")


def test_encode_frame_rejects_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        r2000.encode_frame(r2000.Frame(1, 0x89, bytes(253)))
    with pytest.raises(EncodeError):
        r2000.encode_frame(r2000.Frame(256, 0x89, b""))


frames = st.builds(
    r2000.Frame,
    address=st.integers(0, 255),
    command=st.integers(0, 255),
    data=st.binary(max_size=r2000.MAX_DATA),
)


@given(frames)
def test_frame_round_trip(frame: r2000.Frame) -> None:
    raw = r2000.encode_frame(frame)
    assert raw[0] == r2000.HEAD and raw[1] == len(frame.data) + 3
    assert sum(raw) & 0xFF == 0
    assert r2000.decode_frame(raw) == frame


# ------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r2000.reset(address=5), r2000.Reset()),
        (r2000.get_firmware_version(), r2000.GetFirmwareVersion()),
        (r2000.set_work_antenna(3), r2000.SetWorkAntenna(3)),
        (r2000.get_work_antenna(), r2000.GetWorkAntenna()),
        (r2000.real_time_inventory(255), r2000.RealTimeInventory(255)),
        (
            r2000.fast_switch_inventory([(1, 1), (2, 3)], interval_ms=5, repeat=2),
            r2000.FastSwitchInventory(((1, 1), (2, 3)), 5, 2),
        ),
    ],
)
def test_request_builders_parse_back(raw: bytes, expected: r2000.Request) -> None:
    assert r2000.parse_request(frame_of(raw)) == expected
    assert expected.encode(frame_of(raw).address) == raw


def test_set_work_antenna_is_zero_based_on_the_wire() -> None:
    assert r2000.set_work_antenna(1) == bytes.fromhex("A0 04 01 74 00 E7")
    assert frame_of(r2000.set_work_antenna(8)).data == b"\x07"
    with pytest.raises(EncodeError):
        r2000.set_work_antenna(0)
    with pytest.raises(DecodeError, match="antenna id 8"):
        r2000.parse_request(r2000.Frame(1, 0x74, b"\x08"))


def test_fast_switch_four_antenna_form() -> None:
    raw = r2000.fast_switch_inventory([(1, 1), (2, 1), (3, 1), (4, 1)], interval_ms=0, repeat=1)
    assert raw == bytes.fromhex("A0 0D 01 8A 00 01 01 01 02 01 03 01 00 01 BD")
    # Unused slots carry antenna 0xFF ("skip").
    data = frame_of(r2000.fast_switch_inventory([(2, 4)])).data
    assert data == bytes([1, 4, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0, 1])


def test_fast_switch_eight_antenna_form() -> None:
    pairs = [(a, 1) for a in range(1, 9)]
    frame = frame_of(r2000.fast_switch_inventory(pairs, interval_ms=2, repeat=3))
    assert len(frame.data) + 3 == 0x20  # Len of the 8-antenna form
    assert frame.data[:16] == bytes(b for a in range(8) for b in (a, 1))
    assert frame.data[16] == 2  # interval
    assert frame.data[17:22] == bytes(5)  # reserved
    assert frame.data[22] == 1  # session S1 by default
    assert frame.data[-1] == 3  # repeat
    parsed = r2000.parse_request(frame)
    assert parsed == r2000.FastSwitchInventory(tuple(pairs), 2, 3, session=1)


def test_fast_switch_skips_ids_above_seven_and_rejects_bad_lengths() -> None:
    data = bytes([0, 1, 9, 1, 0xFF, 1, 3, 2, 0, 1])
    assert r2000.parse_request(r2000.Frame(1, 0x8A, data)) == r2000.FastSwitchInventory(((1, 1), (4, 2)))
    with pytest.raises(DecodeError, match="10 or 29"):
        r2000.parse_request(r2000.Frame(1, 0x8A, bytes(11)))
    with pytest.raises(EncodeError):
        r2000.FastSwitchInventory(()).encode()
    with pytest.raises(EncodeError):
        r2000.FastSwitchInventory(tuple((a, 1) for a in range(1, 10))).encode()


def test_parse_request_rejects_unknown_and_malformed() -> None:
    with pytest.raises(DecodeError, match="0x99"):
        r2000.parse_request(r2000.Frame(1, 0x99, b""))
    with pytest.raises(DecodeError):
        r2000.parse_request(r2000.Frame(1, 0x70, b"\x00"))
    with pytest.raises(DecodeError):
        r2000.parse_request(r2000.Frame(1, 0x89, b""))


antenna = st.integers(1, 8)
pairs = st.lists(st.tuples(antenna, st.integers(0, 255)), min_size=1, max_size=8)


@st.composite
def fast_switch_requests(draw: st.DrawFn) -> r2000.FastSwitchInventory:
    antennas = tuple(draw(pairs))
    eight = len(antennas) > 4 or draw(st.booleans())
    if not eight:
        return r2000.FastSwitchInventory(antennas, draw(st.integers(0, 255)), draw(st.integers(0, 255)))
    return r2000.FastSwitchInventory(
        antennas,
        draw(st.integers(0, 255)),
        draw(st.integers(0, 255)),
        session=draw(st.integers(0, 3)),
        target=draw(st.integers(0, 1)),
        phase=draw(st.booleans()),
    )


powers = st.sampled_from([1, 4, 8]).flatmap(
    lambda n: st.lists(st.integers(0, r2000.MAX_POWER_DBM), min_size=n, max_size=n).map(tuple)
)
"""Output powers in one of the three forms: every antenna, a 4-port or an 8-port reader."""

requests = st.one_of(
    st.just(r2000.Reset()),
    st.just(r2000.GetFirmwareVersion()),
    st.builds(r2000.SetWorkAntenna, antenna),
    st.just(r2000.GetWorkAntenna()),
    st.builds(r2000.RealTimeInventory, st.integers(0, 255)),
    fast_switch_requests(),
    st.builds(r2000.SetOutputPower, powers),
    st.just(r2000.GetOutputPower()),
)


@given(requests, st.integers(0, 255))
def test_request_round_trip(request: r2000.Request, address: int) -> None:
    frame = frame_of(request.encode(address))
    assert frame.address == address and frame.command == request.command
    assert r2000.parse_request(frame) == request


# ------------------------------------------------------------------------------------------ replies


def test_every_reply_both_ways() -> None:
    # (reply, its frame without the checksum byte)
    cases: list[tuple[r2000.Reply, str]] = [
        (r2000.FirmwareVersion(1, 7), "A0 05 01 72 01 07"),
        (r2000.CommandStatus(0x74, r2000.ErrorCode.SUCCESS), "A0 04 01 74 10"),
        (r2000.WorkAntenna(2), "A0 04 01 75 01"),
        (
            r2000.InventoryEnd(0x89, total_read=0x100, antenna=1, read_rate=0x20),
            "A0 0A 01 89 00 00 20 00 00 01 00",
        ),
        (r2000.InventoryEnd(0x8A, total_read=3, duration_ms=1000), "A0 0A 01 8A 00 00 03 00 00 03 E8"),
        (r2000.AntennaMissing(3), "A0 05 01 8A 02 22"),
        (r2000.CommandStatus(0x89, r2000.ErrorCode.ANTENNA_MISSING), "A0 04 01 89 22"),
    ]
    for reply, body in cases:
        head = bytes.fromhex(body)
        expected = head + bytes([(0x100 - sum(head) % 0x100) % 0x100])
        assert r2000.encode_reply(reply) == expected, reply
        assert r2000.parse_reply(frame_of(expected)) == reply


def test_error_code_to_inventory_is_a_command_status() -> None:
    reply = r2000.parse_reply(r2000.Frame(1, 0x89, bytes([r2000.ErrorCode.NO_TAG])))
    assert reply == r2000.CommandStatus(0x89, 0x36)
    assert isinstance(reply, r2000.CommandStatus) and not reply.ok


def test_eight_port_antennas_use_rssi_bit_seven() -> None:
    tag = r2000.TagRead(6, 10, 0x3000, bytes(12), 50, command=0x8A)
    frame = frame_of(r2000.encode_reply(tag))
    assert frame.command == 0x8A
    assert frame.data[0] == (10 << 2) | 1 and frame.data[-1] == 0x80 | 50
    assert r2000.parse_reply(frame) == tag


def test_parse_reply_rejects_inconsistent_data() -> None:
    with pytest.raises(DecodeError, match="EPC length mismatch"):
        r2000.parse_reply(r2000.Frame(1, 0x89, TAG_FRAME[4:-4] + TAG_FRAME[-2:-1]))
    with pytest.raises(DecodeError, match="unknown command 0x99"):
        r2000.parse_reply(r2000.Frame(1, 0x99, b"\x10"))
    with pytest.raises(DecodeError):
        r2000.parse_reply(r2000.Frame(1, 0x89, bytes(5)))
    with pytest.raises(DecodeError):
        r2000.parse_reply(r2000.Frame(1, 0x72, b"\x01\x02\x03"))


def test_encode_reply_rejects_inconsistent_values() -> None:
    with pytest.raises(EncodeError):
        r2000.encode_reply(r2000.TagRead(1, 0, 0x3000, bytes(10), 0))
    with pytest.raises(EncodeError):
        r2000.encode_reply(r2000.TagRead(9, 0, 0x3000, bytes(12), 0))
    with pytest.raises(EncodeError):
        r2000.encode_reply(r2000.InventoryEnd(0x89, 1, duration_ms=3))


@st.composite
def tag_reads(draw: st.DrawFn) -> r2000.TagRead:
    words = draw(st.integers(0, 31))
    pc = (words << 11) | draw(st.integers(0, 0x7FF))
    return r2000.TagRead(
        antenna=draw(antenna),
        frequency_index=draw(st.integers(0, 63)),
        pc=pc,
        epc=draw(st.binary(min_size=2 * words, max_size=2 * words)),
        rssi=draw(st.integers(0, 127)),
        command=draw(st.sampled_from([0x89, 0x8A])),
    )


replies = st.one_of(
    tag_reads(),
    st.builds(
        r2000.InventoryEnd,
        st.just(0x89),
        st.integers(0, 0xFFFFFFFF),
        antenna=antenna,
        read_rate=st.integers(0, 0xFFFF),
    ),
    st.builds(
        r2000.InventoryEnd, st.just(0x8A), st.integers(0, 0xFFFFFF), duration_ms=st.integers(0, 2**32 - 1)
    ),
    st.builds(r2000.AntennaMissing, antenna, st.integers(0, 255)),
    st.builds(r2000.FirmwareVersion, st.integers(0, 255), st.integers(0, 255)),
    st.builds(r2000.WorkAntenna, antenna),
    st.builds(r2000.OutputPower, powers),
    st.builds(
        r2000.CommandStatus,
        st.sampled_from([0x70, 0x74, 0x72, 0x89, 0x8A, 0x75, 0x76]),
        st.integers(0x10, 0xFF),
    ),
)


@given(replies, st.integers(0, 255))
def test_reply_round_trip(reply: r2000.Reply, address: int) -> None:
    frame = frame_of(r2000.encode_reply(reply, address))
    assert frame.address == address
    assert r2000.parse_reply(frame) == reply


@given(st.sampled_from([0x89, 0x8A]), st.binary(min_size=4, max_size=40))
def test_tag_fast_path_agrees_with_construct_spec(command: int, data: bytes) -> None:
    try:
        expected: r2000.TagRead | None = r2000.parse_tag_data_spec(command, data)
    except DecodeError:
        expected = None
    if len(data) % 2:
        assert expected is None  # tag data is 4 + 2k bytes
        return
    try:
        got = r2000.parse_reply(r2000.Frame(1, command, data))
    except DecodeError:
        assert expected is None
    else:
        assert got == expected


@given(tag_reads())
def test_tag_spec_and_fast_path_agree_on_valid_tags(tag: r2000.TagRead) -> None:
    frame = frame_of(r2000.encode_reply(tag))
    assert r2000.parse_tag_data_spec(tag.command, frame.data) == r2000.parse_reply(frame) == tag


# ------------------------------------------------------------------------------------------ framer


def test_framer_reference_stream() -> None:
    framer = r2000.R2000Framer()
    assert framer.feed(TAG_FRAME[:7]) == []
    assert framer.pending == 7
    found = framer.feed(TAG_FRAME[7:] + RESET)
    assert found == [frame_of(TAG_FRAME), frame_of(RESET)]
    assert framer.pending == 0
    assert framer.stats.frames == 2 and framer.stats.bytes_skipped == 0


def test_framer_counts_bad_checksum_and_finds_the_next_frame() -> None:
    framer = r2000.R2000Framer()
    corrupt = TAG_FRAME[:-1] + b"\x00"
    assert framer.feed(corrupt + RESET) == [frame_of(RESET)]
    assert framer.stats.bad_checksum == 1
    assert framer.stats.bytes_skipped == len(corrupt)


def test_framer_counts_impossible_length() -> None:
    framer = r2000.R2000Framer()
    assert framer.feed(b"\xa0\x01" + RESET) == [frame_of(RESET)]
    assert framer.stats.bad_length == 1
    assert framer.stats.bytes_skipped == 2


def test_framer_finds_a_frame_that_starts_inside_a_bad_one() -> None:
    # A false start whose Len covers the real frame that follows: only its 0xA0 is skipped.
    framer = r2000.R2000Framer()
    assert framer.feed(b"\xa0\x08\x01" + RESET + b"\x00\x00") == [frame_of(RESET)]
    assert framer.stats.bad_checksum == 1


@given(
    st.lists(
        st.one_of(st.binary(max_size=30), st.builds(r2000.encode_reply, replies, st.integers(0, 255))),
        max_size=12,
    ),
    st.lists(st.integers(0, 600), max_size=6),
)
def test_feed_reads_agrees_with_feed_and_parse_reply(pieces: list[bytes], cuts: list[int]) -> None:
    # The driver's hot path must see exactly what the general path sees: the same frames in the same
    # order, the same counters, with well-formed tag frames as RawTag tuples.
    data = b"".join(pieces)
    general, fast = r2000.R2000Framer(), r2000.R2000Framer()
    frames: list[r2000.Frame] = []
    items: list[r2000.Frame | r2000.RawTag] = []
    for piece in split(data, cuts):
        frames += general.feed(piece)
        items += fast.feed_reads(piece)
    assert general.stats == fast.stats
    assert len(items) == len(frames)
    for frame, item in zip(frames, items, strict=True):
        if isinstance(item, r2000.Frame):
            assert item == frame
            if frame.command in (0x89, 0x8A):
                with contextlib.suppress(DecodeError):
                    assert not isinstance(r2000.parse_reply(frame), r2000.TagRead)
            continue
        tag = r2000.parse_reply(frame)
        assert isinstance(tag, r2000.TagRead)
        fields = (tag.command, tag.antenna, tag.frequency_index, tag.pc, tag.epc, tag.rssi)
        assert item == (frame.address, *fields)


def test_feed_reads_on_the_reference_tag_frame() -> None:
    framer = r2000.R2000Framer()
    raw = bytes.fromhex("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB")
    (item,) = framer.feed_reads(raw)
    assert item == (1, 0x89, 1, 35, 0x3000, bytes.fromhex("300833B2DDD9014000000001"), 0x37)
    assert r2000.FREQUENCY_MHZ[35] == 916.0
    assert r2000.RSSI_DBM[0x37] == r2000.rssi_dbm(0x37)


class TestR2000Framer(FramerSuite[r2000.Frame]):
    """The framer contract (tests/protocols/framer_suite.py)."""

    frames = frames
    flush = bytes(257)  # Len <= 255: any false start near the end is resolved
    max_pending = 257

    def framer(self) -> r2000.R2000Framer:
        return r2000.R2000Framer()

    def encode(self, frame: r2000.Frame) -> bytes:
        return r2000.encode_frame(frame)

    def decode(self, raw: bytes) -> r2000.Frame:
        return r2000.decode_frame(raw)

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        """A checksum-valid frame starting at a garbage position (it could hide a real frame)."""
        inside: set[int] = set()
        for start, end in spans:
            inside.update(range(start, end))
        for pos, byte in enumerate(stream):
            if byte != r2000.HEAD or pos in inside or pos + 1 >= len(stream):
                continue
            length = stream[pos + 1]
            end = pos + length + 2
            if length >= 3 and end <= len(stream) and sum(stream[pos:end]) & 0xFF == 0:
                return True
        return False

    def inert(self, garbage: bytes, frame: r2000.Frame) -> bytes:
        return garbage.replace(bytes((r2000.HEAD,)), b"\x00")  # no 0xA0: no candidate

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        # Any byte but the head (without it there is no candidate to reject): Len, impossible or pointing
        # elsewhere; any other byte, and the checksum fails.
        bad = bytearray(raw)
        position = data.draw(st.integers(1, len(raw) - 1), label="position")
        bad[position] ^= data.draw(st.integers(1, 255), label="flip")
        return bytes(bad), ("bad_checksum",) if position > 1 else ("bad_length", "bad_checksum")


# -- a false start whose checksum matches by chance --------------------------------------------------------


def false_start_over(inner: bytes, lead: bytes = b"") -> bytes:
    """Garbage that begins a 'frame' (A0, Len) spanning ``lead + inner`` and one last byte chosen so the
    8-bit checksum of the whole span passes: what a stray 0xA0 in line noise achieves 1 time in 256."""
    length = len(lead) + len(inner) + 1  # Len counts the bytes after itself: lead, inner, check byte
    assert length <= 0xFF
    body = bytes((r2000.HEAD, length)) + lead + inner
    return body + bytes(((-sum(body)) & 0xFF,))


def test_a_false_start_that_passes_the_checksum_does_not_swallow_real_frames() -> None:
    tag = bytes.fromhex("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB")
    stream = false_start_over(tag + tag, lead=b"\x01\x89") + tag
    assert sum(stream[: 2 + stream[1]]) & 0xFF == 0  # the false candidate's checksum does pass
    framer = r2000.R2000Framer()
    frames = framer.feed(stream)
    assert frames == [frame_of(tag)] * 3
    assert framer.stats.overlapping == 1


@given(
    inner=st.lists(frames, min_size=1, max_size=4),
    lead=st.binary(max_size=6).filter(lambda b: r2000.HEAD not in b),
    cut=st.integers(0, 400),
)
def test_real_frames_inside_a_lucky_false_start_are_all_found(
    inner: list[r2000.Frame], lead: bytes, cut: int
) -> None:
    encoded = b"".join(r2000.encode_frame(f) for f in inner)
    assume(len(lead) + len(encoded) + 1 <= 0xFF)
    stream = false_start_over(encoded, lead)
    framer = r2000.R2000Framer()
    got = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
    assert got[: len(inner)] == inner


def test_output_power_forms_and_limits() -> None:
    # Vendor protocol: cmd_set_output_power 0x76 with one byte (every antenna) or one per port, in dBm.
    assert r2000.SetOutputPower((30,)).encode(1) == r2000.encode_frame(r2000.Frame(1, 0x76, bytes([30])))
    frame = frame_of(r2000.SetOutputPower((30, 25, 20, 33)).encode(1))
    assert frame.data == bytes([30, 25, 20, 33])
    for bad in ((34,), (30, 30), ()):
        with pytest.raises(EncodeError):
            r2000.SetOutputPower(bad).encode(1)
    # A one-byte answer to 0x77 is a power (0x10..0x21 are powers here, not status codes).
    reply = r2000.parse_reply(r2000.Frame(1, 0x77, bytes([0x10])))
    assert reply == r2000.OutputPower((16,))
    assert r2000.OutputPower((20, 21, 22, 23)).for_antenna(3) == 22
    assert r2000.OutputPower((20,)).for_antenna(3) == 20
    with pytest.raises(DecodeError):
        r2000.parse_request(r2000.Frame(1, 0x76, bytes([30, 30])))
