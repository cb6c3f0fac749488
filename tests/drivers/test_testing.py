"""drivers.testing, the public harness for drivers: it runs a driver by the gateway's rules (the same
statuses, restarts and reasons as gateway.supervisor, checked side by side on one script of failures),
records what it emits and counts, and waits on it."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from drivers.base import DeviceContext, Driver, DriverOptions
from drivers.errors import ConfigurationError, ConnectionLost, DeviceTimeout
from drivers.event import Event
from drivers.kinds import DEVICE_STATUS, METER_READING
from drivers.testing import (
    CONNECTED,
    DISCONNECTED,
    FAILED,
    STOPPED,
    DeviceUnderTest,
    Harness,
    Jittered,
    running,
)
from gateway.backoff import Backoff
from gateway.pipeline import EventQueue
from gateway.supervisor import DeviceRunner


class NoOptions(DriverOptions):
    pass


Step = tuple[bool, BaseException | None]
"""One run of :class:`Scripted`: whether it connects (and emits a reading), then what it raises (None: it
returns)."""

SCRIPT: list[Step] = [
    (False, ConnectionLost("serial port /dev/ttyUSB0: end of file")),
    (True, DeviceTimeout("reader silent for 5 s")),
    (False, OSError()),  # no message: the reason is the type's name
    (True, ValueError("a driver bug")),
    (True, None),  # returned
    (False, DeviceTimeout("still silent")),
    (True, ConfigurationError("antenna 9: the reader has 4 ports")),
]


class Scripted(Driver[NoOptions]):
    name: ClassVar[str] = "scripted"
    Options: ClassVar[type[DriverOptions]] = NoOptions
    emits: ClassVar[frozenset[str]] = frozenset({METER_READING})

    def __init__(self, script: list[Step], runs: list[int], forever: bool = False) -> None:
        super().__init__("dev", NoOptions())
        self.script, self.runs, self.forever = script, runs, forever

    async def run(self, ctx: DeviceContext) -> None:
        n = len(self.runs)
        self.runs.append(n)
        if n >= len(self.script):
            ctx.connected(f"run {n}")
            await asyncio.Event().wait()
        connects, outcome = self.script[n]
        if connects:
            ctx.connected(f"run {n}")
            ctx.emit(METER_READING, {"values": {"run": n}, "units": {}}, ts=1000.0 + n)
            ctx.count("runs_connected")
        if outcome is not None:
            raise outcome


def shape(events: list[Event]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.device, e.kind, dict(e.data)) for e in events]


async def under_the_gateway(
    script: list[Step], seed: int, until: Callable[[list[Event]], bool]
) -> list[Event]:
    queue = EventQueue(10_000)
    runs: list[int] = []
    runner = DeviceRunner("dev", lambda: Scripted(script, runs), queue, Backoff(0.002, 0.01))
    random.seed(seed)
    task = asyncio.create_task(runner.run())
    events: list[Event] = []
    async with asyncio.timeout(10):
        while not until(events):
            events += await queue.get_batch(100, window=0.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return events + queue.take(100)


async def under_the_harness(
    script: list[Step], seed: int, until: Callable[[list[Event]], bool]
) -> list[Event]:
    events: list[Event] = []
    changed = asyncio.Event()

    def record(event: Event) -> None:
        events.append(event)
        changed.set()

    runs: list[int] = []
    device = DeviceUnderTest("dev", lambda: Scripted(script, runs), record, backoff=Jittered(0.002, 0.01))
    random.seed(seed)
    task = asyncio.create_task(device.run())
    async with asyncio.timeout(10):
        while not until(events):
            changed.clear()
            await changed.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return events


def failed(events: list[Event]) -> bool:
    return any(e.kind == DEVICE_STATUS and e.data["state"] == FAILED for e in events)


async def test_statuses_restarts_and_reasons_are_the_gateways() -> None:
    expected = await under_the_gateway(SCRIPT, 7, failed)
    got = await under_the_harness(SCRIPT, 7, failed)
    assert shape(got) == shape(expected)
    assert [e.ts for e in got if e.kind == METER_READING] == [1001.0, 1003.0, 1004.0, 1006.0]
    states = [e.data["state"] for e in got if e.kind == DEVICE_STATUS]
    assert states == [
        DISCONNECTED,
        CONNECTED,
        DISCONNECTED,
        DISCONNECTED,
        CONNECTED,
        DISCONNECTED,
        CONNECTED,
        DISCONNECTED,
        DISCONNECTED,
        CONNECTED,
        FAILED,
    ]
    reasons = [e.data["reason"] for e in got if e.data.get("state") == DISCONNECTED]
    assert reasons == [
        "serial port /dev/ttyUSB0: end of file",
        "reader silent for 5 s",
        "OSError",
        "internal error: ValueError: a driver bug",
        "driver returned",
        "still silent",
    ]


async def test_a_cancelled_device_says_stopped_like_the_gateways() -> None:
    def connected(events: list[Event]) -> bool:
        return any(e.kind == DEVICE_STATUS and e.data["state"] == CONNECTED for e in events)

    expected = await under_the_gateway([], 1, connected)
    got = await under_the_harness([], 1, connected)
    assert shape(got) == shape(expected)
    assert [e.data["state"] for e in got] == [CONNECTED, STOPPED]


# -- the harness -------------------------------------------------------------------------------------------


async def test_running_records_counts_and_waits() -> None:
    runs: list[int] = []
    async with running({"dev": lambda: Scripted(SCRIPT, runs)}) as run:
        await run.until_state(FAILED)
        assert run.device.restarts == len(SCRIPT) - 1
    assert run.states("dev") == run.states() and run.states()[-1] == FAILED
    assert [r["values"]["run"] for r in run.data(METER_READING)] == [1, 3, 4, 6]
    assert run.counters("dev") == run.counters() == {"runs_connected": 4}
    assert run.device.state == FAILED


async def test_waits_fail_naming_what_was_awaited_and_the_statuses() -> None:
    runs: list[int] = []
    script: list[Step] = [(False, ConfigurationError("no such port"))]
    async with running({"dev": lambda: Scripted(script, runs)}) as run:
        with pytest.raises(AssertionError) as caught:
            await run.until_events(METER_READING, 1, timeout=0.2)
    message = str(caught.value)
    assert "1 meter.reading event(s)" in message
    assert "'state': 'failed', 'reason': 'no such port'" in message


async def test_recording_stops_when_the_block_exits() -> None:
    runs: list[int] = []
    async with running({"a": lambda: Scripted([], runs), "b": lambda: Scripted([], runs)}) as run:
        await run.until("both connected", lambda: run.states().count(CONNECTED) == 2)
    assert STOPPED not in run.states() and not run.recording
    assert run.states("a") == run.states("b") == [CONNECTED]


class Paced(Driver[NoOptions]):
    """Emits one reading per tick, after asking for room, as a command-driven driver asks before each
    command."""

    name: ClassVar[str] = "paced"
    Options: ClassVar[type[DriverOptions]] = NoOptions

    def __init__(self, ticks: asyncio.Queue[None]) -> None:
        super().__init__("dev", NoOptions())
        self.ticks = ticks

    async def run(self, ctx: DeviceContext) -> None:
        ctx.connected()
        n = 0
        while True:
            await self.ticks.get()
            await ctx.room()
            n += 1
            ctx.emit(METER_READING, {"n": n})


async def test_congestion_holds_the_devices_that_ask_for_room() -> None:
    ticks: asyncio.Queue[None] = asyncio.Queue()
    async with running({"dev": lambda: Paced(ticks)}) as run:
        for _ in range(3):
            ticks.put_nowait(None)
        await run.until_events(METER_READING, 3)
        with run.congestion():
            ticks.put_nowait(None)
            await run.until("the device took its tick", ticks.empty)
            assert len(run.of(METER_READING)) == 3  # it waits for room
        await run.until_events(METER_READING, 4)
    assert [r["n"] for r in run.data(METER_READING)] == [1, 2, 3, 4]


class Family(Harness):
    def values(self) -> list[Any]:
        return [r["values"] for r in self.data(METER_READING)]


class Twice(Driver[NoOptions]):
    name: ClassVar[str] = "twice"
    Options: ClassVar[type[DriverOptions]] = NoOptions

    async def run(self, ctx: DeviceContext) -> None:
        ctx.connected()
        ctx.emit_many(METER_READING, [{"values": 1}, {"values": ctx.device}])
        await asyncio.Event().wait()


async def test_a_harness_subclass() -> None:
    makers = {"p": lambda: Twice("p", NoOptions()), "q": lambda: Twice("q", NoOptions())}
    async with running(makers, Family, timeout=5) as run:
        await run.until_events(METER_READING, 4)
        assert run.timeout == 5
    assert isinstance(run, Family)
    assert sorted(map(str, run.values())) == ["1", "1", "p", "q"]
    assert [r["values"] for r in run.data(METER_READING, "p")] == [1, "p"]


def test_the_harness_stands_on_drivers_alone() -> None:
    # A driver's own repository has neither the runtime nor our test tools: importing the harness must
    # not pull them in (the layer check covers gateway and firmware_sim; this covers what they import).
    code = (
        "import sys, drivers.testing; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'gateway', 'firmware_sim', 'pytest', '_pytest', 'hypothesis', 'tests'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
