"""The upstream JSON of one event, as the forwarder publishes it, ``edgegw buffer export`` writes it and the
demo's console prints it::

    {"id":"<gateway>:<seq>","seq":<seq>,"device":"...","kind":"...","ts":<epoch s>,"data":{...}}

Built around the buffer's stored JSON (:attr:`~gateway.delivery.buffer.Stored.data_json`) without decoding
it: the forwarder's hot loop fills :data:`PAYLOAD_FORMAT` itself with heads it keeps per gateway and topic.
"""

from __future__ import annotations

import json
from typing import Final

from gateway.delivery.buffer import Stored

__all__ = ["PAYLOAD_FORMAT", "encode_payload", "id_head", "topic_head"]

PAYLOAD_FORMAT: Final = b'%s%d","seq":%d%s%r,"data":%s}'
"""``PAYLOAD_FORMAT % (id_head(gateway), seq, seq, topic_head(device, kind), ts, data_json)``: the upstream
JSON of one event, built around the buffer's stored JSON without decoding it."""


def id_head(gateway_id: str) -> bytes:
    return b'{"id":"' + json.dumps(gateway_id)[1:-1].encode() + b":"


def topic_head(device: str, kind: str) -> bytes:
    return b',"device":%s,"kind":%s,"ts":' % (json.dumps(device).encode(), json.dumps(kind).encode())


def encode_payload(gateway_id: str, event: Stored) -> bytes:
    """The payload of one event (the forwarder's hot loop inlines the same format)."""
    seq = event.seq
    return PAYLOAD_FORMAT % (
        id_head(gateway_id),
        seq,
        seq,
        topic_head(event.device, event.kind),
        event.ts,
        event.data_json,
    )
