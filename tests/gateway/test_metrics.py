"""Metrics, health and the watchdog of a gateway run in this process, against real parts: a simulated R2000
on a pseudo-terminal, the private mosquitto, real sockets for /metrics and /healthz (parsed with
prometheus-client's own parser), and systemd's side of NOTIFY_SOCKET (:class:`FakeSystemd`)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from drivers.event import Event
from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.app import Gateway
from gateway.cli import status
from gateway.config import load_config
from gateway.delivery.buffer import SqliteBuffer, WhenFull
from gateway.ops.metrics import CountingBuffer, MetricsServer
from tests.broker import Mosquitto, free_port
from tests.gateway.ops_helpers import http_get, r2000, running, samples, value, write_gateway
from tests.gateway.test_sdnotify import FakeSystemd, Message
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


class FakeClock:
    """Monotonic time that moves only when told: a stall of minutes without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[R2000Simulator]:
    async with serve_pty(tmp_path / "ttyR1", SimOptions(tags=30, rate=400.0, seed=3, antennas=(1, 2))) as sim:
        yield sim


@pytest.fixture
def notify_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:  # short: a socket path fits in 108 bytes
        yield os.path.join(directory, "notify")


def reads(gateway: Gateway, device: str = "reader-1") -> int:
    counts = gateway.counts
    return counts.events_in[(device, "rfid.read")] if counts else 0


async def test_a_scrape_parses_and_counts_what_went_through(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator
) -> None:
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="metrics-1",
        url=broker.url,
        devices=r2000("reader-1", tmp_path / "ttyR1"),
    )
    gateway = Gateway(load_config(config))
    async with running(gateway):
        assert gateway.metrics is not None
        port = gateway.metrics.port
        assert port != 0
        await until("300 reads committed", lambda: reads(gateway) >= 300)
        reader.silence(3600)
        sent = reader.stats.tag_frames_sent
        await until(f"all {sent} reads committed", lambda: reads(gateway) >= sent)
        assert gateway.buffer is not None
        buffer = gateway.buffer
        await until("the backlog delivered", lambda: buffer.stats().depth == 0)
        code, body = await http_get(port, "/metrics")
        assert code == 200
        text = body.decode()

    parsed = samples(text)
    assert value(parsed, "edgegw_info", gateway_id="metrics-1") == 1
    assert value(parsed, "edgegw_events_in_total", device="reader-1", kind="rfid.read") == sent
    assert value(parsed, "edgegw_events_out_total", device="reader-1", kind="rfid.read") == sent
    assert value(parsed, "edgegw_events_in_total", device="reader-1", kind="device.status") == 1
    assert value(parsed, "edgegw_upstream_events_acked_total") >= sent + 1
    assert value(parsed, "edgegw_upstream_connected") == 1
    assert value(parsed, "edgegw_device_up", device="reader-1") == 1
    assert value(parsed, "edgegw_device_state", device="reader-1", state="connected") == 1
    assert value(parsed, "edgegw_device_state", device="reader-1", state="disconnected") == 0
    assert value(parsed, "edgegw_device_restarts_total", device="reader-1") == 0
    assert value(parsed, "edgegw_decode_errors_total", device="reader-1") == 0
    assert value(parsed, "edgegw_framer_bytes_skipped_total", device="reader-1") == 0
    assert value(parsed, "edgegw_buffer_events") == 0
    assert value(parsed, "edgegw_buffer_last_seq") == sent + 1
    assert value(parsed, "edgegw_buffer_max_bytes") == 2**30
    for reason in ("queue_full", "dropped_oldest", "rejected_new", "oversize"):
        assert value(parsed, "edgegw_events_dropped_total", reason=reason) == 0
    assert value(parsed, "edgegw_upstream_publish_latency_seconds_count") > 0
    assert value(parsed, "edgegw_upstream_publish_latency_seconds_bucket", le="+Inf") > 0
    assert value(parsed, "edgegw_healthy") == 1
    assert value(parsed, "process_resident_memory_bytes") > 0

    view = status.parse(text)
    assert view.gateway_id == "metrics-1"
    assert view.upstream_connected is True
    assert view.devices["reader-1"].state == "connected"
    assert view.devices["reader-1"].events_in == sent + 1
    rendered = status.render_text(view, None, "http://x/metrics")
    assert "metrics-1, healthy" in rendered
    assert "reader-1  connected" in rendered


