"""The vehicle sites of config/examples (issue 11), end to end: each example file, with only its ports,
buffer, broker and time scales replaced, runs as ``edgegw run`` against the simulators (``edgegw sim gps``,
``can`` and ``uhf-r2000``, each on a real pty), a private mosquitto and a subscriber; what arrives upstream
is what the operator expects: positions, vehicle data, and RFID reads or drum counts that say where they
happened."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cantools
import pytest

from firmware_sim import can as can_sim
from firmware_sim import gps as gps_sim
from firmware_sim import r2000 as r2000_sim
from protocols.epc import encode_epc, epc_uri
from tests.broker import Mosquitto
from tests.e2e.harness import GatewayProcess, collector_for, missing_seqs, site_config

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


def sent_fixes(sim: gps_sim.GpsSimulator) -> dict[str, gps_sim.SentFix]:
    """The fixes the simulated receiver sent, by their time as a gps.fix writes it."""
    return {s.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"): s for s in sim.sent}


def check_position(message: dict[str, Any], sent: dict[str, gps_sim.SentFix], max_age_s: float) -> None:
    """``message`` carries a fix the receiver sent, at most ``max_age_s`` from the event's time."""
    position = message["data"]["position"]
    fix = sent[position["time"]]
    assert position["lat"] == pytest.approx(fix.lat, abs=2e-7)
    assert position["lon"] == pytest.approx(fix.lon, abs=2e-7)
    assert abs(message["ts"] - fix.time.timestamp()) <= max_age_s


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
    sent = sent_fixes(bus["gps"])
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

    # Every stamped door read carries a fix the receiver sent, at most max_fix_age_s (15 s) from it: the
    # latest the gateway had, reported upstream or not (every_m 50 reports one epoch in three here).
    reads = received.of_kind("rfid.read")
    stamped = [m for m in reads if "position" in m["data"]]
    for message in stamped:
        check_position(message, sent, 15)
    reported = {m["data"]["time"] for m in fixes}
    assert any(m["data"]["position"]["time"] not in reported for m in stamped), "only reported fixes used"
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


# -- the special vehicle -----------------------------------------------------------------------------------

DBC = Path(__file__).parents[2] / "config" / "examples" / "special-vehicle.dbc"
DRUMS = tuple(f"urn:epc:tag:grai-96:1.0614141.50010.{n}" for n in range(1, 5))
"""The waste company's drums (GRAI-96 of its company prefix, the example's include filter)."""
FOREIGN = "urn:epc:tag:sgtin-96:3.0037000.065421.1"
"""A tag of someone else's pallet near the truck: the include filter keeps it out."""


class HazardousWasteTruck(can_sim.CityBus):
    """The simulator's city bus drive (the J1939 chassis PGNs, DM1, the VIN) with the truck's body controller
    (source 0x21) beside it: its three messages every 100 ms, encoded by cantools from the DBC shipped with
    the example, as the body controller's maker builds them; the drums on board count up as they are
    loaded, the rear door opens while they are."""

    def __init__(self) -> None:
        super().__init__()
        db = cantools.database.load_file(str(DBC))
        assert isinstance(db, cantools.database.can.Database)
        self.messages = [db.get_message_by_name(n) for n in ("TankStatus", "CargoBody", "Containment")]

    def body(self, name: str, story: float) -> dict[str, float]:
        drums = min(4, int(story / 10))
        if name == "TankStatus":
            return {"TankLevel": 41.5, "TankPressure": 1.25, "TankTemperature": 18, "TankValveState": 0,
                    "OverfillAlarm": 0}  # fmt: skip
        if name == "CargoBody":
            return {"RearDoorState": 1 if story % 10 < 5 else 0, "SideHatchState": 0, "LiftArmPosition": 0,
                    "BodyInterlockActive": 0, "SpillSensorWet": 0, "DrumsOnBoard": drums}  # fmt: skip
        return {"GasVoc": 120, "GasH2s": 0.4, "CargoBayTemperature": 17.5, "CargoBayHumidity": 55.2}

    def frames(self, t0: float, t1: float, story: float) -> Iterator[tuple[int, bytes]]:
        yield from super().frames(t0, t1, story)
        if math.floor(t1 / 0.1) > math.floor(t0 / 0.1):
            for message in self.messages:
                yield message.frame_id, message.encode(self.body(message.name, story))


