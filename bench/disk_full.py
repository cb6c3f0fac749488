"""The buffer on a full disk: ``python -m bench.disk_full [--runs 3] [--seconds 5] [--fs-mib 64]``.

Each run mounts a fresh tmpfs of ``--fs-mib`` MiB (root is needed), opens the SQLite buffer on it with its
default 8 MiB reserve and ``drop_oldest``, takes all but 4 MiB of the free space with a filler file, and
appends batches of 1,000 realistic RFID reads (about 200 bytes of JSON each) with the upstream down:

- **to the first drop**: the append during which the filesystem filled (SQLite's ``database or disk is
  full``), from its call to its return with the first ``disk_full`` drops counted: the reserve released, the
  WAL checkpointed, the transaction retried within the room there is; beside it, the median append before;
- **accepted while full**: for ``--seconds``, appends as fast as they return, the disk still full: events/s
  stored (the buffer keeps turning over, the oldest making room), ``disk_full`` drops/s, and the process's
  CPU time per event offered;
- **drain**: the upstream back, the forwarder's loop (``read`` 1,000, ``ack`` them) with nothing else
  running, until the buffer is empty: events/s and CPU time per event.

It prints one row per run and the medians. The figures are the buffer's own, in-process (the gateway adds
its pipeline and MQTT on top: see ``bench.pipeline``); tmpfs has no fsync cost, so on flash the appends and
deletions take longer, and the shape (a short stall, then turning over) is what carries over.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer
from tests.storage import fill_disk

BATCH = 1000


def make_events(start: int, n: int) -> list[Event]:
    now = time.time()
    return [
        Event(
            "gate-3",
            "rfid.read",
            now,
            {
                "epc": f"E28011606000020{i:09X}",
                "epc_uri": f"urn:epc:id:sgtin:0614141.812345.{i}",
                "antenna": 1 + i % 4,
                "antenna_name": "lane1-in",
                "rssi_dbm": -61,
                "frequency_mhz": 920.625,
                "pc": "3000",
            },
        )
        for i in range(start, start + n)
    ]


@dataclass
class Run:
    first_drop_ms: float
    median_append_ms: float
    accepted_per_s: float
    dropped_per_s: float
    cpu_us_per_event_full: float
    drain_per_s: float
    cpu_us_per_event_drain: float


async def one_run(directory: Path, seconds: float) -> Run:
    buf = await SqliteBuffer.open(directory / "buffer.db")
    try:
        fill_disk(directory, leave=4 << 20)
        i = 0
        durations: list[float] = []
        while True:  # until the filesystem fills
            events = make_events(i, BATCH)
            i += BATCH
            start = time.perf_counter()
            await buf.append(events)
            took = time.perf_counter() - start
            if buf.stats().dropped["disk_full"]:
                first_drop = took
                break
            durations.append(took)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        dropped0 = buf.stats().dropped["disk_full"]
        offered = accepted = 0
        while time.perf_counter() - wall0 < seconds:
            seqs = await buf.append(make_events(i, BATCH))
            i += BATCH
            offered += BATCH
            accepted += BATCH - seqs.count(0)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        dropped = buf.stats().dropped["disk_full"] - dropped0

        cpu1, wall1 = time.process_time(), time.perf_counter()
        drained = 0
        cursor = 0
        while True:
            rows = await buf.read(cursor, 1000)
            if not rows:
                break
            cursor = rows[-1].seq
            await buf.ack([r.seq for r in rows])
            drained += len(rows)
        await buf.append(make_events(i, 1))  # the last deletions commit with it
        drain_wall = time.perf_counter() - wall1
        drain_cpu = time.process_time() - cpu1
        return Run(
            first_drop_ms=first_drop * 1000,
            median_append_ms=statistics.median(durations) * 1000 if durations else 0.0,
            accepted_per_s=accepted / wall,
            dropped_per_s=dropped / wall,
            cpu_us_per_event_full=cpu / offered * 1e6,
            drain_per_s=drained / drain_wall,
            cpu_us_per_event_drain=drain_cpu / max(drained, 1) * 1e6,
        )
    finally:
        await buf.close()


def mounted(size_mib: int) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="edgegw-diskfull-")
    where = Path(tmp.name)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)], check=True)
    return where, tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fs-mib", type=int, default=64)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.disk_full mounts a tmpfs: run it as root")
    header = (
        f"{'run':>4} {'1st drop ms':>11} {'append ms':>9} {'accepted/s':>10} {'dropped/s':>10} "
        f"{'CPU us/ev':>9} {'drain/s':>9} {'CPU us/ev':>9}"
    )
    print("                                 -- while full --------------------  -- drain ---------")
    print(header)
    runs: list[Run] = []
    for n in range(args.runs):
        where, tmp = mounted(args.fs_mib)
        try:
            run = asyncio.run(one_run(where, args.seconds))
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
            tmp.cleanup()
        runs.append(run)
        print(_row(str(n + 1), run))

    def med(attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in runs))

    print(_row("med", Run(*(med(f) for f in Run.__dataclass_fields__))))


def _row(label: str, r: Run) -> str:
    return (
        f"{label:>4} {r.first_drop_ms:11.1f} {r.median_append_ms:9.1f} {r.accepted_per_s:10,.0f} "
        f"{r.dropped_per_s:10,.0f} {r.cpu_us_per_event_full:9.1f} {r.drain_per_s:9,.0f} "
        f"{r.cpu_us_per_event_drain:9.1f}"
    )


if __name__ == "__main__":
    main()
