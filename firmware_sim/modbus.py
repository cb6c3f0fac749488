"""Simulated Modbus meters on pymodbus's server: Modbus TCP on a TCP port, Modbus RTU on a pty.

Each unit id on a bus runs a device *profile*, a register map of real instruments:

- ``energy-meter``: a three-phase energy meter; float32 values in CDAB word order (low word first, as many
  DIN-rail meters send them) in holding registers: phase voltages and currents, active and reactive
  power, power factor, frequency, a hole (20-39, exception 02 if read), import and export energy that
  grow over time, a serial number (string) and a status register of bits;
- ``pd-monitor``: a partial-discharge monitor; discharge magnitudes per channel (uint16 pC, input
  registers), a pulse counter (uint32), discharge energy (float32), temperature and humidity (int16 /
  uint16 in tenths), alarm and sensor-fault discrete inputs, a status register of bits;
- ``water-quality``: a water-quality analyser; pH, turbidity, dissolved oxygen, conductivity, temperature,
  COD and ammonia as float32 in BADC order (bytes swapped in each register), a sample counter (uint64), a
  totalised flow (float64) and a model string;
- ``registers``: N holding registers (uint16) whose values change at every read: the benchmark's load.

Values move with time (slow sine waves around plausible levels, per-unit phases, counters that only grow);
:meth:`ModbusSimulator.pin` fixes a value so that a test can check exact decoding. Values are encoded with
:func:`protocols.modbus.encode`, the codec whose decoding the driver uses, at the moment a read asks for them.

Faults (:class:`Faults`, and on demand): a dead unit (requests get no answer), slow replies (a delay before
answering), exception 02 on a hole of the map (by construction: holes are addresses pymodbus marks
invalid), corrupted replies (a bad CRC, a wrong unit id, a byte count that does not match the request: on
RTU, CRCs are recomputed so only the intended fault shows) with a probability per reply or for the next N
replies of a unit, and disconnects (TCP connections closed, the pty unplugged).

The simulator never imports ``drivers/`` or ``gateway/``: pymodbus's server and ``protocols/`` only.

Run one with ``edgegw sim modbus --help``; from Python, :func:`serve_tcp` / :func:`serve_pty` (async
context managers yielding the :class:`ModbusSimulator`). A test waits on :meth:`ModbusSimulator.wait_for`,
never on a sleep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import re
import sys
import tty
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from protocols import modbus as mb
from protocols.modbus import ByteOrder, DataType, Table

from .pty import PtyEndpoint

__all__ = [
    "PROFILES",
    "Faults",
    "ModbusSimulator",
    "SimPoint",
    "SimStats",
    "add_parser",
    "profile",
    "run_from_args",
    "serve_pty",
    "serve_tcp",
]

# pymodbus warns about deprecations and logs every request it cannot serve; the simulator counts instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

Model = Callable[[float, int], float | int | bool | str]
"""A value as a function of the seconds since the simulator started and the unit id."""


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One value of a simulated instrument: where it lives, how it is encoded, how it moves."""

    name: str
    table: Table
    address: int
    dtype: DataType
    model: Model
    order: ByteOrder = ByteOrder.ABCD
    length: int | None = None
    bit: int | None = None
    scale: float = 1.0
    """The register holds round((value - offset) / scale)."""
    offset: float = 0.0
    unit: str | None = None

    @property
    def count(self) -> int:
        return mb.register_count(self.dtype, self.length)

    def raw(self, value: float | int | bool | str) -> bool | int | float | str:
        """The value as stored (unscaled), ready for :func:`protocols.modbus.encode`."""
        if self.dtype.is_numeric and (self.scale != 1 or self.offset != 0):
            assert isinstance(value, int | float)
            scaled = (value - self.offset) / self.scale
            return scaled if self.dtype in (DataType.FLOAT32, DataType.FLOAT64) else round(scaled)
        if self.dtype in (DataType.FLOAT32, DataType.FLOAT64) and isinstance(value, int | float):
            return float(value)
        return value


def _wave(mean: float, amplitude: float, period_s: float, decimals: int = 3) -> Model:
    def value(t: float, unit: int) -> float:
        return round(mean + amplitude * math.sin(2 * math.pi * t / period_s + unit * 0.7), decimals)

    return value


