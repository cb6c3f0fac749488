"""Sparkplug B (Eclipse Sparkplug 3.0): the payload, its topics and its datatypes.

The payload is the specification's protobuf message ``org.eclipse.tahu.protobuf.Payload`` (proto2). It is
built here with the installed ``protobuf`` package from a descriptor written in Python
(:func:`_file_descriptor`), following the message definitions of the specification's chapter on the
payload (field names, numbers and types), not from a generated ``_pb2`` module: no ``protoc`` run, no
vendored ``.proto``, and no extra dependency (pysparkplug would add a package for what is ~80 lines of
descriptor). The messages carry what an edge node sends: ``Payload`` (timestamp, metrics, seq, uuid,
body), ``Metric`` (name, alias, timestamp, datatype, is_historical, is_transient, is_null, properties, the
scalar values) and ``PropertySet``/``PropertyValue`` (a metric's engineering unit). The data set, template,
metadata and extension parts of the schema are left out: a decoder with the full schema reads our payloads,
and what we never send we never need to parse (an NCMD with them is still parsed; unknown fields are kept
by protobuf and ignored).

Topics: ``spBv1.0/<group_id>/<message type>/<edge_node_id>[/<device_id>]`` and the primary host's
``spBv1.0/STATE/<host_id>`` (:func:`topic`, :func:`parse_topic`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

# protobuf ships no type stubs (types-protobuf is not a dependency): its classes are Any here.
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError as ProtobufDecodeError  # type: ignore[import-untyped]
from google.protobuf.message import Message

from protocols.errors import DecodeError, EncodeError

__all__ = [
    "NAMESPACE",
    "DataType",
    "MessageType",
    "Payload",
    "TopicParts",
    "check_id",
    "decode_payload",
    "metric_value",
    "parse_topic",
    "set_metric_value",
    "topic",
]

NAMESPACE: Final = "spBv1.0"


class DataType(IntEnum):
    """The Sparkplug datatypes of a metric (the specification's table; the ones used here and their kin)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19


class MessageType(IntEnum):
    """Message types of the topic (the value is only an order for births before data)."""

    NBIRTH = 1
    NDEATH = 2
    DBIRTH = 3
    DDEATH = 4
    NDATA = 5
    DDATA = 6
    NCMD = 7
    DCMD = 8


# -- the descriptor ----------

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "org.eclipse.tahu.protobuf"


def _field(
    name: str,
    number: int,
    kind: int,
    *,
    repeated: bool = False,
    type_name: str = "",
    oneof: int | None = None,
) -> descriptor_pb2.FieldDescriptorProto:
    f = _F(name=name, number=number, type=kind)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The payload's messages (Sparkplug B 3.0, the payload chapter), as a protobuf file descriptor."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="edgegw_sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    payload = fd.message_type.add(name="Payload")

    value = payload.nested_type.add(name="PropertyValue")
    value.oneof_decl.add(name="value")
    value.field.extend(
        [
            _field("type", 1, _F.TYPE_UINT32),
            _field("is_null", 2, _F.TYPE_BOOL),
            _field("int_value", 3, _F.TYPE_UINT32, oneof=0),
            _field("long_value", 4, _F.TYPE_UINT64, oneof=0),
            _field("float_value", 5, _F.TYPE_FLOAT, oneof=0),
            _field("double_value", 6, _F.TYPE_DOUBLE, oneof=0),
            _field("boolean_value", 7, _F.TYPE_BOOL, oneof=0),
            _field("string_value", 8, _F.TYPE_STRING, oneof=0),
        ]
    )
    props = payload.nested_type.add(name="PropertySet")
    props.field.extend(
        [
            _field("keys", 1, _F.TYPE_STRING, repeated=True),
            _field(
                "values", 2, _F.TYPE_MESSAGE, repeated=True, type_name=f".{_PACKAGE}.Payload.PropertyValue"
            ),
        ]
    )
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    metric.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("alias", 2, _F.TYPE_UINT64),
            _field("timestamp", 3, _F.TYPE_UINT64),
            _field("datatype", 4, _F.TYPE_UINT32),
            _field("is_historical", 5, _F.TYPE_BOOL),
            _field("is_transient", 6, _F.TYPE_BOOL),
            _field("is_null", 7, _F.TYPE_BOOL),
            _field("properties", 9, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Payload.PropertySet"),
            _field("int_value", 10, _F.TYPE_UINT32, oneof=0),
            _field("long_value", 11, _F.TYPE_UINT64, oneof=0),
            _field("float_value", 12, _F.TYPE_FLOAT, oneof=0),
            _field("double_value", 13, _F.TYPE_DOUBLE, oneof=0),
            _field("boolean_value", 14, _F.TYPE_BOOL, oneof=0),
            _field("string_value", 15, _F.TYPE_STRING, oneof=0),
            _field("bytes_value", 16, _F.TYPE_BYTES, oneof=0),
        ]
    )
    payload.field.extend(
        [
            _field("timestamp", 1, _F.TYPE_UINT64),
            _field("metrics", 2, _F.TYPE_MESSAGE, repeated=True, type_name=f".{_PACKAGE}.Payload.Metric"),
            _field("seq", 3, _F.TYPE_UINT64),
            _field("uuid", 4, _F.TYPE_STRING),
            _field("body", 5, _F.TYPE_BYTES),
        ]
    )
    payload.extension_range.add(start=6, end=536870912)  # the schema leaves the rest to extensions
    return fd


