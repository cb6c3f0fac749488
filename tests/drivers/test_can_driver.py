"""The can driver end to end: python-can's ``virtual`` interface (a second python-can bus on the same channel
plays the vehicle's ECUs), and the slcan simulator on a real pty read through python-can's own slcan
interface. Waits are on events and counters, never on time."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
from pydantic import ValidationError

from drivers import interfaces
from drivers.can import (
    DEFAULT_RULE,
    ERROR_FRAMES,
    OUT_OF_RANGE,
    TP_ABORTED,
    TP_REPLACED,
    CanDriver,
    CanOptions,
)
from drivers.commands import CommandRefused
from drivers.counters import DECODE_ERRORS
from drivers.kinds import CAN_FRAME, CAN_SIGNALS, J1939_DM1, J1939_PGN
from drivers.testing import CONNECTED, running
from firmware_sim import can as can_sim
from firmware_sim.can import Faults, SimOptions
from firmware_sim.pty import PtyEndpoint
from protocols import j1939

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
DBC = EXAMPLES / "special-vehicle.dbc"
EVERY: dict[str, Any] = {"default": {}}
"""Rate control off: every value heard is reported."""
_channels = itertools.count()


@pytest.fixture
def channel() -> str:
    return f"edgegw-test-{next(_channels)}"


@pytest.fixture
def ecu(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


def options(channel: str, **extra: Any) -> CanOptions:
    raw: dict[str, Any] = {"interface": "virtual", "channel": channel, "j1939": True, "report": EVERY}
    raw.update(extra)
    return CanOptions.model_validate(raw)


def send(bus: can.BusABC, arbitration_id: int, data: bytes, *, extended: bool = True) -> None:
    bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=extended))


def pgn_frame(pgn: int, source: int, values: dict[str, Any], priority: int = 6) -> tuple[int, bytes]:
    return j1939.can_id(pgn, source, priority=priority), j1939.PGNS[pgn].encode(values)


async def test_j1939_pgns_are_decoded_with_units_and_unavailable_values_left_out(
    channel: str, ecu: can.BusABC
) -> None:
    async with running({"tap": lambda: CanDriver("tap", options(channel))}) as run:
        await run.until_state(CONNECTED)
        send(ecu, *pgn_frame(65265, 0x00, {"wheel_based_vehicle_speed": 42.5, "parking_brake_switch": 0}))
        send(ecu, *pgn_frame(61444, 0x00, {"engine_speed": 1234.5}))
        send(ecu, *pgn_frame(65262, 0x00, {"engine_coolant_temperature": 85}))
        send(ecu, *pgn_frame(65266, 0x00, {"fuel_rate": 12.35}))
        send(ecu, *pgn_frame(65276, 0x17, {"fuel_level_1": 63.2}))
        send(ecu, *pgn_frame(65248, 0x17, {"total_vehicle_distance": 182340.125}))
        send(ecu, *pgn_frame(65253, 0x00, {"engine_total_hours": 6512.35}))
        await run.until_events(J1939_PGN, 7)
    by_name = {d["name"]: d for d in run.data(J1939_PGN)}
    ccvs = by_name["CCVS"]
    assert ccvs["pgn"] == 65265 and ccvs["source"] == 0 and ccvs["destination"] is None
    assert ccvs["values"] == {"wheel_based_vehicle_speed": 42.5, "parking_brake_switch": 0}
    assert ccvs["units"] == {"wheel_based_vehicle_speed": "km/h"}
    assert by_name["EEC1"]["values"] == {"engine_speed": 1234.5}
    assert by_name["ET1"]["values"] == {"engine_coolant_temperature": 85}
    assert by_name["ET1"]["units"] == {"engine_coolant_temperature": "°C"}
    assert by_name["LFE"]["values"] == {"fuel_rate": 12.35}
    assert by_name["DD"]["values"] == {"fuel_level_1": 63.2} and by_name["DD"]["source"] == 0x17
    assert by_name["VD"]["values"] == {"total_vehicle_distance": 182340.125}
    assert by_name["HOURS"]["values"] == {"engine_total_hours": 6512.35}
    json.dumps(run.data(J1939_PGN))  # the data is JSON as it is


async def test_bam_and_rts_cts_are_reassembled_and_dm1_is_emitted_on_change(
    channel: str, ecu: can.BusABC
) -> None:
    opts = options(channel, dm1_repeat_s=3600)
    codes = [j1939.Dtc(110, 0, 1), j1939.Dtc(96, 18, 2)]
    lamps = j1939.Lamps(False, False, True, False)
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)
        for cid, data in j1939.bam_frames(j1939.DM1, 0x00, j1939.encode_dm1(lamps, codes)):
            send(ecu, cid, data)
        await run.until_events(J1939_DM1, 1)
        # the same codes again: no event; one code cleared: an event
        send(ecu, j1939.can_id(j1939.DM1, 0x00), j1939.encode_dm1(lamps, codes[:1]))
        send(ecu, j1939.can_id(j1939.DM1, 0x00), j1939.encode_dm1(lamps, codes[:1]))
        await run.until_events(J1939_DM1, 2)
        vin = j1939.PGNS[65260].encode({"vehicle_identification_number": "LZYTBGBW5K1000123"})
        for cid, data in j1939.rts_cts_frames(65260, 0x00, 0xF9, vin, window=2):
            send(ecu, cid, data)
        await run.until_events(J1939_PGN, 1)
        send(ecu, j1939.can_id(j1939.DM1, 0x00), j1939.encode_dm1(lamps, []))
        await run.until_events(J1939_DM1, 3)
    first, second, third = run.data(J1939_DM1)
    assert first["source"] == 0 and first["amber_warning"] is True and first["red_stop"] is False
    assert first["dtcs"] == [{"spn": 110, "fmi": 0, "occurrence": 1}, {"spn": 96, "fmi": 18, "occurrence": 2}]
    assert second["dtcs"] == [{"spn": 110, "fmi": 0, "occurrence": 1}]
    assert third["dtcs"] == []
    (vi,) = run.data(J1939_PGN)
    assert vi["name"] == "VI" and vi["source"] == 0 and vi["destination"] == 0xF9
    assert vi["values"] == {"vehicle_identification_number": "LZYTBGBW5K1000123"}


async def test_dm1_is_repeated_while_a_code_is_active(channel: str, ecu: can.BusABC) -> None:
    opts = options(channel, dm1_repeat_s=0.05)
    dm1 = j1939.encode_dm1(j1939.Lamps(True, False, False, False), [j1939.Dtc(190, 2, 1)])
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)

        def resend() -> bool:
            send(ecu, j1939.can_id(j1939.DM1, 0x00), dm1)
            return len(run.of(J1939_DM1)) >= 3

        await run.until("three DM1 events of one unchanged code", resend)
    assert all(d["dtcs"] == [{"spn": 190, "fmi": 2, "occurrence": 1}] for d in run.data(J1939_DM1))


async def test_transport_faults_are_counted(channel: str, ecu: can.BusABC) -> None:
    payload = bytes(range(30))
    async with running({"tap": lambda: CanDriver("tap", options(channel))}) as run:
        await run.until_state(CONNECTED)
        first = j1939.bam_frames(65260, 0x21, payload)
        for cid, data in first[:3]:  # a BAM cut short by a second BAM of the same source
            send(ecu, cid, data)
        for cid, data in j1939.rts_cts_frames(65260, 0x22, 0x30, payload)[:3]:
            send(ecu, cid, data)
        send(ecu, *j1939.abort_frame(65260, 0x30, 0x22))
        for cid, data in first:
            send(ecu, cid, data)
        await run.until("a replaced and an aborted session", lambda: run.counters("tap").get(TP_ABORTED) == 1)
        await run.until_events(J1939_PGN, 1)
    assert run.counters("tap")[TP_REPLACED] == 1
    assert len(run.data(J1939_PGN)) == 1  # the second BAM, whole


async def test_dbc_signals_with_the_source_address_masked_and_out_of_range_left_out(
    channel: str, ecu: can.BusABC
) -> None:
    db = cantools.database.load_file(str(DBC))
    assert isinstance(db, cantools.database.can.Database)
    body = db.get_message_by_name("CargoBody")
    tank = db.get_message_by_name("TankStatus")
    opts = options(channel, j1939=False, dbc=str(DBC))
    async with running({"dbc": lambda: CanDriver("dbc", opts)}) as run:
        await run.until_state(CONNECTED)
        data = body.encode(
            {
                "RearDoorState": 1,
                "SideHatchState": 0,
                "LiftArmPosition": 50,
                "BodyInterlockActive": 1,
                "SpillSensorWet": 0,
                "DrumsOnBoard": 12,
            }
        )
        send(ecu, (body.frame_id & ~0xFF) | 0x33, data)  # another source address than the DBC's
        raw = bytearray(
            tank.encode(
                {
                    "TankLevel": 55.5,
                    "TankPressure": 1.25,
                    "TankTemperature": 20,
                    "TankValveState": 0,
                    "OverfillAlarm": 0,
                }
            )
        )
        raw[0:2] = (1500).to_bytes(2, "little")  # 150.0 % > the signal's maximum
        send(ecu, tank.frame_id, bytes(raw))
        send(ecu, body.frame_id, data[:3])  # too short for its signals
        await run.until_events(CAN_SIGNALS, 2)
        await run.until("a decode error", lambda: run.counters("dbc").get(DECODE_ERRORS, 0) == 1)
    cargo, tank_event = run.data(CAN_SIGNALS)
    assert cargo["message"] == "CargoBody" and cargo["source"] == 0x33
    assert cargo["signals"] == {
        "RearDoorState": "open",
        "SideHatchState": "closed",
        "LiftArmPosition": 50.0,
        "BodyInterlockActive": 1,
        "SpillSensorWet": 0,
        "DrumsOnBoard": 12,
    }
    assert cargo["units"] == {"LiftArmPosition": "%", "DrumsOnBoard": "drums"}
    assert "TankLevel" not in tank_event["signals"] and tank_event["signals"]["TankPressure"] == 1.25
    assert run.counters("dbc")[OUT_OF_RANGE] == 1


async def test_raw_frames_filters_and_bad_frames(channel: str, ecu: can.BusABC) -> None:
    opts = options(
        channel, j1939=False, raw_frames=True, filters=[{"id": 0x100, "mask": 0x7F0, "extended": False}]
    )
    async with running({"raw": lambda: CanDriver("raw", opts)}) as run:
        await run.until_state(CONNECTED)
        send(ecu, 0x205, b"\x01", extended=False)  # filtered out
        send(ecu, 0x10F, b"\x01\x02", extended=False)
        ecu.send(can.Message(arbitration_id=0x101, data=b"\x01\x02", dlc=5, is_extended_id=False))
        ecu.send(can.Message(arbitration_id=0x101, is_error_frame=True, is_extended_id=False))
        await run.until_events(CAN_FRAME, 1)
        await run.until("a decode error", lambda: run.counters("raw").get(DECODE_ERRORS, 0) == 1)
        await run.until("an error frame", lambda: run.counters("raw").get(ERROR_FRAMES, 0) == 1)
    assert run.data(CAN_FRAME) == [{"id": 0x10F, "extended": False, "dlc": 2, "data": "0102"}]


async def test_rate_control_per_signal(channel: str, ecu: can.BusABC) -> None:
    report = {
        "default": {"report_on_change": True},
        "pgns": {"CCVS": {"deadband": 5}},
        "signals": {"parking_brake_switch": {}},
    }
    opts = options(channel, report=report)
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)
        for speed in (10.0, 12.0, 14.0, 16.0):  # 16 is more than 5 from 10
            send(ecu, *pgn_frame(65265, 0, {"wheel_based_vehicle_speed": speed, "parking_brake_switch": 0}))
        await run.until("four CCVS", lambda: len(run.of(J1939_PGN)) == 4)
    speeds = [d["values"].get("wheel_based_vehicle_speed") for d in run.data(J1939_PGN)]
    assert speeds == [10.0, None, None, 16.0]
    assert all(d["values"]["parking_brake_switch"] == 0 for d in run.data(J1939_PGN))  # every value


async def test_two_devices_share_one_reader(channel: str, ecu: can.BusABC) -> None:
    tap = options(channel)
    body = options(channel, j1939=False, dbc=str(DBC))
    async with running(
        {"tap": lambda: CanDriver("tap", tap), "body": lambda: CanDriver("body", body)}
    ) as run:
        await run.until("both connected", lambda: run.states("tap") == run.states("body") == [CONNECTED])
        (interface,) = [i for k, i in interfaces.interfaces().items() if channel in k]
        assert sorted(interface.devices) == ["body", "tap"]
        send(ecu, *pgn_frame(65265, 0, {"wheel_based_vehicle_speed": 30}))
        send(ecu, 0x0CFF0021, bytes(8))
        await run.until_events(J1939_PGN, 1)
        await run.until_events(CAN_SIGNALS, 1)
        assert interface.stats.frames_read == 2


async def test_transmit_only_when_not_listen_only(channel: str, ecu: can.BusABC) -> None:
    quiet = options(channel)
    loud = options(f"{channel}-tx", listen_only=False)
    peer = can.Bus(interface="virtual", channel=f"{channel}-tx")
    try:
        async with running(
            {"quiet": lambda: CanDriver("quiet", quiet), "loud": lambda: CanDriver("loud", loud)}
        ) as run:
            await run.until(
                "both connected", lambda: run.states("quiet") == run.states("loud") == [CONNECTED]
            )
            with pytest.raises(CommandRefused):
                await run.device_named("quiet").command("transmit", {"id": 0x18EA00F9, "data": "ECFE00"})
            result = await run.device_named("loud").command("transmit", {"id": 0x18EA00F9, "data": "ECFE00"})
            assert result == {"id": 0x18EA00F9, "extended": True, "data": "ecfe00"}
            heard = peer.recv(5)
            assert (
                heard is not None
                and heard.arbitration_id == 0x18EA00F9
                and bytes(heard.data) == b"\xec\xfe\x00"
            )
    finally:
        peer.shutdown()


def test_options_are_checked_before_anything_opens(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="nothing to decode"):
        CanOptions.model_validate({"interface": "virtual", "channel": "x"})
    with pytest.raises(ValidationError, match="slcan adapter sets one of"):
        CanOptions.model_validate(
            {"interface": "slcan", "channel": "/dev/ttyACM0", "bitrate": 300000, "j1939": True}
        )
    with pytest.raises(ValidationError, match="unknown PGN 'XYZ'"):
        CanOptions.model_validate(
            {"interface": "virtual", "channel": "x", "j1939": True, "report": {"pgns": {"XYZ": {}}}}
        )
    bad = tmp_path / "bad.dbc"
    bad.write_text(DBC.read_text().replace("(0.1,0) [0|100]", "(0.1,0 [0|100]"))
    with pytest.raises(ValidationError, match=r"bad\.dbc:16: not a valid DBC file"):
        CanOptions.model_validate({"interface": "virtual", "channel": "x", "dbc": str(bad)})
    defaults = CanOptions.model_validate({"interface": "slcan", "channel": "/dev/ttyACM0", "j1939": True})
    assert defaults.listen_only is True and defaults.raw_frames is False and defaults.bitrate == 250000
    assert defaults.report.default == DEFAULT_RULE


# -- through the slcan simulator, on a pty, with python-can's slcan interface -----------------------------


def slcan_options(link: Path, **extra: Any) -> CanOptions:
    raw: dict[str, Any] = {"interface": "slcan", "channel": str(link), "j1939": True, "open_delay_s": 0}
    raw.update(extra)
    return CanOptions.model_validate(raw)


async def test_city_bus_drive_through_the_slcan_simulator(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    sim_options = SimOptions(time_scale=20, faults=Faults(garbage=0.02, bad_dlc=0.02, bel=0.02))
    opts = slcan_options(link, report={"default": {"report_on_change": True}})
    async with (
        can_sim.serve_pty(link, sim_options) as sim,
        running({"bus": lambda: CanDriver("bus", opts)}) as run,
    ):
        await run.until_state(CONNECTED)
        await run.until(
            "DM1 with two codes (a BAM) and the VIN (RTS/CTS)",
            lambda: (
                any(len(d["dtcs"]) == 2 for d in run.data(J1939_DM1))
                and any(d["name"] == "VI" for d in run.data(J1939_PGN))
            ),
        )
        await run.until("a decode error", lambda: run.counters("bus").get(DECODE_ERRORS, 0) > 0)
    assert sim.stats.listen_only and sim.stats.bitrate == 250000
    names = {d["name"] for d in run.data(J1939_PGN)}
    assert {"EEC1", "CCVS", "LFE", "DC1", "VI"} <= names
    doors = [d["values"]["position_of_doors"] for d in run.data(J1939_PGN) if d["name"] == "DC1"]
    assert doors[0] in (0, 2)


async def test_an_unplugged_adapter_is_reopened(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    opts = slcan_options(link)
    async with (
        can_sim.serve_pty(link, SimOptions()) as sim,
        running({"bus": lambda: CanDriver("bus", opts)}) as run,
    ):
        await run.until_events(J1939_PGN, 1)
        await sim.disconnect()
        await run.until("reconnected", lambda: run.states("bus")[-2:] == ["disconnected", CONNECTED])
        seen = len(run.of(J1939_PGN))
        await run.until("events again", lambda: len(run.of(J1939_PGN)) > seen)
    assert sim.stats.opens == 2


def test_edgegw_check_names_the_config_line_and_the_dbc_line(tmp_path: Path) -> None:
    """``dbc:`` is relative to the file that names the device (here a device file in devices.d), and a DBC
    that does not parse is refused by ``edgegw check`` with both places."""
    devices = tmp_path / "devices.d"
    devices.mkdir()
    (devices / "truck.dbc").write_text(DBC.read_text().replace("(0.1,0) [0|100]", "(0.1,0 [0|100]"))
    (devices / "good.dbc").write_text(DBC.read_text())
    (devices / "chassis.yaml").write_text(
        "name: chassis\ndriver: can\ninterface: slcan\nchannel: /dev/ttyACM0\ndbc: truck.dbc\n"
    )
    (devices / "body.yaml").write_text(
        "name: body\ndriver: can\ninterface: virtual\nchannel: x\ndbc: good.dbc\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: gw}}\nbuffer: {{path: {tmp_path / 'buffer.db'}}}\n"
        "upstream: {mqtt: {url: mqtt://127.0.0.1:1}}\ndevices_dir: devices.d\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout
    (problem,) = done.stderr.strip().splitlines()
    assert problem.startswith(f"{devices / 'chassis.yaml'}:5: dbc: "), problem
    assert f"{devices / 'truck.dbc'}:16: not a valid DBC file" in problem


async def test_a_frame_behind_a_refused_one_in_the_same_chunk_is_not_held_back(tmp_path: Path) -> None:
    """The slcan bus reads whole chunks: a line the bus filter refuses must not leave the next line of the
    chunk waiting for more bytes from a quiet bus."""
    link = tmp_path / "ttyCAN"
    endpoint = PtyEndpoint(link)
    endpoint.open()
    try:
        opts = slcan_options(link, j1939=False, raw_frames=True, filters=[{"id": 0x100, "extended": False}])
        async with running({"raw": lambda: CanDriver("raw", opts)}) as run:
            await run.until_state(CONNECTED)
            # a reply, a BEL, a frame the filter refuses, one it keeps: one chunk, then silence
            await endpoint.write(b"\r\x07t2001AA\rt1001BB\r")
            await run.until_events(CAN_FRAME, 1)
        assert run.data(CAN_FRAME) == [{"id": 0x100, "extended": False, "dlc": 1, "data": "bb"}]
    finally:
        endpoint.close()


async def test_an_slcan_adapter_behind_a_serial_to_ethernet_converter() -> None:
    """pyserial's socket:// URL as the channel: python-can's slcan talks to the simulator over TCP."""
    async with can_sim.serve_tcp("127.0.0.1", 0, SimOptions()) as sim:
        opts = CanOptions.model_validate(
            {
                "interface": "slcan",
                "channel": f"socket://127.0.0.1:{sim.port}",
                "j1939": True,
                "open_delay_s": 0,
            }
        )
        async with running({"tcp": lambda: CanDriver("tcp", opts)}) as run:
            await run.until_events(J1939_PGN, 3)
        assert run.states() == [CONNECTED] and sim.stats.listen_only
