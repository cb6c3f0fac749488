"""BLE advertisement codecs: the published vectors, the field's parsers as oracles (bthome-ble, ruuvitag-ble,
both MIT, run here as strangers would run them against the same bytes), round trips and damaged input
(hypothesis): a decoder either decodes or raises AdvertError with a reason, never anything else."""

from __future__ import annotations

import json
import math
import string
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocols import ble_adverts as ba
from protocols.ble_adverts import (
    BTHOME_OBJECTS,
    BTHOME_UUID,
    EDDYSTONE_TLM,
    EDDYSTONE_UID,
    EDDYSTONE_UUID,
    IBEACON,
    RUUVI_RAWV2,
    Advert,
    AdvertError,
    advert_from_json,
    advert_to_json,
    decode,
    decode_bthome,
    decode_eddystone,
    decode_ibeacon,
    decode_ruuvi,
    encode_bthome,
    encode_eddystone_url,
    encrypt_bthome,
)
from protocols.errors import DecodeError, EncodeError

MAC = bytes.fromhex("5448E68F80A5")
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")

# -- BTHome v2 ---------------------------------------------------------------------------------------------


def test_bthome_format_example() -> None:
    # https://bthome.io/format: 020106 0B094449592D73656E736F72 0A16D2FC4002C40903BF13
    decoded = decode_bthome(bytes.fromhex("4002c40903bf13"))
    assert decoded.values == {"temperature": 25.0, "humidity": 50.55}
    assert decoded.units == {"temperature": "°C", "humidity": "%"}


@pytest.mark.parametrize(
    ("hex_object", "name", "value", "unit"),
    [  # the examples of bthome.io/format's object table
        ("0161", "battery", 97, "%"),
        ("12e204", "co2", 1250, "ppm"),
        ("08ca06", "dew_point", 17.38, "°C"),
        ("0a138a14", "energy", 1346.067, "kWh"),
        ("03bf13", "humidity", 50.55, "%"),
        ("2e23", "humidity", 35, "%"),
        ("05138a14", "illuminance", 13460.67, "lx"),
        ("065e1f", "mass", 80.3, "kg"),
        ("14020c", "moisture", 30.74, "%"),
        ("0b021b00", "power", 69.14, "W"),
        ("04138a01", "pressure", 1008.83, "hPa"),
        ("434e34", "current", 13.39, "A"),
        ("424e3400", "duration", 13.39, "s"),
        ("400c00", "distance", 12, "mm"),
        ("414e00", "distance", 7.8, "m"),
    ],
)
def test_bthome_object_examples(hex_object: str, name: str, value: float, unit: str) -> None:
    decoded = decode_bthome(bytes.fromhex("40" + hex_object))
    assert decoded.values == {name: value} and decoded.units == {name: unit}


def test_bthome_encryption_example_and_bthome_ble_agrees() -> None:
    # https://bthome.io/encryption: MAC 54:48:E6:8F:80:A5, key 231d..., counter 00112233, 25.06 °C, 50.55 %
    sealed = encrypt_bthome(bytes.fromhex("4002ca0903bf13"), mac=MAC, bindkey=KEY, counter=0x33221100)
    assert sealed.hex() == "41a47266c95f730011223378237214"
    assert decode_bthome(sealed, mac=MAC, bindkey=KEY).values == {
        "encryption_counter": 0x33221100,
        "temperature": 25.06,
        "humidity": 50.55,
    }
    assert _bthome_ble(sealed, KEY) == {"temperature": 25.06, "humidity": 50.55}
    with pytest.raises(AdvertError) as no_key:
        decode_bthome(sealed, mac=MAC)
    assert no_key.value.reason == ba.BTHOME_NO_KEY
    with pytest.raises(AdvertError) as wrong:
        decode_bthome(sealed, mac=MAC, bindkey=bytes(16))
    assert wrong.value.reason == ba.BTHOME_DECRYPT_FAILED
    with pytest.raises(AdvertError) as tampered:
        decode_bthome(sealed[:-1] + bytes([sealed[-1] ^ 1]), mac=MAC, bindkey=KEY)
    assert tampered.value.reason == ba.BTHOME_DECRYPT_FAILED


