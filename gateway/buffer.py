"""The durable buffer: where an event becomes *accepted*.

Contract (every implementation passes ``tests/gateway/buffer_suite.py``):

- :meth:`Buffer.append` returns once the events are committed; each gets a ``seq`` strictly increasing per
  gateway and never reused, across deletes and restarts.
- :meth:`Buffer.read` returns committed, unacknowledged events with ``seq > after_seq``, in seq order.
- :meth:`Buffer.ack` deletes events the upstream acknowledged (unknown seqs are ignored).
- A byte cap with a stated policy when full (``drop_oldest`` by default, or ``reject_new``); every dropped
  event is counted by reason.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from drivers.event import Event


class WhenFull(StrEnum):
    """What the buffer does when an append would exceed ``max_bytes``."""

    DROP_OLDEST = "drop_oldest"
    REJECT_NEW = "reject_new"


@dataclass(frozen=True, slots=True)
class Stored:
    """A committed event as read back from the buffer. ``data_json`` is the event's ``data`` already
    serialised as compact JSON (UTF-8), so the forwarder never re-encodes it."""

    seq: int
    device: str
    kind: str
    ts: float
    data_json: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int
    """Events stored and not yet acknowledged."""
    bytes: int
    """Bytes those events count against ``max_bytes``."""
    max_bytes: int
    last_seq: int
    """The highest seq ever assigned (0 when none)."""
    oldest_ts: float | None
    """Event time of the oldest stored event."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Events dropped, by reason, since the buffer was created (persisted across restarts)."""


class BufferFull(Exception):
    """Raised by :meth:`Buffer.append` under ``reject_new`` when nothing of the batch fits. (A batch that
    partly fits is not an error: the events that fit are committed, the rest counted as dropped.)"""


class Buffer(abc.ABC):
    @abc.abstractmethod
    async def append(self, events: Sequence[Event]) -> list[int]:
        """Commit ``events``; return their seqs (0 for an event refused under ``reject_new``). Also sets
        ``event.seq`` on each committed event."""

    @abc.abstractmethod
    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        """Up to ``limit`` stored events with ``seq > after_seq``, in seq order."""

    @abc.abstractmethod
    async def ack(self, seqs: Iterable[int]) -> None:
        """Delete these events (acknowledged upstream). Durable by the time the next append commits."""

    @abc.abstractmethod
    def stats(self) -> BufferStats:
        """A snapshot of the counters (cheap: no I/O)."""

    @abc.abstractmethod
    async def wait_for_new(self, after_seq: int) -> None:
        """Return as soon as an event with ``seq > after_seq`` is committed (at once if one already is)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit anything pending and close."""
