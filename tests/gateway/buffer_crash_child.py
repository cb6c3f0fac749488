"""Child process of the buffer's crash test: ``python -m tests.gateway.buffer_crash_child PATH``.

Appends batches to the buffer at PATH forever (until killed). After each append returns it writes one line
to stdout, in one unbuffered write (atomic on a pipe)::

    C <seq> <seq> ...    these seqs are committed
    A <seq> <seq> ...    these seqs are about to be acked (from now on they may be gone)
    D <seq> <seq> ...    these seqs are deleted for good (acked before the append that just returned)

It acks every other committed batch, so the parent can check deletions as well as commits after a kill.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer

BATCH = 50


def say(tag: str, seqs: list[int]) -> None:
    os.write(1, f"{tag} {' '.join(map(str, seqs))}\n".encode())


async def main(path: str) -> None:
    buf = await SqliteBuffer.open(path)
    i = 0
    acked: list[int] = []
    while True:
        events = [
            Event("crash", "test.crash", time.time(), {"i": i + j, "pad": "x" * 40}) for j in range(BATCH)
        ]
        i += BATCH
        seqs = await buf.append(events)
        say("C", seqs)
        if acked:
            say("D", acked)  # acked before this append: durable now
            acked = []
        elif i // BATCH % 2:
            say("A", seqs)
            await buf.ack(seqs)
            acked = seqs


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
