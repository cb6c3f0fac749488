"""``edgegw run`` as systemd runs it, in a child process, against real parts: simulated R2000 readers on
pseudo-terminals, the private mosquitto and a subscriber (tests/e2e/harness.py), systemd's end of
NOTIFY_SOCKET (:class:`FakeSystemd`), signals (SIGTERM, SIGHUP), the metrics endpoint, ``edgegw status``,
and the log as journald would get it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.delivery.buffer import SqliteBuffer
from tests.broker import Mosquitto, free_port
from tests.e2e.harness import Collector, Received, missing_seqs
from tests.gateway.ops_helpers import http_get, r2000, samples, value, write_gateway
from tests.gateway.test_sdnotify import FakeSystemd, Message
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: \S")


class Daemon:
    """``edgegw run -c CONFIG`` in a child process, stderr to a log file beside the config."""

    def __init__(
        self, config: Path, *, env: dict[str, str] | None = None, log_level: str | None = "info"
    ) -> None:
        self.config = config
        self.env = env or {}
        self.log_level = log_level
        self.log_path = config.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Daemon:
        args = [EDGEGW, "run", "-c", str(self.config)]
        if self.log_level:
            args += ["--log-level", self.log_level]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")
        }
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdout=log, stderr=log, env={**env, "PYTHONUNBUFFERED": "1", **self.env}
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log past offset ``after``, waiting for it."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            assert self.proc is not None
            match = re.compile(pattern, re.M).search(self.log(), after)
            if match:
                found.append(match)
            return bool(match) or self.proc.returncode is not None

        await until(f"{pattern!r} in the gateway's log", seen, timeout)
        assert found, (
            f"the gateway exited ({self.proc and self.proc.returncode}) before {pattern!r}:\n{self.log()}"
        )
        return found[0]

    async def metrics_port(self) -> int:
        match = await self.wait_log(r"metrics: serving http://127\.0\.0\.1:(\d+)/metrics")
        return int(match.group(1))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the gateway did not exit within {timeout} s; log:\n{self.log()}") from None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def readers(tmp_path: Path) -> AsyncIterator[dict[str, R2000Simulator]]:
    options = {
        "reader-1": SimOptions(tags=30, rate=300.0, seed=1, antennas=(1, 2)),
        "reader-2": SimOptions(tags=30, rate=300.0, seed=2, antennas=(1, 2)),
    }
    async with (
        serve_pty(tmp_path / "ttyR1", options["reader-1"]) as one,
        serve_pty(tmp_path / "ttyR2", options["reader-2"]) as two,
    ):
        yield {"reader-1": one, "reader-2": two}


@pytest.fixture
async def collector(broker: Mosquitto, request: pytest.FixtureRequest) -> AsyncIterator[Collector]:
    gateway_id = f"daemon-{request.node.name.replace('_', '-')[:40]}"
    c = Collector(broker.host, broker.port, "edgegw", gateway_id, client_id=f"sub-{gateway_id}")
    await asyncio.to_thread(c.connected.wait, 10)
    yield c
    c.close()


@pytest.fixture
def notify_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:  # short: a socket path fits in 108 bytes
        yield os.path.join(directory, "notify")


def reads_of(received: Received, device: str) -> int:
    return sum(1 for m in received.by_id.values() if m["device"] == device and m["kind"] == "rfid.read")


def states_of(received: Received, device: str) -> list[str]:
    messages = sorted(received.of_kind("device.status"), key=lambda m: m["seq"])
    return [m["data"]["state"] for m in messages if m["device"] == device]


async def stored_seqs(buffer_path: Path) -> tuple[set[int], int]:
    """The seqs still in a stopped gateway's buffer, and the highest seq it ever assigned."""
    buffer = await SqliteBuffer.open(buffer_path)
    try:
        rows = await buffer.read(0, 10_000_000)
        return {r.seq for r in rows}, buffer.stats().last_seq
    finally:
        await buffer.close()


async def assert_every_committed_event_delivered_or_kept(collector: Collector, buffer_path: Path) -> None:
    kept, last = await stored_seqs(buffer_path)
    assert last > 0
    delivered_needed = set(range(1, last + 1)) - kept
    await collector.wait_for(
        f"every seq up to {last} delivered or kept in the buffer",
        lambda r: delivered_needed <= set(r.seqs()),
    )
    received = collector.snapshot()
    assert received.conflicting_duplicates == []
    assert received.topics_ok


