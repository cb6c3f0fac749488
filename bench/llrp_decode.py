"""LLRP decode speed: ``python -m bench.llrp_decode [--runs N] [--reports N] [--tags N]``.

RO_ACCESS_REPORTs of 100 TagReportData each (by default), as the ``llrp`` driver asks a reader for them:
EPC-96, AntennaID, PeakRSSI, ChannelIndex, FirstSeenTimestampUTC, TagSeenCount and the Gen2 PC. A stream of
``--reports`` distinct reports (a population of 1,000 tags on 4 antennas) is decoded in one process, on one
core, ``--runs`` times; printed are the medians of tag reads per second (CPU time of this process, and wall
time) and microseconds per read, for:

- ``framer + parse_message``: what the driver does with the bytes (:class:`~protocols.llrp.LlrpFramer`, then
  the hand-written TagReportData fast path, which decodes a layout it has seen in two struct calls);
- ``... walking every parameter``: the fast path without its layouts (what a reader whose every tag differs
  in its parameters would cost);
- ``... + rfid.read events``: the driver's whole per-read work, the event's dict included (emitted into a
  counter, not a queue);
- ``construct reference``: the construct definitions the fast path is tested against.

The goal (issue 3): at least 50,000 tag reads a second on one core, through the framer and the fast path.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.llrp import LlrpOptions, _Session
from drivers.transport import ByteLink
from protocols import llrp
from protocols.llrp.tags import _walk_tag_report

GOAL = 50_000
EPOCH_US = 1_795_000_000_000_000


def make_stream(reports: int, tags: int, seed: int = 0) -> bytes:
    """``reports`` RO_ACCESS_REPORT messages of ``tags`` reads each, back to back."""
    rng = random.Random(seed)
    population = [b"\x30" + rng.randbytes(11) for _ in range(1000)]
    out = []
    stamp = EPOCH_US
    for index in range(reports):
        reads = []
        for _ in range(tags):
            stamp += rng.randint(50, 500)
            reads.append(
                llrp.TagReport(
                    epc=rng.choice(population),
                    antenna=rng.randint(1, 4),
                    peak_rssi=rng.randint(-80, -35),
                    channel_index=rng.randint(1, 50),
                    first_seen_utc=stamp,
                    seen_count=1,
                    pc=0x3000,
                )
            )
        out.append(llrp.encode_message(llrp.RoAccessReport(tuple(reads)), index + 1))
    return b"".join(out)


def framer_and_parse(stream: bytes) -> int:
    reads = 0
    for frame in llrp.LlrpFramer().feed(stream):
        message = llrp.parse_message(frame)
        assert isinstance(message, llrp.RoAccessReport)
        reads += len(message.tags)
    return reads


def walking(stream: bytes) -> int:
    reads = 0
    walk = _walk_tag_report
    for frame in llrp.LlrpFramer().feed(stream):
        body = frame.body
        end = len(body)
        i = 0
        while i < end:
            length = (body[i + 2] << 8) | body[i + 3]
            walk(body, i + 4, i + length)
            reads += 1
            i += length
    return reads


def construct_reference(stream: bytes) -> int:
    return sum(len(llrp.parse_ro_access_report_spec(f.body).tags) for f in llrp.LlrpFramer().feed(stream))


class _Counter:
    """Enough of a DeviceContext for the driver's read path: emitted events are counted, not queued."""

    device = "bench"
    log = logging.getLogger("bench.llrp")

    def __init__(self) -> None:
        self.emitted = 0

    def emit(self, kind: str, data: Mapping[str, Any], ts: float | None = None) -> None:
        self.emitted += 1

    def emit_many(self, kind: str, items: Sequence[Mapping[str, Any]], ts: float | None = None) -> None:
        self.emitted += len(items)

    def connected(self, detail: str = "") -> None:
        pass

    async def room(self) -> None:
        pass

    def count(self, counter: str, n: int = 1) -> None:
        pass


def with_events(stream: bytes) -> int:
    async def run() -> int:
        ctx = _Counter()
        session = _Session(
            _NO_LINK, LlrpOptions(host="bench", antennas={1: "a", 2: "b", 3: "c", 4: "d"}), ctx
        )
        for frame in session.framer.feed(stream):
            message = llrp.parse_message(frame)
            assert isinstance(message, llrp.RoAccessReport)
            session._emit_reads(message)
        return ctx.emitted

    return asyncio.run(run())


class _NoLink(ByteLink):
    async def read(self) -> bytes:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


_NO_LINK = _NoLink()


def measure(decode: Callable[[bytes], int], stream: bytes, runs: int) -> tuple[float, float, int]:
    """Median reads/s by CPU time and by wall time over ``runs`` runs, and the reads per run."""
    cpu_rates: list[float] = []
    wall_rates: list[float] = []
    reads = 0
    for _ in range(runs):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        reads = decode(stream)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        cpu_rates.append(reads / cpu if cpu > 0 else float("inf"))
        wall_rates.append(reads / wall)
    return statistics.median(cpu_rates), statistics.median(wall_rates), reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per path (default 7)")
    parser.add_argument("--reports", type=int, default=200, help="RO_ACCESS_REPORTs per run (default 200)")
    parser.add_argument("--tags", type=int, default=100, help="TagReportData per report (default 100)")
    args = parser.parse_args()
    stream = make_stream(args.reports, args.tags)
    print(
        f"llrp decode: {args.reports} RO_ACCESS_REPORTs of {args.tags} tags ({len(stream):,} bytes) per run, "
        f"{args.runs} runs, medians"
    )
    print(f"  {'path':<42} {'reads/s (cpu)':>14} {'reads/s (wall)':>15} {'us/read':>8}")
    paths: list[tuple[str, Callable[[bytes], int], int]] = [
        ("framer + parse_message", framer_and_parse, args.runs),
        ("framer + walking every parameter", walking, args.runs),
        ("framer + parse_message + rfid.read events", with_events, args.runs),
        ("construct reference", construct_reference, max(1, args.runs // 3)),
    ]
    fast = 0.0
    for name, decode, runs in paths:
        cpu_rate, wall_rate, reads = measure(decode, stream, runs)
        assert reads == args.reports * args.tags, (name, reads)
        print(f"  {name:<42} {cpu_rate:>14,.0f} {wall_rate:>15,.0f} {1e6 / cpu_rate:>8.2f}")
        if decode is framer_and_parse:
            fast = cpu_rate
    verdict = "PASS" if fast >= GOAL else "MISS"
    print(f"goal: >= {GOAL:,} tag reads/s on one core (framer + parse_message): {verdict} ({fast:,.0f})")


if __name__ == "__main__":
    main()
