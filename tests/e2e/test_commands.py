"""Commands end to end: a gateway run in this process with Modbus TCP meters simulated on pymodbus's real
server, a private mosquitto, requests published by a plain paho client (or ``gateway.commands.client``) and
results taken from the broker. What a write set is read back with pymodbus's own client, never through the
driver; that nothing reached the line is shown by the simulator's count of write requests per function."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pymodbus.client import AsyncModbusTcpClient

from drivers.kinds import COMMAND_REQUEST, COMMAND_RESULT
from firmware_sim.modbus import ModbusSimulator, serve_tcp
from gateway.app import Gateway
from gateway.commands.client import CommandClient
from gateway.config import load_config
from tests.broker import Mosquitto, Subscriber
from tests.gateway.ops_helpers import http_get, running, samples, value
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

GW = "gw7"
WRITES = (5, 6, 15, 16)
POINTS = """      - {name: voltage_a, table: input, address: 0, type: float32, unit: V}
      - {name: ct_primary_a, address: 100, unit: A, writable: true, min: 5, max: 5000}
      - {name: vt_ratio, address: 101, writable: true, min: 1, max: 100}
"""


def meter(name: str, port: int, unit: int, commands: str, **extra: Any) -> str:
    options = {"poll_s": 0.2, "timeout_s": 0.5, **extra}
    more = "".join(f"    {k}: {v}\n" for k, v in options.items())
    return (
        f"  - name: {name}\n    driver: modbus\n    host: 127.0.0.1\n    tcp_port: {port}\n"
        f"    unit_id: {unit}\n    byte_order: CDAB\n    commands: {commands}\n{more}    points:\n{POINTS}"
    )


def write_config(tmp_path: Path, broker: Mosquitto, devices: str, commands: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""gateway:
  id: {GW}
buffer:
  path: {tmp_path / "buffer.db"}
upstream:
  mqtt:
    url: {broker.url}
    prefix: edgegw
    reconnect: {{initial_s: 0.1, max_s: 0.5}}
    commands:
      enabled: true
      rate_limit: {{per_s: 1000, burst: 1000}}
{commands}supervisor:
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
metrics:
  listen: "127.0.0.1:0"
devices:
{devices}"""
    )
    return path


@dataclass
class Site:
    gateway: Gateway
    sim: ModbusSimulator
    broker: Mosquitto
    config: Path
    sub: Subscriber

    def writes(self, unit: int = 1) -> dict[int, int]:
        return {f: self.sim.stats.functions[(unit, f)] for f in WRITES if self.sim.stats.functions[(unit, f)]}

    def results(self, device: str | None = "meter") -> list[dict[str, Any]]:
        topic = f"edgegw/{GW}/cmd/result" if device is None else f"edgegw/{GW}/{device}/cmd/result"
        return [json.loads(m.payload) for m in self.sub.snapshot() if m.topic == topic]

    def audit(self, kind: str, device: str = "meter") -> list[dict[str, Any]]:
        topic = f"edgegw/{GW}/{device}/{kind}"
        return [json.loads(m.payload)["data"] for m in self.sub.snapshot() if m.topic == topic]

    async def result_for(self, request_id: str | None, device: str | None = "meter", n: int = 1) -> list[Any]:
        def have(_: Any) -> bool:
            return len([r for r in self.results(device) if r["id"] == request_id]) >= n

        await self.sub.wait_until(have, timeout=20)
        return [r for r in self.results(device) if r["id"] == request_id]


