"""A consumer of edgegw events at fleet scale: run several instances; they share one MQTT 5 shared
subscription (``$share/<group>/<prefix>/+/+/+``), so the broker (or broker cluster) spreads the messages over
them, and every instance writes into one store whose primary key is the event's ``id``
(``<gateway>:<seq>``). An event sent again after a break (QoS 1 is at-least-once: the gateway re-sends what
the broker had not acknowledged) may reach another instance than the first copy did; the store's key drops
it, whichever instance gets it, with no per-instance memory to grow or lose.

    python config/examples/consumer_dedupe.py --broker 127.0.0.1:1883 --db events.sqlite \\
        [--group ingest] [--prefix edgegw] [--client-id ingest-1]

SQLite stands in for the shared store here (``INSERT OR IGNORE``); with PostgreSQL the same is ``INSERT ...
ON CONFLICT (id) DO NOTHING``. Each instance keeps a persistent session (a stable ``--client-id``, clean
start off, a session expiry), so what arrives while it restarts is queued for it. It reads the JSON
encoding (the default); a gateway with ``encoding: cbor`` or ``msgpack`` needs that decoder instead.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMA = """CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL,
    kind TEXT NOT NULL, ts REAL NOT NULL, data TEXT NOT NULL)"""


def topic_filter(group: str, prefix: str = "edgegw") -> str:
    """Every event topic (``<prefix>/<gateway>/<device>/<kind>``) of every gateway, shared by ``group``."""
    return f"$share/{group}/{prefix}/+/+/+"


def open_store(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SCHEMA)
    db.commit()
    return db


def store(db: sqlite3.Connection, payload: bytes) -> tuple[int, int]:
    """Write the events of one message; return (new, duplicates). A message on an event-shaped topic that is
    no event (a command request on ``<device>/cmd``) is skipped."""
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return 0, 0
    rows = [
        (
            e["id"],
            e["id"].rpartition(":")[0],
            e["seq"],
            e["device"],
            e["kind"],
            e["ts"],
            json.dumps(e["data"]),
        )
        for e in (body if isinstance(body, list) else [body])
        if isinstance(e, dict) and {"id", "seq", "device", "kind", "ts", "data"} <= e.keys()
    ]
    before = db.total_changes
    db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    new = db.total_changes - before
    return new, len(rows) - new


class Consumer:
    """One instance: a paho client whose messages go into the shared store (on paho's thread)."""

    def __init__(
        self, host: str, port: int, db_path: Path, *, group: str, prefix: str, client_id: str
    ) -> None:
        self.db_path = db_path
        self.filter = topic_filter(group, prefix)
        self.new = 0
        self.duplicates = 0
        self.messages = 0
        self._db: sqlite3.Connection | None = None
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=False, properties=props)

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            client.subscribe(self.filter, qos=1)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if self._db is None:  # opened on paho's thread, which is the only one using it
            self._db = open_store(self.db_path)
        new, dup = store(self._db, bytes(msg.payload))
        self.messages += 1
        self.new += new
        self.duplicates += dup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--group", default="ingest")
    parser.add_argument("--prefix", default="edgegw")
    parser.add_argument("--client-id", default="ingest-1", help="stable per instance (its session)")
    args = parser.parse_args(argv)
    host, _, port = args.broker.rpartition(":")
    open_store(args.db).close()
    consumer = Consumer(
        host or "127.0.0.1",
        int(port),
        args.db,
        group=args.group,
        prefix=args.prefix,
        client_id=args.client_id,
    )
    consumer.client.loop_forever()


if __name__ == "__main__":
    main()
