"""The durable buffer: where an event becomes *accepted*.

Contract (every implementation passes ``tests/gateway/buffer_suite.py``):

- :meth:`Buffer.append` returns once the events are committed; each gets a ``seq`` strictly increasing per
  gateway and never reused, across deletes and restarts.
- :meth:`Buffer.read` returns committed, unacknowledged events with ``seq > after_seq``, in seq order.
- :meth:`Buffer.ack` deletes events the upstream acknowledged (unknown seqs are ignored).
- Several upstreams (:meth:`Buffer.set_upstreams`, each with a route): each event is stored once, pending
  for the upstreams whose route takes it; each upstream reads and acknowledges through its own
  :meth:`Buffer.cursor`, and the event is deleted once every upstream that routes it has acknowledged it
  (durably: a crash between two upstreams' acks deletes nothing early and loses nothing). Without
  upstreams, :meth:`Buffer.read` and :meth:`Buffer.ack` are the one implicit upstream's.
- A byte cap with a stated policy when full (``drop_oldest`` by default, or ``reject_new``), for the whole
  buffer whatever the upstreams; every dropped event is counted by reason (:class:`DropReason`), and per
  upstream that had not acknowledged it, and the counters survive restarts.
- Storage faults are never fatal once the buffer is open, and a damaged file never stops it opening: a full
  filesystem applies the same policy within the room there is (counted as ``disk_full``), a corrupt file is
  moved aside and replaced by a fresh one whose seqs continue above the old ones, and the buffer goes on
  by itself when space returns. Only what an operator must fix (a read-only or missing directory, a file
  owned by another user, another application's database) fails :meth:`Buffer.open`.

The one implementation is :class:`SqliteBuffer`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import functools
import itertools
import logging
import operator
import os
import pwd
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, NamedTuple, Self, TypeVar

from drivers.event import RECORD_TYPES, Event, Record, encode_data
from drivers.event import encode as _encode_strict
from gateway.delivery.schema import (
    ADD_TO_META,
    APPLICATION_ID,
    CORRUPT_FILES_KEY,
    DROPPED_PREFIX,
    MAX_UPSTREAMS,
    MIGRATE_1_2,
    ROW_OVERHEAD,
    SCHEMA,
    SCHEMA_VERSION,
    UPSTREAM_DROPPED_PREFIX,
)

T = TypeVar("T")

log = logging.getLogger("edgegw.buffer")


class WhenFull(StrEnum):
    """What the buffer does when an append would exceed ``max_bytes``."""

    DROP_OLDEST = "drop_oldest"
    """Delete the oldest stored events (lowest seq) until the new ones fit."""
    REJECT_NEW = "reject_new"
    """Keep what is stored; refuse the new events that do not fit (seq 0)."""


class DropReason(StrEnum):
    """The keys of :attr:`BufferStats.dropped`. Every implementation counts under exactly these names, and
    reports all of them (0 when nothing was dropped for that reason)."""

    DROPPED_OLDEST = "dropped_oldest"
    """Under ``drop_oldest``: a stored event deleted to make room for newer ones, or an event of an append
    displaced by newer events committed with it (when one commit brings more than ``max_bytes``)."""
    REJECTED_NEW = "rejected_new"
    """Under ``reject_new``: a new event refused because it did not fit."""
    OVERSIZE = "oversize"
    """Under either policy: a single event larger than ``max_bytes``, refused."""
    DISK_FULL = "disk_full"
    """The filesystem is full: an event the buffer could not keep for lack of space (a new one refused, or,
    under ``drop_oldest``, a stored one deleted to make room within the space there is)."""
    STORAGE_ERROR = "storage_error"
    """A commit failed for another reason (an I/O error) and could not be retried: its events are lost."""


class Stored(NamedTuple):
    """A committed event as read back from the buffer. ``data_json`` is the event's ``data`` already
    serialised as compact JSON (UTF-8), so the forwarder never re-encodes it. A named tuple: the forwarder
    reads tens of thousands a second, and one costs a quarter of what a frozen dataclass does to make."""

    seq: int
    device: str
    kind: str
    ts: float
    data_json: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int
    """Events stored and not yet acknowledged (as of the last commit)."""
    bytes: int
    """Bytes those events count against ``max_bytes``."""
    max_bytes: int
    last_seq: int
    """The highest seq ever assigned (0 when none)."""
    oldest_ts: float | None
    """Event time of the oldest stored event (the lowest seq; None when empty)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Events dropped, by :class:`DropReason`, since the buffer was created (persisted across restarts)."""
    fault: str | None = None
    """A storage fault in force, for people: ``"disk full: dropping oldest (drop_oldest)"``, or why no
    storage is usable right now; None when storage works normally."""
    disk_full: bool = False
    """True while the filesystem is full and the buffer keeps within the space it has."""
    corrupt_files: int = 0
    """Corrupt buffer files moved aside (``<file>.corrupt-<UTC time>``), counted across restarts."""
    upstreams: dict[str, UpstreamShare] = field(default_factory=dict)
    """Per registered upstream (:meth:`Buffer.set_upstreams`): its backlog and the drops it suffered."""
    unrouted: int = 0
    """Events since open that no upstream's route matched: not stored (nobody would ever take them)."""


@dataclass(frozen=True, slots=True)
class UpstreamShare:
    """One upstream's share of the buffer."""

    events: int
    """Stored events routed to it that it has not acknowledged."""
    bytes: int
    dropped: dict[str, int] = field(default_factory=dict)
    """Events dropped (by :class:`DropReason`) while routed to it and not acknowledged by it (persisted)."""
    oldest_ts: float | None = None
    """The event time of the oldest event it has not acknowledged (None when it has none)."""


RouteFn = Callable[[str, str], bool]
"""``route(device, kind)``: whether an event goes to an upstream."""


class BufferStoreError(Exception):
    """The buffer's storage failed or cannot be used. The message names the file.

    ::

        BufferStoreError
         +-- BufferOpenError     cannot open: a missing or read-only directory, permission denied,
         |                       another application's database, a newer schema
         +-- BufferCommitError   (no longer raised by SqliteBuffer: a failed commit is retried, or its
         |                       events are counted as dropped; kept for other implementations)
         +-- BufferReadError     a read failed for another reason than corruption
    """


class BufferOpenError(BufferStoreError):
    """The buffer file cannot be opened or created."""


class BufferCommitError(BufferStoreError):
    """A commit failed; every append that was part of it fails with this. Those events are not stored, or,
    when the failure hit the final sync itself, their fate is unknown until the file is reopened: retrying
    is at-least-once."""


class BufferReadError(BufferStoreError):
    """A read failed."""


class BufferClosedError(RuntimeError):
    """The buffer was used after :meth:`Buffer.close`."""


class Buffer(abc.ABC):
    """With several upstreams (:meth:`set_upstreams`), :meth:`read` and :meth:`ack` act on the whole
    buffer (every stored event; an ack there is an acknowledgement by every upstream); each upstream uses
    its :meth:`cursor`."""

    @abc.abstractmethod
    async def append(self, events: Sequence[Event]) -> list[int]:
        """Commit ``events``; return once committed, with their seqs in order. Also sets ``event.seq`` on
        each committed event.

        An event the cap keeps out gets seq 0 (and no seq is used up for it) and is counted in
        :attr:`BufferStats.dropped`: refused under ``reject_new``, larger than ``max_bytes`` (either
        policy), or, under ``drop_oldest``, displaced by newer events of the same commit. A refusal is not
        an error. Raises ``TypeError``/``ValueError`` before anything is committed when an event's data is
        not JSON-serialisable. If the task is cancelled while waiting, the events are still committed."""

    @abc.abstractmethod
    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        """Up to ``limit`` stored events with ``seq > after_seq``, in seq order. Never returns an event
        whose ``ack`` has returned."""

    @abc.abstractmethod
    async def ack(self, seqs: Iterable[int]) -> None:
        """Delete these events (acknowledged upstream). Once this returns, :meth:`read` no longer returns
        them; the deletion is durable by the time the next append commits (or shortly after, if none
        comes). Unknown or already deleted seqs are ignored. Deleting frees bytes for the cap."""

    @abc.abstractmethod
    def stats(self) -> BufferStats:
        """A snapshot of the counters (cheap: no I/O)."""

    @abc.abstractmethod
    async def wait_for_new(self, after_seq: int) -> None:
        """Return as soon as an event with ``seq > after_seq`` is committed (at once if one already is)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit anything pending and close. Idempotent."""

    @abc.abstractmethod
    async def set_upstreams(self, routes: Sequence[tuple[str, RouteFn]]) -> None:
        """Register the upstreams (name, route) that read this buffer, each through its own
        :meth:`cursor`. From then on each appended event is stored once, pending for every upstream whose
        route takes it (an event no route takes is not stored: :attr:`BufferStats.unrouted`), and deleted
        once each of them acknowledged it. Upstreams the buffer knew (by name, across restarts) keep their
        acknowledgements; a new one gets the events appended from now on; one no longer listed is
        forgotten: its bit is cleared, and what only it still needed is deleted. Without this call the
        buffer has one implicit upstream and :meth:`read`/:meth:`ack` are its cursor."""

    @abc.abstractmethod
    def cursor(self, name: str) -> BufferCursor:
        """The view of one registered upstream: reads what is routed to it and not acknowledged by it;
        its acks clear only its own share. ``KeyError`` for an unknown name."""


class BufferCursor:
    """One upstream's view of a :class:`Buffer` (see :class:`gateway.delivery.upstream.Cursor`)."""

    def __init__(self, buffer: SqliteBuffer, name: str) -> None:
        self.name = name
        self._buffer = buffer

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        return await self._buffer._cursor_read(self.name, after_seq, limit)

    async def ack(self, seqs: Iterable[int]) -> None:
        await self._buffer._cursor_ack(self.name, seqs)

    async def wait_for_new(self, after_seq: int) -> None:
        await self._buffer._cursor_wait(self.name, after_seq)

    def backlog(self) -> UpstreamShare:
        share = self._buffer.stats().upstreams.get(self.name)
        return share if share is not None else UpstreamShare(0, 0)

    def stats(self) -> BufferStats:
        return self._buffer.stats()


