"""The modbus driver's commands (write, read) against the simulated meters on pymodbus's real server, run
as the gateway runs a device (drivers.testing). What a write sets is read back with pymodbus's own client
over its own TCP connection, never through the driver; what must not reach the line is shown by the
simulator's count of the requests it received, per function code."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient

from drivers import testing
from drivers.commands import CommandFailed, CommandRefused
from drivers.counters import POLLS
from drivers.modbus import BadReply, ModbusDriver, ModbusOptions, ModbusReadArgs, ModbusWriteArgs, open_link
from drivers.testing import Harness
from firmware_sim.modbus import ModbusSimulator, serve_pty, serve_tcp
from gateway.config import ConfigError, load_config
from protocols.modbus import Table

pytestmark = pytest.mark.timeout(90)

WRITES = (5, 6, 15, 16)
"""The write function codes: none of them may reach the simulator for a refused command."""

METER_POINTS: list[dict[str, Any]] = [
    {"name": "voltage_a", "table": "input", "address": 0, "type": "float32", "unit": "V"},
    {"name": "ct_primary_a", "address": 100, "unit": "A", "writable": True, "min": 5, "max": 5000},
    {"name": "vt_ratio", "address": 101, "writable": True, "min": 1, "max": 100},
    {"name": "demand_period_min", "address": 102, "writable": True, "enum": [5, 15, 30, 60]},
    {
        "name": "power_alarm_kw",
        "address": 104,
        "type": "float32",
        "unit": "kW",
        "writable": True,
        "min": 0,
        "max": 500,
    },
    {"name": "serial_number", "address": 64, "type": "string", "length": 10, "byte_order": "ABCD"},
]
FAST = {"poll_s": 0.05, "timeout_s": 0.5, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@contextlib.asynccontextmanager
async def site(devices: dict[str, dict[str, Any]]) -> AsyncIterator[Harness]:
    makers: dict[str, Callable[[], ModbusDriver]] = {}
    for name, options in devices.items():
        opts = ModbusOptions.model_validate(options)

        def make(name: str = name, opts: ModbusOptions = opts) -> ModbusDriver:
            return ModbusDriver(name, opts)

        makers[name] = make
    async with testing.running(makers) as run:
        for name in devices:
            await run.until_state(testing.CONNECTED, device=name)
        yield run


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    """pymodbus's client, on a connection of its own."""
    c = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, timeout=5, reconnect_delay=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


def meter(sim: ModbusSimulator, unit: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "tcp_port": sim.port,
        "unit_id": unit,
        "byte_order": "CDAB",
        **FAST,
        "points": METER_POINTS,
        **extra,
    }


def writes(sim: ModbusSimulator, unit: int = 1) -> dict[int, int]:
    """The write requests the simulator received from ``unit``, by function code."""
    return {f: sim.stats.functions[(unit, f)] for f in WRITES if sim.stats.functions[(unit, f)]}


async def holding(c: AsyncModbusTcpClient, address: int, count: int = 1, unit: int = 1) -> list[int]:
    reply = await c.read_holding_registers(address, count=count, device_id=unit)
    assert not reply.isError(), reply
    return list(reply.registers)


# -- writes land in the meter ------------------------------------------------------------------------------


