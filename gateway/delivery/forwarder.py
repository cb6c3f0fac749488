"""The MQTT forwarder: buffer -> broker, QoS 1, at least once, same id on every delivery.

One :class:`Forwarder` per upstream. It reads the buffer in seq order, publishes each event (or, with
``batch_max_events > 1``, each run of consecutive events of one device and kind that is already pending)
on ``<prefix>/<gateway>/<device>/<kind>``, keeps at most ``max_inflight`` publishes unacknowledged (and no
more than the broker's Receive Maximum), and deletes from the buffer only what the broker acknowledged.
Acks are handed to the buffer in one call per loop iteration, not one per message.

Payload (bytes concatenated around ``Stored.data_json``; the data is never decoded)::

    {"id": "<gateway>:<seq>", "seq": N, "device": "...", "kind": "...", "ts": 1717000000.5, "data": {...}}

and with batching, a JSON array of such objects in one message.

Failure policy:

- **Connection lost**: the moment paho reports it, every publish in flight is forgotten (it will never be
  acknowledged on this connection), acks already received are flushed to the buffer, and the next
  connection starts reading from the start of the buffer, i.e. from the lowest unacknowledged seq: the
  unacknowledged events go out again with the same ids. Each connection is a fresh clean-start session, so
  paho never replays anything itself. Reconnects back off exponentially with full jitter
  (``uniform(0, min(reconnect_max_s, reconnect_initial_s * 2**attempt))``), reset once connected.
- **Refusal** (MQTT 5 PUBACK reason >= 0x80, e.g. 0x87 not authorised): not an acknowledgement. The events
  stay in the buffer, are counted in ``refused`` and logged (at most one line per
  ``REFUSAL_LOG_INTERVAL_S``). They are not retried on the same connection (so a permanently refused
  topic can never spin) and do not block newer events (the cursor moves past them); they are retried once
  after each reconnect, when the cursor rewinds. Until then they count against the buffer's byte cap like
  any other backlog.
- **Status**: the will is ``offline`` (retained, QoS 1) on ``<prefix>/<gateway>/status``; after each connect
  the forwarder publishes ``online`` there, retained; on a clean stop it publishes ``offline`` retained,
  waits (bounded) for what is in flight, then sends DISCONNECT.
- **Draining** (:meth:`Forwarder.drain`, the first half of a clean stop, once the last events are
  committed): publish everything still buffered and wait for its acknowledgements, so the devices' last
  events (their ``stopped`` status, the departures of the tags still tracked) reach the broker before
  ``offline``. The caller bounds it (``asyncio.timeout``). While draining, a backoff pause is cut short
  and a failed connection attempt ends the drain at once: an unreachable broker costs one attempt, and
  what is left stays buffered for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.backoff import Backoff
from gateway.config.models import MqttConfig, MqttUpstreamOptions
from gateway.delivery.buffer import Buffer, Stored
from gateway.delivery.encoding import Compression, Encoding, MessageCodec
from gateway.delivery.mqtt import (
    MqttConnectError,
    MqttConnection,
    MqttError,
    MqttNotConnected,
    TlsOptions,
    Will,
)
from gateway.delivery.payload import PAYLOAD_FORMAT, id_head, topic_head
from gateway.delivery.upstream import Cursor, Upstream, UpstreamContext, UpstreamOptions, UpstreamStats

log = logging.getLogger("edgegw.forwarder")

REFUSAL_LOG_INTERVAL_S = 10.0
"""At most one log line about refused publishes per this many seconds."""
SHUTDOWN_GRACE_S = 5.0
"""On a clean stop: how long to wait for in-flight acks and the ``offline`` PUBACK before disconnecting."""
_READ_CAP = 10_000
_READ_AHEAD = 1_000  # rows read from the buffer at once, ahead of the in-flight window
"""With batching: at most this many events read per iteration."""
_REFUSED = 0x80


@dataclass(frozen=True)
class ForwarderSettings:
    """One upstream broker. Secrets are kept out of ``repr`` (and out of every log line)."""

    gateway_id: str
    host: str
    port: int = 1883
    prefix: str = "edgegw"
    client_id: str | None = None
    """Stable MQTT client id; None: ``edgegw-<gateway_id>``."""
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    max_inflight: int = 100
    """Bound on unacknowledged publishes (messages, including the status message)."""
    batch_max_events: int = 1
    """1: one event per message. >1: up to this many pending events of one device and kind per message."""
    batch_linger_ms: int = 0
    """With batching: how long fewer than ``batch_max_events`` pending events wait for more (0: not)."""
    encoding: Encoding = "json"
    """json (the documented JSON), cbor or msgpack: :mod:`gateway.delivery.encoding`."""
    compression: Compression | None = None
    """zstd or gzip of each message (None: none)."""
    topic_alias: bool = False
    """MQTT 5 topic aliases, up to the broker's Topic Alias Maximum."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    """CA bundle for verifying the broker; None: the system CAs."""
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    tls_insecure: bool = False
    """Skip the broker host name check (the chain is still verified). Only when explicitly set."""
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol must be '5' or '3.1.1', not {self.protocol!r}")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if self.batch_max_events < 1:
            raise ValueError("batch_max_events must be >= 1")
        if self.batch_linger_ms < 0:
            raise ValueError("batch_linger_ms must be >= 0")
        if self.protocol != "5" and (self.encoding != "json" or self.compression or self.topic_alias):
            raise ValueError("encoding, compression and topic_alias need MQTT 5 (its properties say how)")
        if self.reconnect_initial_s <= 0 or self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        if not self.gateway_id or any(c in self.gateway_id for c in "/+#"):
            raise ValueError(f"gateway_id must be non-empty, without '/', '+' or '#': {self.gateway_id!r}")
        # The prefix may have levels of its own (site-1/edgegw), as the config allows: none empty.
        if not self.prefix or any(c in self.prefix for c in "+#") or "" in self.prefix.split("/"):
            raise ValueError(f"prefix must be topic levels, none empty, without '+' or '#': {self.prefix!r}")

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"edgegw-{self.gateway_id}"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/{self.gateway_id}/status"


