"""The command protocol's pure parts: topics, request parsing (any bytes give a request or Malformed with a
reason, never another exception), the canonical form and its HMAC, and the result shape."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands.protocol import (
    Malformed,
    Target,
    canonical,
    encode_result,
    parse_request,
    parse_target,
    request_topic,
    result_topic,
    sign,
    subscriptions,
    verify,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_topics() -> None:
    assert request_topic("edgegw", "gw1", "meter") == "edgegw/gw1/meter/cmd"
    assert request_topic("site/a", "gw1", None) == "site/a/gw1/cmd"
    assert result_topic("edgegw", "gw1", "meter") == "edgegw/gw1/meter/cmd/result"
    assert result_topic("edgegw", "gw1", None) == "edgegw/gw1/cmd/result"
    assert subscriptions("edgegw", "gw1") == ["edgegw/gw1/+/cmd", "edgegw/gw1/cmd"]
    assert parse_target("edgegw/gw1/meter/cmd", "edgegw", "gw1") == Target("meter")
    assert parse_target("edgegw/gw1/cmd", "edgegw", "gw1") == Target(None)
    for other in ("edgegw/gw1/meter/cmd/result", "edgegw/gw2/cmd", "edgegw/gw1//cmd", "edgegw/gw1/m/x"):
        assert parse_target(other, "edgegw", "gw1") is None


def test_a_valid_request() -> None:
    body = {"id": "a1", "command": "write", "args": {"point": "p", "value": 1.5}, "ts": 1717000000}
    request = parse_request(json.dumps(body).encode())
    assert (request.id, request.command, dict(request.args), request.ts, request.hmac) == (
        "a1",
        "write",
        {"point": "p", "value": 1.5},
        1717000000.0,
        None,
    )
    assert parse_request(b'{"id": "a", "command": "ping", "ts": 1}').args == {}
    assert parse_request(b'{"id": "a", "command": "ping", "ts": 1, "args": null}').args == {}


@pytest.mark.parametrize(
    ("payload", "reason", "has_id"),
    [
        (b"", "not JSON", False),
        (b"{", "not JSON", False),
        (b'{"id": "x", "command": "c", "ts": NaN}', "not JSON", False),
        (b"[]", "JSON object", False),
        (b'{"command": "c", "ts": 1}', "has no id", False),
        (b'{"id": "", "command": "c", "ts": 1}', "1 to 128", False),
        (b'{"id": "a\\nb", "command": "c", "ts": 1}', "printable", False),
        (b'{"id": null, "command": "c", "ts": 1}', "not null", False),
        (b'{"id": "x", "ts": 1}', "has no command", True),
        (b'{"id": "x", "command": "", "ts": 1}', "non-empty string", True),
        (b'{"id": "x", "command": "c"}', "has no ts", True),
        (b'{"id": "x", "command": "c", "ts": true}', "ts must be a number", True),
        (b'{"id": "x", "command": "c", "ts": "1"}', "ts must be a number", True),
        (b'{"id": "x", "command": "c", "ts": 1, "args": "a=1"}', "args must be an object", True),
        (b'{"id": "x", "command": "c", "ts": 1, "hmac": 5}', "hmac must be", True),
    ],
)
def test_malformed_requests_say_why(payload: bytes, reason: str, has_id: bool) -> None:
    with pytest.raises(Malformed) as caught:
        parse_request(payload)
    assert reason in str(caught.value)
    assert (caught.value.id == "x") is has_id


@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_malformed(payload: bytes) -> None:
    try:
        parse_request(payload)
    except Malformed as err:
        assert str(err)


@given(json_values)
def test_any_json_gives_a_request_or_malformed(value: Any) -> None:
    try:
        parse_request(json.dumps(value).encode())
    except Malformed as err:
        assert str(err)


@given(
    st.text(min_size=1, max_size=20).filter(str.isprintable),
    st.text(min_size=1, max_size=10),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.integers(0, 2**40) | st.floats(0, 2e9, allow_nan=False),
)
def test_a_request_round_trips_and_its_hmac_verifies(
    rid: str, command: str, args: dict[str, Any], ts: float
) -> None:
    topic = "edgegw/gw1/meter/cmd"
    key = b"k3y"
    mac = sign(key, request_id=rid, command=command, args=args, ts=ts, topic=topic)
    body = {"id": rid, "command": command, "args": args, "ts": ts, "hmac": mac}
    request = parse_request(json.dumps(body).encode())
    assert (request.id, request.command, request.args) == (rid, command, args)
    assert verify(key, request, topic) is None
    assert verify(b"other", request, topic) is not None
    assert verify(key, request, "edgegw/gw1/other/cmd") is not None


def test_the_canonical_form_is_the_documented_one() -> None:
    """Sorted keys, no whitespace, ASCII escapes, integral numbers as integers, the topic included."""
    text = canonical(
        request_id="r1",
        command="write",
        args={"value": 2.0, "point": "é"},
        ts=1717000000.0,
        topic="a/b/c/cmd",
    )
    assert text == (
        b'{"args":{"point":"\\u00e9","value":2},"command":"write","id":"r1","topic":"a/b/c/cmd",'
        b'"ts":1717000000}'
    )
    expected = hmac.new(b"key", text, hashlib.sha256).hexdigest()
    signed = sign(
        b"key",
        request_id="r1",
        command="write",
        args={"point": "é", "value": 2},
        ts=1717000000,
        topic="a/b/c/cmd",
    )
    assert signed == expected


def test_the_result_shape() -> None:
    body = json.loads(encode_result("r1", "refused", "not allowed", None, 1717000000.25))
    assert body == {
        "id": "r1",
        "status": "refused",
        "reason": "not allowed",
        "data": None,
        "ts": 1717000000.25,
    }
    assert json.loads(encode_result(None, "error", "not JSON", None, 1.0))["id"] is None


@pytest.mark.parametrize("mac", ["é" * 64, "zz", "", "0" * 63, "g" * 64])
def test_a_malformed_hmac_is_refused_with_a_reason(mac: str) -> None:
    body = {"id": "a", "command": "ping", "ts": 1, "hmac": mac}
    assert verify(b"key", parse_request(json.dumps(body).encode()), "t/cmd") == (
        "hmac must be the 64 hex digits of an HMAC-SHA256"
    )


def test_an_upper_case_hmac_verifies() -> None:
    mac = sign(b"key", request_id="a", command="ping", args={}, ts=1, topic="t/cmd").upper()
    body = {"id": "a", "command": "ping", "ts": 1, "hmac": mac}
    assert verify(b"key", parse_request(json.dumps(body).encode()), "t/cmd") is None
