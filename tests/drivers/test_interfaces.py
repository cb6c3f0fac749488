"""drivers.interfaces: one reader per shared interface, fanning out to its subscribers.

The interface is a real byte stream: a pseudo-terminal opened with the project's serial transport
(exclusively, as a ZigBee stick is: a second open would fail, so "opened once" is checked by the kernel),
or one end of a socketpair (a network interface whose other end the test holds and can cut). Frames are
lines. Every wait is on what the interface delivers, under a deadline; assertions are on frames and counts,
never on durations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tty
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import interfaces
from drivers.errors import (
    ConfigurationError,
    ConnectionLost,
    DeviceUnavailable,
    TransientError,
)
from drivers.interfaces import FRAMES_DROPPED, Subscription
from drivers.transport import ByteLink, TcpLink, open_serial

pytestmark = pytest.mark.timeout(60)

DEADLINE = 10.0
"""Seconds any one wait may take before the test fails (a deadline, not an expected duration)."""


class LineSource:
    """The interface's source as a driver would write one: a framer (one frame per line) over a byte link."""

    def __init__(self, link: ByteLink) -> None:
        self.link = link
        self.pending: deque[bytes] = deque()
        self.partial = b""
        self.closed = False
        self.active_sends = 0
        self.max_active_sends = 0

    async def receive(self) -> bytes:
        while not self.pending:
            *lines, self.partial = (self.partial + await self.link.read()).split(b"\n")
            self.pending.extend(lines)
        return self.pending.popleft()

    async def send(self, frame: bytes) -> None:
        self.active_sends += 1
        self.max_active_sends = max(self.max_active_sends, self.active_sends)
        try:
            half = len(frame) // 2
            await self.link.write(frame[:half])
            await asyncio.sleep(0)  # a real transport may suspend mid-frame (a full buffer): let others run
            await self.link.write(frame[half:] + b"\n")
        finally:
            self.active_sends -= 1

    def close(self) -> None:
        self.closed = True
        self.link.close()


@dataclass
class Pty:
    """A pseudo-terminal: the test holds the master (the device side), the interface opens the slave."""

    master: int
    path: str
    opens: int = 0
    sources: list[LineSource] = field(default_factory=list)

    @property
    def key(self) -> str:
        return interfaces.serial_key(self.path)

    async def open_source(self) -> LineSource:
        self.opens += 1
        source = LineSource(await open_serial(self.path, 115200))
        self.sources.append(source)
        return source

    def write(self, *frames: bytes) -> None:
        data = b"".join(frame + b"\n" for frame in frames)
        assert len(data) < 4000, "keep a write within the pty's buffer"
        os.write(self.master, data)


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)
    try:
        yield Pty(master, path)
    finally:
        os.close(master)


@dataclass
class Wire:
    """A network interface made of a socketpair per opening: the test holds the far end of each (the bus),
    can write frames into it, read what was sent, or cut it."""

    name: str = "test0"
    opens: int = 0
    sources: list[LineSource] = field(default_factory=list)
    far: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return interfaces.netdev_key(self.name)

    async def open_source(self) -> LineSource:
        self.opens += 1
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        self.far.append(await asyncio.open_connection(sock=theirs))
        source = LineSource(TcpLink(reader, writer, self.name))
        self.sources.append(source)
        return source

    def write(self, *frames: bytes) -> None:
        self.far[-1][1].write(b"".join(frame + b"\n" for frame in frames))

    def cut(self) -> None:
        self.far[-1][1].transport.abort()

    def close(self) -> None:
        for _, writer in self.far:
            writer.transport.abort()


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    w = Wire()
    try:
        yield w
    finally:
        w.close()


async def take(sub: Subscription[bytes, bytes], n: int) -> list[bytes]:
    """The next ``n`` frames of ``sub``, waited for under the deadline."""
    got: list[bytes] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < n:
            got += await sub.receive_many(n - len(got))
    return got


