"""The uhf-r2000 driver's commands (set_power, inventory, read) against the simulated reader on a real
pseudo-terminal and a real TCP socket, run as the gateway runs a device (drivers.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.commands import CommandFailed, CommandRefused
from drivers.errors import DeviceTimeout
from drivers.kinds import RFID_READ
from drivers.r2000 import R2000Options, UhfR2000Driver
from drivers.testing import CONNECTED, Harness, running
from firmware_sim.r2000 import SimOptions, serve_pty, serve_tcp
from protocols import r2000

pytestmark = pytest.mark.timeout(60)

NAMES = {1: "lane1-in", 2: "lane1-out"}


@asynccontextmanager
async def reader(**options: Any) -> AsyncIterator[Harness]:
    opts = R2000Options(**{"antennas": NAMES, **options})
    async with running({"reader": lambda: UhfR2000Driver("reader", opts)}) as run:
        await run.until_state(CONNECTED)
        yield run


async def test_set_power_for_every_antenna_then_for_one(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(antennas=(1, 2))) as sim,
        reader(port=str(tmp_path / "tty")) as run,
    ):
        assert await run.command(None, "set_power", {"dbm": 26}) == {"power_dbm": {"1": 26, "2": 26}}
        assert sim.powers == [26] * 8
        # One antenna: the others keep their power (read first with 0x77, then set per port with 0x76).
        assert await run.command(None, "set_power", {"antennas": {"2": 18}}) == {
            "power_dbm": {"1": 26, "2": 18}
        }
        assert sim.powers[:4] == [26, 18, 26, 26]
        await run.until_events(RFID_READ, 50)  # the inventory went on around the commands
    assert sim.stats.by_command[r2000.Command.SET_OUTPUT_POWER] == 2


async def test_set_power_refusals_reach_nothing(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(antennas=(1, 2))) as sim,
        reader(port=str(tmp_path / "tty")) as run,
    ):
        with pytest.raises(CommandRefused, match="antenna 3 is not configured"):
            await run.command(None, "set_power", {"antennas": {"3": 20}})
        for bad in ({"dbm": 34}, {"dbm": -1}, {"dbm": "30"}, {}, {"dbm": 30, "antennas": {"1": 30}}):
            with pytest.raises(ValidationError):
                await run.command(None, "set_power", bad)
        await run.until_events(RFID_READ, 20)
    assert sim.stats.by_command[r2000.Command.SET_OUTPUT_POWER] == 0
    assert sim.stats.by_command[r2000.Command.GET_OUTPUT_POWER] == 0
    assert sim.powers == [30] * 8


async def test_inventory_stops_and_starts() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(antennas=(1, 2), rate=2000)) as sim,
        reader(host="127.0.0.1", tcp_port=sim.port, read_timeout_s=0.4) as run,
    ):
        await run.until_events(RFID_READ, 20)
        assert await run.command(None, "inventory", {"action": "stop"}) == {"inventory": "stopped"}
        rounds = sim.stats.rounds
        reads = len(run.of(RFID_READ))
        # Stopped: no inventory reaches the reader, yet the session goes on (the reader asked now and then).
        asked = sim.stats.by_command[r2000.Command.GET_FIRMWARE_VERSION]
        await sim.wait_for(lambda s: s.by_command[r2000.Command.GET_FIRMWARE_VERSION] >= asked + 3)
        assert sim.stats.rounds == rounds
        assert len(run.of(RFID_READ)) == reads
        assert run.device.state == CONNECTED
        assert await run.command(None, "inventory", {"action": "start"}) == {"inventory": "running"}
        await run.until_events(RFID_READ, reads + 20)
    assert run.device.restarts == 0


async def test_read_is_one_round_with_its_tags_in_data(tmp_path: Path) -> None:
    epcs = tuple(bytes.fromhex(f"3008{i:020X}") for i in range(5))
    async with (
        serve_pty(tmp_path / "tty", SimOptions(epcs=epcs, antennas=(1, 2), rate=2000)) as sim,
        reader(port=str(tmp_path / "tty")) as run,
    ):
        await run.command(None, "inventory", {"action": "stop"})
        reads_before = len(run.of(RFID_READ))
        rounds = sim.stats.rounds
        data = await run.command(None, "read")
        assert sim.stats.rounds == rounds + 2  # one real-time inventory per antenna
        assert len(run.of(RFID_READ)) == reads_before  # the round's reads are the command's, not events
    assert data is not None
    tags = data["tags"]
    assert tags and data["reads"] == sum(t["count"] for t in tags)
    assert {t["epc"] for t in tags} <= {e.hex().upper() for e in epcs}
    assert {t["antenna"] for t in tags} == {1, 2}
    assert all(t["antenna_name"] == NAMES[t["antenna"]] for t in tags)
    assert len({(t["epc"], t["antenna"]) for t in tags}) == len(tags)  # one entry per tag and antenna


async def test_a_command_to_a_vanished_reader_fails_and_the_device_reconnects(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(antennas=(1, 2))) as sim,
        reader(port=str(tmp_path / "tty"), read_timeout_s=0.3, reply_timeout_s=0.1) as run,
    ):
        await run.command(None, "inventory", {"action": "stop"})
        sim.silence(30)
        with pytest.raises((DeviceTimeout, CommandFailed)):  # silent while asked, or found gone first
            await run.command(None, "read")
        await run.until("a reconnection attempt", lambda: run.device.restarts >= 1)


async def test_read_in_fast_switch_mode_is_one_fast_switch_round() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(antennas=(1, 2), rate=2000)) as sim,
        reader(host="127.0.0.1", tcp_port=sim.port, inventory="fast_switch") as run,
    ):
        await run.command(None, "inventory", {"action": "stop"})
        rounds = sim.stats.rounds
        fast = sim.stats.by_command[r2000.Command.FAST_SWITCH_ANT_INVENTORY]
        data = await run.command(None, "read")
        assert sim.stats.rounds == rounds + 1
        assert sim.stats.by_command[r2000.Command.FAST_SWITCH_ANT_INVENTORY] == fast + 1
    assert data is not None and {t["antenna"] for t in data["tags"]} == {1, 2}
