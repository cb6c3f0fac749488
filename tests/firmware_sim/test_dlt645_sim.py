"""The simulated DL/T 645 meter line, over a real pty (through its symlink) and real TCP on 127.0.0.1.

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
from firmware_sim import dlt645 as sim645
from firmware_sim.dlt645 import Faults, MeterModel, SimOptions, serve_pty, serve_tcp
from protocols import dlt645
from tests.firmware_sim.clients import Client, Lines, PtyClient, over_pty, over_tcp

TIMEOUT = 10.0
A, B, C = "000000000001", "000000000002", "000000000003"


class Master:
    """The master's side of the line: frames what arrives, returns whole frames."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.framer = dlt645.Dlt645Framer()
        self.frames: list[dlt645.Frame] = []

    async def frame(self) -> dlt645.Frame:
        async with asyncio.timeout(TIMEOUT):
            while not self.frames:
                data = await self.client.read()
                if not data:
                    raise ConnectionError("closed")
                self.frames += self.framer.feed(data)
        return self.frames.pop(0)

    async def ask(self, request: bytes) -> tuple[dlt645.Frame, dlt645.Reply]:
        await self.client.write(request)
        frame = await self.frame()
        return frame, dlt645.parse_reply(frame)

    async def read_value(self, address: str, name: str) -> float:
        item = dlt645.find_item(name)
        assert item is not None
        frame, reply = await self.ask(dlt645.read_data(address, item.di, preamble=2))
        assert frame.address == address
        assert isinstance(reply, dlt645.DataReply) and reply.di == item.di and not reply.more
        return dlt645.decode_value(item, reply.payload)


def pty_master(path: Path) -> contextlib.AbstractAsyncContextManager[Master]:
    return over_pty(path, Master)


def tcp_master(port: int | None) -> contextlib.AbstractAsyncContextManager[Master]:
    return over_tcp(port, Master)


async def check_every_table_line(master: Master, sim: sim645.Dlt645Simulator, addresses: list[str]) -> None:
    for address in addresses:
        for item in dlt645.ITEMS:
            value = await master.read_value(address, item.name)
            assert sim.sent[(address, item.di)][-1] == value
    # A plausible three-phase meter: what the issue asks for at least.
    values = {name: await master.read_value(A, name) for name in ("voltage_a", "current_b", "frequency")}
    assert 200 < values["voltage_a"] < 240
    assert 0 < values["current_b"] < 50
    assert 49.9 < values["frequency"] < 50.1
    pf = await master.read_value(A, "power_factor")
    assert 0.8 < pf <= 1.0


async def test_pty_answers_every_table_line_for_every_meter(tmp_path: Path) -> None:
    link = tmp_path / "ttyDLT645"
    async with serve_pty(link, SimOptions(meters=(A, B))) as sim:
        assert link.is_symlink()
        async with pty_master(link) as master:
            await check_every_table_line(master, sim, [A, B])
        assert sim.stats.requests[A] > len(dlt645.ITEMS) and sim.stats.requests[B] == len(dlt645.ITEMS)
        assert sim.stats.replies == sim.stats.requests[A] + sim.stats.requests[B]
    assert not link.exists() and not link.is_symlink()


async def test_tcp_answers_every_table_line_for_every_meter() -> None:
    async with serve_tcp("127.0.0.1", 0, SimOptions(meters=(A, B, C))) as sim, tcp_master(sim.port) as master:
        await check_every_table_line(master, sim, [A, C])


async def test_the_reference_exchange_shape() -> None:
    # The reply to the reference request comes from that meter, for that identifier, with a preamble.
    meter = "000102030425"
    request = bytes.fromhex("68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16")
    async with serve_tcp("127.0.0.1", 0, SimOptions(meters=(meter,), preamble=4)) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            writer.write(request)
            async with asyncio.timeout(TIMEOUT):
                raw = await reader.readexactly(4 + 20)
        finally:
            writer.close()
    assert raw[:4] == b"\xfe" * 4
    assert raw[4:14] == bytes.fromhex("68 25 04 03 02 01 00 68 91 08")
    assert raw[14:18] == bytes.fromhex("33 33 34 33")  # DI 00010000, DI0 first, +0x33
    reply = dlt645.parse_reply(dlt645.decode_frame(raw))
    assert isinstance(reply, dlt645.DataReply)
    assert dlt645.decode_value(dlt645.ITEMS[5], reply.payload) == sim.sent[(meter, 0x00010000)][-1]


