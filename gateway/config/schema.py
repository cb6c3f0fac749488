"""The JSON Schema of the configuration, generated from the pydantic models, for YAML editors.

Two schemas, both from the models in :mod:`gateway.config` and each registered driver's ``Options``:

- ``config/schema/edgegw.schema.json``: the gateway file (``gateway.yaml``);
- ``config/schema/edgegw-device.schema.json``: a device file (``devices.d/*.yaml``: one device mapping or a
  list of them).

A device is ``name`` + ``driver`` + the driver's options; the schema picks the options by the ``driver:``
value (``if driver == X then X's options``), so an editor completes and checks the keys of that driver
only. Drivers come from the entry-point registry (:mod:`drivers.registry`); a driver that does not load
here (a missing optional dependency) is left out and named on stderr.

Regenerate after changing a model or adding a driver (a test fails until you do)::

    .venv/bin/python -m gateway.config.schema            # rewrites the checked-in files
    .venv/bin/python -m gateway.config.schema --check    # exit 1 if they are out of date

``edgegw schema [--device-file]`` prints one of them (for an installed gateway without the source tree).

Where the models say less than the loader accepts, the schema says what YAML may hold, not what pydantic
validates after its "before" validators: ``max_bytes`` takes ``512MiB`` as well as an integer,
``log_level`` any case, ``protocol`` the number 5, ``devices`` null; ``client_id`` is optional (the loader
fills it in). Those few adjustments are keyed on the validator functions in :data:`_BEFORE` and
:data:`_AFTER` below.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from drivers import registry
from drivers.base import Driver
from drivers.commands import CommandSpec
from drivers.kinds import RFID_READ
from gateway.config import models as cfg
from gateway.delivery.upstream import KINDS, Upstream, UpstreamKindError, load_kind
from gateway.processors.rfid import SmoothingOptions

__all__ = ["DEVICE_FILE", "GATEWAY_FILE", "REGENERATE", "SCHEMA_DIR", "build", "dumps", "main", "render"]

SCHEMA_DIR: Final = Path(__file__).resolve().parents[2] / "config" / "schema"
GATEWAY_FILE: Final = "edgegw.schema.json"
DEVICE_FILE: Final = "edgegw-device.schema.json"
REGENERATE: Final = ".venv/bin/python -m gateway.config.schema"
"""The one command that regenerates the checked-in schemas."""
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


# --------------------------------------------------------------------------------------------------------
# What YAML may hold where a before-validator converts it


def _case_insensitive(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


def _size_pattern() -> str:
    units = "|".join(
        _case_insensitive(unit) for unit in sorted(cfg._SIZE_UNITS, key=len, reverse=True) if unit
    )
    return rf"^\s*\d+(\.\d+)?\s*({units})?\s*$"


def _size(_: JsonSchemaValue, minimum: int = 1) -> JsonSchemaValue:
    return {
        "anyOf": [
            {"type": "integer", "minimum": minimum},
            {"type": "string", "pattern": _size_pattern(), "examples": ["512MiB", "1GiB", "2GB"]},
        ]
    }


def _size_or_zero(inner: JsonSchemaValue) -> JsonSchemaValue:
    return _size(inner, minimum=0)


def _any_case(inner: JsonSchemaValue) -> JsonSchemaValue:
    """The enum for completion, a case-insensitive pattern for validation."""
    values = inner.get("enum", [inner["const"]] if "const" in inner else [])
    out = {k: v for k, v in inner.items() if k not in ("enum", "const", "type")}
    pattern = "^(" + "|".join(_case_insensitive(v) for v in values) + ")$"
    out["anyOf"] = [{"enum": values}, {"type": "string", "pattern": pattern}]
    return out


def _number_text(inner: JsonSchemaValue) -> JsonSchemaValue:
    values = inner.get("enum", [])
    out = {k: v for k, v in inner.items() if k not in ("enum", "type")}
    out["enum"] = [*values, *(int(v) for v in values if v.isdigit())]
    return out


def _nullable(inner: JsonSchemaValue) -> JsonSchemaValue:
    return {"anyOf": [inner, {"type": "null"}]}


def _not_blank(inner: JsonSchemaValue) -> JsonSchemaValue:
    return {**inner, "pattern": r"\S"}


def _pattern(regex: str) -> Callable[[JsonSchemaValue], JsonSchemaValue]:
    def add(inner: JsonSchemaValue) -> JsonSchemaValue:
        return {**inner, "pattern": regex}

    return add


_BEFORE: Final[dict[Callable[..., Any], Callable[[JsonSchemaValue], JsonSchemaValue]]] = {
    cfg._parse_size: _size,
    cfg._parse_size_or_zero: _size_or_zero,
    cfg._upper: _any_case,
    cfg._protocol_text: _number_text,
    cfg._none_is_empty: _nullable,
    cfg._check_not_empty: _not_blank,
}
_AFTER: Final[dict[Callable[..., Any], Callable[[JsonSchemaValue], JsonSchemaValue]]] = {
    cfg._check_name: _pattern(f"^{cfg._NAME_RE.pattern}$"),
    cfg._check_env: _pattern(f"^{cfg._ENV_RE.pattern}$"),
    cfg._check_url: _pattern(f"^{_case_insensitive('mqtt')}[sS]?://[^/?#@]+/?$"),
}


class _Generator(GenerateJsonSchema):
    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        inner = super().function_before_schema(schema)
        fix = _BEFORE.get(schema["function"]["function"])
        return fix(inner) if fix else inner

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        inner = super().function_after_schema(schema)
        fix = _AFTER.get(schema["function"]["function"])
        return fix(inner) if fix else inner


# --------------------------------------------------------------------------------------------------------
# Building


def _loadable_drivers(names: Sequence[str], errors: list[str]) -> dict[str, type[Driver[Any]]]:
    drivers: dict[str, type[Driver[Any]]] = {}
    for name in names:
        try:
            drivers[name] = registry.load(name)
        except Exception as err:  # a missing dependency, a broken module: the schema goes on without it
            errors.append(f"driver {name!r} left out of the schema: {err}")
    return drivers


def _loadable_kinds(errors: list[str]) -> dict[str, type[Upstream]]:
    """The upstream kinds that import here (one that does not is left out and named, as a driver is)."""
    kinds: dict[str, type[Upstream]] = {}
    for kind in KINDS:
        try:
            kinds[kind] = load_kind(kind)
        except UpstreamKindError as err:
            errors.append(f"upstream kind {kind!r} left out of the schema: {err}")
    return kinds


def _summary(cls: type[Driver[Any]]) -> str:
    """The first paragraph of the driver class's own docstring, else of its module's."""
    doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def build(drivers: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The gateway-file schema, the device-file schema, and the drivers left out (with why).

    ``drivers``: the driver names to include (default: every registered one that loads)."""
    left_out: list[str] = []
    loaded = _loadable_drivers(registry.names() if drivers is None else drivers, left_out)
    by_options: dict[type[BaseModel], list[str]] = {}
    for name, cls in sorted(loaded.items()):
        by_options.setdefault(cls.Options, []).append(name)

    models: list[tuple[type[BaseModel], Any]] = [
        (cfg._GatewayFile, "validation"),
        (SmoothingOptions, "validation"),
    ]
    models += [(options, "validation") for options in by_options]
    kinds = _loadable_kinds(left_out)
    models += [(cls.Options, "validation") for cls in kinds.values()]
    command_args = {spec.args for cls in loaded.values() for spec in cls.commands.values()}
    models += [(args, "validation") for args in sorted(command_args, key=lambda m: m.__qualname__)]
    refs, top = models_json_schema(models, schema_generator=_Generator, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = _clean(top["$defs"])

    def def_name(model: type[BaseModel]) -> str:
        return str(refs[(model, "validation")]["$ref"]).removeprefix("#/$defs/")

    gateway = defs.pop(def_name(cfg._GatewayFile))
    defs["MqttConfig"]["required"] = [r for r in defs["MqttConfig"]["required"] if r != "client_id"]

    name_schema = {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": f"^{cfg._NAME_RE.pattern}$",
        "description": "Unique device name (across every file): letters, digits, '_', '.' and '-', starting "
        "with a letter or digit; at most 64 characters. It goes into MQTT topics.",
    }
    branches = []
    for options, names in by_options.items():
        key = def_name(options)
        body = defs[key]
        which: dict[str, Any] = {"const": names[0]} if len(names) == 1 else {"enum": names}
        driver = {**which, "description": _summary(loaded[names[0]])}
        body["properties"] = {"name": name_schema, "driver": driver, **body.get("properties", {})}
        if any(RFID_READ in loaded[n].emits for n in names):  # what the loader allows: see DeviceConfig
            body["properties"]["smoothing"] = {
                "description": "Tag smoothing and lane counts for this RFID device (see the README).",
                "anyOf": [{"$ref": f"#/$defs/{def_name(SmoothingOptions)}"}, {"type": "null"}],
            }
        offered = {c: spec for n in names for c, spec in loaded[n].commands.items()}
        body["properties"]["commands"] = _commands_schema(offered, def_name)
        body["properties"]["position_from"] = {
            "description": "A gps device (its name) whose latest fix this device's events carry as "
            "`position` (lat, lon, time); see the README.",
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}],
        }
        body["required"] = ["name", "driver", *body.get("required", [])]
        condition = {"properties": {"driver": which}, "required": ["driver"]}
        branches.append({"if": condition, "then": {"$ref": f"#/$defs/{key}"}})
    defs["Device"] = {
        "type": "object",
        "title": "Device",
        "description": "One device: its name, its driver (`driver:`) and that driver's options.",
        "required": ["name", "driver"],
        "properties": {
            "name": name_schema,
            "driver": {
                "description": "The driver: " + ", ".join(sorted(loaded)) + ".",
                "enum": sorted(loaded),
            },
        },
        "allOf": branches,
    }
    kind_branches = []
    for kind, kind_cls in kinds.items():
        key = def_name(kind_cls.Options)
        body = defs[key]
        if "client_id" in body.get("required", []):  # the loader fills it in
            body["required"] = [r for r in body["required"] if r != "client_id"]
        condition = {"properties": {"kind": {"const": kind}}, "required": ["kind"]}
        kind_branches.append({"if": condition, "then": {"$ref": f"#/$defs/{key}"}})
    defs["Upstream"] = {
        "type": "object",
        "title": "Upstream",
        "description": "One upstream: its name, its kind (`kind:`), that kind's options and its route.",
        "required": ["name", "kind"],
        "properties": {"kind": {"description": "The upstream kind.", "enum": sorted(kinds)}},
        "allOf": kind_branches,
    }
    gateway["properties"]["upstreams"] = {
        "description": gateway["properties"]["upstreams"].get("description", ""),
        "type": "array",
        "minItems": 1,
        "items": {"$ref": "#/$defs/Upstream"},
    }
    gateway["properties"]["upstream"] = {
        k: v for k, v in gateway["properties"]["upstream"].items() if k not in ("default",)
    }
    gateway["oneOf"] = [{"required": ["upstream"]}, {"required": ["upstreams"]}]
    devices = gateway["properties"]["devices"]
    gateway["properties"]["devices"] = {
        "description": devices.get("description", ""),
        "anyOf": [{"type": "array", "items": {"$ref": "#/$defs/Device"}}, {"type": "null"}],
    }

    gateway_schema = {
        "$schema": _DIALECT,
        "title": "edgegw gateway file",
        "description": "The gateway's YAML file (edgegw run -c FILE). Generated from "
        f"gateway/config/models.py by `{REGENERATE}`: do not edit.",
        **{k: v for k, v in gateway.items() if k not in ("title", "description")},
        "$defs": dict(sorted(defs.items())),
    }
    device_schema = {
        "$schema": _DIALECT,
        "title": "edgegw device file",
        "description": "A file in devices_dir (devices.d/*.yaml): one device, or a list of devices. "
        f"Generated from the drivers' options by `{REGENERATE}`: do not edit.",
        "anyOf": [{"$ref": "#/$defs/Device"}, {"type": "array", "items": {"$ref": "#/$defs/Device"}}],
        "$defs": {name: defs[name] for name in sorted(_reachable(defs, "Device"))},
    }
    return gateway_schema, device_schema, left_out


