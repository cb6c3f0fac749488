"""scripts/build-deb: the Debian package, built from this checkout and installed with dpkg on this machine.

One test walks a package's life on a fleet box, checking what is on disk at each step: install (the
venv, the user in dialout, the unit fitted to /opt/edgegw, the conffiles and their permissions, `edgegw
check` on the installed example), a run of the installed gateway as its user against a real broker (it
writes its buffer under /var/lib/edgegw), an upgrade to a newer version keeping the edited config and the
buffer, remove (config and buffer stay), purge (the package's files go, asking nothing; the buffer and a
file the operator added stay), and a purge with EDGEGW_PURGE_BUFFER=1 (the buffer goes too).

It needs root, as dpkg does: run as anyone else it fails and says so (CI runs the tests as root). It
refuses to touch an edgegw package it did not install (any version without ``~test``), or a
/var/lib/edgegw it did not create, so that it never damages a real installation.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Mosquitto, Subscriber
from tests.waiting import until

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "scripts" / "build-deb"
ETC = Path("/etc/edgegw")
GATEWAY_YAML = ETC / "gateway.yaml"
EXAMPLE_DEVICE = ETC / "devices.d" / "reader-1.yaml"
STATE = Path("/var/lib/edgegw")
BUFFER = STATE / "buffer.db"
SENTINEL = STATE / ".edgegw-packaging-test"
VENV = Path("/opt/edgegw")
UNIT = Path("/usr/lib/systemd/system/edgegw.service")
SECRET = ETC / "mqtt.password"
TEST_MARK = "~test"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, stdout_only: bool = False
) -> str:
    """Run a command; fail the test with its output if it fails; return stdout and stderr together (or
    stdout only). From /, so that the checkout is not on a Python's path."""
    done = subprocess.run(
        args,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output}"
    return done.stdout if stdout_only else output


