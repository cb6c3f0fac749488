"""The chaos run: every simulated device family into one gateway, while the broker, the gateway, the devices
and the buffer's storage fail, and an exact account of every event at the end.

    python -m bench.chaos [--minutes 10] [--rate 1000] [--broker-restarts 20] [--gateway-kills 10]
                          [--seed 1] [--keep DIR]

Processes (all on this machine, loopback only): a private Mosquitto (``tests.broker.Mosquitto``, persistence
on), one simulator per device family (``edgegw sim FAMILY``, a child process each: R2000 on a pty, LLRP on
TCP, Modbus RTU on a pty and Modbus TCP, DL/T 645 on a pty, CAN (slcan) on a pty, GPS (NMEA) on a pty, XBee
on a pty) plus BLE by ``replay:`` of ``config/examples/ble-adverts.jsonl``, one ``edgegw run`` gateway with
all of them, and a subscriber in this process. The offered load adds up to ``--rate`` events/s.

Faults, at random times (seeded) between a warm-up and a drain at the end, never two at once:

- the broker stopped (SIGTERM: Mosquitto writes its persistence file) and started again after 1-4 s;
- the gateway SIGKILLed and started again at once (the shipped unit's ``Restart=on-failure`` waits
  ``RestartSec=5s``; the run does not, to fit more breaks into its minutes); at one of these
  restarts the buffer file is corrupted first (its header overwritten: ``file is not a database``), which the
  buffer must move aside (``buffer.db.corrupt-<UTC>``) and replace;
- the buffer's filesystem full for a while (a small tmpfs mounted for the run, filled with a file of
  allocated blocks; root is needed, without it the phase is left out and the report says so);
- the simulators' own faults all along: unplugs (pty closed and re-pointed, TCP connections closed) and line
  noise (random bytes, bad checksums, junk lines).

The accounting (see :func:`account`) is exact because of three choices:

1. **The subscriber never misses a message the broker accepted.** It keeps a persistent MQTT 5 session
   (fixed client id, clean start off, session expiry 1 h, QoS 1) and Mosquitto runs with ``persistence true``
   and ``max_queued_messages 0`` (no cap on what it queues for a disconnected subscriber: its default of
   1,000 would discard the rest in silence). The broker is stopped with SIGTERM, on which it saves its
   sessions and queues. A SIGKILLed Mosquitto loses what it acknowledged since its last autosave: that is
   the broker's durability, which no gateway can make up for, so it would make "lost" a figure about
   Mosquitto rather than about edgegw. The gateway, whose promise this run checks, is SIGKILLed.
2. **The buffer refuses rather than deletes when it is full** (``when_full: reject_new``): an event refused
   for lack of room (``disk_full``, ``rejected_new``) never gets a seq, so every seq the buffer handed out is
   an event it committed and must deliver. Under the default ``drop_oldest`` a stored event deleted for room
   is counted but its seq is missing at the subscriber, and the figure could only be a bound.
3. **Seqs are per gateway, increasing, never reused**: committed = 1..last seq, except the gap the buffer
   leaves on purpose after a corrupt file (it goes on above the highest seq it knew, with a margin); the
   run copies the file before corrupting it, so it knows the old file's last seq and which events it still
   held (those not delivered before are "moved aside as corrupt", and salvageable with ``edgegw buffer
   export``).

Then: lost = committed - delivered - moved aside as corrupt - left in the buffer at the end (0 after a clean
stop), and must be 0; duplicates are ids delivered twice (each copy identical), only around a break
(broker restart or gateway kill); per-device rate = events per second outside the outages (a window from the
break until that device's first event after it, plus a second) against the offered rate; RSS of the
gateway sampled every second; restarts counted, and any exit of the gateway that the run did not cause.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import Mosquitto, free_port
from tests.storage import fill_disk

GATEWAY_ID = "chaos"
PREFIX = "edgegw"
ROOT = Path(__file__).resolve().parents[1]
BLE_CAPTURE = ROOT / "config" / "examples" / "ble-adverts.jsonl"
STATUS_KINDS = frozenset({"device.status"})
"""Kinds that are not the device's offered data (left out of the per-device rates, counted in the seqs)."""
TMPFS_BYTES = 64 << 20
SETTLE_S = 1.0
"""After a break, a device's rate counts again this long after its first event."""


# --------------------------------------------------------------------------------------------------------
# The devices


@dataclass
class Device:
    """One simulated device: how its simulator is started, its entry in the gateway's config, its offered
    events per second, and the unplugs its simulator makes (every ``unplug_every`` s, down
    ``unplug_down``)."""

    name: str
    family: str
    sim_args: list[str]
    config: dict[str, Any]
    offered: float | None
    """Events/s the device offers; None: paced by the driver (inventory rounds) or by what the capture holds
    (adverts of no known format are no events), so measured in the warm-up, before the first fault."""
    unplug_every: float = 0.0
    unplug_down: float = 0.0
    started_at: float = 0.0
    """Wall time at which the simulator said it was serving (its unplug schedule starts there)."""


