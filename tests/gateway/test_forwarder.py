"""The MQTT forwarder against a real private Mosquitto and a real SQLite buffer.

Waits are on conditions (messages received, forwarder state, buffer depth) with timeouts; nothing sleeps
in place of synchronisation and nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from drivers.event import Event
from gateway.delivery.buffer import Buffer, SqliteBuffer
from gateway.delivery.forwarder import Forwarder, ForwarderSettings
from gateway.delivery.mqtt import MqttConnectError, MqttConnection, TlsOptions, Will
from tests.broker import Message, Mosquitto, Subscriber
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0


# -- helpers ---------------------------------------------------------------------------------------------


def make_settings(broker: Mosquitto, **overrides: Any) -> ForwarderSettings:
    gateway = overrides.pop("gateway_id", f"gw-{uuid.uuid4().hex[:8]}")
    values: dict[str, Any] = {
        "gateway_id": gateway,
        "host": broker.host,
        "port": broker.port,
        "client_id": f"edgegw-test-{gateway}",
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 5.0,
    }
    values.update(overrides)
    return ForwarderSettings(**values)


def events(device: str, kind: str, n: int, start: int = 0) -> list[Event]:
    return [
        Event(device, kind, 1_700_000_000.25 + i, {"i": i, "tag": f"E2{i:06X}"})
        for i in range(start, start + n)
    ]


@asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[asyncio.Task[None]]:
    """Run the forwarder until the block ends, then stop it cleanly (offline + DISCONNECT)."""
    task = asyncio.create_task(forwarder.run())
    try:
        yield task
    finally:
        forwarder.stop()
        async with asyncio.timeout(TIMEOUT):
            await task


def event_messages(messages: list[Message], gateway: str) -> list[Message]:
    return [
        m for m in messages if m.topic.startswith(f"edgegw/{gateway}/") and not m.topic.endswith("/status")
    ]


def decoded(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        body = json.loads(m.payload)
        out.extend(body if isinstance(body, list) else [body])
    return out


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await SqliteBuffer.open(tmp_path / "buffer.db")
    try:
        yield buf
    finally:
        await buf.close()


# -- delivery --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_event_arrives_once_with_topic_and_payload_and_is_deleted(
    broker: Mosquitto, buffer: Buffer, protocol: str
) -> None:
    settings = make_settings(broker, protocol=protocol)
    gw = settings.gateway_id
    before = events("reader-1", "rfid.read", 60) + events("meter-7", "meter.reading", 40)
    await buffer.append(before)
    forwarder = Forwarder(buffer, settings)
    async with Subscriber(broker, f"edgegw/{gw}/+/+") as sub, running(forwarder):
        await asyncio.wait_for(forwarder.wait_connected(), TIMEOUT)
        after = events("reader-1", "rfid.read", 100, start=60)
        await buffer.append(after)
        await sub.wait_count(200, TIMEOUT, f"edgegw/{gw}/")
        await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)
    expected = {e.seq: e for e in before + after}
    got = sub.snapshot()
    assert len(got) == 200
    assert {json.loads(m.payload)["seq"] for m in got} == set(expected)
    for m in got:
        body = json.loads(m.payload)
        e = expected[body["seq"]]
        assert m.topic == f"edgegw/{gw}/{e.device}/{e.kind}"
        assert list(body) == ["id", "seq", "device", "kind", "ts", "data"]
        assert body == {
            "id": f"{gw}:{e.seq}",
            "seq": e.seq,
            "device": e.device,
            "kind": e.kind,
            "ts": e.ts,
            "data": e.data,
        }
    stats = forwarder.stats()
    assert (stats.published, stats.acked, stats.refused, stats.resent) == (200, 200, 0, 0)
    assert stats.connects == 1
    assert not stats.connected
    await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)


@pytest.mark.parametrize(("max_inflight", "bound"), [(10, 10), (100, 20)])
async def test_inflight_window_is_bounded(
    broker: Mosquitto, buffer: Buffer, max_inflight: int, bound: int
) -> None:
    """The window is max_inflight, and never more than the broker's Receive Maximum (20 in Mosquitto)."""
    settings = make_settings(broker, max_inflight=max_inflight)
    await buffer.append(events("reader-1", "rfid.read", 500))
    forwarder = Forwarder(buffer, settings)
    async with running(forwarder):
        await until("forwarder.acked == 500", lambda: forwarder.acked == 500, TIMEOUT)
    stats = forwarder.stats()
    # Never exceeded; and filled, less at most the one slot the retained birth message may still hold
    # (whether its PUBACK came back before the first burst is timing, so both are allowed).
    assert bound - 1 <= stats.max_inflight_seen <= bound
    await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)


