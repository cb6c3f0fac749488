"""The bounded event queue, its commit windows, and the ingest stage that commits it to the buffer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.event import Event
from gateway.delivery.buffer import BufferClosedError, SqliteBuffer
from gateway.pipeline import EventQueue, Ingest


def ev(i: int) -> Event:
    return Event("dev", "test.kind", float(i), {"i": i})


def test_put_beyond_capacity_drops_and_counts() -> None:
    queue = EventQueue(3)
    assert [queue.put(ev(i)) for i in range(5)] == [True, True, True, False, False]
    assert queue.dropped == 2
    assert len(queue) == 3
    assert [e.data["i"] for e in queue.take(10)] == [0, 1, 2]


@given(st.integers(0, 8), st.lists(st.integers(0, 6), max_size=6))
def test_put_many_is_put_for_each_in_one_step(capacity_less: int, sizes: list[int]) -> None:
    capacity = capacity_less + 1
    one, many = EventQueue(capacity), EventQueue(capacity)
    i = 0
    for size in sizes:
        chunk = [ev(i + k) for k in range(size)]
        i += size
        accepted = many.put_many(chunk)
        assert accepted == sum(one.put(e) for e in chunk)
        assert (len(many), many.dropped, many.high_water) == (len(one), one.dropped, one.high_water)
    assert [e.data["i"] for e in many.take(100)] == [e.data["i"] for e in one.take(100)]


async def test_put_many_wakes_a_waiting_batch() -> None:
    queue = EventQueue(100)
    getter = asyncio.create_task(queue.get_batch(4, window=3600.0))
    await asyncio.sleep(0)
    queue.put_many([ev(0), ev(1)])
    await asyncio.sleep(0)
    assert not getter.done()  # two of four: the window still runs
    queue.put_many([ev(2), ev(3), ev(4)])
    assert [e.data["i"] for e in await asyncio.wait_for(getter, 10)] == [0, 1, 2, 3]


def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventQueue(0)


async def test_batch_returns_as_soon_as_full_without_waiting_for_the_window() -> None:
    queue = EventQueue(100)
    getter = asyncio.create_task(queue.get_batch(4, window=3600.0))
    for i in range(3):
        queue.put(ev(i))
    await asyncio.sleep(0)
    assert not getter.done()  # three of four: still inside the window
    queue.put(ev(3))
    queue.put(ev(4))
    batch = await asyncio.wait_for(getter, 10)
    assert [e.data["i"] for e in batch] == [0, 1, 2, 3]
    assert [e.data["i"] for e in queue.take(10)] == [4]


async def test_batch_ends_with_the_window_when_not_full() -> None:
    queue = EventQueue(100)
    queue.put(ev(0))
    batch = await asyncio.wait_for(queue.get_batch(1000, window=0.001), 10)
    assert [e.data["i"] for e in batch] == [0]


async def test_batch_waits_for_the_first_event() -> None:
    queue = EventQueue(10)
    getter = asyncio.create_task(queue.get_batch(5, window=0.0))
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put(ev(7))
    assert [e.data["i"] for e in await asyncio.wait_for(getter, 10)] == [7]


async def test_order_is_kept_across_batches() -> None:
    queue = EventQueue(1000)
    for i in range(250):
        queue.put(ev(i))
    seen: list[int] = []
    while len(queue):
        seen += [e.data["i"] for e in await queue.get_batch(64, window=0.0)]
    assert seen == list(range(250))
    assert queue.high_water == 250


async def test_room_waits_while_more_than_half_full_and_resumes_when_drained() -> None:
    queue = EventQueue(10)
    for i in range(5):
        queue.put(ev(i))
    await asyncio.wait_for(queue.room(), 10)  # half full: room at once
    queue.put(ev(5))
    waiter = asyncio.create_task(queue.room())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.take(1)  # back to half: room again
    await asyncio.wait_for(waiter, 10)


class Watched(SqliteBuffer):
    """The real buffer, noting how many appends are under way at once and how many events it committed."""

    in_flight = 0
    most_in_flight = 0
    committed = 0

    def watch(self, target: int) -> None:
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self.target = target

    async def append(self, events: Sequence[Event]) -> list[int]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            seqs = await super().append(events)
        finally:
            self.in_flight -= 1
        self.committed += len(seqs)
        if self.committed >= self.target:
            self.done.set()
        return seqs


async def test_ingest_commits_concurrent_batches_in_queue_order(tmp_path: Path) -> None:
    buffer = await Watched.open(tmp_path / "b.db")
    buffer.watch(500)
    queue = EventQueue(1000)
    ingest = Ingest(queue, buffer, commit_interval=0.001, commit_max_events=7, max_in_flight=3)
    for i in range(500):
        assert queue.put(ev(i))
    task = asyncio.create_task(ingest.run())
    try:
        async with asyncio.timeout(20):
            await buffer.done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ingest.drain()
    rows = await buffer.read(0, 1000)
    await buffer.close()
    assert ingest.committed == 500
    assert [r.seq for r in rows] == list(range(1, 501))
    assert [json.loads(r.data_json)["i"] for r in rows] == list(range(500))
    assert 1 < buffer.most_in_flight <= 3


async def test_ingest_drain_finishes_commits_under_way_and_the_queue(tmp_path: Path) -> None:
    buffer = await Watched.open(tmp_path / "b.db")
    buffer.watch(95)
    queue = EventQueue(1000)
    ingest = Ingest(queue, buffer, commit_interval=0.001, commit_max_events=10, max_in_flight=2)
    for i in range(95):
        queue.put(ev(i))
    task = asyncio.create_task(ingest.run())
    async with asyncio.timeout(10):
        await buffer.started.wait()  # a commit is under way: stop run() now
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert buffer.in_flight > 0 and len(queue) > 0
    await ingest.drain()
    assert ingest.committed == 95 and len(queue) == 0
    rows = await buffer.read(0, 1000)
    await buffer.close()
    assert [json.loads(r.data_json)["i"] for r in rows] == list(range(95))


async def test_ingest_run_ends_with_a_failed_commit(tmp_path: Path) -> None:
    buffer = await SqliteBuffer.open(tmp_path / "b.db")
    await buffer.close()
    queue = EventQueue(10)
    queue.put(ev(1))
    queue.put(ev(2))
    ingest = Ingest(queue, buffer, commit_interval=0.001, commit_max_events=1, max_in_flight=2)
    with pytest.raises(BufferClosedError):
        async with asyncio.timeout(10):
            await ingest.run()


def test_ingest_needs_a_commit_in_flight() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Ingest(EventQueue(1), None, max_in_flight=0)  # type: ignore[arg-type]
