"""The whole pipeline under load: simulator -> pty -> ``edgegw run`` -> private Mosquitto -> subscriber.

    python -m bench.pipeline [--runs N] [--seconds S] [--warmup S] [--only batch1|batch50|latency]
                             [--readers N] [--stamp off|on|both]

Processes: a private Mosquitto (``tests.broker.Mosquitto``, with ``max_inflight_messages 100`` so its MQTT 5
Receive Maximum does not cut the gateway's window of 100 down to Mosquitto's default 20), the simulated R2000
reader (``edgegw sim uhf-r2000 --link PATH``) on a real pseudo-terminal, the gateway (``edgegw run -c CFG
--log-level info``, its config and SQLite buffer in a temporary directory, the reader on ``port: PATH``), and
a subscriber in this process (paho on its own thread, QoS 0 subscription: it counts messages and events and
parses only every 10th message, for latency = receive wall time - the event's ``ts``, which the gateway
stamps when the bytes arrive from the serial port).

Scenarios:

- ``batch1``: full load, one event per MQTT message; the simulator offered well above capacity;
- ``batch50``: full load, ``batch_max_events: 50``;
- ``latency``: 1,000 reads/s, one event per message: p50/p99 latency.

Each run: wait for the first event at the subscriber, ``--warmup`` seconds, then ``--seconds`` of
measurement (delivered events, the gateway's CPU time from ``/proc/PID/stat``, latency samples), RSS sampled
every 200 ms from ``/proc/PID/status`` (the figure is the peak: the largest sample or VmHWM). Then SIGTERM
to the gateway, whose shutdown summary lines (``summary device=...`` and ``summary loop ...``) give the
events read, queue drops, framer bytes skipped and the event loop's lag over its whole life. Events the
gateway committed but had not delivered at shutdown stay in its buffer, counted afterwards with sqlite3:
``delivered + left in buffer == committed`` checks that the subscriber missed nothing.

Goals (the issue, on a 2-core machine): >= 8,000 events/s with one event per message, >= 50,000 events/s
batched, RSS <= 60 MB, p99 <= 50 ms at 1,000 events/s; the serial reader never starved: the loop's worst lag
far below the ~355 ms in which a 115,200 baud UART fills the kernel's 4 KiB tty buffer, no bytes skipped by
the framer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.profile import summary
from tests.broker import Mosquitto

GATEWAY_ID = "bench"
PREFIX = "edgegw"
WINDOW = 100
"""The gateway's ``max_inflight`` and the broker's ``max_inflight_messages``."""
SAMPLE_EVERY = 10
"""The subscriber parses one message in this many (for latency)."""
RSS_INTERVAL_S = 0.2
KEEPALIVE_S = 60
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
UART_FILL_MS = 4096 * 10 / 115_200 * 1000
"""A 115,200 baud UART (10 bits per byte) fills the kernel's 4 KiB tty buffer in this many ms (~355)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int
    rate: float
    """The simulator's ``--rate`` (reads/s offered, if the gateway keeps up with its commands)."""


SCENARIOS = {
    "batch1": Scenario("batch1", 1, 30_000.0),
    "batch50": Scenario("batch50", 50, 80_000.0),
    "latency": Scenario("latency", 1, 1_000.0),
}


@dataclass
class Result:
    scenario: str
    delivered_per_s: float
    messages_per_s: float
    offered_per_s: float
    """Events the gateway read (emitted + dropped) per second of its reading life."""
    gw_cpu_pct: float
    sim_cpu_pct: float
    broker_cpu_pct: float
    sub_cpu_pct: float
    """This process (the subscriber thread, essentially)."""
    rss_max_mb: float
    p50_ms: float
    p99_ms: float
    latency_samples: int
    read: int
    delivered: int
    committed: int
    left_in_buffer: int
    queue_dropped: int
    bytes_skipped: int
    frames_rejected: int
    overflow_bytes: int
    lag_max_ms: float
    lag_over_10ms: int
    lag_over_50ms: int
    lag_samples: int
    restarts: int
    counters: dict[str, int] = field(default_factory=dict)
    speed_ms: float = 0.0
    """:func:`machine_speed_ms` just before the run."""

    @property
    def missing(self) -> int:
        """Committed, not delivered, not left in the buffer: lost on the way (should be 0). Negative is fine:
        events delivered whose PUBACK had not arrived at shutdown stay buffered too (at least once)."""
        return self.committed - self.delivered - self.left_in_buffer


