"""Shared interfaces: one reader per physical interface, fanning its traffic out to every device on it.

Some interfaces push everything they hear to everyone listening. A CAN interface (``can0``) carries the frames
of every ECU on the bus, and a J1939 decoder and a DBC decoder configured as two devices both want them; one
Bluetooth adapter hears the advertisements of every BLE device in range. (A ZigBee coordinator stick reports
for every sensor of its network too, but it also answers requests: one ``xbee`` device owns it and serves all
its sensors, so it needs no sharing.) The interface can be opened once (a serial stick exclusively, a CAN
controller in one mode at one bitrate), yet the supervisor runs each configured device as its own task, and a
device must fail alone. :mod:`drivers.bus` is the meeting point for request/response lines; this module is the
one for listening: a process-wide registry of :class:`Interface` objects keyed by the interface's real
identity (:func:`serial_key`, :func:`netdev_key`, :func:`bluetooth_key`), each owning one source and one
reader task that hands every frame to each :class:`Subscription`::

        can0 / /dev/ttyACM0 / hci0       opened by the first subscriber, closed by the last
                     |
              source.receive()           one reader task per interface
                     |
       +-------------+-------------+
       |             |             |
    accept?       accept?       accept?    each subscriber's filter, applied in the reader
       |             |             |
    [#####]       [##   ]       [#    ]    a bounded queue each: full, the frame is dropped for that
       |             |             |       subscriber alone and counted (frames_dropped)
   async for     async for     async for
    device A      device B      device C   ... send() on the interface, one frame at a time

It knows nothing of any protocol: the source is whatever the driver's opener returns (a python-can bus
wrapped to be awaited, a framer over a :class:`~drivers.transport.SerialLink`, a BLE scanner), and a frame
is whatever the source's ``receive()`` returns.

Use, from a driver's ``run``::

    async def open_source() -> CanSource:
        ...  # open the interface in the mode and at the speed the settings say

    async with interfaces.attach(interfaces.netdev_key("can0"), open_source,
                                 settings=(("bitrate", 500_000),), device=self.device,
                                 accept=lambda frame: frame.arbitration_id & 0xFF00 == 0xFE00,
                                 count=ctx.count) as sub:
        ctx.connected()
        async for frame in sub:
            ...  # decode, emit

What the interface guarantees, and why:

- **One reader, opened by the first device and closed by the last.** :func:`attach` opens the source if the
  interface is not open (others attaching meanwhile wait for that one opening, bounded by
  ``open_timeout_s``) and starts its reader; when the last subscription leaves, the reader is stopped and
  the source closed, and the next attach opens it again. A subscriber receives what arrives after it
  attached, nothing from before.
- **A slow device never stalls the reader nor the others.** Each subscription has its own bounded queue
  (``queue_size`` frames). The reader never waits for a subscriber: a frame that finds a subscriber's
  queue full is dropped for that subscriber alone (the frames it holds stay, in order, like the pipeline's
  queue), counted in its :attr:`SubscriptionStats.frames_dropped` and, through the ``count`` callback
  (the device's ``ctx.count``), in the device's counter :data:`FRAMES_DROPPED`. No unbounded queue.
- **Filters run in the reader.** A subscription's ``accept(frame)`` predicate (CAN ids and masks, a ZigBee
  source address, a BLE MAC) is applied before its queue: a frame it refuses never takes room there (it is
  counted in ``filtered``). A filter that raises ends that subscription alone, with its error.
- **A failed interface fails every device on it, and none hangs.** When the source's ``receive()`` raises
  (the adapter was unplugged, the network interface went down), the source is closed and the interface
  leaves the registry; every subscription gets the frames already queued for it and then the same
  :class:`~drivers.errors.ConnectionLost` (a :class:`~drivers.errors.TransientError`), so the supervisor
  restarts each device with backoff, and the first one back opens the interface again. A ``send`` that
  raises :class:`~drivers.errors.ConnectionLost` or :class:`~drivers.errors.DeviceUnavailable` fails the
  interface the same way.
- **Devices on one interface agree on its settings.** ``settings`` (bitrate, channel, data rate: compared
  with ``==``) and ``listen_only`` must match those of the devices already on it, or the attach is refused
  with a :class:`~drivers.errors.ConfigurationError` naming both devices and both values (the option that
  differs, when settings are ``(name, value)`` pairs as in :class:`~drivers.bus.SharedLine`).
- **Transmitting is explicit and serialised.** An interface is listen-only unless its devices attach with
  ``listen_only=False`` (a CAN controller in listen-only mode does not even acknowledge frames, so a gateway
  on a vehicle's bus stays invisible by default). On such an interface :meth:`Subscription.send` hands one
  frame at a time to the source, in the order the devices asked (an ``asyncio.Lock`` is FIFO).

The registry is per event loop, so test loops never see each other's interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from .bus import serial_key
from .errors import ConfigurationError, ConnectionLost, DeviceUnavailable

__all__ = [
    "FRAMES_DROPPED",
    "Interface",
    "InterfaceStats",
    "SharedSource",
    "Subscription",
    "SubscriptionStats",
    "attach",
    "bluetooth_key",
    "interfaces",
    "netdev_key",
    "serial_key",
]

FRAMES_DROPPED: Final = "frames_dropped"
"""The device counter of frames its interface received for it but could not queue (its queue was full)."""

DEFAULT_QUEUE_SIZE: Final = 1024
"""Frames a subscription holds by default before the next one is dropped for it."""

YIELD_EVERY: Final = 64
"""The reader lets the loop turn after this many frames in a row, so that subscribers run (and drain their
queues) even when a source hands over a backlog without ever suspending."""

FrameT = TypeVar("FrameT")
SendT = TypeVar("SendT")
FrameT_co = TypeVar("FrameT_co", covariant=True)
SendT_contra = TypeVar("SendT_contra", contravariant=True)


class SharedSource(Protocol[FrameT_co, SendT_contra]):
    """What an interface needs of its source: frames in, frames out, and a way to release it."""

    async def receive(self) -> FrameT_co:
        """The next frame heard on the interface; waits (suspends) while there is none. Raises when the
        interface is gone (:class:`~drivers.errors.ConnectionLost`, ``OSError``, ...)."""
        ...

    async def send(self, frame: SendT_contra) -> None:
        """Transmit ``frame``, within the source's own deadline. Called one at a time. A source that
        cannot transmit (a BLE scanner) raises :class:`~drivers.errors.ConfigurationError`."""
        ...

    def close(self) -> None:
        """Release the interface. Idempotent; a pending ``receive()`` may raise or be cancelled."""
        ...


Opener = Callable[[], Awaitable[SharedSource[FrameT, SendT]]]
"""Opens the interface (in the mode and with the settings the devices agreed on) and returns its source."""


@dataclass(slots=True)
class InterfaceStats:
    """Counters of one interface while it is open (monotonic; for tests, metrics and diagnostics)."""

    frames_read: int = 0
    """Frames the reader received from the source."""
    frames_dropped: int = 0
    """Frames dropped for a subscriber whose queue was full, summed over the subscribers."""
    frames_sent: int = 0
    """Frames the source accepted from :meth:`Subscription.send`."""


@dataclass(slots=True)
class SubscriptionStats:
    """Counters of one subscription (monotonic)."""

    frames: int = 0
    """Frames queued for this subscriber (accepted by its filter, and with room in its queue)."""
    filtered: int = 0
    """Frames its filter refused (they never touched its queue)."""
    frames_dropped: int = 0
    """Frames it accepted but missed because its queue was full (the well-known :data:`FRAMES_DROPPED`)."""
    high_water: int = 0
    """The most frames its queue has held."""
    sent: int = 0
    """Frames it sent."""


class Interface(Generic[FrameT, SendT]):
    """One source, its reader and its subscribers. Made and shared by :func:`attach`; not built directly."""

    def __init__(
        self,
        key: str,
        settings: Hashable,
        listen_only: bool,
        opener: Opener[FrameT, SendT],
        open_timeout_s: float,
    ) -> None:
        self.key = key
        self.settings = settings
        self.listen_only = listen_only
        self.stats = InterfaceStats()
        self._opener = opener
        self._open_timeout_s = open_timeout_s
        self._source: SharedSource[FrameT, SendT] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._sending = asyncio.Lock()
        self._failure: ConnectionLost | None = None
        self._subscriptions: list[Subscription[FrameT, SendT]] = []
        self._fanout: tuple[Subscription[FrameT, SendT], ...] = ()
        """The subscriptions the reader delivers to (those attached and open), rebuilt on every change."""

    # -- state ----------------------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        """The devices subscribed now, in attach order."""
        return [sub.device for sub in self._subscriptions]

    @property
    def subscriptions(self) -> list[Subscription[FrameT, SendT]]:
        """The subscriptions now, in attach order (each with its :class:`SubscriptionStats`)."""
        return list(self._subscriptions)

    @property
    def is_open(self) -> bool:
        return self._source is not None and self._failure is None

    @property
    def failure(self) -> ConnectionLost | None:
        """Why the interface failed (then it is closed and out of the registry), else None."""
        return self._failure

    # -- opening and closing --------------------------------------------------------------------------
    async def _ensure_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._source is not None:
            return
        async with self._opening:
            if self._failure is not None:
                raise self._failure
            if self._source is not None:
                return
            try:
                async with asyncio.timeout(self._open_timeout_s):
                    source = await self._opener()
            except TimeoutError as err:
                raise DeviceUnavailable(f"{self.key}: not opened within {self._open_timeout_s:g} s") from err
            except (ConfigurationError, ConnectionLost, DeviceUnavailable):
                raise
            except OSError as err:
                raise DeviceUnavailable(f"{self.key}: {err.strerror or err}") from err
            if self._failure is not None or not self._subscriptions:  # closed while opening
                with contextlib.suppress(Exception):
                    source.close()
                raise self._failure or ConnectionLost(f"{self.key}: closed")
            self._source = source
            self._reader = asyncio.get_running_loop().create_task(self._read(source), name=f"read {self.key}")

    async def _read(self, source: SharedSource[FrameT, SendT]) -> None:
        """The reader: every frame to every subscription that accepts it, never waiting for one."""
        stats = self.stats
        in_a_row = 0
        try:
            while True:
                frame = await source.receive()
                stats.frames_read += 1
                for sub in self._fanout:
                    sub._offer(frame)
                in_a_row += 1
                if in_a_row >= YIELD_EVERY:
                    in_a_row = 0
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # whatever the source raises, the interface is gone for every device
            self.fail(err)

    def fail(self, cause: BaseException) -> None:
        """Close the source and end every subscription with one ConnectionLost (idempotent)."""
        if self._failure is not None:
            return
        text = str(cause) or type(cause).__name__
        self._failure = ConnectionLost(text if text.startswith(self.key) else f"{self.key}: {text}")
        self._failure.__cause__ = cause
        self._shut()
        for sub in self._subscriptions:
            sub._end(self._failure)

    def _shut(self) -> None:
        """Leave the registry, stop the reader (unless it is the caller) and close the source."""
        _forget(self)
        self._fanout = ()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        source, self._source = self._source, None
        if source is not None:
            with contextlib.suppress(Exception):
                source.close()

    def _refan(self) -> None:
        self._fanout = tuple(sub for sub in self._subscriptions if sub._ended is None)


class Subscription(Generic[FrameT, SendT]):
    """One device's view of an interface: its filter, its bounded queue, its counters. Iterate it with
    ``async for``; the iteration ends with the interface's failure, or when the subscription is left."""

    def __init__(
        self,
        interface: Interface[FrameT, SendT],
        device: str,
        accept: Callable[[FrameT], bool] | None,
        queue_size: int,
        count: Callable[[str, int], None] | None,
    ) -> None:
        self.interface = interface
        self.device = device
        self.accept = accept
        self.queue_size = queue_size
        self.stats = SubscriptionStats()
        self._count = count
        self._frames: deque[FrameT] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended: BaseException | None = None
        """Why no more frames will come: the interface's failure, the filter's error, or leaving."""

    # -- the reader's side ----------------------------------------------------------------------------
    def _offer(self, frame: FrameT) -> None:
        accept = self.accept
        if accept is not None:
            try:
                wanted = accept(frame)
            except Exception as err:  # this device's bug: it ends alone, the reader goes on
                self._end(err)
                self.interface._refan()
                return
            if not wanted:
                self.stats.filtered += 1
                return
        frames = self._frames
        if len(frames) >= self.queue_size:
            self.stats.frames_dropped += 1
            self.interface.stats.frames_dropped += 1
            if self._count is not None:
                try:
                    self._count(FRAMES_DROPPED, 1)
                except Exception as err:  # as for a filter: this device's bug ends it alone
                    self._end(err)
                    self.interface._refan()
            return
        frames.append(frame)
        self.stats.frames += 1
        self.stats.high_water = max(self.stats.high_water, len(frames))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, why: BaseException) -> None:
        if self._ended is None:
            self._ended = why
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the device's side ----------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Frames waiting in this subscription's queue."""
        return len(self._frames)

    async def _wait(self) -> None:
        """Return when a frame is queued; raise why none will come."""
        while not self._frames:
            ended = self._ended
            if ended is not None:
                raise ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def receive(self) -> FrameT:
        """The next frame; waits for one. Raises the interface's :class:`~drivers.errors.ConnectionLost`
        once the frames queued before its failure are taken (and after the subscription was left)."""
        if not self._frames:
            await self._wait()
        return self._frames.popleft()

    async def receive_many(self, limit: int | None = None) -> list[FrameT]:
        """Every frame queued now (at most ``limit``), at least one: waits while there is none."""
        if not self._frames:
            await self._wait()
        frames = self._frames
        if limit is None or limit >= len(frames):
            taken = list(frames)
            frames.clear()
            return taken
        return [frames.popleft() for _ in range(limit)]

    def __aiter__(self) -> Subscription[FrameT, SendT]:
        return self

    async def __anext__(self) -> FrameT:
        if not self._frames:
            try:
                await self._wait()
            except _Left:
                raise StopAsyncIteration from None
        return self._frames.popleft()

    async def send(self, frame: SendT) -> None:
        """Transmit ``frame`` on the interface, after the frames other devices asked to send before it.

        Raises :class:`~drivers.errors.ConfigurationError` on a listen-only interface, and the interface's
        :class:`~drivers.errors.ConnectionLost` once it failed; a source's ``ConnectionLost`` or
        ``DeviceUnavailable`` fails the interface for every device. Anything else the source raises (a
        full transmit buffer, say) is this send's and passes through."""
        interface = self.interface
        if interface.listen_only:
            raise ConfigurationError(
                f"{self.device}: {interface.key} is open listen-only (shared with "
                f"{', '.join(interface.devices)}): this device may not transmit"
            )
        if isinstance(self._ended, _Left):
            raise ConnectionLost(f"{interface.key}: {self.device} has left it")
        async with interface._sending:
            source = interface._source
            if interface._failure is not None or source is None:
                raise interface._failure or ConnectionLost(f"{interface.key}: closed")
            try:
                await source.send(frame)
            except (ConnectionLost, DeviceUnavailable) as err:
                interface.fail(err)
                failure = interface._failure or ConnectionLost(str(err))
                raise failure from (None if err is failure else err)
        self.stats.sent += 1
        interface.stats.frames_sent += 1


