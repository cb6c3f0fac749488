"""Each driver's commands end to end: a gateway run in this process with an R2000 reader and a DL/T 645
meter line on real ptys, an LLRP reader and Modbus TCP meters on real TCP sockets (the simulators), a
private mosquitto, requests sent through the broker by ``gateway.commands.client`` and results taken from
it. What a command changed is checked in the simulators' state; the audit events arrive upstream."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.kinds import COMMAND_RESULT
from firmware_sim import dlt645 as dlt645_sim
from firmware_sim import llrp as llrp_sim
from firmware_sim import modbus as modbus_sim
from firmware_sim import r2000 as r2000_sim
from gateway.app import Gateway
from gateway.commands.client import CommandClient, Result
from gateway.config import load_config
from tests.broker import Mosquitto, Subscriber
from tests.gateway.ops_helpers import running
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

GW = "gw-cmd"
METER = "000000000001"


@dataclass
class Site:
    gateway: Gateway
    client: CommandClient
    sub: Subscriber
    r2000: r2000_sim.R2000Simulator
    llrp: llrp_sim.LlrpSimulator
    dlt645: dlt645_sim.Dlt645Simulator
    modbus: modbus_sim.ModbusSimulator

    async def send(self, device: str, command: str, args: dict[str, Any] | None = None) -> Result:
        return await self.client.send(device, command, args or {}, timeout_s=20)

    def audited(self, device: str) -> list[dict[str, Any]]:
        topic = f"edgegw/{GW}/{device}/{COMMAND_RESULT}"
        return [json.loads(m.payload)["data"] for m in self.sub.snapshot() if m.topic == topic]


def config(
    tmp_path: Path, broker: Mosquitto, *, r2000: Path, meters: Path, llrp_port: int, modbus_port: int
) -> Path:
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
supervisor:
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
metrics:
  listen: "127.0.0.1:0"
devices:
  - name: door
    driver: uhf-r2000
    port: {r2000}
    antennas: {{1: door-in, 2: door-out}}
    commands: [set_power, inventory, read]
  - name: portal
    driver: llrp
    host: 127.0.0.1
    port: {llrp_port}
    antennas: {{1: portal-a, 2: portal-b}}
    keepalive_s: 0.2
    keepalive_misses: 50
    report_period_ms: 100
    commands: [start, stop, set_power]
  - name: house-meter
    driver: dlt645
    port: {meters}
    address: '{METER}'
    poll_s: 0.2
    points: [voltage_a]
    commands: [read, time_sync]
  - name: feeder-1
    driver: modbus
    host: 127.0.0.1
    tcp_port: {modbus_port}
    unit_id: 1
    byte_order: CDAB
    poll_s: 0.05
    commands: [write, read]
    points:
      - {{name: voltage_a, table: input, address: 0, type: float32, unit: V}}
      - {{name: ct_primary_a, address: 100, unit: A, writable: true, min: 5, max: 5000}}
  - name: feeder-2
    driver: modbus
    host: 127.0.0.1
    tcp_port: {modbus_port}
    unit_id: 2
    byte_order: CDAB
    poll_s: 0.05
    points:
      - {{name: voltage_a, table: input, address: 0, type: float32, unit: V}}
"""
    )
    return path


@contextlib.asynccontextmanager
async def site(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Site]:
    r2000_tty, meters_tty = tmp_path / "ttyR2000", tmp_path / "ttyMeters"
    async with (
        r2000_sim.serve_pty(r2000_tty, r2000_sim.SimOptions(antennas=(1, 2), rate=500)) as reader,
        llrp_sim.serve_tcp("127.0.0.1", 0, llrp_sim.SimOptions(antennas=(1, 2), rate=500)) as portal,
        dlt645_sim.serve_pty(meters_tty, dlt645_sim.SimOptions(meters=(METER,))) as meters,
        modbus_sim.serve_tcp("127.0.0.1", 0, {1: "energy-meter", 2: "energy-meter"}) as feeders,
    ):
        assert portal.port is not None
        gateway = Gateway(
            load_config(
                config(
                    tmp_path,
                    broker,
                    r2000=r2000_tty,
                    meters=meters_tty,
                    llrp_port=portal.port,
                    modbus_port=feeders.port,
                )
            )
        )
        async with (
            Subscriber(broker, f"edgegw/{GW}/#") as sub,
            running(gateway),
            CommandClient(gateway.config) as client,
        ):
            await until(
                "the command service subscribed",
                lambda: gateway.commands is not None and gateway.commands.connected_event.is_set(),
            )
            await until(
                "every device connected",
                lambda: all(r.state == "connected" for r in gateway.runners.values()),
            )
            yield Site(gateway, client, sub, reader, portal, meters, feeders)


