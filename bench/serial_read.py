"""Serial read path: ``drivers.transport.SerialLink`` (asyncio ``add_reader`` on the port's fd) against
pyserial-asyncio-fast's ``open_serial_connection``, on a real pseudo-terminal.

    python -m bench.serial_read [--runs 5] [--megabytes 20]

A writer thread pushes R2000 tag frames into the pty master as fast as the pty takes them; each reader
drains the slave through the event loop. Printed: MB/s through the pty and the reading process's CPU per MB
(of the whole process, the writer thread included, the same for both), medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import tty
from collections.abc import Callable, Coroutine
from typing import Any

import serial_asyncio_fast

from drivers.transport import open_serial
from protocols import r2000

FRAME = bytes.fromhex("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB")


def _writer(master: int, total: int) -> None:
    chunk = FRAME * 3000
    sent = 0
    while sent < total:
        sent += os.write(master, chunk[: min(len(chunk), total - sent)])


async def _via_link(path: str, total: int, start: Callable[[], None]) -> int:
    link = await open_serial(path, 115200)
    start()
    got = 0
    framer = r2000.R2000Framer()
    try:
        while got < total:
            data = await link.read()
            got += len(data)
            framer.feed(data)
    finally:
        link.close()
    return framer.stats.frames


async def _via_pyserial_asyncio_fast(path: str, total: int, start: Callable[[], None]) -> int:
    reader, writer = await serial_asyncio_fast.open_serial_connection(url=path, baudrate=115200)
    start()
    got = 0
    framer = r2000.R2000Framer()
    try:
        while got < total:
            data = await reader.read(65536)
            got += len(data)
            framer.feed(data)
    finally:
        writer.close()
    return framer.stats.frames


def run_once(
    read: Callable[[str, int, Callable[[], None]], Coroutine[Any, Any, int]], total: int
) -> tuple[float, float]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    writer = threading.Thread(target=_writer, args=(master, total), daemon=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    frames = asyncio.run(read(path, total, writer.start))  # the port is open before the first byte
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    writer.join()
    os.close(master)
    os.close(slave)
    assert frames >= total // len(FRAME) - 1, frames
    mb = total / 1e6
    return mb / wall, cpu / mb * 1000  # MB/s, CPU ms per MB


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serial_read", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=20.0)
    args = parser.parse_args()
    total = int(args.megabytes * 1e6)
    print(f"{args.megabytes:g} MB of R2000 tag frames through a pty, {args.runs} runs each (interleaved)")
    results: dict[str, list[tuple[float, float]]] = {
        "add_reader (SerialLink)": [],
        "pyserial-asyncio-fast": [],
    }
    for _ in range(args.runs):
        results["add_reader (SerialLink)"].append(run_once(_via_link, total))
        results["pyserial-asyncio-fast"].append(run_once(_via_pyserial_asyncio_fast, total))
    print(f"{'reader':<26}{'MB/s':>8}{'CPU ms/MB':>12}   (medians)")
    for name, rows in results.items():
        print(
            f"{name:<26}{statistics.median(r[0] for r in rows):>8.1f}"
            f"{statistics.median(r[1] for r in rows):>12.1f}"
        )


if __name__ == "__main__":
    main()
