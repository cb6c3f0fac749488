"""The modbus driver against the simulated meters (pymodbus's real server), over real TCP sockets and a real
pseudo-terminal, run as the gateway runs it (drivers.testing). Several devices share one bus, as
meters share an RS-485 line or a converter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerBase, FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from drivers import bus, testing
from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED
from drivers.errors import ConnectionLost, DeviceUnavailable
from drivers.event import Event
from drivers.kinds import DEVICE_STATUS, METER_READING
from drivers.modbus import BadReply, ExceptionReply, ModbusDriver, ModbusLink, ModbusOptions, open_link
from drivers.testing import Harness
from firmware_sim.modbus import Faults, ModbusSimulator, serve_pty, serve_tcp
from firmware_sim.pty import PtyEndpoint
from gateway.backoff import Backoff
from gateway.config import ConfigError, load_config
from gateway.pipeline import EventQueue
from gateway.supervisor import DeviceRunner
from protocols.modbus import Table

pytestmark = pytest.mark.timeout(90)

ENERGY_METER = [
    {"name": "voltage_a", "address": 0, "type": "float32", "unit": "V"},
    {"name": "current_a", "address": 6, "type": "float32", "unit": "A"},
    {"name": "power_factor", "address": 16, "type": "float32"},
    {"name": "energy_import", "address": 40, "type": "float32", "unit": "kWh"},
    {"name": "serial_number", "address": 64, "type": "string", "length": 10, "byte_order": "ABCD"},
    {"name": "status_running", "address": 70, "type": "bit", "bit": 0},
    {"name": "status_alarm", "address": 70, "type": "bit", "bit": 3},
]
PD_MONITOR = [
    {"name": "pd_ch1", "table": "input", "address": 0, "unit": "pC"},
    {"name": "pulse_count", "table": "input", "address": 10, "type": "uint32"},
    {"name": "pd_energy", "table": "input", "address": 12, "type": "float32"},
    {"name": "temperature", "table": "input", "address": 20, "type": "int16", "scale": 0.1},
    {"name": "humidity", "table": "input", "address": 21, "scale": 0.1},
    {"name": "alarm", "table": "discrete", "address": 0},
    {"name": "sensor_fault", "table": "discrete", "address": 1},
]
WATER_QUALITY = [
    {"name": "ph", "table": "input", "address": 0, "type": "float32", "byte_order": "BADC"},
    {"name": "cod", "table": "input", "address": 10, "type": "float32", "byte_order": "BADC"},
    {"name": "samples_total", "table": "input", "address": 40, "type": "uint64", "byte_order": "DCBA"},
    {"name": "flow_total", "table": "input", "address": 44, "type": "float64"},
    {"name": "model", "address": 200, "type": "string", "length": 20},
    {"name": "fault", "table": "coil", "address": 0},
]
PINNED: dict[int, dict[str, Any]] = {
    1: {
        "voltage_a": 231.7,
        "current_a": 12.34,
        "power_factor": 0.987,
        "energy_import": 1234.5,
        "serial_number": "EM-TEST-01",
        "status_running": True,
        "status_alarm": False,
    },
    2: {
        "pd_ch1": 345,
        "pulse_count": 4_000_000_123,
        "pd_energy": 0.125,
        "temperature": -12.3,
        "humidity": 65.4,
        "alarm": True,
        "sensor_fault": False,
    },
    3: {
        "ph": 7.25,
        "cod": 21.5,
        "samples_total": 2**40 + 5,
        "flow_total": 35120.125,
        "model": "WQ-7 multiparameter",
        "fault": True,
    },
}
PROFILES = {1: "energy-meter", 2: "pd-monitor", 3: "water-quality"}
POINTS = {1: ENERGY_METER, 2: PD_MONITOR, 3: WATER_QUALITY}
ORDER = {2: "ABCD", 3: "ABCD"}
"""Device-level byte order per unit (the energy meters' CDAB otherwise)."""
FAST = {"poll_s": 0.05, "timeout_s": 0.5, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


def pin_all(sim: ModbusSimulator) -> None:
    """Pin every unit running one of the three profiles to the values in PINNED for its profile."""
    for unit, state in sim.units.items():
        for values in PINNED.values():
            if set(values) <= set(state.by_name):
                for name, value in values.items():
                    sim.pin(unit, name, value)


class Site(Harness):
    def readings(self, device: str) -> list[dict[str, Any]]:
        return [dict(e.data["values"]) for e in self.reading_events(device)]

    def reading_events(self, device: str) -> list[Event]:
        return self.of(METER_READING, device)

    def device_states(self, device: str | None = None) -> list[tuple[str, str]]:
        return [(e.device, e.data["state"]) for e in self.of(DEVICE_STATUS, device)]


@contextlib.asynccontextmanager
async def site(devices: dict[str, dict[str, Any]]) -> AsyncIterator[Site]:
    makers: dict[str, Callable[[], ModbusDriver]] = {}
    for name, options in devices.items():
        opts = ModbusOptions.model_validate(options)

        def make(name: str = name, opts: ModbusOptions = opts) -> ModbusDriver:
            return ModbusDriver(name, opts)

        makers[name] = make
    async with testing.running(makers, Site) as run:
        yield run
    assert bus.buses() == {}  # every bus closed by the last device to leave


def tcp(sim: ModbusSimulator, unit: int, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "tcp_port": sim.port,
        "unit_id": unit,
        "byte_order": ORDER.get(unit, "CDAB"),
        **FAST,
        "points": POINTS.get(unit, ENERGY_METER),
        **extra,
    }


def rtu(link: Path, unit: int, **extra: Any) -> dict[str, Any]:
    return {
        "port": str(link),
        "unit_id": unit,
        "byte_order": ORDER.get(unit, "CDAB"),
        **FAST,
        "points": POINTS.get(unit, ENERGY_METER),
        **extra,
    }


def enough(running: Site, devices: list[str], n: int) -> Callable[[], bool]:
    return lambda: all(len(running.readings(d)) >= n for d in devices)


# -- decoding, over every transport ------------------------------------------------------------------------


async def test_three_instruments_share_one_tcp_connection() -> None:
    async with serve_tcp("127.0.0.1", 0, PROFILES) as sim:
        pin_all(sim)
        devices = {f"unit{u}": tcp(sim, u) for u in PROFILES}
        async with site(devices) as running:
            await running.until("3 readings each", enough(running, list(devices), 3))
            assert len(bus.buses()) == 1
        assert sim.stats.connections == 1
    for unit in PROFILES:
        for reading in running.readings(f"unit{unit}"):
            assert reading == PINNED[unit]
        assert (f"unit{unit}", "connected") in running.device_states()
    units = running.reading_events("unit1")[0].data["units"]
    assert units == {"voltage_a": "V", "current_a": "A", "energy_import": "kWh"}


async def test_meters_on_one_rs485_line(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS485"
    async with serve_pty(link, PROFILES) as sim:
        pin_all(sim)
        devices = {f"unit{u}": rtu(link, u) for u in PROFILES}
        async with site(devices) as running:
            await running.until("3 readings each", enough(running, list(devices), 3))
    for unit in PROFILES:
        assert running.readings(f"unit{unit}")[-1] == PINNED[unit]
        assert running.counters(f"unit{unit}").get("bad_crc", 0) == 0


async def test_rtu_over_tcp_through_a_converter() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "pd-monitor"}, rtu_framing=True) as sim:
        pin_all(sim)
        devices = {f"unit{u}": tcp(sim, u, transport="rtu-over-tcp") for u in (1, 2)}
        async with site(devices) as running:
            await running.until("3 readings each", enough(running, list(devices), 3))
    assert running.readings("unit1")[-1] == PINNED[1]
    assert running.readings("unit2")[-1] == PINNED[2]


async def test_values_move_and_are_scaled() -> None:
    points = [
        {"name": "energy_import", "address": 40, "type": "float32", "unit": "kWh", "scale": 1000, "offset": 5}
    ]
    async with (
        serve_tcp("127.0.0.1", 0, {4: "energy-meter"}) as sim,
        site({"m": tcp(sim, 4, points=points)}) as running,
    ):
        await running.until("2 readings", enough(running, ["m"], 2))
        sim.pin(4, "energy_import", 1.5)
        await running.until("the pinned value", lambda: running.readings("m")[-1]["energy_import"] == 1505)
    first = running.readings("m")[0]["energy_import"]
    assert 1_606_000 < first < 1_700_000  # 1206.42 + 400 kWh (unit 4) and growing, in Wh


# -- the read planner at work ----------------------------------------------------------------------------


async def test_exception_02_splits_the_read_once_and_the_split_is_kept() -> None:
    points = [
        {"name": "voltage_a", "address": 0, "type": "float32"},
        {"name": "energy_import", "address": 40, "type": "float32"},
    ]
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        pin_all(sim)
        async with site({"m": tcp(sim, 1, points=points, max_gap=40)}) as running:
            await running.until("10 readings", enough(running, ["m"], 10))
    # One read of 0-41 crossed the hole at 20-39: refused once, then two reads every poll.
    assert sim.stats.exceptions[(1, 2)] == 1
    assert running.counters("m")["requests_split"] == 1
    assert all(r == {"voltage_a": 231.7, "energy_import": 1234.5} for r in running.readings("m"))


async def test_a_point_in_a_hole_is_dropped_and_the_rest_still_read(caplog: pytest.LogCaptureFixture) -> None:
    points = [
        {"name": "voltage_a", "address": 0, "type": "float32"},
        {"name": "ghost", "address": 22, "type": "uint16"},
        {"name": "frequency", "address": 18, "type": "float32"},
    ]
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        sim.pin(1, "frequency", 50.02)
        pin_all(sim)
        async with site({"m": tcp(sim, 1, points=points)}) as running:
            await running.until("5 readings", enough(running, ["m"], 5))
    counters = running.counters("m")
    assert counters["unreadable_points"] == 1
    assert counters["requests_split"] >= 1
    assert all("ghost" not in r for r in running.readings("m"))
    assert running.readings("m")[-1] == {"voltage_a": 231.7, "frequency": 50.02}
    assert "'ghost' (holding 22) refused with exception 02" in caplog.text
    exceptions_then = sim.stats.exceptions[(1, 2)]
    assert exceptions_then <= 3  # 0-23 refused, then 18-23, then 22 alone; never again afterwards


# -- bad replies are counted, retried and never decoded ------------------------------------------------------


async def test_corrupt_rtu_replies_are_counted_and_never_decoded(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with serve_pty(link, {1: "energy-meter"}) as sim:
        pin_all(sim)
        async with site({"m": rtu(link, 1, retries=1)}) as running:
            await running.until("first reading", enough(running, ["m"], 1))
            for kind in ("bad_crc", "wrong_unit", "wrong_length", "bad_crc"):
                sim.corrupt(1, kind)
                await sim.wait_for(lambda s: not sim.units[1].corrupt_next)
            n = len(running.readings("m"))
            await running.until("more readings", enough(running, ["m"], n + 3))
    counters = running.counters("m")
    assert sim.stats.corrupted == {"bad_crc": 2, "wrong_unit": 1, "wrong_length": 1}
    assert counters["bad_crc"] == 2
    assert counters["wrong_unit"] == 1
    assert counters["wrong_length"] == 1
    # Never a wrong value: a read whose attempts were all corrupt is missing from its poll, not made up.
    assert all(value == PINNED[1][name] for r in running.readings("m") for name, value in r.items())
    assert running.readings("m")[-1] == PINNED[1]
    assert [state for _, state in running.device_states()] == ["connected"]


async def test_corrupt_tcp_replies_are_counted_and_never_decoded() -> None:
    async with serve_tcp(
        "127.0.0.1", 0, {1: "energy-meter"}, Faults(wrong_unit=0.1, wrong_length=0.1), seed=7
    ) as sim:
        pin_all(sim)
        async with site({"m": tcp(sim, 1, retries=1)}) as running:
            await running.until("30 readings", enough(running, ["m"], 30))
    counters = running.counters("m")
    assert sim.stats.corrupted["wrong_unit"] > 0 and sim.stats.corrupted["wrong_length"] > 0
    # Every corrupt reply is counted (the last one may have been sent as the device was being stopped).
    for kind in ("wrong_unit", "wrong_length"):
        assert 0 <= sim.stats.corrupted[kind] - counters.get(kind, 0) <= 1
    assert all(value == PINNED[1][name] for r in running.readings("m") for name, value in r.items())
    assert sim.stats.connections == 1  # never a reason to drop the shared connection


# -- the counters every driver shares (what the metrics read) -----------------------------------------------


async def test_damaged_rtu_replies_count_under_the_well_known_names(tmp_path: Path) -> None:
    # edgegw_framer_frames_rejected, edgegw_framer_bytes_skipped and edgegw_decode_errors read these.
    link = tmp_path / "tty"
    async with serve_pty(link, {1: "energy-meter"}) as sim:
        pin_all(sim)
        async with site({"m": rtu(link, 1, retries=1)}) as running:
            await running.until("first reading", enough(running, ["m"], 1))
            for kind in ("bad_crc", "wrong_length", "bad_crc"):
                sim.corrupt(1, kind)
                await sim.wait_for(lambda s: not sim.units[1].corrupt_next)
            n = len(running.readings("m"))
            await running.until("more readings", enough(running, ["m"], n + 3))
    counters = running.counters("m")
    assert sim.stats.corrupted == {"bad_crc": 2, "wrong_length": 1}
    # A reply whose CRC fails is a frame the framer rejects; its bytes are skipped to find the next one.
    assert counters[FRAMES_REJECTED] >= 2 and counters[BYTES_SKIPPED] > 0
    # A whole reply (its CRC holds) of the wrong length is one that does not decode.
    assert counters[DECODE_ERRORS] == 1 == counters["wrong_length"]
    assert counters["bad_crc"] == 2
    assert all(value == PINNED[1][name] for r in running.readings("m") for name, value in r.items())


async def test_line_noise_through_a_converter_counts_bytes_skipped_and_every_value_is_right() -> None:
    # RTU over TCP through a converter whose serial side is noisy: junk before every reply.
    noise = b"\x00\xff\x55"
    async with (
        serve_tcp("127.0.0.1", 0, {1: "energy-meter"}, rtu_framing=True) as sim,
        noisy_proxy(sim.port, noise) as proxy_port,
    ):
        pin_all(sim)
        options = tcp(sim, 1, transport="rtu-over-tcp", tcp_port=proxy_port)
        async with site({"m": options}) as running:
            await running.until("5 readings", enough(running, ["m"], 5))
    counters = running.counters("m")
    replies = sim.stats.replies[1]
    assert counters[BYTES_SKIPPED] >= len(noise) * (replies - 1)
    assert counters.get("bad_crc", 0) == 0 and counters.get(DECODE_ERRORS, 0) == 0
    assert all(r == PINNED[1] for r in running.readings("m"))


async def test_wrong_length_tcp_replies_count_decode_errors() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}, Faults(wrong_length=0.2), seed=3) as sim:
        pin_all(sim)
        async with site({"m": tcp(sim, 1, retries=1)}) as running:
            await running.until("20 readings", enough(running, ["m"], 20))
    counters = running.counters("m")
    assert sim.stats.corrupted["wrong_length"] > 0
    assert counters[DECODE_ERRORS] == counters["wrong_length"]
    assert 0 <= sim.stats.corrupted["wrong_length"] - counters[DECODE_ERRORS] <= 1
    assert counters.get(FRAMES_REJECTED, 0) == 0  # Modbus TCP has no framing to lose