def _growing(start: float, per_s: float, decimals: int = 2) -> Model:
    return lambda t, unit: round(start + unit * 100 + per_s * t, decimals)


def _counter(per_s: float) -> Model:
    return lambda t, unit: int(unit * 1000 + per_s * t)


def _const(value: float | int | bool | str) -> Model:
    return lambda t, unit: value


def _square(period_s: float, duty: float = 0.5) -> Model:
    return lambda t, unit: ((t + unit) % period_s) < duty * period_s


def _energy_meter() -> tuple[SimPoint, ...]:
    f32 = DataType.FLOAT32
    cdab = ByteOrder.CDAB
    h = Table.HOLDING
    return (
        SimPoint("voltage_a", h, 0, f32, _wave(230.0, 3.0, 40, 1), cdab, unit="V"),
        SimPoint("voltage_b", h, 2, f32, _wave(229.5, 3.0, 45, 1), cdab, unit="V"),
        SimPoint("voltage_c", h, 4, f32, _wave(231.0, 3.0, 50, 1), cdab, unit="V"),
        SimPoint("current_a", h, 6, f32, _wave(52.0, 8.0, 30, 2), cdab, unit="A"),
        SimPoint("current_b", h, 8, f32, _wave(49.0, 8.0, 35, 2), cdab, unit="A"),
        SimPoint("current_c", h, 10, f32, _wave(51.0, 8.0, 38, 2), cdab, unit="A"),
        SimPoint("active_power", h, 12, f32, _wave(34.5, 5.0, 30, 2), cdab, unit="kW"),
        SimPoint("reactive_power", h, 14, f32, _wave(6.2, 1.5, 30, 2), cdab, unit="kvar"),
        SimPoint("power_factor", h, 16, f32, _wave(0.97, 0.02, 60, 3), cdab),
        SimPoint("frequency", h, 18, f32, _wave(50.0, 0.05, 20, 2), cdab, unit="Hz"),
        # 20-39: not mapped (exception 02)
        SimPoint("energy_import", h, 40, f32, _growing(1206.42, 0.01), cdab, unit="kWh"),
        SimPoint("energy_export", h, 42, f32, _growing(12.5, 0.001), cdab, unit="kWh"),
        SimPoint("serial_number", h, 64, DataType.STRING, lambda t, u: f"EM{u:08d}", length=10),
        SimPoint("status_running", h, 70, DataType.BIT, _const(True), bit=0),
        SimPoint("status_alarm", h, 70, DataType.BIT, _square(60, 0.1), bit=3),
    )


def _pd_monitor() -> tuple[SimPoint, ...]:
    i = Table.INPUT
    return (
        SimPoint("pd_ch1", i, 0, DataType.UINT16, _wave(120, 60, 25, 0), unit="pC"),
        SimPoint("pd_ch2", i, 1, DataType.UINT16, _wave(80, 40, 27, 0), unit="pC"),
        SimPoint("pd_ch3", i, 2, DataType.UINT16, _wave(95, 50, 29, 0), unit="pC"),
        # 3-9: not mapped
        SimPoint("pulse_count", i, 10, DataType.UINT32, _counter(12.5)),
        SimPoint("pd_energy", i, 12, DataType.FLOAT32, _wave(0.85, 0.3, 33, 3), unit="mJ"),
        SimPoint("temperature", i, 20, DataType.INT16, _wave(31.5, 4.0, 120, 1), scale=0.1, unit="°C"),
        SimPoint("humidity", i, 21, DataType.UINT16, _wave(55.0, 10.0, 150, 1), scale=0.1, unit="%RH"),
        SimPoint("alarm", Table.DISCRETE, 0, DataType.BOOL, _square(40, 0.2)),
        SimPoint("sensor_fault", Table.DISCRETE, 1, DataType.BOOL, _const(False)),
        SimPoint("status_running", Table.HOLDING, 100, DataType.BIT, _const(True), bit=0),
        SimPoint("status_alarm", Table.HOLDING, 100, DataType.BIT, _square(40, 0.2), bit=3),
    )


