"""A shared bus: one link used by several devices, one request at a time.

Meters share their wire. Eight energy meters hang on one RS-485 line (half duplex: one master, one
conversation at a time); several Modbus units sit behind one serial-to-Ethernet converter or one Modbus TCP
gateway (one TCP connection, and most converters answer one request at a time). Yet the supervisor runs
every configured device as its own task with its own driver, and a device must fail alone. This module is
the meeting point: a process-wide registry of :class:`Bus` objects keyed by transport
(``"serial:/dev/ttyUSB0"``, ``"tcp:10.0.0.7:502"``), each owning one link and a scheduler in front of it.
It knows nothing of any protocol: the link is whatever object the driver's opener returns (a ``ModbusLink``,
a :class:`~drivers.transport.ByteLink`, ...), and a request is any coroutine function run with it.

Use, from a driver's ``run``::

    async def open_link(lost: Callable[[BaseException], None]) -> MyLink:
        ...  # open the port or connection; call lost(err) if it drops while idle

    async with bus.attach("serial:/dev/ttyUSB0", open_link, settings=("dlt645", 2400, "E"),
                          device=self.device) as port:
        await asyncio.sleep(port.phase * period)           # staggered start
        while True:
            reply = await port.request(lambda link: link.exchange(frame), timeout=0.5, attempts=2,
                                       retry_on=(BadReply,))
            ...

What the bus guarantees, and why:

- **One request at a time, fair.** Requests wait in one FIFO queue; a port (one device) has at most one
  request waiting or running at a time (its own requests are serialised), so FIFO order is round robin
  across devices: a device with ten requests per poll cannot starve one with a single request.
- **A dead device costs the others at most its own timeout per attempt.** Every exchange runs under its
  ``timeout`` (the bus cancels it; the link must tolerate a cancelled exchange, e.g. discard a late reply).
  A retry goes to the back of the queue, so the others get their turn between attempts.
- **A command takes the next turn, and never starves the polls.** A request made with ``urgent=True`` (an
  operator's command: :meth:`drivers.base.Driver.command`) joins a queue of its own that is served first at
  the next turn, so it waits for the exchange in flight, not behind every device's poll (nor behind the rest
  of its own device's poll cycle, which queues one request at a time). Turns alternate when both queues
  wait: after an urgent turn, a waiting ordinary request goes first, so a stream of commands slows the polls
  to every other turn at worst and never stops them. An urgent request does not wait out its device's
  backoff (the operator asked now; its own timeout bounds it).
- **Per-device backoff.** When every attempt of a request timed out, that device backs off: its next request
  waits ``backoff_initial_s`` (doubling per failure up to ``backoff_max_s``) before it even joins the queue.
  Any answer resets it. The backoff lives in the bus and survives the device's restarts for as long as the
  bus stays open, so a dead meter whose driver the supervisor restarts (with its jittered, sometimes short
  delay) still cannot claim the line more often than its backoff allows.
- **Staggered start.** Each port gets a :attr:`Port.phase` in [0, 1), distinct and evenly spread across the
  devices attached to a bus (golden-ratio sequence); a driver starts its periodic schedule ``phase *
  period`` late, so devices with equal periods do not all queue at the same instant.
- **A failed bus fails every device on it, and none hangs.** If an exchange raises
  :class:`~drivers.errors.ConnectionLost`, :class:`~drivers.errors.DeviceUnavailable` or ``OSError``, or the
  link reports its loss through the ``lost`` callback given to the opener, the bus is closed and leaves the
  registry: the request in flight, every request waiting and every later request on it raise
  :class:`~drivers.errors.ConnectionLost` (a :class:`~drivers.errors.TransientError`), the supervisor
  restarts each device with backoff, and the first one back opens a new link.
- **Opened by the first device, closed by the last.** :func:`attach` opens the link if the bus is not open
  (others attaching meanwhile wait for that one opening, bounded by ``open_timeout_s``); the last port to
  leave closes it. Devices on one bus must agree on its ``settings`` (baud rate, framing, protocol): a
  device asking for other settings gets a :class:`~drivers.errors.ConfigurationError`. A driver states its
  bus in its options (:class:`SharedLine`), so the config refuses such devices before anything starts.

The registry is per event loop, so test loops never see each other's buses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .errors import ConfigurationError, ConnectionLost, DeviceTimeout, DeviceUnavailable

__all__ = ["Bus", "BusStats", "Port", "SharedLine", "SharedLink", "attach", "buses", "serial_key", "tcp_key"]

GOLDEN = 0.6180339887498949
"""Successive multiples of the golden ratio, modulo 1, spread evenly over [0, 1) for any count."""

LINK_FAILURES: tuple[type[BaseException], ...] = (ConnectionLost, DeviceUnavailable, OSError)
"""What an exchange may raise that means the link itself is gone (not just one device silent)."""


class SharedLink(Protocol):
    """What the bus needs of a link: a way to release it. Everything else is the driver's business."""

    def close(self) -> None: ...