def _commands_schema(
    offered: Mapping[str, CommandSpec], def_name: Callable[[type[BaseModel]], str]
) -> dict[str, Any]:
    """A device's ``commands:``: the names its driver offers, each documented with its ``args`` model
    (``x-edgegw-commands``: name -> description and the ``$ref`` of the args schema)."""
    if not offered:
        return {
            "description": "The commands upstream may send this device: its driver offers none.",
            "anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}],
        }
    lines = "; ".join(f"{name}: {spec.doc}" for name, spec in sorted(offered.items()))
    return {
        "description": "The commands upstream may send this device (none by default; needs "
        f"upstream.mqtt.commands.enabled). Its driver offers: {lines}.",
        "anyOf": [
            {"type": "array", "items": {"enum": sorted(offered)}, "uniqueItems": True},
            {"type": "null"},
        ],
        "x-edgegw-commands": {
            name: {"description": spec.doc, "args": {"$ref": f"#/$defs/{def_name(spec.args)}"}}
            for name, spec in sorted(offered.items())
        },
    }


_UNMAPPED: Final = frozenset({"ge", "gt", "le", "lt", "multiple_of", "strict"})
"""Constraints pydantic passes through under their Python names when it cannot place them (on a value a
before-validator converts, e.g. ``max_bytes``): not JSON Schema keywords, and the fix-up above already
states them."""


