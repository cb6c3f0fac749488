"""A one-shot command client: publish one request, wait for its result (``edgegw cmd``, tests, the bench).

It connects to the broker of a gateway's config with clean sessions of its own (client id
``edgegw-cmd-<random>``), subscribes to the target's result topic, publishes the request (QoS 1, signed
when the config has ``commands.hmac_key_file``) and returns the first result with the request's id.
Requests go out on a second connection (``...-req``): on the one connection, Mosquitto (Nagle on by
default, ``set_tcp_nodelay false``) would hold each result until this client's delayed ACK of the request's
PUBACK, some 40 ms.
:class:`CommandClient` keeps the connection for many requests (the bench); :func:`send` is one request.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.commands.protocol import request_topic, result_topic, sign
from gateway.commands.service import commands_broker, connection_kwargs, read_hmac_key
from gateway.config import Config
from gateway.delivery.mqtt import Incoming, MqttConnection, MqttNotConnected

__all__ = ["CommandClient", "NoResult", "Result", "new_id", "send"]


class NoResult(Exception):
    """No result arrived within the client's wait (the gateway is down, not subscribed, or too slow)."""


@dataclass(frozen=True, slots=True)
class Result:
    id: str | None
    status: str
    reason: str | None
    data: Any
    ts: float
    raw: Mapping[str, Any]


def new_id() -> str:
    return f"cmd-{int(time.time())}-{secrets.token_hex(6)}"


class CommandClient:
    """``async with CommandClient(config) as client: result = await client.send("meter1", "read", {})``."""

    def __init__(self, config: Config, *, client_id: str | None = None) -> None:
        mqtt = commands_broker(config)
        if mqtt is None:
            raise NoResult("commands are not enabled on any MQTT upstream of this configuration")
        self._mqtt = mqtt
        self._prefix = mqtt.prefix
        self._gateway = config.gateway.id
        key_file = mqtt.commands.hmac_key_file
        self._key = read_hmac_key(key_file) if key_file is not None else None
        self._client_id = client_id or f"edgegw-cmd-{secrets.token_hex(4)}"
        self._conn: MqttConnection | None = None
        """Receives the results (subscribed to the result topics)."""
        self._out: MqttConnection | None = None
        """Publishes the requests."""
        self._subscribed: set[str] = set()
        self._waiters: dict[str, asyncio.Future[Result]] = {}
        self._lost: str | None = None

    async def __aenter__(self) -> CommandClient:
        def on_lost(reason: str) -> None:
            self._lost = reason
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(MqttNotConnected(f"connection to the broker lost: {reason}"))

        conn = MqttConnection(
            **connection_kwargs(self._mqtt),
            client_id=self._client_id,
            on_ack=lambda _mid, _reason: None,
            on_lost=on_lost,
            on_message=self._on_message,
            no_delay=True,
        )
        out = MqttConnection(
            **connection_kwargs(self._mqtt),
            client_id=self._client_id + "-req",
            on_ack=lambda _mid, _reason: None,
            on_lost=on_lost,
            no_delay=True,
        )
        await conn.connect()
        self._conn = conn
        try:
            await out.connect()
        except BaseException:
            await self.__aexit__()
            raise
        self._out = out
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for conn in (self._out, self._conn):
            if conn is not None:
                await conn.disconnect(grace_s=1.0)
        self._conn = self._out = None

    def _on_message(self, message: Incoming) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        waiter = self._waiters.get(str(body.get("id")))
        if waiter is not None and not waiter.done():
            waiter.set_result(
                Result(
                    id=body.get("id"),
                    status=str(body.get("status")),
                    reason=body.get("reason"),
                    data=body.get("data"),
                    ts=float(body.get("ts") or 0.0),
                    raw=body,
                )
            )

    async def subscribe(self, device: str | None) -> None:
        """Subscribe to ``device``'s result topic (None: the gateway's), once."""
        conn = self._conn
        if conn is None:
            raise MqttNotConnected("the client is not connected")
        topic = result_topic(self._prefix, self._gateway, device)
        if topic in self._subscribed:
            return
        reasons = await conn.subscribe([topic])
        if any(r >= 0x80 for r in reasons):
            raise MqttNotConnected(f"the broker refused the subscription to {topic} (not authorised?)")
        self._subscribed.add(topic)

    async def send(
        self,
        device: str | None,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = 15.0,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> Result:
        """Send one request to ``device`` (None: the gateway) and return its result; :class:`NoResult`
        when none arrives within ``timeout_s``."""
        await self.subscribe(device)
        conn = self._out
        assert conn is not None
        request_id = request_id or new_id()
        topic = request_topic(self._prefix, self._gateway, device)
        body: dict[str, Any] = {
            "id": request_id,
            "command": command,
            "args": dict(args or {}),
            "ts": time.time() if ts is None else ts,
        }
        if self._key is not None:
            body["hmac"] = sign(
                self._key,
                request_id=request_id,
                command=command,
                args=body["args"],
                ts=body["ts"],
                topic=topic,
            )
        waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        try:
            conn.publish(topic, json.dumps(body).encode(), qos=1)
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            raise NoResult(f"no result for {request_id} within {timeout_s:g} s") from None
        finally:
            self._waiters.pop(request_id, None)


async def send(
    config: Config,
    device: str | None,
    command: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 15.0,
) -> Result:
    """One request through the broker of ``config``; see :meth:`CommandClient.send`."""
    async with CommandClient(config) as client:
        return await client.send(device, command, args, timeout_s=timeout_s)
