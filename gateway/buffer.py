"""The durable buffer: where an event becomes *accepted*.

Contract (every implementation passes ``tests/gateway/buffer_suite.py``):

- :meth:`Buffer.append` returns once the events are committed; each gets a ``seq`` strictly increasing per
  gateway and never reused, across deletes and restarts.
- :meth:`Buffer.read` returns committed, unacknowledged events with ``seq > after_seq``, in seq order.
- :meth:`Buffer.ack` deletes events the upstream acknowledged (unknown seqs are ignored).
- A byte cap with a stated policy when full (``drop_oldest`` by default, or ``reject_new``); every dropped
  event is counted by reason (:class:`DropReason`), and the counters survive restarts.

The one implementation is :class:`SqliteBuffer`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import itertools
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, NamedTuple, Self, TypeVar

from drivers.event import EncodedData, Event

T = TypeVar("T")


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


class BufferStoreError(Exception):
    """The buffer's storage failed or cannot be used. The message names the file.

    ::

        BufferStoreError
         +-- BufferOpenError     cannot open: missing directory, not a database (or not a buffer), newer
         |                       schema, permission denied
         +-- BufferCommitError   a transaction failed (disk full, I/O error): the appends waiting on it fail
         +-- BufferReadError     a read failed
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


# --------------------------------------------------------------------------------------------------------
# SQLite


_APPLICATION_ID: Final = 0x45475742  # "EGWB", in the SQLite header: this file is an edgegw buffer
_CACHE_KIB: Final = 512
"""SQLite's page cache per connection (its default is 2,000 KiB). The buffer appends at the end of one table
and reads and deletes at its start, so a few hot pages are all it revisits; measured under full load, 512 KiB
kept the throughput and took 2 MB off the gateway's RSS (two connections)."""
_SCHEMA_VERSION: Final = 1
ROW_OVERHEAD: Final = 24
"""Bytes counted per event on top of its device, kind and JSON data (ts, seq and size, 8 bytes each)."""

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_strict: Final = _ENCODER.encode


def _sanitise(value: object) -> object:
    """``value`` with what JSON cannot carry replaced: NaN and infinities by null, other non-JSON values
    by their string form."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitise(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def encode_data(data: object) -> tuple[bytes, bool]:
    """An event's data as compact, strictly valid JSON (UTF-8), and whether it had to be sanitised. Never
    raises: a driver emitting a NaN or a non-JSON value must not stop the pipeline nor lose the event."""
    try:
        return _encode_strict(data).encode(), False
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return _encode_strict(_sanitise(data)).encode(), True
    except (ValueError, TypeError, RecursionError):  # a circular structure
        return _encode_strict({"unencodable": repr(data)[:4096]}).encode(), True


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT    NOT NULL,
        kind   TEXT    NOT NULL,
        ts     REAL    NOT NULL,
        data   BLOB    NOT NULL,  -- the event's data as compact JSON, UTF-8
        size   INTEGER NOT NULL   -- bytes counted against the cap
    )""",
    # dropped.<reason> -> count
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)
_INSERT_HEAD: Final = "INSERT INTO events (device, kind, ts, data, size) VALUES "
_INSERT_CHUNKS: Final = (128, 32, 8, 2, 1)
"""Rows per INSERT statement, largest first. The sqlite3 module releases the GIL around each statement
step and takes it back after: one step per row makes the writer thread queue for the GIL behind the
event loop a thousand times per commit. One statement of 128 rows is one step (and 640 parameters,
within even old SQLite's limit of 999)."""
_INSERTS: Final = {n: _INSERT_HEAD + ",".join(["(?, ?, ?, ?, ?)"] * n) for n in _INSERT_CHUNKS}
_READ: Final = "SELECT seq, device, kind, ts, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_MAX_RUNS: Final = 16
_SUM_RANGE: Final = "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq BETWEEN ? AND ?"
_SUM_ACKED: Final = (
    "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq IN (SELECT seq FROM temp.acked)"
)
_COUNT_DROP: Final = " ".join(
    (
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
    )
)

# A row as prepared on the caller's side: device, kind, ts, data (compact JSON, UTF-8), size.
_Row = tuple[str, str, float, bytes, int]


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


