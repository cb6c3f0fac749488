"""The XBee API frame codec and framer: reference frames, digi-xbee (the field's client library) building
and parsing frames against ours, the framer contract (framer_suite.py) in API mode 2 and 1, and what is
particular to XBee framing (escapes, a frame cut short by the next start)."""

from __future__ import annotations

import contextlib

import pytest
from digi.xbee.models.address import XBee16BitAddress, XBee64BitAddress  # type: ignore[import-untyped]
from digi.xbee.models.mode import OperatingMode  # type: ignore[import-untyped]
from digi.xbee.models.status import DiscoveryStatus, TransmitStatus  # type: ignore[import-untyped]
from digi.xbee.packets.base import XBeeAPIPacket  # type: ignore[import-untyped]
from digi.xbee.packets.common import (  # type: ignore[import-untyped]
    ATCommPacket,
    ATCommResponsePacket,
    ExplicitAddressingPacket,
    ExplicitRXIndicatorPacket,
    ModemStatusPacket,
    TransmitStatusPacket,
)
from digi.xbee.packets.factory import build_frame  # type: ignore[import-untyped]
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols import xbee
from protocols.errors import DecodeError, EncodeError

from .framer_suite import FramerSuite, split

# Reference frames of Digi's user guide (API frame examples): a local AT command "NJ" read with frame id
# 0x52, and a modem status "coordinator started".
AT_NJ = bytes.fromhex("7E 00 04 08 52 4E 4A 0D")
MODEM_STARTED = bytes.fromhex("7E 00 02 8A 06 6F")
# An explicit RX indicator from 0013A200 40522BAA (a typical example of the guide), escaped: 0x13 and 0x11
# of the payload travel as 7D 33 and 7D 31.
EXPLICIT_RX = xbee.ExplicitRx(0x0013A20040522BAA, 0x7D84, 0xE0, 0xE0, 0x2211, 0xC105, 0x02, b"RxData")


def test_reference_at_command() -> None:
    assert xbee.encode_frame(xbee.encode_message(xbee.AtCommand(0x52, "NJ"))) == AT_NJ
    assert xbee.parse_message(xbee.decode_frame(AT_NJ)) == xbee.AtCommand(0x52, "NJ")


def test_reference_modem_status() -> None:
    assert xbee.parse_message(xbee.decode_frame(MODEM_STARTED)) == xbee.ModemStatus(6)
    assert xbee.checksum(bytes((0x8A, 0x06))) == 0x6F


def test_escaped_frame_carries_escapes_and_decodes() -> None:
    raw = xbee.encode_frame(xbee.encode_message(EXPLICIT_RX))
    assert b"\x7d\x33" in raw and b"\x7d\x5d" in raw and b"\x7d\x31" in raw  # 0x13, 0x7D, 0x11
    assert xbee.START not in raw[1:]
    assert xbee.parse_message(xbee.decode_frame(raw)) == EXPLICIT_RX
    plain = xbee.encode_frame(xbee.encode_message(EXPLICIT_RX), escaped=False)
    assert xbee.parse_message(xbee.decode_frame(plain, escaped=False)) == EXPLICIT_RX


# -- digi-xbee, the field's library, on the other side -------------------------------------------------


def digi_parse(raw: bytes, escaped: bool = True) -> XBeeAPIPacket:
    data = XBeeAPIPacket.unescape_data(bytearray(raw)) if escaped else bytearray(raw)
    return build_frame(data, OperatingMode.API_MODE)


def test_digi_parses_our_explicit_rx_and_modem_status() -> None:
    packet = digi_parse(xbee.encode_frame(xbee.encode_message(EXPLICIT_RX)))
    assert isinstance(packet, ExplicitRXIndicatorPacket)
    assert str(packet.x64bit_source_addr) == "0013A20040522BAA"
    assert packet.x16bit_source_addr == XBee16BitAddress.from_hex_string("7D84")
    assert (packet.source_endpoint, packet.dest_endpoint) == (0xE0, 0xE0)
    assert (packet.cluster_id, packet.profile_id, packet.receive_options) == (0x2211, 0xC105, 0x02)
    assert bytes(packet.rf_data) == b"RxData"
    status = digi_parse(xbee.encode_frame(xbee.encode_message(xbee.ModemStatus(0))), escaped=False)
    assert isinstance(status, ModemStatusPacket) and status.modem_status.code == 0