LinkT = TypeVar("LinkT", bound=SharedLink)
T = TypeVar("T")

Opener = Callable[[Callable[[BaseException], None]], Awaitable[LinkT]]
"""Opens the link. Its argument is the ``lost`` callback: call it with the cause when the link drops on its
own (a TCP reset while idle), so that the devices learn it at once rather than at their next request. The
bus cannot interrupt an exchange in flight without a task per request, so a link that learns of its loss
should also make its pending exchange raise (else that exchange ends at its timeout, reported as the link's
failure, not as the device's silence)."""


@dataclass(slots=True)
class BusStats:
    """Counters of one bus (monotonic; for tests, metrics and the benchmark)."""

    requests: int = 0
    """Exchanges started (each attempt counts)."""
    timeouts: int = 0
    """Exchanges cut off by their timeout."""
    max_waiting: int = 0
    """The longest the queue has been."""


class Bus(Generic[LinkT]):
    """One link and the queue in front of it. Made and shared by :func:`attach`; not built directly."""

    def __init__(self, key: str, settings: Hashable, opener: Opener[LinkT], open_timeout_s: float) -> None:
        self.key = key
        self.settings = settings
        self.stats = BusStats()
        self._opener = opener
        self._open_timeout_s = open_timeout_s
        self._link: LinkT | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self._failure: ConnectionLost | None = None
        self._busy = False
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._urgent: deque[asyncio.Future[None]] = deque()
        """Waiters of urgent requests (commands): served before ``_waiting``, turns alternating."""
        self._last_urgent = False
        """Whether the turn now running (or the last one) went to an urgent request."""
        self._ports: list[Port[LinkT]] = []
        self._attached = 0
        self._backoffs: dict[str, tuple[int, float]] = {}
        """device -> (consecutive timed-out requests, loop time its backoff ends)."""

    # -- state ----------------------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        """The devices attached now, in attach order."""
        return [port.device for port in self._ports]

    @property
    def is_open(self) -> bool:
        return self._link is not None and self._failure is None

    @property
    def failure(self) -> ConnectionLost | None:
        """Why the bus failed (then it is closed and out of the registry), else None."""
        return self._failure

    # -- opening and closing --------------------------------------------------------------------------
    async def _ensure_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._link is not None:
            return
        async with self._opening:
            if self._failure is not None:
                raise self._failure
            if self._link is not None:
                return
            try:
                async with asyncio.timeout(self._open_timeout_s):
                    link = await self._opener(self._lost)
            except TimeoutError as err:
                raise DeviceUnavailable(f"{self.key}: not opened within {self._open_timeout_s:g} s") from err
            except (ConnectionLost, DeviceUnavailable):
                raise
            except OSError as err:
                raise DeviceUnavailable(f"{self.key}: {err.strerror or err}") from err
            if self._failure is not None:  # lost while opening
                with contextlib.suppress(Exception):
                    link.close()
                raise self._failure
            self._link = link

    def _lost(self, cause: BaseException) -> None:
        """The link dropped: fail the bus (idempotent; safe to call from a link's callbacks)."""
        self.fail(cause)

    def fail(self, cause: BaseException) -> None:
        """Close the link and fail every request waiting now or later with ConnectionLost."""
        if self._failure is not None:
            return
        text = str(cause) or type(cause).__name__
        self._failure = ConnectionLost(text if text.startswith(self.key) else f"{self.key}: {text}")
        self._failure.__cause__ = cause
        _forget(self)
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                link.close()
        for queue in (self._urgent, self._waiting):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_exception(self._failure)

    def _close(self) -> None:
        _forget(self)
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                link.close()
        if self._failure is None:
            self._failure = ConnectionLost(f"{self.key}: closed")
        for queue in (self._urgent, self._waiting):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_exception(self._failure)

    # -- turns ----------------------------------------------------------------------------------------
    async def _acquire(self, urgent: bool = False) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._busy and not self._waiting and not self._urgent:
            self._busy = True
            self._last_urgent = urgent
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._waiting
        queue.append(waiter)
        self.stats.max_waiting = max(self.stats.max_waiting, len(self._waiting) + len(self._urgent))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # granted just as we were cancelled: pass the turn on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        # Urgent first, except right after an urgent turn while ordinary requests wait (turns alternate).
        first, second = (self._waiting, self._urgent) if self._last_urgent else (self._urgent, self._waiting)
        for queue in (first, second):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    self._last_urgent = queue is self._urgent
                    waiter.set_result(None)  # the turn passes on: _busy stays True
                    return
        self._busy = False

    # -- backoff --------------------------------------------------------------------------------------
    def _backoff_until(self, device: str) -> float:
        return self._backoffs.get(device, (0, 0.0))[1]

    def _timed_out(self, device: str, initial: float, maximum: float) -> float:
        failures = self._backoffs.get(device, (0, 0.0))[0] + 1
        delay = min(maximum, initial * 2.0 ** min(failures - 1, 30))
        self._backoffs[device] = (failures, asyncio.get_running_loop().time() + delay)
        return delay

    def _answered(self, device: str) -> None:
        self._backoffs.pop(device, None)