@contextlib.asynccontextmanager
async def noisy_proxy(target_port: int, noise: bytes) -> AsyncIterator[int]:
    """A TCP port that forwards to ``target_port``, putting ``noise`` before every chunk coming back."""
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, junk: bytes) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(junk + data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (pump(reader, up_writer, b""), pump(up_reader, writer, noise)):
            pumps.add(asyncio.create_task(task))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def test_the_driver_declares_what_it_emits() -> None:
    assert ModbusDriver.emits == {METER_READING}


# -- the scheduler: one dead meter among ten -----------------------------------------------------------------


async def test_one_dead_meter_of_ten_on_a_line_costs_the_others_at_most_its_timeouts(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    units = {u: "energy-meter" for u in range(1, 11)}
    points = [{"name": "voltage_a", "address": 0, "type": "float32"}]
    period, timeout = 0.1, 0.06  # a dead meter's timeout fits in one period, with the others' replies
    common = {
        "poll_s": period,
        "timeout_s": timeout,
        "backoff_initial_s": 1.0,
        "backoff_max_s": 4.0,
        "points": points,
    }
    async with serve_pty(link, units, Faults(dead=frozenset({10}))) as sim:
        devices = {f"m{u}": {"port": str(link), "unit_id": u, "byte_order": "CDAB", **common} for u in units}
        healthy = [f"m{u}" for u in range(1, 10)]
        async with site(devices) as running:
            await running.until(
                "50 polls of every healthy meter",
                lambda: all(running.devices[d].counters["polls"] >= 50 for d in healthy),
                timeout=40,
            )
            dead_attempts = sim.stats.unanswered[10]
            polls = {d: running.devices[d].counters["polls"] for d in healthy}
            missed = {d: running.devices[d].counters["polls_missed"] for d in healthy}
    assert dead_attempts >= 1
    assert running.device_states("m10") and ("m10", "connected") not in running.device_states("m10")
    for d in healthy:
        share = polls[d] / (polls[d] + missed[d])
        assert share >= 0.95, (d, polls[d], missed[d], dead_attempts)
        # Each attempt of the dead meter holds the line for its timeout: at most one period lost per attempt.
        assert missed[d] <= dead_attempts + 1, (d, missed[d], dead_attempts)
    assert max(polls.values()) - min(polls.values()) <= 3  # equal shares
    assert dead_attempts * 5 <= min(polls.values())  # the backoff keeps the dead meter's claims rare


async def test_a_dead_unit_behind_a_shared_tcp_connection_never_drops_it() -> None:
    # pymodbus closes a connection after a few unanswered requests; the driver leaves timeouts to the bus.
    async with serve_tcp(
        "127.0.0.1", 0, {1: "energy-meter", 2: "energy-meter"}, Faults(dead=frozenset({2}))
    ) as sim:
        pin_all(sim)
        options = {"timeout_s": 0.05, "backoff_initial_s": 0.01, "backoff_max_s": 0.01, "lost_after": 2}
        async with site({"m1": tcp(sim, 1, **options), "m2": tcp(sim, 2, **options)}) as running:
            await running.until(
                "many timeouts of the dead unit and readings of the live one",
                lambda: sim.stats.unanswered[2] >= 12 and len(running.readings("m1")) >= 12,
            )
    assert sim.stats.connections == 1
    assert [s for _, s in running.device_states("m1")] == ["connected"]
    assert all(r == PINNED[1] for r in running.readings("m1"))


# -- events: report on change, deadband, own periods --------------------------------------------------------


async def test_report_on_change_with_deadbands() -> None:
    points = [
        {"name": "voltage_a", "address": 0, "type": "float32", "deadband": 0.5},
        {"name": "current_a", "address": 6, "type": "float32", "deadband": "10%"},
        {"name": "status_running", "address": 70, "type": "bit", "bit": 0, "report_on_change": True},
        {"name": "energy_import", "address": 40, "type": "float32"},  # reported at every poll
    ]
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        pin_all(sim)
        async with site({"m": tcp(sim, 1, points=points)}) as running:

            async def after(changes: dict[str, Any]) -> dict[str, Any]:
                """What the two readings after ``changes`` reported (the first may have been read before
                the change, the second was not)."""
                for name, value in changes.items():
                    sim.pin(1, name, value)
                n = len(running.readings("m"))
                await running.until("two more readings", enough(running, ["m"], n + 2))
                first, second = running.readings("m")[n : n + 2]
                assert not set(first) & set(second) - {"energy_import"}  # a change is reported once
                return first | second

            await running.until("first reading", enough(running, ["m"], 1))
            assert running.readings("m")[0] == {
                "voltage_a": 231.7,
                "current_a": 12.34,
                "status_running": True,
                "energy_import": 1234.5,
            }
            assert await after({"voltage_a": 232.1, "current_a": 13.3}) == {"energy_import": 1234.5}
            assert await after({"voltage_a": 232.3, "current_a": 13.8}) == {
                "voltage_a": 232.3,
                "current_a": 13.8,
                "energy_import": 1234.5,
            }
            assert await after({"status_running": False}) == {
                "status_running": False,
                "energy_import": 1234.5,
            }
            assert await after({"voltage_a": 231.9}) == {"energy_import": 1234.5}  # 0.4 from 232.3


async def test_nothing_to_report_means_no_event_until_the_max_interval() -> None:
    points = [
        {
            "name": "voltage_a",
            "address": 0,
            "type": "float32",
            "report_on_change": True,
            "max_interval_s": 0.3,
        },
        {"name": "frequency", "address": 18, "type": "float32", "report_on_change": True},
    ]
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        sim.pin(1, "voltage_a", 230.0)
        sim.pin(1, "frequency", 50.0)
        async with site({"m": tcp(sim, 1, points=points)}) as running:
            await running.until("30 polls", lambda: running.devices["m"].counters["polls"] >= 30)
            polls = running.devices["m"].counters["polls"]
    readings = running.readings("m")
    assert readings[0] == {"voltage_a": 230.0, "frequency": 50.0}
    assert all(r == {"voltage_a": 230.0} for r in readings[1:])  # only the forced reports
    assert 2 <= len(readings) <= polls // 3
    assert running.counters("m")["polls_unchanged"] == polls - len(readings)


async def test_points_with_their_own_period_are_polled_apart() -> None:
    points = [
        {"name": "voltage_a", "address": 0, "type": "float32", "poll_s": 0.05},
        {"name": "energy_import", "address": 40, "type": "float32"},
    ]
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        pin_all(sim)
        async with site({"m": tcp(sim, 1, points=points, poll_s=3600)}) as running:
            await running.until("10 readings", enough(running, ["m"], 10))
    readings = running.readings("m")
    assert sum("energy_import" in r for r in readings) == 1
    assert sum(r == {"voltage_a": 231.7} for r in readings) == len(readings) - 1


# -- links that fail ----------------------------------------------------------------------------------------


async def test_a_dropped_connection_fails_every_device_on_it_and_they_come_back() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "pd-monitor"}) as sim:
        pin_all(sim)
        devices = {"m1": tcp(sim, 1), "m2": tcp(sim, 2)}
        async with site(devices) as running:
            await running.until("readings", enough(running, list(devices), 2))
            await sim.disconnect()
            await running.until(
                "both reconnected",
                lambda: all(running.device_states(d).count((d, "connected")) == 2 for d in devices),
            )
            n = {d: len(running.readings(d)) for d in devices}
            await running.until(
                "readings again", lambda: all(len(running.readings(d)) > n[d] for d in devices)
            )
    for d in devices:
        assert [s for _, s in running.device_states(d)] == ["connected", "disconnected", "connected"]
        assert running.counters(d).get("timeouts", 0) == 0  # the link failed, not the meters
    reasons = [e.data["reason"] for e in running.events if e.data.get("state") == "disconnected"]
    assert all("connection lost" in r for r in reasons), reasons
    assert sim.stats.connections == 2  # one shared connection, then one again