def frames(n: int, prefix: bytes = b"f") -> list[bytes]:
    return [prefix + str(i).encode() for i in range(n)]


# ------------------------------------------------------------------------------------------ fan-out


async def test_every_subscriber_gets_every_frame_in_order(pty: Pty) -> None:
    async with contextlib.AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(
                interfaces.attach(pty.key, pty.open_source, settings=(("baudrate", 115200),), device=d)
            )
            for d in ("j1939", "dbc", "logger")
        ]
        assert interfaces.interfaces()[pty.key].devices == ["j1939", "dbc", "logger"]
        pty.write(*frames(50))
        for sub in subs:
            assert await take(sub, 50) == frames(50)
            assert sub.stats.frames == 50 and sub.stats.frames_dropped == 0
        assert interfaces.interfaces()[pty.key].stats.frames_read == 50
    assert pty.opens == 1


async def test_async_for_iterates_the_frames(pty: Pty) -> None:
    got: list[bytes] = []
    async with interfaces.attach(pty.key, pty.open_source, settings=(), device="a") as sub:
        pty.write(*frames(5), b"end")
        async with asyncio.timeout(DEADLINE):
            async for frame in sub:
                if frame == b"end":
                    break
                got.append(frame)
    assert got == frames(5)
    with pytest.raises(StopAsyncIteration):  # a subscription left ends its iteration
        await sub.__anext__()
    with pytest.raises(ConnectionLost, match="a has left it"):
        await sub.receive()


async def test_a_later_subscriber_gets_what_arrives_from_then_on(pty: Pty) -> None:
    async with interfaces.attach(pty.key, pty.open_source, settings=(), device="first") as first:
        pty.write(b"before")
        assert await take(first, 1) == [b"before"]  # the reader has handed it out: it is the past
        async with interfaces.attach(pty.key, pty.open_source, settings=(), device="later") as later:
            pty.write(b"after")
            assert await take(later, 1) == [b"after"]
            assert await take(first, 1) == [b"after"]
            assert later.stats.frames == 1
    assert pty.opens == 1


# ---------------------------------------------------------------------------------- reference counting


async def test_opened_once_closed_by_the_last_and_reopened(pty: Pty, tmp_path: Path) -> None:
    alias = tmp_path / "ttyZigbee"  # as /dev/serial/by-id/... names the same stick
    alias.symlink_to(pty.path)
    assert interfaces.serial_key(str(alias)) == pty.key

    async with contextlib.AsyncExitStack() as outer:
        # Two devices starting at once: one opening (the pty is opened exclusively: a second would fail).
        a, b = await asyncio.gather(
            outer.enter_async_context(
                interfaces.attach(interfaces.serial_key(str(alias)), pty.open_source, settings=(), device="a")
            ),
            outer.enter_async_context(interfaces.attach(pty.key, pty.open_source, settings=(), device="b")),
        )
        assert pty.opens == 1 and a.interface is b.interface
        async with interfaces.attach(pty.key, pty.open_source, settings=(), device="c"):
            assert interfaces.interfaces()[pty.key].devices == ["a", "b", "c"]
        assert interfaces.interfaces()[pty.key].devices == ["a", "b"]
        assert not pty.sources[0].closed
        reader = a.interface._reader
    assert pty.sources[0].closed and pty.key not in interfaces.interfaces()
    assert reader is not None and reader.done()  # the reader stopped with the last subscriber

    async with interfaces.attach(pty.key, pty.open_source, settings=(), device="a") as again:
        pty.write(b"hello")
        assert await take(again, 1) == [b"hello"]
    assert pty.opens == 2 and pty.sources[1].closed


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=4)), min_size=1, max_size=30))
def test_random_attach_and_detach_keep_the_count(steps: list[tuple[bool, int]]) -> None:
    """Any order of attaches and detaches: the interface is open exactly while someone is attached, opened
    once per such stretch, and closed when the last leaves; frames reach exactly those attached."""

    async def scenario() -> None:
        wire = Wire()
        held: dict[int, tuple[Any, Subscription[bytes, bytes]]] = {}
        stretches = 0
        try:
            for attach, device in steps:
                if attach and device not in held:
                    cm = interfaces.attach(wire.key, wire.open_source, settings=(), device=f"d{device}")
                    if not held:
                        stretches += 1
                    held[device] = (cm, await cm.__aenter__())
                elif not attach and device in held:
                    cm, _ = held.pop(device)
                    await cm.__aexit__(None, None, None)
                assert wire.opens == stretches
                assert sum(not s.closed for s in wire.sources) == (1 if held else 0)
                live = interfaces.interfaces()
                if held:
                    assert sorted(live[wire.key].devices) == sorted(f"d{d}" for d in held)
                    wire.write(b"ping")
                    for _, sub in held.values():
                        assert await take(sub, 1) == [b"ping"]
                else:
                    assert wire.key not in live
        finally:
            for cm, _ in held.values():
                await cm.__aexit__(None, None, None)
            wire.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------- slow subscribers