# --------------------------------------------------------------------------------------------------------
# SQLite


_CACHE_KIB: Final = 512
"""SQLite's page cache per connection (its default is 2,000 KiB). The buffer appends at the end of one table
and reads and deletes at its start, so a few hot pages are all it revisits; measured under full load, 512 KiB
kept the throughput and took 2 MB off the gateway's RSS (two connections)."""
DEFAULT_RESERVE: Final = 8 << 20
"""The spare file kept beside the buffer (``<buffer>.reserve``) and deleted when the filesystem fills: SQLite
needs free space to commit a deletion and to checkpoint its WAL, so without it a full disk could not even
free what the upstream has acknowledged. Re-created once the room is back."""
_LOW_SPACE: Final = 1 << 20
"""Less free space than this: treat an I/O error as the disk being full, and release the reserve at open."""
_RESUME_SPACE: Final = 4 << 20
"""Free space needed beside the re-created reserve to leave the disk-full state."""
_SPACE_CHECK_S: Final = 1.0
_ATTEMPTS: Final = 4
"""Tries of one transaction on a full disk: as it is, twice at a lower cap, then its deletions alone."""
_SEQ_GAP: Final = 1_000_000
_WATERMARK_AT: Final = 16
"""Offset of the highest seq in the lock file (after the holder's pid)."""
_READER_CLOSE_WAIT_S: Final = 10.0
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26
_DAMAGED: Final = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_DROPPING: Final = {
    WhenFull.DROP_OLDEST: "dropping oldest (drop_oldest)",
    WhenFull.REJECT_NEW: "dropping new (reject_new)",
}

_INSERT_HEAD: Final = "INSERT INTO events (device, kind, ts, data, size, pending) VALUES "
_INSERT_CHUNKS: Final = (128, 32, 8, 2, 1)
"""Rows per INSERT statement, largest first. The sqlite3 module releases the GIL around each statement
step and takes it back after: one step per row makes the writer thread queue for the GIL behind the
event loop a thousand times per commit. One statement of 128 rows is one step (and 768 parameters,
within even old SQLite's limit of 999)."""
_INSERTS: Final = {n: _INSERT_HEAD + ",".join(["(?, ?, ?, ?, ?, ?)"] * n) for n in _INSERT_CHUNKS}
_READ: Final = "SELECT seq, device, kind, ts, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_READ_MASK: Final = (
    "SELECT seq, device, kind, ts, data FROM events WHERE seq > ? AND pending & ? ORDER BY seq LIMIT ?"
)
_MAX_RUNS: Final = 16
_SUM_RANGE: Final = "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq BETWEEN ? AND ?"
_SUM_ACKED: Final = (
    "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq IN (SELECT seq FROM temp.acked)"
)
# A row as prepared on the caller's side: device, kind, ts, data (compact JSON, UTF-8), size, pending.
_Row = tuple[str, str, float, bytes, int, int]


@dataclass(slots=True, eq=False)
class _AppendJob:
    events: Sequence[Event]
    rows: list[_Row]
    future: asyncio.Future[list[int]]
    size: int  # of all rows
    seqs: list[int] = field(default_factory=list)  # filled in by the writer


@dataclass(slots=True, eq=False)
class _AckJob:
    seqs: list[int]
    mask: int = -1
    """The upstreams (bits) acknowledging; -1: all of them (the row goes)."""


@dataclass(slots=True, eq=False)
class _CallJob:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True, eq=False)
class _CloseJob:
    future: asyncio.Future[None]


_Job = _AppendJob | _AckJob | _CallJob | _CloseJob


@dataclass(slots=True)
class _State:
    """What the writer knows (owned by the writer thread; a copy goes to the loop after each commit)."""

    last_seq: int
    depth: int
    bytes: int
    oldest_ts: float | None
    dropped: dict[str, int]
    fault: str | None = None
    disk_full: bool = False
    corrupt_files: int = 0
    names: dict[str, int] = field(default_factory=dict)
    """Registered upstreams: name -> bit (a power of two)."""
    backlog: dict[int, list[int]] = field(default_factory=dict)
    """With two or more upstreams: bit -> [events, bytes] pending for it (with one: depth and bytes)."""
    updropped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Upstream name -> reason -> events dropped while pending for it."""
    oldest_of: dict[int, tuple[int, float]] = field(default_factory=dict)
    """With two or more upstreams: bit -> (seq, ts) of the oldest event pending for it, for the bits the
    writer has looked up since the state was made (see :func:`_oldest_of`)."""


@dataclass(slots=True)
class _Committed:
    """One transaction's outcome, handed to the loop in one callback."""

    appends: list[_AppendJob]
    deleted: dict[int, list[int]]
    """Acks committed, by mask (-1: whole rows)."""
    state: _State


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # a cancelled caller: nothing to tell
        future.set_result(value)