def dpkg(*args: str, purge_buffer: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "EDGEGW_PURGE_BUFFER"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    if purge_buffer:
        env["EDGEGW_PURGE_BUFFER"] = "1"
    return run("dpkg", *args, env=env)


def package_status() -> tuple[str, str] | None:
    """(dpkg's status, version) of edgegw, or None when dpkg does not know it (never installed, purged)."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", "edgegw"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    status, version = done.stdout.split("\t")
    return None if status.endswith(" not-installed") else (status, version)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def owner(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def purge_test_install() -> None:
    """Leave the machine as it was: purge a package of this test's, with its buffer."""
    status = package_status()
    if status is not None and TEST_MARK in status[1]:
        dpkg("--purge", "edgegw", purge_buffer=True)
    SECRET.unlink(missing_ok=True)
    for d in (ETC / "devices.d", ETC):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if SENTINEL.exists():
        shutil.rmtree(STATE)


@pytest.fixture
def machine() -> Iterator[None]:
    """Root, dpkg, and no edgegw installation but this test's own."""
    if os.geteuid() != 0:
        pytest.fail(
            "tests/packaging/test_deb.py installs a Debian package with dpkg: it must run as root "
            f"(it runs as uid {os.geteuid()}); CI runs the suite as root"
        )
    for tool in ("dpkg", "dpkg-deb", "dpkg-query"):
        assert shutil.which(tool), f"{tool} not found: scripts/bootstrap installs what build-deb needs"
    status = package_status()
    if status is not None and TEST_MARK not in status[1]:
        pytest.fail(f"an edgegw package not built by this test is installed ({status}): not touching it")
    if STATE.exists() and not SENTINEL.exists() and status is None:
        pytest.fail(f"{STATE} exists and was not made by this test (a real buffer?): not touching it")
    purge_test_install()
    try:
        yield
    finally:
        purge_test_install()


def build(version: str, out: Path, cache: Path) -> Path:
    output = run(
        str(BUILD_DEB),
        "--version",
        version,
        "--out",
        str(out),
        "--wheel-cache",
        str(cache),
        "--compress",
        "gzip",
        timeout=900,
        stdout_only=True,
    )
    deb = Path(output.strip().splitlines()[-1])
    assert deb.is_file(), output
    assert deb.parent == out
    return deb


def edit_config(broker: Mosquitto) -> None:
    """What an operator does: their gateway id and broker, and metrics off (port 9108 may be taken on a
    shared test machine)."""
    text = GATEWAY_YAML.read_text()
    text, n_id = re.subn(r"(?m)^  id: gateway-1\b", "  id: cabinet-7", text)
    text, n_url = re.subn(r"(?m)^    url: mqtt://127\.0\.0\.1:1883\b", f"    url: {broker.url}", text)
    text, n_metrics = re.subn(r"(?m)^  listen: 127\.0\.0\.1:9108\b", "  enabled: false", text)
    assert (n_id, n_url, n_metrics) == (1, 1, 1), "the installed example changed: fit edit_config"
    GATEWAY_YAML.write_text(text)


async def run_installed_gateway(broker: Mosquitto) -> None:
    """The installed gateway, as the user `edgegw` with the unit's groups (no systemd here): it must open
    its buffer under /var/lib/edgegw and publish its retained `online` to the broker; a SIGTERM stops it
    cleanly."""
    async with Subscriber(broker, "edgegw/cabinet-7/status") as sub:
        proc = await asyncio.create_subprocess_exec(
            *(str(VENV / "bin" / "edgegw"), "run", "-c", str(GATEWAY_YAML)),
            user="edgegw",
            group="edgegw",
            extra_groups=["dialout"],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            await sub.wait_until(
                lambda ms: any(m.payload.startswith(b"online") or b'"online"' in m.payload for m in ms),
                timeout=60,
            )
            await until("the buffer file", BUFFER.exists)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                output, _ = await proc.communicate()
        assert proc.returncode == 0, output.decode(errors="replace")
    assert owner(BUFFER)[0] == "edgegw"


def test_install_upgrade_remove_purge(
    machine: None, broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("debs")
    cache = Path(os.environ.get("EDGEGW_WHEEL_CACHE") or tmp_path_factory.mktemp("wheels"))
    v1, v2 = f"{project_version()}{TEST_MARK}1", f"{project_version()}{TEST_MARK}2"
    deb1 = build(v1, out, cache)
    deb2 = build(v2, out, cache)
    info = run("dpkg-deb", "--info", str(deb1))
    assert re.search(r"(?m)^ Depends: python3\.1[1-9], libc6, adduser$", info), info

    # -- install
    dpkg("--install", str(deb1))
    assert package_status() == ("install ok installed", v1)
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "edgegw")
    assert {line.split()[0] for line in conffiles.strip().splitlines()} == {
        str(GATEWAY_YAML),
        str(EXAMPLE_DEVICE),
    }
    # The venv: self-contained, the system's interpreter, edgegw and its runtime dependencies only.
    assert os.readlink("/usr/bin/edgegw") == str(VENV / "bin" / "edgegw")
    assert (VENV / "bin" / "edgegw").read_text().startswith(f"#!{VENV}/bin/python")
    probe = run(
        str(VENV / "bin" / "python"),
        "-c",
        "import importlib.util as u, sys, gateway, paho.mqtt, pydantic, construct;"
        "print(sys.prefix, sys.version_info >= (3, 11), gateway.__file__,"
        " [m for m in ('pip', 'pytest', 'hypothesis', 'mypy', 'ruff', 'sllurp') if u.find_spec(m)])",
    )
    assert probe.split() == [str(VENV), "True", *probe.split()[2:3], "[]"], probe
    assert probe.split()[2].startswith(f"{VENV}/lib/python3."), probe
    # The unit, fitted to the venv.
    unit = UNIT.read_text()
    assert f"\nExecStart={VENV}/bin/edgegw run -c /etc/edgegw/gateway.yaml\n" in unit
    assert "\nUser=edgegw\n" in unit
    if shutil.which("systemd-analyze"):
        verify = run("systemd-analyze", "verify", "--man=no", "--generators=no", str(UNIT))
        assert "edgegw.service" not in verify, verify
    # The user, the state directory, the config's permissions.
    assert pwd.getpwnam("edgegw").pw_shell == "/usr/sbin/nologin"
    assert "edgegw" in grp.getgrnam("dialout").gr_mem
    assert owner(STATE) == ("edgegw", "edgegw", 0o750)
    assert owner(ETC) == ("root", "edgegw", 0o750)
    assert owner(GATEWAY_YAML) == ("root", "edgegw", 0o640)
    assert owner(EXAMPLE_DEVICE) == ("root", "edgegw", 0o640)
    assert "\n#" in GATEWAY_YAML.read_text()  # the example is commented
    # edgegw check on the installed example, by the venv's path and as `edgegw` on PATH.
    assert "/etc/edgegw/gateway.yaml: OK (1 device)" in run(
        str(VENV / "bin" / "edgegw"), "check", "-c", str(GATEWAY_YAML)
    )
    assert "OK (1 device)" in run("edgegw", "check", "-c", str(GATEWAY_YAML))

    # -- the installed gateway runs, as its user, and writes its buffer
    SENTINEL.touch()
    edit_config(broker)
    SECRET.write_text("not-a-real-password\n")
    edited = GATEWAY_YAML.read_text()
    asyncio.run(run_installed_gateway(broker))
    buffer_digest = sha256(BUFFER)
    # Byte-code ships compiled for /opt/edgegw: running edgegw (as root, above) wrote nothing there.
    owned = set(run("dpkg-query", "-L", "edgegw").splitlines())
    strays = [str(p) for p in VENV.rglob("*") if str(p) not in owned]
    assert strays == [], strays[:10]

    # -- upgrade: a newer version keeps the edited config and the buffer
    dpkg("--install", str(deb2))
    assert package_status() == ("install ok installed", v2)
    assert GATEWAY_YAML.read_text() == edited
    assert owner(GATEWAY_YAML) == ("root", "edgegw", 0o640)
    assert EXAMPLE_DEVICE.is_file()
    assert sha256(BUFFER) == buffer_digest
    assert owner(STATE) == ("edgegw", "edgegw", 0o750)
    assert "OK (1 device)" in run("edgegw", "check", "-c", str(GATEWAY_YAML))
    asyncio.run(run_installed_gateway(broker))  # the upgraded gateway opens the kept buffer
    buffer_digest = sha256(BUFFER)

    # -- remove: the program goes; the config, the buffer and the user stay
    dpkg("--remove", "edgegw")
    assert package_status() == ("deinstall ok config-files", v2)
    assert not VENV.exists()
    assert not Path("/usr/bin/edgegw").exists()
    assert not UNIT.exists()
    assert GATEWAY_YAML.read_text() == edited
    assert EXAMPLE_DEVICE.is_file()
    assert sha256(BUFFER) == buffer_digest
    pwd.getpwnam("edgegw")

    # -- purge: asks nothing (stdin is /dev/null); the config goes; the buffer and the operator's file stay
    said = dpkg("--purge", "edgegw")
    assert package_status() is None
    assert not GATEWAY_YAML.exists()
    assert not EXAMPLE_DEVICE.parent.exists()
    assert sorted(p.name for p in ETC.iterdir()) == [SECRET.name]
    assert str(ETC) in said and SECRET.name in said
    assert sha256(BUFFER) == buffer_digest
    assert "EDGEGW_PURGE_BUFFER=1" in said
    assert not Path("/etc/systemd/system/multi-user.target.wants/edgegw.service").exists()
    pwd.getpwnam("edgegw")

    # -- install again: a fresh example config, the kept buffer; then purge with the buffer
    SECRET.unlink()
    dpkg("--install", str(deb2))
    assert "id: gateway-1" in GATEWAY_YAML.read_text()
    assert sha256(BUFFER) == buffer_digest
    dpkg("--purge", "edgegw", purge_buffer=True)
    assert package_status() is None
    assert not STATE.exists()
    assert not ETC.exists()
    assert not VENV.exists()
