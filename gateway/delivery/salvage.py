"""Salvage: what can still be read from a damaged buffer file.

When the gateway finds its buffer corrupt it moves the file aside (``buffer.db.corrupt-<UTC time>``, with its
``-wal`` and ``-shm`` renamed alike) and starts a fresh one. ``edgegw buffer inspect`` and ``export`` on the
moved file come here (through :mod:`gateway.cli.buffertool`), so that an operator can carry out the events it
still holds. :func:`salvage` reads the file twice, in two independent ways, and keeps the union:

1. **SQLite, row by row** (:func:`_sqlite_pass`): the events table in seq order, in chunks, and one row at a
   time where a chunk fails, so that every row up to the damage is read. When a read stops at a damaged page
   (``database disk image is malformed``) the pass skips ahead by seq range (seq + 1, + 2, + 4, ...) until a
   lookup succeeds, reads backwards from there to the damage, and goes on, so the readable leaf pages beyond
   a damaged one are still read. ``PRAGMA writable_schema`` lets SQLite
   read a truncated file up to its end instead of refusing it whole (it refuses a file shorter than its
   header says otherwise); it writes nothing, the connection being read-only.
2. **A page-level scan** (:func:`_page_pass`), written from the SQLite file format
   (https://www.sqlite.org/fileformat2.html), for what SQLite cannot reach: a file whose header is garbage
   (``file is not a database``), or leaf pages whose parent page is gone. The page size comes from the header
   when it is sane, else from the WAL's header, else 4096 (what the buffer uses) and then the other sizes.
   The WAL is applied as SQLite applies it: its frames are checked (salts, cumulative checksums), and only the
   newest version of each page as of the last committed transaction counts; a torn last frame and frames of a
   transaction that never committed are left out. Every table b-tree leaf page (type 0x0D) is then read cell
   by cell: payload length, rowid, record (with its overflow pages followed). A record shaped like an events
   row (NULL for the rowid alias ``seq``, text, text, real, blob, integer, and since schema 2 an integer of
   pending upstreams) is kept, its rowid being the seq; anything else is ignored. Pages on the freelist
   hold rows that were deleted (acknowledged upstream, or dropped): when the header is intact the
   freelist's trunk chain is walked and those pages are skipped. When it is not, the report says that
   already-delivered events may be among the recovered ones; harmless, the consumer deduplicates on ``id``.

**Only well-formed events come back.** Each row, from either pass, is checked (:func:`check_event`): device
and kind non-empty UTF-8 text, a finite time, the data a JSON object in strict UTF-8, and the stored ``size``
equal to the size the buffer computes for those values. A row that fails is counted as damaged and left out.
SQLite keeps no checksum on database pages, so damage that leaves a row well-formed (one digit of an EPC
overwritten by another digit) cannot be told from the original: such a row comes back as it now reads.
WAL frames are checksummed, so what comes from the WAL is as it was committed.

**The damaged file is only read.** SQLite opens it read-only: with ``immutable=1`` in place when there is no
WAL to apply, else through hard links in a private directory beside it (a read-only connection still creates
``-shm`` and ``-wal`` files, and deletes a WAL beside an empty database file; through the links none of that
touches the evidence). Where no link can be made, SQLite is not used and the page scan alone reads the files.

**Bounded memory.** The recovered rows go into a private temporary SQLite database (deleted when the
:class:`Salvage` is closed), keyed by seq: that sorts them, drops duplicates (SQLite's version of a row wins)
and keeps a salvage of a 1 GiB buffer from needing gigabytes of RAM.

Limits: a damaged WAL header makes the whole WAL unreadable (SQLite ignores such a WAL too); rows whose cells
were cut by a truncation are lost; an interior page that is damaged costs nothing (the leaves are scanned
directly), but a damaged leaf page loses its rows.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

from gateway.delivery.buffer import Stored
from gateway.delivery.schema import APPLICATION_ID, ROW_OVERHEAD

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "KindTotal",
    "Salvage",
    "SalvageReport",
    "SalvagedEvent",
    "check_event",
    "damage_hint",
    "salvage",
]

DEFAULT_PAGE_SIZE: Final = 4096
"""The buffer's page size (SQLite's default; the buffer never sets another)."""
_HEADER_MAGIC: Final = b"SQLite format 3\x00"
_HEADER_BYTES: Final = 100
_WAL_MAGIC_LE: Final = 0x377F0682
_WAL_MAGIC_BE: Final = 0x377F0683
_WAL_VERSION: Final = 3007000
_WAL_HEADER_BYTES: Final = 32
_WAL_FRAME_HEADER_BYTES: Final = 24
_TABLE_LEAF: Final = 0x0D
_MAX_SEQ: Final = (1 << 63) - 1
_MAX_PROBES: Final = 10_000
"""SQLite lookups the skip-ahead may spend in all (each failing one is a b-tree descent); the page scan
recovers what they leave."""
_INT_WIDTHS: Final = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}
_STAGE_BATCH: Final = 512
_STAGE_CACHE_KIB: Final = 16384
_OTHER_PAGE_SIZES: Final = (512, 1024, 2048, 8192, 16384, 32768, 65536)


class SalvagedEvent(NamedTuple):
    """An event read back from a damaged file: the columns of the buffer's ``events`` table."""

    seq: int
    device: str
    kind: str
    ts: float
    data_json: bytes
    size: int

    def stored(self) -> Stored:
        return Stored(self.seq, self.device, self.kind, self.ts, self.data_json)


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and infinities: the buffer never writes them