def test_we_parse_what_digi_builds() -> None:
    at = ATCommPacket(0x11, "AO", bytearray(b"\x03"))
    assert xbee.parse_message(xbee.decode_frame(bytes(at.output(escaped=True)))) == xbee.AtCommand(
        0x11, "AO", b"\x03"
    )
    explicit = ExplicitAddressingPacket(
        7,
        XBee64BitAddress.from_hex_string("0013A20041A7B2C3"),
        XBee16BitAddress.from_hex_string("FFFE"),
        0xE8,
        0x01,
        0x0402,
        0x0104,
        0,
        0,
        bytearray(b"\x10\x01\x00\x00\x00"),
    )
    assert xbee.parse_message(
        xbee.decode_frame(bytes(explicit.output(escaped=True)))
    ) == xbee.ExplicitCommand(
        7, 0x0013A20041A7B2C3, 0xFFFE, 0xE8, 0x01, 0x0402, 0x0104, b"\x10\x01\x00\x00\x00"
    )
    response = ATCommResponsePacket(0x11, "SH", 0, bytearray(b"\x00\x13\xa2\x00"))
    parsed = xbee.parse_message(xbee.decode_frame(bytes(response.output(escaped=False)), escaped=False))
    assert parsed == xbee.AtResponse(0x11, "SH", 0, b"\x00\x13\xa2\x00")
    rx = ExplicitRXIndicatorPacket(
        XBee64BitAddress.from_hex_string("0013A2007E7D1113"),
        XBee16BitAddress.from_hex_string("7E11"),
        1,
        1,
        0x0405,
        0x0104,
        1,
        bytearray(b"\x7e\x7d\x11\x13"),
    )
    raw = bytes(rx.output(escaped=True))
    assert xbee.XBeeFramer().feed(raw) == [xbee.decode_frame(raw)]
    assert xbee.parse_message(xbee.decode_frame(raw)) == xbee.ExplicitRx(
        0x0013A2007E7D1113, 0x7E11, 1, 1, 0x0405, 0x0104, 1, b"\x7e\x7d\x11\x13"
    )
    status = TransmitStatusPacket(
        9,
        XBee16BitAddress.from_hex_string("1234"),
        2,
        TransmitStatus.ADDRESS_NOT_FOUND,
        DiscoveryStatus.NO_DISCOVERY_OVERHEAD,
    )
    assert xbee.parse_message(xbee.decode_frame(bytes(status.output(escaped=True)))) == xbee.TransmitStatus(
        9, 0x1234, 2, 0x24, 0
    )


# -- messages both ways --------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, (1 << 64) - 1)
payloads = st.binary(max_size=80)
at_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ%", min_size=2, max_size=2)

messages = st.one_of(
    st.builds(xbee.AtCommand, u8, at_names, payloads),
    st.builds(xbee.AtResponse, u8, at_names, u8, payloads),
    st.builds(xbee.ExplicitCommand, u8, u64, u16, u8, u8, u16, u16, payloads, u8, u8),
    st.builds(xbee.ExplicitRx, u64, u16, u8, u8, u16, u16, u8, payloads),
    st.builds(xbee.RxPacket, u64, u16, u8, payloads),
    st.builds(xbee.TransmitStatus, u8, u16, u8, u8, u8),
    st.builds(xbee.ModemStatus, u8),
    st.builds(
        xbee.NodeIdentification,
        u64,
        u16,
        u8,
        u16,
        u64,
        st.text(alphabet="abcXYZ-_0123456789 ", max_size=20),
        u16,
        st.integers(0, 2),
        st.integers(1, 3),
        u16,
        u16,
        st.none() | st.binary(min_size=4, max_size=4),
    ),
    st.builds(xbee.Unknown, st.sampled_from([0x10, 0x17, 0x97, 0xA1, 0x21]), payloads),
)


@given(message=messages, escaped=st.booleans())
def test_every_message_round_trips(message: xbee.Message, escaped: bool) -> None:
    raw = xbee.encode_frame(xbee.encode_message(message), escaped=escaped)
    assert xbee.parse_message(xbee.decode_frame(raw, escaped=escaped)) == message


