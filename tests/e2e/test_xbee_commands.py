"""The xbee driver's commands end to end: a gateway run in this process with a ZigBee coordinator (the XBee
simulator on a real pty), a private mosquitto, requests sent through the broker by
``gateway.commands.client`` and results taken from it: joining opened on request lets the waiting sensor
join (its zigbee.joined arrives upstream), a sensor is read now, refusals and failures come back as such,
and every result is audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.kinds import COMMAND_RESULT, ZIGBEE_JOINED, ZIGBEE_REPORT
from firmware_sim import xbee as xbee_sim
from gateway.app import Gateway
from gateway.commands.client import CommandClient
from gateway.config import load_config
from tests.broker import Mosquitto, Subscriber
from tests.gateway.ops_helpers import running
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

GW = "gw-zigbee"
CLIMATE, LATE = 0x0013A20041A7B200, 0x0013A20041A7B2FF


def config(tmp_path: Path, broker: Mosquitto, tty: Path) -> Path:
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
supervisor:
  backoff_initial_s: 0.05
  backoff_max_s: 0.5
metrics:
  listen: "127.0.0.1:0"
devices:
  - name: zb
    driver: xbee
    port: {tty}
    sensors: {{"{CLIMATE:016x}": boiler-room, "{LATE:016x}": pump-room}}
    read_timeout_s: 5
    commands: [permit_join, read_attribute]
"""
    )
    return path


def published(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    topic = f"edgegw/{GW}/zb/{kind}"
    return [json.loads(m.payload)["data"] for m in sub.snapshot() if m.topic == topic]


async def test_xbee_commands_through_mqtt(tmp_path: Path, broker: Mosquitto) -> None:
    tty = tmp_path / "ttyZigbee"
    async with xbee_sim.serve_pty(tty, xbee_sim.SimOptions(interval_s=1.0, alarm_every_s=0)) as coordinator:
        gateway = Gateway(load_config(config(tmp_path, broker, tty)))
        async with (
            Subscriber(broker, f"edgegw/{GW}/#") as sub,
            running(gateway),
            CommandClient(gateway.config) as client,
        ):
            await until(
                "the command service subscribed",
                lambda: gateway.commands is not None and gateway.commands.connected_event.is_set(),
            )
            await until("the coordinator connected", lambda: gateway.runners["zb"].state == "connected")

            result = await client.send("zb", "permit_join", {"seconds": 90}, timeout_s=20)
            assert (result.status, result.data) == ("ok", {"seconds": 90}), result
            await sub.wait_until(
                lambda _: any(j["sensor"] == "pump-room" for j in published(sub, ZIGBEE_JOINED))
            )
            assert coordinator.stats.at_commands["NJ"] == 1 and coordinator.settings["NJ"] == b"\x5a"

            args = {"sensor": "boiler-room", "cluster": 0x0405, "attributes": [0, 3]}
            result = await client.send("zb", "read_attribute", args, timeout_s=20)
            assert result.status == "ok", result
            assert result.data["units"] == {"humidity": "%"} and 30 <= result.data["values"]["humidity"] <= 70
            assert result.data["errors"] == {"0x0003": "unsupported_attribute"}

            result = await client.send("zb", "read_attribute", {**args, "sensor": "attic"}, timeout_s=20)
            assert result.status == "refused" and "attic" in (result.reason or ""), result
            result = await client.send("zb", "permit_join", {"seconds": 300}, timeout_s=20)
            assert result.status == "refused", result  # beyond 254 s: the args model says no

            await sub.wait_until(lambda _: len(published(sub, COMMAND_RESULT)) == 4)
            assert [a["status"] for a in published(sub, COMMAND_RESULT)] == ["ok", "ok", "refused", "refused"]
            humidity = [r for r in published(sub, ZIGBEE_REPORT) if r["name"] == "humidity"]
            assert humidity and all(r["sensor"] in ("boiler-room", "pump-room") for r in humidity)