class Port(Generic[LinkT]):
    """One device's use of a bus: its requests, its timeouts, its backoff."""

    def __init__(
        self, bus: Bus[LinkT], device: str, phase: float, backoff_initial_s: float, backoff_max_s: float
    ) -> None:
        self.bus = bus
        self.device = device
        self.phase = phase
        """Where in its period this device should start, in [0, 1): see the module's docstring."""
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.requests = 0
        """Exchanges this port ran (each attempt counts)."""
        self.timeouts = 0
        """Exchanges of this port cut off by their timeout."""
        self.backoffs = 0
        """Requests that failed every attempt by timeout (each one started a backoff)."""
        self._mine = asyncio.Lock()

    @property
    def backoff_remaining_s(self) -> float:
        """Seconds until this device may queue again (0 when not backing off)."""
        return max(0.0, self.bus._backoff_until(self.device) - asyncio.get_running_loop().time())

    async def request(
        self,
        exchange: Callable[[LinkT], Awaitable[T]],
        *,
        timeout: float,
        attempts: int = 1,
        retry_on: tuple[type[BaseException], ...] = (),
        urgent: bool = False,
    ) -> T:
        """Run ``exchange(link)`` in this device's turn, within ``timeout`` seconds; its result.

        Up to ``attempts`` tries: an attempt that times out or raises one of ``retry_on`` (a corrupt reply,
        say) is tried again, behind the other devices' waiting requests. When every attempt timed out the
        device starts (or extends) its backoff and :class:`~drivers.errors.DeviceTimeout` is raised; when
        the last attempt raised one of ``retry_on``, that is raised. A link failure raises
        :class:`~drivers.errors.ConnectionLost` (here and in every other device on the bus). Anything else
        the exchange raises passes through (the device answered: no backoff).

        ``urgent``: a command's request, served at the next turn of the bus (see the module docstring). It
        does not queue behind this device's own ordinary requests either, nor wait out its backoff.
        """
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        bus = self.bus
        async with contextlib.nullcontext() if urgent else self._mine:
            if not urgent and self.device in bus._backoffs:
                wait = self.backoff_remaining_s
                if wait > 0:
                    await asyncio.sleep(wait)
            last: BaseException | None = None
            for _attempt in range(attempts):
                await bus._acquire(urgent)
                try:
                    try:
                        link = bus._link
                        if link is None:
                            await bus._ensure_open()
                            link = bus._link
                            if link is None:  # failed while we waited for the open
                                raise bus._failure or ConnectionLost(f"{bus.key}: closed")
                        self.requests += 1
                        bus.stats.requests += 1
                        async with asyncio.timeout(timeout):
                            result = await exchange(link)
                    except TimeoutError:
                        if bus._failure is not None:  # the link died under this exchange: not the device
                            raise bus._failure from None
                        self.timeouts += 1
                        bus.stats.timeouts += 1
                        last = DeviceTimeout(f"{self.device}: no answer within {timeout:g} s")
                        continue
                    except retry_on as err:
                        bus._answered(self.device)
                        last = err
                        continue
                    except LINK_FAILURES as err:
                        bus.fail(err)
                        failure = bus._failure or ConnectionLost(str(err))
                        raise failure from (None if err is failure else err)
                    else:
                        bus._answered(self.device)
                        return result
                finally:
                    bus._release()
            assert last is not None
            if isinstance(last, DeviceTimeout):
                self.backoffs += 1
                delay = bus._timed_out(self.device, self.backoff_initial_s, self.backoff_max_s)
                raise DeviceTimeout(f"{last} (next try in {delay:g} s)") from last
            raise last


