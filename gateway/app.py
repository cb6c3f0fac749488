"""The running gateway: buffer, pipeline, supervisor and forwarder assembled from a :class:`Config`.

Start order: the buffer opens (the gateway is *ready* from then on: events are accepted even while the
broker is unreachable), then the ingest stage, the forwarder and the devices. Stop order: devices first,
then whatever they queued is committed, then the forwarder closes the upstream session cleanly, then the
buffer. Nothing committed is lost at any point: the forwarder deletes only what the broker acknowledged.

Under systemd (``Type=notify``, :mod:`gateway.ops.sdnotify`): ``READY=1`` as soon as the buffer is open (the
broker is not waited for); ``STATUS=`` every few seconds (rates in and out, backlog, upstream, devices);
``WATCHDOG=1`` while :class:`~gateway.ops.metrics.PipelineHealth` holds (the pings come from the loop, so a
blocked loop stops them too); ``STOPPING=1`` when the stop begins; ``RELOADING=1`` ... ``READY=1`` around
a reload (:meth:`Gateway.reload`, see :mod:`gateway.reload`). ``/metrics`` and ``/healthz`` are served on
the loop (:mod:`gateway.ops.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from drivers import registry
from drivers.base import Driver
from drivers.kinds import GPS_FIX
from gateway.backoff import Backoff
from gateway.commands.service import CommandService, commands_broker
from gateway.config import Config, ConfigError, DeviceConfig, load_config
from gateway.delivery.buffer import Buffer, BufferStats, SqliteBuffer, everything
from gateway.delivery.forwarder import Forwarder, ForwarderSettings, settings_from
from gateway.delivery.upstream import Upstream as UpstreamKind
from gateway.delivery.upstream import UpstreamContext, load_kind
from gateway.ops.loopmon import LoopMonitor
from gateway.ops.metrics import CountingBuffer, MetricsServer, PipelineHealth, build_registry
from gateway.ops.sdnotify import Notifier, Watchdog
from gateway.pipeline import EventQueue, Ingest
from gateway.positions import DEFAULT_MAX_AGE_S, Positions
from gateway.processors import RfidSmoothing
from gateway.reload import ReloadPlan, RetiredCounts, plan_reload
from gateway.supervisor import DeviceRunner

log = logging.getLogger("edgegw")
reload_log = logging.getLogger("edgegw.reload")

STALL_S: Final = 60.0
"""A stage with work that has not moved for this long is stuck: ``/healthz`` says 503 and the watchdog pings
stop (systemd restarts the gateway ``WatchdogSec`` later). Far above any honest pause: an fsync on slow
flash, a broker's keepalive timeout."""
STATUS_INTERVAL_S: Final = 5.0
"""How often the STATUS line for ``systemctl status`` is refreshed (and health changes are logged)."""


class Upstream(Protocol):
    """What the gateway needs of a forwarder."""

    async def run(self) -> None: ...

    async def drain(self) -> str | None:
        """At a stop, once nothing more will be committed: deliver what is buffered. None once nothing is
        left to send, else why not. Bounded by the caller; a cancellation of ``run`` follows."""
        ...