async def test_a_slow_subscriber_drops_and_counts_while_the_others_get_everything(pty: Pty) -> None:
    counted: list[tuple[str, int]] = []

    def count(counter: str, n: int) -> None:
        counted.append((counter, n))

    async with (
        interfaces.attach(
            pty.key, pty.open_source, settings=(), device="slow", queue_size=4, count=count
        ) as slow,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="fast") as fast,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="fast2") as fast2,
    ):
        pty.write(*frames(100))
        assert await take(fast, 100) == frames(100)  # the reader never waited for the slow one
        assert await take(fast2, 100) == frames(100)
        assert slow.queued == 4 and slow.stats.high_water == 4
        assert slow.stats.frames_dropped == 96 and sum(n for _, n in counted) == 96
        assert {name for name, _ in counted} == {FRAMES_DROPPED}
        assert fast.stats.frames_dropped == fast2.stats.frames_dropped == 0
        assert slow.interface.stats.frames_dropped == 96
        # What it kept, it gets in order (the frames that found its queue full were the ones dropped).
        assert await take(slow, 4) == frames(4)
        pty.write(b"later")
        assert await take(slow, 1) == [b"later"]


async def test_a_subscriber_that_never_reads_costs_the_others_nothing(pty: Pty) -> None:
    async with (
        interfaces.attach(pty.key, pty.open_source, settings=(), device="stuck", queue_size=1) as stuck,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="live") as live,
    ):
        for round_ in range(20):
            batch = frames(30, prefix=b"r%d-" % round_)
            pty.write(*batch)
            assert await take(live, 30) == batch
        assert stuck.queued == 1 and stuck.stats.frames_dropped == 599
        assert live.stats.frames == 600


# ---------------------------------------------------------------------------------------------- filters


async def test_a_filter_runs_in_the_reader_and_refused_frames_never_touch_the_queue(pty: Pty) -> None:
    wanted = {b"18FEF100", b"18FEF101"}
    async with (
        interfaces.attach(
            pty.key,
            pty.open_source,
            settings=(),
            device="speed",
            accept=lambda frame: frame in wanted,
            queue_size=2,
        ) as speed,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="all") as everything,
    ):
        traffic = [*frames(40, prefix=b"0CF004"), b"18FEF100", *frames(40, prefix=b"18FEEE"), b"18FEF101"]
        pty.write(*traffic)
        assert await take(everything, len(traffic)) == traffic
        assert speed.stats.filtered == 80 and speed.stats.frames_dropped == 0  # a queue of two sufficed
        assert await take(speed, 2) == [b"18FEF100", b"18FEF101"]


