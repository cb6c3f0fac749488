"""Prometheus metrics and the health check, served over HTTP on the gateway's own event loop.

::

    GET /metrics    the Prometheus text exposition (prometheus-client's own encoder)
    GET /healthz    200 "ok" while healthy, else 503 and the reason (one line)

**Collected at scrape time.** Almost every value already exists as a counter on the object that owns it
(:class:`~gateway.supervisor.DeviceRunner`, :class:`~gateway.pipeline.EventQueue`,
:class:`~gateway.pipeline.Ingest`, the buffer's :meth:`~gateway.delivery.buffer.Buffer.stats`, the
:class:`~gateway.delivery.forwarder.Forwarder`); :class:`GatewayCollector` reads them when Prometheus asks,
so the event path pays nothing for metrics it does not already keep. Two things are counted here because
nothing kept them: events per device *and kind*, once per committed batch going in and once per batch the
upstream reads for its first publish (:class:`CountingBuffer`, which sits between the pipeline and the
buffer), and the publish latency, a histogram fed by the forwarder with one publish per round trip (see
``Forwarder.latency_observer``).

**Why an asyncio server on the loop, not prometheus-client's server thread.** The collector reads state
that the loop mutates (a driver adds a counter name to a ``Counter`` mid-iteration; the forwarder's window
changes between two reads): read from another thread it could fail ("dictionary changed size during
iteration") or mix two moments; read on the loop, a scrape sees one consistent moment between two
callbacks. And ``/healthz`` answered by the loop proves the loop runs: a thread would answer "ok" for a
gateway whose loop is stuck. The price is the encoding on the loop, once per scrape (every 15 s or so):
1.3 ms median for a site of two readers (9 kB of exposition, on the shared 2-core machine), far inside what
the serial readers tolerate (see :mod:`gateway.ops.loopmon`).

What the per-kind counting costs: ``bench.pipeline`` batch50, gateway CPU per delivered event, median of
six runs each on a noisy machine: 28.9 µs with the metrics on, 28.6 µs off (``metrics: {enabled:
false}``, which also turns the per-kind counting off) — within the noise.

**Health** (:class:`PipelineHealth`, the predicate of both ``/healthz`` and the systemd watchdog) fails
only for a stage that has work and does not move: the ingest stage with events queued and no commit for
``stall_s``; the forwarder, *while connected*, with publishes unacknowledged or new events committed and
nothing published or acknowledged for ``stall_s``. A quiet site is healthy; so is a dead uplink (the
forwarder is not connected: that is the network's problem, and restarting the gateway would not fix it).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED
from drivers.event import Event
from gateway.delivery.buffer import (
    Buffer,
    BufferCursor,
    BufferStats,
    DropReason,
    RouteFn,
    Stored,
    UpstreamShare,
)
from gateway.delivery.forwarder import Forwarder
from gateway.delivery.upstream import Upstream
from gateway.ops.sdnotify import Progress

if TYPE_CHECKING:
    from gateway.commands.service import CommandService
    from gateway.config import Config
    from gateway.ops.loopmon import LoopMonitor
    from gateway.pipeline import EventQueue, Ingest
    from gateway.reload import RetiredCounts
    from gateway.supervisor import DeviceRunner


class Gateway(Protocol):
    """What the metrics and the health check read of the running gateway (:class:`gateway.app.Gateway` is
    the one): a Protocol, so that this module does not import the app that imports it."""

    @property
    def config(self) -> Config: ...
    @property
    def queue(self) -> EventQueue: ...
    @property
    def buffer(self) -> Buffer | None: ...
    @property
    def ingest(self) -> Ingest | None: ...
    @property
    def upstream(self) -> object: ...
    @property
    def upstreams(self) -> Mapping[str, Upstream]: ...
    @property
    def runners(self) -> Mapping[str, DeviceRunner]: ...
    @property
    def retired(self) -> Mapping[str, RetiredCounts]: ...
    @property
    def loop_monitor(self) -> LoopMonitor: ...
    @property
    def counts(self) -> CountingBuffer | None: ...
    @property
    def health(self) -> PipelineHealth | None: ...
    @property
    def reloads(self) -> Mapping[str, int]: ...
    @property
    def commands(self) -> CommandService | None: ...


__all__ = [
    "DEVICE_STATES",
    "LATENCY_BUCKETS",
    "CountingBuffer",
    "GatewayCollector",
    "MetricsServer",
    "PipelineHealth",
    "build_registry",
]

log = logging.getLogger("edgegw.metrics")

DEVICE_STATES: Final = ("starting", "connected", "disconnected", "failed", "stopped")
"""Every value of ``DeviceRunner.state``: ``edgegw_device_state`` has one series per state."""
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Publish -> PUBACK, seconds: a broker on the LAN answers in a few ms, a cloud broker over LTE in 100s."""
QUEUE_FULL: Final = "queue_full"
"""The drop reason of ``edgegw_events_dropped_total`` for events the pipeline queue had no room for (the
buffer's reasons are :class:`~gateway.delivery.buffer.DropReason`)."""

