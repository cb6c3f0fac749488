"""BLE advertisements: what a scanner hears, the capture file it is recorded in, and the payload formats of
sensors and beacons (BTHome v2, Ruuvi RAWv2, iBeacon, Eddystone UID/URL/TLM).

Pure (no I/O, clocks or asyncio). Three parts:

- :class:`Advert`, one advertisement as bleak's ``AdvertisementData`` gives it (manufacturer data by company
  id, service data by 128-bit UUID, the service UUIDs, the TX power level, the RSSI, the local name) with
  the address and the time it was heard; :func:`advert_to_json` / :func:`advert_from_json` are the capture
  file's line format (``edgegw ble record`` writes it, a ``ble`` device with ``replay:`` plays it)::

      {"ts": 1764770000.25, "address": "54:48:E6:8F:80:A5", "rssi": -67, "name": "DIY-sensor",
       "manufacturer_data": {"1177": "0512fc53..."}, "service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb":
       "4002c40903bf13"}, "service_uuids": ["0000fcd2-0000-1000-8000-00805f9b34fb"], "tx_power": null}

  (company ids in decimal, bytes in hex, UUIDs in bleak's lowercase 128-bit form);

- the decoders, each taking the bytes bleak hands over and returning a :class:`Decoded` (format, values
  with their units, and for beacons uuid/major/minor/tx_power) or raising
  :class:`~protocols.errors.DecodeError` (with :attr:`AdvertError.reason`, a short name a driver counts):
  :func:`decode_bthome` (service data 0xFCD2, encrypted payloads with a bind key: AES-CCM, 4-byte MIC),
  :func:`decode_ruuvi` (manufacturer 0x0499, data format 5), :func:`decode_ibeacon` (manufacturer 0x004C,
  type 0x02 length 0x15), :func:`decode_eddystone` (service data 0xFEAA: UID 0x00, URL 0x10, TLM 0x20);
  :func:`decode` tries each format the advert carries and gives what decoded and what did not;

- the encoders of the same formats (:func:`encode_bthome`, :func:`encrypt_bthome`, and the construct
  definitions :data:`RUUVI_RAWV2`, :data:`IBEACON`, :data:`EDDYSTONE_UID`, :data:`EDDYSTONE_TLM`), for
  tests, the simulator and the benchmark: one definition, two directions.

Sources (facts only; no code taken): BTHome v2 https://bthome.io/format and https://bthome.io/encryption;
Ruuvi RAWv2 https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2; Apple's
Proximity Beacon Specification (iBeacon); Google's Eddystone protocol specification
(github.com/google/eddystone, eddystone-uid, eddystone-url, eddystone-tlm/tlm-plain.md).

Why hand-written, when bthome-ble and ruuvitag-ble exist (both MIT, both installed, and the tests check this
module against them): importing either package adds about 8 MB of memory and 0.15-0.25 s to a gateway
process that already runs the ble driver and bleak (27 MB from a bare interpreter: each pulls in habluetooth,
the Home Assistant scanner stack), their parsers are stateful per device, shaped for Home Assistant
entities, cost 35-75 us per advertisement against 1.5-13 us here (bench/ble_decode.py), and report damaged or
unknown objects only in their logs, where a gateway must count them. The fixed layouts are construct
definitions (parsed on the hot path by an equivalent precompiled ``struct``, which the tests check against
them, as in :mod:`protocols.r2000`); BTHome's variable object list is walked by hand from the spec's object
table.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from construct import Bytes, Const, Int8sb, Int8ub, Int16sb, Int16ub, Int32ub, Struct

from protocols.errors import DecodeError, EncodeError

__all__ = [
    "BTHOME_UUID",
    "EDDYSTONE_TLM",
    "EDDYSTONE_UID",
    "EDDYSTONE_UUID",
    "FORMATS",
    "IBEACON",
    "IBEACON_COMPANY",
    "RUUVI_COMPANY",
    "RUUVI_RAWV2",
    "Advert",
    "AdvertError",
    "Decoded",
    "advert_from_json",
    "advert_to_json",
    "decode",
    "decode_bthome",
    "decode_eddystone",
    "decode_ibeacon",
    "decode_ruuvi",
    "encode_bthome",
    "encode_eddystone_url",
    "encrypt_bthome",
    "full_uuid",
    "is_ibeacon",
    "mac_bytes",
    "normalise_uuid",
]


def full_uuid(short: int) -> str:
    """The 128-bit form (lowercase, as bleak gives it) of a 16-bit Bluetooth SIG UUID."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


