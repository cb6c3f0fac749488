"""Fewer bytes on the uplink (issue 14 §4): encodings (JSON, CBOR, MessagePack), compression of messages
(zstd, gzip) named in MQTT 5 properties, topic aliases, batches that linger for more events. Every
message is decoded here as a stranger would: a plain paho subscriber on a real Mosquitto reads the Content
Type and the ``content-encoding`` user property, then decodes with zstandard/gzip and cbor2/msgpack/json."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import paho.mqtt.client as paho
import pytest
import zstandard
from paho.mqtt.enums import CallbackAPIVersion

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer, Stored
from gateway.delivery.encoding import MessageCodec, decode_message
from gateway.delivery.forwarder import Forwarder, ForwarderSettings
from gateway.delivery.payload import encode_payload
from tests.broker import Mosquitto
from tests.waiting import until

TIMEOUT = 15.0


class PropertySubscriber:
    """Collects (topic, payload, content type, content-encoding) of every message (MQTT 5, QoS 1)."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, bytes, str | None, str | None]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: self._ready.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("no SUBACK")
        self._client = client

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        content_type = getattr(props, "ContentType", None)
        encoding = dict(getattr(props, "UserProperty", []) or []).get("content-encoding")
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), content_type, encoding))

    def snapshot(self) -> list[tuple[str, bytes, str | None, str | None]]:
        with self._lock:
            return list(self.messages)

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for topic, payload, content_type, encoding in self.snapshot():
            if topic.endswith("/status"):
                continue
            body = decode_message(payload, content_type, encoding)
            out.extend(body if isinstance(body, list) else [body])
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def settings(broker: Mosquitto, gateway: str, **overrides: Any) -> ForwarderSettings:
    return ForwarderSettings(
        gateway_id=gateway,
        host=broker.host,
        port=broker.port,
        client_id=f"edgegw-test-{gateway}",
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        **overrides,
    )


def reads(n: int) -> list[Event]:
    return [
        Event(
            "gate-1",
            "rfid.read",
            1_700_000_000.25 + i,
            {"epc": f"E2801160600002{i:010X}", "antenna": 1 + i % 4},
        )
        for i in range(n)
    ]


@asynccontextmanager
async def forwarding(tmp_path: Path, s: ForwarderSettings) -> AsyncIterator[tuple[SqliteBuffer, Forwarder]]:
    buf = await SqliteBuffer.open(tmp_path / "buffer.db")
    forwarder = Forwarder(buf, s)
    task = asyncio.create_task(forwarder.run())
    try:
        yield buf, forwarder
    finally:
        forwarder.stop()
        async with asyncio.timeout(TIMEOUT):
            await task
        await buf.close()


@pytest.mark.parametrize("encoding", ["json", "cbor", "msgpack"])
@pytest.mark.parametrize("compression", [None, "zstd", "gzip"])
@pytest.mark.parametrize("batch", [1, 25])
async def test_each_encoding_and_compression_decodes_to_the_json_fields(
    tmp_path: Path, broker: Mosquitto, encoding: str, compression: str | None, batch: int
) -> None:
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    sub = PropertySubscriber(broker, f"edgegw/{gw}/#")
    try:
        s = settings(broker, gw, encoding=encoding, compression=compression, batch_max_events=batch)
        async with forwarding(tmp_path, s) as (buf, _):
            sent = reads(60)
            await buf.append(sent)
            await until("60 events decoded", lambda: len(sub.events()) >= 60, TIMEOUT)
            await until("every event acknowledged", lambda: buf.stats().depth == 0, TIMEOUT)
            got = sub.events()
        # The same fields, values and ids as the default JSON, whatever the encoding.
        expected = [
            {
                "id": f"{gw}:{e.seq}",
                "seq": e.seq,
                "device": e.device,
                "kind": e.kind,
                "ts": e.ts,
                "data": e.data,
            }
            for e in sent
        ]
        assert sorted(got, key=lambda m: m["seq"]) == expected
        kinds = {(ct, ce) for t, _, ct, ce in sub.snapshot() if not t.endswith("/status")}
        content_type = {
            "json": "application/json",
            "cbor": "application/cbor",
            "msgpack": "application/msgpack",
        }
        if encoding == "json" and compression is None:
            assert kinds == {(None, None)}  # the default: no properties, the documented JSON as it always was
        else:
            assert kinds == {(content_type[encoding], compression)}
        messages = [m for m in sub.snapshot() if not m[0].endswith("/status")]
        assert len(messages) == (60 if batch == 1 else 3)  # one commit: 25 + 25 + 10
    finally:
        sub.close()