_decode_json: Final = json.JSONDecoder(parse_constant=_reject_constant).decode


def check_event(row: Sequence[object]) -> SalvagedEvent | None:
    """The event that ``row`` (seq, device, kind, ts, data, size) makes, or None when it cannot be one the
    buffer wrote: the same check for a row SQLite returns and for a record the page scan decodes (text may
    come as UTF-8 bytes, an integral time as an int, as SQLite stores it on disk)."""
    if len(row) != 6:
        return None
    seq, device, kind, ts, data, size = row
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ or type(size) is not int:
        return None
    try:
        device_text = device.decode() if isinstance(device, bytes) else device
        kind_text = kind.decode() if isinstance(kind, bytes) else kind
        data_bytes = data.encode() if isinstance(data, str) else data
        if not isinstance(device_text, str) or not isinstance(kind_text, str):
            return None
        if not isinstance(data_bytes, bytes) or not device_text or not kind_text:
            return None
        if type(ts) is int:
            ts = float(ts)
        if type(ts) is not float or not math.isfinite(ts):
            return None
        expected = len(data_bytes) + ROW_OVERHEAD + len(device_text.encode()) + len(kind_text.encode())
        if size != expected:
            return None
        decoded = _decode_json(data_bytes.decode())
    except (UnicodeError, ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict):
        return None
    return SalvagedEvent(seq, device_text, kind_text, ts, data_bytes, size)


# --------------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class SalvageReport:
    """What a salvage found: the damage, and what it recovered by which means."""

    path: Path
    file_bytes: int
    wal_bytes: int
    """Bytes of the file's WAL (``<file>-wal``), 0 when there is none."""
    damage: tuple[str, ...]
    """What is wrong with the file, one sentence each; empty when neither pass found anything wrong."""
    events: int
    """Events recovered (each seq once)."""
    by_sqlite: int
    """Of those, read by SQLite."""
    by_page_scan: int
    """Of those, found only by the page scan."""
    first_seq: int | None
    last_seq: int | None
    is_buffer: bool
    """SQLite read the buffer's application id, or at least one event was recovered."""
    may_include_delivered: bool
    """The page scan added events while the freelist was unknown: some may have been deleted (delivered)."""
    sequence: int | None
    """The highest seq ever assigned (the ``sqlite_sequence`` table), when SQLite could read it."""
    meta: dict[str, int] | None
    """The buffer's ``meta`` table (drop counters, ``purged``), when SQLite could read it."""
    page_size: int | None
    """The page size the page scan used (None: it had no page to read)."""
    pages_scanned: int
    damaged_cells: int
    """Cells of leaf pages that could not be read whole, or not as a well-formed event."""
    notes: tuple[str, ...] = ()
    """How the recovery went (which pass did what), one sentence each."""

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


@dataclass(frozen=True)
class KindTotal:
    device: str
    kind: str
    events: int
    bytes: int
    first_seq: int
    last_seq: int


