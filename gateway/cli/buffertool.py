"""``edgegw buffer inspect|export|purge``: field tools on a gateway's buffer file, running or stopped.

When the uplink has been dead for days, a technician wants to know what the box holds (``inspect``), carry
the backlog out on a USB stick (``export``: JSON lines, one event per line, exactly the payload the
forwarder would publish, ``id`` included, so the consumer's deduplication works on them unchanged), and
perhaps drop what was carried out (``purge``).

How each one touches the file (the buffer's schema is :mod:`gateway.delivery.buffer`'s, version 1):

- **inspect** and **export** use read-only SQL on their own connection (``PRAGMA query_only``). The buffer's
  public API is not used for them: :meth:`SqliteBuffer.open` starts a writer, and a second writer beside a
  running gateway is exactly what a tool must not be. SQLite in WAL mode lets this reader run beside the
  gateway's writer without blocking it. ``inspect`` reads one consistent snapshot; ``export`` reads page by
  page, each page its own short read transaction (a read transaction held for a whole export would keep
  the gateway from checkpointing its WAL, which then grows for as long as the export takes). The export
  stops at the highest seq present when it started, so it ends even while the gateway keeps appending;
  an event the gateway delivers (and deletes) while the export runs may be missing from it, which is
  harmless: it reached the broker, and the consumer deduplicates on ``id``.
- **purge** deletes events with ``seq <= N`` (or all) in one transaction, and only while *no one else* has
  the file open: it takes the gateway's own lock (``flock`` on ``<buffer>.lock``, which names the
  holder's pid) and SQLite's exclusive lock (``locking_mode=EXCLUSIVE``); either fails at once while a
  gateway (or another tool) has the buffer open. Purging under a running gateway would leave its
  in-memory count of stored bytes too high (it loads the count when it opens the file), so its byte cap
  would drop events early until it restarts. So: ``systemctl stop edgegw``, purge, ``systemctl start
  edgegw`` (a gateway started meanwhile fails at once on the lock, and systemd restarts it). Seqs are
  never reused after a purge (the AUTOINCREMENT counter is untouched), and the number of purged events
  is kept in the buffer's ``meta`` table under ``purged`` (``inspect`` shows it; the gateway reads only
  the ``dropped.*`` keys there).
- **A damaged file** (one the gateway moved aside as ``buffer.db.corrupt-<UTC time>``, or any file whose
  header or size says it is damaged, or on which SQLite reports corruption) is *salvaged*: ``inspect`` and
  ``export`` read what can still be read, by SQLite row by row and by a scan of the pages themselves (see
  :mod:`gateway.delivery.salvage`), only ever reading the file; they say that it is damaged, what is wrong
  and how much they recovered. ``purge`` refuses a damaged file (nothing is ever written to one): export
  what can be salvaged, then remove it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from gateway.config.yamlsrc import YamlError, load_file
from gateway.delivery import salvage
from gateway.delivery.buffer import DropReason, Stored
from gateway.delivery.payload import encode_payload
from gateway.delivery.schema import (
    ADD_TO_META,
    APPLICATION_ID,
    DROPPED_PREFIX,
    PURGED_KEY,
    SCHEMA_VERSION,
    UPSTREAM_DROPPED_PREFIX,
)

__all__ = [
    "DEFAULT_CONFIG",
    "BufferDamagedError",
    "BufferInUseError",
    "BufferToolError",
    "ExportResult",
    "Inspection",
    "PurgePlan",
    "export",
    "export_to_file",
    "inspect",
    "iter_events",
    "locate",
    "plan_purge",
    "purge",
]

DEFAULT_CONFIG: Final = Path("/etc/edgegw/gateway.yaml")
_BUSY_TIMEOUT_S: Final = 5.0
"""How long a read waits for a lock a writer holds for a moment (a WAL checkpoint resetting the log)."""


class BufferToolError(Exception):
    """The tool cannot do what was asked; the message says why and names the file."""


class BufferInUseError(BufferToolError):
    """Purge refused: a gateway (or another tool) has the buffer open."""


class BufferDamagedError(BufferToolError):
    """SQLite reports the file corrupt (``inspect`` and ``export`` then salvage it; ``purge`` refuses it)."""


# --------------------------------------------------------------------------------------------------------
# Finding the buffer


def locate(config: Path | None, buffer: Path | None) -> tuple[Path, str | None]:
    """The buffer file and the gateway id: ``buffer`` as given (no id known), or ``buffer.path`` and
    ``gateway.id`` from the gateway file ``config`` (:data:`DEFAULT_CONFIG` when neither is given).

    Only those two keys are read, not the whole config validated: a technician's shell usually lacks the
    service's secrets (``password_env``) and the laptop may lack a driver's dependency, and neither matters
    for reading the buffer. A relative ``buffer.path`` is relative to the gateway file, as for the gateway.
    """
    if buffer is not None:
        return buffer, None
    source = config or DEFAULT_CONFIG
    try:
        doc = load_file(source)
    except OSError as err:
        raise BufferToolError(f"cannot read {source}: {err.strerror or err}") from None
    except YamlError as err:
        raise BufferToolError(f"{source}:{err.line}: invalid YAML: {err.message}") from None
    data = doc.value if isinstance(doc.value, dict) else {}
    section = data.get("buffer")
    raw_path = section.get("path") if isinstance(section, dict) else None
    if not isinstance(raw_path, str) or not raw_path.strip():
        line = doc.line_of(("buffer", "path"))
        raise BufferToolError(f"{source}:{line}: buffer.path: missing (or give --buffer FILE)")
    gateway = data.get("gateway")
    gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
    path = Path(raw_path)
    if not path.is_absolute():
        path = source.absolute().parent / path
    return path, gateway_id if isinstance(gateway_id, str) and gateway_id else None


# --------------------------------------------------------------------------------------------------------
# Connections


def _connect(path: Path, *, exclusive: bool = False) -> sqlite3.Connection:
    """A connection to an existing buffer file; never creates one (``mode=rw`` fails on a missing file).
    Read-write rather than ``mode=ro`` so that, when it is the last connection to close, SQLite tidies
    the WAL and shared-memory files away as the gateway does; ``query_only`` keeps it from writing data."""
    if not path.exists():
        raise BufferToolError(f"{path}: no such file")
    if path.is_dir():
        raise BufferToolError(f"{path}: is a directory, not a buffer file")
    uri = "file:" + _uri_path(path) + "?mode=rw"
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=0 if exclusive else _BUSY_TIMEOUT_S
        )
    except sqlite3.Error as err:
        raise BufferToolError(f"cannot open {path}: {err}") from None
    try:
        if exclusive:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        else:
            conn.execute("PRAGMA query_only = ON")
        _check_buffer(conn, path)
    except sqlite3.OperationalError as err:
        conn.close()
        if exclusive and _is_busy(err):
            raise _in_use(path) from None
        raise _read_error(f"cannot read {path}", err) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _uri_path(path: Path) -> str:
    # Characters that mean something in a URI ('?', '#', '%') must be escaped in the file name.
    return "".join(c if c not in "?#%" else f"%{ord(c):02X}" for c in str(path.absolute()))


def _is_busy(err: sqlite3.Error) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


def _is_damage(err: sqlite3.Error) -> bool:
    """SQLite says the file is corrupt, or not a database at all (a garbage header)."""
    code = getattr(err, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _read_error(what: str, err: sqlite3.Error) -> BufferToolError:
    if _is_damage(err):
        return BufferDamagedError(f"{what}: {err}")
    return BufferToolError(f"{what}: {err}")


def _in_use(path: Path, pid: str | None = None) -> BufferInUseError:
    who = f"a running gateway (pid {pid})" if pid else "a running gateway (or another edgegw buffer command)"
    return BufferInUseError(
        f"{path} is open by {who}: stop it first "
        "(systemctl stop edgegw), purge, then start it again. Purging under a running gateway would "
        "leave its count of stored bytes wrong, and its byte cap would drop events early."
    )


def _check_buffer(conn: sqlite3.Connection, path: Path) -> None:
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as err:
        if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
            raise
        if _is_damage(err):
            raise BufferDamagedError(f"{path}: {err}") from None
        raise BufferToolError(f"{path} is not an edgegw buffer: {err}") from None
    if app_id != APPLICATION_ID:
        raise BufferToolError(f"{path} is not an edgegw buffer (SQLite application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise BufferToolError(
            f"{path} has buffer schema {version}, newer than this edgegw understands ({SCHEMA_VERSION})"
        )


# --------------------------------------------------------------------------------------------------------
# inspect


@dataclass(frozen=True)
class KindCount:
    device: str
    kind: str
    events: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class UpstreamCount:
    """One upstream's backlog in the file: events routed to it that it has not acknowledged."""

    name: str
    events: int
    bytes: int
    oldest_seq: int | None
    dropped: dict[str, int]
    """Events dropped (by reason) while this upstream had not acknowledged them."""