def _bthome_ble(service_data: bytes, bindkey: bytes | None = None) -> dict[str, float]:
    """What bthome-ble (the field's parser, in Home Assistant) makes of the same service data."""
    from bleak.backends.device import BLEDevice  # noqa: PLC0415
    from bthome_ble import BTHomeBluetoothDeviceData  # noqa: PLC0415
    from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415

    info = BluetoothServiceInfoBleak(
        name="test",
        address="54:48:E6:8F:80:A5",
        rssi=-60,
        manufacturer_data={},
        service_data={BTHOME_UUID: service_data},
        service_uuids=[BTHOME_UUID],
        source="local",
        device=BLEDevice("54:48:E6:8F:80:A5", "test", None),
        advertisement=None,
        connectable=False,
        time=time.monotonic(),
        tx_power=None,
    )
    update = BTHomeBluetoothDeviceData(bindkey=bindkey).update(info)
    return {
        str(key.key): value.native_value
        for key, value in update.entity_values.items()
        if key.key != "signal_strength" and isinstance(value.native_value, int | float)
    }


NUMERIC = sorted(
    object_id
    for object_id, obj in BTHOME_OBJECTS.items()
    if obj.kind == 0 and object_id not in (0x00,)  # the packet id: bthome-ble reports it only in state
)


@st.composite
def numeric_objects(draw: st.DrawFn) -> list[tuple[int, int]]:
    ids = sorted(
        draw(
            st.lists(
                st.sampled_from(NUMERIC),
                min_size=1,
                max_size=6,
                unique_by=lambda i: BTHOME_OBJECTS[i].name,  # bthome-ble keeps one of two same-named objects
            )
        )
    )
    objects = []
    for object_id in ids:
        obj = BTHOME_OBJECTS[object_id]
        bits = obj.size * 8
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if obj.signed else (0, (1 << bits) - 1)
        objects.append((object_id, draw(st.integers(low, high))))
    return objects


@given(numeric_objects())
@settings(max_examples=200, deadline=None)
def test_bthome_round_trip_and_bthome_ble_reads_the_same_numbers(objects: list[tuple[int, int]]) -> None:
    data = encode_bthome(objects)
    decoded = decode_bthome(data)
    assert decoded.problems == []
    assert len(decoded.values) == len(objects)
    for (object_id, raw), value in zip(objects, decoded.values.values(), strict=True):
        obj = BTHOME_OBJECTS[object_id]
        assert math.isclose(value, raw * obj.factor, rel_tol=1e-9, abs_tol=10 ** -ba._DECIMALS[object_id])
    theirs = sorted(_bthome_ble(data).values())
    mine = sorted(decoded.values.values())
    assert len(theirs) == len(mine)
    for a, b in zip(theirs, mine, strict=True):
        assert math.isclose(a, b, abs_tol=0.06)  # bthome-ble rounds a factor of 0.35 to one decimal


@given(st.binary(max_size=40), st.none() | st.just(KEY))
@example(bytes.fromhex("403c0000"), None)  # a dimmer event: two values from one object (found by hypothesis)
@settings(max_examples=500, deadline=None)
def test_bthome_arbitrary_bytes_decode_or_raise_with_a_reason(data: bytes, key: bytes | None) -> None:
    try:
        decoded = decode_bthome(data, mac=MAC, bindkey=key)
    except AdvertError as err:
        assert err.reason.startswith("bthome_")
    else:
        assert decoded.values or decoded.text
        assert set(decoded.problems) <= {
            ba.BTHOME_UNKNOWN_OBJECT,
            ba.BTHOME_OUT_OF_ORDER,
            ba.BTHOME_TRUNCATED,
        }