async def test_busy_devices_always_stop_when_cancelled() -> None:
    # A reply landing as the device task is cancelled must not swallow the cancellation (Python 3.11's
    # asyncio.wait_for inside pymodbus does): stopping the gateway would hang on that device.
    points = [{"name": "voltage_a", "address": 0, "type": "float32"}]
    async with serve_tcp("127.0.0.1", 0, {u: "energy-meter" for u in range(1, 11)}) as sim:
        for _ in range(10):
            queue = EventQueue(100_000)
            tasks = []
            for unit in range(1, 11):
                opts = ModbusOptions.model_validate(tcp(sim, unit, points=points, poll_s=0.001))

                def make(opts: ModbusOptions = opts, unit: int = unit) -> ModbusDriver:
                    return ModbusDriver(f"m{unit}", opts)

                runner = DeviceRunner(f"m{unit}", make, queue, Backoff(0.01, 0.05))
                tasks.append(asyncio.create_task(runner.run()))
            start = sim.stats.total_requests
            await sim.wait_for(lambda s, start=start: s.total_requests >= start + 200)  # type: ignore[misc]
            for task in tasks:
                task.cancel()
            async with asyncio.timeout(10):
                results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert bus.buses() == {}


async def test_a_reply_landing_as_the_read_is_cancelled_does_not_swallow_the_cancellation() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        link = await open_link(ModbusOptions.model_validate(tcp(sim, 1)), lambda err: None)
        try:
            reading: asyncio.Task[list[int]] | None = None
            received = link._received

            def cancel_as_the_reply_lands(data: bytes) -> None:
                if reading is not None:
                    reading.cancel()  # the reply is about to resolve the read's future, in this same callback
                received(data)

            setattr(link, "_received", cancel_as_the_reply_lands)  # noqa: B010 (instrumenting the byte hook)
            reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
            with pytest.raises(asyncio.CancelledError):
                await reading
        finally:
            link.close()