async def test_a_filter_that_raises_ends_its_own_subscription_alone(pty: Pty) -> None:
    def broken(frame: bytes) -> bool:
        if frame == b"boom":
            raise ValueError("a bug in this device's filter")
        return True

    async with (
        interfaces.attach(pty.key, pty.open_source, settings=(), device="buggy", accept=broken) as buggy,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="sound") as sound,
    ):
        pty.write(b"one", b"boom", b"two")
        assert await take(sound, 3) == [b"one", b"boom", b"two"]
        assert await take(buggy, 1) == [b"one"]
        with pytest.raises(ValueError, match="a bug in this device's filter"):
            await buggy.receive()
        assert interfaces.interfaces()[pty.key].is_open


async def test_a_drop_counter_that_raises_ends_its_own_subscription_alone(pty: Pty) -> None:
    def count(counter: str, n: int) -> None:
        raise RuntimeError("a bug in this device's counters")

    async with (
        interfaces.attach(
            pty.key, pty.open_source, settings=(), device="buggy", queue_size=1, count=count
        ) as buggy,
        interfaces.attach(pty.key, pty.open_source, settings=(), device="sound") as sound,
    ):
        pty.write(b"one", b"two", b"three")
        assert await take(sound, 3) == [b"one", b"two", b"three"]
        assert await take(buggy, 1) == [b"one"]
        with pytest.raises(RuntimeError, match="a bug in this device's counters"):
            await buggy.receive()
        assert buggy.stats.frames_dropped == 1  # "two" found its queue full; "three" was not offered
        assert interfaces.interfaces()[pty.key].is_open


# ------------------------------------------------------------------------------------------- failures


async def test_a_vanished_interface_fails_every_subscriber_alike_and_the_next_attach_reopens(
    wire: Wire,
) -> None:
    async with (
        interfaces.attach(wire.key, wire.open_source, settings=(), device="a", listen_only=False) as a,
        interfaces.attach(wire.key, wire.open_source, settings=(), device="b", listen_only=False) as b,
    ):
        wire.write(b"last words")
        assert await take(a, 1) == [b"last words"]
        waiting = asyncio.create_task(a.receive())  # blocked on an empty queue when the interface goes
        wire.cut()
        async with asyncio.timeout(DEADLINE):
            failure = await asyncio.gather(waiting, return_exceptions=True)
        (error_a,) = failure
        assert isinstance(error_a, ConnectionLost) and isinstance(error_a, TransientError)
        assert str(error_a).startswith("netdev:test0: ")
        assert await take(b, 1) == [b"last words"]  # what was queued before the failure is delivered
        with pytest.raises(ConnectionLost) as error_b:
            await b.receive()
        assert error_b.value is error_a  # the same error, for every device
        with pytest.raises(ConnectionLost) as error_send:
            await b.send(b"too late")
        assert error_send.value is error_a
        assert wire.key not in interfaces.interfaces() and wire.sources[0].closed
        # The supervisor restarts a device; it attaches again while the other has not yet left.
        async with interfaces.attach(wire.key, wire.open_source, settings=(), device="a") as again:
            assert wire.opens == 2
            wire.write(b"back")
            assert await take(again, 1) == [b"back"]
    assert wire.key not in interfaces.interfaces()