async def test_unknown_identifier_gets_an_error_reply() -> None:
    options = SimOptions(meters=(A,), unsupported=frozenset({0x02800002}))
    async with serve_tcp("127.0.0.1", 0, options) as sim, tcp_master(sim.port) as master:
        for di in (0x04000101, 0x02800002):
            frame, reply = await master.ask(dlt645.read_data(A, di))
            assert frame.control == 0xD1 and frame.address == A
            assert reply == dlt645.ErrorReply(0x11, dlt645.ErrorFlag.NO_DATA)
            assert isinstance(reply, dlt645.ErrorReply)
            assert "no such data" in reply.describe()
        # Read follow-up (nothing spans frames here) and an unsupported function: their error replies.
        _, reply = await master.ask(dlt645.read_follow_up(A, 0x00010000, 1))
        assert reply == dlt645.ErrorReply(0x12, dlt645.ErrorFlag.NO_DATA)
        _, reply = await master.ask(dlt645.encode_frame(dlt645.Frame(A, 0x14, bytes(12))))
        assert reply == dlt645.ErrorReply(0x14, dlt645.ErrorFlag.OTHER)
        assert sim.stats.error_replies == 4


async def test_read_address_when_alone_on_the_line(tmp_path: Path) -> None:
    async with (
        serve_pty(tmp_path / "tty", SimOptions(meters=(A, B), dead=frozenset({B}))) as sim,
        pty_master(tmp_path / "tty") as master,
    ):
        frame, reply = await master.ask(dlt645.read_address())
        assert frame.control == 0x93 and frame.address == A
        assert reply == dlt645.AddressReply(A)
        # A second live meter: both answer the wildcard, and the line carries garbage.
        sim.revive(B)
        await master.client.write(dlt645.read_address())
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda s: s.collisions == 1)
        # The next exchange still works: the framer skips the collision's remains.
        assert await master.read_value(B, "voltage_b") > 0
        assert master.framer.stats.bytes_skipped + master.framer.stats.bad_checksum > 0
        # Abbreviated addressing reaches one meter of several.
        frame, reply = await master.ask(dlt645.read_data("AAAAAAAAAA02", 0x02010100))
        assert frame.address == B and isinstance(reply, dlt645.DataReply)


async def test_dead_broadcast_and_unknown_addresses_get_no_answer() -> None:
    async with serve_tcp("127.0.0.1", 0, SimOptions(meters=(A, B), dead=frozenset({B}))) as sim:
        async with tcp_master(sim.port) as master:
            for address in (B, dlt645.BROADCAST, "000000000099"):
                await master.client.write(dlt645.read_data(address, 0x02010100))
            # Handled in order: the live meter's reply is the first frame on the line.
            assert await master.read_value(A, "voltage_a") > 0
            assert master.frames == []
            assert sim.stats.ignored == 3
            assert sim.stats.requests[B] == 1
            sim.kill(A)
            await master.client.write(dlt645.read_data(A, 0x02010100))
            async with asyncio.timeout(TIMEOUT):
                await sim.wait_for(lambda s: s.ignored == 4)
            sim.revive(B)
            assert await master.read_value(B, "voltage_a") > 0
        with pytest.raises(KeyError):
            sim.kill("000000000042")


async def test_a_slow_meter_answers_late_while_the_others_answer() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(meters=(A, B), delays=((A, 0.3),))) as sim,
        tcp_master(sim.port) as master,
    ):
        # A is asked first, but B answers first: A's reply comes late, after B's.
        await master.client.write(dlt645.read_data(A, 0x02010100) + dlt645.read_data(B, 0x02010100))
        first = await master.frame()
        second = await master.frame()
        assert (first.address, second.address) == (B, A)
        sim.set_delay(A, 0.0)
        assert await master.read_value(A, "voltage_a") > 0


async def test_a_meter_killed_while_thinking_stays_silent() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(meters=(A, B), delays=((A, 0.2),))) as sim,
        tcp_master(sim.port) as master,
    ):
        await master.client.write(dlt645.read_data(A, 0x02010100))
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_requests(A, 1)
        sim.kill(A)
        sim.set_delay(B, 0.4)  # B answers after A would have: only B's reply is on the line
        assert await master.read_value(B, "voltage_a") > 0
        assert master.frames == [] and sim.stats.replies == 1


