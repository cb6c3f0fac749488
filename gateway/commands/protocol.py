"""The command protocol over MQTT: topics, the request and result shapes, the canonical form and its HMAC.

A public interface (see the README's Commands section); what is here is the whole of it::

    request   <prefix>/<gateway>/<device>/cmd     (<prefix>/<gateway>/cmd for the gateway itself), QoS 1
              {"id": "<unique>", "command": "<name>", "args": {...}, "ts": <epoch seconds when issued>,
               "hmac": "<hex>"}                    (hmac only when the gateway has commands.hmac_key_file)
    result    <prefix>/<gateway>/<device>/cmd/result (<prefix>/<gateway>/cmd/result), or the request's
              MQTT 5 Response Topic with its Correlation Data; QoS 1
              {"id": "<the request's id, or null>", "status": "ok" | "error" | "refused" | "expired" |
               "timeout", "reason": "<why, or null when ok>", "data": {...} | null, "ts": <epoch seconds>}

The canonical form of a request (what ``hmac`` authenticates) is the UTF-8 JSON text of the object
``{"args": ..., "command": ..., "id": ..., "topic": <the topic it is published on>, "ts": ...}`` with keys
sorted at every level, no whitespace (``,`` and ``:`` separators), non-ASCII escaped as ``\\uXXXX``, and every
number that has no fractional part written as an integer (``1717000000.0`` -> ``1717000000``), others in
their shortest round-trip form; ``args`` is ``{}`` when the request has none. The topic is in it so that a
request signed for one device cannot be replayed to another, ``ts`` and ``id`` so that it cannot be
replayed later (expiry and de-duplication). ``hmac`` is the lowercase hex HMAC-SHA256 of those bytes.

This module is pure (no I/O): :func:`parse_request` turns a message into a :class:`Request` or raises
:class:`Malformed` with the reason (and the id, when one could be read).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "GATEWAY_COMMANDS",
    "MAX_ID_LENGTH",
    "STATUSES",
    "Malformed",
    "Request",
    "Status",
    "Target",
    "canonical",
    "encode_result",
    "parse_request",
    "parse_target",
    "request_topic",
    "result_topic",
    "sign",
    "subscriptions",
    "verify",
]

Status = Literal["ok", "error", "refused", "expired", "timeout"]
STATUSES: Final[tuple[Status, ...]] = ("ok", "error", "refused", "expired", "timeout")
GATEWAY_COMMANDS: Final = ("ping", "reload", "status")
"""The commands of the gateway itself (``<prefix>/<gateway>/cmd``)."""
MAX_ID_LENGTH: Final = 128


def request_topic(prefix: str, gateway: str, device: str | None) -> str:
    """Where a request for ``device`` (None: the gateway) is published."""
    return f"{prefix}/{gateway}/cmd" if device is None else f"{prefix}/{gateway}/{device}/cmd"


def result_topic(prefix: str, gateway: str, device: str | None) -> str:
    """Where its result goes, unless the request names an MQTT 5 response topic."""
    return request_topic(prefix, gateway, device) + "/result"


def subscriptions(prefix: str, gateway: str) -> list[str]:
    """The gateway's subscriptions: every device's requests and its own."""
    return [f"{prefix}/{gateway}/+/cmd", f"{prefix}/{gateway}/cmd"]


@dataclass(frozen=True, slots=True)
class Target:
    """Whom a request topic addresses: a device by name, or the gateway (``device`` None)."""

    device: str | None


def parse_target(topic: str, prefix: str, gateway: str) -> Target | None:
    """The target of a request topic; None if ``topic`` is no request topic of this gateway."""
    head = f"{prefix}/{gateway}/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head) :]
    if rest == "cmd":
        return Target(None)
    device, sep, tail = rest.partition("/")
    if sep and tail == "cmd" and device:
        return Target(device)
    return None


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    command: str
    args: Mapping[str, Any]
    ts: float
    hmac: str | None


class Malformed(Exception):
    """The message is not a valid request; the message says why. ``id`` is its id when it had a valid one."""

    def __init__(self, reason: str, id: str | None = None) -> None:
        super().__init__(reason)
        self.id = id


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_request(payload: bytes) -> Request:
    """The request in ``payload``, or :class:`Malformed` saying what is wrong with it."""
    try:
        body = json.loads(payload, parse_constant=_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise Malformed(f"the request is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise Malformed(f"the request must be a JSON object, not {_type(body)}")
    raw_id = body.get("id")
    if "id" not in body:
        raise Malformed("the request has no id")
    if not isinstance(raw_id, str):
        raise Malformed(f"id must be a string, not {_type(raw_id)}")
    if not raw_id or len(raw_id) > MAX_ID_LENGTH or not raw_id.isprintable():
        raise Malformed(f"id must be 1 to {MAX_ID_LENGTH} printable characters")
    request_id = raw_id
    command = body.get("command")
    if "command" not in body:
        raise Malformed("the request has no command", request_id)
    if not isinstance(command, str) or not command:
        raise Malformed(f"command must be a non-empty string, not {_type(command)}", request_id)
    args = body.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise Malformed(f"args must be an object, not {_type(args)}", request_id)
    ts = body.get("ts")
    if "ts" not in body:
        raise Malformed("the request has no ts (epoch seconds when it was issued)", request_id)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise Malformed(f"ts must be a number (epoch seconds), not {_type(ts)}", request_id)
    mac = body.get("hmac")
    if mac is not None and not isinstance(mac, str):
        raise Malformed(f"hmac must be a hex string, not {_type(mac)}", request_id)
    return Request(request_id, command, args, float(ts), mac)


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def canonical(*, request_id: str, command: str, args: Mapping[str, Any], ts: float, topic: str) -> bytes:
    """The bytes ``hmac`` is computed over (see the module docstring)."""
    body = {"args": dict(args), "command": command, "id": request_id, "topic": topic, "ts": ts}
    text = json.dumps(
        _normalise(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def sign(key: bytes, *, request_id: str, command: str, args: Mapping[str, Any], ts: float, topic: str) -> str:
    """The ``hmac`` of a request."""
    return hmac.new(
        key, canonical(request_id=request_id, command=command, args=args, ts=ts, topic=topic), hashlib.sha256
    ).hexdigest()


def verify(key: bytes, request: Request, topic: str) -> str | None:
    """None when ``request`` carries a valid ``hmac`` under ``key``, else why not."""
    if request.hmac is None:
        return "the request has no hmac, and this gateway requires one (commands.hmac_key_file)"
    expected = sign(
        key, request_id=request.id, command=request.command, args=request.args, ts=request.ts, topic=topic
    )
    given = request.hmac.lower()
    if len(given) != len(expected) or not all(c in "0123456789abcdef" for c in given):
        return "hmac must be the 64 hex digits of an HMAC-SHA256"
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "hmac does not match the canonical request under this gateway's key"
    return None


def encode_result(
    request_id: str | None, status: Status, reason: str | None, data: Mapping[str, Any] | None, ts: float
) -> bytes:
    """A result message (``data`` must be JSON-able: the caller has checked)."""
    body = {"id": request_id, "status": status, "reason": reason, "data": data, "ts": round(ts, 6)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
