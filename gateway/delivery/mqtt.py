"""paho-mqtt driven from the asyncio loop, with as little per-message overhead as we can manage.

One :class:`MqttConnection` is one MQTT connection: a fresh paho ``Client`` (clean start, so paho never
replays anything of its own after a reconnect: the forwarder owns redelivery). It mirrors what aiomqtt
does, without a Future per message:

- paho's socket callbacks register the socket with the loop (``add_reader`` -> ``loop_read``,
  ``add_writer`` -> ``loop_write`` while paho has bytes queued), and a periodic ``loop_misc`` keeps the
  keepalive going;
- the blocking part of connecting (TCP connect, TLS handshake) runs in the default executor, never on the
  loop thread, so the serial readers sharing the loop are never starved;
- :meth:`MqttConnection.publish` is synchronous and returns the packet id (``mid``); the broker's PUBACK is
  reported through ``on_ack(mid, reason_code)``; a lost connection through ``on_lost(reason)``, called
  once, the moment paho notices (EOF, socket error, keepalive timeout, DISCONNECT from the broker);
- a plain QoS 1 publish, its PUBACK, and the reads and writes under them take the fast paths of
  :mod:`gateway.delivery.paho_client` (half of paho's CPU per message); anything else is paho's own.

For the commands (:mod:`gateway.commands`), a connection can also receive: :meth:`MqttConnection.subscribe`
and ``on_message(Incoming)``, and keep a persistent session (``session_expiry_s``: clean start off, so the
broker keeps the subscription and queues QoS 1 requests while the link is down), and acknowledge what it
receives itself (``manual_ack``: :meth:`MqttConnection.ack` once a request is answered, so that one received
but not answered before a crash is delivered again to the next session).

Errors::

    MqttError
     +-- MqttConnectError      connect failed (socket, TLS, timeout, CONNACK refusal); transient
     +-- MqttNotConnected      publish() on a connection that is not (or no longer) up
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.delivery.paho_client import FastClient

log = logging.getLogger("edgegw.mqtt")

AckCallback = Callable[[int, int], None]
"""``on_ack(mid, reason_code)``: reason codes >= 0x80 are refusals (MQTT 5); MQTT 3.1.1 always gives 0."""
LostCallback = Callable[[str], None]
"""``on_lost(reason)``: the connection is gone; every publish without an ack so far never gets one."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message the broker delivered (``on_message``). paho acknowledges a QoS 1 message once the callback
    has returned, unless the connection has ``manual_ack``: then :meth:`MqttConnection.ack` with ``mid``
    and ``qos`` does."""

    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    """MQTT 5 Response Topic, when the publisher set one."""
    correlation_data: bytes | None = None
    """MQTT 5 Correlation Data, when the publisher set it."""
    mid: int = 0
    """The PUBLISH packet id (what :meth:`MqttConnection.ack` acknowledges)."""
    qos: int = 0
    dup: bool = False
    """The broker's redelivery of a PUBLISH it sent before and saw no acknowledgement of (DUP flag)."""


MessageCallback = Callable[[Incoming], None]

_MISC_INTERVAL_S = 1.0
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
DISCONNECT_GRACE_S = 5.0
"""How long :meth:`MqttConnection.disconnect` waits for DISCONNECT to go out and the broker to close its side
before closing the socket."""


class MqttError(Exception):
    """Base of this module's errors."""


class MqttConnectError(MqttError):
    """Connecting failed: socket or TLS error, timeout, or the broker refused (CONNACK reason)."""