async def test_faults_are_visible_to_the_master(tmp_path: Path) -> None:
    # Seeded, so which replies are damaged is the same on every run.
    faults = Faults(noise=0.2, bad_checksum=0.15, drop=0.1, wrong_address=0.1, wrong_length=0.1)
    options = SimOptions(meters=(A, B), seed=3, faults=faults)
    voltage = dlt645.find_item("voltage_a")
    assert voltage is not None
    async with serve_pty(tmp_path / "tty", options) as sim, pty_master(tmp_path / "tty") as master:
        await master.client.write(dlt645.read_data(A, voltage.di) * 200)
        # Then ask B for an identifier it refuses, until its error reply comes through intact: every reply
        # to the 200 requests is on the line before it (one talker at a time).
        sentinel = dlt645.read_data(B, 0x04000101)
        good = misaddressed = bad_length = 0
        done = False
        async with asyncio.timeout(TIMEOUT):
            while not done:
                await master.client.write(sentinel)
                for frame in master.framer.feed(await master.client.read()):
                    reply = dlt645.parse_reply(frame)
                    if isinstance(reply, dlt645.ErrorReply):
                        done = done or frame.address == B
                    elif frame.address != A:
                        misaddressed += 1
                    elif isinstance(reply, dlt645.DataReply) and len(reply.payload) != voltage.length:
                        bad_length += 1
                    else:
                        assert isinstance(reply, dlt645.DataReply)
                        good += 1
        stats = sim.stats
        assert stats.corrupted > 0 and stats.noise_bytes > 0 and stats.misleading > 0
        assert master.framer.stats.bad_checksum + master.framer.stats.bad_length > 0
        assert master.framer.stats.bytes_skipped >= stats.noise_bytes
        assert good == len(sim.sent[(A, voltage.di)])
        assert misaddressed > 0 and bad_length > 0
        assert good + misaddressed + bad_length <= 200


async def test_pty_disconnect_then_reconnect_on_the_same_link(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with serve_pty(link, SimOptions(meters=(A,))) as sim:
        client = PtyClient(link)
        master = Master(client)
        assert await master.read_value(A, "voltage_a") > 0
        await sim.disconnect()
        async with asyncio.timeout(TIMEOUT):
            await client.until_closed()
        assert client.closed
        client.close()
        async with pty_master(link) as master2:
            assert await master2.read_value(A, "voltage_a") > 0
        assert sim.stats.connections == 2 and sim.stats.disconnects == 1


async def test_tcp_disconnect_closes_connections_and_new_ones_work() -> None:
    async with serve_tcp("127.0.0.1", 0, SimOptions(meters=(A,))) as sim:
        async with tcp_master(sim.port) as master:
            assert await master.read_value(A, "voltage_a") > 0
            await sim.disconnect()
            async with asyncio.timeout(TIMEOUT):
                assert await master.client.read() == b""
        async with tcp_master(sim.port) as master:
            assert await master.read_value(A, "voltage_a") > 0
        assert sim.stats.connections == 2


# ------------------------------------------------------------------------------------------ the model


def test_values_change_over_time_and_energy_never_runs_backwards() -> None:
    model = MeterModel(A, seed=1)
    earlier, later = model.snapshot(0.0), model.snapshot(1800.0)
    assert later["energy_active_forward"] > earlier["energy_active_forward"]
    assert later["energy_active_combined"] > earlier["energy_active_combined"]
    moved = [
        name
        for name in ("voltage_a", "current_a", "power_active", "frequency")
        if later[name] != earlier[name]
    ]
    assert moved
    assert MeterModel(A, seed=1).snapshot(5.0) == model.snapshot(5.0)
    assert MeterModel(B, seed=1).snapshot(5.0) != model.snapshot(5.0)
    p = earlier
    assert abs(p["power_active"] - (p["power_active_a"] + p["power_active_b"] + p["power_active_c"])) < 1e-9


@given(st.sampled_from([A, B, "123456789012"]), st.floats(0.0, 10 * 365 * 86400.0), st.integers(0, 3))
def test_every_value_of_the_model_fits_its_table_line(address: str, t: float, seed: int) -> None:
    values = MeterModel(address, seed).snapshot(t)
    assert set(values) == {item.name for item in dlt645.ITEMS}
    for item in dlt645.ITEMS:
        value = values[item.name]
        assert abs(value) <= item.largest, item.name
        assert item.signed or value >= 0, item.name
        dlt645.encode_value(item, value)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="12 decimal digits"):
        SimOptions(meters=("12345",))
    with pytest.raises(ValueError, match="not a meter on this line"):
        SimOptions(meters=(A,), dead=frozenset({B}))
    with pytest.raises(ValueError, match="distinct"):
        SimOptions(meters=(A, A))
    with pytest.raises(ValueError, match="probability"):
        Faults(noise=1.5)


