"""The fast paths of gateway/delivery/paho_client.py against paho's own, byte for byte, on real sockets.

A socketpair stands in for the broker's connection: what the client writes is read back from the other end
and compared with what paho itself writes for the same message; PUBACKs written into it are read by the
client. Partial writes are made real by a small send buffer on a non-blocking socket.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import TypeVar

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion, _ConnectionState

from gateway.delivery.paho_client import FastClient

C = TypeVar("C", bound=paho.Client)
Pair = tuple[socket.socket, socket.socket]
PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


def attach(client: paho.Client, sock: socket.socket) -> None:
    """Make ``client`` write to and read from ``sock`` as if connected (paho's private state, as the
    fast paths rely on it)."""
    sock.setblocking(False)
    client._sock = sock
    client._state = _ConnectionState.MQTT_CS_CONNECTED


def drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def client(kind: type[C], protocol: str) -> C:
    return kind(CallbackAPIVersion.VERSION2, client_id="t", protocol=PROTOCOLS[protocol])


TOPICS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="+#\x00"),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@given(topic=TOPICS, payload=st.binary(max_size=300), mids=st.integers(0, 65534))
@settings(max_examples=60, deadline=None)
def test_a_fast_publish_is_the_packet_paho_writes(
    protocol: str, topic: str, payload: bytes, mids: int
) -> None:
    written = {}
    for kind in (paho.Client, FastClient):
        a, b = socket.socketpair()
        try:
            c = client(kind, protocol)
            attach(c, a)
            c._last_mid = mids  # both take the same next packet id
            if isinstance(c, FastClient):
                assert FastClient.fast_topic(topic)
                mid = c.publish_qos1(topic, payload)
            else:
                mid = c.publish(topic, payload, qos=1).mid
            c.loop_write()
            b.setblocking(False)
            written[kind] = (mid, drain(b))
        finally:
            a.close()
            b.close()
    assert written[FastClient] == written[paho.Client]
    assert written[FastClient][1][0] == 0x32  # PUBLISH, QoS 1, no retain


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_queued_packets_go_out_whole_and_in_order_through_partial_writes(protocol: str, pair: Pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes a few KiB at a time
    fast = client(FastClient, protocol)
    attach(fast, a)
    expected = b""
    for i in range(300):
        fast.publish_qos1(f"edgegw/gw/r{i % 7}/rfid.read", bytes([i % 256]) * (200 + i))
    # What paho would have written for the same queue, packet by packet: the queued packets themselves.
    expected = b"".join(bytes(p["packet"]) for p in fast._out_packet)
    fast.publish("edgegw/gw/status", b"online", qos=0)  # a packet paho acts on once written, at the end
    got = b""
    rounds = 0
    while fast._out_packet:
        fast.loop_write()  # sends what the socket takes, keeps the rest (a partial packet included)
        got += drain(b)
        rounds += 1
        assert rounds < 10_000
    got += drain(b)
    assert rounds > 2  # the send buffer really cut the stream
    assert got[: len(expected)] == expected
    assert got[len(expected) :].startswith(b"\x30")  # then the QoS 0 status, whole
    assert len(got) == len(expected) + 2 + 2 + len("edgegw/gw/status") + (1 if protocol == "5" else 0) + 6


def acking(sock: socket.socket, protocol: str) -> tuple[FastClient, list[tuple[int, int]]]:
    """A fast client on ``sock`` and the list its ``on_ack_fast`` fills."""
    fast = client(FastClient, protocol)
    attach(fast, sock)
    acks: list[tuple[int, int]] = []
    fast.on_ack_fast = lambda mid, reason: acks.append((mid, reason))
    return fast, acks


def puback(mid: int, reason: int | None = None) -> bytes:
    body = struct.pack(">H", mid) + (bytes([reason]) if reason is not None else b"")
    return bytes([0x40, len(body)]) + body


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_pubacks_read_in_one_go_reach_on_ack_in_order(protocol: str, pair: Pair) -> None:
    a, b = pair
    fast, acks = acking(a, protocol)
    mids = [fast.publish_qos1("t/x", b"%d" % i) for i in range(1000)]
    fast.loop_write()
    drain(b)
    stream = b"".join(puback(mid, 0x10 if (protocol == "5" and mid % 5 == 0) else None) for mid in mids)
    stream += puback(60_000)  # an id we never sent: ignored
    b.setblocking(True)
    cut = len(stream) // 2 + 1  # one PUBACK split across two reads
    b.sendall(stream[:cut])
    fast.loop_read()
    b.sendall(stream[cut:])
    fast.loop_read()
    assert not fast.buffered()
    assert [mid for mid, _ in acks] == mids
    assert {reason for mid, reason in acks if mid % 5 == 0} == ({0x10} if protocol == "5" else {0})
    assert not fast._fast_mids  # every fast publish acknowledged, none twice


def test_a_puback_for_a_message_paho_published_still_reaches_on_ack(pair: Pair) -> None:
    a, b = pair
    fast, acks = acking(a, "5")
    retained = fast.publish("edgegw/gw/status", b"online", qos=1, retain=True)  # paho's own path
    fast.loop_write()
    drain(b)
    b.setblocking(True)
    b.sendall(puback(retained.mid))
    fast.loop_read()
    assert acks == [(retained.mid, 0)] and retained.is_published()


def test_the_socket_closing_is_seen_with_bytes_still_buffered(pair: Pair) -> None:
    a, b = pair
    fast = client(FastClient, "5")
    attach(fast, a)
    lost: list[object] = []
    fast.on_disconnect = lambda *args: lost.append(args)
    b.setblocking(True)
    b.sendall(puback(1) + puback(2))
    b.close()
    assert fast.loop_read() != paho.MQTT_ERR_SUCCESS or fast._sock is None
    assert lost