@pytest.fixture
async def truck(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    gps_link, can_link, bay_link = tmp_path / "ttyGPS", tmp_path / "ttyCAN", tmp_path / "ttyBay"
    tags = tuple(encode_epc(uri) for uri in (*DRUMS, FOREIGN))
    async with (
        gps_sim.serve_pty(gps_link, GPS_FAST) as gps,
        can_sim.serve_pty(can_link, can_sim.SimOptions(time_scale=5)) as chassis,
        r2000_sim.serve_pty(
            bay_link, r2000_sim.SimOptions(epcs=tags, rate=80.0, antennas=(1, 2), seed=7)
        ) as bay,
    ):
        chassis.bus = HazardousWasteTruck()
        yield {"gps": gps, "chassis": chassis, "bay": bay, "links": (gps_link, can_link, bay_link)}


async def test_special_vehicle_counts_drums_where_they_were_loaded(
    tmp_path: Path, broker: Mosquitto, truck: dict[str, Any]
) -> None:
    gateway_id = "e2e-special-vehicle"
    gps_link, can_link, bay_link = truck["links"]
    collector = await collector_for("special-vehicle.yaml", broker, gateway_id)
    config = site_config(
        "special-vehicle.yaml",
        tmp_path,
        broker,
        gateway_id,
        {
            "gps": {"port": str(gps_link)},
            "chassis": {"channel": str(can_link), "open_delay_s": 0, "dbc": str(DBC)},
            # Shorter times than the site's: a drum unloaded after 1 s unseen, counts every 2 s.
            "cargo-reader": {"port": str(bay_link), "smoothing": {"depart_after_s": 1, "flow_period_s": 2}},
        },
    )
    drums = {str(epc_uri(encode_epc(uri))) for uri in DRUMS}
    gateway = GatewayProcess(config)
    await gateway.start()
    try:
        await collector.wait_for(
            "fixes, the body controller's drums and tank, chassis speed, and every drum loaded",
            lambda r: (
                len(r.of_kind("gps.fix")) >= 2
                and any("DrumsOnBoard" in m["data"]["signals"] for m in r.of_kind("can.signals"))
                and any(m["data"]["message"] == "TankStatus" for m in r.of_kind("can.signals"))
                and any(m["data"]["name"] == "CCVS" for m in r.of_kind("j1939.pgn"))
                and {m["data"].get("epc_uri") for m in r.of_kind("rfid.arrived")} >= drums
            ),
        )
        truck["bay"].silence(3600)  # the drums are unloaded
        await collector.wait_for(
            "every drum unloaded and counted",
            lambda r: (
                {m["data"].get("epc_uri") for m in r.of_kind("rfid.departed")} >= drums
                and sum(m["data"]["count"] for m in r.of_kind("rfid.flow")) >= len(drums)
            ),
        )
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
    finally:
        await gateway.kill()
        collector.close()
    received = collector.snapshot()
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok and received.duplicates == 0

    # The DBC's messages, decoded with their units, from the body controller's source address.
    signals = received.of_kind("can.signals")
    cargo = [m["data"] for m in signals if m["data"]["message"] == "CargoBody"]
    assert cargo and all(d["source"] == 0x21 for d in cargo)
    assert cargo[0]["units"]["DrumsOnBoard"] == "drums"
    tank = next(m["data"] for m in signals if m["data"]["message"] == "TankStatus")
    assert tank["signals"]["TankLevel"] == pytest.approx(41.5) and tank["units"]["TankPressure"] == "bar"

    # Drums: the company's only, each loaded once and unloaded once, counted in the cargo bay.
    foreign = encode_epc(FOREIGN).hex().upper()
    assert all(m["data"].get("epc") != foreign for m in received.by_id.values())
    arrived = [m["data"]["epc_uri"] for m in received.of_kind("rfid.arrived")]
    assert sorted(arrived) == sorted(drums)
    assert sum(m["data"]["count"] for m in received.of_kind("rfid.flow")) == len(DRUMS)
    assert {m["data"]["lane"] for m in received.of_kind("rfid.flow")} == {"cargo-bay"}
    assert "rfid.read" not in received.kinds

    # gateway.position_from: every event of the chassis and the cargo bay after the first fix carries the
    # truck's position, a fix the receiver sent at most 15 s from it; the receiver's own are not stamped.
    sent = sent_fixes(truck["gps"])
    first_fix = min(m["ts"] for m in received.of_kind("gps.fix"))
    data_events = [
        m for m in received.by_id.values() if m["device"] != "gps" and m["kind"] != "device.status"
    ]
    for message in data_events:
        position = message["data"].get("position")
        if message["ts"] >= first_fix + 1 and message["kind"] != "rfid.departed":
            assert position is not None, message
        if position is not None:
            check_position(message, sent, 15)
    loads = [m for m in received.of_kind("rfid.arrived") if "position" in m["data"]]
    assert loads, "no drum load carried the truck's position"
    assert all("position" not in m["data"] for m in received.of_kind("gps.fix"))
