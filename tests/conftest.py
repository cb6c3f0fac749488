"""Shared test setup.

Hypothesis runs without deadlines everywhere (this machine is shared and noisy: a deadline is a timing
assertion) and derandomised under CI, so a run is reproducible and never flaky.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.broker import Mosquitto

settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- a private Mosquitto (tests/broker.py) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """One private broker for the session. Persistent, with unbounded per-client queues, so a subscriber's
    session (and what was queued for it) survives a test stopping and restarting the broker."""
    broker = Mosquitto(persistence=True, extra_config=["max_queued_messages 0"])
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The session broker, (re)started if an earlier test left it stopped."""
    return mosquitto.start()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, plus an unrelated CA (openssl CLI): for the
    TLS tests of the forwarder and of the LLRP driver."""
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        subject = f"/CN=edgegw test {ca}"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)  # fmt: skip
    return {name: d / name for name in ("ca.crt", "other-ca.crt", "server.crt", "server.key")}


# -- a small filesystem of its own, for disk-full tests -----------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_fs(bytes)``: a fresh tmpfs of that size, mounted for this test (root is needed: the test is
    skipped, saying why, where mounting is not allowed). Unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for a disk-full test (root needed): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