@dataclass(frozen=True)
class Inspection:
    """What a buffer holds, as of one snapshot."""

    path: Path
    file_bytes: int
    """The database file and its WAL, on disk."""
    depth: int
    """Events stored (not yet acknowledged upstream)."""
    bytes: int
    """Bytes they count against the gateway's ``buffer.max_bytes``."""
    oldest_seq: int | None
    newest_seq: int | None
    oldest_ts: float | None
    newest_ts: float | None
    last_seq: int
    """The highest seq ever assigned (the next event gets a higher one, even after deletes)."""
    by_kind: list[KindCount]
    dropped: dict[str, int] | None
    """Events the gateway dropped, by :class:`~gateway.delivery.buffer.DropReason`, since the file was made
    (None: a damaged file whose ``meta`` table cannot be read)."""
    purged: int | None
    """Events deleted by ``edgegw buffer purge`` (None: unknown, as ``dropped``)."""
    salvage: salvage.SalvageReport | None = None
    """For a damaged file: what is wrong with it, and how the events above were recovered from it (they are
    then what could be recovered, not what the file held)."""
    taken_at: float = field(default_factory=time.time)
    upstreams: list[UpstreamCount] = field(default_factory=list)
    """Per upstream the gateway registered (a schema 2 file): its backlog and drops."""

    def age(self, ts: float | None) -> float | None:
        return None if ts is None else self.taken_at - ts

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "depth": self.depth,
            "bytes": self.bytes,
            "oldest_seq": self.oldest_seq,
            "newest_seq": self.newest_seq,
            "oldest_ts": self.oldest_ts,
            "newest_ts": self.newest_ts,
            "oldest_age_s": self.age(self.oldest_ts),
            "newest_age_s": self.age(self.newest_ts),
            "last_seq": self.last_seq,
            "by_kind": [vars(k) for k in self.by_kind],
            "dropped": self.dropped,
            "purged": self.purged,
            "damaged": None if self.salvage is None else _salvage_json(self.salvage),
            "upstreams": [vars(u) for u in self.upstreams],
        }

    def render(self) -> str:
        found = self.salvage
        lines = [f"buffer    {self.path} ({_size(self.file_bytes)} on disk)"]
        if found is None:
            lines.append(f"events    {self.depth} pending, {self.bytes} bytes ({_size(self.bytes)})")
        else:
            lines.extend(_damage_lines(found))
            lines.append(
                f"recovered {self.depth} events, {self.bytes} bytes ({_size(self.bytes)}): "
                f"{found.by_sqlite} read by SQLite, {found.by_page_scan} more by the page scan"
            )
        highest = f"highest ever assigned {self.last_seq}"
        if found is not None and found.sequence is None:
            highest = f"highest ever assigned at least {self.last_seq} (its record cannot be read)"
        if self.oldest_seq is None:
            lines.append(f"seq       none {'pending' if found is None else 'recovered'}; {highest}")
        else:
            lines.append(
                f"seq       oldest {self.oldest_seq} (age {_age(self.age(self.oldest_ts))}), "
                f"newest {self.newest_seq} (age {_age(self.age(self.newest_ts))}); {highest}"
            )
        if self.by_kind:
            lines.append("by device and kind:")
            dw = max(len(k.device) for k in self.by_kind)
            kw = max(len(k.kind) for k in self.by_kind)
            lines.extend(
                f"  {k.device:<{dw}}  {k.kind:<{kw}}  {k.events:>9} events  {k.bytes:>12} bytes  "
                f"seq {k.first_seq}..{k.last_seq}"
                for k in self.by_kind
            )
        if self.upstreams:
            lines.append("by upstream (routed to it, not acknowledged by it):")
            nw = max(len(u.name) for u in self.upstreams)
            for u in self.upstreams:
                drops = " ".join(f"{reason}={n}" for reason, n in sorted(u.dropped.items()) if n) or "none"
                oldest = "" if u.oldest_seq is None else f"  oldest seq {u.oldest_seq}"
                lines.append(
                    f"  {u.name:<{nw}}  {u.events:>9} events  {u.bytes:>12} bytes{oldest}  dropped {drops}"
                )
        if self.dropped is None:
            lines.append("dropped   unknown (the counters cannot be read)")
        else:
            lines.append("dropped   " + " ".join(f"{reason}={n}" for reason, n in self.dropped.items()))
        lines.append(f"purged    {'unknown' if self.purged is None else self.purged}")
        if found is not None:
            lines.extend(_salvage_notes(found))
        return "\n".join(lines)


