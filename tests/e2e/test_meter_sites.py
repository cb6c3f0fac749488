"""The metering sites of config/examples, end to end: each example file, with only its ports, hosts, buffer,
broker and poll periods replaced, runs as ``edgegw run`` against simulated meters (Modbus RTU on a real pty
for each shared RS-485 line, Modbus TCP on 127.0.0.1, DL/T 645 on a pty), a private mosquitto and a
subscriber; what arrives upstream is what the site's operator expects: a ``meter.reading`` per device with
the configured point names and units and the values the instruments hold, every device connected, seqs
contiguous; on the substation's feeder line one meter dies and the other seven keep reporting; at the water
station, deadbands and report-on-change keep steady values off the uplink."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from firmware_sim import dlt645 as dlt645_sim
from firmware_sim import modbus as modbus_sim
from firmware_sim.modbus import SimPoint
from protocols import dlt645
from protocols.modbus import ByteOrder, DataType, Table
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

pytestmark = pytest.mark.timeout(60)

PTY_LINE = {"parity": "N"}
"""A serial line's replaced setting on a pty. A pty carries bytes, not bits, so parity means nothing there,
and Linux ptys may refuse it: here tcsetattr with even parity fails with EINVAL whenever the speed stays
the same (pyserial reconfigures the port after opening it when its timeout changes, as pymodbus does)."""
WAIT_S = 30.0


def readings(r: Received, device: str) -> list[dict[str, Any]]:
    """The device's meter.reading messages, in seq order."""
    return sorted((m for m in r.of_kind("meter.reading") if m["device"] == device), key=lambda m: m["seq"])


def seen_points(r: Received, device: str) -> set[str]:
    return {name for m in readings(r, device) for name in m["data"]["values"]}


def statuses(r: Received, device: str, state: str) -> list[dict[str, Any]]:
    return sorted(
        (m for m in r.of_kind("device.status") if m["device"] == device and m["data"]["state"] == state),
        key=lambda m: m["seq"],
    )


def modbus_units(device: Mapping[str, Any]) -> dict[str, str]:
    return {p["name"]: p["unit"] for p in device["points"] if "unit" in p}


def dlt645_units(device: Mapping[str, Any]) -> dict[str, str]:
    items = [dlt645.find_item(point) for point in device["points"]]
    return {item.name: item.unit for item in items if item is not None and item.unit}


def point_names(device: Mapping[str, Any]) -> set[str]:
    """The value names the device's readings may carry (a DL/T 645 point given by its hex DI is named)."""
    if device["driver"] == "dlt645":
        items = [dlt645.find_item(point) for point in device["points"]]
        return {item.name for item in items if item is not None}
    return {p["name"] for p in device["points"]}


