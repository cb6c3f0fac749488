"""The framer contract (protocols/framing.py) as one test suite, for every framer.

Use it by subclassing :class:`FramerSuite` in a framer's ``test_*.py`` module, in a class whose name starts
with ``Test``, saying how to make the framer, what a valid frame is and how it is encoded::

    class TestR2000Framer(FramerSuite[r2000.Frame]):
        frames = st.builds(r2000.Frame, address=st.integers(0, 255), ...)   # valid frames
        flush = bytes(257)            # after these, no false start can still hold a frame back
        max_pending = 257             # the most a framer ever holds back

        def framer(self) -> r2000.R2000Framer:
            return r2000.R2000Framer()

        def encode(self, frame: r2000.Frame) -> bytes:
            return r2000.encode_frame(frame)

        def decode(self, raw: bytes) -> r2000.Frame:     # one whole frame; DecodeError says what is wrong
            return r2000.decode_frame(raw)

        def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool: ...
        def inert(self, garbage: bytes, frame: r2000.Frame) -> bytes: ...
        def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]: ...

What every framer must do, checked here with hypothesis:

- round trips: one frame, encoded, decodes to itself and is what the framer finds, nothing skipped;
- arbitrary bytes, fed in arbitrary chunks, never raise, and every byte is accounted for: in a frame found,
  skipped (``bytes_skipped``), held back (``pending``, bounded) or counted as a frame's own lead-in (a DL/T
  645 preamble); a one-frame decoder raises only the codec's :class:`~protocols.errors.DecodeError`;
- every valid frame is found in a stream split anywhere (arbitrary chunks; and every single cut of a
  two-frame stream, and one byte at a time), with nothing skipped;
- every valid frame is found between pieces of garbage (unless the garbage holds a valid frame by chance,
  which could hide a real one: :meth:`FramerSuite.accidental`), with exactly the garbage skipped; garbage
  that holds no candidate frame (:meth:`FramerSuite.inert`) is skipped without a rejection;
- a damaged frame (:meth:`FramerSuite.damage`) is rejected and counted in the stats (in the counter that
  says why), all its bytes skipped, and the next frame is found (resynchronisation);
- a valid frame mutated in any of the ways of ``mutations.py`` (bits flipped, cut short, its start lost,
  bytes inserted, a piece repeated or removed), fed in arbitrary chunks, never raises, every byte is
  accounted for, and the next valid frame after it is found (unless the mutation made a frame that could
  hide it, :meth:`FramerSuite.accidental`); the one-frame decoder raises only :class:`DecodeError` on it.

A framer that frames by length alone (LLRP: nothing in the stream shows where a message starts) cannot
resynchronise: it sets ``resynchronises = False``; then what comes after garbage or a damaged frame is
skipped, the framer says it is broken (:meth:`FramerSuite.broken`), and :meth:`FramerSuite.restart` (a new
connection) brings it back.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, ClassVar, Generic, TypeVar

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.framing import Framer, FramerStats

from . import mutations

FrameT = TypeVar("FrameT")

CUTS = st.lists(st.integers(0, 2000), max_size=8)
"""Where a stream is cut into the chunks the framer is fed (positions past its end are ignored)."""

# The same test functions run for every subclass: each is a different executor, on purpose.
suite_settings = settings(suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (in any order; out of range ignored) into non-empty chunks."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class FramerSuite(abc.ABC, Generic[FrameT]):
    """The framer contract; subclasses say what their framer and its frames are (see the module docstring)."""

    frames: ClassVar[st.SearchStrategy[Any]]
    """Valid frames (of ``FrameT``)."""
    lead_ins: ClassVar[st.SearchStrategy[bytes]] = st.just(b"")
    """What a frame may carry before it that is its own, neither frame nor garbage (counted by
    :meth:`accounted`)."""
    flush: ClassVar[bytes] = b""
    """Bytes that, fed after anything, resolve every false start: nothing is held back afterwards but at most
    ``pending_after_flush`` bytes."""
    pending_after_flush: ClassVar[int] = 0
    max_pending: ClassVar[int]
    """The most the framer ever holds back."""
    rejections: ClassVar[tuple[str, ...]] = ("bad_checksum", "bad_length", "overlapping")
    """The fields of the framer's stats that count rejected candidate frames."""
    resynchronises: ClassVar[bool] = True
    """False for a framer that cannot find a frame start in garbage (see the module docstring)."""

    # -- what a subclass says -----------------------------------------------------------------------------
    @abc.abstractmethod
    def framer(self) -> Framer[FrameT]:
        """A new framer."""

    @abc.abstractmethod
    def encode(self, frame: FrameT) -> bytes:
        """``frame`` on the wire (without a lead-in)."""

    @abc.abstractmethod
    def decode(self, raw: bytes) -> FrameT:
        """Exactly one whole frame; raises :class:`DecodeError`."""

    def redecoded(self, raw: bytes, frame: FrameT) -> None:
        """Check ``frame``, which :meth:`decode` made of arbitrary ``raw`` (by default: it encodes back to
        ``raw``)."""
        assert self.encode(frame) == raw

    def accounted(self, stats: FramerStats) -> int:
        """Bytes the framer counted as neither framed nor skipped (lead-ins)."""
        return 0

    def size(self, frame: FrameT) -> int:
        """The bytes ``frame`` took on the wire (by default: its encoding's; a framer that takes frames its
        encoder refuses, such as a DL/T 645 reply from a non-BCD address, says it otherwise)."""
        return len(self.encode(frame))

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        """Whether a valid frame starts in ``stream`` anywhere it could hide a real one (in garbage, or where
        the framer would take it for one), the real frames being at ``spans`` (start, end). Only called for
        a framer that resynchronises."""
        return False

    def inert(self, garbage: bytes, frame: FrameT) -> bytes:
        """``garbage`` made into bytes that hold no candidate frame, even with ``frame`` after them (may
        ``assume`` what it needs of ``frame``)."""
        raise NotImplementedError

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        """``raw`` (one encoded frame) damaged as a line damages a frame, which the framer must reject; and
        the fields of its stats of which one at least must count it (``bad_checksum`` for a bad checksum)."""
        raise NotImplementedError

    def broken(self, framer: Framer[FrameT]) -> bool:
        """Whether a framer that cannot resynchronise has lost its step."""
        return self.rejected(framer.stats) > 0

    def restart(self, framer: Framer[FrameT]) -> None:
        """Make ``framer`` start over on a new stream (a framer that cannot resynchronise)."""

    # -- helpers --------------------------------------------------------------------------------------------
    def rejected(self, stats: FramerStats) -> int:
        return sum(getattr(stats, name) for name in self.rejections)

    def feed(self, framer: Framer[FrameT], chunks: list[bytes]) -> list[FrameT]:
        found: list[FrameT] = []
        for chunk in chunks:
            found += framer.feed(chunk)
        return found

    def check_accounting(self, framer: Framer[FrameT], found: list[FrameT], size: int) -> None:
        """Every one of ``size`` bytes fed is in a frame found, skipped, held back or a lead-in."""
        stats = framer.stats
        framed = sum(self.size(frame) for frame in found)
        assert framed + stats.bytes_skipped + self.accounted(stats) + framer.pending == size
        assert stats.frames == len(found)
        assert framer.pending <= self.max_pending

    # -- the contract ---------------------------------------------------------------------------------------
    @suite_settings
    @given(data=st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        frame = data.draw(self.frames, label="frame")
        raw = self.encode(frame)
        assert self.decode(raw) == frame
        framer = self.framer()
        assert framer.feed(raw) == [frame]
        assert framer.pending == 0 and framer.stats.bytes_skipped == 0 and framer.stats.frames == 1
        assert self.rejected(framer.stats) == 0

    @suite_settings
    @given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
    def test_arbitrary_bytes_never_raise_and_every_byte_is_accounted_for(
        self, data: bytes, cuts: list[int]
    ) -> None:
        framer = self.framer()
        found = self.feed(framer, split(data, cuts))
        self.check_accounting(framer, found, len(data))

    @suite_settings
    @given(raw=st.binary(max_size=300))
    def test_decoding_arbitrary_bytes_raises_only_decode_error(self, raw: bytes) -> None:
        try:
            frame = self.decode(raw)
        except DecodeError:
            return
        self.redecoded(raw, frame)

    def _stream(self, items: list[tuple[bytes, bytes, FrameT]]) -> tuple[bytes, list[tuple[int, int]], int]:
        """The stream of (garbage, lead-in, frame) items; the spans of the frames; the lead-ins' bytes."""
        stream = bytearray()
        spans: list[tuple[int, int]] = []
        lead = 0
        for garbage, lead_in, frame in items:
            stream += garbage + lead_in
            lead += len(lead_in)
            raw = self.encode(frame)
            spans.append((len(stream), len(stream) + len(raw)))
            stream += raw
        return bytes(stream), spans, lead

    @suite_settings
    @given(data=st.data(), cuts=st.lists(st.integers(0, 1500), max_size=20))
    def test_every_frame_is_found_in_a_stream_split_anywhere(
        self, data: st.DataObject, cuts: list[int]
    ) -> None:
        items = data.draw(
            st.lists(st.tuples(st.just(b""), self.lead_ins, self.frames), min_size=1, max_size=5)
        )
        stream, spans, lead = self._stream(items)
        if self.resynchronises:
            assume(not self.accidental(stream, spans))
        framer = self.framer()
        assert self.feed(framer, split(stream, cuts)) == [frame for _, _, frame in items]
        assert framer.stats.bytes_skipped == 0 and framer.pending == 0
        assert self.accounted(framer.stats) == lead
        assert self.rejected(framer.stats) == 0 and framer.stats.frames == len(items)

    @settings(
        parent=suite_settings,
        max_examples=max(1, settings().max_examples // 8),  # each example runs every cut
    )
    @given(data=st.data())
    def test_every_single_cut_of_two_frames_and_one_byte_at_a_time(self, data: st.DataObject) -> None:
        items = data.draw(
            st.lists(st.tuples(st.just(b""), self.lead_ins, self.frames), min_size=2, max_size=2)
        )
        stream, spans, _ = self._stream(items)
        if self.resynchronises:
            assume(not self.accidental(stream, spans))
        expected = [frame for _, _, frame in items]
        for cut in range(1, len(stream)):
            framer = self.framer()
            assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == expected, cut
            assert framer.stats.bytes_skipped == 0 and framer.pending == 0
        framer = self.framer()  # and the finest split: one byte at a time
        assert self.feed(framer, [stream[i : i + 1] for i in range(len(stream))]) == expected
        assert framer.stats.bytes_skipped == 0 and framer.pending == 0

    @suite_settings
    @given(data=st.data(), tail=st.binary(max_size=30), cuts=CUTS)
    def test_every_frame_is_found_in_garbage(self, data: st.DataObject, tail: bytes, cuts: list[int]) -> None:
        if not self.resynchronises:
            # Frames before the garbage are found; what follows it may break the stream for good.
            items = data.draw(st.lists(st.tuples(st.just(b""), self.lead_ins, self.frames), max_size=3))
            stream, _, _ = self._stream(items)
            garbage = data.draw(st.binary(max_size=200), label="garbage")
            framer = self.framer()
            found = self.feed(framer, split(stream + garbage, cuts))
            assert found[: len(items)] == [frame for _, _, frame in items]
            self.check_accounting(framer, found, len(stream) + len(garbage))
            if self.broken(framer):
                assert framer.pending == 0 and self.rejected(framer.stats) == 1
            return
        items = data.draw(st.lists(st.tuples(st.binary(max_size=30), self.lead_ins, self.frames), max_size=6))
        stream, spans, lead = self._stream(items)
        stream += tail + self.flush
        assume(not self.accidental(stream, spans))
        framer = self.framer()
        assert self.feed(framer, split(stream, cuts)) == [frame for _, _, frame in items]
        framed = sum(end - start for start, end in spans)
        stats = framer.stats
        assert stats.bytes_skipped + self.accounted(stats) + framer.pending == len(stream) - framed
        assert self.accounted(stats) >= lead  # a lead-in is never taken for garbage
        assert framer.pending <= self.pending_after_flush

    @suite_settings
    @given(data=st.data(), garbage=st.binary(max_size=200))
    def test_garbage_without_a_frame_start_is_skipped_and_counted(
        self, data: st.DataObject, garbage: bytes
    ) -> None:
        frame = data.draw(self.frames, label="frame")
        if not self.resynchronises:
            # Nothing can be skipped to find a frame: garbage before one breaks the stream.
            framer = self.framer()
            assume(garbage)
            raw = self.encode(frame)
            found = framer.feed(garbage + raw)
            self.check_accounting(framer, found, len(garbage) + len(raw))
            return
        cleaned = self.inert(garbage, frame)
        lead_in = data.draw(self.lead_ins, label="lead-in")
        framer = self.framer()
        assert framer.feed(cleaned + lead_in + self.encode(frame)) == [frame]
        assert framer.stats.bytes_skipped == len(cleaned)
        assert self.accounted(framer.stats) == len(lead_in)
        assert self.rejected(framer.stats) == 0

    @suite_settings
    @given(data=st.data())
    def test_a_damaged_frame_is_rejected_counted_and_the_next_one_found(self, data: st.DataObject) -> None:
        first = data.draw(self.frames, label="first")
        second = data.draw(self.frames, label="second")
        bad, counters = self.damage(self.encode(first), data)
        good = self.encode(second)
        framer = self.framer()
        if not self.resynchronises:
            assert framer.feed(bad + good) == []
            assert self.broken(framer)
            assert self.rejected(framer.stats) == 1 == sum(getattr(framer.stats, c) for c in counters)
            assert framer.stats.bytes_skipped == len(bad) + len(good) and framer.pending == 0
            self.restart(framer)
            assert framer.feed(good) == [second]
            return
        stream = bad + good + self.flush
        assume(not self.accidental(stream, [(len(bad), len(bad) + len(good))]))
        assert framer.feed(stream) == [second]
        stats = framer.stats
        assert sum(getattr(stats, c) for c in counters) >= 1
        assert self.rejected(stats) >= 1
        assert stats.bytes_skipped + framer.pending == len(stream) - len(good)

    @suite_settings
    @given(data=st.data(), edits=mutations.mutations(), cuts=CUTS)
    def test_a_mutated_frame_never_raises_and_the_next_frame_is_found(
        self, data: st.DataObject, edits: list[mutations.Mutation], cuts: list[int]
    ) -> None:
        first = data.draw(self.frames, label="first")
        second = data.draw(self.frames, label="second")
        bad = mutations.apply_all(self.encode(first), edits)
        with contextlib.suppress(DecodeError):
            self.redecoded(bad, self.decode(bad))  # still one valid frame: it must encode back
        good = self.encode(second)
        framer = self.framer()
        if not self.resynchronises:
            found = self.feed(framer, split(bad + good, cuts))
            self.check_accounting(framer, found, len(bad) + len(good))
            if self.broken(framer):
                assert framer.pending == 0 and self.rejected(framer.stats) == 1
            if self.broken(framer):
                self.restart(framer)  # a new connection: the stream starts over
                assert framer.feed(good) == [second]
            return
        stream = bad + good + self.flush
        found = self.feed(framer, split(stream, cuts))
        self.check_accounting(framer, found, len(stream))
        assert framer.pending <= self.pending_after_flush
        if self.accidental(stream, [(len(bad), len(bad) + len(good))]):
            event("the mutation made a frame that may hide the next")
        else:
            event("checked: the next frame is found")
            assert found[-1:] == [second]
