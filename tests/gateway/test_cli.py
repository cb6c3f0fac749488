"""The ``edgegw`` command as an operator runs it: the installed console script, in a child process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protocols import r2000
from tests.broker import Mosquitto

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "roadside-lane.yaml"
CASES = Path(__file__).with_name("config_cases")

pytestmark = pytest.mark.timeout(90)


def edgegw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEGW, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_check_accepts_the_example() -> None:
    done = edgegw("check", "-c", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{EXAMPLE}: OK (2 devices)"


def test_check_prints_every_problem_as_file_line_field_and_exits_2() -> None:
    case = CASES / "all_problems_collected"
    done = edgegw("check", "-c", "gateway.yaml", cwd=case)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) >= 5
    for line in lines:
        assert re.match(r"^[^:]+\.yaml:\d+: ", line), line
    assert "gateway.yaml:2: gateway.id: " in done.stderr
    assert done.stdout == ""


def test_run_refuses_a_broken_config_before_opening_anything(tmp_path: Path) -> None:
    buffer = tmp_path / "buffer.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: gw}}\nbuffer: {{path: {buffer}}}\nupstream: {{mqtt: {{url: mqtt://127.0.0.1:1}}}}\n"
        f"devices:\n  - {{name: r, driver: uhf-r2000, port: {tmp_path / 'tty'}, baudrate: 12345}}\n"
    )
    done = edgegw("run", "-c", str(config))
    assert done.returncode == 2
    assert f"{config}:5: devices[0].baudrate: " in done.stderr
    assert not buffer.exists()


async def test_sim_serves_a_reader_on_tcp_until_terminated() -> None:
    sim = await asyncio.create_subprocess_exec(
        EDGEGW, "sim", "uhf-r2000", "--tcp", "127.0.0.1:0", "--rate", "100",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        line = (await asyncio.wait_for(sim.stdout.readline(), 30)).decode()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(r2000.get_firmware_version())
        framer = r2000.R2000Framer()
        frames: list[r2000.Frame] = []
        async with asyncio.timeout(10):
            while not frames:
                frames = framer.feed(await reader.read(256))
        assert isinstance(r2000.parse_reply(frames[0]), r2000.FirmwareVersion)
        writer.close()
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), 30) == 0
    finally:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()


async def demo(*args: str, until: str, interrupt: bool = False) -> tuple[int, str]:
    """Run ``edgegw demo`` until ``until`` appears in its output (then Ctrl-C it if ``interrupt``)."""
    proc = await asyncio.create_subprocess_exec(
        EDGEGW, "demo", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    out = ""
    try:
        async with asyncio.timeout(60):
            while until not in out:
                line = await proc.stdout.readline()
                assert line, f"demo ended before {until!r}:\n{out}"
                out += line.decode()
            if interrupt:
                proc.send_signal(signal.SIGINT)
            out += (await proc.stdout.read()).decode()
            return await proc.wait(), out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_demo_publishes_to_the_broker_it_is_given_and_stops_on_ctrl_c(broker: Mosquitto) -> None:
    code, out = await demo("--mqtt", broker.url, "--rate", "50", until="lane-demo:20 ", interrupt=True)
    assert code == 0, out
    assert f"upstream is the MQTT broker at {broker.url}" in out
    assert re.search(
        r"lane-demo:\d+  reader-1  lane1-(in|out)  EPC [0-9A-F]{24}  -\d+ dBm  9\d\d\.\d MHz", out
    )
    assert re.search(r"lane-demo:\d+  reader-2  lane2-(in|out)  EPC ", out)
    assert "gateway status: online" in out
    assert re.search(r"edgegw demo: stopped; \d+ events committed", out)
    assert "Traceback" not in out


async def test_demo_on_the_console() -> None:
    code, out = await demo("--console", "--duration", "2", until="edgegw demo: stopped")
    assert code == 0, out
    assert "--console given: showing the upstream messages on the console" in out
    assert re.search(r'^edgegw/lane-demo/reader-\d/rfid\.read \{"id":"lane-demo:\d+","seq":\d+,', out, re.M)
    assert "Traceback" not in out
