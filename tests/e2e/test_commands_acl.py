"""Commands against the field's own tools and the README's broker setup: Mosquitto's ``mosquitto_rr`` (an
MQTT 5 request/response client) gets the gateway's result on its response topic, and the README's Mosquitto
ACL for one gateway, on a real mosquitto with a password file, lets the operator command that gateway and
nobody else reach it. Also: commands over MQTT 3.1.1, and the de-duplication window's count."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.commands.client import CommandClient
from gateway.config import load_config
from tests.broker import Mosquitto
from tests.gateway.ops_helpers import running
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)

README = Path(__file__).parents[2] / "README.md"
GW = "gw-17"  # the README's gateway id, so its ACL is used exactly as written


def config(tmp_path: Path, broker: Mosquitto, *, user: str | None = None, name: str = "gateway.yaml") -> Path:
    auth = ""
    if user is not None:
        (tmp_path / f"{user}.pw").write_text(f"{user}-secret\n")
        auth = f"    username: {user}\n    password_file: {user}.pw\n"
    path = tmp_path / name
    path.write_text(
        f"""gateway:
  id: {GW}
buffer:
  path: {tmp_path / "buffer.db"}
upstream:
  mqtt:
    url: {broker.url}
    prefix: edgegw
{auth}    reconnect: {{initial_s: 0.1, max_s: 0.5}}
    commands:
      enabled: true
metrics:
  listen: "127.0.0.1:0"
devices: []
"""
    )
    return path


def listening(gateway: Gateway) -> bool:
    return gateway.commands is not None and gateway.commands.connected_event.is_set()


@pytest.mark.skipif(
    shutil.which("mosquitto_rr") is None, reason="mosquitto_rr (mosquitto-clients) not installed"
)
async def test_mosquitto_rr_gets_the_result_on_its_response_topic(tmp_path: Path, broker: Mosquitto) -> None:
    gateway = Gateway(load_config(config(tmp_path, broker)))
    async with running(gateway):
        await until("the command service subscribed", lambda: listening(gateway))
        request = json.dumps({"id": "rr-1", "command": "ping", "ts": time.time()})
        done = await asyncio.to_thread(
            subprocess.run,
            ["mosquitto_rr", "-h", broker.host, "-p", str(broker.port), "-q", "1",
             "-t", f"edgegw/{GW}/cmd", "-e", "replies/rr-tool", "-m", request, "-W", "20"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["id"] == "rr-1" and result["status"] == "ok" and result["data"]["gateway"] == GW


def readme_acl() -> str:
    text = README.read_text()
    match = re.search(r"```text\n(# /etc/mosquitto/acl\n.*?)```", text, re.DOTALL)
    assert match is not None, "the README's Mosquitto ACL moved"
    return match.group(1)


def make_passwords(path: Path, users: tuple[str, ...]) -> None:
    """A Mosquitto password file (mosquitto_passwd), each user's password ``<user>-secret``."""
    for i, user in enumerate(users):
        subprocess.run(
            ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user, f"{user}-secret"],
            check=True,
            capture_output=True,
        )


async def test_the_readme_acl_lets_the_operator_in_and_keeps_others_out(tmp_path: Path) -> None:
    broker = Mosquitto()
    passwords = broker.dir / "passwords"
    make_passwords(passwords, ("gw-17", "operator", "intruder"))
    (broker.dir / "acl").write_text(readme_acl())
    broker.config_path.write_text(
        broker.config_path.read_text().replace(
            "allow_anonymous true",
            f"allow_anonymous false\npassword_file {passwords}\nacl_file {broker.dir / 'acl'}",
        )
    )
    with broker:
        gateway = Gateway(load_config(config(tmp_path, broker, user="gw-17")))
        operator = load_config(config(tmp_path, broker, user="operator", name="operator.yaml"))
        async with running(gateway):
            await until("the command service subscribed", lambda: listening(gateway))
            service = gateway.commands
            assert service is not None

            # Someone with an account but no rights: the broker refuses the publish, nothing reaches us.
            intruder = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            intruder.username_pw_set("intruder", "intruder-secret")
            intruder.connect(broker.host, broker.port)
            intruder.loop_start()
            try:
                info = intruder.publish(
                    f"edgegw/{GW}/cmd",
                    json.dumps({"id": "x-1", "command": "reload", "ts": time.time()}),
                    qos=1,
                )
                await asyncio.to_thread(info.wait_for_publish, 10)
            finally:
                intruder.disconnect()
                intruder.loop_stop()

            # The operator's request is received and answered (the gateway may subscribe and publish).
            async with CommandClient(operator) as client:
                result = await client.send(None, "ping")
            assert result.status == "ok" and result.data == {"gateway": GW, "state": "running"}
            assert service.received == 1  # the operator's; the intruder's never arrived
            assert gateway.reloads["applied"] == 0


async def test_commands_over_mqtt_3_1_1(tmp_path: Path, broker: Mosquitto) -> None:
    """The protocol needs nothing of MQTT 5: the session persists (clean session off), results go to the
    result topic."""
    path = config(tmp_path, broker)
    path.write_text(
        path.read_text().replace("    prefix: edgegw\n", "    prefix: edgegw\n    protocol: '3.1.1'\n")
    )
    gateway = Gateway(load_config(path))
    async with running(gateway), CommandClient(gateway.config) as client:
        await until("the command service subscribed", lambda: listening(gateway))
        result = await client.send(None, "ping")
        assert result.status == "ok" and result.data == {"gateway": GW, "state": "running"}


async def test_the_dedupe_window_forgets_the_oldest_ids_beyond_its_count(
    tmp_path: Path, broker: Mosquitto
) -> None:
    path = config(tmp_path, broker)
    path.write_text(
        path.read_text().replace(
            "      enabled: true\n", "      enabled: true\n      dedupe_window: {count: 2}\n"
        )
    )
    gateway = Gateway(load_config(path))
    async with running(gateway), CommandClient(gateway.config) as client:
        await until("the command service subscribed", lambda: listening(gateway))
        service = gateway.commands
        assert service is not None
        for rid in ("a", "b", "a"):  # within the window: the repeat of a is answered from it
            assert (await client.send(None, "ping", request_id=rid)).status == "ok"
        assert service.duplicates == 1
        for rid in ("c", "a"):  # c pushes a out (the window holds b and c): a runs again
            assert (await client.send(None, "ping", request_id=rid)).status == "ok"
        assert service.duplicates == 1
        assert (await client.send(None, "ping", request_id="c")).status == "ok"
        assert service.duplicates == 2


async def test_with_signed_requests_an_id_is_kept_while_a_replay_would_be_unexpired(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Beyond the window's count, an id is still remembered while its request could be replayed unexpired:
    a captured signed request cannot run twice by pushing its id out with others."""
    (tmp_path / "cmd.key").write_text("k3y\n")
    path = config(tmp_path, broker)
    path.write_text(
        path.read_text().replace(
            "      enabled: true\n",
            "      enabled: true\n      dedupe_window: {count: 2}\n      hmac_key_file: cmd.key\n",
        )
    )
    gateway = Gateway(load_config(path))
    async with running(gateway), CommandClient(gateway.config) as client:
        await until("the command service subscribed", lambda: listening(gateway))
        service = gateway.commands
        assert service is not None
        sent = time.time()
        for rid in ("a", "b", "c", "d"):
            assert (await client.send(None, "ping", request_id=rid, ts=sent)).status == "ok"
        assert service.duplicates == 0
        again = await client.send(None, "ping", request_id="a", ts=sent)  # the replay of a captured request
        assert again.status == "ok" and service.duplicates == 1  # answered from the window, not run