def _clean(node: Any) -> Any:
    """``node`` without :data:`_UNMAPPED` keywords (schema objects only: a property may be named ``ge``)."""
    if isinstance(node, list):
        return [_clean(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _UNMAPPED:
            continue
        if key in ("properties", "$defs", "patternProperties", "dependentSchemas"):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "examples", "required"):
            out[key] = value
        else:
            out[key] = _clean(value)
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _reachable(defs: dict[str, Any], root: str) -> set[str]:
    seen = {root}
    todo = [root]
    while todo:
        for name in _refs(defs[todo.pop()]):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def render() -> tuple[dict[str, str], list[str]]:
    """File name -> text of each schema file, and the drivers left out."""
    gateway_schema, device_schema, left_out = build()
    return {GATEWAY_FILE: dumps(gateway_schema), DEVICE_FILE: dumps(device_schema)}, left_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.config.schema", description="Regenerate config/schema/*.json from the models."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files are out of date; write nothing"
    )
    parser.add_argument(
        "--dir", type=Path, default=SCHEMA_DIR, help=f"where the files go (default {SCHEMA_DIR})"
    )
    args = parser.parse_args(argv)
    files, left_out = render()
    for line in left_out:
        print(line, file=sys.stderr)
    stale = []
    for name, text in files.items():
        path = args.dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        print(f"wrote {path}", file=sys.stderr)
    if not stale:
        print(f"{', '.join(files)}: up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
