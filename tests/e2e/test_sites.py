"""The example sites of config/examples, end to end: each example file, with only its ports, buffer, broker
and time scales replaced, runs as ``edgegw run`` against simulated devices, a private mosquitto and a
subscriber, and what arrives upstream is what the site's operator expects."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim import llrp as llrp_sim
from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from protocols.epc import encode_epc, epc_uri
from tests.broker import Mosquitto
from tests.e2e.harness import GatewayProcess, collector_for, missing_seqs, site_config

pytestmark = pytest.mark.timeout(180)


# The port gate's trucks: two GRAI-96 tractors and an SSCC-96 container of the terminal's own company
# prefix, and a passing tag of another company that the site's include filter keeps out.
TRUCK_TAGS = (
    "urn:epc:tag:grai-96:1.0614141.12345.400",
    "urn:epc:tag:grai-96:1.0614141.12345.401",
    "urn:epc:tag:sscc-96:2.0614141.1234567890",
)
FOREIGN_TAG = "urn:epc:tag:sgtin-96:3.0037000.065421.1"


@pytest.fixture
async def gate_reader(tmp_path: Path) -> AsyncIterator[R2000Simulator]:
    epcs = tuple(encode_epc(uri) for uri in (*TRUCK_TAGS, FOREIGN_TAG))
    options = SimOptions(epcs=epcs, rate=300.0, seed=3, antennas=(1, 2))
    async with serve_pty(tmp_path / "ttyGate", options) as sim:
        yield sim


async def test_port_gate_reports_trucks_by_gs1_identity(
    tmp_path: Path, broker: Mosquitto, gate_reader: R2000Simulator
) -> None:
    gateway_id = "e2e-port-gate"
    collector = await collector_for("port-gate.yaml", broker, gateway_id)
    config = site_config(
        "port-gate.yaml",
        tmp_path,
        broker,
        gateway_id,
        # Shorter times than the site's, so the test need not wait for a truck to be gone 10 s or for a
        # 5-minute count.
        {
            "gate-reader": {
                "port": str(tmp_path / "ttyGate"),
                "smoothing": {"depart_after_s": 1, "flow_period_s": 2},
            }
        },
    )
    gateway = GatewayProcess(config)
    await gateway.start()
    expected = {epc_uri(encode_epc(uri)) for uri in TRUCK_TAGS}
    try:
        await collector.wait_for(
            "an arrival of every truck tag",
            lambda r: {m["data"].get("epc_uri") for m in r.of_kind("rfid.arrived")} >= expected,
        )
        # Each truck tag arrives once, in the lane whose antenna read it first: counted there, once.
        await collector.wait_for(
            "counts of both lanes holding every truck",
            lambda r: {m["data"]["lane"] for m in r.of_kind("rfid.flow")} == {"inbound", "outbound"}
            and sum(m["data"]["count"] for m in r.of_kind("rfid.flow")) >= len(TRUCK_TAGS),
        )
        gate_reader.silence(3600)  # the trucks have left the gate
        await collector.wait_for(
            "every truck tag departed",
            lambda r: {m["data"].get("epc_uri") for m in r.of_kind("rfid.departed")} >= expected,
        )
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
        collector.close()
    received = collector.snapshot()
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok
    assert "rfid.read" not in received.kinds  # the site forwards no raw reads
    arrived = received.of_kind("rfid.arrived")
    foreign = encode_epc(FOREIGN_TAG).hex().upper()
    assert all(m["data"]["epc"] != foreign for m in received.by_id.values() if "epc" in m["data"])
    schemes = {m["data"]["epc_uri"].split(":")[3] for m in arrived}
    assert schemes == {"grai", "sscc"}
    for message in received.of_kind("rfid.departed"):
        data = message["data"]
        assert data["reason"] in ("timeout", "stopped")
        assert data["count"] >= 1 and data["last_seen"] >= data["first_seen"]
        assert {a["zone"] for a in data["antennas"]} <= {"inbound", "outbound"}
    flows = received.of_kind("rfid.flow")
    assert sum(m["data"]["count"] for m in flows) == len(TRUCK_TAGS)
    for message in flows:
        data = message["data"]
        assert data["period_end"] - data["period_start"] == 2 and data["period_end"] % 2 == 0
    assert "summary device=gate-reader" in gateway.log()
    assert "processor.filtered=" in gateway.log()


# Electronic plates: GIAI-96 of the registration authority's company prefix (the example's include filter),
# one set per gantry, and a foreign tag (a pallet on a lorry) that the filter keeps out.
NORTH_PLATES = tuple(f"urn:epc:tag:giai-96:0.0614141.{n}" for n in range(100, 106))
SOUTH_PLATES = tuple(f"urn:epc:tag:giai-96:0.0614141.{n}" for n in range(200, 206))


@pytest.fixture
async def gantries() -> AsyncIterator[tuple[llrp_sim.LlrpSimulator, llrp_sim.LlrpSimulator]]:
    def options(plates: tuple[str, ...], seed: int) -> llrp_sim.SimOptions:
        epcs = tuple(encode_epc(uri) for uri in (*plates, FOREIGN_TAG))
        return llrp_sim.SimOptions(epcs=epcs, rate=400.0, seed=seed, antennas=(1, 2, 3, 4))

    async with (
        llrp_sim.serve_tcp("127.0.0.1", 0, options(NORTH_PLATES, 1)) as north,
        llrp_sim.serve_tcp("127.0.0.1", 0, options(SOUTH_PLATES, 2)) as south,
    ):
        yield north, south


async def test_roadside_intersection_counts_vehicles_per_lane(
    tmp_path: Path,
    broker: Mosquitto,
    gantries: tuple[llrp_sim.LlrpSimulator, llrp_sim.LlrpSimulator],
) -> None:
    north, south = gantries
    gateway_id = "e2e-intersection"
    collector = await collector_for("roadside-intersection.yaml", broker, gateway_id)
    faster = {"depart_after_s": 1, "flow_period_s": 2}
    config = site_config(
        "roadside-intersection.yaml",
        tmp_path,
        broker,
        gateway_id,
        {
            "gantry-north": {"host": "127.0.0.1", "port": north.port, "smoothing": faster},
            "gantry-south": {"host": "127.0.0.1", "port": south.port, "smoothing": faster},
        },
    )
    gateway = GatewayProcess(config)
    await gateway.start()
    plates = {epc_uri(encode_epc(uri)) for uri in (*NORTH_PLATES, *SOUTH_PLATES)}
    lanes = {"lane1", "lane2", "lane3", "lane4"}
    try:
        await collector.wait_for(
            "an arrival of every plate",
            lambda r: {m["data"].get("epc_uri") for m in r.of_kind("rfid.arrived")} >= plates,
        )
        await collector.wait_for(
            "counts of all four lanes holding every plate",
            lambda r: {m["data"]["lane"] for m in r.of_kind("rfid.flow")} == lanes
            and sum(m["data"]["count"] for m in r.of_kind("rfid.flow")) >= len(plates),
        )
        north.pause()
        south.pause()  # the traffic has passed
        await collector.wait_for(
            "every plate departed",
            lambda r: {m["data"].get("epc_uri") for m in r.of_kind("rfid.departed")} >= plates,
        )
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
        collector.close()
    received = collector.snapshot()
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok
    assert "rfid.read" not in received.kinds
    foreign = encode_epc(FOREIGN_TAG).hex().upper()
    assert all(m["data"].get("epc") != foreign for m in received.by_id.values())
    flows = received.of_kind("rfid.flow")
    assert sum(m["data"]["count"] for m in flows) == len(plates)  # each vehicle counted once, in one lane
    by_device: dict[str, set[str]] = {}
    for m in flows:
        by_device.setdefault(m["device"], set()).add(m["data"]["lane"])
    assert by_device == {"gantry-north": {"lane1", "lane2"}, "gantry-south": {"lane3", "lane4"}}
    connected = [m for m in received.of_kind("device.status") if m["data"]["state"] == "connected"]
    assert {m["device"] for m in connected} == {"gantry-north", "gantry-south"}
