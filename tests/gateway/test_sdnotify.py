"""sd_notify against systemd's side of the protocol: a real AF_UNIX datagram socket that receives each
message with its sender's credentials, as the service manager does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from gateway.ops.sdnotify import Notifier, Progress, Watchdog, monotonic_usec, watchdog_interval

pytestmark = pytest.mark.timeout(60)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Message:
    fields: dict[str, str]
    pid: int


class FakeSystemd:
    """The manager's end of NOTIFY_SOCKET. Like systemd it turns on SO_PASSCRED, so every datagram
    arrives with the sending process's pid (systemd uses it for NotifyAccess=main)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def _recv(self) -> Message:
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        lines = data.decode().split("\n")
        return Message(dict(line.split("=", 1) for line in lines), pid)

    def drain(self) -> list[Message]:
        """Every message already queued (sendto on a unix datagram socket queues before it returns)."""
        out = []
        while True:
            try:
                out.append(self._recv())
            except BlockingIOError:
                return out

    async def next(self, deadline: float = 10.0) -> Message:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(deadline):
            while True:
                try:
                    return self._recv()
                except BlockingIOError:
                    pass
                readable: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.sock.fileno(), _wake, readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@pytest.fixture
def socket_path() -> Iterator[str]:
    # A short directory: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        yield os.path.join(directory, "notify")


@pytest.fixture
def systemd(socket_path: str) -> Iterator[FakeSystemd]:
    manager = FakeSystemd(socket_path)
    yield manager
    manager.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.sent == 0


@contextlib.asynccontextmanager
async def pinging(watchdog: Watchdog) -> AsyncIterator[None]:
    """The watchdog running on the loop for the block; then cancelled (it must end by cancellation) and its
    socket closed."""
    task = asyncio.create_task(watchdog.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    watchdog.notifier.close()


async def test_systemd_receives_ready_status_watchdog_reloading_stopping(
    systemd: FakeSystemd, socket_path: str
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": socket_path})
    assert notifier.enabled
    assert notifier.ready("buffer open, 0 events pending")
    assert notifier.status("12.5 events/s, backlog 40, upstream connected")
    assert notifier.watchdog()
    before = monotonic_usec()
    assert notifier.reloading("reloading gateway.yaml")
    after = monotonic_usec()
    assert notifier.ready()
    assert notifier.stopping("stopping: committing 3 queued events")
    received = [await systemd.next() for _ in range(6)]
    notifier.close()

    assert all(m.pid == os.getpid() for m in received)
    assert [m.fields for m in received[:3]] == [
        {"READY": "1", "STATUS": "buffer open, 0 events pending"},
        {"STATUS": "12.5 events/s, backlog 40, upstream connected"},
        {"WATCHDOG": "1"},
    ]
    reload = received[3].fields
    assert reload.keys() == {"RELOADING", "MONOTONIC_USEC", "STATUS"}
    assert reload["RELOADING"] == "1"
    assert before <= int(reload["MONOTONIC_USEC"]) <= after
    assert received[4].fields == {"READY": "1"}
    assert received[5].fields == {"STOPPING": "1", "STATUS": "stopping: committing 3 queued events"}
    assert notifier.sent == 6


async def test_abstract_namespace_socket() -> None:
    name = f"edgegw-test-{uuid.uuid4().hex}"
    manager = FakeSystemd(b"\0" + name.encode())
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert (await manager.next()).fields == {"READY": "1"}
        notifier.close()
    finally:
        manager.close()


async def test_a_status_with_newlines_stays_one_assignment(systemd: FakeSystemd, socket_path: str) -> None:
    notifier = Notifier(socket_path)
    notifier.status("line one\nWATCHDOG=1")
    assert (await systemd.next()).fields == {"STATUS": "line one WATCHDOG=1"}
    notifier.close()


def test_a_manager_that_went_away_is_logged_not_raised(socket_path: str) -> None:
    notifier = Notifier(socket_path)  # nobody bound there
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.failed == 2
    notifier.close()


def test_an_address_that_is_not_a_unix_socket_disables_notifying() -> None:
    assert not Notifier("vsock:2:1234").enabled


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


async def test_watchdog_takes_its_interval_from_the_environment(
    systemd: FakeSystemd, socket_path: str
) -> None:
    env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "40000"}
    watchdog = Watchdog(Notifier.from_env(env), lambda: True, environ=env)
    assert watchdog.interval == 0.02
    async with pinging(watchdog):
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}