class Salvage:
    """The events recovered from one file, held in a private temporary database until :meth:`close`."""

    def __init__(self, report: SalvageReport, staging: _Staging) -> None:
        self.report = report
        self._staging = staging

    def events(self, *, after_seq: int = 0, limit: int | None = None) -> Iterator[SalvagedEvent]:
        """The recovered events with ``seq > after_seq``, in seq order, at most ``limit``."""
        return self._staging.events(after_seq, limit)

    def totals(self) -> tuple[int, int]:
        """Events recovered and the bytes they count (as the buffer counts them)."""
        return self._staging.totals()

    def by_kind(self) -> list[KindTotal]:
        return self._staging.by_kind()

    def ts_of(self, seq: int | None) -> float | None:
        return None if seq is None else self._staging.ts_of(seq)

    def close(self) -> None:
        self._staging.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Staging:
    """The recovered rows, in a private temporary on-disk SQLite database (SQLite deletes it on close)."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect("", isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(f"PRAGMA cache_size = -{_STAGE_CACHE_KIB}")  # beyond it, a temporary file
        self._conn.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, device TEXT, kind TEXT, ts REAL, data BLOB, "
            "size INTEGER)"
        )
        self._pending: list[SalvagedEvent] = []
        self.added = 0

    def add(self, event: SalvagedEvent) -> None:
        self._pending.append(event)
        if len(self._pending) >= _STAGE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            cursor = self._conn.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", self._pending
            )
            self.added += cursor.rowcount
            self._pending.clear()

    def events(self, after_seq: int, limit: int | None) -> Iterator[SalvagedEvent]:
        self.flush()
        rows = self._conn.execute(
            "SELECT seq, device, kind, ts, data, size FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, -1 if limit is None else limit),
        )
        for seq, device, kind, ts, data, size in rows:
            yield SalvagedEvent(seq, device, kind, ts, data, size)

    def totals(self) -> tuple[int, int]:
        self.flush()
        count, nbytes = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
        return int(count), int(nbytes)

    def seq_range(self) -> tuple[int | None, int | None]:
        self.flush()
        first, last = self._conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        return first, last

    def by_kind(self) -> list[KindTotal]:
        self.flush()
        return [
            KindTotal(*row)
            for row in self._conn.execute(
                "SELECT device, kind, count(*), sum(size), min(seq), max(seq) FROM events "
                "GROUP BY device, kind ORDER BY device, kind"
            )
        ]

    def ts_of(self, seq: int) -> float | None:
        row = self._conn.execute("SELECT ts FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else float(row[0])

    def close(self) -> None:
        self._pending.clear()
        self._conn.close()


# --------------------------------------------------------------------------------------------------------
# Pass 1: SQLite, row by row


class _SeqRuns:
    """A set of seqs kept as runs of consecutive ones (what SQLite returns comes in long runs): the page
    scan skips what SQLite already returned without decoding it again, in a few bytes per run."""

    def __init__(self) -> None:
        self._runs: list[tuple[int, int]] = []
        self._low: int | None = None
        self._high = 0
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, seq: int) -> None:
        if self._low is not None:
            if seq == self._high + 1:
                self._high = seq
                return
            if seq == self._low - 1:
                self._low = seq
                return
            self._runs.append((self._low, self._high))
        self._low = self._high = seq

    def freeze(self) -> None:
        """Merge the runs, for :meth:`__contains__` (call once all are added)."""
        if self._low is not None:
            self._runs.append((self._low, self._high))
            self._low = None
        merged: list[tuple[int, int]] = []
        for low, high in sorted(self._runs):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self._runs = merged
        self._starts = [low for low, _ in merged]
        self._ends = [high for _, high in merged]

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]


@dataclass
class _SqliteResult:
    used: bool = False
    """SQLite could open the file and read its header."""
    skipped: str | None = None
    """Why SQLite was not used at all."""
    application_id: int | None = None
    errors: list[str] = field(default_factory=list)
    events: int = 0
    rejected: int = 0
    sequence: int | None = None
    meta: dict[str, int] | None = None
    returned: _SeqRuns = field(default_factory=_SeqRuns)
    """The seqs of the events SQLite returned (and that were kept)."""


_COLUMNS: Final = (
    "SELECT seq, device, kind, ts, data, size FROM events WHERE seq > ? AND seq < ? ORDER BY seq"
)
_FORWARD: Final = _COLUMNS + " LIMIT ?"
_BACKWARD: Final = _COLUMNS + " DESC LIMIT ?"
_CHUNK: Final = 256
_PROBE: Final = "SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT 1"


def _uri_path(path: Path) -> str:
    # Characters that mean something in a URI ('?', '#', '%') must be escaped in the file name.
    return "".join(c if c not in "?#%" else f"%{ord(c):02X}" for c in str(path.absolute()))


@contextlib.contextmanager
def _read_only_view(path: Path, wal: Path, wal_bytes: int) -> Iterator[str | None]:
    """A URI by which SQLite reads ``path`` (and its WAL) without writing anything beside it; None when
    there is no such way."""
    if wal_bytes < _WAL_HEADER_BYTES:  # no WAL to apply (SQLite ignores one shorter than its header)
        yield "file:" + _uri_path(path) + "?mode=ro&immutable=1"
        return
    try:
        private = Path(tempfile.mkdtemp(prefix=".salvage-", dir=path.parent))
    except OSError:
        yield None
        return
    try:
        try:
            os.link(path, private / "buffer.db")
            os.link(wal, private / "buffer.db-wal")
        except OSError:
            yield None
        else:
            yield "file:" + _uri_path(private / "buffer.db") + "?mode=ro"
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _sqlite_pass(path: Path, wal: Path, file_bytes: int, wal_bytes: int, stage: _Staging) -> _SqliteResult:
    result = _SqliteResult()
    if file_bytes == 0:
        # SQLite takes an empty file for a new, empty database (and deletes a WAL beside it).
        result.skipped = "the file is empty"
        return result
    with _read_only_view(path, wal, wal_bytes) as uri:
        if uri is None:
            result.skipped = "no private link to the file could be made (SQLite would write beside it)"
            return result
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as err:
            result.errors.append(f"SQLite cannot open it: {err}")
            return result
        try:
            _sqlite_read(conn, result, stage)
        finally:
            conn.close()
    return result


def _sqlite_read(conn: sqlite3.Connection, result: _SqliteResult, stage: _Staging) -> None:
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA writable_schema = ON")  # read a truncated file up to where it ends
        conn.execute("PRAGMA cell_size_check = ON")  # notice more damage, instead of reading it as data
        result.application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    except sqlite3.Error as err:
        result.errors.append(f"SQLite cannot read it: {err}")
        return
    result.used = True

    def take(row: tuple[object, ...]) -> None:
        event = check_event(row)
        if event is None:
            result.rejected += 1
        else:
            result.events += 1
            result.returned.add(event.seq)
            stage.add(event)

    cursor = 0
    probes = 0
    while True:
        last, error = _read_run(conn, cursor, _MAX_SEQ, take, forward=True)
        if last is not None and last > cursor:
            cursor = last
        if error is None:
            break
        result.errors.append(f"SQLite stopped after seq {cursor}: {error}")
        if "no such table" in error:
            break
        # Skip ahead until a lookup succeeds; then read backwards from there down to the damage.
        step = 1
        resumed = False
        while cursor + step <= _MAX_SEQ and probes < _MAX_PROBES:
            probes += 1
            ahead = cursor + step
            try:
                found = conn.execute(_PROBE, (ahead,)).fetchone()
            except sqlite3.Error:
                step *= 2
                continue
            upper = found[0] if found is not None and type(found[0]) is int else min(ahead + 1, _MAX_SEQ)
            _read_run(conn, cursor, upper, take, forward=False)
            if found is not None:
                cursor = ahead
                resumed = True
            break
        if not resumed:
            break
    stage.flush()
    result.sequence = _sqlite_scalar(conn, "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    try:
        meta = {
            str(key): int(value)
            for key, value in conn.execute("SELECT key, value FROM meta")
            if isinstance(key, str) and type(value) is int
        }
    except sqlite3.Error:
        pass
    else:
        result.meta = meta


def _read_run(
    conn: sqlite3.Connection,
    low: int,
    high: int,
    take: Callable[[tuple[object, ...]], None],
    *,
    forward: bool,
) -> tuple[int | None, str | None]:
    """Hand the rows with ``low < seq < high`` to ``take``, in seq order (``forward``) or in reverse, until
    the end or the damage. Returns the last seq read, and the error (None when the read reached the end).

    Rows are read in chunks; a chunk that fails is read again one row at a time (``LIMIT 1`` keeps SQLite
    from stepping past the row it returns), so every row before the damage is read."""
    sql = _FORWARD if forward else _BACKWARD
    last: int | None = None
    chunk = _CHUNK
    while True:
        try:
            rows = conn.execute(sql, (low, high, chunk)).fetchall()
        except sqlite3.Error as err:
            if chunk == 1:
                return last, str(err)
            chunk = 1
            continue
        for row in rows:
            take(row)
        if not rows:
            return last, None
        seq = rows[-1][0]
        # A damaged page can hand back rowids out of order: stop rather than go round in circles.
        if type(seq) is not int or not low < seq < high:
            return last, "rows out of order (a damaged page)"
        last = seq
        if forward:
            low = last
        else:
            high = last
        if len(rows) < chunk:
            return last, None


def _sqlite_scalar(conn: sqlite3.Connection, sql: str) -> int | None:
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row is not None and type(row[0]) is int else None


# --------------------------------------------------------------------------------------------------------
# Pass 2: the pages themselves


class _Damaged(Exception):
    """A cell (or chain) that cannot be read whole."""


class _NotAnEvent(Exception):
    """A well-formed record of another table (the schema, sqlite_sequence)."""


def _u16(buf: bytes, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _u32(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos : pos + 4], "big")


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` (which must end before ``end``) and the position after it."""
    value = 0
    for i in range(8):
        if pos + i >= end:
            raise _Damaged
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    if pos + 8 >= end:
        raise _Damaged
    return (value << 8) | buf[pos + 8], pos + 9


