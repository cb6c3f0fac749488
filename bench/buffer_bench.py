"""Throughput of the SQLite buffer: ``python -m bench.buffer_bench [--runs N] [--batches N] [--dir DIR]``.

Measures, each as the median of several runs on a fresh file:

- append: batches of 1,000 events, one after the other (each waits for its commit), with
  ``synchronous=full`` and ``normal``: events/s and microseconds per event;
- append from 20 concurrent tasks, batches of 50 (what group commit makes of many small appends);
- read: ``read(cursor, 1000)`` through the whole backlog; read+ack: the forwarder's loop (read 1,000, ack
  them), ending with the commit of the last deletions;
- the event loop's worst lag while appending (a 1 ms ticker): what the serial readers would notice.

With ``--upstreams N`` (N >= 2) the buffer has N upstreams taking every event: reads go through the first
one's cursor, and read+ack is every upstream reading and acknowledging the whole backlog in turn (an event
is deleted with the last upstream's ack), so its figure is per event and upstream.

The file lives in ``--dir`` (default: the system's temporary directory): put it on the storage the gateway
will use, since fsync costs are the storage's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.event import Event
from gateway.delivery.buffer import BufferCursor, SqliteBuffer, everything

BATCH = 1000


def make_events(start: int, n: int) -> list[Event]:
    """Realistic RFID reads: about 120 bytes of JSON each."""
    now = time.time()
    return [
        Event(
            "gate-3",
            "rfid.read",
            now,
            {
                "epc": f"E28011606000020{i:09X}",
                "rssi": -61.5,
                "antenna": 1 + i % 4,
                "count": 3,
                "phase": 1.25,
            },
        )
        for i in range(start, start + n)
    ]


@dataclass
class Lag:
    max_s: float = 0.0


async def ticker(lag: Lag, interval: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lag.max_s = max(lag.max_s, loop.time() - due)


async def with_lag(fn: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    gc.collect()  # the previous phase's garbage is not this phase's lag
    lag = Lag()
    task = asyncio.ensure_future(ticker(lag))
    await asyncio.sleep(0)
    try:
        elapsed = await fn()
    finally:
        task.cancel()
    return elapsed, lag.max_s


async def run_once(
    directory: Path, synchronous: str, batches: int, upstreams: int = 1
) -> dict[str, tuple[float, float]]:
    """One run on a fresh file: {measure: (seconds, worst loop lag)}."""
    path = directory / f"bench-{synchronous}-{time.monotonic_ns()}.db"
    buf = await SqliteBuffer.open(path, synchronous=synchronous)
    names = [f"up{i}" for i in range(upstreams)]
    if upstreams > 1:
        await buf.set_upstreams([(name, everything) for name in names])
    views: list[SqliteBuffer | BufferCursor] = [buf.cursor(n) for n in names] if upstreams > 1 else [buf]
    total = batches * BATCH
    prepared = [make_events(b * BATCH, BATCH) for b in range(batches)]
    out: dict[str, tuple[float, float]] = {}
    try:

        async def append_sequential() -> float:
            t0 = time.perf_counter()
            for events in prepared:
                await buf.append(events)
            return time.perf_counter() - t0

        out["append"] = await with_lag(append_sequential)

        small = [make_events(total + i * 50, 50) for i in range(total // 50)]

        async def append_concurrent() -> float:
            async def worker(k: int) -> None:
                for events in small[k::20]:
                    await buf.append(events)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(20)))
            return time.perf_counter() - t0

        out["append_concurrent"] = await with_lag(append_concurrent)

        async def read_only() -> float:
            t0 = time.perf_counter()
            cursor = 0
            while rows := await views[0].read(cursor, BATCH):
                cursor = rows[-1].seq
            return time.perf_counter() - t0

        out["read"] = await with_lag(read_only)

        async def read_ack() -> float:
            t0 = time.perf_counter()
            for view in views:
                cursor = 0
                while rows := await view.read(cursor, BATCH):
                    cursor = rows[-1].seq
                    await view.ack([r.seq for r in rows])
            await buf.append([])  # nothing: the deletions commit on their own below
            done = buf._commit_signal
            while buf.stats().depth:
                await done.wait()
                done = buf._commit_signal
            return time.perf_counter() - t0

        out["read_ack"] = await with_lag(read_ack)
    finally:
        await buf.close()  # the files go with the temporary directory
    return out


def report(name: str, events: int, runs: list[tuple[float, float]]) -> None:
    secs = statistics.median(r[0] for r in runs)
    lag = max(r[1] for r in runs)
    print(
        f"  {name:<34} {events / secs:>11,.0f} events/s  {secs / events * 1e6:>7.2f} us/event"
        f"   worst loop lag {lag * 1000:6.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per run")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--upstreams", type=int, default=1, help="upstreams taking every event (default 1)")
    args = parser.parse_args()
    total = args.batches * BATCH
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"buffer bench: {args.runs} runs of {total:,} events in {tmp}, median")
        for synchronous in ("full", "normal"):
            results = [
                await run_once(Path(tmp), synchronous, args.batches, args.upstreams) for _ in range(args.runs)
            ]
            print(f"synchronous={synchronous}")
            report("append, batches of 1,000", total, [r["append"] for r in results])
            report("append, 20 tasks x batches of 50", total, [r["append_concurrent"] for r in results])
            report("read, 1,000 per call", 2 * total, [r["read"] for r in results])
            acks = 2 * total * args.upstreams
            report(f"read + ack, 1,000 per call, x{args.upstreams}", acks, [r["read_ack"] for r in results])


if __name__ == "__main__":
    asyncio.run(main())
