"""Position stamping (gateway/positions.py): ``position_from`` checked when the config loads (FILE:LINE and
the field), the stamped data's JSON exactly what encoding its mapping gives (lazy records kept lazy), fixes
too old left out and counted, and the device runners wiring it: a receiver's fixes, another device's events
stamped on their way into the queue, after its processor."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.event import EncodedData, Event, Record, encode, encode_data
from drivers.kinds import DEVICE_STATUS, GPS_FIX, RFID_READ
from gateway.backoff import Backoff
from gateway.config import ConfigError, load_config
from gateway.pipeline import EventQueue
from gateway.positions import POSITION_STALE, Fix, Positioned, Positions
from gateway.processors import RfidSmoothing
from gateway.processors.rfid import SmoothingOptions
from gateway.supervisor import DeviceRunner

HEAD = """gateway:
  id: bus-1
{gateway_extra}buffer: {{path: buffer.db}}
upstream: {{mqtt: {{url: "mqtt://127.0.0.1:1883"}}}}
devices:
  - {{name: gps, driver: gps, port: /dev/ttyUSB2, baudrate: 9600}}
  - name: door
    driver: uhf-r2000
    port: /dev/ttyUSB0
{door_extra}  - name: meter
    driver: dlt645
    port: /dev/ttyUSB1
    address: "000000000001"
"""


def config(tmp_path: Path, *, gateway_extra: str = "", door_extra: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEAD.format(gateway_extra=gateway_extra, door_extra=door_extra))
    return path


# ------------------------------------------------------------------------------------------ the config


def test_position_from_loads_for_a_device_and_for_the_gateway(tmp_path: Path) -> None:
    loaded = load_config(config(tmp_path, door_extra="    position_from: gps\n"))
    devices = {d.name: d for d in loaded.devices}
    assert devices["door"].position_from == "gps" and devices["meter"].position_from is None
    loaded = load_config(config(tmp_path, gateway_extra="  position_from: gps\n"))
    assert loaded.gateway.position_from == "gps"


@pytest.mark.parametrize(
    ("door_extra", "message"),
    [
        (
            "    position_from: gsp\n",
            "gateway.yaml:10: devices[1].position_from: no device named 'gsp' (gps ",
        ),
        ("    position_from: meter\n", "devices[1].position_from: device 'meter' is no gps receiver"),
        ("    position_from: [gps]\n", "devices[1].position_from: expected the name of a gps device"),
    ],
)
def test_a_bad_position_from_names_its_line_and_field(tmp_path: Path, door_extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(tmp_path, door_extra=door_extra))
    assert message in str(caught.value)


def test_a_receiver_cannot_take_positions_from_itself_nor_the_gateway_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        HEAD.format(gateway_extra="  position_from: door\n", door_extra="").replace(
            "baudrate: 9600}", "baudrate: 9600, position_from: gps}"
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = str(caught.value).splitlines()
    assert "gateway.yaml:3: gateway.position_from: device 'door' is no gps receiver" in problems[0]
    assert "gateway.yaml:7: devices[0].position_from: 'gps' is this device" in problems[1]


# ------------------------------------------------------------------------------------------ the records


class _Read(Record):
    """A lazy record, as the R2000 driver's."""

    __slots__ = ("_epc",)

    def __init__(self, epc: str) -> None:
        super().__init__()
        self._epc = epc

    def _build(self) -> dict[str, Any]:
        return {"epc": self._epc, "antenna": 1}


FIX = Fix(1000.0, {"lat": 30.1, "lon": -120.5, "time": "2026-12-03T09:00:00.000Z"}, b"")
FIX = Fix(FIX.ts, FIX.position, encode(FIX.position).encode())

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=8,
)


@given(data=st.dictionaries(st.text().filter(lambda k: k != "position"), _JSON, max_size=5))
def test_positioned_json_is_the_encoding_of_its_mapping(data: dict[str, Any]) -> None:
    for inner in (data, EncodedData(encode(data).encode())):
        stamped = Positioned(inner, FIX)
        expected = {**data, "position": dict(FIX.position)}
        assert stamped.json == encode(expected).encode()
        assert dict(stamped) == expected


def test_a_lazy_record_stays_lazy_and_a_nan_is_sanitised_as_any_data() -> None:
    read = _Read("3000")
    stamped = Positioned(read, FIX)
    assert stamped.json == b'{"epc":"3000","antenna":1,"position":' + FIX.json + b"}"
    assert read._decoded is not None  # the test record builds its mapping to encode; the json is reused
    nan = Positioned({"value": math.nan}, FIX)
    with pytest.raises(ValueError):
        _ = nan.json
    assert encode_data(nan.to_dict())[0] == b'{"value":null,"position":' + FIX.json + b"}"


