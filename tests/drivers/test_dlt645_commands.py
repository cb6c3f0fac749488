"""The dlt645 driver's commands (read, time_sync) against the simulated meter line on a real
pseudo-terminal and a real TCP socket, run as the gateway runs a device (drivers.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.commands import CommandFailed, CommandRefused
from drivers.dlt645 import Dlt645Driver, Dlt645Options, Dlt645Point
from drivers.kinds import METER_READING
from drivers.testing import CONNECTED, Harness, running
from firmware_sim.dlt645 import SimOptions, serve_pty, serve_tcp
from gateway.config import ConfigError, load_config
from protocols import dlt645

pytestmark = pytest.mark.timeout(60)

METERS = ("000000000001", "000000000002")
FAST = {"poll_s": 0.05, "timeout_s": 0.3, "points": ["voltage_a", "frequency"]}


@asynccontextmanager
async def line(devices: dict[str, dict[str, Any]]) -> AsyncIterator[Harness]:
    makers = {}
    for name, options in devices.items():
        opts = Dlt645Options(**{**FAST, **options})

        def make(name: str = name, opts: Dlt645Options = opts) -> Dlt645Driver:
            return Dlt645Driver(name, opts)

        makers[name] = make
    async with running(makers) as run:
        for name in devices:
            await run.until_state(CONNECTED, device=name)
        yield run


async def test_read_a_data_identifier_now(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with (
        serve_pty(link, SimOptions(meters=METERS, unsupported=frozenset({0x02800002}))) as sim,
        line({"m1": {"port": str(link), "address": METERS[0]}}) as run,
    ):
        sim.pin(METERS[0], "energy_active_forward", 1234.56)
        sim.pin(METERS[0], "voltage_b", 228.7)
        # Not among the polled points: read now by identifier, or by name.
        assert await run.command("m1", "read", {"point": "00010000"}) == {
            "values": {"energy_active_forward": 1234.56},
            "units": {"energy_active_forward": "kWh"},
        }
        assert await run.command("m1", "read", {"point": "voltage_b"}) == {
            "values": {"voltage_b": 228.7},
            "units": {"voltage_b": "V"},
        }
        asked = sim.stats.requests[METERS[0]]
        with pytest.raises(CommandRefused, match="not a known data identifier"):
            await run.command("m1", "read", {"point": "12345678"})
        with pytest.raises(ValidationError):
            await run.command("m1", "read", {"point": 10000})
        # The meter refuses an identifier it lacks: an error that says so.
        with pytest.raises(CommandFailed, match=r"frequency \(02800002\): the meter refused"):
            await run.command("m1", "read", {"point": "frequency"})
        await run.until_events(METER_READING, 3)
    assert sim.stats.requests[METERS[0]] > asked  # the refusal by the meter was asked; the others were not


async def test_time_sync_sets_every_meters_clock_on_the_line() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(meters=METERS)) as sim,
        line(
            {
                "m1": {"host": "127.0.0.1", "tcp_port": sim.port, "address": METERS[0]},
                "m2": {"host": "127.0.0.1", "tcp_port": sim.port, "address": METERS[1]},
            }
        ) as run,
    ):
        ts = datetime(2026, 12, 3, 6, 35, 29).timestamp()  # local time of the test machine
        data = await run.command("m1", "time_sync", {"ts": ts})
        assert data == {
            "time": datetime.fromtimestamp(ts).astimezone().isoformat(),
            "address": "999999999999",
        }
        await sim.wait_for(lambda s: s.time_syncs == 1)
        assert sim.clocks == dict.fromkeys(METERS, datetime(2026, 12, 3, 6, 35, 29))
        # In the meters' own zone: UTC+8 here, whatever the gateway's.
        utc = datetime.fromisoformat("2026-12-03T06:35:29+00:00").timestamp()
        data = await run.command("m2", "time_sync", {"ts": utc, "utc_offset_min": 480})
        assert data is not None and data["time"] == "2026-12-03T14:35:29+08:00"
        await sim.wait_for(lambda s: s.time_syncs == 2)
        assert sim.clocks[METERS[0]] == datetime(2026, 12, 3, 14, 35, 29)
        # Now: the gateway's clock.
        before = datetime.now().replace(microsecond=0)
        await run.command("m1", "time_sync", {})
        await sim.wait_for(lambda s: s.time_syncs == 3)
        assert before <= sim.clocks[METERS[1]] <= datetime.now()
        for bad in ({"ts": "now"}, {"utc_offset_min": 1000}, {"ts": 1.0}):
            with pytest.raises(ValidationError):
                await run.command("m1", "time_sync", bad)
        await run.until_events(METER_READING, 6)  # both meters polled on


def test_a_point_cannot_be_writable(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"cannot be writable.*no write for"):
        Dlt645Point.model_validate({"point": "voltage_a", "writable": True})
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "gateway: {id: gw}\n"
        "buffer: {path: buffer.db}\n"
        "upstream: {mqtt: {url: 'mqtt://127.0.0.1:1883'}}\n"
        "devices:\n"
        "  - name: m\n"
        "    driver: dlt645\n"
        "    port: /dev/ttyUSB0\n"
        "    address: '000000000001'\n"
        "    points: [{point: voltage_a, writable: true}]\n"
    )
    with pytest.raises(ConfigError, match="writable"):
        load_config(path)
    assert dlt645.BROADCAST == "999999999999"
