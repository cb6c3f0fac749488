"""CAN frames through the gateway: the slcan simulator's loaded 1 Mbit/s bus on a pty -> ``edgegw run`` (the
``can`` driver on python-can's slcan interface, J1939 decode, rate control) -> the pipeline -> a private
Mosquitto.

    python -m bench.can_frames [--runs 3] [--seconds 10] [--warmup 3] [--rate 8000] [--readers loop,thread]
                               [--every]

Each run starts a private Mosquitto, ``edgegw sim can --link PATH --load --rate R`` (it prints the frames it
has written every second) and ``edgegw run`` with one device (``interface: slcan``, ``bitrate: 1000000``,
``j1939: true``, the default rate control: each SPN on change, at most once a second, at least once a
minute), waits for the bus to flow, warms up, then measures over ``--seconds``: frames/s the simulator got
through the pty (a pty blocks its writer when the reader falls behind, so a gateway that cannot keep up shows
as fewer frames/s than offered, never as silent loss), the gateway's CPU % of one core and CPU us per frame
(``/proc/PID/stat``, all threads), its peak RSS (VmRSS sampled every 200 ms) and RSS at the start and the end
of the window (flat is the goal). ``--readers`` runs the bus read on the event loop (add_reader on the port)
and in a thread, interleaved, so both see the same machine. Medians of ``--runs``; PASS/MISS against the goal
(>= 8,000 frames/s at <= 50 % of a core). ``--every`` turns the rate control off (every frame decoded and
an event), the worst case, where the pipeline and the buffer do most of the work.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.pipeline import RssSampler, proc_cpu_s, proc_status_kb
from tests.broker import Mosquitto

START_TIMEOUT_S = 30.0


@dataclass
class Result:
    reader: str
    frames_per_s: float
    cpu_pct: float
    us_per_frame: float
    rss_peak_mb: float
    rss_start_mb: float
    rss_end_mb: float
    sim_cpu_pct: float


def _config(tmp: Path, broker: Mosquitto, link: Path, reader: str, every: bool) -> Path:
    path = tmp / "gateway.yaml"
    path.write_text(
        f"""gateway:
  id: bench-can
buffer:
  path: {tmp / "buffer.db"}
upstream:
  mqtt:
    url: mqtt://{broker.host}:{broker.port}
    prefix: bench
devices:
  - name: chassis
    driver: can
    interface: slcan
    channel: {link}
    bitrate: 1000000
    j1939: true
    open_delay_s: 0
    reader: {reader}
"""
        + ("    report: {default: {}}\n" if every else "")
    )
    return path


class FrameCounter:
    """Reads the simulator's ``frames N`` lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.stdout = proc.stdout
        self.frames = 0
        self.at = time.monotonic()

    def poll(self, timeout: float = 0.0) -> None:
        while select.select([self.stdout], [], [], timeout)[0]:
            line = self.stdout.readline().decode(errors="replace")
            if not line:
                return
            if line.startswith("frames "):
                self.frames = int(line.split()[1])
                self.at = time.monotonic()
            timeout = 0.0