# ------------------------------------------------------------------------------------------ command line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgegw sim")
    sub = parser.add_subparsers(dest="family", required=True)
    sim645.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_arguments() -> None:
    args = parse(
        [
            "dlt645",
            "--tcp",
            "127.0.0.1:0",
            "--meter",
            A,
            "--meter",
            B,
            "--dead",
            B,
            "--slow",
            f"{A}=0.5",
            "--fault",
            "noise=0.01,bad-checksum=0.02",
            "--fault",
            "wrong-length=0.1",
        ]
    )
    options = sim645.options_from_args(args)
    assert options.meters == (A, B) and options.dead == {B} and options.delays == ((A, 0.5),)
    assert options.faults == Faults(noise=0.01, bad_checksum=0.02, wrong_length=0.1)
    assert sim645.options_from_args(parse(["dlt645", "--link", "/tmp/x"])).meters == sim645.DEFAULT_METERS


@pytest.mark.parametrize(
    "argv",
    [
        ["dlt645"],
        ["dlt645", "--tcp", "127.0.0.1:0", "--meter", "12"],
        ["dlt645", "--tcp", "127.0.0.1:0", "--slow", "000000000001"],
        ["dlt645", "--tcp", "127.0.0.1:0", "--fault", "bogus=1"],
        ["dlt645", "--tcp", "127.0.0.1:0", "--fault", "noise=2"],
        ["dlt645", "--tcp", "127.0.0.1:0", "--preamble", "5"],
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_fault_specs() -> None:
    assert sim645.parse_faults(["drop=0.5", "wrong_address=0.25"]) == Faults(drop=0.5, wrong_address=0.25)
    for bad in ("noise", "noise=x", "silence=5/30"):
        with pytest.raises(ValueError, match="fault"):
            sim645.parse_faults([bad])


@pytest.mark.parametrize("on_pty", [False, True], ids=["tcp", "pty"])
async def test_run_from_args_serves_until_stopped(on_pty: bool, tmp_path: Path) -> None:
    link = tmp_path / "ttyDLT645"
    where = ["--link", str(link)] if on_pty else ["--tcp", "127.0.0.1:0"]
    args = parse(["dlt645", *where, "--meter", C, "--preamble", "0"])
    stop = asyncio.Event()
    out = Lines()
    task = asyncio.create_task(sim645.run_from_args(args, stop, out))
    async with asyncio.timeout(TIMEOUT):
        await out.line.wait()
    text = out.getvalue()
    if on_pty:
        assert text == f"dlt645 simulator (meters {C}) on pty {link}\n"
        master = pty_master(link)
    else:
        assert text.startswith(f"dlt645 simulator (meters {C}) on tcp 127.0.0.1:")
        master = tcp_master(int(text.rsplit(":", 1)[1]))
    async with master as line:
        assert await line.read_value(C, "frequency") > 49
    stop.set()
    async with asyncio.timeout(TIMEOUT):
        await task
    assert not link.is_symlink()


def test_the_edgegw_sim_command_takes_it_as_a_family(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The entry the lead adds to firmware_sim/cli.py's FAMILIES, exercised through cli.main.
    monkeypatch.setitem(cli.FAMILIES, "dlt645", (sim645.add_parser, sim645.run_from_args))
    assert cli.main(["dlt645", "--help"]) == 0
    assert "wrong-length=P" in capsys.readouterr().out
    assert cli.main(["dlt645", "--tcp", "127.0.0.1:0", "--fault", "bogus=1"]) == 2
    assert (
        cli.main(["dlt645", "--tcp", "127.0.0.1:0", "--meter", "000000000001", "--dead", "000000000002"]) == 1
    )
    assert "not a meter on this line" in capsys.readouterr().err