def devices(tmp: Path, rate: float, unplug_every: float) -> list[Device]:
    """Every family, the offered rates in the proportions below scaled to ``rate`` events/s in all."""
    share = rate / 1000.0

    def faults(*specs: str, unplug: str = "") -> list[str]:
        """``--fault`` with ``specs``, and ``unplug`` (the family's name of that fault) if unplugs are on."""
        if unplug and unplug_every > 0:
            specs = (*specs, f"{unplug}={unplug_every:g}/1")
        return ["--fault", ",".join(specs)] if specs else []

    r2000_rate = 400 * share  # reads/s within the inventory rounds the driver asks for (~60 % of the time)
    llrp_rate = 300 * share
    can_rate = 150 * share
    xbee_rate = 180 * share
    modbus_poll = 1 / (10 * share)
    dlt_poll = 1 / (4 * share)
    gps_epoch = 1 / (10 * share)
    ble_per_s = 60 * share  # adverts replayed; those of no known format are not events
    llrp_port, mtcp_port = free_port(), free_port()
    # the capture: 12 adverts over its recorded span; replay_speed makes ble_per_s of them a second
    ts = [json.loads(line)["ts"] for line in BLE_CAPTURE.read_text().splitlines() if line.strip()]
    span = (max(ts) - min(ts)) * len(ts) / max(1, len(ts) - 1)
    ble_speed = ble_per_s * span / len(ts)
    points = [{"name": f"r{i}", "address": i, "type": "uint16"} for i in range(10)]
    return [
        Device(
            "rfid-r2000",
            "uhf-r2000",
            [
                "uhf-r2000",
                "--link",
                str(tmp / "r2000"),
                "--rate",
                f"{r2000_rate:g}",
                "--seed",
                "1",
                *faults("noise=0.002", "bad-checksum=0.002", unplug="disconnect"),
            ],
            {
                "driver": "uhf-r2000",
                "port": str(tmp / "r2000"),
                "antennas": {1: "a1", 2: "a2", 3: "a3", 4: "a4"},
                # a round lasts 50 ms: an end-of-round frame lost to noise is asked again in 0.25 s, not 1 s
                "reply_timeout_s": 0.25,
            },
            None,
            unplug_every,
            1.0,
        ),
        Device(
            "rfid-llrp",
            "llrp",
            [
                "llrp",
                "--tcp",
                f"127.0.0.1:{llrp_port}",
                "--rate",
                f"{llrp_rate:g}",
                "--seed",
                "2",
                *faults("vendor-params=0.002"),
            ],
            {"driver": "llrp", "host": "127.0.0.1", "port": llrp_port, "keepalive_s": 5},
            llrp_rate,
        ),
        Device(
            "modbus-rtu",
            "modbus",
            [
                "modbus",
                "--link",
                str(tmp / "rtu"),
                "--units",
                "1=registers",
                "--registers",
                "10",
                "--seed",
                "3",
                *faults("bad-crc=0.002", unplug="disconnect"),
            ],
            {"driver": "modbus", "transport": "rtu", "port": str(tmp / "rtu"), "unit_id": 1}
            | {"poll_s": modbus_poll, "timeout_s": 0.5, "points": points},
            1 / modbus_poll,
            unplug_every,
            1.0,
        ),
        Device(
            "modbus-tcp",
            "modbus",
            [
                *("modbus", "--tcp", f"127.0.0.1:{mtcp_port}", "--units", "1=registers", "--registers", "10"),
                *("--seed", "4", *faults("wrong-length=0.002", unplug="disconnect")),
            ],
            {"driver": "modbus", "transport": "tcp", "host": "127.0.0.1", "tcp_port": mtcp_port, "unit_id": 1}
            | {"poll_s": modbus_poll, "timeout_s": 0.5, "points": points},
            1 / modbus_poll,
            unplug_every,
            1.0,
        ),
        Device(
            "meter-dlt645",
            "dlt645",
            [
                "dlt645",
                "--link",
                str(tmp / "dlt645"),
                "--meter",
                "000000000001",
                "--seed",
                "5",
                *faults("noise=0.002", "bad-checksum=0.002"),
            ],
            {"driver": "dlt645", "port": str(tmp / "dlt645"), "address": "000000000001", "poll_s": dlt_poll}
            # a pty carries no parity, and Linux ptys refuse even parity once the speed is set (EINVAL at
            # every open after the first): 8N1 here, 8E1 on a real line
            | {"parity": "N"}
            | {"points": ["energy_active_forward", "voltage_a", "current_a"]},
            1 / dlt_poll,
        ),
        Device(
            "bus-can",
            "can",
            [
                "can",
                "--link",
                str(tmp / "can"),
                "--load",
                "--rate",
                f"{can_rate:g}",
                "--seed",
                "6",
                *faults("garbage=0.002", unplug="unplug"),
            ],
            {"driver": "can", "interface": "slcan", "channel": str(tmp / "can"), "bitrate": 250000}
            | {"listen_only": True, "j1939": True, "raw_frames": True},
            can_rate,
            unplug_every,
            1.0,
        ),
        Device(
            "gnss",
            "gps",
            [
                "gps",
                "--link",
                str(tmp / "gps"),
                "--epoch",
                f"{gps_epoch:g}",
                "--speedup",
                "10",
                "--seed",
                "7",
                *faults("bad-checksum=0.002", "truncate=0.002", unplug="disconnect"),
            ],
            {"driver": "gps", "port": str(tmp / "gps"), "every_s": gps_epoch / 2},
            1 / gps_epoch,
            unplug_every,
            1.0,
        ),
        Device(
            "zigbee",
            "xbee",
            [
                "xbee",
                "--link",
                str(tmp / "xbee"),
                "--rate",
                f"{xbee_rate:g}",
                "--seed",
                "8",
                *faults("bad-checksum=0.002", "truncate=0.002"),
            ],
            {"driver": "xbee", "port": str(tmp / "xbee")},
            xbee_rate,
        ),
        Device(
            "ble-replay",
            "ble",
            [],
            {"driver": "ble", "replay": str(BLE_CAPTURE), "replay_loop": True, "replay_speed": ble_speed}
            | {"min_interval_s": 0},
            None,
        ),
    ]


