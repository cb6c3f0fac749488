"""systemd's notify protocol, by hand: a few ``KEY=VALUE`` lines in one datagram to ``$NOTIFY_SOCKET``.

Why not libsystemd (or a wrapper around it): the protocol is a single ``sendto`` on an ``AF_UNIX``
datagram socket, and the gateway must run the same way on boxes without systemd's headers, in containers
and in tests. Without ``NOTIFY_SOCKET`` (not started by systemd, or by a unit that is not ``Type=notify``)
every call is a no-op, so the runtime calls the :class:`Notifier` unconditionally.

What systemd does with each message (``sd_notify(3)``):

- ``READY=1``: start-up is finished; ``systemctl start`` returns, units ordered after this one start.
  Sent again after a reload (``RELOADING=1`` ... ``READY=1`` brackets it).
- ``STATUS=...``: one free-text line shown by ``systemctl status``.
- ``WATCHDOG=1``: a ping; with ``WatchdogSec=`` set, a service that misses pings for that long is killed
  with SIGABRT and, with ``Restart=on-failure``, restarted. systemd passes the interval in
  ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): ping at half of it (:func:`watchdog_interval`).
- ``STOPPING=1``: shutdown has begun (``systemctl status`` shows "deactivating").
- ``RELOADING=1`` with ``MONOTONIC_USEC=``: a reload has begun; systemd 253 and later want the
  ``CLOCK_MONOTONIC`` time with it to tell this reload from an earlier one.
- ``EXTEND_TIMEOUT_USEC=``: the current start or stop needs this much longer than its timeout.

:class:`Watchdog` is the asyncio task that pings. Because it runs *on* the event loop, a loop blocked by a
stuck callback cannot ping at all; on top of that it pings only while a health predicate holds (the
runtime's "the pipeline is making progress"), so a stuck forwarder or ingest stage also lets systemd's
timer run out. A failed send is logged, never raised: telling systemd must not be what stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["Notifier", "Progress", "Watchdog", "monotonic_usec", "watchdog_interval"]

log = logging.getLogger("edgegw.sdnotify")

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: the clock systemd compares ``MONOTONIC_USEC=`` against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to ping, in seconds: half of ``WATCHDOG_USEC``, as ``sd_watchdog_enabled(3)`` advises (a
    ping that is a little late still arrives in time). None when no watchdog is asked of this process:
    ``WATCHDOG_USEC`` unset, not a positive integer, or ``WATCHDOG_PID`` naming another process (a child
    that inherited the environment must not ping for its parent)."""
    env = os.environ if environ is None else environ
    raw = env.get(WATCHDOG_USEC)
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", WATCHDOG_USEC, raw)
        return None
    if usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("ignoring %s=%r: not a process id", WATCHDOG_PID, owner)
            return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """A value must stay on its line: a newline would start a new (bogus) assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends notify messages to the service manager at ``address`` (``$NOTIFY_SOCKET``: a filesystem path,
    or ``@name`` for an abstract socket). With no address every method is a no-op returning False."""

    def __init__(self, address: str | None) -> None:
        self.address: str | bytes | None = None
        if address:
            if address.startswith("@"):
                self.address = b"\0" + address[1:].encode()
            elif address.startswith("/"):
                self.address = address
            else:  # vsock:... (a VM's manager) and anything newer: not for a gateway on a box
                log.warning("%s=%r is not a unix socket path; not notifying systemd", NOTIFY_SOCKET, address)
        self._sock: socket.socket | None = None
        self.sent = 0
        """Messages handed to the socket (for tests and the summary)."""
        self.failed = 0
        """Messages the socket refused (manager gone, its queue full)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for in ``NOTIFY_SOCKET`` (a no-op one when it is not set)."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if the socket took it. Never blocks (a
        manager that is not reading loses the message) and never raises."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self.address)
        except OSError as err:
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.warning(
                    "cannot notify systemd at %s (%d failed so far): %s", self._where, self.failed, err
                )
            return False
        self.sent += 1
        return True

    @property
    def _where(self) -> str:
        address = self.address
        return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else str(address)

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: the config is valid and the buffer is open."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """The one line ``systemctl status`` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """One watchdog ping (normally :class:`Watchdog` sends these)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun; send :meth:`ready` when it is done (whether or not the new config was
        taken)."""
        assignments = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status is not None:
            assignments.append(f"STATUS={_one_line(status)}")
        return self.notify(*assignments)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more than the start/stop timeout, from now (a long drain on slow flash)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings ``notifier`` every ``interval`` seconds while ``healthy()`` is true; runs until cancelled.

    It runs on the event loop on purpose: while the loop is blocked it cannot ping, which is exactly what
    systemd should see. ``healthy`` is called on the loop before each ping and must be cheap; while it is
    false no ping is sent, so a pipeline that stopped making progress is restarted by systemd once
    ``WatchdogSec`` runs out. With no interval (no watchdog configured) :meth:`run` just waits to be
    cancelled, so it can be started unconditionally.
    """

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], bool],
        *,
        interval: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``interval`` in seconds; by default :func:`watchdog_interval` of ``environ`` (``os.environ``)."""
        self.notifier = notifier
        self.healthy = healthy
        self.interval = watchdog_interval(environ) if interval is None else interval
        if self.interval is not None and not self.interval > 0:
            raise ValueError(f"watchdog interval must be > 0, not {self.interval!r}")
        self.pings = 0
        """Pings sent."""
        self.withheld = 0
        """Pings not sent because ``healthy()`` was false (or raised)."""

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.notifier.enabled

    async def run(self) -> None:
        if self.interval is None or not self.notifier.enabled:
            await asyncio.Event().wait()  # nothing to ping: idle until cancelled
            return
        interval = self.interval
        log.info("watchdog: pinging systemd every %.1f s while healthy", interval)
        unhealthy_since: float | None = None
        while True:
            if self._check():
                if unhealthy_since is not None:
                    log.warning(
                        "watchdog: healthy again after %.1f s; pings resumed",
                        time.monotonic() - unhealthy_since,
                    )
                    unhealthy_since = None
                self.notifier.watchdog()
                self.pings += 1
            else:
                self.withheld += 1
                if unhealthy_since is None:
                    unhealthy_since = time.monotonic()
                    log.error(
                        "watchdog: unhealthy; withholding pings (systemd restarts the gateway if it lasts)"
                    )
            await asyncio.sleep(interval)

    def _check(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:  # a broken predicate is a broken gateway: let systemd see it
            log.exception("watchdog: health check failed")
            return False


class Progress:
    """A health predicate for one stage: healthy unless work has been pending for ``stall_s`` seconds
    without its counter moving.

    ``done()`` is a monotonic counter of work finished (events committed, events acknowledged);
    ``pending()`` says whether there is work it should be finishing (events queued; events buffered while
    the upstream is connected). An idle stage is healthy, and so is a forwarder whose broker is unreachable
    (that is the uplink's problem, not a stuck gateway: the caller's ``pending`` leaves it out), so the
    watchdog restarts the gateway only for a stage that is stuck, never for a quiet site or a dead uplink.
    """

    def __init__(
        self,
        done: Callable[[], int],
        pending: Callable[[], bool],
        stall_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stall_s > 0:
            raise ValueError(f"stall_s must be > 0, not {stall_s!r}")
        self._done = done
        self._pending = pending
        self.stall_s = stall_s
        self._clock = clock
        self._last = done()
        self._since = clock()

    def __call__(self) -> bool:
        now = self._clock()
        count = self._done()
        if count != self._last or not self._pending():
            self._last = count
            self._since = now
            return True
        return now - self._since < self.stall_s

    @property
    def stalled_for(self) -> float:
        """Seconds since the counter last moved while work was pending (0 when it is not stuck)."""
        return 0.0 if self() else self._clock() - self._since
