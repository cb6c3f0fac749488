"""The ``sparkplug`` upstream: the gateway as a Sparkplug B edge node (Eclipse Sparkplug 3.0).

The gateway is the edge node ``edge_node_id`` of group ``group_id``; each routed device is a Sparkplug
device (its name, or the ``device_id`` its mapping gives). What goes to the broker, on
``spBv1.0/<group_id>/<type>/<edge_node_id>[/<device_id>]``, payloads of :mod:`protocols.sparkplug`:

- **NDEATH** as the MQTT will, set at each connect with that session's ``bdSeq`` (0-255, one more each
  connect), and published before a clean disconnect.
- **NBIRTH** once connected (and, with ``primary_host_id``, once that host's ``spBv1.0/STATE/<host_id>``
  says it is online): ``bdSeq``, ``Node Control/Rebirth``; ``seq`` 0. Every later message of the session
  carries the next ``seq`` (0-255, wrapping), NDEATH aside.
- **DBIRTH** for a device when it connects (its ``device.status`` says ``connected`` and its metrics are
  known) or when its first data arrives, with every metric it has: name, alias, datatype, last value
  (and ``engUnit`` where the event gives units). A metric not in the birth, or whose datatype changes,
  makes the device be born again (DDEATH, then DBIRTH with the metric).
- **DDATA** per event: its metrics by alias only, timestamp the event's. **DDEATH** when the device's
  ``device.status`` says ``disconnected``, ``failed`` or ``stopped``.
- **Rebirth**: an NCMD with ``Node Control/Rebirth`` = true (by name or by its alias) makes the node
  publish NBIRTH and every device's DBIRTH again. An NCMD that does not decode, or whose rebirth metric is
  not a true Boolean, is counted (``ncmd_malformed``) and logged, never acted on. A STATE saying the
  primary host went offline makes the node publish NDEATH, disconnect and connect again (waiting for
  the host).
- **Store and forward**: while the broker (or the primary host) is away, events stay in the buffer; after
  the next births they go out in order, with ``is_historical`` set on every metric of an event that was
  committed before those births.

Mapping (per device, configurable under ``devices:``): a ``meter.reading`` value becomes the metric named
by its point (``voltage_a``); every other kind (``rfid.read``, ``j1939.*``, ``zigbee.*``, ``gps.fix``,
...) becomes one metric per scalar in its data, named ``<kind>/<key>`` with ``/`` between nested keys
(``gps.fix/lat``, ``rfid.read/epc``); a list is one String metric holding its JSON. Datatypes: bool ->
Boolean, int -> Int64, float -> Double, str -> String, unless ``datatypes`` names another; a device's
mapping may ``rename`` metrics, ``exclude`` them (globs) and choose its ``device_id``.

Delivery: every message is published with ``qos`` (1 by default, so that an event leaves the buffer only
once the broker acknowledged it; Sparkplug's QoS 0 is a choice here, and then an event counts as
delivered once written to the socket). DCMDs are not carried out here (counted ``dcmd_unsupported``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from gateway.backoff import Backoff
from gateway.config.models import (
    ClientId,
    MqttUrl,
    ReconnectConfig,
    SecretEnv,
    SecretFile,
    TlsConfig,
    resolve_secret,
)
from gateway.config.models import _field_error as field_error
from gateway.delivery.buffer import Stored
from gateway.delivery.mqtt import MqttConnectError, MqttConnection, MqttNotConnected, TlsOptions, Will
from gateway.delivery.upstream import (
    Cursor,
    Upstream,
    UpstreamContext,
    UpstreamOptions,
    UpstreamStats,
    save_state,
)
from protocols import sparkplug as sp
from protocols.errors import DecodeError, EncodeError

__all__ = ["DeviceMapping", "SparkplugOptions", "SparkplugUpstream", "event_metrics"]

log = logging.getLogger("edgegw.sparkplug")

REBIRTH: Final = "Node Control/Rebirth"
BDSEQ: Final = "bdSeq"
_READ_LIMIT: Final = 500
_LOG_INTERVAL_S: Final = 10.0
_DEATH_STATES: Final = frozenset({"disconnected", "failed", "stopped"})
DataTypeName = Literal[
    "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "Float", "Double", "Boolean", "String",
]  # fmt: skip
_TYPES: Final[dict[str, sp.DataType]] = {
    "Int8": sp.DataType.INT8,
    "Int16": sp.DataType.INT16,
    "Int32": sp.DataType.INT32,
    "Int64": sp.DataType.INT64,
    "UInt8": sp.DataType.UINT8,
    "UInt16": sp.DataType.UINT16,
    "UInt32": sp.DataType.UINT32,
    "UInt64": sp.DataType.UINT64,
    "Float": sp.DataType.FLOAT,
    "Double": sp.DataType.DOUBLE,
    "Boolean": sp.DataType.BOOLEAN,
    "String": sp.DataType.STRING,
}


# -- configuration -------------------------------------------------------------------------------------------


def _sparkplug_id(value: str) -> str:
    return sp.check_id("a Sparkplug id", value)


SparkplugId = Annotated[str, Field(strict=True, min_length=1, max_length=128), AfterValidator(_sparkplug_id)]


class DeviceMapping(BaseModel):
    """How the events of the devices matching a pattern become a Sparkplug device's metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: SparkplugId | None = Field(
        default=None, description="The Sparkplug device id (default: the device's name)."
    )
    rename: dict[str, Annotated[str, Field(strict=True, min_length=1)]] = Field(
        default_factory=dict, description="Metric name by the default rule -> the name to publish."
    )
    exclude: list[Annotated[str, Field(strict=True, min_length=1)]] = Field(
        default_factory=list, description="Metrics (globs on the default names) not published."
    )
    datatypes: dict[str, DataTypeName] = Field(
        default_factory=dict, description="Metric (default name) -> Sparkplug datatype, instead of inferred."
    )


