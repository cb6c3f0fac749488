"""Credentials never leave their files (issue 15, security), asserted with everything at DEBUG: one
``edgegw run`` process using every secret the config can hold, each one in use for real --

- the MQTT password (from the environment) against a mosquitto that requires it, over mutual TLS with an
  encrypted client key whose password comes from a file (tests/pki.py makes the CA and certificates);
- the HJ 212 access password (PW, from a file) against the platform simulator, which checks it;
- the commands HMAC key (upstream.mqtt.commands.hmac_key_file), used by ``edgegw cmd`` to sign a request;
- a BTHome bind key, decrypting the published example advert of the shipped BLE capture --

and then none of them, nor a line of the client key file, in the gateway's log, ``edgegw check``'s output,
``edgegw cmd``'s output, /metrics, ``edgegw status --once``, or any message the broker received.
Also: /metrics stays on loopback by default, and elsewhere the gateway and ``edgegw check`` warn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim import hj212 as platform
from firmware_sim import modbus as modbus_sim
from gateway.app import Gateway
from gateway.config import load_config
from tests.broker import Mosquitto, TlsListener
from tests.e2e.harness import EXAMPLES, load_example
from tests.gateway.ops_helpers import http_get, running
from tests.pki import KEY_PASSWORD, make_pki
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

GW = "sec-gw"
MQTT_USER = "edge-sec"
MQTT_PASSWORD = "Mqtt-pw-only-in-env-4b7d91"
HJ212_PASSWORD = "Hj212Pw-only-in-file-c3e0"
HMAC_KEY = "hmac-key-only-in-file-9f2a6e51d8"
BINDKEY = "231d39c1d7cc1ab1aee224cd096db932"  # bthome.io's published example key, as in the capture
BTHOME_ADDRESS = "54:48:E6:8F:80:A5"
CAPTURE = EXAMPLES / "ble-adverts.jsonl"
PASSWORD_ENV = "EDGEGW_TEST_MQTT_PASSWORD"
WAIT_S = 40.0
EDGEGW = [sys.executable, "-m", "gateway.cli"]


class Listener:
    """A plain paho subscriber (with the broker's credentials) collecting every topic and payload."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def events(self, device: str) -> list[dict[str, Any]]:
        with self._lock:
            found = [json.loads(p) for t, p in self.messages if t.startswith(f"edgegw/{GW}/{device}/")]
        return [m for m in found if isinstance(m, dict)]

    def text(self) -> str:
        with self._lock:
            return "\n".join(f"{t} {p.decode(errors='replace')}" for t, p in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def secrets(key_file: Path) -> list[str]:
    """Every secret, in the spellings it could leak in; and each body line of the client key's PEM."""
    pem_lines = [line for line in key_file.read_text().splitlines() if line and not line.startswith("-----")]
    assert len(pem_lines) >= 3
    return [MQTT_PASSWORD, KEY_PASSWORD, HJ212_PASSWORD, HMAC_KEY, BINDKEY, BINDKEY.upper(), *pem_lines]


def site_config(tmp_path: Path, broker: Mosquitto, pki: Any, platform_port: int, modbus_port: int) -> Path:
    example = load_example("water-quality-station.yaml")
    epb = next(u for u in example["upstreams"] if u["kind"] == "hj212")
    quality = next(d for d in example["devices"] if d["name"] == "outfall-quality")
    (tmp_path / "hj212.password").write_text(HJ212_PASSWORD + "\n")
    (tmp_path / "cmd.key").write_text(HMAC_KEY + "\n")
    (tmp_path / "client-key.password").write_text(KEY_PASSWORD + "\n")
    epb.update(
        address=f"127.0.0.1:{platform_port}",
        password_file="hj212.password",
        state_file=str(tmp_path / "epb.json"),
        realtime_s=0.3,
        reconnect={"initial_s": 0.05, "max_s": 0.3},
    )
    quality.update(host="127.0.0.1", tcp_port=modbus_port, poll_s=0.2)
    config: dict[str, Any] = {
        "gateway": {"id": GW, "log_level": "DEBUG"},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "upstreams": [
            epb,
            {
                "name": "plant",
                "kind": "mqtt",
                "url": f"mqtts://127.0.0.1:{broker.tls_port}",
                "username": MQTT_USER,
                "password_env": PASSWORD_ENV,
                "tls": {
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key_encrypted),
                    "key_password_file": "client-key.password",
                },
                "reconnect": {"initial_s": 0.05, "max_s": 0.5},
                "commands": {"enabled": True, "hmac_key_file": "cmd.key"},
            },
        ],
        "supervisor": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "metrics": {"listen": "127.0.0.1:0"},
        "devices": [
            quality,
            {
                "name": "cabinet-bthome",
                "driver": "ble",
                "replay": str(CAPTURE),
                "replay_speed": 50,
                "service_uuids": ["fcd2"],
                "bindkeys": {BTHOME_ADDRESS: BINDKEY},
            },
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def gateway_process(config: Path, env: dict[str, str]) -> AsyncIterator[tuple[Any, Path]]:
    log_path = config.with_suffix(".log")
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *EDGEGW, "run", "-c", str(config), "--log-level", "debug",
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        yield proc, log_path
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def tool(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *EDGEGW, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "mosquitto.passwd"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), MQTT_USER, MQTT_PASSWORD], check=True)
    return path


async def test_no_secret_reaches_logs_metrics_status_or_tool_output(tmp_path: Path, passwords: Path) -> None:
    pki = make_pki(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PASSWORD_ENV: MQTT_PASSWORD})
    listener = TlsListener(pki.ca, pki.server_cert, pki.server_key, require_certificate=True)
    broker_config = ["allow_anonymous false", f"password_file {passwords}"]
    example = load_example("water-quality-station.yaml")
    mn = next(u for u in example["upstreams"] if u["kind"] == "hj212")["mn"]
    outputs: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        broker = stack.enter_context(Mosquitto(extra_config=broker_config, tls=listener))
        quality = await stack.enter_async_context(modbus_sim.serve_tcp("127.0.0.1", 0, {1: "water-quality"}))
        options = platform.SimOptions(password=HJ212_PASSWORD, mns=(mn,))
        sim = await stack.enter_async_context(platform.serve_tcp("127.0.0.1", 0, options))
        assert sim.port is not None and quality.port is not None
        config = site_config(tmp_path, broker, pki, sim.port, quality.port)
        sub = Listener(broker)
        stack.callback(sub.close)
        assert await asyncio.to_thread(sub.subscribed.wait, 10)

        code, outputs["edgegw check"] = await tool("check", "-c", str(config), env=env)
        assert code == 0, outputs["edgegw check"]

        proc, log_path = await stack.enter_async_context(gateway_process(config, env))

        def log_text() -> str:
            return log_path.read_text(errors="replace")

        async def wait(what: str, predicate: Any) -> None:
            try:
                await until(what, predicate, WAIT_S)
            except AssertionError as err:
                raise AssertionError(f"{err}\n{sub.text()[-2000:]}\n{log_text()[-2000:]}") from None

        # every secret in use: mTLS + password to the broker, PW to the platform, the bind key decrypting
        await wait(
            "readings at the broker",
            lambda: any(m.get("kind") == "meter.reading" for m in sub.events("outfall-quality")),
        )
        await wait(
            "an encrypted BTHome advert decoded",
            lambda: any(
                m["data"].get("address") == BTHOME_ADDRESS and m["data"]["values"].get("temperature") == 25.06
                for m in sub.events("cabinet-bthome")
                if m.get("kind") == "ble.advert"
            ),
        )
        await wait("an upload the platform accepted", lambda: sim.stats.replies >= 1)
        assert sim.stats.refused == 0  # PW and MN accepted
        # the HMAC key in use: edgegw cmd signs with it, the gateway verifies
        code, outputs["edgegw cmd"] = await tool("cmd", "-c", str(config), "--gateway", "status", env=env)
        assert code == 0, outputs["edgegw cmd"]
        assert json.loads(outputs["edgegw cmd"])["status"] == "ok"

        match = re.search(r"metrics: serving http://127\.0\.0\.1:(\d+)/metrics", log_text())
        assert match is not None, log_text()[-3000:]
        port = int(match.group(1))
        status, body = await http_get(port, "/metrics")
        assert status == 200
        outputs["/metrics"] = body.decode()
        code, outputs["edgegw status"] = await tool("status", "--once", "--url", f"127.0.0.1:{port}", env=env)
        assert code == 0, outputs["edgegw status"]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        outputs["gateway log"] = log_text()
        outputs["broker messages"] = sub.text()

    assert " DEBUG " in outputs["gateway log"] or "DEBUG" in outputs["gateway log"]
    assert "edgegw_events" in outputs["/metrics"] and GW in outputs["edgegw cmd"]
    for secret in secrets(pki.client_key_encrypted):
        for where, text in outputs.items():
            assert secret not in text, f"a secret ({secret[:4]}...) is in {where}"


