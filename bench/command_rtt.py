"""Command round trip: request published -> result received, through a real broker, to a Modbus TCP meter.

    python -m bench.command_rtt [--runs 3] [--requests 200] [--gap-ms 20] [--warmup 5]
                               [--scenario unloaded|loaded|both] [--command read|ping]

Processes: a private Mosquitto, ``edgegw run`` (config and SQLite buffer in a temporary directory, commands
enabled on its MQTT upstream), the Modbus simulators (``bench.modbus_poll serve-sim``: pymodbus's server) and
the bench itself, which is the command client (:class:`gateway.commands.client.CommandClient`, the same code
as ``edgegw cmd``, on one kept connection). The target is one meter of 10 holding registers on a simulator
of its own, polled every second; ``read`` asks for all 10 now (a Modbus read on the device's line, between
its polls) and ``ping`` is the gateway's own command (the MQTT path and the service, no device I/O).

Scenarios: ``unloaded``, the target alone; ``loaded``, the target beside 400 devices of 10 registers polled
every 250 ms (bench.modbus_poll's 400x10: 16,000 readings/s, every poll an event forwarded with QoS 1). Each
run waits until every device is connected (the gateway's ``status`` command), warms up, then sends
``--requests`` commands one after another, ``--gap-ms`` apart, and times each from just before the publish to
the result's arrival. It prints per run p50, p90, p99 and max in ms, the statuses (all must be ok), the
gateway's CPU % of one core and its CPU time per command (unloaded only: there polling costs next to
nothing), then the median of the runs against the goals: p99 <= 100 ms unloaded, <= 300 ms loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.modbus_poll import Scenario, start_simulators
from bench.pipeline import (
    GATEWAY_ID,
    PREFIX,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    WINDOW,
    machine_speed_ms,
    proc_cpu_s,
    start_gateway,
    stop_process,
    tear_down,
)
from gateway.commands.client import CommandClient, NoResult
from gateway.config import load_config
from tests.broker import Mosquitto

TARGET = "target"
BROKER_EXTRA: list[str] = []
GOALS_MS = {"unloaded": 100.0, "loaded": 300.0}
LOAD = Scenario(400, 10, 0.25, 4)


@dataclass
class Result:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    not_ok: int
    gw_cpu_pct: float
    cpu_us_per_command: float
    speed_ms: float


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def gateway_config(tmp: Path, broker: Mosquitto, target_port: int, load_ports: Sequence[int] | None) -> Path:
    points = ", ".join(f"{{name: r{i}, address: {i}}}" for i in range(10))
    lines = [
        f"gateway: {{id: {GATEWAY_ID}}}",
        f"buffer: {{path: {tmp / 'buffer.db'}}}",
        "upstream:",
        "  mqtt:",
        f"    url: mqtt://{broker.host}:{broker.port}",
        f"    prefix: {PREFIX}",
        f"    max_inflight: {WINDOW}",
        "    commands:",
        "      enabled: true",
        "      rate_limit: {per_s: 1000, burst: 1000}",
        "queue: {max_events: 20000}",
        "metrics: {listen: '127.0.0.1:0'}",
        "devices:",
        f"  - {{name: {TARGET}, driver: modbus, host: 127.0.0.1, tcp_port: {target_port}, unit_id: 1, "
        f"poll_s: 1.0, timeout_s: 1.0, commands: [read], points: [{points}]}}",
    ]
    if load_ports is not None:
        per_server = -(-LOAD.devices // LOAD.servers)
        for index in range(LOAD.devices):
            port = load_ports[index // per_server]
            unit = index % per_server + 1
            lines.append(
                f"  - {{name: m{index:03d}, driver: modbus, host: 127.0.0.1, tcp_port: {port}, "
                f"unit_id: {unit}, poll_s: {LOAD.period:g}, timeout_s: 1.0, points: [{points}]}}"
            )
    path = tmp / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def measure(
    config_path: Path,
    gw: subprocess.Popen[bytes],
    *,
    command: str,
    requests: int,
    gap_s: float,
    warmup: float,
) -> tuple[list[float], Counter[str], float, float]:
    config = load_config(config_path)
    async with CommandClient(config) as client:
        deadline = time.monotonic() + START_TIMEOUT_S * 2
        while True:  # every device connected, as the gateway's own status says
            if gw.poll() is not None:
                raise RuntimeError(f"the gateway exited ({gw.returncode})")
            with contextlib.suppress(NoResult):
                status = await client.send(None, "status", timeout_s=5)
                shown = (status.data or {}).get("devices", {})
                states = [shown.get(d.name, {}).get("state") for d in config.devices]
                if all(s == "connected" for s in states):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the devices did not all connect within the start timeout")
            await asyncio.sleep(0.5)
        await asyncio.sleep(warmup)
        device = None if command == "ping" else TARGET
        rtts: list[float] = []
        statuses: Counter[str] = Counter()
        cpu0, t0 = proc_cpu_s(gw.pid), time.monotonic()
        for _ in range(requests):
            start = time.perf_counter()
            result = await client.send(device, command, {}, timeout_s=10)
            rtts.append((time.perf_counter() - start) * 1000)
            statuses[result.status] += 1
            await asyncio.sleep(gap_s)
        cpu1, t1 = proc_cpu_s(gw.pid), time.monotonic()
    return rtts, statuses, cpu1 - cpu0, t1 - t0


def run_once(scenario: str, command: str, requests: int, gap_s: float, warmup: float) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-command-bench-"))
    broker = Mosquitto(extra_config=[f"max_inflight_messages {WINDOW}", *BROKER_EXTRA])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        speed = machine_speed_ms()
        target_sim, target_ports = start_simulators(tmp, Scenario(1, 10, 1.0, 1))
        procs.append(target_sim)
        load_ports = None
        if scenario == "loaded":
            load_sim, load_ports = start_simulators(tmp, LOAD)
            procs.append(load_sim)
        config = gateway_config(tmp, broker, target_ports[0], load_ports)
        gw = start_gateway(tmp, config)
        procs.append(gw)
        rtts, statuses, cpu_s, elapsed = asyncio.run(
            measure(config, gw, command=command, requests=requests, gap_s=gap_s, warmup=warmup)
        )
        stop_process(gw, STOP_TIMEOUT_S)
        return Result(
            p50_ms=statistics.median(rtts),
            p90_ms=percentile(rtts, 90),
            p99_ms=percentile(rtts, 99),
            max_ms=max(rtts),
            ok=statuses["ok"],
            not_ok=sum(statuses.values()) - statuses["ok"],
            gw_cpu_pct=cpu_s / elapsed * 100,
            cpu_us_per_command=cpu_s / requests * 1e6,
            speed_ms=speed,
        )
    except Exception:
        with contextlib.suppress(OSError):
            print((tmp / "gateway.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        tear_down(procs, None, None, broker, tmp)


HEADER = (
    f"{'scenario':<9} {'command':<7} {'run':<6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} "
    f"{'ok':>5} {'not ok':>6} {'gw CPU%':>7} {'CPU us/cmd':>10} {'speed ms':>8}"
)


def row(scenario: str, command: str, label: str, r: Result) -> str:
    per_command = f"{r.cpu_us_per_command:>10,.0f}" if scenario == "unloaded" else f"{'-':>10}"
    return (
        f"{scenario:<9} {command:<7} {label:<6} {r.p50_ms:>7.1f} {r.p90_ms:>7.1f} {r.p99_ms:>7.1f} "
        f"{r.max_ms:>7.1f} {r.ok:>5d} {r.not_ok:>6d} {r.gw_cpu_pct:>7.1f} {per_command} {r.speed_ms:>8.0f}"
    )


def median(results: Sequence[Result]) -> Result:
    values = {}
    for name in Result.__dataclass_fields__:
        items = [getattr(r, name) for r in results]
        values[name] = (
            int(statistics.median(items)) if isinstance(items[0], int) else statistics.median(items)
        )
    return Result(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.command_rtt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", choices=("unloaded", "loaded", "both"), default="both")
    parser.add_argument("--command", choices=("read", "ping"), default="read", help="default read")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3); the median too")
    parser.add_argument("--requests", type=int, default=200, help="commands timed per run (default 200)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between commands (default 20 ms)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after connecting (default 5)")
    parser.add_argument("--broker-nodelay", action="store_true", help="mosquitto with set_tcp_nodelay true")
    args = parser.parse_args(argv)
    if args.broker_nodelay:
        BROKER_EXTRA.append("set_tcp_nodelay true")
    scenarios = ["unloaded", "loaded"] if args.scenario == "both" else [args.scenario]
    results: dict[str, list[Result]] = {s: [] for s in scenarios}
    print(HEADER, flush=True)
    # Interleaved (unloaded, loaded, unloaded, ...): the shared machine's speed drifts between runs.
    for run in range(args.runs):
        for scenario in scenarios:
            r = run_once(scenario, args.command, args.requests, args.gap_ms / 1000, args.warmup)
            results[scenario].append(r)
            print(row(scenario, args.command, f"#{run + 1}", r), flush=True)
    failed = False
    for scenario in scenarios:
        m = median(results[scenario])
        goal = GOALS_MS[scenario]
        verdict = "PASS" if m.p99_ms <= goal and m.not_ok == 0 else "MISS"
        failed |= verdict == "MISS"
        print(row(scenario, args.command, "median", m) + f"   p99 goal <= {goal:g} ms: {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