@dataclass(slots=True)
class _Committed:
    """One transaction's outcome, handed to the loop in one callback."""

    appends: list[_AppendJob]
    deleted: list[int]
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
    loop once per row). Also on the loop: the JSON encoding in ``append`` (once per event, unless the
    driver brought it as :class:`~drivers.event.EncodedData`; it lets a bad event fail its caller before
    anything is queued) and the bookkeeping of acks.

    **Acks.** ``ack`` marks the seqs deleted at once (``read`` filters them out) and queues the deletion;
    it is committed with the next append, or on its own after ``ack_delay`` seconds (default 10 ms) when no
    append comes, so many acks share one transaction.

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

    **Errors**: :class:`BufferOpenError` when the file cannot be used, :class:`BufferCommitError` for every
    append in a transaction that failed (disk full, I/O error), :class:`BufferReadError`,
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
        self._carry_acks: list[int] = []  # deletions of a failed transaction, retried with the next one
        self._lock_fd: int | None = None  # see _take_lock

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
    ) -> Self:
        """Open (or create) the buffer file at ``path``; its directory must exist.

        ``max_bytes``: the cap (see the class docstring for what counts); ``when_full``: ``drop_oldest`` or
        ``reject_new``; ``synchronous``: ``"full"`` (fsync every commit) or ``"normal"``; ``ack_delay``: how
        long an ack-only deletion may wait for an append to share its transaction, in seconds.

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

        loop = asyncio.get_running_loop()
        buf = cls(
            path,
            max_bytes=max_bytes,
            when_full=policy,
            synchronous=synchronous,
            ack_delay=ack_delay,
            loop=loop,
        )
        opened: asyncio.Future[_State] = loop.create_future()
        buf._writer.start()
        buf._jobs.put(_CallJob(buf._writer_open, opened))
        try:
            state = await opened
            buf._reader_open()
        except BaseException:
            buf._closing = True
            await buf._shutdown_threads()
            raise
        buf._state = state
        return buf

    def _open_error(self, err: BaseException) -> BufferOpenError:
        return BufferOpenError(f"cannot open buffer {self.path}: {err}")

    def _writer_open(self, _: sqlite3.Connection) -> _State:
        if not self.path.parent.is_dir():
            raise BufferOpenError(
                f"cannot open buffer {self.path}: directory {self.path.parent} does not exist"
            )
        if self.path.is_dir():
            raise BufferOpenError(f"cannot open buffer {self.path}: it is a directory")
        self._lock_fd = _take_lock(self.path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=5.0)
        except sqlite3.Error as err:
            self._release_lock()
            raise self._open_error(err) from err
        try:
            self._check_file(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BufferOpenError(f"cannot open buffer {self.path}: WAL mode unavailable (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("BEGIN IMMEDIATE")  # fails here on a read-only file
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS acked (seq INTEGER PRIMARY KEY)")
            state = self._load_state(conn)
        except BufferOpenError:
            conn.close()
            self._release_lock()
            raise
        except sqlite3.Error as err:
            conn.close()
            self._release_lock()
            raise self._open_error(err) from err
        self._conn = conn
        self._wstate = state
        return _copy_state(state)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _check_file(self, conn: sqlite3.Connection) -> None:
        """Refuse a database that is not a buffer (or a buffer of a newer schema) before writing to it.
        A file that is not a database at all fails on the first statement (``file is not a database``)."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != _APPLICATION_ID and (app_id != 0 or tables):
            raise BufferOpenError(
                f"cannot open buffer {self.path}: an SQLite database of another application "
                f"(application_id {app_id:#x}, tables {sorted(tables)})"
            )
        if version > _SCHEMA_VERSION:
            raise BufferOpenError(
                f"cannot open buffer {self.path}: schema version {version} is newer than this edgegw "
                f"understands ({_SCHEMA_VERSION})"
            )

    @staticmethod
    def _load_state(conn: sqlite3.Connection) -> _State:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        depth, nbytes, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM events"
        ).fetchone()
        dropped = {r.value: 0 for r in DropReason}
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped.%'"):
            dropped[key.removeprefix("dropped.")] = value
        return _State(
            last_seq=max(row[0] if row else 0, max_seq),
            depth=depth,
            bytes=nbytes,
            oldest_ts=_oldest_ts(conn),
            dropped=dropped,
        )

    def _reader_open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=5.0)
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(_READ, (0, 0)).fetchall()  # prepare the statement now
        except sqlite3.Error as err:
            raise self._open_error(err) from err
        self._rconn = conn

    # ---- the API ---------------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> list[int]:
        self._check_open()
        if not events:
            return []
        encode = _encode_strict
        rows: list[_Row] = []
        total = 0
        for ev in events:
            payload = ev.data
            if type(payload) is EncodedData:  # a hot-path driver encoded it already
                data = payload.json
            else:
                try:
                    data = encode(payload).encode()
                except (ValueError, TypeError, RecursionError):
                    data = encode_data(payload)[0]
                    self.sanitised += 1
            device, kind = ev.device, ev.kind
            size = len(data) + ROW_OVERHEAD + len(device.encode()) + len(kind.encode())
            rows.append((device, kind, float(ev.ts), data, size))
            total += size
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._jobs.put(_AppendJob(events, rows, future, total))
        return await future

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

    def _read_rows(self, after_seq: int, limit: int) -> list[Stored]:
        conn = self._rconn
        if conn is None:
            raise BufferClosedError(f"buffer {self.path} is closed")
        try:
            return list(map(Stored._make, conn.execute(_READ, (after_seq, limit))))
        except sqlite3.Error as err:
            raise BufferReadError(f"reading buffer {self.path} failed: {err}") from err

    async def ack(self, seqs: Iterable[int]) -> None:
        self._check_open()
        last = self._state.last_seq
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
        )

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
        if done.deleted:
            self._unflushed_acks.difference_update(done.deleted)
            if not self._unflushed_acks:
                self._unflushed_max = 0
        self._state = done.state
        self.commits += 1
        self._signal()  # wakes wait_for_new (which re-checks last_seq) and anyone watching commits

    def _on_failed(self, jobs: list[_AppendJob], exc: BaseException) -> None:
        for job in jobs:
            _reject(job.future, exc)

    # ---- the writer thread ------------------------------------------------------------------------------

    def _writer_main(self) -> None:
        jobs_q = self._jobs
        while True:
            jobs = [jobs_q.get()]
            self._drain(jobs)
            if self.ack_delay > 0 and all(isinstance(j, _AckJob) for j in jobs):
                self._linger(jobs)
            appends: list[_AppendJob] = []
            acks: list[int] = []
            calls: list[_CallJob] = []
            closing: list[_CloseJob] = []
            for job in jobs:
                if isinstance(job, _AppendJob):
                    appends.append(job)
                elif isinstance(job, _AckJob):
                    acks.extend(job.seqs)
                elif isinstance(job, _CallJob):
                    calls.append(job)
                else:
                    closing.append(job)
            if self._conn is not None and (appends or acks or self._carry_acks):
                self._transaction(appends, acks)
            elif appends:
                exc = BufferClosedError(f"buffer {self.path} is closed")
                self._post(self._on_failed, appends, exc)
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
        error: BaseException | None = None
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:
                error = BufferStoreError(f"closing buffer {self.path}: checkpoint failed: {err}")
            finally:
                conn.close()
        self._release_lock()
        for job in closing:
            if error is None:
                self._post(_resolve, job.future, None)
            else:
                self._post(_reject, job.future, error)

    def _transaction(self, appends: list[_AppendJob], acks: list[int]) -> None:
        conn = self._conn
        assert conn is not None
        acks = self._carry_acks + acks if self._carry_acks else acks
        self._carry_acks = []
        try:
            state = self._apply(conn, appends, acks)
        except BaseException as err:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._carry_acks = acks
            for job in appends:
                job.seqs = []
            exc = BufferCommitError(f"commit to buffer {self.path} failed: {err}")
            exc.__cause__ = err
            self._post(self._on_failed, appends, exc)
            return
        self._wstate = state
        self._post(self._on_commit, _Committed(appends, acks, _copy_state(state)))

    def _apply(self, conn: sqlite3.Connection, appends: list[_AppendJob], acks: list[int]) -> _State:
        """One transaction: deletions first, then the appends under the cap. Returns the new state; the
        writer's own state changes only once the commit succeeded."""
        old = self._wstate
        depth, nbytes, last_seq = old.depth, old.bytes, old.last_seq
        dropped: dict[str, int] = {}
        deleted_any = False
        conn.execute("BEGIN IMMEDIATE")

        if acks:
            n, freed = _delete(conn, acks)
            if n:
                depth -= n
                nbytes -= freed
                deleted_any = True

        if appends:
            incoming = sum(job.size for job in appends)
            rows: Iterable[_Row]
            if nbytes + incoming <= self.max_bytes:  # the common case: everything fits
                rows = itertools.chain.from_iterable(job.rows for job in appends)
                added = 0
                for job in appends:
                    n = len(job.rows)
                    job.seqs = list(range(last_seq + added + 1, last_seq + added + 1 + n))
                    added += n
                nbytes += incoming
            else:
                rows, n, freed, added = self._make_room(conn, appends, nbytes, last_seq, dropped)
                if n:
                    depth -= n
                    nbytes -= freed
                    deleted_any = True
                nbytes += sum(row[4] for row in rows)
            if added:
                _insert(conn, rows)
                last_seq += added
                depth += added
                # One writer, AUTOINCREMENT: SQLite assigns last_seq + 1, + 2, ... as counted above.
                assigned = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                if assigned is None or assigned[0] != last_seq:
                    raise RuntimeError(f"seq mismatch: expected {last_seq}, SQLite assigned {assigned}")

        if dropped:
            conn.executemany(_COUNT_DROP, [(f"dropped.{reason}", n) for reason, n in dropped.items()])
        if deleted_any or (old.depth == 0 and depth > 0):
            oldest_ts = _oldest_ts(conn)
        else:
            oldest_ts = old.oldest_ts if depth else None
        conn.execute("COMMIT")

        totals = dict(old.dropped)
        for reason, n in dropped.items():
            totals[reason] = totals.get(reason, 0) + n
        return _State(last_seq=last_seq, depth=depth, bytes=nbytes, oldest_ts=oldest_ts, dropped=totals)

    def _make_room(
        self,
        conn: sqlite3.Connection,
        appends: list[_AppendJob],
        nbytes: int,
        last_seq: int,
        dropped: dict[str, int],
    ) -> tuple[list[_Row], int, int, int]:
        """Apply the cap to appends that do not all fit. Sets each job's seqs (0 for what is kept out),
        deletes stored events under ``drop_oldest``, counts drops into ``dropped``. Returns the rows to
        insert, the number of stored events deleted, the bytes that freed, and the number of rows."""
        cap = self.max_bytes
        order = [(job, i, job.rows[i]) for job in appends for i in range(len(job.rows))]
        for job in appends:
            job.seqs = [0] * len(job.rows)
        fits = [item for item in order if item[2][4] <= cap]
        if len(fits) < len(order):
            dropped[DropReason.OVERSIZE.value] = len(order) - len(fits)
        kept: list[tuple[_AppendJob, int, _Row]] = []
        n = freed = 0
        if self.when_full is WhenFull.REJECT_NEW:
            room = cap - nbytes
            for item in fits:
                if item[2][4] <= room:
                    kept.append(item)
                    room -= item[2][4]
            if len(kept) < len(fits):
                dropped[DropReason.REJECTED_NEW.value] = len(fits) - len(kept)
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
                conn.execute("DELETE FROM events WHERE seq <= ?", (cutoff,))
            if start + n:
                dropped[DropReason.DROPPED_OLDEST.value] = start + n
        for job, i, _ in kept:
            last_seq += 1
            job.seqs[i] = last_seq
        return [row for _, _, row in kept], n, freed, len(kept)


