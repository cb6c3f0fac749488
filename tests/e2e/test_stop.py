"""What a clean stop publishes: ``edgegw run`` as a child process on the roadside-intersection example (two
simulated LLRP gantries, tag smoothing), a private mosquitto and subscribers that keep the order in which
messages arrive.

On SIGTERM the devices' last events (every device's ``device.status`` ``stopped``, the ``rfid.departed``
``stopped`` of every tag still tracked) reach the broker before the gateway's ``offline``, and the buffer is
empty afterwards; with the broker down at the stop, the stop stays bounded, the log says how many events
stay buffered, and they are delivered at the next start.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from firmware_sim import llrp as llrp_sim
from gateway.delivery.buffer import SqliteBuffer, Stored
from protocols.epc import encode_epc
from tests.broker import Message, Mosquitto, Subscriber
from tests.e2e.harness import GatewayProcess, site_config
from tests.gateway.test_cli import demo

pytestmark = pytest.mark.timeout(180)

EXAMPLE = "roadside-intersection.yaml"
PREFIX = "traffic"  # the example's
GANTRIES = ("gantry-north", "gantry-south")
PLATES = {
    "gantry-north": tuple(f"urn:epc:tag:giai-96:0.0614141.{n}" for n in range(100, 104)),
    "gantry-south": tuple(f"urn:epc:tag:giai-96:0.0614141.{n}" for n in range(200, 204)),
}
TIMEOUT_STOP_S = 30
"""TimeoutStopSec of config/systemd/edgegw.service: the time systemd gives a stop before it kills."""


@pytest.fixture
async def gantries() -> AsyncIterator[dict[str, llrp_sim.LlrpSimulator]]:
    def options(device: str, seed: int) -> llrp_sim.SimOptions:
        epcs = tuple(encode_epc(uri) for uri in PLATES[device])
        return llrp_sim.SimOptions(epcs=epcs, rate=200.0, seed=seed, antennas=(1, 2, 3, 4))

    async with (
        llrp_sim.serve_tcp("127.0.0.1", 0, options("gantry-north", 1)) as north,
        llrp_sim.serve_tcp("127.0.0.1", 0, options("gantry-south", 2)) as south,
    ):
        yield {"gantry-north": north, "gantry-south": south}


def intersection(
    tmp_path: Path,
    broker: Mosquitto,
    gateway_id: str,
    gantries: dict[str, llrp_sim.LlrpSimulator],
    **mqtt: Any,
) -> Path:
    """The example site against the simulated gantries. The plates stay in view until the stop (a long
    ``depart_after_s``): the gateway stops with every plate still tracked."""
    config = site_config(
        EXAMPLE,
        tmp_path,
        broker,
        gateway_id,
        {
            name: {"host": "127.0.0.1", "port": sim.port, "smoothing": {"depart_after_s": 600}}
            for name, sim in gantries.items()
        },
    )
    if mqtt:
        doc = yaml.safe_load(config.read_text())
        doc["upstream"]["mqtt"].update(mqtt)
        config.write_text(yaml.safe_dump(doc))
    return config


def events_in(messages: list[Message]) -> list[dict[str, Any]]:
    """The gateway's events among ``messages``, in the order they arrived."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if not m.topic.endswith("/status"):
            body = json.loads(m.payload)
            out.extend(body if isinstance(body, list) else [body])
    return out


def live_offline(messages: list[Message], gateway_id: str) -> int | None:
    """Where the gateway's own ``offline`` (published at the stop, not replayed as retained) arrived."""
    for i, m in enumerate(messages):
        if m.topic == f"{PREFIX}/{gateway_id}/status" and m.payload == b"offline" and not m.retain:
            return i
    return None


def arrived_plates(messages: list[Message]) -> dict[str, set[str]]:
    plates: dict[str, set[str]] = {name: set() for name in GANTRIES}
    for e in events_in(messages):
        if e["kind"] == "rfid.arrived":
            plates[e["device"]].add(e["data"]["epc"])
    return plates


def every_gantry_has_plates(messages: list[Message]) -> bool:
    return all(arrived_plates(messages).values())


def stopped(events: list[dict[str, Any]], device: str) -> bool:
    return any(
        e["device"] == device and e["kind"] == "device.status" and e["data"]["state"] == "stopped"
        for e in events
    )


async def buffered(path: Path) -> list[Stored]:
    buffer = await SqliteBuffer.open(path)
    try:
        return await buffer.read(0, 1_000_000)
    finally:
        await buffer.close()