@dataclass(frozen=True)
class _Header:
    page_size: int
    usable: int
    pages: int | None
    """The in-header database size, when it is valid."""
    freelist_trunk: int
    freelist_pages: int
    application_id: int


def _parse_header(raw: bytes) -> _Header | None:
    """The database header, or None when it is not a sane one."""
    if len(raw) < _HEADER_BYTES or raw[:16] != _HEADER_MAGIC or raw[21:24] != b"\x40\x20\x20":
        return None
    page_size = _u16(raw, 16)
    page_size = 65536 if page_size == 1 else page_size
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return None
    usable = page_size - raw[20]
    if usable < 480:
        return None
    size = _u32(raw, 28)
    valid = size > 0 and _u32(raw, 24) == _u32(raw, 92)
    return _Header(
        page_size=page_size,
        usable=usable,
        pages=size if valid else None,
        freelist_trunk=_u32(raw, 32),
        freelist_pages=_u32(raw, 36),
        application_id=_u32(raw, 68),
    )


@dataclass
class _Wal:
    """The committed content of a WAL: for each page, where its newest committed version starts."""

    page_size: int
    frames: dict[int, int]
    """page number -> offset of the page's data in the WAL file."""
    db_pages: int
    """The database's size in pages after the last committed transaction (0: none committed)."""
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _read_wal(fd: int, size: int) -> _Wal | str:
    """The WAL's committed frames, checked as SQLite checks them; or why the WAL cannot be used."""
    header = os.pread(fd, _WAL_HEADER_BYTES, 0)
    if len(header) < _WAL_HEADER_BYTES:
        return "shorter than a WAL header"
    magic, version, page_size, _, salt1, salt2, check1, check2 = struct.unpack(">8I", header)
    if magic not in (_WAL_MAGIC_LE, _WAL_MAGIC_BE) or version != _WAL_VERSION:
        return "its header is not a WAL header"
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return f"its header gives an impossible page size ({page_size})"
    big_endian = magic == _WAL_MAGIC_BE
    s0, s1 = _wal_checksum(header[:24], 0, 0, big_endian)
    if (s0, s1) != (check1, check2):
        return "its header's checksum does not match"
    wal = _Wal(page_size=page_size, frames={}, db_pages=0)
    frame_bytes = _WAL_FRAME_HEADER_BYTES + page_size
    pending: dict[int, int] = {}
    offset = _WAL_HEADER_BYTES
    stop = ""
    while offset < size:
        frame = os.pread(fd, frame_bytes, offset)
        if len(frame) < frame_bytes:
            stop = "partial"
            break
        page, commit, f_salt1, f_salt2, f_check1, f_check2 = struct.unpack(">6I", frame[:24])
        if (f_salt1, f_salt2) != (salt1, salt2):
            stop = "stale"
            break
        t0, t1 = _wal_checksum(frame[:8], s0, s1, big_endian)
        t0, t1 = _wal_checksum(frame[24:], t0, t1, big_endian)
        if page == 0 or (t0, t1) != (f_check1, f_check2):
            stop = "checksum"
            break
        s0, s1 = t0, t1
        pending[page] = offset + _WAL_FRAME_HEADER_BYTES
        if commit:
            wal.frames.update(pending)
            pending.clear()
            wal.db_pages = commit
        offset += frame_bytes
    if stop == "partial":
        wal.damage.append(
            f"the WAL ends in a partial frame ({size - offset} of {frame_bytes} bytes: a write cut short); "
            "the transactions committed before it are kept, as SQLite keeps them"
        )
    elif stop == "checksum":
        wal.damage.append(
            f"the WAL's frame at byte {offset} fails its checksum (a torn or damaged write): it and the "
            f"{size - offset - frame_bytes} byte(s) after it are left out, as SQLite leaves them out; the "
            "transactions committed before it are kept"
        )
    if pending:
        wal.notes.append(
            f"the WAL's last {len(pending)} page(s) belong to a transaction that never committed: left out, "
            "as SQLite leaves them out"
        )
    return wal