BTHOME_SHAPED = st.lists(
    st.tuples(st.sampled_from(sorted(BTHOME_OBJECTS)) | st.integers(0, 255), st.binary(max_size=5)),
    max_size=8,
).map(lambda objects: b"\x40" + b"".join(bytes([object_id]) + tail for object_id, tail in objects))


@given(BTHOME_SHAPED)
@settings(max_examples=1000, deadline=None)
def test_bthome_shaped_damage_decodes_or_raises_with_a_reason(data: bytes) -> None:
    """Known object ids (and some unknown) followed by too few, enough or too many bytes, in any order."""
    try:
        decoded = decode_bthome(data)
    except AdvertError as err:
        assert err.reason.startswith("bthome_")
    else:
        assert all(isinstance(v, int | float) for v in decoded.values.values())
        assert set(decoded.units) <= set(decoded.values)


def test_bthome_out_of_order_unknown_and_truncated_objects_are_skipped_and_named() -> None:
    # humidity (0x03) then temperature (0x02): the spec orders by id, the second is skipped
    decoded = decode_bthome(encode_bthome([(0x03, 5055), (0x02, 2500), (0x2E, 35)]))
    assert decoded.values == {"humidity_1": 50.55, "humidity_2": 35}
    assert decoded.problems == [ba.BTHOME_OUT_OF_ORDER]
    # an unknown id (0x99) ends the walk: what came before stays
    unknown = decode_bthome(
        bytes.fromhex("40") + bytes.fromhex("02c409") + bytes.fromhex("99ffff") + b"\x03\xbf\x13"
    )
    assert unknown.values == {"temperature": 25.0} and unknown.problems == [ba.BTHOME_UNKNOWN_OBJECT]
    cut = decode_bthome(bytes.fromhex("4002c40903bf"))
    assert cut.values == {"temperature": 25.0} and cut.problems == [ba.BTHOME_TRUNCATED]
    with pytest.raises(AdvertError) as nothing:
        decode_bthome(bytes.fromhex("4099"))
    assert nothing.value.reason == ba.BTHOME_UNKNOWN_OBJECT
    with pytest.raises(AdvertError) as v1:
        decode_bthome(bytes.fromhex("2002c409"))
    assert v1.value.reason == ba.BTHOME_BAD_VERSION


def test_bthome_repeated_objects_are_numbered_text_and_firmware() -> None:
    data = encode_bthome([(0x02, 2500), (0x02, -150), (0x53, b"cab 3"), (0xF1, bytes([0, 1, 2, 4]))])
    decoded = decode_bthome(data)
    assert decoded.values == {"temperature_1": 25.0, "temperature_2": -1.5}
    assert decoded.units == {"temperature_1": "°C", "temperature_2": "°C"}
    assert decoded.text == {"text": "cab 3", "firmware_version": "4.2.1.0"}
    dimmer = decode_bthome(encode_bthome([(0x3A, 1), (0x3C, bytes([1, 3]))]))  # a press, then 3 steps left
    assert dimmer.values == {"button": 1, "dimmer": 1, "dimmer_steps": 3}


def test_bthome_encoder_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(EncodeError):
        encode_bthome([(0x99, 1)])
    with pytest.raises(EncodeError):
        encode_bthome([(0x01, 256)])
    with pytest.raises(EncodeError):
        encode_bthome([(0x53, 1)])


# -- Ruuvi RAWv2 -------------------------------------------------------------------------------------------

RUUVI_VECTORS = {  # docs.ruuvi.com, data format 5, "Test vectors"
    "valid": "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F",
    "max": "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F",
    "min": "058001000000008001800180010000000000CBB8334C884F",
    "invalid": "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF",
}


