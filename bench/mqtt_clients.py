"""CPU per QoS 1 message and throughput of the MQTT client options, against a private Mosquitto.

    python -m bench.mqtt_clients [--messages N] [--runs R] [--window W]

Rows: (a) gateway/mqtt.py (paho on the asyncio loop), (b) aiomqtt if installed, (c) raw paho on its own
network thread, and the whole forwarder draining a SQLite buffer, one event per message and batched.
Each row is the median of R runs. "client us/msg" is this process's CPU time (all threads) per message;
"broker us/msg" is Mosquitto's CPU time per message (from /proc). Window W publishes in flight; the broker
is configured with ``max_inflight_messages W`` so its Receive Maximum does not cut the window.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer
from gateway.delivery.forwarder import Forwarder, ForwarderSettings
from gateway.delivery.mqtt import MqttConnection
from tests.broker import Mosquitto

TOPIC = "bench/gw/reader-1/rfid.read"
PAYLOAD = (
    b'{"id":"gw:123456","seq":123456,"device":"reader-1","kind":"rfid.read","ts":1717000000.125,'
    b'"data":{"epc":"E28011606000020612345678","antenna":1,"rssi":-52.5}}'
)


_QUIET = logging.getLogger("bench.aiomqtt")
_QUIET.setLevel(logging.ERROR)  # aiomqtt logs every pending publish at WARNING


@dataclass(frozen=True)
class Sample:
    seconds: float
    client_cpu: float
    broker_cpu: float


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(broker_pid: int, body: Callable[[], Awaitable[None]]) -> Sample:
    b0, c0, t0 = _proc_cpu(broker_pid), time.process_time(), time.perf_counter()
    await body()
    t1, c1, b1 = time.perf_counter(), time.process_time(), _proc_cpu(broker_pid)
    return Sample(t1 - t0, c1 - c0, b1 - b0)


async def run_adapter(broker: Mosquitto, n: int, window: int) -> None:
    inflight = 0
    done = 0
    room = asyncio.Event()

    def on_ack(_mid: int, _rc: int) -> None:
        nonlocal inflight, done
        inflight -= 1
        done += 1
        room.set()

    conn = MqttConnection(
        host=broker.host, port=broker.port, client_id="bench-adapter", on_ack=on_ack, on_lost=print
    )
    await conn.connect()
    sent = 0
    publish = conn.publish
    while done < n:
        while inflight < window and sent < n:
            publish(TOPIC, PAYLOAD)
            inflight += 1
            sent += 1
        room.clear()
        await room.wait()
    await conn.disconnect()


async def run_aiomqtt(broker: Mosquitto, n: int, window: int) -> None:
    import aiomqtt  # noqa: PLC0415 (optional, bench only)

    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="bench-aiomqtt",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=window,
        logger=_QUIET,
    ) as client:
        slots = asyncio.Semaphore(window)

        async def one() -> None:
            try:
                await client.publish(TOPIC, PAYLOAD, qos=1)
            finally:
                slots.release()

        tasks = set()
        for _ in range(n):
            await slots.acquire()
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


def _raw_paho(broker: Mosquitto, n: int, window: int) -> None:
    slots = threading.Semaphore(window)
    finished = threading.Event()
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == n:
            finished.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages = window
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for _ in range(n):
            slots.acquire()
            client.publish(TOPIC, PAYLOAD, qos=1)
        finished.wait(120)
    finally:
        client.disconnect()
        client.loop_stop()


async def run_raw_paho(broker: Mosquitto, n: int, window: int) -> None:
    thread = threading.Thread(target=_raw_paho, args=(broker, n, window))
    thread.start()
    await asyncio.to_thread(thread.join)


async def forwarder_run(broker: Mosquitto, n: int, window: int, batch: int, broker_pid: int) -> Sample:
    with tempfile.TemporaryDirectory() as tmp:
        buffer = await SqliteBuffer.open(Path(tmp) / "bench.db")
        try:
            data = {"epc": "E28011606000020612345678", "antenna": 1, "rssi": -52.5}
            for start in range(0, n, 5000):
                chunk = range(start, min(n, start + 5000))
                await buffer.append([Event("reader-1", "rfid.read", 1717000000.125 + i, data) for i in chunk])
            settings = ForwarderSettings(
                gateway_id="gw",
                host=broker.host,
                port=broker.port,
                max_inflight=window,
                batch_max_events=batch,
            )
            forwarder = Forwarder(buffer, settings)

            async def body() -> None:
                task = asyncio.create_task(forwarder.run())
                while forwarder.acked < n:  # noqa: ASYNC110 (a counter; polled coarsely, off the hot path)
                    await asyncio.sleep(0.005)
                forwarder.stop()
                await task

            return await _measure(broker_pid, body)
        finally:
            await buffer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    n, window = args.messages, args.window

    Client = Callable[[Mosquitto, int, int], Awaitable[None]]
    rows: list[tuple[str, Client | int]] = [("gateway.mqtt adapter", run_adapter)]
    try:
        import aiomqtt  # noqa: F401, PLC0415

        rows.append(("aiomqtt", run_aiomqtt))
    except ImportError:
        print("aiomqtt not installed: skipped")
    rows.append(("raw paho (thread loop)", run_raw_paho))
    rows.append(("forwarder, batch 1", 1))  # an int: the forwarder with this batch_max_events
    rows.append(("forwarder, batch 50", 50))

    print(f"{n} QoS 1 messages of {len(PAYLOAD)} bytes, window {window}, median of {args.runs} runs")
    print(f"{'client':<24} {'msgs/s':>10} {'events/s':>10} {'client us/msg':>14} {'broker us/msg':>14}")
    with Mosquitto(extra_config=[f"max_inflight_messages {window}"]) as broker:
        pid = broker.pid
        for name, how in rows:
            samples: list[Sample] = []
            for _ in range(args.runs):
                if isinstance(how, int):
                    samples.append(await forwarder_run(broker, n, window, how, pid))
                else:
                    samples.append(await _measure(pid, functools.partial(how, broker, n, window)))
            messages = n if not isinstance(how, int) else -(-n // how)  # batches: about n / batch
            secs = statistics.median(s.seconds for s in samples)
            cpu = statistics.median(s.client_cpu for s in samples)
            brk = statistics.median(s.broker_cpu for s in samples)
            print(
                f"{name:<24} {messages / secs:>10,.0f} {n / secs:>10,.0f} "
                f"{cpu / messages * 1e6:>14.1f} {brk / messages * 1e6:>14.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
