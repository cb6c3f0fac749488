"""The vehicle sites of config/examples (issue 11), end to end: each example file, with only its ports,
buffer, broker and time scales replaced, runs as ``edgegw run`` against the simulators (``edgegw sim gps``,
``can`` and ``uhf-r2000``, each on a real pty), a private mosquitto and a subscriber; what arrives upstream
is what the operator expects: positions, vehicle data, and RFID reads or drum counts that say where they
happened."""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim import can as can_sim
from firmware_sim import gps as gps_sim
from firmware_sim import r2000 as r2000_sim
from protocols.epc import encode_epc
from tests.broker import Mosquitto
from tests.e2e.harness import GatewayProcess, Received, collector_for, missing_seqs, site_config

pytestmark = pytest.mark.timeout(180)

GPS_FAST = gps_sim.SimOptions(epoch_s=0.2, speedup=10.0, dwell_s=10.0)
"""An epoch every 200 ms, the bus driving ten times faster than real time (the receiver's clock is real)."""

PASSENGER_CARDS = tuple(f"urn:epc:tag:grai-96:1.0614141.77000.{n}" for n in range(1, 6))


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The smart bus's three simulated devices, each on its own pty."""
    gps_link, can_link, door_link = tmp_path / "ttyGPS", tmp_path / "ttyCAN", tmp_path / "ttyDoor"
    cards = tuple(encode_epc(uri) for uri in PASSENGER_CARDS)
    async with (
        gps_sim.serve_pty(
            gps_link, dataclasses.replace(GPS_FAST, faults=gps_sim.Faults(bad_checksum=0.02))
        ) as gps,
        can_sim.serve_pty(can_link, can_sim.SimOptions(time_scale=20)) as chassis,
        r2000_sim.serve_pty(
            door_link, r2000_sim.SimOptions(epcs=cards, rate=50.0, antennas=(1, 2), seed=5)
        ) as door,
    ):
        yield {"gps": gps, "chassis": chassis, "door": door, "links": (gps_link, can_link, door_link)}


def fix_times(received: Received) -> dict[str, dict[str, Any]]:
    return {m["data"]["time"]: m for m in received.of_kind("gps.fix")}


async def test_smart_bus_reads_carry_where_the_bus_was(
    tmp_path: Path, broker: Mosquitto, bus: dict[str, Any]
) -> None:
    gateway_id = "e2e-smart-bus"
    gps_link, can_link, door_link = bus["links"]
    collector = await collector_for("smart-bus.yaml", broker, gateway_id)
    config = site_config(
        "smart-bus.yaml",
        tmp_path,
        broker,
        gateway_id,
        {
            "gps": {"port": str(gps_link)},
            "chassis": {"channel": str(can_link), "open_delay_s": 0},
            "door-reader": {"port": str(door_link)},
        },
    )
    gateway = GatewayProcess(config)
    await gateway.start()
    try:
        await collector.wait_for(
            "fixes, vehicle speed, fault codes and door reads with their position",
            lambda r: (
                len(r.of_kind("gps.fix")) >= 4
                and any("wheel_based_vehicle_speed" in m["data"]["values"] for m in r.of_kind("j1939.pgn"))
                and any(m["data"]["dtcs"] for m in r.of_kind("j1939.dm1"))
                and sum(1 for m in r.of_kind("rfid.read") if "position" in m["data"]) >= 20
            ),
        )
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
        collector.close()
    received = collector.snapshot()
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok and received.duplicates == 0

    # The fixes: the receiver's own time as the event's, on the route, reported by distance or period.
    fixes = received.of_kind("gps.fix")
    sent = {s.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"): s for s in bus["gps"].sent}
    for message in fixes:
        data = message["data"]
        assert dt.datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp() == message["ts"]
        source = sent[data["time"]]
        assert (data["lat"], data["lon"]) == (
            pytest.approx(source.lat, abs=2e-7),
            pytest.approx(source.lon, abs=2e-7),
        )
        assert data["fix_quality"] == 1 and data["satellites"] == 9
    reasons = [m["data"]["reason"] for m in sorted(fixes, key=lambda m: m["seq"])]
    assert reasons[0] == "first" and set(reasons[1:]) <= {"distance", "period", "heading"}
    moving = [m["data"] for m in sorted(fixes, key=lambda m: m["seq"]) if m["data"]["reason"] == "distance"]
    assert moving, reasons

    # Every stamped door read carries a fix the gateway reported, at most max_fix_age_s (15 s) from it.
    by_time = fix_times(received)
    reads = received.of_kind("rfid.read")
    stamped = [m for m in reads if "position" in m["data"]]
    for message in stamped:
        position = message["data"]["position"]
        fix = by_time[position["time"]]
        assert (position["lat"], position["lon"]) == (fix["data"]["lat"], fix["data"]["lon"])
        assert abs(message["ts"] - fix["ts"]) <= 15
    # The reads before the first fix went on without one (counted as position_stale in the log).
    first_fix = min(m["seq"] for m in fixes)
    assert all("position" in m["data"] for m in reads if m["seq"] > first_fix + 5)
    assert {m["data"]["antenna_name"] for m in stamped} <= {"front-door", "rear-door"}

    # The chassis: a listen-only tap (the adapter opened with L), J1939 decoded with units.
    assert bus["chassis"].stats.listen_only
    speeds = [m["data"] for m in received.of_kind("j1939.pgn") if m["data"]["name"] == "CCVS"]
    assert speeds and all(d["units"]["wheel_based_vehicle_speed"] == "km/h" for d in speeds)
    assert all("position" not in m["data"] for m in received.of_kind("j1939.pgn"))  # not stamped here
    assert "summary device=door-reader" in gateway.log()
