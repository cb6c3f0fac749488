"""Simulated Modbus meters on pymodbus's server: Modbus TCP on a TCP port, Modbus RTU on a pty.

Each unit id on a bus runs a device *profile*, the register map of a real instrument of its kind: which
tables it has (holding and input registers, coils, discrete inputs), which addresses are measurements
(read-only) and which are settings (kept as written). Each profile's function documents its map:

- ``energy-meter`` (:func:`_energy_meter`): a three-phase energy meter; float32 values in CDAB word order (low
  word first, as many DIN-rail meters send them): phase voltages and currents, powers, power factor,
  frequency, a hole (20-39), import and export energy that grow over time, a serial number and a status
  register, as input registers that FC03 reads as well; settings (CT primary, VT ratio, demand period, a
  power alarm set-point) in holding registers; no coils, no discrete inputs;
- ``pd-monitor`` (:func:`_pd_monitor`): a partial-discharge monitor; discharge magnitudes per channel (uint16
  pC), a pulse counter (uint32), discharge energy (float32), temperature and humidity (int16 / uint16 in
  tenths) as input registers; alarm and sensor-fault discrete inputs; a status word and two alarm settings
  in holding registers;
- ``water-quality`` (:func:`_water_quality`): a water-quality analyser; pH, turbidity, dissolved oxygen,
  conductivity, temperature, COD and ammonia as float32 in BADC order (bytes swapped in each register), a
  sample counter (uint64) and a totalised flow (float64) as input registers; a model string and two
  settings in holding registers; a fault coil and an automatic-cleaning coil;
- ``registers``: N holding registers (uint16) whose values change at every read: the benchmark's load.

Requests are answered as the Modbus Application Protocol (v1.1b3) says, in its order: exception 01 for a
function the device does not implement (a table it lacks; diagnostics, identification and the other
functions no profile has), 03 for a quantity out of the standard's range (reads of 1-125 registers or
1-2000 bits; writes of 1-123 registers or 1-1968 coils; a byte count that disagrees; an FC05 value other
than 0x0000 and 0xFF00), 02 for an address outside the map (a hole, past the end) or a write to anything
but a setting (a measurement, a status, half of a float set-point). pymodbus's own server serves the rest.

Values move with time (slow sine waves around plausible levels, per-unit phases, counters that only grow);
:meth:`ModbusSimulator.pin` fixes a value so that a test can check exact decoding. Values are encoded with
:func:`protocols.modbus.encode`, the codec whose decoding the driver uses, at the moment a read asks for them.

Faults (:class:`Faults`, and on demand): a dead unit (requests get no answer), slow replies (a delay before
answering), exception 02 on a hole of the map (by construction), corrupted replies (a bad CRC, a wrong unit
id, a byte count that does not match the request: on RTU, CRCs are recomputed so only the intended fault
shows) with a probability per reply or for the next N replies of a unit, and disconnects (TCP connections
closed, the pty unplugged).

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
import struct
import sys
import tty
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TextIO, cast

from pymodbus.datastore import ModbusServerContext
from pymodbus.framer import FramerType
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, WriteMultipleCoilsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)
from pymodbus.pdu.utils import unpack_bitstring
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from protocols import modbus as mb
from protocols.modbus import ByteOrder, DataType, Table

from . import serving
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
    writable: bool = False
    """A setting (holding registers, coils): a write is kept, as :meth:`ModbusSimulator.pin` would keep it.
    Otherwise a measurement or a status the device sets itself: a write is refused with exception 02."""
    mirror: Table | None = None
    """Another table that answers this (read-only) point at the same address: the energy meter's
    measurements are input registers that FC03 reads as well."""

    @property
    def count(self) -> int:
        return mb.register_count(self.dtype, self.length)

    @property
    def tables(self) -> tuple[Table, ...]:
        """The tables that answer this point: its own, and its mirror."""
        return (self.table,) if self.mirror is None else (self.table, self.mirror)

    def value_of(self, raw: mb.Value) -> float | int | bool | str:
        """The value (engineering units) of ``raw``, as :func:`protocols.modbus.decode` read it: a write."""
        if raw is None:  # a float that is not a number
            return math.nan
        if self.dtype.is_numeric and (self.scale != 1 or self.offset != 0):
            assert isinstance(raw, int | float)
            return raw * self.scale + self.offset
        return raw

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
    """A three-phase energy meter (DIN rail, RS-485). Float32 values in CDAB word order (low word first).

    Measurements are input registers, and FC03 reads the same registers at the same addresses (many meters
    answer both functions alike); they are read-only (a write: exception 02):

    =======  ============================================================================================
    0-19     float32: voltage_a (0), voltage_b (2), voltage_c (4) in V; current_a (6), current_b (8),
             current_c (10) in A; active_power (12, kW), reactive_power (14, kvar), power_factor (16),
             frequency (18, Hz)
    20-39    not mapped: exception 02
    40-43    float32, growing: energy_import (40), energy_export (42), in kWh
    64-68    serial_number (64): 10 characters
    70       status bits (70): status_running (bit 0), status_alarm (bit 3, 10 % of each minute)
    =======  ============================================================================================

    Settings are holding registers only (FC03, FC06, FC16) and keep what is written: ct_primary_a (100,
    uint16, 100: the current transformer's primary, A), vt_ratio (101, uint16, 1), demand_period_min (102,
    uint16, 15), power_alarm_kw (104-105, float32 CDAB, 60.0: the alarm set-point; written whole, with
    FC16). No coils and no discrete inputs: FC01, FC02, FC05 and FC15 answer exception 01.
    """
    f32 = DataType.FLOAT32
    cdab = ByteOrder.CDAB
    i, h = Table.INPUT, Table.HOLDING
    u16 = DataType.UINT16

    def measurement(name: str, address: int, model: Model, unit: str | None = None) -> SimPoint:
        return SimPoint(name, i, address, f32, model, cdab, unit=unit, mirror=h)

    return (
        measurement("voltage_a", 0, _wave(230.0, 3.0, 40, 1), "V"),
        measurement("voltage_b", 2, _wave(229.5, 3.0, 45, 1), "V"),
        measurement("voltage_c", 4, _wave(231.0, 3.0, 50, 1), "V"),
        measurement("current_a", 6, _wave(52.0, 8.0, 30, 2), "A"),
        measurement("current_b", 8, _wave(49.0, 8.0, 35, 2), "A"),
        measurement("current_c", 10, _wave(51.0, 8.0, 38, 2), "A"),
        measurement("active_power", 12, _wave(34.5, 5.0, 30, 2), "kW"),
        measurement("reactive_power", 14, _wave(6.2, 1.5, 30, 2), "kvar"),
        measurement("power_factor", 16, _wave(0.97, 0.02, 60, 3)),
        measurement("frequency", 18, _wave(50.0, 0.05, 20, 2), "Hz"),
        # 20-39: not mapped (exception 02)
        measurement("energy_import", 40, _growing(1206.42, 0.01), "kWh"),
        measurement("energy_export", 42, _growing(12.5, 0.001), "kWh"),
        SimPoint("serial_number", i, 64, DataType.STRING, lambda t, u: f"EM{u:08d}", length=10, mirror=h),
        SimPoint("status_running", i, 70, DataType.BIT, _const(True), bit=0, mirror=h),
        SimPoint("status_alarm", i, 70, DataType.BIT, _square(60, 0.1), bit=3, mirror=h),
        SimPoint("ct_primary_a", h, 100, u16, _const(100), unit="A", writable=True),
        SimPoint("vt_ratio", h, 101, u16, _const(1), writable=True),
        SimPoint("demand_period_min", h, 102, u16, _const(15), unit="min", writable=True),
        SimPoint("power_alarm_kw", h, 104, f32, _const(60.0), cdab, unit="kW", writable=True),
    )


def _pd_monitor() -> tuple[SimPoint, ...]:
    """A partial-discharge monitor (switchgear, cable terminations).

    Input registers (FC04), read-only: pd_ch1 (0), pd_ch2 (1), pd_ch3 (2): discharge magnitude per channel,
    uint16 pC; 3-9 not mapped (exception 02); pulse_count (10-11, uint32, growing); pd_energy (12-13,
    float32, mJ); temperature (20, int16, tenths of a °C); humidity (21, uint16, tenths of a %RH).

    Discrete inputs (FC02): alarm (0: the monitor's own PD threshold crossed), sensor_fault (1).

    Holding registers (FC03, FC06, FC16): the status word (100, read-only: status_running bit 0,
    status_alarm bit 3); the settings, kept as written: alarm_threshold_pc (110, uint16, 500 pC) and
    alarm_delay_s (111, uint16, 10 s). No coils: FC01, FC05 and FC15 answer exception 01.
    """
    i = Table.INPUT
    h = Table.HOLDING
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
        SimPoint("status_running", h, 100, DataType.BIT, _const(True), bit=0),
        SimPoint("status_alarm", h, 100, DataType.BIT, _square(40, 0.2), bit=3),
        SimPoint("alarm_threshold_pc", h, 110, DataType.UINT16, _const(500), unit="pC", writable=True),
        SimPoint("alarm_delay_s", h, 111, DataType.UINT16, _const(10), unit="s", writable=True),
    )


def _water_quality() -> tuple[SimPoint, ...]:
    """A multiparameter water-quality analyser (intake, effluent).

    Input registers (FC04), read-only, float32 in BADC order (bytes swapped in each register): ph (0),
    turbidity (2, NTU), dissolved_oxygen (4, mg/L), conductivity (6, uS/cm), temperature (8, °C), cod (10,
    mg/L), ammonia (12, mg/L); 14-39 not mapped (exception 02); samples_total (40-43, uint64, DCBA: little
    endian, growing); flow_total (44-47, float64 ABCD, m3, growing).

    Holding registers (FC03, FC06, FC16): model (200-209, 20 characters, read-only); the settings, kept as
    written: sample_interval_min (220, uint16, 15) and cod_alarm_mg_l (222-223, float32 BADC, 50.0; written
    whole, with FC16).

    Coils (FC01, FC05, FC15): fault (0), which the analyser sets itself (a write: exception 02), and
    auto_clean (1: automatic electrode cleaning, on), a setting kept as written. No discrete inputs: FC02
    answers exception 01.
    """
    f32 = DataType.FLOAT32
    badc = ByteOrder.BADC
    i = Table.INPUT
    h = Table.HOLDING
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
        SimPoint("model", h, 200, DataType.STRING, _const("WQ-7 multiparameter"), length=20),
        SimPoint("sample_interval_min", h, 220, DataType.UINT16, _const(15), unit="min", writable=True),
        SimPoint("cod_alarm_mg_l", h, 222, f32, _const(50.0), badc, unit="mg/L", writable=True),
        SimPoint("fault", Table.COIL, 0, DataType.BOOL, _const(False)),
        SimPoint("auto_clean", Table.COIL, 1, DataType.BOOL, _const(True), writable=True),
    )


def _registers(count: int) -> tuple[SimPoint, ...]:
    def changing(index: int) -> Model:
        # A different value at every read (the benchmark wants every reading to be news).
        return lambda t, unit: int(t * 1000 + unit * 7 + index) & 0xFFFF

    return tuple(SimPoint(f"r{i}", Table.HOLDING, i, DataType.UINT16, changing(i)) for i in range(count))


def _registers_profile() -> tuple[SimPoint, ...]:
    """The benchmark's load: holding registers r0, r1, ... from address 0 (10 here; ``--registers N``),
    uint16, a new value at every read, read-only (a write: exception 02). FC03, FC06 and FC16 only."""
    return _registers(10)


PROFILES: Final[dict[str, Callable[[], tuple[SimPoint, ...]]]] = {
    "energy-meter": _energy_meter,
    "pd-monitor": _pd_monitor,
    "water-quality": _water_quality,
    "registers": _registers_profile,
}
"""Profile name -> its register map, documented in the function's docstring (``registers`` is 10 registers
here; see :func:`profile`)."""


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
    functions: Counter[tuple[int, int]] = field(default_factory=Counter)
    """Requests received, per (unit id, function code): 3 for a read of holding registers, 6 or 16 for a
    write of them, ... (what a test counts to show that a refused write never reached the line)."""
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
    """One unit id: its points by table, what it answers and refuses, its pinned values, its own faults."""

    def __init__(self, unit: int, points: Sequence[SimPoint]) -> None:
        self.unit = unit
        self.points = tuple(points)
        self.by_name = {p.name: p for p in self.points}
        if len(self.by_name) != len(self.points):
            raise ValueError(f"unit {unit}: duplicate point names")
        for p in self.points:
            _check_point(unit, p)
        self.by_table: dict[Table, tuple[SimPoint, ...]] = {
            table: tuple(sorted((p for p in self.points if table in p.tables), key=lambda p: p.address))
            for table in Table
        }
        self.tables = frozenset(table for table, points in self.by_table.items() if points)
        """The tables this device has: the functions of the others answer exception 01."""
        self.mapped: dict[Table, dict[int, int]] = {
            table: _run_ends(a for p in points for a in range(p.address, p.address + _width(p)))
            for table, points in self.by_table.items()
        }
        """Per table, the addresses a read may touch (anything else: exception 02), each with the end of the
        run of mapped addresses it is in: a read is judged in one look-up."""
        self.settings: dict[Table, dict[int, SimPoint]] = {
            table: {a: p for p in points if p.writable for a in range(p.address, p.address + _width(p))}
            for table, points in self.by_table.items()
        }
        """Per table, the addresses a write may touch, and the setting each belongs to."""
        self.pinned: dict[str, float | int | bool | str] = {}
        self.delay_s = 0.0
        self.dead = False
        self.corrupt_next: list[str] = []

    def value(self, point: SimPoint, t: float) -> float | int | bool | str:
        if point.name in self.pinned:
            return self.pinned[point.name]
        return point.model(t, self.unit)

    # -- what the device refuses (Modbus Application Protocol v1.1b3, 6.1-6.16 and 7) ----------------------
    def refuse_read(self, table: Table, address: int, count: int) -> int | None:
        """The exception code a read answers, or None: the function, then the quantity, then the address."""
        if table not in self.tables:
            return mb.ExceptionCode.ILLEGAL_FUNCTION
        if not 1 <= count <= mb.read_limit(table):
            return mb.ExceptionCode.ILLEGAL_DATA_VALUE
        if self.mapped[table].get(address, -1) < address + count:
            return mb.ExceptionCode.ILLEGAL_DATA_ADDRESS
        return None

    def refuse_write(self, table: Table, address: int, count: int, *, well_formed: bool) -> int | None:
        """The exception code a write answers, or None. ``well_formed``: its quantity, byte count and values
        are ones the standard allows. Every address it touches must be a setting, each setting written whole
        (half of a float set-point is no value)."""
        if table not in self.tables:
            return mb.ExceptionCode.ILLEGAL_FUNCTION
        if not well_formed:
            return mb.ExceptionCode.ILLEGAL_DATA_VALUE
        settings = self.settings[table]
        end = address + count
        for a in range(address, end):
            setting = settings.get(a)
            if setting is None or setting.address < address or setting.address + _width(setting) > end:
                return mb.ExceptionCode.ILLEGAL_DATA_ADDRESS
        return None

    def store(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Keep what a write (already judged by :meth:`refuse_write`) sets: the settings' new values."""
        settings = self.settings[table]
        if table.is_bits:
            for a, bit in enumerate(values, start=address):
                self.pinned[settings[a].name] = bool(bit)
            return
        words = dict(enumerate((int(w) for w in values), start=address))
        for setting in {settings[a].name: settings[a] for a in words}.values():
            raw = mb.decode(
                [words[a] for a in range(setting.address, setting.address + setting.count)],
                setting.dtype,
                setting.order,
                length=setting.length,
                bit=setting.bit,
            )
            self.pinned[setting.name] = setting.value_of(raw)

    # -- pymodbus's view --------------------------------------------------------------------------------
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
            if not points:  # never reached: the functions of a table the device lacks answer 01
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
        # Runs of contiguous registers of one kind (settings, or read-only); pymodbus marks the rest invalid.
        settings = self.settings[table]
        data: list[SimData] = []
        run: list[int] = []
        start = prev = -2
        for address in sorted(words):
            if run and (address != prev + 1 or (address in settings) != (start in settings)):
                data.append(_registers_run(start, run, readonly=start not in settings))
                run = []
            if not run:
                start = address
            run.append(words[address])
            prev = address
        if run:
            data.append(_registers_run(start, run, readonly=start not in settings))
        return data


