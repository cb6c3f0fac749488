"""The xbee driver against the simulated coordinator (firmware_sim.xbee) over real pseudo-terminals, run as
the gateway runs it (drivers.testing): start-up, named and scaled reports, alarms, joins, the commands,
damage on the line, damaged ZCL, a coordinator reset, a pulled stick; and its config as a file."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.commands import CommandFailed, CommandRefused
from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED, TIMEOUTS
from drivers.event import Event, encode
from drivers.kinds import DEVICE_STATUS, ZIGBEE_ALARM, ZIGBEE_JOINED, ZIGBEE_REPORT
from drivers.testing import DeviceUnderTest, Harness, running
from drivers.transport import open_serial
from drivers.xbee import (
    COORDINATOR_RESETS,
    REPORTING_CONFIGURED,
    CoordinatorReset,
    PermitJoinArgs,
    ReadAttributeArgs,
    XbeeDriver,
    XbeeOptions,
    _Session,
)
from firmware_sim import xbee as sim
from gateway.config import ConfigError, load_config
from protocols import xbee as xbee_codec
from protocols import zcl, zdo

pytestmark = pytest.mark.timeout(90)

CLIMATE, DOOR, SMOKE, METER, OCCUPANCY, ODD = (0x0013A20041A7B200 + n for n in range(6))
LATE = 0x0013A20041A7B2FF
NAMES = {f"{CLIMATE:016x}": "plant-room-1", f"{DOOR:016x}": "door-east", f"{SMOKE:016x}": "smoke-plant-room"}
FAST = sim.SimOptions(interval_s=0.2, alarm_every_s=0.6)


@asynccontextmanager
async def coordinator(
    tmp_path: Path, options: sim.SimOptions = FAST, **driver: Any
) -> AsyncIterator[tuple[sim.XBeeSimulator, XbeeDriver, Harness]]:
    path = tmp_path / "ttyXBee"
    async with sim.serve_pty(path, options) as simulator:
        opts = XbeeOptions.model_validate(
            {"port": str(path), "api_mode": options.api_mode, "sensors": NAMES, **driver}
        )
        xbee_driver = XbeeDriver("zb", opts)
        async with running({"zb": lambda: xbee_driver}, timeout=30) as run:
            yield simulator, xbee_driver, run


def reports(run: Harness, ieee: int | None = None) -> list[dict[str, Any]]:
    return [r for r in run.data(ZIGBEE_REPORT) if ieee is None or r["ieee"] == f"{ieee:016x}"]


def check_sent(run: Harness, simulator: sim.XBeeSimulator) -> None:
    """Every named, numeric report is a value the sensor sent, as the cluster table scales it."""
    sent = {(ieee, cluster, attribute, value) for ieee, cluster, attribute, value in simulator.sent}
    for report in reports(run):
        if report["cluster"] == zcl.ClusterId.TEMPERATURE and report["name"] == "temperature":
            raw = round(report["value"] * 100)
            assert (int(report["ieee"], 16), report["cluster"], 0, raw) in sent, report
        if report["cluster"] == zcl.ClusterId.HUMIDITY:
            assert (int(report["ieee"], 16), report["cluster"], 0, round(report["value"] * 100)) in sent, (
                report
            )


# ------------------------------------------------------------------------------------------ options


def test_options_public_shape_and_sensor_names() -> None:
    opts = XbeeOptions.model_validate({"port": "/dev/ttyUSB3", "baudrate": 9600, "api_mode": 2})
    assert (opts.link.port, opts.link.baudrate, opts.api_mode, opts.sensors) == ("/dev/ttyUSB3", 9600, 2, {})
    opts = XbeeOptions.model_validate(
        {
            "port": "/dev/ttyUSB3",
            "sensors": {"0013A20041A7B2C3": "cabinet-3"},
            "reporting": [{"sensor": "cabinet-3", "cluster": "temperature_measurement", "change": 10}],
        }
    )
    assert opts.sensors == {"0013a20041a7b2c3": "cabinet-3"}
    assert opts.sensor_ieee("cabinet-3") == 0x0013A20041A7B2C3
    assert opts.reporting[0].cluster == 0x0402 and opts.reporting[0].data_type() == zcl.DataType.INT16
    for bad in (
        {"sensors": {13200041472123: "x"}},  # YAML read bare digits as a number
        {"sensors": {"0013a2": "x"}},
        {"sensors": {"0013a20041a7b2c3": "a", "0013a20041a7b2c4": "a"}},
        {"reporting": [{"sensor": "nobody", "cluster": 0x0402}]},
        {"reporting": [{"sensor": "0013a20041a7b2c3", "cluster": 0xFC00}]},  # no type known
        {"reporting": [{"sensor": "0013a20041a7b2c3", "cluster": 0x0402, "type": "int17"}]},
        {"api_mode": 0},
    ):
        with pytest.raises(ValidationError):
            XbeeOptions.model_validate({"port": "/dev/ttyUSB3", **bad})


HEAD = """gateway: {id: gw}
buffer: {path: buffer.db}
upstream: {mqtt: {url: "mqtt://127.0.0.1:1883"}}
devices:
"""


def test_the_config_file_names_the_line_of_a_bad_sensor(tmp_path: Path) -> None:
    good = """  - {name: zb, driver: xbee, port: /dev/ttyUSB3, baudrate: 9600, api_mode: 2}
