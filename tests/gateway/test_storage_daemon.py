"""Storage faults as a user meets them, with ``edgegw run`` in a child process: the buffer on a small tmpfs
that fills up while a simulated reader streams and the broker is down, a start on a full disk after kill
-9, a damaged buffer file at start, and a directory the gateway cannot write. The gateway must stay up,
count what it drops, say so on ``/healthz``, deliver what it holds, and go back to normal by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.delivery.buffer import SqliteBuffer
from tests.broker import Mosquitto
from tests.e2e.harness import Collector
from tests.gateway.buffer_suite import DAMAGE, big_evs, moved_aside
from tests.gateway.ops_helpers import http_get, r2000, samples, value, write_gateway
from tests.gateway.test_daemon import EDGEGW, Daemon
from tests.storage import fill_disk
from tests.waiting import until_probe

pytestmark = pytest.mark.timeout(240)

DISK_FULL = "disk full: dropping oldest (drop_oldest)"
BUFFER_EXTRA = "  disk_reserve: 1MiB\n"


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[R2000Simulator]:
    async with serve_pty(
        tmp_path / "ttyR1", SimOptions(tags=40, rate=1000.0, seed=3, antennas=(1, 2))
    ) as sim:
        yield sim


@pytest.fixture
async def collector(broker: Mosquitto, request: pytest.FixtureRequest) -> AsyncIterator[Collector]:
    """A subscriber with a persistent session: what the gateway publishes while it reconnects is kept for
    it by the broker (persistence on), even across the broker's restart."""
    gateway_id = f"storage-{request.node.name.replace('_', '-')[:40]}"
    c = Collector(broker.host, broker.port, "edgegw", gateway_id, client_id=f"sub-{gateway_id}")
    assert await asyncio.to_thread(c.connected.wait, 10)
    yield c
    c.close()


def gateway_file(tmp_path: Path, buffer_dir: Path, collector: Collector, broker: Mosquitto) -> Path:
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id=collector.gateway_id,
        url=broker.url,
        devices=r2000("reader-1", tmp_path / "ttyR1"),
        mqtt_extra="    reconnect: {initial_s: 0.2, max_s: 1}\n",
    )
    text = config.read_text().replace(
        f"  path: {tmp_path / 'buffer.db'}\n", f"  path: {buffer_dir / 'buffer.db'}\n{BUFFER_EXTRA}"
    )
    config.write_text(text)
    return config


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return samples(body.decode())


async def health(port: int) -> tuple[int, str]:
    status, body = await http_get(port, "/healthz")
    return status, body.decode().strip()


async def wait_health(port: int, want: Callable[[int, str], bool], what: str) -> None:
    await until_probe(what, lambda: health(port), lambda answer: want(*answer), timeout=60)


async def wait_metric(port: int, name: str, want: Callable[[float], bool], **labels: str) -> None:
    await until_probe(
        f"{name}{labels}",
        lambda: scrape(port),
        lambda scraped: want(value(scraped, name, **labels)),
        timeout=60,
    )


