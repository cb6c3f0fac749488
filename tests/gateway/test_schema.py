"""config/schema/*.json: current with the models, and saying what the loader says.

No JSON Schema library is a dependency of the project, so :class:`Validator` below checks the keywords the
generated schemas use (a keyword it does not know fails the test rather than being ignored)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers import registry
from gateway.config import ConfigError, load_config, schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "roadside-lane.yaml"
EDGEGW = str(Path(sys.executable).with_name("edgegw"))


# ---- a validator for the keywords the schemas use --------------------------------------------------------

_ANNOTATIONS = {"$schema", "$defs", "title", "description", "default", "examples", "format", "writeOnly"}
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


class Validator:
    """JSON Schema 2020-12, for the keywords below; every other keyword is an error of the test."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def errors(self, value: Any, node: Any = None, path: str = "") -> list[str]:
        return list(self._check(value, self.root if node is None else node, path or "$"))

    def _check(self, value: Any, node: Any, path: str) -> Iterator[str]:
        if node is True or node == {}:
            return
        if node is False:
            yield f"{path}: not allowed"
            return
        for key, rule in node.items():
            if key in _ANNOTATIONS or key in ("then", "else"):
                continue
            check = getattr(self, "_" + key.lstrip("$"), None)
            assert check is not None, f"the test's validator does not know keyword {key!r}: teach it"
            yield from check(value, rule, node, path)

    def _ref(self, value: Any, rule: str, node: Any, path: str) -> Iterator[str]:
        target: Any = self.root
        for part in rule.removeprefix("#/").split("/"):
            target = target[part]
        yield from self._check(value, target, path)

    def _type(self, value: Any, rule: Any, node: Any, path: str) -> Iterator[str]:
        names = rule if isinstance(rule, list) else [rule]
        if not any(_is_type(value, name) for name in names):
            yield f"{path}: expected {rule}, got {type(value).__name__}"

    def _enum(self, value: Any, rule: list[Any], node: Any, path: str) -> Iterator[str]:
        if not any(value == v and type(value) is type(v) for v in rule):
            yield f"{path}: {value!r} not one of {rule}"

    def _const(self, value: Any, rule: Any, node: Any, path: str) -> Iterator[str]:
        if not (value == rule and type(value) is type(rule)):
            yield f"{path}: {value!r} is not {rule!r}"

    def _properties(self, value: Any, rule: dict[str, Any], node: Any, path: str) -> Iterator[str]:
        if isinstance(value, dict):
            for name, sub in rule.items():
                if name in value:
                    yield from self._check(value[name], sub, f"{path}.{name}")

    def _additionalProperties(self, value: Any, rule: Any, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, dict):
            known = node.get("properties", {})
            for name in value:
                if name not in known:
                    if rule is False:
                        yield f"{path}: unknown key {name!r}"
                    else:
                        yield from self._check(value[name], rule, f"{path}.{name}")

    def _required(self, value: Any, rule: list[str], node: Any, path: str) -> Iterator[str]:
        if isinstance(value, dict):
            for name in rule:
                if name not in value:
                    yield f"{path}: missing {name!r}"

    def _items(self, value: Any, rule: Any, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from self._check(item, rule, f"{path}[{index}]")

    def _minItems(self, value: Any, rule: int, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, list) and len(value) < rule:
            yield f"{path}: fewer than {rule} items"

    def _maxItems(self, value: Any, rule: int, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, list) and len(value) > rule:
            yield f"{path}: more than {rule} items"

    def _anyOf(self, value: Any, rule: list[Any], node: Any, path: str) -> Iterator[str]:
        found = [self.errors(value, sub, path) for sub in rule]
        if all(found):
            yield f"{path}: matches none of anyOf: " + " | ".join("; ".join(f) for f in found)

    def _oneOf(self, value: Any, rule: list[Any], node: Any, path: str) -> Iterator[str]:
        matching = sum(not self.errors(value, sub, path) for sub in rule)
        if matching != 1:
            yield f"{path}: matches {matching} of oneOf"

    def _allOf(self, value: Any, rule: list[Any], node: Any, path: str) -> Iterator[str]:
        for sub in rule:
            yield from self._check(value, sub, path)

    def _if(self, value: Any, rule: Any, node: Any, path: str) -> Iterator[str]:
        branch = node.get("then") if not self.errors(value, rule, path) else node.get("else")
        if branch is not None:
            yield from self._check(value, branch, path)

    def _minimum(self, value: Any, rule: float, node: Any, path: str) -> Iterator[str]:
        if _is_type(value, "number") and value < rule:
            yield f"{path}: {value} < {rule}"

    def _maximum(self, value: Any, rule: float, node: Any, path: str) -> Iterator[str]:
        if _is_type(value, "number") and value > rule:
            yield f"{path}: {value} > {rule}"

    def _exclusiveMinimum(self, value: Any, rule: float, node: Any, path: str) -> Iterator[str]:
        if _is_type(value, "number") and value <= rule:
            yield f"{path}: {value} <= {rule}"

    def _exclusiveMaximum(self, value: Any, rule: float, node: Any, path: str) -> Iterator[str]:
        if _is_type(value, "number") and value >= rule:
            yield f"{path}: {value} >= {rule}"

    def _minLength(self, value: Any, rule: int, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, str) and len(value) < rule:
            yield f"{path}: shorter than {rule}"

    def _maxLength(self, value: Any, rule: int, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, str) and len(value) > rule:
            yield f"{path}: longer than {rule}"

    def _pattern(self, value: Any, rule: str, node: Any, path: str) -> Iterator[str]:
        if isinstance(value, str) and not re.search(rule, value):
            yield f"{path}: {value!r} does not match {rule}"


def as_json(value: Any) -> Any:
    """A YAML value as an editor hands it to a JSON Schema: mapping keys become strings."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


@pytest.fixture(scope="module")
def schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    gateway_schema, device_schema, _ = schema.build()
    return gateway_schema, device_schema


# ---- the checked-in files --------------------------------------------------------------------------------


def test_the_checked_in_schemas_are_current() -> None:
    files, left_out = schema.render()
    for name, text in files.items():
        path = schema.SCHEMA_DIR / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        assert current == text, (
            f"config/schema/{name} is out of date with the config models or the registered drivers "
            f"({'; '.join(left_out) or 'every driver loaded'}): regenerate it with `{schema.REGENERATE}` "
            "and commit it"
        )


def test_check_mode_and_regeneration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema.main(["--check", "--dir", str(tmp_path)]) == 1
    assert f"is out of date: run {schema.REGENERATE}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert schema.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([schema.GATEWAY_FILE, schema.DEVICE_FILE])
    assert schema.main(["--check", "--dir", str(tmp_path)]) == 0


def test_edgegw_schema_prints_them(schemas: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for args, expected in ((["schema"], schemas[0]), (["schema", "--device-file"], schemas[1])):
        done = subprocess.run([EDGEGW, *args], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == expected


def test_every_driver_that_loads_is_in_and_only_those(schemas: tuple[dict[str, Any], dict[str, Any]]) -> None:
    loadable = []
    for name in registry.names():
        try:
            registry.load(name)
        except Exception:
            continue
        loadable.append(name)
    for s in schemas:
        assert s["$defs"]["Device"]["properties"]["driver"]["enum"] == sorted(loadable)
        assert len(s["$defs"]["Device"]["allOf"]) == len(loadable)
    assert "uhf-r2000" in loadable


# ---- the schema agrees with the loader -------------------------------------------------------------------

BASE = """\
gateway: {id: lane-7}
buffer: {path: buffer.db}
upstream: {mqtt: {url: "mqtt://127.0.0.1:1883"}}
"""

R2000 = "  - {name: reader-1, driver: uhf-r2000, port: /dev/ttyUSB0, antennas: {1: lane1-in, 2: lane1-out}}\n"

ACCEPTED = {
    "minimal": BASE,
    "a queue and no devices": BASE + "queue: {max_events: 500}\n" + "devices: []\n",
    "max_bytes 512MiB": BASE.replace("{path: buffer.db}", "{path: buffer.db, max_bytes: 512MiB}"),
    "max_bytes 2 GB": BASE.replace("{path: buffer.db}", "{path: buffer.db, max_bytes: 2 gb}"),
    "max_bytes an integer": BASE.replace("{path: buffer.db}", "{path: buffer.db, max_bytes: 1000000}"),
    "log level in any case": BASE.replace("{id: lane-7}", "{id: lane-7, log_level: Info}"),
    "protocol as a number": BASE.replace('"mqtt://127.0.0.1:1883"', '"mqtt://127.0.0.1:1883", protocol: 5'),
    "protocol 3.1.1": BASE.replace('"mqtt://127.0.0.1:1883"', '"mqtt://127.0.0.1:1883", protocol: "3.1.1"'),
    "mqtts with tls": BASE.replace(
        '"mqtt://127.0.0.1:1883"', '"MQTTS://broker.example", tls: {insecure: true}'
    ),
    "devices null": BASE + "devices:\n",
    "an r2000 on serial": BASE + "devices:\n" + R2000,
    "an r2000 over tcp": BASE
    + "devices:\n  - {name: r.2, driver: uhf-r2000, host: 10.0.0.5, tcp_port: 4001, repeat: 3}\n",
}

REJECTED = {
    "an unknown top-level key": BASE + "bufer: {}\n",
    "a gateway id with a slash": BASE.replace("lane-7", "lane/7"),
    "an http url": BASE.replace("mqtt://127.0.0.1:1883", "http://127.0.0.1"),
    "a size with an unknown unit": BASE.replace(
        "{path: buffer.db}", "{path: buffer.db, max_bytes: 5 parsecs}"
    ),
    "a log level that is not one": BASE.replace("{id: lane-7}", "{id: lane-7, log_level: loud}"),
    "missing upstream": "gateway: {id: lane-7}\nbuffer: {path: buffer.db}\n",
    "an r2000 with a bad baudrate": BASE + "devices:\n" + R2000.replace("port:", "baudrate: 12345, port:"),
    "an r2000 with an unknown key": BASE + "devices:\n" + R2000.replace("port:", "baud: 9600, port:"),
    "an unknown driver": BASE + "devices:\n  - {name: x, driver: nosuchdriver}\n",
    "a device without a name": BASE + "devices:\n  - {driver: uhf-r2000, port: /dev/ttyUSB0}\n",
    "a device name with a space": BASE + "devices:\n" + R2000.replace("reader-1", "reader 1"),
    "an r2000 address out of range": BASE + "devices:\n" + R2000.replace("port:", "address: 300, port:"),
}


def loader_accepts(tmp_path: Path, text: str) -> bool:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    try:
        load_config(path, environ={})
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_the_loader_accepts_the_schema_accepts(
    case: str, tmp_path: Path, schemas: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    text = ACCEPTED[case]
    assert loader_accepts(tmp_path, text), case
    assert Validator(schemas[0]).errors(as_json(yaml.safe_load(text))) == []


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_what_the_loader_rejects_by_shape_the_schema_rejects(
    case: str, tmp_path: Path, schemas: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    text = REJECTED[case]
    assert not loader_accepts(tmp_path, text), case
    assert Validator(schemas[0]).errors(as_json(yaml.safe_load(text))) != []


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLE.parent.glob("*.yaml")))
def test_every_example_config_validates(schemas: tuple[dict[str, Any], dict[str, Any]], example: str) -> None:
    """Every shipped example (RFID smoothing, meters, ...) is accepted by the schema as by the loader."""
    path = EXAMPLE.parent / example
    load_config(path)
    doc = as_json(yaml.safe_load(path.read_text()))
    assert Validator(schemas[0]).errors(doc) == []


def test_smoothing_only_on_a_driver_that_emits_rfid_reads(
    schemas: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    validator = Validator(schemas[1])
    reader = {"name": "r", "driver": "uhf-r2000", "port": "/dev/ttyUSB1", "smoothing": {"depart_after_s": 5}}
    assert validator.errors(reader) == []
    assert validator.errors({**reader, "smoothing": {"depart_after": 5}}) != []  # a misspelt option
    meter = {"name": "m", "driver": "modbus", "port": "/dev/ttyUSB2", "points": [], "smoothing": {}}
    assert any("smoothing" in e for e in validator.errors(meter))


def test_an_r2000_option_is_checked_against_that_driver_only(
    schemas: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    errors = Validator(schemas[0]).errors(
        as_json(yaml.safe_load(BASE + "devices:\n" + R2000.replace("port:", "baudrate: 12345, port:")))
    )
    assert any("$.devices[0].baudrate: 12345 not one of" in e for e in errors), errors


def test_device_files(schemas: tuple[dict[str, Any], dict[str, Any]]) -> None:
    validator = Validator(schemas[1])
    one = {"name": "reader-3", "driver": "uhf-r2000", "port": "/dev/ttyUSB1", "antennas": {"1": "gate"}}
    assert validator.errors(one) == []
    assert validator.errors([one, {**one, "name": "reader-4"}]) == []
    assert validator.errors({**one, "antenas": {"1": "gate"}}) != []
    assert validator.errors("reader-3") != []
    # It holds only what a device needs.
    assert "BufferConfig" not in schemas[1]["$defs"]
    assert "Device" in schemas[1]["$defs"]


def test_the_validator_catches_what_it_should() -> None:
    v = Validator(
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 2}}, "required": ["a"]}
    )
    assert v.errors({"a": 3}) == []
    assert v.errors({"a": 1}) == ["$.a: 1 < 2"]
    assert v.errors({"a": True}) != []
    assert v.errors({}) == ["$: missing 'a'"]
    with pytest.raises(AssertionError, match="does not know keyword 'uniqueItems'"):
        Validator({"uniqueItems": True}).errors([])
