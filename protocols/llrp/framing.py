"""LLRP messages on the wire: the 10-byte header, one message, and the stream framer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from construct import BitsInteger, BitStruct, Bytes, Check, Int32ub, Rebuild, Struct, Terminated, len_, this

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer, FramerStats

from .constants import DEFAULT_MAX_MESSAGE, HEADER_SIZE, SUPPORTED_VERSIONS


@dataclass(frozen=True, slots=True)
class Frame:
    """One message: its header's type, version and id, and the body after the 10-byte header."""

    message_type: int
    message_id: int
    body: bytes
    version: int = 1


MESSAGE = Struct(
    "word"
    / BitStruct("reserved" / BitsInteger(3), "version" / BitsInteger(3), "message_type" / BitsInteger(10)),
    "length" / Rebuild(Int32ub, len_(this.body) + HEADER_SIZE),
    "message_id" / Int32ub,
    Check(this.length >= HEADER_SIZE),
    "body" / Bytes(this.length - HEADER_SIZE),
    Terminated,
)
"""One whole message."""


def encode_frame(frame: Frame) -> bytes:
    """The bytes of ``frame`` on the wire."""
    if not 0 <= frame.message_type <= 0x3FF:
        raise EncodeError(f"message type {frame.message_type} out of range 0..1023")
    if not 0 <= frame.version <= 7:
        raise EncodeError(f"version {frame.version} out of range 0..7")
    if not 0 <= frame.message_id <= 0xFFFFFFFF:
        raise EncodeError(f"message id {frame.message_id} out of range 0..2**32-1")
    if len(frame.body) > 0xFFFFFFFF - HEADER_SIZE:
        raise EncodeError(f"a body of {len(frame.body)} bytes does not fit a u32 length")
    return bytes(
        MESSAGE.build(
            {
                "word": {"reserved": 0, "version": frame.version, "message_type": frame.message_type},
                "message_id": frame.message_id,
                "body": frame.body,
            }
        )
    )


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one whole message; :class:`DecodeError` says what is wrong with it."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"truncated: {len(raw)} bytes, a message has at least {HEADER_SIZE}")
    length = int.from_bytes(raw[2:6], "big")
    if length < HEADER_SIZE:
        raise DecodeError(f"bad length: the header says {length}, at least {HEADER_SIZE}")
    if length != len(raw):
        raise DecodeError(f"length mismatch: the header says {length}, {len(raw)} bytes given")
    parsed = MESSAGE.parse(raw)
    return Frame(parsed.word.message_type, parsed.message_id, bytes(parsed.body), parsed.word.version)


@dataclass(slots=True)
class LlrpFramerStats(FramerStats):
    """:class:`FramerStats` plus headers whose version this side does not speak (a stream out of step)."""

    bad_version: int = 0


class LlrpFramer(Framer[Frame]):
    """Splits a byte stream from (or to) a reader into :class:`Frame`\\ s.

    LLRP frames by length alone, so nothing in the stream can show where the next message starts once a
    length is wrong. A header whose length is impossible (below 10 or above ``max_length``) or whose version
    is not in ``versions`` breaks the framer: it is counted (``bad_length`` / ``bad_version``), that byte and
    everything after it are discarded (``bytes_skipped``), and :attr:`broken` says why: the connection has to
    be reopened. Frames before the bad header are returned. It never raises on input.
    """

    __slots__ = ("_buffer", "broken", "max_length", "versions")

    stats: LlrpFramerStats

    def __init__(
        self, *, max_length: int = DEFAULT_MAX_MESSAGE, versions: Iterable[int] = SUPPORTED_VERSIONS
    ) -> None:
        super().__init__()
        self.stats = LlrpFramerStats()
        self._buffer = bytearray()
        self.max_length = max_length
        self.versions = frozenset(versions)
        self.broken: str | None = None
        """Why the stream cannot be framed any more; None while it can."""

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        stats = self.stats
        if self.broken is not None:
            stats.bytes_skipped += len(data)
            return []
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        frames: list[Frame] = []
        pos = 0
        versions = self.versions
        max_length = self.max_length
        while size - pos >= HEADER_SIZE:
            word = (buffer[pos] << 8) | buffer[pos + 1]
            length = int.from_bytes(buffer[pos + 2 : pos + 6], "big")
            version = (word >> 10) & 0x07
            if length < HEADER_SIZE or length > max_length:
                stats.bad_length += 1
                self._break(f"a message header gives length {length} (allowed {HEADER_SIZE}..{max_length})")
                break
            if version not in versions:
                stats.bad_version += 1
                self._break(f"a message header gives version {version} (expected {sorted(versions)})")
                break
            end = pos + length
            if end > size:
                break
            frames.append(
                Frame(
                    word & 0x3FF,
                    int.from_bytes(buffer[pos + 6 : pos + 10], "big"),
                    bytes(buffer[pos + HEADER_SIZE : end]),
                    version,
                )
            )
            pos = end
        if self.broken is not None:
            stats.bytes_skipped += size - pos
            buffer.clear()
        elif pos:
            del buffer[:pos]
        stats.frames += len(frames)
        return frames

    def _break(self, reason: str) -> None:
        self.broken = f"stream out of step: {reason}"

    def reset(self) -> None:
        """Start over on a new stream (a new connection): forget the partial message and the breakage."""
        self._buffer.clear()
        self.broken = None
