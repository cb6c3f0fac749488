"""The architecture, enforced: imports point one way (the project's DESIGN.md, "Layout";
the README's layout table).

- ``protocols`` imports none of the project's other packages (pure codecs);
- ``firmware_sim`` imports only ``protocols`` (a simulator sharing the driver's code could not catch the
  driver's mistakes);
- ``drivers`` imports neither ``gateway`` nor ``firmware_sim`` (a driver never knows the runtime);
- in ``gateway`` only ``gateway.cli`` imports ``firmware_sim`` (``edgegw sim`` and ``edgegw demo``);
- no project code imports a GPL library (sllurp, zigpy): they are test-only tools.

Read from the source with :mod:`ast`, every import statement wherever it stands (inside functions too),
relative ones resolved, so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "drivers", "protocols", "firmware_sim")
GPL = ("sllurp", "zigpy")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imports_of(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative imports made absolute."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from gateway import cli` imports the module gateway.cli
                yield node.lineno, f"{target}.{alias.name}"


def top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def forbidden(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None: allowed)."""
    where, what = top(importer), top(imported)
    if what in GPL:
        return f"{what} is GPL: a test-only tool, never imported by the project"
    if what not in PACKAGES or what == where:
        return None
    if where == "protocols":
        return "protocols imports none of the project's other packages"
    if where == "firmware_sim" and what != "protocols":
        return "firmware_sim imports only protocols"
    if where == "drivers" and what in ("gateway", "firmware_sim"):
        return f"drivers never imports {what}"
    if where == "gateway" and what == "firmware_sim" and not importer.startswith("gateway.cli"):
        return "only gateway.cli imports firmware_sim"
    return None


def test_imports_point_one_way() -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line}: {name} imports {imported}: {why}"
        for name, path in modules()
        for line, imported in imports_of(name, path)
        if (why := forbidden(name, imported))
    ]
    assert broken == []


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("protocols.llrp.messages", "protocols.llrp.params", True),
        ("protocols.r2000", "drivers.event", False),
        ("firmware_sim.r2000", "protocols.r2000", True),
        ("firmware_sim.r2000", "drivers.r2000", False),
        ("drivers.r2000", "protocols.r2000", True),
        ("drivers.r2000", "gateway.app", False),
        ("gateway.cli.demo", "firmware_sim.r2000", True),
        ("gateway.app", "firmware_sim.r2000", False),
        ("gateway.app", "drivers.base", True),
        ("gateway.app", "sllurp.llrp", False),
    ],
)
def test_the_rules_say_what_they_mean(importer: str, imported: str, allowed: bool) -> None:
    assert (forbidden(importer, imported) is None) is allowed


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "demo.py"
    path.write_text("from ..delivery import buffer\nfrom . import status\n")
    found = {m for _, m in imports_of("gateway.cli.demo", path)}
    assert {"gateway.delivery", "gateway.delivery.buffer", "gateway.cli", "gateway.cli.status"} <= found
