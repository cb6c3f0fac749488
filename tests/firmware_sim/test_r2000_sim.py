"""The simulated R2000 reader, over a real pty (through its symlink) and real TCP on 127.0.0.1.

The client side here is written from the protocol (framer and codec), not from the driver. Waits are for
conditions, with timeouts; nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import cli
from firmware_sim.r2000 import Faults, R2000Simulator, SimOptions, population, serve_pty, serve_tcp
from protocols import r2000
from protocols.epc import encode_epc, epc_uri
from protocols.errors import DecodeError
from tests.firmware_sim.clients import Client, PtyClient, over_pty, over_tcp

TIMEOUT = 10.0
FAST = SimOptions(tags=8, rate=4000.0, round_ms=5.0, antennas=(1, 2, 3), seed=7)


class Host:
    """Frames replies from a client link and decodes them."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.framer = r2000.R2000Framer()
        self.replies: list[r2000.Reply] = []

    async def until(self, done: type | tuple[type, ...]) -> list[r2000.Reply]:
        """Replies up to and including the first instance of ``done``."""
        seen: list[r2000.Reply] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                while self.replies:
                    reply = self.replies.pop(0)
                    seen.append(reply)
                    if isinstance(reply, done):
                        return seen
                data = await self.client.read()
                if not data:
                    raise ConnectionError("closed")
                for frame in self.framer.feed(data):
                    self.replies.append(r2000.parse_reply(frame))

    async def ask(self, request: bytes, done: type | tuple[type, ...]) -> list[r2000.Reply]:
        await self.client.write(request)
        return await self.until(done)


def pty_client(path: Path) -> contextlib.AbstractAsyncContextManager[Host]:
    return over_pty(path, Host)


def tcp_client(port: int | None) -> contextlib.AbstractAsyncContextManager[Host]:
    return over_tcp(port, Host)


async def check_firmware_and_inventory(host: Host, options: SimOptions) -> None:
    replies = await host.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
    assert replies == [r2000.FirmwareVersion(*options.firmware)]

    status = await host.ask(r2000.set_work_antenna(2), r2000.CommandStatus)
    assert status == [r2000.CommandStatus(r2000.Command.SET_WORK_ANTENNA, r2000.ErrorCode.SUCCESS)]
    assert await host.ask(r2000.get_work_antenna(), r2000.WorkAntenna) == [r2000.WorkAntenna(2)]

    replies = await host.ask(r2000.real_time_inventory(repeat=3), r2000.InventoryEnd)
    tags = [reply for reply in replies if isinstance(reply, r2000.TagRead)]
    end = replies[-1]
    assert isinstance(end, r2000.InventoryEnd)
    assert len(tags) == len(replies) - 1 and tags
    known = set(population(options.tags, options.seed))
    assert {tag.epc for tag in tags} <= known
    assert {tag.antenna for tag in tags} == {2}
    assert all(tag.pc == 0x3000 and tag.frequency_mhz is not None for tag in tags)
    assert end.command == r2000.Command.REAL_TIME_INVENTORY and end.antenna == 2
    assert end.total_read == len(tags)


async def test_pty_firmware_version_and_inventory(tmp_path: Path) -> None:
    link = tmp_path / "ttyR2000"
    async with serve_pty(link, FAST) as sim:
        assert link.is_symlink()
        async with pty_client(link) as host:
            await check_firmware_and_inventory(host, FAST)
        assert sim.stats.commands_received == 4
        assert sim.stats.rounds == 1
    assert not link.exists() and not link.is_symlink()


async def test_tcp_firmware_version_and_inventory() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        assert sim.port
        async with tcp_client(sim.port) as host:
            await check_firmware_and_inventory(host, FAST)
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_connections(1)


async def test_fast_switch_inventory_over_tcp() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, tcp_client(sim.port or 0) as host:
        request = r2000.fast_switch_inventory([(1, 2), (4, 1), (3, 1)], repeat=2)
        replies = await host.ask(request, r2000.InventoryEnd)
        tags = [reply for reply in replies if isinstance(reply, r2000.TagRead)]
        missing = [reply for reply in replies if isinstance(reply, r2000.AntennaMissing)]
        end = replies[-1]
        assert isinstance(end, r2000.InventoryEnd) and end.duration_ms is not None
        assert end.total_read == len(tags)
        assert {tag.antenna for tag in tags} == {1, 3}
        assert all(tag.command == r2000.Command.FAST_SWITCH_ANT_INVENTORY for tag in tags)
        assert missing == [r2000.AntennaMissing(4)] * 2
        assert {tag.epc for tag in tags} <= set(sim.population)


