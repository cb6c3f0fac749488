"""The README's example messages are what goes on the wire.

Every fenced ``json`` block of README.md is an upstream message as a subscriber receives it. One gateway
(``edgegw run`` as a child process) runs the devices those examples name, each against its simulator on a real
pty or TCP port, into a private mosquitto: ``reader-1`` (R2000 on a pty, with tag smoothing and the raw reads
forwarded), ``gantry-north`` (LLRP on TCP), ``meter-3`` (Modbus TCP) and ``meter-7`` (DL/T 645 on a pty),
``cabinet-1`` and ``gate-1`` (ble, replaying config/examples/ble-adverts.jsonl), ``gps-1`` (an NMEA receiver
on a pty), ``zb-1`` (an XBee ZigBee coordinator on a pty with a thermometer, a door contact and a
sensor that joins once joining is open), ``bus-1`` and ``body-1`` (two ``can`` devices sharing the slcan
simulator's pty: a J1939 tap, and the special-vehicle DBC decoding a body controller the simulator plays
beside its city bus); once they all report, the test sends ``meter-3`` a ``read``
command (its record: ``command.request`` and ``command.result``). What arrives, plus what the
buffer still holds after the stop (the stop's own events), is compared with the examples. An example stands
for the messages of its device and kind (of its ``state`` from any device, for ``device.status``); some must
have arrived, and each of them has the example's keys, at every level, with the example's JSON types: an
integer in an example means the field is always an integer, a number with a fraction means a number that may
happen to be whole (a mean of integers may be -60), and a reading's ``values`` and ``units`` hold a subset of
the example's points (those due in that poll). At least one of them matches the example exactly (every key; a
fraction where it shows one). Every kind (and status state) that arrived must have an example, and so must
every kind of the README's table of kinds."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cantools
import pytest

from firmware_sim import can as can_sim
from firmware_sim import dlt645 as dlt645_sim
from firmware_sim import gps as gps_sim
from firmware_sim import llrp as llrp_sim
from firmware_sim import modbus as modbus_sim
from firmware_sim import r2000 as r2000_sim
from firmware_sim import xbee as xbee_sim
from firmware_sim.modbus import SimPoint
from gateway.commands.client import CommandClient
from gateway.config import load_config
from protocols import modbus as mb
from protocols.epc import encode_epc, epc_uri
from protocols.modbus import ByteOrder, DataType, Table
from tests.broker import Mosquitto
from tests.e2e.harness import Collector, GatewayProcess, Received, write_config

README = Path(__file__).parents[2] / "README.md"
BLE_CAPTURE = Path(__file__).parents[2] / "config" / "examples" / "ble-adverts.jsonl"
VEHICLE_DBC = Path(__file__).parents[2] / "config" / "examples" / "special-vehicle.dbc"
"""body-1 decodes the truck's body controller with the shipped DBC (the simulator plays it)."""
"""The ble devices (a thermometer, a beacon) replay the shipped capture of published test vectors."""
MESSAGE_KEYS = {"id", "seq", "device", "kind", "ts", "data"}
WAIT_S = 60.0

MAPS = frozenset({".data.values", ".data.units"})
"""Objects keyed by point name: a reading holds the points that had something to report, so a key of the
example may be missing from one message (never one that is not in the example)."""

Key = tuple[str, str, str | None]
"""What an example stands for: (device, kind, state). A ``device.status`` example stands for that state of
every device (every device's supervisor says the same thing); its device is ""."""


# -- the README's examples ---------------------------------------------------------------------------------


