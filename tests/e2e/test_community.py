"""The community site of config/examples, end to end: the example file run as ``edgegw run`` with only its
buffer, broker and ports replaced; the ZigBee coordinator is the XBee simulator on a real pty playing the
site's 20 sensors (one of them joining once the gateway opens joining), the gate beacons replay the shipped
capture (config/examples/ble-adverts.jsonl) instead of scanning hci0, and a private mosquitto receives what
is published: every sensor reports under its name, with values the sensor sent, the door contacts and smoke
detectors raise alarms, the late sensor's join is reported, the reporting the site configures reaches the
sensors, the beacons arrive, seqs are contiguous."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from firmware_sim import ble as ble_sim
from firmware_sim import xbee as xbee_sim
from tests.broker import Mosquitto
from tests.e2e.harness import (
    Collector,
    GatewayProcess,
    Received,
    collector_for,
    load_example,
    missing_seqs,
    site_config,
)

pytestmark = pytest.mark.timeout(120)

SITE = "community.yaml"
CAPTURE = Path(__file__).resolve().parents[2] / "config" / "examples" / "ble-adverts.jsonl"
WAIT_S = 60.0
LATE = "telecom-room-climate"
"""The sensor that is not on the network until the gateway opens joining."""


def of(r: Received, device: str, kind: str) -> list[dict[str, Any]]:
    return sorted((m for m in r.of_kind(kind) if m["device"] == device), key=lambda m: m["seq"])


def kind_of(name: str) -> str:
    return "door" if name.startswith("door-") else "smoke" if name.startswith("smoke-") else "climate"


def site_ready(names: set[str]) -> Any:
    def ready(r: Received) -> bool:
        reports = of(r, "zigbee", "zigbee.report")
        alarms = [m["data"] for m in of(r, "zigbee", "zigbee.alarm") if m["data"]["alarm"]]
        return (
            {m["data"]["sensor"] for m in reports} >= names
            and any(a["sensor"].startswith("door-") for a in alarms)
            and any(a["sensor"].startswith("smoke-") for a in alarms)
            and any(m["data"]["sensor"] == LATE for m in of(r, "zigbee", "zigbee.joined"))
            and any(m["data"]["format"] == "ibeacon" for m in of(r, "gate-ble", "ble.advert"))
        )

    return ready


async def test_community_site_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    example = load_example(SITE)
    devices = {d["name"]: d for d in example["devices"]}
    zigbee = devices["zigbee"]
    # The site as issue 12 describes it: one coordinator in API mode 2 with 20 sensors, beacons at the gates.
    assert {k: zigbee[k] for k in ("driver", "port", "baudrate", "api_mode")} == {
        "driver": "xbee", "port": "/dev/ttyUSB3", "baudrate": 9600, "api_mode": 2,
    }  # fmt: skip
    sensors: dict[str, str] = zigbee["sensors"]
    assert len(sensors) == 20
    assert {kind_of(n) for n in sensors.values()} == {"climate", "door", "smoke"}
    assert devices["gate-ble"]["driver"] == "ble"

    network = tuple(
        xbee_sim.SimSensor(int(ieee, 16), kind_of(name), joined=name != LATE, name=name)
        for ieee, name in sensors.items()
    )
    options = xbee_sim.SimOptions(sensors=network, interval_s=0.5, alarm_every_s=2.0)
    gateway_id = "e2e-community"
    collector: Collector = await collector_for(SITE, broker, gateway_id)
    async with AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(xbee_sim.serve_pty(tmp_path / "ttyZigbee", options))
        changes: dict[str, dict[str, Any]] = {
            "zigbee": {"port": str(tmp_path / "ttyZigbee"), "permit_join_s": 60, "keepalive_s": 5},
            "gate-ble": {"adapter": None, "replay": str(CAPTURE), "replay_speed": 20},
        }
        gateway = GatewayProcess(site_config(SITE, tmp_path, broker, gateway_id, changes))
        await gateway.start()
        try:
            await collector.wait_for(
                "every sensor reported, door and smoke alarms, the late join, a gate beacon",
                site_ready(set(sensors.values())),
                timeout=WAIT_S,
            )
            assert await gateway.stop() == 0, gateway.log()
        except AssertionError as err:
            raise AssertionError(f"{err}\ngateway log (end):\n{gateway.log()[-3000:]}") from None
        finally:
            await gateway.kill()
            collector.close()
        received = collector.snapshot()

        seqs = received.seqs()
        assert (
            missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok and not received.conflicting_duplicates
        )
        reports = [m["data"] for m in of(received, "zigbee", "zigbee.report")]
        sent = set(coordinator.sent)
        by_ieee = {int(ieee, 16): name for ieee, name in sensors.items()}
        for report in reports:
            ieee = int(report["ieee"], 16)
            assert report["sensor"] == by_ieee[ieee], report
            assert report["nwk"] == coordinator.nwk[ieee]
            if report["name"] in ("temperature", "humidity"):
                assert kind_of(report["sensor"]) == "climate"
                unit = "°C" if report["name"] == "temperature" else "%"
                assert (
                    report["unit"] == unit
                    and (ieee, report["cluster"], 0, round(report["value"] * 100)) in sent
                )
        names = {(kind_of(r["sensor"]), r["name"]) for r in reports}
        assert {("climate", "temperature"), ("climate", "humidity"), ("door", "battery_percentage")} <= names
        alarms = [m["data"] for m in of(received, "zigbee", "zigbee.alarm")]
        assert all(set(a["zone_status"]) >= {"alarm1", "alarm2", "tamper", "battery_low"} for a in alarms)
        joined = [m["data"] for m in of(received, "zigbee", "zigbee.joined")]
        assert [j["sensor"] for j in joined] == [LATE]
        statuses = of(received, "zigbee", "device.status")
        assert [s["data"]["state"] for s in statuses][:3] == ["network", "connected", "permit_join"]
        # The reporting the site asks for reached its two sensors (bound, then configured).
        configured = {(by_ieee[ieee], cluster) for ieee, _, cluster, _ in coordinator.configured}
        assert configured == {
            (name, cluster)
            for name in ("boiler-room-climate", "lv-switchroom-climate")
            for cluster in (0x0402, 0x0405)
        }
        beacons = of(received, "gate-ble", "ble.advert")
        assert {m["data"]["format"] for m in beacons} <= {
            "ibeacon",
            "eddystone-uid",
            "eddystone-url",
            "eddystone-tlm",
        }
        ibeacon = next(m["data"] for m in beacons if m["data"]["format"] == "ibeacon")
        assert ibeacon["address"] == ble_sim.ADDRESSES["bluecharm"] and ibeacon["major"] == 3838
