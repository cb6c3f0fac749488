"""A fleet of gateways against one broker, and the broker restart every one of them lives through.

    python -m bench.fleet [--gateways 50] [--outage 30] [--poll 1.0] [--warmup 10] [--keep DIR]

Processes (all on this machine, loopback only): one private Mosquitto (``tests.broker.Mosquitto``,
persistence on, ``max_queued_messages 0``), one Modbus TCP simulator in this process (pymodbus's real server,
``firmware_sim.modbus``, the ``energy-meter`` profile) that every gateway polls as its one device, N real
``edgegw run`` processes (``--gateways``, each with its own config, SQLite buffer and stable client id
``edgegw-fleet-NNN``, reconnect backoff as shipped: 0.5 s doubling to 30 s, jittered), and a subscriber in
this process with a persistent MQTT 5 session (clean start off, 1 h expiry, QoS 1) on ``edgegw/#``.

One process per gateway (not several gateways per process) because that is how they run in the field and
because it costs what this machine has: ~40-60 MB RSS and a few % of a core each at a 1 s poll, so 50 fit in
2 cores and 24 GB (the run prints the measured total). Gateways are started 0.2 s apart so their imports do
not all compete for the 2 cores at once.

The run: start everything, wait until every gateway is connected and has delivered, warm up (``--warmup``),
stop the broker (SIGTERM: Mosquitto saves its sessions and queues, so the subscriber's queue survives; the
gateways see their connections closed) for ``--outage`` seconds while the devices keep being polled and the
events pile up in each gateway's buffer, start it again on the same port, then:

- **the reconnect curve**: each gateway's CONNECT after the restart, read from Mosquitto's log (``New client
  connected ... as edgegw-fleet-NNN``, stamped in whole seconds by Mosquitto): connections per second, the
  busiest second (it must be at most N/5: the jittered backoff spreads them), and the time until all are back;
- **the backlog drain**: for every event stamped during the outage, when it reached the subscriber; the
  time from the restart until the last of them arrived;
- **the accounting**, after each gateway is stopped with SIGTERM (it drains, then publishes ``offline``):
  committed = the buffer's last seq (seqs are per gateway, from 1, never reused), delivered = distinct seqs at
  the subscriber, left = events still in the buffer file, lost = committed - delivered - left, which must be
  0; duplicates (the same id twice, identical) are counted; they may only come from a break.

Exit status 0 when lost is 0 for every gateway and the busiest second holds at most N/5 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.modbus import serve_tcp
from tests.broker import Mosquitto

PREFIX = "edgegw"
STAGGER_S = 0.2


def gateway_id(i: int) -> str:
    return f"fleet-{i:03d}"


def client_id(i: int) -> str:
    return f"edgegw-{gateway_id(i)}"  # the gateway's default: edgegw-<gateway.id>


def gateway_config(directory: Path, i: int, broker: Mosquitto, modbus_port: int, poll_s: float) -> Path:
    d = directory / gateway_id(i)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "gateway.yaml"
    path.write_text(
        f"""gateway:
  id: {gateway_id(i)}
  log_level: WARNING
buffer:
  path: {d / "buffer.db"}
upstream:
  mqtt:
    url: {broker.url}
    prefix: {PREFIX}
metrics:
  enabled: false
devices:
  - name: meter
    driver: modbus
    host: 127.0.0.1
    tcp_port: {modbus_port}
    unit_id: 1
    byte_order: CDAB
    poll_s: {poll_s}
    timeout_s: 2.0
    points:
      - {{name: voltage_a, table: input, address: 0, type: float32, unit: V}}