# -- systemd ------------------------------------------------------------------------------------------------


async def test_systemd_gets_ready_watchdog_status_reloading_and_stopping(
    tmp_path: Path, notify_path: str
) -> None:
    systemd = FakeSystemd(notify_path)
    # The broker is unreachable: READY must not wait for it.
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="notify", url=f"mqtt://127.0.0.1:{free_port()}"
    )
    daemon = Daemon(config, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
    await daemon.start()
    messages: list[Message] = []

    async def receive_until(predicate: str) -> None:
        while not any(predicate in m.fields for m in messages):
            messages.append(await systemd.next(deadline=30))

    try:
        await receive_until("READY")
        assert messages[0].fields["READY"] == "1"
        assert "upstream NOT connected" in messages[0].fields["STATUS"]
        await receive_until("WATCHDOG")
        while not any("STATUS" in m.fields and len(m.fields) == 1 for m in messages):  # a periodic STATUS
            messages.append(await systemd.next(deadline=30))
        daemon.signal(signal.SIGHUP)
        await receive_until("RELOADING")
        mark = len(messages)
        while not any("READY" in m.fields for m in messages[mark:]):
            messages.append(await systemd.next(deadline=30))
        daemon.signal(signal.SIGTERM)
        await receive_until("STOPPING")
        assert await daemon.wait(30) == 0
        messages += systemd.drain()
    finally:
        await daemon.kill()
        systemd.close()
    assert {m.pid for m in messages} == {daemon.pid}
    fields = [m.fields for m in messages]
    periodic = next(f["STATUS"] for f in fields if list(f) == ["STATUS"])
    assert re.search(
        r"^\d+\.\d events/s in, \d+\.\d out; backlog 0; upstream NOT connected; devices 0/0 up", periodic
    )
    reloading = next(f for f in fields if "RELOADING" in f)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert next(f for f in fields if "WATCHDOG" in f) == {"WATCHDOG": "1"}
    stop = next(i for i, f in enumerate(fields) if "STOPPING" in f)
    assert all("READY" not in f for f in fields[stop:])
    assert "reload applied: 0 device(s) restarted" in daemon.log()


async def test_sigterm_under_load_exits_within_5_s_and_loses_nothing_committed(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    options = SimOptions(tags=200, rate=5000.0, seed=11, antennas=(1, 2))
    async with serve_pty(tmp_path / "ttyR1", options) as reader:
        config = write_gateway(
            tmp_path / "gateway.yaml",
            gateway_id=collector.gateway_id,
            url=broker.url,
            devices=r2000("reader-1", tmp_path / "ttyR1"),
        )
        daemon = Daemon(config)
        await daemon.start()
        try:
            await collector.wait_for("3000 events delivered", lambda r: len(r.by_id) >= 3000)
            assert reader.stats.tag_frames_sent > 3000  # the reader is still going: a stop under load
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(5) == 0  # the bound systemd's TimeoutStopSec would enforce
        finally:
            await daemon.kill()
    log = daemon.log()
    assert "committed everything queued; closing upstream" in log
    assert "summary device=reader-1" in log
    await assert_every_committed_event_delivered_or_kept(collector, tmp_path / "buffer.db")


# -- reload -------------------------------------------------------------------------------------------------


def device_file(path: Path, name: str, tty: Path, antennas: str) -> None:
    path.write_text(f"name: {name}\ndriver: uhf-r2000\nport: {tty}\nantennas: {antennas}\n")


async def test_sighup_restarts_only_the_changed_device_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator], collector: Collector
) -> None:
    devices = tmp_path / "devices.d"
    devices.mkdir()
    device_file(devices / "reader-1.yaml", "reader-1", tmp_path / "ttyR1", "{1: lane1-in, 2: lane1-out}")
    device_file(devices / "reader-2.yaml", "reader-2", tmp_path / "ttyR2", "{1: lane2-in, 2: lane2-out}")
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id=collector.gateway_id, url=broker.url, devices_dir="devices.d"
    )
    daemon = Daemon(config)
    await daemon.start()
    try:
        await collector.wait_for(
            "reads from both", lambda r: reads_of(r, "reader-1") >= 200 and reads_of(r, "reader-2") >= 200
        )
        device_file(devices / "reader-2.yaml", "reader-2", tmp_path / "ttyR2", "{1: lane2-a, 2: lane2-b}")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_log(
            r"reload applied: 1 device\(s\) restarted \(reader-2\), 0 added, 0 removed, 1 unchanged"
        )

        def renamed(r: Received) -> bool:
            return any(m["data"].get("antenna_name") == "lane2-a" for m in r.of_kind("rfid.read"))

        await collector.wait_for("reader-2's reads with the new antenna names", renamed)
        await collector.wait_for("more reads from reader-1", lambda r: reads_of(r, "reader-1") >= 400)
        for sim in readers.values():
            sim.silence(3600)
        sent = readers["reader-1"].stats.tag_frames_sent
        await collector.wait_for(f"all {sent} reads of reader-1", lambda r: reads_of(r, "reader-1") >= sent)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    await assert_every_committed_event_delivered_or_kept(collector, tmp_path / "buffer.db")
    received = collector.snapshot()
    seqs = received.seqs()
    assert missing_seqs(seqs, seqs[-1]) == []
    assert reads_of(received, "reader-1") == sent  # the unchanged reader lost nothing, not even a frame
    assert states_of(received, "reader-1")[:1] == ["connected"]
    assert states_of(received, "reader-1").count("connected") == 1  # never restarted
    assert states_of(received, "reader-2")[:3] == ["connected", "stopped", "connected"]
    assert "Traceback" not in daemon.log()


