"""The slcan simulator as a stranger sees it: python-can's own slcan interface (``can.Bus(interface="slcan",
channel=<the pty>)``) opens it, asks its version and serial number, reads the city bus, transmits; a raw
client checks the answers python-can does not read (BEL for a repeated O). python-can blocks, so it runs in
a thread while the simulator runs on the loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import can
import pytest
from can.interfaces.slcan import slcanBus

from firmware_sim import can as can_sim
from firmware_sim import cli
from firmware_sim.can import Faults, SimOptions, SlcanSimulator
from protocols import j1939, slcan
from tests.firmware_sim.clients import PtyClient

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 10.0
T = TypeVar("T")


async def blocking(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    async with asyncio.timeout(TIMEOUT):
        return await asyncio.to_thread(call, *args, **kwargs)


@contextlib.asynccontextmanager
async def python_can(link: Path, **kwargs: Any) -> AsyncIterator[can.BusABC]:
    bus = await blocking(can.Bus, interface="slcan", channel=str(link), sleep_after_open=0, **kwargs)
    try:
        yield bus
    finally:
        with contextlib.suppress(can.CanOperationError):  # an unplugged adapter cannot be told C
            await blocking(bus.shutdown)


def frames_until(
    bus: can.BusABC, enough: Callable[[list[can.Message]], bool], limit: int = 20000
) -> list[can.Message]:
    got: list[can.Message] = []
    while len(got) < limit and not enough(got):
        message = bus.recv(TIMEOUT)
        if message is None:
            raise TimeoutError("the adapter fell silent")
        got.append(message)
    return got


async def test_python_can_opens_the_adapter_and_reads_the_city_bus(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with (
        can_sim.serve_pty(link, SimOptions(time_scale=10)) as sim,
        python_can(link, bitrate=500000, listen_only=True) as bus,
    ):
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda s: s.opens == 1)
        assert sim.stats.open and sim.stats.listen_only and sim.stats.bitrate == 500000
        assert isinstance(bus, slcanBus)
        assert await blocking(bus.get_version, TIMEOUT) == (10, 13)
        assert await blocking(bus.get_serial_number, TIMEOUT) == "SIM1"

        def seen_the_multi_packet_ones(got: list[can.Message]) -> bool:
            pgns = {j1939.parse_id(m.arbitration_id).pgn for m in got}
            acknowledged = any(  # the end of an RTS/CTS session: the tool's acknowledgement
                j1939.parse_id(m.arbitration_id).pgn == j1939.TP_CM and m.data[0] == 0x13 for m in got
            )
            return acknowledged and {j1939.TP_DT, 61444, 65265, 65102} <= pgns

        got = await blocking(frames_until, bus, seen_the_multi_packet_ones)
    assert all(m.is_extended_id and m.dlc == len(m.data) == 8 for m in got)
    reassembler = j1939.Reassembler()
    whole = [msg for m in got for msg in reassembler.feed(m.arbitration_id, bytes(m.data), m.timestamp)]
    vin = [msg for msg in whole if msg.pgn == 65260]
    assert vin and vin[0].destination == can_sim.TOOL
    assert j1939.PGNS[65260].decode(vin[0].data) == {"vehicle_identification_number": can_sim.VIN}
    rates = Counter(j1939.parse_id(m.arbitration_id).pgn for m in got)
    assert rates[61444] > rates[65265] > rates[65262]  # EEC1 every 20 ms, CCVS every 100, ET1 every second


async def test_python_can_transmits_on_an_adapter_opened_to_transmit(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with can_sim.serve_pty(link) as sim, python_can(link, bitrate=250000) as bus:
        message = can.Message(arbitration_id=0x18EA00F9, data=b"\xec\xfe\x00")
        await blocking(bus.send, message)
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda s: s.transmitted == 1)
        assert sim.stats.host_frames[-1] == slcan.CanFrame(0x18EA00F9, b"\xec\xfe\x00")


async def test_a_listen_only_adapter_refuses_to_transmit(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with can_sim.serve_pty(link) as sim, python_can(link, bitrate=250000, listen_only=True) as bus:
        await blocking(bus.send, can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda s: s.refused == 1)
        assert sim.stats.transmitted == 0 and sim.stats.listen_only


def answers(received: bytes) -> list[bytes]:
    """The adapter's answers in ``received``, BEL as ``!``, the frame lines (``T...``) left out."""
    found: list[bytes] = []
    line = b""
    for byte in received:
        if byte in (0x0D, 0x07):
            found.append(line if byte == 0x0D else b"!")
            line = b""
        else:
            line += bytes((byte,))
    return [a for a in found if not a.startswith(b"T")]


async def test_adapter_commands_and_their_answers(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with can_sim.serve_pty(link) as sim:
        client = PtyClient(link)
        try:
            # empty line, bitrate, open, open again, bitrate while open, flags, close, unknown ones, N
            await client.write(b"\rS6\rO\rO\rS5\rF\rC\rS9\rQ\rN\r")
            received = b""
            async with asyncio.timeout(TIMEOUT):
                while len(answers(received)) < 10:
                    received += await client.read()
        finally:
            client.close()
        assert answers(received)[:10] == [b"", b"", b"", b"!", b"!", b"F00", b"", b"!", b"!", b"NSIM1"]
        assert sim.stats.bitrate == 500000 and sim.stats.opens == 1


async def test_an_unplugged_adapter_fails_python_can(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with can_sim.serve_pty(link) as sim, python_can(link, bitrate=250000) as bus:
        assert await blocking(bus.recv, TIMEOUT) is not None
        await sim.disconnect(0.0)

        def read_until_failure() -> None:
            while True:
                bus.recv(TIMEOUT)

        with pytest.raises(can.CanOperationError):
            await blocking(read_until_failure)


async def test_faults_reach_python_can_as_it_would_see_them(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    faults = Faults(garbage=0.2, bad_dlc=0.2, bel=0.2)
    async with (
        can_sim.serve_pty(link, SimOptions(faults=faults)) as sim,
        python_can(link, bitrate=250000) as bus,
    ):

        def read(n: int) -> tuple[int, int]:
            short, failures = 0, 0
            for _ in range(n):
                try:
                    message = bus.recv(TIMEOUT)
                except (ValueError, IndexError):
                    failures += 1  # python-can's slcan raises on some malformed lines
                    continue
                if message is not None and message.dlc != len(message.data):
                    short += 1
            return short, failures

        short, _ = await blocking(read, 300)
    assert sim.stats.faults > 0 and short > 0


async def test_bus_load_mode_plays_j1939_from_many_sources(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN"
    async with (
        can_sim.serve_pty(link, SimOptions(load=True, rate=4000)) as sim,
        python_can(link, bitrate=1000000) as bus,
    ):
        got = await blocking(frames_until, bus, lambda got: len(got) >= 2000)
    assert sim.stats.bitrate == 1000000  # set before the adapter opened, so before any frame came
    sources = {m.arbitration_id & 0xFF for m in got}
    assert len(sources) == 8
    decoded = [j1939.PGNS[j1939.parse_id(m.arbitration_id).pgn].decode(bytes(m.data)) for m in got]
    assert all(decoded)


def test_the_cli_offers_can() -> None:
    assert "can" in cli.FAMILIES
    assert isinstance(SlcanSimulator(), SlcanSimulator)
    with pytest.raises(ValueError, match="unknown fault"):
        can_sim.parse_faults(["noise=0.1"])
    assert can_sim.parse_faults(["garbage=0.1,unplug=30/2"]) == Faults(
        garbage=0.1, unplug_every_s=30, unplug_down_s=2
    )