class MqttNotConnected(MqttError):
    """The connection is not up (never was, or was lost)."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS for the upstream connection. Verification (chain and host name) is on unless ``insecure``."""

    ca_file: str | None = None
    """CA bundle to verify the broker against; None: the system CAs."""
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    insecure: bool = False
    """Skip the host name check (paho's ``tls_insecure_set``). The chain is still verified."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttConnection:
    """One MQTT connection on the running loop. Create, :meth:`connect`, :meth:`publish`...,
    :meth:`disconnect`; after it is lost, make a new one."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        on_ack: AckCallback,
        on_lost: LostCallback,
        protocol: Literal["5", "3.1.1"] = "5",
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: TlsOptions | None = None,
        will: Will | None = None,
        connect_timeout_s: float = 10.0,
        on_message: MessageCallback | None = None,
        session_expiry_s: int | None = None,
        no_delay: bool = False,
        manual_ack: bool = False,
    ) -> None:
        """``session_expiry_s``: None (the default) starts a clean session on every connect; a number keeps
        a persistent session (MQTT 5: clean start off and this Session Expiry Interval; 3.1.1: clean session
        off, the broker's own expiry). ``no_delay``: for a connection whose messages are few and waited
        for (commands): TCP_NODELAY on the socket, and (Linux) TCP_QUICKACK re-armed after every read, so
        that neither side's Nagle waits on the other's delayed ACK (up to some 40 ms each time: Mosquitto
        keeps Nagle on by default, and holds a request for the gateway until its previous segment to it
        is acknowledged). The forwarder leaves it off: there Nagle's coalescing of a burst is welcome.
        ``manual_ack``: a QoS 1 message received is acknowledged only by :meth:`ack` (the commands: once
        answered), not when ``on_message`` returns."""
        self.host = host
        self.port = port
        self.client_id = client_id
        self.protocol = protocol
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._misc: asyncio.TimerHandle | None = None
        self._sock: Any = None
        self._closing = False
        self._lingering: socket.socket | None = None
        self._lost_reported = False
        self.connected = False
        self.receive_maximum: int | None = None
        """The broker's Receive Maximum from CONNACK (MQTT 5), if it sent one."""
        self.topic_alias_maximum = 0
        """The broker's Topic Alias Maximum from CONNACK (MQTT 5): aliases it accepts (0: none)."""
        self.session_present = False
        """CONNACK's session present flag: the broker kept the session (and its subscriptions)."""
        self._on_message = on_message
        self._session_expiry_s = session_expiry_s
        self._no_delay = no_delay
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}

        v5 = protocol == "5"
        client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else session_expiry_s is None,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        client.max_inflight_messages = 0  # the caller bounds its window; paho must not queue behind it
        client.max_queued_messages = 0
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                keyfile_password=tls.key_password,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if tls.insecure:
                client.tls_insecure_set(True)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish  # PUBCOMP, or a PUBACK the fast path leaves to paho
        client.on_ack_fast = on_ack
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.on_socket_open = self._handle_socket_open
        client.on_socket_close = self._handle_socket_close
        client.on_socket_register_write = self._handle_register_write
        client.on_socket_unregister_write = self._handle_unregister_write
        # Until the CONNACK, keep paho's last error: a broker that refuses our client certificate sends
        # its TLS alert only after the handshake, and paho reports it as a lost connection.
        client.on_log = self._handle_log
        self._connect_error: str | None = None
        self._client = client
        self._tls = tls is not None
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s

    def __repr__(self) -> str:
        return (
            f"MqttConnection(host={self.host!r}, port={self.port}, client_id={self.client_id!r}, "
            f"protocol={self.protocol!r}, tls={self._tls}, connected={self.connected})"
        )

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket (in the executor), send CONNECT, wait for a successful CONNACK, all within
        ``connect_timeout_s``. Raises :class:`MqttConnectError` on any failure, leaving nothing open."""
        timeout = self._connect_timeout_s
        self._connack = self._loop.create_future()
        self._client.connect_timeout = timeout
        fut = self._loop.run_in_executor(None, self._blocking_connect)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(fut)
                await self._connack
        except BaseException as err:
            # Whatever happened (timeout, refusal, cancellation), leave no socket behind: if the executor
            # is still connecting, close what it opens once it is done.
            if fut.done():
                self._abort()
            else:
                fut.add_done_callback(lambda _f: self._abort())
            if isinstance(err, MqttConnectError):
                raise
            if isinstance(err, TimeoutError):
                raise MqttConnectError(f"connecting to {self.host}:{self.port} timed out") from None
            if isinstance(err, OSError | ValueError):  # ssl.SSLError is an OSError
                raise MqttConnectError(f"connecting to {self.host}:{self.port}: {err}") from err
            raise
        self.connected = True
        self._misc = self._loop.call_later(_MISC_INTERVAL_S, self._run_misc)

    def _blocking_connect(self) -> None:
        if self.protocol == "5" and self._session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
            props.SessionExpiryInterval = self._session_expiry_s
            rc = self._client.connect(
                self.host, self.port, keepalive=self._keepalive_s, clean_start=False, properties=props
            )
        elif self.protocol == "5":
            rc = self._client.connect(self.host, self.port, keepalive=self._keepalive_s, clean_start=True)
        else:
            rc = self._client.connect(self.host, self.port, keepalive=self._keepalive_s)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(f"connecting to {self.host}:{self.port}: {paho.error_string(rc)}")

    async def disconnect(self, *, grace_s: float = DISCONNECT_GRACE_S) -> None:
        """Send DISCONNECT (so the broker does not publish the will) and wait for the broker to close the
        connection (reading and discarding what it still sends), within ``grace_s``."""
        if self._sock is None:
            self._abort()
            return
        self.connected = False
        self._lost_reported = True  # the close we ask for is not a loss
        self._closing = True
        self._client.disconnect()
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(self._closed)
        except TimeoutError:
            log.warning(
                "MQTT %s:%d: DISCONNECT not sent within %.1f s; closing", self.host, self.port, grace_s
            )
        finally:
            self._abort()

    def _abort(self) -> None:
        """Close the socket without DISCONNECT (the broker publishes the will)."""
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self.connected = False
        self._lost_reported = True  # a close we asked for is not a loss to report
        self._fail_subacks("closed")
        sock = self._client.socket()
        if sock is not None:
            self._remove_fd(sock.fileno())
            with contextlib.suppress(OSError):
                sock.close()
        self._sock = None
        self._close_lingering()
        if not self._closed.done():
            self._closed.set_result(None)

    # -- publishing --------------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Queue a PUBLISH; return its mid. The PUBACK arrives through ``on_ack``. ``properties``: MQTT 5
        PUBLISH properties (e.g. Correlation Data), ignored by 3.1.1."""
        if not self.connected:
            raise MqttNotConnected(f"not connected to {self.host}:{self.port}")
        client = self._client
        if qos == 1 and not retain and properties is None and client.fast_topic(topic):
            return client.publish_qos1(topic, payload)  # the forwarder's every message: paho's cost spared
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttNotConnected(f"publish to {self.host}:{self.port}: {paho.error_string(info.rc)}")
        return info.mid

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge the received message ``mid`` (``manual_ack``). On a connection that is no longer up
        this does nothing: the broker delivers the message again to the next connection of the session.

        "Up" is the socket, not :attr:`connected`: a broker sends what it queued for a resumed session
        right behind the CONNACK, and those messages are handled (and may be answered) in the same read,
        before :meth:`connect` has returned and set :attr:`connected`. Their acknowledgements must go out
        too, else each is delivered again at every reconnect."""
        if qos > 0 and self._sock is not None and not self._closing:
            self._client.ack(mid, qos)

    async def subscribe(self, topics: list[str], *, qos: int = 1) -> list[int]:
        """Subscribe to ``topics`` and wait for the SUBACK; return its reason codes, one per topic, in
        order (>= 0x80: refused, e.g. 0x87 not authorised). Raises :class:`MqttNotConnected` if the
        connection is not up or is lost before the SUBACK."""
        if not self.connected:
            raise MqttNotConnected(f"not connected to {self.host}:{self.port}")
        rc, mid = self._client.subscribe([(topic, qos) for topic in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttNotConnected(f"subscribe on {self.host}:{self.port}: {paho.error_string(rc)}")
        waiter: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = waiter
        try:
            return await waiter
        finally:
            self._subacks.pop(mid, None)

    # -- paho callbacks (loop thread, except socket open/register during connect: executor thread) ------

    def _handle_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        callback = self._on_message
        if callback is None:
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        callback(
            Incoming(
                topic=message.topic,
                payload=bytes(message.payload),
                retain=bool(message.retain),
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
                mid=message.mid,
                qos=message.qos,
                dup=bool(message.dup),
            )
        )

    def _handle_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        waiter = self._subacks.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result([int(reason.value) for reason in reasons])

    def _handle_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        waiter = self._connack
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(MqttConnectError(f"broker refused the connection: {reason}"))
            return
        self._client.on_log = None  # formatting every log line costs CPU per packet
        self.session_present = bool(getattr(flags, "session_present", False))
        if properties is not None and hasattr(properties, "ReceiveMaximum"):
            self.receive_maximum = int(properties.ReceiveMaximum)
        if properties is not None and hasattr(properties, "TopicAliasMaximum"):
            self.topic_alias_maximum = int(properties.TopicAliasMaximum)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._report_lost(f"disconnected: {reason}")

    def _handle_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties,
    ) -> None:
        self._on_ack(mid, reason.value)

    def _handle_log(self, _client: paho.Client, _userdata: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._connect_error = text

    def _handle_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._sock = sock
        if self._no_delay:
            with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a test's socketpair)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._add_reader, sock)

    def _handle_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        fd = sock.fileno()  # now: paho closes the socket right after this callback
        self._in_loop(self._remove_fd, fd)
        self._sock = None
        if self._closing and fd >= 0:
            # paho has just written our DISCONNECT. Keep the connection open through a second descriptor
            # until the broker closes its side: closing a socket whose receive queue holds unread bytes
            # (a PUBACK still arriving) sends a TCP RST, and a broker that has not yet read our DISCONNECT
            # loses it with the reset, takes the close for a failure and publishes the will as well.
            try:
                keep = socket.socket(fileno=os.dup(fd))
            except OSError:
                pass
            else:
                self._in_loop(self._linger, keep)
                return
        self._in_loop(self._socket_closed)

    def _linger(self, keep: socket.socket) -> None:
        """Half-close (FIN after the DISCONNECT) and read, discarding, until the broker closes its side:
        :meth:`disconnect` waits for that, within its grace, and :meth:`_abort` cuts it short."""
        self._lingering = keep
        try:
            keep.shutdown(socket.SHUT_WR)
            keep.setblocking(False)
            self._loop.add_reader(keep, self._drain_lingering)
        except OSError:
            self._close_lingering()
            self._socket_closed()

    def _drain_lingering(self) -> None:
        keep = self._lingering
        if keep is None:
            return
        try:
            if keep.recv(65536):
                return  # more may follow; EOF is the broker's close
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close_lingering()
        self._socket_closed()

    def _close_lingering(self) -> None:
        keep, self._lingering = self._lingering, None
        if keep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(keep)
            keep.close()

    def _handle_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _handle_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._loop.remove_writer, sock)

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _add_reader(self, sock: Any) -> None:
        if self._sock is sock and sock.fileno() != -1:
            self._loop.add_reader(sock, self._readable)

    def _add_writer(self, sock: Any) -> None:
        if self._sock is sock and sock.fileno() != -1:
            self._loop.add_writer(sock, self._writable)

    def _remove_fd(self, fd: int) -> None:
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _socket_closed(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        waiter = self._connack
        if waiter is not None and not waiter.done():
            why = f" ({self._connect_error})" if self._connect_error else ""
            waiter.set_exception(MqttConnectError(f"{self.host}:{self.port} closed the connection{why}"))
        self._report_lost("socket closed")

    def _fail_subacks(self, reason: str) -> None:
        for waiter in self._subacks.values():
            if not waiter.done():
                waiter.set_exception(MqttNotConnected(f"connection lost before the SUBACK: {reason}"))

    def _report_lost(self, reason: str) -> None:
        self.connected = False
        self._fail_subacks(reason)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._lost_reported:
            return
        self._lost_reported = True
        if self._connack is not None and self._connack.done():
            self._on_lost(reason)

    # -- I/O readiness -----------------------------------------------------------------------------------

    def _readable(self) -> None:
        client = self._client
        client.loop_read()
        if self._no_delay and _QUICKACK is not None and self._sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        # TLS may hold decrypted bytes the selector cannot see, and the client bytes it read but did not
        # handle yet (it stops after 4,096 packets): come back for them, after the loop's other callbacks.
        sock = self._sock
        if sock is not None and (client.buffered() or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._client.loop_write()

    def _run_misc(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self._client.loop_misc()
        if self._sock is not None:
            self._misc = self._loop.call_later(_MISC_INTERVAL_S, self._run_misc)


__all__ = [
    "AckCallback",
    "Incoming",
    "LostCallback",
    "MessageCallback",
    "MqttConnectError",
    "MqttConnection",
    "MqttError",
    "MqttNotConnected",
    "TlsOptions",
    "Will",
]