async def test_each_drivers_commands_through_mqtt(tmp_path: Path, broker: Mosquitto) -> None:
    async with site(tmp_path, broker) as s:
        # uhf-r2000
        result = await s.send("door", "set_power", {"antennas": {"2": 21}})
        assert (result.status, result.data) == ("ok", {"power_dbm": {"1": 30, "2": 21}}), result
        assert s.r2000.powers[:2] == [30, 21]
        result = await s.send("door", "inventory", {"action": "stop"})
        assert (result.status, result.data) == ("ok", {"inventory": "stopped"}), result
        result = await s.send("door", "read")
        assert result.status == "ok" and result.data["reads"] > 0, result
        assert {t["antenna_name"] for t in result.data["tags"]} <= {"door-in", "door-out"}
        result = await s.send("door", "set_power", {"dbm": 40})
        assert result.status == "refused" and "less than or equal to 33" in (result.reason or ""), result

        # llrp
        result = await s.send("portal", "set_power", {"dbm": 25.5})
        assert (result.status, result.data) == (
            "ok",
            {"power_dbm": {"1": 25.5, "2": 25.5}, "power_index": 63},
        )
        assert s.llrp.transmit_power_cdbm[1] == s.llrp.transmit_power_cdbm[2] == 2550
        result = await s.send("portal", "set_power", {"dbm": 25.6})
        assert result.status == "refused" and "nearest: 25.50 or 25.75" in (result.reason or ""), result
        result = await s.send("portal", "stop")
        assert (result.status, result.data) == ("ok", {"rospec": "inactive", "changed": True}), result
        result = await s.send("portal", "start")
        assert (result.status, result.data) == ("ok", {"rospec": "active", "changed": True}), result

        # dlt645
        s.dlt645.pin(METER, "voltage_b", 231.4)
        result = await s.send("house-meter", "read", {"point": "02010200"})
        assert (result.status, result.data) == (
            "ok",
            {"values": {"voltage_b": 231.4}, "units": {"voltage_b": "V"}},
        )
        ts = datetime(2026, 12, 3, 8, 0, 0).timestamp()
        result = await s.send("house-meter", "time_sync", {"ts": ts})
        assert result.status == "ok", result
        await s.dlt645.wait_for(lambda st: st.time_syncs == 1)
        assert s.dlt645.clocks[METER] == datetime(2026, 12, 3, 8, 0, 0)

        # Every result is also an audit event through the buffer, refusals included.
        counts = {"door": 4, "portal": 4, "house-meter": 2}
        await s.sub.wait_until(lambda _: all(len(s.audited(d)) == n for d, n in counts.items()))
        assert [a["status"] for a in s.audited("door")] == ["ok", "ok", "ok", "refused"]
        assert [a["status"] for a in s.audited("portal")] == ["ok", "refused", "ok", "ok"]


async def test_modbus_polls_keep_going_while_commands_arrive_through_mqtt(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with site(tmp_path, broker) as s:
        stats = s.modbus.stats

        def polled(unit: int) -> int:
            return stats.functions[(unit, 3)] + stats.functions[(unit, 4)]

        start = {u: polled(u) for u in (1, 2)}
        sent = 0
        while min(polled(u) - start[u] for u in (1, 2)) < 20:
            result = await s.send("feeder-1", "write", {"point": "ct_primary_a", "value": 100 + sent % 100})
            assert result.status == "ok", result
            sent += 1
            assert sent < 5000, "the polls stopped while commands ran"
        assert stats.functions[(1, 6)] == sent
        assert s.modbus.value(1, "ct_primary_a") == 100 + (sent - 1) % 100
