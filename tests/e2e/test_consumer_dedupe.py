"""The README's fleet consumer (config/examples/consumer_dedupe.py) against a real mosquitto: two instances
on one MQTT 5 shared subscription both get a share of the messages, and the store keeps each event once
although every one of them was published twice (as a gateway re-sends after a break)."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "consumer_dedupe.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consumer_dedupe", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def event(gw: str, seq: int) -> bytes:
    body = {"id": f"{gw}:{seq}", "seq": seq, "device": "meter", "kind": "meter.reading", "ts": 1.0 * seq}
    return json.dumps({**body, "data": {"values": {"voltage_a": 230.0 + seq}}}).encode()


async def test_two_instances_share_the_stream_and_the_store_keeps_each_event_once(
    tmp_path: Path, broker: Mosquitto
) -> None:
    ex = example()
    db = tmp_path / "events.sqlite"
    ex.open_store(db).close()
    consumers = [
        ex.Consumer(broker.host, broker.port, db, group="ingest", prefix="fleetx", client_id=f"ingest-{i}")
        for i in (1, 2)
    ]
    for c in consumers:
        c.client.loop_start()
    try:
        await until("both subscribed", lambda: all(c.client.is_connected() for c in consumers))
        publisher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        try:
            sent = 0
            for gw in ("gw-1", "gw-2", "gw-3"):
                for seq in range(1, 41):
                    for _copy in range(2):  # every event twice, as after a break
                        publisher.publish(f"fleetx/{gw}/meter/meter.reading", event(gw, seq), qos=1)
                        sent += 1
            publisher.publish("fleetx/gw-1/meter/cmd", b'{"id": "c-1", "command": "read", "ts": 1}', qos=1)
            publisher.publish("fleetx/gw-1/status", b"online", qos=1, retain=False)
            await until(
                "every message consumed", lambda: sum(c.messages for c in consumers) == sent + 1, timeout=30
            )
        finally:
            publisher.disconnect()
            publisher.loop_stop()
    finally:
        for c in consumers:
            c.client.disconnect()
            c.client.loop_stop()
    assert all(c.messages > 0 for c in consumers)  # the broker spread the shared subscription
    assert sum(c.new for c in consumers) == 120 and sum(c.duplicates for c in consumers) == 120
    with sqlite3.connect(db) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM events").fetchone()
        gateways = dict(conn.execute("SELECT gateway, count(*) FROM events GROUP BY gateway").fetchall())
    assert rows == 120 and gateways == {"gw-1": 40, "gw-2": 40, "gw-3": 40}