class EventSource(Protocol):
    """What the forwarder reads: a buffer, or one upstream's cursor of it."""

    async def read(self, after_seq: int, limit: int) -> list[Stored]: ...

    async def ack(self, seqs: Iterable[int]) -> None: ...

    async def wait_for_new(self, after_seq: int) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwarderStats(UpstreamStats):
    """:class:`UpstreamStats` (published: resends included; refused: PUBACK reason >= 0x80, they stay
    buffered; resent: after a reconnect, or a refused one retried; disconnects: a clean stop is not
    counted), and the window."""

    inflight: int
    """Publishes (messages) awaiting a PUBACK now."""
    max_inflight_seen: int
    """High-water mark of ``inflight``."""


class Forwarder:
    """Reads ``buffer`` in seq order and forwards to one MQTT broker until cancelled or :meth:`stop`."""

    def __init__(self, buffer: Buffer | EventSource, settings: ForwarderSettings) -> None:
        self._buffer: Buffer | EventSource = buffer
        self.settings = settings
        self.connected_event = asyncio.Event()
        """Set while connected (after CONNACK and the ``online`` publish), cleared when the link is lost."""
        self.disconnected_event = asyncio.Event()
        """The opposite of ``connected_event``: set at once when the connection is lost."""
        self.disconnected_event.set()
        self._conn: MqttConnection | None = None
        self._pending: dict[int, tuple[int, ...]] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set by :meth:`stop` and :meth:`drain`: ends a backoff pause early."""
        self._drained: asyncio.Future[str | None] | None = None
        """While :meth:`drain` waits: resolved with None once everything buffered is acknowledged, or
        with the reason it cannot be (the broker is unreachable)."""
        self._drain_requests = 0
        self._running = False
        self._lost = False
        self._window = settings.max_inflight
        self._reconnect = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self._topics: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._id_head = id_head(settings.gateway_id)
        self._codec = MessageCodec(settings.gateway_id, settings.encoding, settings.compression)
        self._general = not self._codec.default or settings.topic_alias
        """Not the one path for the default JSON: encode through the codec, with properties."""
        self._properties = self._codec.properties()
        self._aliases: dict[tuple[str, str], Properties] = {}  # this connection's topic aliases
        self._alias_max = 0
        self._linger_s = settings.batch_linger_ms / 1000 if settings.batch_max_events > 1 else 0.0
        self._linger_until: float | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._max_sent_seq = 0
        self._refused_unlogged = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL_S
        self.published = 0
        self.acked = 0
        self.refused = 0
        self.resent = 0
        self.connects = 0
        self.disconnects = 0
        self.max_inflight_seen = 0
        self.latency_observer: Callable[[float], None] | None = None
        """Called with the seconds from a publish to its PUBACK (the metrics' histogram). Sampled: one
        publish in flight is timed at a time (the last of a burst), so the hot loop pays a clock read per
        round trip, not per message."""
        self._probe_mid: int | None = None
        self._probe_sent = 0.0

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Forwarder(gateway_id={s.gateway_id!r}, broker={s.host}:{s.port}, "
            f"client_id={s.effective_client_id!r}, connected={self.connected})"
        )

    @property
    def connected(self) -> bool:
        return self.connected_event.is_set()

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def stats(self) -> ForwarderStats:
        return ForwarderStats(
            published=self.published,
            acked=self.acked,
            refused=self.refused,
            resent=self.resent,
            connects=self.connects,
            disconnects=self.disconnects,
            connected=self.connected,
            inflight=len(self._pending),
            max_inflight_seen=self.max_inflight_seen,
        )

    async def wait_connected(self) -> None:
        await self.connected_event.wait()

    def stop(self) -> None:
        """Ask :meth:`run` to publish ``offline``, disconnect cleanly and return."""
        self._stop.set()
        self._hurry.set()
        self._wake.set()

    async def drain(self) -> str | None:
        """Publish everything buffered and wait until the broker acknowledged it: the first half of a
        clean stop, once nothing more will be committed (:meth:`stop` or a cancellation of :meth:`run`
        follows, which publishes ``offline`` and disconnects). Returns None when nothing is left to
        publish (events the broker refused stay buffered), else why not.

        It waits as long as the broker keeps acknowledging: the caller bounds it (``asyncio.timeout``),
        and a cancellation leaves the forwarder as it was. While draining, a reconnect does not back off,
        and a connection attempt that fails ends the drain at once (an unreachable broker costs one
        attempt, not the caller's whole bound)."""
        if not self._running or self._stop.is_set():
            return "the forwarder is not running"
        drained = self._drained
        if drained is None or drained.done():
            drained = self._drained = asyncio.get_running_loop().create_future()
        self._drain_requests += 1
        self._hurry.set()
        self._wake.set()
        try:
            return await drained
        finally:
            if self._drained is drained:
                self._drained = None

    @property
    def _draining(self) -> bool:
        return self._drained is not None and not self._drained.done()

    def _end_drain(self, reason: str | None) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(reason)

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Forward until cancelled or stopped; a clean shutdown either way."""
        s = self.settings
        attempt = 0
        self._running = True
        try:
            while not self._stop.is_set():
                conn = self._new_connection()
                try:
                    await conn.connect()
                except MqttConnectError as err:
                    delay = self._backoff(attempt)
                    attempt += 1
                    if self._draining:
                        log.warning(
                            "MQTT %s:%d: %s; not waiting for it to come back: stopping", s.host, s.port, err
                        )
                        self._end_drain(f"the broker is unreachable ({err})")
                    else:
                        log.warning("MQTT %s:%d: %s; retrying in %.2f s", s.host, s.port, err, delay)
                    await self._pause(delay)
                    continue
                attempt = 0
                self._start_session(conn)
                await self._session(conn)
                if self._lost:
                    await self._flush_acks()
                    await self._pause(self._backoff(0))
                    attempt = 1
        except asyncio.CancelledError:
            await self._shutdown()
            raise
        finally:
            self._running = False
            self._end_drain("the forwarder stopped")
        await self._shutdown()

    def _new_connection(self) -> MqttConnection:
        s = self.settings
        tls = None
        if s.tls:
            tls = TlsOptions(
                ca_file=s.ca_file,
                cert_file=s.cert_file,
                key_file=s.key_file,
                key_password=s.key_password,
                insecure=s.tls_insecure,
            )
        conn: MqttConnection

        def on_ack(mid: int, reason: int) -> None:
            if self._conn is conn:
                self._handle_ack(mid, reason)

        def on_lost(reason: str) -> None:
            if self._conn is conn:
                self._handle_lost(reason)

        conn = MqttConnection(
            host=s.host,
            port=s.port,
            client_id=s.effective_client_id,
            on_ack=on_ack,
            on_lost=on_lost,
            protocol=s.protocol,
            keepalive_s=s.keepalive_s,
            username=s.username,
            password=s.password,
            tls=tls,
            will=Will(s.status_topic, b"offline", qos=1, retain=True),
            connect_timeout_s=s.connect_timeout_s,
        )
        self._conn = conn
        return conn

    def _backoff(self, attempt: int) -> float:
        return self._reconnect.delay(attempt)

    async def _pause(self, delay: float) -> None:
        """Back off for ``delay`` seconds; :meth:`stop` and :meth:`drain` cut it short (a drain skips it)."""
        if self._stop.is_set() or self._draining:
            return
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._hurry.wait()

    def _start_session(self, conn: MqttConnection) -> None:
        s = self.settings
        self._lost = False
        self._pending.clear()
        self._probe_mid = None
        self._aliases.clear()
        self._alias_max = conn.topic_alias_maximum if s.topic_alias else 0
        window = s.max_inflight
        if conn.receive_maximum is not None:
            window = max(1, min(window, conn.receive_maximum))
        self._window = window
        self.connects += 1
        mid = conn.publish(s.status_topic, b"online", qos=1, retain=True)
        self._pending[mid] = ()
        self.connected_event.set()
        self.disconnected_event.clear()
        log.info(
            "MQTT connected to %s:%d as %r (MQTT %s%s, window %d)",
            s.host,
            s.port,
            s.effective_client_id,
            s.protocol,
            ", TLS" if s.tls else "",
            window,
        )

    async def _session(self, conn: MqttConnection) -> None:
        """Publish from the buffer while the connection lasts (returns when lost or stopping)."""
        buffer = self._buffer
        pending = self._pending
        batch = self.settings.batch_max_events
        wake = self._wake
        cursor = 0  # rewind: the buffer holds only unacknowledged events, so this is the lowest of them
        # Rows read ahead of the window: refilling it as acks free slots needs no buffer round trip
        # (an executor hop, several loop turns under load, which capped one-per-message throughput).
        ahead: deque[Stored] = deque()
        waiter: asyncio.Task[None] | None = None
        # The drain request (its number) after which a read found nothing left: a read begun before the
        # request may have missed the last commits.
        caught_up = -1
        try:
            while not self._lost and not self._stop.is_set():
                wake.clear()
                if self._acked:
                    await self._flush_acks()
                space = self._window - len(pending)
                if space > 0:
                    want = min(space * batch, _READ_CAP)
                    if len(ahead) < want:
                        request = self._drain_requests
                        rows = await buffer.read(cursor, max(_READ_AHEAD, want - len(ahead)))
                        if self._lost or self._stop.is_set():
                            break
                        if rows:
                            ahead.extend(rows)
                            cursor = rows[-1].seq
                        else:
                            caught_up = request
                    if ahead and self._linger_s and self._lingering(len(ahead)):
                        if waiter is None or waiter.done():
                            waiter = asyncio.ensure_future(buffer.wait_for_new(cursor))
                            waiter.add_done_callback(self._waiter_done)
                        await wake.wait()
                        continue
                    if ahead:
                        chunk = [ahead.popleft() for _ in range(min(len(ahead), want))]
                        try:
                            _, consumed = self._publish(conn, chunk, space)
                        except MqttNotConnected:
                            break
                        ahead.extendleft(reversed(chunk[consumed:]))
                    if ahead and len(pending) < self._window:
                        continue  # room left and rows in hand
                    if not ahead and (waiter is None or waiter.done()):
                        waiter = asyncio.ensure_future(buffer.wait_for_new(cursor))
                        waiter.add_done_callback(self._waiter_done)
                if not pending and not ahead and caught_up == self._drain_requests and self._draining:
                    await self._flush_acks()
                    self._end_drain(None)  # everything read since the request, and nothing in flight
                await wake.wait()
        finally:
            if waiter is not None and not waiter.done():
                waiter.cancel()
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            self._linger_until = None

    def _lingering(self, have: int) -> bool:
        """With ``batch_linger_ms``: whether ``have`` pending events (fewer than a full batch) should wait
        for more, at most the linger from when the first of them was in hand. A drain or stop never waits."""
        if have >= self.settings.batch_max_events or self._draining or self._stop.is_set():
            self._linger_until = None
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._linger_until is None:
            self._linger_until = now + self._linger_s
        if now >= self._linger_until:
            self._linger_until = None
            return False
        if self._linger_timer is None or self._linger_timer.when() > self._linger_until:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            self._linger_timer = loop.call_at(self._linger_until, self._linger_done)
        return True

    def _linger_done(self) -> None:
        self._linger_timer = None
        self._wake.set()

    def _waiter_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("buffer.wait_for_new failed: %r", task.exception())
        self._wake.set()

    def _publish(self, conn: MqttConnection, rows: list[Stored], space: int) -> tuple[int, int]:
        """Publish ``rows`` (at most ``space`` messages); return (last seq published, rows consumed)."""
        self._linger_until = None
        if self._general:
            return self._publish_general(conn, rows, space)
        publish = conn.publish
        pending = self._pending
        topics = self._topics
        head_id = self._id_head
        fmt = PAYLOAD_FORMAT
        max_sent = self._max_sent_seq
        resent = 0
        if self.settings.batch_max_events == 1:
            rows = rows[:space]
            for r in rows:
                key = (r.device, r.kind)
                entry = topics.get(key)
                if entry is None:
                    entry = self._topic_entry(key)
                seq = r.seq
                payload = fmt % (head_id, seq, seq, entry[1], r.ts, r.data_json)
                pending[publish(entry[0], payload)] = (seq,)
                if seq <= max_sent:
                    resent += 1
            consumed = len(rows)
            events = consumed
            last = rows[-1].seq
        else:
            batch = self.settings.batch_max_events
            consumed = 0
            messages = 0
            n = len(rows)
            while consumed < n and messages < space:
                first = rows[consumed]
                key = (first.device, first.kind)
                end = consumed + 1
                while (
                    end < n
                    and end - consumed < batch
                    and rows[end].device == key[0]
                    and rows[end].kind == key[1]
                ):
                    end += 1
                entry = topics.get(key)
                if entry is None:
                    entry = self._topic_entry(key)
                head = entry[1]
                parts = []
                seqs = []
                for r in rows[consumed:end]:
                    seq = r.seq
                    parts.append(fmt % (head_id, seq, seq, head, r.ts, r.data_json))
                    seqs.append(seq)
                    if seq <= max_sent:
                        resent += 1
                pending[publish(entry[0], b"[" + b",".join(parts) + b"]")] = tuple(seqs)
                messages += 1
                consumed = end
            events = consumed
            last = rows[consumed - 1].seq
        self._max_sent_seq = max(max_sent, last)
        if self._probe_mid is None and self.latency_observer is not None and pending:
            self._probe_mid = next(reversed(pending))
            self._probe_sent = time.monotonic()
        self.published += events
        self.resent += resent
        self.max_inflight_seen = max(self.max_inflight_seen, len(pending))
        return last, consumed

    def _publish_general(self, conn: MqttConnection, rows: list[Stored], space: int) -> tuple[int, int]:
        """:meth:`_publish` through the codec (another encoding, compression) and with properties (the
        content type, the codec, a topic alias). With batches, the rows in hand are grouped by device and
        kind (each group in seq order; the messages in the order of their first events), so that readers
        whose events interleave still fill batches: MQTT orders messages per topic, and so does this. The
        rows published are moved to the front of ``rows`` (the caller puts the rest back)."""
        pending = self._pending
        codec = self._codec
        batch = self.settings.batch_max_events
        max_sent = self._max_sent_seq
        resent = 0
        groups: dict[tuple[str, str], list[Stored]] = {}
        order: list[list[Stored]] = []  # messages, by their first event
        for r in rows:
            key = (r.device, r.kind)
            group = groups.get(key)
            if group is None or len(group) >= batch:
                group = groups[key] = []
                order.append(group)
            group.append(r)
        sent: list[Stored] = []
        for messages, group in enumerate(order):
            if messages >= space:
                break
            first = group[0]
            topic, props = self._topic_and_properties((first.device, first.kind))
            seqs = tuple(r.seq for r in group)
            pending[conn.publish(topic, codec.encode(group, batch=batch > 1), properties=props)] = seqs
            resent += sum(1 for seq in seqs if seq <= max_sent)
            sent += group
        if len(sent) < len(rows):
            taken = {id(r) for r in sent}
            rows[:] = sent + [r for r in rows if id(r) not in taken]
        consumed = len(sent)
        last = max(r.seq for r in sent)
        self._max_sent_seq = max(max_sent, last)
        if self._probe_mid is None and self.latency_observer is not None and pending:
            self._probe_mid = next(reversed(pending))
            self._probe_sent = time.monotonic()
        self.published += consumed
        self.resent += resent
        self.max_inflight_seen = max(self.max_inflight_seen, len(pending))
        return last, consumed

    def _topic_and_properties(self, key: tuple[str, str]) -> tuple[str, Properties | None]:
        """The topic to publish on and the properties: with topic aliases, the first message on a topic
        (per connection) names it and sets its alias, later ones send the empty topic and the alias."""
        entry = self._topics.get(key)
        if entry is None:
            entry = self._topic_entry(key)
        props = self._aliases.get(key)
        if props is not None:
            return "", props
        if len(self._aliases) < self._alias_max:
            props = self._codec.properties() or Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.TopicAlias = len(self._aliases) + 1
            self._aliases[key] = props
            return entry[0], props
        return entry[0], self._properties

    def _topic_entry(self, key: tuple[str, str]) -> tuple[str, bytes]:
        device, kind = key
        s = self.settings
        entry = (f"{s.prefix}/{s.gateway_id}/{device}/{kind}", topic_head(device, kind))
        self._topics[key] = entry
        return entry

    # -- callbacks from the connection (loop thread) -------------------------------------------------------

    def _handle_ack(self, mid: int, reason: int) -> None:
        seqs = self._pending.pop(mid, None)
        if seqs is None:
            return
        if mid == self._probe_mid:
            self._probe_mid = None
            if self.latency_observer is not None:
                self.latency_observer(time.monotonic() - self._probe_sent)
        if reason < _REFUSED:
            if seqs:
                self._acked.extend(seqs)
                self.acked += len(seqs)
        else:
            self._note_refusal(mid, seqs, reason)
        self._wake.set()

    def _note_refusal(self, mid: int, seqs: tuple[int, ...], reason: int) -> None:
        self.refused += len(seqs)
        self._refused_unlogged += len(seqs)
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._refusal_logged_at = now
            count, self._refused_unlogged = self._refused_unlogged, 0
            what = f"seq {seqs[0]}" if seqs else f"status message (mid {mid})"
            log.warning(
                "MQTT broker refused %d event(s) since last report (latest: %s, reason 0x%02x); "
                "kept in the buffer, retried after the next reconnect",
                count,
                what,
                reason,
            )

    def _handle_lost(self, reason: str) -> None:
        self._lost = True
        self._probe_mid = None
        lost = len(self._pending)
        self._pending.clear()
        self.disconnects += 1
        self.connected_event.clear()
        self.disconnected_event.set()
        self._wake.set()
        s = self.settings
        log.warning(
            "MQTT connection to %s:%d lost (%s); %d publish(es) in flight", s.host, s.port, reason, lost
        )

    async def _flush_acks(self) -> None:
        if self._acked:
            seqs, self._acked = self._acked, []
            try:
                await self._buffer.ack(seqs)
            except asyncio.CancelledError:
                self._acked[:0] = seqs  # maybe not applied: acking again is harmless
                raise

    async def _shutdown(self) -> None:
        conn = self._conn
        try:
            if conn is not None and conn.connected and not self._lost:
                try:
                    async with asyncio.timeout(SHUTDOWN_GRACE_S):
                        mid = conn.publish(self.settings.status_topic, b"offline", qos=1, retain=True)
                        self._pending[mid] = ()
                        while self._pending and not self._lost:
                            self._wake.clear()
                            await self._wake.wait()
                except (TimeoutError, MqttError) as err:
                    log.warning("MQTT: clean shutdown incomplete: %s", err or "timed out")
                await self._flush_acks()
                await conn.disconnect()
            else:
                await self._flush_acks()
        finally:
            self._conn = None
            self._pending.clear()
            self.connected_event.clear()
            self.disconnected_event.set()


class MqttUpstream(Forwarder, Upstream):
    """The ``mqtt`` upstream kind: a :class:`Forwarder` reading its own cursor."""

    kind: ClassVar[str] = "mqtt"
    Options: ClassVar[type[UpstreamOptions]] = MqttUpstreamOptions

    def __init__(self, options: UpstreamOptions, cursor: Cursor, context: UpstreamContext) -> None:
        Upstream.__init__(self, options, cursor, context)
        Forwarder.__init__(self, cursor, settings_from(options, context.gateway_id))


def settings_from(options: UpstreamOptions, gateway_id: str) -> ForwarderSettings:
    """The forwarder's settings from an ``mqtt`` upstream's options (or ``upstream.mqtt``)."""
    if not isinstance(options, MqttConfig):
        raise TypeError(f"not an mqtt upstream: {options!r}")
    mqtt = options
    tls = mqtt.tls
    return ForwarderSettings(
        gateway_id=gateway_id,
        host=mqtt.host,
        port=mqtt.port,
        prefix=mqtt.prefix,
        client_id=mqtt.client_id,
        protocol=mqtt.protocol,
        keepalive_s=mqtt.keepalive_s,
        max_inflight=mqtt.max_inflight,
        batch_max_events=mqtt.batch_max_events,
        batch_linger_ms=mqtt.batch_linger_ms,
        encoding=mqtt.encoding,
        compression=mqtt.compression,
        topic_alias=mqtt.topic_alias,
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


__all__ = ["EventSource", "Forwarder", "ForwarderSettings", "ForwarderStats", "MqttUpstream", "settings_from"]