class SparkplugOptions(UpstreamOptions):
    """``kind: sparkplug``: a Sparkplug B edge node on an MQTT broker."""

    kind: Literal["sparkplug"] = Field(default="sparkplug", description="Sparkplug B 3.0 over MQTT.")
    url: MqttUrl = Field(description="The broker: mqtt://host[:port] or mqtts://host[:port].")
    group_id: SparkplugId = Field(description="The Sparkplug group id.")
    edge_node_id: SparkplugId = Field(description="This gateway's edge node id.")
    primary_host_id: SparkplugId | None = Field(
        default=None,
        description="The primary host application's id: births wait for its STATE to say online, and "
        "its going offline makes the node disconnect and reconnect.",
    )
    client_id: ClientId | None = Field(
        default=None, description="MQTT client id (default edgegw-<gateway id>-<edge_node_id>)."
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version.")
    keepalive_s: Annotated[int, Field(strict=True, ge=5, le=3600)] = Field(
        default=30, description="MQTT keepalive."
    )
    qos: Literal[0, 1] = Field(
        default=1,
        description="QoS of births and data: 1 (an event leaves the buffer once the broker acknowledged "
        "it) or 0 (the specification's choice: once written to the socket).",
    )
    max_inflight: Annotated[int, Field(strict=True, ge=1, le=65535)] = Field(
        default=100, description="Most messages awaiting the broker's acknowledgement."
    )
    username: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None, description="Broker username."
    )
    password: SecretStr | None = Field(default=None, description="Broker password, inline (prefer a file).")
    password_file: SecretFile | None = Field(default=None, description="File holding the broker password.")
    password_env: SecretEnv | None = Field(default=None, description="Environment variable with it.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS options (only with an mqtts:// url).")
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between connection attempts."
    )
    state_file: Path | None = Field(
        default=None,
        description="Where the last bdSeq is kept across restarts (JSON), so that a restarted node goes on "
        "from it (the specification's advice); default: in memory, starting at 0 at each start.",
    )
    devices: dict[str, DeviceMapping] = Field(
        default_factory=dict,
        description="Device name glob -> mapping (the first pattern that matches, in order); devices "
        "matching none are mapped by the default rule under their own name.",
    )

    @property
    def tls_enabled(self) -> bool:
        return self.url.lower().startswith("mqtts://")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls_enabled else 1883)

    @model_validator(mode="wrap")
    @classmethod
    def _resolve(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> SparkplugOptions:
        options: SparkplugOptions = handler(data)
        if "tls" in options.model_fields_set and not options.tls_enabled:
            raise field_error("tls", "TLS options need an mqtts:// url")
        names = ("password", "password_file", "password_env")
        secret = resolve_secret(info, names, options.password, options.password_file, options.password_env)
        if secret is not None and options.username is None:
            raise field_error("username", "required when a password is given")
        if secret is not options.password:
            options = options.model_copy(update={"password": secret})
        return options


# -- mapping -------------------------------------------------------------------------------------------------

Metric = tuple[str, sp.DataType, object]
"""(name, datatype, value) of one metric of one event."""


def _infer(value: object) -> sp.DataType:
    if isinstance(value, bool):
        return sp.DataType.BOOLEAN
    if isinstance(value, int):
        return sp.DataType.INT64 if -(1 << 63) <= value < (1 << 63) else sp.DataType.STRING
    if isinstance(value, float):
        return sp.DataType.DOUBLE
    return sp.DataType.STRING


def _flatten(prefix: str, data: object, out: list[tuple[str, object]]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), value, out)
    elif isinstance(data, list):
        out.append((prefix, json.dumps(data, separators=(",", ":"))))
    elif data is not None:
        out.append((prefix, data))


