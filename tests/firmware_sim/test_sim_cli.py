"""``edgegw sim`` as an operator first meets it: ``--help``, from the installed console script, in a child
process. Every family's help must come out of ``edgegw sim --help`` and ``edgegw sim FAMILY --help``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.cli import FAMILIES

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
WIDTH = "110"
"""The terminal width argparse wraps to, in the child and here."""

pytestmark = pytest.mark.timeout(60)


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEGW, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "COLUMNS": WIDTH},
    )


@pytest.fixture(autouse=True)
def same_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", WIDTH)


def family_parser(name: str) -> argparse.ArgumentParser:
    """The parser FAMILIES adds for ``name``, built here to compare with what the child prints."""
    sub = argparse.ArgumentParser(prog="edgegw sim").add_subparsers()
    add, _ = FAMILIES[name]
    return add(sub)


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sim_help_lists_every_family_and_its_options(flag: str) -> None:
    done = edgegw("sim", flag)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith("usage: edgegw sim ")
    assert "edgegw sim FAMILY --help" in out
    for name in FAMILIES:
        parser = family_parser(name)
        assert f"{name} " in out and (parser.description or "") != ""
        # The family's usage line: every one of its options, as `edgegw sim FAMILY --help` would show them.
        assert f"edgegw sim {name} [-h]" in out, name
        for option in options(parser):
            if option.startswith("--"):
                assert option in out, (name, option)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_has_its_own_help(name: str) -> None:
    done = edgegw("sim", name, "--help")
    assert done.returncode == 0, done.stderr
    parser = family_parser(name)
    assert done.stdout == parser.format_help()
    for option in options(parser):
        assert option in done.stdout


def test_the_top_level_help_still_points_to_sim() -> None:
    done = edgegw("--help")
    assert done.returncode == 0
    assert "sim" in done.stdout
    # A family that does not exist, or none at all: a usage error naming the families, exit 2.
    for args in (("sim", "toaster"), ("sim",)):
        done = edgegw(*args)
        assert done.returncode == 2
        assert "usage: edgegw sim" in done.stderr
        assert all(name in done.stderr for name in FAMILIES)
