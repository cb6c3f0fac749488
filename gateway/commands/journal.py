"""The command ids journal: what the de-duplication window knew, kept on disk across a restart.

A request id is written as *running* (fsync'd) before its command runs and its result is written when the
result is made, before the request is acknowledged to the broker. After a restart (a clean stop, a SIGKILL,
a power cut) the command service loads the journal into its window, so that a request the broker delivers
again (QoS 1: it was never acknowledged, or the sender repeated it) is answered from the journal and never
run twice; an id still *running* was cut off by the stop, and its effect on the device is unknown.

SQLite in WAL mode with ``synchronous=FULL``: a row committed is on disk, and a half-written commit is rolled
back at the next open, never a corrupt file. Commits are made on the event loop: a few per command, and
commands are rare (rate-limited), so the ordering (recorded before run, recorded before acknowledged) stays
plain sequential code.

A journal that cannot be opened, read or written never stops the gateway: the fault is logged and counted
(:attr:`CommandJournal.faults`) and the service goes on with its window in memory, as before the journal.
A file that is not a database is moved aside (``<path>.corrupt``) and a new journal started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from gateway.commands.protocol import Status

log = logging.getLogger("edgegw.commands")

Result = tuple[Status, str | None, Mapping[str, Any] | None]

GATEWAY_SCOPE: Final = ""
"""The scope of the gateway's own commands (a device's name is never empty)."""

_NOT_A_JOURNAL: Final = frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT})
"""Open errors of a file that is no journal (set aside); any other (a directory, no permission, no space)
leaves the file alone."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ids (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    result TEXT,
    done_at REAL NOT NULL DEFAULT 0,
    replayable_until REAL NOT NULL DEFAULT 0,
    UNIQUE (scope, id)
)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled id. Times are wall-clock (time.time): a monotonic clock does not survive a restart."""

    device: str | None
    id: str
    result: Result | None
    """None: it was running when the gateway stopped."""
    done_at: float
    replayable_until: float


def _scope(device: str | None) -> str:
    return GATEWAY_SCOPE if device is None else device


class CommandJournal:
    """The journal file at ``path`` (see the module docstring). Every method logs and counts a storage
    fault instead of raising it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.faults = 0
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except sqlite3.Error as err:
            self._fault("cannot be opened", err)
            if getattr(err, "sqlite_errorcode", None) in _NOT_A_JOURNAL:
                self._set_aside()
        except OSError as err:
            self._fault("cannot be opened", err)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            db.execute("SELECT scope, id, result, done_at, replayable_until FROM ids LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self) -> None:
        """A file that is not a journal: keep it for whoever looks (``<path>.corrupt``) and start anew."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + suffix).unlink()
            self.path.replace(aside)
            self._db = self._open()
        except (OSError, sqlite3.Error) as err:
            self._fault("cannot be started anew", err)
            return
        log.warning("commands: the id journal %s was set aside as %s; a new one is started", self.path, aside)

    def _fault(self, what: str, err: BaseException) -> None:
        self.faults += 1
        log.error(
            "commands: the id journal %s %s (%s: %s); de-duplication goes on in memory (fault %d)",
            self.path,
            what,
            type(err).__name__,
            err,
            self.faults,
        )

    @property
    def usable(self) -> bool:
        return self._db is not None

    def load(self) -> list[Entry]:
        """Every journaled id, oldest first; rows that cannot be read are skipped (and counted)."""
        db = self._db
        if db is None:
            return []
        try:
            rows = db.execute(
                "SELECT scope, id, result, done_at, replayable_until FROM ids ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as err:
            self._fault("cannot be read", err)
            return []
        entries: list[Entry] = []
        for scope, rid, result, done_at, until in rows:
            try:
                entries.append(
                    Entry(
                        None if scope == GATEWAY_SCOPE else str(scope),
                        str(rid),
                        _decode(result),
                        float(done_at),
                        float(until),
                    )
                )
            except (TypeError, ValueError) as err:
                self._fault(f"has an unreadable row for id {rid!r}", err)
        return entries

    def running(self, device: str | None, request_id: str, replayable_until: float) -> None:
        """Record ``request_id`` as running, durably, before its command runs."""
        self._write(
            "INSERT OR IGNORE INTO ids (scope, id, replayable_until) VALUES (?, ?, ?)",
            (_scope(device), request_id, replayable_until),
        )

    def done(
        self, device: str | None, request_id: str, result: Result, done_at: float, replayable_until: float
    ) -> None:
        """Record the result of ``request_id`` (the first one stays: a result already journaled is kept)."""
        self._write(
            "INSERT INTO ids (scope, id, result, done_at, replayable_until) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, id) DO UPDATE SET result = excluded.result, done_at = excluded.done_at "
            "WHERE ids.result IS NULL",
            (_scope(device), request_id, _encode(result), done_at, replayable_until),
        )

    def forget(self, keys: Iterable[tuple[str | None, str]]) -> None:
        """Drop ids the window no longer holds."""
        db = self._db
        rows = [(_scope(device), rid) for device, rid in keys]
        if db is None or not rows:
            return
        try:
            db.execute("BEGIN")
            try:
                db.executemany("DELETE FROM ids WHERE scope = ? AND id = ?", rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._fault("cannot be written", err)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        db = self._db
        if db is None:
            return
        try:
            db.execute(sql, params)
        except sqlite3.Error as err:
            self._fault("cannot be written", err)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()


def _encode(result: Result) -> str:
    status, reason, data = result
    return json.dumps([status, reason, dict(data) if data is not None else None])


def _decode(text: object) -> Result | None:
    if text is None:
        return None
    status, reason, data = json.loads(str(text))
    if not isinstance(status, str) or not (reason is None or isinstance(reason, str)):
        raise ValueError(f"not a result: {text!r}")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"not a result: {text!r}")
    return cast("Result", (status, reason, data))
