"""The modbus driver against the simulated meters (pymodbus's real server), over real TCP sockets and a real
pseudo-terminal, run by the real supervisor into the real event queue. Several devices share one bus, as
meters share an RS-485 line or a converter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers import bus
from drivers.event import Event
from drivers.modbus import ModbusDriver, ModbusOptions, open_link
from firmware_sim.modbus import Faults, ModbusSimulator, serve_pty, serve_tcp
from gateway.backoff import Backoff
from gateway.config import ConfigError, load_config
from gateway.pipeline import EventQueue
from gateway.supervisor import DeviceRunner
from protocols.modbus import Table
from tests.drivers import harness

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


class Site(harness.Collected):
    async def until(self, what: str, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        await self.drain_until(what, predicate, timeout)

    def readings(self, device: str) -> list[dict[str, Any]]:
        return [dict(e.data["values"]) for e in self.reading_events(device)]

    def reading_events(self, device: str) -> list[Event]:
        return self.of("meter.reading", device)

    def statuses(self, device: str | None = None) -> list[tuple[str, str]]:
        return [(e.device, e.data["state"]) for e in self.of("device.status", device)]


@contextlib.asynccontextmanager
async def site(devices: dict[str, dict[str, Any]], backoff: Backoff | None = None) -> AsyncIterator[Site]:
    makers: dict[str, Callable[[], ModbusDriver]] = {}
    for name, options in devices.items():
        opts = ModbusOptions.model_validate(options)

        def make(name: str = name, opts: ModbusOptions = opts) -> ModbusDriver:
            return ModbusDriver(name, opts)

        makers[name] = make
    async with harness.running(Site, makers, backoff=backoff) as running:
        yield running
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
        assert (f"unit{unit}", "connected") in running.statuses()
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
    assert [state for _, state in running.statuses()] == ["connected"]


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
                lambda: all(running.runners[d].counters["polls"] >= 50 for d in healthy),
                timeout=40,
            )
            dead_attempts = sim.stats.unanswered[10]
            polls = {d: running.runners[d].counters["polls"] for d in healthy}
            missed = {d: running.runners[d].counters["polls_missed"] for d in healthy}
    assert dead_attempts >= 1
    assert running.statuses("m10") and ("m10", "connected") not in running.statuses("m10")
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
    assert [s for _, s in running.statuses("m1")] == ["connected"]
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
            await running.until("30 polls", lambda: running.runners["m"].counters["polls"] >= 30)
            polls = running.runners["m"].counters["polls"]
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
                lambda: all(running.statuses(d).count((d, "connected")) == 2 for d in devices),
            )
            n = {d: len(running.readings(d)) for d in devices}
            await running.until(
                "readings again", lambda: all(len(running.readings(d)) > n[d] for d in devices)
            )
    for d in devices:
        assert [s for _, s in running.statuses(d)] == ["connected", "disconnected", "connected"]
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
            on_packet = link._on_packet

            def cancel_as_the_reply_lands(sending: bool, data: bytes) -> bytes:
                if not sending and reading is not None:
                    reading.cancel()  # the reply is about to resolve pymodbus's future, in this same callback
                return on_packet(sending, data)

            setattr(link, "_on_packet", cancel_as_the_reply_lands)  # noqa: B010 (instrumenting the byte hook)
            reading = asyncio.create_task(link.read(Table.HOLDING, 1, 0, 2))
            with pytest.raises(asyncio.CancelledError):
                await reading
        finally:
            link.close()


async def test_an_unplugged_line_fails_its_devices_until_it_is_back(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with serve_pty(link, {1: "energy-meter", 2: "energy-meter"}) as sim:
        pin_all(sim)
        devices = {"m1": rtu(link, 1), "m2": rtu(link, 2)}
        async with site(devices) as running:
            await running.until("readings", enough(running, list(devices), 2))
            await sim.disconnect(downtime=0.2)
            await running.until(
                "both reconnected",
                lambda: all(running.statuses(d).count((d, "connected")) == 2 for d in devices),
            )
    for d in devices:
        assert "disconnected" in [s for _, s in running.statuses(d)]


async def test_a_silent_device_is_reported_disconnected_after_lost_after_polls() -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        pin_all(sim)
        options = tcp(sim, 1, lost_after=2, timeout_s=0.05, backoff_initial_s=0.01, backoff_max_s=0.01)
        async with site({"m": options}) as running:
            await running.until("readings", enough(running, ["m"], 2))
            sim.kill(1)
            await running.until("disconnected", lambda: ("m", "disconnected") in running.statuses())
            sim.kill(1, dead=False)
            await running.until("connected again", lambda: running.statuses().count(("m", "connected")) == 2)
    counters = running.counters("m")
    assert counters["timeouts"] >= 2
    disconnected = [
        e.data for e in running.events if e.kind == "device.status" and e.data["state"] == "disconnected"
    ]
    assert "unit 1 silent for 2 polls" in disconnected[0]["reason"]


async def test_a_port_that_does_not_exist_is_unavailable(tmp_path: Path) -> None:
    async with site({"m": rtu(tmp_path / "nothing", 1)}) as running:
        await running.until("disconnected", lambda: ("m", "disconnected") in running.statuses())
    reason = next(e.data["reason"] for e in running.events if e.kind == "device.status")
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