class _Image:
    """The database as SQLite would see it: the file's pages, with the WAL's committed versions on top."""

    def __init__(
        self, fd: int, *, file_bytes: int, page_size: int, usable: int, wal: _Wal | None, wal_fd: int | None
    ) -> None:
        self.fd = fd
        self.page_size = page_size
        self.usable = usable
        self.wal = wal
        self.wal_fd = wal_fd
        self.file_pages = (file_bytes + page_size - 1) // page_size
        self.pages = max(self.file_pages, wal.db_pages if wal else 0)

    def read(self, number: int) -> bytes:
        """Page ``number`` (1-based), short or empty where the file ends."""
        wal = self.wal
        if wal is not None and self.wal_fd is not None:
            offset = wal.frames.get(number)
            if offset is not None:
                return os.pread(self.wal_fd, self.page_size, offset)
        if number < 1 or number > self.file_pages:
            return b""
        return os.pread(self.fd, self.page_size, (number - 1) * self.page_size)


@dataclass
class _PageResult:
    page_size: int | None = None
    pages_scanned: int = 0
    events: int = 0
    added: int = 0
    damaged_cells: int = 0
    freelist_known: bool = False
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    application_id: int | None = None


def _freelist(image: _Image, header: _Header) -> tuple[set[int], bool]:
    """The pages on the freelist, and whether the whole list could be read."""
    pages: set[int] = set()
    trunk = header.freelist_trunk
    per_trunk = image.usable // 4 - 2
    while trunk:
        if trunk > image.pages or trunk in pages:
            return pages, False
        pages.add(trunk)
        raw = image.read(trunk)
        if len(raw) < 8:
            return pages, False
        count = _u32(raw, 4)
        if count > per_trunk or len(raw) < 8 + 4 * count:
            return pages, False
        pages.update(_u32(raw, 8 + 4 * i) for i in range(count))
        trunk = _u32(raw, 0)
    return pages, len(pages) == header.freelist_pages