# -- metrics on loopback ------------------------------------------------------------------------------------


def metrics_config(tmp_path: Path, listen: str | None) -> Path:
    path = tmp_path / "gateway.yaml"
    metrics = f'metrics:\n  listen: "{listen}"\n' if listen is not None else ""
    path.write_text(
        f"gateway:\n  id: m-gw\nbuffer:\n  path: {tmp_path / 'buffer.db'}\n"
        f"upstream:\n  mqtt:\n    url: mqtt://127.0.0.1:1\n{metrics}devices: []\n"
    )
    return path


@pytest.mark.parametrize(
    ("listen", "warned"),
    [(None, False), ("[::1]:9108", False), ("localhost:9108", False), ("0.0.0.0:9108", True),
     ("192.0.2.10:9108", True), ("edge.example:9108", True)],
)  # fmt: skip
async def test_metrics_listen_on_loopback_by_default_and_elsewhere_a_warning(
    tmp_path: Path, listen: str | None, warned: bool
) -> None:
    path = metrics_config(tmp_path, listen)
    config = load_config(path)
    if listen is None:
        assert config.metrics.host == "127.0.0.1"
    code, out = await tool("check", "-c", str(path), env=dict(os.environ))
    assert code == 0, out
    assert ("is not a loopback address" in out) is warned, out


async def test_a_gateway_serving_metrics_beyond_loopback_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = Gateway(load_config(metrics_config(tmp_path, "0.0.0.0:0")))
    with caplog.at_level(logging.WARNING):
        async with running(gateway):
            await until("metrics served", lambda: gateway.metrics is not None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0.0.0.0:0 is not a loopback address" in w for w in warnings), warnings
