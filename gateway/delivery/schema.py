"""The buffer's file: its SQLite schema and the names in it, said once for the buffer
(:mod:`gateway.delivery.buffer`), the field tool (:mod:`gateway.cli.buffertool`) and the salvage
(:mod:`gateway.delivery.salvage`).

::

    events (seq INTEGER PRIMARY KEY AUTOINCREMENT, device, kind, ts, data (compact JSON), size)
    meta   (key, value): dropped.<reason> -> count, corrupt_files -> count, purged -> count

The SQLite header carries :data:`APPLICATION_ID` (this file is an edgegw buffer) and
:data:`SCHEMA_VERSION` (as ``user_version``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADD_TO_META",
    "APPLICATION_ID",
    "CORRUPT_FILES_KEY",
    "DROPPED_PREFIX",
    "PURGED_KEY",
    "ROW_OVERHEAD",
    "SCHEMA",
    "SCHEMA_VERSION",
]

APPLICATION_ID: Final = 0x45475742
""""EGWB", in the SQLite header's application_id: this file is an edgegw buffer."""
SCHEMA_VERSION: Final = 1
"""The layout below, in the header's user_version; a newer one is refused."""
ROW_OVERHEAD: Final = 24
"""Bytes counted per event on top of its device, kind and JSON data (ts, seq and size, 8 bytes each)."""

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT    NOT NULL,
        kind   TEXT    NOT NULL,
        ts     REAL    NOT NULL,
        data   BLOB    NOT NULL,  -- the event's data as compact JSON, UTF-8
        size   INTEGER NOT NULL   -- bytes counted against the cap
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)

DROPPED_PREFIX: Final = "dropped."
"""``meta`` keys ``dropped.<reason>``: events dropped for that reason
(:class:`~gateway.delivery.buffer.DropReason`)."""
CORRUPT_FILES_KEY: Final = "corrupt_files"
"""``meta`` key: damaged buffer files moved aside before this one (counted on in each fresh file)."""
PURGED_KEY: Final = "purged"
"""``meta`` key: events deleted by ``edgegw buffer purge`` (the gateway does not read it)."""

ADD_TO_META: Final = " ".join(
    (
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
    )
)
"""Add to a ``meta`` counter, creating it at 0 first: parameters (key, amount)."""
