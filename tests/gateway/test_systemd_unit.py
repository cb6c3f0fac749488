"""config/systemd/edgegw.service: systemd itself must accept every line, and the unit must say what the
issue asks of it (Type=notify with a watchdog, reload by SIGHUP, hardening)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "config" / "systemd" / "edgegw.service"
EDGEGW = str(Path(sys.executable).with_name("edgegw"))

pytestmark = pytest.mark.timeout(60)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each key with every value it was given in
    order (keys repeat, e.g. DeviceAllow=; an empty assignment resets the list); comments and blank lines
    skipped, backslash continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def installed_copy(tmp_path: Path) -> Path:
    """The unit as it runs once edgegw is installed: systemd checks that ExecStart's program exists, and
    on this machine the program is the virtual environment's."""
    text = UNIT.read_text()
    assert "\nExecStart=edgegw " in text
    copy = tmp_path / "edgegw.service"
    copy.write_text(text.replace("\nExecStart=edgegw ", f"\nExecStart={EDGEGW} "))
    return copy


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze not found: install systemd (apt-get install systemd)"
    return tool


def test_systemd_analyze_verify_accepts_every_line(tmp_path: Path) -> None:
    copy = installed_copy(tmp_path)
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", "--generators=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # verify exits 0 even when it ignores a line it cannot parse; it names the file in each warning.
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines() if copy.name in line or str(copy) in line
    ]
    assert done.returncode == 0, done.stderr
    assert complaints == []


def test_hardening_stays_at_systemds_ok_exposure_level(tmp_path: Path) -> None:
    copy = installed_copy(tmp_path)
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r"Overall exposure level for edgegw\.service: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= 4.0, done.stdout


def test_the_unit_says_what_the_issue_asks() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items() if values}

    assert service["Type"] == "notify"
    assert service["ExecStart"] == "edgegw run -c /etc/edgegw/gateway.yaml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert re.fullmatch(r"\d+s?", service["WatchdogSec"])
    assert re.fullmatch(r"\d+s?", service["TimeoutStopSec"])

    assert service["User"] == "edgegw"
    assert "DynamicUser" not in service
    assert service["SupplementaryGroups"] == "dialout"
    assert service["StateDirectory"] == "edgegw"
    assert service["ConfigurationDirectory"] == "edgegw"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    families = " ".join(unit["Service"]["RestrictAddressFamilies"]).split()
    assert sorted(families) == sorted(
        ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_CAN", "AF_BLUETOOTH"]
    )

    assert service["DevicePolicy"] == "closed"
    allowed = dict(value.split() for value in unit["Service"]["DeviceAllow"])
    for group in ("char-ttyS", "char-ttyUSB", "char-ttyACM", "char-usb_device"):
        assert allowed.get(group) == "rw", group

    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_parse_unit_follows_systemds_list_rules() -> None:
    unit = parse_unit(
        "[Service]\n# a comment\nDeviceAllow=char-ttyS rw\nDeviceAllow=char-ttyUSB rw\n"
        "Environment=A=1 \\\n  B=2\nDeviceAllow=\nDeviceAllow=char-ttyACM rw\n"
    )
    assert unit["Service"]["DeviceAllow"] == ["char-ttyACM rw"]
    assert unit["Service"]["Environment"] == ["A=1 B=2"]