_SHORT_UUID: Final = re.compile(r"[0-9a-f]{4}|[0-9a-f]{8}")
_UUID128: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalise_uuid(text: str) -> str:
    """``text`` as bleak writes a UUID (128-bit, lowercase): a 16- or 32-bit SIG UUID (``fcd2``, ``0xFCD2``,
    ``0000fcd2``) expanded on the Bluetooth base UUID, a 128-bit one lowercased; ValueError if it is
    neither."""
    short = text.strip().lower().removeprefix("0x")
    if _SHORT_UUID.fullmatch(short):
        return f"{int(short, 16):08x}-0000-1000-8000-00805f9b34fb"
    if _UUID128.fullmatch(short):
        return short
    raise ValueError(f"{text!r} is no service UUID (16-bit like fcd2, or 128-bit)")


BTHOME_UUID: Final = full_uuid(0xFCD2)
EDDYSTONE_UUID: Final = full_uuid(0xFEAA)
RUUVI_COMPANY: Final = 0x0499
IBEACON_COMPANY: Final = 0x004C

FORMATS: Final = ("bthome", "ruuvi", "ibeacon", "eddystone-uid", "eddystone-url", "eddystone-tlm", "raw")
"""Every value of :attr:`Decoded.format` (``raw``: an advert of no known format, passed through undecoded)."""