async def test_an_unplugged_line_fails_its_devices_until_it_is_back(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with serve_pty(link, {1: PROFILES[1], 2: PROFILES[2]}) as sim:
        pin_all(sim)
        devices = {"m1": rtu(link, 1), "m2": rtu(link, 2)}
        async with site(devices) as running:
            await running.until("readings", enough(running, list(devices), 2))
            await sim.disconnect(downtime=0.2)
            await running.until(
                "both reconnected",
                lambda: all(running.device_states(d).count((d, "connected")) == 2 for d in devices),
            )
    for d in devices:
        assert "disconnected" in [s for _, s in running.device_states(d)]


async def test_a_silent_device_is_reported_disconnected_after_lost_after_polls() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        pin_all(sim)
        options = tcp(sim, 1, lost_after=2, timeout_s=0.05, backoff_initial_s=0.01, backoff_max_s=0.01)
        async with site({"m": options}) as running:
            await running.until("readings", enough(running, ["m"], 2))
            sim.kill(1)
            await running.until("disconnected", lambda: ("m", "disconnected") in running.device_states())
            sim.kill(1, dead=False)
            await running.until(
                "connected again", lambda: running.device_states().count(("m", "connected")) == 2
            )
    counters = running.counters("m")
    assert counters["timeouts"] >= 2
    disconnected = [
        e.data for e in running.events if e.kind == DEVICE_STATUS and e.data["state"] == "disconnected"
    ]
    assert "unit 1 silent for 2 polls" in disconnected[0]["reason"]


async def test_a_port_that_does_not_exist_is_unavailable(tmp_path: Path) -> None:
    async with site({"m": rtu(tmp_path / "nothing", 1)}) as running:
        await running.until("disconnected", lambda: ("m", "disconnected") in running.device_states())
    reason = next(e.data["reason"] for e in running.events if e.kind == DEVICE_STATUS)
    assert "nothing" in reason and "cannot open" in reason


# -- configuration ------------------------------------------------------------------------------------------


HEAD = """gateway: {id: station}
buffer: {path: buffer.db}
upstream: {mqtt: {url: "mqtt://127.0.0.1:1883"}}
devices:
"""


def config_problems(tmp_path: Path, devices: str) -> list[str]:
    (tmp_path / "gateway.yaml").write_text(HEAD + devices)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    return str(caught.value).splitlines()


def assert_problems(lines: list[str], expected: list[str]) -> None:
    text = "\n".join(lines)
    for fragment in expected:
        assert any(fragment in line for line in lines), f"{fragment!r} not in:\n{text}"
    assert len(lines) == len(expected), text


def test_bad_points_are_rejected_with_file_line_and_field(tmp_path: Path) -> None:
    lines = config_problems(
        tmp_path,
        """  - name: meter-1
    driver: modbus
    port: /dev/ttyUSB0
    points:
      - {name: voltage_a, address: 0, type: float32}
      - {name: serial, address: 100, type: string, length: 251}
      - {name: current, address: 10, type: float32, byte_order: ABDC}
      - {name: flag, table: coil, address: 3, type: uint16}
      - {name: status, address: 20, type: bit}
      - {name: level, address: 30, deadband: "5 percent"}
      - {name: b, address: 65535, type: uint32}
      - {name: text, address: 40, type: string, length: 4, scale: 2}
""",
    )
    assert_problems(
        lines,
        [
            "gateway.yaml:10: devices[0].points[1].length: 126 registers cannot be read in one request",
            ":11: devices[0].points[2].byte_order: input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'",
            ":12: devices[0].points[3].type: a coil is one bit: its type is bool",
            ":13: devices[0].points[4].type: type: bit needs bit: N",
            ":14: devices[0].points[5].deadband: a deadband is a number (0.5) or a percentage",
            ":15: devices[0].points[6].address: the point runs past the last address 65535",
            ":16: devices[0].points[7].scale: a string point cannot be scaled",
        ],
    )


def test_overlapping_points_and_bad_links_are_rejected_with_file_line_and_field(tmp_path: Path) -> None:
    lines = config_problems(
        tmp_path,
        """  - name: meter-1
    driver: modbus
    port: /dev/ttyUSB0
    unit_id: 3
    points:
      - {name: voltage_a, address: 0, type: float32}
      - {name: voltage_b, address: 1, type: float32}
      - {name: status, address: 7, type: bit, bit: 2}
      - {name: alarm, address: 7, type: bit, bit: 3}
      - {name: word, address: 7}
  - name: meter-2
    driver: modbus
    host: 10.0.0.9
    port: /dev/ttyUSB1
    points:
      - {name: a, address: 0}
      - {name: a, address: 5}
""",
    )
    assert_problems(
        lines,
        [
            ":11: devices[0].points[1].address: 'voltage_b' (holding 1-2) overlaps 'voltage_a' (holding 0-1)",
            ":14: devices[0].points[4].address: 'word' (holding 7) overlaps 'status' (holding 7 bit 2)",
            ":17: devices[1].host: give either port (a serial port) or host (TCP), not both",
            ":21: devices[1].points[1].name: duplicate point name 'a' (see points[0])",
        ],
    )


def test_registers_that_cannot_fit_one_read_are_refused() -> None:
    with pytest.raises(ValueError, match="126 registers cannot be read in one request"):
        ModbusOptions.model_validate(
            {"port": "/dev/ttyUSB0", "points": [{"name": "s", "address": 0, "type": "string", "length": 252}]}
        )


def test_bits_of_one_register_do_not_overlap_but_the_same_bit_does() -> None:
    bits = [{"name": f"b{i}", "address": 7, "type": "bit", "bit": i} for i in range(16)]
    assert len(ModbusOptions.model_validate({"port": "/dev/ttyUSB0", "points": bits}).points) == 16
    with pytest.raises(ValueError, match="'again' \\(holding 7 bit 3\\) overlaps 'b3'"):
        ModbusOptions.model_validate(
            {
                "port": "/dev/ttyUSB0",
                "points": [*bits, {"name": "again", "address": 7, "type": "bit", "bit": 3}],
            }
        )
    with pytest.raises(ValueError, match="overlaps"):
        ModbusOptions.model_validate(
            {"port": "/dev/ttyUSB0", "points": [bits[0], {"name": "word", "address": 7}]}
        )


def test_transport_defaults_and_bus_keys() -> None:
    serial = ModbusOptions.model_validate({"port": "/dev/ttyUSB0", "points": [{"name": "x", "address": 0}]})
    assert serial.link_transport == "rtu"
    network = ModbusOptions.model_validate({"host": "10.0.0.7", "points": [{"name": "x", "address": 0}]})
    assert network.link_transport == "tcp" and network.tcp_port == 502
    with pytest.raises(ValueError, match="unit id on a serial line is 1-247"):
        ModbusOptions.model_validate(
            {"port": "/dev/ttyUSB0", "unit_id": 0, "points": [{"name": "x", "address": 0}]}
        )
    with pytest.raises(ValueError, match="needs host"):
        ModbusOptions.model_validate({"transport": "rtu-over-tcp", "points": [{"name": "x", "address": 0}]})


# -- the link's receive path, against a peer the test drives byte by byte -----------------------------------


class Peer:
    """The device side of a link, driven by the test: the requests it received, the bytes it is told to send.
    Replies are built with pymodbus's server-side framers (the codec the link decodes with)."""

    def __init__(self, transport: str) -> None:
        self.mbap = transport == "tcp"
        self.framer: FramerBase = FramerSocket(DecodePDU(True)) if self.mbap else FramerRTU(DecodePDU(True))
        self._requests: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._served = asyncio.Event()
        self.pty: PtyEndpoint | None = None

    async def request(self) -> ModbusPDU:
        """The next request the link sent, decoded."""
        data = await (self.pty.read() if self.pty is not None else self._requests.get())
        used, pdu = self.framer.handleFrame(data, 0, 0)
        assert used == len(data) and pdu is not None, data
        return pdu

    def reply(self, request: ModbusPDU, registers: list[int] | None = None, unit: int | None = None) -> bytes:
        """The frame answering ``request`` (with ``registers``, or bits for a bit read)."""
        dev_id = request.dev_id if unit is None else unit
        tid = request.transaction_id
        response: ModbusPDU
        if request.function_code == 1:
            bits = [i % 3 == 0 for i in range(request.count)]
            response = ReadCoilsResponse(bits=bits, dev_id=dev_id, transaction_id=tid)
        else:
            response = ReadHoldingRegistersResponse(registers=registers, dev_id=dev_id, transaction_id=tid)
            response.function_code = request.function_code
        return self.framer.buildFrame(response)

    async def send(self, data: bytes) -> None:
        if self.pty is not None:
            await self.pty.write(data)
        else:
            assert self._writer is not None
            self._writer.write(data)
            await self._writer.drain()

    def hang_up(self) -> None:
        assert self._writer is not None
        self._writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        try:
            while data := await reader.read(4096):
                self._requests.put_nowait(data)
        finally:
            writer.close()
            self._served.set()

    async def closed(self) -> None:
        """Once the connection has ended (the link closed it, or the peer hung up)."""
        if self._writer is not None:
            await self._served.wait()


@contextlib.asynccontextmanager
async def peer_link(
    transport: str, tmp_path: Path, lost: Callable[[BaseException], None] = lambda err: None
) -> AsyncIterator[tuple[Peer, ModbusLink]]:
    """A raw peer on a real socket (tcp, rtu-over-tcp) or pty (rtu), and a link opened to it."""
    peer = Peer(transport)
    points = [{"name": "x", "address": 0}]
    if transport == "rtu":
        peer.pty = PtyEndpoint(tmp_path / "tty")
        peer.pty.open()
        options = {"port": str(tmp_path / "tty"), "points": points}
        try:
            link = await open_link(ModbusOptions.model_validate(options), lost)
            try:
                yield peer, link
            finally:
                link.close()
        finally:
            peer.pty.close()
        return
    server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        options = {"transport": transport, "host": "127.0.0.1", "tcp_port": port, "points": points}
        link = await open_link(ModbusOptions.model_validate(options), lost)
        try:
            yield peer, link
        finally:
            link.close()
            await peer.closed()
    finally:
        server.close()


class Arrivals:
    """Wraps ``link._received``: every chunk the link got, and an event per chunk."""

    def __init__(self, link: ModbusLink) -> None:
        self.chunks: list[bytes] = []
        self.event = asyncio.Event()
        received = link._received

        def record(data: bytes) -> None:
            self.chunks.append(data)
            received(data)
            self.event.set()

        setattr(link, "_received", record)  # noqa: B010 (instrumenting the byte hook)

    async def send(self, peer: Peer, data: bytes) -> None:
        """Send ``data`` and wait until the link has received it (all of it, in one or more chunks)."""
        total = sum(map(len, self.chunks)) + len(data)
        await peer.send(data)
        while sum(map(len, self.chunks)) < total:
            self.event.clear()
            await self.event.wait()


TRANSPORTS = ["tcp", "rtu-over-tcp", "rtu"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reply_arriving_one_byte_at_a_time_is_read_whole(transport: str, tmp_path: Path) -> None:
    async with peer_link(transport, tmp_path) as (peer, link):
        arrivals = Arrivals(link)
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 7, 100, 10, counts.append))
        request = await peer.request()
        assert (request.function_code, request.dev_id, request.address, request.count) == (3, 7, 100, 10)
        reply = peer.reply(request, list(range(1000, 1010)))
        for byte in reply:
            assert not reading.done()
            await arrivals.send(peer, bytes((byte,)))
        assert await reading == list(range(1000, 1010))
        assert arrivals.chunks == [bytes((b,)) for b in reply]  # really one byte per read

        reading = asyncio.create_task(link.read(Table.COIL, 7, 0, 11, counts.append))
        request = await peer.request()
        for byte in peer.reply(request):
            await arrivals.send(peer, bytes((byte,)))
        assert await reading == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
        assert counts == []


