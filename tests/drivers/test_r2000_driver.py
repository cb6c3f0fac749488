"""The uhf-r2000 driver against the simulated reader, over a real pseudo-terminal and a real TCP socket,
run as the gateway runs it (drivers.testing)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.event import Record, encode_data
from drivers.kinds import RFID_READ
from drivers.r2000 import R2000Options, UhfR2000Driver
from drivers.testing import Harness
from drivers.testing import running as run_devices
from firmware_sim.r2000 import Faults, R2000Simulator, SimOptions, serve_pty, serve_tcp
from protocols.epc import epc_uri

pytestmark = pytest.mark.timeout(60)

NAMES = {1: "lane1-in", 2: "lane1-out", 3: "lane2-in", 4: "lane2-out"}


class Run(Harness):
    def reads(self) -> list[dict[str, Any]]:
        return self.data(RFID_READ)


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Run]:
    opts = R2000Options(**options)
    async with run_devices({"reader-1": lambda: UhfR2000Driver("reader-1", opts)}, Run) as run:
        yield run


def check_reads(reads: list[dict[str, Any]], sim: R2000Simulator, antennas: dict[int, str]) -> None:
    epcs = {epc.hex().upper() for epc in sim.population}
    for read in reads:
        assert read["epc"] in epcs
        assert read["antenna"] in antennas
        assert read["antenna_name"] == antennas[read["antenna"]]
        assert read["pc"] == "3000"
        assert read["reader_address"] == 1
        assert -100 <= read["rssi_dbm"] <= -20
        assert 902.0 <= read["frequency_mhz"] <= 928.0


async def test_reads_over_a_pty_in_realtime_mode(tmp_path: Path) -> None:
    antennas = {1: NAMES[1], 2: NAMES[2]}
    async with (
        serve_pty(tmp_path / "tty", SimOptions(tags=30, rate=2000, antennas=(1, 2))) as sim,
        running(port=str(tmp_path / "tty"), antennas=antennas) as run,
    ):
        await run.until("reads on both antennas", lambda: {r["antenna"] for r in run.reads()} == {1, 2})
        await run.until_events(RFID_READ, 300)
    assert run.statuses()[0] == {"state": "connected", "detail": "firmware 1.7"}
    check_reads(run.reads(), sim, antennas)
    assert run.device.counters["bytes_skipped"] == 0
    assert run.device.counters["frames_rejected"] == 0


async def test_reads_over_tcp_in_fast_switch_mode() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(tags=30, rate=2000, antennas=(1, 2, 3, 4))) as sim,
        running(host="127.0.0.1", tcp_port=sim.port, antennas=NAMES, inventory="fast_switch") as run,
    ):
        await run.until(
            "reads on all four antennas", lambda: {r["antenna"] for r in run.reads()} == {1, 2, 3, 4}
        )
    check_reads(run.reads(), sim, NAMES)


async def test_reads_carry_exactly_the_json_the_buffer_would_write(tmp_path: Path) -> None:
    # The driver fills a JSON template instead of leaving the buffer to encode each read: the bytes
    # must be what the buffer's own encoder makes of the mapping, escapes and non-ASCII names included.
    antennas = {1: 'voie "1" entrée', 2: "lane\\2\tout", 3: "車線3"}
    async with (
        serve_pty(tmp_path / "tty", SimOptions(tags=30, rate=2000, antennas=(1, 2, 3))) as sim,
        running(port=str(tmp_path / "tty"), antennas=antennas, inventory="fast_switch") as run,
    ):
        three = {1, 2, 3}
        await run.until("reads on three antennas", lambda: {r["antenna"] for r in run.reads()} == three)
    check_reads(run.reads(), sim, antennas)
    reads = [e.data for e in run.events if e.kind == RFID_READ]
    for data in reads:
        assert isinstance(data, Record)
        assert data.json == encode_data(dict(data))[0]
        assert json.loads(data.json) == dict(data)
        assert data.get("epc_uri") == epc_uri(data["epc"])  # present exactly when the EPC decodes
    assert any("epc_uri" in data for data in reads) and not all("epc_uri" in data for data in reads)


async def test_a_read_is_a_mapping_for_a_processor_and_json_for_the_buffer_with_the_same_content(
    tmp_path: Path,
) -> None:
    # A processor reads every read as a mapping: JSON to decode would cost it ten times a dict. No driver
    # knows whether one will: a read builds its dict when read as a mapping, its JSON when the buffer asks.
    antennas = {1: 'voie "1" entrée', 2: "車線2"}
    async with serve_pty(tmp_path / "tty", SimOptions(tags=30, rate=2000, antennas=(1, 2))) as sim:
        every_tag = {epc.hex().upper() for epc in sim.population}
        async with running(port=str(tmp_path / "tty"), antennas=antennas, inventory="fast_switch") as run:
            await run.until("every tag read", lambda: {r["epc"] for r in run.reads()} == every_tag)
    events = run.of(RFID_READ)
    records = [e.data for e in events if isinstance(e.data, Record)]
    assert len(records) == len(events)
    as_dicts = run.reads()  # read as mappings, as a processor reads them: no JSON built for that
    assert all(data._encoded is None for data in records)
    as_json = [json.loads(data.json) for data in records]
    check_reads(as_dicts, sim, antennas)
    check_reads(as_json, sim, antennas)

    def shape(data: dict[str, Any]) -> tuple[tuple[str, type], ...]:
        return tuple((key, type(value)) for key, value in data.items())

    assert [shape(d) for d in as_dicts] == [shape(d) for d in as_json]
    assert as_dicts == as_json


async def test_a_frame_with_a_bad_checksum_is_never_decoded(tmp_path: Path) -> None:
    options = SimOptions(tags=30, rate=2000, antennas=(1,), seed=3, faults=Faults(bad_checksum=0.1))
    async with (
        serve_pty(tmp_path / "tty", options) as sim,
        running(port=str(tmp_path / "tty"), antennas={1: "lane1-in"}, reply_timeout_s=0.2) as run,
    ):
        await run.until_events(RFID_READ, 1000)
        sim.silence(3600)
        good = sim.stats.tag_frames_sent  # tag frames sent intact: exactly these must come out
        await run.until_events(RFID_READ, good)
    assert len(run.reads()) == good
    check_reads(run.reads(), sim, {1: "lane1-in"})
    assert sim.stats.frames_corrupted > 0
    assert run.device.counters["frames_rejected"] >= sim.stats.frames_corrupted
    # A round whose end frame was lost is asked again; the reader is never taken for dead.
    assert [s["state"] for s in run.statuses()] == ["connected"]


async def test_a_noisy_line_with_lost_bytes_is_resynchronised(tmp_path: Path) -> None:
    faults = Faults(noise=0.05, bad_checksum=0.05, drop=0.05)
    options = SimOptions(tags=30, rate=2000, antennas=(1,), seed=3, faults=faults)
    async with (
        serve_pty(tmp_path / "tty", options) as sim,
        running(port=str(tmp_path / "tty"), antennas={1: "lane1-in"}, reply_timeout_s=0.2) as run,
    ):
        await run.until_events(RFID_READ, 2000)
        await sim.wait_for(lambda s: s.frames_corrupted >= 50)
    counters = run.device.counters
    assert counters["bytes_skipped"] > 0
    assert counters["frames_rejected"] > 0
    assert [s["state"] for s in run.statuses()] == ["connected"]
    # Bytes lost inside a frame make it swallow the next frame's start; the protocol's 8-bit checksum then
    # passes such a frame 1 time in 256, and the plausibility checks catch most of those. So a ghost read
    # is possible but must stay far rarer than the damage: never more than 1 per 64 rejected frames.
    epcs = {epc.hex().upper() for epc in sim.population}
    ghosts = [r for r in run.reads() if r["epc"] not in epcs]
    assert len(ghosts) * 64 <= counters["frames_rejected"] + counters["implausible_frames"]
    for read in run.reads():
        assert read["antenna_name"] == "lane1-in"
        assert 902.0 <= read["frequency_mhz"] <= 928.0


async def test_a_silent_reader_times_out_and_is_reconnected(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(tags=5, rate=500, antennas=(1,))) as sim,
        running(port=str(tmp_path / "tty"), antennas={1: "a"}, read_timeout_s=0.2) as run,
    ):
        await run.until_events(RFID_READ, 10)
        sim.silence(3600)
        await run.until_state("disconnected")
        sim.unsilence()
        await run.until_state("connected", 2)
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 10)
    gone = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert "silent" in gone["reason"]
    assert run.device.restarts >= 1


async def test_an_unplugged_adapter_is_retried_until_it_is_back(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(tags=5, rate=500, antennas=(1,))) as sim,
        running(port=str(tmp_path / "tty"), antennas={1: "a"}) as run,
    ):
        await run.until_events(RFID_READ, 10)
        await sim.disconnect(downtime=0.3)
        await run.until_state("connected", 2)
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 10)
    assert run.statuses()[1]["state"] == "disconnected"


async def test_a_missing_port_is_retried_with_its_reason(tmp_path: Path) -> None:
    async with running(port=str(tmp_path / "no-such-tty"), antennas={1: "a"}) as run:
        await run.until_state("disconnected", 3)
    reasons = {s["reason"] for s in run.statuses()}
    assert all("no-such-tty" in reason for reason in reasons)
    assert all(s["retry_in_s"] > 0 for s in run.statuses())