async def test_sighup_with_a_broken_file_keeps_the_old_config_running(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator], collector: Collector
) -> None:
    devices = tmp_path / "devices.d"
    devices.mkdir()
    device_file(devices / "reader-1.yaml", "reader-1", tmp_path / "ttyR1", "{1: lane1-in, 2: lane1-out}")
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id=collector.gateway_id, url=broker.url, devices_dir="devices.d"
    )
    daemon = Daemon(config)
    await daemon.start()
    try:
        await collector.wait_for("100 reads", lambda r: reads_of(r, "reader-1") >= 100)
        broken = devices / "reader-1.yaml"
        broken.write_text(
            f"name: reader-1\ndriver: uhf-r2000\nport: {tmp_path / 'ttyR1'}\nbaudrate: 12345\nantenas: {{}}\n"
        )
        device_file(devices / "reader-2.yaml", "reader-2", tmp_path / "ttyR2", "{1: [not, a, name]}")
        daemon.signal(signal.SIGHUP)
        refused = await daemon.wait_log(
            r"reload refused: .* has 3 problem\(s\); still running the previous configuration"
        )
        log = daemon.log()
        assert f"reload: {devices}/reader-1.yaml:4: baudrate: " in log
        assert f"reload: {devices}/reader-1.yaml:5: antenas: unknown key (did you mean 'antennas'?)" in log
        assert f"reload: {devices}/reader-2.yaml:4: antennas" in log
        before = reads_of(collector.snapshot(), "reader-1")
        await collector.wait_for("reads going on", lambda r: reads_of(r, "reader-1") >= before + 200)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    received = collector.snapshot()
    assert states_of(received, "reader-1")[:1] == ["connected"]
    assert states_of(received, "reader-1").count("connected") == 1
    assert all(m["device"] == "reader-1" for m in received.by_id.values())
    assert "reload applied" not in daemon.log()[refused.end() :]


# -- metrics and status -------------------------------------------------------------------------------------