def assert_no_crash(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.returncode is None, daemon.log()
    assert "Traceback" not in daemon.log()
    assert "CRITICAL" not in daemon.log()


async def test_disk_full_keeps_the_gateway_up_counts_drops_and_recovers(
    tmp_path: Path,
    small_fs: Callable[[int], Path],
    broker: Mosquitto,
    reader: R2000Simulator,
    collector: Collector,
) -> None:
    fs = small_fs(16 << 20)
    broker.stop()  # the uplink is down; the subscriber's session waits at the broker
    daemon = Daemon(gateway_file(tmp_path, fs, collector, broker))
    await daemon.start()
    try:
        port = await daemon.metrics_port()
        filler = fill_disk(fs, leave=2 << 20)
        await wait_health(port, lambda code, body: code == 503 and DISK_FULL in body, "disk full on /healthz")
        first = await scrape(port)
        assert value(first, "edgegw_buffer_disk_full") == 1
        assert value(first, "edgegw_events_dropped_total", reason="disk_full") > 0
        dropped = value(first, "edgegw_events_dropped_total", reason="disk_full")
        await wait_metric(port, "edgegw_events_dropped_total", lambda n: n > dropped, reason="disk_full")
        reads = value(first, "edgegw_device_events_emitted_total", device="reader-1")
        await wait_metric(
            port, "edgegw_device_events_emitted_total", lambda n: n > reads + 1000, device="reader-1"
        )
        assert_no_crash(daemon)  # the reader is still read, and what cannot be kept is counted

        # The broker comes back: what the buffer holds goes out, and new reads follow, disk still full.
        broker.start()
        held = value(await scrape(port), "edgegw_buffer_last_seq")
        await collector.wait_for("events committed before the broker came back", lambda r: bool(r.seqs()))
        await collector.wait_for(
            "new reads after the broker came back",
            lambda r: bool(r.seqs()) and r.seqs()[-1] > held + 300,
            timeout=120,
        )
        assert_no_crash(daemon)
        while_full = value(await scrape(port), "edgegw_events_dropped_total", reason="disk_full")

        # Space is freed: normal running, without a restart.
        filler.unlink()
        await wait_health(port, lambda code, body: (code, body) == (200, "ok"), "/healthz ok again")
        recovered = await scrape(port)
        assert value(recovered, "edgegw_buffer_disk_full") == 0
        after = int(value(recovered, "edgegw_buffer_last_seq"))
        dropped_when_back = value(recovered, "edgegw_events_dropped_total", reason="disk_full")
        acked = value(recovered, "edgegw_upstream_events_acked_total")
        # Reads are committed and acknowledged by the broker again (the subscriber, a slower client in this
        # test's own process, catches up through its queue at the broker: checked after the stop).
        await wait_metric(port, "edgegw_upstream_events_acked_total", lambda n: n > acked + 1000)
        final = await scrape(port)
        assert value(final, "edgegw_events_dropped_total", reason="disk_full") == dropped_when_back
        assert while_full <= dropped_when_back
        assert value(final, "edgegw_buffer_disk_full") == 0
        last = int(value(final, "edgegw_buffer_last_seq"))
        assert_no_crash(daemon)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(60) == 0
    finally:
        await daemon.kill()
    newest = f"{collector.gateway_id}:{last}"
    await collector.wait_for(f"seq {last} at the subscriber", lambda r: newest in r.by_id, timeout=180)
    received = collector.snapshot()
    assert received.conflicting_duplicates == []
    assert received.topics_ok
    # Once there was room again nothing was dropped: every seq from then on arrived.
    late = [s for s in received.seqs() if after < s <= last]
    assert late == list(range(after + 1, last + 1))
    assert "summary buffer" in daemon.log() and "disk_full=" in daemon.log()


async def test_kill_9_on_a_full_disk_then_a_start_on_it(
    tmp_path: Path,
    small_fs: Callable[[int], Path],
    broker: Mosquitto,
    reader: R2000Simulator,
    collector: Collector,
) -> None:
    fs = small_fs(16 << 20)
    broker.stop()
    config = gateway_file(tmp_path, fs, collector, broker)
    daemon = Daemon(config)
    await daemon.start()
    try:
        port = await daemon.metrics_port()
        fill_disk(fs, leave=2 << 20)
        await wait_health(port, lambda code, body: code == 503 and DISK_FULL in body, "disk full on /healthz")
        daemon.signal(signal.SIGKILL)
        assert await daemon.wait(30) == -signal.SIGKILL
    finally:
        await daemon.kill()
    fill_disk(fs, name="filler-2")  # and the last bytes too

    restart = config.with_name("restart.yaml")  # the same config, a log of its own
    restart.write_text(config.read_text())
    again = Daemon(restart)
    await again.start()
    try:
        port = await again.metrics_port()
        await again.wait_log(r"ready: ")
        await wait_health(
            port, lambda code, body: code == 503 and "disk full" in body, "disk full after start"
        )
        assert_no_crash(again)
        broker.start()
        await collector.wait_for("what the killed gateway had buffered", lambda r: len(r.seqs()) > 100)
        assert_no_crash(again)
        again.signal(signal.SIGTERM)
        assert await again.wait(60) == 0
    finally:
        await again.kill()
    assert collector.snapshot().conflicting_duplicates == []


@pytest.mark.parametrize("damage", ["garbage header", "truncated to a third", "empty"])
async def test_a_damaged_buffer_at_start_is_moved_aside_and_the_devices_are_read(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator, collector: Collector, damage: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = await SqliteBuffer.open(state / "buffer.db")
    for k in range(5):
        await old.append(big_evs(100 * k, 100))
    last = old.stats().last_seq
    await old.close()
    DAMAGE[damage](state / "buffer.db")

    daemon = Daemon(gateway_file(tmp_path, state, collector, broker))
    await daemon.start()
    try:
        port = await daemon.metrics_port()
        await daemon.wait_log(r"ERROR edgegw\.buffer: buffer .* is damaged .*: moved it aside to ")
        [aside] = moved_aside(state / "buffer.db")
        assert str(aside) in daemon.log()
        assert value(await scrape(port), "edgegw_buffer_corrupt_files_total") == 1
        await collector.wait_for("reads from the fresh buffer", lambda r: len(r.seqs()) > 200)
        assert min(collector.snapshot().seqs()) > last  # no id of the old file is handed out again
        assert_no_crash(daemon)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(60) == 0
    finally:
        await daemon.kill()


def _run_once(config: Path, *, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    return subprocess.run(
        [*prefix, EDGEGW, "run", "-c", str(config)], capture_output=True, text=True, timeout=60, check=False
    )


def _one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "CRITICAL" in line]
    assert "edgegw cannot start: cannot open buffer" in line
    for needle in needles:
        assert needle in line, line


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may enter (pytest's own are root's alone), for a gateway run as nobody."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def test_a_read_only_filesystem_is_one_clear_line(tmp_path: Path, small_fs: Callable[[int], Path]) -> None:
    fs = small_fs(1 << 20)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    config = write_gateway(tmp_path / "gateway.yaml", gateway_id="ro", url="mqtt://127.0.0.1:1")
    config.write_text(config.read_text().replace(str(tmp_path / "buffer.db"), str(fs / "buffer.db")))
    _one_line_error(_run_once(config), str(fs / "buffer.db"), "mounted read-only")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_a_buffer_of_another_user_is_one_clear_line(shared_dir: Path) -> None:
    config = write_gateway(shared_dir / "gateway.yaml", gateway_id="owner", url="mqtt://127.0.0.1:1")
    config.chmod(0o644)
    (shared_dir / "buffer.db").write_bytes(b"")
    (shared_dir / "buffer.db").chmod(0o600)  # root's; the gateway runs as nobody
    shared_dir.chmod(0o777)  # the directory is writable: only the file is not
    done = _run_once(config, as_nobody=True)
    _one_line_error(done, str(shared_dir / "buffer.db"), "not readable and writable by uid 65534", "uid 0")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another user")
def test_a_directory_it_cannot_write_is_one_clear_line(shared_dir: Path) -> None:
    config = write_gateway(shared_dir / "gateway.yaml", gateway_id="dir", url="mqtt://127.0.0.1:1")
    config.chmod(0o644)  # nobody reads the config, but may not write in the directory
    done = _run_once(config, as_nobody=True)
    _one_line_error(
        done, str(shared_dir / "buffer.db"), f"directory {shared_dir} is not writable by uid 65534"
    )