"""
    )
    return path


# --------------------------------------------------------------------------------------------------------
# The subscriber


@dataclass
class Seen:
    """Per gateway: seq -> (arrival time, payload digest); duplicates; events by their own timestamp."""

    arrivals: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    digests: dict[tuple[str, int], int] = field(default_factory=dict)
    stamped: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    duplicates: int = 0
    conflicting: int = 0
    bad_ids: int = 0


class FleetSubscriber:
    """A persistent MQTT 5 session (fixed client id, clean start off, 1 h expiry), QoS 1, on paho's thread."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen = Seen()
        self.lock = threading.Lock()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="fleet-subscriber", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        self._broker = broker
        self._subscribed = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.SessionExpiryInterval = 3600
        self._client.connect(
            self._broker.host, self._broker.port, keepalive=10, clean_start=False, properties=props
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("the subscriber did not connect")

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            client.subscribe(f"{PREFIX}/#", qos=1)
            self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            return
        now = time.time()
        body = json.loads(msg.payload)
        with self.lock:
            for event in body if isinstance(body, list) else [body]:
                self._add(msg.topic.split("/")[1], event, now)

    def _add(self, gw: str, event: dict[str, Any], now: float) -> None:
        s = self.seen
        seq = int(event["seq"])
        if event["id"] != f"{gw}:{seq}":
            s.bad_ids += 1
        digest = hash(json.dumps(event, sort_keys=True))
        old = s.digests.get((gw, seq))
        if old is not None:
            s.duplicates += 1
            s.conflicting += old != digest
            return
        s.digests[(gw, seq)] = digest
        s.arrivals[gw][seq] = now
        s.stamped[gw][seq] = float(event["ts"])

    def delivered(self, gw: str) -> set[int]:
        with self.lock:
            return set(self.seen.arrivals.get(gw, {}))

    def gateways_heard(self) -> int:
        with self.lock:
            return sum(1 for seqs in self.seen.arrivals.values() if seqs)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------------------------------------------
# Gateways, the broker's log, buffers


_CONNECTED = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ")


def broker_connects(log: Path) -> list[tuple[int, str]]:
    """(unix second, client id) of every successful CONNECT in Mosquitto's log (appended across restarts)."""
    out: list[tuple[int, str]] = []
    with contextlib.suppress(FileNotFoundError), log.open(errors="replace") as f:
        for line in f:
            m = _CONNECTED.match(line)
            if m:
                out.append((int(m.group(1)), m.group(2)))
    return out


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def read_buffer(path: Path) -> tuple[int, int]:
    """A stopped gateway's buffer: its last seq and how many events it still holds."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        (held,) = conn.execute("SELECT count(*) FROM events").fetchone()
    finally:
        conn.close()
    return (int(row[0]) if row else 0), int(held)


async def start_gateway(config: Path) -> asyncio.subprocess.Process:
    log = config.with_name("gateway.log").open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", "-c", str(config),
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    finally:
        log.close()


async def wait_for(what: str, predicate: Any, timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)  # polling files and counters another process writes


# --------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Outcome:
    gateways: int
    outage_s: float
    stopped_at: float
    restarted_at: float
    curve: list[int]
    """Connections per second from the restart's second on."""
    all_back_s: float
    first_back_s: float
    drain_s: float
    outage_events: int
    committed: int
    delivered: int
    left: int
    lost: dict[str, int]
    duplicates: int
    conflicting: int
    bad_ids: int
    rss_mb_total: float
    rss_mb_median: float
    cpu_pct_per_gateway: float
    events_per_s: float

    @property
    def busiest(self) -> int:
        return max(self.curve, default=0)

    @property
    def ok(self) -> bool:
        return not any(self.lost.values()) and self.busiest <= self.limit and self.conflicting == 0

    @property
    def limit(self) -> float:
        """At most N/5 connections in any one second (at least 1, for a fleet of a few)."""
        return max(1.0, self.gateways / 5)


async def run(args: argparse.Namespace, tmp: Path) -> Outcome:
    n: int = args.gateways
    broker = Mosquitto(persistence=True, extra_config=["max_queued_messages 0"])
    broker.start()
    procs: list[asyncio.subprocess.Process] = []
    sub = FleetSubscriber(broker)
    try:
        async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
            assert sim.port is not None
            await asyncio.to_thread(sub.start)
            for i in range(n):
                procs.append(await start_gateway(gateway_config(tmp, i, broker, sim.port, args.poll)))
                await asyncio.sleep(STAGGER_S)  # pacing the starts, not synchronisation
            ids = {client_id(i) for i in range(n)}
            await wait_for(
                f"all {n} gateways connected",
                lambda: ids <= {c for _, c in broker_connects(broker.log_path)},
                120,
            )
            await wait_for(f"events from all {n} gateways", lambda: sub.gateways_heard() == n, 60)
            print(f"fleet: {n} gateways connected and delivering; warming up {args.warmup:.0f} s", flush=True)
            cpu0 = {p.pid: cpu_s(p.pid) for p in procs}
            t0 = time.monotonic()
            delivered0 = sum(len(sub.delivered(gateway_id(i))) for i in range(n))
            await asyncio.sleep(args.warmup)
            elapsed = time.monotonic() - t0
            cpu_pct = statistics.median((cpu_s(p.pid) - cpu0[p.pid]) / elapsed * 100 for p in procs)
            rates = (sum(len(sub.delivered(gateway_id(i))) for i in range(n)) - delivered0) / elapsed
            rss = [rss_kb(p.pid) / 1024 for p in procs]

            connects_before = len(broker_connects(broker.log_path))
            stopped_at = time.time()
            print(f"fleet: broker stopped for {args.outage:.0f} s", flush=True)
            broker.stop()
            await asyncio.sleep(args.outage)
            broker.start()
            restarted_at = time.time()
            print("fleet: broker started again; waiting for every gateway", flush=True)

            def back() -> list[tuple[int, str]]:
                return [(t, c) for t, c in broker_connects(broker.log_path)[connects_before:] if c in ids]

            await wait_for(f"all {n} gateways back", lambda: {c for _, c in back()} >= ids, 180)
            reconnects = back()
            firsts: dict[str, int] = {}
            for t, c in reconnects:
                firsts.setdefault(c, t)
            start_second = int(restarted_at)
            per_second = Counter(t for t in firsts.values())
            last_second = max(per_second)
            curve = [per_second.get(s, 0) for s in range(start_second, last_second + 1)]

            # the backlog: every event stamped while the broker was away, delivered
            def outage_seqs() -> dict[str, set[int]]:
                with sub.lock:
                    return {
                        gw: {s for s, ts in stamped.items() if stopped_at <= ts <= restarted_at}
                        for gw, stamped in sub.seen.stamped.items()
                    }

            # stop every gateway (SIGTERM: drain, offline), then account
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*(asyncio.wait_for(p.wait(), 60) for p in procs))
            if any(codes):
                print(f"fleet: gateway exit codes {Counter(codes)}", flush=True)
            committed: dict[str, int] = {}
            left: dict[str, int] = {}
            for i in range(n):
                gw = gateway_id(i)
                committed[gw], left[gw] = read_buffer(tmp / gw / "buffer.db")

            def complete() -> bool:
                return all(len(sub.delivered(gw)) + left[gw] >= committed[gw] for gw in committed)

            with contextlib.suppress(RuntimeError):
                await wait_for("every committed event at the subscriber", complete, 60)
            lost = {
                gw: len(set(range(1, committed[gw] + 1)) - sub.delivered(gw)) - left[gw] for gw in committed
            }
            during = outage_seqs()
            with sub.lock:
                arrivals = [sub.seen.arrivals[gw][s] for gw, seqs in during.items() for s in seqs]
                seen = sub.seen
                duplicates, conflicting, bad_ids = seen.duplicates, seen.conflicting, seen.bad_ids
            return Outcome(
                gateways=n,
                outage_s=args.outage,
                stopped_at=stopped_at,
                restarted_at=restarted_at,
                curve=curve,
                all_back_s=max(firsts.values()) + 1 - restarted_at,
                first_back_s=min(firsts.values()) - restarted_at,
                drain_s=(max(arrivals) - restarted_at) if arrivals else 0.0,
                outage_events=len(arrivals),
                committed=sum(committed.values()),
                delivered=sum(len(sub.delivered(gw)) for gw in committed),
                left=sum(left.values()),
                lost=lost,
                duplicates=duplicates,
                conflicting=conflicting,
                bad_ids=bad_ids,
                rss_mb_total=sum(rss),
                rss_mb_median=statistics.median(rss),
                cpu_pct_per_gateway=cpu_pct,
                events_per_s=rates,
            )
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        sub.stop()
        broker.close()


