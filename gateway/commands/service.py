"""The command service: requests from upstream, checked, run once, answered once, audited.

One :class:`CommandService` per gateway, started when ``upstream.mqtt.commands.enabled`` is set. It keeps
an MQTT connection of its own to the upstream broker (client id ``<client_id>-cmd``) with a *persistent*
session (clean start off, ``session_expiry_s``), so the broker keeps the subscription across reconnects and
queues the QoS 1 requests that arrive while the link is down; those are then answered ``expired`` if they
have grown older than ``max_age_s``. The forwarder's connection stays a clean session of its own: the two
never share a packet id or a window, and a backlog of events never delays a result.

For each message on ``<prefix>/<gateway>/+/cmd`` or ``<prefix>/<gateway>/cmd``, in this order:

1. parse (:func:`~gateway.commands.protocol.parse_request`): a malformed request -> ``error``;
   a retained one -> ``refused`` (a retained request would run again at every subscription);
2. HMAC, when ``hmac_key_file`` is set: missing or wrong -> ``refused`` (not remembered: an
   unauthenticated message must not take the id of a genuine one);
3. de-duplication by (target, id) within ``dedupe_window``: a repeated id gets the first result again (or,
   while the first is still running, the same result when it comes; but the broker's own redelivery, its
   DUP flag set, of a request this process took is the same request: acknowledged, no second result); it
   never runs twice;
4. expiry: ``ts`` older than ``max_age_s`` (or further than that in the future) -> ``expired``;
5. the target: an unknown device -> ``error``; a command its driver does not offer, or one its
   ``commands:`` does not allow -> ``refused``; ``args`` validated against the command's model in pydantic's
   strict JSON mode -> ``refused`` with the validation errors;
6. the device must be running and connected (else ``error``), with fewer than ``max_in_flight`` commands
   running and a token in its ``rate_limit`` bucket (else ``refused``);
7. :meth:`drivers.base.Driver.command` runs in a task of its own beside the driver's ``run``, within the
   command's timeout (``timeout``); a device that stops or restarts meanwhile cancels it (``error``).

Every request and every result is also an event (``command.request``, ``command.result``) through the
pipeline into the durable buffer, so the record upstream is complete even when a result message is lost.
Results wait in a bounded outbox while the broker is away and are published (QoS 1) once it is back;
requests are never stored to run later.

Crash safety: the window is also kept in a journal on disk (:mod:`gateway.commands.journal`,
``<buffer.path>.commands``): an id is journaled as running before its command runs and with its result
once that is made, and the journal is loaded into the window at start. A request is acknowledged to the
broker (``manual_ack``) only once its result is queued for publishing, so one received but not answered
before a crash is delivered again to the restarted gateway's session: an id whose result is journaled gets
that result again, and an id journaled as running (the gateway stopped meanwhile) is answered ``error``,
interrupted with its effect unknown; neither runs again. A journal that fails is logged and counted, and the
window goes on in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from drivers.commands import CommandArgs, CommandFailed, CommandRefused, CommandSpec, NoArgs
from drivers.errors import DriverError
from drivers.event import Event
from drivers.kinds import COMMAND_REQUEST, COMMAND_RESULT
from gateway.backoff import Backoff
from gateway.commands.journal import CommandJournal
from gateway.commands.protocol import (
    GATEWAY_COMMANDS,
    Malformed,
    Request,
    Status,
    encode_result,
    parse_request,
    parse_target,
    result_topic,
    subscriptions,
    verify,
)
from gateway.config import CommandsConfig, Config, ConfigError, DeviceConfig, MqttConfig, load_config
from gateway.delivery.mqtt import Incoming, MqttConnectError, MqttConnection, MqttNotConnected, TlsOptions

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = [
    "GATEWAY_SPECS",
    "CommandService",
    "CommandStats",
    "commands_broker",
    "connection_kwargs",
    "read_hmac_key",
]

log = logging.getLogger("edgegw.commands")

OUTBOX_MAX: Final = 1000
"""Results waiting for the broker at most; beyond, the oldest is dropped (and counted: its
``command.result`` event is in the buffer all the same)."""
WINDOW: Final = 100
"""Result publishes awaiting a PUBACK at most."""
SIGNED_WINDOW_FACTOR: Final = 10
"""With signed requests, the de-duplication window may grow to this many times its count to keep every id
whose request a replay could still present unexpired."""
SUBACK_TIMEOUT_S: Final = 10.0
"""A broker that does not answer the subscription within this is given up on (and reconnected to)."""
STATUS_INTERVAL_S: Final = 1.0
"""The gateway's ``status`` command measures rates over this long (like ``edgegw status --once``)."""

