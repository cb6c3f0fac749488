"""Test a driver the way the gateway runs it, without the gateway: a supported harness for drivers written
here or anywhere else.

:func:`running` runs each device's driver under the rules of the driver contract (:mod:`drivers.base`), as
the gateway's supervisor does: the driver gets a :class:`~drivers.base.DeviceContext`; a
:class:`~drivers.errors.TransientError` or an ``OSError`` (or any other exception: a driver bug) restarts it
after a jittered exponential backoff, a :class:`~drivers.errors.ConfigurationError` stops it for good, and
every change is a :data:`~drivers.kinds.DEVICE_STATUS` event, exactly as the gateway emits it::

    {"state": "connected", "detail": "firmware 1.2"}
    {"state": "disconnected", "reason": "serial port /dev/ttyUSB0: end of file", "retry_in_s": 0.03}
    {"state": "failed", "reason": "unknown antenna 9"}                      (not retried)

What the devices emit is recorded in order (:attr:`Harness.events`), with their counters
(:meth:`Harness.counters`), and a test waits for what it expects with :meth:`Harness.until` (or
:meth:`~Harness.until_events`, :meth:`~Harness.until_state`): no sleep stands in for the driver's progress,
and a wait that times out fails naming what was awaited and every status the devices reported, which is
usually the reason. Run the device against something real (a simulator on a pseudo-terminal or a TCP port
on 127.0.0.1), not a mock: the harness replaces only the runtime.

Example (pytest with pytest-asyncio; any asyncio test runner will do)::

    from drivers.counters import FRAMES_REJECTED
    from drivers.kinds import RFID_READ
    from drivers.testing import CONNECTED, running

    from mydriver import MyReader, MyReaderOptions

    async def test_reads_through_noise(tmp_path):
        options = MyReaderOptions(port=str(tmp_path / "tty"))
        async with my_simulator(tmp_path / "tty", noise=0.01), running(
            {"reader-1": lambda: MyReader("reader-1", options)}
        ) as run:
            await run.until_events(RFID_READ, 100)
        assert run.states() == [CONNECTED]
        assert run.counters("reader-1")[FRAMES_REJECTED] > 0
        assert all(read["antenna"] == 1 for read in run.data(RFID_READ))

A driver's commands are sent as the gateway sends them once the device is connected, ``args`` validated
against the command's model in strict JSON mode: ``await run.command("meter-1", "write", {"point":
"ct_primary_a", "value": 250})`` returns the result's ``data`` or raises what the driver raised
(:class:`~drivers.commands.CommandRefused`, :class:`~drivers.commands.CommandFailed`, ...).

What the harness does not do, the gateway does: it keeps no bounded queue (every event is recorded; a
driver's :meth:`~drivers.base.DeviceContext.room` returns at once unless the test holds the pipeline
congested with :meth:`Harness.congestion`), runs no processors, stores nothing. Recording stops when
:func:`running` exits, before the devices are cancelled: what a test asserts on is what happened while it
watched (the ``stopped`` status of the shutdown is not recorded).

This module imports neither the runtime nor a test framework, only :mod:`drivers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, overload

from .base import Driver
from .commands import CommandData, CommandFailed, CommandRefused
from .errors import ConfigurationError, TransientError
from .event import Event
from .kinds import DEVICE_STATUS

__all__ = [
    "CONNECTED",
    "DISCONNECTED",
    "FAILED",
    "STOPPED",
    "Backoff",
    "DeviceUnderTest",
    "Harness",
    "Jittered",
    "running",
]

# The states of a device.status event the runtime emits for every device (a driver may report states of
# its own under the same kind, such as an LLRP reader's antenna_disconnected).
CONNECTED: Final = "connected"
"""The device answered: its driver called :meth:`~drivers.base.DeviceContext.connected`."""
DISCONNECTED: Final = "disconnected"
"""The driver failed with a transient error (or returned, or crashed); it restarts after ``retry_in_s``."""
FAILED: Final = "failed"
"""The driver raised a :class:`~drivers.errors.ConfigurationError`: the device stops for good."""
STOPPED: Final = "stopped"
"""The device was cancelled (shutdown)."""

DEFAULT_TIMEOUT_S: Final = 20.0
"""How long a wait of :class:`Harness` lasts by default before it fails."""
RECHECK_S: Final = 0.05
"""A wait re-checks its predicate at least this often, for what changes without the devices' doing (a
simulator's statistics)."""


class Backoff(Protocol):
    """How long a failed device waits before its next attempt."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0 for the first since it connected)."""
        ...


@dataclass(frozen=True, slots=True)
class Jittered:
    """The gateway's backoff: uniform in [initial/2, min(maximum, initial * 2**attempt)], short by
    default so that a test of reconnection does not wait."""

    initial: float = 0.01
    maximum: float = 0.05

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * (2.0 ** min(attempt, 30)))
        floor = min(self.initial / 2, ceiling)
        return floor + (ceiling - floor) * random.random()