# -- keys -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedLine:
    """The bus a device attaches to, as its options say (:meth:`drivers.base.DriverOptions.shared_line`):
    the bus ``key`` and the ``settings`` every device on it must share, each named by the device option it
    comes from (``(("driver", "modbus"), ("baudrate", 9600), ...)``). The driver attaches with exactly
    these; the config compares them across devices before anything starts, so that ``edgegw check``
    refuses what :func:`attach` would refuse at run time, naming the option that differs and both values
    (so a setting is a line setting, such as a speed or a framing: never a secret)."""

    key: str
    settings: tuple[tuple[str, Hashable], ...]

    @property
    def where(self) -> str:
        """The key without its kind, as an operator writes it: ``/dev/ttyUSB0``, ``10.0.0.7:502``."""
        return self.key.partition(":")[2]


def serial_key(path: str) -> str:
    """The bus key of a serial port: its real path, so two names of one port (``/dev/serial/by-id/...`` and
    ``/dev/ttyUSB0``) are one bus, and devices of different drivers on one line meet (and must agree)."""
    return "serial:" + os.path.realpath(path)


def tcp_key(host: str, port: int) -> str:
    """The bus key of a TCP connection (a converter, a Modbus TCP gateway, a networked meter)."""
    return f"tcp:{host}:{port}"


# -- the registry ---------------------------------------------------------------------------------------

_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Bus[Any]]] = (
    weakref.WeakKeyDictionary()
)
_phase_counter = itertools.count()


def buses() -> dict[str, Bus[Any]]:
    """The buses open in the running event loop, by key (a snapshot; for tests and diagnostics)."""
    return dict(_registries.get(asyncio.get_running_loop(), {}))


def _forget(bus: Bus[Any]) -> None:
    with contextlib.suppress(RuntimeError):
        registry = _registries.get(asyncio.get_running_loop())
        if registry is not None and registry.get(bus.key) is bus:
            del registry[bus.key]


@contextlib.asynccontextmanager
async def attach(
    key: str,
    opener: Opener[LinkT],
    *,
    settings: Hashable,
    device: str,
    open_timeout_s: float = 10.0,
    backoff_initial_s: float = 1.0,
    backoff_max_s: float = 30.0,
) -> AsyncIterator[Port[LinkT]]:
    """A :class:`Port` for ``device`` on the bus ``key``, opening the bus if this is its first device.

    ``key`` names the transport (:func:`serial_key`, :func:`tcp_key`); ``settings`` is everything
    that must match among the devices sharing it (compared with ``==``). Raises
    :class:`~drivers.errors.ConfigurationError` when the bus is open with other settings, and
    :class:`~drivers.errors.DeviceUnavailable` when it cannot be opened.
    """
    loop = asyncio.get_running_loop()
    registry = _registries.setdefault(loop, {})
    bus: Bus[LinkT] | None = registry.get(key)
    if bus is not None and bus.settings != settings:
        users = ", ".join(bus.devices) or "another device"
        raise ConfigurationError(
            f"{key} is shared with {users} using settings {bus.settings!r}; this device asks for "
            f"{settings!r}: every device on one bus must use the same settings"
        )
    if bus is None:
        bus = Bus(key, settings, opener, open_timeout_s)
        registry[key] = bus
    phase = (next(_phase_counter) * GOLDEN) % 1.0
    port = Port(bus, device, phase, backoff_initial_s, backoff_max_s)
    bus._attached += 1
    bus._ports.append(port)
    try:
        await bus._ensure_open()
        yield port
    finally:
        bus._ports.remove(port)
        bus._attached -= 1
        if bus._attached == 0:
            bus._close()
