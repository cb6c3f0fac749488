"""The llrp driver's commands (start, stop, set_power) against the simulated LLRP reader over real TCP on
127.0.0.1, run as the gateway runs a device (drivers.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.commands import CommandFailed, CommandRefused
from drivers.kinds import RFID_READ
from drivers.llrp import LlrpDriver, LlrpOptions, _Session
from drivers.testing import CONNECTED, Harness, running
from firmware_sim.llrp import LlrpSimulator, SimOptions, serve_tcp

pytestmark = pytest.mark.timeout(60)

NAMES = {1: "lane1-in", 2: "lane1-out", 3: "lane2-in"}
FAST = SimOptions(tags=20, rate=2000.0, round_ms=5.0, antennas=(1, 2, 3, 4), seed=3)


@asynccontextmanager
async def reader(sim: LlrpSimulator, **options: Any) -> AsyncIterator[Harness]:
    assert sim.port is not None
    settings: dict[str, Any] = {
        "antennas": NAMES,
        "keepalive_s": 0.05,
        "keepalive_misses": 100,
        "report_every_n_tags": 10,
        "report_period_ms": 50,
        **options,
    }
    opts = LlrpOptions(host="127.0.0.1", port=sim.port, **settings)
    async with running({"reader": lambda: LlrpDriver("reader", opts)}) as run:
        await run.until_state(CONNECTED)
        yield run


def received(sim: LlrpSimulator, name: str) -> int:
    return sim.stats.received.get(name, 0)


async def test_stop_and_start_the_rospec() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, reader(sim) as run:
        await run.until_events(RFID_READ, 30)
        assert await run.command(None, "stop") == {"rospec": "inactive", "changed": True}
        assert received(sim, "STOP_ROSPEC") == 1
        made = sim.stats.tag_reads_made
        keepalives = sim.stats.keepalives_sent
        await sim.wait_for(lambda s: s.keepalives_sent >= keepalives + 5)  # time passes on the reader
        assert sim.stats.tag_reads_made == made  # stopped: no inventory
        # Stopping what is stopped asks the reader nothing.
        assert await run.command(None, "stop") == {"rospec": "inactive", "changed": False}
        assert received(sim, "STOP_ROSPEC") == 1
        reads = len(run.of(RFID_READ))
        assert await run.command(None, "start") == {"rospec": "active", "changed": True}
        await run.until_events(RFID_READ, reads + 30)
        assert received(sim, "START_ROSPEC") == 2  # at connect, and the command
    assert run.device.restarts == 0


async def test_a_command_wakes_a_session_waiting_on_a_quiet_reader() -> None:
    # No keepalives, no periodic GET_REPORT: with the ROSpec stopped the reader sends nothing at all, and the
    # session waits without a deadline. The command cuts that wait short.
    async with (
        serve_tcp("127.0.0.1", 0, FAST) as sim,
        reader(sim, keepalive_s=0, report_period_ms=None) as run,
    ):
        await run.command(None, "stop")
        assert await run.command(None, "start") == {"rospec": "active", "changed": True}
        await run.until_events(RFID_READ, 10)
    assert received(sim, "START_ROSPEC") == 2


async def test_set_power_on_every_antenna_then_on_one() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, reader(sim) as run:
        data = await run.command(None, "set_power", {"dbm": 27.25})
        assert data == {"power_dbm": {"1": 27.25, "2": 27.25, "3": 27.25}, "power_index": 70}
        assert sim.transmit_power_cdbm == {1: 2725, 2: 2725, 3: 2725, 4: 3000}
        await run.command(None, "set_power", {"dbm": 20, "antennas": [2]})
        assert sim.transmit_power_cdbm == {1: 2725, 2: 2000, 3: 2725, 4: 3000}
        await run.until_events(RFID_READ, 30)  # reading went on
    assert received(sim, "SET_READER_CONFIG") == 3  # at connect, and the two commands
    assert sim.stats.errors_sent == 0


async def test_set_power_refusals_reach_nothing() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, reader(sim) as run:
        with pytest.raises(CommandRefused, match=r"27.3 dBm is not a power level .*nearest: 27.25 or 27.50"):
            await run.command(None, "set_power", {"dbm": 27.3})
        with pytest.raises(CommandRefused, match=r"not a power level of this reader \(10.00-32.50 dBm"):
            await run.command(None, "set_power", {"dbm": 33})
        with pytest.raises(CommandRefused, match="antenna 4 is not configured"):
            await run.command(None, "set_power", {"dbm": 30, "antennas": [4]})
        for bad in ({}, {"dbm": "30"}, {"dbm": 30, "antennas": []}, {"dbm": 30, "antenna": 1}):
            with pytest.raises(ValidationError):
                await run.command(None, "set_power", bad)
    assert received(sim, "SET_READER_CONFIG") == 1  # only the one at connect
    assert set(sim.transmit_power_cdbm.values()) == {3000}


async def test_the_reader_refusing_a_command_is_an_error_and_the_session_goes_on() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, reader(sim) as run:
        driver = run.device.driver
        assert isinstance(driver, LlrpDriver) and isinstance(driver.live, _Session)
        driver.live.rospec_active = False  # the driver believes it stopped; the reader's ROSpec runs
        with pytest.raises(CommandFailed, match=r"the reader refused START_ROSPEC: .*not inactive"):
            await run.command(None, "start")
        reads = len(run.of(RFID_READ))
        await run.until_events(RFID_READ, reads + 20)
        assert run.device.state == CONNECTED
    assert run.device.restarts == 0
    assert sim.stats.errors_sent == 1