async def test_transaction_ids_count_up_from_1_and_wrap_past_0(tmp_path: Path) -> None:
    async with peer_link("tcp", tmp_path) as (peer, link):
        seen = []
        for _ in range(3):
            reading = asyncio.create_task(link.read(Table.INPUT, 1, 0, 1))
            request = await peer.request()
            seen.append(request.transaction_id)
            await peer.send(peer.reply(request, [len(seen)]))
            assert await reading == [len(seen)]
        assert seen == [1, 2, 3]
        link._transaction = 0xFFFE  # as after 65,534 requests
        for _ in range(2):
            reading = asyncio.create_task(link.read(Table.INPUT, 1, 0, 1))
            request = await peer.request()
            seen.append(request.transaction_id)
            await peer.send(peer.reply(request, [9]))
            await reading
        assert seen[3:] == [0xFFFF, 1]


async def test_a_late_reply_and_the_right_one_in_one_segment(tmp_path: Path) -> None:
    async with peer_link("tcp", tmp_path) as (peer, link):
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        late = await peer.request()
        reading.cancel()  # the bus's timeout
        with pytest.raises(asyncio.CancelledError):
            await reading
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        request = await peer.request()
        assert request.transaction_id != late.transaction_id
        await peer.send(peer.reply(late, [1, 1]) + peer.reply(request, [2, 2]))
        assert await reading == [2, 2]
        assert counts == ["stale_replies"]