def forwarder_settings(config: Config) -> ForwarderSettings:
    """The settings of the first upstream (``upstream.mqtt``, or the first of ``upstreams:``)."""
    return settings_from(config.upstream_list[0], config.gateway.id)


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
        environ: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
        stall_s: float = STALL_S,
        status_interval_s: float = STATUS_INTERVAL_S,
        on_logging: Callable[[Config], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``environ``: where ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` come from (``os.environ``);
        ``on_logging``: applies a reloaded config's log levels (the CLI's; None leaves logging alone)."""
        self.config = config
        self._make_upstream = upstream
        """Tests and the demo: one upstream made from the buffer (no ``upstreams``, no routes)."""
        self.upstreams: dict[str, UpstreamKind] = {}
        """Every upstream by name, in config order (with ``upstream=``: empty)."""
        self._upstream_tasks: dict[str, asyncio.Task[None]] = {}
        self._upstreams_changed = asyncio.Event()
        self.queue = EventQueue(config.queue.max_events)
        self.buffer: Buffer | None = None
        self.ingest: Ingest | None = None
        self.upstream: Upstream | None = None
        self.runners: dict[str, DeviceRunner] = {}
        self.positions = Positions()
        """The latest fix of each gps receiver, for the devices with ``position_from``."""
        self.loop_monitor = LoopMonitor()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.notifier = notifier if notifier is not None else Notifier.from_env(self._environ)
        self.stall_s = stall_s
        self.status_interval_s = status_interval_s
        self._on_logging = on_logging
        self._clock = clock
        self.state = "starting"
        """starting -> running (<-> reloading) -> stopping -> stopped."""
        self.started = asyncio.Event()
        """Set once the gateway is ready (READY=1 sent): buffer open, devices started."""
        self.counts: CountingBuffer | None = None
        self.health: PipelineHealth | None = None
        self.metrics: MetricsServer | None = None
        """The running metrics server (None: disabled, not started yet, or its address was taken)."""
        self.watchdog: Watchdog | None = None
        self.retired: dict[str, RetiredCounts] = {}
        """Per device, the counts of the runners a reload replaced (the metrics keep counting up)."""
        self.reloads: Counter[str] = Counter()
        """Reloads by result: ``applied``, ``rejected``."""
        self.rates = (0.0, 0.0)
        """Events per second committed and acknowledged, over the last status interval."""
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._backoff: Backoff | None = None
        self._reload_wanted = asyncio.Event()
        self._reload_waiters: list[asyncio.Future[ReloadPlan | None]] = []
        self.commands: CommandService | None = None
        """The command service (:mod:`gateway.commands`) when upstream.mqtt.commands.enabled."""
        self._health_said: str | None = None
        self._undelivered_why: str | None = "the gateway stopped before it could deliver them"
        """At a stop, why the upstream did not deliver everything buffered (None: it did)."""

    def _runner(self, device: DeviceConfig, backoff: Backoff) -> DeviceRunner:
        cls: type[Driver[Any]] = registry.load(device.driver)
        options = device.options
        name = device.name
        processor = None
        if device.smoothing is not None:
            processor = RfidSmoothing(name, device.smoothing)
        runner = DeviceRunner(name, lambda: cls(name, options), self.queue, backoff, processor=processor)
        receiver = GPS_FIX in cls.emits
        if receiver:
            max_age = getattr(options, "max_fix_age_s", DEFAULT_MAX_AGE_S)
            runner.on_fix = self.positions.receiver(name, max_age)
        source = device.position_from
        if source is None and not receiver:
            source = self.config.gateway.position_from
        if source is not None:
            runner.stamp = self.positions.stamper(source, runner.count)
        return runner

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
            everything = dict(runner.counters)
            if runner.processor is not None:
                everything.update((f"processor.{k}", v) for k, v in runner.processor.counters().items())
            counters = " ".join(f"{k}={v}" for k, v in sorted(everything.items()))
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

    # -- status, health, reload -----------------------------------------------------------------------------

    def status_line(self) -> str:
        """The one line ``systemctl status`` shows (``STATUS=``)."""
        rate_in, rate_out = self.rates
        parts = [f"{rate_in:.1f} events/s in, {rate_out:.1f} out"]
        stats = self.buffer.stats() if self.buffer is not None else None
        if stats is not None:
            backlog = f"backlog {stats.depth}"
            if stats.oldest_ts is not None and stats.depth:
                backlog += f" (oldest {max(0.0, time.time() - stats.oldest_ts):.0f} s)"
            parts.append(backlog)
        upstream = self.upstream
        if len(self.upstreams) > 1:  # each one: connected or not, and its backlog
            shares = stats.upstreams if stats is not None else {}
            each = [
                f"{name} {'up' if u.stats().connected else 'DOWN'}"
                + (f" {shares[name].events}" if name in shares else "")
                for name, u in self.upstreams.items()
            ]
            parts.append("upstreams " + ", ".join(each))
        elif isinstance(upstream, Forwarder):
            parts.append("upstream connected" if upstream.connected else "upstream NOT connected")
        up = sum(1 for runner in self.runners.values() if runner.state == "connected")
        parts.append(f"devices {up}/{len(self.runners)} up")
        dropped = self.queue.dropped + (sum(stats.dropped.values()) if stats is not None else 0)
        if dropped:
            parts.append(f"{dropped} dropped")
        reason = self.health_reason()
        if reason is not None and self.state in ("running", "reloading"):
            parts.append(f"UNHEALTHY: {reason}")
        return "; ".join(parts)

    def health_reason(self) -> str | None:
        """None while healthy; else why not (``/healthz``, the STATUS line): a stuck stage, or a storage
        fault in force (``disk full: dropping oldest (drop_oldest)``)."""
        reason = self._pipeline_reason()
        if reason in ("stopping", "not running"):
            return reason
        fault = self.buffer.stats().fault if self.buffer is not None else None
        return "; ".join(r for r in (fault, reason) if r) or None

    def _pipeline_reason(self) -> str | None:
        if self.state == "stopping":
            return "stopping"
        if self.health is None or self.state not in ("running", "reloading"):
            return "not running"
        return self.health.reason()

    def _healthy(self) -> bool:
        """The watchdog's predicate: only a stuck loop or pipeline. A full disk is not one: a restart would
        not make room, and the gateway goes on within the space it has."""
        return self._pipeline_reason() in (None, "stopping")

    def request_reload(self) -> None:
        """Ask for a reload (the SIGHUP handler). It runs once the gateway is running; requests arriving
        during a reload make one more reload after it."""
        self._reload_wanted.set()

    async def reload(self) -> ReloadPlan | None:
        """Re-read and re-validate the config file and apply it (see :mod:`gateway.reload`). Returns what
        was applied, or None when the new config is invalid (every problem is logged; the running
        configuration stays). Never raises for a bad config."""
        source = self.config.source
        self.state = "reloading"
        self.notifier.reloading(f"reloading {source}")
        reload_log.info("reload: reading %s", source)
        try:
            try:
                new = await asyncio.to_thread(load_config, source)
            except ConfigError as err:
                self.reloads["rejected"] += 1
                reload_log.error(
                    "reload refused: %s has %d problem(s); still running the previous configuration",
                    source,
                    len(err.problems),
                )
                for problem in err.problems:
                    reload_log.error("reload: %s", problem)
                return None
            except Exception:  # a bug in loading must not take the running gateway down
                self.reloads["rejected"] += 1
                reload_log.exception("reload failed; still running the previous configuration")
                return None
            plan = plan_reload(self.config, new)
            await self._apply(plan)
            self.reloads["applied"] += 1
            return plan
        finally:
            if self.state == "reloading":
                self.state = "running"
                self.notifier.ready(self.status_line())

    async def _apply(self, plan: ReloadPlan) -> None:
        await self._stop_devices(plan.removed, keep_counts=False)
        await self._stop_devices([d.name for d in plan.changed], keep_counts=True)
        self.config = plan.config
        if plan.touches_upstreams and self._make_upstream is None:
            await self._apply_upstreams(plan)
        for device in [*plan.changed, *plan.added]:
            self._start_device(device)
        if plan.logging_changed and self._on_logging is not None:
            self._on_logging(plan.config)
            reload_log.info("reload: log levels applied")
        reload_log.info("reload applied: %s", plan.summary())
        if plan.needs_restart:
            reload_log.warning(
                "reload: %s changed, which only a restart applies (systemctl restart edgegw); until then "
                "the gateway keeps running with the previous values, its buffer and upstream connection open",
                ", ".join(plan.needs_restart),
            )

    def _device_names(self) -> list[str]:
        return [d.name for d in self.config.devices]

    async def _supervise_upstreams(self) -> None:
        """Run every upstream (``self._upstream_tasks``, which a reload changes); one whose ``run`` ends by
        itself (it never should: it retries every transient fault) ends the gateway as a core task does.
        Cancelled at a stop: each upstream closes its session cleanly."""
        tasks = self._upstream_tasks
        for name, u in self.upstreams.items():
            tasks[name] = asyncio.create_task(u.run(), name=f"upstream:{name}")
        try:
            while True:
                changed = asyncio.ensure_future(self._upstreams_changed.wait())
                running = list(tasks.values())
                done, _ = await asyncio.wait([changed, *running], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self._upstreams_changed.clear()
                for task in done:
                    if task is not changed and task in tasks.values():
                        task.result()  # raises what killed it
                        raise RuntimeError(f"{task.get_name()} ended unexpectedly")
        finally:
            await _cancel_all(list(tasks.values()))

    async def _apply_upstreams(self, plan: ReloadPlan) -> None:
        """Upstreams added, removed or changed by a reload: stop what goes, register the new routes with the
        buffer (a removed upstream's bit is cleared, a new one reads from now on), start what comes."""
        assert self.counts is not None
        old = self.upstream
        for name in [*plan.upstreams_removed, *(u.name for u in plan.upstreams_changed)]:
            self.upstreams.pop(name, None)
            task = self._upstream_tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        options = plan.config.upstream_list
        await self.counts.set_upstreams(
            [(o.name, everything if o.route.everything else o.route.matches) for o in options]
        )
        context = UpstreamContext(gateway_id=self.config.gateway.id, device_names=self._device_names)
        made = {}
        for o in [*plan.upstreams_added, *plan.upstreams_changed]:
            made[o.name] = load_kind(o.kind)(o, self.counts.cursor(o.name), context)
            self._upstream_tasks[o.name] = asyncio.create_task(made[o.name].run(), name=f"upstream:{o.name}")
        self.upstreams = {o.name: self.upstreams.get(o.name) or made[o.name] for o in options}
        self.upstream = next(iter(self.upstreams.values()))
        if self.upstream is not old:
            if isinstance(old, Forwarder) and isinstance(self.upstream, Forwarder):
                self.upstream.latency_observer = old.latency_observer
            self.health = PipelineHealth(self, stall_s=self.stall_s, clock=self._clock)
        self._upstreams_changed.set()

    def _start_device(self, device: DeviceConfig, runner: DeviceRunner | None = None) -> None:
        if runner is None:
            assert self._backoff is not None
            runner = self._runner(device, self._backoff)
        self.runners[device.name] = runner
        self._device_tasks[device.name] = asyncio.create_task(runner.run(), name=f"device:{device.name}")

    async def _stop_devices(self, names: list[str], *, keep_counts: bool) -> None:
        """Stop devices (their ``stopped`` status and whatever they queued go on to the buffer). Unlike
        :func:`_cancel_all`, a cancellation of the caller (a stop during a reload) is not swallowed, and
        the devices stay in ``_device_tasks`` until they have ended, for the stop to wait on."""
        tasks = [self._device_tasks[name] for name in names if name in self._device_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed while stopping: %r", task.get_name(), task.exception())
        for name in names:
            self._device_tasks.pop(name, None)
            runner = self.runners.pop(name, None)
            if not keep_counts:
                self.retired.pop(name, None)
            elif runner is not None:
                before = self.retired.setdefault(name, RetiredCounts())
                before.emitted += runner.events_emitted
                before.dropped += runner.events_dropped
                before.restarts += runner.restarts
                before.counters.update(runner.counters)
                if runner.processor is not None:
                    before.processor.update(runner.processor.counters())

    async def reload_and_wait(self) -> ReloadPlan | None:
        """Ask for a reload (as SIGHUP does) and wait for its outcome: what :meth:`reload` returned."""
        waiter: asyncio.Future[ReloadPlan | None] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(waiter)
        self.request_reload()
        return await waiter

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            waiters, self._reload_waiters = self._reload_waiters, []
            plan = await self.reload()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(plan)

    async def _report_status(self) -> None:
        """Every ``status_interval_s``: the rates, the STATUS line, and a log line when health changes."""
        ingest = self.ingest
        counts = self.counts
        assert ingest is not None and counts is not None
        last = (self._clock(), ingest.committed, counts.acked)
        while True:
            await asyncio.sleep(self.status_interval_s)
            now = (self._clock(), ingest.committed, counts.acked)
            elapsed = now[0] - last[0]
            if elapsed > 0:
                self.rates = ((now[1] - last[1]) / elapsed, (now[2] - last[2]) / elapsed)
            last = now
            reason = self.health_reason()
            if reason != self._health_said and self.state in ("running", "reloading"):
                if reason is None:
                    log.warning("healthy again")
                else:
                    log.error("unhealthy: %s", reason)
                self._health_said = reason
            self.notifier.status(self.status_line())

    async def _start_metrics(self) -> None:
        settings = self.config.metrics
        registry, latency = build_registry(self)
        if isinstance(self.upstream, Forwarder):
            self.upstream.latency_observer = latency.observe
        if settings.exposed is not None:
            log.warning("metrics: %s", settings.exposed)
        server = MetricsServer(registry, self.health_reason, host=settings.host, port=settings.port)
        try:
            await server.start()
        except OSError as err:  # the data path matters more than its metrics: run without them
            log.error(
                "metrics: cannot listen on %s (%s); running without /metrics and /healthz",
                settings.listen,
                err.strerror or err,
            )
            return
        self.metrics = server
        log.info("metrics: serving %s/metrics and %s/healthz", server.url, server.url)

    # -- running -------------------------------------------------------------------------------------------

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
            reserve_bytes=cfg.buffer.disk_reserve,
        )
        log.info("buffer open at %s (%d events pending)", cfg.buffer.path, buffer.stats().depth)
        _warn_if_cap_exceeds_space(cfg.buffer.path, cfg.buffer.max_bytes, buffer.stats().bytes)
        log.debug("config: %r", cfg)
        try:
            self.counts = counts = CountingBuffer(buffer, by_kind=cfg.metrics.enabled)
            self.ingest = ingest = Ingest(
                self.queue,
                counts,
                commit_interval=cfg.buffer.commit_interval_ms / 1000,
                commit_max_events=cfg.buffer.commit_max_events,
            )
            if self._make_upstream is not None:
                self.upstream = upstream = self._make_upstream(counts)
                upstream_run = upstream.run()
            else:
                built = await _build_upstreams(cfg, counts, self._device_names)
                self.upstreams = dict(built)
                self.upstream = upstream = built[0][1]
                upstream_run = self._supervise_upstreams()
            self._backoff = Backoff(cfg.supervisor.backoff_initial_s, cfg.supervisor.backoff_max_s)
            self.health = PipelineHealth(self, stall_s=self.stall_s, clock=self._clock)
            self.watchdog = Watchdog(self.notifier, self._healthy, environ=self._environ)
            runners = [(device, self._runner(device, self._backoff)) for device in cfg.devices]
            if cfg.metrics.enabled:
                await self._start_metrics()
            core = [
                asyncio.create_task(ingest.run(), name="ingest"),
                asyncio.create_task(upstream_run, name="upstream"),
                asyncio.create_task(self.loop_monitor.run(), name="loop-monitor"),
            ]
            for device, runner in runners:
                self._start_device(device, runner)
            self.state = "running"
            watchdog = asyncio.create_task(self.watchdog.run(), name="watchdog")
            aux = [
                asyncio.create_task(self._reloader(), name="reloader"),
                asyncio.create_task(self._report_status(), name="status"),
            ]
            if commands_broker(cfg) is not None:
                self.commands = CommandService(self, cfg)
                aux.append(asyncio.create_task(self.commands.run(), name="commands"))
            self.notifier.ready(self.status_line())
            self.started.set()
            log.info("ready: %s", self.status_line())
            stopping = asyncio.create_task(stop.wait(), name="stop")
            try:
                done, _ = await asyncio.wait([stopping, *core], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopping:
                        task.result()  # raises what killed a core task
                        raise RuntimeError(f"{task.get_name()} ended unexpectedly")
            finally:
                self.state = "stopping"
                flush_s = cfg.upstream.mqtt.stop_flush_s if cfg.upstream is not None else _STOP_FLUSH_S
                flush_deadline = asyncio.get_running_loop().time() + flush_s
                self.notifier.stopping(
                    f"stopping: stopping {len(self._device_tasks)} device(s), committing {len(self.queue)} "
                    f"queued events, publishing the backlog (at most {flush_s:g} s), closing the upstream"
                )
                stopping.cancel()
                await _cancel_all(aux)
                # The watchdog pings on through the stop (systemd's timer still runs while deactivating);
                # TimeoutStopSec, not WatchdogSec, bounds a stop.
                await _cancel_all(list(self._device_tasks.values()))
                await _cancel_all(core[:1])
                await ingest.drain()
                log.info("committed everything queued; closing upstream")
                # The devices' last events (their `stopped` status, the departures of the tags still
                # tracked) go upstream now, before `offline`, not 40 s into the next start; bounded so
                # that offline, DISCONNECT and the buffer's close still fit in TimeoutStopSec.
                if core[1].done():
                    self._undelivered_why = "the upstream had stopped"
                elif flush_s <= 0:
                    self._undelivered_why = "upstream.mqtt.stop_flush_s is 0"
                else:
                    delivering: list[Upstream] = [*self.upstreams.values()] or [upstream]
                    whys = await asyncio.gather(
                        *(_deliver_buffered(u, flush_deadline, flush_s) for u in delivering)
                    )
                    names = list(self.upstreams) or ["upstream"]
                    said = [
                        f"{n}: {w}" if len(whys) > 1 else w for n, w in zip(names, whys, strict=False) if w
                    ]
                    self._undelivered_why = "; ".join(said) if said else None
                await _cancel_all(core[1:])
                self._log_summary()
                await _cancel_all([watchdog])
                if self.metrics is not None:
                    await self.metrics.close()
        finally:
            await buffer.close()
            self.state = "stopped"
            log.info("buffer closed")
            _log_left_buffered(buffer.stats().depth, self._undelivered_why)
            _log_buffer_summary(buffer.stats())


_STOP_FLUSH_S: Final = 15.0
"""How long a stop may publish the backlog when no ``upstream.mqtt`` says (``stop_flush_s``'s default)."""


async def _build_upstreams(
    cfg: Config, buffer: CountingBuffer, device_names: Callable[[], list[str]]
) -> list[tuple[str, UpstreamKind]]:  # the tasks are started by Gateway._supervise_upstreams
    """Register every upstream's route with the buffer, then make each one on its own cursor."""
    options = cfg.upstream_list
    await buffer.set_upstreams(
        [(o.name, everything if o.route.everything else o.route.matches) for o in options]
    )
    context = UpstreamContext(gateway_id=cfg.gateway.id, device_names=device_names)
    built: list[tuple[str, UpstreamKind]] = []
    for o in options:
        cls = load_kind(o.kind)
        built.append((o.name, cls(o, buffer.cursor(o.name), context)))
    return built


def _log_buffer_summary(stats: BufferStats) -> None:
    """The buffer's line of the shutdown summary, once it is closed (its figures are final then)."""
    log.info(
        "summary buffer depth=%d dropped %s corrupt_files=%d%s",
        stats.depth,
        " ".join(f"{reason}={n}" for reason, n in sorted(stats.dropped.items())),
        stats.corrupt_files,
        f" fault={stats.fault!r}" if stats.fault else "",
    )


def _warn_if_cap_exceeds_space(path: Path, max_bytes: int, stored: int) -> None:
    """``buffer.max_bytes`` is a promise the filesystem may not be able to keep: say so at start."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if max_bytes - stored > free:
        log.warning(
            "buffer.max_bytes is %d bytes but only %d are free on the filesystem of %s: when it fills, the "
            "buffer keeps within the space there is and counts what it drops as disk_full",
            max_bytes,
            free,
            path,
        )


SWITCH_INTERVAL_S = 0.001
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms). The buffer's writer
thread needs the GIL briefly between SQLite steps; behind a busy event loop it waited up to 5 ms each time,
and batched throughput fell by a fifth (bench.pipeline, batch50: median 26,400 events/s at 5 ms, 34,800 at
1 ms, on a loaded machine)."""


async def _deliver_buffered(upstream: Upstream, deadline: float, bound_s: float) -> str | None:
    """At a stop: let the upstream deliver what is buffered until ``deadline`` (loop time). None when it
    did, else why not."""
    try:
        async with asyncio.timeout_at(deadline):
            why = await upstream.drain()
    except TimeoutError:
        return f"cut short by upstream.mqtt.stop_flush_s ({bound_s:g} s from the start of the stop)"
    except Exception:
        log.exception("stop: delivering what is buffered failed")
        return "delivering it failed"
    if why is None:
        log.info("stop: everything buffered was delivered")
    return why


def _log_left_buffered(depth: int, why: str | None) -> None:
    """The last word of a stop on what stays in the buffer (counted once it is closed: exact)."""
    if depth:
        log.warning(
            "stop: %d event(s) remain buffered, to be delivered after the next start: %s",
            depth,
            why or "refused by the broker",
        )


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                log.exception("%s failed while stopping", task.get_name())