_DEVICE_KIND = attrgetter("device", "kind")
_SEQ = attrgetter("seq")


# --------------------------------------------------------------------------------------------------------
# Counting per device and kind, per batch


class CountingBuffer(Buffer):
    """The gateway's buffer as the pipeline and the upstream see it: the same buffer, counting on the way.

    ``events_in``: events committed, per (device, kind); ``events_out``: events the upstream read for their
    first publish, per (device, kind) (a re-read after a reconnect is not counted again); ``acked``: seqs
    acknowledged. Each is one C-level pass over a batch that is already in hand (a batch is up to
    ``commit_max_events`` events, a read up to a thousand rows). With ``by_kind`` False only ``acked`` is
    counted (the metrics endpoint is off: nothing would read the rest).
    """

    def __init__(self, inner: Buffer, *, by_kind: bool = True) -> None:
        self.inner = inner
        self.by_kind = by_kind
        self.events_in: Counter[tuple[str, str]] = Counter()
        self.events_out: Counter[tuple[str, str]] = Counter()
        self.acked = 0
        self._out_seq = 0  # the highest seq counted in events_out
        self._primary: str | None = None

    async def append(self, events: Sequence[Event]) -> list[int]:
        seqs = await self.inner.append(events)
        if self.by_kind:
            if 0 in seqs:  # refused by the buffer (full or oversize): only what it stored went in
                self.events_in.update(
                    _DEVICE_KIND(e) for e, seq in zip(events, seqs, strict=True) if seq != 0
                )
            else:
                self.events_in.update(map(_DEVICE_KIND, events))
        return seqs

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        rows = await self.inner.read(after_seq, limit)
        if self.by_kind and rows and rows[-1].seq > self._out_seq:
            first = bisect.bisect_right(rows, self._out_seq, key=_SEQ) if rows[0].seq <= self._out_seq else 0
            self.events_out.update(map(_DEVICE_KIND, rows[first:] if first else rows))
            self._out_seq = rows[-1].seq
        return rows

    async def ack(self, seqs: Iterable[int]) -> None:
        batch = seqs if isinstance(seqs, list) else list(seqs)
        await self.inner.ack(batch)
        self.acked += len(batch)

    def stats(self) -> BufferStats:
        return self.inner.stats()

    async def wait_for_new(self, after_seq: int) -> None:
        await self.inner.wait_for_new(after_seq)

    async def close(self) -> None:
        await self.inner.close()

    async def set_upstreams(self, routes: Sequence[tuple[str, RouteFn]]) -> None:
        await self.inner.set_upstreams(routes)
        self._primary = routes[0][0] if routes else None

    def cursor(self, name: str) -> BufferCursor:
        return _CountingCursor(self, self.inner.cursor(name), primary=name == self._primary)


class _CountingCursor(BufferCursor):
    """An upstream's cursor, counting on the way: every upstream's acks count in ``acked``; the first
    upstream's first reads in ``events_out`` (per device and kind, as with one upstream)."""

    def __init__(self, counts: CountingBuffer, inner: BufferCursor, *, primary: bool) -> None:
        self.name = inner.name
        self._counts = counts
        self._inner = inner
        self._primary = primary

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        rows = await self._inner.read(after_seq, limit)
        counts = self._counts
        if self._primary and counts.by_kind and rows and rows[-1].seq > counts._out_seq:
            seen = counts._out_seq
            first = bisect.bisect_right(rows, seen, key=_SEQ) if rows[0].seq <= seen else 0
            counts.events_out.update(map(_DEVICE_KIND, rows[first:] if first else rows))
            counts._out_seq = rows[-1].seq
        return rows

    async def ack(self, seqs: Iterable[int]) -> None:
        batch = seqs if isinstance(seqs, list) else list(seqs)
        await self._inner.ack(batch)
        self._counts.acked += len(batch)

    async def wait_for_new(self, after_seq: int) -> None:
        await self._inner.wait_for_new(after_seq)

    def backlog(self) -> UpstreamShare:
        return self._inner.backlog()

    def stats(self) -> BufferStats:
        return self._inner.stats()