def test_ruuvi_vectors() -> None:
    valid = decode_ruuvi(bytes.fromhex(RUUVI_VECTORS["valid"]))
    assert valid.values == {
        "temperature": 24.3,
        "humidity": 53.49,
        "pressure": 1000.44,
        "acceleration_x": 4,
        "acceleration_y": -4,
        "acceleration_z": 1036,
        "voltage": 2.977,
        "tx_power": 4,
        "movement_counter": 66,
        "measurement_sequence": 205,
    }
    assert valid.text == {"mac": "CB:B8:33:4C:88:4F"}
    top = decode_ruuvi(bytes.fromhex(RUUVI_VECTORS["max"])).values
    assert (top["temperature"], top["humidity"], top["pressure"], top["voltage"], top["tx_power"]) == (
        163.835,
        163.835,
        1155.34,
        3.646,
        20,
    )
    assert (top["movement_counter"], top["measurement_sequence"], top["acceleration_x"]) == (
        254,
        65534,
        32767,
    )
    bottom = decode_ruuvi(bytes.fromhex(RUUVI_VECTORS["min"])).values
    assert (bottom["temperature"], bottom["humidity"], bottom["pressure"], bottom["voltage"]) == (
        -163.835,
        0,
        500.0,
        1.6,
    )
    assert (bottom["tx_power"], bottom["acceleration_z"]) == (-40, -32767)
    gone = decode_ruuvi(bytes.fromhex(RUUVI_VECTORS["invalid"]))
    assert gone.values == {} and gone.text == {}


@given(
    st.builds(
        dict,
        temperature=st.integers(-32768, 32767),
        humidity=st.integers(0, 65535),
        pressure=st.integers(0, 65535),
        acceleration_x=st.integers(-32768, 32767),
        acceleration_y=st.integers(-32768, 32767),
        acceleration_z=st.integers(-32768, 32767),
        power=st.integers(0, 65535),
        movement_counter=st.integers(0, 255),
        measurement_sequence=st.integers(0, 65535),
        mac=st.binary(min_size=6, max_size=6),
    )
)
@settings(max_examples=300, deadline=None)
def test_ruuvi_construct_struct_parity_and_ruuvitag_ble_agrees(fields: dict[str, object]) -> None:
    from ruuvitag_ble.df5_decoder import DataFormat5Decoder  # noqa: PLC0415

    data = RUUVI_RAWV2.build(fields)
    mine = decode_ruuvi(data).values
    parsed = RUUVI_RAWV2.parse(data)
    if parsed.temperature != -32768:
        assert mine["temperature"] == round(parsed.temperature * 0.005, 3)
    theirs = DataFormat5Decoder(data)
    for name, their_value, tolerance in (
        ("temperature", theirs.temperature_celsius, 0.006),
        ("humidity", theirs.humidity_percentage, 0.006),
        ("pressure", theirs.pressure_hpa, 0.006),
        ("tx_power", theirs.tx_power_dbm, 0),
    ):
        if their_value is None:
            assert name not in mine
        else:
            assert math.isclose(mine[name], their_value, abs_tol=tolerance)
    millivolts = theirs.battery_voltage_mv
    assert (millivolts is None and "voltage" not in mine) or math.isclose(
        mine["voltage"] * 1000, millivolts or 0
    )


@given(st.binary(max_size=30))
def test_ruuvi_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_ruuvi(data)
    except AdvertError as err:
        assert err.reason == ba.RUUVI_BAD_LENGTH
        assert len(data) != 24 or data[:1] != b"\x05"


# -- iBeacon -----------------------------------------------------------------------------------------------


def test_ibeacon_vector() -> None:
    # the BlueCharm beacon of ibeacon-ble's tests (Bluetooth-Devices/ibeacon-ble, MIT)
    decoded = decode_ibeacon(b"\x02\x15BlueCharmBeacons\x0e\xfe\x13U\xc5")
    assert (decoded.uuid, decoded.major, decoded.minor, decoded.tx_power) == (
        "426c7565-4368-6172-6d42-6561636f6e73",
        3838,
        4949,
        -59,
    )