def _water_quality() -> tuple[SimPoint, ...]:
    f32 = DataType.FLOAT32
    badc = ByteOrder.BADC
    i = Table.INPUT
    return (
        SimPoint("ph", i, 0, f32, _wave(7.2, 0.3, 90, 2), badc, unit="pH"),
        SimPoint("turbidity", i, 2, f32, _wave(1.8, 0.6, 70, 2), badc, unit="NTU"),
        SimPoint("dissolved_oxygen", i, 4, f32, _wave(8.1, 0.8, 110, 2), badc, unit="mg/L"),
        SimPoint("conductivity", i, 6, f32, _wave(540.0, 40.0, 130, 1), badc, unit="uS/cm"),
        SimPoint("temperature", i, 8, f32, _wave(18.5, 1.5, 300, 2), badc, unit="°C"),
        SimPoint("cod", i, 10, f32, _wave(22.0, 5.0, 200, 1), badc, unit="mg/L"),
        SimPoint("ammonia", i, 12, f32, _wave(0.42, 0.1, 180, 3), badc, unit="mg/L"),
        # 14-39: not mapped
        SimPoint("samples_total", i, 40, DataType.UINT64, _counter(0.5), ByteOrder.DCBA),
        SimPoint("flow_total", i, 44, DataType.FLOAT64, _growing(35120.5, 0.02, 3), unit="m3"),
        SimPoint("model", Table.HOLDING, 200, DataType.STRING, _const("WQ-7 multiparameter"), length=20),
        SimPoint("fault", Table.COIL, 0, DataType.BOOL, _const(False)),
    )


def _registers(count: int) -> tuple[SimPoint, ...]:
    def changing(index: int) -> Model:
        # A different value at every read (the benchmark wants every reading to be news).
        return lambda t, unit: int(t * 1000 + unit * 7 + index) & 0xFFFF

    return tuple(SimPoint(f"r{i}", Table.HOLDING, i, DataType.UINT16, changing(i)) for i in range(count))


PROFILES: Final[dict[str, Callable[[], tuple[SimPoint, ...]]]] = {
    "energy-meter": _energy_meter,
    "pd-monitor": _pd_monitor,
    "water-quality": _water_quality,
    "registers": lambda: _registers(10),
}
"""Profile name -> its register map (``registers`` is 10 registers here; see :func:`profile`)."""


def profile(name: str, registers: int = 10) -> tuple[SimPoint, ...]:
    """The register map of profile ``name`` (``registers`` sets the size of the ``registers`` profile)."""
    if name == "registers":
        return _registers(registers)
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None


# -- faults and counters ------------------------------------------------------------------------------------


