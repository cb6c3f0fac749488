"""The simulated Modbus meters, seen from outside: pymodbus's own client over TCP, raw RTU frames over the
pty. Values are decoded here with ``struct`` and explicit word orders, not with protocols.modbus, so that a
mistake shared by the simulator and the driver (both use that codec) would show."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import WriteSingleCoilRequest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from drivers.errors import ConnectionLost
from drivers.transport import SerialLink, open_serial
from firmware_sim import modbus as sim_modbus
from firmware_sim.modbus import (
    Faults,
    ModbusSimulator,
    SimPoint,
    parse_faults,
    parse_units,
    profile,
    serve_pty,
    serve_tcp,
)
from protocols.modbus import DataType, Table
from tests.broker import free_port
from tests.waiting import until_probe

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def client(port: int, lost: asyncio.Event | None = None) -> AsyncIterator[AsyncModbusTcpClient]:
    """pymodbus's client; ``lost`` is set when the connection drops."""

    def on_connect(up: bool) -> None:
        if not up and lost is not None:
            lost.set()

    c = AsyncModbusTcpClient(
        "127.0.0.1", port=port, retries=0, timeout=5, reconnect_delay=0, trace_connect=on_connect
    )
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


def f32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def crc_ok(frame: bytes) -> bool:
    return FramerRTU.compute_CRC(frame[:-2]).to_bytes(2, "big") == frame[-2:]


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, function, address, count)
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


async def exchange(link: SerialLink, request: bytes, size: int) -> bytes:
    await link.write(request)
    reply = b""
    async with asyncio.timeout(5):
        while len(reply) < size:
            reply += await link.read()
    return reply


async def test_energy_meter_floats_are_cdab_and_the_hole_is_exception_02() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim, client(sim.port) as c:
        sim.pin(1, "voltage_a", 231.7)
        regs = (await c.read_holding_registers(0, count=20, device_id=1)).registers
        assert (
            f32(regs[1], regs[0]) == struct.unpack(">f", struct.pack(">f", 231.7))[0]
        )  # CDAB: low word first
        assert 225 < f32(regs[3], regs[2]) < 235  # voltage_b, moving around 229.5
        assert 49.9 < f32(regs[19], regs[18]) < 50.1  # frequency
        hole = await c.read_holding_registers(18, count=4, device_id=1)
        assert hole.isError() and hole.exception_code == 2
        energy = (await c.read_holding_registers(40, count=2, device_id=1)).registers
        assert 1306 < f32(energy[1], energy[0]) < 1400  # unit 1 starts at 1306.42 kWh
        text = (await c.read_holding_registers(64, count=5, device_id=1)).registers
        assert b"".join(w.to_bytes(2, "big") for w in text) == b"EM00000001"
        status = (await c.read_holding_registers(70, count=1, device_id=1)).registers[0]
        assert status & 1  # running
    assert sim.stats.requests[1] == 5
    assert sim.stats.exceptions[(1, 2)] == 1


async def test_other_profiles_and_byte_orders() -> None:
    async with serve_tcp("127.0.0.1", 0, {2: "pd-monitor", 3: "water-quality"}) as sim, client(sim.port) as c:
        sim.pin(3, "ph", 7.25)  # 0x40E80000
        sim.pin(3, "samples_total", 0x0102030405060708)
        sim.pin(2, "temperature", -12.3)
        sim.pin(2, "alarm", True)
        ph = (await c.read_input_registers(0, count=2, device_id=3)).registers
        assert ph == [0xE840, 0x0000]  # BADC: bytes swapped in each register
        samples = (await c.read_input_registers(40, count=4, device_id=3)).registers
        assert samples == [0x0807, 0x0605, 0x0403, 0x0201]  # DCBA: little endian
        flow = (await c.read_input_registers(44, count=4, device_id=3)).registers
        assert 35000 < struct.unpack(">d", struct.pack(">4H", *flow))[0] < 36000
        temperature = (await c.read_input_registers(20, count=1, device_id=2)).registers[0]
        assert temperature == 0x10000 - 123  # int16 tenths
        bits = (await c.read_discrete_inputs(0, count=2, device_id=2)).bits
        assert bits[:2] == [True, False]
        assert (await c.read_coils(0, count=1, device_id=3)).bits[0] is False
        hole = await c.read_input_registers(3, count=2, device_id=2)
        assert hole.isError() and hole.exception_code == 2
    assert sim.stats.total_requests == 7