def event_metrics(kind: str, data: dict[str, Any], mapping: DeviceMapping | None = None) -> list[Metric]:
    """The metrics of one event by the documented rule and a device's mapping (module docstring)."""
    pairs: list[tuple[str, object]] = []
    if kind == "meter.reading":
        values = data.get("values")
        if isinstance(values, dict):
            for point, value in values.items():
                _flatten(str(point), value, pairs)
    else:
        _flatten(kind, data, pairs)
    out: list[Metric] = []
    for default_name, value in pairs:
        name = default_name
        if mapping is not None:
            if any(fnmatch.fnmatchcase(default_name, p) for p in mapping.exclude):
                continue
            forced = mapping.datatypes.get(default_name)
            dtype = _TYPES[forced] if forced is not None else _infer(value)
            name = mapping.rename.get(default_name, default_name)
        else:
            dtype = _infer(value)
        out.append(
            (name, dtype, str(value) if dtype is sp.DataType.STRING and not isinstance(value, str) else value)
        )
    return out


# -- state ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _MetricState:
    alias: int
    datatype: sp.DataType
    value: object = None
    ts: float = 0.0
    unit: str | None = None


@dataclass(slots=True)
class _Device:
    device_id: str
    mapping: DeviceMapping | None
    metrics: dict[str, _MetricState] = field(default_factory=dict)
    born: bool = False
    """A DBIRTH went out in this session (and no DDEATH since)."""
    online: bool = True