async def test_metrics_healthz_and_status_once_of_a_running_gateway(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator], collector: Collector
) -> None:
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id=collector.gateway_id,
        url=broker.url,
        devices=r2000("reader-1", tmp_path / "ttyR1") + r2000("reader-2", tmp_path / "ttyR2"),
    )
    daemon = Daemon(config)
    await daemon.start()
    try:
        port = await daemon.metrics_port()
        await collector.wait_for(
            "reads from both", lambda r: reads_of(r, "reader-1") >= 100 and reads_of(r, "reader-2") >= 100
        )
        code, body = await http_get(port, "/metrics")
        assert code == 200
        parsed = samples(body.decode())
        assert value(parsed, "edgegw_events_in_total", device="reader-1", kind="rfid.read") >= 100
        assert value(parsed, "edgegw_upstream_connected") == 1
        assert value(parsed, "edgegw_device_up", device="reader-2") == 1
        assert await http_get(port, "/healthz") == (200, b"ok\n")

        done = await asyncio.to_thread(
            subprocess.run,
            [EDGEGW, "status", "--once", "--url", f"127.0.0.1:{port}", "--interval", "0.5"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert out.startswith(f"edgegw status: http://127.0.0.1:{port}/metrics\n")
        assert f"gateway   {collector.gateway_id}, healthy" in out
        assert "upstream  connected (in flight" in out
        assert re.search(r"^rates     [\d,]+\.\d events/s in, [\d,]+\.\d out \(over 0\.\d s\)$", out, re.M)
        assert re.search(r"^reader-1  connected +[\d,]+\.\d +[\d,]+\.\d +[\d,]+ +0 +0 +0 +0$", out, re.M)
        assert re.search(r"^reader-2  connected ", out, re.M)

        # Found through the config file's metrics.listen too, which here is port 0: it says so.
        done = await asyncio.to_thread(
            subprocess.run,
            [EDGEGW, "status", "--once", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert "port 0 (any free port): give --url" in done.stderr
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    done = await asyncio.to_thread(
        subprocess.run,
        [EDGEGW, "status", "--once", "--url", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"cannot read http://127.0.0.1:{port}/metrics" in done.stderr
    assert "is the gateway running" in done.stderr


# -- logging ------------------------------------------------------------------------------------------------


async def test_no_secret_in_the_log_at_debug_level_even_across_a_reload(
    tmp_path: Path, broker: Mosquitto
) -> None:
    secret, other = "s3cr3t-Pa55-w0rd", "0ther-s3cr3t-K3y"
    (tmp_path / "mqtt.pass").write_text(secret + "\n")
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="secret",
        url=broker.url,
        mqtt_extra="    username: gateway\n    password_file: mqtt.pass\n",
    )
    daemon = Daemon(config, log_level="debug")
    await daemon.start()
    try:
        await daemon.wait_log(r"MQTT connected to ")
        (tmp_path / "mqtt.pass").write_text(other + "\n")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_log(r"reload: upstream\.mqtt\.password changed, which only a restart applies")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    log = daemon.log()
    assert " DEBUG edgegw: config: Config(" in log  # the whole config was logged, at debug
    assert "username='gateway'" in log
    assert secret not in log and other not in log
    for line in log.splitlines():
        assert LINE.match(line), line


async def test_levels_per_logger_from_the_config_and_on_reload(tmp_path: Path) -> None:
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="levels",
        url=f"mqtt://127.0.0.1:{free_port()}",
        extra="",
    )
    text = config.read_text().replace(
        "  id: levels\n", "  id: levels\n  log_level: error\n  log_levels: {edgegw.forwarder: warning}\n"
    )
    config.write_text(text)
    daemon = Daemon(config, log_level=None)
    await daemon.start()
    try:
        await daemon.wait_log(
            r"WARNING edgegw\.forwarder: MQTT 127\.0\.0\.1:\d+: .*retrying"
        )  # on at warning
        config.write_text(text.replace("{edgegw.forwarder: warning}", "{edgegw.reload: info}"))
        daemon.signal(signal.SIGHUP)
        await daemon.wait_log(r"INFO edgegw\.reload: reload applied: ")
        mark = len(daemon.log())
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    log = daemon.log()
    assert "INFO edgegw: " not in log  # the root stays at error: "buffer open", "ready" are not there
    assert "edgegw.forwarder" not in log[mark:]  # back to the root's level after the reload


async def test_under_journald_lines_carry_the_priority_and_no_timestamp(tmp_path: Path) -> None:
    config = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="journal", url=f"mqtt://127.0.0.1:{free_port()}"
    )
    log_path = config.with_suffix(".log")
    log_path.touch()
    st = os.stat(log_path)  # stderr is this file: as if it were the journal's stream
    daemon = Daemon(config, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    await daemon.start()
    try:
        await daemon.wait_log(r"^<6>INFO edgegw: ready: ")
        await daemon.wait_log(r"^<4>WARNING edgegw\.forwarder: MQTT 127\.0\.0\.1:\d+: ")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    finally:
        await daemon.kill()
    for line in daemon.log().splitlines():
        assert re.match(r"^<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: \S", line), line