def gateway_config(tmp: Path, buffer_dir: Path, broker: Mosquitto, devs: Sequence[Device]) -> Path:
    doc = {
        "gateway": {"id": GATEWAY_ID},
        "buffer": {"path": str(buffer_dir / "buffer.db"), "when_full": "reject_new", "max_bytes": "32MiB"},
        "upstream": {
            "mqtt": {
                "url": broker.url,
                "prefix": PREFIX,
                "max_inflight": 100,
                "reconnect": {"initial_s": 0.2, "max_s": 1.0},
            }
        },
        "supervisor": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "devices": [{"name": d.name, **d.config} for d in devs],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------------
# The subscriber


@dataclass
class Seen:
    """What the subscriber received (under its lock)."""

    payloads: dict[int, int] = field(default_factory=dict)
    """seq -> hash of the event as received (a duplicate must be identical)."""
    duplicates: list[tuple[int, float]] = field(default_factory=list)
    """(seq, arrival time) of every copy after the first."""
    conflicting: list[int] = field(default_factory=list)
    bad_ids: int = 0
    per_second: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(device, whole second of the event's ts) -> events of the device's data kinds."""
    first_after: dict[str, list[float]] = field(default_factory=dict)
    """device -> sorted event times (data kinds), to find a device's first event after a break."""


class ChaosSubscriber:
    """A persistent MQTT 5 session (fixed client id, clean start off, 1 h expiry), QoS 1, on paho's thread."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen = Seen()
        self.lock = threading.Lock()
        self.connects = 0
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="chaos-subscriber", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.SessionExpiryInterval = 3600
        self._props = props
        self._broker = broker
        self._subscribed = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect(
            self._broker.host, self._broker.port, keepalive=10, clean_start=False, properties=self._props
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("the subscriber did not connect")

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        client.subscribe(f"{PREFIX}/{GATEWAY_ID}/#", qos=1)
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            return
        body = json.loads(msg.payload)
        now = time.time()
        with self.lock:
            for event in body if isinstance(body, list) else [body]:
                self._add(event, now)

    def _add(self, event: dict[str, Any], now: float) -> None:
        s = self.seen
        seq = event["seq"]
        if event["id"] != f"{GATEWAY_ID}:{seq}":
            s.bad_ids += 1
        digest = hash(json.dumps(event, sort_keys=True))
        old = s.payloads.get(seq)
        if old is not None:
            s.duplicates.append((seq, now))
            if old != digest:
                s.conflicting.append(seq)
            return
        s.payloads[seq] = digest
        if event["kind"] not in STATUS_KINDS:
            ts = float(event["ts"])
            s.per_second[(event["device"], int(ts))] += 1
            s.first_after.setdefault(event["device"], []).append(ts)

    def count(self) -> int:
        with self.lock:
            return len(self.seen.payloads)

    def has_all(self, seqs: set[int]) -> bool:
        with self.lock:
            return seqs.issubset(self.seen.payloads.keys())

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------------------------------------------
# Processes


def _proc_status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Gateway:
    """``edgegw run`` as a child process, restarted by the run; every exit it did not cause is counted."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "-c",
                str(self.config),
                "--log-level",
                "info",
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                cwd=ROOT,
            )
        self.starts += 1

    def check(self) -> None:
        """An exit the run did not cause (a crash) is counted; the run starts it again, as systemd would."""
        if self.proc is not None and self.proc.returncode is not None:
            self.unexpected_exits.append(self.proc.returncode)
            self.proc = None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return -9

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def start_simulator(tmp: Path, dev: Device, timeout: float = 30.0) -> asyncio.subprocess.Process:
    """``edgegw sim ...``; returns once it says where it serves (its first line of output)."""
    log = tmp / f"sim-{dev.name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "sim",
            *dev.sim_args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=ROOT,
        )
    deadline = time.monotonic() + timeout
    while b" on " not in log.read_bytes():  # bounded wait for "... on pty/tcp ..."
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"simulator {dev.name} did not start: {log.read_text(errors='replace')}")
        await asyncio.sleep(0.05)
    dev.started_at = time.time()
    return proc


def mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``where``; None when done, else why not (root is needed)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


# --------------------------------------------------------------------------------------------------------
# The plan of faults


@dataclass(frozen=True)
class Action:
    at: float
    """Seconds after the start of the run."""
    kind: str
    """``broker`` (a restart), ``kill`` (a gateway SIGKILL), ``corrupt`` (a kill, the buffer corrupted before
    the restart), ``disk_full`` (the phase)."""
    length: float = 0.0
    """``broker``: seconds down; ``disk_full``: seconds full (the broker down too, so that the backlog needs
    room); ``corrupt``: seconds the broker is down before the kill (so that the file holds a backlog)."""


@dataclass(frozen=True)
class Plan:
    seconds: float
    broker_restarts: int
    gateway_kills: int
    corrupt: bool = True
    disk_full_s: float = 0.0
    unplug_every: float = 60.0
    rate: float = 1000.0
    seed: int = 1
    gap_s: float = 4.0
    """No two faults closer than this (a restart is over before the next one)."""


def schedule(plan: Plan) -> list[Action]:
    """Random times (seeded) in the middle 80 % of the run, at least ``gap_s`` from the end of one fault to
    the start of the next: the faults in a random order, the slack spread by sorted uniform cuts. One of the
    gateway kills is the corrupt restart, placed before the disk-full phase, so the drop counters that phase
    writes are in the file read at the end (a corrupt file's counters go with it)."""
    rng = random.Random(plan.seed)
    lo, hi = 0.1 * plan.seconds, 0.9 * plan.seconds
    kinds = ["broker"] * plan.broker_restarts + ["kill"] * plan.gateway_kills
    if plan.corrupt and plan.gateway_kills:
        kinds[-1] = "corrupt"
    if plan.disk_full_s > 0:
        kinds.append("disk_full")
    rng.shuffle(kinds)
    if "corrupt" in kinds and "disk_full" in kinds:
        i, j = kinds.index("corrupt"), kinds.index("disk_full")
        if j < i:
            kinds[i], kinds[j] = kinds[j], kinds[i]
    lengths = {"broker": lambda: rng.uniform(1.0, 4.0), "kill": lambda: 0.0, "corrupt": lambda: 3.0}
    durations = [plan.disk_full_s if k == "disk_full" else lengths[k]() for k in kinds]
    slack = (hi - lo) - sum(durations) - plan.gap_s * max(0, len(kinds) - 1)
    if slack < 0:
        raise ValueError(f"cannot fit {len(kinds)} faults {plan.gap_s} s apart in {plan.seconds} s")
    cuts = sorted(rng.uniform(0, slack) for _ in kinds)
    actions, spent = [], 0.0
    for i, (kind, length) in enumerate(zip(kinds, durations, strict=True)):
        actions.append(Action(lo + cuts[i] + spent + plan.gap_s * i, kind, length))
        spent += length
    return actions


# --------------------------------------------------------------------------------------------------------
# The run


@dataclass
class CorruptFile:
    last_seq: int
    held: set[int]
    """Seqs the file still held (committed, not acknowledged) when it was corrupted."""
    dropped: dict[str, int]


@dataclass
class Outcome:
    """What the run recorded, for :func:`account`."""

    plan: Plan
    devices: list[Device]
    started: float
    ended: float
    breaks: list[tuple[float, float, str]] = field(default_factory=list)
    """(from, to, what) wall times of every break: broker down, gateway down, disk full."""
    corrupt: CorruptFile | None = None
    corrupt_moved: list[str] = field(default_factory=list)
    final_last_seq: int = 0
    final_left: set[int] = field(default_factory=set)
    dropped: dict[str, int] = field(default_factory=dict)
    corrupt_files: int = 0
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    gateway_starts: int = 0
    unexpected_exits: list[int] = field(default_factory=list)
    broker_restarts: int = 0
    disk_full_skipped: str | None = None
    stop_code: int = 0
    subscriber_connects: int = 0
    seen: Seen = field(default_factory=Seen)
    log_tail: str = ""
    device_drops: dict[str, list[float]] = field(default_factory=dict)
    """device -> wall times at which the gateway logged it disconnected."""


