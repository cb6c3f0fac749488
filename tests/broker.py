"""A private Mosquitto for tests, and a subscriber that collects what it receives.

``Mosquitto`` runs its own broker on a free 127.0.0.1 port with a generated config in a temp dir (no
persistence, log to a file there); ``stop()`` and ``start()`` again keep the same port, so tests can take
the broker away under a client and bring it back. ``Subscriber`` is a paho client on its own thread with
an async ``wait_until``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

_START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    if Path("/usr/sbin/mosquitto").exists():
        return "/usr/sbin/mosquitto"
    raise FileNotFoundError("mosquitto not found (PATH or /usr/sbin/mosquitto)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener (``Mosquitto.tls_port``) speaking TLS with these PEM files; with
    ``require_certificate``, clients must present a certificate signed by ``cafile`` (mutual TLS)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False

    def lines(self, port: int, host: str) -> list[str]:
        return [
            f"listener {port} {host}",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]


class Mosquitto:
    """A private broker. ``extra_config`` lines go right after the ``listener`` line, so per-listener
    options (``cafile``, ``certfile``, ``acl_file``, ``password_file``...) apply to it. With
    ``persistence``, sessions and queued messages survive ``stop()``/``start()`` (saved on SIGTERM). With
    ``tls``, a second listener on ``tls_port`` speaks TLS (the plain one stays, for test subscribers)."""

    def __init__(
        self,
        *,
        extra_config: Sequence[str] = (),
        port: int | None = None,
        persistence: bool = False,
        tls: TlsListener | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls_port = free_port() if tls is not None else None
        self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.dir = Path(self._tmp.name)
        self.log_path = self.dir / "mosquitto.log"
        self.config_path = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *extra_config,
            *(tls.lines(self.tls_port, self.host) if tls is not None and self.tls_port else ()),
            "allow_anonymous true" if not any(x.startswith("allow_anonymous") for x in extra_config) else "",
            f"persistence true\npersistence_location {self.dir}/" if persistence else "persistence false",
            # as root, mosquitto would switch to the user "mosquitto", which cannot use the temp dir
            f"user {getpass.getuser()}",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        self.config_path.write_text("\n".join(line for line in lines if line) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Mosquitto:
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:  # bounded wait for the condition "the port accepts connections"
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited ({self._proc.returncode}): {err}{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mosquitto did not listen on {self.port}: {self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Terminate (SIGTERM) and wait: clients see their connection closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mosquitto(port={self.port}, running={self.running})"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """Subscribes (QoS 1) to ``topics`` on ``broker`` and collects messages on paho's thread.

    Use as ``async with Subscriber(broker, "edgegw/#") as sub: ... await sub.wait_until(pred)``."""

    def __init__(self, broker: Mosquitto, *topics: str, session: str | None = None) -> None:
        """``session``: a client id for a persistent session (MQTT 3.1.1, clean session off), so messages
        published while the broker restarts are queued for this subscriber; None: MQTT 5, clean start."""
        self.broker = broker
        self.topics = topics or ("#",)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        if session is None:
            self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        else:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=session,
                clean_session=False,
                protocol=MQTTProtocolVersion.MQTTv311,
            )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(changed.set)

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and subscribe; return once the SUBACK arrived (blocking)."""
        self._client.connect(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from {self.broker!r}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    async def wait_until(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Wait until ``predicate(messages)`` holds (re-checked on every message); TimeoutError otherwise."""
        if self._changed is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
        changed = self._changed
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                messages = self.snapshot()
                if predicate(messages):
                    return messages
                await changed.wait()

    async def wait_count(self, n: int, timeout: float = 10.0, topic_prefix: str = "") -> list[Message]:
        def enough(messages: list[Message]) -> bool:
            return sum(1 for m in messages if m.topic.startswith(topic_prefix)) >= n

        return await self.wait_until(enough, timeout)

    async def __aenter__(self) -> Subscriber:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