def test_standard_decoders_read_the_payloads() -> None:
    """The consumer examples of the README, with the libraries alone (no edgegw code on the reading side)."""
    rows = [
        Stored(7 + i, "meter-1", "meter.reading", 1_700_000_000.5, b'{"point":"cod","value":12.5}')
        for i in range(3)
    ]
    plain = json.loads(b"[" + b",".join(encode_payload("gw", r) for r in rows) + b"]")
    cbor_zstd = MessageCodec("gw", "cbor", "zstd").encode(rows, batch=True)
    assert cbor2.loads(zstandard.ZstdDecompressor().decompressobj().decompress(cbor_zstd)) == plain
    msgpack_gzip = MessageCodec("gw", "msgpack", "gzip").encode(rows, batch=True)
    assert msgpack.unpackb(gzip.decompress(msgpack_gzip)) == plain
    json_zstd = MessageCodec("gw", "json", "zstd").encode(rows, batch=True)
    assert json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(json_zstd)) == plain
    # The default is byte for byte the documented JSON.
    assert MessageCodec("gw").encode(rows[:1], batch=False) == encode_payload("gw", rows[0])


async def test_topic_aliases_reach_subscribers_as_full_topics(tmp_path: Path, broker: Mosquitto) -> None:
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    sub = PropertySubscriber(broker, f"edgegw/{gw}/#")
    try:
        async with forwarding(tmp_path, settings(broker, gw, topic_alias=True)) as (buf, forwarder):
            await until("connected", lambda: forwarder.connected, TIMEOUT)
            events = [*reads(5), Event("meter-1", "meter.reading", 1.5, {"v": 1}), *reads(3)]
            await buf.append(events)
            await until("every event acknowledged", lambda: buf.stats().depth == 0, TIMEOUT)
            await until("9 events", lambda: len(sub.events()) == 9, TIMEOUT)
        topics = [t for t, *_ in sub.snapshot() if not t.endswith("/status")]
        assert sorted(set(topics)) == [f"edgegw/{gw}/gate-1/rfid.read", f"edgegw/{gw}/meter-1/meter.reading"]
        assert [m["seq"] for m in sorted(sub.events(), key=lambda m: m["seq"])] == list(range(1, 10))
    finally:
        sub.close()


