"""The bounded event queue and its commit windows."""

from __future__ import annotations

import asyncio

import pytest

from drivers.event import Event
from gateway.pipeline import EventQueue


def ev(i: int) -> Event:
    return Event("dev", "test.kind", float(i), {"i": i})


def test_put_beyond_capacity_drops_and_counts() -> None:
    queue = EventQueue(3)
    assert [queue.put(ev(i)) for i in range(5)] == [True, True, True, False, False]
    assert queue.dropped == 2
    assert len(queue) == 3
    assert [e.data["i"] for e in queue.take(10)] == [0, 1, 2]


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