@given(
    st.binary(min_size=16, max_size=16), st.integers(0, 65535), st.integers(0, 65535), st.integers(-128, 127)
)
def test_ibeacon_construct_round_trip(uuid: bytes, major: int, minor: int, power: int) -> None:
    data = IBEACON.build({"uuid": uuid, "major": major, "minor": minor, "tx_power": power})
    decoded = decode_ibeacon(data)
    assert decoded.uuid is not None and decoded.uuid.replace("-", "") == uuid.hex()
    assert (decoded.major, decoded.minor, decoded.tx_power) == (major, minor, power)


@given(st.binary(max_size=30))
def test_ibeacon_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_ibeacon(data)
    except AdvertError as err:
        assert err.reason == ba.IBEACON_BAD_LENGTH


# -- Eddystone ---------------------------------------------------------------------------------------------


def test_eddystone_spec_examples() -> None:
    # github.com/google/eddystone: eddystone-url (URLs; TX power 0xEE = -18 dBm, 0x12 = +18 dBm),
    # eddystone-uid (the namespace of its UID construction example)
    url = decode_eddystone(bytes.fromhex("10ee03") + b"goo.gl/S6zT6P")
    assert url is not None and url.text == {"url": "https://goo.gl/S6zT6P"} and url.tx_power == -18
    other = decode_eddystone(encode_eddystone_url("https://goo.gl/Aq18zF", 0x12))
    assert other is not None and other.tx_power == 18 and other.text["url"] == "https://goo.gl/Aq18zF"
    assert encode_eddystone_url("http://www.example.com/x", -20) == bytes.fromhex("10ec00") + b"example\x00x"
    uid = decode_eddystone(bytes.fromhex("00ee8b0ca750095477cb3e770000000000010000"))
    assert uid is not None and uid.text == {"namespace": "8b0ca750095477cb3e77", "instance": "000000000001"}
    tlm = decode_eddystone(bytes.fromhex("20000bfe1c000000070800003e7c"))  # ibeacon-ble's BlueCharm TLM
    assert tlm is not None and tlm.values == {
        "voltage": 3.07,
        "temperature": 28.0,
        "adv_count": 1800,
        "uptime": 1599.6,
    }
    assert decode_eddystone(bytes.fromhex("30ee0102030405060708")) is None  # EID: not decoded, not an error
    with pytest.raises(AdvertError) as etlm:
        decode_eddystone(bytes.fromhex("2001") + bytes(16))
    assert etlm.value.reason == ba.EDDYSTONE_ENCRYPTED_TLM


URL_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-./_~", max_size=14)


@given(st.sampled_from(ba.URL_SCHEMES), URL_TEXT, st.integers(-100, 20))
def test_eddystone_url_round_trip(scheme: str, rest: str, power: int) -> None:
    url = scheme + rest
    try:
        data = encode_eddystone_url(url, power)
    except EncodeError:
        return  # longer than a frame holds
    decoded = decode_eddystone(data)
    assert decoded is not None and decoded.text["url"] == url and decoded.tx_power == power