async def test_broker_restart_loses_nothing_and_resends_with_same_ids(
    broker: Mosquitto, buffer: Buffer
) -> None:
    settings = make_settings(broker, keepalive_s=60)
    gw = settings.gateway_id
    forwarder = Forwarder(buffer, settings)
    total = 3000
    async with Subscriber(broker, f"edgegw/{gw}/+/+", session=f"sub-{gw}") as sub, running(forwarder):
        await asyncio.wait_for(forwarder.wait_connected(), TIMEOUT)
        await buffer.append(events("reader-1", "rfid.read", 2000))
        await until(
            "forwarder.inflight > 0 and forwarder.acked > 0",
            lambda: forwarder.inflight > 0 and forwarder.acked > 0,
            TIMEOUT,
        )
        await asyncio.to_thread(broker.stop)
        # Prompt: the disconnect is seen when the socket closes, not at the keepalive (60 s, > TIMEOUT),
        # and every publish in flight is failed at that moment.
        await asyncio.wait_for(forwarder.disconnected_event.wait(), TIMEOUT)
        assert forwarder.inflight == 0
        assert forwarder.stats().disconnects == 1
        await buffer.append(events("reader-2", "rfid.read", 1000))  # appended while the broker is down
        assert buffer.stats().depth > 0
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(forwarder.wait_connected(), TIMEOUT)

        seen: set[str] = set()
        checked = 0

        def all_seen(messages: list[Message]) -> bool:
            # Incremental: it runs on every message, and decoding all of them each time is quadratic
            # (seconds at 3,000 messages, long enough to starve the subscriber's thread).
            nonlocal checked
            seen.update(json.loads(m.payload)["id"] for m in messages[checked:])
            checked = len(messages)
            return len(seen) >= total

        messages = await sub.wait_until(all_seen, TIMEOUT)
        await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)
    bodies = decoded(messages)
    ids = {b["id"] for b in bodies}
    assert len(ids) == total
    by_id: dict[str, dict[str, Any]] = {}
    for b in bodies:  # a duplicate is allowed, but only as the very same message
        assert b["id"] == f"{gw}:{b['seq']}"
        assert by_id.setdefault(b["id"], b) == b
    stats = forwarder.stats()
    assert stats.connects == 2
    assert stats.acked == total
    assert stats.resent >= 0
    assert stats.published == total + stats.resent


# -- refusal ---------------------------------------------------------------------------------------------


async def test_refused_publishes_stay_buffered_and_do_not_block_others(
    tmp_path: Path, buffer: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    gw = "gw-acl"
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite #\ntopic deny edgegw/{gw}/forbidden/#\n")
    with Mosquitto(extra_config=[f"acl_file {acl}"]) as acl_broker:
        settings = make_settings(acl_broker, gateway_id=gw)
        forwarder = Forwarder(buffer, settings)
        batch: list[Event] = []
        for i in range(20):
            batch += events("allowed", "meter.reading", 3, start=3 * i)
            if i % 4 == 0:
                batch += events("forbidden", "meter.reading", 1, start=i)
        await buffer.append(batch)
        denied = [e.seq for e in batch if e.device == "forbidden"]
        async with Subscriber(acl_broker, f"edgegw/{gw}/#") as sub:
            with caplog.at_level(logging.WARNING, logger="edgegw.forwarder"):
                async with running(forwarder):
                    await sub.wait_count(60, TIMEOUT, f"edgegw/{gw}/allowed/")
                    await until(
                        "every denied event refused once",
                        lambda: forwarder.refused == len(denied) and buffer.stats().depth == len(denied),
                        TIMEOUT,
                    )
                    assert forwarder.stats().refused == len(denied)  # not retried on the same connection
                    # After a reconnect, the refused events are tried once more (and refused again).
                    await asyncio.to_thread(acl_broker.stop)
                    await asyncio.wait_for(forwarder.disconnected_event.wait(), TIMEOUT)
                    await asyncio.to_thread(acl_broker.start)
                    await until(
                        "forwarder.refused == 2 * len(denied)",
                        lambda: forwarder.refused == 2 * len(denied),
                        TIMEOUT,
                    )
        remaining = await buffer.read(0, 100)
        assert [s.seq for s in remaining] == denied
        assert not [m for m in sub.snapshot() if "/forbidden/" in m.topic]
        assert "refused" in caplog.text
        assert forwarder.stats().acked == 60


# -- batching --------------------------------------------------------------------------------------------


async def test_batching_sends_pending_runs_as_arrays_and_acks_all(broker: Mosquitto, buffer: Buffer) -> None:
    settings = make_settings(broker, batch_max_events=50)
    gw = settings.gateway_id
    await buffer.append(events("reader-1", "rfid.read", 120) + events("meter-7", "meter.reading", 30))
    forwarder = Forwarder(buffer, settings)
    async with Subscriber(broker, f"edgegw/{gw}/+/+") as sub, running(forwarder):
        messages = await sub.wait_until(lambda ms: len(decoded(ms)) >= 150, TIMEOUT)
        await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)
    assert [len(json.loads(m.payload)) for m in messages] == [50, 50, 20, 30]
    for m in messages:
        for body in json.loads(m.payload):
            assert m.topic == f"edgegw/{gw}/{body['device']}/{body['kind']}"
            assert body["id"] == f"{gw}:{body['seq']}"
    assert sorted(b["seq"] for b in decoded(messages)) == list(range(1, 151))
    assert forwarder.stats().acked == 150
    assert forwarder.stats().max_inflight_seen <= 20


