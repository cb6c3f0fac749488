"""The template of a driver whose device pushes frames: :class:`StreamSession` and :class:`StreamDriver`.

An RFID reader streams tag reports, a GPS receiver its sentences, a CAN adapter its frames: the device
talks on its own, and the driver's work is to keep reading, frame what arrives, and say what it means. What
is the same for every such device lives here, once (python-can's ``recv()`` over ``_recv_internal()``):

- :class:`StreamDriver` opens the link (:func:`drivers.link.open_link`), runs one session on it, and closes
  it when the session ends, by failure or cancellation;
- :class:`StreamSession` owns the connection's framer and its backlog (frames framed and not yet handled),
  reads the link, stamps each chunk's receive time, charges the framer's and the link's counters to the
  device (:class:`drivers.counters.FramerTally`: ``bytes_skipped``, ``frames_rejected``,
  ``overflow_bytes``), gives the next frame within a deadline (:meth:`StreamSession.recv`), tells the
  device's silence (:meth:`StreamSession.check_silence`), and waits for room in the pipeline
  (:meth:`StreamSession.room`) without counting that wait as the device's silence.

A driver fills in the exchange, the few steps only its protocol knows::

    class _Session(StreamSession[gps.Sentence, GpsOptions]):
        async def start(self) -> str:              # bring the device to streaming; what it is
            await self.write(gps.enable(...))
            return "u-blox M8, firmware 3.01"

        async def stream(self) -> None:            # until the connection fails (raise) or is cancelled
            while True:
                sentence = await self.recv(self.loop.time() + self.options.read_timeout_s)
                if sentence is None:
                    raise DeviceTimeout("receiver silent")
                ...  # decode, self.ctx.emit(...)

    class GpsDriver(StreamDriver[GpsOptions]):
        name = "gps"; Options = GpsOptions; emits = frozenset({GPS_FIX})

        def link(self) -> LinkOptions: return self.options.link
        def session(self, link, ctx) -> _Session: return _Session(link, self.options, ctx, gps.NmeaFramer())

``run`` then calls ``start``, reports the device connected with what ``start`` returned, calls ``stream``,
and on a clean stop (the device cancelled) calls ``stop`` while the link is still open (a protocol's
goodbye, such as LLRP's CLOSE_CONNECTION).

Commands (:meth:`drivers.base.Driver.command`) run in the session's own task, never beside it: one reader
of the link, one conversation with the device. The driver hands the session an action
(:meth:`StreamSession.call`, on :attr:`StreamDriver.live`); ``stream`` serves the actions waiting
(:meth:`StreamSession.serve_calls`) at each of its pauses (between two exchanges, or when
:attr:`StreamSession.called` wakes it), so a command waits for the exchange in flight, not for a whole cycle.
An action that finds the device gone fails the session too; actions still waiting when the session ends
fail with :class:`~drivers.commands.CommandFailed`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

from protocols.framing import Framer

from .base import DeviceContext, Driver, DriverOptions
from .commands import CommandFailed
from .counters import REJECTIONS, FramerTally
from .errors import ConnectionLost, DeviceTimeout, TransientError
from .link import LinkOptions, open_link
from .transport import ByteLink

__all__ = ["StreamDriver", "StreamSession"]

ItemT = TypeVar("ItemT")
T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound=DriverOptions)


class StreamSession(abc.ABC, Generic[ItemT, OptionsT]):
    """One connection to a device that pushes frames (see the module docstring).

    ``ItemT`` is what the backlog holds: the framer's frames, or what :meth:`feed` makes of a chunk."""

    rejections: ClassVar[tuple[str, ...]] = REJECTIONS
    """The framer's stats counted as :data:`~drivers.counters.FRAMES_REJECTED`."""
    device_noun: ClassVar[str] = "device"
    """What the device is, in messages (``reader silent for 5 s``)."""

    def __init__(
        self,
        link: ByteLink,
        options: OptionsT,
        ctx: DeviceContext,
        framer: Framer[Any],
        *,
        silence_s: float | None = None,
    ) -> None:
        """``silence_s``: how long the device may send nothing before :meth:`check_silence` says it is
        gone (None: never)."""
        self.link = link
        self.options = options
        self.ctx = ctx
        self.framer = framer
        self.silence_s = silence_s
        self.backlog: deque[ItemT] = deque()
        """Frames framed and not yet handled, in stream order."""
        self.loop = asyncio.get_running_loop()
        self.received_at = 0.0
        """Wall-clock time (epoch seconds) the last chunk arrived: the time of events without their own."""
        self.last_received = self.loop.time()
        """Loop time the last chunk arrived (the session's start before any), moved on by :meth:`room`."""
        self.tally = FramerTally(framer.stats, link, self.rejections)
        self._calls: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self.called = asyncio.Event()
        """Set when an action waits (:meth:`call`): a ``stream`` idle on its own wakes on it."""
        self._ended: CommandFailed | None = None

    # -- the lifecycle (StreamDriver runs it) ----------------------------------------------------------
    async def run(self) -> None:
        """``start``, the device connected, ``stream``; ``stop`` when cancelled."""
        try:
            detail = await self.start()
            self.ctx.connected(detail)
            await self.stream()
        except asyncio.CancelledError:
            await self.stop()
            raise
        finally:
            self._end()

    # -- commands ----------------------------------------------------------------------------------------
    async def call(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` in the session's task at its next pause; its result (or its exception). If the
        caller is cancelled before its turn, the action never runs; once running, it finishes (an exchange
        is never cut in half) and its result is dropped."""
        if self._ended is not None:
            raise self._ended
        future: asyncio.Future[T] = self.loop.create_future()
        self._calls.append((action, future))
        self.called.set()
        self.wake()
        return await future

    def wake(self) -> None:
        """An action waits: a session whose ``stream`` may be blocked on the device (a read without end)
        cuts that wait short here so that it serves the action soon (by default nothing: ``stream`` pauses
        often enough, or waits on :attr:`called`)."""

    async def serve_calls(self) -> None:
        """Run the actions waiting, in order (``stream`` calls it at its pauses). An action that fails
        because the device is gone (a transient error: the connection lost, the device silent) fails the
        session as well, after its caller has been told."""
        calls = self._calls
        self.called.clear()
        while calls:
            action, future = calls.popleft()
            if future.done():  # its caller gave up before its turn
                continue
            try:
                result = await action()
            except (TransientError, OSError) as err:
                if not future.done():
                    future.set_exception(err)
                raise
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
            except BaseException:  # the session cancelled under the action
                if not future.done():
                    future.set_exception(CommandFailed(f"the {self.device_noun} session ended"))
                raise
            else:
                if not future.done():
                    future.set_result(result)

    def _end(self) -> None:
        self._ended = CommandFailed(f"the {self.device_noun} is not connected")
        while self._calls:
            _, future = self._calls.popleft()
            if not future.done():
                future.set_exception(self._ended)

    @abc.abstractmethod
    async def start(self) -> str:
        """Bring the device to the point where it streams; return what it is (the ``connected`` detail)."""

    @abc.abstractmethod
    async def stream(self) -> None:
        """Read and emit until the connection fails (raise from the driver error tree) or is cancelled."""

    async def stop(self) -> None:
        """On a clean stop, with the link still open: the goodbye the protocol asks for, if any. Must be
        bounded in time and never raise."""

    # -- what the steps use ----------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Send ``data`` to the device."""
        await self.link.write(data)

    def feed(self, data: bytes) -> Iterable[ItemT]:
        """What a chunk holds, for the backlog: the framer's frames (a driver may make them lighter)."""
        frames: Iterable[ItemT] = self.framer.feed(data)
        return frames

    def check(self) -> None:
        """Called before waiting for more bytes: raise if the stream can no longer be read (a framer that
        lost its step)."""

    def link_lost(self, error: ConnectionLost) -> ConnectionLost:
        """What the link's loss is to raise, given ``error`` (a driver may say more: a message cut short)."""
        return error

    async def receive(self) -> None:
        """Wait for the next bytes (no timeout of its own: run it under one), frame them into the backlog,
        and charge the counters. Nothing is lost if a timeout cancels the wait."""
        try:
            data = await self.link.read()
        except ConnectionLost as err:
            lost = self.link_lost(err)
            if lost is err:
                raise
            raise lost from err
        self.last_received = self.loop.time()
        self.received_at = time.time()
        self.backlog.extend(self.feed(data))
        self.tally.charge(self.ctx.count)

    async def recv(self, deadline: float | None = None) -> ItemT | None:
        """The next frame: from the backlog, else from the link; None once ``deadline`` (loop time)
        passes without one (None: wait as long as it takes)."""
        backlog = self.backlog
        while not backlog:
            self.check()
            if deadline is None:
                await self.receive()
                continue
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self.receive()
            except TimeoutError:
                return None
        return backlog.popleft()

    def check_silence(self, since: float) -> None:
        """Raise :class:`~drivers.errors.DeviceTimeout` if the device has sent nothing for ``silence_s``,
        counted from ``since`` (loop time: when it was last asked something) or its last bytes, whichever
        is later."""
        limit = self.silence_s
        if limit is not None and self.loop.time() - max(since, self.last_received) >= limit:
            raise DeviceTimeout(f"{self.device_noun} silent for {limit:g} s")

    async def room(self) -> float:
        """Wait while the pipeline is congested (:meth:`DeviceContext.room
        <drivers.base.DeviceContext.room>`); the seconds waited. That wait is ours, not the device's
        silence: :attr:`last_received` moves on by as much."""
        before = self.loop.time()
        await self.ctx.room()
        waited = self.loop.time() - before
        if waited:
            self.last_received += waited
        return waited


class StreamDriver(Driver[OptionsT]):
    """A driver whose device pushes frames: the link opened, one session run on it, the link closed.
    Subclasses say where the device is (:meth:`link`) and make the session (:meth:`session`)."""

    @abc.abstractmethod
    def link(self) -> LinkOptions:
        """Where the device is."""

    @abc.abstractmethod
    def session(self, link: ByteLink, ctx: DeviceContext) -> StreamSession[Any, OptionsT]:
        """One connection's session, on ``link``."""

    live: StreamSession[Any, OptionsT] | None = None
    """The session running now (None between connections): where a command's action goes."""

    def live_session(self) -> StreamSession[Any, OptionsT]:
        """The running session, for a command; :class:`~drivers.commands.CommandFailed` when there is none
        (between connections, its backoff running)."""
        session = self.live
        if session is None:
            raise CommandFailed(f"device {self.device!r} is not connected")
        return session

    async def run(self, ctx: DeviceContext) -> None:
        async with await open_link(self.link()) as link:
            session = self.live = self.session(link, ctx)
            try:
                await session.run()
            finally:
                if self.live is session:
                    self.live = None
