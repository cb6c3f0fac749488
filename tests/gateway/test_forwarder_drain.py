"""``Forwarder.drain``, the first half of a clean stop: everything buffered goes out and is acknowledged
before ``offline``; an unreachable broker costs one connection attempt, not the stop's whole bound; a drain
cut short by its caller leaves the rest buffered and the forwarder as it was. Against real brokers (the
session's private mosquitto, or one of the test's own that it can freeze with SIGSTOP) and a real buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.config import MqttConfig
from gateway.delivery.buffer import Buffer, SqliteBuffer
from gateway.delivery.forwarder import SHUTDOWN_GRACE_S, Forwarder
from gateway.delivery.mqtt import DISCONNECT_GRACE_S
from tests.broker import Mosquitto, Subscriber
from tests.gateway.test_forwarder import TIMEOUT, decoded, event_messages, events, make_settings, running
from tests.gateway.test_systemd_unit import UNIT, parse_unit
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[Buffer]:
    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    try:
        yield buffer
    finally:
        await buffer.close()


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    """A broker of this test's own, to freeze (SIGSTOP) without disturbing anyone else."""
    with Mosquitto() as broker:
        yield broker


async def test_drain_delivers_everything_buffered_before_offline(broker: Mosquitto, buf: Buffer) -> None:
    settings = make_settings(broker, max_inflight=20)
    gateway = settings.gateway_id
    forwarder = Forwarder(buf, settings)
    async with Subscriber(broker, f"edgegw/{gateway}/#") as sub:
        async with running(forwarder):
            await forwarder.wait_connected()
            # The last commits of a stop land just before the drain is asked for.
            await buf.append(events("reader-1", "rfid.read", 500))
            await buf.append(events("reader-1", "device.status", 1, start=500))
            async with asyncio.timeout(TIMEOUT):
                assert await forwarder.drain() is None
            assert await buf.read(0, 1000) == []  # all acknowledged: nothing left for the next start
        messages = await sub.wait_until(lambda ms: any(m.payload == b"offline" for m in ms), TIMEOUT)
    offline = next(i for i, m in enumerate(messages) if m.payload == b"offline")
    seqs = [e["seq"] for e in decoded(event_messages(messages[:offline], gateway))]
    assert sorted(set(seqs)) == list(range(1, 502))  # every event, before `offline`


async def test_drain_with_the_broker_down_returns_after_one_attempt(
    broker: Mosquitto, buf: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgegw.forwarder")
    await buf.append(events("reader-1", "device.status", 3))
    broker.stop()
    # Backing off for up to 30 s between attempts, as after a long outage.
    forwarder = Forwarder(buf, make_settings(broker, reconnect_initial_s=30.0, reconnect_max_s=30.0))
    try:
        async with running(forwarder):
            await until("'retrying in' in caplog.text", lambda: "retrying in" in caplog.text, TIMEOUT)
            async with asyncio.timeout(TIMEOUT):  # far less than the backoff: the pause is cut short
                why = await forwarder.drain()
    finally:
        broker.start()
    assert why is not None and "unreachable" in why and "Connection refused" in why
    assert "not waiting for it to come back: stopping" in caplog.text
    assert [r.seq for r in await buf.read(0, 10)] == [1, 2, 3]  # kept for the next start


async def test_drain_cuts_a_backoff_short_and_delivers(
    broker: Mosquitto, buf: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgegw.forwarder")
    await buf.append(events("reader-1", "device.status", 2))
    broker.stop()
    forwarder = Forwarder(buf, make_settings(broker, reconnect_initial_s=30.0, reconnect_max_s=30.0))
    try:
        async with running(forwarder):
            await until("'retrying in' in caplog.text", lambda: "retrying in" in caplog.text, TIMEOUT)
            broker.start()  # back, while the forwarder would still wait up to 30 s
            async with asyncio.timeout(TIMEOUT):
                assert await forwarder.drain() is None
            assert await buf.read(0, 10) == []
    finally:
        broker.start()


async def test_a_drain_cut_short_keeps_the_rest_and_the_forwarder_going(
    own_broker: Mosquitto, buf: Buffer
) -> None:
    forwarder = Forwarder(buf, make_settings(own_broker))
    async with running(forwarder):
        await forwarder.wait_connected()
        os.kill(own_broker.pid, signal.SIGSTOP)  # connected, but nothing is acknowledged any more
        try:
            await buf.append(events("reader-1", "device.status", 5))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):  # the caller's bound (the stop's)
                    await forwarder.drain()
            assert [r.seq for r in await buf.read(0, 10)] == [1, 2, 3, 4, 5]
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        async with asyncio.timeout(TIMEOUT):  # the broker answers again: a new drain completes
            assert await forwarder.drain() is None
        assert await buf.read(0, 10) == []


async def test_drain_of_a_forwarder_that_is_not_running(broker: Mosquitto, buf: Buffer) -> None:
    forwarder = Forwarder(buf, make_settings(broker))
    assert await forwarder.drain() == "the forwarder is not running"


def test_the_default_bound_leaves_the_rest_of_the_stop_room_in_timeout_stop_sec() -> None:
    """systemd kills a stop that outlasts TimeoutStopSec: after the bound come `offline` and its PUBACK, the
    DISCONNECT and closing the buffer, each bounded on its own."""
    timeout_stop = parse_unit(UNIT.read_text())["Service"]["TimeoutStopSec"][-1]
    assert timeout_stop.endswith("s")
    default = MqttConfig.model_fields["stop_flush_s"].default
    assert default > 0
    assert default + SHUTDOWN_GRACE_S + DISCONNECT_GRACE_S <= float(timeout_stop[:-1]) - 5
