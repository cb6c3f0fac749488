"""``edgegw demo``: a simulated roadside lane, end to end.

Two simulated R2000 readers (one on a pseudo-terminal, as if on /dev/ttyUSB0; one behind a simulated
serial-to-Ethernet converter on a loopback TCP port) feed a real gateway whose buffer lives in a temporary
directory. Upstream is the MQTT broker given with ``--mqtt``, else one answering on 127.0.0.1:1883, else the
console; the demo says which, and prints what arrives upstream. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.kinds import RFID_READ
from firmware_sim.r2000 import SimOptions, serve_pty, serve_tcp
from gateway.app import Gateway
from gateway.cli.console import ConsoleUpstream
from gateway.config import load_config

GATEWAY_ID = "lane-demo"
PREFIX = "edgegw"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

CONFIG = """\
# Written by `edgegw demo`: a roadside lane with two readers.
gateway:
  id: {gateway_id}
buffer:
  path: {buffer}
upstream:
  mqtt:
    url: {url}
    prefix: {prefix}
devices:
  - name: reader-1                  # on a serial line (here a pseudo-terminal)
    driver: uhf-r2000
    port: {pty}
    baudrate: 115200
    antennas: {{1: lane1-in, 2: lane1-out}}
  - name: reader-2                  # behind a serial-to-Ethernet converter
    driver: uhf-r2000
    host: 127.0.0.1
    tcp_port: {tcp_port}
    antennas: {{1: lane2-in, 2: lane2-out}}
"""


def broker_answers(url: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _describe(topic: str, payload: bytes) -> str:
    try:
        message = json.loads(payload)
    except ValueError:
        return f"{topic} {payload!r}"
    if not isinstance(message, dict):
        return f"{topic} {payload.decode(errors='replace')}"
    data = message.get("data", {})
    if message.get("kind") == RFID_READ:
        return (
            f"{message['id']:>16}  {message['device']}  {data.get('antenna_name')}  EPC {data.get('epc')}"
            f"  {data.get('rssi_dbm')} dBm  {data.get('frequency_mhz')} MHz"
        )
    return f"{message.get('id', ''):>16}  {message.get('device')}  {message.get('kind')}  {json.dumps(data)}"


VIEWER_LINGER_S = 5.0
"""After the gateway stopped: how long the viewer waits for the broker to deliver the last messages (up to
the gateway's ``offline``) before it disconnects."""


@contextlib.contextmanager
def _subscriber(url: str) -> Iterator[threading.Event]:
    """Print what the broker delivers on the demo's topics (paho's own network thread). Yields an event set
    once the gateway's live ``offline`` arrived (not a retained one from an earlier run): its last message."""
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgegw-demo-viewer-{os.getpid()}")
    if parts.scheme == "mqtts":
        client.tls_set()
    if parts.username:
        client.username_pw_set(parts.username, parts.password)
    lock = threading.Lock()
    offline = threading.Event()

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object = None) -> None:
        c.subscribe(f"{PREFIX}/{GATEWAY_ID}/#", qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            if msg.topic.endswith("/status"):
                status = msg.payload.decode(errors="replace")
                retained = " (retained, from before)" if msg.retain else ""
                print(f"{'':>16}  gateway status: {status}{retained}", flush=True)
                if status == "offline" and not msg.retain:
                    offline.set()
            else:
                print(_describe(msg.topic, bytes(msg.payload)), flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    try:
        yield offline
    finally:
        client.disconnect()
        client.loop_stop()


async def _demo(mqtt_url: str | None, console: bool, rate: float, duration: float | None) -> None:
    url = mqtt_url
    if url is None and not console and broker_answers(DEFAULT_BROKER):
        url = DEFAULT_BROKER
    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as tmp:
        workdir = Path(tmp)
        pty_link = workdir / "ttyR2000-1"
        options1 = SimOptions(tags=6, rate=rate, seed=1, antennas=(1, 2))
        options2 = SimOptions(tags=6, rate=rate, seed=2, antennas=(1, 2))
        async with serve_pty(pty_link, options1), serve_tcp("127.0.0.1", 0, options2) as sim2:
            config_path = workdir / "gateway.yaml"
            config_path.write_text(
                CONFIG.format(
                    gateway_id=GATEWAY_ID,
                    buffer=workdir / "buffer.db",
                    url=url or DEFAULT_BROKER,
                    prefix=PREFIX,
                    pty=pty_link,
                    tcp_port=sim2.port,
                )
            )
            config = load_config(config_path)
            print(f"edgegw demo: two simulated R2000 readers, {rate:g} reads/s each; config {config_path}")
            if url is not None:
                print(
                    f"edgegw demo: upstream is the MQTT broker at {url}; showing what it delivers on "
                    f"{PREFIX}/{GATEWAY_ID}/#  (Ctrl-C stops)"
                )
                gateway = Gateway(config)
                viewer: contextlib.AbstractContextManager[threading.Event | None] = _subscriber(url)
            else:
                why = (
                    "--console given"
                    if console
                    else f"no MQTT broker answered on {DEFAULT_BROKER} (and no --mqtt given)"
                )
                print(f"edgegw demo: {why}: showing the upstream messages on the console  (Ctrl-C stops)")
                gateway = Gateway(
                    config,
                    upstream=lambda buffer: ConsoleUpstream(buffer, gateway_id=GATEWAY_ID, prefix=PREFIX),
                )
                viewer = contextlib.nullcontext()
            sys.stdout.flush()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if duration is not None:
                loop.call_later(duration, stop.set)
            with viewer as gateway_offline:
                await gateway.run(stop)
                if gateway_offline is not None:
                    # The gateway published its last events (the devices' `stopped` statuses), then
                    # `offline`: show them as the broker delivers them.
                    await asyncio.to_thread(gateway_offline.wait, VIEWER_LINGER_S)
            snap = gateway.snapshot()
            print(
                f"edgegw demo: stopped; {snap.committed} events committed, {snap.buffer_depth} left in the "
                f"buffer, {snap.queue_dropped} dropped"
            )


def main(*, mqtt_url: str | None, console: bool = False, rate: float, duration: float | None) -> int:
    if mqtt_url is not None and console:
        print("edgegw demo: --mqtt and --console exclude each other", file=sys.stderr)
        return 2
    asyncio.run(_demo(mqtt_url, console, rate, duration))
    return 0
