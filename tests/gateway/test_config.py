"""Configuration loading: golden cases (``config_cases/<case>/``) and the behaviour of good configs.

A golden case is a directory with ``gateway.yaml`` (and a ``devices.d/`` where relevant) and ``expected.err``:
the exact problem lines, in order, with FILE relative to the case directory. In an expected line, ``...``
matches any text (used where the text belongs to a driver's own model, such as its validator messages or
the list of registered drivers). Every case is loaded with the environment :data:`CASE_ENV`, and no output
may contain ``do-not-print`` (the marker of every secret in the cases).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from drivers.base import DeviceContext, Driver, DriverOptions
from drivers.bus import SharedLine
from gateway.config import Config, ConfigError, Problem, load_config
from gateway.config.yamlsrc import YamlError, load_file, load_text
from gateway.delivery.buffer import WhenFull

CASES = Path(__file__).parent / "config_cases"
EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "roadside-lane.yaml"
SUBSTATION = EXAMPLE.with_name("substation.yaml")
EDGEGW = str(Path(sys.executable).with_name("edgegw"))
CASE_ENV = {"EDGEGW_TEST_PASSWORD": "do-not-print-env-s3cret"}
SECRET_MARKER = "do-not-print"

MINIMAL = """\
gateway:
  id: lane-demo
buffer:
  path: buffer.db
upstream:
  mqtt:
    url: mqtt://127.0.0.1:1883
