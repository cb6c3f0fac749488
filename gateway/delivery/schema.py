"""The buffer's file: its SQLite schema and the names in it, said once for the buffer
(:mod:`gateway.delivery.buffer`), the field tool (:mod:`gateway.cli.buffertool`) and the salvage
(:mod:`gateway.delivery.salvage`).

::

    events    (seq INTEGER PRIMARY KEY AUTOINCREMENT, device, kind, ts, data (compact JSON), size, pending)
    meta      (key, value): dropped.<reason> -> count, corrupt_files -> count, purged -> count,
              upstream_dropped:<reason>:<upstream> -> count
    upstreams (name, bit): the upstreams whose acknowledgements the file keeps, each one bit of ``pending``

``pending`` (schema 2) is a bit set of the upstreams that route the event and have not acknowledged it yet:
an upstream's ack clears its bit, and the row is deleted when none is left. A schema 1 file gains the
column (every row pending for bit 0, the first upstream registered) when the gateway opens it.

The SQLite header carries :data:`APPLICATION_ID` (this file is an edgegw buffer) and
:data:`SCHEMA_VERSION` (as ``user_version``).
"""

from __future__ import annotations

from typing import Final

MAX_UPSTREAMS: Final = 62
"""Upstreams one buffer file serves: each has a bit of ``pending`` (a signed 64-bit integer)."""

__all__ = [
    "ADD_TO_META",
    "APPLICATION_ID",
    "CORRUPT_FILES_KEY",
    "DROPPED_PREFIX",
    "MAX_UPSTREAMS",
    "MIGRATE_1_2",
    "PURGED_KEY",
    "ROW_OVERHEAD",
    "SCHEMA",
    "SCHEMA_VERSION",
    "UPSTREAM_DROPPED_PREFIX",
]

APPLICATION_ID: Final = 0x45475742
""""EGWB", in the SQLite header's application_id: this file is an edgegw buffer."""
SCHEMA_VERSION: Final = 2
"""The layout below, in the header's user_version; a newer one is refused, an older one (1: no ``pending``
column, no ``upstreams`` table) is brought up to date by :data:`MIGRATE_1_2`."""
ROW_OVERHEAD: Final = 24
"""Bytes counted per event on top of its device, kind and JSON data (ts, seq and size, 8 bytes each)."""

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT    NOT NULL,
        kind   TEXT    NOT NULL,
        ts     REAL    NOT NULL,
        data   BLOB    NOT NULL,  -- the event's data as compact JSON, UTF-8
        size   INTEGER NOT NULL,  -- bytes counted against the cap
        pending INTEGER NOT NULL DEFAULT 1  -- upstreams (bits) that still have to acknowledge it
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS upstreams (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE) WITHOUT ROWID",
)

MIGRATE_1_2: Final = (
    "ALTER TABLE events ADD COLUMN pending INTEGER NOT NULL DEFAULT 1",
    "CREATE TABLE IF NOT EXISTS upstreams (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE) WITHOUT ROWID",
)
"""Schema 1 -> 2: every stored event pending for bit 0 (the first upstream registered: the one upstream
a schema 1 gateway had). O(1) in SQLite: the default is not written into existing rows."""

DROPPED_PREFIX: Final = "dropped."
"""``meta`` keys ``dropped.<reason>``: events dropped for that reason
(:class:`~gateway.delivery.buffer.DropReason`)."""
CORRUPT_FILES_KEY: Final = "corrupt_files"
"""``meta`` key: damaged buffer files moved aside before this one (counted on in each fresh file)."""
PURGED_KEY: Final = "purged"
"""``meta`` key: events deleted by ``edgegw buffer purge`` (the gateway does not read it)."""
UPSTREAM_DROPPED_PREFIX: Final = "upstream_dropped:"
"""``meta`` keys ``upstream_dropped:<reason>:<upstream>``: events dropped for that reason while that upstream
had not acknowledged them."""

ADD_TO_META: Final = " ".join(
    (
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
    )
)
"""Add to a ``meta`` counter, creating it at 0 first: parameters (key, amount)."""