def report(o: Outcome) -> str:
    lines = [
        f"gateways                 {o.gateways} (an edgegw run process each), broker down {o.outage_s:.0f} s",
        f"steady state             {o.events_per_s:.0f} events/s delivered in all; per gateway: median "
        f"{o.cpu_pct_per_gateway:.1f} % of a core, RSS median {o.rss_mb_median:.0f} MB "
        f"(total {o.rss_mb_total / 1024:.1f} GB)",
        f"reconnects per second    {' '.join(str(c) for c in o.curve)}  (from the restart's second on)",
        f"busiest second           {o.busiest} connections (limit N/5 = {o.limit:.0f})",
        f"back after the restart   first {max(o.first_back_s, 0):.0f} s, all within {o.all_back_s:.0f} s "
        "(Mosquitto stamps whole seconds)",
        f"backlog drained          {o.outage_events} events stamped during the outage, the last delivered "
        f"{o.drain_s:.1f} s after the restart",
        f"accounting               committed {o.committed}, delivered {o.delivered}, left in buffers "
        f"{o.left}, lost {sum(o.lost.values())}, duplicates {o.duplicates} (conflicting {o.conflicting}), "
        f"bad ids {o.bad_ids}",
    ]
    bad = {gw: v for gw, v in o.lost.items() if v}
    if bad:
        lines.append(f"LOST per gateway         {bad}")
    lines.append("result                   " + ("OK" if o.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=50, help="edgegw run processes (default 50)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is away (default 30)")
    parser.add_argument("--poll", type=float, default=1.0, help="each gateway's Modbus poll period, s")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of steady state measured first")
    parser.add_argument("--keep", type=Path, default=None, help="keep configs, buffers and logs here")
    args = parser.parse_args(argv)
    if args.gateways < 1:
        parser.error("--gateways must be at least 1")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        outcome = asyncio.run(run(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="edgegw-fleet-") as tmp:
            outcome = asyncio.run(run(args, Path(tmp)))
    print(report(outcome), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