"""


def _line_matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_golden_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case_dir = CASES / case
    expected = (case_dir / "expected.err").read_text().splitlines()
    monkeypatch.chdir(case_dir)
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.yaml", environ=CASE_ENV)
    actual = str(caught.value).splitlines()
    assert [str(p) for p in caught.value.problems] == actual
    assert SECRET_MARKER not in str(caught.value)
    assert len(actual) == len(expected), "\n".join(actual)
    for want, got in zip(expected, actual, strict=True):
        assert _line_matches(want, got), f"expected {want!r}\n     got {got!r}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- good configs --------------------------------------------------------------------------------------


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE.absolute()
    assert config.gateway.id == "lane-demo"
    assert config.buffer.path == Path("/var/lib/edgegw/buffer.db")
    assert config.upstream is not None  # upstream: given (not upstreams:)
    mqtt = config.upstream.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls_enabled) == ("127.0.0.1", 1883, False)
    assert mqtt.client_id == "edgegw-lane-demo"
    assert [d.name for d in config.devices] == ["reader-1", "reader-2"]
    serial, tcp = config.devices
    assert serial.driver == "uhf-r2000"
    assert serial.options.model_dump()["port"] == "/dev/ttyUSB0"
    assert serial.options.model_dump()["antennas"] == {1: "lane1-in", 2: "lane1-out"}
    assert (tcp.options.model_dump()["host"], tcp.options.model_dump()["tcp_port"]) == ("192.168.1.50", 4001)
    assert serial.driver_class.name == "uhf-r2000"
    assert serial.file == EXAMPLE.absolute()
    assert EXAMPLE.read_text().splitlines()[serial.line - 1].strip() == "- name: reader-1"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "gw.yaml", MINIMAL))
    assert config.gateway.log_level == "INFO"
    buffer = config.buffer
    assert (buffer.max_bytes, buffer.when_full, buffer.synchronous) == (2**30, WhenFull.DROP_OLDEST, "full")
    assert (buffer.commit_interval_ms, buffer.commit_max_events) == (20, 1000)
    assert config.upstream is not None  # upstream: given (not upstreams:)
    mqtt = config.upstream.mqtt
    assert (mqtt.prefix, mqtt.client_id, mqtt.protocol, mqtt.qos) == ("edgegw", "edgegw-lane-demo", "5", 1)
    assert (mqtt.keepalive_s, mqtt.max_inflight, mqtt.batch_max_events) == (30, 100, 1)
    assert (mqtt.username, mqtt.password) == (None, None)
    assert (mqtt.reconnect.initial_s, mqtt.reconnect.max_s) == (0.5, 30.0)
    assert mqtt.tls.insecure is False
    assert mqtt.tls.ca_file is None
    assert (config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s) == (1.0, 30.0)
    assert config.queue.max_events == 10_000
    assert (config.devices, config.devices_dir) == ([], None)
    # A `devices:` whose entries are all commented out is no devices, not an error.
    empty = load_config(write(tmp_path / "empty.yaml", MINIMAL + "devices:\n  # - name: reader-1\n"))
    assert empty.devices == []


def test_relative_buffer_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc" / "gw.yaml", MINIMAL.replace("buffer.db", "data/buffer.db"))
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/gw.yaml")
    assert config.buffer.path == tmp_path / "etc" / "data" / "buffer.db"
    assert config.source == tmp_path / "etc" / "gw.yaml"
    absolute = load_config(write(tmp_path / "abs.yaml", MINIMAL.replace("buffer.db", "/srv/b.db")))
    assert absolute.buffer.path == Path("/srv/b.db")


def test_devices_dir_loads_in_order(tmp_path: Path) -> None:
    device = "driver: uhf-r2000\nport: /dev/ttyUSB{n}\n"
    inline = "devices:\n  - name: inline\n    driver: uhf-r2000\n    port: /dev/ttyUSB0\n"
    write(tmp_path / "gw.yaml", MINIMAL + inline + "devices_dir: devices.d\n")
    write(
        tmp_path / "devices.d" / "20-exit.yaml",
        "- name: exit-a\n  driver: uhf-r2000\n  port: /dev/a\n"
        "- name: exit-b\n  driver: uhf-r2000\n  host: converter.local\n  tcp_port: 4001\n",
    )
    write(tmp_path / "devices.d" / "10-entry.yaml", "# entry reader\nname: entry\n" + device.format(n=1))
    write(tmp_path / "devices.d" / "15-more.yml", "name: more\n" + device.format(n=2))
    write(tmp_path / "devices.d" / ".hidden.yaml", "this: is ignored\n")
    write(tmp_path / "devices.d" / "notes.txt", "ignored too\n")
    config = load_config(tmp_path / "gw.yaml")
    assert [d.name for d in config.devices] == ["inline", "entry", "more", "exit-a", "exit-b"]
    assert config.devices_dir == tmp_path / "devices.d"
    entry, exit_b = config.devices[1], config.devices[4]
    assert (entry.file, entry.line) == (tmp_path / "devices.d" / "10-entry.yaml", 2)
    assert (exit_b.file, exit_b.line) == (tmp_path / "devices.d" / "20-exit.yaml", 4)


def test_password_from_file_and_env_never_printed(tmp_path: Path) -> None:
    write(tmp_path / "secrets" / "mqtt.password", "do-not-print-file-s3cret\n")
    from_file = MINIMAL + "    username: gw\n    password_file: secrets/mqtt.password\n"
    config = load_config(write(tmp_path / "file.yaml", from_file))
    assert config.upstream is not None  # upstream: given (not upstreams:)
    mqtt = config.upstream.mqtt
    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == "do-not-print-file-s3cret"
    assert mqtt.password_file == tmp_path / "secrets" / "mqtt.password"

    from_env = MINIMAL + "    username: gw\n    password_env: GW_PASSWORD\n"
    env_config = load_config(
        write(tmp_path / "env.yaml", from_env), environ={"GW_PASSWORD": "do-not-print-2"}
    )
    assert env_config.upstream is not None  # upstream: given (not upstreams:)
    assert env_config.upstream.mqtt.password is not None
    assert env_config.upstream.mqtt.password.get_secret_value() == "do-not-print-2"

    for shown in (repr(config), str(config), config.model_dump_json(), repr(env_config), str(env_config)):
        assert SECRET_MARKER not in shown


def test_secret_not_in_errors_of_a_config_that_also_has_a_secret(tmp_path: Path) -> None:
    write(tmp_path / "pw", "do-not-print-s3cret")
    text = MINIMAL.replace("lane-demo", "lane demo") + (
        "    username: gw\n    password: do-not-print-inline\n    password_file: pw\n"
        "    tls: {key_password: [do-not-print-key]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "gw.yaml", text))
    # Cross-field checks (at most one password source) run once the section's own fields are valid.
    assert [p.field for p in caught.value.problems] == ["gateway.id", "upstream.mqtt.tls.key_password"]
    assert SECRET_MARKER not in str(caught.value)
    assert SECRET_MARKER not in repr(caught.value.problems)


def test_mqtts_with_tls_files_and_key_password(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        write(tmp_path / "certs" / name, "-----BEGIN-----\n")
    text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://[::1]") + (
        "    tls:\n      ca_file: certs/ca.pem\n      cert_file: certs/client.pem\n"
        "      key_file: certs/client.key\n      key_password_env: KEY_PW\n"
    )
    config = load_config(write(tmp_path / "gw.yaml", text), environ={"KEY_PW": "do-not-print-key"})
    assert config.upstream is not None  # upstream: given (not upstreams:)
    mqtt = config.upstream.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls_enabled) == ("::1", 8883, True)
    assert mqtt.tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert mqtt.tls.key_password is not None
    assert mqtt.tls.key_password.get_secret_value() == "do-not-print-key"
    assert SECRET_MARKER not in repr(config)


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("1000", 1000),
        ("512MiB", 512 * 2**20),
        ("1GB", 10**9),
        ("1gib", 2**30),
        ("64 KiB", 64 * 1024),
        ("1.5GiB", 3 * 2**29),
        ("'2048'", 2048),
    ],
)
def test_max_bytes_sizes(tmp_path: Path, written: str, value: int) -> None:
    text = MINIMAL.replace("  path: buffer.db\n", f"  path: buffer.db\n  max_bytes: {written}\n")
    assert load_config(write(tmp_path / "gw.yaml", text)).buffer.max_bytes == value


def test_options_and_scalars_accept_their_documented_forms(tmp_path: Path) -> None:
    text = MINIMAL.replace("  id: lane-demo\n", "  id: lane-demo\n  log_level: debug\n") + (
        "    prefix: site-1/edgegw\n    protocol: 3.1.1\n    client_id: custom\nqueue: {max_events: 5}\n"
    )
    config = load_config(write(tmp_path / "gw.yaml", text))
    assert config.gateway.log_level == "DEBUG"
    assert config.upstream is not None  # upstream: given (not upstreams:)
    assert (config.upstream.mqtt.prefix, config.upstream.mqtt.protocol) == ("site-1/edgegw", "3.1.1")
    assert config.upstream.mqtt.client_id == "custom"
    assert config.queue.max_events == 5
    five = load_config(write(tmp_path / "five.yaml", MINIMAL + "    protocol: 5\n"))
    assert five.upstream is not None  # upstream: given (not upstreams:)
    assert five.upstream.mqtt.protocol == "5"


class _TestOptions(DriverOptions):
    level: int = Field(default=1, ge=0, le=3)


class _TestDriver(Driver[_TestOptions]):
    name: ClassVar[str] = "test-driver"
    Options: ClassVar[type[DriverOptions]] = _TestOptions

    async def run(self, ctx: DeviceContext) -> None:  # pragma: no cover - never run here
        raise NotImplementedError


def _test_lookup(name: str) -> type[Driver[Any]]:
    if name != "test-driver":
        raise LookupError(f"no driver {name!r} in this test")
    return _TestDriver


def test_driver_lookup_is_injectable(tmp_path: Path) -> None:
    text = MINIMAL + "devices:\n  - {name: t1, driver: test-driver, level: 2}\n  - {name: t2, driver: x}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "gw.yaml", text), driver_lookup=_test_lookup)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'gw.yaml'}:10: devices[1].driver: no driver 'x' in this test"
    ]
    config = load_config(
        write(tmp_path / "ok.yaml", text.split("  - {name: t2")[0]), driver_lookup=_test_lookup
    )
    (device,) = config.devices
    assert device.driver_class is _TestDriver
    assert isinstance(device.options, _TestOptions)
    assert device.options.level == 2


def test_smoothing_only_on_rfid_devices(tmp_path: Path) -> None:
    text = MINIMAL + "devices:\n  - name: t1\n    driver: test-driver\n    smoothing: {depart_after_s: 3}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "gw.yaml", text), driver_lookup=_test_lookup)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'gw.yaml'}:11: devices[0].smoothing: only RFID devices can smooth reads; "
        "driver 'test-driver' emits no rfid.read"
    ]


def test_smoothing_options_reach_the_device(tmp_path: Path) -> None:
    text = MINIMAL + (
        "devices:\n  - name: r1\n    driver: uhf-r2000\n    port: /dev/ttyUSB0\n"
        "    antennas: {1: lane1-in, 2: lane2-in}\n"
        "    smoothing: {depart_after_s: 3, lanes: [lane1-in, lane2-in], forward_reads: true}\n"
        "  - name: r2\n    driver: uhf-r2000\n    port: /dev/ttyUSB1\n"
    )
    first, second = load_config(write(tmp_path / "gw.yaml", text)).devices
    assert first.smoothing is not None
    assert first.smoothing.depart_after_s == 3
    assert first.smoothing.lanes == ("lane1-in", "lane2-in")
    assert first.smoothing.forward_reads is True
    assert "smoothing" not in first.options.model_dump()
    assert second.smoothing is None


# -- shared lines -------------------------------------------------------------------------------------------


def test_devices_with_identical_settings_share_a_line() -> None:
    # The substation example is the RS-485 case: eight Modbus meters on one port and four DL/T 645 meters on
    # another, each set like its neighbours; the two PD monitors have a TCP line each.
    config = load_config(SUBSTATION)
    on: dict[str, list[str]] = {}
    for device in config.devices:
        line = device.options.shared_line()
        assert line is not None
        on.setdefault(line.key, []).append(device.name)
    assert sorted(len(names) for names in on.values()) == [1, 1, 4, 8]
    assert on[f"serial:{os.path.realpath('/dev/ttyUSB0')}"] == [f"feeder-0{n}" for n in range(1, 9)]


def _meter(name: str, port: Path | str, baudrate: int, unit: int) -> str:
    return (
        f"  - {{name: {name}, driver: modbus, port: {port}, baudrate: {baudrate}, unit_id: {unit}, "
        "points: [{name: v, address: 0}]}\n"
    )


def test_a_port_a_reader_opens_alone_is_named_by_no_other_device(tmp_path: Path) -> None:
    # Two R2000 readers, or an R2000 and an LLRP device, or a reader and a meter, on one link: each would
    # read part of the other's bytes. The later device is refused at its link option, naming the first.
    tty = write(tmp_path / "dev" / "ttyUSB0", "")
    by_id = tmp_path / "serial" / "by-id" / "usb-CH340-if00-port0"
    by_id.parent.mkdir(parents=True)
    by_id.symlink_to(tty)
    text = (
        MINIMAL
        + "devices:\n"
        + f"  - {{name: door, driver: uhf-r2000, port: {tty}}}\n"
        + f"  - {{name: cargo, driver: uhf-r2000, port: {by_id}}}\n"
        + _meter("m1", tty, 9600, 1)
        + "  - {name: gate, driver: llrp, host: 10.0.0.9}\n"
        + "  - {name: gate-2, driver: llrp, host: 10.0.0.9, port: 5084}\n"
        + "  - {name: conv, driver: uhf-r2000, host: 10.0.0.9, tcp_port: 5084}\n"
    )
    gateway = write(tmp_path / "gw.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    real = os.path.realpath(tty)
    tail = (
        "which opens it alone: two devices cannot read one port or one reader connection (each would take "
        "part of the other's traffic)"
    )
    assert [str(p) for p in caught.value.problems] == [
        f"{gateway}:10: devices[1].port: {real} is already the link of door ({gateway}:9), {tail}",
        f"{gateway}:11: devices[2].port: {real} is already the link of door ({gateway}:9), {tail}",
        f"{gateway}:13: devices[4].port: 10.0.0.9:5084 is already the link of gate ({gateway}:12), {tail}",
        f"{gateway}:14: devices[5].host: 10.0.0.9:5084 is already the link of gate ({gateway}:12), {tail}",
    ]
    apart = (
        MINIMAL
        + "devices:\n"
        + f"  - {{name: door, driver: uhf-r2000, port: {tty}}}\n"
        + "  - {name: cargo, driver: uhf-r2000, port: /dev/ttyUSB7}\n"
        + "  - {name: gate, driver: llrp, host: 10.0.0.9}\n"
        + "  - {name: conv, driver: uhf-r2000, host: 10.0.0.9, tcp_port: 4001}\n"
    )
    assert len(load_config(write(tmp_path / "ok.yaml", apart)).devices) == 4


@pytest.mark.parametrize(
    ("second", "disagreement"),
    [
        # One reader serves a channel (drivers/interfaces.py), opened at one bitrate.
        ("bitrate: 500000, j1939: true", "bitrate: 500000, but tap on the same line (bus0) has 250000"),
        # A controller is either listen-only (it does not even acknowledge frames) or not: one device that
        # may transmit and one that must never disturb the bus cannot share it.
        (
            "listen_only: false, raw_frames: true",
            "listen_only: False, but tap on the same line (bus0) has True",
        ),
    ],
)
def test_devices_on_one_can_channel_must_agree_on_its_settings(
    tmp_path: Path, second: str, disagreement: str
) -> None:
    # Said by the config, before anything opens the channel, not when the second device attaches.
    text = (
        MINIMAL
        + "devices:\n"
        + "  - {name: tap, driver: can, interface: virtual, channel: bus0, j1939: true}\n"
        + f"  - {{name: body, driver: can, interface: virtual, channel: bus0, {second}}}\n"
        + "  - {name: rear, driver: can, interface: virtual, channel: bus1, bitrate: 500000, j1939: true}\n"
    )
    gateway = write(tmp_path / "gw.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    assert [str(p) for p in caught.value.problems] == [
        f"{gateway}:10: devices[1].{disagreement} (the default) ({gateway}:9): devices sharing a line must "
        "use the same settings"
    ]


def test_two_names_of_one_port_are_one_line(tmp_path: Path) -> None:
    tty = write(tmp_path / "dev" / "ttyUSB0", "")
    by_id = tmp_path / "serial" / "by-id" / "usb-FTDI_FT232R-if00-port0"
    by_id.parent.mkdir(parents=True)
    by_id.symlink_to(tty)
    text = MINIMAL + "devices:\n" + _meter("m1", by_id, 9600, 1) + _meter("m2", tty, 19200, 2)
    gateway = write(tmp_path / "gw.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    assert [str(p) for p in caught.value.problems] == [
        f"{gateway}:10: devices[1].baudrate: 19200, but m1 on the same line ({os.path.realpath(tty)}) has "
        f"9600 ({gateway}:9): devices sharing a line must use the same settings"
    ]
    other_port = (
        MINIMAL + "devices:\n" + _meter("m1", by_id, 9600, 1) + _meter("m2", "/dev/ttyUSB7", 19200, 2)
    )
    assert len(load_config(write(tmp_path / "ok.yaml", other_port)).devices) == 2


def test_check_and_run_refuse_devices_that_disagree_on_a_line(tmp_path: Path) -> None:
    # The operator's commands, in a child process: both refuse before opening anything, naming both devices.
    case = shutil.copytree(CASES / "shared_line_baudrate_differs", tmp_path / "case")
    expected = (case / "expected.err").read_text()

    def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
        command = [EDGEGW, *args, "-c", "gateway.yaml"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=case, check=False)

    check = edgegw("check")
    assert (check.returncode, check.stdout, check.stderr) == (2, "", expected)
    run = edgegw("run")
    assert run.returncode == 2
    assert expected.strip() in run.stderr.splitlines()
    assert not (case / "buffer.db").exists()


class _LineOptions(DriverOptions):
    line: str
    speed: int = 9600

    def shared_line(self) -> SharedLine:
        return SharedLine(f"test:{self.line}", (("driver", "test-line"), ("speed", self.speed)))


class _LineDriver(Driver[_LineOptions]):
    name: ClassVar[str] = "test-line"
    Options: ClassVar[type[DriverOptions]] = _LineOptions

    async def run(self, ctx: DeviceContext) -> None:  # pragma: no cover - never run here
        raise NotImplementedError


def test_every_driver_states_its_line_and_its_integers_are_integers(tmp_path: Path) -> None:
    # A driver the config knows nothing of (a plug-in) gets the same checks: its line, through
    # DriverOptions.shared_line, and its int options.
    drivers: dict[str, type[Driver[Any]]] = {"test-line": _LineDriver, "test-driver": _TestDriver}

    text = MINIMAL + (
        "devices:\n"
        "  - {name: a, driver: test-line, line: one}\n"
        "  - {name: b, driver: test-line, line: one, speed: 9600}\n"
        "  - {name: c, driver: test-line, line: one, speed: 19200}\n"
        "  - {name: d, driver: test-line, line: two, speed: 19200}\n"
        "  - {name: e, driver: test-line, line: two, speed: 1200.0}\n"
        "  - {name: f, driver: test-driver, level: '2'}\n"
    )
    gateway = write(tmp_path / "gw.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(gateway, driver_lookup=drivers.__getitem__)
    assert [str(p) for p in caught.value.problems] == [
        f"{gateway}:11: devices[2].speed: 19200, but a on the same line (one) has 9600 (the default) "
        f"({gateway}:9): devices sharing a line must use the same settings",
        f"{gateway}:13: devices[4].speed: expected an integer, got a number with a decimal point",
        f"{gateway}:14: devices[5].level: expected an integer, got a string: write it without quotes",
    ]


# -- integers -----------------------------------------------------------------------------------------------


def test_numbers_may_be_written_as_integers_where_numbers_are_meant(tmp_path: Path) -> None:
    text = MINIMAL.replace("  path: buffer.db\n", "  path: buffer.db\n  max_bytes: 1.5GiB\n") + (
        "    reconnect: {initial_s: 1, max_s: 30}\n"
        "supervisor: {backoff_initial_s: 2, backoff_max_s: 60}\n"
        "devices:\n"
        "  - {name: m, driver: modbus, port: /dev/ttyUSB0, unit_id: 1, poll_s: 5, timeout_s: 1,\n"
        "     points: [{name: v, address: 0, scale: 1, offset: 0, deadband: 1}]}\n"
        "  - {name: r, driver: uhf-r2000, port: /dev/ttyUSB1, reply_timeout_s: 2,\n"
        "     smoothing: {depart_after_s: 5, move_hysteresis_db: 3}}\n"
    )
    config = load_config(write(tmp_path / "gw.yaml", text))
    assert config.upstream is not None  # upstream: given (not upstreams:)
    assert config.upstream.mqtt.reconnect.initial_s == 1.0
    assert config.supervisor.backoff_max_s == 60.0
    meter = config.devices[0].options.model_dump()
    assert (meter["unit_id"], meter["poll_s"], meter["points"][0]["scale"]) == (1, 5.0, 1.0)


# -- anchors ------------------------------------------------------------------------------------------------


def test_a_problem_only_one_user_of_an_anchor_has_is_that_users(tmp_path: Path) -> None:
    # The lanes of an anchored smoothing block are checked against each device's own antennas: only
    # reader-2's are wrong, so the problem is reader-2's, at the anchored text's line.
    text = MINIMAL + (
        "devices:\n"
        "  - name: reader-1\n"
        "    driver: uhf-r2000\n"
        "    port: /dev/ttyUSB0\n"
        "    antennas: {1: lane1}\n"
        "    smoothing: &lane_counts\n"
        "      depart_after_s: 5\n"
        "      lanes: [lane1]\n"
        "  - {name: reader-2, driver: uhf-r2000, port: /dev/ttyUSB1, antennas: {1: lane2},\n"
        "     smoothing: *lane_counts}\n"
        "  - {name: reader-3, driver: uhf-r2000, port: /dev/ttyUSB2, antennas: {1: lane1},\n"
        "     smoothing: *lane_counts}\n"
    )
    gateway = write(tmp_path / "gw.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    assert [str(p) for p in caught.value.problems] == [
        f"{gateway}:15: devices[1].smoothing.lanes: lane 'lane1' is no zone of this device's antennas "
        "(see smoothing.zones) (in &lane_counts)"
    ]


def test_missing_file_is_a_problem_of_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.field) == (0, "")
    assert "No such file" in problem.message


def test_problem_str() -> None:
    assert (
        str(Problem("gw.yaml", 3, "upstream.mqtt.url", "missing host"))
        == "gw.yaml:3: upstream.mqtt.url: missing host"
    )
    assert str(Problem("gw.yaml", 1, "", "empty file")) == "gw.yaml:1: empty file"
    error = ConfigError([Problem("a", 1, "x", "m"), Problem("b", 2, "", "n")])
    assert str(error) == "a:1: x: m\nb:2: n"


def test_config_json_schema_documents_every_option() -> None:
    def walk(schema: dict[str, Any]) -> None:
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description"), name

    schema = Config.model_json_schema()
    walk(schema)
    for definition in schema["$defs"].values():
        if definition.get("title") != "DriverOptions":
            walk(definition)


# -- yamlsrc -----------------------------------------------------------------------------------------------


def test_yamlsrc_values_and_lines() -> None:
    doc = load_text("# c\na:\n  b: 1\n  antennas: {1: in, 2: out}\nlist:\n  - x\n  -\n    y: true\n")
    assert doc.value == {"a": {"b": 1, "antennas": {1: "in", 2: "out"}}, "list": ["x", {"y": True}]}
    assert doc.lines[()] == 2
    assert doc.lines[("a",)] == 2
    assert doc.lines[("a", "b")] == 3
    assert doc.lines[("a", "antennas", 2)] == 4
    assert doc.lines[("list", 1)] == 8
    assert doc.lines[("list", 1, "y")] == 8
    assert doc.line_of(("a", "missing", "deeper")) == 2
    assert doc.problems == ()


def test_yamlsrc_duplicate_keys_keep_the_first() -> None:
    doc = load_text("a: 1\nb: 2\na: 3\n")
    assert doc.value == {"a": 1, "b": 2}
    (problem,) = doc.problems
    assert (problem.line, problem.path, problem.message) == (3, ("a",), "duplicate key 'a' (first at line 1)")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: [1\nb: 2\n", 2, "expected ',' or ']'"),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document"),
        ("base: &b {x: 1}\nuse:\n  <<: *b\n", 3, "merge keys (<<) are not supported"),
        ("a: !vault do-not-print\n", 1, "could not determine a constructor"),
        ("a: *nowhere\n", 1, "undefined alias"),
        ("? [1, 2]\n: x\n", 1, "mapping key must be a plain value"),
        ("a: !!set {x}\n", 1, "unsupported tag"),
        # Indentation, said as such (PyYAML says "expected <block end>, but found ..."), with where the
        # enclosing block starts.
        (
            "a:\n  b: 1\n c: 2\n",
            3,
            "bad indentation: indented by 1 space, which lines up with no key above it (the mapping it is "
            "in starts at line 1, indented by 0 spaces)",
        ),
        (
            "devices:\n  - name: a\n    driver: x\n  port: y\n",
            4,
            "bad indentation: a key in line with the '- ' of the list that starts at line 2, where only a "
            "new item can start: indent it like the keys of its item",
        ),
        (
            "devices:\n  - name: a\n    points:\n      - {a: 1}\n     poll_s: 5\n",
            5,
            "bad indentation: indented by 5 spaces, which lines up with no key above it (the mapping it is "
            "in starts at line 2, indented by 4 spaces)",
        ),
        ("a:\n  - x\n - y\n", 3, "bad indentation: a '- ' item indented by 1 space, which lines up with no"),
        ("a:\n  b: 1\n    c: 2\n", 3, "indented by 4 spaces, deeper than line 2 (indented by 2 spaces)"),
        ("a:\n  b: 1\n\n    c: 2\n", 4, "deeper than line 2 (indented by 2 spaces), which opens no block"),
        ("a:\n\tb: 1\n", 2, "a tab character: YAML indents with spaces only"),
        ("url: mqtt://host: do-not-print\n", 1, "a ': ' inside an unquoted value: put the value in quotes"),
    ],
)
def test_yamlsrc_errors(text: str, line: int, message: str) -> None:
    with pytest.raises(YamlError) as caught:
        load_text(text)
    assert caught.value.line == line
    assert message in caught.value.message
    assert SECRET_MARKER not in caught.value.message


def test_yamlsrc_remembers_what_aliases_repeat() -> None:
    doc = load_text("a: &a\n  p: &p [1, 2]\n  q: 3\nb: *a\nc: {inner: *p}\n")
    assert doc.value == {"a": {"p": [1, 2], "q": 3}, "b": {"p": [1, 2], "q": 3}, "c": {"inner": [1, 2]}}
    assert doc.anchored(("b", "p", 1)) == (("a", "p", 1), "a")
    assert doc.anchored(("c", "inner", 0)) == (("a", "p", 0), "p")
    assert doc.anchored(("b",)) == (("a",), "a")
    assert doc.anchored(("a", "p", 1)) is None
    assert doc.line_of(("b",)) == 4  # the alias's own line
    assert doc.line_of(("b", "q")) == 3  # inside it, the anchored text's


def test_yamlsrc_empty_and_non_utf8(tmp_path: Path) -> None:
    assert load_text("# only a comment\n").value is None
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(YamlError) as caught:
        load_file(path)
    assert (caught.value.line, caught.value.message) == (2, "not UTF-8 text")


def test_environment_is_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_TEST_DEFAULT_ENV", "do-not-print-os")
    text = MINIMAL + "    username: gw\n    password_env: EDGEGW_TEST_DEFAULT_ENV\n"
    config = load_config(write(tmp_path / "gw.yaml", text))
    assert config.upstream is not None  # upstream: given (not upstreams:)
    assert config.upstream.mqtt.password is not None
    assert config.upstream.mqtt.password.get_secret_value() == os.environ["EDGEGW_TEST_DEFAULT_ENV"]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLE.parent.glob("*.yaml")))
def test_every_example_site_is_valid(example: str) -> None:
    # The examples are documentation that must not rot: each passes `edgegw check` as shipped.
    config = load_config(EXAMPLE.parent / example)
    assert config.devices