async def test_missing_work_antenna_is_an_error_code() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, tcp_client(sim.port or 0) as host:
        await host.ask(r2000.set_work_antenna(5), r2000.CommandStatus)
        replies = await host.ask(r2000.real_time_inventory(), r2000.CommandStatus)
        assert replies == [r2000.CommandStatus(0x89, r2000.ErrorCode.ANTENNA_MISSING)]


async def test_other_address_is_ignored_and_broadcast_answered() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, tcp_client(sim.port or 0) as host:
        await host.client.write(r2000.get_firmware_version(address=9))
        replies = await host.ask(r2000.get_firmware_version(address=r2000.BROADCAST), r2000.FirmwareVersion)
        assert replies == [r2000.FirmwareVersion(*FAST.firmware)]
        assert sim.stats.commands_received == 1


async def test_faults_are_visible_to_the_framer(tmp_path: Path) -> None:
    # The simulator's randomness is seeded, so which frames are corrupted is the same on every run.
    faults = Faults(noise=0.2, bad_checksum=0.2, drop=0.1)
    options = SimOptions(tags=8, rate=20000.0, round_ms=5.0, antennas=(1,), seed=3, faults=faults)
    link = tmp_path / "ttyR2000"
    async with serve_pty(link, options) as sim, pty_client(link) as host:
        # Commands are handled in turn: the firmware versions come after the whole inventory.
        await host.client.write(r2000.real_time_inventory(repeat=10) + r2000.get_firmware_version() * 4)
        tags = 0
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await host.client.read()
                replies = []
                for frame in host.framer.feed(data):
                    with contextlib.suppress(DecodeError):
                        replies.append(r2000.parse_reply(frame))
                tags += sum(isinstance(reply, r2000.TagRead) for reply in replies)
                if any(isinstance(reply, r2000.FirmwareVersion) for reply in replies):
                    break
        assert sim.stats.rounds == 1
        assert sim.stats.frames_corrupted > 0 and sim.stats.noise_bytes > 0
        assert host.framer.stats.bad_checksum > 0
        assert host.framer.stats.bytes_skipped >= sim.stats.noise_bytes
        assert 0 < tags <= sim.stats.tag_frames_sent


async def test_pty_disconnect_then_reconnect_on_the_same_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyR2000"
    async with serve_pty(link, FAST) as sim:
        client = PtyClient(link)
        host = Host(client)
        await host.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
        await sim.disconnect()
        async with asyncio.timeout(TIMEOUT):
            await client.until_closed()
        assert client.closed
        client.close()
        assert sim.stats.disconnects == 1
        assert link.is_symlink()
        async with pty_client(link) as host2:
            replies = await host2.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
            assert replies == [r2000.FirmwareVersion(*FAST.firmware)]
        assert sim.stats.connections == 2


async def test_tcp_disconnect_closes_the_connection_and_new_ones_work() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        async with tcp_client(sim.port or 0) as host:
            await host.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
            await sim.disconnect()
            async with asyncio.timeout(TIMEOUT):
                assert await host.client.read() == b""
        async with tcp_client(sim.port or 0) as host:
            await host.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
        assert sim.stats.connections == 2


async def test_silence_drops_commands_until_it_ends() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, tcp_client(sim.port or 0) as host:
        sim.silence(3600)
        await host.client.write(r2000.get_firmware_version())
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_commands(1)
        assert sim.stats.commands_ignored == 1
        sim.unsilence()
        replies = await host.ask(r2000.get_firmware_version(), r2000.FirmwareVersion)
        assert replies == [r2000.FirmwareVersion(*FAST.firmware)]


async def test_reset_has_no_reply_and_restores_antenna_one() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, tcp_client(sim.port or 0) as host:
        await host.ask(r2000.set_work_antenna(3), r2000.CommandStatus)
        await host.client.write(r2000.reset())
        assert await host.ask(r2000.get_work_antenna(), r2000.WorkAntenna) == [r2000.WorkAntenna(1)]
        assert sim.stats.commands_received == 3