"""
    (tmp_path / "gateway.yaml").write_text(HEAD + good)
    (device,) = load_config(tmp_path / "gateway.yaml").devices
    assert isinstance(device.options, XbeeOptions) and device.options.api_mode == 2
    bad = """  - name: zb
    driver: xbee
    port: /dev/ttyUSB3
    sensors:
      0013200041472123: cabinet-3
"""
    (tmp_path / "gateway.yaml").write_text(HEAD + bad)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert "gateway.yaml:" in str(caught.value) and "sensors" in str(caught.value)
    assert "16 hex digits in quotes" in str(caught.value)


# ------------------------------------------------------------------------------------------ end to end


async def test_start_up_reports_alarms_and_names(tmp_path: Path) -> None:
    async with coordinator(tmp_path) as (simulator, _, run):
        await run.until_state("connected")
        await run.until(
            "a report of every sensor on the network and an alarm raised",
            lambda: (
                all(reports(run, ieee) for ieee in (CLIMATE, DOOR, SMOKE, METER, OCCUPANCY, ODD))
                and any(a["alarm"] for a in run.data(ZIGBEE_ALARM))
            ),
        )
        statuses = run.statuses()
    # AO=3 was set and saved; the network is in device.status.
    assert simulator.settings["AO"] == b"\x03" and simulator.nvram["AO"] == b"\x03"
    network = next(s for s in statuses if s["state"] == "network")
    assert network | {"detail": ""} == {
        "state": "network", "ieee": "0013a20041000001", "association": 0, "pan_id": "00000000edce0001",
        "channel": 15, "firmware": "4061", "detail": "",
    }  # fmt: skip
    assert "coordinator 0013a20041000001" in next(s for s in statuses if s["state"] == "connected")["detail"]
    temperature = next(r for r in reports(run, CLIMATE) if r["cluster"] == 0x0402)
    assert temperature.keys() >= {
        "ieee",
        "nwk",
        "endpoint",
        "cluster",
        "cluster_name",
        "attribute",
        "name",
        "value",
        "unit",
    }
    assert temperature["ieee"] == "0013a20041a7b200" and temperature["sensor"] == "plant-room-1"
    assert (temperature["cluster_name"], temperature["name"], temperature["unit"]) == (
        "temperature_measurement",
        "temperature",
        "°C",
    )
    assert 17.0 <= temperature["value"] <= 26.0 and temperature["type"] == "int16"
    assert temperature["nwk"] == simulator.nwk[CLIMATE] and temperature["endpoint"] == 1
    check_sent(run, simulator)
    # One event per attribute: the meter's frames carry 4 and 6 attributes.
    meter = reports(run, METER)
    assert {r["name"] for r in meter} >= {
        "summation_delivered",
        "instantaneous_demand",
        "rms_voltage",
        "active_power",
    }
    voltage = next(r for r in meter if r["name"] == "rms_voltage")
    assert voltage["unit"] == "V" and 225 <= voltage["value"] <= 235
    energy = next(r for r in meter if r["name"] == "summation_delivered")
    assert energy["unit"] == "kWh" and energy["value"] >= 1250.0
    # Alarms: bits named, raised and cleared, the sensor's name.
    alarms = [a for a in run.data(ZIGBEE_ALARM) if a["ieee"] == f"{DOOR:016x}" and a["zone_id"] is not None]
    assert alarms and all(a["sensor"] == "door-east" for a in alarms)
    assert set(alarms[0]["zone_status"]) == set(zcl.ZONE_STATUS_BITS)
    raised = [a for a in alarms if a["alarm"]]
    assert raised and raised[0]["zone_status"]["alarm1"] is True
    # What no table names passes through raw, with its type.
    odd = reports(run, ODD)
    raw = next(r for r in odd if r["cluster"] == 0xFC00 and r["attribute"] == 1)
    assert (raw["cluster_name"], raw["name"], raw["value"], raw["type"]) == (None, None, "7d7e", "uint16")
    unknown = next(r for r in odd if r["cluster"] == 0x0402 and r["attribute"] == 0x4000)
    assert (unknown["cluster_name"], unknown["name"], unknown["value"]) == (
        "temperature_measurement",
        None,
        "020102",
    )
    assert run.counters().get(DECODE_ERRORS, 0) == 0 and run.counters().get(FRAMES_REJECTED, 0) == 0


async def test_permit_join_command_and_the_join_reported_once(tmp_path: Path) -> None:
    async with coordinator(tmp_path) as (simulator, driver, run):
        await run.until_state("connected")
        await run.until_events(ZIGBEE_REPORT, 5)
        assert not run.data(ZIGBEE_JOINED)  # the late sensor waits for joining to open
        assert await driver.command("permit_join", PermitJoinArgs(seconds=30)) == {"seconds": 30}
        await run.until_events(ZIGBEE_JOINED)
        await run.until("a report of the sensor that joined", lambda: bool(reports(run, LATE)))
        await simulator.wait_for(lambda s: s.joins >= 1)
        joined = run.data(ZIGBEE_JOINED)
        statuses = run.statuses()
    # A node identification and a device announce of one join: one event.
    assert len(joined) == 1
    assert joined[0] | {"nwk": 0} == {
        "ieee": f"{LATE:016x}", "nwk": 0, "sensor": None, "via": "node_identification",
        "identifier": "climate-b2ff", "device_type": "end_device", "parent": 0, "capability": None,
    }  # fmt: skip
    assert joined[0]["nwk"] == simulator.nwk[LATE]
    assert simulator.stats.at_commands["NJ"] == 1 and simulator.stats.permit_joins >= 1
    assert {"state": "permit_join", "seconds": 30, "detail": "joining open for 30 s"} in statuses


async def test_permit_join_from_the_config_and_reporting_configured(tmp_path: Path) -> None:
    reporting = [
        {
            "sensor": "plant-room-1",
            "cluster": 0x0402,
            "min_interval_s": 30,
            "max_interval_s": 600,
            "change": 10,
        },
        {"sensor": "plant-room-1", "cluster": 0x0405, "change": 100},
        {"sensor": f"{LATE:016x}", "cluster": "temperature_measurement"},
    ]
    async with coordinator(tmp_path, permit_join_s=60, reporting=reporting) as (simulator, _, run):
        await run.until_events(ZIGBEE_JOINED)
        await run.until(
            "reporting configured on both sensors", lambda: run.counters().get(REPORTING_CONFIGURED, 0) >= 3
        )
        await simulator.wait_for(lambda s: s.binds >= 3)
    assert simulator.configured >= {(CLIMATE, 1, 0x0402, 0), (CLIMATE, 1, 0x0405, 0), (LATE, 1, 0x0402, 0)}


async def test_read_attribute_command(tmp_path: Path) -> None:
    async with coordinator(tmp_path) as (_, driver, run):
        await run.until_state("connected")
        result = await driver.command(
            "read_attribute",
            ReadAttributeArgs(sensor="plant-room-1", cluster=0x0402, attributes=[0x0000, 0x0005]),
        )
        assert result is not None
        assert result["ieee"] == f"{CLIMATE:016x}" and result["units"] == {"temperature": "°C"}
        assert 17.0 <= result["values"]["temperature"] <= 26.0
        assert result["errors"] == {"0x0005": "unsupported_attribute"}
        meter = await driver.command(
            "read_attribute",
            ReadAttributeArgs(sensor=f"{METER:016x}", cluster=0x0702, attributes=[0x0301, 0x0302, 0x0000]),
        )
        assert meter is not None and meter["units"]["summation_delivered"] == "kWh"
        with pytest.raises(CommandRefused):
            await driver.command(
                "read_attribute", ReadAttributeArgs(sensor="nobody", cluster=6, attributes=[0])
            )
        with pytest.raises(CommandFailed, match="could not deliver to 0013a20041a7b2ff: address_not_found"):
            await driver.command(  # a sensor not on the network: the coordinator cannot deliver
                "read_attribute",
                ReadAttributeArgs(sensor=f"{LATE:016x}", cluster=0x0402, attributes=[0]),
            )
    # The read values also went out as reports.
    assert any(r["name"] == "temperature" and r["ieee"] == f"{CLIMATE:016x}" for r in reports(run))


async def test_commands_at_once_while_reports_flow(tmp_path: Path) -> None:
    async with coordinator(tmp_path, sim.SimOptions(interval_s=0.05, alarm_every_s=0.2)) as (
        simulator,
        driver,
        run,
    ):
        await run.until_events(ZIGBEE_REPORT, 20)
        reads = [
            driver.command(
                "read_attribute",
                ReadAttributeArgs(sensor=f"{ieee:016x}", cluster=0x0001, attributes=[0x0021]),
            )
            for ieee in (CLIMATE, DOOR, SMOKE)
        ]
        joins = [driver.command("permit_join", PermitJoinArgs(seconds=n)) for n in (10, 20)]
        results = await asyncio.gather(*reads, *joins)
        await run.until_events(ZIGBEE_JOINED)
    assert [r["values"]["battery_percentage"] for r in results[:3] if r] == [
        (180 - ieee % 40) / 2 for ieee in (CLIMATE, DOOR, SMOKE)
    ]
    assert results[3:] == [{"seconds": 10}, {"seconds": 20}]
    assert simulator.stats.at_commands["NJ"] == 2 and run.states()[:2] == ["network", "connected"]
    assert "disconnected" not in run.states()


async def test_a_command_before_the_coordinator_answers_is_refused(tmp_path: Path) -> None:
    driver = XbeeDriver("zb", XbeeOptions(port=str(tmp_path / "nothing")))
    with pytest.raises(CommandFailed, match="not connected"):
        await driver.command("permit_join", PermitJoinArgs(seconds=10))


@pytest.mark.parametrize("api_mode", [1, 2])
async def test_escaped_bytes_everywhere_in_either_api_mode(tmp_path: Path, api_mode: int) -> None:
    options = sim.SimOptions(interval_s=0.1, alarm_every_s=0.4, escapes=True, api_mode=api_mode)
    async with coordinator(tmp_path, options) as (simulator, _, run):
        await run.until("30 reports", lambda: len(reports(run)) >= 30)
        await run.until("an alarm", lambda: bool(run.data(ZIGBEE_ALARM)))
    assert set(simulator.nwk.values()) <= set(sim._ESCAPE_RICH)
    temperature = next(r for r in reports(run, CLIMATE) if r["name"] == "temperature")
    assert temperature["value"] == 0x137E / 100 and temperature["nwk"] == simulator.nwk[CLIMATE]
    humidity = next(r for r in reports(run, CLIMATE) if r["name"] == "humidity")
    assert humidity["value"] == 0x7D11 / 100
    assert run.counters().get(FRAMES_REJECTED, 0) == 0 and run.counters().get(BYTES_SKIPPED, 0) == 0


async def test_damage_on_the_line_is_counted_and_skipped(tmp_path: Path) -> None:
    faults = sim.Faults(noise=0.1, bad_checksum=0.1, truncate=0.1, mis_escape=0.1)
    options = sim.SimOptions(interval_s=0.05, alarm_every_s=0.3, escapes=True, faults=faults, seed=3)
    async with coordinator(tmp_path, options) as (simulator, _, run):
        await run.until(
            "damage counted and 100 reports through it",
            lambda: run.counters().get(FRAMES_REJECTED, 0) >= 5 and len(reports(run)) >= 100,
        )
        await simulator.wait_for(lambda s: s.corrupted >= 5)
    counters = run.counters()
    assert counters[BYTES_SKIPPED] > 0
    assert counters.get(DECODE_ERRORS, 0) == 0  # a damaged frame never reaches the decoder
    assert run.states() == ["network", "connected"]  # AT answers damaged on the way were asked again
    check_sent(run, simulator)


async def test_damaged_zcl_keeps_what_came_before_it(tmp_path: Path) -> None:
    async with coordinator(tmp_path, sim.SimOptions(interval_s=60, alarm_every_s=0)) as (simulator, _, run):
        await run.until_state("connected")
        before = len(reports(run))
        # A temperature, then a string that says 16 bytes with 2 left.
        await simulator.send_rx(CLIMATE, 0x0402, bytes.fromhex("18 05 0A 00 00 29 D2 09 01 00 42 10 41 42"))
        # A humidity, then an array (a type this codec cannot size).
        await simulator.send_rx(
            CLIMATE, 0x0405, bytes.fromhex("18 06 0A 00 00 21 10 27 05 00 48 20 02 00 01 02")
        )
        await simulator.send_rx(CLIMATE, 0x0402, bytes.fromhex("18"))  # a header cut short
        await simulator.send_rx(CLIMATE, 0x0500, bytes.fromhex("19 07 00 01"))  # a zone change cut short
        await run.until("4 decode errors", lambda: run.counters().get(DECODE_ERRORS, 0) >= 4)
        new = reports(run)[before:]
    assert [(r["name"], r["value"]) for r in new] == [("temperature", 25.14), ("humidity", 100.0)]
    assert not run.data(ZIGBEE_ALARM)


async def test_a_device_announce_alone_is_a_join(tmp_path: Path) -> None:
    async with coordinator(tmp_path, sim.SimOptions(interval_s=60, alarm_every_s=0)) as (simulator, _, run):
        await run.until_state("connected")
        _, announce = zdo.encode(zdo.DeviceAnnounce(7, 0x7E11, CLIMATE, 0x8E))  # a router, rejoining
        await simulator.send_rx(CLIMATE, zdo.ZdoCluster.DEVICE_ANNOUNCE, announce, profile=zdo.PROFILE)
        await run.until_events(ZIGBEE_JOINED)
        await simulator.send_rx(CLIMATE, zdo.ZdoCluster.DEVICE_ANNOUNCE, announce, profile=zdo.PROFILE)
        await simulator.send_rx(CLIMATE, 0x0402, bytes.fromhex("18 05 0A 00 00 29 D2 09"))
        await run.until("the report after the repeated announce", lambda: len(reports(run, CLIMATE)) >= 1)
    assert run.data(ZIGBEE_JOINED) == [
        {
            "ieee": f"{CLIMATE:016x}", "nwk": 0x7E11, "sensor": "plant-room-1", "via": "device_announce",
            "device_type": "router", "identifier": None, "parent": None, "capability": 0x8E,
        }
    ]  # fmt: skip
    assert reports(run, CLIMATE)[0]["nwk"] == simulator.nwk[CLIMATE]  # as its frames say


async def test_a_coordinator_reset_starts_over(tmp_path: Path) -> None:
    async with coordinator(tmp_path, sim.SimOptions(interval_s=0.2, alarm_every_s=0)) as (simulator, _, run):
        await run.until_state("connected")
        simulator.nvram["AO"] = b"\x00"  # as if AO=3 had never been saved: lost with the reset
        for link in list(simulator._links):
            await simulator.reset(link)
        await run.until_state("connected", 2)
        await run.until("reports after the reset", lambda: len(reports(run)) >= 5)
    assert run.counters()[COORDINATOR_RESETS] == 1
    assert run.states()[:4] == ["network", "connected", "disconnected", "network"]
    disconnected = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert "coordinator reset (modem status hardware_reset)" in disconnected["reason"]
    assert simulator.settings["AO"] == b"\x03" and simulator.stats.at_commands["WR"] == 2


async def test_periodic_resets_from_the_simulators_faults(tmp_path: Path) -> None:
    options = sim.SimOptions(interval_s=0.1, alarm_every_s=0, faults=sim.Faults(reset_every_s=0.5))
    async with coordinator(tmp_path, options) as (simulator, _, run):
        await run.until_state("connected", 3)
        await run.until("reports after the resets", lambda: len(reports(run)) >= 20)
    assert simulator.stats.resets >= 2 and run.counters()[COORDINATOR_RESETS] >= 2
    assert simulator.settings["AO"] == b"\x03"  # saved by the driver: it survives the resets


async def test_a_hung_coordinator_is_found_by_the_keepalive(tmp_path: Path) -> None:
    options = sim.SimOptions(interval_s=60, alarm_every_s=0)
    async with coordinator(tmp_path, options, keepalive_s=0.3, reply_timeout_s=0.2) as (simulator, _, run):
        await run.until_state("connected")
        simulator.silent = True
        await run.until_state("disconnected")
        simulator.silent = False
        await run.until_state("connected", 2)
    disconnected = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert disconnected["reason"] == "coordinator did not answer AT AI (3 attempts)"
    assert run.counters()[TIMEOUTS] >= 1


async def test_a_pulled_stick_is_retried(tmp_path: Path) -> None:
    async with coordinator(tmp_path, sim.SimOptions(interval_s=0.2, alarm_every_s=0)) as (simulator, _, run):
        await run.until_state("connected")
        await simulator.disconnect(downtime=0.2)
        await run.until_state("connected", 2)
    assert "disconnected" in run.states()
    assert simulator.stats.connections >= 2


# -- any frame at all: counted or reported, never a crash ------------------------------------------------

zcl_payloads = st.one_of(
    st.binary(max_size=40),
    st.tuples(
        st.sampled_from([0x08, 0x18, 0x19, 0x1C, 0x09]),
        st.integers(0, 255),
        st.sampled_from([0x00, 0x01, 0x07, 0x0A, 0x0B]),
        st.binary(max_size=40),
    ).map(lambda t: bytes((t[0],)) + (b"\x34\x12" if t[0] & 0x04 else b"") + bytes((t[1], t[2])) + t[3]),
)
clusters = st.sampled_from(
    [0x0000, 0x0001, 0x0006, 0x0402, 0x0403, 0x0405, 0x0406, 0x0500, 0x0702, 0x0B04, 0xFC00]
)
explicit_rx = st.builds(
    lambda ieee, cluster, profile, endpoint, payload: xbee_codec.encode_message(
        xbee_codec.ExplicitRx(ieee, 0x1234, endpoint, 1, cluster, profile, 1, payload)
    ),
    st.sampled_from([CLIMATE, DOOR, 0x0013A20041A7B2C3]),
    st.one_of(clusters, st.sampled_from([0x0013, 0x8021, 0x8036])),
    st.sampled_from([0x0104, 0x0000]),
    st.sampled_from([0, 1]),
    zcl_payloads,
)
any_frames = st.one_of(
    explicit_rx,
    st.builds(
        xbee_codec.Frame, st.sampled_from([0x88, 0x8A, 0x8B, 0x90, 0x95, 0xA1]), st.binary(max_size=40)
    ),
)


def test_any_frame_is_counted_or_reported_never_a_crash() -> None:
    """Arbitrary frames (ZCL that lies, unknown types and commands, ZDO, statuses, garbage payloads) through
    a session on a real pty link: each is counted or reported, every event is JSON, nothing raises but a
    coordinator reset's CoordinatorReset."""
    loop = asyncio.new_event_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    link = loop.run_until_complete(open_serial(os.ttyname(slave), 9600))
    options = XbeeOptions.model_validate({"port": "/dev/null", "sensors": NAMES})

    async def play(frames: list[xbee_codec.Frame]) -> None:
        events: list[Event] = []
        ctx = DeviceUnderTest("zb", lambda: XbeeDriver("zb", options), events.append)
        session = _Session(link, options, ctx)
        for frame in frames:
            try:
                session.handle(frame)
            except CoordinatorReset:
                assert frame.frame_type == xbee_codec.FrameType.MODEM_STATUS
        for task in list(session._tasks):
            task.cancel()
        for event in events:
            encode(dict(event.data))  # every event is JSON
            if event.kind == ZIGBEE_REPORT:
                assert len(event.data["ieee"]) == 16 and isinstance(event.data["attribute"], int)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(frames=st.lists(any_frames, max_size=12))
    def check(frames: list[xbee_codec.Frame]) -> None:
        loop.run_until_complete(play(frames))

    try:
        check()
    finally:
        link.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        os.close(master)
        os.close(slave)


def test_the_driver_declares_its_kinds_and_commands() -> None:
    assert XbeeDriver.emits == {ZIGBEE_REPORT, ZIGBEE_ALARM, ZIGBEE_JOINED, DEVICE_STATUS}
    assert set(XbeeDriver.commands) == {"permit_join", "read_attribute"}