async def test_a_late_rtu_reply_while_idle_is_dropped(tmp_path: Path) -> None:
    async with peer_link("rtu", tmp_path) as (peer, link):
        arrivals = Arrivals(link)
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        late = await peer.request()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await arrivals.send(peer, peer.reply(late, [1, 1])[:-3])  # the start of a late reply, nobody waits
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        request = await peer.request()
        await peer.send(peer.reply(late, [1, 1])[-3:] + peer.reply(request, [2, 2]))
        assert await reading == [2, 2]
        assert counts == []


@pytest.mark.parametrize("transport", ["rtu", "rtu-over-tcp"])
async def test_noise_and_other_units_replies_before_ours_are_skipped(transport: str, tmp_path: Path) -> None:
    async with peer_link(transport, tmp_path) as (peer, link):
        arrivals = Arrivals(link)
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 10, counts.append))
        request = await peer.request()
        await arrivals.send(peer, b"\x00\xff\x55")  # line noise, alone
        other_unit = peer.reply(request, [5] * 4, unit=2)  # a late reply of another unit: same function
        other_function = ReadHoldingRegistersResponse(registers=[6, 6], dev_id=5)
        other_function.function_code = 4  # and one to another function
        noise = b"\xaa\x07\x01"
        answer = peer.reply(request, list(range(10)))
        await peer.send(noise + other_unit + noise + peer.framer.buildFrame(other_function) + noise + answer)
        assert await reading == list(range(10))
        assert counts == ["wrong_unit", "wrong_unit"]
        assert link._buffer == b""