# --------------------------------------------------------------------------------------------------------
# The machine's speed


def machine_speed_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop (the fastest of three): a reading of how fast this
    shared machine runs Python right now. Measured here it moved between 220 and 345 ms within minutes
    (neighbours, boost), and every CPU figure of the gateway with it: read a run's figures beside it, and
    compare figures taken at similar speeds or as ratios within one run."""

    def once() -> float:
        start = time.process_time()
        total = 0
        for i in range(3_000_000):
            total += i * i % 7
        return time.process_time() - start

    return min(once() for _ in range(3)) * 1000


# --------------------------------------------------------------------------------------------------------
# /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples VmRSS of ``pid`` every ``interval`` seconds on a thread; ``max_kb`` is the largest seen."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.pid = pid
        self.interval = interval
        self.max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.max_kb = max(self.max_kb, proc_status_kb(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------------------
# The subscriber


class Subscriber:
    """Counts what arrives on ``<prefix>/<gateway>/#`` (the gateway's status topic aside), on its own thread.

    Per message: a count, a count of events (``{"id":"`` occurrences in a batch: a JSON string cannot hold
    an unescaped quote, so no false hits), and while ``sampling``, every ``SAMPLE_EVERY``-th message parsed
    for the latency of its events. ``first_ts`` is the ``ts`` of the first message (reading had begun)."""

    def __init__(self) -> None:
        self.messages = 0
        self.events = 0
        self.first_ts: float | None = None
        self.sampling = False
        self.latencies: list[float] = []
        self.status_topic = f"{PREFIX}/{GATEWAY_ID}/status"

    def count(self, topic: bytes | str, payload: bytes | bytearray, start: int, end: int) -> None:
        """One message; ``payload[start:end]`` is its body (a view into a receive buffer for the raw
        client: no copy unless sampled)."""
        self.messages += 1
        batched = payload[start] == 0x5B  # "["
        self.events += payload.count(b'{"id":"', start, end) if batched else 1
        if self.first_ts is None:
            self.first_ts = _first_ts(json.loads(bytes(payload[start:end])))
        if self.sampling and self.messages % SAMPLE_EVERY == 0:
            now = time.time()
            body = json.loads(bytes(payload[start:end]))
            for event in body if batched else (body,):
                self.latencies.append(now - event["ts"])

    def start(self, timeout: float = 10.0) -> Subscriber:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class RawSubscriber(Subscriber):
    """A minimal MQTT 3.1.1 client on a plain socket: CONNECT, SUBSCRIBE (QoS 0), then PUBLISH packets
    parsed straight out of 256 KiB reads. A few microseconds per message, where paho's callback path costs
    about a hundred: on a 2-core machine the bench must not take the CPU the gateway is measured on."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._addr = (host, port)
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-subscriber", daemon=True)

    @staticmethod
    def _packet(kind: int, body: bytes) -> bytes:
        n, length = len(body), bytearray()
        while True:
            n, digit = n >> 7, n & 0x7F
            length.append(digit | (0x80 if n else 0))
            if not n:
                return bytes((kind,)) + bytes(length) + body

    @staticmethod
    def _string(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    def start(self, timeout: float = 10.0) -> Subscriber:
        sock = socket.create_connection(self._addr, timeout=timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock = sock
        connect = self._string("MQTT") + bytes((4, 0x02, 0, KEEPALIVE_S)) + self._string("bench-subscriber")
        sock.sendall(self._packet(0x10, connect))
        if sock.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("bench subscriber: CONNACK refused")
        sock.sendall(self._packet(0x82, b"\x00\x01" + self._string(f"{PREFIX}/{GATEWAY_ID}/#") + b"\x00"))
        suback = sock.recv(5)
        if suback[:1] != b"\x90" or suback[-1:] != b"\x00":
            raise RuntimeError(f"bench subscriber: SUBACK {suback!r}")
        sock.settimeout(0.5)
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        status = self.status_topic.encode()
        buf = bytearray()
        pinged = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - pinged > KEEPALIVE_S / 2:
                sock.sendall(b"\xc0\x00")  # PINGREQ
                pinged = time.monotonic()
            try:
                data = sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            pos, n = 0, len(buf)
            while pos + 2 <= n:
                kind = buf[pos]
                length, shift, i = 0, 0, pos + 1
                while i < n:
                    digit = buf[i]
                    length |= (digit & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not digit & 0x80:
                        break
                else:
                    break  # the length itself is incomplete
                end = i + length
                if end > n:
                    break
                if kind & 0xF0 == 0x30:  # PUBLISH, QoS 0: topic, then the payload
                    topic_end = i + 2 + int.from_bytes(buf[i : i + 2], "big")
                    if buf[i + 2 : topic_end] != status:
                        self.count(b"", buf, topic_end, end)
                pos = end
            del buf[:pos]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            self._sock.close()


class PahoSubscriber(Subscriber):
    """The same counting in paho's ``on_message`` (``--subscriber paho``), to compare the cost."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-subscriber", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._host = host
        self._port = port

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        client.subscribe(f"{PREFIX}/{GATEWAY_ID}/#", qos=0)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic != self.status_topic:
            payload = msg.payload
            self.count(msg.topic, payload, 0, len(payload))

    def start(self, timeout: float = 10.0) -> Subscriber:
        self._client.connect(self._host, self._port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError("bench subscriber: no SUBACK")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


SUBSCRIBERS: dict[str, Callable[[str, int], Subscriber]] = {"raw": RawSubscriber, "paho": PahoSubscriber}


def _first_ts(body: Any) -> float:
    event = body[0] if isinstance(body, list) else body
    return float(event["ts"])


# --------------------------------------------------------------------------------------------------------
# Child processes


def gateway_config(
    tmp: Path,
    broker: Mosquitto,
    links: Sequence[Path],
    batch: int,
    window: int,
    *,
    gps: Path | None = None,
) -> Path:
    """The bench's gateway, a reader on each of ``links``; with ``gps`` (a receiver's pty), the readers'
    events stamped with its fixes."""
    path = tmp / "gateway.yaml"
    readers = "".join(
        f"""  - name: reader-{i}
    driver: uhf-r2000
    port: {link}
    inventory: fast_switch
    antennas: {{1: ant-1, 2: ant-2, 3: ant-3, 4: ant-4}}
"""
        + ("    position_from: gps\n" if gps is not None else "")
        for i, link in enumerate(links, 1)
    )
    stamping = (
        ""
        if gps is None
        else f"""  - name: gps
    driver: gps
    port: {gps}
    every_m: 20
"""
    )
    path.write_text(
        f"""gateway:
  id: {GATEWAY_ID}
buffer:
  path: {tmp / "buffer.db"}
upstream:
  mqtt:
    url: mqtt://{broker.host}:{broker.port}
    prefix: {PREFIX}
    max_inflight: {window}
    batch_max_events: {batch}
devices:
{readers}{stamping}"""
    )
    return path


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of ``proc``'s stdout within ``timeout`` seconds ('' if none)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode(errors="replace") if ready else ""


def start_simulator(tmp: Path, link: Path, rate: float, log_name: str = "sim.log") -> subprocess.Popen[bytes]:
    args = [
        "uhf-r2000",
        "--link",
        str(link),
        "--rate",
        f"{rate:g}",
        "--tags",
        "1000",
        "--antennas",
        "1,2,3,4",
    ]
    return _start_sim(tmp, log_name, args)


def start_gps(tmp: Path, link: Path) -> subprocess.Popen[bytes]:
    """A GNSS receiver on a bus (``edgegw sim gps``), 5 epochs a second, for ``--stamp``."""
    return _start_sim(tmp, "gps.log", ["gps", "--link", str(link), "--epoch", "0.2", "--speedup", "10"])


def _start_sim(tmp: Path, log_name: str, args: list[str]) -> subprocess.Popen[bytes]:
    with (tmp / log_name).open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "sim", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    line = _readline(proc, START_TIMEOUT_S)
    if "on pty" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"simulator did not start: {line!r} {(tmp / log_name).read_text()}")
    return proc


def start_gateway(tmp: Path, config: Path) -> subprocess.Popen[bytes]:
    with (tmp / "gateway.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--log-level", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait ``timeout`` seconds, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------------------
# The gateway's shutdown summary

_SUMMARY_DEVICE = re.compile(r"summary device=(\S+) (.*)$", re.MULTILINE)
_SUMMARY_LOOP = re.compile(r"summary loop (.*)$", re.MULTILINE)


def _pairs(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=", 1) for item in text.split() if "=" in item)}


def parse_summary(log: str) -> tuple[dict[str, float], dict[str, float]]:
    """(the readers' counters, summed over their device lines; the loop line's figures); KeyError-free:
    missing lines give {}."""
    device: dict[str, float] = {}
    for match in _SUMMARY_DEVICE.finditer(log):
        if match.group(1).startswith("reader-"):
            for key, value in _pairs(match.group(2)).items():
                device[key] = device.get(key, 0.0) + value
    loop = _SUMMARY_LOOP.search(log)
    return device, (_pairs(loop.group(1)) if loop else {})


def left_in_buffer(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(n)


# --------------------------------------------------------------------------------------------------------
# One run


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait(seconds: float, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        alive()
        time.sleep(min(0.1, left))


def run_once(
    scenario: Scenario,
    seconds: float,
    warmup: float,
    *,
    window: int = WINDOW,
    subscriber: str = "raw",
    show_log: bool = False,
    stamp: bool = False,
    readers: int = 1,
    profile: Path | None = None,
) -> Result:
    """One run of ``scenario``; with ``profile``, py-spy records the gateway over the measuring window into
    that file (``py-spy record --format raw``)."""
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    links = [tmp / "ttyR2000"] + [tmp / f"ttyR2000-{i}" for i in range(2, readers + 1)]
    procs: list[subprocess.Popen[bytes]] = []
    broker = Mosquitto(extra_config=[f"max_inflight_messages {window}"])
    sub: Subscriber | None = None
    rss: RssSampler | None = None
    try:
        broker.start()
        sub = SUBSCRIBERS[subscriber](broker.host, broker.port).start()
        gps = None
        if stamp:
            gps = tmp / "ttyGPS"
            procs.append(start_gps(tmp, gps))
        sims = [
            start_simulator(tmp, link, scenario.rate / readers, "sim.log" if i == 1 else f"sim-{i}.log")
            for i, link in enumerate(links, 1)
        ]
        procs.extend(sims)
        gw = start_gateway(tmp, gateway_config(tmp, broker, links, scenario.batch, window, gps=gps))
        procs.append(gw)
        rss = RssSampler(gw.pid).start()

        def alive() -> None:
            for name, proc in (("gateway", gw), *(("simulator", sim) for sim in sims)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{_tail(tmp)}")
            if not broker.running:
                raise RuntimeError(f"mosquitto exited: {broker.log_tail()}")

        deadline = time.monotonic() + START_TIMEOUT_S
        while sub.first_ts is None:
            alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no event within {START_TIMEOUT_S:g} s:\n{_tail(tmp)}")
            time.sleep(0.02)
        _wait(warmup, alive)

        pids = (gw.pid, broker.pid, *(sim.pid for sim in sims))
        cpu0 = [proc_cpu_s(pid) for pid in pids]
        own0 = time.process_time()
        events0, messages0, t0 = sub.events, sub.messages, time.monotonic()
        spy = start_profiler(gw.pid, seconds, profile) if profile is not None else None
        sub.sampling = True
        _wait(seconds, alive)
        sub.sampling = False
        events1, messages1, t1 = sub.events, sub.messages, time.monotonic()
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        own1 = time.process_time()
        cpu1 = [proc_cpu_s(pid) for pid in pids]
        hwm_kb = proc_status_kb(gw.pid, "VmHWM")
        elapsed = t1 - t0

        stopped_at = time.time()
        stop_process(gw, STOP_TIMEOUT_S)
        rss.stop()
        # what the gateway delivered while stopping: wait until the subscriber sees no more (bounded)
        last, quiet_since, deadline = sub.events, time.monotonic(), time.monotonic() + 5.0
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
            if sub.events != last:
                last, quiet_since = sub.events, time.monotonic()
        for sim in sims:
            stop_process(sim, 10.0)

        log = (tmp / "gateway.log").read_text(errors="replace")
        if show_log:
            print(log, file=sys.stderr)
        device, loop = parse_summary(log)
        if not loop:
            raise RuntimeError(f"no summary in the gateway's log:\n{log[-3000:]}")
        read = int(device.get("emitted", 0) + device.get("dropped", 0))
        reading_s = max(1e-9, stopped_at - (sub.first_ts or stopped_at))
        lat = [x * 1000 for x in sub.latencies]
        cpu = [(b - a) / elapsed * 100 for a, b in zip(cpu0, cpu1, strict=True)]
        known = {"emitted", "dropped", "restarts"}
        return Result(
            scenario=scenario.name,
            delivered_per_s=(events1 - events0) / elapsed,
            messages_per_s=(messages1 - messages0) / elapsed,
            offered_per_s=read / reading_s,
            gw_cpu_pct=cpu[0],
            sim_cpu_pct=sum(cpu[2:]),
            broker_cpu_pct=cpu[1],
            sub_cpu_pct=(own1 - own0) / elapsed * 100,
            rss_max_mb=max(rss.max_kb, hwm_kb) / 1024,
            p50_ms=_percentile(lat, 0.50),
            p99_ms=_percentile(lat, 0.99),
            latency_samples=len(lat),
            read=read,
            delivered=sub.events,
            committed=int(loop.get("committed", 0)),
            left_in_buffer=left_in_buffer(tmp / "buffer.db"),
            queue_dropped=int(loop.get("queue_dropped", 0)),
            bytes_skipped=int(device.get("bytes_skipped", 0)),
            frames_rejected=int(device.get("frames_rejected", 0)),
            overflow_bytes=int(device.get("overflow_bytes", 0)),
            lag_max_ms=loop.get("lag_max_ms", float("nan")),
            lag_over_10ms=int(loop.get("over_10ms", 0)),
            lag_over_50ms=int(loop.get("over_50ms", 0)),
            lag_samples=int(loop.get("samples", 0)),
            restarts=int(device.get("restarts", 0)),
            counters={k: int(v) for k, v in device.items() if k not in known},
        )
    finally:
        tear_down(procs, rss, sub, broker, tmp)


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording process ``pid`` for ``seconds`` into ``out`` (raw stacks, 250 samples/s, without
    stopping the gateway: ``--nonblocking``). py-spy is a dev dependency; it needs ptrace (root, or
    ``kernel.yama.ptrace_scope`` 0)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", "250", "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tear_down(
    procs: Sequence[subprocess.Popen[bytes]],
    rss: RssSampler | None,
    sub: Subscriber | None,
    broker: Mosquitto,
    tmp: Path,
) -> None:
    """Everything a run started, stopped in reverse, and its temporary directory removed."""
    for proc in reversed(procs):
        _kill(proc)
    if rss is not None:
        rss.stop()
    if sub is not None:
        sub.stop()
    broker.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _tail(tmp: Path) -> str:
    parts = []
    for name in ("gateway.log", "sim.log"):
        with contextlib.suppress(OSError):
            parts.append(f"--- {name}\n" + "\n".join((tmp / name).read_text().splitlines()[-20:]))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Output


def cpu_us_per_event(r: Result) -> float:
    """The gateway's CPU time per delivered event, in µs (CPU % of one core over events/s): the figure that
    decides how many readers a slower cabinet CPU carries, steadier than events/s on a shared machine."""
    return r.gw_cpu_pct / 100 * 1e6 / r.delivered_per_s if r.delivered_per_s else float("nan")


COLUMNS: tuple[tuple[str, str, Callable[[Result], object]], ...] = (
    ("run", "<7", lambda r: ""),
    ("deliv ev/s", ">10,.0f", lambda r: r.delivered_per_s),
    ("msg/s", ">8,.0f", lambda r: r.messages_per_s),
    ("offered/s", ">9,.0f", lambda r: r.offered_per_s),
    ("gw CPU%", ">7.0f", lambda r: r.gw_cpu_pct),
    ("us/ev", ">6.1f", cpu_us_per_event),
    ("RSS MB", ">6.1f", lambda r: r.rss_max_mb),
    ("p50 ms", ">7.1f", lambda r: r.p50_ms),
    ("p99 ms", ">7.1f", lambda r: r.p99_ms),
    ("read", ">8d", lambda r: r.read),
    ("delivered", ">9d", lambda r: r.delivered),
    ("q.drop", ">7d", lambda r: r.queue_dropped),
    ("skipped", ">7d", lambda r: r.bytes_skipped),
    ("lag max", ">7.1f", lambda r: r.lag_max_ms),
    (">10ms", ">5d", lambda r: r.lag_over_10ms),
    (">50ms", ">5d", lambda r: r.lag_over_50ms),
    ("sim/brk/sub CPU%", ">16", lambda r: f"{r.sim_cpu_pct:.0f}/{r.broker_cpu_pct:.0f}/{r.sub_cpu_pct:.0f}"),
    ("speed ms", ">8.0f", lambda r: r.speed_ms),
)


def _width(spec: str) -> int:
    return int(re.sub(r"[^0-9].*$", "", spec.lstrip("<>^")) or 0)


def header() -> str:
    return " ".join(f"{name:{spec[0]}{_width(spec)}}" for name, spec, _ in COLUMNS)


def row(label: str, r: Result) -> str:
    cells = [f"{label:<7}"]
    for _name, spec, get in COLUMNS[1:]:
        value = get(r)
        cells.append(f"{value:{spec}}" if not isinstance(value, str) else f"{value:>{_width(spec)}}")
    return " ".join(cells)


def median_result(results: Sequence[Result]) -> Result:
    """Each numeric figure's median over ``results`` (so the row mixes runs; counters are medians too)."""
    first = results[0]
    values: dict[str, Any] = {}
    for name in first.__dataclass_fields__:
        items = [getattr(r, name) for r in results]
        if isinstance(items[0], bool | str | dict):
            values[name] = items[0]
        elif isinstance(items[0], int):
            values[name] = int(statistics.median(items))
        else:
            values[name] = statistics.median(items)
    return Result(**values)


def verdicts(name: str, m: Result) -> Iterator[str]:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    us = cpu_us_per_event(m)
    if name == "batch1":
        rate = m.delivered_per_s
        yield f"{mark(rate >= 8000)} >= 8,000 events/s, one event per message: {rate:,.0f}"
        yield f"{mark(us <= 40)} <= 40 us of gateway CPU per event, one per message: {us:.1f} us"
    if name == "batch50":
        yield f"{mark(m.delivered_per_s >= 50_000)} >= 50,000 events/s batched: {m.delivered_per_s:,.0f}"
        yield f"{mark(us <= 12)} <= 12 us of gateway CPU per event, batched: {us:.1f} us"
    if name == "latency":
        yield f"{mark(m.p99_ms <= 50)} p99 <= 50 ms at 1,000 events/s: {m.p99_ms:.1f} ms (p50 {m.p50_ms:.1f})"
    yield f"{mark(m.rss_max_mb <= 60)} RSS <= 60 MB: {m.rss_max_mb:.1f} MB"
    yield (
        f"{mark(m.lag_max_ms < UART_FILL_MS / 4 and m.bytes_skipped == 0 and m.overflow_bytes == 0)} "
        f"serial reader not starved: loop lag max {m.lag_max_ms:.1f} ms (a 115,200 baud UART fills 4 KiB "
        f"in {UART_FILL_MS:.0f} ms), framer bytes skipped {m.bytes_skipped}, link overflow {m.overflow_bytes}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3); the median too")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="only this scenario")
    parser.add_argument(
        "--rate", type=float, default=None, help="override the simulator's --rate of every scenario run"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help=f"gateway max_inflight = broker max_inflight_messages ({WINDOW})",
    )
    parser.add_argument(
        "--subscriber", choices=sorted(SUBSCRIBERS), default="raw", help="raw socket (default) or paho"
    )
    parser.add_argument("--show-log", action="store_true", help="print each gateway log to stderr")
    parser.add_argument(
        "--readers",
        type=int,
        default=1,
        help="simulated readers, each on its own pty and device, sharing the scenario's rate (default 1)",
    )
    parser.add_argument(
        "--stamp",
        choices=("off", "on", "both"),
        default="off",
        help="on: a GNSS receiver (edgegw sim gps) beside the reader, whose reads carry its position "
        "(position_from); both: each run without then with, interleaved, a median of each (default off)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each run's gateway with py-spy over the measuring window into DIR/<scenario>-<run>.txt "
        "and print where its CPU goes, by part and in µs per event (bench.profile)",
    )
    args = parser.parse_args(argv)
    names = args.only or ["batch1", "batch50", "latency"]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    print(
        f"simulator -> pty -> edgegw run -> mosquitto -> {args.subscriber} subscriber (QoS 0); "
        f"{os.cpu_count()} CPUs; window {args.window}; "
        f"warm-up {args.warmup:g} s, measured {args.seconds:g} s, {args.runs} run(s) per scenario"
    )
    medians: dict[str, Result] = {}
    for name in names:
        scenario = SCENARIOS[name]
        if args.rate is not None:
            scenario = Scenario(scenario.name, scenario.batch, args.rate)
        print(f"\n== {name}: batch_max_events {scenario.batch}, simulator --rate {scenario.rate:,.0f}")
        print(header(), flush=True)
        stamps = {"off": [False], "on": [True], "both": [False, True]}[args.stamp]
        results: dict[bool, list[Result]] = {stamp: [] for stamp in stamps}
        for i in range(args.runs):
            for stamp in stamps:  # with --stamp both: without, then with, run after run (interleaved)
                speed = machine_speed_ms()
                label = f"#{i + 1}" + ("+pos" if stamp and len(stamps) > 1 else "")
                spied = None
                if args.profile is not None:
                    spied = args.profile / f"{name}{'-pos' if stamp else ''}-{i + 1}.txt"
                result = run_once(
                    scenario,
                    args.seconds,
                    args.warmup,
                    window=args.window,
                    subscriber=args.subscriber,
                    show_log=args.show_log,
                    stamp=stamp,
                    readers=args.readers,
                    profile=spied,
                )
                result.speed_ms = speed
                results[stamp].append(result)
                print(row(label, result), flush=True)
                if spied is not None:
                    raw = spied.read_text() if spied.exists() else ""
                    print(f"        profile {spied}:\n{summary(raw, cpu_us_per_event(result))}", flush=True)
                if result.missing > 0:
                    print(
                        f"        ! {result.missing} missing: delivered {result.delivered} + left in buffer "
                        f"{result.left_in_buffer} < committed {result.committed}"
                    )
        for stamp, runs in results.items():
            key = f"{name} stamped" if stamp and len(stamps) > 1 else name
            medians[key] = m = median_result(runs)
            print(row("med+pos" if stamp and len(stamps) > 1 else "median", m))
            extra = " ".join(f"{k}={v}" for k, v in sorted(m.counters.items()))
            print(
                f"        committed {m.committed}, left in buffer {m.left_in_buffer}, restarts {m.restarts}, "
                f"lag samples {m.lag_samples}, latency samples {m.latency_samples}; device counters: {extra}"
            )
    print("\ngoals:")
    for name, m in medians.items():
        for line in verdicts(name, m):
            print(f"  [{name}] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
