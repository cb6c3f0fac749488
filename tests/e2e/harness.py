"""End-to-end helpers: the gateway as a real subprocess, and a subscriber that collects what arrives.

The subscriber keeps a persistent MQTT session (a fixed client id, clean start off, QoS 1), so when the
private broker is stopped and restarted (with persistence on), messages published while the subscriber is
reconnecting are queued for it by the broker instead of being missed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import Mosquitto


@dataclass
class Received:
    """Everything a subscriber saw: messages by id (with duplicates counted), and the status topic."""

    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    conflicting_duplicates: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    topics_ok: bool = True
    kinds: dict[str, int] = field(default_factory=dict)
    """Distinct ids seen per kind (kept as messages arrive: predicates run on every wake-up)."""

    def seqs(self) -> list[int]:
        return sorted(message["seq"] for message in self.by_id.values())

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.by_id.values() if m["kind"] == kind]


class Collector:
    """A paho subscriber on its own thread; async waits are woken from that thread."""

    def __init__(self, host: str, port: int, prefix: str, gateway_id: str, client_id: str) -> None:
        self.prefix = prefix
        self.gateway_id = gateway_id
        self.received = Received()
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = lambda *_args: self.connected.clear()
        self._client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.SessionExpiryInterval = 3600
        client.connect(host, port, clean_start=False, properties=props)
        client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        client.subscribe(f"{self.prefix}/{self.gateway_id}/#", qos=1)
        self.connected.set()
        self._loop.call_soon_threadsafe(self._changed.set)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic == f"{self.prefix}/{self.gateway_id}/status":
                self.received.statuses.append(msg.payload.decode())
            elif msg.topic.endswith(("/cmd", "/cmd/result")):
                pass  # command requests and results (gateway/commands), not events
            else:
                body = json.loads(msg.payload)
                for message in body if isinstance(body, list) else [body]:
                    self._add(msg.topic, message)
        self._loop.call_soon_threadsafe(self._changed.set)

    def _add(self, topic: str, message: dict[str, Any]) -> None:
        r = self.received
        expected_topic = f"{self.prefix}/{self.gateway_id}/{message['device']}/{message['kind']}"
        if topic != expected_topic or message["id"] != f"{self.gateway_id}:{message['seq']}":
            r.topics_ok = False
        old = r.by_id.get(message["id"])
        if old is not None:
            r.duplicates += 1
            if old != message:
                r.conflicting_duplicates.append(message["id"])
            return
        r.by_id[message["id"]] = message
        r.kinds[message["kind"]] = r.kinds.get(message["kind"], 0) + 1

    async def wait_for(self, what: str, predicate: Callable[[Received], bool], timeout: float = 60) -> None:
        """Wait until ``predicate(received)`` holds; fail with ``what`` after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    with self._lock:
                        if predicate(self.received):
                            return
                    await self._changed.wait()
        except TimeoutError:
            with self._lock:
                seqs = self.received.seqs()
            raise AssertionError(
                f"timed out waiting for {what}: {len(seqs)} messages, seqs {seqs[:3]}...{seqs[-3:]}"
            ) from None

    def snapshot(self) -> Received:
        with self._lock:
            r = self.received
            return Received(
                dict(r.by_id),
                r.duplicates,
                list(r.conflicting_duplicates),
                list(r.statuses),
                r.topics_ok,
                dict(r.kinds),
            )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def missing_seqs(seqs: list[int], upto: int) -> list[int]:
    have = set(seqs)
    return [s for s in range(1, upto + 1) if s not in have]


class GatewayProcess:
    """``edgegw run -c CONFIG`` as a child process, its log in a file beside the config."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "-c",
                str(self.config),
                "--log-level",
                "info",
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"gateway did not exit within {timeout} s; log:\n{self.log()}") from None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def write_config(
    path: Path,
    *,
    gateway_id: str,
    buffer: Path,
    url: str,
    devices: str,
    extra_mqtt: str = "",
) -> Path:
    path.write_text(
        f"""gateway:
  id: {gateway_id}
buffer:
  path: {buffer}
upstream:
  mqtt:
    url: {url}
    prefix: edgegw
{extra_mqtt}supervisor:
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
devices:
{devices}"""
    )
    return path


EXAMPLES = Path(__file__).parents[2] / "config" / "examples"


def load_example(example: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / example).read_text())
    return config


def site_config(
    example: str,
    tmp_path: Path,
    broker: Mosquitto,
    gateway_id: str,
    devices: Mapping[str, Mapping[str, Any]],
) -> Path:
    """An example site file as the test runs it: the test's gateway id, buffer, broker, fast supervisor
    backoff, metrics on any free port, and per device (every one named) the keys replaced (a mapping value,
    such as ``smoothing``, is merged into the example's). Everything else is the example's own."""
    config = load_example(example)
    config["gateway"]["id"] = gateway_id
    config["buffer"]["path"] = str(tmp_path / "buffer.db")
    config["upstream"]["mqtt"]["url"] = broker.url
    config["supervisor"] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    config["metrics"] = {"listen": "127.0.0.1:0"}  # any free port: other gateways may be running
    for device in config["devices"]:
        for key, value in devices[device["name"]].items():
            old = device.get(key)
            merge = isinstance(value, Mapping) and isinstance(old, Mapping)
            device[key] = {**old, **value} if merge else value
    path = tmp_path / example
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


async def collector_for(example: str, broker: Mosquitto, gateway_id: str) -> Collector:
    """A subscriber to the site's topics (the example's own prefix)."""
    prefix = load_example(example)["upstream"]["mqtt"]["prefix"]
    collector = Collector(broker.host, broker.port, prefix, gateway_id, client_id=f"sub-{gateway_id}")
    assert await asyncio.to_thread(collector.connected.wait, 10)
    return collector