@given(
    st.integers(-128, 127),
    st.binary(min_size=10, max_size=10),
    st.binary(min_size=6, max_size=6),
    st.integers(0, 65535),
    st.integers(-32768, 32767),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_eddystone_uid_and_tlm_construct_round_trips(  # noqa: PLR0917  # hypothesis passes them by position
    power: int, namespace: bytes, instance: bytes, mv: int, temp: int, count: int, uptime: int
) -> None:
    uid = decode_eddystone(
        EDDYSTONE_UID.build({"tx_power": power, "namespace": namespace, "instance": instance})
    )
    assert uid is not None and uid.uuid == namespace.hex() + instance.hex() and uid.tx_power == power
    tlm = decode_eddystone(
        EDDYSTONE_TLM.build({"battery_mv": mv, "temperature": temp, "adv_count": count, "uptime": uptime})
    )
    assert (
        tlm is not None and tlm.values["adv_count"] == count and tlm.values["uptime"] == round(uptime / 10, 1)
    )
    assert ("voltage" in tlm.values) == (mv != 0) and ("temperature" in tlm.values) == (temp != -32768)


@given(st.binary(max_size=24))
@settings(max_examples=500)
def test_eddystone_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_eddystone(data)
    except AdvertError as err:
        assert err.reason in (ba.EDDYSTONE_BAD_FRAME, ba.EDDYSTONE_ENCRYPTED_TLM)


# -- the advert, its capture line, picking decoders ---------------------------------------------------------

ADVERTS = st.builds(
    Advert,
    address=st.text(alphabet="0123456789ABCDEF:-", min_size=1, max_size=36),
    rssi=st.integers(-127, 20),
    name=st.none() | st.text(max_size=30),
    manufacturer_data=st.dictionaries(st.integers(0, 65535), st.binary(max_size=27), max_size=3),
    service_data=st.dictionaries(
        st.sampled_from([BTHOME_UUID, EDDYSTONE_UUID, ba.full_uuid(0x2080)]),
        st.binary(max_size=27),
        max_size=3,
    ),
    service_uuids=st.lists(st.sampled_from([BTHOME_UUID, EDDYSTONE_UUID]), max_size=2).map(tuple),
    tx_power=st.none() | st.integers(-127, 20),
    ts=st.floats(0, 4e9, allow_nan=False),
)


@given(ADVERTS)
def test_capture_line_round_trip(advert: Advert) -> None:
    line = advert_to_json(advert)
    assert "\n" not in line
    assert advert_from_json(line) == advert
    doc = json.loads(line)
    assert set(doc) == {
        "ts",
        "address",
        "rssi",
        "name",
        "manufacturer_data",
        "service_data",
        "service_uuids",
        "tx_power",
    }
    assert all(key.isdigit() for key in doc["manufacturer_data"])


def test_a_hand_written_capture_line_may_give_short_uuids() -> None:
    # bleak writes 128-bit UUIDs; a technician writing a line by hand (or another tool's export) writes fcd2.
    # Both decode alike; a key that is no UUID is refused with the reason, not kept to match nothing.
    sealed = "40020c09"  # BTHome v2, unencrypted: temperature (0x02) 0x090c x 0.01 = 23.16 °C
    short = {"address": "A4:C1:38:00:00:01", "rssi": -60, "service_data": {"FCD2": sealed}}
    full = {**short, "service_data": {BTHOME_UUID: sealed}, "service_uuids": ["0xfcd2"]}
    a, b = advert_from_json(json.dumps(short)), advert_from_json(json.dumps(full))
    assert a.service_data == b.service_data == {BTHOME_UUID: bytes.fromhex(sealed)}
    assert b.service_uuids == (BTHOME_UUID,)
    assert [d.values for d in decode(a)[0]] == [d.values for d in decode(b)[0]] == [{"temperature": 23.16}]
    with pytest.raises(DecodeError, match="'bthome' is no service UUID"):
        advert_from_json(json.dumps({**short, "service_data": {"bthome": sealed}}))


@given(st.text(max_size=200) | st.binary(max_size=200))
@settings(max_examples=500)
def test_malformed_capture_lines_raise_decode_error_only(line: str | bytes) -> None:
    try:
        advert = advert_from_json(line)
    except DecodeError as err:
        assert str(err)  # says what is wrong
    else:
        assert isinstance(advert, Advert)


@given(ADVERTS, st.none() | st.just(KEY))
@settings(max_examples=500)
def test_decode_any_advert_never_raises(advert: Advert, key: bytes | None) -> None:
    found, errors = decode(advert, key)
    assert {d.format for d in found} <= set(ba.FORMATS)
    assert all(isinstance(e, AdvertError) for e in errors)