def _start(args: list[str], log: Path, stdout: int | None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            stdout=stdout if stdout is not None else out,
            stderr=out if stdout is not None else subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_once(reader: str, rate: float, seconds: float, warmup: float, every: bool = False) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-bench-can-"))
    link = tmp / "ttyCAN"
    broker = Mosquitto()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        sim = _start(
            ["sim", "can", "--link", str(link), "--load", "--rate", f"{rate:g}"],
            tmp / "sim.log",
            subprocess.PIPE,
        )
        procs.append(sim)
        assert sim.stdout is not None
        ready = select.select([sim.stdout], [], [], START_TIMEOUT_S)[0]
        if not ready or b"on pty" not in sim.stdout.readline():
            raise RuntimeError(f"simulator did not start: {(tmp / 'sim.log').read_text()}")
        gw = _start(
            ["run", "-c", str(_config(tmp, broker, link, reader, every)), "--log-level", "info"],
            tmp / "gw.log",
            None,
        )
        procs.append(gw)
        counter = FrameCounter(sim)
        deadline = time.monotonic() + START_TIMEOUT_S
        while counter.frames == 0:
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError(f"the bus never flowed: {(tmp / 'gw.log').read_text()[-2000:]}")
            counter.poll(0.5)
        end_warmup = time.monotonic() + warmup
        while time.monotonic() < end_warmup:
            counter.poll(0.2)
        rss = RssSampler(gw.pid).start()
        counter.poll(1.5)  # a fresh progress line to start from
        frames0, t0 = counter.frames, counter.at
        cpu0, sim0 = proc_cpu_s(gw.pid), proc_cpu_s(sim.pid)
        rss_start = proc_status_kb(gw.pid, "VmRSS")
        end = t0 + seconds
        while counter.at < end:
            counter.poll(0.5)
            if gw.poll() is not None:
                raise RuntimeError(f"the gateway stopped: {(tmp / 'gw.log').read_text()[-2000:]}")
        frames1, t1 = counter.frames, counter.at
        cpu1, sim1 = proc_cpu_s(gw.pid), proc_cpu_s(sim.pid)
        rss_end = proc_status_kb(gw.pid, "VmRSS")
        rss.stop()
        frames = frames1 - frames0
        elapsed = t1 - t0
        return Result(
            reader,
            frames / elapsed,
            100 * (cpu1 - cpu0) / elapsed,
            1e6 * (cpu1 - cpu0) / max(1, frames),
            rss.max_kb / 1024,
            rss_start / 1024,
            rss_end / 1024,
            100 * (sim1 - sim0) / elapsed,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
        broker.close()
        if os.environ.get("BENCH_SHOW_LOG"):
            print((tmp / "gw.log").read_text()[-3000:], file=sys.stderr)


def _row(r: Result, label: str = "") -> str:
    return (
        f"{label or r.reader:<10} {r.frames_per_s:>9.0f} {r.cpu_pct:>7.1f} {r.us_per_frame:>8.1f} "
        f"{r.rss_peak_mb:>8.1f} {r.rss_start_mb:>7.1f} {r.rss_end_mb:>7.1f} {r.sim_cpu_pct:>7.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=8000.0, help="frames/s offered (default 8000)")
    parser.add_argument("--readers", default="loop,thread", help="loop, thread or both (interleaved)")
    parser.add_argument(
        "--every",
        action="store_true",
        help="no rate control (report: {default: {}}): every frame decoded and an event, the worst case",
    )
    args = parser.parse_args(argv)
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    columns = (("frames/s", 9), ("cpu %", 7), ("us/frame", 8), ("rss max", 8), ("rss t0", 7), ("rss t1", 7))
    print(f"{'reader':<10} " + " ".join(f"{name:>{width}}" for name, width in columns) + f" {'sim %':>7}")
    results: dict[str, list[Result]] = {r: [] for r in readers}
    for _ in range(args.runs):
        for reader in readers:
            result = run_once(reader, args.rate, args.seconds, args.warmup, args.every)
            results[reader].append(result)
            print(_row(result), flush=True)
    for reader, rs in results.items():
        median = Result(
            reader,
            *(
                statistics.median(getattr(r, f) for r in rs)
                for f in (
                    "frames_per_s",
                    "cpu_pct",
                    "us_per_frame",
                    "rss_peak_mb",
                    "rss_start_mb",
                    "rss_end_mb",
                    "sim_cpu_pct",
                )
            ),
        )
        print(_row(median, f"median {reader}"))
        ok = median.frames_per_s >= 0.98 * args.rate and median.cpu_pct <= 50
        print(
            f"  {'PASS' if ok else 'MISS'}: {median.frames_per_s:.0f} frames/s of {args.rate:g} offered "
            f"at {median.cpu_pct:.1f} % of a core (goal >= 8,000 frames/s at <= 50 %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