def read_buffer(path: Path) -> tuple[int, set[int], dict[str, int], int]:
    """A buffer file's last seq, the seqs it holds, its drop counters by reason, its corrupt-file count."""
    conn = sqlite3.connect(path)  # the gateway is stopped, or this is a copy
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if "events" not in tables:
            return 0, set(), {}, 0
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        held = {seq for (seq,) in conn.execute("SELECT seq FROM events")}
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    dropped = {k.removeprefix("dropped."): int(v) for k, v in meta.items() if k.startswith("dropped.")}
    return (int(row[0]) if row else 0), held, dropped, int(meta.get("corrupt_files", 0))


def corrupt_copy(buffer: Path, into: Path) -> CorruptFile:
    """Copy the (killed) gateway's buffer file with its WAL, read the copy, then overwrite the real file's
    header: SQLite will call it ``file is not a database``."""
    into.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        src = buffer.with_name(buffer.name + suffix)
        if src.exists():
            shutil.copyfile(src, into / (buffer.name + suffix))
    last, held, dropped, _ = read_buffer(into / buffer.name)
    # Both headers: with only the database's, SQLite would take page 1 from the WAL and not notice.
    for part, size in ((buffer, 100), (buffer.with_name(buffer.name + "-wal"), 32)):
        if part.exists():
            with part.open("r+b") as f:
                f.write(os.urandom(size))
    return CorruptFile(last, held, dropped)


DISK_FULL_LOG: Final = "disk full at "
"""The gateway's log line when its buffer meets a full filesystem (gateway/delivery/buffer.py)."""
DISK_FULL_WAIT_S: Final = 60.0
"""How much longer than planned a disk-full phase may last, waiting for the gateway to meet the full disk."""
DISK_FULL_HOLD_S: Final = 2.0
"""How long the disk stays full once the gateway has met it: events go on arriving, refused and counted."""


async def _sleep_until(t: float, gateway: Gateway, rss: list[tuple[float, int]]) -> None:
    """Pass time until wall time ``t`` (the plan's clock), sampling the gateway's RSS every second and
    starting it again if it exited by itself."""
    while (left := t - time.time()) > 0:
        await asyncio.sleep(min(1.0, left))
        gateway.check()
        if gateway.proc is None:
            await gateway.start()
        pid = gateway.pid
        if pid is not None and (kb := _proc_status_kb(pid, "VmRSS")):
            rss.append((time.time(), kb))


