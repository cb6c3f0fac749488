"""Payload encodings and compression of an MQTT upstream (issue 14 §4): fewer bytes on the uplink.

Every encoding carries the same fields as the default JSON (:mod:`gateway.delivery.payload`)::

    {"id": "<gateway>:<seq>", "seq": N, "device": "...", "kind": "...", "ts": 1717000000.5, "data": {...}}

one such map per message, or with ``batch_max_events > 1`` an array of them. ``encoding``:

- ``json`` (default): the documented JSON, byte for byte what the forwarder always sent; no properties
  unless compressed.
- ``cbor``: RFC 8949 CBOR (library: cbor2), MQTT 5 Content Type ``application/cbor``.
- ``msgpack``: MessagePack (library: msgpack), Content Type ``application/msgpack``.

``compression`` (``zstd`` with the zstandard library, level 3; ``gzip``, RFC 1952, with the standard
library) compresses the whole message after encoding; the codec is named in the MQTT 5 user property
``content-encoding`` (``zstd`` or ``gzip``, as HTTP names them), and the Content Type stays that of the
encoding underneath. A consumer reads the Content Type and the user property of each message and decodes
with standard tools (see the README: ``mosquitto_sub -F %p``, ``zstd -d``, ``gzip -d``, Python's cbor2 and
msgpack).

No library is written here: cbor2, msgpack and zstandard are the maintained implementations of their
formats in Python, and gzip is the standard library's.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, Final, Literal

import cbor2
import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import zstandard
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.delivery.buffer import Stored
from gateway.delivery.payload import PAYLOAD_FORMAT, id_head, topic_head

__all__ = ["CONTENT_ENCODING", "CONTENT_TYPES", "Compression", "Encoding", "MessageCodec", "decode_message"]

Encoding = Literal["json", "cbor", "msgpack"]
Compression = Literal["zstd", "gzip"]

CONTENT_TYPES: Final[dict[str, str]] = {
    "json": "application/json",
    "cbor": "application/cbor",
    "msgpack": "application/msgpack",
}
"""The MQTT 5 Content Type of each encoding."""
CONTENT_ENCODING: Final = "content-encoding"
"""The MQTT 5 user property naming the compression (``zstd`` or ``gzip``)."""
ZSTD_LEVEL: Final = 3


class MessageCodec:
    """Builds the payload of one message (one event, or a batch of events of one device and kind) and the
    MQTT 5 properties that say how to decode it."""

    def __init__(
        self, gateway_id: str, encoding: Encoding = "json", compression: Compression | None = None
    ) -> None:
        if encoding not in CONTENT_TYPES:
            raise ValueError(f"encoding must be one of {', '.join(CONTENT_TYPES)}, not {encoding!r}")
        if compression not in (None, "zstd", "gzip"):
            raise ValueError(f"compression must be zstd, gzip or none, not {compression!r}")
        self.gateway_id = gateway_id
        self.encoding = encoding
        self.compression = compression
        self._id_head = id_head(gateway_id)
        self._heads: dict[tuple[str, str], bytes] = {}
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if compression == "zstd" else None

    @property
    def default(self) -> bool:
        """The documented JSON, uncompressed: no properties needed."""
        return self.encoding == "json" and self.compression is None

    def properties(self) -> Properties | None:
        """The PUBLISH properties of every message (a fresh object: the caller may add a topic alias)."""
        if self.default:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.ContentType = CONTENT_TYPES[self.encoding]
        if self.compression is not None:
            props.UserProperty = [(CONTENT_ENCODING, self.compression)]
        return props

    def encode(self, rows: Sequence[Stored], *, batch: bool) -> bytes:
        """The payload of ``rows``: one event (``batch`` False, one row) or an array of events."""
        if self.encoding == "json":
            head = self._id_head
            parts = [PAYLOAD_FORMAT % (head, r.seq, r.seq, self._head(r), r.ts, r.data_json) for r in rows]
            body = b"[" + b",".join(parts) + b"]" if batch else parts[0]
        else:
            gateway = self.gateway_id
            objects = [
                {
                    "id": f"{gateway}:{r.seq}",
                    "seq": r.seq,
                    "device": r.device,
                    "kind": r.kind,
                    "ts": r.ts,
                    "data": json.loads(r.data_json),
                }
                for r in rows
            ]
            value: Any = objects if batch else objects[0]
            body = cbor2.dumps(value) if self.encoding == "cbor" else msgpack.packb(value)
        if self._zstd is not None:
            return self._zstd.compress(body)
        if self.compression == "gzip":
            squeeze = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container (RFC 1952)
            return squeeze.compress(body) + squeeze.flush()
        return body

    def _head(self, row: Stored) -> bytes:
        key = (row.device, row.kind)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = topic_head(row.device, row.kind)
        return head


def decode_message(payload: bytes, content_type: str | None, content_encoding: str | None) -> Any:
    """What a consumer does (the README's example, and the tests'): undo the compression the
    ``content-encoding`` user property names, then decode by Content Type (JSON when there is none)."""
    if content_encoding == "zstd":
        payload = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    elif content_encoding == "gzip":
        payload = zlib.decompress(payload, 47)  # 32 + 15: a gzip or zlib header, found by itself
    elif content_encoding is not None:
        raise ValueError(f"unknown content-encoding {content_encoding!r}")
    if content_type in (None, "application/json"):
        return json.loads(payload)
    if content_type == "application/cbor":
        return cbor2.loads(payload)
    if content_type == "application/msgpack":
        return msgpack.unpackb(payload)
    raise ValueError(f"unknown content type {content_type!r}")