@given(head=st.tuples(u64, u16, u8, u8, u16, u16, u8), payload=payloads)
def test_explicit_rx_fast_path_agrees_with_the_construct_definition(
    head: tuple[int, int, int, int, int, int, int], payload: bytes
) -> None:
    names = ("source64", "source16", "source_endpoint", "dest_endpoint", "cluster", "profile", "options")
    built = xbee.EXPLICIT_RX.build(dict(zip(names, head, strict=True)) | {"payload": payload})
    parsed = xbee.EXPLICIT_RX.parse(built)
    message = xbee.parse_message(xbee.Frame(xbee.FrameType.EXPLICIT_RX, built))
    assert isinstance(message, xbee.ExplicitRx)
    assert tuple(getattr(message, n) for n in names) == tuple(parsed[n] for n in names)
    assert message.payload == parsed.payload


@given(frame_type=st.sampled_from(list(xbee.FrameType)), payload=st.binary(max_size=40))
def test_arbitrary_payloads_decode_or_raise_decode_error(frame_type: int, payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        xbee.parse_message(xbee.Frame(frame_type, payload))


def test_encoding_refuses_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        xbee.encode_frame(xbee.Frame(0x10, bytes(xbee.MAX_FRAME_DATA)))
    with pytest.raises(EncodeError):
        xbee.encode_message(xbee.AtCommand(1, "ABC"))
    with pytest.raises(EncodeError):
        xbee.encode_message(xbee.TransmitStatus(256, 0, 0, 0, 0))


# -- the framer contract ---------------------------------------------------------------------------------

frames = st.builds(xbee.Frame, u8, st.binary(max_size=60))
escape_rich_frames = st.builds(
    xbee.Frame,
    st.sampled_from([0x7E, 0x7D, 0x11, 0x13, 0x91]),
    st.lists(st.sampled_from(b"\x7e\x7d\x11\x13\x00\xff"), max_size=40).map(bytes),
)


def _valid_escaped_at(stream: bytes, pos: int) -> bool:
    """Whether a valid mode 2 frame starts at ``pos`` (it ends before the next 0x7E)."""
    end = stream.find(xbee.START, pos + 1)
    segment = stream[pos + 1 : len(stream) if end < 0 else end]
    for stop in range(len(segment), 2, -1):
        try:
            xbee.decode_frame(bytes((xbee.START,)) + segment[:stop])
        except DecodeError:
            continue
        return True
    return False


class TestXBeeFramerEscaped(FramerSuite[xbee.Frame]):
    """API mode 2."""

    frames = st.one_of(frames, escape_rich_frames)
    flush = bytes(xbee.MAX_FRAME_DATA + 4)  # resolves a false start of any length
    max_pending = 1 + 2 * (xbee.MAX_FRAME_DATA + 3)
    rejections = xbee.REJECTIONS

    def framer(self) -> xbee.XBeeFramer:
        return xbee.XBeeFramer()

    def encode(self, frame: xbee.Frame) -> bytes:
        return xbee.encode_frame(frame)

    def decode(self, raw: bytes) -> xbee.Frame:
        return xbee.decode_frame(raw)

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        starts = {start for start, _ in spans}
        return any(
            byte == xbee.START and pos not in starts and _valid_escaped_at(stream, pos)
            for pos, byte in enumerate(stream)
        )

    def inert(self, garbage: bytes, frame: xbee.Frame) -> bytes:
        return garbage.replace(b"\x7e", b"\x00")

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        bad = bytearray(raw)
        position = data.draw(st.integers(1, len(raw) - 1), label="position")
        bad[position] ^= data.draw(st.integers(1, 255), label="flip")
        return bytes(bad), xbee.REJECTIONS


class TestXBeeFramerPlain(FramerSuite[xbee.Frame]):
    """API mode 1: nothing escaped, 0x7E may be data."""

    frames = st.one_of(frames, escape_rich_frames)
    flush = bytes(xbee.MAX_FRAME_DATA + 4)
    max_pending = xbee.MAX_FRAME_DATA + 4
    rejections = xbee.REJECTIONS

    def framer(self) -> xbee.XBeeFramer:
        return xbee.XBeeFramer(escaped=False)

    def encode(self, frame: xbee.Frame) -> bytes:
        return xbee.encode_frame(frame, escaped=False)

    def decode(self, raw: bytes) -> xbee.Frame:
        return xbee.decode_frame(raw, escaped=False)

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        starts = {start for start, _ in spans}
        for pos, byte in enumerate(stream):
            if byte != xbee.START or pos in starts or pos + 3 > len(stream):
                continue
            length = stream[pos + 1] << 8 | stream[pos + 2] if pos + 2 < len(stream) else 0
            stop = pos + length + 4
            if (
                1 <= length <= xbee.MAX_FRAME_DATA
                and stop <= len(stream)
                and sum(stream[pos + 3 : stop]) & 0xFF == 0xFF
            ):
                return True
        return False

    def inert(self, garbage: bytes, frame: xbee.Frame) -> bytes:
        return garbage.replace(b"\x7e", b"\x00")

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        bad = bytearray(raw)
        position = data.draw(st.integers(1, len(raw) - 1), label="position")
        bad[position] ^= data.draw(st.integers(1, 255), label="flip")
        return bytes(bad), xbee.REJECTIONS


# -- what is particular to XBee framing ----------------------------------------------------------------

GOOD = xbee.encode_frame(xbee.encode_message(EXPLICIT_RX))


def test_a_frame_cut_short_is_counted_truncated_and_the_next_one_found() -> None:
    framer = xbee.XBeeFramer()
    assert framer.feed(GOOD[:12] + GOOD) == [xbee.decode_frame(GOOD)]
    assert framer.stats.truncated == 1 and framer.stats.bytes_skipped == 12


def test_a_mis_escaped_frame_is_counted_and_skipped() -> None:
    framer = xbee.XBeeFramer()
    broken = GOOD[:5] + b"\x7d\x00" + GOOD[5:]
    assert framer.feed(broken + GOOD) == [xbee.decode_frame(GOOD)]
    assert framer.stats.bad_escape == 1 and framer.stats.bytes_skipped == len(broken)


def test_a_raw_xon_or_xoff_in_an_escaped_frame_is_counted_and_skipped() -> None:
    # API mode 2 always escapes 0x11 and 0x13 (software flow control may take them off the line): one raw
    # is damage, or a flow-control byte the serial port did not consume. Its checksum still right, the
    # frame is refused (and decode_frame says why), with or without other escapes in it.
    for good in (AT_NJ, GOOD):
        body = bytearray(xbee.unescape(good[1:]))
        body[3:3] = b"\x11"  # a data byte 0x11, sent raw; length and checksum fitted to it
        body[0:2] = (len(body) - 3).to_bytes(2, "big")
        body[-1] = xbee.checksum(bytes(body[2:-1]))
        raw = bytes((xbee.START,)) + bytes(xbee.escape(bytes(body))).replace(b"\x7d\x31", b"\x11")
        assert b"\x11" in raw
        with pytest.raises(DecodeError, match="0x11 or 0x13 unescaped"):
            xbee.decode_frame(raw)
        framer = xbee.XBeeFramer()
        assert framer.feed(raw + good) == [xbee.decode_frame(good)]
        assert framer.stats.bad_escape == 1 and framer.stats.bytes_skipped == len(raw)


def test_an_escape_split_across_chunks_waits_for_its_second_byte() -> None:
    at = GOOD.index(b"\x7d")
    framer = xbee.XBeeFramer()
    assert framer.feed(GOOD[: at + 1]) == []
    assert framer.pending == at + 1
    assert framer.feed(GOOD[at + 1 :]) == [xbee.decode_frame(GOOD)]


def test_a_bad_checksum_is_counted() -> None:
    framer = xbee.XBeeFramer()
    bad = GOOD[:-1] + bytes((GOOD[-1] ^ 0x01,))
    assert framer.feed(bad + GOOD) == [xbee.decode_frame(GOOD)]
    assert framer.stats.bad_checksum == 1


@given(garbage=st.binary(max_size=100), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_escaped_frames_come_through_garbage_that_holds_no_start(garbage: bytes, cuts: list[int]) -> None:
    garbage = garbage.replace(b"\x7e", b"")
    stream = garbage + GOOD + garbage + GOOD
    framer = xbee.XBeeFramer()
    found = [frame for chunk in split(stream, cuts) for frame in framer.feed(chunk)]
    assert found == [xbee.decode_frame(GOOD)] * 2
    assert framer.stats.bytes_skipped == 2 * len(garbage)


@given(frame=escape_rich_frames)
def test_unescape_inverts_escape(frame: xbee.Frame) -> None:
    body = bytes((frame.frame_type,)) + frame.payload
    escaped = xbee.escape(body)
    assume(escaped != body)
    assert not set(escaped) & {0x7E, 0x11, 0x13}
    assert xbee.unescape(escaped) == body
    with pytest.raises(DecodeError):
        xbee.unescape(escaped + b"\x7d")