# --------------------------------------------------------------------------------------------------------
# Health


class _UpstreamWork:
    """The forwarder's side of :class:`~gateway.ops.sdnotify.Progress`: its counter moves when it publishes,
    is acknowledged or refused; it has work while connected with publishes in flight, or when events were
    committed after the last time it moved (a refused event it will retry only after a reconnect is not
    work it is failing to do)."""

    def __init__(self, forwarder: Forwarder, buffer: Buffer) -> None:
        self.forwarder = forwarder
        self.buffer = buffer
        self._count = -1
        self._seen_seq = 0

    def done(self) -> int:
        f = self.forwarder
        count = f.published + f.acked + f.refused
        if count != self._count:
            self._count = count
            self._seen_seq = self.buffer.stats().last_seq
        return count

    def pending(self) -> bool:
        f = self.forwarder
        if not f.connected:
            return False
        return f.inflight > 0 or self.buffer.stats().last_seq > self._seen_seq


class PipelineHealth:
    """Whether the pipeline makes progress; :meth:`reason` says why not. Cheap: a few attribute reads."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        stall_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ingest, buffer = gateway.ingest, gateway.buffer
        if ingest is None or buffer is None:
            raise RuntimeError("the gateway is not running")
        queue = gateway.queue
        self.stall_s = stall_s
        self._queue = queue
        self._ingest = Progress(lambda: ingest.commits, lambda: len(queue) > 0, stall_s, clock=clock)
        self._upstream: Progress | None = None
        upstream = gateway.upstream
        if isinstance(upstream, Forwarder):
            work = _UpstreamWork(upstream, buffer)
            self._upstream = Progress(work.done, work.pending, stall_s, clock=clock)
            self._forwarder: Forwarder | None = upstream
        else:
            self._forwarder = None

    def reason(self) -> str | None:
        """None while healthy, else one line for ``/healthz`` and the log."""
        reasons = []
        if not self._ingest():
            reasons.append(
                f"ingest stuck: {len(self._queue)} events queued and nothing committed for "
                f"{self._ingest.stalled_for:.0f} s"
            )
        if self._upstream is not None and not self._upstream():
            inflight = self._forwarder.inflight if self._forwarder is not None else 0
            reasons.append(
                f"upstream stuck: connected, {inflight} publish(es) in flight, and nothing published or "
                f"acknowledged for {self._upstream.stalled_for:.0f} s"
            )
        return "; ".join(reasons) or None

    def __call__(self) -> bool:
        return self.reason() is None


# --------------------------------------------------------------------------------------------------------
# The collector


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=labels)


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class GatewayCollector:
    """Reads the running gateway's counters when the registry is collected (on the loop: see the module
    docstring). Before the buffer is open, and after it closed, only ``edgegw_info`` is reported."""

    def __init__(self, gateway: Gateway, *, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.clock = clock

    def describe(self) -> list[Metric]:
        """Nothing to check for clashes at registration (the names are this module's alone); without this,
        registering would call :meth:`collect` before the gateway runs."""
        return []

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        info = _gauge("edgegw_info", "This gateway (value 1).", ["gateway_id"])
        info.add_metric([gw.config.gateway.id], 1)
        yield info
        yield from self._devices()
        yield from self._pipeline()
        yield from self._upstream()
        yield from self._upstreams()
        yield from self._runtime()
        yield from self._commands()

    def _commands(self) -> Iterator[Metric]:
        """The command service's counts (none when commands are off)."""
        service = self.gateway.commands
        if service is None:
            return
        stats = service.stats()
        results = _counter("edgegw_command_results", "Command results given, by status.", ["status"])
        for status in ("ok", "error", "refused", "expired", "timeout"):
            results.add_metric([status], stats.results.get(status, 0))
        yield results
        yield _value(_counter("edgegw_command_requests", "Command requests received."), stats.received)
        yield _value(
            _counter("edgegw_command_duplicates", "Requests answered from the de-duplication window."),
            stats.duplicates,
        )
        yield _value(
            _counter("edgegw_command_results_dropped", "Results dropped from a full outbox (still audited)."),
            stats.outbox_dropped,
        )
        yield _value(
            _counter(
                "edgegw_command_journal_faults",
                "Faults of the command id journal (unreadable, unwritable); de-duplication went on in RAM.",
            ),
            stats.journal_faults,
        )
        yield _value(
            _gauge("edgegw_command_connected", "1 while the command session is connected and subscribed."),
            int(stats.connected),
        )

    def _devices(self) -> Iterator[Metric]:
        gw = self.gateway
        counts = gw.counts
        events_in = _counter(
            "edgegw_events_in",
            "Events committed to the buffer (accepted), by device and kind.",
            ["device", "kind"],
        )
        events_out = _counter(
            "edgegw_events_out",
            "Events read by the upstream for their first publish, by device and kind (resends not counted).",
            ["device", "kind"],
        )
        if counts is not None:
            for (device, kind), n in sorted(counts.events_in.items()):
                events_in.add_metric([device, kind], n)
            for (device, kind), n in sorted(counts.events_out.items()):
                events_out.add_metric([device, kind], n)
        yield events_in
        yield events_out

        emitted = _counter(
            "edgegw_device_events_emitted", "Events a device put on the pipeline queue.", ["device"]
        )
        dropped = _counter(
            "edgegw_device_events_dropped",
            "Events of a device dropped because the queue was full.",
            ["device"],
        )
        decode = _counter(
            "edgegw_decode_errors", "Frames or messages a device's driver could not decode.", ["device"]
        )
        skipped = _counter(
            "edgegw_framer_bytes_skipped",
            "Bytes a device's framer skipped to resynchronise (noise).",
            ["device"],
        )
        rejected = _counter(
            "edgegw_framer_frames_rejected",
            "Candidate frames a device's framer rejected (bad checksum or length).",
            ["device"],
        )
        driver = _counter(
            "edgegw_driver_counter", "Every named counter of a device's driver.", ["device", "counter"]
        )
        processor = _counter(
            "edgegw_processor_counter",
            "Every counter of a device's processor (e.g. RFID smoothing).",
            ["device", "counter"],
        )
        restarts = _counter(
            "edgegw_device_restarts", "Times a device's driver failed and was restarted.", ["device"]
        )
        up = _gauge("edgegw_device_up", "1 while the device is connected, else 0.", ["device"])
        state = _gauge(
            "edgegw_device_state",
            "The device's state: 1 for the current one (" + ", ".join(DEVICE_STATES) + ").",
            ["device", "state"],
        )
        for name, runner in gw.runners.items():
            before = gw.retired.get(name)
            counters = Counter(runner.counters)
            processed = Counter(runner.processor.counters()) if runner.processor is not None else Counter()
            n_emitted, n_dropped, n_restarts = runner.events_emitted, runner.events_dropped, runner.restarts
            if before is not None:
                counters.update(before.counters)
                processed.update(before.processor)
                n_emitted += before.emitted
                n_dropped += before.dropped
                n_restarts += before.restarts
            emitted.add_metric([name], n_emitted)
            dropped.add_metric([name], n_dropped)
            restarts.add_metric([name], n_restarts)
            decode.add_metric([name], counters.get(DECODE_ERRORS, 0))
            skipped.add_metric([name], counters.get(BYTES_SKIPPED, 0))
            rejected.add_metric([name], counters.get(FRAMES_REJECTED, 0))
            for counter, n in sorted(counters.items()):
                driver.add_metric([name, counter], n)
            for counter, n in sorted(processed.items()):
                processor.add_metric([name, counter], n)
            up.add_metric([name], 1 if runner.state == "connected" else 0)
            for s in DEVICE_STATES:
                state.add_metric([name, s], 1 if runner.state == s else 0)
        yield from (emitted, dropped, decode, skipped, rejected, driver, processor, restarts, up, state)

    def _pipeline(self) -> Iterator[Metric]:
        gw = self.gateway
        queue = gw.queue
        yield _value(_gauge("edgegw_queue_events", "Events in the pipeline queue."), len(queue))
        yield _value(_gauge("edgegw_queue_capacity", "Capacity of the pipeline queue."), queue.max_events)
        yield _value(
            _gauge("edgegw_queue_high_water", "Most events the queue held at once."), queue.high_water
        )
        dropped = _counter("edgegw_events_dropped", "Events dropped, by reason.", ["reason"])
        dropped.add_metric([QUEUE_FULL], queue.dropped)
        buffer = gw.buffer
        stats = buffer.stats() if buffer is not None else None
        for reason in DropReason:
            dropped.add_metric([reason.value], stats.dropped.get(reason.value, 0) if stats else 0)
        yield dropped
        ingest = gw.ingest
        yield _value(
            _counter("edgegw_ingest_commits", "Group commits of events into the buffer."),
            ingest.commits if ingest else 0,
        )
        if stats is None:
            return
        yield _value(
            _gauge("edgegw_buffer_events", "Events stored, not yet acknowledged (backlog)."), stats.depth
        )
        yield _value(
            _gauge("edgegw_buffer_bytes", "Bytes the stored events count against the cap."), stats.bytes
        )
        yield _value(_gauge("edgegw_buffer_max_bytes", "The buffer's cap, in bytes."), stats.max_bytes)
        age = max(0.0, self.clock() - stats.oldest_ts) if stats.oldest_ts is not None else 0.0
        yield _value(
            _gauge("edgegw_buffer_oldest_age_seconds", "Age of the oldest stored event (0 when empty)."), age
        )
        yield _value(_gauge("edgegw_buffer_last_seq", "The highest seq assigned."), stats.last_seq)
        yield _value(
            _gauge("edgegw_buffer_disk_full", "1 while the buffer's filesystem is full (drops: disk_full)."),
            int(stats.disk_full),
        )
        yield _value(
            _counter(
                "edgegw_buffer_corrupt_files",
                "Damaged buffer files moved aside (<file>.corrupt-<UTC time>) and replaced by a fresh one.",
            ),
            stats.corrupt_files,
        )
        yield _value(
            _counter(
                "edgegw_events_unrouted",
                "Events no upstream's route takes (not stored), since the gateway started.",
            ),
            stats.unrouted,
        )

    def _upstream(self) -> Iterator[Metric]:
        upstream = self.gateway.upstream
        if not isinstance(upstream, Forwarder):
            return
        s = upstream.stats()
        yield _value(
            _gauge("edgegw_upstream_connected", "1 while connected to the MQTT broker."), int(s.connected)
        )
        yield _value(
            _gauge("edgegw_upstream_inflight", "Publishes awaiting the broker's PUBACK."), s.inflight
        )
        yield _value(_counter("edgegw_upstream_connects", "Connections made to the broker."), s.connects)
        yield _value(
            _counter("edgegw_upstream_disconnects", "Connections to the broker lost."), s.disconnects
        )
        yield _value(
            _counter("edgegw_upstream_events_published", "Events published, resends included."), s.published
        )
        yield _value(_counter("edgegw_upstream_events_acked", "Events the broker acknowledged."), s.acked)
        yield _value(
            _counter("edgegw_upstream_events_refused", "Events in publishes the broker refused (kept)."),
            s.refused,
        )
        yield _value(_counter("edgegw_upstream_events_resent", "Events published again."), s.resent)

    def _upstreams(self) -> Iterator[Metric]:
        """Every upstream by name (and kind): its share of the buffer, its link and its bad input."""
        gw = self.gateway
        buffer = gw.buffer
        if buffer is None:
            return
        shares = buffer.stats().upstreams
        kinds = {name: u.kind for name, u in gw.upstreams.items()}
        events = _gauge(
            "edgegw_upstream_backlog_events",
            "Events in the buffer routed to this upstream and not acknowledged by it.",
            ["upstream", "kind"],
        )
        nbytes = _gauge("edgegw_upstream_backlog_bytes", "Bytes of that backlog.", ["upstream", "kind"])
        age = _gauge(
            "edgegw_upstream_backlog_oldest_age_seconds",
            "Age of the oldest event of that backlog (0 when empty).",
            ["upstream", "kind"],
        )
        dropped = _counter(
            "edgegw_upstream_dropped_events",
            "Events dropped from the buffer (by reason) while this upstream had not acknowledged them.",
            ["upstream", "reason"],
        )
        for name, share in sorted(shares.items()):
            kind = kinds.get(name, "")
            events.add_metric([name, kind], share.events)
            nbytes.add_metric([name, kind], share.bytes)
            oldest = share.oldest_ts
            age.add_metric([name, kind], max(0.0, self.clock() - oldest) if oldest is not None else 0.0)
            for reason, n in sorted(share.dropped.items()):
                dropped.add_metric([name, reason], n)
        yield events
        yield nbytes
        yield age
        yield dropped
        up = _gauge("edgegw_upstream_up", "1 while this upstream is connected.", ["upstream", "kind"])
        sent = _counter("edgegw_upstream_sent_events", "Events sent, resends included.", ["upstream"])
        delivered = _counter(
            "edgegw_upstream_delivered_events", "Events the far end acknowledged.", ["upstream"]
        )
        refused = _counter(
            "edgegw_upstream_refused_events", "Events the far end refused (kept).", ["upstream"]
        )
        errors = _counter(
            "edgegw_upstream_errors",
            "Bad input and faults of an upstream, by reason.",
            ["upstream", "reason"],
        )
        for name, upstream in sorted(gw.upstreams.items()):
            st = upstream.stats()
            up.add_metric([name, upstream.kind], int(st.connected))
            sent.add_metric([name], st.published)
            delivered.add_metric([name], st.acked)
            refused.add_metric([name], st.refused)
            for reason, n in sorted(upstream.counters.items()):
                errors.add_metric([name, reason], n)
        yield up
        yield sent
        yield delivered
        yield refused
        yield errors

    def _runtime(self) -> Iterator[Metric]:
        gw = self.gateway
        lag = gw.loop_monitor.stats
        yield _value(_gauge("edgegw_loop_lag_max_seconds", "Worst event-loop lag since start."), lag.max_s)
        yield _value(
            _counter("edgegw_loop_lag_over_50ms", "Loop lag samples over 50 ms (serial ports at risk)."),
            lag.over_50ms,
        )
        health = gw.health
        reason = health.reason() if health is not None else "not running"
        yield _value(_gauge("edgegw_healthy", "1 while /healthz says ok."), int(reason is None))
        reloads = _counter("edgegw_reloads", "Reloads (SIGHUP), by result.", ["result"])
        for result in ("applied", "rejected"):
            reloads.add_metric([result], gw.reloads.get(result, 0))
        yield reloads


def _value(family: CounterMetricFamily | GaugeMetricFamily, value: float) -> Metric:
    family.add_metric([], value)
    return family


def build_registry(gateway: Gateway) -> tuple[CollectorRegistry, Histogram]:
    """A registry of the gateway's own (never prometheus-client's global one, which would mix in whatever
    else the process imported): the collector, the process's CPU and memory, and the publish latency
    histogram, returned for the forwarder's ``latency_observer``."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gateway))
    ProcessCollector(registry=registry)
    latency = Histogram(
        "edgegw_upstream_publish_latency_seconds",
        "Publish to PUBACK, sampled: one publish in flight is timed at a time.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    return registry, latency


# --------------------------------------------------------------------------------------------------------
# The HTTP server

REQUEST_TIMEOUT_S: Final = 10.0
"""A client must send its request head within this (a stalled or idle client is disconnected)."""
_MAX_HEAD_LINES: Final = 100
_LINE_LIMIT: Final = 8192
_INDEX: Final = b"edgegw: /metrics (Prometheus), /healthz (200 ok, or 503 and why)\n"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP/1.1 on the running event loop (one request per connection).

    ``health()`` returns None when healthy, else the reason; it runs on the loop for each ``/healthz``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], str | None],
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
    ) -> None:
        self.registry = registry
        self.health = health
        self.host = host
        self.port = port
        """The port asked for; after :meth:`start`, the port bound (so 0 becomes a real one)."""
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen (OSError if the address is taken or not local)."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_LINE_LIMIT, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    head = await self._read_head(reader)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            except ValueError:  # a line over the limit
                head = None
            status, content_type, body, head_only = self._respond(head)
            self.requests += 1
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(body)
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    await writer.drain()
        except TimeoutError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._clients.discard(task)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> list[str] | None:
        lines: list[str] = []
        while len(lines) < _MAX_HEAD_LINES:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed before the end of the request head")
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                return lines
            lines.append(text)
        return None

    def _respond(self, head: list[str] | None) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        if not head:
            return 400, text, b"bad request\n", False
        parts = head[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, text, b"only GET and HEAD\n", False
        path = urlsplit(target).path
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry), head_only
        if path == "/healthz":
            try:
                reason = self.health()
            except Exception as err:  # a broken check is an unhealthy gateway, and says so
                log.exception("health check failed")
                reason = f"health check failed: {type(err).__name__}: {err}"
            if reason is None:
                return 200, text, b"ok\n", head_only
            return 503, text, (" ".join(reason.splitlines()) + "\n").encode(), head_only
        if path == "/":
            return 200, text, _INDEX, head_only
        return 404, text, b"not found: try /metrics or /healthz\n", head_only