async def run(plan: Plan, tmp: Path, *, progress: Callable[[str], None] = lambda _m: None) -> Outcome:
    """The whole run in ``tmp``; returns what it recorded (:func:`account` makes the figures)."""
    schedule(plan)  # a plan that cannot be laid out fails here, before anything is mounted
    buffer_dir = tmp / "buffer-fs"
    disk_full_skipped = None
    mounted = False
    if plan.disk_full_s > 0:
        disk_full_skipped = mount_tmpfs(buffer_dir, TMPFS_BYTES)
        mounted = disk_full_skipped is None
    else:
        buffer_dir.mkdir(exist_ok=True)
    if disk_full_skipped:
        buffer_dir.mkdir(exist_ok=True)
        plan = dataclasses.replace(plan, disk_full_s=0.0)
    try:
        buffer = buffer_dir / "buffer.db"
        actions = schedule(plan)
        broker = Mosquitto(
            persistence=True, extra_config=["max_inflight_messages 100", "max_queued_messages 0"]
        )
        devs = devices(tmp, plan.rate, plan.unplug_every)
        sims: list[asyncio.subprocess.Process] = []
        gateway = Gateway(gateway_config(tmp, buffer_dir, broker, devs), tmp / "gateway.log")
        subscriber = ChaosSubscriber(broker)
        outcome = Outcome(plan, devs, 0.0, 0.0, disk_full_skipped=disk_full_skipped)
        try:
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(subscriber.start)
            for dev in devs:
                if dev.sim_args:
                    sims.append(await start_simulator(tmp, dev))
            outcome.started = t0 = time.time()
            await gateway.start()
            progress(f"chaos: {len(devs)} devices, {len(actions)} faults over {plan.seconds:g} s")
            for action in actions:
                await _sleep_until(t0 + action.at, gateway, outcome.rss_kb)
                progress(f"chaos: t={time.time() - t0:5.1f} s {action.kind} {action.length:.1f}")
                began = time.time()
                if action.kind == "broker":
                    await asyncio.to_thread(broker.stop)
                    await _sleep_until(began + action.length, gateway, outcome.rss_kb)
                    await asyncio.to_thread(broker.start)
                    outcome.broker_restarts += 1
                elif action.kind == "kill":
                    gateway.check()
                    await gateway.kill()
                    await gateway.start()
                elif action.kind == "corrupt":
                    # with the broker down for a while first, so that the file holds a backlog when it dies
                    await asyncio.to_thread(broker.stop)
                    await _sleep_until(began + action.length, gateway, outcome.rss_kb)
                    gateway.check()
                    await gateway.kill()
                    outcome.corrupt = corrupt_copy(buffer, tmp / "corrupt-copy")
                    await gateway.start()
                    await asyncio.to_thread(broker.start)
                elif action.kind == "disk_full":
                    # with the broker down, so that the backlog needs the room there is not
                    await asyncio.to_thread(broker.stop)
                    met = gateway.log().count(DISK_FULL_LOG)
                    filler = fill_disk(buffer_dir, 0)
                    await _sleep_until(began + action.length, gateway, outcome.rss_kb)
                    # The file may still hold free pages, left by an earlier backlog, that take the phase's
                    # events without asking the filesystem for room: the broker stays down until the gateway
                    # has met the full disk, and a little longer, so that the phase is one (bounded).
                    deadline = time.time() + DISK_FULL_WAIT_S
                    while not (full := gateway.log().count(DISK_FULL_LOG) > met) and time.time() < deadline:
                        await _sleep_until(time.time() + 0.5, gateway, outcome.rss_kb)
                    if full:
                        await _sleep_until(time.time() + DISK_FULL_HOLD_S, gateway, outcome.rss_kb)
                    filler.unlink()
                    await asyncio.to_thread(broker.start)
                outcome.breaks.append((began, time.time(), action.kind))
            await _sleep_until(t0 + plan.seconds, gateway, outcome.rss_kb)
            outcome.ended = time.time()
            gateway.check()
            if gateway.proc is None:
                await gateway.start()
            outcome.stop_code = await gateway.stop()
            outcome.gateway_starts = gateway.starts
            outcome.unexpected_exits = gateway.unexpected_exits
            outcome.final_last_seq, outcome.final_left, outcome.dropped, outcome.corrupt_files = read_buffer(
                buffer
            )
            outcome.corrupt_moved = sorted(
                p.name for p in buffer_dir.glob("buffer.db.corrupt-*") if "-wal" not in p.name[-4:]
            )
            progress("chaos: waiting for the subscriber to have every committed event")
            want = committed_seqs(outcome, subscriber_seqs(subscriber)) - outcome.final_left
            if outcome.corrupt is not None:
                want -= outcome.corrupt.held
            deadline = time.monotonic() + 120
            while not subscriber.has_all(want) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # polled, bounded: paho's thread has no event for "all of these"
            outcome.subscriber_connects = subscriber.connects
            with subscriber.lock:
                outcome.seen = dataclasses.replace(subscriber.seen)
            log = gateway.log()
            outcome.log_tail = "\n".join(log.splitlines()[-40:])
            outcome.device_drops = device_drops(log)
        finally:
            await gateway.kill()
            for proc in sims:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in sims:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await asyncio.to_thread(subscriber.stop)
            await asyncio.to_thread(broker.close)
        return outcome
    finally:
        if mounted:
            unmount(buffer_dir)


_DROP = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING edgegw\.device\.(\S+): disconnected:", re.M
)


def device_drops(log: str) -> dict[str, list[float]]:
    """device -> times of the gateway's ``disconnected:`` lines (its log's times are local time)."""
    out: dict[str, list[float]] = {}
    for m in _DROP.finditer(log):
        at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        out.setdefault(m.group(3), []).append(at)
    return out


def subscriber_seqs(subscriber: ChaosSubscriber) -> set[int]:
    with subscriber.lock:
        return set(subscriber.seen.payloads)


def committed_seqs(outcome: Outcome, delivered: set[int]) -> set[int]:
    """Every seq a buffer handed out: 1..last of the corrupt file, then from the fresh file's first seq (the
    lowest one above it, delivered or still held) to the last one. Under ``reject_new`` a refused event has no
    seq, so there is no other gap."""
    last = outcome.final_last_seq
    if outcome.corrupt is None:
        return set(range(1, last + 1))
    old = outcome.corrupt.last_seq
    later = [s for s in delivered | outcome.final_left if s > old]
    first_new = min(later) if later else last + 1
    return set(range(1, old + 1)) | set(range(first_new, last + 1))


# --------------------------------------------------------------------------------------------------------
# The accounting


@dataclass
class DeviceRate:
    name: str
    offered: float
    measured: float
    seconds: int
    """Whole seconds counted (outside every outage)."""

    @property
    def ratio(self) -> float:
        return self.measured / self.offered if self.offered else 0.0


