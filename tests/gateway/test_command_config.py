"""The config of commands: a device's ``commands:`` (the allow-list, checked against its driver's registry
with FILE:LINE), ``upstream.mqtt.commands`` and its defaults, ``edgegw check``, and the JSON Schema's
documentation of each driver's commands."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus import ModbusDriver
from gateway.cli.cmd import parse_args
from gateway.config import ConfigError, load_config
from gateway.config.schema import build

HEAD = """gateway:
  id: gw1
buffer:
  path: buffer.db
upstream:
  mqtt:
    url: mqtt://127.0.0.1:1883
{commands}devices:
  - name: meter
    driver: modbus
    host: 127.0.0.1
    tcp_port: 5020
    unit_id: 1
{device_commands}    points:
      - {{name: setpoint, address: 10, writable: true, min: 0, max: 100}}
"""


def write(tmp_path: Path, device_commands: str = "", commands: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEAD.format(commands=commands, device_commands=device_commands))
    return path


def test_commands_are_off_and_allow_nothing_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    assert config.devices[0].commands == ()
    settings = config.upstream.mqtt.commands if config.upstream is not None else None
    assert settings is not None and not settings.enabled
    assert (settings.max_age_s, settings.max_in_flight, settings.timeout_s) == (30.0, 1, 10.0)
    assert (settings.dedupe_window.count, settings.dedupe_window.seconds) == (1000, 600.0)
    assert settings.hmac_key_file is None


def test_a_device_allows_the_commands_it_lists(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cret\n")
    commands = (
        "    commands:\n      enabled: true\n      max_age_s: 10\n      timeouts: {write: 3}\n"
        "      rate_limit: {per_s: 2, burst: 4}\n      hmac_key_file: key\n"
    )
    config = load_config(write(tmp_path, "    commands: [write, read]\n", commands))
    assert config.devices[0].commands == ("write", "read")
    assert config.upstream is not None
    settings = config.upstream.mqtt.commands
    assert settings.enabled and settings.max_age_s == 10 and settings.timeouts == {"write": 3}
    assert settings.hmac_key_file == tmp_path / "key"


@pytest.mark.parametrize(
    ("device_commands", "line", "field", "message"),
    [
        (
            "    commands: [write, explode]\n",
            14,
            "devices[0].commands[1]",
            "driver 'modbus' has no command 'explode' (its commands: read, write)",
        ),
        ("    commands: [read, read]\n", 14, "devices[0].commands[1]", "'read' is listed twice"),
        ("    commands: write\n", 14, "devices[0].commands", "expected a list of command names"),
        ("    commands:\n      - 7\n", 15, "devices[0].commands[0]", "expected a command name"),
    ],
)
def test_a_bad_commands_list_is_rejected_with_file_line_and_field(
    tmp_path: Path, device_commands: str, line: int, field: str, message: str
) -> None:
    path = write(tmp_path, device_commands)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert message in problem.message


def test_bad_command_options_are_rejected(tmp_path: Path) -> None:
    for bad, field in (
        ("    commands:\n      enabled: yes please\n", "upstream.mqtt.commands.enabled"),
        ("    commands:\n      max_in_flight: 0\n", "upstream.mqtt.commands.max_in_flight"),
        ("    commands:\n      hmac_key_file: missing.key\n", "upstream.mqtt.commands.hmac_key_file"),
        ("    commands:\n      timeouts: {write: -1}\n", "upstream.mqtt.commands.timeouts.write"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, commands=bad))
        assert [p.field for p in caught.value.problems] == [field], bad


def test_edgegw_check_validates_commands_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "    commands: [write, reed]\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert f"{path}:14: devices[0].commands[1]: driver 'modbus' has no command 'reed'" in done.stderr
    write(tmp_path, "    commands: [write, read]\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_schema_documents_each_drivers_commands_and_their_args() -> None:
    gateway_schema, device_schema, _ = build(["modbus"])
    defs = device_schema["$defs"]
    [modbus] = [
        d for d in defs.values() if d.get("properties", {}).get("driver", {}).get("const") == "modbus"
    ]
    commands = modbus["properties"]["commands"]
    assert commands["anyOf"][0]["items"] == {"enum": ["read", "write"]}
    documented = commands["x-edgegw-commands"]
    for name, spec in ModbusDriver.commands.items():
        assert documented[name]["description"] == spec.doc and spec.doc in commands["description"]
        ref = documented[name]["args"]["$ref"].removeprefix("#/$defs/")
        assert set(defs[ref]["properties"]) == set(spec.args.model_fields)
    mqtt = gateway_schema["$defs"]["MqttConfig"]["properties"]["commands"]
    assert "Commands from upstream" in mqtt["description"]
    assert json.dumps(gateway_schema["$defs"]["CommandsConfig"]).count("max_age_s") >= 1


def test_a_timeout_for_a_command_nobody_offers_is_rejected(tmp_path: Path) -> None:
    commands = "    commands:\n      timeouts: {write: 3, ping: 1, wirte: 5}\n"
    path = write(tmp_path, "    commands: [write]\n", commands)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (9, "upstream.mqtt.commands.timeouts.wirte")
    assert "no device of this gateway offers a command 'wirte'" in problem.message
    assert "ping, read, reload, status, write" in problem.message


def edgegw_cmd(config: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cmd", "-c", str(config), "--wait", "2", *words],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_edgegw_cmd_says_what_is_wrong_before_sending(tmp_path: Path) -> None:
    off = write(tmp_path, "    commands: [write]\n")
    done = edgegw_cmd(off, "meter", "write", "point=setpoint", "value=5")
    assert done.returncode == 2 and "enables commands on no MQTT upstream" in done.stderr

    on = write(tmp_path, "    commands: [write]\n", "    commands: {enabled: true}\n")
    on.write_text(on.read_text().replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{_closed_port()}"))
    done = edgegw_cmd(on, "meter", "write", "point=setpoint", "value=5")
    assert done.returncode == 1 and "connecting to 127.0.0.1" in done.stderr

    for words, message in (
        (("meter",), "give DEVICE COMMAND"),
        (("meter", "write", "x"), "expected key=value"),
    ):
        done = edgegw_cmd(on, *words)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    done = edgegw_cmd(on, "--args", "[1]", "meter", "write")
    assert done.returncode == 2 and "--args must be a JSON object" in done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_key_value_words_become_args() -> None:
    assert parse_args(["point=ct_primary_a", "value=250", "on=true", 'points=["a","b"]', 'name="7"']) == {
        "point": "ct_primary_a",
        "value": 250,
        "on": True,
        "points": ["a", "b"],
        "name": "7",
    }
    assert parse_args(["values.vt_ratio=4", "values.ct=400"]) == {"values": {"vt_ratio": 4, "ct": 400}}
    with pytest.raises(ValueError, match="already has a value"):
        parse_args(["values=1", "values.x=2"])