async def test_pings_stop_while_the_health_predicate_is_false(systemd: FakeSystemd, socket_path: str) -> None:
    healthy = True
    checks = 0
    wanted = 0
    checked = asyncio.Event()

    def predicate() -> bool:
        nonlocal checks
        checks += 1
        if checks >= wanted:
            checked.set()
        return healthy

    watchdog = Watchdog(Notifier(socket_path), predicate, interval=0.01)
    async with pinging(watchdog):
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}

        systemd.drain()  # everything sent so far; from here on the pipeline is stuck
        healthy = False
        wanted = checks + 5
        checked.clear()
        await asyncio.wait_for(checked.wait(), 10)
        assert systemd.drain() == []
        assert watchdog.withheld >= 5

        healthy = True
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}


async def test_a_predicate_that_raises_counts_as_unhealthy(systemd: FakeSystemd, socket_path: str) -> None:
    checked = asyncio.Event()

    def predicate() -> bool:
        checked.set()
        raise RuntimeError("metrics not ready")

    watchdog = Watchdog(Notifier(socket_path), predicate, interval=0.01)
    async with pinging(watchdog):
        for _ in range(3):
            checked.clear()
            await asyncio.wait_for(checked.wait(), 10)
        assert systemd.drain() == []
        assert watchdog.pings == 0


async def test_a_blocked_event_loop_sends_no_ping(systemd: FakeSystemd, socket_path: str) -> None:
    interval = 0.02
    watchdog = Watchdog(Notifier(socket_path), lambda: True, interval=interval)
    during_block: list[Message] = []
    unblocked = asyncio.Event()

    def stuck_callback() -> None:
        systemd.drain()  # the pings sent before the block
        time.sleep(10 * interval)  # the thing under test: a callback that blocks the loop
        during_block.extend(systemd.drain())
        unblocked.set()

    async with pinging(watchdog):
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}
        asyncio.get_running_loop().call_soon(stuck_callback)
        await asyncio.wait_for(unblocked.wait(), 10)
        assert during_block == []
        # The loop runs again: so do the pings.
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}


async def test_without_a_watchdog_run_idles_until_cancelled(systemd: FakeSystemd, socket_path: str) -> None:
    watchdog = Watchdog(Notifier(socket_path), lambda: True, environ={})
    assert watchdog.interval is None
    assert not watchdog.enabled
    task = asyncio.create_task(watchdog.run())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert systemd.drain() == []


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        Watchdog(Notifier(None), lambda: True, interval=0)


class FakeClock:
    """The one stand-in here: time, so that a stall of minutes is tested without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_healthy_while_idle_or_moving_and_not_when_stuck() -> None:
    clock = FakeClock()
    done = 0
    pending = False
    progress = Progress(lambda: done, lambda: pending, stall_s=60, clock=clock)

    clock.now += 600
    assert progress()  # idle for ten minutes: a quiet site is healthy
    pending = True
    clock.now += 59
    assert progress()  # work waiting, not yet for long
    done += 1
    clock.now += 59
    assert progress()  # it moved
    clock.now += 59
    assert progress()
    clock.now += 2
    assert not progress()  # 61 s with work pending and nothing done: stuck
    assert progress.stalled_for == 61
    pending = False
    assert progress()  # the work went away (e.g. the uplink dropped: not the stage's fault)
    assert progress.stalled_for == 0
    pending = True
    clock.now += 30
    assert progress()  # the stall counts from when work was pending again


async def test_a_stuck_stage_stops_the_pings(systemd: FakeSystemd, socket_path: str) -> None:
    clock = FakeClock()
    committed = 0
    progress = Progress(lambda: committed, lambda: True, stall_s=60, clock=clock)
    checks = 0
    checked = asyncio.Event()

    def healthy() -> bool:
        nonlocal checks
        checks += 1
        checked.set()
        return progress()

    watchdog = Watchdog(Notifier(socket_path), healthy, interval=0.01)
    async with pinging(watchdog):
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}
        systemd.drain()
        clock.now += 61  # the pipeline has been stuck for a minute
        for _ in range(3):
            checked.clear()
            await asyncio.wait_for(checked.wait(), 10)
        assert systemd.drain() == []
        committed += 1  # it moves again
        assert (await systemd.next()).fields == {"WATCHDOG": "1"}
