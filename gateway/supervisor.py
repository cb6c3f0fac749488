"""The supervisor: each device runs as its own task and fails alone.

A device whose driver raises a transient error (or any unexpected exception: a driver bug must not stop a
device for good, nor any other device) is restarted after an exponential backoff with full jitter, capped at
``backoff_max``; the backoff restarts from ``backoff_initial`` once the device has connected again. A
configuration error stops that device only. Every change is reported as a ``device.status`` event::

    {"state": "connected", "detail": "firmware 1.2"}
    {"state": "disconnected", "reason": "serial port /dev/ttyUSB0: end of file", "retry_in_s": 2.41}
    {"state": "failed", "reason": "unknown driver 'x'"}     (not retried)
    {"state": "stopped"}                                     (on shutdown)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.base import Driver
from drivers.errors import ConfigurationError, TransientError
from drivers.event import Event
from drivers.kinds import DEVICE_STATUS, GPS_FIX
from gateway.backoff import Backoff
from gateway.pipeline import EventQueue
from gateway.positions import Positioned, Stamper
from gateway.processors import Processor

STATUS = DEVICE_STATUS


class DeviceRunner:
    """Runs one device's driver forever, restarting it on failure. Implements the driver's context."""

    def __init__(
        self,
        name: str,
        make_driver: Callable[[], Driver[Any]],
        queue: EventQueue,
        backoff: Backoff,
        *,
        processor: Processor | None = None,
        tick_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name
        self.processor = processor
        self._tick_interval = tick_interval
        self._make_driver = make_driver
        self._queue = queue
        self._backoff = backoff
        self._clock = clock
        self._log = logging.getLogger(f"edgegw.device.{name}")
        self.counters: Counter[str] = Counter()
        self.state = "starting"
        self.restarts = 0
        self._attempt = 0
        self.events_emitted = 0
        self.events_dropped = 0
        self.stamp: Stamper | None = None
        """Gives this device's events their position (``position_from``, :mod:`gateway.positions`)."""
        self.on_fix: Callable[[Event], None] | None = None
        """Told of this device's ``gps.fix`` events (a receiver that other devices take positions from)."""
        self.driver: Driver[Any] | None = None
        """The driver instance whose ``run`` is running now (None between restarts): the one a command
        (:mod:`gateway.commands`) is given to."""
        self.command_tasks: set[asyncio.Task[Any]] = set()
        """The commands running on ``driver``: cancelled when its ``run`` ends (a failure, a stop)."""

    # -- the DeviceContext protocol -------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._name

    @property
    def log(self) -> logging.Logger:
        return self._log

    def emit(self, kind: str, data: Mapping[str, Any], ts: float | None = None) -> None:
        event = Event(self._name, kind, self._clock() if ts is None else ts, data)
        if self.on_fix is not None and kind == GPS_FIX:
            self.on_fix(event)
        if self.processor is None:
            self._put(event)
            return
        try:
            events = self.processor.process(event)
        except Exception:  # a processor bug must not stop the device: the event goes on unprocessed
            self.counters["processor_errors"] += 1
            self._log.exception("processor failed on a %s event; passed on as it was", kind)
            events = [event]
        for out in events:
            self._put(out)

    def emit_many(self, kind: str, items: Sequence[Mapping[str, Any]], ts: float | None = None) -> None:
        if self.processor is not None:
            for data in items:
                self.emit(kind, data, ts)
            return
        name = self._name
        when = self._clock() if ts is None else ts
        stamp = self.stamp
        fix = None if stamp is None else stamp.batch(kind, when, len(items))
        if fix is None:
            events = [Event(name, kind, when, data) for data in items]
        else:
            events = [Event(name, kind, when, Positioned(data, fix)) for data in items]
        accepted = self._queue.put_many(events)
        self.events_emitted += accepted
        self.events_dropped += len(items) - accepted

    def _put(self, event: Event) -> None:
        if self.stamp is not None:
            self.stamp(event)
        if self._queue.put(event):
            self.events_emitted += 1
        else:
            self.events_dropped += 1

    def connected(self, detail: str = "") -> None:
        self._attempt = 0
        self.state = "connected"
        self._log.info("connected%s", f": {detail}" if detail else "")
        self.emit(STATUS, {"state": "connected", "detail": detail})

    async def room(self) -> None:
        await self._queue.room()

    def share_fix(self, data: Mapping[str, Any], ts: float) -> None:
        """A receiver's fix, reported or not (:data:`drivers.gps.ShareFix`): for the devices stamped from
        it (``position_from``), which then carry the latest fix, not only the latest reported."""
        if self.on_fix is not None:
            self.on_fix(Event(self._name, GPS_FIX, ts, data))

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] += n

    # -- lifecycle -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the driver, restarting it on failure, until cancelled; a processor's clock ticks throughout
        (a reader that died still has its tags depart)."""
        if self.processor is None:
            await self._supervise()
            return
        ticker = asyncio.create_task(self._tick_forever(self.processor), name=f"ticks:{self._name}")
        try:
            await self._supervise()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._tick(self.processor)  # what is due by now, on the way out too
            self._flush(self.processor)  # and what is still open: tracked tags depart ("stopped")

    async def _tick_forever(self, processor: Processor) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            self._tick(processor)

    def _tick(self, processor: Processor) -> None:
        try:
            events = processor.tick(self._clock())
        except Exception:
            self.counters["processor_errors"] += 1
            self._log.exception("processor tick failed")
            return
        for event in events:
            self._put(event)

    def _flush(self, processor: Processor) -> None:
        try:
            events = processor.flush()
        except Exception:
            self.counters["processor_errors"] += 1
            self._log.exception("processor flush failed")
            return
        for event in events:
            self._put(event)

    def _driver_ended(self) -> None:
        """The driver's ``run`` is over: no more commands reach it, and those running are cancelled."""
        self.driver = None
        for task in list(self.command_tasks):
            task.cancel()

    async def _supervise(self) -> None:
        try:
            while True:
                try:
                    driver = self.driver = self._make_driver()
                    await driver.run(self)
                    reason = "driver returned"
                except ConfigurationError as err:
                    self.state = "failed"
                    self._log.error("stopped for good: %s", err)
                    self.emit(STATUS, {"state": "failed", "reason": str(err)})
                    return
                except (TransientError, OSError) as err:
                    reason = str(err) or type(err).__name__
                except Exception as err:  # a driver bug: restart this device, never the others
                    self._log.exception("driver crashed")
                    reason = f"internal error: {type(err).__name__}: {err}"
                finally:
                    self._driver_ended()
                delay = self._backoff.delay(self._attempt)
                self._attempt += 1
                self.restarts += 1
                if self.state != "disconnected" or self._attempt == 1:
                    self._log.warning("disconnected: %s (retry in %.1f s)", reason, delay)
                self.state = "disconnected"
                self.emit(STATUS, {"state": "disconnected", "reason": reason, "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.state = "stopped"
            self.emit(STATUS, {"state": "stopped"})
            raise