def json_blocks(text: str) -> Iterator[tuple[int, Any]]:
    """(line, value) of every JSON value in the fenced ``json`` blocks of ``text``."""
    for match in re.finditer(r"^```json[ \t]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        body = match.group(1)
        line = text.count("\n", 0, match.start(1)) + 1
        decoder = json.JSONDecoder()
        at = 0
        while True:
            while at < len(body) and body[at].isspace():
                at += 1
            if at == len(body):
                break
            try:
                value, end = decoder.raw_decode(body, at)
            except json.JSONDecodeError as err:
                raise AssertionError(f"README.md:{line + err.lineno - 1}: not JSON: {err.msg}") from None
            yield line + body.count("\n", 0, at), value
            at = end


def readme_examples() -> list[tuple[int, dict[str, Any]]]:
    return list(json_blocks(README.read_text()))


def key_of(message: dict[str, Any]) -> Key:
    if message["kind"] == "device.status":
        return "", message["kind"], message["data"].get("state")
    return message["device"], message["kind"], None


def table_kinds(text: str) -> set[str]:
    """The kinds listed in the README's table of event kinds (rows starting with a backquoted kind)."""
    return set(re.findall(r"^\| `([a-z][a-z0-9]*\.[a-z0-9_.]+)` \|", text, re.MULTILINE))


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def mismatches(example: object, real: object, path: str = "", *, exact: bool = False) -> list[str]:
    """How ``real`` differs from ``example`` in keys and JSON types (empty: it has the example's shape).
    Keys of the example may be missing from the objects at :data:`MAPS`, and a number may happen to be
    whole, unless ``exact``."""
    want, got = type_name(example), type_name(real)
    if want == "number" and got == "integer" and not exact:
        return []
    if want != got:
        return [f"{path or '.'}: {got} {real!r}, the README shows {want} {example!r}"]
    if isinstance(example, dict):
        assert isinstance(real, dict)
        found = [f"{path}.{k}: missing" for k in example if k not in real and (exact or path not in MAPS)]
        found += [f"{path}.{k}: not in the README ({real[k]!r})" for k in real if k not in example]
        for k in example.keys() & real.keys():
            found += mismatches(example[k], real[k], f"{path}.{k}", exact=exact)
        return found
    if isinstance(example, list):
        assert isinstance(real, list)
        if not example:
            return [f"{path}: the README shows an empty list"] if real else []
        found = []
        for i, item in enumerate(real):
            found += mismatches(example[0], item, f"{path}[{i}]", exact=exact)
        return found
    return []


def test_every_json_block_is_an_upstream_message() -> None:
    examples = readme_examples()
    assert examples, "README.md has no JSON example"
    for line, example in examples:
        assert isinstance(example, dict) and example.keys() == MESSAGE_KEYS, (
            f"README.md:{line}: an upstream message has exactly the keys {sorted(MESSAGE_KEYS)}"
        )
        gateway, _, seq = example["id"].rpartition(":")
        assert gateway and seq == str(example["seq"]), f"README.md:{line}: id is <gateway id>:<seq>"
        assert isinstance(example["ts"], float), f"README.md:{line}: ts is epoch seconds with a fraction"


def test_every_kind_of_the_table_has_an_example() -> None:
    kinds = table_kinds(README.read_text())
    assert {"rfid.read", "meter.reading", "device.status"} <= kinds, "the table of event kinds moved"
    shown = {example["kind"] for _, example in readme_examples()}
    assert kinds - shown == set(), "kinds of the table without an example message"
    assert shown - kinds == set(), "example messages of kinds the table does not list"


def test_example_epcs_carry_the_uri_they_decode_to() -> None:
    """An example with an ``epc`` shows the ``epc_uri`` that protocols/epc.py gives it, or none if none."""
    for line, example in readme_examples():
        data = example["data"]
        if "epc" in data:
            assert data.get("epc_uri") == epc_uri(data["epc"]), f"README.md:{line}: {data['epc']}"


def test_a_modbus_strings_length_is_documented_as_what_it_counts() -> None:
    """``length`` of a Modbus string point counts characters, two per register (the config's meaning)."""
    said = re.search(r"string \(with `length` in (\w+)", README.read_text())
    assert said is not None, "README.md no longer says what a string's length counts"
    assert mb.register_count(DataType.STRING, 3) == 2  # characters, two per register: 3 need 2 registers
    words = mb.encode("ABC", DataType.STRING, length=3)
    assert mb.decode(words, DataType.STRING, length=3) == "ABC"
    assert said.group(1) == "characters"


# -- the site that produces them ---------------------------------------------------------------------------


# The tags: the README's own example EPCs first, then more of the same GS1 company prefix (SGTIN-96, filter
# 3: retail items), enough that some tag is heard more strongly on the other antenna and moves zone.
EXTRA_TAGS = tuple(encode_epc(f"urn:epc:tag:sgtin-96:3.0614141.812345.{n}") for n in range(7000, 7006))

METER_3_POINTS = (
    # (config, simulated value): every type a Modbus point can have, and a scaled integer.
    ({"name": "voltage_a", "address": 0, "type": "float32", "unit": "V"}, 230.1),
    ({"name": "energy_import", "address": 40, "type": "float32", "unit": "kWh"}, 1206.42),
    ({"name": "pulses", "address": 50, "type": "uint32"}, 120584),
    ({"name": "temperature", "address": 60, "type": "int16", "scale": 0.1, "unit": "°C"}, 31.5),
    ({"name": "serial_number", "address": 64, "type": "string", "length": 10}, "EM00000003"),
    ({"name": "breaker_closed", "table": "discrete", "address": 0}, True),
    ({"name": "alarm", "address": 100, "type": "bit", "bit": 3}, False),
)
ZIGBEE_SENSORS = (
    xbee_sim.SimSensor(0x0013A20041A7B200, "climate", name="plant-room-1"),
    xbee_sim.SimSensor(0x0013A20041A7B201, "door", name="door-plant-room"),
    xbee_sim.SimSensor(0x0013A20041A7B2FF, "climate", joined=False, name="plant-room-2"),
)
"""zb-1's network: a thermometer and a door contact on it, a thermometer that joins when joining opens."""
METER_7 = "000102030425"
METER_7_POINTS = ("energy_active_forward", "voltage_a", "voltage_b", "voltage_c", "current_a", "power_active",
                  "frequency")  # fmt: skip


def sim_point(config: dict[str, Any], value: float | int | bool | str) -> SimPoint:
    dtype = DataType(config.get("type", "bool"))
    return SimPoint(
        config["name"],
        Table(config.get("table", "holding")),
        config["address"],
        dtype,
        lambda _t, _unit: value,
        ByteOrder.CDAB,
        length=config.get("length"),
        bit=config.get("bit"),
        scale=config.get("scale", 1.0),
    )


def cargo_body(story_s: float) -> bytes:
    """The body controller's CargoBody message (source 0x21) at ``story_s``, encoded by cantools."""
    database = cantools.database.load_file(str(VEHICLE_DBC))
    assert isinstance(database, cantools.database.can.Database)
    loading = int(story_s) % 20 < 8
    return bytes(
        database.get_message_by_name("CargoBody").encode(
            {"RearDoorState": int(loading), "SideHatchState": 0, "LiftArmPosition": 37.5 if loading else 0.0,
             "BodyInterlockActive": int(loading), "SpillSensorWet": 0,
             "DrumsOnBoard": 10 + int(story_s) // 20 % 8}
        )
    )  # fmt: skip


@dataclass
class Sims:
    reader: r2000_sim.R2000Simulator
    gantry: llrp_sim.LlrpSimulator
    meters: modbus_sim.ModbusSimulator
    revenue: dlt645_sim.Dlt645Simulator
    receiver: gps_sim.GpsSimulator
    coordinator: xbee_sim.XBeeSimulator
    can_bus: can_sim.SlcanSimulator


@asynccontextmanager
async def simulators(tmp_path: Path, epcs: tuple[bytes, ...]) -> AsyncIterator[Sims]:
    async with AsyncExitStack() as stack:
        reader = await stack.enter_async_context(
            r2000_sim.serve_pty(
                tmp_path / "ttyReader",
                r2000_sim.SimOptions(epcs=epcs, rate=60.0, seed=3, antennas=(1, 2), rssi_spread=8.0),
            )
        )
        gantry = await stack.enter_async_context(
            llrp_sim.serve_tcp("127.0.0.1", 0, llrp_sim.SimOptions(epcs=epcs, rate=20.0, seed=4))
        )
        meters = await stack.enter_async_context(
            modbus_sim.serve_tcp("127.0.0.1", 0, {3: [sim_point(c, v) for c, v in METER_3_POINTS]})
        )
        revenue = await stack.enter_async_context(
            dlt645_sim.serve_pty(tmp_path / "ttyRevenue", dlt645_sim.SimOptions(meters=(METER_7,)))
        )
        receiver = await stack.enter_async_context(
            gps_sim.serve_pty(tmp_path / "ttyGPS", gps_sim.SimOptions(epoch_s=0.2, speedup=10.0))
        )
        coordinator = await stack.enter_async_context(
            xbee_sim.serve_pty(
                tmp_path / "ttyZigbee",
                xbee_sim.SimOptions(sensors=ZIGBEE_SENSORS, interval_s=0.5, alarm_every_s=1.0),
            )
        )
        can_bus = await stack.enter_async_context(
            can_sim.serve_pty(
                tmp_path / "ttyCAN",
                can_sim.SimOptions(
                    time_scale=10, extra=(can_sim.PeriodicFrame(0.5, 0x0CFF0121, cargo_body),)
                ),
            )
        )
        yield Sims(reader, gantry, meters, revenue, receiver, coordinator, can_bus)


def site(tmp_path: Path, broker: Mosquitto, gateway_id: str, sims: Sims) -> Path:
    points = ",\n".join(f"      {json.dumps(config)}" for config, _ in METER_3_POINTS)
    return write_config(
        tmp_path / "gateway.yaml",
        gateway_id=gateway_id,
        buffer=tmp_path / "buffer.db",
        url=broker.url,
        extra_mqtt="    commands: {enabled: true}\n",
        devices=f"""  - name: reader-1
    driver: uhf-r2000
    port: {tmp_path / "ttyReader"}
    antennas: {{1: lane1-in, 2: lane1-out}}
    reply_timeout_s: 0.5
    read_timeout_s: 1.0
    smoothing:
      depart_after_s: 1
      lanes: [lane1-in]
      flow_period_s: 2
      flow_grace_s: 0.5
      move_holdoff_s: 0.3
      forward_reads: true
  - name: gantry-north
    driver: llrp
    host: 127.0.0.1
    port: {sims.gantry.port}
    antennas: {{1: lane1-in, 2: lane1-out, 3: lane2-in, 4: lane2-out}}
    report_every_n_tags: 5
  - name: meter-3
    driver: modbus
    host: 127.0.0.1
    tcp_port: {sims.meters.port}
    unit_id: 3
    poll_s: 0.5
    byte_order: CDAB
    commands: [read]
    points: [
{points}]
  - name: meter-7
    driver: dlt645
    port: {tmp_path / "ttyRevenue"}
    parity: N
    address: "{METER_7}"
    points: {json.dumps(list(METER_7_POINTS))}
    poll_s: 0.5
  - name: cabinet-1
    driver: ble
    replay: {BLE_CAPTURE}
    replay_speed: 0
    addresses: ["A4:C1:38:0B:7E:01"]
  - name: gate-1
    driver: ble
    replay: {BLE_CAPTURE}
    replay_speed: 0
    formats: [ibeacon]
  - name: gps-1
    driver: gps
    port: {tmp_path / "ttyGPS"}
    every_m: 50
  - name: zb-1
    driver: xbee
    port: {tmp_path / "ttyZigbee"}
    permit_join_s: 120
    sensors: {json.dumps({f"{s.ieee:016x}": s.name for s in ZIGBEE_SENSORS})}
  - name: bus-1
    driver: can
    interface: slcan
    channel: {tmp_path / "ttyCAN"}
    open_delay_s: 0
    j1939: true
    filters: [{{id: 0x00FEF100, mask: 0x00FFFF00}}, {{id: 0x00FECA00, mask: 0x00FFFF00}},
              {{id: 0x00ECFF00, mask: 0x00FFFF00}}, {{id: 0x00EBFF00, mask: 0x00FFFF00}}]
  - name: body-1
    driver: can
    interface: slcan
    channel: {tmp_path / "ttyCAN"}
    open_delay_s: 0
    dbc: {VEHICLE_DBC}
    raw_frames: true
    filters: [{{id: 0x00FF0100, mask: 0x00FFFF00}}]
    report: {{default: {{}}}}
""",
    )


async def backlog(config: Path) -> list[dict[str, Any]]:
    """What the stopped gateway's buffer still holds, as the payloads it would publish."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "buffer", "export", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.splitlines()]


ANTENNA_EVENT: Key = ("", "device.status", "antenna_disconnected")
SILENCE: tuple[Key, ...] = (("reader-1", "rfid.departed", None), ("", "device.status", "disconnected"))
COMMAND: tuple[Key, ...] = (("meter-3", "command.request", None), ("meter-3", "command.result", None))
"""The record of the command the test sends once the site runs."""
LATER = {ANTENNA_EVENT, *SILENCE, *COMMAND, ("", "device.status", "stopped")}
"""What the test makes happen after everything else has arrived (and what the stop sends)."""


async def arrival(collector: Collector, gateway: GatewayProcess, keys: Sequence[Key]) -> None:
    """Wait until a message of each of ``keys`` has arrived; on a timeout, say what the gateway logged."""

    def seen(r: Received) -> bool:
        arrived = {key_of(m) for m in r.by_id.values()}
        return all(key in arrived for key in keys)

    try:
        await collector.wait_for(f"messages of {list(keys)}", seen, WAIT_S)
    except AssertionError as err:
        raise AssertionError(f"{err}\ngateway log (end):\n{gateway.log()[-3000:]}") from None


@pytest.mark.timeout(240)
async def test_the_examples_are_what_the_simulators_produce(tmp_path: Path, broker: Mosquitto) -> None:
    examples = readme_examples()
    wanted: dict[Key, list[tuple[int, dict[str, Any]]]] = {}
    for line, example in examples:
        wanted.setdefault(key_of(example), []).append((line, example))
    devices = {"reader-1", "gantry-north", "meter-3", "meter-7", "cabinet-1", "gate-1", "gps-1", "zb-1",
               "bus-1", "body-1"}  # fmt: skip
    assert {device for device, _, _ in wanted} <= {"", *devices}, "an example of a device not run here"
    epcs = tuple(bytes.fromhex(e["data"]["epc"]) for _, e in examples if "epc" in e["data"])
    epcs = tuple(dict.fromkeys(epcs + EXTRA_TAGS))

    gateway_id = "e2e-readme"
    collector = Collector(broker.host, broker.port, "edgegw", gateway_id, client_id=f"sub-{gateway_id}")
    assert await asyncio.to_thread(collector.connected.wait, 10)
    async with simulators(tmp_path, epcs) as sims:
        config = site(tmp_path, broker, gateway_id, sims)
        gateway = GatewayProcess(config)
        await gateway.start()
        try:
            running = [key for key in wanted if key not in LATER]
            await arrival(collector, gateway, running)
            async with CommandClient(load_config(config)) as client:
                result = await client.send("meter-3", "read", {"points": ["voltage_a"]})
            assert result.status == "ok", result
            await arrival(collector, gateway, COMMAND)
            await sims.gantry.antenna_event(4, connected=False)
            await arrival(collector, gateway, [ANTENNA_EVENT])
            sims.reader.silence(2.5)  # the tags depart; the reader is disconnected, then back
            await arrival(collector, gateway, SILENCE)
            assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
        finally:
            await gateway.kill()
    try:
        await collector.wait_for("offline", lambda r: r.statuses[-1:] == ["offline"])
    finally:
        collector.close()
    received = collector.snapshot()
    messages = dict(received.by_id)
    for message in await backlog(config):  # the stop's own events, if they were not published at the stop
        messages.setdefault(message["id"], message)

    by_key: dict[Key, list[dict[str, Any]]] = {}
    for message in sorted(messages.values(), key=lambda m: m["seq"]):
        by_key.setdefault(key_of(message), []).append(message)
    problems: list[str] = []
    for key, shown in wanted.items():
        real = by_key.get(key, [])
        if not real:
            problems.append(f"README.md:{shown[0][0]}: no {key} arrived")
        for line, example in shown:
            for message in real:
                found = mismatches(example, message)
                if found:
                    problems.append(f"README.md:{line}: {key} seq {message['seq']}: " + "; ".join(found))
                    break  # the first message that differs says enough
            closest = min((mismatches(example, message, exact=True) for message in real), key=len, default=[])
            if closest:
                problems.append(
                    f"README.md:{line}: no {key} matches exactly; the closest: " + "; ".join(closest)
                )
    documented = {(kind, state) for _, kind, state in wanted}
    for (_, kind, state), real in by_key.items():
        if (kind, state) not in documented:
            problems.append(
                f"{kind} {state or ''} arrived; the README shows no example: {json.dumps(real[-1])}"
            )
    assert problems == [], "\n".join(problems)
