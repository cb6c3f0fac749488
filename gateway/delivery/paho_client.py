"""paho's ``Client`` with cheaper paths for what the forwarder does all day: QoS 1 PUBLISH out, PUBACK in.

:class:`gateway.delivery.mqtt.MqttConnection` drives one of these from the asyncio loop. paho 2.x spends
most of its per-message CPU on generality the gateway does not use; ``bench.pipeline --profile`` found,
per QoS 1 message:

- **publishing** builds an ``MQTTMessage`` and an ``MQTTMessageInfo`` (with a ``threading.Condition``),
  checks the topic, takes three locks, and queues the packet: :meth:`FastClient.publish_qos1` builds the
  PUBLISH bytes and queues them, nothing else (the forwarder keeps its own record of what is in flight:
  with clean start, paho never re-sends anything of ours);
- **writing** is one ``send()`` per queued packet: :meth:`FastClient._packet_write` sends a run of them in
  one call (up to 64 KiB);
- **reading** is at least three ``recv()`` calls per packet (command byte, length bytes, body):
  :meth:`FastClient._sock_recv` reads what is waiting once and serves those calls from it, and
  :meth:`FastClient.loop_read` goes on until the socket has nothing more (paho stops after as many packets as
  it has messages of its own in flight: none, with the fast publish);
- **a PUBACK** is decoded into a ``ReasonCode`` and a ``Properties`` object:
  :meth:`FastClient._handle_pubackcomp` reads its packet id and reason byte and calls ``on_ack_fast``.

Everything else (CONNECT, SUBSCRIBE, QoS 0 and 2, retained messages, PUBLISH properties such as topic
aliases, DISCONNECT, incoming messages) takes paho's own path. Pinned to paho-mqtt 2.x (pyproject: <3):
these overrides use its private names, and tests/gateway/test_paho_client.py checks them byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

AckCallback = Callable[[int, int], None]
"""``on_ack_fast(mid, reason_code)``: a PUBACK (MQTT 5 reason code; 0 with 3.1.1)."""

_PUBLISH_QOS1: Final = 0x32  # PUBLISH, QoS 1, no DUP, no RETAIN
_PUBLISH: Final = 0x30
_DISCONNECT: Final = 0xE0
_WRITE_CHUNK: Final = 65536
"""Bytes of queued packets sent in one ``send()`` call."""
_READ_CHUNK: Final = 65536
"""Bytes asked of the socket at once; paho's small reads are served from them."""
_MAX_PACKETS_PER_READ: Final = 4096
"""Packets :meth:`FastClient.loop_read` handles in one call before it lets the loop run others."""
_HEADER: Final = struct.Struct(">H")


def _remaining_length(n: int) -> bytes:
    """MQTT's variable byte integer (1-4 bytes)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class FastClient(paho.Client):
    """paho's ``Client`` with the fast paths above; see the module's docstring."""

    on_ack_fast: AckCallback | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_mids: set[int] = set()
        self._v5 = self._protocol == paho.MQTTv5
        self._rbuf = b""
        self._rpos = 0

    # -- publishing ----------------------------------------------------------------------------------

    def publish_qos1(self, topic: str, payload: bytes) -> int:
        """Queue a QoS 1 PUBLISH of ``payload`` on ``topic`` (no retain, no properties); return its packet
        id. ``on_ack_fast(mid, reason)`` reports the PUBACK. The caller checks that the connection is up and
        that ``topic`` names no wildcard (:meth:`fast_topic`)."""
        mid = self._mid_generate()
        name = topic.encode()
        head = _HEADER.pack(len(name)) + name + _HEADER.pack(mid) + (b"\x00" if self._v5 else b"")
        packet = bytes((_PUBLISH_QOS1,)) + _remaining_length(len(head) + len(payload)) + head + payload
        self._fast_mids.add(mid)
        self._out_packet.append(
            {
                "command": _PUBLISH_QOS1,
                "mid": mid,
                "qos": 1,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": None,
            }
        )
        self._call_socket_register_write()
        return mid

    @staticmethod
    def fast_topic(topic: str) -> bool:
        """A topic :meth:`publish_qos1` may take: not empty, no wildcard, within MQTT's 65,535 bytes (else
        paho's own publish says what is wrong)."""
        return bool(topic) and "+" not in topic and "#" not in topic and len(topic) <= 16383

    # -- writing ---------------------------------------------------------------------------------------

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        while out:
            run: list[Any] = []
            size = 0
            for packet in out:
                command = packet["command"] & 0xF0
                if command == _DISCONNECT or (command == _PUBLISH and packet["qos"] == 0):
                    break  # paho acts on these once written (on_publish; the close)
                run.append(packet)
                size += packet["to_process"]
                if size >= _WRITE_CHUNK:
                    break
            if len(run) < 2:
                return super()._packet_write()  # one packet, or one paho must act on: its own way
            data = b"".join(p["packet"][p["pos"] :] if p["pos"] else p["packet"] for p in run)
            try:
                sent = self._sock_send(data)
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if sent <= 0:
                break
            for packet in run:
                left = packet["to_process"]
                if sent >= left:
                    sent -= left
                    packet["pos"] += left
                    packet["to_process"] = 0
                    out.popleft()
                else:
                    packet["pos"] += sent
                    packet["to_process"] = left - sent
                    break  # the socket took part of it: the next send says whether it takes more
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- reading ---------------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(_READ_CHUNK)  # raises BlockingIOError when nothing is waiting
            if not buf:
                return buf  # EOF: paho reports the connection lost
            self._rbuf, pos = buf, 0
        end = pos + bufsize
        self._rpos = min(end, len(buf))
        return buf[pos:end]

    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not taken yet (a reader must come back for them: the
        selector will not say the socket is readable for bytes already out of it)."""
        return self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle packets until the socket has nothing more (at most 4,096: then :meth:`buffered` says
        whether to come back)."""
        del max_packets  # paho ignores it too: it counts its own messages in flight
        for _ in range(_MAX_PACKETS_PER_READ):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        ack = self.on_ack_fast
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or ack is None or len(packet) < 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        reason = packet[2] if len(packet) > 2 else 0  # MQTT 5 may omit a 0 reason; 3.1.1 has none
        if mid in self._fast_mids:
            self._fast_mids.discard(mid)
            ack(mid, reason)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with self._out_message_mutex:  # a message published through paho's own publish
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            self._inflight_messages -= 1
        msg.info._set_as_published()
        ack(mid, reason)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


__all__ = ["AckCallback", "FastClient"]