class _Left(ConnectionLost):
    """The subscription was left: its iteration stops; a receive or send after that raises this."""


# -- keys -------------------------------------------------------------------------------------------------


def netdev_key(name: str) -> str:
    """The key of a network interface (SocketCAN ``can0``, ``vcan0``): its name, unique in the kernel."""
    if not name:
        raise ValueError("a network interface needs a name")
    return "netdev:" + name


def bluetooth_key(adapter: str) -> str:
    """The key of a Bluetooth adapter (``hci0``): its name, as BlueZ gives it."""
    if not adapter:
        raise ValueError("a Bluetooth adapter needs a name")
    return "bluetooth:" + adapter


# -- the registry ---------------------------------------------------------------------------------------

_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Interface[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def interfaces() -> dict[str, Interface[Any, Any]]:
    """The interfaces open in the running event loop, by key (a snapshot; for tests and diagnostics)."""
    return dict(_registries.get(asyncio.get_running_loop(), {}))


def _forget(interface: Interface[Any, Any]) -> None:
    with contextlib.suppress(RuntimeError):
        registry = _registries.get(asyncio.get_running_loop())
        if registry is not None and registry.get(interface.key) is interface:
            del registry[interface.key]


def _mode(listen_only: bool) -> str:
    return "listen-only" if listen_only else "transmit"


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET: Final = _Unset()


def _disagreement(
    interface: Interface[Any, Any], settings: Hashable, listen_only: bool, device: str
) -> str | None:
    """What differs between the interface's settings and these, said for an operator; None when they agree."""
    users = ", ".join(interface.devices) or "another device"
    parts: list[str] = []
    if interface.settings != settings:
        theirs, mine = _named(interface.settings), _named(settings)
        if theirs is not None and mine is not None:
            parts += [
                f"{name} ({users}: {theirs.get(name, _UNSET)!r}; {device}: {mine.get(name, _UNSET)!r})"
                for name in dict.fromkeys([*theirs, *mine])
                if theirs.get(name, _UNSET) != mine.get(name, _UNSET)
            ]
        else:
            parts.append(f"settings ({users}: {interface.settings!r}; {device}: {settings!r})")
    if interface.listen_only != listen_only:
        parts.append(f"mode ({users}: {_mode(interface.listen_only)}; {device}: {_mode(listen_only)})")
    return ", ".join(parts) or None


def _named(settings: Hashable) -> dict[str, Hashable] | None:
    """``settings`` as a mapping when it is a tuple of ``(name, value)`` pairs, else None."""
    if not isinstance(settings, tuple):
        return None
    named: dict[str, Hashable] = {}
    for item in settings:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            return None
        named[item[0]] = item[1]
    return named


@contextlib.asynccontextmanager
async def attach(
    key: str,
    opener: Opener[FrameT, SendT],
    *,
    settings: Hashable,
    device: str,
    listen_only: bool = True,
    accept: Callable[[FrameT], bool] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    count: Callable[[str, int], None] | None = None,
    open_timeout_s: float = 10.0,
) -> AsyncIterator[Subscription[FrameT, SendT]]:
    """A :class:`Subscription` for ``device`` to the interface ``key``, opening it if this is its first.

    ``key`` names the interface by its real identity (:func:`serial_key`, :func:`netdev_key`,
    :func:`bluetooth_key`); ``settings`` is everything that must match among the devices sharing it
    (compared with ``==``; ``(name, value)`` pairs get the differing option named), and ``listen_only``
    too. ``accept`` filters frames in the reader; ``queue_size`` bounds what waits for this device;
    ``count`` (the device's ``ctx.count``) is told of each frame dropped for it (:data:`FRAMES_DROPPED`).
    Raises :class:`~drivers.errors.ConfigurationError` when the interface is open with other settings,
    and :class:`~drivers.errors.DeviceUnavailable` when it cannot be opened.
    """
    if queue_size < 1:
        raise ValueError("queue_size must be >= 1")
    loop = asyncio.get_running_loop()
    registry = _registries.setdefault(loop, {})
    interface: Interface[FrameT, SendT] | None = registry.get(key)
    if interface is not None:
        differs = _disagreement(interface, settings, listen_only, device)
        if differs is not None:
            users = ", ".join(interface.devices) or "another device"
            raise ConfigurationError(
                f"{key} is shared with {users}; {device} asks for other settings: {differs}. Every device "
                "on one interface must use the same settings"
            )
    else:
        interface = Interface(key, settings, listen_only, opener, open_timeout_s)
        registry[key] = interface
    sub = Subscription(interface, device, accept, queue_size, count)
    interface._subscriptions.append(sub)
    interface._refan()
    try:
        await interface._ensure_open()
        yield sub
    finally:
        sub._end(_Left(f"{key}: {device} has left it"))
        interface._subscriptions.remove(sub)
        interface._refan()
        if not interface._subscriptions:
            reader = interface._reader
            interface._shut()
            if reader is not None and reader is not asyncio.current_task():
                await asyncio.wait({reader})  # the reader has stopped when the last device has left
