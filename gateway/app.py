"""The running gateway: buffer, pipeline, supervisor and forwarder assembled from a :class:`Config`.

Start order: the buffer opens (the gateway is *ready* from then on: events are accepted even while the
broker is unreachable), then the ingest stage, the forwarder and the devices. Stop order: devices first,
then whatever they queued is committed, then the forwarder closes the upstream session cleanly, then the
buffer. Nothing committed is lost at any point: the forwarder deletes only what the broker acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from drivers import registry
from drivers.base import Driver

from .backoff import Backoff
from .buffer import Buffer, SqliteBuffer
from .config import Config, DeviceConfig
from .forwarder import Forwarder, ForwarderSettings
from .loopmon import LoopMonitor
from .pipeline import EventQueue, Ingest
from .supervisor import DeviceRunner

log = logging.getLogger("edgegw")


class Upstream(Protocol):
    """What the gateway needs of a forwarder."""

    async def run(self) -> None: ...


def forwarder_settings(config: Config) -> ForwarderSettings:
    mqtt = config.upstream.mqtt
    tls = mqtt.tls
    return ForwarderSettings(
        gateway_id=config.gateway.id,
        host=mqtt.host,
        port=mqtt.port,
        prefix=mqtt.prefix,
        client_id=mqtt.client_id,
        protocol=mqtt.protocol,
        keepalive_s=mqtt.keepalive_s,
        max_inflight=mqtt.max_inflight,
        batch_max_events=mqtt.batch_max_events,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
        tls=mqtt.tls_enabled,
        ca_file=str(tls.ca_file) if tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls.cert_file else None,
        key_file=str(tls.key_file) if tls.key_file else None,
        key_password=tls.key_password.get_secret_value() if tls.key_password is not None else None,
        tls_insecure=tls.insecure,
        reconnect_initial_s=mqtt.reconnect.initial_s,
        reconnect_max_s=mqtt.reconnect.max_s,
    )


@dataclass
class Snapshot:
    """Counters for the console and the demo."""

    committed: int
    queue_dropped: int
    buffer_depth: int
    devices: dict[str, str]


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        upstream: Callable[[Buffer], Upstream] | None = None,
    ) -> None:
        self.config = config
        self._make_upstream = upstream or (lambda buffer: Forwarder(buffer, forwarder_settings(config)))
        self.queue = EventQueue(config.queue.max_events)
        self.buffer: Buffer | None = None
        self.ingest: Ingest | None = None
        self.upstream: Upstream | None = None
        self.runners: dict[str, DeviceRunner] = {}
        self.loop_monitor = LoopMonitor()

    def _runner(self, device: DeviceConfig, backoff: Backoff) -> DeviceRunner:
        cls: type[Driver[Any]] = registry.load(device.driver)
        options = device.options
        name = device.name
        return DeviceRunner(name, lambda: cls(name, options), self.queue, backoff)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            committed=self.ingest.committed if self.ingest else 0,
            queue_dropped=self.queue.dropped,
            buffer_depth=self.buffer.stats().depth if self.buffer else 0,
            devices={name: runner.state for name, runner in self.runners.items()},
        )

    def _log_summary(self) -> None:
        """One line per device and one for the loop, at shutdown: what an operator (or the bench) reads."""
        for name, runner in self.runners.items():
            counters = " ".join(f"{k}={v}" for k, v in sorted(runner.counters.items()))
            log.info(
                "summary device=%s emitted=%d dropped=%d restarts=%d %s",
                name,
                runner.events_emitted,
                runner.events_dropped,
                runner.restarts,
                counters,
            )
        lag = self.loop_monitor.stats
        log.info(
            "summary loop lag_max_ms=%.1f lag_mean_ms=%.2f samples=%d over_10ms=%d over_50ms=%d "
            "queue_dropped=%d queue_high_water=%d committed=%d commits=%d",
            lag.max_s * 1000,
            lag.mean_s * 1000,
            lag.samples,
            lag.over_10ms,
            lag.over_50ms,
            self.queue.dropped,
            self.queue.high_water,
            self.ingest.committed if self.ingest else 0,
            self.ingest.commits if self.ingest else 0,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or a core task fails, which is raised)."""
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            await self._run(stop)
        finally:
            sys.setswitchinterval(previous)

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        with contextlib.suppress(OSError):  # if it cannot be made, opening the buffer says so clearly
            cfg.buffer.path.parent.mkdir(parents=True, exist_ok=True)
        self.buffer = buffer = await SqliteBuffer.open(
            cfg.buffer.path,
            max_bytes=cfg.buffer.max_bytes,
            when_full=cfg.buffer.when_full,
            synchronous=cfg.buffer.synchronous,
        )
        log.info("buffer open at %s (%d events pending)", cfg.buffer.path, buffer.stats().depth)
        try:
            self.ingest = ingest = Ingest(
                self.queue,
                buffer,
                commit_interval=cfg.buffer.commit_interval_ms / 1000,
                commit_max_events=cfg.buffer.commit_max_events,
            )
            self.upstream = upstream = self._make_upstream(buffer)
            backoff = Backoff(cfg.supervisor.backoff_initial_s, cfg.supervisor.backoff_max_s)
            self.runners = {device.name: self._runner(device, backoff) for device in cfg.devices}
            core = [
                asyncio.create_task(ingest.run(), name="ingest"),
                asyncio.create_task(upstream.run(), name="upstream"),
                asyncio.create_task(self.loop_monitor.run(), name="loop-monitor"),
            ]
            devices = [
                asyncio.create_task(runner.run(), name=f"device:{name}")
                for name, runner in self.runners.items()
            ]
            stopping = asyncio.create_task(stop.wait(), name="stop")
            try:
                done, _ = await asyncio.wait([stopping, *core], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopping:
                        task.result()  # raises what killed a core task
                        raise RuntimeError(f"{task.get_name()} ended unexpectedly")
            finally:
                stopping.cancel()
                await _cancel_all(devices)
                await _cancel_all(core[:1])
                await ingest.drain()
                log.info("committed everything queued; closing upstream")
                await _cancel_all(core[1:])
                self._log_summary()
        finally:
            await buffer.close()
            log.info("buffer closed")


SWITCH_INTERVAL_S = 0.001
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms). The buffer's writer
thread needs the GIL briefly between SQLite steps; behind a busy event loop it waited up to 5 ms each time,
and batched throughput fell by a fifth (bench.pipeline, batch50: median 26,400 events/s at 5 ms, 34,800 at
1 ms, on a loaded machine)."""


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                log.exception("%s failed while stopping", task.get_name())