async def test_a_dead_unit_and_an_absent_unit_never_answer() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "energy-meter"}, Faults(dead=frozenset({2}))) as sim,
        client(sim.port) as c,
    ):
        for unit in (2, 9):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await c.read_holding_registers(0, count=2, device_id=unit)
        assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()
        sim.kill(1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await c.read_holding_registers(0, count=2, device_id=1)
    assert sim.stats.unanswered == {2: 1, 9: 1, 1: 1}
    assert sim.stats.replies == {1: 1}


async def test_slow_replies_come_late() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter"}, Faults(slow_s=0.3)) as sim,
        client(sim.port) as c,
    ):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await c.read_holding_registers(0, count=2, device_id=1)
        await sim.wait_for(lambda s: s.replies[1] == 1)  # the late reply was sent all the same
        sim.set_delay(1, 0)
        assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()


async def test_rtu_replies_and_their_corruptions(tmp_path: Path) -> None:
    link_path = tmp_path / "tty"
    async with serve_pty(link_path, {5: "energy-meter"}) as sim:
        sim.pin(5, "voltage_a", 230.1)
        link = await open_serial(str(link_path), 9600)
        try:
            request = rtu_request(5, 3, 0, 2)
            good = await exchange(link, request, 9)
            assert crc_ok(good) and good[:3] == b"\x05\x03\x04"
            assert (
                f32(*struct.unpack(">HH", good[5:7] + good[3:5]))
                == struct.unpack(">f", struct.pack(">f", 230.1))[0]
            )

            sim.corrupt(5, "bad_crc")
            bad = await exchange(link, request, 9)
            assert bad[:-2] == good[:-2] and not crc_ok(bad)

            sim.corrupt(5, "wrong_unit")
            other = await exchange(link, request, 9)
            assert crc_ok(other) and other[0] != 5 and other[1:-2] == good[1:-2]

            sim.corrupt(5, "wrong_length")
            short = await exchange(link, request, 8)
            assert crc_ok(short) and short[2] == 3 and len(short) == 8

            hole = await exchange(link, rtu_request(5, 3, 20, 2), 5)
            assert crc_ok(hole) and hole[1:3] == b"\x83\x02"
        finally:
            link.close()
    assert sim.stats.corrupted == {"bad_crc": 1, "wrong_unit": 1, "wrong_length": 1}
    assert sim.stats.requests[5] == 5


async def test_bad_crc_needs_rtu() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        with pytest.raises(ValueError, match="RTU"):
            sim.corrupt(1, "bad_crc")


async def test_an_unplugged_pty_and_a_dropped_tcp_connection(tmp_path: Path) -> None:
    link_path = tmp_path / "tty"
    async with serve_pty(link_path, {1: "energy-meter"}) as sim:
        link = await open_serial(str(link_path), 9600)
        try:
            await exchange(link, rtu_request(1, 3, 0, 2), 9)
            await sim.disconnect()
            with pytest.raises(ConnectionLost):
                async with asyncio.timeout(5):
                    await link.read()
        finally:
            link.close()
        link = await open_serial(str(link_path), 9600)  # plugged back in
        try:
            assert crc_ok(await exchange(link, rtu_request(1, 3, 0, 2), 9))
        finally:
            link.close()
    lost = asyncio.Event()
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim, client(sim.port, lost) as c:
        assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()
        await sim.disconnect()
        async with asyncio.timeout(5):
            await lost.wait()
        assert sim.stats.connections == 1