def _run_ends(addresses: Iterable[int]) -> dict[int, int]:
    """Each address -> the end (exclusive) of the run of consecutive addresses it belongs to."""
    ends: dict[int, int] = {}
    ordered = sorted(set(addresses))
    start = 0
    for index, address in enumerate(ordered):
        if index + 1 == len(ordered) or ordered[index + 1] != address + 1:
            for a in ordered[start : index + 1]:
                ends[a] = address + 1
            start = index + 1
    return ends


def _width(point: SimPoint) -> int:
    """Addresses a point occupies in its table: registers, or one bit."""
    return 1 if point.table.is_bits else point.count


def _registers_run(start: int, words: list[int], *, readonly: bool) -> SimData:
    return SimData(start, values=words, datatype=SimType.REGISTERS, readonly=readonly)


def _check_point(unit: int, p: SimPoint) -> None:
    where = f"unit {unit}: point {p.name!r}"
    if p.writable and p.table not in (Table.HOLDING, Table.COIL):
        raise ValueError(f"{where}: only holding registers and coils can be written")
    if p.writable and p.dtype is DataType.BIT:
        raise ValueError(
            f"{where}: a bit of a register cannot be a setting (a write sets the whole register)"
        )
    if p.writable and p.mirror is not None:
        raise ValueError(f"{where}: a setting has no mirror")
    if p.mirror is not None and (p.mirror is p.table or p.mirror.is_bits != p.table.is_bits):
        raise ValueError(f"{where}: its mirror must be another table of the same kind (registers or bits)")


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
            if values is None:
                self._refresh(state, function, start, address=address, count=count, regs=registers)
            else:  # a write the request already judged (see _WRITES): keep the settings' new values
                state.store(_WRITES[function], address, values)
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
            self.stats.functions[(unit, int(pdu.function_code))] += 1
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
        elif kind == "wrong_length" and len(body) > 3 and body[1] in mb.WRITE_FUNCTIONS:
            del body[-1]  # a write's echo one byte short
        elif kind == "wrong_length" and len(body) > 3 and body[1] < 0x80:
            body[2] -= 1
            del body[-1]
        return bytes(body) + mb.crc16(body).to_bytes(2, "little")
    frame = bytearray(data)
    if kind == "wrong_unit":
        frame[6] = (frame[6] % 247) + 1
    elif kind == "wrong_length" and len(frame) > 9 and frame[7] < 0x80:
        if frame[7] not in mb.WRITE_FUNCTIONS:  # a write's echo is only cut one byte short
            frame[8] -= 1
        del frame[-1]
        frame[4:6] = (len(frame) - 6).to_bytes(2, "big")
    return bytes(frame)