GATEWAY_SPECS: Final[Mapping[str, CommandSpec]] = {
    "ping": CommandSpec(NoArgs, "Answer at once: proves the command path end to end."),
    "status": CommandSpec(
        NoArgs, "The figures of `edgegw status --once`: health, upstream, buffer, devices, rates."
    ),
    "reload": CommandSpec(NoArgs, "Re-read and apply the configuration, as SIGHUP does."),
}
assert tuple(sorted(GATEWAY_SPECS)) == GATEWAY_COMMANDS


def commands_broker(config: Config) -> MqttConfig | None:
    """The MQTT upstream whose ``commands.enabled`` is set (``upstream.mqtt``, or the first MQTT entry of
    ``upstreams:`` that enables them); None: commands are off."""
    candidates: list[MqttConfig] = []
    if config.upstream is not None:
        candidates.append(config.upstream.mqtt)
    candidates += [u for u in getattr(config, "upstreams", None) or [] if isinstance(u, MqttConfig)]
    return next((m for m in candidates if m.commands.enabled), None)


def read_hmac_key(path: Path) -> bytes:
    """The key in ``hmac_key_file``: the file's bytes, one trailing newline removed (as the loader reads
    every secret file)."""
    return path.read_bytes().removesuffix(b"\n").removesuffix(b"\r")


def connection_kwargs(mqtt: MqttConfig) -> dict[str, Any]:
    """The broker options of ``upstream.mqtt`` as :class:`MqttConnection` keyword arguments (the command
    connection, and ``edgegw cmd``)."""
    tls = None
    if mqtt.tls_enabled:
        t = mqtt.tls
        tls = TlsOptions(
            ca_file=str(t.ca_file) if t.ca_file else None,
            cert_file=str(t.cert_file) if t.cert_file else None,
            key_file=str(t.key_file) if t.key_file else None,
            key_password=t.key_password.get_secret_value() if t.key_password is not None else None,
            insecure=t.insecure,
        )
    return {
        "host": mqtt.host,
        "port": mqtt.port,
        "protocol": mqtt.protocol,
        "keepalive_s": mqtt.keepalive_s,
        "username": mqtt.username,
        "password": mqtt.password.get_secret_value() if mqtt.password is not None else None,
        "tls": tls,
    }


@dataclass(frozen=True, slots=True)
class CommandStats:
    received: int
    results: dict[str, int]
    """Results given, by status."""
    duplicates: int
    """Requests answered from the de-duplication window."""
    outbox: int
    outbox_dropped: int
    publish_refused: int
    connected: bool
    journal_faults: int = 0
    """Faults of the id journal (unreadable, unwritable): de-duplication went on in memory."""


@dataclass(slots=True)
class _Reply:
    """Where one request's result goes."""

    topic: str
    correlation: bytes | None
    ack: _Ack | None = None
    """Acknowledges the request's PUBLISH once its result is queued (None: nothing to acknowledge)."""
    silent: bool = False
    """The broker's redelivery of a request still running here (its PUBLISH not yet acknowledged, say
    across a broker restart): acknowledged with the result, which the first delivery's reply carries."""


