"""The simulated NMEA receiver (``edgegw sim gps``): read by the field's own client (pynmeagps' NMEAReader
on a pyserial port, as gpsd-less tools do) from the console script in a child process, and by our framer
in-process on a real pty and real TCP; its faults as a host sees them; the route model; the command line.
Nothing asserts on timing; waits are for conditions."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped,unused-ignore]
from pynmeagps import NMEAReader  # type: ignore[import-untyped]

from firmware_sim import cli
from firmware_sim import gps as simgps
from firmware_sim.gps import DEFAULT_ROUTE, Faults, Route, SimOptions, serve_pty, serve_tcp
from protocols import nmea
from tests.firmware_sim.clients import Client, Lines, over_pty, over_tcp

pytestmark = pytest.mark.timeout(60)

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
TIMEOUT = 10.0
FAST = SimOptions(epoch_s=0.02, speedup=50.0, dwell_s=5.0)


@contextmanager
def sim_process(*args: str) -> Iterator[str]:
    """``edgegw sim gps ARGS`` in a child process; yields the line it printed once serving."""
    child = subprocess.Popen(
        [EDGEGW, "sim", "gps", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        yield line
    finally:
        child.terminate()
        child.wait(timeout=10)


def test_pynmeagps_reads_the_console_script_receiver_on_its_serial_port(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    with sim_process("--link", str(link), "--epoch", "0.05", "--speedup", "20", "--talker", "GP") as line:
        assert line == f"gps simulator (talker GP, {len(DEFAULT_ROUTE)} stations) on pty {link}\n"
        with serial.Serial(str(link), 9600, timeout=5) as port:
            reader = NMEAReader(port, validate=0x01, quitonerror=2)  # checksums checked; errors raise
            seen: dict[str, list[object]] = {}
            while sum(len(v) for v in seen.values()) < 60:
                _, msg = reader.read()
                assert msg is not None
                seen.setdefault(msg.msgID, []).append(msg)
    assert {"RMC", "VTG", "GGA", "GSA", "GSV"} <= set(seen)
    lats = [m.lat for m in seen["GGA"]]  # type: ignore[attr-defined]
    lons = [m.lon for m in seen["GGA"]]  # type: ignore[attr-defined]
    south, north = min(p[0] for p in DEFAULT_ROUTE), max(p[0] for p in DEFAULT_ROUTE)
    west, east = min(p[1] for p in DEFAULT_ROUTE), max(p[1] for p in DEFAULT_ROUTE)
    assert all(south - 1e-6 <= lat <= north + 1e-6 for lat in lats)
    assert all(west - 1e-6 <= lon <= east + 1e-6 for lon in lons)
    assert all(m.status == "A" for m in seen["RMC"])  # type: ignore[attr-defined]
    assert all(m.talker == "GP" for ms in seen.values() for m in ms)  # type: ignore[attr-defined]


async def read_sentences(client: Client, n: int) -> tuple[list[bytes], nmea.NmeaFramer]:
    """At least ``n`` whole sentences from ``client``, through our framer."""
    framer = nmea.NmeaFramer()
    got: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while len(got) < n:
            data = await client.read()
            if not data:
                raise ConnectionError("closed")
            got += framer.feed(data)
    return got, framer


def _client(client: Client) -> Client:
    return client


async def test_faults_as_the_host_sees_them(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    faults = Faults(bad_checksum=0.2, truncate=0.2, noise=0.2)
    async with (
        serve_pty(link, dataclasses.replace(FAST, faults=faults)) as sim,
        over_pty(link, _client) as client,
    ):
        got, framer = await read_sentences(client, 200)
    stats = framer.stats
    assert stats.bad_checksum > 0 and stats.bad_length > 0 and stats.bytes_skipped > 0
    assert sim.stats.corrupted > 0 and sim.stats.truncated > 0 and sim.stats.noise_bytes > 0
    for sentence in got:  # what comes through whole is what was built
        if nmea.kind_of(sentence)[1] in nmea.KINDS:
            nmea.decode(sentence)


async def test_a_loss_of_fix_sends_empty_fields_and_status_v() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        assert sim.port is not None
        async with over_tcp(sim.port, _client) as client:
            sim.lose_fix()
            await sim.wait_for(lambda s: s.no_fix_epochs >= 1)
            got, _ = await read_sentences(client, 40)
    decoded = [nmea.decode(s) for s in got[-20:] if nmea.kind_of(s)[1] in nmea.KINDS]
    ggas = [d for d in decoded if isinstance(d, nmea.Gga)]
    rmcs = [d for d in decoded if isinstance(d, nmea.Rmc)]
    assert ggas and all(g.quality == 0 and g.lat is None for g in ggas)
    assert rmcs and all(not r.valid and r.lat is None for r in rmcs)


async def test_an_unplugged_receiver_comes_back_on_the_same_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with serve_pty(link, FAST) as sim:
        async with over_pty(link, _client) as client:
            await read_sentences(client, 5)
            await sim.disconnect()
            async with asyncio.timeout(TIMEOUT):
                await client.until_closed()  # type: ignore[union-attr]
        async with over_pty(link, _client) as client:
            got, _ = await read_sentences(client, 5)
    assert got and sim.stats.disconnects == 1


def test_the_route_drives_each_leg_and_stops_at_each_station() -> None:
    route = Route(DEFAULT_ROUTE, speed_kmh=36.0, dwell_s=10.0)
    a, b = DEFAULT_ROUTE[0], DEFAULT_ROUTE[1]
    lat, lon, speed, _ = route.at(0.0)
    assert (lat, lon, speed) == (a[0], a[1], 36.0)
    leg = route.legs[0][2] / 10.0  # seconds to drive the first leg at 10 m/s
    lat, lon, speed, _ = route.at(leg + 5.0)
    assert (lat, lon, speed) == (b[0], b[1], 0.0)  # dwelling at the second station
    mid = route.at(leg / 2)
    assert mid[0] == pytest.approx((a[0] + b[0]) / 2) and mid[1] == pytest.approx((a[1] + b[1]) / 2)
    north_east = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    assert 0 < mid[3] < 90 and abs(mid[3] - north_east) < 45
    assert route.at(route.lap_s + 1.0) == route.at(1.0)


def test_options_and_fault_specs_are_checked() -> None:
    assert simgps.parse_faults(["bad-checksum=0.1,truncate=0.2", "no-fix=5/30"]) == Faults(
        bad_checksum=0.1, truncate=0.2, no_fix_s=5.0, no_fix_every_s=30.0
    )
    for bad in ("noise", "noise=2", "no-fix=5", "no-fix=30/5", "disconnect=0", "bogus=1"):
        with pytest.raises(ValueError, match=r"fault|no_fix|disconnect"):
            simgps.parse_faults([bad])
    for wrong in ({"route": ((1.0, 2.0),)}, {"talker": "XX"}, {"speed_kmh": 0}, {"satellites": 2}):
        with pytest.raises(ValueError):
            SimOptions(**wrong)


@pytest.mark.parametrize("on_pty", [False, True], ids=["tcp", "pty"])
async def test_run_from_args_serves_until_stopped(on_pty: bool, tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    where = ["--link", str(link)] if on_pty else ["--tcp", "127.0.0.1:0"]
    parser = cli._parser()
    args = parser.parse_args(
        ["gps", *where, "--waypoint", "1.0,2.0", "--waypoint", "1.01,2.0", "--epoch", "0.05"]
    )
    stop = asyncio.Event()
    out = Lines()
    task = asyncio.create_task(simgps.run_from_args(args, stop, out))
    async with asyncio.timeout(TIMEOUT):
        await out.line.wait()
    text = out.getvalue()
    if on_pty:
        assert text == f"gps simulator (talker GN, 2 stations) on pty {link}\n"
        host = over_pty(link, _client)
    else:
        host = over_tcp(int(text.rsplit(":", 1)[1]), _client)
    async with host as client:
        got, _ = await read_sentences(client, 6)
    gga = next(nmea.decode(s) for s in got if nmea.kind_of(s)[1] == "GGA")
    assert isinstance(gga, nmea.Gga) and gga.lat is not None and 1.0 <= gga.lat <= 1.01
    stop.set()
    async with asyncio.timeout(TIMEOUT):
        await task
    assert not link.is_symlink()


def test_the_edgegw_sim_command_lists_gps_and_rejects_bad_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "gps" in cli.FAMILIES
    assert cli.main(["gps", "--help"]) == 0
    assert "no-fix=S/EVERY" in capsys.readouterr().out
    assert cli.main(["gps", "--tcp", "127.0.0.1:0", "--fault", "bogus=1"]) == 2
    assert cli.main(["gps", "--tcp", "127.0.0.1:0", "--talker", "XX"]) == 1
    assert "talker" in capsys.readouterr().err


async def test_periodic_faults_lose_the_fix_and_unplug_the_receiver(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    faults = Faults(no_fix_s=0.2, no_fix_every_s=0.5, disconnect_every_s=0.6)
    async with serve_pty(link, dataclasses.replace(FAST, faults=faults)) as sim:
        async with over_pty(link, _client) as client:
            await read_sentences(client, 5)
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda s: s.no_fix_epochs >= 2 and s.fix_epochs >= 2 and s.disconnects >= 1)
    assert sim.stats.connections >= 2  # a new pty after the unplug, served again