async def test_a_bad_crc_fails_the_read_at_once_and_the_next_is_answered(tmp_path: Path) -> None:
    async with peer_link("rtu", tmp_path) as (peer, link):
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        request = await peer.request()
        reply = bytearray(peer.reply(request, [3, 4]))
        reply[-1] ^= 0xFF
        await peer.send(bytes(reply))
        with pytest.raises(BadReply, match="bad_crc"):
            await reading
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        await peer.send(peer.reply(await peer.request(), [3, 4]))
        assert await reading == [3, 4]
        assert counts == ["bad_crc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_exception_reply_in_pieces(transport: str, tmp_path: Path) -> None:
    async with peer_link(transport, tmp_path) as (peer, link):
        arrivals = Arrivals(link)
        reading = asyncio.create_task(link.read(Table.INPUT, 1, 500, 4))
        request = await peer.request()
        response = ExceptionResponse(4, 2, device_id=1, transaction=request.transaction_id)
        frame = peer.framer.buildFrame(response)
        await arrivals.send(peer, frame[:3])
        await arrivals.send(peer, frame[3:])
        with pytest.raises(ExceptionReply) as caught:
            await reading
        assert caught.value.code == 2


async def test_a_bad_mbap_header_fails_the_link(tmp_path: Path) -> None:
    losses: list[BaseException] = []
    async with peer_link("tcp", tmp_path, losses.append) as (peer, link):
        counts: list[str] = []
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2, counts.append))
        request = await peer.request()
        frame = bytearray(peer.reply(request, [1, 2]))
        frame[2] = 1  # protocol id 0x0100: not Modbus
        await peer.send(bytes(frame))
        with pytest.raises(ConnectionLost, match="bad MBAP header"):
            await reading
        assert counts == ["bad_header"]
        assert len(losses) == 1
        with pytest.raises(ConnectionLost):
            await link.read(Table.HOLDING, 1, 0, 2)
    assert len(losses) == 1