async def test_sigterm_publishes_the_last_events_before_offline(
    tmp_path: Path, broker: Mosquitto, gantries: dict[str, llrp_sim.LlrpSimulator]
) -> None:
    gateway_id = "stop-publishes-last-events"
    gateway = GatewayProcess(intersection(tmp_path, broker, gateway_id, gantries))
    async with Subscriber(broker, f"{PREFIX}/{gateway_id}/#") as sub:
        await gateway.start()
        try:
            await sub.wait_until(every_gantry_has_plates, timeout=60)
            assert await gateway.stop(signal.SIGTERM, timeout=TIMEOUT_STOP_S) == 0, gateway.log()
        finally:
            await gateway.kill()
        messages = await sub.wait_until(lambda ms: live_offline(ms, gateway_id) is not None, timeout=30)
    offline = live_offline(messages, gateway_id)
    assert offline is not None
    before = events_in(messages[:offline])
    # Every device's last status, and a departure for every plate still in view, came before `offline`.
    for device in GANTRIES:
        assert stopped(before, device), f"no `stopped` status of {device} before offline"
    departed: dict[str, set[str]] = {name: set() for name in GANTRIES}
    for e in before:
        if e["kind"] == "rfid.departed":
            assert e["data"]["reason"] == "stopped", e  # the plates never left: only the stop departs them
            departed[e["device"]].add(e["data"]["epc"])
    assert departed == arrived_plates(messages[:offline])
    # Everything committed was delivered before `offline`: the seqs are contiguous, the buffer is empty.
    seqs = sorted(e["seq"] for e in before)
    assert seqs == list(range(1, seqs[-1] + 1))
    assert events_in(messages[offline:]) == []
    assert await buffered(tmp_path / "buffer.db") == []
    assert "stop: everything buffered was delivered" in gateway.log()
    assert "remain buffered" not in gateway.log()
    # And `offline` is what the status topic keeps (retained) for whoever subscribes next.
    async with Subscriber(broker, f"{PREFIX}/{gateway_id}/status") as later:
        status = await later.wait_until(bool)
    assert [(m.payload, m.retain) for m in status] == [(b"offline", True)]


async def test_with_the_broker_down_the_stop_is_bounded_and_the_rest_waits_for_the_next_start(
    tmp_path: Path, broker: Mosquitto, gantries: dict[str, llrp_sim.LlrpSimulator]
) -> None:
    gateway_id = "stop-with-broker-down"
    # A bound far longer than systemd would wait: an unreachable broker must not be waited for.
    config = intersection(tmp_path, broker, gateway_id, gantries, stop_flush_s=300)
    gateway = GatewayProcess(config)
    # A persistent session: the broker keeps for this subscriber what arrives while it reconnects.
    async with Subscriber(broker, f"{PREFIX}/{gateway_id}/#", session=f"sub-{gateway_id}") as sub:
        await gateway.start()
        try:
            await sub.wait_until(every_gantry_has_plates, timeout=60)
            broker.stop()
            assert await gateway.stop(signal.SIGTERM, timeout=TIMEOUT_STOP_S) == 0, gateway.log()
        finally:
            await gateway.kill()
            broker.start()
        log = gateway.log()
        match = re.search(
            r"stop: (\d+) event\(s\) remain buffered, to be delivered after the next start", log
        )
        assert match, log
        left = await buffered(tmp_path / "buffer.db")
        assert int(match.group(1)) == len(left)
        for device in GANTRIES:
            assert stopped([as_event(r) for r in left], device)
        assert any(r.kind == "rfid.departed" and b'"reason":"stopped"' in r.data_json for r in left)

        restarted = GatewayProcess(config)  # it logs on into the same file
        await restarted.start()
        try:
            want = {f"{gateway_id}:{r.seq}" for r in left}
            await sub.wait_until(lambda ms: want <= {e["id"] for e in events_in(ms)}, timeout=60)
            assert await restarted.stop(signal.SIGTERM, timeout=TIMEOUT_STOP_S) == 0, restarted.log()
        finally:
            await restarted.kill()
    assert "remain buffered" not in restarted.log()[len(log) :]


def as_event(row: Stored) -> dict[str, Any]:
    return {"device": row.device, "kind": row.kind, "seq": row.seq, "data": json.loads(row.data_json)}


async def test_demo_shows_the_stopped_statuses_before_offline(broker: Mosquitto) -> None:
    code, out = await demo("--mqtt", broker.url, "--rate", "50", until="lane-demo:20 ", interrupt=True)
    assert code == 0, out
    lines = out.splitlines()
    last_offline = max(i for i, line in enumerate(lines) if line.endswith("gateway status: offline"))
    for reader in ("reader-1", "reader-2"):
        shown = [
            i for i, line in enumerate(lines) if re.search(rf"  {reader}  device\.status  .*stopped", line)
        ]
        assert shown and shown[-1] < last_offline, out
    assert re.search(r"edgegw demo: stopped; \d+ events committed, 0 left in the buffer", out), out


async def test_demo_on_the_console_shows_the_stopped_statuses() -> None:
    code, out = await demo("--console", "--duration", "3", until="edgegw demo: stopped")
    assert code == 0, out
    for reader in ("reader-1", "reader-2"):
        assert re.search(rf"^edgegw/lane-demo/{reader}/device\.status .*\"state\":\"stopped\"", out, re.M), (
            out
        )
    assert re.search(r"edgegw demo: stopped; \d+ events committed, 0 left in the buffer", out), out