def _damage_lines(found: salvage.SalvageReport) -> list[str]:
    if not found.damage:
        return ["damaged   no damage found: SQLite and the page scan read it whole (read-only, as a salvage)"]
    return [("DAMAGED   " if i == 0 else "          ") + line for i, line in enumerate(found.damage)]


def _salvage_notes(found: salvage.SalvageReport) -> list[str]:
    lines = [("recovery  " if i == 0 else "          ") + note for i, note in enumerate(found.notes)]
    if found.may_include_delivered:
        lines.append("warning   " + DELIVERED_WARNING)
    return lines


DELIVERED_WARNING: Final = (
    "the freelist cannot be read, so events already delivered (and deleted) may be among the recovered "
    "ones: harmless, the consumer deduplicates on id"
)


def _salvage_json(found: salvage.SalvageReport) -> dict[str, Any]:
    return {
        "damage": list(found.damage),
        "recovered": found.events,
        "by_sqlite": found.by_sqlite,
        "by_page_scan": found.by_page_scan,
        "may_include_delivered": found.may_include_delivered,
        "page_size": found.page_size,
        "pages_scanned": found.pages_scanned,
        "damaged_cells": found.damaged_cells,
        "notes": list(found.notes),
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    whole = int(abs(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{sign}{days}d {clock}" if days else f"{sign}{clock}"


def _damage_hint(path: Path) -> str | None:
    """Why ``path`` is to be salvaged without first being opened by SQLite for reading and writing (see
    :func:`gateway.delivery.salvage.damage_hint`); the file must exist."""
    if path.is_dir():
        raise BufferToolError(f"{path}: is a directory, not a buffer file")
    try:
        return salvage.damage_hint(path)
    except FileNotFoundError:
        raise BufferToolError(f"{path}: no such file") from None
    except OSError as err:
        raise BufferToolError(f"cannot read {path}: {err.strerror or err}") from None


@contextlib.contextmanager
def _salvage(path: Path) -> Iterator[salvage.Salvage]:
    """Salvage ``path``; refused when it yields nothing and does not even look like a buffer."""
    scratch = (
        "the recovered events are sorted in a temporary file: give TMPDIR a directory with room "
        "(and not on the damaged disk)"
    )
    try:
        found = salvage.salvage(path)
    except OSError as err:
        raise BufferToolError(f"cannot read {path}: {err.strerror or err}") from None
    except sqlite3.Error as err:
        raise BufferToolError(f"salvaging {path} failed: {err}; {scratch}") from None
    with found:
        report = found.report
        if not report.is_buffer and report.file_bytes > 0:
            raise BufferToolError(
                f"{path} is not an edgegw buffer, or one damaged beyond recovery: "
                + "; ".join(report.damage or ("no event could be recovered from it",))
            )
        try:
            yield found
        except sqlite3.Error as err:
            raise BufferToolError(f"salvaging {path} failed: {err}; {scratch}") from None


def inspect(path: Path) -> Inspection:
    """Read what ``path`` holds, running gateway or not (read-only SQL, one snapshot). A damaged file is
    salvaged instead: the result says what was recovered (:attr:`Inspection.salvage`)."""
    if _damage_hint(path) is None:
        try:
            return _inspect(path)
        except BufferDamagedError:
            pass
    return _inspect_salvaged(path)


def _inspect_salvaged(path: Path) -> Inspection:
    with _salvage(path) as found:
        report = found.report
        depth, nbytes = found.totals()
        by_kind = [
            KindCount(k.device, k.kind, k.events, k.bytes, k.first_seq, k.last_seq) for k in found.by_kind()
        ]
        oldest_ts = found.ts_of(report.first_seq)
        newest_ts = found.ts_of(report.last_seq)
    dropped: dict[str, int] | None = None
    purged: int | None = None
    if report.meta is not None:
        dropped = {reason.value: 0 for reason in DropReason}
        purged = report.meta.get(PURGED_KEY, 0)
        for key, value in report.meta.items():
            if key.startswith(DROPPED_PREFIX):
                dropped[key.removeprefix(DROPPED_PREFIX)] = value
    return Inspection(
        path=path,
        file_bytes=_file_bytes(path),
        depth=depth,
        bytes=nbytes,
        oldest_seq=report.first_seq,
        newest_seq=report.last_seq,
        oldest_ts=oldest_ts,
        newest_ts=newest_ts,
        last_seq=max(report.sequence or 0, report.last_seq or 0),
        by_kind=by_kind,
        dropped=dropped,
        purged=purged,
        salvage=report,
    )


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _inspect(path: Path) -> Inspection:
    conn = _connect(path)
    try:
        conn.execute("BEGIN")  # one snapshot for every figure below
        depth, nbytes, oldest_seq, newest_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(seq), max(seq) FROM events"
        ).fetchone()
        oldest_ts = _ts_at(conn, oldest_seq)
        newest_ts = _ts_at(conn, newest_seq)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        last_seq = max(row[0] if row else 0, newest_seq or 0)
        by_kind = [
            KindCount(*r)
            for r in conn.execute(
                "SELECT device, kind, count(*), sum(size), min(seq), max(seq) FROM events "
                "GROUP BY device, kind ORDER BY device, kind"
            )
        ]
        dropped = {reason.value: 0 for reason in DropReason}
        purged = 0
        for key, value in conn.execute("SELECT key, value FROM meta"):
            if key.startswith(DROPPED_PREFIX):
                dropped[key.removeprefix(DROPPED_PREFIX)] = value
            elif key == PURGED_KEY:
                purged = value
        upstreams = _upstream_counts(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as err:
        raise _read_error(f"reading {path} failed", err) from None
    finally:
        conn.close()
    return Inspection(
        path=path,
        file_bytes=_file_bytes(path),
        depth=depth,
        bytes=nbytes,
        oldest_seq=oldest_seq,
        newest_seq=newest_seq,
        oldest_ts=oldest_ts,
        newest_ts=newest_ts,
        last_seq=last_seq,
        by_kind=by_kind,
        dropped=dropped,
        purged=purged,
        upstreams=upstreams,
    )


def _upstream_counts(conn: sqlite3.Connection) -> list[UpstreamCount]:
    """Each registered upstream's backlog (schema 2: the ``upstreams`` table and the ``pending`` bits)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "upstreams" not in tables:
        return []
    dropped: dict[str, dict[str, int]] = {}
    for key, value in conn.execute(
        "SELECT key, value FROM meta WHERE key LIKE ?", (UPSTREAM_DROPPED_PREFIX + "%",)
    ):
        reason, _, name = str(key).removeprefix(UPSTREAM_DROPPED_PREFIX).partition(":")
        dropped.setdefault(name, {})[reason] = int(value)
    counts = []
    for name, bit in conn.execute("SELECT name, bit FROM upstreams ORDER BY name").fetchall():
        events, nbytes, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(seq) FROM events WHERE pending & ?", (bit,)
        ).fetchone()
        counts.append(UpstreamCount(str(name), int(events), int(nbytes), oldest, dropped.get(str(name), {})))
    return counts


def _ts_at(conn: sqlite3.Connection, seq: int | None) -> float | None:
    if seq is None:
        return None
    row = conn.execute("SELECT ts FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else float(row[0])


# --------------------------------------------------------------------------------------------------------
# export


def iter_events(
    path: Path, *, after_seq: int = 0, limit: int | None = None, page: int = 1000
) -> Generator[Stored, None, None]:
    """The stored events with ``seq > after_seq``, in seq order, at most ``limit``, up to the highest seq
    present when the iteration starts. Each page of ``page`` rows is one short read transaction: no lock
    or snapshot is held between pages (nor while the caller handles a page). Raises
    :class:`BufferDamagedError` on a damaged file (:func:`export` salvages it instead)."""
    if page < 1:
        raise ValueError(f"page must be >= 1, not {page}")
    reason = _damage_hint(path)
    if reason is not None:  # never opened for writing: see salvage.damage_hint
        raise BufferDamagedError(f"{path}: {reason}")
    conn = _connect(path)
    try:
        upto = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        cursor = after_seq
        remaining = limit
        while remaining is None or remaining > 0:
            n = page if remaining is None else min(page, remaining)
            rows = conn.execute(
                "SELECT seq, device, kind, ts, data FROM events WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (cursor, upto, n),
            ).fetchall()  # the statement, and with it the read transaction, ends here
            if not rows:
                return
            for row in rows:
                yield Stored(row[0], row[1], row[2], float(row[3]), bytes(row[4]))
            cursor = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
    except sqlite3.Error as err:
        raise _read_error(f"reading {path} failed", err) from None
    finally:
        conn.close()


@dataclass(frozen=True)
class ExportResult:
    events: int
    first_seq: int | None
    last_seq: int | None
    salvage: salvage.SalvageReport | None = None
    """For a damaged file: what is wrong with it and how its events were recovered (the events exported are
    then those that could be recovered)."""


def export(
    path: Path,
    gateway_id: str,
    out: IO[bytes],
    *,
    after_seq: int = 0,
    limit: int | None = None,
    page: int = 1000,
) -> ExportResult:
    """Write the events of ``path`` to ``out`` as JSON lines: each line exactly the payload the forwarder
    publishes for that event (:func:`gateway.delivery.payload.encode_payload`). See :func:`iter_events` for
    which events. A damaged file is salvaged: what can be recovered is written the same way, in seq order,
    each event once (:attr:`ExportResult.salvage` says so); when SQLite finds the damage part way through, the
    export goes on after the last event written."""
    count = 0
    first = last = None

    def write(event: Stored) -> None:
        nonlocal count, first, last
        out.write(encode_payload(gateway_id, event) + b"\n")
        count += 1
        if first is None:
            first = event.seq
        last = event.seq

    if _damage_hint(path) is None:
        try:
            with contextlib.closing(iter_events(path, after_seq=after_seq, limit=limit, page=page)) as events:
                for event in events:
                    write(event)
            return ExportResult(count, first, last)
        except BufferDamagedError:
            pass  # go on with what can be salvaged, after the last event written
    with _salvage(path) as found:
        remaining = None if limit is None else limit - count
        if remaining is None or remaining > 0:
            for recovered in found.events(after_seq=after_seq if last is None else last, limit=remaining):
                write(recovered.stored())
        return ExportResult(count, first, last, found.report)


def salvage_summary(result: ExportResult, where: str) -> str:
    """What to tell the operator after an export of a damaged file (:attr:`ExportResult.salvage` set)."""
    found = result.salvage
    assert found is not None
    lines = [f"{found.path} is damaged:" if found.damage else f"{found.path}: no damage found"]
    lines.extend(f"  {line}" for line in found.damage)
    if found.events == 0:
        lines.append("nothing could be recovered from it")
    else:
        span = f" (seq {result.first_seq}..{result.last_seq})" if result.events else ""
        lines.append(
            f"recovered {found.events} events from it ({found.by_sqlite} read by SQLite, "
            f"{found.by_page_scan} more by the page scan); exported {result.events}{span} to {where}"
        )
    if found.may_include_delivered:
        lines.append("warning: " + DELIVERED_WARNING)
    return "\n".join(lines)


def export_to_file(
    path: Path,
    gateway_id: str,
    target: Path,
    *,
    after_seq: int = 0,
    limit: int | None = None,
    page: int = 1000,
) -> ExportResult:
    """:func:`export` into a new file ``target``, atomically and durably: written as ``target.partial``,
    fsync'd, then renamed, so a stick pulled out early never holds a truncated file under the final name,
    and one pulled out right after the command returns holds all of it. Refuses to overwrite a file."""
    if target.exists():
        raise BufferToolError(
            f"{target} exists: choose another name (an earlier export is never overwritten)"
        )
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as f:
            result = export(path, gateway_id, f, after_seq=after_seq, limit=limit, page=page)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BufferToolError(f"writing {target} failed: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return result


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # some file systems (vfat on a stick, through some drivers) cannot open a directory
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------
# purge


@dataclass(frozen=True)
class PurgePlan:
    """What a purge deletes (or deleted): ``events`` events, seq ``first_seq``..``last_seq``, ``bytes``."""

    up_to: int | None
    """Delete ``seq <= up_to``; None: everything."""
    events: int
    bytes: int
    first_seq: int | None
    last_seq: int | None
    remaining: int
    """Events left afterwards."""

    def describe(self) -> str:
        if not self.events:
            return "nothing to purge"
        return (
            f"{self.events} events, seq {self.first_seq}..{self.last_seq}, {self.bytes} bytes "
            f"({self.remaining} would remain)"
        )


_PLAN_SQL: Final = "SELECT count(*), coalesce(sum(size), 0), min(seq), max(seq) FROM events WHERE seq <= ?"


def _plan(conn: sqlite3.Connection, up_to: int | None) -> PurgePlan:
    bound = up_to if up_to is not None else (1 << 63) - 1
    events, nbytes, first, last = conn.execute(_PLAN_SQL, (bound,)).fetchone()
    total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return PurgePlan(up_to, events, nbytes, first, last, total - events)


def _refuse_damaged(path: Path, reason: str) -> BufferDamagedError:
    return BufferDamagedError(
        f"{path} is damaged ({reason}): purge never writes to a damaged file. Export what can be "
        f"salvaged (edgegw buffer export --buffer {path} --gateway-id ID --out FILE), then remove it."
    )


def plan_purge(path: Path, up_to: int | None) -> PurgePlan:
    """What :func:`purge` would delete, read-only (works beside a running gateway)."""
    reason = _damage_hint(path)
    if reason is not None:
        raise _refuse_damaged(path, reason)
    try:
        return _plan_purge(path, up_to)
    except BufferDamagedError as err:
        raise _refuse_damaged(path, str(err)) from None


def _plan_purge(path: Path, up_to: int | None) -> PurgePlan:
    conn = _connect(path)
    try:
        conn.execute("BEGIN")
        plan = _plan(conn, up_to)
        conn.execute("COMMIT")
        return plan
    except sqlite3.Error as err:
        raise _read_error(f"reading {path} failed", err) from None
    finally:
        conn.close()


def purge(path: Path, up_to: int | None) -> PurgePlan:
    """Delete the events with ``seq <= up_to`` (all when None) and count them under ``purged``. Raises
    :class:`BufferInUseError` (and deletes nothing) while anyone else has the file open, and
    :class:`BufferDamagedError` for a damaged file."""
    reason = _damage_hint(path)
    if reason is not None:
        raise _refuse_damaged(path, reason)
    with _gateway_lock(path):
        try:
            return _purge(path, up_to)
        except BufferDamagedError as err:
            raise _refuse_damaged(path, str(err)) from None


@contextlib.contextmanager
def _gateway_lock(path: Path) -> Iterator[None]:
    """Hold the lock a gateway holds while it has the buffer open (``flock`` on ``<buffer>.lock``, see
    :class:`~gateway.delivery.buffer.SqliteBuffer`), so that none runs, or starts, during the purge. The lock
    file is opened read-only and never created: a file made here by root would keep the service's user from
    opening it. Without one (no gateway ever opened this buffer), SQLite's exclusive lock alone guards."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    except OSError as err:
        raise BufferToolError(f"cannot open the lock file {lock_path}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise _in_use(path, holder) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _purge(path: Path, up_to: int | None) -> PurgePlan:
    conn = _connect(path, exclusive=True)
    try:
        try:
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as err:
            if _is_busy(err):
                raise _in_use(path) from None
            raise
        plan = _plan(conn, up_to)
        if plan.events:
            bound = up_to if up_to is not None else (1 << 63) - 1
            conn.execute("DELETE FROM events WHERE seq <= ?", (bound,))
            conn.execute(ADD_TO_META, (PURGED_KEY, plan.events))
        conn.execute("COMMIT")
        return plan
    except sqlite3.Error as err:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if _is_damage(err):
            raise BufferDamagedError(f"purging failed (nothing was deleted): {err}") from None
        raise BufferToolError(f"purging {path} failed (nothing was deleted): {err}") from None
    finally:
        conn.close()