def _leaf_cells(page: bytes, base: int, image: _Image, known: _SeqRuns) -> Iterator[tuple[int, bytes] | None]:
    """The cells of a table leaf page: (rowid, payload), or None for a cell that cannot be read whole.
    Cells whose rowid is ``known`` are passed over."""
    usable = image.usable
    available = min(len(page), usable)
    if available < base + 8:
        return
    count = _u16(page, base + 3)
    pointers = base + 8
    cells_start = pointers + 2 * count
    if cells_start > usable:
        yield None  # the cell count is damaged: the page cannot be read
        return
    max_local = usable - 35
    min_local = (usable - 12) * 32 // 255 - 23
    for i in range(count):
        at = pointers + 2 * i
        if at + 2 > available:
            yield None
            continue
        start = _u16(page, at)
        if not cells_start <= start < usable:
            yield None
            continue
        try:
            size, pos = _varint(page, start, available)
            rowid, pos = _varint(page, pos, available)
            if rowid in known:
                continue
            if size <= max_local:
                local = size
            else:
                local = min_local + (size - min_local) % (usable - 4)
                if local > max_local:
                    local = min_local
            if pos + local > available:
                raise _Damaged
            payload = page[pos : pos + local]
            if local < size:
                if pos + local + 4 > available:
                    raise _Damaged
                payload += _overflow(image, _u32(page, pos + local), size - local)
        except _Damaged:
            yield None
            continue
        yield rowid, payload


def _overflow(image: _Image, first: int, remaining: int) -> bytes:
    usable = image.usable
    if remaining > image.pages * (usable - 4):
        raise _Damaged
    parts: list[bytes] = []
    seen: set[int] = set()
    number = first
    while remaining > 0:
        if not 1 <= number <= image.pages or number in seen:
            raise _Damaged
        seen.add(number)
        page = image.read(number)
        take = min(remaining, usable - 4)
        if len(page) < 4 + take:
            raise _Damaged
        parts.append(page[4 : 4 + take])
        remaining -= take
        number = _u32(page, 0)
    return b"".join(parts)


def _is_int_type(serial: int) -> bool:
    return 1 <= serial <= 6 or serial in (8, 9)


def _is_text_type(serial: int) -> bool:
    return serial >= 13 and serial % 2 == 1


def _is_blob_type(serial: int) -> bool:
    return serial >= 12 and serial % 2 == 0


def _serial_width(serial: int) -> int:
    if serial >= 12:
        return (serial - 12) // 2
    if serial == 7:
        return 8
    return _INT_WIDTHS.get(serial, 0)


def _serial_value(serial: int, raw: bytes) -> object:
    if serial == 0:
        return None
    if serial == 7:
        return struct.unpack(">d", raw)[0]
    if serial in (8, 9):
        return serial - 8
    if serial in _INT_WIDTHS:
        return int.from_bytes(raw, "big", signed=True)
    return raw


def _events_record(payload: bytes) -> tuple[object, ...]:
    """The five stored columns of an events record (device, kind, ts, data, size). Raises
    :class:`_NotAnEvent` for a record of another shape, :class:`_Damaged` for one that does not add up."""
    end = len(payload)
    header_size, pos = _varint(payload, 0, end)
    if not 1 <= header_size <= end:
        raise _Damaged
    serials: list[int] = []
    while pos < header_size:
        serial, pos = _varint(payload, pos, header_size)
        serials.append(serial)
        if len(serials) > 7:
            raise _NotAnEvent
    # Six columns (schema 1, and schema 2 rows stored before the migration added ``pending``) or seven.
    if pos != header_size or len(serials) not in (6, 7):
        raise _NotAnEvent
    seq, device, kind, ts, data, size = serials[:6]
    shaped = (
        seq == 0  # the rowid alias is stored as NULL: the rowid is the seq
        and _is_text_type(device)
        and _is_text_type(kind)
        and (ts == 7 or _is_int_type(ts))  # SQLite stores an integral REAL as an integer
        and (_is_blob_type(data) or _is_text_type(data))
        and _is_int_type(size)
        and (len(serials) == 6 or _is_int_type(serials[6]))
    )
    if not shaped:
        raise _NotAnEvent
    if header_size + sum(_serial_width(s) for s in serials) != end:
        raise _Damaged
    values: list[object] = []
    pos = header_size
    for serial in serials[1:6]:
        width = _serial_width(serial)
        values.append(_serial_value(serial, payload[pos : pos + width]))
        pos += width
    return tuple(values)