async def test_a_write_lands_in_the_meters_register_read_back_by_a_modbus_client() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim,
        client(sim.port) as c,
        site({"meter": meter(sim)}) as run,
    ):
        # One point: one register, function 06.
        assert await run.command("meter", "write", {"point": "ct_primary_a", "value": 250}) == {
            "written": {"ct_primary_a": 250}
        }
        assert writes(sim) == {6: 1}
        assert await holding(c, 100) == [250]

        # Two neighbours: one write of two registers, function 16.
        data = await run.command("meter", "write", {"values": {"vt_ratio": 4, "ct_primary_a": 400}})
        assert data == {"written": {"vt_ratio": 4, "ct_primary_a": 400}}
        assert writes(sim) == {6: 1, 16: 1}
        assert await holding(c, 100, 2) == [400, 4]

        # A float32 in the device's word order (CDAB: low word first), two registers with function 16.
        await run.command("meter", "write", {"point": "power_alarm_kw", "value": 72.5})
        low, high = await holding(c, 104, 2)
        assert struct.unpack(">f", struct.pack(">HH", high, low))[0] == 72.5
        assert writes(sim) == {6: 1, 16: 2}

        # An enum value; then the read command sees what the meter holds now.
        await run.command("meter", "write", {"point": "demand_period_min", "value": 30})
        assert await holding(c, 102) == [30]
        now = await run.command("meter", "read", {"points": ["ct_primary_a", "power_alarm_kw"]})
        assert now == {
            "values": {"ct_primary_a": 400, "power_alarm_kw": 72.5},
            "units": {
                "ct_primary_a": "A",
                "power_alarm_kw": "kW",
            },
        }
    assert sim.value(1, "ct_primary_a") == 400
    assert run.counters("meter")[POLLS] > 0


async def test_scale_and_offset_are_undone_and_coils_and_bits_are_written() -> None:
    units = {2: "pd-monitor", 3: "water-quality", 1: "energy-meter"}
    async with serve_tcp("127.0.0.1", 0, units) as sim, client(sim.port) as c:
        devices = {
            # alarm_delay_s is whole seconds in the monitor; configured in minutes here: raw = value * 60.
            "pd": {
                "host": "127.0.0.1",
                "tcp_port": sim.port,
                "unit_id": 2,
                **FAST,
                "points": [
                    {"name": "delay_min", "address": 111, "scale": 1 / 60, "writable": True, "max": 60},
                    {"name": "threshold_nc", "address": 110, "scale": 0.001, "offset": 0, "writable": True},
                ],
            },
            "wq": {
                "host": "127.0.0.1",
                "tcp_port": sim.port,
                "unit_id": 3,
                **FAST,
                "points": [
                    {"name": "fault", "table": "coil", "address": 0, "writable": True},
                    {"name": "auto_clean", "table": "coil", "address": 1, "writable": True},
                ],
            },
            # A bit of a register: the register read, that bit changed, the register written back.
            "em": {
                "host": "127.0.0.1",
                "tcp_port": sim.port,
                "unit_id": 1,
                **FAST,
                "points": [{"name": "vt_bit3", "address": 101, "type": "bit", "bit": 3, "writable": True}],
            },
        }
        async with site(devices) as run:
            await run.command("pd", "write", {"point": "delay_min", "value": 2.5})
            assert await holding(c, 111, unit=2) == [150]
            await run.command("pd", "write", {"point": "threshold_nc", "value": 0.75})
            assert await holding(c, 110, unit=2) == [750]
            with pytest.raises(CommandRefused, match="not a value point 'threshold_nc' can hold"):
                await run.command("pd", "write", {"point": "threshold_nc", "value": 0.7505})

            await run.command("wq", "write", {"point": "auto_clean", "value": False})
            coils = await c.read_coils(1, count=1, device_id=3)
            assert coils.bits[0] is False
            assert writes(sim, 3) == {5: 1}
            # Two neighbouring coils in one command: one function 15. The analyser sets its fault coil
            # itself and refuses the write with exception 02 (configured writable here to show it).
            with pytest.raises(CommandFailed, match=r"fault, auto_clean \(coil 0\): exception 02"):
                await run.command("wq", "write", {"values": {"auto_clean": True, "fault": False}})
            assert writes(sim, 3) == {5: 1, 15: 1}

            assert await holding(c, 101, unit=1) == [1]  # vt_ratio 1: bit 0 set
            await run.command("em", "write", {"point": "vt_bit3", "value": True})
            assert await holding(c, 101, unit=1) == [9]
            await run.command("em", "write", {"point": "vt_bit3", "value": False})
            assert await holding(c, 101, unit=1) == [1]
            assert writes(sim, 1) == {6: 2}
            assert sim.stats.functions[(1, 3)] > 2  # its polls, and the read before each write of the bit
    assert sim.value(2, "alarm_delay_s") == 150


