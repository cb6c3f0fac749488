"""A command's wait on a busy shared line: urgent (the next turn, drivers.bus) against an ordinary request.

    python -m bench.bus_commands [--runs 3] [--devices 30] [--requests 200] [--reads-per-poll 3]

One Modbus TCP connection (a converter with units behind it: pymodbus's server, ``firmware_sim.modbus``
profile ``registers``) shared through :mod:`drivers.bus` by ``--devices`` pollers, each reading 10 holding
registers ``--reads-per-poll`` times per poll with no pause between polls: the line is saturated, every
device always has a request queued. A commander device on the same line reads 10 registers of unit 1
``--requests`` times, 5-15 ms apart, alternating urgent and ordinary requests (interleaved, so the shared
machine's drift weighs on both alike), and times each from the call to its return. All in one process, the
simulator included, through the driver's own link (:class:`drivers.modbus.ModbusLink`).

Per run and as the median of the runs: p50 and p99 of the wait in ms for each kind, the polls' requests
completed per second (they must go on while commands run), the process's CPU time per exchange on the line
(simulator and pollers included). An ordinary request waits for one turn of every device (round robin); an
urgent one for the exchange in flight (and at most one ordinary turn after another urgent one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable

from drivers import bus
from drivers.modbus import ModbusLink, ModbusOptions, open_link
from firmware_sim.modbus import serve_tcp
from protocols.modbus import Table


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def one_run(devices: int, requests: int, reads_per_poll: int) -> dict[str, float]:
    units = {u: "registers" for u in range(1, devices + 1)}
    async with serve_tcp("127.0.0.1", 0, units) as sim:
        options = ModbusOptions.model_validate(
            {"host": "127.0.0.1", "tcp_port": sim.port, "points": [{"name": "r0", "address": 0}]}
        )
        key = options.shared_line().key

        async def opener(lost: Callable[[BaseException], None]) -> ModbusLink:
            return await open_link(options, lost)

        stop = asyncio.Event()
        done = 0

        async def poller(port: bus.Port[ModbusLink], unit: int) -> None:
            nonlocal done
            while not stop.is_set():
                for _ in range(reads_per_poll):
                    await port.request(lambda link: link.read(Table.HOLDING, unit, 0, 10), timeout=2.0)
                    done += 1

        async with contextlib.AsyncExitStack() as stack:
            ports = [
                await stack.enter_async_context(bus.attach(key, opener, settings="b", device=f"d{u}"))
                for u in units
            ]
            commander = await stack.enter_async_context(bus.attach(key, opener, settings="b", device="cmd"))
            tasks = [asyncio.create_task(poller(p, u)) for p, u in zip(ports, units, strict=True)]
            waits: dict[bool, list[float]] = {True: [], False: []}
            rng = random.Random(1)
            await asyncio.sleep(0.5)  # warm-up: every poller queued
            cpu0, t0, done0, exchanges0 = (
                time.process_time(),
                time.perf_counter(),
                done,
                sim.stats.total_requests,
            )
            for i in range(requests):
                urgent = i % 2 == 0
                start = time.perf_counter()
                await commander.request(
                    lambda link: link.read(Table.HOLDING, 1, 0, 10), timeout=5.0, urgent=urgent
                )
                waits[urgent].append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(rng.uniform(0.005, 0.015))
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            exchanges = sim.stats.total_requests - exchanges0
            polls_per_s = (done - done0) / elapsed
            stop.set()
            await asyncio.gather(*tasks)
    return {
        "urgent_p50": _pct(waits[True], 50),
        "urgent_p99": _pct(waits[True], 99),
        "ordinary_p50": _pct(waits[False], 50),
        "ordinary_p99": _pct(waits[False], 99),
        "poll_requests_per_s": polls_per_s,
        "cpu_us_per_exchange": cpu / max(1, exchanges) * 1e6,
    }


COLUMNS = (
    "urgent_p50",
    "urgent_p99",
    "ordinary_p50",
    "ordinary_p99",
    "poll_requests_per_s",
    "cpu_us_per_exchange",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bus_commands", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--reads-per-poll", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.devices} devices saturating one Modbus TCP line, {args.requests} command reads per run")
    print("run  " + "  ".join(f"{c:>20}" for c in COLUMNS))
    rows = []
    for run in range(1, args.runs + 1):
        row = asyncio.run(one_run(args.devices, args.requests, args.reads_per_poll))
        rows.append(row)
        print(f"#{run:<3} " + "  ".join(f"{row[c]:>20.2f}" for c in COLUMNS))
    print("med  " + "  ".join(f"{statistics.median(r[c] for r in rows):>20.2f}" for c in COLUMNS))
    print("(waits in ms; poll requests completed per second while the commands ran; CPU of this process)")


if __name__ == "__main__":
    main()
