"""A Sparkplug host application for tests, written from the specification (Eclipse Sparkplug 3.0): it decodes
every payload with protobuf through a descriptor of its own (not the gateway's) and checks what a host relies
on: NBIRTH before any device message, each device's DBIRTH before its DDATA, ``seq`` continuing 0-255 from
the NBIRTH, aliases that resolve to the names the births gave, the NDEATH's ``bdSeq`` matching the NBIRTH's.
Every broken rule is kept in :attr:`Host.violations`."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import Mosquitto

# -- the host's own view of the payload schema (Sparkplug 3.0, the payload chapter) --------------------------


def _host_payload_class() -> Any:
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="host_view.proto", package="host.sparkplug", syntax="proto2")
    payload = fd.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, kind, oneof in [
        ("name", 1, F.TYPE_STRING, None),
        ("alias", 2, F.TYPE_UINT64, None),
        ("timestamp", 3, F.TYPE_UINT64, None),
        ("datatype", 4, F.TYPE_UINT32, None),
        ("is_historical", 5, F.TYPE_BOOL, None),
        ("is_transient", 6, F.TYPE_BOOL, None),
        ("is_null", 7, F.TYPE_BOOL, None),
        ("int_value", 10, F.TYPE_UINT32, 0),
        ("long_value", 11, F.TYPE_UINT64, 0),
        ("float_value", 12, F.TYPE_FLOAT, 0),
        ("double_value", 13, F.TYPE_DOUBLE, 0),
        ("boolean_value", 14, F.TYPE_BOOL, 0),
        ("string_value", 15, F.TYPE_STRING, 0),
        ("bytes_value", 16, F.TYPE_BYTES, 0),
    ]:
        f = metric.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        if oneof is not None:
            f.oneof_index = oneof
    payload.field.add(name="timestamp", number=1, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    payload.field.add(
        name="metrics",
        number=2,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".host.sparkplug.Payload.Metric",
    )
    payload.field.add(name="seq", number=3, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("host.sparkplug.Payload"))


HostPayload = _host_payload_class()
INT64 = 4
BOOLEAN, STRING, DOUBLE, UINT64 = 11, 12, 10, 8


def value_of(metric: Any, datatype: int) -> object:
    which = metric.WhichOneof("value")
    raw = getattr(metric, which)
    if datatype == INT64:
        return raw - (1 << 64) if raw >> 63 else raw
    return raw


@dataclass
class Received:
    kind: str
    device: str | None
    payload: Any
    metrics: dict[str, tuple[object, bool]] = field(default_factory=dict)
    """Metric name (resolved through the aliases) -> (value, is_historical)."""


class Host:
    """A Sparkplug host application: subscribes to the group, follows the edge node's sessions, and
    collects every violation of the rules it checks."""

    def __init__(
        self, broker: Mosquitto, group: str, host_id: str | None = None, *, persistent: bool = False
    ) -> None:
        """With ``persistent``, the host keeps its MQTT session (and what is queued for it) across a
        broker restart and reconnects by itself: it misses nothing published while it was away."""
        self.group = group
        self.host_id = host_id
        self.messages: list[Received] = []
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.bdseq: int | None = None
        self.deaths: list[int] = []
        self._seq: int | None = None
        self._aliases: dict[tuple[str, int], tuple[str, int]] = {}
        self._born: set[str] = set()
        self._node_born = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"host-{group}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if host_id is not None:
            client.will_set(self.state_topic, self._state(False), qos=1, retain=True)
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]  # floats work
        self.persistent = persistent
        self.client = client
        self.broker = broker
        self._subscribed = threading.Event()
        client.on_subscribe = lambda *_a: self._subscribed.set()

    @property
    def state_topic(self) -> str:
        return f"spBv1.0/STATE/{self.host_id}"

    @staticmethod
    def _state(online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()

    def start(self) -> Host:
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect(self.broker.host, self.broker.port, clean_start=False, properties=props)
        else:
            self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        self.client.subscribe(f"spBv1.0/{self.group}/#", qos=1)
        assert self._subscribed.wait(10)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def online(self, online: bool) -> None:
        self.client.publish(self.state_topic, self._state(online), qos=1, retain=True).wait_for_publish(10)

    def command(self, raw: bytes, edge: str) -> None:
        self.client.publish(f"spBv1.0/{self.group}/NCMD/{edge}", raw, qos=1).wait_for_publish(10)

    def rebirth(self, edge: str) -> None:
        payload = HostPayload()
        payload.timestamp = int(time.time() * 1000)
        m = payload.metrics.add()
        m.name = "Node Control/Rebirth"
        m.datatype = BOOLEAN
        m.boolean_value = True
        self.command(payload.SerializeToString(), edge)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        kind = parts[2]
        if kind in ("NCMD", "DCMD"):
            return
        payload = HostPayload()
        payload.ParseFromString(msg.payload)
        with self.lock:
            self._check(kind, parts[4] if len(parts) > 4 else None, payload)

    def _bad(self, what: str) -> None:
        self.violations.append(what)

    def _check(self, kind: str, device: str | None, payload: Any) -> None:
        got = Received(kind, device, payload)
        self.messages.append(got)
        if kind == "NDEATH":
            bd = [m.long_value for m in payload.metrics if m.name == "bdSeq"]
            if bd != [self.bdseq]:
                self._bad(f"NDEATH bdSeq {bd} does not match the NBIRTH's {self.bdseq}")
            self.deaths.append(bd[0] if bd else -1)
            self._node_born = False
            self._born.clear()
            return
        if kind == "NBIRTH":
            if payload.seq != 0:
                self._bad(f"NBIRTH seq {payload.seq}")
            names = {m.name: m for m in payload.metrics}
            if "bdSeq" not in names or "Node Control/Rebirth" not in names:
                self._bad(f"NBIRTH lacks bdSeq or Node Control/Rebirth: {sorted(names)}")
            self.bdseq = names["bdSeq"].long_value if "bdSeq" in names else None
            self._seq = 0
            self._node_born = True
            self._born.clear()
            return
        if not self._node_born:
            self._bad(f"{kind} before NBIRTH")
            return
        assert self._seq is not None
        if payload.seq != (self._seq + 1) % 256:
            self._bad(f"{kind} seq {payload.seq} after {self._seq}")
        self._seq = payload.seq
        assert device is not None
        if kind == "DBIRTH":
            self._born.add(device)
            for m in payload.metrics:
                if not m.name or not m.HasField("alias") or not m.HasField("datatype"):
                    self._bad(f"DBIRTH metric without name, alias or datatype: {m}")
                    continue
                self._aliases[(device, m.alias)] = (m.name, m.datatype)
                got.metrics[m.name] = (None if m.is_null else value_of(m, m.datatype), m.is_historical)
        elif kind == "DDEATH":
            self._born.discard(device)
        elif kind == "DDATA":
            if device not in self._born:
                self._bad(f"DDATA of {device} before its DBIRTH")
            for m in payload.metrics:
                known = self._aliases.get((device, m.alias))
                if known is None:
                    self._bad(f"DDATA alias {m.alias} of {device} not in its DBIRTH")
                    continue
                name, datatype = known
                got.metrics[name] = (value_of(m, datatype), m.is_historical)
        else:
            self._bad(f"unexpected {kind}")

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def values(self, device: str, name: str) -> list[tuple[object, bool]]:
        return [
            r.metrics[name]
            for r in self.snapshot()
            if r.device == device and r.kind in ("DBIRTH", "DDATA") and name in r.metrics
        ]
