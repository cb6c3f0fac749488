"""A cursor's ``wait_for_new`` with several upstreams: events committed only
for other upstreams before a cursor's empty read must not wake it, or its reader (the hj212 upstream's live
view, a forwarder with a narrow route) spins on empty reads and starves the event loop; later commits wake it
at most once each; an event routed to it wakes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[SqliteBuffer]:
    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    try:
        yield buffer
    finally:
        await buffer.close()


def events(device: str, n: int) -> list[Event]:
    return [Event(device, "test.event", 1_700_000_000.0 + i, {"i": i}) for i in range(n)]


async def settle() -> None:
    for _ in range(20):  # let every callback woken by the commits run
        await asyncio.sleep(0)


async def test_events_for_other_upstreams_do_not_wake_a_caught_up_cursor(buf: SqliteBuffer) -> None:
    await buf.set_upstreams(
        [("meters", lambda device, _kind: device.startswith("meter")), ("all", lambda _d, _k: True)]
    )
    meters = buf.cursor("meters")
    first = await buf.append(events("meter-1", 3))
    rows = await meters.read(0, 100)
    assert [r.seq for r in rows] == first
    after = rows[-1].seq
    others = await buf.append(events("ble-1", 50))  # routed to "all" only
    assert await meters.read(after, 100) == []
    waiter = asyncio.create_task(meters.wait_for_new(after))
    await settle()
    assert not waiter.done()  # 50 newer events, none of them its own: no wake-up (it was a busy loop)
    # a reader as the upstreams run it: each commit of others' events costs it at most one empty read
    reads = 0

    async def reader() -> list[int]:
        nonlocal reads
        while True:
            reads += 1
            rows = await meters.read(after, 100)
            if rows:
                return [r.seq for r in rows]
            await meters.wait_for_new(after)

    task = asyncio.create_task(reader())
    commits = 5
    for _ in range(commits):
        await buf.append(events("ble-1", 10))
        await settle()
    assert not task.done() and reads <= commits + 1
    assert len(await buf.cursor("all").read(0, 1000)) == len(first) + len(others) + 10 * commits
    mine = await buf.append(events("meter-1", 1))
    async with asyncio.timeout(10):
        await waiter
        assert await task == mine


async def test_a_cursor_that_never_read_still_wakes_for_its_own_events(buf: SqliteBuffer) -> None:
    await buf.set_upstreams([("a", lambda d, _k: d == "a"), ("b", lambda d, _k: d == "b")])
    await buf.append(events("b", 5))
    waiter = asyncio.create_task(buf.cursor("a").wait_for_new(0))
    async with asyncio.timeout(10):
        await waiter  # no read yet: an event past 0 exists, so it returns (a read tells what is its own)
    assert await buf.cursor("a").read(0, 10) == []
    waiter = asyncio.create_task(buf.cursor("a").wait_for_new(0))
    await settle()
    assert not waiter.done()
    mine = await buf.append(events("a", 2))
    async with asyncio.timeout(10):
        await waiter
    assert [r.seq for r in await buf.cursor("a").read(0, 10)] == mine
