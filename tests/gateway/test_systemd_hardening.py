"""The systemd unit's hardening (issue 15, security), checked twice: by reading the directives here (this
runs everywhere), and, where systemd-analyze exists (it does on this project's CI machine), by
``systemd-analyze security --offline``: every protection the unit claims must be one systemd scores as met
(a check mark); the overall exposure stays at systemd's "OK" level (tests/gateway/test_systemd_unit.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.test_systemd_unit import UNIT, installed_copy, parse_unit

pytestmark = pytest.mark.timeout(60)

HARDENING = {
    "User": "edgegw",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "RemoveIPC": "yes",
    "PrivateMounts": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "DevicePolicy": "closed",
    "UMask": "0027",
}
"""Directive -> the value the unit must give it."""

SCORED = (
    "User=/DynamicUser=",
    "NoNewPrivileges=",
    "ProtectSystem=",
    "ProtectHome=",
    "PrivateTmp=",
    "ProtectKernelTunables=",
    "ProtectKernelModules=",
    "ProtectKernelLogs=",
    "ProtectControlGroups=",
    "ProtectClock=",
    "ProtectHostname=",
    "RestrictNamespaces=~user",
    "RestrictRealtime=",
    "RestrictSUIDSGID=",
    "RemoveIPC=",
    "LockPersonality=",
    "SystemCallArchitectures=",
    "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    "CapabilityBoundingSet=~CAP_NET_ADMIN",
    "CapabilityBoundingSet=~CAP_SYS_PTRACE",
    "AmbientCapabilities=",
    "SystemCallFilter=~@mount",
    "SystemCallFilter=~@module",
    "SystemCallFilter=~@reboot",
    "SystemCallFilter=~@raw-io",
)
"""Names in systemd-analyze security's table that these directives must turn into a check mark."""


def test_the_unit_sets_every_hardening_directive() -> None:
    service = {k: v[-1] for k, v in parse_unit(UNIT.read_text())["Service"].items() if v}
    wrong = {k: service.get(k) for k, v in HARDENING.items() if service.get(k) != v}
    assert wrong == {}
    assert parse_unit(UNIT.read_text())["Service"]["CapabilityBoundingSet"] == []  # empty: no capability
    assert "AmbientCapabilities" not in service
    assert "DynamicUser" not in service  # secrets are root:edgegw 0640, which needs a fixed group


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_scores_each_protection_as_met(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    done = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(installed_copy(tmp_path))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    marks: dict[str, str] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("✓", "✗"):
            marks[parts[1]] = parts[0]
    assert marks, done.stdout + done.stderr
    unmet = [name for name in SCORED if marks.get(name) != "✓"]
    assert unmet == [], {name: marks.get(name) for name in unmet}