def _reject(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class SqliteBuffer(Buffer):
    """The durable buffer on SQLite (WAL).

    Open with :meth:`open`; one instance per file, used from the event loop it was opened on.

    **Accepted** means committed: ``append`` returns once its transaction is committed and, with
    ``synchronous="full"`` (the default), fsync'd. With ``"normal"`` a commit survives a crash of the
    process but the last commits may be lost on power failure (the WAL is synced at checkpoints only).

    **Threads.** A writer thread owns the writing connection: it takes jobs from a queue and merges every
    job waiting there into one transaction (group commit: the appends of several callers plus pending
    deletions, one fsync), inserting up to 128 rows per statement. Results go back to the loop with
    ``call_soon_threadsafe``, one callback per transaction. Reads run on the loop itself, on a second
    connection: WAL lets it read while the writer syncs, so a read never waits behind an fsync, and a
    read of 1,000 rows takes milliseconds (a reader thread was tried: it queued for the GIL behind the
    loop once per row). Also on the loop: the JSON encoding in ``append`` (once per event; a driver's
    :class:`~drivers.event.Record` encodes itself; it lets a bad event fail its caller before anything is
    queued) and the bookkeeping of acks.

    **Acks.** ``ack`` marks the seqs deleted at once (``read`` filters them out) and queues the deletion;
    it is committed with the next append, or on its own after ``ack_delay`` seconds (default 10 ms) when no
    append comes, so many acks share one transaction.

    **Upstreams.** Each registered upstream has one bit of the ``pending`` column (its name and bit kept in
    the ``upstreams`` table); an append stores the bits of the upstreams whose route takes the event (a
    route is asked once per device and kind), an upstream's ack clears its bit in the same kind of grouped
    transaction, and a row left with none is deleted. A cursor reads ``seq > after AND pending & bit``
    from a floor below which nothing is pending for it, so a live upstream rewinding to 0 never scans the
    backlog a dead one holds. With one upstream every row has its bit: reads, acks and deletes take the
    same path as without upstreams. Backlogs per upstream are counted at open and kept by the writer.

    **The cap** counts, per event, its device, kind and JSON data in UTF-8 plus :data:`ROW_OVERHEAD` bytes:
    a logical size, not the file's (SQLite pages and the WAL add roughly a third on top). When an append
    does not fit, ``when_full`` decides:

    - ``drop_oldest`` (default): in the same transaction, delete the oldest stored events (lowest seq) until
      the new ones fit, counted as ``dropped_oldest``. When one commit brings more than ``max_bytes``, its
      own oldest events are displaced too (seq 0, ``dropped_oldest``): what remains is always the newest
      run of events that fits.
    - ``reject_new``: each new event is stored if it fits, else refused (seq 0, ``rejected_new``).

    Under either policy an event larger than ``max_bytes`` is refused (seq 0, ``oversize``). The counters
    (:class:`DropReason`) live in the ``meta`` table, updated in the same transaction, so they survive
    restarts; :meth:`stats` reports them under ``dropped``.

    **Stats** are a snapshot as of the last commit, kept up to date by the writer (``depth`` and ``bytes``
    are counted from the table once at open, a scan of the ``size`` column; ``oldest_ts`` is the event time
    of the lowest stored seq, looked up by primary key after each commit that deleted anything).
    ``stats()`` does no I/O.

    **Seqs** are the table's ``INTEGER PRIMARY KEY AUTOINCREMENT``: assigned consecutively by the one
    writer, never reused after deletes or restarts (``last_seq`` comes from ``sqlite_sequence`` at open).

    **Storage faults** never fail an append: a full disk keeps the policy within the room there is
    (``disk_full``), a damaged file is moved aside and replaced (``corrupt_files``), another failed commit
    refuses its events (``storage_error``); :attr:`BufferStats.fault` says what is in force.

    **Errors**: :class:`BufferOpenError` when the place cannot be used (what an operator must fix),
    :class:`BufferReadError` for a read that fails for another reason than damage,
    :class:`BufferClosedError` after :meth:`close`.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        when_full: WhenFull,
        synchronous: str,
        ack_delay: float,
        reserve_bytes: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Internal: use :meth:`open`."""
        self.path = path
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.synchronous = synchronous
        self.ack_delay = ack_delay
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._writer_main, name=f"buffer-writer:{path.name}", daemon=True
        )
        # Reads run on the event loop's thread: a read of 1,000 rows takes a few milliseconds, and a reader
        # thread would queue for the GIL behind the loop once per row (the sqlite3 module releases it around
        # every step), which cost a third of the batched throughput. Writes keep their thread: a commit
        # waits for fsync.
        self._rconn: sqlite3.Connection | None = None
        # Loop-side state.
        self._state = _State(0, 0, 0, None, {r.value: 0 for r in DropReason})
        self._unflushed_acks: set[int] = set()  # acked, deletion not committed yet: read() filters them
        self._unflushed_max = 0  # >= every seq in _unflushed_acks
        # The highest seq a read returned. A read can see a commit before its callback has reached the loop
        # (the writer posts it after COMMIT), and a fast broker can acknowledge such an event in between:
        # its ack must count, though the loop's last_seq does not know it yet.
        self._read_max = 0
        # Upstreams (loop side): name -> bit; the route of each; the mask of (device, kind) pairs seen.
        self._bit_of: dict[str, int] = {}
        self._routes: list[tuple[int, RouteFn]] = []
        self._route_all = True  # every event goes to every upstream: no lookup per event
        self._all_mask = 1  # the pending bits of an event every upstream takes (1: the implicit one)
        self._masks: dict[tuple[str, str], int] = {}
        self._multi = False
        self._floor: dict[int, int] = {}  # bit -> no event pending for it has a seq <= this
        # bit -> its cursor's last read came back empty with every seq up to this committed: nothing new for
        # it until a later seq commits (events routed elsewhere must not wake it into a busy loop)
        self._scanned: dict[int, int] = {}
        self._unflushed_bit: dict[int, set[int]] = {}  # one upstream's acks not committed yet
        self._unflushed_bit_max: dict[int, int] = {}  # >= every seq in that upstream's set
        self.unrouted = 0
        self._commit_signal = asyncio.Event()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self.commits = 0
        self.sanitised = 0
        """Events whose data JSON could not carry as it was (NaN, a non-JSON type): stored sanitised."""
        """Transactions committed since open (one per group commit)."""
        # Writer-side state (writer thread only).
        self._conn: sqlite3.Connection | None = None
        self._wstate = _State(0, 0, 0, None, {})
        self._carry_acks: dict[int, list[int]] = {}  # acks of a failed transaction, retried with the next
        self._lock_fd: int | None = None  # see _take_lock
        self._watermark = 0  # the highest seq a file here ever handed out, as the lock file remembers it
        # Storage faults (writer thread only): see _on_full, _watch_space, _replace.
        self._reserve = _Reserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self._free_space: Callable[[Path], int] = _free_space
        self._space_cap: int | None = None  # while the disk is full: the bytes the buffer keeps within
        self._space_floor = 0
        self._space_checked = 0.0
        self._storage_tried = 0.0
        self._unsaved_drops: dict[str, int] = {}  # counted, not yet written to the file
        self._unsaved_updrops: Counter[tuple[str, str]] = Counter()  # (reason, upstream), likewise
        self._moved_unsaved = 0  # files moved aside, not yet counted in a file
        self._generation = 0  # +1 each time a fresh file replaces the one in use
        self._lost_from_backlog: dict[int, list[int]] = {}  # set by _make_room: bit -> [events, bytes]

    # ---- opening -----------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_bytes: int = 1 << 30,
        when_full: WhenFull | str = WhenFull.DROP_OLDEST,
        synchronous: str = "full",
        ack_delay: float = 0.010,
        reserve_bytes: int = DEFAULT_RESERVE,
    ) -> Self:
        """Open (or create) the buffer file at ``path``; its directory must exist.

        ``max_bytes``: the cap (see the class docstring for what counts); ``when_full``: ``drop_oldest`` or
        ``reject_new``; ``synchronous``: ``"full"`` (fsync every commit) or ``"normal"``; ``ack_delay``: how
        long an ack-only deletion may wait for an append to share its transaction, in seconds;
        ``reserve_bytes``: the spare file kept beside the buffer and released when the disk fills (0: none).

        Reopens cleanly after a normal close and after a crash (SQLite recovers the WAL). Raises
        :class:`BufferOpenError` naming the file if it cannot be used, ``ValueError`` for bad options.
        """
        path = Path(path)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
        try:
            policy = WhenFull(when_full)
        except ValueError:
            choices = ", ".join(w.value for w in WhenFull)
            raise ValueError(f"when_full must be one of {choices}, not {when_full!r}") from None
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if not ack_delay >= 0:
            raise ValueError(f"ack_delay must be >= 0, not {ack_delay!r}")
        if isinstance(reserve_bytes, bool) or not isinstance(reserve_bytes, int) or reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be a non-negative integer, not {reserve_bytes!r}")

        loop = asyncio.get_running_loop()
        buf = cls(
            path,
            max_bytes=max_bytes,
            when_full=policy,
            synchronous=synchronous,
            ack_delay=ack_delay,
            reserve_bytes=reserve_bytes,
            loop=loop,
        )
        opened: asyncio.Future[_State] = loop.create_future()
        buf._writer.start()
        buf._jobs.put(_CallJob(buf._writer_open, opened))
        try:
            state = await opened
            if buf._conn is not None:  # else there is no room for a file yet: the writer retries
                buf._reader_open()
        except BaseException:
            buf._closing = True
            await buf._shutdown_threads()
            raise
        buf._state = state
        buf._adopt(state.names)
        return buf

    def _open_error(self, err: BaseException) -> BufferOpenError:
        return BufferOpenError(f"cannot open buffer {self.path}: {err}")

    def _writer_open(self, _: sqlite3.Connection) -> _State:
        self._check_place()
        self._lock_fd, self._watermark = _take_lock(self.path)
        try:
            if self._free_space(self.path) < _LOW_SPACE:
                self._reserve.release()  # room for SQLite's -wal and -shm, and for deleting what is sent
            state = self._open_storage(None)
            if state.fault is None:
                self._reserve.ensure()
        except BaseException:
            self._release_lock()
            raise
        self._wstate = state
        return _copy_state(state)

    def _check_place(self) -> None:
        """What an operator must fix, said in one line naming the path: a missing or read-only directory, a
        file this process may not read and write (owned by another user)."""
        path, directory = self.path, self.path.parent
        if not directory.is_dir():
            raise BufferOpenError(f"cannot open buffer {path}: directory {directory} does not exist")
        if path.is_dir():
            raise BufferOpenError(f"cannot open buffer {path}: it is a directory")
        with contextlib.suppress(OSError):
            if os.statvfs(directory).f_flag & os.ST_RDONLY:
                raise BufferOpenError(
                    f"cannot open buffer {path}: the filesystem holding {directory} is mounted read-only"
                )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise BufferOpenError(
                f"cannot open buffer {path}: directory {directory} is not writable by {_whoami()} "
                f"({_owner(directory)})"
            )
        for part in _parts(path):
            if part.exists() and not os.access(part, os.R_OK | os.W_OK):
                raise BufferOpenError(
                    f"cannot open buffer {path}: {part} is not readable and writable by {_whoami()} "
                    f"({_owner(part)})"
                )
        if os.geteuid() == 0 and path.exists() and path.stat().st_uid != 0:
            log.warning(
                "buffer %s belongs to %s but this gateway runs as root: the files SQLite creates beside it "
                "(-wal, -shm) will belong to root, and the service user will not be able to open them",
                path,
                _owner(path),
            )

    def _open_storage(self, carry: _State | None) -> _State:
        """Open the buffer file, moving a damaged one aside first and starting a fresh one; install the
        connection and return the state. ``carry``: the state of a file being replaced while running (its
        counters go on in the fresh file). With no room on the filesystem even to start a file, no
        connection is installed and the state says so: the writer tries again later.
        Raises :class:`BufferOpenError` for what an operator must fix."""
        moved = False
        while True:
            try:
                conn, state = self._connect(carry, moved)
            except _Damaged as damage:
                if moved:  # a fresh file that is damaged at once: not something moving fixes
                    raise self._open_error(damage) from damage
                self._move_aside(str(damage))
                moved = True
                continue
            except _NoRoom as err:
                self._conn = None
                fault = f"disk full: cannot open {self.path} ({err}); dropping new events until there is room"
                base = carry or _State(self._watermark, 0, 0, None, {r.value: 0 for r in DropReason})
                state = _copy_state(base)
                state.fault, state.disk_full = fault, True
                state.corrupt_files += self._moved_unsaved
                log.error("%s", fault)
                return state
            self._conn = conn
            self._space_cap = None
            return state

    def _connect(self, carry: _State | None, moved: bool) -> tuple[sqlite3.Connection, _State]:
        path = self.path
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                raise _Damaged("the file is empty")
        existed = path.exists()
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=5.0)
            try:
                self._prepare(conn, carry, start_after=self._first_seq(carry, moved or not existed))
                state = self._load_state(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as err:
            failure = self._classify(err)
            if isinstance(failure, _NoRoom) and not existed:
                for part in _parts(path):  # what the attempt left is not a damaged buffer: try again later
                    with contextlib.suppress(OSError):
                        part.unlink()
            raise failure from err
        return conn, state

    def _first_seq(self, carry: _State | None, fresh_file: bool) -> int:
        """The seq a fresh file continues after. Ids are ``<gateway>:<seq>`` and consumers deduplicate on
        them, so a fresh file must never hand out a seq an earlier file did: it goes on above the highest
        one known (kept beside the buffer in its lock file after every commit), with a margin of
        :data:`_SEQ_GAP` when that figure may lag (a file lost or replaced at start); with nothing known
        after a damaged file, above the current time in milliseconds (far above any count a gateway
        reaches at its rates)."""
        if carry is not None:
            return max(carry.last_seq, self._watermark)
        if not fresh_file:
            return 0
        if self._watermark:
            return self._watermark + _SEQ_GAP
        return int(time.time() * 1000) if self._moved_unsaved else 0

    def _prepare(self, conn: sqlite3.Connection, carry: _State | None, *, start_after: int) -> None:
        """Check the file is a buffer, make it one if it is new, and set the connection up. Writes nothing
        to a file that is already a buffer (on a full disk there may be no room to)."""
        app_id, version, tables = self._check_file(conn)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BufferOpenError(f"cannot open buffer {self.path}: WAL mode unavailable (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint_pages(conn)}")
        if not {"events", "meta"} <= tables or app_id != APPLICATION_ID or version != SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")  # fails here on a read-only file
            if "events" in tables and app_id == APPLICATION_ID and version == 1:
                for statement in MIGRATE_1_2:
                    conn.execute(statement)
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if "events" not in tables:
                if start_after:
                    conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (start_after,)
                    )
                counters = dict(carry.dropped) if carry is not None else {}
                moved = (carry.corrupt_files if carry is not None else 0) + self._moved_unsaved
                rows = [(f"{DROPPED_PREFIX}{k}", v) for k, v in counters.items() if v]
                if moved:
                    rows.append((CORRUPT_FILES_KEY, moved))
                if carry is not None:  # the upstreams and their drop counts go on in the fresh file
                    conn.executemany("INSERT INTO upstreams (name, bit) VALUES (?, ?)", carry.names.items())
                    rows += [
                        (f"{UPSTREAM_DROPPED_PREFIX}{reason}:{name}", n)
                        for name, counts in carry.updropped.items()
                        for reason, n in counts.items()
                        if n
                    ]
                conn.executemany(ADD_TO_META, rows)
            conn.execute("COMMIT")
            self._moved_unsaved = 0
            if carry is not None:
                self._unsaved_drops.clear()  # the carried totals include them
                self._unsaved_updrops.clear()
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS acked (seq INTEGER PRIMARY KEY)")

    def _autocheckpoint_pages(self, conn: sqlite3.Connection) -> int:
        """How many pages the WAL may hold before SQLite copies it into the database: SQLite's 1,000 (4 MiB),
        or fewer, so that half the reserve can take them. On a full disk the pages the WAL holds beyond the
        database's end must be copied into it before the WAL can start over, and the released reserve is
        the only room there is for that."""
        if self._reserve.size == 0:
            return 1000
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return max(16, min(1000, self._reserve.size // 2 // page))

    def _classify(self, err: sqlite3.Error) -> Exception:
        """A failed open: damaged (moved aside), no room (retried later), or an operator's to fix."""
        code = _code(err)
        if code in _DAMAGED:
            return _Damaged(str(err))
        if self._is_full(err):
            return _NoRoom(str(err))
        return self._open_error(err)

    def _is_full(self, err: sqlite3.Error) -> bool:
        code = _code(err)
        if code == _SQLITE_FULL:
            return True
        # Running out of space while growing the WAL index or syncing shows as an I/O error.
        return code in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and self._free_space(self.path) < _LOW_SPACE

    def _move_aside(self, reason: str) -> Path:
        """Rename the damaged file (and its -wal and -shm) to ``<name>.corrupt-<UTC time>``, keeping it for
        ``edgegw buffer export`` to salvage. Every connection to it is closed by now."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while any(part.exists() for part in _parts(target)):
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            for src, dst in zip(_parts(self.path), _parts(target), strict=True):
                if src.exists():
                    os.replace(src, dst)
        except OSError as err:
            raise BufferOpenError(
                f"cannot open buffer {self.path}: it is damaged ({reason}) and cannot be moved aside: {err}"
            ) from err
        self._moved_unsaved += 1
        log.error(
            "buffer %s is damaged (%s): moved it aside to %s and started a fresh buffer; "
            "`edgegw buffer export --buffer %s` salvages what it still holds",
            self.path,
            reason,
            target,
            target,
        )
        return target

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _check_file(self, conn: sqlite3.Connection) -> tuple[int, int, set[str]]:
        """Refuse a database that is not a buffer (or a buffer of a newer schema) before writing to it.
        A file that is not a database at all fails on the first statement (``file is not a database``).
        Returns the application id, the schema version and the tables."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise BufferOpenError(
                f"cannot open buffer {self.path}: an SQLite database of another application "
                f"(application_id {app_id:#x}, tables {sorted(tables)})"
            )
        if version > SCHEMA_VERSION:
            raise BufferOpenError(
                f"cannot open buffer {self.path}: schema version {version} is newer than this edgegw "
                f"understands ({SCHEMA_VERSION})"
            )
        return app_id, version, tables

    @staticmethod
    def _load_state(conn: sqlite3.Connection) -> _State:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        max_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        names = {str(n): int(b) for n, b in conn.execute("SELECT name, bit FROM upstreams")}
        depth, nbytes, backlog = _count_pending(conn, multi=len(names) > 1)
        dropped = {r.value: 0 for r in DropReason}
        updropped: dict[str, dict[str, int]] = {name: {} for name in names}
        corrupt = 0
        for key, value in conn.execute("SELECT key, value FROM meta"):
            if key.startswith(DROPPED_PREFIX):
                dropped[key.removeprefix(DROPPED_PREFIX)] = value
            elif key == CORRUPT_FILES_KEY:
                corrupt = value
            elif key.startswith(UPSTREAM_DROPPED_PREFIX):
                reason, _, name = key.removeprefix(UPSTREAM_DROPPED_PREFIX).partition(":")
                if name in updropped:
                    updropped[name][reason] = value
        return _State(
            last_seq=max(row[0] if row else 0, max_seq),
            depth=depth,
            bytes=nbytes,
            oldest_ts=_oldest_ts(conn),
            dropped=dropped,
            corrupt_files=corrupt,
            names=names,
            backlog=backlog,
            updropped=updropped,
        )

    def _reader_open(self) -> None:
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=5.0)
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(_READ, (0, 0)).fetchall()  # prepare the statement now
        except sqlite3.Error as err:
            if conn is not None:
                conn.close()
            raise self._open_error(err) from err
        self._rconn = conn

    # ---- the API ---------------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> list[int]:
        self._check_open()
        if not events:
            return []
        encode = _encode_strict
        records = RECORD_TYPES
        rows: list[_Row] = []
        total = 0
        mask = self._all_mask
        route_all = self._route_all
        routed: list[int] | None = None
        for i, ev in enumerate(events):
            if not route_all:
                mask = self._mask_of(ev.device, ev.kind)
                if not mask:
                    if routed is None:
                        routed = list(range(i))
                    continue
                if routed is not None:
                    routed.append(i)
            payload = ev.data
            try:
                # A driver's Record encodes itself (faster than encoding a dict); the test is by exact type.
                data = (
                    payload.json  # type: ignore[attr-defined]  # a Record, by RECORD_TYPES
                    if type(payload) in records
                    else encode(payload).encode()
                )
            except (ValueError, TypeError, RecursionError):
                data = encode_data(payload.to_dict() if isinstance(payload, Record) else payload)[0]
                self.sanitised += 1
            device, kind = ev.device, ev.kind
            size = len(data) + ROW_OVERHEAD + len(device.encode()) + len(kind.encode())
            rows.append((device, kind, float(ev.ts), data, size, mask))
            total += size
        if routed is not None:  # some events no upstream takes: not stored
            self.unrouted += len(events) - len(routed)
            if not rows:
                return [0] * len(events)
            taken = [events[i] for i in routed]
            some: asyncio.Future[list[int]] = self._loop.create_future()
            self._jobs.put(_AppendJob(taken, rows, some, total))
            seqs = [0] * len(events)
            for i, seq in zip(routed, await some, strict=True):
                seqs[i] = seq
            return seqs
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._jobs.put(_AppendJob(events, rows, future, total))
        return await future

    def _mask_of(self, device: str, kind: str) -> int:
        key = (device, kind)
        mask = self._masks.get(key)
        if mask is None:
            mask = 0
            for bit, route in self._routes:
                if route(device, kind):
                    mask |= bit
            if len(self._masks) >= 100_000:  # bounded: device and kind names are few, but be sure
                self._masks.clear()
            self._masks[key] = mask
        return mask

    # ---- upstreams ---------------------------------------------------------------------------------------

    def _adopt(self, names: dict[str, int]) -> None:
        """Loop side: the registered upstreams as the file has them (at open)."""
        self._bit_of = dict(names)
        self._routes = [(bit, everything) for bit in names.values()]
        self._set_masks()
        for bit in names.values():
            self._floor.setdefault(bit, 0)

    def _set_masks(self) -> None:
        bits = [bit for bit, _ in self._routes]
        self._all_mask = functools.reduce(operator.or_, bits, 0) or 1
        self._route_all = all(route is everything for _, route in self._routes)
        self._multi = len(bits) > 1
        self._masks.clear()

    async def set_upstreams(self, routes: Sequence[tuple[str, RouteFn]]) -> None:
        self._check_open()
        names = [name for name, _ in routes]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique: {names}")
        if len(names) > MAX_UPSTREAMS:
            raise ValueError(f"at most {MAX_UPSTREAMS} upstreams")
        old = self._bit_of
        kept = {name: old[name] for name in names if name in old}
        used = set(old.values())  # a bit freed now is reused only by a later call (see _writer_upstreams)
        if not old and self._state.depth:
            used.discard(1)  # a schema 1 file's events (pending for bit 0) go to the first upstream
        new: dict[str, int] = dict(kept)
        free = (1 << i for i in itertools.count() if (1 << i) not in used)
        for name in names:
            if name not in new:
                new[name] = next(free)
        removed = {name: bit for name, bit in old.items() if name not in new}
        # Loop side first, in the same turn as the writer's job is queued: every append queued after the
        # job carries the new masks, every one before it the old ones (applied before the job runs).
        last = self._state.last_seq
        for name, bit in new.items():
            if name not in old:
                self._floor[bit] = 0 if not old and bit == 1 else last
        for bit in removed.values():
            if bit not in new.values():
                self._floor.pop(bit, None)
                self._scanned.pop(bit, None)
                self._unflushed_bit.pop(bit, None)
                self._unflushed_bit_max.pop(bit, None)
        self._bit_of = new
        self._routes = [(new[name], route) for name, route in routes]
        self._set_masks()
        future: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put(_CallJob(lambda conn: self._writer_upstreams(conn, new, removed), future))
        await future

    def cursor(self, name: str) -> BufferCursor:
        if name not in self._bit_of:
            raise KeyError(f"no upstream {name!r} registered with buffer {self.path}")
        return BufferCursor(self, name)

    async def _cursor_read(self, name: str, after_seq: int, limit: int) -> list[Stored]:
        if not self._multi:
            return await self.read(after_seq, limit)
        self._check_open()
        bit = self._bit_of.get(name)
        if bit is None or limit <= 0:
            return []
        floor = self._floor.get(bit, 0)
        start = max(after_seq, floor)
        # Acks not committed yet, as in read(): only those above the start matter, and a cursor reading on
        # from where it was has none (the highest of each set is kept, so that costs no scan).
        hidden_all = self._unflushed_acks if self._unflushed_max > start else None
        hidden_own = self._unflushed_bit.get(bit)
        if hidden_own is not None and self._unflushed_bit_max.get(bit, 0) <= start:
            hidden_own = None
        extra = (sum(1 for s in hidden_all if s > start) if hidden_all else 0) + (
            sum(1 for s in hidden_own if s > start) if hidden_own else 0
        )
        known = self._state.last_seq
        rows = self._read_rows(start, limit + extra, bit)
        if after_seq <= floor:
            # Nothing at or below the first row returned is pending for this upstream, and nothing can
            # become pending again: later reads start from there (a dead upstream's backlog is never
            # scanned again by a live one rewinding to 0).
            self._floor[bit] = rows[0].seq - 1 if rows else max(floor, known)
        if extra:
            rows = [
                r
                for r in rows
                if (not hidden_all or r.seq not in hidden_all) and (not hidden_own or r.seq not in hidden_own)
            ]
        if not rows:
            self._scanned[bit] = max(self._scanned.get(bit, 0), known)
        return rows[:limit] if len(rows) > limit else rows

    async def _cursor_wait(self, name: str, after_seq: int) -> None:
        """Wait for an event this cursor may read: past ``after_seq`` and past what its last empty read
        covered (with other upstreams' events arriving, ``wait_for_new`` alone would return at once)."""
        bit = self._bit_of.get(name) if self._multi else None
        scanned = self._scanned.get(bit, 0) if bit is not None else 0
        await self.wait_for_new(max(after_seq, scanned))

    async def _cursor_ack(self, name: str, seqs: Iterable[int]) -> None:
        if not self._multi:
            await self.ack(seqs)
            return
        self._check_open()
        bit = self._bit_of.get(name)
        if bit is None:
            return
        last = max(self._state.last_seq, self._read_max)
        unflushed = self._unflushed_bit.setdefault(bit, set())
        fresh = [s for s in seqs if 0 < s <= last and s not in unflushed]
        if fresh:
            unflushed.update(fresh)
            self._unflushed_bit_max[bit] = max(self._unflushed_bit_max.get(bit, 0), *fresh)
            self._jobs.put(_AckJob(fresh, bit))

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        self._check_open()
        if limit <= 0:
            return []
        # Acks whose deletion is not committed yet (or whose commit has not reached the loop): the read may
        # or may not see those rows, so they are filtered out. Only seqs above after_seq matter: a
        # forwarder reading on from its cursor filters nothing.
        unflushed = self._unflushed_acks
        if not unflushed or self._unflushed_max <= after_seq:
            return self._read_rows(after_seq, limit)
        hidden = sum(1 for s in unflushed if s > after_seq)
        rows = [r for r in self._read_rows(after_seq, limit + hidden) if r.seq not in unflushed]
        return rows[:limit] if len(rows) > limit else rows

    def _read_rows(self, after_seq: int, limit: int, bit: int = 0) -> list[Stored]:
        conn = self._rconn
        if conn is None:
            if self._closing:
                raise BufferClosedError(f"buffer {self.path} is closed")
            return []  # no usable file at the moment (being replaced, or no room for one): nothing to read
        try:
            if bit:
                rows = list(map(Stored._make, conn.execute(_READ_MASK, (after_seq, bit, limit))))
            else:
                rows = list(map(Stored._make, conn.execute(_READ, (after_seq, limit))))
            if rows and rows[-1].seq > self._read_max:
                self._read_max = rows[-1].seq
            return rows
        except sqlite3.Error as err:
            if _code(err) not in _DAMAGED:
                raise BufferReadError(f"reading buffer {self.path} failed: {err}") from err
            # Damage found by a read: the writer moves the file aside and starts a fresh one (the events
            # still in memory go there); this connection must be closed before the file is renamed.
            self._reader_close()
            damage, generation = str(err), self._generation
            self._jobs.put(
                _CallJob(
                    lambda _: self._replace(damage, generation, reader_closed=True),
                    self._loop.create_future(),
                )
            )
            return []

    async def ack(self, seqs: Iterable[int]) -> None:
        self._check_open()
        last = max(self._state.last_seq, self._read_max)
        unflushed = self._unflushed_acks
        fresh = [s for s in seqs if 0 < s <= last and s not in unflushed]
        if fresh:
            unflushed.update(fresh)
            top = max(fresh)
            self._unflushed_max = max(self._unflushed_max, top)
            self._jobs.put(_AckJob(fresh))

    def stats(self) -> BufferStats:
        s = self._state
        return BufferStats(
            depth=s.depth,
            bytes=s.bytes,
            max_bytes=self.max_bytes,
            last_seq=s.last_seq,
            oldest_ts=s.oldest_ts,
            dropped=dict(s.dropped),
            fault=s.fault,
            disk_full=s.disk_full,
            corrupt_files=s.corrupt_files,
            upstreams=self._shares(s),
            unrouted=self.unrouted,
        )

    def _shares(self, s: _State) -> dict[str, UpstreamShare]:
        shares: dict[str, UpstreamShare] = {}
        multi = len(s.names) > 1
        for name, bit in self._bit_of.items():
            if multi:
                events, nbytes = s.backlog.get(bit, (0, 0))
            else:
                events, nbytes = s.depth, s.bytes
            dropped = {r.value: 0 for r in DropReason}
            dropped.update(s.updropped.get(name, {}))
            if not events:
                oldest = None
            elif multi and bit in s.oldest_of:
                oldest = s.oldest_of[bit][1]
            else:
                oldest = s.oldest_ts  # one upstream; or not looked up yet: the whole buffer's, an upper bound
            shares[name] = UpstreamShare(events, nbytes, dropped, oldest)
        return shares

    async def wait_for_new(self, after_seq: int) -> None:
        while self._state.last_seq <= after_seq:
            self._check_open()
            await self._commit_signal.wait()

    async def close(self) -> None:
        """Commit everything pending, checkpoint the WAL, close both connections, join the threads.
        Idempotent (concurrent calls all wait for the one close)."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.ensure_future(self._close())
            self._signal()  # wake wait_for_new: it raises BufferClosedError
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        loop = self._loop
        try:
            self._reader_close()
        finally:
            closed: asyncio.Future[None] = loop.create_future()
            self._jobs.put(_CloseJob(closed))
            try:
                await closed
            finally:
                await self._shutdown_threads()

    async def _shutdown_threads(self) -> None:
        if self._writer.is_alive():
            self._jobs.put(_CloseJob(self._loop.create_future()))  # no-op if it already closed
            await asyncio.to_thread(self._writer.join)

    def _reader_close(self) -> None:
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None

    def _check_open(self) -> None:
        if self._closing:
            raise BufferClosedError(f"buffer {self.path} is closed")

    def _signal(self) -> None:
        signal, self._commit_signal = self._commit_signal, asyncio.Event()
        signal.set()

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, between transactions (for tests and tools)."""
        self._check_open()
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_CallJob(fn, future))
        return await future

    # ---- loop-side callbacks ----------------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_commit(self, done: _Committed) -> None:
        for job in done.appends:
            for ev, seq in zip(job.events, job.seqs, strict=True):
                if seq:
                    ev.seq = seq
            _resolve(job.future, job.seqs)
        for mask, seqs in done.deleted.items():
            if mask == -1:
                self._unflushed_acks.difference_update(seqs)
                if not self._unflushed_acks:
                    self._unflushed_max = 0
            else:
                for bit in _bits(mask):
                    own = self._unflushed_bit.get(bit)
                    if own:
                        own.difference_update(seqs)
                        if not own:
                            self._unflushed_bit_max[bit] = 0
        self._state = done.state
        self.commits += 1
        self._signal()  # wakes wait_for_new (which re-checks last_seq) and anyone watching commits

    def _on_refused(self, appends: list[_AppendJob], state: _State) -> None:
        """Appends the writer could not store (no room, no usable file): seq 0 for each, already counted."""
        for job in appends:
            _resolve(job.future, job.seqs)
        self._state = state
        self._signal()

    def _on_replaced(self, state: _State) -> None:
        """The writer opened a fresh file (the old one was damaged) or a file at last (there was no room):
        read from it from now on. Acks not yet committed were for the old file."""
        self._state = state
        self._unflushed_acks.clear()
        self._unflushed_bit.clear()
        self._unflushed_bit_max.clear()
        self._floor = dict.fromkeys(self._floor, 0)
        self._scanned.clear()
        self._unflushed_max = 0
        self._reader_close()
        if not self._closing:
            try:
                self._reader_open()
            except BufferOpenError as err:
                log.error("%s", err)  # reads return nothing until the writer opens a file again
        self._signal()

    # ---- the writer thread ------------------------------------------------------------------------------

    def _writer_main(self) -> None:
        jobs_q = self._jobs
        while True:
            jobs = [jobs_q.get()]
            self._drain(jobs)
            if self.ack_delay > 0 and all(isinstance(j, _AckJob) for j in jobs):
                self._linger(jobs)
            appends: list[_AppendJob] = []
            acks: dict[int, list[int]] = {}
            calls: list[_CallJob] = []
            closing: list[_CloseJob] = []
            for job in jobs:
                if isinstance(job, _AppendJob):
                    appends.append(job)
                elif isinstance(job, _AckJob):
                    acks.setdefault(job.mask, []).extend(job.seqs)
                elif isinstance(job, _CallJob):
                    calls.append(job)
                else:
                    closing.append(job)
            if appends or acks or self._carry_acks:
                self._transaction(appends, acks)
            for call in calls:
                self._run_call(call)
            if closing:
                self._writer_close(closing)
                return

    def _drain(self, jobs: list[_Job]) -> None:
        jobs_q = self._jobs
        while True:
            try:
                jobs.append(jobs_q.get_nowait())
            except queue.Empty:
                return

    def _linger(self, jobs: list[_Job]) -> None:
        """Only deletions so far: give an append up to ``ack_delay`` to come and share the transaction."""
        deadline = time.monotonic() + self.ack_delay
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                job = self._jobs.get(timeout=remaining)
            except queue.Empty:
                return
            jobs.append(job)
            self._drain(jobs)
            if not all(isinstance(j, _AckJob) for j in jobs):
                return

    def _run_call(self, call: _CallJob) -> None:
        try:
            result = call.fn(self._conn)  # type: ignore[arg-type]  # _writer_open takes no connection yet
        except BaseException as exc:
            self._post(_reject, call.future, exc)
        else:
            self._post(_resolve, call.future, result)

    def _writer_close(self, closing: list[_CloseJob]) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:  # what is committed stays in the WAL: the next open recovers it
                log.warning(
                    "closing buffer %s: the WAL checkpoint failed (%s); the next start replays it",
                    self.path,
                    err,
                )
            finally:
                conn.close()
        self._release_lock()
        for job in closing:
            self._post(_resolve, job.future, None)

    def _transaction(self, appends: list[_AppendJob], acks: dict[int, list[int]]) -> None:
        """Commit appends and deletions in one transaction. A storage fault never fails the caller: a full
        disk applies the policy within the room there is (retried at a lower cap, then deletions alone), a
        damaged file is replaced by a fresh one and the transaction retried there, and what still cannot
        be stored is refused (seq 0) and counted by reason."""
        if self._carry_acks:
            carried = self._carry_acks
            for mask, seqs in acks.items():
                carried.setdefault(mask, []).extend(seqs)
            acks = carried
        self._carry_acks = {}
        self._watch_space()
        if self._conn is None:
            self._retry_storage()
        refuse_as = DropReason.DISK_FULL
        for attempt in range(_ATTEMPTS):
            conn = self._conn
            if conn is None:
                break
            acks_only = attempt == _ATTEMPTS - 1 and self._space_cap is not None
            try:
                state = self._apply(conn, [] if acks_only else appends, acks)
            except sqlite3.Error as err:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                for job in appends:
                    job.seqs = []
                if _code(err) in _DAMAGED:
                    self._replace(str(err), self._generation, reader_closed=False)
                    acks = {}  # they were for the old file
                    continue
                if self._is_full(err):
                    self._on_full(conn, err)
                    continue
                log.error("commit to buffer %s failed: %s", self.path, err)
                refuse_as = DropReason.STORAGE_ERROR
                break
            self._unsaved_drops.clear()
            self._unsaved_updrops.clear()
            self._wstate = state
            if acks_only:
                self._refuse(appends, DropReason.DISK_FULL, post=False)
            self._post(self._on_commit, _Committed(appends, acks, _copy_state(self._wstate)))
            # After telling the loop, not before: the callers wait for the post, these do not.
            if state.last_seq and self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.pwrite(self._lock_fd, f"{state.last_seq:>20}\n".encode(), _WATERMARK_AT)
            if self._space_cap is not None:
                _checkpoint(conn)
            return
        self._carry_acks = acks
        self._refuse(appends, refuse_as, post=True)

    def _refuse(self, appends: list[_AppendJob], reason: DropReason, *, post: bool) -> None:
        """Keep these appends out (seq 0), counted under ``reason``; the count is written to the file with
        the next commit."""
        n = sum(len(job.rows) for job in appends)
        for job in appends:
            job.seqs = [0] * len(job.rows)
        if n:
            self._unsaved_drops[reason.value] = self._unsaved_drops.get(reason.value, 0) + n
            dropped = self._wstate.dropped
            dropped[reason.value] = dropped.get(reason.value, 0) + n
            up: Counter[tuple[str, str]] = Counter()
            self._count_up(up, (row[5] for job in appends for row in job.rows), reason.value)
            self._unsaved_updrops.update(up)
            for (why, name), count in up.items():
                per = self._wstate.updropped.setdefault(name, {})
                per[why] = per.get(why, 0) + count
        if post and appends:
            self._post(self._on_refused, appends, _copy_state(self._wstate))

    def _on_full(self, conn: sqlite3.Connection, err: sqlite3.Error) -> None:
        """The filesystem is full. Release the reserve, then keep the buffer within the room it has: what
        is stored now plus three quarters of the file's free pages (deleted events leave pages that new
        ones reuse without growing the file). Each further failure lowers that cap by a tenth, down to half
        of where it started (below that, new events are refused rather than stored ones deleted)."""
        released = self._reserve.release()
        _checkpoint(conn)
        st = self._wstate
        if self._space_cap is None:
            room = 0
            with contextlib.suppress(sqlite3.Error):
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                room = int(page * free * 0.75)
            self._space_cap = st.bytes + room
            self._space_floor = self._space_cap // 2
            log.error(
                "disk full at %s (%s)%s: keeping the buffer within %d bytes, %s",
                self.path,
                err,
                f", released the {self._reserve.size}-byte reserve" if released else "",
                self._space_cap,
                _DROPPING[self.when_full],
            )
        elif not released:
            self._space_cap = max(self._space_floor, int(self._space_cap * 0.9))
        st.disk_full = True
        st.fault = f"disk full: {_DROPPING[self.when_full]}"
        self._space_checked = time.monotonic()

    def _watch_space(self) -> None:
        """At most once a second while the disk is full or the reserve is missing: re-create the reserve
        when there is room for it, and go back to normal once it is in place with room to spare."""
        if self._space_cap is None and self._wstate.fault is None and self._reserve.present:
            return
        now = time.monotonic()
        if now - self._space_checked < _SPACE_CHECK_S:
            return
        self._space_checked = now
        free = self._free_space(self.path)
        if not self._reserve.present and free >= self._reserve.size + _RESUME_SPACE:
            self._reserve.ensure()
            free = self._free_space(self.path)
        if self._space_cap is not None and self._reserve.present and free >= _RESUME_SPACE:
            self._space_cap = None
            st = self._wstate
            st.disk_full, st.fault = False, None
            log.warning("disk space at %s is back (%d bytes free): buffering normally again", self.path, free)

    def _retry_storage(self) -> None:
        """No usable file (no room to start one): try again, at most once a second."""
        now = time.monotonic()
        if now - self._storage_tried < _SPACE_CHECK_S:
            return
        self._storage_tried = now
        try:
            state = self._open_storage(self._wstate)
        except BufferOpenError as err:
            log.error("%s", err)
            return
        if self._conn is None:
            return
        self._wstate = state
        self._reserve.ensure()
        log.warning("buffer %s is open again: buffering normally", self.path)
        self._generation += 1
        self._post(self._on_replaced, _copy_state(state))

    def _writer_upstreams(
        self, conn: sqlite3.Connection | None, new: dict[str, int], removed: dict[str, int]
    ) -> None:
        """Writer side of :meth:`set_upstreams`: persist the names, clear the bits of removed upstreams
        (deleting what only they still needed), and count every upstream's backlog afresh."""
        state = _copy_state(self._wstate)
        state.names = dict(new)
        state.updropped = {name: state.updropped.get(name, {}) for name in new}
        state.oldest_of = {}  # bits may be reassigned: each is looked up afresh
        gone = functools.reduce(operator.or_, (b for b in removed.values() if b not in new.values()), 0)
        if conn is not None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM upstreams")
                conn.executemany("INSERT INTO upstreams (name, bit) VALUES (?, ?)", new.items())
                if gone:
                    conn.execute("UPDATE events SET pending = pending & ~? WHERE pending & ?", (gone, gone))
                    n, size = conn.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE pending = 0"
                    ).fetchone()
                    if n:
                        conn.execute("DELETE FROM events WHERE pending = 0")
                        log.warning(
                            "upstream(s) %s removed: %d event(s) (%d bytes) only they needed are deleted",
                            ", ".join(sorted(removed)),
                            n,
                            size,
                        )
                conn.execute("COMMIT")
                state.depth, state.bytes, state.backlog = _count_pending(conn, multi=len(new) > 1)
                state.oldest_ts = _oldest_ts(conn)
            except sqlite3.Error as err:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                log.error("buffer %s: cannot record the upstreams (%s); kept in memory", self.path, err)
        self._wstate = state
        self._post(self._on_upstreams, _copy_state(state))

    def _on_upstreams(self, state: _State) -> None:
        self._state = state
        self._signal()

    def _replace(self, damage: str, generation: int, *, reader_closed: bool) -> None:
        """The file is damaged (found by a commit or a read): move it aside and go on in a fresh one.
        ``generation``: the file the damage was found in (already replaced: nothing to do)."""
        if generation != self._generation or self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        if not reader_closed:
            self._close_reader_from_writer()
        carry = self._wstate
        try:
            self._move_aside(damage)
            state = self._open_storage(carry)
        except BufferOpenError as failed:
            log.error("%s", failed)
            state = _copy_state(carry)
            state.fault = str(failed)
        self._wstate = state
        self._generation += 1
        self._post(self._on_replaced, _copy_state(state))

    def _close_reader_from_writer(self) -> None:
        """The loop owns the reading connection: ask it to close it, and wait (a connection left open on a
        renamed file would, when closed last, delete the fresh file's WAL by name)."""
        closed = threading.Event()

        def close() -> None:
            self._reader_close()
            closed.set()

        self._post(close)
        closed.wait(_READER_CLOSE_WAIT_S)

    def _apply(
        self, conn: sqlite3.Connection, appends: list[_AppendJob], acks: dict[int, list[int]]
    ) -> _State:
        """One transaction: deletions first, then the appends under the cap. Returns the new state; the
        writer's own state changes only once the commit succeeded."""
        old = self._wstate
        depth, nbytes, last_seq = old.depth, old.bytes, old.last_seq
        dropped: dict[str, int] = {}
        updropped: Counter[tuple[str, str]] = Counter()
        multi = len(old.names) > 1
        backlog = {bit: list(v) for bit, v in old.backlog.items()} if multi else old.backlog
        deleted_any = False
        conn.execute("BEGIN IMMEDIATE")

        for mask, seqs in acks.items():
            if not seqs:
                continue
            if not multi or mask == -1:
                if multi:
                    for pending, count, size in _group_pending(conn, seqs):
                        for bit in _bits(pending):
                            share = backlog.setdefault(bit, [0, 0])
                            share[0] -= count
                            share[1] -= size
                n, freed = _delete(conn, seqs)
            else:
                n = freed = 0
                for pending, count, size in _clear(conn, seqs, mask):
                    for bit in _bits(pending & mask):
                        share = backlog.setdefault(bit, [0, 0])
                        share[0] -= count
                        share[1] -= size
                    if not pending & ~mask:
                        n += count
                        freed += size
            if n:
                depth -= n
                nbytes -= freed
                deleted_any = True

        if appends:
            incoming = sum(job.size for job in appends)
            rows: Iterable[_Row]
            space_cap = self._space_cap
            cap = self.max_bytes if space_cap is None else min(self.max_bytes, space_cap)
            if nbytes + incoming <= cap:  # the common case: everything fits
                rows = itertools.chain.from_iterable(job.rows for job in appends)
                added = 0
                for job in appends:
                    n = len(job.rows)
                    job.seqs = list(range(last_seq + added + 1, last_seq + added + 1 + n))
                    added += n
                nbytes += incoming
                if multi:
                    rows = list(rows)
                    _add_backlog(backlog, rows)
            else:
                rows, n, freed, added = self._make_room(
                    conn, appends, nbytes, last_seq, cap=cap, dropped=dropped, updropped=updropped
                )
                if n:
                    depth -= n
                    nbytes -= freed
                    deleted_any = True
                nbytes += sum(row[4] for row in rows)
                if multi:
                    for bit, lost in self._lost_from_backlog.items():
                        share = backlog.setdefault(bit, [0, 0])
                        share[0] -= lost[0]
                        share[1] -= lost[1]
                    _add_backlog(backlog, rows)
            if added:
                _insert(conn, rows)
                last_seq += added
                depth += added
                # One writer, AUTOINCREMENT: SQLite assigns last_seq + 1, + 2, ... as counted above.
                assigned = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                if assigned is None or assigned[0] != last_seq:
                    raise RuntimeError(f"seq mismatch: expected {last_seq}, SQLite assigned {assigned}")

        if dropped or self._unsaved_drops:
            counts = Counter(dropped)
            counts.update(self._unsaved_drops)  # counted while nothing could be written
            conn.executemany(ADD_TO_META, [(f"{DROPPED_PREFIX}{reason}", n) for reason, n in counts.items()])
        if updropped or self._unsaved_updrops:
            upcounts = updropped + self._unsaved_updrops
            conn.executemany(
                ADD_TO_META,
                [(f"{UPSTREAM_DROPPED_PREFIX}{reason}:{name}", n) for (reason, name), n in upcounts.items()],
            )
        if deleted_any or (old.depth == 0 and depth > 0):
            oldest_ts = _oldest_ts(conn)
        else:
            oldest_ts = old.oldest_ts if depth else None
        oldest_of = (
            _oldest_of(conn, old, backlog, acks, deleted_any, last_seq=old.last_seq)
            if multi
            else old.oldest_of
        )
        conn.execute("COMMIT")

        totals = dict(old.dropped)
        for reason, n in dropped.items():
            totals[reason] = totals.get(reason, 0) + n
        uptotals = old.updropped
        if updropped:
            uptotals = {name: dict(d) for name, d in old.updropped.items()}
            for (reason, name), n in updropped.items():
                per = uptotals.setdefault(name, {})
                per[reason] = per.get(reason, 0) + n
        return _State(
            last_seq=last_seq,
            depth=depth,
            bytes=nbytes,
            oldest_ts=oldest_ts,
            dropped=totals,
            fault=old.fault,
            disk_full=old.disk_full,
            corrupt_files=old.corrupt_files,
            names=old.names,
            backlog=backlog,
            updropped=uptotals,
            oldest_of=oldest_of,
        )

    def _count_up(self, updropped: Counter[tuple[str, str]], masks: Iterable[int], reason: str) -> None:
        """Count events dropped for ``reason`` against each registered upstream they were pending for."""
        names = self._wstate.names
        if not names:
            return
        by_bit = {bit: name for name, bit in names.items()}
        for mask, n in Counter(masks).items():
            for bit in _bits(mask):
                name = by_bit.get(bit)
                if name is not None:
                    updropped[(reason, name)] += n

    def _make_room(
        self,
        conn: sqlite3.Connection,
        appends: list[_AppendJob],
        nbytes: int,
        last_seq: int,
        *,
        cap: int,
        dropped: dict[str, int],
        updropped: Counter[tuple[str, str]],
    ) -> tuple[list[_Row], int, int, int]:
        """Apply the cap to appends that do not all fit. Sets each job's seqs (0 for what is kept out),
        deletes stored events under ``drop_oldest``, counts drops into ``dropped``. Returns the rows to
        insert, the number of stored events deleted, the bytes that freed, and the number of rows.
        ``cap`` is ``max_bytes``, or less while the disk is full: what that costs is counted as
        ``disk_full``."""
        order = [(job, i, job.rows[i]) for job in appends for i in range(len(job.rows))]
        for job in appends:
            job.seqs = [0] * len(job.rows)
        self._lost_from_backlog = {}
        fits = [item for item in order if item[2][4] <= self.max_bytes]
        if len(fits) < len(order):
            dropped[DropReason.OVERSIZE.value] = len(order) - len(fits)
            self._count_up(updropped, (it[2][5] for it in order if it[2][4] > self.max_bytes), "oversize")
        full = cap < self.max_bytes
        if full:
            room_for = [item for item in fits if item[2][4] <= cap]
            if len(room_for) < len(fits):
                dropped[DropReason.DISK_FULL.value] = len(fits) - len(room_for)
                self._count_up(updropped, (it[2][5] for it in fits if it[2][4] > cap), "disk_full")
            fits = room_for
        kept: list[tuple[_AppendJob, int, _Row]] = []
        n = freed = 0
        if self.when_full is WhenFull.REJECT_NEW:
            room = cap - nbytes
            for item in fits:
                if item[2][4] <= room:
                    kept.append(item)
                    room -= item[2][4]
            if len(kept) < len(fits):
                reason = DropReason.DISK_FULL if full else DropReason.REJECTED_NEW
                dropped[reason.value] = dropped.get(reason.value, 0) + len(fits) - len(kept)
                kept_ids = {id(item) for item in kept}
                self._count_up(updropped, (it[2][5] for it in fits if id(it) not in kept_ids), reason.value)
        else:
            # The newest run of new events that fits on its own; the oldest stored events make room for it.
            total = 0
            start = len(fits)
            while start > 0 and total + fits[start - 1][2][4] <= cap:
                start -= 1
                total += fits[start][2][4]
            kept = fits[start:]
            need = nbytes + total - cap
            if need > 0:
                cutoff = 0
                cursor = conn.execute("SELECT seq, size FROM events ORDER BY seq")
                for seq, size in cursor:
                    n += 1
                    freed += size
                    cutoff = seq
                    if freed >= need:
                        break
                cursor.close()
                lost = conn.execute(
                    "SELECT pending, count(*), sum(size) FROM events WHERE seq <= ? GROUP BY pending",
                    (cutoff,),
                ).fetchall()
                conn.execute("DELETE FROM events WHERE seq <= ?", (cutoff,))
            else:
                lost = []
            if start + n:
                reason = DropReason.DISK_FULL if full else DropReason.DROPPED_OLDEST
                dropped[reason.value] = dropped.get(reason.value, 0) + start + n
                self._count_up(updropped, (it[2][5] for it in fits[:start]), reason.value)
                masks: list[int] = []
                for pending, count, size in lost:
                    masks += [pending] * count
                    for bit in _bits(pending):
                        share = self._lost_from_backlog.setdefault(bit, [0, 0])
                        share[0] += count
                        share[1] += size
                self._count_up(updropped, masks, reason.value)
        for job, i, _ in kept:
            last_seq += 1
            job.seqs[i] = last_seq
        return [row for _, _, row in kept], n, freed, len(kept)


