"""The simulated XBee coordinator as a stranger meets it: digi-xbee (Digi's own Python library, the field's
client) opens it on a real pty, reads its settings, receives the sensors' explicit RX frames and modem
statuses, and sends explicit addressing commands that the simulated sensors answer; in API modes 2 and 1.
And the simulator's own controls: joining, faults, the command line.

digi-xbee is blocking and threaded: its calls run in a worker thread (asyncio.to_thread) while the
simulator runs in the test's event loop."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from digi.xbee.devices import RemoteZigBeeDevice, ZigBeeDevice  # type: ignore[import-untyped]
from digi.xbee.exception import TimeoutException, TransmitException  # type: ignore[import-untyped]
from digi.xbee.models.address import XBee64BitAddress  # type: ignore[import-untyped]
from digi.xbee.models.mode import OperatingMode  # type: ignore[import-untyped]
from digi.xbee.models.protocol import XBeeProtocol  # type: ignore[import-untyped]
from digi.xbee.models.status import ModemStatus, TransmitStatus  # type: ignore[import-untyped]

from firmware_sim import xbee as sim
from protocols import xbee
from tests.firmware_sim.clients import over_pty
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)

CLIMATE, DOOR = 0x0013A20041A7B200, 0x0013A20041A7B201
LATE = 0x0013A20041A7B2FF
EDGEGW = str(Path(sys.executable).with_name("edgegw"))


@asynccontextmanager
async def digi_on(path: Path, options: sim.SimOptions) -> AsyncIterator[tuple[sim.XBeeSimulator, Any]]:
    async with sim.serve_pty(path, options) as simulator:
        device = ZigBeeDevice(str(path), 9600)
        await asyncio.to_thread(device.open)
        try:
            yield simulator, device
        finally:
            await asyncio.to_thread(device.close)


async def explicit_from(device: Any, ieee: int, cluster: int, limit: int = 200) -> Any:
    """The next explicit RX message from ``ieee`` on ``cluster`` that digi receives."""
    for _ in range(limit):
        try:
            message = await asyncio.to_thread(device.read_expl_data, 10)
        except TimeoutException:
            break
        if message is None:
            continue
        sender = message.remote_device.get_64bit_addr()
        if sender == XBee64BitAddress.from_hex_string(f"{ieee:016X}") and message.cluster_id == cluster:
            return message
    raise AssertionError(f"no frame from {ieee:016x} on cluster 0x{cluster:04x}")


@pytest.mark.parametrize("api_mode", [2, 1])
async def test_digi_xbee_opens_the_coordinator_and_reads_the_sensors(tmp_path: Path, api_mode: int) -> None:
    options = sim.SimOptions(interval_s=0.1, alarm_every_s=0, api_mode=api_mode)
    async with digi_on(tmp_path / "ttyXBee", options) as (simulator, device):
        # What digi-xbee learned while opening: mode, protocol, addresses, identifier, firmware.
        mode = OperatingMode.ESCAPED_API_MODE if api_mode == 2 else OperatingMode.API_MODE
        assert device.operating_mode == mode
        assert device.get_protocol() == XBeeProtocol.ZIGBEE
        assert str(device.get_64bit_addr()) == f"{sim.COORDINATOR_IEEE:016X}"
        assert device.get_node_id() == "EDGEGW-SIM"
        assert device.get_firmware_version() == bytearray.fromhex("4061")
        assert await asyncio.to_thread(device.get_parameter, "CH") == bytearray(b"\x0f")
        assert await asyncio.to_thread(device.get_parameter, "OP") == bytearray(
            sim.EXTENDED_PAN.to_bytes(8, "big")
        )
        # Explicit RX indicators need AO=1 (or 3): set and saved the way digi-xbee does it.
        await asyncio.to_thread(device.set_api_output_mode_value, 3)
        await asyncio.to_thread(device.write_changes)
        assert simulator.nvram["AO"] == b"\x03"
        message = await explicit_from(device, CLIMATE, 0x0402)
        assert (message.source_endpoint, message.profile_id) == (1, 0x0104)
        # The ZCL frame decoded by hand, as a stranger would: global report, one int16 attribute 0x0000.
        frame_control, _, command, attribute, data_type, value = struct.unpack("<BBBHBh", bytes(message.data))
        assert (frame_control & 0x03, command, attribute, data_type) == (0, 0x0A, 0x0000, 0x29)
        assert (CLIMATE, 0x0402, 0, value) in simulator.sent and -500 <= value <= 6000


async def test_digi_xbee_sends_a_read_and_a_sensor_answers(tmp_path: Path) -> None:
    options = sim.SimOptions(interval_s=60, alarm_every_s=0)
    async with digi_on(tmp_path / "ttyXBee", options) as (simulator, device):
        await asyncio.to_thread(device.set_api_output_mode_value, 3)
        remote = RemoteZigBeeDevice(device, XBee64BitAddress.from_hex_string(f"{CLIMATE:016X}"))
        read = bytes.fromhex("00 42 00 00 00")  # ZCL read attributes, sequence 0x42, attribute 0x0000
        status = await asyncio.to_thread(device.send_expl_data, remote, read, 1, 1, 0x0402, 0x0104)
        assert status.transmit_status == TransmitStatus.SUCCESS
        message = await explicit_from(device, CLIMATE, 0x0402)
        frame_control, sequence, command, attribute, result, data_type, value = struct.unpack(
            "<BBBHBBh", bytes(message.data)
        )
        assert (sequence, command, attribute, result, data_type) == (0x42, 0x01, 0, 0, 0x29)
        assert frame_control & 0x08  # server to client
        assert simulator.stats.reads == 1 and (CLIMATE, 0x0402, 0, value) in simulator.sent
        # A node not on the network: the coordinator says so in the transmit status.
        absent = RemoteZigBeeDevice(device, XBee64BitAddress.from_hex_string(f"{LATE:016X}"))
        with pytest.raises(TransmitException) as caught:
            await asyncio.to_thread(device.send_expl_data, absent, read, 1, 1, 0x0402, 0x0104)
        assert caught.value.status == TransmitStatus.ADDRESS_NOT_FOUND


async def test_digi_xbee_hears_a_coordinator_reset_and_a_join(tmp_path: Path) -> None:
    options = sim.SimOptions(interval_s=60, alarm_every_s=0)
    async with digi_on(tmp_path / "ttyXBee", options) as (simulator, device):
        statuses: list[Any] = []
        device.add_modem_status_received_callback(statuses.append)
        await asyncio.to_thread(device.set_api_output_mode_value, 3)
        await asyncio.to_thread(device.set_parameter, "NJ", bytearray(b"\x3c"))
        await asyncio.to_thread(device.apply_changes)
        await simulator.wait_for(lambda s: s.joins >= 1)
        announce = await explicit_from(device, LATE, 0x0013)
        assert announce.source_endpoint == 0 and announce.profile_id == 0
        ieee = int.from_bytes(bytes(announce.data)[3:11], "little")
        assert ieee == LATE
        for link in list(simulator._links):
            await simulator.reset(link)
        await simulator.wait_for(lambda s: s.resets >= 1)
        await until(
            "digi-xbee heard the coordinator start", lambda: ModemStatus.COORDINATOR_STARTED in statuses
        )
    assert ModemStatus.HARDWARE_RESET in statuses and ModemStatus.COORDINATOR_STARTED in statuses
    assert simulator.settings["AO"] == b"\x00"  # AO=3 was not written: the reset lost it


async def test_faults_damage_frames_as_configured(tmp_path: Path) -> None:
    faults = sim.Faults(bad_checksum=0.2, truncate=0.2, mis_escape=0.2, noise=0.2)
    options = sim.SimOptions(interval_s=0.02, alarm_every_s=0.1, faults=faults, escapes=True)
    async with sim.serve_pty(tmp_path / "tty", options) as simulator:

        class Host:
            def __init__(self, client: Any) -> None:
                self.client = client

        async with over_pty(tmp_path / "tty", Host) as host:
            framer = xbee.XBeeFramer()
            raw = xbee.encode_frame(xbee.encode_message(xbee.AtCommand(1, "AO", b"\x03")))
            await host.client.write(raw)
            frames: list[xbee.Frame] = []
            async with asyncio.timeout(20):
                while simulator.stats.corrupted < 20 or len(frames) < 50:
                    frames += framer.feed(await host.client.read())
    stats = framer.stats
    assert stats.bad_checksum and stats.truncated and stats.bad_escape and stats.bytes_skipped
    messages = [xbee.parse_message(frame) for frame in frames]
    assert any(isinstance(m, xbee.ExplicitRx) and m.source64 == DOOR for m in messages)
    assert simulator.stats.noise_bytes > 0


async def test_the_load_mode_offers_its_rate_of_valid_reports(tmp_path: Path) -> None:
    options = sim.SimOptions(rate=2000, alarm_every_s=0)
    async with sim.serve_pty(tmp_path / "tty", options) as simulator:

        class Host:
            def __init__(self, client: Any) -> None:
                self.client = client

        async with over_pty(tmp_path / "tty", Host) as host:
            framer = xbee.XBeeFramer()
            frames: list[xbee.Frame] = []
            async with asyncio.timeout(20):
                while len(frames) < 1000:
                    frames += framer.feed(await host.client.read())
    assert framer.stats.bytes_skipped == 0 and simulator.stats.reports >= 1000
    sources = {m.source64 for m in map(xbee.parse_message, frames) if isinstance(m, xbee.RxPacket)}  # AO=0
    assert sources == {s.ieee for s in sim.DEFAULT_SENSORS if s.joined}


def test_fault_specs_and_sensors_on_the_command_line() -> None:
    assert sim.parse_faults(["bad-checksum=0.1,truncate=0.2", "reset=30"]) == sim.Faults(
        bad_checksum=0.1, truncate=0.2, reset_every_s=30
    )
    for bad in (["bad-checksum=2"], ["reset=0"], ["loud=0.1"], ["truncate"]):
        with pytest.raises(ValueError, match="fault"):
            sim.parse_faults(bad)
    assert sim._sensor(f"door={DOOR:016x}:later") == sim.SimSensor(DOOR, "door", joined=False)
    with pytest.raises(Exception, match="KIND=IEEE"):
        sim._sensor("lamp=0013a20041a7b201")


async def test_edgegw_sim_xbee_serves_a_pty(tmp_path: Path) -> None:
    link = tmp_path / "ttyXBee"
    child = await asyncio.create_subprocess_exec(
        *(EDGEGW, "sim", "xbee", "--link", str(link), "--sensor", f"climate={CLIMATE:016x}"),
        stdout=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            line = (await child.stdout.readline()).decode()
        assert line.startswith("xbee simulator (coordinator 0013a20041000001, 1 sensors) on pty ")
        device = ZigBeeDevice(str(link), 9600)
        await asyncio.to_thread(device.open)
        try:
            assert str(device.get_64bit_addr()) == "0013A20041000001"
        finally:
            await asyncio.to_thread(device.close)
    finally:
        child.terminate()
        assert await child.wait() == 0