class _Ack:
    """The acknowledgement of one received request, sent at most once (on the connection it came on)."""

    __slots__ = ("_conn", "_mid", "_qos")

    def __init__(self, conn: MqttConnection, mid: int, qos: int) -> None:
        self._conn: MqttConnection | None = conn
        self._mid = mid
        self._qos = qos

    def __call__(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.ack(self._mid, self._qos)


INTERRUPTED: Final = (
    "interrupted: the gateway stopped (restart, crash or power loss) while this command ran; its effect on "
    "the device is unknown, and it was not run again"
)
"""The reason given to a request whose id the journal holds as running, without a result."""


@dataclass(slots=True)
class _Seen:
    """A request id within the de-duplication window: its result (None while it runs), and the replies of
    repeats that arrived meanwhile."""

    result: tuple[Status, str | None, Mapping[str, Any] | None] | None = None
    waiting: list[_Reply] = field(default_factory=list)
    done_at: float = 0.0
    replayable_until: float = 0.0
    """Monotonic time until which the request would not yet be expired: a replay of it would be judged
    on its id alone."""
    here: bool = True
    """Handled by this process, its result published through its outbox (False: loaded from the journal,
    the result maybe never published before the last stop)."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class _Out:
    topic: str
    payload: bytes
    correlation: bytes | None


class _Answer(Exception):
    """Raised inside the checks: the request is answered with this status and reason, not run."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CommandService:
    """Answers command requests for ``gateway`` until cancelled (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        mqtt = commands_broker(config)
        if mqtt is None:
            raise ValueError("no MQTT upstream of this configuration enables commands")
        self._gateway = gateway
        self._mqtt = mqtt
        self.settings: CommandsConfig = mqtt.commands
        self._prefix = mqtt.prefix
        self._gateway_id = config.gateway.id
        self._hmac_key = (
            read_hmac_key(self.settings.hmac_key_file) if self.settings.hmac_key_file is not None else None
        )
        self._clock = clock
        self._monotonic = monotonic
        self._devices_of: Config | None = None
        self._by_name: dict[str, DeviceConfig] = {}
        self._seen: OrderedDict[tuple[str | None, str], _Seen] = OrderedDict()
        self._running: Counter[str | None] = Counter()
        self._buckets: dict[str | None, _Bucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: deque[_Out] = deque()
        self._pending: dict[int, _Out] = {}
        self._conn: MqttConnection | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self.connected_event = asyncio.Event()
        """Set while connected and subscribed."""
        self.received = 0
        self.results: Counter[str] = Counter()
        self.duplicates = 0
        self.outbox_dropped = 0
        self.publish_refused = 0
        self.journal = CommandJournal(Path(f"{config.buffer.path}.commands"))
        self._load_journal()

    @property
    def in_flight(self) -> int:
        """Commands running now (every device and the gateway)."""
        return len(self._tasks)

    def stats(self) -> CommandStats:
        return CommandStats(
            received=self.received,
            results=dict(self.results),
            duplicates=self.duplicates,
            outbox=len(self._outbox) + len(self._pending),
            outbox_dropped=self.outbox_dropped,
            publish_refused=self.publish_refused,
            connected=self.connected_event.is_set(),
            journal_faults=self.journal.faults,
        )

    def _load_journal(self) -> None:
        """The journal's ids into the window, with their times carried over from wall clock to monotonic;
        an id journaled as running gets its result now (interrupted: it is never run again)."""
        entries = self.journal.load()
        if not entries:
            return
        now, mono = self._clock(), self._monotonic()
        interrupted = 0
        for entry in entries:
            result: tuple[Status, str | None, Mapping[str, Any] | None]
            done_at = entry.done_at
            if entry.result is not None:
                result = entry.result
            else:
                result, done_at = ("error", INTERRUPTED, None), now
                self.journal.done(entry.device, entry.id, result, done_at, entry.replayable_until)
                interrupted += 1
            self._seen[(entry.device, entry.id)] = _Seen(
                result=result,
                done_at=mono - max(0.0, now - done_at),
                replayable_until=mono + (entry.replayable_until - now) if entry.replayable_until else 0.0,
                here=False,
            )
        log.info(
            "commands: %d request id(s) from the journal %s (%d interrupted by the last stop)",
            len(entries),
            self.journal.path,
            interrupted,
        )
        self._prune()

    # -- the connection -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe, answer, reconnect with backoff; until cancelled (which cancels the commands
        still running: their results say so, published if the connection still allows)."""
        mqtt = self._mqtt
        backoff = Backoff(mqtt.reconnect.initial_s, mqtt.reconnect.max_s)
        attempt = 0
        try:
            while True:
                conn = self._new_connection()
                try:
                    await conn.connect()
                    try:
                        async with asyncio.timeout(SUBACK_TIMEOUT_S):
                            reasons = await conn.subscribe(subscriptions(self._prefix, self._gateway_id))
                    except TimeoutError:
                        raise MqttNotConnected(f"no SUBACK within {SUBACK_TIMEOUT_S:g} s") from None
                except (MqttConnectError, MqttNotConnected) as err:
                    if conn.connected:
                        await conn.disconnect(grace_s=0.5)
                    delay = backoff.delay(attempt)
                    attempt += 1
                    log.warning(
                        "commands: MQTT %s:%d: %s; retrying in %.2f s", conn.host, conn.port, err, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                refused = [
                    t
                    for t, r in zip(subscriptions(self._prefix, self._gateway_id), reasons, strict=False)
                    if r >= 0x80
                ]
                if refused:
                    log.error(
                        "commands: the broker refused the subscription to %s (not authorised? see the ACL in "
                        "the README); no requests will arrive on it",
                        ", ".join(refused),
                    )
                log.info(
                    "commands: listening on %s (session %s)",
                    ", ".join(subscriptions(self._prefix, self._gateway_id)),
                    "resumed" if conn.session_present else "new",
                )
                self.connected_event.set()
                await self._pump(conn)
                self.connected_event.clear()
                self._requeue()
                await asyncio.sleep(backoff.delay(0))
                attempt = 1
        finally:
            self.connected_event.clear()
            await self._shutdown()

    def _new_connection(self) -> MqttConnection:
        expiry = self.settings.session_expiry_s
        conn: MqttConnection

        def on_ack(mid: int, reason: int) -> None:
            if self._conn is conn:
                self._acked(mid, reason)

        def on_lost(reason: str) -> None:
            if self._conn is conn:
                log.warning("commands: MQTT connection lost (%s)", reason)
                self._lost.set()
                self._wake.set()

        def on_message(message: Incoming) -> None:
            ack = _Ack(conn, message.mid, message.qos)
            if self._conn is not conn:
                return  # not acknowledged: the session delivers it again to the current connection
            try:
                self._on_message(message, ack)
            except Exception:  # a bug here must not take the connection's reader down with it
                log.exception("commands: a request on %s could not be handled", message.topic)
                ack()  # not to be delivered again and again

        conn = MqttConnection(
            **connection_kwargs(self._mqtt),
            client_id=f"{self._mqtt.client_id}-cmd",
            on_ack=on_ack,
            on_lost=on_lost,
            on_message=on_message,
            session_expiry_s=expiry if expiry > 0 else None,
            no_delay=True,
            manual_ack=True,
        )
        self._conn = conn
        self._lost.clear()
        return conn

    async def _pump(self, conn: MqttConnection) -> None:
        """Publish the outbox while the connection lasts."""
        while not self._lost.is_set():
            self._wake.clear()
            while self._outbox and len(self._pending) < WINDOW and conn.connected:
                out = self._outbox.popleft()
                try:
                    mid = conn.publish(out.topic, out.payload, qos=1, properties=self._properties(out))
                except MqttNotConnected:
                    self._outbox.appendleft(out)
                    break
                except ValueError as err:  # a topic paho will not publish to: nothing to retry
                    log.error("commands: cannot publish a result to %r: %s", out.topic, err)
                    self.publish_refused += 1
                    continue
                self._pending[mid] = out
            await self._wake.wait()

    def _properties(self, out: _Out) -> Properties | None:
        """The PUBLISH properties of a result: the request's Correlation Data (MQTT 5), if it had one."""
        if out.correlation is None or self._mqtt.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # untyped in paho
        props.CorrelationData = out.correlation
        return props

    def _acked(self, mid: int, reason: int) -> None:
        out = self._pending.pop(mid, None)
        if out is None:
            return
        if reason >= 0x80:
            self.publish_refused += 1
            log.error(
                "commands: the broker refused the result on %s (reason 0x%02x; not authorised?); its "
                "command.result event is in the buffer",
                out.topic,
                reason,
            )
        self._wake.set()

    def _requeue(self) -> None:
        """After a loss: what was in flight goes out again first, in order."""
        pending = [self._pending[mid] for mid in sorted(self._pending)]
        self._pending.clear()
        self._outbox.extendleft(reversed(pending))
        self._trim_outbox()

    def _trim_outbox(self) -> None:
        while len(self._outbox) > OUTBOX_MAX:
            dropped = self._outbox.popleft()
            self.outbox_dropped += 1
            log.warning("commands: outbox full; dropped the oldest result (for %s)", dropped.topic)

    async def _shutdown(self) -> None:
        await asyncio.sleep(0)  # every command task has started: a cancelled one still gives its result
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        conn, self._conn = self._conn, None
        if conn is not None and conn.connected:
            for out in list(self._outbox):  # the "gateway stopping" results, best effort
                with contextlib.suppress(MqttNotConnected, ValueError):
                    conn.publish(out.topic, out.payload, qos=1, properties=self._properties(out))
            await conn.disconnect(grace_s=1.0)
        self.journal.close()

    # -- requests -----------------------------------------------------------------------------------------

    def _on_message(self, message: Incoming, ack: _Ack | None = None) -> None:
        """``ack``: acknowledges the request once its result is queued (with the reply; see _answer)."""
        target = parse_target(message.topic, self._prefix, self._gateway_id)
        if target is None or not message.payload:
            if ack is not None:
                ack()
            return  # not ours; or empty, which is how a retained message is cleared, not a request
        self.received += 1
        device = target.device
        reply = _Reply(self._reply_topic(message, device), message.correlation_data, ack)
        try:
            request = parse_request(message.payload)
        except Malformed as err:
            self._audit_request(device, {"id": err.id, "error": str(err), "topic": message.topic})
            if err.id is None:
                self._answer(device, None, None, [reply], ("error", str(err), None))
            else:
                self._remember(device, err.id, None, reply, ("error", str(err), None))
            return
        if message.retain:
            self._audit_request(device, {"id": request.id, "error": "retained", "topic": message.topic})
            reason = "a retained request is not accepted: it would run again at every subscription"
            self._answer(device, request.id, request.command, [reply], ("refused", reason, None))
            return
        if self._hmac_key is not None:
            why = verify(self._hmac_key, request, message.topic)
            if why is not None:
                self._audit_request(device, {"id": request.id, "error": why, "topic": message.topic})
                self._answer(device, request.id, request.command, [reply], ("refused", why, None))
                return
        key = (device, request.id)
        self._prune()  # an id whose time in the window is over is forgotten before it is looked up
        seen = self._seen.get(key)
        if seen is not None:
            self.duplicates += 1
            self._audit_request(device, _request_record(request, message.topic, duplicate=True))
            # The broker's redelivery (DUP) of a request this process took is that one request again: its
            # result is (or will be) in the outbox, which publishes it across reconnects. Acknowledge it with
            # that result, without a second one. A client's repeat, or a redelivery after a restart, is
            # answered with the first result again.
            reply.silent = message.dup and seen.here
            if seen.result is None:
                seen.waiting.append(reply)
            else:
                self._answer(device, request.id, request.command, [reply], seen.result, duplicate=True)
            return
        self._audit_request(device, _request_record(request, message.topic))
        try:
            run = self._check(device, request)
        except _Answer as answer:
            result = (answer.status, answer.reason, None)
            self._remember(
                device,
                request.id,
                request.command,
                reply,
                result,
                replayable_until=self._replayable_until(request),
            )
            return
        seen = self._seen[key] = _Seen(replayable_until=self._replayable_until(request))
        self.journal.running(device, request.id, self._wall(seen.replayable_until))
        self._running[device] += 1
        task = asyncio.create_task(
            self._execute(device, request, reply, seen, run), name=f"command:{request.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _devices(self) -> Mapping[str, DeviceConfig]:
        """The running configuration's devices by name (it changes with a reload)."""
        config = self._gateway.config
        if self._devices_of is not config:
            self._devices_of = config
            self._by_name = {d.name: d for d in config.devices}
        return self._by_name

    def _reply_topic(self, message: Incoming, device: str | None) -> str:
        topic = message.response_topic
        if topic and not any(c in topic for c in "+#\0"):
            return topic
        return result_topic(self._prefix, self._gateway_id, device)

    def _check(self, device: str | None, request: Request) -> Callable[[], Awaitable[Any]]:
        """Steps 4 to 6 of the module docstring; returns what runs the command, or raises :class:`_Answer`."""
        s = self.settings
        now = self._clock()
        age = now - request.ts
        if age > s.max_age_s:
            raise _Answer("expired", f"the request is {age:.1f} s old (max_age_s {s.max_age_s:g}): not run")
        if -age > s.max_age_s:
            raise _Answer(
                "expired",
                f"the request's ts is {-age:.1f} s in the future (more than max_age_s {s.max_age_s:g}): the "
                "clocks of the sender and the gateway disagree; not run",
            )
        name = request.command
        if device is None:
            spec = GATEWAY_SPECS.get(name)
            if spec is None:
                raise _Answer(
                    "refused",
                    f"the gateway has no command {name!r} (its commands: {', '.join(GATEWAY_COMMANDS)})",
                )
            args = self._validate(spec, request.args)
            self._limit(None, "the gateway")
            return lambda: self._gateway_command(name, args)
        config = self._devices().get(device)
        if config is None:
            raise _Answer("error", f"this gateway has no device named {device!r}")
        offered = config.driver_class.commands
        spec = offered.get(name)
        if spec is None:
            raise _Answer(
                "refused",
                f"device {device!r} (driver {config.driver!r}) has no command {name!r} (its commands: "
                f"{', '.join(sorted(offered)) or 'none'})",
            )
        if name not in config.commands:
            allowed = ", ".join(config.commands) or "none"
            raise _Answer(
                "refused",
                f"command {name!r} is not allowed on device {device!r}: its `commands:` ({config.file}:"
                f"{config.line}) allows {allowed}",
            )
        args = self._validate(spec, request.args)
        runner = self._gateway.runners.get(device)
        driver = runner.driver if runner is not None else None
        if runner is None or driver is None or runner.state != "connected":
            state = runner.state if runner is not None else "not running"
            raise _Answer("error", f"device {device!r} is not connected (state: {state}); not run")
        self._limit(device, f"device {device!r}")

        async def run() -> Any:
            task = asyncio.create_task(driver.command(name, args), name=f"driver-command:{device}:{name}")
            runner.command_tasks.add(task)
            task.add_done_callback(runner.command_tasks.discard)
            return await _watch(task)

        return run

    def _validate(self, spec: CommandSpec, args: Mapping[str, Any]) -> CommandArgs:
        try:
            return spec.args.model_validate_json(json.dumps(args), strict=True)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}"
                for e in err.errors(include_url=False)
            )
            raise _Answer("refused", f"invalid args: {problems}") from None

    def _limit(self, device: str | None, who: str) -> None:
        s = self.settings
        if self._running[device] >= s.max_in_flight:
            raise _Answer(
                "refused",
                f"{who} already runs {self._running[device]} command(s) (max_in_flight {s.max_in_flight}); "
                "try again when it has answered",
            )
        now = self._monotonic()
        rate = s.rate_limit
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = _Bucket(float(rate.burst), now)
        bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.at) * rate.per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate.per_s
            raise _Answer(
                "refused",
                f"rate limit: {who} accepts {rate.per_s:g} command(s) per second (burst {rate.burst}); "
                f"try again in {wait:.1f} s",
            )
        bucket.tokens -= 1.0

    async def _execute(
        self,
        device: str | None,
        request: Request,
        reply: _Reply,
        seen: _Seen,
        run: Callable[[], Awaitable[Any]],
    ) -> None:
        started = self._monotonic()
        timeout = self.settings.timeouts.get(request.command, self.settings.timeout_s)
        result: tuple[Status, str | None, Mapping[str, Any] | None]
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                data = await run()
            result = _ok(data)
        except TimeoutError as err:
            if deadline.expired():
                result = ("timeout", f"no result within {timeout:g} s; the command was cancelled", None)
            else:  # the driver's own wait for its device
                result = ("error", str(err) or "the device did not answer in time", None)
        except _DeviceStopped as err:
            result = ("error", str(err), None)
        except CommandRefused as err:
            result = ("refused", str(err) or "refused by the driver", None)
        except (CommandFailed, DriverError, OSError) as err:
            result = ("error", str(err) or type(err).__name__, None)
        except asyncio.CancelledError:
            result = ("error", "the gateway is stopping; the command was cancelled", None)
            self._finish(device, request, reply, seen, result, started=started)
            raise
        except Exception as err:
            log.exception("commands: %s on %s failed", request.command, device or "the gateway")
            result = ("error", f"internal error: {type(err).__name__}: {err}", None)
        self._finish(device, request, reply, seen, result, started=started)

    def _finish(
        self,
        device: str | None,
        request: Request,
        reply: _Reply,
        seen: _Seen,
        result: tuple[Status, str | None, Mapping[str, Any] | None],
        *,
        started: float,
    ) -> None:
        self._running[device] -= 1
        seen.result = result
        seen.done_at = self._monotonic()
        self.journal.done(
            device, request.id, result, self._wall(seen.done_at), self._wall(seen.replayable_until)
        )
        waiting, seen.waiting = seen.waiting, []
        duration = seen.done_at - started
        self._answer(device, request.id, request.command, [reply], result, duration_s=duration)
        if waiting:
            self._answer(device, request.id, request.command, waiting, result, duplicate=True)
        self._prune()

    def _remember(
        self,
        device: str | None,
        request_id: str,
        command: str | None,
        reply: _Reply,
        result: tuple[Status, str | None, Mapping[str, Any] | None],
        *,
        replayable_until: float = 0.0,
    ) -> None:
        """Answer a request that did not run, and remember its result for repeats of its id (unless the id
        is already remembered: the first result stays the one repeats get)."""
        entry = _Seen(result=result, done_at=self._monotonic(), replayable_until=replayable_until)
        if self._seen.setdefault((device, request_id), entry) is entry:
            self.journal.done(
                device, request_id, result, self._wall(entry.done_at), self._wall(replayable_until)
            )
        self._answer(device, request_id, command, [reply], result)
        self._prune()

    def _wall(self, monotonic: float) -> float:
        """A monotonic time as wall-clock time, for the journal (0 stays 0: none)."""
        return self._clock() + (monotonic - self._monotonic()) if monotonic else 0.0

    def _replayable_until(self, request: Request) -> float:
        age = self._clock() - request.ts
        return self._monotonic() + max(0.0, self.settings.max_age_s - age)

    def _prune(self) -> None:
        """Forget the oldest ids beyond the window's count or age; never one whose command still runs. With
        signed requests, an id is not forgotten for the count while a replay of its request would still be
        within ``max_age_s`` (a replay is then refused by its id alone), up to ``SIGNED_WINDOW_FACTOR``
        times the count: what only a holder of the key can fill."""
        window = self.settings.dedupe_window
        now = self._monotonic()
        horizon = now - window.seconds
        seen = self._seen
        excess = len(seen) - window.count
        first = next(iter(seen.values()), None)
        if first is None or (excess <= 0 and (first.result is None or first.done_at >= horizon)):
            return  # the common case, without copying the keys
        guard = self._hmac_key is not None
        cap = window.count * SIGNED_WINDOW_FACTOR
        forgotten: list[tuple[str | None, str]] = []
        for key in list(seen):
            entry = seen[key]
            if entry.result is None:
                continue
            old = entry.done_at < horizon
            if not old and excess <= 0:
                break
            if not old and guard and entry.replayable_until > now and len(seen) <= cap:
                continue
            del seen[key]
            forgotten.append(key)
            excess -= 1
        self.journal.forget(forgotten)

    # -- results --------------------------------------------------------------------------------------------

    def _answer(
        self,
        device: str | None,
        request_id: str | None,
        command: str | None,
        replies: list[_Reply],
        result: tuple[Status, str | None, Mapping[str, Any] | None],
        *,
        duration_s: float = 0.0,
        duplicate: bool = False,
    ) -> None:
        status, reason, data = result
        now = self._clock()
        payload = encode_result(request_id, status, reason, data, now)
        for reply in replies:
            if not reply.silent:
                self.results[status] += 1
                self._outbox.append(_Out(reply.topic, payload, reply.correlation))
            if reply.ack is not None:
                reply.ack()  # the result is queued: the broker may forget the request
        if replies and all(reply.silent for reply in replies):
            return  # only redeliveries acknowledged: no result was published, none to record
        self._trim_outbox()
        self._wake.set()
        record: dict[str, Any] = {
            "id": request_id,
            "command": command,
            "status": status,
            "reason": reason,
            "data": data,
            "duration_ms": round(duration_s * 1000, 3),
        }
        if duplicate:
            record["duplicate"] = True
        self._audit(device, COMMAND_RESULT, record, now)
        level = logging.INFO if status == "ok" else logging.WARNING
        log.log(
            level,
            "command %s %s on %s: %s%s",
            request_id,
            command,
            device or "gateway",
            status,
            f" ({reason})" if reason else "",
        )

    def _audit_request(self, device: str | None, record: dict[str, Any]) -> None:
        self._audit(device, COMMAND_REQUEST, record, self._clock())

    def _audit(self, device: str | None, kind: str, record: dict[str, Any], ts: float) -> None:
        """An audit event, under the device's name (the gateway's id for the gateway and for a device
        this gateway does not have, whose name is then in the record)."""
        known = device is not None and device in self._devices()
        if device is not None and not known:
            record = {**record, "device": device}
        name = device if known and device is not None else self._gateway_id
        if device is None:
            record = {**record, "target": "gateway"}
        self._gateway.queue.put(Event(name, kind, ts, record))

    # -- the gateway's own commands ------------------------------------------------------------------------

    async def _gateway_command(self, name: str, _args: CommandArgs) -> Mapping[str, Any] | None:
        gateway = self._gateway
        if name == "ping":
            return {"gateway": self._gateway_id, "state": gateway.state}
        if name == "status":
            return await self._status()
        # reload
        source = gateway.config.source
        try:
            await asyncio.to_thread(load_config, source)
        except ConfigError as err:
            shown = [str(p) for p in err.problems[:10]]
            more = f" (and {len(err.problems) - 10} more)" if len(err.problems) > 10 else ""
            raise CommandFailed(
                f"{source} is invalid, the running configuration stays: {'; '.join(shown)}{more}"
            ) from None
        plan = await gateway.reload_and_wait()
        if plan is None:
            raise CommandFailed(
                f"{source} was refused (see the gateway's log); the running configuration stays"
            )
        return {"summary": plan.summary(), "needs_restart": list(plan.needs_restart)}

    async def _status(self) -> Mapping[str, Any]:
        from prometheus_client import generate_latest  # noqa: PLC0415 (only when asked)

        from gateway.cli import status as status_view  # noqa: PLC0415 (rich and the parser: only when asked)
        from gateway.ops.metrics import build_registry  # noqa: PLC0415 (imports the app: only when asked)

        registry, _ = build_registry(self._gateway)
        first = status_view.parse(generate_latest(registry).decode())
        t0 = self._monotonic()
        await asyncio.sleep(STATUS_INTERVAL_S)
        second = status_view.parse(generate_latest(registry).decode())
        rates = status_view.rates(first, second, self._monotonic() - t0)
        data = asdict(second)
        # the devices configured (the gateway's own audit events carry its id as their device: not one)
        data["devices"] = {name: d for name, d in data["devices"].items() if name in self._devices()}
        data["events_in"] = second.events_in
        data["events_out"] = second.events_out
        data["rates"] = asdict(rates)
        data["commands"] = asdict(self.stats())
        return data


class _DeviceStopped(Exception):
    """The device's driver stopped (or restarted) while its command ran."""


async def _watch(task: asyncio.Task[Any]) -> Any:
    """The driver's command task: its result, or :class:`_DeviceStopped` when the device's runner cancelled
    it (not us); a cancellation of ours (the timeout, a stop) cancels it and waits for it to end."""
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if task.cancelled():
        raise _DeviceStopped(
            "the device stopped or restarted while the command ran; it may not have completed"
        )
    return task.result()


def _ok(data: Any) -> tuple[Status, str | None, Mapping[str, Any] | None]:
    if data is not None and not isinstance(data, Mapping):
        return ("error", f"internal error: the driver returned {type(data).__name__}, not a mapping", None)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:
        return ("error", f"internal error: data is not JSON ({err})", None)
    return ("ok", None, data)


def _request_record(request: Request, topic: str, *, duplicate: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": request.id,
        "command": request.command,
        "args": dict(request.args),
        "ts": request.ts,
        "topic": topic,
    }
    if duplicate:
        record["duplicate"] = True
    return record