@dataclass
class Accounting:
    committed: int
    delivered: int
    moved_aside_corrupt: int
    left_in_buffer: int
    lost: list[int]
    duplicates: int
    duplicates_outside_breaks: int
    conflicting_duplicates: int
    bad_ids: int
    dropped: dict[str, int]
    corrupt_files: int
    corrupt_moved: list[str]
    rates: list[DeviceRate]
    rss_mb_first: float
    rss_mb_last: float
    rss_mb_max: float
    gateway_starts: int
    gateway_kills: int
    unexpected_exits: list[int]
    broker_restarts: int
    stop_code: int
    disk_full_skipped: str | None

    @property
    def rss_flat(self) -> bool:
        """The last fifth's median RSS within 20 % (and 15 MB) of the second fifth's (after the warm-up)."""
        return self.rss_mb_last <= max(self.rss_mb_first * 1.2, self.rss_mb_first + 15)


DUPLICATE_WINDOW_S = 30.0
"""A duplicate is "at a break" when it arrives within this long after one ends (the backlog a break leaves
takes a while to drain, and the gateway resends from its last acknowledged seq)."""


def outages(outcome: Outcome, dev: Device) -> list[tuple[float, float]]:
    """The device's outage windows: every gateway restart and the disk-full phase (events refused), and every
    disconnect of the device in the gateway's log; each ends at the device's first event after it, plus
    :data:`SETTLE_S`."""
    windows = [(a, b) for a, b, what in outcome.breaks if what in ("kill", "corrupt", "disk_full")]
    # every time the gateway saw the device go (an unplug, a reset, a line too noisy), from a second before
    windows += [(at - 1.0, at) for at in outcome.device_drops.get(dev.name, [])]
    times = sorted(outcome.seen.first_after.get(dev.name, []))
    out = []

    for a, b in windows:
        i = bisect.bisect_right(times, b)
        back = times[i] if i < len(times) else outcome.ended
        out.append((a, back + SETTLE_S))
    return out


def _rate(
    outcome: Outcome, dev: Device, windows: list[tuple[float, float]], lo: int, hi: int
) -> tuple[float, int]:
    """Events/s of ``dev`` over the whole seconds in [lo, hi) that no window touches, and how many."""
    counted = events = 0
    for second in range(lo, hi):
        if any(a < second + 1 and b > second for a, b in windows):
            continue
        counted += 1
        events += outcome.seen.per_second.get((dev.name, second), 0)
    return (events / counted if counted else 0.0), counted


def device_rate(outcome: Outcome, dev: Device) -> DeviceRate:
    """The rate outside the outages, from a second after the device's first event to the end of the run,
    against the offered rate (for a device without a nominal one: its rate before the first fault)."""
    windows = outages(outcome, dev)
    times = sorted(outcome.seen.first_after.get(dev.name, []))
    lo = int((times[0] if times else outcome.started) + SETTLE_S) + 1
    measured, seconds = _rate(outcome, dev, windows, lo, int(outcome.ended) - 1)
    offered = dev.offered
    if offered is None:
        first_fault = min((a for a, _b, _w in outcome.breaks), default=outcome.ended)
        offered, _n = _rate(outcome, dev, windows, lo, int(first_fault))
    return DeviceRate(dev.name, offered, measured, seconds)


