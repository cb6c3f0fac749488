"""The cabinet-climate site of config/examples, end to end: the example file run as ``edgegw run`` with only
its buffer, broker and hosts replaced, the two ble devices replaying the shipped capture of published test
vectors (config/examples/ble-adverts.jsonl) instead of scanning hci0, the PD monitor the Modbus simulator
on 127.0.0.1, and a private mosquitto with a subscriber: each device's events arrive upstream as the
site's operator reads them (BTHome readings, the encrypted one decrypted with its bind key; the RuuviTag's;
the PD monitor's pinned values), nothing of the other device's filter leaks in, seqs are contiguous."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from firmware_sim import ble as ble_sim
from firmware_sim import modbus as modbus_sim
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

pytestmark = pytest.mark.timeout(90)

SITE = "cabinet-climate.yaml"
CAPTURE = Path(__file__).resolve().parents[2] / "config" / "examples" / "ble-adverts.jsonl"
PD_PINS = {"pd_ch1": 345, "pd_ch2": 12, "temperature": 31.5, "humidity": 78.5}
WAIT_S = 40.0


def of(r: Received, device: str, kind: str) -> list[dict[str, Any]]:
    return sorted((m for m in r.of_kind(kind) if m["device"] == device), key=lambda m: m["seq"])


def replay_ended(r: Received, device: str) -> bool:
    return any(m["data"]["state"] == "replay_ended" for m in of(r, device, "device.status"))


def site_ready(r: Received) -> bool:
    pd = of(r, "pd-busbar", "meter.reading")
    pinned = any(all(m["data"]["values"].get(k) == v for k, v in PD_PINS.items()) for m in pd)
    return replay_ended(r, "cabinet-bthome") and replay_ended(r, "cabinet-ruuvi") and pinned


async def wait(collector: Collector, gateway: GatewayProcess) -> Received:
    try:
        await collector.wait_for(
            "both replays ended and a PD reading with the pinned values", site_ready, WAIT_S
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\ngateway log (end):\n{gateway.log()[-3000:]}") from None
    return collector.snapshot()


async def test_cabinet_climate_site_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    example = load_example(SITE)
    devices = {d["name"]: d for d in example["devices"]}
    assert {d["adapter"] for d in devices.values() if d["driver"] == "ble"} == {"hci0"}  # one shared adapter
    gateway_id = "e2e-cabinets"
    collector = await collector_for(SITE, broker, gateway_id)
    async with AsyncExitStack() as stack:
        pd = await stack.enter_async_context(modbus_sim.serve_tcp("127.0.0.1", 0, {1: "pd-monitor"}))
        for point, value in PD_PINS.items():
            pd.pin(1, point, value)
        replay = {"adapter": None, "replay": str(CAPTURE), "replay_speed": 20}
        changes: dict[str, dict[str, Any]] = {
            "cabinet-bthome": replay,
            "cabinet-ruuvi": replay,
            "pd-busbar": {"host": "127.0.0.1", "tcp_port": pd.port, "poll_s": 0.2},
        }
        gateway = GatewayProcess(site_config(SITE, tmp_path, broker, gateway_id, changes))
        await gateway.start()
        try:
            received = await wait(collector, gateway)
        finally:
            await gateway.stop()
    collector.close()

    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok and not received.conflicting_duplicates

    bthome = of(received, "cabinet-bthome", "ble.advert")
    assert {m["data"]["format"] for m in bthome} == {"bthome"}
    by_address = {m["data"]["address"]: m["data"] for m in bthome}
    assert set(by_address) == {ble_sim.ADDRESSES[s] for s in ("bthome", "bthome-objects", "bthome-encrypted")}
    plain = by_address[ble_sim.ADDRESSES["bthome"]]
    assert plain["values"] == {"temperature": 25.0, "humidity": 50.55} and plain["name"] == "DIY-sensor"
    assert plain["units"] == {"temperature": "°C", "humidity": "%"}
    sealed = by_address[ble_sim.ADDRESSES["bthome-encrypted"]]["values"]
    assert (sealed["temperature"], sealed["humidity"]) == (25.06, 50.55)  # decrypted with the site's key
    objects = by_address[ble_sim.ADDRESSES["bthome-objects"]]
    assert objects["values"]["pressure"] == 1008.83 and objects["units"]["pressure"] == "hPa"

    ruuvi = of(received, "cabinet-ruuvi", "ble.advert")
    assert [m["data"]["format"] for m in ruuvi] == ["ruuvi"] * 4
    assert (
        ruuvi[0]["data"]["values"]["temperature"] == 24.3 and ruuvi[0]["data"]["values"]["humidity"] == 53.49
    )
    assert ruuvi[0]["data"]["address"] == "CB:B8:33:4C:88:4F"

    readings = of(received, "pd-busbar", "meter.reading")
    assert readings and all(m["data"]["units"]["pd_ch1"] == "pC" for m in readings)
    for name in devices:
        assert of(received, name, "device.status")[0]["data"]["state"] == "connected", name