_POOL: Final = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
Payload: Final[type[Message]] = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.Payload")
)
"""The payload message class: ``Payload()``, ``.metrics.add()``, ``SerializeToString()``."""


def decode_payload(raw: bytes) -> Any:
    """A payload from bytes; :class:`DecodeError` if they are not one."""
    payload = Payload()
    try:
        payload.ParseFromString(raw)
    except ProtobufDecodeError as err:
        raise DecodeError(f"not a Sparkplug B payload: {err}") from None
    return payload


# -- values --------------------------------------------------------------------------------------------------

_INT_RANGES: Final = {
    DataType.INT8: (-(1 << 7), (1 << 7) - 1),
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT8: (0, (1 << 8) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
    DataType.DATETIME: (0, (1 << 64) - 1),
}


def set_metric_value(metric: Any, datatype: DataType, value: object) -> None:
    """Put ``value`` in ``metric``'s field for ``datatype`` (signed integers as the specification says:
    two's complement in the unsigned field of their width); None sets ``is_null``. :class:`EncodeError` for
    a value that is not of the type."""
    if value is None:
        metric.is_null = True
        return
    if datatype in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{datatype.name} metric needs an integer, not {value!r}")
        low, high = _INT_RANGES[datatype]
        if not low <= value <= high:
            raise EncodeError(f"{value} is out of range for {datatype.name}")
        if datatype in (DataType.INT64, DataType.UINT64, DataType.DATETIME):
            metric.long_value = value & 0xFFFFFFFFFFFFFFFF
        else:
            metric.int_value = value & 0xFFFFFFFF
    elif datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EncodeError(f"{datatype.name} metric needs a number, not {value!r}")
        if datatype is DataType.FLOAT:
            metric.float_value = float(value)
        else:
            metric.double_value = float(value)
    elif datatype is DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise EncodeError(f"Boolean metric needs a bool, not {value!r}")
        metric.boolean_value = value
    elif datatype in (DataType.STRING, DataType.TEXT, DataType.UUID):
        if not isinstance(value, str):
            raise EncodeError(f"{datatype.name} metric needs a string, not {value!r}")
        metric.string_value = value
    elif datatype is DataType.BYTES:
        if not isinstance(value, bytes):
            raise EncodeError(f"Bytes metric needs bytes, not {value!r}")
        metric.bytes_value = value
    else:
        raise EncodeError(f"datatype {datatype.name} is not supported here")


def metric_value(metric: Any, datatype: int | None = None) -> object:
    """The value of a decoded metric, as Python (``datatype`` when the metric, sent by alias, lacks its
    own); None when ``is_null``. :class:`DecodeError` when the value field does not fit the datatype."""
    if metric.is_null:
        return None
    kind = metric.datatype if metric.HasField("datatype") else datatype
    which = metric.WhichOneof("value")
    if kind is None or which is None:
        raise DecodeError(f"metric {metric.name or metric.alias} has no datatype or no value")
    try:
        dtype = DataType(kind)
    except ValueError:
        raise DecodeError(f"unknown datatype {kind}") from None
    expect = {
        "int_value": {
            DataType.INT8,
            DataType.INT16,
            DataType.INT32,
            DataType.UINT8,
            DataType.UINT16,
            DataType.UINT32,
        },
        "long_value": {DataType.INT64, DataType.UINT64, DataType.DATETIME},
        "float_value": {DataType.FLOAT},
        "double_value": {DataType.DOUBLE},
        "boolean_value": {DataType.BOOLEAN},
        "string_value": {DataType.STRING, DataType.TEXT, DataType.UUID},
        "bytes_value": {DataType.BYTES},
    }[which]
    if dtype not in expect:
        raise DecodeError(f"metric {metric.name or metric.alias}: {which} for datatype {dtype.name}")
    raw = getattr(metric, which)
    if dtype in (DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64):
        bits = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}[dtype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >> (bits - 1) else raw
    if dtype is DataType.FLOAT and math.isfinite(raw):
        return float(f"{raw:.7g}")  # the float32 as the decimal it was written from
    return raw


# -- topics --------------------------------------------------------------------------------------------------


def check_id(what: str, value: str) -> str:
    """A group, edge node, device or host id: non-empty, no ``/``, ``+`` or ``#``."""
    if not value or any(c in value for c in "/+#"):
        raise ValueError(f"{what} must be non-empty and contain no '/', '+' or '#': {value!r}")
    return value


def topic(group_id: str, message: MessageType, edge_node_id: str, device_id: str | None = None) -> str:
    parts = [NAMESPACE, group_id, message.name, edge_node_id]
    if device_id is not None:
        parts.append(device_id)
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class TopicParts:
    group_id: str
    message: MessageType
    edge_node_id: str
    device_id: str | None = None


def parse_topic(text: str) -> TopicParts:
    """The parts of a Sparkplug topic (not STATE); :class:`DecodeError` if it is not one."""
    parts = text.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        raise DecodeError(f"not a Sparkplug B topic: {text!r}")
    try:
        message = MessageType[parts[2]]
    except KeyError:
        raise DecodeError(f"unknown message type {parts[2]!r} in {text!r}") from None
    device = parts[4] if len(parts) == 5 else None
    if (device is None) != (
        message in (MessageType.NBIRTH, MessageType.NDEATH, MessageType.NDATA, MessageType.NCMD)
    ):
        raise DecodeError(f"{message.name} with{'out' if device is None else ''} a device id: {text!r}")
    return TopicParts(parts[1], message, parts[3], device)