async def test_a_write_over_rtu_on_a_serial_line(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS485"
    async with serve_pty(link, {1: "energy-meter"}) as sim:
        options = {"port": str(link), "unit_id": 1, "byte_order": "CDAB", **FAST, "points": METER_POINTS}
        async with site({"meter": options}) as run:
            await run.command("meter", "write", {"values": {"ct_primary_a": 150, "power_alarm_kw": 12.25}})
            assert writes(sim) == {6: 1, 16: 1}  # not neighbours: one register (06), one float (16)
            read = await run.command("meter", "read", {})
    assert sim.value(1, "ct_primary_a") == 150
    assert sim.value(1, "power_alarm_kw") == 12.25
    assert read is not None
    assert read["values"]["power_alarm_kw"] == 12.25
    assert set(read["values"]) == {p["name"] for p in METER_POINTS}


async def test_the_device_refusing_a_write_is_an_error_that_says_so() -> None:
    # Configured writable here, but the meter's voltage is a measurement: it answers exception 02.
    points = [{"name": "voltage_a", "address": 0, "type": "float32", "writable": True}]
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim,
        site({"meter": meter(sim, points=points)}) as run,
    ):
        with pytest.raises(CommandFailed, match=r"voltage_a.*exception 02 \(illegal data address\)"):
            await run.command("meter", "write", {"point": "voltage_a", "value": 1.0})
        assert run.device.state == testing.CONNECTED  # the device goes on polling
    assert writes(sim) == {16: 1}


# -- refused before the line -------------------------------------------------------------------------------

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"point": "voltage_a", "value": 1.0}, "'voltage_a' is not writable"),
    ({"point": "serial_number", "value": "X"}, "'serial_number' is not writable"),
    ({"point": "ct_primary_a", "value": 5001}, "above the maximum 5000"),
    ({"point": "ct_primary_a", "value": 1}, "below the minimum 5"),
    ({"point": "power_alarm_kw", "value": -0.5}, "below the minimum 0"),
    ({"point": "ct_primary_a", "value": "200"}, "takes a number"),
    ({"point": "ct_primary_a", "value": True}, "takes a number"),
    ({"point": "ct_primary_a", "value": 12.5}, "not a value point 'ct_primary_a' can hold"),
    ({"point": "demand_period_min", "value": 20}, "not one of the values"),
    ({"point": "nope", "value": 1}, "no point named 'nope'"),
    # One bad value refuses the whole command: nothing is written, not even the good one.
    ({"values": {"vt_ratio": 2, "ct_primary_a": 9999}}, "above the maximum"),
]


async def test_refused_writes_never_reach_the_line() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        # vt_ratio without a range here: a value its uint16 cannot hold is refused all the same.
        unbounded = [
            {"name": "vt_ratio", "address": 101, "writable": True} if p["name"] == "vt_ratio" else p
            for p in METER_POINTS
        ]
        async with site({"meter": meter(sim, points=unbounded)}) as run:
            await run.until("a poll", lambda: run.counters("meter").get(POLLS, 0) > 0)
            uint16: tuple[dict[str, Any], str] = (
                {"point": "vt_ratio", "value": 70000},
                "out of range for uint16",
            )
            for args, reason in [*REFUSED, uint16]:
                with pytest.raises(CommandRefused, match=reason):
                    await run.command("meter", "write", args)
            reads_before = sim.stats.functions[(1, 3)] + sim.stats.functions[(1, 4)]
            await run.until(
                "more polls while refusing",
                lambda: sim.stats.functions[(1, 3)] + sim.stats.functions[(1, 4)] > reads_before,
            )
    assert writes(sim) == {}  # polls went on; no write of any kind reached the meter
    assert sim.value(1, "ct_primary_a") == 100