async def test_rtu_framing_over_tcp() -> None:
    async with serve_tcp("127.0.0.1", 0, {7: "pd-monitor"}, rtu_framing=True) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            writer.write(rtu_request(7, 4, 0, 3))
            async with asyncio.timeout(5):
                reply = await reader.readexactly(11)
        finally:
            writer.close()
        assert crc_ok(reply) and reply[:3] == b"\x07\x04\x06"


def test_values_move_with_time() -> None:
    points = {p.name: p for p in profile("energy-meter")}
    voltage = points["voltage_a"].model
    assert voltage(0, 1) != voltage(10, 1)
    assert all(220 < float(voltage(t, 1)) < 240 for t in range(0, 100, 7))
    energy = points["energy_import"].model
    assert float(energy(100, 1)) > float(energy(0, 1))
    counter = {p.name: p for p in profile("pd-monitor")}["pulse_count"].model
    assert int(counter(10, 1)) > int(counter(0, 1))
    assert [p.name for p in profile("registers", 3)] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="unknown profile"):
        profile("toaster")


def test_units_and_faults_from_the_command_line() -> None:
    assert parse_units(["1-3=pd-monitor", "5"]) == {
        1: "pd-monitor",
        2: "pd-monitor",
        3: "pd-monitor",
        5: "energy-meter",
    }
    with pytest.raises(ValueError, match="unknown profile"):
        parse_units(["1=toaster"])
    with pytest.raises(ValueError, match=r"1\.\.247"):
        parse_units(["0-3"])
    faults = parse_faults(["dead=3", "dead=4,slow=0.5@6", "wrong-length=0.01", "disconnect=60/2"])
    assert faults == Faults(
        dead=frozenset({3, 4}),
        slow_s=0.5,
        slow_units=frozenset({6}),
        wrong_length=0.01,
        disconnect_every_s=60,
        disconnect_down_s=2,
    )
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults(["noise=0.1"])
    with pytest.raises(ValueError, match="probability"):
        parse_faults(["bad-crc=2"])


