"""firmware_sim.serving's task helpers."""

from __future__ import annotations

import asyncio

import pytest

from firmware_sim import serving


async def test_cancel_all_ends_the_tasks_and_drops_what_they_end_with() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("torn down")

    tasks = [asyncio.create_task(asyncio.Event().wait()), asyncio.create_task(fails_when_cancelled())]
    await asyncio.sleep(0)  # both started
    await serving.cancel_all(tasks)
    assert all(task.done() for task in tasks)


async def test_a_caller_cancelled_while_it_waits_in_cancel_all_is_cancelled() -> None:
    # A task that takes its time to end (a simulator session closing a pty) holds cancel_all; the caller,
    # cancelled meanwhile, must end with its own cancellation instead of going on as if nothing happened.
    release = asyncio.Event()
    reached = asyncio.Event()
    went_on = False

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    async def caller() -> None:
        nonlocal went_on
        stubborn = asyncio.create_task(slow_to_end())
        await asyncio.sleep(0)
        reached.set()
        await serving.cancel_all((stubborn,))
        went_on = True

    task = asyncio.create_task(caller())
    await reached.wait()
    await asyncio.sleep(0)  # the caller is inside cancel_all, waiting
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not went_on
