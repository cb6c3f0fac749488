"""The one bounded wait of the test suite: for state that has no notification of its own.

Where something can be awaited (an event, a queue, a subscriber's messages), tests await it; these helpers
are for the rest (a counter on another object, a log file, an HTTP endpoint), polled until a deadline, and
failing with what was awaited. A sleep never stands in for synchronisation: the loop ends as soon as the
condition holds, and the timeout only bounds a failing test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0


async def until(
    what: str, predicate: Callable[[], bool], timeout: float = TIMEOUT, every: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


async def until_probe(
    what: str,
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout: float = TIMEOUT,
    every: float = 0.1,
) -> T:
    """Call ``probe()`` until ``accept`` takes what it returns (an HTTP answer, a scrape); return that. Fail
    naming ``what`` and the last few answers after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen: list[T] = []
    while True:
        seen.append(await probe())
        if accept(seen[-1]):
            return seen[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last answers {seen[-3:]}")
        del seen[:-3]
        await asyncio.sleep(every)