class Lines(io.StringIO):
    """Output that can be waited on."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        self.changed.set()
        return super().write(text)

    async def wait_for(self, lines: int) -> None:
        async with asyncio.timeout(10):
            while self.getvalue().count("\n") < lines:
                self.changed.clear()
                await self.changed.wait()


async def test_run_from_args_serves_many_tcp_devices() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="family")
    sim_modbus.add_parser(sub)
    args = parser.parse_args(
        ["modbus", "--tcp", "127.0.0.1:0", "--servers", "3", "--units", "1-200=registers"]
    )
    out = Lines()
    stop = asyncio.Event()
    task = asyncio.create_task(sim_modbus.run_from_args(args, stop, out))
    try:
        await out.wait_for(3)
        lines = out.getvalue().splitlines()
        assert all(line.startswith("modbus simulator units 1-200 on tcp 127.0.0.1:") for line in lines)
        ports = [int(line.rsplit(":", 1)[1]) for line in lines]
        assert len(set(ports)) == 3
        for port in ports:
            async with client(port) as c:
                assert len((await c.read_holding_registers(0, count=10, device_id=200)).registers) == 10
    finally:
        stop.set()
        await task


def test_a_simulator_needs_units() -> None:
    with pytest.raises(ValueError):
        ModbusSimulator({})
    with pytest.raises(ValueError):
        ModbusSimulator({300: profile("energy-meter")})


# -- fidelity to the Modbus Application Protocol (v1.1b3): exceptions 01, 02 and 03, and each profile's map --
#
# pymodbus's client checks quantities before sending; a stranger testing a device sends what the standard
# forbids as well, so these requests encode whatever they are given.


class UncheckedRead(ReadHoldingRegistersRequest):
    """A read of ``count`` (any 16-bit number) of the table ``function_code`` says."""

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.count)


def unchecked_read(function: int, address: int, count: int, unit: int) -> ModbusPDU:
    request = type(f"UncheckedRead{function}", (UncheckedRead,), {"function_code": function})
    pdu: ModbusPDU = request(address=address, count=count, dev_id=unit)
    return pdu


class RawWriteCoil(WriteSingleCoilRequest):
    """FC05 with the output value as given (the standard allows only 0x0000 and 0xFF00)."""

    raw = 0

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.raw)


def exception_code(reply: ModbusPDU) -> int:
    assert reply.isError(), reply
    return int(getattr(reply, "exception_code", 0))


async def test_quantities_outside_the_standard_are_exception_03() -> None:
    async with (
        serve_tcp(
            "127.0.0.1",
            0,
            {1: "energy-meter", 2: "pd-monitor", 3: "water-quality", 4: "registers"},
            registers=200,
        ) as sim,
        client(sim.port) as c,
    ):
        for function, unit, limit in ((3, 1, 125), (4, 1, 125), (3, 4, 125), (2, 2, 2000), (1, 3, 2000)):
            for count in (0, limit + 1, 0xFFFF):
                reply = await c.execute(False, unchecked_read(function, 0, count, unit))
                assert reply.function_code == function | 0x80, (function, count)
                assert exception_code(reply) == 3, (function, count)
        # 125 registers is allowed, and answered where the map has them.
        assert len((await c.read_holding_registers(0, count=125, device_id=4)).registers) == 125
        assert exception_code(await c.write_registers(0, [0] * 124, device_id=1)) == 3
        assert exception_code(await c.write_coils(0, [False] * 1969, device_id=3)) == 3
        bad_value = RawWriteCoil(address=1, bits=[True], dev_id=3)
        bad_value.raw = 0x1234
        assert exception_code(await c.execute(False, bad_value)) == 3
        # The quantity is judged before the address: 03, not 02, for a read past the end of the map.
        assert exception_code(await c.execute(False, unchecked_read(3, 65535, 126, 1))) == 3
    assert sim.stats.exceptions[(1, 3)] == 8  # six reads, the write of 124 registers, the read at 65535


async def test_functions_a_device_does_not_implement_are_exception_01() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "pd-monitor", 3: "water-quality"}) as sim,
        client(sim.port) as c,
    ):
        # An energy meter has registers, no coils and no discrete inputs.
        assert exception_code(await c.read_coils(0, count=1, device_id=1)) == 1
        assert exception_code(await c.read_discrete_inputs(0, count=1, device_id=1)) == 1
        assert exception_code(await c.write_coil(0, True, device_id=1)) == 1
        assert exception_code(await c.write_coils(0, [True], device_id=1)) == 1
        assert exception_code(await c.read_coils(0, count=1, device_id=2)) == 1
        assert exception_code(await c.read_discrete_inputs(0, count=1, device_id=3)) == 1
        # Nor the diagnostics, identification or other functions pymodbus's server would answer.
        for reply in (
            await c.diag_query_data(b"\x12\x34", device_id=1),
            await c.report_device_id(device_id=1),
            await c.read_device_information(device_id=1),
            await c.read_exception_status(device_id=1),
            await c.mask_write_register(address=100, and_mask=0xFFFF, or_mask=1, device_id=1),
            await c.readwrite_registers(
                read_address=0, read_count=2, write_address=100, values=[7], device_id=1
            ),
        ):
            assert reply.function_code & 0x80, reply
            assert exception_code(reply) == 1, reply
        # A read of the tables a device has, past its map, is 02: the function exists, the address does not.
        assert exception_code(await c.read_discrete_inputs(0, count=3, device_id=2)) == 2
        assert exception_code(await c.read_coils(1, count=2, device_id=3)) == 2
    assert sim.stats.exceptions[(1, 1)] == 10


async def test_the_energy_meter_answers_its_measurements_as_input_registers_too() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim, client(sim.port) as c:
        sim.pin(1, "voltage_a", 231.7)
        sim.pin(1, "energy_import", 1234.5)
        held = (await c.read_holding_registers(0, count=20, device_id=1)).registers
        inputs = await c.read_input_registers(0, count=20, device_id=1)
        assert not inputs.isError()
        assert (
            f32(inputs.registers[1], inputs.registers[0]) == struct.unpack(">f", struct.pack(">f", 231.7))[0]
        )
        assert 49.9 < f32(inputs.registers[19], inputs.registers[18]) < 50.1
        assert inputs.registers[:2] == held[:2]
        energy = (await c.read_input_registers(40, count=2, device_id=1)).registers
        assert f32(energy[1], energy[0]) == 1234.5
        # The hole is a hole in both tables; the settings are holding registers only.
        assert exception_code(await c.read_input_registers(20, count=1, device_id=1)) == 2
        assert exception_code(await c.read_input_registers(100, count=1, device_id=1)) == 2
        assert not (await c.read_holding_registers(100, count=3, device_id=1)).isError()


async def test_settings_keep_what_is_written_and_measurements_refuse_writes_with_02() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "pd-monitor", 3: "water-quality"}) as sim,
        client(sim.port) as c,
    ):
        sim.pin(1, "voltage_a", 231.7)
        # A setting (the CT's primary current) and a float set-point (low word first, as the meter's floats).
        assert not (await c.write_register(100, 250, device_id=1)).isError()
        assert (await c.read_holding_registers(100, count=1, device_id=1)).registers == [250]
        limit = c.convert_to_registers(72.5, c.DATATYPE.FLOAT32, word_order="little")
        assert not (await c.write_registers(104, limit, device_id=1)).isError()
        assert (await c.read_holding_registers(104, count=2, device_id=1)).registers == limit
        assert sim.value(1, "ct_primary_a") == 250 and sim.value(1, "power_alarm_kw") == 72.5
        # Measurements are read-only: 02, and nothing changed.
        before = (await c.read_holding_registers(0, count=2, device_id=1)).registers
        assert exception_code(await c.write_register(0, 0, device_id=1)) == 2
        assert exception_code(await c.write_registers(0, [0, 0], device_id=1)) == 2
        assert exception_code(await c.write_register(70, 0, device_id=1)) == 2  # the status word
        assert exception_code(await c.write_register(20, 0, device_id=1)) == 2  # the hole
        assert (await c.read_holding_registers(0, count=2, device_id=1)).registers == before
        # Half of a float set-point, or a write spanning a setting and a measurement or a hole: 02.
        assert exception_code(await c.write_register(104, 0, device_id=1)) == 2
        assert exception_code(await c.write_registers(102, [15, 0, 0], device_id=1)) == 2
        assert (await c.read_holding_registers(104, count=2, device_id=1)).registers == limit
        # The PD monitor's alarm threshold is a setting; its status word is not.
        assert not (await c.write_register(110, 800, device_id=2)).isError()
        assert (await c.read_holding_registers(110, count=1, device_id=2)).registers == [800]
        assert exception_code(await c.write_register(100, 0, device_id=2)) == 2
        # The analyser's fault flag is its own; its automatic cleaning can be switched off and stays off.
        assert not (await c.write_coil(1, False, device_id=3)).isError()
        assert (await c.read_coils(0, count=2, device_id=3)).bits[:2] == [False, False]
        assert not (await c.write_coils(1, [True], device_id=3)).isError()
        assert (await c.read_coils(1, count=1, device_id=3)).bits[0] is True
        assert exception_code(await c.write_coil(0, True, device_id=3)) == 2
        assert exception_code(await c.write_coils(0, [True, True], device_id=3)) == 2
        assert (await c.read_coils(0, count=1, device_id=3)).bits[0] is False
        # Input registers and discrete inputs have no write function at all; a model string is read-only.
        assert exception_code(await c.write_register(200, 0x4142, device_id=3)) == 2


async def test_a_pymodbus_serial_client_on_the_pty(tmp_path: Path) -> None:
    link_path = tmp_path / "ttyRS485"
    async with serve_pty(link_path, {1: "energy-meter", 7: "pd-monitor"}) as sim:
        sim.pin(1, "voltage_b", 229.25)
        sim.pin(7, "alarm", True)
        c = AsyncModbusSerialClient(str(link_path), baudrate=9600, timeout=5, retries=0, reconnect_delay=0)
        assert await c.connect()
        try:
            inputs = (await c.read_input_registers(2, count=2, device_id=1)).registers
            assert f32(inputs[1], inputs[0]) == 229.25
            assert exception_code(await c.execute(False, unchecked_read(4, 0, 126, 7))) == 3
            assert exception_code(await c.execute(False, unchecked_read(3, 0, 0, 1))) == 3
            assert exception_code(await c.write_register(2, 0, device_id=1)) == 2
            assert not (await c.write_register(102, 30, device_id=1)).isError()
            assert (await c.read_holding_registers(102, count=1, device_id=1)).registers == [30]
            assert exception_code(await c.read_coils(0, count=1, device_id=7)) == 1
            assert exception_code(await c.diag_query_data(b"\x00\x01", device_id=7)) == 1
            assert (await c.read_discrete_inputs(0, count=2, device_id=7)).bits[:2] == [True, False]
        finally:
            c.close()


def test_each_profile_documents_its_map() -> None:
    """Every point of every profile is in its docstring, by name, with its address."""
    for name, make in sim_modbus.PROFILES.items():
        doc = make.__doc__ or ""
        assert doc, name
        if name == "registers":
            continue
        for point in make():
            assert point.name in doc, (name, point.name)
            assert re.search(rf"\b{point.address}\b", doc), (name, point.name, point.address)


def test_only_holding_registers_and_coils_hold_settings() -> None:
    f32 = DataType.FLOAT32

    def const(t: float, unit: int) -> float:
        return 1.0

    for point in (
        SimPoint("x", Table.INPUT, 0, f32, const, writable=True),
        SimPoint("x", Table.DISCRETE, 0, DataType.BOOL, const, writable=True),
        SimPoint("x", Table.HOLDING, 0, DataType.BIT, const, bit=1, writable=True),
        SimPoint("x", Table.HOLDING, 0, f32, const, writable=True, mirror=Table.INPUT),
        SimPoint("x", Table.INPUT, 0, f32, const, mirror=Table.COIL),
    ):
        with pytest.raises(ValueError, match="unit 1: point 'x'"):
            ModbusSimulator({1: [point]})


@given(
    addresses=st.sets(st.integers(0, 300), min_size=1, max_size=60),
    address=st.integers(0, 0xFFFF),
    count=st.integers(0, 0xFFFF),
)
def test_a_read_is_judged_as_the_standard_orders_it(addresses: set[int], address: int, count: int) -> None:
    """03 for a quantity out of 1..125 first, then 02 unless every register asked for is mapped."""

    def zero(t: float, unit: int) -> int:
        return 0

    points = [SimPoint(f"r{a}", Table.HOLDING, a, DataType.UINT16, zero) for a in addresses]
    unit = ModbusSimulator({1: points}).units[1]
    for start, n in ((address, count), (address % 320, count % 130)):
        expected = 3 if not 1 <= n <= 125 else None if set(range(start, start + n)) <= addresses else 2
        assert unit.refuse_read(Table.HOLDING, start, n) == expected
        assert unit.refuse_read(Table.COIL, start, n) == 1  # no coils at all


async def test_tcp_unplugged_again_and_again_refuses_while_down_and_serves_after() -> None:
    """Each TCP unplug with a down time closes the listener that is open *then* (pymodbus replaces its
    listener at every ``listen()``): the second one used to close a stale one, so a client got in while the
    device was meant to be down, and re-listening on the busy port closed the live listener for a period."""

    async def refused(port: int) -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    # a port of its own: listening again on port 0 would take another one (the CLI's --tcp names the port)
    async with serve_tcp("127.0.0.1", free_port(), {1: "energy-meter"}) as sim:
        for _ in range(3):
            down = asyncio.create_task(sim.disconnect(1.0))
            await until_probe("the port refusing while the device is down", lambda: refused(sim.port), bool)
            await down
            lost = asyncio.Event()
            async with client(sim.port, lost) as c:
                assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()