class SparkplugUpstream(Upstream):
    """An edge node publishing the routed devices' events as Sparkplug B."""

    kind: ClassVar[str] = "sparkplug"
    Options: ClassVar[type[UpstreamOptions]] = SparkplugOptions

    def __init__(self, options: UpstreamOptions, cursor: Cursor, context: UpstreamContext) -> None:
        super().__init__(options, cursor, context)
        assert isinstance(options, SparkplugOptions)
        self.o: SparkplugOptions = options
        self._client_id = options.client_id or f"edgegw-{context.gateway_id}-{options.edge_node_id}"
        self._backoff = Backoff(options.reconnect.initial_s, options.reconnect.max_s)
        self._devices: dict[str, _Device] = {}
        self._next_alias = 2  # 1 is Node Control/Rebirth
        self._bdseq = self._load_bdseq()
        self._seq = 0
        self._conn: MqttConnection | None = None
        self._pending: dict[int, tuple[int, ...]] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        """Set when the session moves (an ack, a read that found nothing, its end): drain() waits on it."""
        self._drain_requests = 0
        self._caught_up = -1
        """The drain request after which a read found nothing left."""
        self._lost = False
        self._rebirth = False
        self._host_online: bool | None = None
        self._host_ts = -1
        self._historical_below = 0
        self._historical_ts = 0.0
        self._logged_at: dict[str, float] = {}
        self._connected = False
        self.published = self.acked = self.resent = self.refused = 0
        self.connects = self.disconnects = 0
        self.births = 0
        self.last_error: str | None = None
        self._max_sent = 0

    # -- contract ------------------------------------------------------------------------------------------

    def stats(self) -> UpstreamStats:
        return UpstreamStats(
            connected=self._connected,
            published=self.published,
            acked=self.acked,
            resent=self.resent,
            refused=self.refused,
            connects=self.connects,
            disconnects=self.disconnects,
            last_error=self.last_error,
        )

    @property
    def bdseq(self) -> int:
        return self._bdseq

    async def drain(self) -> str | None:
        """At a stop: publish what is buffered for this upstream and wait for the broker's acknowledgements.
        None once nothing is left, else why not (not connected, or the primary host is not online)."""
        self._drain_requests += 1
        request = self._drain_requests
        self._wake.set()
        while True:
            if not self._connected:
                return f"the broker is unreachable ({self.last_error})"
            if self.o.primary_host_id is not None and not self._host_online:
                return f"the primary host {self.o.primary_host_id} is not online"
            if self._caught_up >= request and not self._pending:
                await self._flush_acks()
                return None
            self._progress.clear()
            await self._progress.wait()

    async def run(self) -> None:
        attempt = 0
        try:
            while True:
                conn = self._new_connection()
                try:
                    await conn.connect()
                except MqttConnectError as err:
                    self.last_error = str(err)
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    self._log(
                        "connect",
                        logging.WARNING,
                        "sparkplug %s: %s; retrying in %.2f s",
                        self.name,
                        err,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                self.connects += 1
                reason = await self._session(conn)
                self.disconnects += 1
                self.last_error = reason
                await self._flush_acks()
                self._end_session()
                delay = self._backoff.delay(0)
                log.warning(
                    "sparkplug %s: session ended (%s); reconnecting in %.2f s", self.name, reason, delay
                )
                await asyncio.sleep(delay)
        finally:
            await self._shutdown()

    # -- connection ------------------------------------------------------------------------------------------

    def _topic(self, message: sp.MessageType, device_id: str | None = None) -> str:
        return sp.topic(self.o.group_id, message, self.o.edge_node_id, device_id)

    def _new_connection(self) -> MqttConnection:
        o = self.o
        self._bdseq = (self._bdseq + 1) % 256
        self._save_bdseq()
        death = self._node_death()
        tls = None
        if o.tls_enabled:
            tls = TlsOptions(
                ca_file=str(o.tls.ca_file) if o.tls.ca_file else None,
                cert_file=str(o.tls.cert_file) if o.tls.cert_file else None,
                key_file=str(o.tls.key_file) if o.tls.key_file else None,
                key_password=o.tls.key_password.get_secret_value() if o.tls.key_password else None,
                insecure=o.tls.insecure,
            )
        conn: MqttConnection

        def on_ack(mid: int, reason: int) -> None:
            if self._conn is conn:
                self._handle_ack(mid, reason)

        def on_lost(reason: str) -> None:
            if self._conn is conn:
                self._lost = True
                self._connected = False
                self.last_error = reason
                self._wake.set()
                self._progress.set()

        conn = MqttConnection(
            host=o.host,
            port=o.port,
            client_id=self._client_id,
            on_ack=on_ack,
            on_lost=on_lost,
            protocol=o.protocol,
            keepalive_s=o.keepalive_s,
            username=o.username,
            password=o.password.get_secret_value() if o.password else None,
            tls=tls,
            will=Will(self._topic(sp.MessageType.NDEATH), death, qos=1, retain=False),
        )
        conn._client.on_message = self._on_message  # paho's callback, on the loop thread
        self._conn = conn
        return conn

    def _load_bdseq(self) -> int:
        """The bdSeq of the last connection (-1: none), from ``state_file``."""
        path = self.o.state_file
        if path is None:
            return -1
        try:
            value = json.loads(path.read_text())["bdSeq"]
            if isinstance(value, int) and 0 <= value <= 255:
                return value
            raise ValueError(f"bdSeq {value!r}")
        except FileNotFoundError:
            return -1
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("sparkplug %s: state file %s unusable (%s); bdSeq starts at 0", self.name, path, err)
            return -1

    def _save_bdseq(self) -> None:
        path = self.o.state_file
        if path is None:
            return
        try:
            save_state(path, {"bdSeq": self._bdseq})
        except OSError as err:
            self._log("state", logging.ERROR, "sparkplug %s: cannot write %s: %s", self.name, path, err)

    def _node_death(self) -> bytes:
        payload = sp.Payload()
        payload.timestamp = int(time.time() * 1000)
        metric = payload.metrics.add()
        metric.name = BDSEQ
        metric.datatype = sp.DataType.UINT64
        metric.long_value = self._bdseq
        return bytes(payload.SerializeToString())

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        topic = str(message.topic)
        if topic.startswith(f"{sp.NAMESPACE}/STATE/"):
            self._on_state(bytes(message.payload))
        elif topic == self._topic(sp.MessageType.NCMD):
            self._on_ncmd(bytes(message.payload))
        else:
            self.counters["dcmd_unsupported"] += 1
            self._log(
                "dcmd", logging.INFO, "sparkplug %s: DCMD on %s not supported; ignored", self.name, topic
            )
        self._wake.set()

    def _on_state(self, raw: bytes) -> None:
        online: bool | None = None
        stamp = 0
        try:
            state = json.loads(raw)
            if isinstance(state, dict) and isinstance(state.get("online"), bool):
                online = state["online"]
                stamp = int(state.get("timestamp", 0))
        except (ValueError, TypeError):
            text = raw.decode("utf-8", "replace").strip().upper()  # Sparkplug 2.2's ONLINE / OFFLINE
            online = {"ONLINE": True, "OFFLINE": False}.get(text)
        if online is None:
            self.counters["state_malformed"] += 1
            self._log(
                "state",
                logging.WARNING,
                "sparkplug %s: STATE %r not understood; ignored",
                self.name,
                raw[:80],
            )
            return
        if stamp and stamp < self._host_ts:
            return  # an older state than one already seen
        self._host_ts = max(self._host_ts, stamp)
        self._host_online = online

    def _on_ncmd(self, raw: bytes) -> None:
        try:
            payload = sp.decode_payload(raw)
        except DecodeError as err:
            self._malformed(f"payload does not decode: {err}")
            return
        acted = False
        for metric in payload.metrics:
            if metric.name == REBIRTH or (not metric.name and metric.alias == 1):
                if metric.WhichOneof("value") != "boolean_value":
                    self._malformed(f"{REBIRTH} is not a Boolean ({metric.WhichOneof('value')})")
                    return
                if metric.boolean_value:
                    self._rebirth = True
                acted = True
            else:
                self.counters["ncmd_unsupported"] += 1
        if not acted and not payload.metrics:
            self._malformed("no metrics")

    def _malformed(self, reason: str) -> None:
        self.counters["ncmd_malformed"] += 1
        self._log("ncmd", logging.WARNING, "sparkplug %s: malformed NCMD (%s); ignored", self.name, reason)

    # -- session ---------------------------------------------------------------------------------------------

    async def _session(self, conn: MqttConnection) -> str:
        o = self.o
        self._lost = False
        self._pending.clear()
        self._connected = True
        client = conn._client
        client.subscribe(self._topic(sp.MessageType.NCMD), qos=1)
        client.subscribe(f"{sp.NAMESPACE}/{o.group_id}/DCMD/{o.edge_node_id}/+", qos=1)
        if o.primary_host_id is not None:
            self._host_online = None
            client.subscribe(f"{sp.NAMESPACE}/STATE/{o.primary_host_id}", qos=1)
            while not self._host_online:
                if self._lost:
                    return self.last_error or "connection lost"
                self._wake.clear()
                await self._wake.wait()
        try:
            self._births(conn)
            return await self._forward(conn)
        except MqttNotConnected as err:
            return str(err)

    def _births(self, conn: MqttConnection) -> None:
        """NBIRTH and every known device's DBIRTH; from now on, what was committed before is history."""
        self._rebirth = False
        self._seq = 0
        stats = getattr(self.cursor, "stats", None)
        self._historical_below = stats().last_seq + 1 if callable(stats) else 0
        self._historical_ts = time.time()
        payload = sp.Payload()
        payload.timestamp = int(time.time() * 1000)
        payload.seq = self._next_seq()
        m = payload.metrics.add()
        m.name = BDSEQ
        m.datatype = sp.DataType.UINT64
        m.long_value = self._bdseq
        m = payload.metrics.add()
        m.name = REBIRTH
        m.alias = 1
        m.datatype = sp.DataType.BOOLEAN
        m.boolean_value = False
        self._publish(conn, self._topic(sp.MessageType.NBIRTH), payload, ())
        self.births += 1
        for device in self._devices.values():
            device.born = False
            if device.online and device.metrics:
                self._device_birth(conn, device, (), historical=False)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _publish(self, conn: MqttConnection, topic: str, payload: Any, seqs: tuple[int, ...]) -> None:
        mid = conn.publish(topic, bytes(payload.SerializeToString()), qos=self.o.qos)
        self._pending[mid] = seqs
        self.published += len(seqs)
        if seqs and seqs[-1] <= self._max_sent:
            self.resent += len(seqs)
        if seqs:
            self._max_sent = max(self._max_sent, seqs[-1])

    def _device_birth(
        self, conn: MqttConnection, device: _Device, seqs: tuple[int, ...], *, historical: bool
    ) -> None:
        payload = sp.Payload()
        payload.timestamp = int(time.time() * 1000)
        payload.seq = self._next_seq()
        for name, state in device.metrics.items():
            m = payload.metrics.add()
            m.name = name
            m.alias = state.alias
            m.datatype = state.datatype
            if state.ts:
                m.timestamp = int(state.ts * 1000)
            if historical:
                m.is_historical = True
            try:
                sp.set_metric_value(m, state.datatype, state.value)
            except EncodeError:
                m.is_null = True
            if state.unit:
                m.properties.keys.append("engUnit")
                unit = m.properties.values.add()
                unit.type = sp.DataType.STRING
                unit.string_value = state.unit
        self._publish(conn, self._topic(sp.MessageType.DBIRTH, device.device_id), payload, seqs)
        device.born = True

    def _device_death(self, conn: MqttConnection, device: _Device, seqs: tuple[int, ...]) -> None:
        payload = sp.Payload()
        payload.timestamp = int(time.time() * 1000)
        payload.seq = self._next_seq()
        self._publish(conn, self._topic(sp.MessageType.DDEATH, device.device_id), payload, seqs)
        device.born = False

    async def _forward(self, conn: MqttConnection) -> str:
        after = 0  # rewind: what is not acknowledged comes back
        waiter: asyncio.Future[None] | None = None
        try:
            while True:
                if self._lost:
                    return self.last_error or "connection lost"
                if self.o.primary_host_id is not None and self._host_online is False:
                    await self._disconnect(conn)
                    return f"primary host {self.o.primary_host_id} went offline"
                self._wake.clear()
                if self._acked:
                    await self._flush_acks()
                if self._rebirth:
                    log.info("sparkplug %s: rebirth requested", self.name)
                    self._births(conn)
                space = self.o.max_inflight - len(self._pending)
                rows: list[Stored] = []
                if space > 0:
                    request = self._drain_requests
                    rows = await self.cursor.read(after, min(space, _READ_LIMIT))
                    if not rows:
                        self._caught_up = request
                        self._progress.set()
                    if self._lost:
                        continue
                    for row in rows:
                        self._send(conn, row)
                        after = row.seq
                    if rows and len(self._pending) < self.o.max_inflight:
                        continue
                if not rows and (waiter is None or waiter.done()):
                    waiter = asyncio.ensure_future(self.cursor.wait_for_new(after))
                    waiter.add_done_callback(lambda _f: self._wake.set())
                await self._wake.wait()
        finally:
            if waiter is not None and not waiter.done():
                waiter.cancel()

    def _device_for(self, name: str) -> _Device:
        device = self._devices.get(name)
        if device is None:
            mapping = next((m for p, m in self.o.devices.items() if fnmatch.fnmatchcase(name, p)), None)
            device_id = mapping.device_id if mapping and mapping.device_id else name
            try:
                sp.check_id("device id", device_id)
            except ValueError:
                device_id = "".join("_" if c in "/+#" else c for c in device_id) or "_"
            device = self._devices[name] = _Device(device_id, mapping)
        return device

    def _send(self, conn: MqttConnection, row: Stored) -> None:
        seqs = (row.seq,)
        try:
            data = json.loads(row.data_json)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.counters["unmapped"] += 1
            self._acked.append(row.seq)
            return
        device = self._device_for(row.device)
        if row.kind == "device.status":
            state = data.get("state")
            if state == "connected":
                device.online = True
                if not device.born and device.metrics:
                    self._device_birth(conn, device, seqs, historical=False)
                    return
            elif state in _DEATH_STATES:
                device.online = False
                if device.born:
                    self._device_death(conn, device, seqs)
                    return
            self._acked.append(row.seq)
            return
        metrics = event_metrics(row.kind, data, device.mapping)
        if not metrics:
            self.counters["unmapped"] += 1
            self._acked.append(row.seq)
            return
        units = data.get("units") if row.kind == "meter.reading" else None
        historical = row.seq < self._historical_below or (
            not self._historical_below and row.ts < self._historical_ts - 1.0
        )
        changed = False
        for name, dtype, value in metrics:
            state = device.metrics.get(name)
            if state is None or state.datatype != dtype:
                alias = state.alias if state is not None else self._alias()
                state = device.metrics[name] = _MetricState(alias, dtype)
                changed = True
            state.value, state.ts = value, row.ts
            if isinstance(units, dict) and isinstance(units.get(name), str):
                state.unit = units[name]
        device.online = True
        if changed or not device.born:
            if device.born:
                self._device_death(conn, device, ())
            self._device_birth(conn, device, seqs, historical=historical)
            return
        payload = sp.Payload()
        payload.timestamp = int(row.ts * 1000)
        payload.seq = self._next_seq()
        for name, dtype, value in metrics:
            m = payload.metrics.add()
            m.alias = device.metrics[name].alias
            m.timestamp = int(row.ts * 1000)
            if historical:
                m.is_historical = True
            try:
                sp.set_metric_value(m, dtype, value)
            except EncodeError:
                m.is_null = True
        self._publish(conn, self._topic(sp.MessageType.DDATA, device.device_id), payload, seqs)

    def _alias(self) -> int:
        alias = self._next_alias
        self._next_alias += 1
        return alias

    def _handle_ack(self, mid: int, reason: int) -> None:
        seqs = self._pending.pop(mid, None)
        if seqs is None:
            return
        if reason < 0x80:
            self._acked.extend(seqs)
            self.acked += len(seqs)
            self._progress.set()
        else:
            self.refused += len(seqs)
            self.counters["refused"] += len(seqs)
            self._log(
                "refused",
                logging.WARNING,
                "sparkplug %s: broker refused a publish (reason 0x%02x); kept, sent again after a reconnect",
                self.name,
                reason,
            )
        self._wake.set()

    async def _flush_acks(self) -> None:
        if self._acked:
            seqs, self._acked = self._acked, []
            try:
                await self.cursor.ack(seqs)
            except asyncio.CancelledError:
                self._acked[:0] = seqs
                raise

    def _end_session(self) -> None:
        self._connected = False
        self._progress.set()
        self._pending.clear()
        self._conn = None
        for device in self._devices.values():
            device.born = False

    async def _disconnect(self, conn: MqttConnection) -> None:
        """NDEATH, then DISCONNECT (so the broker does not publish the will as well)."""
        with contextlib.suppress(MqttNotConnected):
            conn.publish(self._topic(sp.MessageType.NDEATH), self._node_death(), qos=1)
        await conn.disconnect()

    async def _shutdown(self) -> None:
        conn = self._conn
        if conn is not None and conn.connected:
            with contextlib.suppress(Exception):
                await self._flush_acks()
            with contextlib.suppress(Exception):
                await self._disconnect(conn)
        self._connected = False
        self._conn = None

    def _log(self, what: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(what, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._logged_at[what] = now
            log.log(level, message, *args)
