"""protocols.modbus RTU framing: :class:`RtuReplyFramer` and the one-frame codec, the framer contract
(framer_suite.py), what is particular to this framer (the candidates it rejected, a false start that
must not hold a reply back, discarding a partial frame), and the replies pymodbus's own server framer
builds."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, WriteSingleRegisterResponse

from protocols import modbus as mb
from protocols.errors import DecodeError, EncodeError
from protocols.modbus import ReplyCheck, RtuFrame, RtuReplyFramer

from .framer_suite import FramerSuite


@st.composite
def replies(draw: st.DrawFn) -> RtuFrame:
    """A reply a device may send: a read's (byte count, data), a write's echo, or an exception."""
    unit = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["registers", "bits", "write", "exception"]))
    if kind in ("registers", "bits"):
        # Any byte count 1..250 (an odd one for registers is a whole frame that answers no read: the
        # framer finds it, judge_rtu_reply says WRONG_LENGTH).
        data = draw(st.binary(min_size=1, max_size=2 * mb.MAX_READ_REGISTERS))
        function = draw(st.sampled_from([3, 4] if kind == "registers" else [1, 2]))
        pdu = bytes((function, len(data))) + data
    elif kind == "write":
        pdu = bytes((draw(st.sampled_from([5, 6, 15, 16])),)) + draw(st.binary(min_size=4, max_size=4))
    else:
        function = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 15, 16]))
        pdu = bytes((function | 0x80, draw(st.integers(0, 255))))
    return RtuFrame(unit, pdu)


def _stray_frames(stream: bytes, starts: set[int]) -> bool:
    """True if a frame whose CRC holds starts anywhere but at a real frame's start (in garbage, or inside a
    real frame): by chance, one in 65,536 plausible headers; it could hide a real frame."""
    for at in range(len(stream) - 3):
        if at in starts:
            continue
        size = mb._reply_size(stream, at)
        if 0 < size <= len(stream) - at:
            try:
                mb.decode_rtu_frame(stream[at : at + size])
            except DecodeError:
                continue
            return True
    return False


# -- the codec ------------------------------------------------------------------------------------------


def test_reference_frames() -> None:
    # Unit 1 answers a read of two holding registers with 0x000A 0x0102 (CRC from pymodbus, below).
    raw = bytes.fromhex("0103 04 000a 0102") + mb.crc16(bytes.fromhex("010304000a0102")).to_bytes(2, "little")
    assert mb.decode_rtu_frame(raw) == RtuFrame(1, bytes.fromhex("0304000a0102"))
    assert mb.encode_rtu_frame(RtuFrame(1, bytes.fromhex("0304000a0102"))) == raw
    assert RtuFrame(1, bytes.fromhex("8302")).function == 0x83


def test_decode_says_what_is_wrong() -> None:
    good = mb.rtu_frame(7, bytes.fromhex("0302abcd"))
    with pytest.raises(DecodeError, match="truncated"):
        mb.decode_rtu_frame(good[:3])
    with pytest.raises(DecodeError, match="bad CRC"):
        mb.decode_rtu_frame(good[:-1] + bytes((good[-1] ^ 1,)))
    with pytest.raises(DecodeError, match="length mismatch"):
        mb.decode_rtu_frame(good + b"\x00")
    with pytest.raises(DecodeError, match="function 0x07"):
        mb.decode_rtu_frame(mb.rtu_frame(7, b"\x07\x00"))
    with pytest.raises(DecodeError, match="impossible byte count 0"):
        mb.decode_rtu_frame(mb.rtu_frame(7, b"\x03\x00"))
    # An odd byte count for registers is a whole frame (its CRC holds): judged WRONG_LENGTH, not skipped.
    assert mb.decode_rtu_frame(mb.rtu_frame(7, b"\x03\x03abc")) == RtuFrame(7, b"\x03\x03abc")


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        mb.encode_rtu_frame(RtuFrame(256, b"\x03\x00"))
    with pytest.raises(EncodeError):
        mb.encode_rtu_frame(RtuFrame(1, b""))
    with pytest.raises(EncodeError):
        mb.encode_rtu_frame(RtuFrame(1, bytes(254)))


def test_replies_built_by_pymodbus_are_found() -> None:
    framer = FramerRTU(DecodePDU(True))
    frames = [
        framer.buildFrame(ReadHoldingRegistersResponse(registers=[1, 2, 0xFFFF], dev_id=17)),
        framer.buildFrame(ReadCoilsResponse(bits=[True, False, True] * 5, dev_id=3)),
        framer.buildFrame(WriteSingleRegisterResponse(address=100, registers=[0x1234], dev_id=247)),
        framer.buildFrame(ExceptionResponse(4, 2, device_id=9)),
    ]
    ours = RtuReplyFramer()
    found = ours.feed(b"".join(frames))
    assert [(f.unit, f.function) for f in found] == [(17, 3), (3, 1), (247, 6), (9, 0x84)]
    assert [mb.encode_rtu_frame(f) for f in found] == frames


# -- the framer -----------------------------------------------------------------------------------------


def test_framer_reference_stream() -> None:
    reply = mb.rtu_frame(1, bytes.fromhex("0304000a0102"))
    framer = RtuReplyFramer()
    assert framer.feed(reply[:2]) == []
    assert framer.pending == 2
    assert framer.feed(reply[2:5]) == []
    assert framer.feed(reply[5:] + reply) == [mb.decode_rtu_frame(reply)] * 2
    assert framer.pending == 0
    assert framer.stats.frames == 2 and framer.stats.bytes_skipped == 0


def test_a_bad_crc_is_counted_and_the_next_frame_found() -> None:
    reply = mb.rtu_frame(1, bytes.fromhex("0304000a0102"))
    damaged = reply[:-1] + bytes((reply[-1] ^ 0x5A,))
    framer = RtuReplyFramer()
    assert framer.feed(damaged + reply) == [mb.decode_rtu_frame(reply)]
    assert framer.stats.bad_checksum >= 1
    assert (1, 3) in framer.rejected
    assert framer.stats.bytes_skipped == len(damaged)
    assert framer.feed(reply) == [mb.decode_rtu_frame(reply)]
    assert framer.rejected == []  # only the last feed's


def test_an_impossible_byte_count_is_counted() -> None:
    empty = mb.rtu_frame(1, bytes.fromhex("0300"))  # no register at all
    reply = mb.rtu_frame(2, bytes.fromhex("0302ffff"))
    framer = RtuReplyFramer()
    assert framer.feed(empty + reply) == [mb.decode_rtu_frame(reply)]
    assert framer.stats.bad_length >= 1 and (1, 3) in framer.rejected
    assert framer.stats.bytes_skipped == len(empty)


def test_a_false_start_does_not_hold_back_the_frame_inside_it() -> None:
    # Noise 01 03 F8: unit 1, a read of 124 registers on its way (253 bytes); the real reply is inside it,
    # and nothing else comes: the reply is found at once, not after 253 bytes that never come.
    reply = mb.rtu_frame(1, bytes.fromhex("0304000a0102"))
    framer = RtuReplyFramer()
    assert framer.feed(b"\x01\x03\xf8" + reply) == [mb.decode_rtu_frame(reply)]
    assert framer.stats.bad_length == 1 and framer.stats.bytes_skipped == 3
    assert framer.pending == 0


def test_discard_drops_a_partial_frame_and_counts_it() -> None:
    late = mb.rtu_frame(1, bytes.fromhex("0304000a0102"))
    framer = RtuReplyFramer()
    assert framer.feed(late[:-3]) == []
    assert framer.held == late[:-3]
    framer.discard()
    assert framer.pending == 0 and framer.stats.bytes_skipped == len(late) - 3
    answer = mb.rtu_frame(1, bytes.fromhex("0304000b0102"))
    assert framer.feed(late[-3:] + answer) == [mb.decode_rtu_frame(answer)]


class TestRtuReplyFramer(FramerSuite[RtuFrame]):
    """The framer contract (tests/protocols/framer_suite.py)."""

    frames = replies()
    flush = bytes(mb.RTU_MAX_FRAME)  # no reply starts with function 0: any false start is resolved
    pending_after_flush = 1  # the last byte may be a unit id whose function code is on its way
    max_pending = mb.RTU_MAX_FRAME + 3

    def framer(self) -> RtuReplyFramer:
        return RtuReplyFramer()

    def encode(self, frame: RtuFrame) -> bytes:
        return mb.encode_rtu_frame(frame)

    def decode(self, raw: bytes) -> RtuFrame:
        return mb.decode_rtu_frame(raw)

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        return _stray_frames(stream, {start for start, _ in spans})

    def inert(self, garbage: bytes, frame: RtuFrame) -> bytes:
        # Garbage of function codes no reply has (0, 7..14, 17..127 and their 0x80 forms), and a unit id
        # that is none either (the last garbage byte and the unit id would make a header): no candidate.
        assume(frame.unit & 0x7F not in KNOWN_FUNCTIONS)
        return bytes(b if (b & 0x7F) not in KNOWN_FUNCTIONS else 0 for b in garbage)

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        # The CRC, or a byte after the function code (a byte count, data): not the unit id or function,
        # which would make it no candidate at all rather than a damaged one.
        bad = bytearray(raw)
        bad[data.draw(st.integers(2, len(raw) - 1), label="position")] ^= data.draw(st.integers(1, 255))
        return bytes(bad), ("bad_checksum", "bad_length")


KNOWN_FUNCTIONS = (1, 2, 3, 4, 5, 6, 15, 16)
"""The function codes of the replies the framer knows."""


# -- judging a whole frame against a read ---------------------------------------------------------------


def test_judging_a_reply() -> None:
    answer = RtuFrame(1, bytes.fromhex("0304000a0102"))
    assert mb.judge_rtu_reply(answer, 1, 3, 2) is ReplyCheck.OK
    assert mb.judge_rtu_reply(answer, 2, 3, 2) is ReplyCheck.WRONG_UNIT
    assert mb.judge_rtu_reply(answer, 1, 4, 2) is ReplyCheck.WRONG_FUNCTION
    assert mb.judge_rtu_reply(answer, 1, 3, 3) is ReplyCheck.WRONG_LENGTH
    assert mb.judge_rtu_reply(RtuFrame(1, b"\x83\x02"), 1, 3, 2) is ReplyCheck.EXCEPTION
    assert mb.judge_rtu_reply(RtuFrame(1, b"\x84\x02"), 1, 3, 2) is ReplyCheck.WRONG_FUNCTION
    bits = RtuFrame(5, bytes.fromhex("0102ff01"))
    assert mb.judge_rtu_reply(bits, 5, 1, 9) is ReplyCheck.OK  # 9 bits in 2 bytes
    assert mb.judge_rtu_reply(bits, 5, 1, 17) is ReplyCheck.WRONG_LENGTH


@given(replies(), st.integers(0, 255), st.integers(1, 4), st.integers(1, 125))
def test_judging_agrees_with_check_rtu_reply(frame: RtuFrame, unit: int, function: int, count: int) -> None:
    raw = mb.encode_rtu_frame(frame)
    verdict, size = mb.check_rtu_reply(raw, unit, function, count)
    assert size == len(raw)
    assert mb.judge_rtu_reply(frame, unit, function, count) is verdict


@given(st.sampled_from(sorted(mb.WRITE_FUNCTIONS)), st.binary(min_size=0, max_size=8), st.integers(1, 247))
def test_a_write_echo_is_judged_by_its_four_bytes(function: int, echo: bytes, unit: int) -> None:
    # Modbus Application Protocol 6.5, 6.6, 6.11, 6.12: the reply to a write is the address and the value
    # (05, 06) or the quantity (15, 16), four bytes. Over RTU and in an MBAP frame alike.
    expected = ReplyCheck.OK if len(echo) == 4 else ReplyCheck.WRONG_LENGTH
    assert mb.judge_rtu_reply(RtuFrame(unit, bytes([function]) + echo), unit, function, 0) is expected
    pdu = bytes([function]) + echo
    mbap = (7).to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu
    assert mb.check_tcp_reply(mbap, unit, function, 0, 7) == (expected, len(mbap))
    assert mb.judge_rtu_reply(RtuFrame(unit, bytes([function | 0x80, 2])), unit, function, 0) is (
        ReplyCheck.EXCEPTION
    )


def test_a_write_echo_built_by_pymodbus_is_ok() -> None:
    echo = WriteSingleRegisterResponse(address=100, registers=[250], dev_id=3)
    frame = FramerRTU(DecodePDU(False)).buildFrame(echo)
    [found] = RtuReplyFramer().feed(frame)
    assert mb.judge_rtu_reply(found, 3, 6, 0) is ReplyCheck.OK