def _scan_image(
    image: _Image, skip: set[int], limit: int, *, known: _SeqRuns, stage: _Staging, result: _PageResult
) -> None:
    for number in range(1, limit + 1):
        if number in skip:
            continue
        page = image.read(number)
        if not page:
            continue
        result.pages_scanned += 1
        base = _HEADER_BYTES if number == 1 else 0
        if len(page) <= base or page[base] != _TABLE_LEAF:
            continue
        for cell in _leaf_cells(page, base, image, known):
            if cell is None:
                result.damaged_cells += 1
                continue
            rowid, payload = cell
            try:
                columns = _events_record(payload)
            except _NotAnEvent:
                continue
            except _Damaged:
                result.damaged_cells += 1
                continue
            event = check_event((rowid, *columns))
            if event is None:
                result.damaged_cells += 1
                continue
            result.events += 1
            stage.add(event)


def _page_pass(
    path: Path, wal_path: Path, file_bytes: int, wal_bytes: int, stage: _Staging, *, known: _SeqRuns
) -> _PageResult:
    with contextlib.ExitStack() as files:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        files.callback(os.close, fd)
        damage: list[str] = []
        notes: list[str] = []
        wal: _Wal | None = None
        wal_fd: int | None = None
        if wal_bytes:
            wal_fd = os.open(wal_path, os.O_RDONLY | os.O_CLOEXEC)
            files.callback(os.close, wal_fd)
            read = _read_wal(wal_fd, wal_bytes)
            if isinstance(read, str):
                damage.append(f"the WAL cannot be used: {read}; its {wal_bytes} bytes are not read")
            else:
                wal = read
                damage.extend(read.damage)
                notes.extend(read.notes)
        file_header = _parse_header(os.pread(fd, _HEADER_BYTES, 0))
        if file_header is not None and wal is not None and wal.page_size != file_header.page_size:
            damage.append(
                f"the WAL's page size ({wal.page_size}) is not the file's ({file_header.page_size}): "
                "the WAL is not read"
            )
            wal = None
        if file_bytes and file_header is None:
            damage.append("the file's header is damaged (it is not an SQLite header)")
        if file_header is not None:
            candidates = [(file_header.page_size, file_header.usable)]
        elif wal is not None:
            candidates = [(wal.page_size, wal.page_size)]
        else:  # the buffer's page size first; the others only if it finds nothing
            candidates = [(size, size) for size in (DEFAULT_PAGE_SIZE, *_OTHER_PAGE_SIZES)]
        result = _PageResult()
        for page_size, usable in candidates:
            image = _Image(
                fd, file_bytes=file_bytes, page_size=page_size, usable=usable, wal=wal, wal_fd=wal_fd
            )
            if image.pages == 0:
                break
            attempt = _PageResult()
            _scan_with(image, file_header, known, stage, attempt)
            if attempt.events or result.page_size is None:
                result = attempt
            if attempt.events:
                break
        if len(candidates) > 1 and result.page_size is not None:
            if result.events:
                notes.append(f"pages of {result.page_size} bytes assumed (the header is unreadable)")
            else:
                notes.append("no event found with any page size (the header is unreadable)")
        result.damage[:0] = damage
        result.notes[:0] = notes
    return result


def _scan_with(
    image: _Image, file_header: _Header | None, known: _SeqRuns, stage: _Staging, result: _PageResult
) -> None:
    result.page_size = image.page_size
    header = _parse_header(image.read(1)[:_HEADER_BYTES])
    if header is not None and header.page_size != image.page_size:
        header = None
    if header is not None:
        result.application_id = header.application_id
    wal = image.wal
    if wal is not None and wal.db_pages:
        limit = wal.db_pages  # the size as of the last commit: pages past it are not in the database
    elif header is not None and header.pages is not None:
        limit = header.pages
    else:
        limit = image.pages
    in_wal = sum(1 for n in wal.frames if image.file_pages < n <= limit) if wal is not None else 0
    missing = max(0, limit - image.file_pages) - in_wal
    if missing and file_header is not None:
        result.damage.append(
            f"the file is shorter than the database: {missing} of its {limit} pages of {image.page_size} "
            "bytes are missing (it was truncated)"
        )
    partial = image.file_pages and len(image.read(image.file_pages)) < image.page_size
    if partial and file_header is not None and image.file_pages <= limit:
        result.damage.append(f"the file ends inside page {image.file_pages} (it was truncated)")
    skip: set[int] = set()
    if header is not None:
        skip, whole = _freelist(image, header)
        result.freelist_known = whole
        if not whole:
            result.damage.append("the freelist (the pages of deleted rows) cannot be read whole")
    before = stage.added
    # (A damaged header may claim any size: only pages that exist are read.)
    _scan_image(image, skip, min(limit, image.pages), known=known, stage=stage, result=result)
    stage.flush()
    result.added = stage.added - before


