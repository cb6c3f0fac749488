"""The framer contract shared by every stream protocol.

A framer takes bytes as they arrive (in arbitrary pieces, with noise and corruption) and returns the whole
frames it found. It keeps a partial frame between calls, skips garbage, resynchronises after a corrupt frame,
and counts what it dropped. It is pure: no clock, no I/O.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Generic, TypeVar

FrameT = TypeVar("FrameT")


@dataclass(slots=True)
class FramerStats:
    """What a framer has seen since it was made (monotonic counters)."""

    frames: int = 0
    """Whole, valid frames returned."""
    bytes_skipped: int = 0
    """Bytes discarded while hunting for a frame start or after a rejected frame."""
    bad_checksum: int = 0
    """Candidate frames whose checksum did not match."""
    bad_length: int = 0
    """Candidate frames whose length field was impossible."""
    overlapping: int = 0
    """Candidate frames that passed their check but held a whole valid frame inside them: a false start in
    garbage whose weak checksum matched by chance, which would otherwise swallow real frames."""


class Framer(abc.ABC, Generic[FrameT]):
    """Splits a byte stream into frames. Subclasses implement :meth:`feed`."""

    def __init__(self) -> None:
        self.stats = FramerStats()

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[FrameT]:
        """Consume ``data``; return every complete, valid frame now available, in stream order."""

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Bytes held back as the start of a frame not yet complete."""