def _take_lock(path: Path) -> tuple[int, int]:
    """An exclusive lock on ``<buffer>.lock``, held while the buffer is open; returns its descriptor and the
    highest seq it remembers.

    Two gateways on one buffer file would both forward and delete the same events: each would see rows
    vanish that it never acknowledged, and the seq counters they keep would disagree. The lock makes the
    second one fail at start, naming the first one's pid. (Readers such as ``edgegw buffer export`` open the
    database read-only and take no lock.) The file also keeps the highest seq handed out, rewritten in place
    after each commit: a fresh file that replaces a damaged or lost one continues above it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise BufferOpenError(f"cannot open buffer {path}: lock file {lock_path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").split("\n")[0].strip() or "unknown"
        os.close(fd)
        raise BufferOpenError(
            f"cannot open buffer {path}: it is in use by another gateway (pid {holder}); "
            "one gateway per buffer file"
        ) from None
    try:
        watermark = int(os.pread(fd, 21, _WATERMARK_AT).decode("ascii").strip() or 0)
    except (ValueError, UnicodeDecodeError):
        watermark = 0
    with contextlib.suppress(OSError):  # no room for a few bytes: the lock holds all the same
        os.pwrite(fd, f"{os.getpid():<15}\n{watermark:>20}\n".encode(), 0)
    return fd, max(watermark, 0)


class _Damaged(Exception):
    """The file is not a usable database (corrupt, truncated, empty): it is moved aside."""


class _NoRoom(Exception):
    """No room on the filesystem even to open the file."""


class _Reserve:
    """The spare file released when the disk fills (see :data:`DEFAULT_RESERVE`)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._made = False

    @property
    def present(self) -> bool:
        """In place (or none is wanted), as far as this buffer made and released it: no I/O, it is asked
        before every commit."""
        return self.size == 0 or self._made

    def ensure(self) -> bool:
        """Create it (allocated blocks, not a sparse file) if missing; False when there is no room."""
        if self.size == 0:  # none wanted: one left from an earlier setting is space for nothing
            with contextlib.suppress(OSError):
                self.path.unlink()
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            log.warning("cannot create the disk reserve %s: %s", self.path, err.strerror)
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.warning("no room for the %d-byte disk reserve %s: %s", self.size, self.path, err.strerror)
            return False
        os.close(fd)
        self._made = True
        return True

    def release(self) -> bool:
        """Delete it; True if that freed its space."""
        self._made = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.error("cannot release the disk reserve %s: %s", self.path, err.strerror)
            return False
        return True


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and truncate it: on a full disk the WAL cannot start over until its
    pages are in the database (new pages make the database grow, into the released reserve), and a WAL
    that keeps growing takes the last free bytes. Busy (a read under way) or failing: tried again after
    the next commit."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _free_space(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _code(err: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (0 when the module gave none)."""
    return int(getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF


def _parts(path: Path) -> tuple[Path, Path, Path]:
    """A database file and the two files SQLite keeps beside it in WAL mode."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _whoami() -> str:
    return _user(os.geteuid())


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as err:
        return err.strerror or str(err)
    return f"owned by {_user(st.st_uid)}, mode {st.st_mode & 0o7777:04o}"


def _insert(conn: sqlite3.Connection, rows: Iterable[_Row]) -> None:
    """Insert ``rows`` in order, in as few statement steps as :data:`_INSERT_CHUNKS` allows."""
    pending = list(rows)
    flat = list(itertools.chain.from_iterable(pending))
    total = len(pending)
    done = 0
    for n in _INSERT_CHUNKS:
        statement = _INSERTS[n]
        width = n * 6
        while total - done >= n:
            conn.execute(statement, flat[done * 6 : done * 6 + width])
            done += n


def _delete(conn: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
    """Delete these seqs; return how many rows that deleted and their bytes. Acks mostly come in runs of
    consecutive seqs: a few runs are deleted by range, anything more scattered through a temp table."""
    ordered = sorted(set(seqs))
    runs: list[tuple[int, int]] = []
    start = prev = ordered[0]
    for s in ordered[1:]:
        if s != prev + 1:
            runs.append((start, prev))
            if len(runs) > _MAX_RUNS:
                break
            start = s
        prev = s
    else:
        runs.append((start, prev))
    n = freed = 0
    if len(runs) <= _MAX_RUNS:
        for lo, hi in runs:
            count, size = conn.execute(_SUM_RANGE, (lo, hi)).fetchone()
            if count:
                conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (lo, hi))
                n += count
                freed += size
        return n, freed
    conn.executemany("INSERT OR IGNORE INTO temp.acked (seq) VALUES (?)", [(s,) for s in ordered])
    n, freed = conn.execute(_SUM_ACKED).fetchone()
    if n:
        conn.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM temp.acked)")
    conn.execute("DELETE FROM temp.acked")
    return n, freed


def everything(_device: str, _kind: str) -> bool:
    """The route of an upstream that takes every event."""
    return True


def _count_pending(conn: sqlite3.Connection, *, multi: bool) -> tuple[int, int, dict[int, list[int]]]:
    """Events and bytes stored, and (with several upstreams) per bit: [events, bytes] pending for it."""
    if not multi:
        depth, nbytes = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
        return int(depth), int(nbytes), {}
    depth = nbytes = 0
    backlog: dict[int, list[int]] = {}
    for pending, count, size in conn.execute(
        "SELECT pending, count(*), coalesce(sum(size), 0) FROM events GROUP BY pending"
    ):
        depth += count
        nbytes += size
        for bit in _bits(pending):
            share = backlog.setdefault(bit, [0, 0])
            share[0] += count
            share[1] += size
    return depth, nbytes, backlog


def _add_backlog(backlog: dict[int, list[int]], rows: Iterable[_Row]) -> None:
    for row in rows:
        for bit in _bits(row[5]):
            share = backlog.get(bit)
            if share is None:
                share = backlog[bit] = [0, 0]
            share[0] += 1
            share[1] += row[4]


def _runs(seqs: list[int]) -> list[tuple[int, int]] | None:
    """Consecutive runs of ``seqs`` (lo, hi), or None when there are more than :data:`_MAX_RUNS`."""
    ordered = sorted(set(seqs))
    runs: list[tuple[int, int]] = []
    start = prev = ordered[0]
    for s in ordered[1:]:
        if s != prev + 1:
            runs.append((start, prev))
            if len(runs) > _MAX_RUNS:
                return None
            start = s
        prev = s
    runs.append((start, prev))
    return runs


def _group_pending(conn: sqlite3.Connection, seqs: list[int]) -> list[tuple[int, int, int]]:
    """(pending, events, bytes) of the stored rows among ``seqs``, grouped by their pending bits."""
    runs = _runs(seqs)
    groups: Counter[int] = Counter()
    sizes: Counter[int] = Counter()
    if runs is None:
        conn.executemany("INSERT OR IGNORE INTO temp.acked (seq) VALUES (?)", [(s,) for s in set(seqs)])
        found = conn.execute(
            "SELECT pending, count(*), sum(size) FROM events WHERE seq IN (SELECT seq FROM temp.acked) "
            "GROUP BY pending"
        ).fetchall()
        conn.execute("DELETE FROM temp.acked")
    else:
        found = []
        for lo, hi in runs:
            found += conn.execute(
                "SELECT pending, count(*), sum(size) FROM events WHERE seq BETWEEN ? AND ? GROUP BY pending",
                (lo, hi),
            ).fetchall()
    for pending, count, size in found:
        groups[pending] += count
        sizes[pending] += size
    return [(p, groups[p], sizes[p]) for p in groups]


def _clear(conn: sqlite3.Connection, seqs: list[int], mask: int) -> list[tuple[int, int, int]]:
    """Clear ``mask`` from the pending bits of these rows (acknowledged by those upstreams), deleting the
    rows left with none. Returns (pending before, events, bytes) of the rows that had a bit of ``mask``."""
    touched = [g for g in _group_pending(conn, seqs) if g[0] & mask]
    if not touched:
        return []
    runs = _runs(seqs)
    if runs is None:
        conn.executemany("INSERT OR IGNORE INTO temp.acked (seq) VALUES (?)", [(s,) for s in set(seqs)])
        where = "seq IN (SELECT seq FROM temp.acked)"
        conn.execute(f"UPDATE events SET pending = pending & ~? WHERE {where} AND pending & ?", (mask, mask))
        conn.execute(f"DELETE FROM events WHERE {where} AND pending = 0")
        conn.execute("DELETE FROM temp.acked")
    else:
        for lo, hi in runs:
            conn.execute(
                "UPDATE events SET pending = pending & ~? WHERE seq BETWEEN ? AND ? AND pending & ?",
                (mask, lo, hi, mask),
            )
            conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ? AND pending = 0", (lo, hi))
    return touched


def _oldest_ts(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT ts FROM events ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _copy_state(s: _State) -> _State:
    return _State(
        s.last_seq,
        s.depth,
        s.bytes,
        s.oldest_ts,
        dict(s.dropped),
        s.fault,
        s.disk_full,
        s.corrupt_files,
        dict(s.names),
        {bit: list(v) for bit, v in s.backlog.items()},
        {name: dict(d) for name, d in s.updropped.items()},
        dict(s.oldest_of),
    )


def _oldest_of(
    conn: sqlite3.Connection,
    old: _State,
    backlog: dict[int, list[int]],
    acks: dict[int, list[int]],
    deleted_any: bool,
    *,
    last_seq: int,
) -> dict[int, tuple[int, float]]:
    """Each upstream's oldest pending event (seq, ts) after a transaction, for the age of its backlog.

    Looked up again only for a bit this transaction may have moved: acknowledged by it, rows deleted (acks
    of the last upstream, dropped for room), or a backlog that was empty. A lookup starts at the bit's last
    known oldest seq (rows before it are not pending for it, and seqs only grow), so over a buffer's life
    each row is passed over at most once per upstream: an upstream that is far behind never costs the others
    a scan of its backlog."""
    out: dict[int, tuple[int, float]] = {}
    acked = 0
    for mask, seqs in acks.items():
        if seqs:
            acked |= -1 if mask == -1 else mask
    for bit, (events, _) in backlog.items():
        if events <= 0:
            continue
        known = old.oldest_of.get(bit)
        if known is not None and not (deleted_any or bit & acked):
            out[bit] = known
            continue
        if known is not None:
            start = known[0]
        elif old.backlog.get(bit, (0, 0))[0] <= 0:
            start = last_seq + 1  # empty before: its oldest is among this transaction's appends
        else:
            start = 0  # not looked up yet since the state was made
        row = conn.execute(
            "SELECT seq, ts FROM events WHERE seq >= ? AND pending & ? ORDER BY seq LIMIT 1", (start, bit)
        ).fetchone()
        if row is not None:
            out[bit] = (int(row[0]), float(row[1]))
    return out


def _bits(mask: int) -> Iterable[int]:
    """The single bits of ``mask``."""
    while mask:
        low = mask & -mask
        yield low
        mask ^= low