async def test_the_peer_hanging_up_fails_the_read_and_reports_the_loss_once(tmp_path: Path) -> None:
    losses: list[BaseException] = []
    async with peer_link("tcp", tmp_path, losses.append) as (peer, link):
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
        await peer.request()
        peer.hang_up()
        with pytest.raises(ConnectionLost, match="connection lost"):
            await reading
        link.close()
        link.close()
    assert len(losses) == 1 and "connection lost" in str(losses[0])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closing_fails_a_pending_read_without_reporting_a_loss(transport: str, tmp_path: Path) -> None:
    losses: list[BaseException] = []
    async with peer_link(transport, tmp_path, losses.append) as (peer, link):
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
        await peer.request()
        link.close()
        with pytest.raises(ConnectionLost, match="closed"):
            await reading
        link.close()
    assert losses == []


async def test_a_reply_resolved_then_cancelled_in_one_callback_still_cancels(tmp_path: Path) -> None:
    async with peer_link("tcp", tmp_path) as (peer, link):
        reading: asyncio.Task[list[int]] | None = None
        received = link._received

        def resolve_then_cancel(data: bytes) -> None:
            received(data)  # resolves the read's future
            if reading is not None:
                reading.cancel()

        setattr(link, "_received", resolve_then_cancel)  # noqa: B010 (instrumenting the byte hook)
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
        await peer.send(peer.reply(await peer.request(), [1, 2]))
        with pytest.raises(asyncio.CancelledError):
            await reading
        setattr(link, "_received", received)  # noqa: B010
        reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
        await peer.send(peer.reply(await peer.request(), [3, 4]))
        assert await reading == [3, 4]  # the link is still in step


async def test_a_refused_connection_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    options = {"host": "127.0.0.1", "tcp_port": port, "points": [{"name": "x", "address": 0}]}
    with pytest.raises(DeviceUnavailable, match=f"tcp 127.0.0.1:{port}: cannot connect: "):
        await open_link(ModbusOptions.model_validate(options), lambda err: None)
