"""Hot reload: what a new config changes (:func:`gateway.reload.plan_reload`, on configs read by the real
loader), and :meth:`Gateway.reload` on a gateway run in this process with simulated readers on
pseudo-terminals and the private mosquitto: changed devices restart alone, the buffer and the upstream
session stay, an invalid file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.app import Gateway
from gateway.config import Config, load_config
from gateway.delivery.forwarder import Forwarder
from gateway.reload import plan_reload, same_device
from tests.broker import Mosquitto
from tests.gateway.ops_helpers import http_get, r2000, running, samples, value, write_gateway
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

BROKER = "mqtt://127.0.0.1:1883"


def load(tmp_path: Path, devices: str = "", **kwargs: str) -> Config:
    path = write_gateway(tmp_path / "gateway.yaml", gateway_id="gw-1", url=BROKER, devices=devices, **kwargs)
    return load_config(path, environ={"MQTT_PASSWORD": "hunter2-old"})


def two_readers(tmp_path: Path, second: str = "{1: lane2-in, 2: lane2-out}", extra: str = "") -> str:
    return r2000("reader-1", tmp_path / "ttyR1") + r2000("reader-2", tmp_path / "ttyR2", second, extra)


# -- the plan -----------------------------------------------------------------------------------------------


def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    old = load(tmp_path, two_readers(tmp_path))
    plan = plan_reload(old, load(tmp_path, two_readers(tmp_path)))
    assert plan.unchanged == ["reader-1", "reader-2"]
    assert (plan.added, plan.changed, plan.removed, plan.needs_restart) == ([], [], [], [])
    assert not plan.logging_changed and not plan.touches_devices


def test_a_device_changed_added_and_removed(tmp_path: Path) -> None:
    old = load(tmp_path, two_readers(tmp_path))
    devices = (
        r2000("reader-2", tmp_path / "ttyR2", "{1: lane2-a, 2: lane2-b}")  # moved first, and changed
        + r2000("reader-3", tmp_path / "ttyR3")
    )
    plan = plan_reload(old, load(tmp_path, devices))
    assert [d.name for d in plan.changed] == ["reader-2"]
    assert [d.name for d in plan.added] == ["reader-3"]
    assert plan.removed == ["reader-1"]
    assert plan.unchanged == []
    assert [d.name for d in plan.config.devices] == ["reader-2", "reader-3"]
    assert (
        plan.summary()
        == "1 device(s) restarted (reader-2), 1 added (reader-3), 1 removed (reader-1), 0 unchanged"
    )


def test_a_device_moved_to_another_line_is_unchanged(tmp_path: Path) -> None:
    old = load(tmp_path, two_readers(tmp_path))
    path = tmp_path / "gateway.yaml"
    path.write_text(path.read_text().replace("devices:\n", "# a comment\n# and another\ndevices:\n"))
    new = load_config(path)
    assert new.devices[0].line != old.devices[0].line
    assert same_device(old.devices[0], new.devices[0])
    assert plan_reload(old, new).unchanged == ["reader-1", "reader-2"]


def test_processing_options_are_part_of_a_device(tmp_path: Path) -> None:
    old = load(tmp_path, two_readers(tmp_path, extra="    smoothing: {depart_after_s: 5}\n"))
    new = load(tmp_path, two_readers(tmp_path, extra="    smoothing: {depart_after_s: 7}\n"))
    assert [d.name for d in plan_reload(old, new).changed] == ["reader-2"]


def test_sections_that_need_a_restart_are_named_not_applied_and_never_by_value(tmp_path: Path) -> None:
    old = load(tmp_path, mqtt_extra="    username: gw\n    password_env: MQTT_PASSWORD\n")
    path = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="gw-2",
        url="mqtt://127.0.0.1:1884",
        mqtt_extra="    username: gw\n    password_env: MQTT_PASSWORD\n",
        extra="queue: {max_events: 500}\n",
    )
    new = load_config(path, environ={"MQTT_PASSWORD": "hunter2-new"})
    plan = plan_reload(old, new)
    assert plan.needs_restart == [
        "gateway.id",
        "upstream.mqtt.url",
        "upstream.mqtt.client_id",
        "upstream.mqtt.password",
        "queue.max_events",
    ]
    assert plan.config.gateway.id == "gw-1"
    assert plan.config.upstream == old.upstream
    assert plan.config.queue == old.queue
    assert "hunter2" not in repr(plan) + plan.summary() + " ".join(plan.needs_restart)


def test_log_levels_apply_at_once(tmp_path: Path) -> None:
    old = load(tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        path.read_text().replace(
            "  id: gw-1\n", "  id: gw-1\n  log_level: warning\n  log_levels: {edgegw.forwarder: debug}\n"
        )
    )
    plan = plan_reload(old, load_config(path))
    assert plan.logging_changed
    assert plan.needs_restart == []
    assert plan.config.gateway.log_level == "WARNING"
    assert plan.config.gateway.log_levels == {"edgegw.forwarder": "DEBUG"}


# -- a running gateway --------------------------------------------------------------------------------------


@pytest.fixture
async def readers(tmp_path: Path) -> AsyncIterator[dict[str, R2000Simulator]]:
    async with AsyncExitStack() as stack:
        sims = {}
        for n in (1, 2, 3):
            options = SimOptions(tags=20, rate=200.0, seed=n, antennas=(1, 2))
            sims[f"reader-{n}"] = await stack.enter_async_context(serve_pty(tmp_path / f"ttyR{n}", options))
        yield sims


def statuses(gateway: Gateway, device: str) -> int:
    counts = gateway.counts
    return counts.events_in[(device, "device.status")] if counts else 0


async def test_reload_restarts_changed_devices_only_and_keeps_buffer_and_upstream(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator]
) -> None:
    path = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="reload-1", url=broker.url, devices=two_readers(tmp_path)
    )
    applied: list[Config] = []
    gateway = Gateway(load_config(path), on_logging=applied.append)
    async with running(gateway):
        forwarder = gateway.upstream
        assert isinstance(forwarder, Forwarder)
        await until(
            "both readers connected", lambda: all(r.state == "connected" for r in gateway.runners.values())
        )
        await until("the upstream connected", lambda: forwarder.connected)
        buffer, first = gateway.buffer, gateway.runners["reader-1"]
        second = gateway.runners["reader-2"]

        write_gateway(
            path,
            gateway_id="reload-1",
            url=broker.url,
            devices=r2000("reader-1", tmp_path / "ttyR1")
            + r2000("reader-2", tmp_path / "ttyR2", "{1: lane2-a, 2: lane2-b}")
            + r2000("reader-3", tmp_path / "ttyR3"),
        )
        plan = await gateway.reload()
        assert plan is not None
        assert [d.name for d in plan.changed] == ["reader-2"] and [d.name for d in plan.added] == ["reader-3"]
        assert gateway.runners["reader-1"] is first  # untouched
        assert gateway.runners["reader-2"] is not second
        assert gateway.buffer is buffer and gateway.upstream is forwarder
        await until("reader-2 and reader-3 connected", lambda: statuses(gateway, "reader-3") >= 1)
        await until(
            "reader-2 reconnected", lambda: statuses(gateway, "reader-2") >= 3
        )  # connected, stopped, connected
        assert forwarder.connects == 1 and forwarder.disconnects == 0  # one MQTT session throughout
        assert applied == []  # no log level changed

        # Removing a device stops it and drops its series from the metrics.
        write_gateway(
            path, gateway_id="reload-1", url=broker.url, devices=r2000("reader-1", tmp_path / "ttyR1")
        )
        plan = await gateway.reload()
        assert plan is not None and sorted(plan.removed) == ["reader-2", "reader-3"]
        assert list(gateway.runners) == ["reader-1"] and gateway.runners["reader-1"] is first
        assert gateway.metrics is not None
        parsed = samples((await http_get(gateway.metrics.port, "/metrics"))[1].decode())
        assert value(parsed, "edgegw_reloads_total", result="applied") == 2
        assert ("edgegw_device_up", frozenset({("device", "reader-2")})) not in parsed
        assert value(parsed, "edgegw_device_up", device="reader-1") == 1
    assert gateway.runners["reader-1"].restarts == 0


async def test_a_restarted_device_keeps_counting_up(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator]
) -> None:
    path = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="reload-2", url=broker.url, devices=two_readers(tmp_path)
    )
    gateway = Gateway(load_config(path))
    async with running(gateway):
        assert gateway.metrics is not None
        await until("reader-2 emitted 100", lambda: gateway.runners["reader-2"].events_emitted >= 100)
        before = samples((await http_get(gateway.metrics.port, "/metrics"))[1].decode())
        write_gateway(
            path,
            gateway_id="reload-2",
            url=broker.url,
            devices=two_readers(tmp_path, "{1: lane2-a, 2: lane2-b}"),
        )
        assert await gateway.reload() is not None
        after = samples((await http_get(gateway.metrics.port, "/metrics"))[1].decode())
    emitted = "edgegw_device_events_emitted_total"
    assert value(after, emitted, device="reader-2") >= value(before, emitted, device="reader-2")


async def test_an_invalid_file_keeps_the_running_config_and_says_why(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator], caplog: pytest.LogCaptureFixture
) -> None:
    path = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="reload-3", url=broker.url, devices=two_readers(tmp_path)
    )
    config = load_config(path)
    gateway = Gateway(config)
    async with running(gateway):
        runners = dict(gateway.runners)
        path.write_text(
            path.read_text().replace(
                "antennas: {1: lane2-in, 2: lane2-out}", "antennas: {9: x}\n    baudrate: 12"
            )
        )
        with caplog.at_level(logging.INFO, logger="edgegw.reload"):
            assert await gateway.reload() is None
        assert gateway.runners == runners
        assert gateway.config is config
        assert gateway.reloads == {"rejected": 1}
        assert gateway.state == "running"
    lines = [r.getMessage() for r in caplog.records if r.name == "edgegw.reload"]
    assert any(line.startswith("reload refused: ") and "still running the previous" in line for line in lines)
    problems = [line for line in lines if line.startswith(f"reload: {path}:")]
    assert len(problems) >= 2  # every problem, one line each
    assert any("baudrate" in line for line in problems) and any("antennas" in line for line in problems)


async def test_a_reload_that_puts_two_line_settings_on_one_port_is_refused(
    tmp_path: Path, broker: Mosquitto, readers: dict[str, R2000Simulator], caplog: pytest.LogCaptureFixture
) -> None:
    # Two meters added on one RS-485 adapter, one at 9600 and one at 19200 baud: applied, the bus would
    # stop one of them; refused, everything runs on as before and the log names both devices' lines.
    path = write_gateway(
        tmp_path / "gateway.yaml", gateway_id="reload-5", url=broker.url, devices=two_readers(tmp_path)
    )
    config = load_config(path)
    gateway = Gateway(config)
    rs485 = tmp_path / "ttyRS485"
    meters = "".join(
        f"  - {{name: feeder-0{unit}, driver: modbus, port: {rs485}, baudrate: {baudrate}, unit_id: {unit},"
        " points: [{name: voltage_a, address: 0}]}\n"
        for unit, baudrate in ((1, 9600), (2, 19200))
    )
    async with running(gateway):
        runners = dict(gateway.runners)
        write_gateway(path, gateway_id="reload-5", url=broker.url, devices=two_readers(tmp_path) + meters)
        with caplog.at_level(logging.INFO, logger="edgegw.reload"):
            assert await gateway.reload() is None
        assert gateway.runners == runners
        assert gateway.config is config
        assert gateway.reloads == {"rejected": 1}
        assert gateway.state == "running"
    text = path.read_text().splitlines()
    first, second = (
        next(n for n, line in enumerate(text, 1) if name in line) for name in ("feeder-01", "feeder-02")
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "edgegw.reload"]
    port = await asyncio.to_thread(os.path.realpath, rs485)  # the bus's key: the port's real path
    assert [line for line in lines if line.startswith(f"reload: {path}:")] == [
        f"reload: {path}:{second}: devices[3].baudrate: 19200, but feeder-01 on the same line "
        f"({port}) has 9600 ({path}:{first}): devices sharing a line must use the same "
        "settings"
    ]


async def test_a_log_level_change_is_handed_to_the_logging(tmp_path: Path, broker: Mosquitto) -> None:
    path = write_gateway(tmp_path / "gateway.yaml", gateway_id="reload-4", url=broker.url)
    applied: list[Config] = []
    gateway = Gateway(load_config(path), on_logging=applied.append)
    async with running(gateway):
        path.write_text(
            path.read_text().replace(
                "  id: reload-4\n", "  id: reload-4\n  log_levels: {edgegw.mqtt: debug}\n"
            )
        )
        assert await gateway.reload() is not None
    assert [c.gateway.log_levels for c in applied] == [{"edgegw.mqtt": "DEBUG"}]