def test_args_are_one_form_or_the_other_in_strict_json() -> None:
    assert ModbusWriteArgs.model_validate_json('{"point": "a", "value": 1}', strict=True).items() == {"a": 1}
    assert ModbusWriteArgs.model_validate_json('{"values": {"a": 1.5, "b": true}}', strict=True).items() == {
        "a": 1.5,
        "b": True,
    }
    for bad in (
        "{}",
        '{"point": "a"}',
        '{"value": 1}',
        '{"point": "a", "value": 1, "values": {"b": 2}}',
        '{"values": {}}',
        '{"point": "a", "value": [1]}',
        '{"point": "a", "value": 1, "unit": 3}',
    ):
        with pytest.raises(ValidationError):
            ModbusWriteArgs.model_validate_json(bad, strict=True)
    assert ModbusReadArgs.model_validate_json("{}", strict=True).points is None
    with pytest.raises(ValidationError):
        ModbusReadArgs.model_validate_json('{"points": []}', strict=True)


def test_writable_min_max_enum_are_checked_in_the_config(tmp_path: Path) -> None:
    def load(point: dict[str, Any]) -> None:
        text = (
            "gateway: {id: gw}\n"
            "buffer: {path: buffer.db}\n"
            "upstream: {mqtt: {url: 'mqtt://127.0.0.1:1883'}}\n"
            "devices:\n"
            "  - name: m\n"
            "    driver: modbus\n"
            "    host: 127.0.0.1\n"
            f"    points: [{point}]\n"
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(text.replace("'", '"').replace("True", "true"))
        load_config(path)

    load({"name": "a", "address": 1, "writable": True, "min": 0, "max": 10, "enum": [0, 5, 10]})
    for point, field in (
        ({"name": "a", "table": "input", "address": 1, "writable": True}, "writable"),
        ({"name": "a", "address": 1, "min": 0}, "min"),
        ({"name": "a", "address": 1, "writable": True, "min": 5, "max": 1}, "max"),
        ({"name": "a", "table": "coil", "address": 1, "writable": True, "max": 1}, "max"),
    ):
        with pytest.raises(ConfigError, match=field):
            load(point)


# -- commands share the line with the polls ----------------------------------------------------------------


async def test_polls_keep_going_while_commands_flood_the_line() -> None:
    """Two meters on one connection, polled; one gets writes back to back, as fast as they complete. The
    simulator counts the polls it answers: both meters' polls go on (turns alternate; a command never
    starves them), and no poll waits for the flood to end."""
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "energy-meter"}) as sim:
        devices = {"m1": meter(sim, 1, poll_s=0.02), "m2": meter(sim, 2, poll_s=0.02)}
        async with site(devices) as run:

            def polled(unit: int) -> int:
                return sim.stats.functions[(unit, 3)] + sim.stats.functions[(unit, 4)]

            start = {u: polled(u) for u in (1, 2)}
            commands = 0
            while min(polled(u) - start[u] for u in (1, 2)) < 30:
                await run.command("m1", "write", {"point": "ct_primary_a", "value": 100 + commands % 50})
                commands += 1
                assert commands < 50_000, "the polls stopped while commands ran"
            during = {u: polled(u) - start[u] for u in (1, 2)}
    assert commands >= 30  # a real flood: many commands ran while the polls went on
    assert writes(sim) == {6: commands}
    assert min(during.values()) >= 30


async def test_a_damaged_echo_is_a_bad_reply_reported_and_the_next_write_lands() -> None:
    # The link alone (no poller sharing it), so the damaged reply is surely the write's echo.
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim, client(sim.port) as c:
        link = await open_link(ModbusOptions.model_validate(meter(sim)), lambda _err: None)
        reported: list[str] = []
        try:
            sim.corrupt(1, "wrong_length")  # the echo one byte short
            with pytest.raises(BadReply, match="wrong_length"):
                await link.write(Table.HOLDING, 1, 100, [300], reported.append)
            sim.corrupt(1, "wrong_unit")  # Modbus TCP: an echo from another unit is a bad reply too
            with pytest.raises(BadReply, match="wrong_unit"):
                await link.write(Table.HOLDING, 1, 100, [301], reported.append)
            await link.write(Table.HOLDING, 1, 100, [310, 3], reported.append)
        finally:
            link.close()
        assert reported == ["wrong_length", "wrong_unit"]
        assert await holding(c, 100, 2) == [310, 3]
        assert writes(sim) == {6: 2, 16: 1}
