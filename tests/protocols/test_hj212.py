"""The HJ 212-2017 codec and framer: the standard's own example packet, the CRC, data segments and CP areas
both ways, splitting into packets, the replies, and the framer contract (framer_suite.py)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols import hj212
from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer

from .framer_suite import FramerSuite

# HJ 212-2017 Appendix C's example: the platform sets the real-time interval of station
# 010000A8900016F000169DC0 to 30 s (the standard prints the length 0101 and the CRC 1C80).
EXAMPLE_SEGMENT = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)
EXAMPLE = b"##0101" + EXAMPLE_SEGMENT + b"1C80\r\n"


def test_the_standards_example() -> None:
    assert hj212.crc16(EXAMPLE_SEGMENT) == 0x1C80
    assert hj212.encode_frame(EXAMPLE_SEGMENT) == EXAMPLE
    assert hj212.decode_frame(EXAMPLE) == EXAMPLE_SEGMENT
    packet = hj212.parse_segment(EXAMPLE_SEGMENT)
    assert packet == hj212.Packet(
        qn="20160801085857223",
        st="32",
        cn="1062",
        pw="100000",
        mn="010000A8900016F000169DC0",
        flag=5,
        cp="RtdInterval=30",
    )
    assert packet.needs_reply and not packet.split and packet.version == 1
    assert hj212.encode_packet(packet) == EXAMPLE
    assert packet.field("RtdInterval") == "30"


def _reference_crc(data: bytes) -> int:
    """Appendix A, bit by bit."""
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            out = reg & 1
            reg >>= 1
            if out:
                reg ^= 0xA001
    return reg


@given(st.binary(max_size=200))
def test_crc_is_the_appendix_a_algorithm(data: bytes) -> None:
    assert hj212.crc16(data) == _reference_crc(data)


def test_lower_case_crc_is_accepted() -> None:
    assert hj212.decode_frame(EXAMPLE.replace(b"1C80", b"1c80")) == EXAMPLE_SEGMENT


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (EXAMPLE.replace(b"1C80", b"1C81"), "bad CRC: 1C81 received, 1C80 computed"),
        (EXAMPLE.replace(b"1C80", b"1CX0"), "not 4 hex digits"),
        (EXAMPLE.replace(b"##0101", b"##0100"), "packet of 113 bytes"),
        (EXAMPLE.replace(b"##0101", b"##01a1"), "not 4 decimal digits"),
        (EXAMPLE[:-1] + b"X", "CR LF"),
        (b"##2000" + bytes(2006), "exceeds 1024"),
        (EXAMPLE[1:], "no '##' header"),
    ],
)
def test_damaged_packets_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why.replace("(", r"\(")):
        hj212.decode_frame(raw)


VALUE = st.text(
    st.sampled_from("0123456789.-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:/+ "), max_size=12
)
KEY = st.text(
    st.sampled_from("0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"),
    min_size=1,
    max_size=12,
)
GROUPS = st.lists(st.lists(st.tuples(KEY, VALUE), min_size=1, max_size=4).map(tuple), max_size=6)
PACKETS = st.builds(
    hj212.Packet,
    st=st.sampled_from(["32", "31", "21", "22", "91"]),
    cn=st.sampled_from(["2011", "2051", "2061", "2031", "9014", "9011"]),
    pw=st.text(st.sampled_from("0123456789abc"), max_size=9),
    mn=st.text(st.sampled_from("0123456789ABCDEF"), min_size=1, max_size=24),
    flag=st.integers(0, 255).map(lambda f: f & ~hj212.FLAG_SPLIT),
    cp=GROUPS.map(hj212.format_cp),
    qn=st.none() | st.text(st.sampled_from("0123456789"), min_size=17, max_size=17),
)


@given(GROUPS)
def test_cp_round_trip(groups: list[hj212.Group]) -> None:
    assert hj212.parse_cp(hj212.format_cp(groups)) == groups


@given(PACKETS)
def test_packet_round_trip(packet: hj212.Packet) -> None:
    raw = hj212.encode_packet(packet)
    assert hj212.parse_segment(hj212.decode_frame(raw)) == packet
    framer = hj212.Hj212Framer()
    assert [hj212.parse_segment(s) for s in framer.feed(raw)] == [packet]


@given(st.binary(max_size=300))
def test_parse_segment_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        hj212.parse_segment(raw)


@pytest.mark.parametrize(
    ("segment", "why"),
    [
        (b"ST=32;CN=2011;PW=1;MN=1;Flag=4", "no CP"),
        (b"ST=32;CN=2011;PW=1;Flag=4;CP=&&&&", "lacks MN"),
        (b"ST=32;CN=2011;PW=1;MN=1;Flag=x;CP=&&&&", "Flag 'x'"),
        (b"ST=32;CN=2011;PW=1;MN=1;Flag=6;PNUM=2;PNO=3;CP=&&&&", "PNO 3"),
        (b"ST=32;CN=2011;XX=1;PW=1;MN=1;Flag=4;CP=&&&&", "unknown field"),
        (b"ST=32;CN=2011;PW=1;MN=1;Flag=4;CP=&&a&&", "not key=value"),
    ],
)
def test_bad_segments_say_why(segment: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        hj212.parse_cp(hj212.parse_segment(segment).cp)


def test_values_the_segment_cannot_carry_are_refused() -> None:
    with pytest.raises(EncodeError):
        hj212.format_cp([(("w01018-Rtd", "1;2"),)])
    with pytest.raises(EncodeError):
        hj212.format_segment(hj212.Packet(st="32", cn="2011", pw="a;b", mn="1"))
    with pytest.raises(EncodeError):
        hj212.encode_frame(b"x" * 1025)


@given(
    values=st.lists(st.floats(0, 1e6, allow_nan=False).map(lambda v: f"{v:.3f}"), min_size=1, max_size=200),
    qn=st.text(st.sampled_from("0123456789"), min_size=17, max_size=17),
)
def test_long_data_is_split_into_packets_that_each_fit(values: list[str], qn: str) -> None:
    head: hj212.Group = (("DataTime", "20240101120000"),)
    groups = [head] + [
        ((f"w{i:05d}-Avg", v), (f"w{i:05d}-Max", v), (f"w{i:05d}-Flag", "N")) for i, v in enumerate(values)
    ]
    packet = hj212.Packet(qn=qn, st="32", cn="2051", pw="123456", mn="010000A8900016F000169DC0", flag=5)
    packets = hj212.split_packets(packet, groups)
    carried: list[hj212.Group] = []
    for number, part in enumerate(packets, start=1):
        raw = hj212.encode_packet(part)  # fits: no EncodeError
        assert len(raw) <= hj212.MAX_SEGMENT + hj212.FRAME_OVERHEAD
        back = hj212.parse_segment(hj212.decode_frame(raw))
        assert back.qn == qn and back.needs_reply
        if len(packets) == 1:
            assert back.pnum is None and not back.split
            carried += back.groups
        else:
            assert back.split and back.pnum == len(packets) and back.pno == number
            assert back.groups[0] == head  # every packet says which time it is for
            carried += back.groups[1:]
    if len(packets) > 1:
        carried.insert(0, head)
    assert carried == groups


def test_replies() -> None:
    upload = hj212.Packet(qn="20240101120000123", st="32", cn="2011", pw="123456", mn="M1", flag=5)
    reply = hj212.data_reply(upload)
    assert (reply.cn, reply.st, reply.qn, reply.mn, reply.needs_reply) == (
        "9014",
        "91",
        upload.qn,
        "M1",
        False,
    )
    refusal = hj212.request_reply(upload, 3)
    assert refusal.cn == "9011" and refusal.field("QnRtn") == "3"
    assert hj212.REQUEST_RESULTS[3] == "wrong password (PW)"
    result = hj212.execution_result(upload, 1)
    assert result.cn == "9012" and result.field("ExeRtn") == "1"


def test_times() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert hj212.qn(when) == "20240102030405678"
    assert hj212.data_time(when) == "20240102030405"
    assert hj212.parse_data_time("20240102030405", dt.UTC) == when.replace(microsecond=0)
    with pytest.raises(DecodeError):
        hj212.parse_data_time("20241302030405", dt.UTC)


# -- the framer contract -------------------------------------------------------------------------------------


def _valid_frames_at(stream: bytes) -> list[int]:
    starts = []
    at = stream.find(b"##")
    while at >= 0:
        digits = stream[at + 2 : at + 6]
        if digits.isdigit() and int(digits) <= hj212.MAX_SEGMENT:
            end = at + int(digits) + hj212.FRAME_OVERHEAD
            try:
                hj212.decode_frame(stream[at:end])
                starts.append(at)
            except DecodeError:
                pass
        at = stream.find(b"##", at + 1)
    return starts


SEGMENTS = st.one_of(
    PACKETS.map(hj212.format_segment),
    st.binary(max_size=120),
    st.binary(min_size=1000, max_size=1024),
)


class TestHj212Framer(FramerSuite[bytes]):
    frames = SEGMENTS
    flush = bytes(hj212.MAX_SEGMENT + hj212.FRAME_OVERHEAD)
    max_pending = hj212.MAX_SEGMENT + hj212.FRAME_OVERHEAD - 1

    def framer(self) -> Framer[bytes]:
        return hj212.Hj212Framer()

    def encode(self, frame: bytes) -> bytes:
        return hj212.encode_frame(frame)

    def decode(self, raw: bytes) -> bytes:
        return hj212.decode_frame(raw)

    def redecoded(self, raw: bytes, frame: bytes) -> None:
        assert self.encode(frame) == raw[:-6] + raw[-6:].upper()  # a lower-case CRC is accepted

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        real = {start for start, _ in spans}
        return any(at not in real for at in _valid_frames_at(stream))

    def inert(self, garbage: bytes, frame: bytes) -> bytes:
        return garbage.replace(b"#", b"")

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        how = data.draw(st.sampled_from(["crc", "segment", "end", "length"]), label="damage")
        body = bytearray(raw)
        if how == "segment" and len(raw) > hj212.FRAME_OVERHEAD:
            at = data.draw(st.integers(6, len(raw) - 7), label="at")
            body[at] ^= data.draw(st.integers(1, 255), label="xor")
            assume(hj212.crc16(bytes(body[6:-6])) != int(raw[-6:-2], 16))
            return bytes(body), ("bad_checksum",)
        if how in ("crc", "segment"):
            at = data.draw(st.integers(len(raw) - 6, len(raw) - 3), label="at")
            digits = b"0123456789ABCDEF".replace(bytes([body[at]]), b"")
            body[at] = data.draw(st.sampled_from(list(digits)), label="digit")
            return bytes(body), ("bad_checksum",)
        if how == "end":
            body[-1] = data.draw(st.sampled_from(list(b"\r\x00X")), label="end")
            return bytes(body), ("bad_length",)
        body[2] = data.draw(st.sampled_from(list(b"x-#")), label="length")
        return bytes(body), ("bad_length",)


def test_the_framer_finds_packets_split_anywhere_and_skips_noise() -> None:
    framer = hj212.Hj212Framer()
    stream = b"noise#" + EXAMPLE + b"##01" + EXAMPLE
    found = []
    for i in range(len(stream)):
        found += framer.feed(stream[i : i + 1])
    assert found == [EXAMPLE_SEGMENT, EXAMPLE_SEGMENT]
    # "#" + "##0101": the false start "##01" + "0"...; "##01##01": the false start's length is not 4 digits
    assert framer.stats.bad_length == 2
    assert framer.stats.bytes_skipped == len(b"noise#") + len(b"##01")