# -- requests judged as the standard says -------------------------------------------------------------------
#
# pymodbus's server answers a quantity it cannot decode (a read of 0 or 126 registers) with exception 01 under
# function code 0x80, accepts any FC05 output value, and serves every table and function its datastore has.
# A device answers 01 for a function it does not implement, then 03 for a quantity (or byte count, or coil
# value) the standard forbids, then 02 for an address its map lacks or a write to what is not a setting. These
# request classes, registered with pymodbus's decoder, judge each request against the unit's map before
# pymodbus's own datastore serves it.

MAX_WRITE_REGISTERS: Final = 123
MAX_WRITE_COILS: Final = 1968
_COIL_ON: Final = 0xFF00
_WRITES: Final = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}
"""Write function -> the table it writes."""
_READS: Final = {table.function: table for table in Table}


def _address_and_quantity(data: bytes) -> tuple[int, int]:
    """The two big-endian words a read (or FC05) carries; a quantity of -1 when the PDU is too short."""
    if len(data) < 4:
        return 0, -1
    address, quantity = struct.unpack(">HH", data[:4])
    return int(address), int(quantity)


class _Judged(ModbusPDU):
    """Judged against the map of the unit it is for (``simulator`` is set on a subclass per server)."""

    simulator: ClassVar[ModbusSimulator]

    def unit(self, device_id: int) -> _Unit | None:
        return self.simulator.units.get(device_id)

    def refused(self, code: int | None) -> ModbusPDU | None:
        return None if code is None else ExceptionResponse(self.function_code, code)