# --------------------------------------------------------------------------------------------------------
# Both passes


def damage_hint(path: Path) -> str | None:
    """Why ``path`` should be salvaged rather than opened by SQLite, from its name, size and header alone;
    None when nothing there says so (SQLite may still find damage inside). Reads 100 bytes.

    A file the gateway moved aside (``*.corrupt-*``) is always salvaged: a connection that may write would
    checkpoint its WAL into it, or delete a WAL lying beside an empty file."""
    if ".corrupt-" in path.name:
        return "the gateway moved it aside as corrupt"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with path.open("rb") as f:
        header = _parse_header(f.read(_HEADER_BYTES))
    if header is None:
        return "it has no valid SQLite header"
    wal = path.with_name(path.name + "-wal")
    has_wal = wal.exists() and wal.stat().st_size >= _WAL_HEADER_BYTES
    if header.pages is not None and size < header.pages * header.page_size and not has_wal:
        # (With a WAL, a checkpoint cut short leaves the header ahead of the file, and the WAL makes it good.)
        return f"it is shorter than its header says ({size} of {header.pages * header.page_size} bytes)"
    return None


def salvage(path: Path) -> Salvage:
    """Recover what ``path`` (a buffer file, and its ``-wal`` when there is one) still holds: see the module
    docstring. Never raises for damage, whatever the files hold (only for a file that cannot be opened at
    all, as ``OSError``). The caller closes the result (it is a context manager)."""
    wal_path = path.with_name(path.name + "-wal")
    file_bytes = path.stat().st_size
    try:
        wal_bytes = wal_path.stat().st_size
    except FileNotFoundError:
        wal_bytes = 0
    stage = _Staging()
    try:
        sqlite = _sqlite_pass(path, wal_path, file_bytes, wal_bytes, stage)
        sqlite.returned.freeze()
        pages = _page_pass(path, wal_path, file_bytes, wal_bytes, stage, known=sqlite.returned)
        report = _report(
            path, file_bytes=file_bytes, wal_bytes=wal_bytes, sqlite=sqlite, pages=pages, stage=stage
        )
    except BaseException:
        stage.close()
        raise
    return Salvage(report, stage)


def _report(
    path: Path, *, file_bytes: int, wal_bytes: int, sqlite: _SqliteResult, pages: _PageResult, stage: _Staging
) -> SalvageReport:
    damage: list[str] = []
    notes: list[str] = []
    if file_bytes == 0:
        damage.append("the file is empty (0 bytes)")
    damage.extend(_unique(sqlite.errors)[:3])
    if len(sqlite.errors) > 3:
        damage.append(f"SQLite met damage {len(sqlite.errors)} times in all")
    damage.extend(pages.damage)
    if sqlite.rejected:
        damage.append(f"SQLite returned {sqlite.rejected} row(s) that are not well-formed events: left out")
    if pages.damaged_cells:
        damage.append(
            f"{pages.damaged_cells} cell(s) of table pages could not be read whole or as well-formed events"
        )
    count, _ = stage.totals()
    first, last = stage.seq_range()
    if sqlite.skipped:
        notes.append(f"SQLite was not used: {sqlite.skipped}")
    elif sqlite.used:
        notes.append(f"SQLite read {sqlite.events} event(s)")
    else:
        notes.append("SQLite could not read the file")
    if pages.page_size is not None:
        notes.append(
            f"the page scan read {pages.pages_scanned} page(s) of {pages.page_size} bytes and found "
            f"{pages.added} event(s) that SQLite had not read"
        )
    notes.extend(pages.notes)
    may_include_delivered = pages.added > 0 and not pages.freelist_known
    is_buffer = count > 0 or APPLICATION_ID in (sqlite.application_id, pages.application_id)
    return SalvageReport(
        path=path,
        file_bytes=file_bytes,
        wal_bytes=wal_bytes,
        damage=tuple(damage),
        events=count,
        by_sqlite=count - pages.added,
        by_page_scan=pages.added,
        first_seq=first,
        last_seq=last,
        is_buffer=is_buffer,
        may_include_delivered=may_include_delivered,
        sequence=sqlite.sequence,
        meta=sqlite.meta,
        page_size=pages.page_size,
        pages_scanned=pages.pages_scanned,
        damaged_cells=pages.damaged_cells,
        notes=tuple(notes),
    )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
