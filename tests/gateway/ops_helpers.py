"""Helpers for the operations tests (metrics, health, reload, the daemon): configs written as an operator
writes them, a gateway run in this process, a raw HTTP client, and waiting on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway


async def http_get(
    port: int, path: str, *, method: str = "GET", raw: bytes | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request over a real socket: (status, body). ``raw`` sends those bytes instead."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = raw or f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n".encode()
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            response = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            assert int(value) == len(body) or method == "HEAD"
    return status, body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, parsed by prometheus-client's parser: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in parsed, f"no sample {name}{labels} in the scrape"
    return parsed[key]


def r2000(name: str, tty: Path, antennas: str = "{1: lane1-in, 2: lane1-out}", extra: str = "") -> str:
    """A device mapping for the gateway file's ``devices:`` list."""
    return f"  - name: {name}\n    driver: uhf-r2000\n    port: {tty}\n    antennas: {antennas}\n{extra}"


def write_gateway(
    path: Path,
    *,
    gateway_id: str,
    url: str,
    devices: str = "",
    devices_dir: str | None = None,
    extra: str = "",
    mqtt_extra: str = "",
) -> Path:
    """A gateway file with the metrics on a free port (``listen: 127.0.0.1:0``) and quick device restarts."""
    text = f"""gateway:
  id: {gateway_id}
buffer:
  path: {path.parent / "buffer.db"}
upstream:
  mqtt:
    url: {url}
    prefix: edgegw
{mqtt_extra}supervisor:
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
metrics:
  listen: "127.0.0.1:0"
{extra}"""
    if devices_dir is not None:
        text += f"devices_dir: {devices_dir}\n"
    text += "devices:\n" + devices if devices else "devices: []\n"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[asyncio.Task[None]]:
    """The gateway run in this process until the block ends (then stopped as on SIGTERM)."""
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    started = asyncio.create_task(gateway.started.wait())
    try:
        await asyncio.wait([task, started], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert gateway.started.is_set(), "the gateway did not start within 30 s"
        yield task
    finally:
        started.cancel()
        stop.set()
        await asyncio.wait_for(task, 30)