class _JudgedRead(_Judged):
    """A read (registers or bits), refused before pymodbus's datastore serves it when the unit's map says so.
    First in its subclasses' bases, so that its ``decode`` and ``datastore_update`` come before pymodbus's."""

    address: int
    count: int

    def decode(self, data: bytes) -> None:
        self.address, self.count = _address_and_quantity(data)

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = self.unit(device_id)
        table = _READS[self.function_code]
        if unit is not None and (refusal := self.refused(unit.refuse_read(table, self.address, self.count))):
            return refusal
        return await super().datastore_update(context, device_id)


class _ReadRegisters(_JudgedRead, ReadHoldingRegistersRequest):
    pass


class _ReadInputRegisters(_ReadRegisters):
    function_code = 4


class _ReadBits(_JudgedRead, ReadCoilsRequest):
    pass


class _ReadDiscreteInputs(_ReadBits):
    function_code = 2


class _WriteCoil(WriteSingleCoilRequest, _Judged):
    output = _COIL_ON

    def decode(self, data: bytes) -> None:
        self.address, self.output = _address_and_quantity(data)
        self.bits = [self.output == _COIL_ON]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = self.unit(device_id)
        well_formed = self.output in (0, _COIL_ON)
        if unit is not None and (
            refusal := self.refused(unit.refuse_write(Table.COIL, self.address, 1, well_formed=well_formed))
        ):
            return refusal
        return await super().datastore_update(context, device_id)