async def test_batching_does_not_wait_to_fill_a_batch(broker: Mosquitto, buffer: Buffer) -> None:
    settings = make_settings(broker, batch_max_events=50)
    gw = settings.gateway_id
    forwarder = Forwarder(buffer, settings)
    async with Subscriber(broker, f"edgegw/{gw}/+/+") as sub, running(forwarder):
        await asyncio.wait_for(forwarder.wait_connected(), TIMEOUT)
        await buffer.append(events("reader-1", "rfid.read", 1))
        messages = await sub.wait_count(1, TIMEOUT)
    assert len(json.loads(messages[0].payload)) == 1


def bare_connection(host: str, port: int, client_id: str, **extra: Any) -> MqttConnection:
    """An :class:`MqttConnection` that ignores its acks and its loss (tests of the connection itself);
    ``extra``: its other options (``will``, ``tls``...)."""
    return MqttConnection(
        host=host,
        port=port,
        client_id=client_id,
        on_ack=lambda _mid, _rc: None,
        on_lost=lambda _reason: None,
        connect_timeout_s=5.0,
        **extra,
    )


# -- status: birth, clean stop, last will ----------------------------------------------------------------


async def test_birth_online_and_offline_after_clean_stop(broker: Mosquitto, buffer: Buffer) -> None:
    settings = make_settings(broker)
    status = settings.status_topic
    forwarder = Forwarder(buffer, settings)
    async with Subscriber(broker, status) as sub:
        async with running(forwarder):
            await sub.wait_until(lambda ms: [m.payload for m in ms] == [b"online"], TIMEOUT)
        await sub.wait_until(lambda ms: [m.payload for m in ms] == [b"online", b"offline"], TIMEOUT)
    async with Subscriber(broker, status) as late:  # retained
        messages = await late.wait_count(1, TIMEOUT)
    assert (messages[0].payload, messages[0].retain) == (b"offline", True)


_CHILD = """
import asyncio, json, sys
from gateway.delivery.buffer import SqliteBuffer
from gateway.delivery.forwarder import Forwarder, ForwarderSettings

async def main() -> None:
    buffer = await SqliteBuffer.open(sys.argv[1])
    forwarder = Forwarder(buffer, ForwarderSettings(**json.loads(sys.argv[2])))
    task = asyncio.create_task(forwarder.run())
    await forwarder.wait_connected()
    print("connected", flush=True)
    await task

asyncio.run(main())
"""


async def test_last_will_offline_when_the_gateway_dies(broker: Mosquitto, tmp_path: Path) -> None:
    settings = make_settings(broker)
    async with Subscriber(broker, settings.status_topic) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            str(tmp_path / "child.db"),
            json.dumps(asdict(settings)),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            await sub.wait_until(lambda ms: [m.payload for m in ms] == [b"online"], TIMEOUT)
            child.send_signal(signal.SIGKILL)  # no DISCONNECT, no offline: only the broker's will
            await asyncio.wait_for(child.wait(), TIMEOUT)
            messages = await sub.wait_until(lambda ms: len(ms) >= 2, TIMEOUT)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert [m.payload for m in messages] == [b"online", b"offline"]


