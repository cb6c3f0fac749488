"""Where the gateway's CPU goes: py-spy's samples of a running ``edgegw run``, summed into named parts.

``bench.pipeline --profile DIR`` records the gateway with py-spy (``py-spy record --format raw``: one line per
distinct stack, ``frame;frame;... count``) for each run's measuring window and prints :func:`summary`: each
part's share of the samples and, given the run's gateway CPU per delivered event, its µs per event. Run it
alone to summarise a file recorded earlier::

    python -m bench.profile FILE [--us-per-event US]

A sample is given to the first part, in the order of :data:`PARTS`, one of whose frames its stack holds, so
the parts add up to the whole. py-spy counts a thread as active while it waits for the GIL, so the writer
thread's share includes some time the loop thread then does not get: read the parts as where the time goes,
not as exact costs.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from pathlib import Path

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("buffer: SQLite writer thread", ("SqliteBuffer._writer_main",)),
    ("MQTT: paho builds and queues PUBLISH", ("MqttConnection.publish",)),
    ("MQTT: paho reads PUBACKs", ("MqttConnection._readable",)),
    ("MQTT: paho writes the socket", ("MqttConnection._writable",)),
    ("forwarder: reads, batches, acks (ours)", ("Forwarder.",)),
    ("buffer: append and ack, loop side (ours)", ("SqliteBuffer.", "CountingBuffer.")),
    ("reader: serial read, framer, decode (ours)", ("SerialLink.", "StreamSession.", "StreamDriver.")),
    ("pipeline: queue, processors, emit (ours)", ("Ingest.", "DeviceRunner.", "Pipeline.")),
    ("event loop: epoll and scheduling", ("BaseEventLoop.",)),
)
OTHER = "other (other threads, start-up)"


def parts(raw: str) -> tuple[int, dict[str, int], collections.Counter[str]]:
    """(samples, samples per part, samples per leaf function) of py-spy's raw output ``raw``."""
    total = 0
    per_part: dict[str, int] = {name: 0 for name, _ in PARTS}
    per_part[OTHER] = 0
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1].rsplit(":", 1)[0] + ")"] += n
        for name, markers in PARTS:
            if any(marker in frame for frame in frames for marker in markers):
                per_part[name] += n
                break
        else:
            per_part[OTHER] += n
    return total, per_part, leaves


def summary(raw: str, us_per_event: float | None = None, top: int = 12) -> str:
    total, per_part, leaves = parts(raw)
    if not total:
        return "  no samples"
    lines = [
        f"  {total:,} samples; share of the gateway's CPU" + (", and µs per event" if us_per_event else "")
    ]
    for name, n in sorted(per_part.items(), key=lambda item: -item[1]):
        share = n / total
        us = f" {share * us_per_event:6.1f} µs" if us_per_event else ""
        lines.append(f"  {share * 100:5.1f} %{us}  {name}")
    lines.append(f"  top {top} functions by their own samples:")
    for leaf, n in leaves.most_common(top):
        lines.append(f"  {n / total * 100:5.1f} %  {leaf}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--us-per-event", type=float, default=None, help="the run's gateway CPU µs per event")
    args = parser.parse_args(argv)
    print(summary(args.file.read_text(), args.us_per_event))
    return 0


if __name__ == "__main__":
    sys.exit(main())