async def test_an_interface_that_cannot_open_is_unavailable_and_forgotten(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyACM9")

    async def open_source() -> LineSource:
        return LineSource(await open_serial(missing, 115200))

    with pytest.raises(DeviceUnavailable, match="ttyACM9"):
        async with interfaces.attach(interfaces.serial_key(missing), open_source, settings=(), device="a"):
            pass
    assert interfaces.interfaces() == {}


# ------------------------------------------------------------------------------------------- settings


async def test_devices_on_one_interface_must_agree_on_its_settings(wire: Wire) -> None:
    at_500k = (("bitrate", 500_000), ("fd", False))
    async with (
        interfaces.attach(wire.key, wire.open_source, settings=at_500k, device="j1939"),
        interfaces.attach(wire.key, wire.open_source, settings=at_500k, device="dbc"),  # equal: shared
    ):
        assert wire.opens == 1
        with pytest.raises(ConfigurationError) as refused:
            async with interfaces.attach(
                wire.key, wire.open_source, settings=(("bitrate", 250_000), ("fd", False)), device="obd"
            ):
                pass
        message = str(refused.value)
        assert "netdev:test0 is shared with j1939, dbc; obd asks for other settings" in message
        assert "bitrate (j1939, dbc: 500000; obd: 250000)" in message
        assert "fd" not in message.partition("settings:")[2]  # only what differs is named

        with pytest.raises(ConfigurationError, match=r"mode \(j1939, dbc: listen-only; tx: transmit\)"):
            async with interfaces.attach(
                wire.key, wire.open_source, settings=at_500k, device="tx", listen_only=False
            ):
                pass

        with pytest.raises(ConfigurationError, match=r"rate \(j1939, dbc: unset; odd: 1\)"):
            async with interfaces.attach(
                wire.key, wire.open_source, settings=(*at_500k, ("rate", 1)), device="odd"
            ):
                pass
        assert interfaces.interfaces()[wire.key].devices == ["j1939", "dbc"]
    assert wire.opens == 1


async def test_settings_that_are_not_named_are_shown_whole(wire: Wire) -> None:
    async with interfaces.attach(wire.key, wire.open_source, settings=("slcan", "S6"), device="a"):
        with pytest.raises(
            ConfigurationError, match=r"settings \(a: \('slcan', 'S6'\); b: \('slcan', 'S8'\)\)"
        ):
            async with interfaces.attach(wire.key, wire.open_source, settings=("slcan", "S8"), device="b"):
                pass


# ------------------------------------------------------------------------------------------- sending


async def test_concurrent_sends_are_serialised(wire: Wire) -> None:
    async with contextlib.AsyncExitStack() as stack:
        senders = [
            await stack.enter_async_context(
                interfaces.attach(wire.key, wire.open_source, settings=(), device=f"d{i}", listen_only=False)
            )
            for i in range(4)
        ]

        async def burst(sub: Subscription[bytes, bytes]) -> None:
            for n in range(25):
                await sub.send(b"%s:%04d:" % (sub.device.encode(), n) + b"x" * 200)

        await asyncio.gather(*(burst(sub) for sub in senders))
        far_reader = wire.far[-1][0]
        async with asyncio.timeout(DEADLINE):
            lines = [(await far_reader.readline()).rstrip(b"\n") for _ in range(100)]
        source = wire.sources[0]
        assert source.max_active_sends == 1  # one frame at a time reached the source
        assert all(line.endswith(b":" + b"x" * 200) and line.count(b":") == 2 for line in lines)  # whole
        for sub in senders:  # and each device's frames in the order it sent them
            mine = [line.split(b":")[1] for line in lines if line.startswith(sub.device.encode() + b":")]
            assert mine == [b"%04d" % n for n in range(25)]
            assert sub.stats.sent == 25
        assert senders[0].interface.stats.frames_sent == 100


async def test_a_listen_only_interface_refuses_to_transmit(wire: Wire) -> None:
    async with interfaces.attach(wire.key, wire.open_source, settings=(), device="sniffer") as sub:
        with pytest.raises(ConfigurationError, match="sniffer: netdev:test0 is open listen-only"):
            await sub.send(b"hello")
    assert wire.sources[0].max_active_sends == 0


# ---------------------------------------------------------------------------------------------- keys


def test_keys_name_the_interface() -> None:
    assert interfaces.netdev_key("can0") == "netdev:can0"
    assert interfaces.bluetooth_key("hci0") == "bluetooth:hci0"
    with pytest.raises(ValueError, match="needs a name"):
        interfaces.netdev_key("")


async def test_queue_size_is_at_least_one(wire: Wire) -> None:
    with pytest.raises(ValueError, match="queue_size"):
        async with interfaces.attach(wire.key, wire.open_source, settings=(), device="a", queue_size=0):
            pass
    assert wire.opens == 0
