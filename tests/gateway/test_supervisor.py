"""The supervisor restarts a failing device alone, with backoff, and reports it as device.status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from drivers.base import DeviceContext, Driver, DriverOptions
from drivers.errors import ConfigurationError, ConnectionLost
from drivers.event import Event
from gateway.backoff import Backoff
from gateway.pipeline import EventQueue
from gateway.processors import RfidSmoothing, SmoothingOptions
from gateway.supervisor import DeviceRunner


class NoOptions(DriverOptions):
    pass


class ScriptedDriver(Driver[NoOptions]):
    """Each run takes the next step of a script: connect and emit, then raise the step's exception."""

    name: ClassVar[str] = "scripted"
    Options: ClassVar[type[DriverOptions]] = NoOptions

    def __init__(self, steps: list[BaseException | None], runs: list[int]) -> None:
        super().__init__("dev", NoOptions())
        self.steps = steps
        self.runs = runs

    async def run(self, ctx: DeviceContext) -> None:
        n = len(self.runs)
        self.runs.append(n)
        step = self.steps[n] if n < len(self.steps) else None
        if step is not None:
            raise step
        ctx.connected(f"run {n}")
        ctx.emit("test.reading", {"run": n})
        await asyncio.Event().wait()  # reads forever


def runner_for(
    steps: list[BaseException | None], queue: EventQueue, runs: list[int], backoff: Backoff | None = None
) -> DeviceRunner:
    make: Callable[[], Driver[Any]] = lambda: ScriptedDriver(steps, runs)  # noqa: E731
    return DeviceRunner("dev", make, queue, backoff or Backoff(0.001, 0.002))


async def wait_for_events(queue: EventQueue, pred: Callable[[list[Event]], bool]) -> list[Event]:
    seen: list[Event] = []
    async with asyncio.timeout(10):
        while not pred(seen):
            seen += await queue.get_batch(100, window=0.0)
    return seen


def statuses(events: list[Event]) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.kind == "device.status"]


async def test_transient_failures_are_retried_and_reported() -> None:
    queue = EventQueue(100)
    runs: list[int] = []
    steps: list[BaseException | None] = [ConnectionLost("port gone"), OSError(5, "Input/output error"), None]
    runner = runner_for(steps, queue, runs)
    task = asyncio.create_task(runner.run())
    events = await wait_for_events(queue, lambda seen: any(e.kind == "test.reading" for e in seen))
    got = statuses(events)
    assert [s["state"] for s in got] == ["disconnected", "disconnected", "connected"]
    assert got[0]["reason"] == "port gone"
    assert "Input/output error" in got[1]["reason"]
    assert got[2]["detail"] == "run 2"
    assert runner.restarts == 2
    assert runner.state == "connected"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert statuses(queue.take(10)) == [{"state": "stopped"}]


async def test_configuration_error_stops_the_device_for_good() -> None:
    queue = EventQueue(100)
    runs: list[int] = []
    runner = runner_for([ConfigurationError("no such antenna")], queue, runs)
    await asyncio.wait_for(runner.run(), 10)
    assert statuses(queue.take(10)) == [{"state": "failed", "reason": "no such antenna"}]
    assert runs == [0]