def not_yet_reporting(r: Received, devices: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The devices not yet connected or not yet reporting every configured point, and why."""
    problems: dict[str, str] = {}
    for name, device in devices.items():
        missing = point_names(device) - seen_points(r, name)
        if not statuses(r, name, "connected"):
            last = [m["data"] for m in r.of_kind("device.status") if m["device"] == name][-1:]
            problems[name] = f"not connected (last status: {last})"
        elif missing:
            problems[name] = f"never reported {sorted(missing)}"
    return problems


async def wait_all_reporting(
    collector: Collector, devices: Mapping[str, Mapping[str, Any]], gateway: GatewayProcess
) -> None:
    try:
        await collector.wait_for(
            "every device connected, with a reading of every configured point",
            lambda r: not not_yet_reporting(r, devices),
            timeout=WAIT_S,
        )
    except AssertionError as err:
        problems = not_yet_reporting(collector.snapshot(), devices)
        raise AssertionError(f"{err}\n{problems}\ngateway log (end):\n{gateway.log()[-3000:]}") from None


def check_common(received: Received, devices: Mapping[str, Mapping[str, Any]]) -> None:
    """What holds for every metering site: nothing lost or misplaced upstream, every device connected, and
    every reading carries only configured points with exactly their configured units."""
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == [] and received.topics_ok
    assert not received.conflicting_duplicates
    for name, device in devices.items():
        assert statuses(received, name, "connected"), f"{name} never connected"
        units = dlt645_units(device) if device["driver"] == "dlt645" else modbus_units(device)
        for message in readings(received, name):
            values = message["data"]["values"]
            assert values and set(values) <= point_names(device), (name, values)
            assert message["data"]["units"] == {k: u for k, u in units.items() if k in values}, name


# -- the substation ---------------------------------------------------------------------------------------

SUBSTATION = "substation.yaml"

# Plausible ranges of the feeder meters' moving values (the energy-meter profile's working point).
FEEDER_RANGES = {
    "voltage_b": (220.0, 240.0),
    "voltage_c": (220.0, 240.0),
    "current_a": (30.0, 70.0),
    "current_b": (30.0, 70.0),
    "current_c": (30.0, 70.0),
    "active_power": (20.0, 50.0),
    "reactive_power": (0.0, 10.0),
    "power_factor": (0.9, 1.0),
    "frequency": (49.9, 50.1),
    "energy_export": (0.0, 1e6),
}


def feeder_pins(unit: int) -> dict[str, float]:
    """Exact values each feeder meter is pinned to: distinct per unit, so a reading proves it came from its
    own meter and went through the CDAB decoding right."""
    return {"voltage_a": 230.0 + unit / 10, "energy_import": 1000.0 * unit + 0.25}


PD_PINS = ({"pd_ch1": 345, "temperature": -5.5}, {"pd_ch1": 512, "temperature": 38.2})


async def test_substation_reports_every_meter_and_survives_a_dead_feeder_meter(
    tmp_path: Path, broker: Mosquitto
) -> None:
    example = load_example(SUBSTATION)
    devices = {d["name"]: d for d in example["devices"]}
    feeders = {n: d for n, d in devices.items() if d["driver"] == "modbus" and d["transport"] == "rtu"}
    monitors = {n: d for n, d in devices.items() if d["driver"] == "modbus" and d["transport"] == "tcp"}
    revenue = {n: d for n, d in devices.items() if d["driver"] == "dlt645"}
    # The site as issue 4 describes it: 8 meters on one RTU line, 2 PD monitors on TCP, 4 DL/T 645 meters.
    assert len(feeders) == 8 and len({d["port"] for d in feeders.values()}) == 1
    assert sorted(d["unit_id"] for d in feeders.values()) == list(range(1, 9))
    assert len(monitors) == 2 and len(revenue) == 4
    assert {(d["baudrate"], d["parity"]) for d in revenue.values()} == {(2400, "E")}

    gateway_id = "e2e-substation"
    collector = await collector_for(SUBSTATION, broker, gateway_id)
    async with AsyncExitStack() as stack:
        feeder_line = await stack.enter_async_context(
            modbus_sim.serve_pty(
                tmp_path / "ttyFeeders",
                {d["unit_id"]: "energy-meter" for d in feeders.values()},
            )
        )
        for d in feeders.values():
            for point, value in feeder_pins(d["unit_id"]).items():
                feeder_line.pin(d["unit_id"], point, value)
        pd_sims: dict[str, modbus_sim.ModbusSimulator] = {}
        for (name, d), pins in zip(sorted(monitors.items()), PD_PINS, strict=True):
            sim = await stack.enter_async_context(
                modbus_sim.serve_tcp("127.0.0.1", 0, {d["unit_id"]: "pd-monitor"})
            )
            for point, value in pins.items():
                sim.pin(d["unit_id"], point, value)
            pd_sims[name] = sim
        revenue_line = await stack.enter_async_context(
            dlt645_sim.serve_pty(
                tmp_path / "ttyRevenue",
                dlt645_sim.SimOptions(meters=tuple(d["address"] for d in revenue.values())),
            )
        )
        # Shorter periods than the site's (5 s, 2 s, 60 s), so that the test sees many polls in seconds.
        changes: dict[str, dict[str, Any]] = {}
        changes |= {n: {"port": str(tmp_path / "ttyFeeders"), "poll_s": 0.5, **PTY_LINE} for n in feeders}
        changes |= {n: {"host": "127.0.0.1", "tcp_port": pd_sims[n].port, "poll_s": 0.2} for n in monitors}
        changes |= {n: {"port": str(tmp_path / "ttyRevenue"), "poll_s": 1.0, **PTY_LINE} for n in revenue}
        gateway = GatewayProcess(site_config(SUBSTATION, tmp_path, broker, gateway_id, changes))
        await gateway.start()
        try:
            await wait_all_reporting(collector, devices, gateway)
            healthy = collector.snapshot()
            assert not [m for m in healthy.of_kind("device.status") if m["data"]["state"] != "connected"]
            # A feeder meter dies (its auxiliary supply tripped): it never answers again.
            dead = "feeder-05"
            dead_unit = feeders[dead]["unit_id"]
            live = sorted(set(feeders) - {dead})
            feeder_line.kill(dead_unit)
            await collector.wait_for(
                f"{dead} reported disconnected",
                lambda r: bool(statuses(r, dead, "disconnected")),
                timeout=WAIT_S,
            )
            lost_at = collector.snapshot()
            down = statuses(lost_at, dead, "disconnected")[0]
            counts = {n: len(readings(lost_at, n)) for n in live}
            # While it is dead and backing off, each of the other seven goes on reporting.
            await collector.wait_for(
                "5 more readings of each live feeder meter after the dead one was lost",
                lambda r: all(
                    len([m for m in readings(r, n) if m["seq"] > down["seq"]]) >= 5
                    and len(readings(r, n)) >= counts[n] + 5
                    for n in live
                ),
                timeout=WAIT_S,
            )
            assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
        finally:
            await gateway.kill()
            collector.close()
        received = collector.snapshot()

        check_common(received, devices)
        assert feeder_line.stats.unanswered[dead_unit] > 0
        # Nothing the dead meter did not say: no reading of it after it was declared lost.
        assert all(m["seq"] < down["seq"] for m in readings(received, dead))
        for name, d in feeders.items():
            unit = d["unit_id"]
            for message in readings(received, name):
                values = message["data"]["values"]
                if "serial_number" in values:
                    assert values == {"serial_number": f"EM{unit:08d}"}  # its own event, daily
                    continue
                assert set(values) == point_names(d) - {"serial_number"}
                for point, pinned in feeder_pins(unit).items():
                    assert values[point] == pinned, (name, point)
                for point, (low, high) in FEEDER_RANGES.items():
                    assert low <= values[point] <= high, (name, point, values[point])
                assert values["running"] is True and isinstance(values["alarm"], bool)
        for (name, d), pins in zip(sorted(monitors.items()), PD_PINS, strict=True):
            for message in readings(received, name):
                values = message["data"]["values"]
                assert set(values) == point_names(d)
                assert {k: values[k] for k in pins} == pins, name
                assert 40 <= values["pd_ch2"] <= 120 and 45 <= values["pd_ch3"] <= 145
                assert isinstance(values["pulse_count"], int) and values["pulse_count"] >= 1000
                assert 0.5 <= values["pd_energy"] <= 1.2 and 45.0 <= values["humidity"] <= 65.0
                assert values["sensor_fault"] is False and isinstance(values["pd_alarm"], bool)
        # Every DL/T 645 value upstream is one the meter at that address sent (exactly: the BCD decoded).
        for name, d in revenue.items():
            meter_readings = readings(received, name)
            assert meter_readings, name
            for message in meter_readings:
                values = message["data"]["values"]
                assert set(values) == point_names(d)
                for point, value in values.items():
                    item = dlt645.find_item(point)
                    assert item is not None
                    assert value in revenue_line.sent[(d["address"], item.di)], (name, point, value)
                assert 210 <= values["voltage_a"] <= 240 and 49.9 <= values["frequency"] <= 50.1
                assert 0 < values["power_factor"] <= 1 and values["energy_active_forward"] > 0


# -- the water station ------------------------------------------------------------------------------------

WATER_STATION = "water-station.yaml"


def _const(value: float | int | bool) -> modbus_sim.Model:
    return lambda t, unit: value


def level_transmitter(level_m: float) -> tuple[SimPoint, ...]:
    """The radar level transmitter's map as the example describes it: level in mm, temperature in tenths,
    status bit 0 = echo lost."""
    h = Table.HOLDING
    return (
        SimPoint("level", h, 0, DataType.UINT16, _const(level_m), scale=0.001, unit="m"),
        SimPoint("temperature", h, 1, DataType.INT16, _const(21.5), scale=0.1, unit="°C"),
        SimPoint("echo_lost", h, 2, DataType.BIT, _const(False), bit=0),
    )


def flow_meter() -> tuple[SimPoint, ...]:
    """The electromagnetic flow meter's map: float32 and uint32 low word first, status bit 0 = empty pipe."""
    h, cdab = Table.HOLDING, ByteOrder.CDAB
    return (
        SimPoint("flow_rate", h, 0, DataType.FLOAT32, _const(812.5), cdab, unit="m3/h"),
        SimPoint("velocity", h, 2, DataType.FLOAT32, _const(1.15), cdab, unit="m/s"),
        SimPoint("total_forward", h, 4, DataType.UINT32, _const(1_234_567), cdab, unit="m3"),
        SimPoint("empty_pipe", h, 6, DataType.BIT, _const(False), bit=0),
    )


# Plausible ranges of the analyser's moving values (the water-quality profile).
QUALITY_RANGES = {
    "ph": (6.9, 7.5),
    "turbidity": (1.2, 2.4),
    "dissolved_oxygen": (7.3, 8.9),
    "conductivity": (500.0, 580.0),
    "water_temperature": (17.0, 20.0),
    "ammonia": (0.32, 0.52),
}


async def test_water_station_reports_levels_flow_and_quality_on_change(
    tmp_path: Path, broker: Mosquitto
) -> None:
    example = load_example(WATER_STATION)
    devices = {d["name"]: d for d in example["devices"]}
    units = {n: d["unit_id"] for n, d in devices.items()}
    well, reservoir, flow, quality = (
        "intake-well-level",
        "reservoir-level",
        "outlet-flow",
        "raw-water-quality",
    )
    assert {n for n, d in devices.items() if d["transport"] == "rtu"} == {well, reservoir, flow}
    assert len({devices[n]["port"] for n in (well, reservoir, flow)}) == 1
    assert devices[quality]["transport"] == "tcp"

    gateway_id = "e2e-water-station"
    collector = await collector_for(WATER_STATION, broker, gateway_id)
    async with AsyncExitStack() as stack:
        line = await stack.enter_async_context(
            modbus_sim.serve_pty(
                tmp_path / "ttyInstruments",
                {
                    units[well]: level_transmitter(3.2),
                    units[reservoir]: level_transmitter(4.75),
                    units[flow]: flow_meter(),
                },
            )
        )
        analyser = await stack.enter_async_context(
            modbus_sim.serve_tcp("127.0.0.1", 0, {units[quality]: "water-quality"})
        )
        analyser.pin(units[quality], "cod", 23.4)
        tty = str(tmp_path / "ttyInstruments")
        changes = {
            well: {"port": tty, "poll_s": 0.1},
            reservoir: {"port": tty, "poll_s": 0.25},
            flow: {"port": tty, "poll_s": 0.1},
            quality: {"host": "127.0.0.1", "tcp_port": analyser.port, "poll_s": 0.5},
        }
        gateway = GatewayProcess(site_config(WATER_STATION, tmp_path, broker, gateway_id, changes))
        await gateway.start()
        try:
            await wait_all_reporting(collector, devices, gateway)
            # Within the deadbands (5 mm of a 1 cm band; 0.3 % of a 1 % band): polled, never reported.
            line.pin(units[well], "level", 3.205)
            line.pin(units[flow], "flow_rate", 815.0)
            before = (line.stats.requests[units[well]], line.stats.requests[units[flow]])
            await line.wait_for(
                lambda s: (
                    s.requests[units[well]] >= before[0] + 5 and s.requests[units[flow]] >= before[1] + 5
                ),
                timeout=WAIT_S,
            )
            # Past them: reported, alone (the other points have not changed).
            line.pin(units[well], "level", 3.25)
            line.pin(units[flow], "flow_rate", 900.0)
            await collector.wait_for(
                "the level and flow changes reported",
                lambda r: (
                    any(m["data"]["values"].get("level") == 3.25 for m in readings(r, well))
                    and any(m["data"]["values"].get("flow_rate") == 900.0 for m in readings(r, flow))
                ),
                timeout=WAIT_S,
            )
            # Any change of an on-change bit is news.
            line.pin(units[well], "echo_lost", True)
            await collector.wait_for(
                "echo lost reported",
                lambda r: any(m["data"]["values"].get("echo_lost") is True for m in readings(r, well)),
                timeout=WAIT_S,
            )
            assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
        finally:
            await gateway.kill()
            collector.close()
        received = collector.snapshot()

    check_common(received, devices)
    # The well's whole story upstream: everything once, then only what moved past its deadband.
    assert [m["data"]["values"] for m in readings(received, well)] == [
        {"level": 3.2, "electronics_temperature": 21.5, "echo_lost": False},
        {"level": 3.25},
        {"echo_lost": True},
    ]
    assert readings(received, reservoir)[0]["data"]["values"] == {
        "level": 4.75,
        "electronics_temperature": 21.5,
        "echo_lost": False,
    }
    flows = readings(received, flow)
    assert flows[0]["data"]["values"] == {
        "flow_rate": 812.5,
        "velocity": 1.15,
        "total_forward": 1_234_567,
        "empty_pipe": False,
    }
    assert [m["data"]["values"]["flow_rate"] for m in flows if "flow_rate" in m["data"]["values"]] == [
        812.5,
        900.0,
    ]
    # The analyser: every measurement in its first reading, decoded from BADC / DCBA / text.
    first: dict[str, Any] = {}
    for message in readings(received, quality):
        first = {**message["data"]["values"], **first}
    assert set(first) == point_names(devices[quality])
    assert first["cod"] == 23.4 and first["model"] == "WQ-7 multiparameter"
    assert first["analyser_fault"] is False
    assert isinstance(first["samples_total"], int) and first["samples_total"] >= 1000
    for point, (low, high) in QUALITY_RANGES.items():
        assert low <= first[point] <= high, (point, first[point])
