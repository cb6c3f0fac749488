"""The ``sparkplug`` upstream against a real Mosquitto, judged by a Sparkplug host application written here
from the specification (Eclipse Sparkplug 3.0): it decodes every payload with protobuf through a descriptor
of its own (not the gateway's), and checks what a host relies on: NBIRTH before any device message, each
device's DBIRTH before its DDATA, ``seq`` continuing 0-255 from the NBIRTH, aliases that resolve to the
names the births gave, ``bdSeq`` of the NDEATH matching the NBIRTH's, rebirth on request, and
``is_historical`` on what was stored during an outage. And the bad input: malformed NCMDs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer
from gateway.delivery.sparkplug import DeviceMapping, SparkplugOptions, SparkplugUpstream, event_metrics
from gateway.delivery.upstream import UpstreamContext
from protocols.sparkplug import DataType
from tests.broker import Mosquitto
from tests.gateway.sparkplug_host import BOOLEAN, DOUBLE, INT64, STRING, Host, HostPayload
from tests.waiting import until

_groups = itertools.count()

# -- fixtures ------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def edge_node(
    tmp_path: Path, broker: Mosquitto, group: str, **extra: Any
) -> AsyncIterator[tuple[SparkplugUpstream, SqliteBuffer]]:
    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    options = SparkplugOptions.model_validate(
        {
            "name": "scada",
            "kind": "sparkplug",
            "url": broker.url,
            "group_id": group,
            "edge_node_id": "ss-110kv-east",
            "reconnect": {"initial_s": 0.05, "max_s": 0.2},
            **extra,
        }
    )
    await buffer.set_upstreams([("scada", options.route.matches)])
    upstream = SparkplugUpstream(options, buffer.cursor("scada"), UpstreamContext("gw"))
    task = asyncio.create_task(upstream.run())
    try:
        yield upstream, buffer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buffer.close()


def reading(device: str, ts: float, **values: object) -> Event:
    return Event(device, "meter.reading", ts, {"values": values, "units": {"voltage_a": "V"}})


def status(device: str, state: str) -> Event:
    return Event(device, "device.status", time.time(), {"state": state})


@pytest.fixture
def group() -> str:
    return f"substations-{next(_groups)}-{int(time.time() * 1000) % 100000}"


async def test_births_data_aliases_seq_and_deaths(tmp_path: Path, broker: Mosquitto, group: str) -> None:
    host = Host(broker, group).start()
    try:
        async with edge_node(tmp_path, broker, group) as (upstream, buffer):
            await until("NBIRTH", lambda: any(r.kind == "NBIRTH" for r in host.snapshot()))
            now = time.time()
            await buffer.append(
                [
                    status("meter-1", "connected"),
                    reading("meter-1", now, voltage_a=230.5, energy=1206, breaker_closed=True),
                    reading("meter-1", now + 1, voltage_a=231.0, energy=1207, breaker_closed=False),
                    Event("reader-1", "rfid.read", now + 2, {"epc": "E200", "antenna": 2, "rssi": -61.5}),
                    Event("bus-7", "gps.fix", now + 3, {"lat": 31.2, "lon": 121.4, "sats": [1, 2]}),
                    reading("meter-1", now + 4, voltage_a=229.0, energy=1208, breaker_closed=True),
                    status("meter-1", "disconnected"),
                ]
            )
            await until("everything acknowledged", lambda: buffer.stats().depth == 0)
            await until("DDEATH", lambda: any(r.kind == "DDEATH" for r in host.snapshot()))
        await until("NDEATH at the stop", lambda: host.deaths == [0])
    finally:
        host.stop()
    assert host.violations == []
    kinds = [(r.kind, r.device) for r in host.snapshot()]
    assert kinds == [
        ("NBIRTH", None),
        ("DBIRTH", "meter-1"),
        ("DDATA", "meter-1"),
        ("DBIRTH", "reader-1"),
        ("DBIRTH", "bus-7"),
        ("DDATA", "meter-1"),
        ("DDEATH", "meter-1"),
        ("NDEATH", None),
    ]
    assert host.values("meter-1", "voltage_a") == [(230.5, False), (231.0, False), (229.0, False)]
    assert host.values("meter-1", "energy") == [(1206, False), (1207, False), (1208, False)]
    assert host.values("meter-1", "breaker_closed") == [(True, False), (False, False), (True, False)]
    assert host.values("reader-1", "rfid.read/epc") == [("E200", False)]
    assert host.values("reader-1", "rfid.read/rssi") == [(-61.5, False)]
    assert host.values("bus-7", "gps.fix/sats") == [("[1,2]", False)]
    birth = next(r for r in host.snapshot() if r.kind == "DBIRTH" and r.device == "meter-1")
    assert {m.name: m.datatype for m in birth.payload.metrics} == {
        "voltage_a": DOUBLE,
        "energy": INT64,
        "breaker_closed": BOOLEAN,
    }
    data = next(r for r in host.snapshot() if r.kind == "DDATA")
    assert all(not m.name and m.alias for m in data.payload.metrics)  # aliases only after the birth
    # Every event but the first status (no metrics known yet: nothing to publish) acknowledged by the broker.
    assert upstream.stats().acked == 6


async def test_rebirth_on_ncmd_and_malformed_ncmds_are_counted(
    tmp_path: Path, broker: Mosquitto, group: str
) -> None:
    host = Host(broker, group).start()
    try:
        async with edge_node(tmp_path, broker, group) as (upstream, buffer):
            await until("NBIRTH", lambda: any(r.kind == "NBIRTH" for r in host.snapshot()))
            await buffer.append([reading("meter-1", time.time(), voltage_a=230.5)])
            await until("DBIRTH", lambda: any(r.kind == "DBIRTH" for r in host.snapshot()))
            host.command(b"\xff\xff not protobuf", "ss-110kv-east")
            bad = HostPayload()
            m = bad.metrics.add()
            m.name = "Node Control/Rebirth"
            m.datatype = STRING
            m.string_value = "yes"
            host.command(bad.SerializeToString(), "ss-110kv-east")
            await until("malformed NCMDs counted", lambda: upstream.counters["ncmd_malformed"] == 2)
            host.rebirth("ss-110kv-east")
            await until("the second NBIRTH", lambda: sum(r.kind == "NBIRTH" for r in host.snapshot()) == 2)
            await until("the second DBIRTH", lambda: sum(r.kind == "DBIRTH" for r in host.snapshot()) == 2)
            await buffer.append([reading("meter-1", time.time(), voltage_a=231.5)])
            await until("DDATA after the rebirth", lambda: any(r.kind == "DDATA" for r in host.snapshot()))
            assert upstream.bdseq == 0  # the same session: the same bdSeq
    finally:
        host.stop()
    assert host.violations == []
    assert [r.kind for r in host.snapshot()][:5] == ["NBIRTH", "DBIRTH", "NBIRTH", "DBIRTH", "DDATA"]
    assert host.values("meter-1", "voltage_a") == [(230.5, False), (230.5, False), (231.5, False)]


async def test_store_and_forward_after_an_outage_is_historical(
    tmp_path: Path, broker: Mosquitto, group: str
) -> None:
    host = Host(broker, group, persistent=True).start()  # misses nothing while the broker is away
    try:
        async with edge_node(tmp_path, broker, group) as (upstream, buffer):
            await until("NBIRTH", lambda: any(r.kind == "NBIRTH" for r in host.snapshot()))
            t0 = time.time()
            await buffer.append([reading("meter-1", t0, voltage_a=230.0)])
            await until("live data acknowledged", lambda: buffer.stats().depth == 0)
            broker.stop()
            await until("the outage seen", lambda: not upstream.stats().connected)
            await buffer.append([reading("meter-1", t0 + i, voltage_a=240.0 + i) for i in range(1, 4)])
            broker.start()
            await until(
                "reconnected and reborn", lambda: sum(r.kind == "NBIRTH" for r in host.snapshot()) == 2
            )
            await until("the backlog delivered", lambda: buffer.stats().depth == 0)
            await buffer.append([reading("meter-1", time.time(), voltage_a=250.0)])
            await until("live data again", lambda: (250.0, False) in host.values("meter-1", "voltage_a"))
            assert upstream.bdseq == 1
    finally:
        host.stop()
    assert host.violations == []
    values = host.values("meter-1", "voltage_a")
    # Live data; the new DBIRTH with the last known value; the stored events, historical; live data again.
    assert values == [
        (230.0, False),
        (230.0, False),
        (241.0, True),
        (242.0, True),
        (243.0, True),
        (250.0, False),
    ]
    nbirth = [r for r in host.snapshot() if r.kind == "NBIRTH"][-1]
    assert {m.name: m.long_value for m in nbirth.payload.metrics if m.name == "bdSeq"} == {"bdSeq": 1}


async def test_the_primary_host_state_is_respected(tmp_path: Path, broker: Mosquitto, group: str) -> None:
    host = Host(broker, group, host_id=f"scada-{group}").start()
    try:
        async with edge_node(tmp_path, broker, group, primary_host_id=f"scada-{group}") as (upstream, buffer):
            await buffer.append([reading("meter-1", time.time(), voltage_a=230.0)])
            await until("connected", lambda: upstream.stats().connected)
            assert host.snapshot() == [] and buffer.stats().depth == 1  # no birth before the host is online
            host.online(True)
            await until(
                "NBIRTH once the host is online", lambda: any(r.kind == "NBIRTH" for r in host.snapshot())
            )
            await until("data delivered", lambda: buffer.stats().depth == 0)
            host.online(False)
            await until("NDEATH when the host goes offline", lambda: host.deaths == [0])
            await buffer.append([reading("meter-1", time.time(), voltage_a=231.0)])
            host.online(True)
            await until("reborn with the next bdSeq", lambda: host.bdseq == 1)
            await until("data delivered again", lambda: buffer.stats().depth == 0)
    finally:
        host.stop()
    assert host.violations == []
    kinds = [r.kind for r in host.snapshot()]
    assert kinds == ["NBIRTH", "DBIRTH", "NDEATH", "NBIRTH", "DBIRTH", "DDATA", "NDEATH"]
    # What came while the host was away (before its first STATE too) is history once the node is born.
    assert host.values("meter-1", "voltage_a") == [(230.0, True), (230.0, False), (231.0, True)]


def test_the_mapping_rule_and_a_device_mapping() -> None:
    data = {
        "pgn": 65265,
        "name": "CCVS",
        "source": 0,
        "destination": None,
        "values": {"WheelBasedVehicleSpeed": 52.5, "ParkingBrakeSwitch": 0},
        "units": {"WheelBasedVehicleSpeed": "km/h"},
    }
    assert event_metrics("j1939.pgn", data) == [
        ("j1939.pgn/pgn", DataType.INT64, 65265),
        ("j1939.pgn/name", DataType.STRING, "CCVS"),
        ("j1939.pgn/source", DataType.INT64, 0),
        ("j1939.pgn/values/WheelBasedVehicleSpeed", DataType.DOUBLE, 52.5),
        ("j1939.pgn/values/ParkingBrakeSwitch", DataType.INT64, 0),
        ("j1939.pgn/units/WheelBasedVehicleSpeed", DataType.STRING, "km/h"),
    ]
    mapping = DeviceMapping(
        rename={"j1939.pgn/values/WheelBasedVehicleSpeed": "Vehicle/Speed"},
        exclude=["j1939.pgn/units/*", "*/pgn", "*/name", "*/source"],
        datatypes={"j1939.pgn/values/ParkingBrakeSwitch": "UInt8"},
    )
    assert event_metrics("j1939.pgn", data, mapping) == [
        ("Vehicle/Speed", DataType.DOUBLE, 52.5),
        ("j1939.pgn/values/ParkingBrakeSwitch", DataType.UINT8, 0),
    ]
    assert event_metrics("meter.reading", {"values": {"cod": 12.5}, "units": {"cod": "mg/L"}}) == [
        ("cod", DataType.DOUBLE, 12.5)
    ]
    report = {"cluster": 1026, "endpoint": 1, "attributes": {"measured_value": 21.5, "status": None}}
    assert event_metrics("zigbee.report", report) == [
        ("zigbee.report/cluster", DataType.INT64, 1026),
        ("zigbee.report/endpoint", DataType.INT64, 1),
        ("zigbee.report/attributes/measured_value", DataType.DOUBLE, 21.5),
    ]  # a null is no metric
    fix = {"lat": 31.2304, "lon": 121.4737, "fix": True, "sats": [3, 7, 9]}
    assert event_metrics("gps.fix", fix) == [
        ("gps.fix/lat", DataType.DOUBLE, 31.2304),
        ("gps.fix/lon", DataType.DOUBLE, 121.4737),
        ("gps.fix/fix", DataType.BOOLEAN, True),
        ("gps.fix/sats", DataType.STRING, "[3,7,9]"),
    ]


async def test_the_will_is_the_ndeath_and_a_drain_delivers_the_backlog(
    tmp_path: Path, broker: Mosquitto, group: str
) -> None:
    host = Host(broker, group).start()
    try:
        async with edge_node(tmp_path, broker, group) as (upstream, buffer):
            await until("NBIRTH", lambda: any(r.kind == "NBIRTH" for r in host.snapshot()))
            # Another client takes the edge node's MQTT session: the broker publishes the node's will.
            intruder = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id="edgegw-gw-ss-110kv-east",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            intruder.connect(broker.host, broker.port)
            intruder.loop_start()
            try:
                await until("the will: NDEATH", lambda: host.deaths == [0])
            finally:
                intruder.disconnect()
                intruder.loop_stop()
            await until("reborn", lambda: host.bdseq == 1)
            await buffer.append([reading("meter-1", time.time() + i, voltage_a=230.0 + i) for i in range(20)])
            assert await upstream.drain() is None
            assert upstream.stats().acked == 20  # every event acknowledged by the broker, acks handed on
            await until("the acks committed", lambda: buffer.stats().depth == 0)
    finally:
        host.stop()
    assert host.violations == []
    assert len(host.values("meter-1", "voltage_a")) == 20


async def test_bdseq_goes_on_after_a_restart_with_a_state_file(
    tmp_path: Path, broker: Mosquitto, group: str
) -> None:
    host = Host(broker, group).start()
    state = str(tmp_path / "scada.json")
    try:
        for expected in (0, 1):
            async with edge_node(tmp_path, broker, group, state_file=state):
                await until(f"NBIRTH with bdSeq {expected}", lambda: host.bdseq == expected)  # noqa: B023
            await until("NDEATH at the stop", lambda: len(host.deaths) == expected + 1)  # noqa: B023
    finally:
        host.stop()
    assert host.violations == [] and host.deaths == [0, 1]