CORRUPTIONS: Final = ("bad_crc", "wrong_unit", "wrong_length")


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong. Probabilities are per reply; units name unit ids."""

    dead: frozenset[int] = frozenset()
    """Units that never answer."""
    slow_s: float = 0.0
    """Delay before each reply of the units in ``slow_units`` (all units if that is empty)."""
    slow_units: frozenset[int] = frozenset()
    bad_crc: float = 0.0
    """RTU only (TCP has no CRC)."""
    wrong_unit: float = 0.0
    wrong_length: float = 0.0
    disconnect_every_s: float = 0.0
    """Period of disconnects (pty unplugged and plugged back, TCP connections closed); 0: on demand only."""
    disconnect_down_s: float = 0.0

    def __post_init__(self) -> None:
        for name in CORRUPTIONS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {name}={value}: a probability is 0..1")
        for name in ("slow_s", "disconnect_every_s", "disconnect_down_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"fault {name} must not be negative")


@dataclass(slots=True)
class SimStats:
    """What the simulator has seen and done (monotonic counters)."""

    requests: Counter[int] = field(default_factory=Counter)
    """Requests received, per unit id."""
    replies: Counter[int] = field(default_factory=Counter)
    """Replies sent intact (exceptions included), per unit."""
    exceptions: Counter[tuple[int, int]] = field(default_factory=Counter)
    """Exception replies, per (unit, exception code)."""
    unanswered: Counter[int] = field(default_factory=Counter)
    """Requests left without an answer (dead or absent unit), per unit."""
    corrupted: Counter[str] = field(default_factory=Counter)
    """Replies corrupted, per kind (bad_crc, wrong_unit, wrong_length)."""
    connections: int = 0
    """TCP connections accepted (or pty sessions opened)."""

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


# -- the simulator ------------------------------------------------------------------------------------------


class _Unit:
    """One unit id: its points by table, its pinned values, its own faults."""

    def __init__(self, unit: int, points: Sequence[SimPoint]) -> None:
        self.unit = unit
        self.points = tuple(points)
        self.by_name = {p.name: p for p in self.points}
        if len(self.by_name) != len(self.points):
            raise ValueError(f"unit {unit}: duplicate point names")
        self.by_table: dict[Table, tuple[SimPoint, ...]] = {
            table: tuple(sorted((p for p in self.points if p.table is table), key=lambda p: p.address))
            for table in Table
        }
        self.pinned: dict[str, float | int | bool | str] = {}
        self.delay_s = 0.0
        self.dead = False
        self.corrupt_next: list[str] = []

    def value(self, point: SimPoint, t: float) -> float | int | bool | str:
        if point.name in self.pinned:
            return self.pinned[point.name]
        return point.model(t, self.unit)

    def sim_device(self, action: Callable[..., Any]) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT):
            blocks.append(self._block(table))
        return SimDevice(
            self.unit,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            use_bit_addressing=True,
            action=action,
        )

    def _block(self, table: Table) -> list[SimData]:
        points = self.by_table[table]
        if table.is_bits:
            if not points:
                return [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
            bits: dict[int, bool] = {p.address: bool(self.value(p, 0.0)) for p in points}
            first, last = min(bits), max(bits)
            return [
                SimData(
                    first, values=[bits.get(a, False) for a in range(first, last + 1)], datatype=SimType.BITS
                )
            ]
        if not points:
            return [SimData(0, datatype=SimType.INVALID)]
        words: dict[int, int] = {}
        for p in points:
            encoded = mb.encode(p.raw(self.value(p, 0.0)), p.dtype, p.order, length=p.length, bit=p.bit)
            for k, w in enumerate(encoded):
                words[p.address + k] = words.get(p.address + k, 0) | w
        data: list[SimData] = []
        run: list[int] = []
        start = prev = -2
        for address in sorted(words):
            if address != prev + 1 and run:
                data.append(SimData(start, values=run, datatype=SimType.REGISTERS))
                run = []
            if not run:
                start = address
            run.append(words[address])
            prev = address
        if run:
            data.append(SimData(start, values=run, datatype=SimType.REGISTERS))
        return data


class ModbusSimulator:
    """The meters on one bus (one TCP server, or one pty), their values and their faults."""

    def __init__(
        self, units: Mapping[int, Sequence[SimPoint]], faults: Faults | None = None, *, seed: int = 0
    ) -> None:
        if not units:
            raise ValueError("a simulated bus needs at least one unit")
        for unit in units:
            if not 0 <= unit <= 255:
                raise ValueError(f"unit id {unit} out of range 0..255")
        self.faults = faults or Faults()
        self.units = {unit: _Unit(unit, points) for unit, points in units.items()}
        for unit in self.faults.dead:
            if unit in self.units:
                self.units[unit].dead = True
        for unit, state in self.units.items():
            if self.faults.slow_s and (not self.faults.slow_units or unit in self.faults.slow_units):
                state.delay_s = self.faults.slow_s
        self.stats = SimStats()
        self.port = 0
        """The TCP port (after :func:`serve_tcp`)."""
        self.link: Path | None = None
        """The pty's symlink (after :func:`serve_pty`)."""
        self.rtu = False
        self._rng = random.Random(seed)
        self._start = 0.0
        self._changed = asyncio.Event()
        self._disconnect_hook: Callable[[float], Any] | None = None

    # -- control --------------------------------------------------------------------------------------
    def pin(self, unit: int, name: str, value: float | int | bool | str) -> None:
        """Fix point ``name`` of ``unit`` at ``value`` (engineering units) until :meth:`unpin`."""
        state = self.units[unit]
        if name not in state.by_name:
            raise KeyError(f"unit {unit} has no point {name!r}")
        state.pinned[name] = value

    def unpin(self, unit: int, name: str) -> None:
        self.units[unit].pinned.pop(name, None)

    def value(self, unit: int, name: str) -> float | int | bool | str:
        """The value point ``name`` of ``unit`` has now."""
        state = self.units[unit]
        return state.value(state.by_name[name], self._now())

    def kill(self, unit: int, dead: bool = True) -> None:
        """Make ``unit`` stop answering (or answer again)."""
        self.units[unit].dead = dead

    def set_delay(self, unit: int, seconds: float) -> None:
        """Delay every reply of ``unit`` by ``seconds``."""
        self.units[unit].delay_s = seconds

    def corrupt(self, unit: int, kind: str, times: int = 1) -> None:
        """Corrupt the next ``times`` replies of ``unit`` with ``kind``: bad_crc, wrong_unit, wrong_length."""
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r} (known: {', '.join(CORRUPTIONS)})")
        if kind == "bad_crc" and not self.rtu:
            raise ValueError("bad_crc needs RTU framing (Modbus TCP has no CRC)")
        self.units[unit].corrupt_next.extend([kind] * times)

    async def disconnect(self, downtime: float = 0.0) -> None:
        """Drop the link: close TCP connections (refusing new ones for ``downtime``) or unplug the pty."""
        if self._disconnect_hook is not None:
            await self._disconnect_hook(downtime)

    async def wait_for(self, predicate: Callable[[SimStats], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate(stats)`` holds (checked at every request and reply); TimeoutError else."""
        async with asyncio.timeout(timeout):
            while not predicate(self.stats):
                self._changed.clear()
                await self._changed.wait()

    # -- pymodbus hooks -------------------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._start

    def _devices(self) -> list[SimDevice]:
        self._start = asyncio.get_running_loop().time()
        return [state.sim_device(self._action(state)) for state in self.units.values()]

    def _action(self, state: _Unit) -> Callable[..., Any]:
        async def action(  # noqa: PLR0917 (pymodbus's SimAction signature)
            function: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> None:
            self._refresh(state, function, start, address=address, count=count, regs=registers)
            if state.delay_s > 0:
                await asyncio.sleep(state.delay_s)

        return action

    def _refresh(
        self, state: _Unit, function: int, start: int, *, address: int, count: int, regs: list[int]
    ) -> None:
        """Write the current values of the points a read touches into pymodbus's registers."""
        table = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}.get(function)
        if table is None:
            return
        t = self._now()
        if table.is_bits:
            # pymodbus passes the block's packed registers (16 bits each, bit 0 first) and its first register;
            # ``count`` is then registers, so take the whole block's bits.
            for p in state.by_table[table]:
                index = p.address // 16 - start
                if 0 <= index < len(regs):
                    mask = 1 << (p.address % 16)
                    regs[index] = (regs[index] | mask) if state.value(p, t) else (regs[index] & ~mask)
            return
        end = address + count
        touched: dict[int, int] = {}
        for p in state.by_table[table]:
            if p.address >= end or p.address + p.count <= address:
                continue
            words = mb.encode(p.raw(state.value(p, t)), p.dtype, p.order, length=p.length, bit=p.bit)
            for k, w in enumerate(words):
                a = p.address + k
                if p.dtype is DataType.BIT:
                    touched[a] = touched.get(a, 0) | w
                else:
                    touched[a] = w
        for a, w in touched.items():
            index = a - start
            if 0 <= index < len(regs):
                regs[index] = w

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        unit = pdu.dev_id
        if sending:
            if pdu.isError():
                self.stats.exceptions[(unit, int(getattr(pdu, "exception_code", 0)))] += 1
        else:
            self.stats.requests[unit] += 1
            self._changed.set()
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.rtu else (data[6] if len(data) > 6 else -1)
        state = self.units.get(unit)
        self._changed.set()
        if state is None or state.dead:
            self.stats.unanswered[unit] += 1
            return b""
        kind: str | None = state.corrupt_next.pop(0) if state.corrupt_next else None
        if kind is None:
            faults = self.faults
            for name in CORRUPTIONS:
                p = getattr(faults, name)
                if p and (name != "bad_crc" or self.rtu) and self._rng.random() < p:
                    kind = name
                    break
        if kind is None:
            self.stats.replies[unit] += 1
            return data
        self.stats.corrupted[kind] += 1
        return _corrupt(data, kind, self.rtu)


def _corrupt(data: bytes, kind: str, rtu: bool) -> bytes:
    """``data`` (one reply frame) with one fault; RTU CRCs recomputed except for bad_crc."""
    if rtu:
        body = bytearray(data[:-2])
        if kind == "bad_crc":
            return bytes(data[:-1]) + bytes(((data[-1] ^ 0x5A) or 1,))
        if kind == "wrong_unit":
            body[0] = (body[0] % 247) + 1
        elif kind == "wrong_length" and len(body) > 3 and body[1] < 0x80:
            body[2] -= 1
            del body[-1]
        return bytes(body) + mb.crc16(body).to_bytes(2, "little")
    frame = bytearray(data)
    if kind == "wrong_unit":
        frame[6] = (frame[6] % 247) + 1
    elif kind == "wrong_length" and len(frame) > 9 and frame[7] < 0x80:
        frame[8] -= 1
        del frame[-1]
        frame[4:6] = (len(frame) - 6).to_bytes(2, "big")
    return bytes(frame)


# -- serving ------------------------------------------------------------------------------------------------


def _units_map(
    units: Mapping[int, str | Sequence[SimPoint]], registers: int
) -> dict[int, Sequence[SimPoint]]:
    return {
        unit: profile(spec, registers) if isinstance(spec, str) else spec
        for unit, spec in sorted(units.items())
    }


@contextlib.asynccontextmanager
async def serve_tcp(
    host: str,
    port: int,
    units: Mapping[int, str | Sequence[SimPoint]],
    faults: Faults | None = None,
    *,
    registers: int = 10,
    seed: int = 0,
    rtu_framing: bool = False,
) -> AsyncIterator[ModbusSimulator]:
    """Serve ``units`` (unit id -> profile name or points) with Modbus TCP on ``host:port`` (0: a free port,
    then ``sim.port``). With ``rtu_framing``, RTU frames over TCP: a serial-to-Ethernet converter with
    meters behind it."""
    sim = ModbusSimulator(_units_map(units, registers), faults, seed=seed)
    sim.rtu = rtu_framing
    server = ModbusTcpServer(
        sim._devices(),
        framer=FramerType.RTU if rtu_framing else FramerType.SOCKET,
        address=(host, port),
        trace_packet=sim._trace_packet,
        trace_pdu=sim._trace_pdu,
        trace_connect=lambda up: _count_connection(sim, up),
    )
    await server.serve_forever(background=True)
    transport: Any = server.transport
    sim.port = int(transport.sockets[0].getsockname()[1])
    down_until = 0.0

    async def disconnect(downtime: float) -> None:
        nonlocal down_until
        down_until = asyncio.get_running_loop().time() + downtime
        for connection in list(server.active_connections.values()):
            connection.close()
        if downtime > 0:
            transport.close()
            await asyncio.sleep(downtime)
            await server.listen()

    sim._disconnect_hook = disconnect
    periodic = asyncio.create_task(_periodic_disconnects(sim))
    try:
        yield sim
    finally:
        periodic.cancel()
        await asyncio.gather(periodic, return_exceptions=True)
        sim._disconnect_hook = None
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


def _count_connection(sim: ModbusSimulator, up: bool) -> None:
    if up:
        sim.stats.connections += 1
        sim._changed.set()


@contextlib.asynccontextmanager
async def serve_pty(
    link: Path,
    units: Mapping[int, str | Sequence[SimPoint]],
    faults: Faults | None = None,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    registers: int = 10,
    seed: int = 0,
) -> AsyncIterator[ModbusSimulator]:
    """Serve ``units`` with Modbus RTU on a new pty whose slave ``link`` points to (removed on exit).

    pymodbus's serial server opens a serial port by path, so it gets a second, private pty; a bridge copies
    bytes between the two masters. Line settings are only recorded: a pty carries bytes at any speed."""
    sim = ModbusSimulator(_units_map(units, registers), faults, seed=seed)
    sim.rtu = True
    sim.link = link
    loop = asyncio.get_running_loop()
    inner_master, inner_slave = os.openpty()
    tty.setraw(inner_master)
    tty.setraw(inner_slave)
    os.set_blocking(inner_master, False)
    inner_path = os.ttyname(inner_slave)
    endpoint = PtyEndpoint(link)
    endpoint.open()
    server = ModbusSerialServer(
        sim._devices(),
        port=inner_path,
        baudrate=baudrate,
        # The inner pty is private and carries bytes at any setting; some kernels refuse even parity on a
        # pty (EINVAL), so the recorded ``parity`` is not applied to it.
        parity="N",
        stopbits=stopbits,
        trace_packet=sim._trace_packet,
        trace_pdu=sim._trace_pdu,
    )
    link_up = asyncio.Event()
    link_up.set()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    def server_wrote() -> None:
        try:
            data = os.read(inner_master, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        if data:
            replies.put_nowait(data)

    async def server_to_client() -> None:
        while True:
            data = await replies.get()
            if endpoint.is_open:
                with contextlib.suppress(ConnectionError):
                    await endpoint.write(data)

    async def client_to_server() -> None:
        while True:
            await link_up.wait()
            generation = endpoint.generation
            sim.stats.connections += 1
            while True:
                data = await endpoint.read(generation)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(inner_master, view) :]
                    except BlockingIOError:
                        await asyncio.sleep(0.001)
            if endpoint.is_open and endpoint.generation == generation:
                await endpoint.wait_closed()

    async def disconnect(downtime: float) -> None:
        link_up.clear()
        endpoint.disconnect()
        if downtime > 0:
            await asyncio.sleep(downtime)
        endpoint.open()
        link_up.set()

    loop.add_reader(inner_master, server_wrote)
    await server.serve_forever(background=True)
    sim._disconnect_hook = disconnect
    tasks = [
        asyncio.create_task(client_to_server()),
        asyncio.create_task(server_to_client()),
        asyncio.create_task(_periodic_disconnects(sim)),
    ]
    try:
        yield sim
    finally:
        sim._disconnect_hook = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
        loop.remove_reader(inner_master)
        os.close(inner_master)
        os.close(inner_slave)
        endpoint.close()


async def _periodic_disconnects(sim: ModbusSimulator) -> None:
    every = sim.faults.disconnect_every_s
    if every <= 0:
        return
    while True:
        await asyncio.sleep(every)
        await sim.disconnect(sim.faults.disconnect_down_s)


# -- command line -----------------------------------------------------------------------------------------

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  dead=UNIT          that unit never answers (repeat for more units)
  slow=S[@UNIT]      replies S seconds late (of one unit, or of all)
  bad-crc=P          a reply's CRC corrupted, with probability P (RTU only)
  wrong-unit=P       a reply with another unit id, with probability P
  wrong-length=P     a reply one data byte short (byte count to match), with probability P
  disconnect=EVERY[/DOWN]
                     the link drops every EVERY seconds (TCP connections closed, the pty unplugged) and
                     stays down DOWN seconds (default 0)
profiles: energy-meter (float32 CDAB, holding), pd-monitor, water-quality (float32 BADC, input),
          registers (--registers N holding registers, values changing at every read: benchmark load)
example: edgegw sim modbus --link /tmp/ttyRS485 --units 1-8=energy-meter --fault dead=5,slow=0.3@6
         edgegw sim modbus --tcp 127.0.0.1:5020 --units 1=pd-monitor --units 2=water-quality
         edgegw sim modbus --tcp 127.0.0.1:0 --servers 4 --units 1-100=registers --registers 10
"""

_UNITS = re.compile(r"^\s*(\d+)(?:\s*-\s*(\d+))?\s*(?:=\s*([a-z0-9-]+))?\s*$")


def parse_units(specs: Iterable[str]) -> dict[int, str]:
    """``["1-8=energy-meter", "9=pd-monitor"]`` -> {1: "energy-meter", ..., 9: "pd-monitor"}."""
    units: dict[int, str] = {}
    for spec in (part for item in specs for part in item.split(",")):
        if not spec.strip():
            continue
        match = _UNITS.match(spec)
        if match is None:
            raise ValueError(f"units {spec!r}: expected UNIT[-UNIT][=PROFILE]")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        name = match.group(3) or "energy-meter"
        if name not in PROFILES:
            raise ValueError(f"units {spec!r}: unknown profile {name!r} (known: {', '.join(PROFILES)})")
        if not 1 <= first <= last <= 247:
            raise ValueError(f"units {spec!r}: unit ids are 1..247")
        for unit in range(first, last + 1):
            units[unit] = name
    return units


def parse_faults(specs: Iterable[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    dead: set[int] = set()
    slow_units: set[int] = set()
    values: dict[str, float] = {}
    for spec in (part.strip() for item in specs for part in item.split(",")):
        if not spec:
            continue
        name, sep, value = spec.partition("=")
        name = name.strip().lower().replace("_", "-")
        if not sep or not value:
            raise ValueError(f"fault {spec!r}: expected NAME=VALUE")
        try:
            if name == "dead":
                dead.add(int(value))
            elif name == "slow":
                seconds, at, unit = value.partition("@")
                values["slow_s"] = float(seconds)
                if at:
                    slow_units.add(int(unit))
            elif name in ("bad-crc", "wrong-unit", "wrong-length"):
                values[name.replace("-", "_")] = float(value)
            elif name == "disconnect":
                every, _, down = value.partition("/")
                values["disconnect_every_s"] = float(every)
                values["disconnect_down_s"] = float(down) if down else 0.0
                if values["disconnect_every_s"] <= 0:
                    raise ValueError("disconnect period must be positive")
            else:
                raise ValueError(f"unknown fault {name!r}")
        except ValueError as err:
            raise ValueError(f"fault {spec!r}: {err}") from err
    return Faults(dead=frozenset(dead), slow_units=frozenset(slow_units), **values)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``modbus`` to ``edgegw sim``'s subcommands."""
    parser = sub.add_parser(
        "modbus",
        help="Modbus meters (RTU on a pty, TCP), pymodbus server",
        description="Simulated Modbus meters: RTU on a pty, or Modbus TCP on one or more TCP ports.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--link", type=Path, metavar="PATH", help="RTU on a pty; PATH becomes a symlink to it")
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="Modbus TCP on a port (0: any)")
    parser.add_argument(
        "--units",
        action="append",
        default=[],
        metavar="SPEC",
        help="unit ids and their profile, e.g. 1-8=energy-meter (default 1=energy-meter)",
    )
    parser.add_argument(
        "--registers", type=int, default=10, help="size of the registers profile (default 10)"
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="TCP: this many servers with the same units (ports PORT, PORT+1, "
        "...; or any free ports with 0): the benchmark's many devices",
    )
    parser.add_argument(
        "--rtu-over-tcp", action="store_true", help="TCP: RTU frames (a serial-to-Ethernet converter)"
    )
    parser.add_argument("--baudrate", type=int, default=9600, help="RTU line speed (recorded; default 9600)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (default N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    # dest is not "fault": edgegw sim parses args.fault with the R2000 fault grammar.
    parser.add_argument(
        "--fault",
        dest="modbus_faults",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject faults (below)",
    )
    return parser


def _ranges(units: Iterable[int]) -> str:
    ordered = sorted(units)
    parts: list[str] = []
    start = prev = ordered[0]
    for unit in [*ordered[1:], -1]:
        if unit != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = unit
        prev = unit
    return ",".join(parts)


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO = sys.stdout
) -> None:
    """Run ``edgegw sim modbus`` with parsed ``args`` until ``stop`` is set (forever without one).

    Prints one line per server, ``modbus simulator units 1-8 on tcp 127.0.0.1:5020`` (or ``on pty PATH``),
    once it is listening."""
    units = parse_units(args.units) or {1: "energy-meter"}
    faults = parse_faults(args.modbus_faults)
    if args.registers < 1 or args.registers > 10_000:
        raise ValueError("--registers: 1..10000")
    if args.servers < 1:
        raise ValueError("--servers must be >= 1")
    stop = stop or asyncio.Event()
    described = _ranges(units)
    async with contextlib.AsyncExitStack() as stack:
        if args.link is not None:
            sim = await stack.enter_async_context(
                serve_pty(
                    args.link,
                    units,
                    faults,
                    baudrate=args.baudrate,
                    parity=args.parity,
                    registers=args.registers,
                    seed=args.seed,
                )
            )
            print(f"modbus simulator units {described} on pty {sim.link}", file=out, flush=True)
        else:
            host, port = args.tcp
            for index in range(args.servers):
                sim = await stack.enter_async_context(
                    serve_tcp(
                        host,
                        port + index if port else 0,
                        units,
                        faults,
                        registers=args.registers,
                        seed=args.seed + index,
                        rtu_framing=args.rtu_over_tcp,
                    )
                )
                print(f"modbus simulator units {described} on tcp {host}:{sim.port}", file=out, flush=True)
        await stop.wait()
