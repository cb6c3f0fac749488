"""The template of a driver whose devices are asked: :class:`PolledDevice` and :class:`PolledDriver`.

A meter says nothing until it is asked. Every period the driver reads its points, on a line that several
devices may share (:mod:`drivers.bus`: one request at a time, a timeout and a backoff per device), and emits
one event per poll with the values worth reporting (:mod:`drivers.reporting`). What is the same for every
such device lives here, once:

- :class:`PolledDriver` attaches the device to its line (:meth:`drivers.base.DriverOptions.shared_line`),
  opening the line if it is the first device on it, and runs one :class:`PolledDevice` per session;
- :class:`PolledDevice` runs the schedule: the staggered start (each device of a line starts at its own
  :attr:`~drivers.bus.Port.phase` of its period, so devices with equal periods do not all ask at once),
  wakes on a grid of a few milliseconds (the devices due together wake in one turn of the event loop),
  waits for room in the pipeline before each poll, counts the polls a slow line made it skip
  (:data:`~drivers.counters.POLLS_MISSED`: it never bursts to catch up), reports the device connected on
  its first answer, and emits what is due: the ``meter.reading`` event, or
  :data:`~drivers.counters.POLLS_UNCHANGED` / :data:`~drivers.counters.EMPTY_POLLS`.

A driver fills in how one poll asks its device::

    class _Meter(PolledDevice[MbusLine]):
        async def poll(self, schedule: Schedule) -> dict[str, object] | None:
            ...  # self.port.request(...) per read; the values by name, or None if the device was silent

        def describe(self) -> str:
            return f"meter {self.options.address}"

    class MbusDriver(PolledDriver[MbusOptions, MbusLine]):
        name = "mbus"; Options = MbusOptions; emits = frozenset({METER_READING})

        async def open_line(self, lost): ...        # the bus's opener
        def session(self, port, ctx): return _Meter(port, ctx, [Schedule(...)])
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeVar

from . import bus
from .base import DeviceContext, Driver
from .commands import CommandFailed
from .counters import EMPTY_POLLS, POLLS, POLLS_MISSED, POLLS_UNCHANGED
from .kinds import METER_READING
from .link import SerialOrTcpOptions
from .reporting import Reports

__all__ = ["WAKE_TICK_S", "PolledDevice", "PolledDriver", "Schedule"]

LinkT = TypeVar("LinkT", bound=bus.SharedLink)
OptionsT = TypeVar("OptionsT", bound=SerialOrTcpOptions)
ScheduleT = TypeVar("ScheduleT", bound="Schedule")

WAKE_TICK_S: Final = 0.010
"""Polls start on a grid of this many seconds (or a 16th of the device's fastest period, if finer)."""


@dataclass(slots=True, eq=False)
class Schedule:
    """Points polled together: one period, one event per poll. A driver may subclass it to keep what its
    polls need (the reads planned for these points)."""

    period: float
    """Seconds between the starts of two polls."""
    reports: Reports
    """What of a poll's values goes into its event."""
    next_due: float = 0.0
    """Loop time of the next poll."""


class PolledDevice(abc.ABC, Generic[LinkT, ScheduleT]):
    """One device's session on its line: its schedules, polled until cancelled or until the device is
    lost (see the module docstring). Subclasses implement :meth:`poll` and :meth:`describe`."""

    kind: ClassVar[str] = METER_READING
    """The kind of the event a poll emits."""

    def __init__(self, port: bus.Port[LinkT], ctx: DeviceContext, schedules: Sequence[ScheduleT]) -> None:
        if not schedules:
            raise ValueError("a polled device needs at least one schedule")
        self.port = port
        self.ctx = ctx
        self.schedules = list(schedules)
        self.connected = False

    @abc.abstractmethod
    async def poll(self, schedule: ScheduleT) -> Mapping[str, object] | None:
        """Ask the device for ``schedule``'s points, through :attr:`port`; their values by name (empty
        when it answered without a usable one), or None when it did not answer. Raise to end the
        session (:class:`~drivers.errors.DeviceTimeout` for a device that is gone)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What the device is, for its ``connected`` status (``unit 3 on /dev/ttyUSB0 (rtu)``)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        count = ctx.count
        schedules = self.schedules
        fastest = min(s.period for s in schedules)
        # Staggered start: this device's place in its fastest period, the same for all its schedules.
        start = loop.time() + self.port.phase * fastest
        for schedule in schedules:
            schedule.next_due = start
        tick = min(WAKE_TICK_S, fastest / 16)
        while True:
            schedule = schedules[0] if len(schedules) == 1 else min(schedules, key=_due)
            # Wake on the tick grid, not at the exact due time: the devices due within one tick wake in one
            # turn of the event loop and queue on their bus together, instead of one wake-up each.
            delay = math.ceil(schedule.next_due / tick) * tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await ctx.room()
            values = await self.poll(schedule)
            if values is not None:
                count(POLLS)
                if not self.connected:
                    self.connected = True
                    ctx.connected(self.describe())
                self.report(schedule, values)
            schedule.next_due += schedule.period
            now = loop.time()
            if schedule.next_due <= now:  # a poll overran its period: skip the missed ones, do not burst
                missed = math.floor((now - schedule.next_due) / schedule.period) + 1
                count(POLLS_MISSED, missed)
                schedule.next_due += missed * schedule.period

    def report(self, schedule: ScheduleT, values: Mapping[str, object]) -> None:
        """Emit what of ``values`` is due (one event), or count why nothing is."""
        if not values:
            self.ctx.count(EMPTY_POLLS)
            return
        due = schedule.reports.due(values)
        if due is None:
            self.ctx.count(POLLS_UNCHANGED)
            return
        self.ctx.emit(self.kind, {"values": due[0], "units": due[1]})


def _due(schedule: Schedule) -> float:
    return schedule.next_due


class PolledDriver(Driver[OptionsT], Generic[OptionsT, LinkT]):
    """A driver whose devices are asked on a line they may share: each device attached to its line
    (:mod:`drivers.bus`), one :class:`PolledDevice` per session. Subclasses implement :meth:`open_line`
    (the line's opener, run by the first device of the line) and :meth:`session`."""

    backoff_initial_s: ClassVar[float] = 1.0
    backoff_max_s: ClassVar[float] = 30.0
    """A silent device's backoff on the line (:meth:`drivers.bus.Port.request`), unless :meth:`backoff`
    says otherwise."""
    live: PolledDevice[LinkT, Any] | None = None
    """The session running now (None between sessions): what a command (:meth:`Driver.command
    <drivers.base.Driver.command>`) uses, its requests made ``urgent`` on the same port as the polls."""

    def live_session(self) -> PolledDevice[LinkT, Any]:
        """The running session, for a command; :class:`~drivers.commands.CommandFailed` when there is none
        (the device is between sessions: its line lost, its backoff running)."""
        session = self.live
        if session is None:
            raise CommandFailed(f"device {self.device!r} is not connected to its line")
        return session

    @abc.abstractmethod
    async def open_line(self, lost: Callable[[BaseException], None]) -> LinkT:
        """Open the line (the device's options say where); call ``lost`` if it drops while idle."""

    @abc.abstractmethod
    def session(self, port: bus.Port[LinkT], ctx: DeviceContext) -> PolledDevice[LinkT, Any]:
        """One session of this device on ``port``."""

    def backoff(self) -> tuple[float, float]:
        """The device's backoff on its line: (initial, longest) seconds."""
        return self.backoff_initial_s, self.backoff_max_s

    async def run(self, ctx: DeviceContext) -> None:
        opts = self.options
        line = opts.shared_line()
        if line is None:
            raise TypeError(f"{type(opts).__name__}.shared_line() must say the line a polled device is on")
        initial, longest = self.backoff()
        async with bus.attach(
            line.key,
            self.open_line,
            settings=line.settings,
            device=self.device,
            open_timeout_s=opts.connect_timeout_s,
            backoff_initial_s=initial,
            backoff_max_s=longest,
        ) as port:
            session = self.live = self.session(port, ctx)
            try:
                await session.run()
            finally:
                if self.live is session:
                    self.live = None