async def test_a_driver_bug_restarts_the_device_instead_of_killing_it() -> None:
    queue = EventQueue(100)
    runs: list[int] = []
    runner = runner_for([ZeroDivisionError("oops"), None], queue, runs)
    task = asyncio.create_task(runner.run())
    events = await wait_for_events(queue, lambda seen: any(e.kind == "test.reading" for e in seen))
    assert "internal error: ZeroDivisionError: oops" in statuses(events)[0]["reason"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_one_failing_device_does_not_stall_another() -> None:
    queue = EventQueue(10_000)
    failing_runs: list[int] = []
    healthy_runs: list[int] = []
    always_failing: list[BaseException | None] = [ConnectionLost("unplugged")] * 10_000
    failing = DeviceRunner(
        "bad", lambda: ScriptedDriver(always_failing, failing_runs), queue, Backoff(0.001, 0.001)
    )

    class Chatty(ScriptedDriver):
        async def run(self, ctx: DeviceContext) -> None:
            ctx.connected()
            for i in range(200):
                ctx.emit("test.reading", {"i": i})
                await asyncio.sleep(0)
            await asyncio.Event().wait()

    healthy = DeviceRunner("good", lambda: Chatty([], healthy_runs), queue, Backoff(0.001, 0.001))
    tasks = [asyncio.create_task(failing.run()), asyncio.create_task(healthy.run())]
    events = await wait_for_events(
        queue, lambda seen: sum(e.device == "good" and e.kind == "test.reading" for e in seen) == 200
    )
    good = [e.data["i"] for e in events if e.device == "good" and e.kind == "test.reading"]
    assert good == list(range(200))
    assert failing.restarts >= 1
    assert healthy.restarts == 0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0)
    assert [backoff.delay(a, rng=lambda: 1.0) for a in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(10, rng=lambda: 0.0) == 0.5
    assert backoff.delay(1000, rng=lambda: 0.5) == pytest.approx(0.5 + 29.5 * 0.5)


async def test_emit_drops_and_counts_when_the_queue_is_full() -> None:
    queue = EventQueue(2)
    runner = runner_for([], queue, [])
    for i in range(5):
        runner.emit("test.reading", {"i": i})
    assert runner.events_emitted == 2
    assert runner.events_dropped == 3
    assert queue.dropped == 3


async def test_emit_many_is_emit_for_each() -> None:
    one, many = EventQueue(5), EventQueue(5)
    by_one = runner_for([], one, [])
    by_many = runner_for([], many, [])
    items = [{"i": i} for i in range(7)]
    for data in items:
        by_one.emit("test.reading", data, 12.5)
    by_many.emit_many("test.reading", items, 12.5)
    assert (by_many.events_emitted, by_many.events_dropped) == (by_one.events_emitted, by_one.events_dropped)
    assert (by_many.events_emitted, by_many.events_dropped) == (5, 2)
    assert many.take(10) == one.take(10)


async def test_emit_many_goes_through_the_processor() -> None:
    queue = EventQueue(100)
    smoothing = RfidSmoothing("dev", SmoothingOptions())
    runner = DeviceRunner(
        "dev", lambda: TagDriver("dev", NoOptions()), queue, Backoff(0.001, 0.002), processor=smoothing
    )
    read = {"epc": "300833B2DDD9014000000001", "antenna": 1, "rssi_dbm": -60}
    runner.emit_many("rfid.read", [read, read], 100.0)
    assert [e.kind for e in queue.take(10)] == ["rfid.arrived"]  # raw reads not forwarded
    assert smoothing.describe("300833B2DDD9014000000001")["count"] == 2  # type: ignore[index]


class TagDriver(Driver[NoOptions]):
    """Connects, reports one tag twice on antenna 1, then reads nothing more (the tag has left)."""

    name: ClassVar[str] = "tags"
    Options: ClassVar[type[DriverOptions]] = NoOptions
    emits: ClassVar[frozenset[str]] = frozenset({"rfid.read"})

    async def run(self, ctx: DeviceContext) -> None:
        ctx.connected()
        for _ in range(2):
            ctx.emit("rfid.read", {"epc": "300833B2DDD9014000000001", "antenna": 1, "rssi_dbm": -60})
        await asyncio.Event().wait()


class Exploding(RfidSmoothing):
    def process(self, event: Event) -> list[Event]:
        raise RuntimeError("processor bug")


async def test_a_processor_sees_every_event_and_its_clock_ticks() -> None:
    queue = EventQueue(100)
    smoothing = RfidSmoothing("dev", SmoothingOptions(depart_after_s=0.05))
    runner = DeviceRunner(
        "dev",
        lambda: TagDriver("dev", NoOptions()),
        queue,
        Backoff(0.001, 0.002),
        processor=smoothing,
        tick_interval=0.01,
    )
    task = asyncio.create_task(runner.run())
    try:
        # The departure comes from a tick alone: the driver emits nothing after its two reads.
        seen = await wait_for_events(queue, lambda ev: any(e.kind == "rfid.departed" for e in ev))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    kinds = [e.kind for e in seen]
    assert kinds == ["device.status", "rfid.arrived", "rfid.departed"]  # raw reads not forwarded
    assert seen[2].data["count"] == 2
    assert smoothing.counters()["tracked"] == 0


async def test_a_failing_processor_passes_events_on_and_counts() -> None:
    queue = EventQueue(100)
    runner = DeviceRunner(
        "dev",
        lambda: TagDriver("dev", NoOptions()),
        queue,
        Backoff(0.001, 0.002),
        processor=Exploding("dev", SmoothingOptions()),
        tick_interval=0.01,
    )
    task = asyncio.create_task(runner.run())
    try:
        seen = await wait_for_events(queue, lambda ev: sum(e.kind == "rfid.read" for e in ev) == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The connected status, both reads, and the stopped status on cancellation; each went on as it was.
    assert runner.counters["processor_errors"] == 4
    assert [e.kind for e in seen] == ["device.status", "rfid.read", "rfid.read"]
