"""Counter names and event kinds are names with one meaning: constants, each written once (drivers.counters,
drivers.kinds, or at the top of the driver that alone has it), never strings scattered in calls."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from drivers import counters, kinds, registry

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"
CALLS = {"count", "emit", "emit_many", "report", "report_counter", "_report"}
"""Calls whose first argument is a counter name or an event kind."""


def _literal_names(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0]
        if name in CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.append(f"{path.name}:{node.lineno}: {name}({first.value!r}, ...)")
    return found


@pytest.mark.parametrize("path", sorted(DRIVERS.glob("*.py")), ids=lambda p: p.name)
def test_no_counter_or_kind_is_a_string_in_a_call(path: Path) -> None:
    assert _literal_names(path) == []


def test_the_well_known_names_are_distinct() -> None:
    names = [
        getattr(counters, n)
        for n in counters.__all__
        if n.isupper() and isinstance(getattr(counters, n), str)
    ]
    assert len(names) == len(set(names))
    assert {"decode_errors", "bytes_skipped", "frames_rejected"} <= set(names)  # what the metrics read
    every_kind = [getattr(kinds, n) for n in kinds.__all__]
    assert len(every_kind) == len(set(every_kind)) and kinds.DEVICE_STATUS == "device.status"


@pytest.mark.parametrize("name", registry.names())
def test_every_driver_declares_what_it_emits(name: str) -> None:
    emits = registry.load(name).emits
    assert emits, f"{name} declares no event kind"
    assert emits <= {getattr(kinds, n) for n in kinds.__all__}