class DeviceUnderTest:
    """One device: its driver run until cancelled, restarted on failure, and the
    :class:`~drivers.base.DeviceContext` it gets (what it emits goes to ``record``)."""

    def __init__(
        self,
        name: str,
        make_driver: Callable[[], Driver[Any]],
        record: Callable[[Event], None],
        *,
        backoff: Backoff | None = None,
        room: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``make_driver`` builds a fresh driver for each attempt; ``room`` (a coroutine function) is what
        :meth:`room` awaits (None: never waits); ``clock`` gives an event's time when the driver gives
        none."""
        self._name = name
        self._make_driver = make_driver
        self._record = record
        self._backoff = backoff or Jittered()
        self._room = room
        self._clock = clock
        self._log = logging.getLogger(f"edgegw.device.{name}")
        self._attempt = 0
        self.counters: Counter[str] = Counter()
        """What the driver counted (:meth:`count`), by name."""
        self.state = "starting"
        """The state of the last status: ``starting`` before any, then :data:`CONNECTED`, ..."""
        self.restarts = 0
        """How many times the driver was started again after it ended."""
        self.changed: Callable[[], None] = _nothing
        """Called after every event and count (the harness wakes its waits with it)."""
        self.driver: Driver[Any] | None = None
        """The driver instance of the current (or last) attempt: the one a command goes to."""

    async def command(self, name: str, args: Mapping[str, Any] | None = None) -> CommandData:
        """Send command ``name`` to the running driver, as the gateway does once the device is connected:
        ``args`` (the request's JSON object) validated against the command's model in strict JSON mode,
        then :meth:`Driver.command <drivers.base.Driver.command>`. A command the driver does not offer
        raises :class:`~drivers.commands.CommandRefused`, args that do not validate pydantic's
        ``ValidationError``."""
        driver = self.driver
        if driver is None or self.state != CONNECTED:
            raise CommandFailed(f"device {self._name!r} is not connected")
        spec = type(driver).commands.get(name)
        if spec is None:
            raise CommandRefused(f"driver {driver.name!r} has no command {name!r}")
        parsed = spec.args.model_validate_json(json.dumps(args or {}), strict=True)
        return await driver.command(name, parsed)

    # -- the DeviceContext ----------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._name

    @property
    def log(self) -> logging.Logger:
        return self._log

    def emit(self, kind: str, data: Mapping[str, Any], ts: float | None = None) -> None:
        self._record(Event(self._name, kind, self._clock() if ts is None else ts, data))
        self.changed()

    def emit_many(self, kind: str, items: Sequence[Mapping[str, Any]], ts: float | None = None) -> None:
        name, record = self._name, self._record
        when = self._clock() if ts is None else ts
        for data in items:
            record(Event(name, kind, when, data))
        self.changed()

    def connected(self, detail: str = "") -> None:
        self._attempt = 0
        self.state = CONNECTED
        self._log.info("connected%s", f": {detail}" if detail else "")
        self.emit(DEVICE_STATUS, {"state": CONNECTED, "detail": detail})

    async def room(self) -> None:
        if self._room is not None:
            await self._room()

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] += n
        self.changed()

    # -- the lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the driver until cancelled, restarting it as the gateway would (see the module docstring)."""
        try:
            while True:
                try:
                    self.driver = driver = self._make_driver()
                    await driver.run(self)
                    reason = "driver returned"
                except ConfigurationError as err:
                    self.state = FAILED
                    self._log.error("stopped for good: %s", err)
                    self.emit(DEVICE_STATUS, {"state": FAILED, "reason": str(err)})
                    return
                except (TransientError, OSError) as err:
                    reason = str(err) or type(err).__name__
                except Exception as err:  # a driver bug: restarted, as the gateway does
                    self._log.exception("driver crashed")
                    reason = f"internal error: {type(err).__name__}: {err}"
                delay = self._backoff.delay(self._attempt)
                self._attempt += 1
                self.restarts += 1
                if self.state != DISCONNECTED or self._attempt == 1:
                    self._log.warning("disconnected: %s (retry in %.1f s)", reason, delay)
                self.state = DISCONNECTED
                status = {"state": DISCONNECTED, "reason": reason, "retry_in_s": round(delay, 2)}
                self.emit(DEVICE_STATUS, status)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.state = STOPPED
            self.emit(DEVICE_STATUS, {"state": STOPPED})
            raise


def _nothing() -> None:
    return None


class Harness:
    """Devices running (see :func:`running`), and what they emitted and counted so far.

    Subclass it to add accessors of a device family (``reads()``, ``readings(device)``) and pass the
    subclass to :func:`running`."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.devices: dict[str, DeviceUnderTest] = {}
        """The devices by name."""
        self.events: list[Event] = []
        """Every event the devices emitted while recording, in order."""
        self.timeout = timeout
        """The default deadline of a wait, in seconds."""
        self.recording = True
        """False once :func:`running` has exited: later events are not recorded."""
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    # -- what the devices call ----------------------------------------------------------------------------
    def record(self, event: Event) -> None:
        """Keep ``event`` (while recording)."""
        if self.recording:
            self.events.append(event)

    def changed(self) -> None:
        """Wake the waits: something was emitted or counted."""
        self._changed.set()

    async def room(self) -> None:
        """What a device's :meth:`~drivers.base.DeviceContext.room` waits for: the end of a
        :meth:`congestion`."""
        await self._room.wait()

    @contextlib.contextmanager
    def congestion(self) -> Iterator[None]:
        """Within the block the pipeline is congested: every device's ``room()`` waits until it ends."""
        self._room.clear()
        try:
            yield
        finally:
            self._room.set()

    # -- waiting ------------------------------------------------------------------------------------------
    async def until(self, what: str, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds, re-checked after every event and count; fail (AssertionError)
        naming ``what`` and the statuses reported after ``timeout`` seconds (default :attr:`timeout`)."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while not predicate():
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RECHECK_S):
                            await self._changed.wait()
        except TimeoutError:
            reported = [(e.device, dict(e.data)) for e in self.of(DEVICE_STATUS)]
            raise AssertionError(
                f"timed out after {limit:g} s waiting for {what}; statuses: {reported}"
            ) from None

    async def until_events(
        self, kind: str, n: int = 1, device: str | None = None, timeout: float | None = None
    ) -> None:
        """Wait for at least ``n`` events of ``kind`` (of ``device``, or of any)."""
        whose = "" if device is None else f" of {device}"
        await self.until(f"{n} {kind} event(s){whose}", lambda: len(self.of(kind, device)) >= n, timeout)

    async def until_state(
        self, state: str, n: int = 1, device: str | None = None, timeout: float | None = None
    ) -> None:
        """Wait for at least ``n`` statuses with ``state`` (of ``device``, or of any)."""
        whose = "" if device is None else f" of {device}"
        await self.until(
            f"{n} {state!r} status(es){whose}", lambda: self.states(device).count(state) >= n, timeout
        )

    # -- what happened ------------------------------------------------------------------------------------
    def of(self, kind: str, device: str | None = None) -> list[Event]:
        """The events of ``kind`` (of ``device``, or of every device), in order."""
        return [e for e in self.events if e.kind == kind and device in (None, e.device)]

    def data(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        """The data of :meth:`of`'s events, as dicts."""
        return [dict(e.data) for e in self.of(kind, device)]

    def statuses(self, device: str | None = None) -> list[dict[str, Any]]:
        """The data of the :data:`~drivers.kinds.DEVICE_STATUS` events."""
        return self.data(DEVICE_STATUS, device)

    def states(self, device: str | None = None) -> list[str]:
        """The ``state`` of each status, in order."""
        return [s["state"] for s in self.statuses(device)]

    def counters(self, device: str | None = None) -> dict[str, int]:
        """What ``device`` (or the only device) counted so far."""
        return dict(self.device_named(device).counters)

    def device_named(self, device: str | None = None) -> DeviceUnderTest:
        """The device called ``device``; None: the only one."""
        if device is None:
            (only,) = self.devices.values()
            return only
        return self.devices[device]

    @property
    def device(self) -> DeviceUnderTest:
        """The only device."""
        return self.device_named(None)

    async def command(
        self, device: str | None, name: str, args: Mapping[str, Any] | None = None
    ) -> CommandData:
        """:meth:`DeviceUnderTest.command` of ``device`` (None: the only one)."""
        return await self.device_named(device).command(name, args)


H = TypeVar("H", bound=Harness)


@overload
def running(
    devices: Mapping[str, Callable[[], Driver[Any]]],
    *,
    backoff: Backoff | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> AbstractAsyncContextManager[Harness]: ...


@overload
def running(
    devices: Mapping[str, Callable[[], Driver[Any]]],
    harness: type[H],
    *,
    backoff: Backoff | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> AbstractAsyncContextManager[H]: ...


def running(
    devices: Mapping[str, Callable[[], Driver[Any]]],
    harness: type[Harness] = Harness,
    *,
    backoff: Backoff | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> AbstractAsyncContextManager[Harness]:
    """``devices`` (name: a factory of its driver, called for each attempt) running, each as its own task;
    on exit recording stops, every device is cancelled and awaited, so nothing outlives the block.

    ``harness``: the :class:`Harness` (sub)class to record into, built with ``timeout``, the default
    deadline of its waits; ``backoff``: every device's (default :class:`Jittered`)."""
    return _running(devices, harness(timeout), backoff)


@contextlib.asynccontextmanager
async def _running(
    devices: Mapping[str, Callable[[], Driver[Any]]],
    record: Harness,
    backoff: Backoff | None,
) -> AsyncIterator[Harness]:
    for name, make in devices.items():
        device = DeviceUnderTest(name, make, record.record, backoff=backoff, room=record.room)
        device.changed = record.changed
        record.devices[name] = device
    tasks = [
        asyncio.create_task(device.run(), name=f"device:{name}") for name, device in record.devices.items()
    ]
    try:
        yield record
    finally:
        record.recording = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
