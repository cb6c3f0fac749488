"""Devices run by the real supervisor into one real event queue, and what they emitted: the driver tests
share this so each of them asserts on what a deployed gateway would see, through the same waiting rules.

Waiting drains the queue until a predicate holds, under a deadline: no sleep stands in for the driver's
progress, and a timeout names what was awaited and every status the devices reported, which is usually
the reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from drivers.base import Driver
from drivers.event import Event
from gateway.backoff import Backoff
from gateway.pipeline import EventQueue
from gateway.processors import Processor
from gateway.supervisor import DeviceRunner

STATUS = "device.status"


class Collected:
    """Devices running under the supervisor into one queue, and what they emitted so far."""

    def __init__(self, queue: EventQueue, runners: dict[str, DeviceRunner], timeout: float = 20) -> None:
        self.queue = queue
        self.runners = runners
        self.events: list[Event] = []
        self.timeout = timeout
        """The default deadline of a wait, in seconds."""

    async def drain_until(self, what: str, done: Callable[[], bool], timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                while not done():
                    self.events += await self.queue.get_batch(10_000, window=0.0)
        except TimeoutError:
            reported = [(e.device, dict(e.data)) for e in self.of(STATUS)]
            raise AssertionError(f"timed out waiting for {what}; statuses: {reported}") from None

    def collect(self) -> None:
        """Take what the queue holds now, without waiting: every event emitted so far is in ``events``."""
        self.events += self.queue.take(100_000)

    def of(self, kind: str, device: str | None = None) -> list[Event]:
        return [e for e in self.events if e.kind == kind and device in (None, e.device)]

    def data(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        return [dict(e.data) for e in self.of(kind, device)]

    def counters(self, device: str) -> dict[str, int]:
        return dict(self.runners[device].counters)

    @property
    def runner(self) -> DeviceRunner:
        """The runner of the only device."""
        (runner,) = self.runners.values()
        return runner


class Run(Collected):
    """One device, waited on with predicates over every event emitted so far."""

    async def until(
        self, what: str, predicate: Callable[[list[Event]], bool], timeout: float | None = None
    ) -> None:
        await self.drain_until(what, lambda: predicate(self.events), timeout)

    def statuses(self, device: str | None = None) -> list[dict[str, Any]]:
        return self.data(STATUS, device)

    def states(self, device: str | None = None) -> list[str]:
        return [s["state"] for s in self.statuses(device)]


class Site(Collected):
    """Several devices, waited on with predicates over the accessors."""

    async def until(self, what: str, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        await self.drain_until(what, predicate, timeout)

    def statuses(self, device: str | None = None) -> list[dict[str, Any]]:
        return self.data(STATUS, device)


def n_reads(n: int) -> Callable[[list[Event]], bool]:
    return lambda events: sum(e.kind == "rfid.read" for e in events) >= n


def n_status(state: str, n: int = 1) -> Callable[[list[Event]], bool]:
    return lambda events: sum(e.kind == STATUS and e.data["state"] == state for e in events) >= n


C = TypeVar("C", bound=Collected)


@asynccontextmanager
async def running(
    cls: type[C],
    devices: Mapping[str, Callable[[], Driver[Any]]],
    *,
    processors: Mapping[str, Processor] | None = None,
    backoff: Backoff | None = None,
    queue_size: int = 100_000,
    timeout: float = 20,
) -> AsyncIterator[C]:
    """``devices`` (name: its driver factory) running, each under its own supervisor, with its processor if
    ``processors`` names one; cancelled on exit, and awaited, so nothing outlives the test."""
    queue = EventQueue(queue_size)
    runners = {
        name: DeviceRunner(
            name,
            make,
            queue,
            backoff or Backoff(0.01, 0.05),
            processor=(processors or {}).get(name),
        )
        for name, make in devices.items()
    }
    tasks = [asyncio.create_task(runner.run()) for runner in runners.values()]
    try:
        yield cls(queue, runners, timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