async def test_a_partial_batch_lingers_for_more_and_a_drain_does_not_wait(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    sub = PropertySubscriber(broker, f"edgegw/{gw}/#")
    try:
        s = settings(broker, gw, batch_max_events=10, batch_linger_ms=60_000)
        async with forwarding(tmp_path, s) as (buf, forwarder):
            await until("connected", lambda: forwarder.connected, TIMEOUT)
            first = reads(10)
            await buf.append(first[:3])  # a partial batch: held (for up to a minute) ...
            await buf.append(first[3:])  # ... and sent as one message as soon as it is full
            await until("10 events", lambda: len(sub.events()) == 10, TIMEOUT)
            assert len([m for m in sub.snapshot() if not m[0].endswith("/status")]) == 1
            await buf.append(reads(4))  # partial again: a drain sends it at once
            async with asyncio.timeout(TIMEOUT):
                assert await forwarder.drain() is None
            await until("14 events", lambda: len(sub.events()) == 14, TIMEOUT)
            assert len([m for m in sub.snapshot() if not m[0].endswith("/status")]) == 2
    finally:
        sub.close()


def test_options_that_need_mqtt_5_are_refused_on_3_1_1() -> None:
    for extra in ({"encoding": "cbor"}, {"compression": "zstd"}, {"topic_alias": True}):
        with pytest.raises(ValueError, match="MQTT 5"):
            ForwarderSettings(gateway_id="gw", host="h", protocol="3.1.1", **extra)


async def test_the_readme_consumer_example_with_mosquitto_sub_and_zstd(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The README's shell example: mosquitto_sub prints the Content Type and the user property, and the
    raw payload goes through the zstd command line tool and cbor2. Each mosquitto_sub first makes a
    persistent session (-E: exit once subscribed), then collects what was queued for it."""
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    topic = f"edgegw/{gw}/gate-1/rfid.read"

    def mosquitto_sub(client_id: str, *extra: str) -> bytes:
        args = ["mosquitto_sub", "-V", "5", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1"]
        args += ["-c", "-i", client_id, "-x", "60", *extra]
        return subprocess.run(args, check=True, capture_output=True, timeout=TIMEOUT).stdout

    for client_id in (f"{gw}-props", f"{gw}-raw"):
        await asyncio.to_thread(mosquitto_sub, client_id, "-E")
    s = settings(broker, gw, encoding="cbor", compression="zstd", batch_max_events=20)
    async with forwarding(tmp_path, s) as (buf, _):
        await buf.append(reads(20))
        await until("acknowledged", lambda: buf.stats().depth == 0, TIMEOUT)
    said = await asyncio.to_thread(mosquitto_sub, f"{gw}-props", "-C", "1", "-N", "-F", "%C %P")
    payload = await asyncio.to_thread(mosquitto_sub, f"{gw}-raw", "-C", "1", "-N", "-F", "%p")
    assert said.decode().split() == ["application/cbor", "content-encoding:zstd"]
    unzstd = await asyncio.create_subprocess_exec(
        "zstd", "-d", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    plain, _ = await unzstd.communicate(payload)
    events = cbor2.loads(plain)
    assert [e["seq"] for e in events] == list(range(1, 21))
    assert events[0]["id"] == f"{gw}:1" and events[0]["data"]["antenna"] == 1


async def test_interleaved_devices_still_fill_their_batches(tmp_path: Path, broker: Mosquitto) -> None:
    """Two readers whose reads alternate: with compression each message holds one reader's events (in seq
    order per topic), not runs of one."""
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    sub = PropertySubscriber(broker, f"edgegw/{gw}/#")
    try:
        s = settings(broker, gw, batch_max_events=10, compression="zstd")
        async with forwarding(tmp_path, s) as (buf, _):
            reads_of = [Event(f"gate-{i % 2}", "rfid.read", 1.0 + i, {"i": i}) for i in range(40)]
            await buf.append(reads_of)
            await until("40 events", lambda: len(sub.events()) == 40, TIMEOUT)
            await until("every event acknowledged", lambda: buf.stats().depth == 0, TIMEOUT)
        messages = [m for m in sub.snapshot() if not m[0].endswith("/status")]
        assert len(messages) == 4  # 2 readers x 20 reads, 10 per message
        by_topic: dict[str, list[int]] = {}
        for topic, payload, content_type, codec in messages:
            batch = decode_message(payload, content_type, codec)
            assert len(batch) == 10 and {e["device"] for e in batch} == {topic.split("/")[2]}
            by_topic.setdefault(topic, []).extend(e["seq"] for e in batch)
        for seqs in by_topic.values():
            assert seqs == sorted(seqs)
        assert sorted(s for seqs in by_topic.values() for s in seqs) == list(range(1, 41))
    finally:
        sub.close()