def test_population_is_deterministic_and_distinct() -> None:
    epcs = population(50, seed=1)
    assert epcs == population(50, seed=1) != population(50, seed=2)
    assert len(set(epcs)) == 50 and all(len(epc) == 12 for epc in epcs)


async def test_an_explicit_population_is_what_the_reader_sees() -> None:
    # A port gate's trucks: GRAI-96 and SSCC-96 tags, given as URIs on the command line.
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="family")
    cli.FAMILIES["uhf-r2000"][0](sub)
    grai, sscc = "urn:epc:tag:grai-96:1.0614141.12345.400", "urn:epc:id:sscc:0614141.1234567890"
    args = parser.parse_args(["uhf-r2000", "--tcp", "127.0.0.1:0", "--epc", grai, "--epc", sscc])
    epcs = tuple(args.epc)
    assert epcs == (encode_epc(grai), encode_epc(sscc))
    options = SimOptions(epcs=epcs, rate=5000, round_ms=5, antennas=(1,))
    async with serve_tcp("127.0.0.1", 0, options) as sim, tcp_client(sim.port or 0) as host:
        replies = await host.ask(r2000.real_time_inventory(repeat=4), r2000.InventoryEnd)
    tags = {reply.epc for reply in replies if isinstance(reply, r2000.TagRead)}
    assert tags == set(epcs)
    assert {epc_uri(epc) for epc in tags} == {"urn:epc:id:grai:0614141.12345.400", sscc}


async def test_an_explicit_population_larger_than_tags_is_read_whole() -> None:
    # 25 EPCs with the default --tags 20: every one of them is read (the RSSI levels are per tag).
    epcs = tuple(bytes([0x30]) + n.to_bytes(11, "big") for n in range(25))
    options = SimOptions(epcs=epcs, rate=20000, round_ms=5, antennas=(1,))
    async with serve_tcp("127.0.0.1", 0, options) as sim, tcp_client(sim.port) as host:
        replies = await host.ask(r2000.real_time_inventory(repeat=20), r2000.InventoryEnd)
    assert {reply.epc for reply in replies if isinstance(reply, r2000.TagRead)} == set(epcs)


def test_an_explicit_population_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        SimOptions(epcs=(b"\x30" * 8,))
    with pytest.raises(ValueError, match="each tag once"):
        SimOptions(epcs=(b"\x30" * 12, b"\x30" * 12))
    assert cli.main(["uhf-r2000", "--tcp", "127.0.0.1:0", "--epc", "30AB"]) == 2
    assert cli.main(["uhf-r2000", "--tcp", "127.0.0.1:0", "--epc", "urn:epc:id:grai:x"]) == 2
    assert "--epc" in capsys.readouterr().err


def test_cli_fault_specs() -> None:
    faults = cli.parse_faults(["noise=0.01,bad-checksum=0.02", "silence=5/30", "disconnect=60/2", "drop=0.5"])
    assert faults == Faults(
        noise=0.01,
        bad_checksum=0.02,
        drop=0.5,
        silence_s=5,
        silence_every_s=30,
        disconnect_every_s=60,
        disconnect_down_s=2,
    )
    for bad in ("noise=2", "silence=5", "bogus=1", "drop"):
        with pytest.raises(ValueError, match="fault"):
            cli.parse_faults([bad])


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["uhf-r2000"]) == 2
    assert cli.main(["uhf-r2000", "--tcp", "127.0.0.1:0", "--fault", "bogus=1"]) == 2
    assert cli.main(["uhf-r2000", "--help"]) == 0
    assert "disconnect=EVERY" in capsys.readouterr().out


@given(
    st.integers(0, 7),
    st.integers(1, 8),
    st.integers(0, 63),
    st.integers(0, 4),
    st.sampled_from([0x89, 0x8A]),
)
def test_cached_tag_frames_match_the_codec(
    tag: int, antenna: int, frequency: int, jitter: int, command: int
) -> None:
    sim = R2000Simulator(SimOptions(tags=8, address=3))
    raw = sim._tag_frame(tag, antenna, frequency, jitter, command)
    read = r2000.parse_reply(r2000.decode_frame(raw))
    assert isinstance(read, r2000.TagRead)
    expected = r2000.TagRead(antenna, frequency, 0x3000, sim.population[tag], read.rssi, command)
    assert read == expected
    assert raw == r2000.encode_reply(expected, address=3)
