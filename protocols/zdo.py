"""The Zigbee Device Objects (ZDO) messages a coordinator's host needs: device announce, bind and
permit joining.

Written from the Zigbee Specification (document 05-3474), section 2.4 (ZDP): a ZDO message travels on
endpoint 0, profile 0x0000, its cluster the message's id (a response's id is the request's with bit 15
set), and begins with a transaction sequence number. Fields are little-endian. Pure; construct
definitions used both ways.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from construct import Const, ConstructError, Int8ul, Int16ul, Int64ul, Struct, Terminated

from protocols.errors import DecodeError, EncodeError

__all__ = [
    "ENDPOINT",
    "PROFILE",
    "BindRequest",
    "BindResponse",
    "DeviceAnnounce",
    "PermitJoinRequest",
    "PermitJoinResponse",
    "ZdoCluster",
    "encode",
    "parse",
]

ENDPOINT: Final = 0
PROFILE: Final = 0x0000
BROADCAST_ROUTERS: Final = 0xFFFC
"""The 16-bit broadcast address of every router and the coordinator (permit joining goes there)."""


class ZdoCluster(IntEnum):
    DEVICE_ANNOUNCE = 0x0013
    BIND_REQUEST = 0x0021
    PERMIT_JOIN_REQUEST = 0x0036
    BIND_RESPONSE = 0x8021
    PERMIT_JOIN_RESPONSE = 0x8036


ADDRESS_MODE_64: Final = 0x03
"""A bind's destination is a 64-bit address and an endpoint."""

_DEVICE_ANNOUNCE = Struct(
    "sequence" / Int8ul, "nwk" / Int16ul, "ieee" / Int64ul, "capability" / Int8ul, Terminated
).compile()
_BIND_REQUEST = Struct(
    "sequence" / Int8ul,
    "source_ieee" / Int64ul,
    "source_endpoint" / Int8ul,
    "cluster" / Int16ul,
    "mode" / Const(ADDRESS_MODE_64, Int8ul),
    "dest_ieee" / Int64ul,
    "dest_endpoint" / Int8ul,
    Terminated,
).compile()
_STATUS = Struct("sequence" / Int8ul, "status" / Int8ul, Terminated).compile()
_PERMIT_JOIN = Struct(
    "sequence" / Int8ul, "duration_s" / Int8ul, "trust_center_significance" / Int8ul, Terminated
).compile()


@dataclass(frozen=True, slots=True)
class DeviceAnnounce:
    """A device joined or rejoined: its addresses and capabilities (bit 1: a router; bit 3: receiver on
    when idle, i.e. not a sleepy end device)."""

    sequence: int
    nwk: int
    ieee: int
    capability: int


@dataclass(frozen=True, slots=True)
class BindRequest:
    """Bind ``cluster`` of the source's endpoint to a destination (the coordinator): the source then sends
    its reports there."""

    sequence: int
    source_ieee: int
    source_endpoint: int
    cluster: int
    dest_ieee: int
    dest_endpoint: int


@dataclass(frozen=True, slots=True)
class BindResponse:
    sequence: int
    status: int


@dataclass(frozen=True, slots=True)
class PermitJoinRequest:
    """Open joining for ``duration_s`` seconds (0 closes, 255 forever)."""

    sequence: int
    duration_s: int
    trust_center_significance: int = 1


@dataclass(frozen=True, slots=True)
class PermitJoinResponse:
    sequence: int
    status: int


Message = DeviceAnnounce | BindRequest | BindResponse | PermitJoinRequest | PermitJoinResponse

_CODECS: Final[dict[int, tuple[Any, type[Any]]]] = {
    ZdoCluster.DEVICE_ANNOUNCE: (_DEVICE_ANNOUNCE, DeviceAnnounce),
    ZdoCluster.BIND_REQUEST: (_BIND_REQUEST, BindRequest),
    ZdoCluster.BIND_RESPONSE: (_STATUS, BindResponse),
    ZdoCluster.PERMIT_JOIN_REQUEST: (_PERMIT_JOIN, PermitJoinRequest),
    ZdoCluster.PERMIT_JOIN_RESPONSE: (_STATUS, PermitJoinResponse),
}
_CLUSTER_OF: Final = {kind: cluster for cluster, (_, kind) in _CODECS.items()}


def parse(cluster: int, payload: bytes) -> Message | None:
    """The ZDO message of ``cluster`` (None for one not decoded here); :class:`DecodeError` if its
    payload does not fit."""
    codec = _CODECS.get(cluster)
    if codec is None:
        return None
    construct, kind = codec
    try:
        parsed = construct.parse(payload)
    except (ConstructError, struct.error) as err:
        raise DecodeError(f"ZDO 0x{cluster:04x} of {len(payload)} bytes: {err}") from None
    message: Message = kind(**{name: parsed[name] for name in kind.__slots__})
    return message


def encode(message: Message) -> tuple[int, bytes]:
    """(cluster, payload) of ``message``."""
    cluster = _CLUSTER_OF[type(message)]
    construct, kind = _CODECS[cluster]
    try:
        built: bytes = construct.build({name: getattr(message, name) for name in kind.__slots__})
    except (ConstructError, struct.error) as err:
        raise EncodeError(f"{kind.__name__}: {err}") from None
    return cluster, built