def _take_lock(path: Path) -> int:
    """An exclusive lock on ``<buffer>.lock``, held while the buffer is open.

    Two gateways on one buffer file would both forward and delete the same events: each would see rows
    vanish that it never acknowledged, and the seq counters they keep would disagree. The lock makes the
    second one fail at start, naming the first one's pid. (Readers such as ``edgegw buffer export`` open the
    database read-only and take no lock.)"""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise BufferOpenError(f"cannot open buffer {path}: lock file {lock_path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BufferOpenError(
            f"cannot open buffer {path}: it is in use by another gateway (pid {holder}); "
            "one gateway per buffer file"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _insert(conn: sqlite3.Connection, rows: Iterable[_Row]) -> None:
    """Insert ``rows`` in order, in as few statement steps as :data:`_INSERT_CHUNKS` allows."""
    pending = list(rows)
    flat = list(itertools.chain.from_iterable(pending))
    total = len(pending)
    done = 0
    for n in _INSERT_CHUNKS:
        statement = _INSERTS[n]
        width = n * 5
        while total - done >= n:
            conn.execute(statement, flat[done * 5 : done * 5 + width])
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


def _oldest_ts(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT ts FROM events ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _copy_state(s: _State) -> _State:
    return _State(s.last_seq, s.depth, s.bytes, s.oldest_ts, dict(s.dropped))
