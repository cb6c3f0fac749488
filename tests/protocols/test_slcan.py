"""protocols.slcan: the adapter's frame lines and the host's command lines, with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import slcan
from protocols.errors import DecodeError
from tests.protocols.framer_suite import FramerSuite

frames = st.one_of(
    st.builds(
        lambda aid, data: slcan.CanFrame(aid, data, True), st.integers(0, 0x1FFFFFFF), st.binary(max_size=8)
    ),
    st.builds(
        lambda aid, data: slcan.CanFrame(aid, data, False), st.integers(0, 0x7FF), st.binary(max_size=8)
    ),
    st.builds(
        lambda aid, ext, dlc: slcan.CanFrame(aid, b"", ext, True, dlc),
        st.integers(0, 0x7FF),
        st.booleans(),
        st.integers(0, 8),
    ),
)


@given(frames)
def test_frame_lines_round_trip(frame: slcan.CanFrame) -> None:
    line = slcan.encode_frame(frame)
    assert line.endswith(b"\r") and len(line) <= slcan.MAX_LINE
    assert slcan.decode_frame(line) == frame


def test_known_lines() -> None:
    assert slcan.encode_frame(slcan.CanFrame(0x18FEF100, b"\x01\x02")) == b"T18FEF10020102\r"
    assert slcan.decode_frame(b"t1232AABB") == slcan.CanFrame(0x123, b"\xaa\xbb", False)
    for bad in (b"T18FEF1008AABB", b"t12", b"t1239", b"tXYZ0", b"Z", b"r1231AA", b"t8001AA"):
        with pytest.raises(DecodeError):
            slcan.decode_frame(bad)


@given(st.binary(max_size=80))
def test_decoding_arbitrary_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        frame = slcan.decode_frame(raw)
    except DecodeError:
        return
    assert slcan.encode_frame(frame).upper() == (raw.removesuffix(b"\r") + b"\r").upper()


lines = st.lists(st.text(alphabet="CSOLVNFZTt0123456789ABCDEF", max_size=30).map(str.encode), max_size=20)


@given(lines=lines, cuts=st.lists(st.integers(0, 600), max_size=10))
def test_command_lines_are_found_however_the_stream_is_cut(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\r" for line in lines)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    framer = slcan.LineFramer()
    found: list[bytes] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        found += framer.feed(stream[a:b])
    assert found == lines and framer.pending == 0 and framer.stats.bytes_skipped == 0


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_never_raise_and_are_accounted_for(data: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    framer = slcan.LineFramer()
    found: list[bytes] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        found += framer.feed(data[a:b])
    framed = sum(len(line) + 1 for line in found)
    assert framed + framer.stats.bytes_skipped + framer.pending == len(data)
    assert framer.pending <= slcan.MAX_LINE


def test_an_overlong_line_is_rejected_and_the_next_one_found() -> None:
    framer = slcan.LineFramer()
    assert framer.feed(b"X" * 100 + b"\rO\r\x07V\r") == [b"O", b"V"]
    assert framer.stats.bad_length == 1 and framer.stats.bytes_skipped == 102


# -- the framer contract (tests/protocols/framer_suite.py) --------------------------------------------------

_NOT_IN_A_LINE = b"\r\x07\x00"
lines_of_commands = st.binary(max_size=slcan.MAX_LINE).map(
    lambda raw: bytes(b for b in raw if b not in _NOT_IN_A_LINE)
)


def _lines_in(region: bytes) -> tuple[list[bytes], bytes]:
    """The CR-ended lines of ``region`` as the framer sees them (BEL, NUL dropped), and what follows them."""
    *whole, rest = region.replace(b"\x07", b"").replace(b"\x00", b"").split(b"\r")
    return whole, rest


class TestLineFramer(FramerSuite[bytes]):
    """The host's command lines: a line is any bytes but CR, BEL and NUL, up to MAX_LINE, ended by CR."""

    frames = lines_of_commands
    flush = b""
    pending_after_flush = slcan.MAX_LINE  # an unended line waits for its CR
    max_pending = slcan.MAX_LINE

    def framer(self) -> slcan.LineFramer:
        return slcan.LineFramer()

    def encode(self, frame: bytes) -> bytes:
        return frame + b"\r"

    def decode(self, raw: bytes) -> bytes:
        line, cr, rest = raw.partition(b"\r")
        if not cr or rest or len(line) > slcan.MAX_LINE or any(b in _NOT_IN_A_LINE for b in line):
            raise DecodeError("not one line")
        return line

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        # Garbage makes a line of its own when a CR ends a short enough piece of it, and runs into the next
        # frame's line when it does not end with a CR: either hides or changes a real line.
        starts = [0, *(end for _, end in spans)]
        ends = [*(start for start, _ in spans), len(stream)]
        for index, (a, b) in enumerate(zip(starts, ends, strict=True)):
            whole, rest = _lines_in(stream[a:b])
            if any(len(line) <= slcan.MAX_LINE for line in whole):
                return True
            if rest and index < len(spans):
                return True
        return False

    def inert(self, garbage: bytes, frame: bytes) -> bytes:
        return bytes(0x07 if b % 2 else 0x00 for b in garbage)  # what the framer skips between lines

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        filler = data.draw(st.integers(0x20, 0x7E), label="filler")
        return raw[:-1] + bytes([filler]) * (slcan.MAX_LINE + 1 - len(raw) + 1) + b"\r", ("bad_length",)