class _WriteRegister(WriteSingleRegisterRequest, _Judged):
    def decode(self, data: bytes) -> None:
        self.address, value = _address_and_quantity(data)
        self.registers = [value]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = self.unit(device_id)
        well_formed = 0 <= self.registers[0] <= 0xFFFF
        if unit is not None and (
            refusal := self.refused(
                unit.refuse_write(Table.HOLDING, self.address, 1, well_formed=well_formed)
            )
        ):
            return refusal
        return await super().datastore_update(context, device_id)


class _WriteCoils(WriteMultipleCoilsRequest, _Judged):
    def decode(self, data: bytes) -> None:
        self.address, self.count = _address_and_quantity(data)
        self.byte_count = data[4] if len(data) > 4 else -1
        self.data_byte_count = len(data) - 5
        self.bits = unpack_bitstring(data[5:])[: max(self.count, 0)] if len(data) > 5 else []

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = self.unit(device_id)
        well_formed = (
            1 <= self.count <= MAX_WRITE_COILS
            and self.byte_count == (self.count + 7) // 8 == self.data_byte_count
        )
        if unit is not None and (
            refusal := self.refused(
                unit.refuse_write(Table.COIL, self.address, self.count, well_formed=well_formed)
            )
        ):
            return refusal
        return await super().datastore_update(context, device_id)