# ------------------------------------------------------------------------------------------ the runners


def runner(name: str, queue: EventQueue, **kwargs: Any) -> DeviceRunner:
    def make() -> Any:
        raise AssertionError("not run")

    return DeviceRunner(name, make, queue, Backoff(), **kwargs)


def fix_data(lat: float, lon: float, time: str = "2026-12-03T09:00:00.000Z") -> dict[str, Any]:
    return {
        "lat": lat,
        "lon": lon,
        "alt_m": 5.0,
        "speed_kmh": 30.0,
        "course_deg": 90.0,
        "fix_quality": 1,
        "satellites": 8,
        "hdop": 0.9,
        "time": time,
        "reason": "first",
    }


def test_events_carry_the_latest_fix_within_its_age_and_others_are_counted() -> None:
    queue = EventQueue(100)
    positions = Positions()
    gps = runner("gps", queue)
    gps.on_fix = positions.receiver("gps", 5.0)
    door = runner("door", queue)
    door.stamp = positions.stamper("gps", door.count)

    door.emit(RFID_READ, {"epc": "01"}, ts=1000.0)  # no fix yet
    gps.emit(GPS_FIX, fix_data(30.1, 120.2), ts=1000.0)
    door.emit(RFID_READ, {"epc": "02"}, ts=1003.0)
    door.emit_many(RFID_READ, [_Read("03"), _Read("04")], ts=1004.5)
    door.emit(DEVICE_STATUS, {"state": "connected"}, ts=1004.0)
    gps.emit(GPS_FIX, fix_data(30.2, 120.3, "2026-12-03T09:00:10.000Z"), ts=1010.0)
    door.emit(RFID_READ, {"epc": "05"}, ts=1016.0)  # 6 s after the fix: too old
    door.emit_many(RFID_READ, [_Read("06")], ts=1015.0)

    events = [e for e in queue.take(100) if e.device == "door"]
    stamped = {e.data["epc"]: e.data.get("position") for e in events if e.kind == RFID_READ}
    first = {"lat": 30.1, "lon": 120.2, "time": "2026-12-03T09:00:00.000Z"}
    second = {"lat": 30.2, "lon": 120.3, "time": "2026-12-03T09:00:10.000Z"}
    assert stamped == {"01": None, "02": first, "03": first, "04": first, "05": None, "06": second}
    status = next(e for e in events if e.kind == DEVICE_STATUS)
    assert "position" not in status.data
    assert door.counters[POSITION_STALE] == 2
    assert all(isinstance(e.data, Positioned) for e in events if e.data.get("position"))


def test_a_processors_events_are_stamped_and_it_reads_the_data_as_it_was() -> None:
    queue = EventQueue(100)
    positions = Positions()
    positions.receiver("gps", 10.0)
    positions.record(Event("gps", GPS_FIX, 1000.0, fix_data(30.1, 120.2)))
    smoothing = RfidSmoothing("door", SmoothingOptions.model_validate({}))
    door = runner("door", queue, processor=smoothing)
    door.stamp = positions.stamper("gps", door.count)
    door.emit_many(RFID_READ, [{"epc": "AB", "antenna": 1, "rssi_dbm": -60}], ts=1001.0)
    (arrived,) = [e for e in queue.take(100) if e.kind == "rfid.arrived"]
    assert arrived.data["epc"] == "AB" and arrived.data["position"]["lat"] == 30.1
    assert encode_data(dict(arrived.data))[0] == arrived.data.json  # type: ignore[attr-defined]


def test_a_receivers_unreported_fixes_stamp_too() -> None:
    queue = EventQueue(100)
    positions = Positions()
    gps = runner("gps", queue)
    gps.on_fix = positions.receiver("gps", 5.0)
    door = runner("door", queue)
    door.stamp = positions.stamper("gps", door.count)
    gps.emit(GPS_FIX, fix_data(30.1, 120.2), ts=1000.0)
    gps.share_fix(fix_data(30.3, 120.4, "2026-12-03T09:00:04.000Z"), 1004.0)  # held by its reporting
    door.emit(RFID_READ, {"epc": "07"}, ts=1004.2)
    events = queue.take(100)
    (read,) = [e for e in events if e.device == "door"]
    assert read.data["position"] == {"lat": 30.3, "lon": 120.4, "time": "2026-12-03T09:00:04.000Z"}
    assert [e.kind for e in events if e.device == "gps"] == [GPS_FIX]  # sharing a fix emits nothing