@contextlib.asynccontextmanager
async def site(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    commands: str = "",
    extra: dict[str, Any] | None = None,
    session: str | None = None,
    before_start: tuple[str, str] | None = None,
) -> AsyncIterator[Site]:
    """``before_start``: (topic, payload) published retained before the gateway starts."""
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "energy-meter"}) as sim:
        devices = meter("meter", sim.port, 1, "[write, read]", **(extra or {})) + meter(
            "meter-ro", sim.port, 2, "[read]", **(extra or {})
        )
        path = write_config(tmp_path, broker, devices, commands)
        if before_start is not None:
            publish(broker, *before_start, retain=True)
        gateway = Gateway(load_config(path))
        async with Subscriber(broker, f"edgegw/{GW}/#", session=session) as sub, running(gateway):
            await until("the command service subscribed", lambda: _listening(gateway))
            await until(
                "both meters connected",
                lambda: all(r.state == "connected" for r in gateway.runners.values()),
            )
            yield Site(gateway, sim, broker, path, sub)


def _listening(gateway: Gateway) -> bool:
    return gateway.commands is not None and gateway.commands.connected_event.is_set()


def publish(
    broker: Mosquitto,
    topic: str,
    payload: bytes | str,
    *,
    properties: Properties | None = None,
    retain: bool = False,
) -> None:
    """Publish one message (QoS 1, acknowledged) from a plain paho client of its own."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, properties=properties, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def request(command: str, args: dict[str, Any] | None = None, *, rid: str, ts: float | None = None) -> str:
    body: dict[str, Any] = {"id": rid, "command": command, "ts": time.time() if ts is None else ts}
    if args is not None:
        body["args"] = args
    return json.dumps(body)


async def holding(port: int, address: int, count: int = 1, unit: int = 1) -> list[int]:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, timeout=5, reconnect_delay=0)
    assert await c.connect()
    try:
        reply = await c.read_holding_registers(address, count=count, device_id=unit)
        assert not reply.isError(), reply
        return list(reply.registers)
    finally:
        c.close()


CMD = f"edgegw/{GW}/meter/cmd"


# -- a command runs, lands, is answered and audited -------------------------------------------------------


async def test_a_write_lands_in_the_meter_and_is_answered_and_audited(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with site(tmp_path, broker) as s:
        publish(broker, CMD, request("write", {"point": "ct_primary_a", "value": 250}, rid="w-1"))
        [result] = await s.result_for("w-1")
        assert result["status"] == "ok" and result["reason"] is None, result
        assert result["data"] == {"written": {"ct_primary_a": 250}}
        assert set(result) == {"id", "status", "reason", "data", "ts"}
        assert await holding(s.sim.port, 100) == [250]  # read back over Modbus, not through the driver

        # The audit record goes through the buffer: both events arrive upstream as ordinary events.
        await s.sub.wait_until(lambda _: bool(s.audit(COMMAND_RESULT)))
        [req] = [a for a in s.audit(COMMAND_REQUEST) if a["id"] == "w-1"]
        assert req["command"] == "write" and req["args"] == {"point": "ct_primary_a", "value": 250}
        assert req["topic"] == CMD
        [res] = [a for a in s.audit(COMMAND_RESULT) if a["id"] == "w-1"]
        assert res["status"] == "ok" and res["data"] == {"written": {"ct_primary_a": 250}}

        # read: the values now, in data
        publish(broker, CMD, request("read", {"points": ["ct_primary_a"]}, rid="r-1"))
        [result] = await s.result_for("r-1")
        assert result["status"] == "ok" and result["data"]["values"]["ct_primary_a"] == 250, result


async def test_a_stale_request_is_expired_and_nothing_is_written(tmp_path: Path, broker: Mosquitto) -> None:
    async with site(tmp_path, broker) as s:
        before = await holding(s.sim.port, 100)
        stale = request("write", {"point": "ct_primary_a", "value": 999}, rid="old-1", ts=time.time() - 31)
        publish(broker, CMD, stale)
        [result] = await s.result_for("old-1")
        assert (
            result["status"] == "expired" and "31" in result["reason"] and "max_age_s 30" in result["reason"]
        )
        assert result["data"] is None
        future = request(
            "write", {"point": "ct_primary_a", "value": 999}, rid="future-1", ts=time.time() + 300
        )
        publish(broker, CMD, future)
        [result] = await s.result_for("future-1")
        assert result["status"] == "expired" and "future" in result["reason"]
        assert s.writes() == {}
        assert await holding(s.sim.port, 100) == before


@pytest.mark.parametrize(
    "case",
    [
        ("meter", lambda: request("explode", {}, rid="u-1"), "refused", "has no command 'explode'"),
        (
            "meter-ro",
            lambda: request("write", {"point": "ct_primary_a", "value": 9}, rid="u-2"),
            "refused",
            "not allowed",
        ),
        (
            "meter",
            lambda: request("write", {"point": "voltage_a", "value": 9}, rid="u-3"),
            "refused",
            "writable",
        ),
        (
            "meter",
            lambda: request("write", {"point": "ct_primary_a", "value": 9000}, rid="u-4"),
            "refused",
            "5000",
        ),
        (
            "meter",
            lambda: request("write", {"point": 5, "value": 9}, rid="u-5"),
            "refused",
            "invalid args: point",
        ),
        (
            "meter",
            lambda: request("write", {"point": "vt_ratio", "value": "9"}, rid="u-6"),
            "refused",
            "takes a number",
        ),
        (
            "meter",
            lambda: request("write", {"point": "vt_ratio", "value": 9, "x": 1}, rid="u-7"),
            "refused",
            "x:",
        ),
        ("nobody", lambda: request("read", {}, rid="u-8"), "error", "no device named 'nobody'"),
        ("meter", '{"id": "m-1", "command": "write", "args": {', "error", "not JSON"),
        ("meter", '{"command": "write", "args": {}, "ts": 1}', "error", "has no id"),
        ("meter", '{"id": 7, "command": "write", "args": {}, "ts": 1}', "error", "id must be a string"),
        (
            "meter",
            '{"id": "m-2", "command": "write", "args": {}, "ts": "now"}',
            "error",
            "ts must be a number",
        ),
        ("meter", '{"id": "m-3", "command": ["write"], "args": {}, "ts": 1}', "error", "command must be"),
        (
            "meter",
            '{"id": "m-4", "command": "write", "args": [1], "ts": 1}',
            "error",
            "args must be an object",
        ),
        ("meter", '{"id": "m-5", "command": "write", "args": {}}', "error", "has no ts"),
        ("meter", '["write"]', "error", "must be a JSON object"),
        ("meter", b"\xff\xfe", "error", "not JSON"),
    ],
)
async def test_unknown_not_allowed_invalid_and_malformed_requests_never_reach_the_line(
    tmp_path: Path, broker: Mosquitto, case: tuple[str, str | bytes | Callable[[], str], str, str]
) -> None:
    # A request is built when the test runs, not when pytest collects it: its ts would be as old as the
    # session by then, and expired is not what these cases are about.
    topic_device, make, status, reason = case
    payload = make() if callable(make) else make
    async with site(tmp_path, broker) as s:
        publish(broker, f"edgegw/{GW}/{topic_device}/cmd", payload)
        try:
            rid: str | None = json.loads(payload)["id"]
            if not isinstance(rid, str):
                rid = None
        except (ValueError, KeyError, TypeError):
            rid = None
        [result] = await s.result_for(rid, topic_device)
        assert result["status"] == status, result
        assert reason in result["reason"], result
        assert result["data"] is None
        assert s.writes(1) == {} and s.writes(2) == {}
        # every request, even an unreadable one, is on the record
        device = topic_device if topic_device != "nobody" else GW
        await s.sub.wait_until(lambda _: any(a.get("id") == rid for a in s.audit(COMMAND_RESULT, device)))


async def test_a_redelivered_id_runs_once_and_gets_the_first_result_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with site(tmp_path, broker) as s:
        first = request("write", {"point": "vt_ratio", "value": 7}, rid="dup-1")
        publish(broker, CMD, first)
        publish(broker, CMD, first)  # a QoS 1 redelivery looks like this
        # the same id with other content is still the same request: not run again
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 8}, rid="dup-1"))
        results = await s.result_for("dup-1", n=3)
        assert [r["status"] for r in results] == ["ok"] * 3
        assert all(r["data"] == {"written": {"vt_ratio": 7}} for r in results)
        assert s.writes() == {6: 1}
        assert await holding(s.sim.port, 101) == [7]
        assert s.gateway.commands is not None and s.gateway.commands.duplicates == 2
        # a refusal is remembered too: its repeat is refused the same way, even if now it would be valid
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 500}, rid="dup-2"))
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 5}, rid="dup-2"))
        results = await s.result_for("dup-2", n=2)
        assert [r["status"] for r in results] == ["refused", "refused"]
        assert results[0]["reason"] == results[1]["reason"]
        assert s.writes() == {6: 1}


async def test_results_survive_a_broker_restart_and_the_subscription_is_kept(tmp_path: Path) -> None:
    with Mosquitto(persistence=True) as broker:
        extra = {"poll_s": 30, "timeout_s": 8}  # one poll at start; the read below waits on a slow meter
        async with site(tmp_path, broker, extra=extra, session="cmd-sub-restart") as s:
            s.sim.set_delay(1, 3.0)
            publish(broker, CMD, request("read", {"points": ["vt_ratio"]}, rid="slow-1"))
            service = s.gateway.commands
            assert service is not None
            await until("the request is running", lambda: service.received == 1 and service.in_flight > 0)
            broker.stop()  # the result is not there yet: the command still waits on the meter
            assert service.results == {}
            broker.start()
            s.sim.set_delay(1, 0.0)
            [result] = await s.result_for("slow-1")
            assert result["status"] == "ok" and "vt_ratio" in result["data"]["values"], result
            # after the restart the gateway still listens: a new request is answered
            await until("the command session is back", lambda: _listening(s.gateway))
            publish(broker, f"edgegw/{GW}/cmd", request("ping", rid="after-1"))
            [pong] = await s.result_for("after-1", None)
            assert pong["status"] == "ok"


async def test_limits_in_flight_and_timeouts(tmp_path: Path, broker: Mosquitto) -> None:
    commands = "      timeouts: {read: 1.0}\n"
    async with site(tmp_path, broker, commands=commands, extra={"poll_s": 30, "timeout_s": 8}) as s:
        s.sim.set_delay(1, 3.0)
        publish(broker, CMD, request("read", {}, rid="slow-a"))
        service = s.gateway.commands
        assert service is not None
        await until("the first read is running", lambda: service.in_flight > 0)
        publish(broker, CMD, request("read", {}, rid="slow-b"))
        [second] = await s.result_for("slow-b")
        assert second["status"] == "refused" and "max_in_flight 1" in second["reason"], second
        [first] = await s.result_for("slow-a")
        assert first["status"] == "timeout" and "1 s" in first["reason"], first
        s.sim.set_delay(1, 0.0)


async def test_the_rate_limit_refuses_beyond_the_burst(tmp_path: Path, broker: Mosquitto) -> None:
    path = write_config(tmp_path, broker, "  []\n").read_text()
    path = path.replace("rate_limit: {per_s: 1000, burst: 1000}", "rate_limit: {per_s: 0.001, burst: 2}")
    (tmp_path / "gateway.yaml").write_text(path)
    gateway = Gateway(load_config(tmp_path / "gateway.yaml"))
    async with running(gateway), CommandClient(gateway.config) as client:
        await until("the command service subscribed", lambda: _listening(gateway))
        statuses = [(await client.send(None, "ping")).status for _ in range(2)]
        third = await client.send(None, "ping")
        assert statuses == ["ok", "ok"]
        assert third.status == "refused" and third.reason is not None and "rate limit" in third.reason


async def test_a_device_that_drops_while_its_command_runs_answers_error(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with site(tmp_path, broker, extra={"poll_s": 30, "timeout_s": 8}) as s:
        service = s.gateway.commands
        assert service is not None
        s.sim.set_delay(1, 5.0)
        publish(broker, CMD, request("read", {}, rid="drop-1"))
        await until("the read is running", lambda: service.in_flight > 0)
        await s.sim.disconnect()
        [result] = await s.result_for("drop-1")
        assert result["status"] == "error" and result["reason"], result
        s.sim.set_delay(1, 0.0)


async def test_a_retained_request_is_refused_and_never_runs(tmp_path: Path) -> None:
    """A retained request would reach the gateway again at every subscription: it is refused when it
    arrives as retained (here: published before the gateway ever subscribed, on a broker of its own, where
    no earlier session of this gateway's id would have it queued as an ordinary request)."""
    retained = request("write", {"point": "vt_ratio", "value": 3}, rid="ret-1")
    with Mosquitto() as broker:
        async with site(tmp_path, broker, before_start=(CMD, retained)) as s:
            [result] = await s.result_for("ret-1")
            assert result["status"] == "refused" and "retained" in result["reason"], result
            publish(broker, CMD, b"", retain=True)  # clearing it is no request: nothing answers it
            publish(broker, CMD, request("read", {"points": ["vt_ratio"]}, rid="after-ret"))
            [after] = await s.result_for("after-ret")
            assert after["status"] == "ok" and after["data"]["values"]["vt_ratio"] != 3
            assert s.writes() == {}
            assert [r["id"] for r in s.results()] == ["ret-1", "after-ret"]


async def test_the_dedupe_window_forgets_ids_after_its_time(tmp_path: Path, broker: Mosquitto) -> None:
    commands = "      dedupe_window: {count: 100, seconds: 0.5}\n"
    async with site(tmp_path, broker, commands=commands) as s, CommandClient(s.gateway.config) as client:
        service = s.gateway.commands
        assert service is not None
        assert (await client.send(None, "ping", request_id="t-1")).status == "ok"
        assert (await client.send(None, "ping", request_id="t-1")).status == "ok"
        assert service.duplicates == 1
        answered = time.monotonic()
        await until("the window's time passed", lambda: time.monotonic() > answered + 0.6)
        assert (await client.send(None, "ping", request_id="t-1")).status == "ok"
        assert service.duplicates == 1  # run again, not answered from the window


async def test_a_command_running_at_a_stop_is_answered(tmp_path: Path, broker: Mosquitto) -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        path = write_config(tmp_path, broker, meter("meter", sim.port, 1, "[read]", poll_s=30, timeout_s=8))
        gateway = Gateway(load_config(path))
        async with Subscriber(broker, f"edgegw/{GW}/meter/cmd/result") as sub:
            async with running(gateway):
                await until("the command service subscribed", lambda: _listening(gateway))
                service = gateway.commands
                assert service is not None
                await until("the meter connected", lambda: gateway.runners["meter"].state == "connected")
                sim.set_delay(1, 5.0)
                publish(broker, CMD, request("read", {}, rid="at-stop"))
                await until("the read is running", lambda: service.in_flight > 0)
            # the gateway has stopped: the command's result went out before it disconnected
            [message] = await sub.wait_count(1)
            result = json.loads(message.payload)
            assert result["id"] == "at-stop" and result["status"] == "error"
            assert "stopping" in result["reason"]


async def test_a_device_not_connected_is_an_error(tmp_path: Path, broker: Mosquitto) -> None:
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        port = sim.port  # closed again: nobody listens there now
    path = write_config(tmp_path, broker, meter("meter", port, 1, "[read]"))
    gateway = Gateway(load_config(path))
    async with running(gateway), CommandClient(gateway.config) as client:
        await until("the command service subscribed", lambda: _listening(gateway))
        result = await client.send("meter", "read", {})
        assert result.status == "error" and result.reason is not None and "not connected" in result.reason


# -- MQTT 5 response topic, HMAC ---------------------------------------------------------------------------


async def test_the_mqtt5_response_topic_and_correlation_data_are_honoured(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with site(tmp_path, broker) as s:
        got: list[tuple[str, bytes | None, bytes]] = []
        done = threading.Event()
        subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_subscribe = lambda *_: subscribed.set()

        def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
            got.append((msg.topic, getattr(msg.properties, "CorrelationData", None), bytes(msg.payload)))
            done.set()

        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.subscribe("replies/tool-7", qos=1)
        client.loop_start()
        try:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "replies/tool-7"
            props.CorrelationData = b"\x00corr-1"
            assert await asyncio.to_thread(subscribed.wait, 20)
            publish(broker, f"edgegw/{GW}/cmd", request("ping", rid="rt-1"), properties=props)
            assert await asyncio.to_thread(done.wait, 20)
        finally:
            client.disconnect()
            client.loop_stop()
        [(topic, correlation, payload)] = got
        assert topic == "replies/tool-7" and correlation == b"\x00corr-1"
        assert json.loads(payload)["status"] == "ok" and json.loads(payload)["id"] == "rt-1"
        assert s.results(None) == []  # answered once: on the response topic only


def canonical(rid: str, command: str, args: dict[str, Any], ts: float, topic: str) -> bytes:
    """The canonical form as the README states it, written here independently of the gateway's code."""
    body = {
        "args": args,
        "command": command,
        "id": rid,
        "topic": topic,
        "ts": int(ts) if ts == int(ts) else ts,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


async def test_hmac_signed_requests_run_and_others_are_refused(tmp_path: Path, broker: Mosquitto) -> None:
    key = b"correct horse battery staple"
    (tmp_path / "cmd.key").write_bytes(key + b"\n")
    async with site(tmp_path, broker, commands="      hmac_key_file: cmd.key\n") as s:
        ts = float(int(time.time()))
        args = {"point": "vt_ratio", "value": 9}

        def signed(rid: str, topic: str = CMD, mac_key: bytes = key) -> str:
            mac = hmac.new(mac_key, canonical(rid, "write", args, ts, topic), hashlib.sha256).hexdigest()
            return json.dumps({"id": rid, "command": "write", "args": args, "ts": ts, "hmac": mac})

        publish(broker, CMD, signed("h-1"))
        [ok] = await s.result_for("h-1")
        assert ok["status"] == "ok", ok
        publish(broker, CMD, request("write", args, rid="h-2"))
        [unsigned] = await s.result_for("h-2")
        assert unsigned["status"] == "refused" and "no hmac" in unsigned["reason"]
        publish(broker, CMD, signed("h-3", mac_key=b"wrong key"))
        [wrong] = await s.result_for("h-3")
        assert wrong["status"] == "refused" and "does not match" in wrong["reason"]
        # signed for another device: not valid here (no replay across devices)
        publish(broker, CMD, signed("h-4", topic=f"edgegw/{GW}/meter-ro/cmd"))
        [replayed] = await s.result_for("h-4")
        assert replayed["status"] == "refused"
        # the genuine request with a refused id's id still runs: a refused hmac is not remembered
        publish(broker, CMD, signed("h-3"))
        [*_, again] = await s.result_for("h-3", n=2)
        assert again["status"] == "ok"
        assert s.writes() == {6: 2}


# -- the gateway's own commands ---------------------------------------------------------------------------


async def test_gateway_ping_status_and_reload(tmp_path: Path, broker: Mosquitto) -> None:
    async with site(tmp_path, broker) as s, CommandClient(s.gateway.config) as client:
        pong = await client.send(None, "ping")
        assert pong.status == "ok" and pong.data == {"gateway": GW, "state": "running"}

        status = await client.send(None, "status")
        assert status.status == "ok", status
        data = status.data
        assert data["gateway_id"] == GW and data["healthy"] is True and data["upstream_connected"] is True
        assert set(data["devices"]) == {"meter", "meter-ro"}
        assert data["devices"]["meter"]["state"] == "connected"
        assert data["events_in"] > 0 and data["rates"]["total_in"] is not None
        assert data["commands"]["received"] >= 2

        # reload: as SIGHUP; a changed device restarts
        s.config.write_text(s.config.read_text().replace("poll_s: 0.2", "poll_s: 0.25", 1))
        reload = await client.send(None, "reload")
        assert reload.status == "ok", reload
        assert reload.data["summary"].startswith("1 device(s) restarted (meter)")
        assert s.gateway.reloads["applied"] == 1

        # an invalid file: an error naming FILE:LINE, and the running configuration stays
        s.config.write_text(s.config.read_text().replace("commands: [read]", "commands: [reed]"))
        bad = await client.send(None, "reload")
        assert bad.status == "error" and bad.reason is not None
        assert f"{s.config}:" in bad.reason and "has no command 'reed'" in bad.reason
        assert s.gateway.reloads["applied"] == 1

        # the service's counts are in /metrics too
        assert s.gateway.metrics is not None
        code, body = await http_get(s.gateway.metrics.port, "/metrics")
        scrape = samples(body.decode())
        assert code == 200 and value(scrape, "edgegw_command_connected") == 1
        assert value(scrape, "edgegw_command_results_total", status="ok") == 3  # ping, status, reload
        assert value(scrape, "edgegw_command_results_total", status="error") == 1
        assert value(scrape, "edgegw_command_requests_total") == 4
        assert value(scrape, "edgegw_command_journal_faults_total") == 0  # the journal beside the buffer

        unknown = await client.send(None, "selfdestruct")
        assert unknown.status == "refused" and "ping, reload, status" in (unknown.reason or "")
        with_args = await client.send(None, "ping", {"x": 1})
        assert with_args.status == "refused" and "invalid args" in (with_args.reason or "")


async def test_without_commands_enabled_the_gateway_does_not_subscribe(tmp_path: Path) -> None:
    with Mosquitto() as broker:  # a broker of its own: its log shows every client that connected
        text = write_config(tmp_path, broker, "  []\n").read_text().replace("enabled: true", "enabled: false")
        (tmp_path / "gateway.yaml").write_text(text)
        gateway = Gateway(load_config(tmp_path / "gateway.yaml"))
        async with running(gateway):
            assert gateway.commands is None
            await until("the forwarder connected", lambda: f"as edgegw-{GW} " in broker.log_tail(1000))
        log = broker.log_tail(1000)
        assert f"edgegw-{GW}-cmd" not in log and "SUBSCRIBE" not in log


# -- edgegw cmd ----------------------------------------------------------------------------------------------


def edgegw_cmd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cmd", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )


async def test_the_edgegw_cmd_tool_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    async with site(tmp_path, broker) as s:
        done = await asyncio.to_thread(
            edgegw_cmd, s.config, "meter", "write", "point=ct_primary_a", "value=321"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["data"] == {"written": {"ct_primary_a": 321}}
        assert await holding(s.sim.port, 100) == [321]

        done = await asyncio.to_thread(edgegw_cmd, s.config, "meter", "read", 'points=["ct_primary_a"]')
        assert done.returncode == 0 and json.loads(done.stdout)["data"]["values"] == {"ct_primary_a": 321}

        done = await asyncio.to_thread(edgegw_cmd, s.config, "meter-ro", "write", "point=vt_ratio", "value=3")
        assert done.returncode == 4 and json.loads(done.stdout)["status"] == "refused"

        done = await asyncio.to_thread(edgegw_cmd, s.config, "--gateway", "ping")
        assert done.returncode == 0 and json.loads(done.stdout)["data"]["gateway"] == GW

        done = await asyncio.to_thread(edgegw_cmd, s.config, "meter", "write", "no-equals-sign")
        assert done.returncode == 2 and "key=value" in done.stderr
        assert s.writes(2) == {}