async def test_the_registry_is_the_gateways_own(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY  # noqa: PLC0415

    config = write_gateway(tmp_path / "gateway.yaml", gateway_id="own", url=f"mqtt://127.0.0.1:{free_port()}")
    gateway = Gateway(load_config(config))
    async with running(gateway):
        assert gateway.metrics is not None
        assert isinstance(gateway.metrics.registry, CollectorRegistry)
        assert gateway.metrics.registry is not REGISTRY
        assert REGISTRY.get_sample_value("edgegw_healthy") is None
        assert gateway.metrics.registry.get_sample_value("edgegw_healthy") == 1


async def test_healthz_answers_200_or_503_with_the_reason_and_other_paths() -> None:
    reason: str | None = None
    server = MetricsServer(CollectorRegistry(), lambda: reason, host="127.0.0.1", port=0)
    await server.start()
    try:
        assert server.port != 0
        assert await http_get(server.port, "/healthz") == (200, b"ok\n")
        reason = "upstream stuck: connected, 3 publish(es) in flight"
        assert await http_get(server.port, "/healthz") == (503, reason.encode() + b"\n")
        assert (await http_get(server.port, "/healthz", method="HEAD"))[0] == 503
        assert (await http_get(server.port, "/nope"))[0] == 404
        assert (await http_get(server.port, "/metrics", method="POST"))[0] == 405
        assert (await http_get(server.port, "", raw=b"garbage\r\n\r\n"))[0] == 400
        code, body = await http_get(server.port, "/metrics?x=1")
        assert code == 200 and body == b""  # an empty registry: an empty exposition
    finally:
        await server.close()


async def test_a_health_check_that_raises_is_a_503_that_says_so() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    server = MetricsServer(CollectorRegistry(), broken, host="127.0.0.1", port=0)
    await server.start()
    try:
        code, body = await http_get(server.port, "/healthz")
        assert code == 503
        assert body == b"health check failed: RuntimeError: boom\n"
    finally:
        await server.close()


async def test_a_taken_port_leaves_the_gateway_running_without_metrics(tmp_path: Path) -> None:
    blocker = MetricsServer(CollectorRegistry(), lambda: None, host="127.0.0.1", port=0)
    await blocker.start()
    try:
        config = write_gateway(
            tmp_path / "gateway.yaml", gateway_id="taken", url=f"mqtt://127.0.0.1:{free_port()}"
        )
        config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{blocker.port}"'))
        gateway = Gateway(load_config(config))
        async with running(gateway):
            assert gateway.metrics is None
            assert gateway.state == "running"
    finally:
        await blocker.close()


# -- health -------------------------------------------------------------------------------------------------


async def silent_broker() -> tuple[asyncio.Server, list[bytes]]:
    """An MQTT 3.1.1 "broker" that accepts the connection and then never acknowledges a publish: a stuck
    upstream, which no real broker can be made into. It answers pings, so keepalive does not end it."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(1)
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                await reader.readexactly(length)
                kind = head[0] >> 4
                received.append(head)
                if kind == 1:  # CONNECT -> CONNACK, accepted
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 12:  # PINGREQ -> PINGRESP
                    writer.write(b"\xd0\x00")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, received


async def test_a_broker_that_never_acknowledges_makes_the_gateway_unhealthy(
    tmp_path: Path, notify_path: str
) -> None:
    systemd = FakeSystemd(notify_path)
    server, received = await silent_broker()
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="stuck",
        url=f"mqtt://127.0.0.1:{port}",
        mqtt_extra='    protocol: "3.1.1"\n',
    )
    environ = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "40000"}
    gateway = Gateway(load_config(config), stall_s=60, clock=clock, environ=environ)
    try:
        async with running(gateway):
            assert gateway.metrics is not None and gateway.watchdog is not None
            watchdog = gateway.watchdog
            metrics = gateway.metrics.port
            forwarder = gateway.upstream
            await until("the forwarder connected", lambda: getattr(forwarder, "connected", False))
            await until("its first publish", lambda: any(h[0] >> 4 == 3 for h in received))
            assert await http_get(metrics, "/healthz") == (200, b"ok\n")  # waiting, not yet for long
            clock.now += 59
            assert (await http_get(metrics, "/healthz"))[0] == 200
            clock.now += 2
            code, body = await http_get(metrics, "/healthz")
            assert code == 503
            assert (
                body == b"upstream stuck: connected, 1 publish(es) in flight, and nothing published or "
                b"acknowledged for 61 s\n"
            )
            parsed = samples((await http_get(metrics, "/metrics"))[1].decode())
            assert value(parsed, "edgegw_healthy") == 0
            assert "UNHEALTHY: upstream stuck" in gateway.status_line()

            # The watchdog's predicate is the same: systemd gets no more pings.
            await until("a ping withheld", lambda: watchdog.withheld >= 1)
            systemd.drain()
            withheld = watchdog.withheld
            await until("three more checks", lambda: watchdog.withheld >= withheld + 3)
            assert [m.fields for m in systemd.drain() if "WATCHDOG" in m.fields] == []
            assert watchdog.pings >= 1  # it pinged while healthy
    finally:
        systemd.close()
        server.close()
        await server.wait_closed()


async def test_a_dead_uplink_with_a_backlog_is_healthy(tmp_path: Path, reader: R2000Simulator) -> None:
    clock = FakeClock()
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="offline",
        url=f"mqtt://127.0.0.1:{free_port()}",  # nothing listens: the uplink is down
        devices=r2000("reader-1", tmp_path / "ttyR1"),
    )
    gateway = Gateway(load_config(config), stall_s=60, clock=clock)
    async with running(gateway):
        assert gateway.metrics is not None and gateway.buffer is not None
        buffer = gateway.buffer
        await until("a backlog of 200", lambda: buffer.stats().depth >= 200)
        reader.silence(3600)
        await until("the queue empty", lambda: len(gateway.queue) == 0)
        assert await http_get(gateway.metrics.port, "/healthz") == (200, b"ok\n")
        clock.now += 3600  # an hour without the broker
        assert await http_get(gateway.metrics.port, "/healthz") == (200, b"ok\n")
        assert gateway.health_reason() is None


async def test_an_idle_site_is_healthy(tmp_path: Path, broker: Mosquitto) -> None:
    clock = FakeClock()
    config = write_gateway(tmp_path / "gateway.yaml", gateway_id="idle", url=broker.url)
    gateway = Gateway(load_config(config), stall_s=60, clock=clock)
    async with running(gateway):
        forwarder = gateway.upstream
        await until(
            "connected, the online status acknowledged", lambda: getattr(forwarder, "inflight", 1) == 0
        )
        assert gateway.health_reason() is None
        clock.now += 24 * 3600  # a day without a single event
        assert gateway.health_reason() is None


# -- systemd ------------------------------------------------------------------------------------------------


async def test_systemd_sees_ready_status_watchdog_and_stopping(tmp_path: Path, notify_path: str) -> None:
    systemd = FakeSystemd(notify_path)
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="notify", url=f"mqtt://127.0.0.1:{free_port()}"
    )
    environ = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"}  # ping every 50 ms
    gateway = Gateway(load_config(config), environ=environ, status_interval_s=0.05)
    try:
        async with running(gateway):
            messages: list[Message] = []
            while not any("STATUS" in m.fields and "READY" not in m.fields for m in messages) or not any(
                "WATCHDOG" in m.fields for m in messages
            ):
                messages.append(await systemd.next())
        messages += systemd.drain()
    finally:
        systemd.close()
    fields = [m.fields for m in messages]
    assert fields[0]["READY"] == "1"  # the broker is not there: READY does not wait for it
    assert "upstream NOT connected" in fields[0]["STATUS"]
    assert all(m.pid == os.getpid() for m in messages)
    statuses = [f["STATUS"] for f in fields if "STATUS" in f and "READY" not in f and "STOPPING" not in f]
    assert statuses and "events/s in" in statuses[0] and "backlog 0" in statuses[0]
    assert {"WATCHDOG": "1"} in fields
    stopping = [i for i, f in enumerate(fields) if f.get("STOPPING") == "1"]
    assert len(stopping) == 1
    assert "stopping" in fields[stopping[0]]["STATUS"]
    assert all("READY" not in f for f in fields[stopping[0] :])


async def test_a_blocked_event_loop_stops_the_watchdog_pings(tmp_path: Path, notify_path: str) -> None:
    systemd = FakeSystemd(notify_path)
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="blocked", url=f"mqtt://127.0.0.1:{free_port()}"
    )
    gateway = Gateway(load_config(config), environ={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "40000"})
    during_block: list[Message] = []
    unblocked = asyncio.Event()

    def stuck_callback() -> None:
        systemd.drain()  # the pings sent before the block
        time.sleep(0.4)  # the thing under test: a callback that blocks the loop for 20 ping intervals
        during_block.extend(systemd.drain())
        unblocked.set()

    try:
        async with running(gateway):
            while (await systemd.next()).fields != {"WATCHDOG": "1"}:
                pass
            asyncio.get_running_loop().call_soon(stuck_callback)
            await asyncio.wait_for(unblocked.wait(), 10)
            assert during_block == []
            while (await systemd.next()).fields != {"WATCHDOG": "1"}:  # the loop runs again: so do the pings
                pass
            assert gateway.watchdog is not None and gateway.watchdog.pings >= 2
    finally:
        systemd.close()


# -- counting per device and kind ---------------------------------------------------------------------------


async def test_counting_buffer_counts_what_was_committed_and_first_reads_only(tmp_path: Path) -> None:
    inner = await SqliteBuffer.open(tmp_path / "b.db", max_bytes=2000, when_full=WhenFull.REJECT_NEW)
    counts = CountingBuffer(inner)
    try:
        small = [Event("a", "rfid.read", 1.0, {"n": i}) for i in range(3)] + [
            Event("b", "meter.reading", 1.0, {})
        ]
        assert 0 not in await counts.append(small)
        huge = Event("a", "rfid.read", 1.0, {"blob": "x" * 5000})  # over the cap: refused, not counted
        seqs = await counts.append([huge, Event("b", "device.status", 1.0, {})])
        assert seqs[0] == 0 and seqs[1] != 0
        assert counts.events_in == {
            ("a", "rfid.read"): 3,
            ("b", "meter.reading"): 1,
            ("b", "device.status"): 1,
        }

        first = await counts.read(0, 2)
        assert counts.events_out == {("a", "rfid.read"): 2}
        again = await counts.read(0, 10)  # a rewind after a reconnect: only the rows not read before count
        assert [r.seq for r in again[:2]] == [r.seq for r in first]
        assert counts.events_out == {
            ("a", "rfid.read"): 3,
            ("b", "meter.reading"): 1,
            ("b", "device.status"): 1,
        }
        await counts.ack(r.seq for r in again)
        assert counts.acked == 5
    finally:
        await counts.close()


async def test_events_per_kind_are_not_counted_with_the_metrics_off(tmp_path: Path) -> None:
    inner = await SqliteBuffer.open(tmp_path / "b.db")
    counts = CountingBuffer(inner, by_kind=False)
    try:
        await counts.append([Event("a", "rfid.read", 1.0, {})])
        rows = await counts.read(0, 10)
        await counts.ack([rows[0].seq])
        assert counts.events_in == {} and counts.events_out == {}
        assert counts.acked == 1
    finally:
        await counts.close()