class _WriteRegisters(WriteMultipleRegistersRequest, _Judged):
    def decode(self, data: bytes) -> None:
        self.address, self.count = _address_and_quantity(data)
        self.byte_count = data[4] if len(data) > 4 else -1
        self._payload_byte_count = len(data) - 5
        payload = data[5 : 5 + 2 * max(self.count, 0)] if len(data) > 5 else b""
        self.registers = [int(w) for (w,) in struct.iter_unpack(">H", payload[: len(payload) // 2 * 2])]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = self.unit(device_id)
        well_formed = (
            1 <= self.count <= MAX_WRITE_REGISTERS
            and self.byte_count == 2 * self.count == self._payload_byte_count
        )
        if unit is not None and (
            refusal := self.refused(
                unit.refuse_write(Table.HOLDING, self.address, self.count, well_formed=well_formed)
            )
        ):
            return refusal
        return await super().datastore_update(context, device_id)


class _NotImplemented(ModbusPDU):
    """A function no profile implements (diagnostics, identification, file records, FIFO, mask write,
    read/write multiple, or none at all): exception 01, as the standard's first check answers."""

    def decode(self, data: bytes) -> None:
        pass

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        return ExceptionResponse(self.function_code, mb.ExceptionCode.ILLEGAL_FUNCTION)


_JUDGED: Final[tuple[type[_Judged], ...]] = (
    _ReadBits,
    _ReadDiscreteInputs,
    _ReadRegisters,
    _ReadInputRegisters,
    _WriteCoil,
    _WriteRegister,
    _WriteCoils,
    _WriteRegisters,
)


def _request_classes(sim: ModbusSimulator, *, rtu: bool) -> list[type[ModbusPDU]]:
    """The request classes a server of ``sim`` decodes with: the eight functions of the four tables, judged
    against each unit's map, and every other function code answered with exception 01.

    RTU has no length field: a frame's end is known from its function code, so only the functions pymodbus can
    frame (7, 8, 11, 12, 17, 20-24, 43) are answered 01 there; an unknown function code is skipped as line
    noise, as pymodbus's RTU framer does."""
    classes: list[type[ModbusPDU]] = [
        cast(type[ModbusPDU], type(judged.__name__, (judged,), {"simulator": sim})) for judged in _JUDGED
    ]
    judged_codes = {judged.function_code for judged in _JUDGED}
    for code in range(1, 0x80):
        if code in judged_codes:
            continue
        attributes: dict[str, Any] = {"function_code": code}
        if rtu:
            known = _rtu_framing(code)
            if known is None:
                continue
            attributes["rtu_frame_size"], attributes["rtu_byte_count_pos"] = known
        classes.append(cast(type[ModbusPDU], type(f"_NotImplemented{code}", (_NotImplemented,), attributes)))
    return classes


def _rtu_framing(code: int) -> tuple[int, int] | None:
    """(rtu_frame_size, rtu_byte_count_pos) of a request of function ``code``, as pymodbus frames it."""
    known = DecodePDU.pdu_table.get(code)
    if known is None:
        return None
    request = known[0]
    sizes = [request.rtu_frame_size] + [
        sub[0].rtu_frame_size for sub in DecodePDU.pdu_sub_table.get(code, {}).values()
    ]
    if request.rtu_byte_count_pos:
        return 0, request.rtu_byte_count_pos
    if len(set(sizes) - {0}) == 1:
        return max(sizes), 0
    return None


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
        custom_pdu=_request_classes(sim, rtu=rtu_framing),
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
            # the listener open now: every listen() replaces it (closing the first one again would leave
            # this one listening through the down time, and the next listen() on its busy port would fail
            # and close it, leaving the device unreachable until the next unplug)
            listener: Any = server.transport
            listener.close()
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
        custom_pdu=_request_classes(sim, rtu=True),
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
profiles (each one's register map: the docstrings in firmware_sim/modbus.py):
  energy-meter     float32 CDAB measurements as input registers, read by FC03 too (0-19, 40-43, 64-68,
                   70); settings in holding 100-105; no coils or discrete inputs (FC01/02/05/15: 01)
  pd-monitor       input registers 0-2, 10-13, 20-21; discrete inputs 0-1; holding 100 (status),
                   110-111 (settings); no coils
  water-quality    float32 BADC input registers 0-13, 40-47; holding 200-209 (model), 220-223
                   (settings); coils 0 (fault, read-only), 1 (auto_clean); no discrete inputs
  registers        --registers N holding registers, values changing at every read: benchmark load
exceptions as the Modbus standard has them: 01 function not implemented, 02 address not mapped or not
writable (measurements are read-only; settings keep what is written), 03 quantity out of range
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
    serving.add_seed_and_faults(parser, "modbus", seed="seed of the random faults")
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