class AdvertError(DecodeError):
    """An advert of a known format that does not decode; ``reason`` names why, for a counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------
# The advert and its capture-file line


@dataclass(slots=True, frozen=True)
class Advert:
    """One advertisement as bleak reports it (see the module docstring)."""

    address: str
    rssi: int
    name: str | None = None
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()
    tx_power: int | None = None
    ts: float = 0.0

    def slot(self) -> tuple[object, ...]:
        """What kind of advert this is for its address (which company's data, which services, which
        Eddystone frame): a beacon that rotates frames (Eddystone UID, URL, TLM; an iBeacon between them)
        sends several kinds, each to be compared only with its own kind."""
        return (
            self.address,
            tuple(sorted(self.manufacturer_data)),
            tuple(sorted((k, v[:1] if k == EDDYSTONE_UUID else b"") for k, v in self.service_data.items())),
        )

    def payload_key(self) -> tuple[object, ...]:
        """What identifies its content (for duplicate suppression): the data, not the RSSI or the time."""
        return (
            self.name,
            tuple(sorted(self.manufacturer_data.items())),
            tuple(sorted(self.service_data.items())),
        )


def advert_to_json(advert: Advert) -> str:
    """The capture file's line for ``advert`` (without the newline)."""
    return json.dumps(
        {
            "ts": advert.ts,
            "address": advert.address,
            "rssi": advert.rssi,
            "name": advert.name,
            "manufacturer_data": {str(k): v.hex() for k, v in advert.manufacturer_data.items()},
            "service_data": {k: v.hex() for k, v in advert.service_data.items()},
            "service_uuids": list(advert.service_uuids),
            "tx_power": advert.tx_power,
        },
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def _hex(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{where}: expected a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DecodeError(f"{where}: not hex: {value[:40]!r}") from None


def _int(value: object, where: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{where}: expected an integer, got {json.dumps(value)[:40]}")
    return value


def advert_from_json(line: str | bytes) -> Advert:
    """The advert of one capture-file line; :class:`~protocols.errors.DecodeError` saying what is wrong."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise DecodeError(f"not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}")
    address = doc.get("address")
    if not isinstance(address, str) or not address:
        raise DecodeError("address: missing or not a string")
    rssi = _int(doc.get("rssi"), "rssi")
    assert rssi is not None
    ts = doc.get("ts", 0.0)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise DecodeError("ts: expected a number of seconds")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise DecodeError("name: expected a string or null")
    manufacturer: dict[int, bytes] = {}
    raw_manufacturer = doc.get("manufacturer_data", {})
    if not isinstance(raw_manufacturer, dict):
        raise DecodeError("manufacturer_data: expected an object")
    for key, value in raw_manufacturer.items():
        if not key.isdigit() or int(key) > 0xFFFF:
            raise DecodeError(f"manufacturer_data: {key!r} is no company id (decimal, 0-65535)")
        manufacturer[int(key)] = _hex(value, f"manufacturer_data.{key}")
    service: dict[str, bytes] = {}
    raw_service = doc.get("service_data", {})
    if not isinstance(raw_service, dict):
        raise DecodeError("service_data: expected an object")
    raw_uuids = doc.get("service_uuids", [])
    if not isinstance(raw_uuids, list) or not all(isinstance(u, str) for u in raw_uuids):
        raise DecodeError("service_uuids: expected a list of strings")
    where = "service_data"
    try:
        for key, value in raw_service.items():
            service[normalise_uuid(key)] = _hex(value, f"service_data.{key}")
        where = "service_uuids"
        uuids = [normalise_uuid(text) for text in raw_uuids]
    except ValueError as err:  # normalise_uuid's (a DecodeError of _hex is no ValueError: it goes on up)
        raise DecodeError(f"{where}: {err}") from None
    tx_power = _int(doc.get("tx_power"), "tx_power", optional=True)
    return Advert(
        address=address,
        rssi=rssi,
        name=name,
        manufacturer_data=manufacturer,
        service_data=service,
        service_uuids=tuple(uuids),
        tx_power=tx_power,
        ts=float(ts),
    )


def mac_bytes(address: str) -> bytes | None:
    """The six bytes of a MAC address written ``AA:BB:CC:DD:EE:FF`` (or with ``-``), else None (macOS
    gives a UUID instead of the address)."""
    digits = address.replace(":", "").replace("-", "")
    if len(digits) != 12:
        return None
    try:
        return bytes.fromhex(digits)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# What a decoder gives


@dataclass(slots=True)
class Decoded:
    """A decoded advertisement: its format (one of :data:`FORMATS`), its values (name -> number) and their
    units (name -> unit, for those that have one), and for beacons the identity and calibrated power."""

    format: str
    values: dict[str, float | int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    uuid: str | None = None
    major: int | None = None
    minor: int | None = None
    tx_power: int | None = None
    text: dict[str, str] = field(default_factory=dict)
    """What is not a number: an Eddystone URL, a namespace and instance, a BTHome text or raw object."""
    problems: list[str] = field(default_factory=list)
    """Reasons (counter names) for parts of the advert that were skipped while the rest decoded."""


# ---------------------------------------------------------------------------------------------------------
# BTHome v2 (https://bthome.io/format)

_NUMBER, _BINARY, _EVENT, _TEXT, _RAW, _TIMESTAMP, _COMMAND, _DEVICE_TYPE, _FIRMWARE = range(9)


@dataclass(slots=True, frozen=True)
class _Object:
    name: str
    size: int  # bytes after the id (0: a length byte follows the id)
    signed: bool = False
    factor: float = 1
    unit: str | None = None
    kind: int = _NUMBER


def _num(name: str, size: int, factor: float = 1, unit: str | None = None, signed: bool = False) -> _Object:
    return _Object(name, size, signed, factor, unit)


def _bin(name: str) -> _Object:
    return _Object(name, 1, kind=_BINARY)


def _decimals_of(factor: float) -> int:
    text = repr(factor)
    if "e-" in text:
        return int(text.split("e-")[1])
    return len(text.split(".")[1]) if "." in text and factor < 1 else 0


BTHOME_OBJECTS: Final[dict[int, _Object]] = {
    0x00: _num("packet_id", 1),
    0x01: _num("battery", 1, unit="%"),
    0x02: _num("temperature", 2, 0.01, "°C", signed=True),
    0x03: _num("humidity", 2, 0.01, "%"),
    0x04: _num("pressure", 3, 0.01, "hPa"),
    0x05: _num("illuminance", 3, 0.01, "lx"),
    0x06: _num("mass", 2, 0.01, "kg"),
    0x07: _num("mass", 2, 0.01, "lb"),
    0x08: _num("dew_point", 2, 0.01, "°C", signed=True),
    0x09: _num("count", 1),
    0x0A: _num("energy", 3, 0.001, "kWh"),
    0x0B: _num("power", 3, 0.01, "W"),
    0x0C: _num("voltage", 2, 0.001, "V"),
    0x0D: _num("pm2_5", 2, unit="µg/m³"),
    0x0E: _num("pm10", 2, unit="µg/m³"),
    0x0F: _bin("generic"),
    0x10: _bin("power_on"),
    0x11: _bin("opening"),
    0x12: _num("co2", 2, unit="ppm"),
    0x13: _num("tvoc", 2, unit="µg/m³"),
    0x14: _num("moisture", 2, 0.01, "%"),
    0x15: _bin("battery_low"),
    0x16: _bin("battery_charging"),
    0x17: _bin("carbon_monoxide"),
    0x18: _bin("cold"),
    0x19: _bin("connectivity"),
    0x1A: _bin("door"),
    0x1B: _bin("garage_door"),
    0x1C: _bin("gas_detected"),
    0x1D: _bin("heat"),
    0x1E: _bin("light"),
    0x1F: _bin("lock"),
    0x20: _bin("moisture_detected"),
    0x21: _bin("motion"),
    0x22: _bin("moving"),
    0x23: _bin("occupancy"),
    0x24: _bin("plug"),
    0x25: _bin("presence"),
    0x26: _bin("problem"),
    0x27: _bin("running"),
    0x28: _bin("safety"),
    0x29: _bin("smoke"),
    0x2A: _bin("sound"),
    0x2B: _bin("tamper"),
    0x2C: _bin("vibration"),
    0x2D: _bin("window"),
    0x2E: _num("humidity", 1, unit="%"),
    0x2F: _num("moisture", 1, unit="%"),
    0x3A: _Object("button", 1, kind=_EVENT),
    0x3B: _Object("command", 0, kind=_COMMAND),
    0x3C: _Object("dimmer", 2, kind=_EVENT),
    0x3D: _num("count", 2),
    0x3E: _num("count", 4),
    0x3F: _num("rotation", 2, 0.1, "°", signed=True),
    0x40: _num("distance", 2, unit="mm"),
    0x41: _num("distance", 2, 0.1, "m"),
    0x42: _num("duration", 3, 0.001, "s"),
    0x43: _num("current", 2, 0.001, "A"),
    0x44: _num("speed", 2, 0.01, "m/s"),
    0x45: _num("temperature", 2, 0.1, "°C", signed=True),
    0x46: _num("uv_index", 1, 0.1),
    0x47: _num("volume", 2, 0.1, "L"),
    0x48: _num("volume", 2, unit="mL"),
    0x49: _num("volume_flow_rate", 2, 0.001, "m³/h"),
    0x4A: _num("voltage", 2, 0.1, "V"),
    0x4B: _num("gas", 3, 0.001, "m³"),
    0x4C: _num("gas", 4, 0.001, "m³"),
    0x4D: _num("energy", 4, 0.001, "kWh"),
    0x4E: _num("volume", 4, 0.001, "L"),
    0x4F: _num("water", 4, 0.001, "L"),
    0x50: _Object("timestamp", 4, unit="s", kind=_TIMESTAMP),
    0x51: _num("acceleration", 2, 0.001, "m/s²"),
    0x52: _num("gyroscope", 2, 0.001, "°/s"),
    0x53: _Object("text", 0, kind=_TEXT),
    0x54: _Object("raw", 0, kind=_RAW),
    0x55: _num("volume_storage", 4, 0.001, "L"),
    0x56: _num("conductivity", 2, unit="µS/cm"),
    0x57: _num("temperature", 1, unit="°C", signed=True),
    0x58: _num("temperature", 1, 0.35, "°C", signed=True),
    0x59: _num("count", 1, signed=True),
    0x5A: _num("count", 2, signed=True),
    0x5B: _num("count", 4, signed=True),
    0x5C: _num("power", 4, 0.01, "W", signed=True),
    0x5D: _num("current", 2, 0.001, "A", signed=True),
    0x5E: _num("direction", 2, 0.01, "°"),
    0x5F: _num("precipitation", 2, 0.1, "mm"),
    0x60: _num("channel", 1),
    0x61: _num("rotational_speed", 2, unit="rpm"),
    0x62: _num("speed", 4, 0.000001, "m/s", signed=True),
    0x63: _num("acceleration", 4, 0.000001, "m/s²", signed=True),
    0x64: _num("light_level", 1),
    0x65: _num("settings_revision", 1),
    0xF0: _Object("device_type_id", 2, kind=_DEVICE_TYPE),
    0xF1: _Object("firmware_version", 4, kind=_FIRMWARE),
    0xF2: _Object("firmware_version", 3, kind=_FIRMWARE),
}
"""BTHome v2 object ids: name, size, sign, factor, unit (https://bthome.io/format). Names are the spec's
properties; where the spec has one property twice (a binary ``power`` beside the measured one, a binary
``moisture``, ``gas``), the binary one is named for what it says (``power_on``, ``moisture_detected``,
``gas_detected``)."""

_DECIMALS: Final = {object_id: _decimals_of(obj.factor) for object_id, obj in BTHOME_OBJECTS.items()}

BTHOME_VERSION: Final = 2
_ENCRYPTED, _TRIGGER_BASED = 0x01, 0x04
BTHOME_UNKNOWN_OBJECT: Final = "bthome_unknown_objects"
BTHOME_OUT_OF_ORDER: Final = "bthome_out_of_order"
BTHOME_TRUNCATED: Final = "bthome_truncated"
BTHOME_NO_KEY: Final = "bthome_no_key"
BTHOME_DECRYPT_FAILED: Final = "bthome_decrypt_failed"
BTHOME_BAD_VERSION: Final = "bthome_bad_version"


def _nonce(mac: bytes, adv_info: int, counter: bytes) -> bytes:
    return mac + b"\xd2\xfc" + bytes([adv_info]) + counter


@functools.lru_cache(maxsize=256)
def _aesccm(key: bytes) -> Any:
    """The cipher of one bind key (kept for the next advert of the same sensor: building it costs more than
    decrypting)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # noqa: PLC0415  # only with a bind key

    return AESCCM(key, tag_length=4)


def decode_bthome(data: bytes, *, mac: bytes | None = None, bindkey: bytes | None = None) -> Decoded:
    """A BTHome v2 service data payload (after the UUID): the device info byte, then objects, or for an
    encrypted payload the ciphertext, a 4-byte counter and a 4-byte MIC (``mac``, the device's six address
    bytes, and its 16-byte ``bindkey`` are needed to decrypt it).

    Objects with an id unknown to :data:`BTHOME_OBJECTS` end the walk (their length is unknown): what came
    before is kept and ``bthome_unknown_objects`` is added to :attr:`Decoded.problems`; an object whose id
    is lower than the one before it (the spec orders them by id) is skipped (``bthome_out_of_order``); an
    object cut short ends the walk (``bthome_truncated``). A payload with nothing usable raises."""
    if not data:
        raise AdvertError(BTHOME_TRUNCATED, "BTHome: empty service data")
    adv_info = data[0]
    version = adv_info >> 5
    if version != BTHOME_VERSION:
        raise AdvertError(BTHOME_BAD_VERSION, f"BTHome: device info 0x{adv_info:02x} says version {version}")
    payload = data[1:]
    decoded = Decoded("bthome")
    if adv_info & _ENCRYPTED:
        if bindkey is None:
            raise AdvertError(BTHOME_NO_KEY, "BTHome: encrypted, and no bind key for this device")
        if mac is None:
            raise AdvertError(BTHOME_DECRYPT_FAILED, "BTHome: encrypted, and the address is no MAC")
        if len(payload) < 9:
            raise AdvertError(BTHOME_TRUNCATED, f"BTHome: encrypted payload of {len(payload)} bytes")
        counter, mic = payload[-8:-4], payload[-4:]
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415  # only with a bind key

        try:
            payload = _aesccm(bindkey).decrypt(_nonce(mac, adv_info, counter), payload[:-8] + mic, None)
        except InvalidTag:
            raise AdvertError(BTHOME_DECRYPT_FAILED, "BTHome: decryption failed (wrong bind key?)") from None
        decoded.values["encryption_counter"] = int.from_bytes(counter, "little")
    _walk(payload, decoded)
    if not decoded.values and not decoded.text:
        reason = decoded.problems[0] if decoded.problems else BTHOME_TRUNCATED
        raise AdvertError(reason, f"BTHome: no object decoded from {data.hex()}")
    return decoded


def _walk(payload: bytes, decoded: Decoded) -> None:
    values, units, text = decoded.values, decoded.units, decoded.text
    seen: dict[str, int] = {}
    found: list[tuple[str, float | int | str, str | None, bool]] = []
    end = len(payload)
    at = 0
    last_id = 0
    objects = BTHOME_OBJECTS
    while at < end:
        object_id = payload[at]
        obj = objects.get(object_id)
        if obj is None:
            decoded.problems.append(BTHOME_UNKNOWN_OBJECT)
            break
        start = at + 1
        if obj.size == 0:  # a length byte follows
            if start >= end:
                decoded.problems.append(BTHOME_TRUNCATED)
                break
            size = payload[start] & 0x1F if obj.kind == _COMMAND else payload[start]
            if obj.kind == _COMMAND:
                size += 1
            start += 1
        else:
            size = obj.size
        stop = start + size
        if stop > end:
            decoded.problems.append(BTHOME_TRUNCATED)
            break
        at = stop
        if object_id < last_id:
            decoded.problems.append(BTHOME_OUT_OF_ORDER)
            continue
        last_id = object_id
        chunk = payload[start:stop]
        kind = obj.kind
        value: float | int | str
        if kind in (_NUMBER, _TIMESTAMP, _DEVICE_TYPE):
            number = int.from_bytes(chunk, "little", signed=obj.signed)
            value = round(number * obj.factor, _DECIMALS[object_id]) if obj.factor != 1 else number
            found.append((obj.name, value, obj.unit, True))
        elif kind == _BINARY:
            found.append((obj.name, 1 if chunk[0] else 0, None, True))
        elif kind == _EVENT:
            found.append((obj.name, chunk[0], None, True))
            if obj.name == "dimmer":
                found.append(("dimmer_steps", chunk[1], None, True))
        elif kind == _TEXT:
            found.append((obj.name, chunk.decode("utf-8", "replace"), None, False))
        elif kind == _FIRMWARE:
            found.append((obj.name, ".".join(str(b) for b in reversed(chunk)), None, False))
        else:  # raw, command
            found.append((obj.name, chunk.hex(), None, False))
    for name, _, _, _ in found:
        seen[name] = seen.get(name, 0) + 1
    suffix: dict[str, int] = {}
    for name, value, unit, numeric in found:
        key = name
        if seen[name] > 1:
            suffix[name] = suffix.get(name, 0) + 1
            key = f"{name}_{suffix[name]}"
        if numeric:
            assert not isinstance(value, str)
            values[key] = value
            if unit is not None:
                units[key] = unit
        else:
            assert isinstance(value, str)
            text[key] = value


def encode_bthome(objects: Sequence[tuple[int, int | bytes]], *, trigger_based: bool = False) -> bytes:
    """BTHome v2 service data (unencrypted) of ``objects``: ``(object id, raw integer)`` for fixed-size
    objects (the integer before the factor), ``(object id, bytes)`` for text, raw and command objects, in
    the order given (the spec wants ascending ids; a test may want them otherwise)."""
    out = bytearray([BTHOME_VERSION << 5 | (_TRIGGER_BASED if trigger_based else 0)])
    for object_id, value in objects:
        obj = BTHOME_OBJECTS.get(object_id)
        if obj is None:
            raise EncodeError(f"BTHome: unknown object id 0x{object_id:02x}")
        out.append(object_id)
        if obj.size == 0:
            if not isinstance(value, bytes):
                raise EncodeError(f"BTHome: object 0x{object_id:02x} takes bytes")
            if obj.kind == _COMMAND:
                if not 1 <= len(value) <= 32:
                    raise EncodeError("BTHome: a command is an opcode and up to 31 argument bytes")
                out.append(len(value) - 1)
            else:
                if len(value) > 255:
                    raise EncodeError("BTHome: a text or raw object holds at most 255 bytes")
                out.append(len(value))
            out += value
        elif isinstance(value, bytes):
            if len(value) != obj.size:
                raise EncodeError(f"BTHome: object 0x{object_id:02x} is {obj.size} bytes")
            out += value
        else:
            try:
                out += value.to_bytes(obj.size, "little", signed=obj.signed)
            except OverflowError:
                raise EncodeError(f"BTHome: {value} does not fit object 0x{object_id:02x}") from None
    return bytes(out)


def encrypt_bthome(plain: bytes, *, mac: bytes, bindkey: bytes, counter: int) -> bytes:
    """The encrypted form of unencrypted BTHome v2 service data ``plain`` (its device info byte gains the
    encryption bit): device info, ciphertext, counter (4 bytes, little-endian), MIC (4 bytes)."""
    adv_info = plain[0] | _ENCRYPTED
    counter_bytes = counter.to_bytes(4, "little")
    sealed: bytes = _aesccm(bindkey).encrypt(_nonce(mac, adv_info, counter_bytes), plain[1:], None)
    return bytes([adv_info]) + sealed[:-4] + counter_bytes + sealed[-4:]


# ---------------------------------------------------------------------------------------------------------
# Ruuvi RAWv2 (data format 5)

RUUVI_RAWV2: Final = Struct(
    "format" / Const(5, Int8ub),
    "temperature" / Int16sb,  # 0.005 °C; -32768 not available
    "humidity" / Int16ub,  # 0.0025 %; 65535 not available
    "pressure" / Int16ub,  # Pa - 50 000; 65535 not available
    "acceleration_x" / Int16sb,  # mG; -32768 not available
    "acceleration_y" / Int16sb,
    "acceleration_z" / Int16sb,
    "power" / Int16ub,  # 11 bits battery mV - 1600 (2047 n/a), 5 bits (tx dBm + 40) / 2 (31 n/a)
    "movement_counter" / Int8ub,  # 255 not available
    "measurement_sequence" / Int16ub,  # 65535 not available
    "mac" / Bytes(6),
)
"""Ruuvi data format 5 (RAWv2): 24 bytes of manufacturer data (company 0x0499), big-endian."""

_RUUVI: Final = struct.Struct(">BhHHhhhHBH6s")
RUUVI_BAD_LENGTH: Final = "ruuvi_bad_length"


def decode_ruuvi(data: bytes) -> Decoded:
    """Ruuvi manufacturer data in data format 5; fields the tag marks not available are left out."""
    if len(data) != _RUUVI.size or data[0] != 5:
        raise AdvertError(RUUVI_BAD_LENGTH, f"Ruuvi RAWv2: {len(data)} bytes, format {data[:1].hex()}")
    _, t, h, p, ax, ay, az, power, moves, sequence, mac = _RUUVI.unpack(data)
    values: dict[str, float | int] = {}
    units: dict[str, str] = {}
    if t != -32768:
        values["temperature"] = round(t * 0.005, 3)
        units["temperature"] = "°C"
    if h != 65535:
        values["humidity"] = round(h * 0.0025, 4)
        units["humidity"] = "%"
    if p != 65535:
        values["pressure"] = round((p + 50000) / 100, 2)
        units["pressure"] = "hPa"
    if -32768 not in (ax, ay, az):
        values["acceleration_x"], values["acceleration_y"], values["acceleration_z"] = ax, ay, az
        units["acceleration_x"] = units["acceleration_y"] = units["acceleration_z"] = "mG"
    millivolts, tx = power >> 5, power & 0x1F
    if millivolts != 2047:
        values["voltage"] = round((millivolts + 1600) / 1000, 3)
        units["voltage"] = "V"
    if tx != 31:
        values["tx_power"] = tx * 2 - 40
        units["tx_power"] = "dBm"
    if moves != 255:
        values["movement_counter"] = moves
    if sequence != 65535:
        values["measurement_sequence"] = sequence
    decoded = Decoded("ruuvi", values, units)
    if mac != b"\xff" * 6:
        decoded.text["mac"] = mac.hex(":").upper()
    return decoded


# ---------------------------------------------------------------------------------------------------------
# iBeacon

IBEACON: Final = Struct(
    "type" / Const(0x02, Int8ub),
    "length" / Const(0x15, Int8ub),
    "uuid" / Bytes(16),
    "major" / Int16ub,
    "minor" / Int16ub,
    "tx_power" / Int8sb,  # measured power at 1 m, dBm
)
"""An iBeacon: Apple's manufacturer data (company 0x004C), type 0x02, length 0x15 (23 bytes)."""

_IBEACON: Final = struct.Struct(">BB16sHHb")
IBEACON_BAD_LENGTH: Final = "ibeacon_bad_length"


def is_ibeacon(data: bytes) -> bool:
    """Apple manufacturer data that says it is an iBeacon (type 0x02, length 0x15)."""
    return data[:2] == b"\x02\x15"


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def decode_ibeacon(data: bytes) -> Decoded:
    """Apple manufacturer data of type 0x02 (iBeacon): proximity UUID, major, minor, measured power."""
    if len(data) != _IBEACON.size or not is_ibeacon(data):
        raise AdvertError(IBEACON_BAD_LENGTH, f"iBeacon: {len(data)} bytes, expected 23 starting 0215")
    _, _, uuid, major, minor, tx_power = _IBEACON.unpack(data)
    return Decoded("ibeacon", uuid=_uuid_text(uuid), major=major, minor=minor, tx_power=tx_power)


# ---------------------------------------------------------------------------------------------------------
# Eddystone

EDDYSTONE_UID: Final = Struct(
    "frame" / Const(0x00, Int8ub),
    "tx_power" / Int8sb,  # calibrated at 0 m, dBm
    "namespace" / Bytes(10),
    "instance" / Bytes(6),
)
"""Eddystone-UID service data (0xFEAA): 18 bytes, or 20 with the two reserved bytes."""

EDDYSTONE_TLM: Final = Struct(
    "frame" / Const(0x20, Int8ub),
    "version" / Const(0x00, Int8ub),
    "battery_mv" / Int16ub,  # 0: not supported
    "temperature" / Int16sb,  # signed 8.8 fixed point °C; 0x8000: not supported
    "adv_count" / Int32ub,
    "uptime" / Int32ub,  # 0.1 s
)
"""Eddystone-TLM (unencrypted, version 0) service data: 14 bytes."""

_EDDYSTONE_UID: Final = struct.Struct(">Bb10s6s")
_EDDYSTONE_TLM: Final = struct.Struct(">BBHhII")
URL_SCHEMES: Final = ("http://www.", "https://www.", "http://", "https://")
URL_CODES: Final = (
    *(".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/"),
    *(".com", ".org", ".edu", ".net", ".info", ".biz", ".gov"),
)
EDDYSTONE_BAD_FRAME: Final = "eddystone_bad_frames"
EDDYSTONE_ENCRYPTED_TLM: Final = "eddystone_encrypted_tlm"


def decode_eddystone(data: bytes) -> Decoded | None:
    """Eddystone service data (0xFEAA): UID, URL or TLM; None for another frame type (EID, a reserved
    one), which is not an error: the advert is simply of no format decoded here."""
    if not data:
        raise AdvertError(EDDYSTONE_BAD_FRAME, "Eddystone: empty service data")
    frame = data[0]
    if frame == 0x00:
        if len(data) not in (18, 20):
            raise AdvertError(EDDYSTONE_BAD_FRAME, f"Eddystone-UID: {len(data)} bytes, expected 18 or 20")
        _, tx_power, namespace, instance = _EDDYSTONE_UID.unpack(data[:18])
        return Decoded(
            "eddystone-uid",
            uuid=namespace.hex() + instance.hex(),
            tx_power=tx_power,
            text={"namespace": namespace.hex(), "instance": instance.hex()},
        )
    if frame == 0x10:
        if len(data) < 3 or len(data) > 20 or data[2] >= len(URL_SCHEMES):
            raise AdvertError(EDDYSTONE_BAD_FRAME, f"Eddystone-URL: bad frame {data.hex()}")
        parts = [URL_SCHEMES[data[2]]]
        for byte in data[3:]:
            if byte < len(URL_CODES):
                parts.append(URL_CODES[byte])
            elif 0x21 <= byte <= 0x7E:
                parts.append(chr(byte))
            else:
                raise AdvertError(EDDYSTONE_BAD_FRAME, f"Eddystone-URL: reserved byte 0x{byte:02x}")
        tx_power = data[1] - 256 if data[1] > 127 else data[1]
        return Decoded("eddystone-url", tx_power=tx_power, text={"url": "".join(parts)})
    if frame == 0x20:
        if len(data) >= 2 and data[1] == 0x01:
            raise AdvertError(EDDYSTONE_ENCRYPTED_TLM, "Eddystone-eTLM: encrypted telemetry")
        if len(data) != _EDDYSTONE_TLM.size or data[1] != 0x00:
            raise AdvertError(EDDYSTONE_BAD_FRAME, f"Eddystone-TLM: bad frame {data.hex()}")
        _, _, millivolts, temperature, adv_count, uptime = _EDDYSTONE_TLM.unpack(data)
        values: dict[str, float | int] = {"adv_count": adv_count, "uptime": round(uptime / 10, 1)}
        units = {"uptime": "s"}
        if millivolts:
            values["voltage"] = millivolts / 1000
            units["voltage"] = "V"
        if temperature != -0x8000:
            values["temperature"] = temperature / 256
            units["temperature"] = "°C"
        return Decoded("eddystone-tlm", values, units)
    return None


def encode_eddystone_url(url: str, tx_power: int) -> bytes:
    """Eddystone-URL service data of ``url`` (the longest scheme and expansion codes that fit)."""
    schemes = [(code, scheme) for code, scheme in enumerate(URL_SCHEMES) if url.startswith(scheme)]
    if not schemes:
        raise EncodeError(f"Eddystone-URL: {url!r} starts with no known scheme")
    scheme_code, scheme = max(schemes, key=lambda s: len(s[1]))
    rest = url[len(scheme) :]
    out = bytearray([0x10, tx_power & 0xFF, scheme_code])
    while rest:
        for code, expansion in sorted(enumerate(URL_CODES), key=lambda c: -len(c[1])):
            if rest.startswith(expansion):
                out.append(code)
                rest = rest[len(expansion) :]
                break
        else:
            char = ord(rest[0])
            if not 0x21 <= char <= 0x7E:
                raise EncodeError(f"Eddystone-URL: {rest[0]!r} cannot be sent")
            out.append(char)
            rest = rest[1:]
    if len(out) > 20:
        raise EncodeError(f"Eddystone-URL: {url!r} takes {len(out)} bytes, at most 20 fit")
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------
# Picking the decoder


def decode(advert: Advert, bindkey: bytes | None = None) -> tuple[list[Decoded], list[AdvertError]]:
    """Every known format the advert carries, decoded (BTHome, Eddystone, Ruuvi, iBeacon: a beacon may send
    an iBeacon and an Eddystone-TLM in one advert), and the errors of those that claim a format and do not
    decode. Both empty: the advert is of no format known here."""
    found: list[Decoded] = []
    errors: list[AdvertError] = []
    service = advert.service_data
    if service:
        data = service.get(BTHOME_UUID)
        if data is not None:
            try:
                found.append(decode_bthome(data, mac=mac_bytes(advert.address), bindkey=bindkey))
            except AdvertError as err:
                errors.append(err)
        data = service.get(EDDYSTONE_UUID)
        if data is not None:
            try:
                eddystone = decode_eddystone(data)
            except AdvertError as err:
                errors.append(err)
            else:
                if eddystone is not None:
                    found.append(eddystone)
    manufacturer = advert.manufacturer_data
    if manufacturer:
        data = manufacturer.get(RUUVI_COMPANY)
        if data is not None and data[:1] == b"\x05":
            try:
                found.append(decode_ruuvi(data))
            except AdvertError as err:
                errors.append(err)
        data = manufacturer.get(IBEACON_COMPANY)
        if data is not None and is_ibeacon(data):
            try:
                found.append(decode_ibeacon(data))
            except AdvertError as err:
                errors.append(err)
    return found, errors