async def test_a_disconnect_with_acks_still_arriving_never_sets_off_the_will(broker: Mosquitto) -> None:
    """Publish, then DISCONNECT at once, while the broker's PUBACK is still on its way back: closing a
    socket with unread bytes sends a TCP RST, and a broker that had not yet read the DISCONNECT lost it
    with the reset and published the will as well (a second NDEATH for a Sparkplug host; one stop in
    four did it here). The connection now half-closes and reads until the broker's own close."""
    run = uuid.uuid4().hex[:6]
    rounds = 60

    def connection(name: str, will: Will | None = None) -> MqttConnection:
        return bare_connection(broker.host, broker.port, f"linger-{run}-{name}", will=will)

    async with Subscriber(broker, f"linger-{run}/#") as sub:
        for i in range(rounds):
            conn = connection(str(i), Will(f"linger-{run}/will", f"will {i}".encode(), qos=1, retain=False))
            await conn.connect()
            await conn.subscribe([f"linger-{run}/data"])  # each message comes back, to arrive at the close
            conn.publish(f"linger-{run}/data", f"data {i}".encode(), qos=1)
            await conn.disconnect()
        # A last message on the will topic, from a connection opened after every close above: once it is
        # in, the broker has long since dealt with each of those closes.
        last = connection("last")
        await last.connect()
        last.publish(f"linger-{run}/will", b"end", qos=1)
        await last.disconnect()
        messages = await sub.wait_until(lambda ms: b"end" in [m.payload for m in ms], TIMEOUT)
    assert [m.payload for m in messages if m.topic.endswith("/will")] == [b"end"]
    assert sorted(m.payload for m in messages if m.topic.endswith("/data")) == sorted(
        f"data {i}".encode() for i in range(rounds)
    )


# -- TLS, auth, secrets ----------------------------------------------------------------------------------


@pytest.fixture
def tls_broker(tls_files: dict[str, Path]) -> Any:
    config = [
        f"cafile {tls_files['ca.crt']}",
        f"certfile {tls_files['server.crt']}",
        f"keyfile {tls_files['server.key']}",
    ]
    with Mosquitto(extra_config=config) as b:
        yield b


async def test_tls_verifies_the_broker_by_default(tls_broker: Mosquitto, tls_files: dict[str, Path]) -> None:
    def connection(tls: TlsOptions) -> MqttConnection:
        return bare_connection(tls_broker.host, tls_broker.port, f"tls-{uuid.uuid4().hex[:6]}", tls=tls)

    for wrong in (TlsOptions(ca_file=str(tls_files["other-ca.crt"])), TlsOptions()):  # wrong CA; system CAs
        with pytest.raises(MqttConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await connection(wrong).connect()
    good = connection(TlsOptions(ca_file=str(tls_files["ca.crt"])))
    await good.connect()
    await good.disconnect()


async def test_tls_forwarding(tls_broker: Mosquitto, tls_files: dict[str, Path], buffer: Buffer) -> None:
    settings = make_settings(tls_broker, tls=True, ca_file=str(tls_files["ca.crt"]))
    gw = settings.gateway_id
    await buffer.append(events("reader-1", "rfid.read", 300))
    forwarder = Forwarder(buffer, settings)
    async with running(forwarder):
        await until("forwarder.acked == 300", lambda: forwarder.acked == 300, TIMEOUT)
        await until("buffer.stats().depth == 0", lambda: buffer.stats().depth == 0, TIMEOUT)
    assert forwarder.stats().connects == 1
    assert gw


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "edge", "s3cret-pw"], check=True)
    return path


async def test_auth_and_secrets_stay_out_of_logs_and_reprs(
    passwords: Path, buffer: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    with Mosquitto(extra_config=["allow_anonymous false", f"password_file {passwords}"]) as auth_broker:
        wrong = make_settings(auth_broker, username="edge", password="wr0ng-pw", key_password="k3y-pw")
        right = make_settings(auth_broker, username="edge", password="s3cret-pw")
        with caplog.at_level(logging.DEBUG):
            refused = Forwarder(buffer, wrong)
            task = asyncio.create_task(refused.run())
            await until(
                "'not authori' in caplog.text.lower()", lambda: "not authori" in caplog.text.lower(), TIMEOUT
            )  # CONNACK refusal, logged
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert refused.stats().connects == 0
            await buffer.append(events("reader-1", "rfid.read", 5))
            forwarder = Forwarder(buffer, right)
            async with running(forwarder):
                await until("forwarder.acked == 5", lambda: forwarder.acked == 5, TIMEOUT)
        text = (
            caplog.text + repr(wrong) + repr(right) + repr(forwarder) + repr(refused) + str(forwarder.stats())
        )
        for secret in ("wr0ng-pw", "s3cret-pw", "k3y-pw"):
            assert secret not in text
