"""The pipeline between drivers and the buffer.

::

    driver tasks --emit--> EventQueue (bounded) --Ingest--> buffer.append (group commit)

:class:`EventQueue` never blocks a driver: when it is full the event is dropped and counted (a serial reader
that waited would overrun its port at the source, losing bytes where nobody counts them). :class:`Ingest`
takes batches of up to ``commit_max_events`` or whatever arrived within ``commit_interval`` of the first
event, and commits each batch in one transaction: the loss window on power failure is that interval.
"""

from __future__ import annotations

import asyncio
from collections import deque

from drivers.event import Event
from gateway.delivery.buffer import Buffer


class EventQueue:
    """A bounded FIFO of events: ``put`` never blocks, ``get_batch`` waits for a commit window."""

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self.max_events = max_events
        self._items: deque[Event] = deque()
        self._nonempty = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._batch_size = max_events
        self.low_water = max_events // 2
        self._room = asyncio.Event()
        self._room.set()
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        items = self._items
        if len(items) >= self.max_events:
            self.dropped += 1
            return False
        items.append(event)
        n = len(items)
        if n == 1:
            self._nonempty.set()
        if n >= self._batch_size:
            self._batch_ready.set()
        self.high_water = max(self.high_water, n)
        return True

    def put_many(self, events: list[Event]) -> int:
        """Queue ``events`` in order as far as there is room; the rest are dropped and counted. Returns how
        many were queued (what :meth:`put` would have done for each, in one step)."""
        items = self._items
        room = self.max_events - len(items)
        if room < len(events):
            self.dropped += len(events) - max(room, 0)
            events = events[: max(room, 0)]
            if not events:
                return 0
        was_empty = not items
        items.extend(events)
        n = len(items)
        if was_empty:
            self._nonempty.set()
        if n >= self._batch_size:
            self._batch_ready.set()
        self.high_water = max(self.high_water, n)
        return len(events)

    async def get_batch(self, max_events: int, window: float) -> list[Event]:
        """Wait for an event, then up to ``window`` seconds more or until ``max_events`` are queued; return
        at most ``max_events`` events in order."""
        while not self._items:
            self._nonempty.clear()
            await self._nonempty.wait()
        if len(self._items) < max_events and window > 0:
            self._batch_size = max_events
            self._batch_ready.clear()
            try:
                async with asyncio.timeout(window):
                    await self._batch_ready.wait()
            except TimeoutError:
                pass
            finally:
                self._batch_size = self.max_events
        return self.take(max_events)

    def take(self, max_events: int) -> list[Event]:
        """Up to ``max_events`` queued events, without waiting."""
        items = self._items
        n = min(max_events, len(items))
        if n == len(items):
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(n)]
        if len(items) <= self.low_water:
            self._room.set()
        return batch

    async def room(self) -> None:
        """Wait while the queue is over half full (see :meth:`drivers.base.DeviceContext.room`)."""
        while len(self._items) > self.low_water:
            self._room.clear()
            await self._room.wait()


class Ingest:
    """Moves events from the queue into the buffer in group commits.

    Up to ``max_in_flight`` batches are on their way into the buffer at once: while one commits (inserts
    and an fsync on the writer thread), the next is taken from the queue and encoded, and the writer folds
    the batches waiting for it into its next transaction. One at a time, the ingest rate would be capped
    at a batch per commit time, and the queue would overflow behind a slow disk. Batches reach the
    buffer in queue order, so seqs follow the order events were emitted in."""

    def __init__(
        self,
        queue: EventQueue,
        buffer: Buffer,
        *,
        commit_interval: float = 0.020,
        commit_max_events: int = 1000,
        max_in_flight: int = 3,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.queue = queue
        self.buffer = buffer
        self.commit_interval = commit_interval
        self.commit_max_events = commit_max_events
        self.max_in_flight = max_in_flight
        self.committed = 0
        self.commits = 0
        self.refused = 0
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Commit batches until cancelled; a failed commit ends it with that error. On cancellation
        whatever is still queued is not committed: call :meth:`drain` after stopping the producers."""
        in_flight = self._in_flight
        while True:
            while len(in_flight) >= self.max_in_flight:
                await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
                self._raise_failed()
            batch = await self.queue.get_batch(self.commit_max_events, self.commit_interval)
            self._raise_failed()
            # A task of its own: cancelling run() must not abandon a batch already taken from the queue.
            task = asyncio.ensure_future(self._append(batch))
            in_flight.add(task)

    def _raise_failed(self) -> None:
        failed: BaseException | None = None
        for task in [t for t in self._in_flight if t.done()]:
            self._in_flight.discard(task)
            error = task.exception()  # every failure retrieved; the first raised
            if failed is None:
                failed = error
        if failed is not None:
            raise failed

    async def drain(self) -> None:
        """Commit everything queued now (on shutdown, once the drivers have stopped and :meth:`run` was
        cancelled). Commits under way when :meth:`run` was cancelled are finished first."""
        while self._in_flight:
            task = self._in_flight.pop()
            await task
        while len(self.queue):
            await self._append(self.queue.take(self.commit_max_events))

    async def _append(self, batch: list[Event]) -> None:
        seqs = await self.buffer.append(batch)
        self.commits += 1
        refused = seqs.count(0)
        self.committed += len(seqs) - refused
        self.refused += refused
