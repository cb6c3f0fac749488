"""A roadside lane end to end, against real parts: a simulated R2000 reader on a real pseudo-terminal,
``edgegw run`` as a child process, a private mosquitto, and a subscriber.

What is checked is the durability promise: every tag frame the reader sent arrives upstream exactly once
by id (duplicates allowed only as identical re-sends), with seqs contiguous from 1, across a broker outage;
and after ``kill -9`` every event the gateway had committed is still delivered.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.delivery.buffer import SqliteBuffer
from tests.broker import Mosquitto
from tests.e2e.harness import Collector, GatewayProcess, Received, missing_seqs, write_config

pytestmark = pytest.mark.timeout(180)

ANTENNAS = {1: "lane1-in", 2: "lane1-out"}


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[R2000Simulator]:
    options = SimOptions(tags=40, rate=400.0, seed=7, antennas=(1, 2))
    async with serve_pty(tmp_path / "ttyR2000", options) as sim:
        yield sim


def lane_config(tmp_path: Path, broker: Mosquitto, gateway_id: str) -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        gateway_id=gateway_id,
        buffer=tmp_path / "buffer.db",
        url=broker.url,
        devices=f"""  - name: reader-1
    driver: uhf-r2000
    port: {tmp_path / "ttyR2000"}
    antennas: {{1: lane1-in, 2: lane1-out}}
""",
    )


@pytest.fixture
async def collector(broker: Mosquitto, request: pytest.FixtureRequest) -> AsyncIterator[Collector]:
    gateway_id = f"e2e-{request.node.name.replace('_', '-')[:40]}"
    c = Collector(broker.host, broker.port, "edgegw", gateway_id, client_id=f"sub-{gateway_id}")
    await asyncio.to_thread(c.connected.wait, 10)
    yield c
    c.close()


def reads(received: Received) -> int:
    return received.kinds.get("rfid.read", 0)


def assert_delivered_in_order_without_gaps(received: Received, population: tuple[bytes, ...]) -> None:
    seqs = received.seqs()
    assert seqs, "nothing arrived"
    assert missing_seqs(seqs, seqs[-1]) == [], "a gap in the seqs"
    assert received.topics_ok, "a message on the wrong topic or with the wrong id"
    assert received.conflicting_duplicates == [], "a re-sent id with different content"
    epcs = {epc.hex().upper() for epc in population}
    for message in received.of_kind("rfid.read"):
        data = message["data"]
        assert data["epc"] in epcs
        assert data["antenna_name"] == ANTENNAS[data["antenna"]]
        assert data["pc"] == "3000"
        assert isinstance(data["rssi_dbm"], int)


async def test_every_read_arrives_once_with_contiguous_seqs(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator, collector: Collector
) -> None:
    gateway = GatewayProcess(lane_config(tmp_path, broker, collector.gateway_id))
    await gateway.start()
    try:
        await collector.wait_for("the birth message", lambda r: "online" in r.statuses)
        await collector.wait_for("500 reads", lambda r: reads(r) >= 500)
        reader.silence(3600)  # the reader stops; what it already sent is all there is to deliver
        sent = reader.stats.tag_frames_sent
        await collector.wait_for(f"all {sent} reads", lambda r: reads(r) >= sent)
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
    await collector.wait_for("the clean-stop status", lambda r: r.statuses[-1:] == ["offline"])
    received = collector.snapshot()
    assert reads(received) == sent
    assert_delivered_in_order_without_gaps(received, reader.population)
    statuses = [m["data"]["state"] for m in received.of_kind("device.status")]
    assert statuses[0] == "connected"
    assert "summary device=reader-1" in gateway.log()


async def test_broker_outage_loses_nothing(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator, collector: Collector
) -> None:
    gateway = GatewayProcess(lane_config(tmp_path, broker, collector.gateway_id))
    await gateway.start()
    try:
        await collector.wait_for("200 reads", lambda r: reads(r) >= 200)
        broker.stop()
        during = reader.stats.tag_frames_sent
        async with asyncio.timeout(60):
            await reader.wait_tag_frames(during + 1200)  # the lane goes on, ~3 s, while the uplink is down
        broker.start()
        reader.silence(3600)
        sent = reader.stats.tag_frames_sent
        await collector.wait_for(f"all {sent} reads after the outage", lambda r: reads(r) >= sent, timeout=90)
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
    received = collector.snapshot()
    assert reads(received) == sent
    assert_delivered_in_order_without_gaps(received, reader.population)
    assert "connection to 127.0.0.1" in gateway.log() and "lost" in gateway.log()


async def test_kill_9_loses_nothing_committed(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator, collector: Collector
) -> None:
    config = lane_config(tmp_path, broker, collector.gateway_id)
    gateway = GatewayProcess(config)
    await gateway.start()
    try:
        await collector.wait_for("300 reads", lambda r: reads(r) >= 300)
        await gateway.stop(signal.SIGKILL)
    finally:
        await gateway.kill()

    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    committed = buffer.stats().last_seq
    await buffer.close()
    assert committed >= 300

    restarted = GatewayProcess(config)
    await restarted.start()
    try:
        await collector.wait_for(
            f"every seq up to {committed}", lambda r: missing_seqs(r.seqs(), committed) == [], timeout=90
        )
        await collector.wait_for("new reads after the restart", lambda r: r.seqs()[-1] > committed + 100)
        reader.silence(3600)
        assert await restarted.stop(signal.SIGTERM) == 0, restarted.log()
    finally:
        await restarted.kill()
    received = collector.snapshot()
    assert_delivered_in_order_without_gaps(received, reader.population)