def account(outcome: Outcome) -> Accounting:
    seen = outcome.seen
    delivered = set(seen.payloads)
    committed = committed_seqs(outcome, delivered)
    aside = (outcome.corrupt.held - delivered) if outcome.corrupt is not None else set()
    left = outcome.final_left - delivered
    lost = sorted(committed - delivered - aside - left)
    break_ends = [b for _a, b, _what in outcome.breaks]  # the disk-full phase stops the broker too
    outside = sum(
        1
        for _seq, at in seen.duplicates
        if not any(0 <= at - end <= DUPLICATE_WINDOW_S for end in break_ends)
    )
    dropped = dict(outcome.dropped)
    if outcome.corrupt is not None:
        for k, v in outcome.corrupt.dropped.items():
            dropped[k] = max(dropped.get(k, 0), v)  # carried into the fresh file when it could be
    rss = [kb / 1024 for _t, kb in outcome.rss_kb]
    fifth = max(1, len(rss) // 5)
    return Accounting(
        committed=len(committed),
        delivered=len(delivered & committed),
        moved_aside_corrupt=len(aside),
        left_in_buffer=len(left),
        lost=lost,
        duplicates=len(seen.duplicates),
        duplicates_outside_breaks=outside,
        conflicting_duplicates=len(seen.conflicting),
        bad_ids=seen.bad_ids,
        dropped=dropped,
        corrupt_files=outcome.corrupt_files,
        corrupt_moved=outcome.corrupt_moved,
        rates=[device_rate(outcome, d) for d in outcome.devices],
        rss_mb_first=statistics.median(rss[fifth : 2 * fifth]) if len(rss) >= 2 else 0.0,
        rss_mb_last=statistics.median(rss[-fifth:]) if rss else 0.0,
        rss_mb_max=max(rss, default=0.0),
        gateway_starts=outcome.gateway_starts,
        gateway_kills=sum(1 for _a, _b, w in outcome.breaks if w in ("kill", "corrupt")),
        unexpected_exits=outcome.unexpected_exits,
        broker_restarts=outcome.broker_restarts,
        stop_code=outcome.stop_code,
        disk_full_skipped=outcome.disk_full_skipped,
    )


RATE_GOAL = 0.95


def report(acc: Accounting, plan: Plan) -> str:
    lines = [
        f"chaos run: {plan.seconds:g} s, {plan.rate:g} events/s offered, seed {plan.seed}",
        f"  committed            {acc.committed:>9}",
        f"  delivered            {acc.delivered:>9}",
        f"  moved aside corrupt  {acc.moved_aside_corrupt:>9}   (held by the corrupted file, not delivered"
        f" before; moved aside: {', '.join(acc.corrupt_moved) or 'none'}; corrupt_files {acc.corrupt_files})",
        f"  left in the buffer   {acc.left_in_buffer:>9}",
        f"  LOST                 {len(acc.lost):>9}   {acc.lost[:10]}",
        f"  duplicates           {acc.duplicates:>9}   (outside a break: {acc.duplicates_outside_breaks}, "
        f"differing copies: {acc.conflicting_duplicates}, bad ids: {acc.bad_ids})",
        "  dropped, counted by the gateway: "
        + (", ".join(f"{k} {v}" for k, v in sorted(acc.dropped.items())) or "none"),
        f"  restarts: gateway {acc.gateway_starts - 1} ({acc.gateway_kills} SIGKILLs, "
        f"{len(acc.unexpected_exits)} exits of its own {acc.unexpected_exits}), "
        f"broker {acc.broker_restarts}; "
        f"final stop exit {acc.stop_code}",
        f"  RSS MB: second fifth {acc.rss_mb_first:.1f}, last fifth {acc.rss_mb_last:.1f}, "
        f"max {acc.rss_mb_max:.1f}"
        f" ({'flat' if acc.rss_flat else 'GROWING'})",
    ]
    if acc.disk_full_skipped:
        lines.append(f"  disk-full phase LEFT OUT: {acc.disk_full_skipped}")
    lines.append("  per device, outside the outages:  offered/s  measured/s  ratio  seconds")
    for r in acc.rates:
        flag = "" if r.ratio >= RATE_GOAL else "  < 95 %"
        lines.append(
            f"    {r.name:<14} {r.offered:>17.1f} {r.measured:>11.1f} {r.ratio:>6.1%} {r.seconds:>8}{flag}"
        )
    return "\n".join(lines)


def verdict(acc: Accounting) -> list[str]:
    """What failed (empty: every promise held)."""
    bad = []
    if acc.lost:
        bad.append(f"{len(acc.lost)} committed events lost: {acc.lost[:10]}")
    if acc.duplicates_outside_breaks or acc.conflicting_duplicates or acc.bad_ids:
        bad.append("duplicates outside a break, or differing copies of an id")
    if acc.unexpected_exits:
        bad.append(f"the gateway exited by itself: {acc.unexpected_exits}")
    if acc.stop_code != 0:
        bad.append(f"the final stop exited {acc.stop_code}")
    for r in acc.rates:
        if r.ratio < RATE_GOAL:
            bad.append(f"{r.name}: {r.measured:.1f}/s of {r.offered:.1f}/s offered")
    if not acc.rss_flat:
        bad.append("RSS grew")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered in all (default 1000)")
    parser.add_argument("--broker-restarts", type=int, default=20)
    parser.add_argument("--gateway-kills", type=int, default=10)
    parser.add_argument(
        "--disk-full-s", type=float, default=20.0, help="length of the disk-full phase (0: none)"
    )
    parser.add_argument("--unplug-every", type=float, default=60.0, help="simulators' unplug period (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (logs, buffer)")
    args = parser.parse_args(argv)
    plan = Plan(
        seconds=args.minutes * 60,
        broker_restarts=args.broker_restarts,
        gateway_kills=args.gateway_kills,
        disk_full_s=args.disk_full_s,
        unplug_every=args.unplug_every,
        rate=args.rate,
        seed=args.seed,
    )
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = args.keep
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgegw-chaos-")))
        outcome = asyncio.run(run(plan, tmp, progress=lambda m: print(m, flush=True)))
    acc = account(outcome)
    if args.keep:
        record = {
            "breaks": outcome.breaks,
            "started": outcome.started,
            "ended": outcome.ended,
            "duplicates": outcome.seen.duplicates,
            "per_second": [[d, t, n] for (d, t), n in sorted(outcome.seen.per_second.items())],
            "devices": {d.name: d.started_at for d in outcome.devices},
        }
        (args.keep / "chaos.json").write_text(json.dumps(record))
    print(report(acc, plan))
    bad = verdict(acc)
    for line in bad:
        print(f"FAILED: {line}")
    if bad:
        print(outcome.log_tail)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
