"""BLE advertisements from the formats' published test vectors, as a replay file for the ``ble`` driver.

A BLE radio cannot run here, so the simulator of the ``ble`` family is a capture: the adverts below, written
in the line format of ``edgegw ble record`` (:func:`protocols.ble_adverts.advert_to_json`), which a ``ble``
device plays with ``replay: FILE``. The shipped file, ``config/examples/ble-adverts.jsonl``, is exactly
:func:`lines` (a test keeps it so); ``python -m firmware_sim.ble FILE`` writes it again.

Where each payload comes from (the bytes are the publications'; addresses, names, RSSIs and times are ours
unless said):

- BTHome v2: the example advertisement of https://bthome.io/format (``DIY-sensor``, 25.00 °C, 50.55 %); an
  advert of the object examples of the same page's table (packet id, battery 97 %, pressure 1008.83 hPa,
  voltage 3.074 V); and the encryption example of https://bthome.io/encryption (MAC 54:48:E6:8F:80:A5, bind
  key 231d39c1d7cc1ab1aee224cd096db932, counter 0x33221100, 25.06 °C and 50.55 % sealed with AES-CCM; the
  tests check that bthome-ble decrypts it to the same values). BTHome documentation: bthome.io.
- Ruuvi RAWv2: the four test vectors of Ruuvi's data format 5 documentation (valid data, maximum, minimum,
  not available), https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2, from
  the tag CB:B8:33:4C:88:4F that the vectors carry. Ruuvi Innovations' documentation.
- iBeacon + Eddystone-TLM: the BlueCharm beacon advert of ibeacon-ble's tests (Bluetooth-Devices/ibeacon-ble,
  tests/test_init.py, MIT licence, copyright J. Nick Koston): one advert with both formats, and a macOS
  address (a UUID, not a MAC).
- Eddystone-URL and -UID: the examples of Google's Eddystone specification (github.com/google/eddystone,
  Apache-2.0): the URLs ``https://goo.gl/S6zT6P`` and ``https://goo.gl/Aq18zF`` with the TX power examples
  0xEE (-18 dBm) and 0x12 (+18 dBm), and the namespace ``8b0ca750095477cb3e77`` of its UID construction
  example (instance ours).
- One advert of no decoded format (Nordic Semiconductor's company id 0x0059, our bytes), for ``raw: true``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from protocols.ble_adverts import (
    BTHOME_UUID,
    EDDYSTONE_UUID,
    IBEACON_COMPANY,
    RUUVI_COMPANY,
    Advert,
    advert_to_json,
    full_uuid,
)

__all__ = ["ADDRESSES", "START_TS", "adverts", "lines", "main"]

START_TS: Final = 1764770000.0
"""The time of the first advert (2025-12-03 13:53:20 UTC); each next one 0.5 s later."""

ADDRESSES: Final = {
    "bthome": "A4:C1:38:0B:7E:01",
    "bthome-objects": "A4:C1:38:0B:7E:02",
    "bthome-encrypted": "54:48:E6:8F:80:A5",
    "ruuvi": "CB:B8:33:4C:88:4F",
    "bluecharm": "61DE521B-F0BF-9F44-64D4-75BBE1738105",
    "eddystone-url": "C3:0A:55:10:00:01",
    "eddystone-url-2": "C3:0A:55:10:00:02",
    "eddystone-uid": "C3:0A:55:10:00:03",
    "nordic": "E8:1D:A8:00:00:59",
}
"""The address of each source in the file (what a config filters on)."""

BTHOME_BINDKEY: Final = "231d39c1d7cc1ab1aee224cd096db932"
"""The bind key of bthome.io's encryption example (of the address ``bthome-encrypted``)."""


def _payloads() -> list[tuple[str, str | None, int, dict[int, bytes], dict[str, bytes]]]:
    h = bytes.fromhex
    return [
        ("bthome", "DIY-sensor", -62, {}, {BTHOME_UUID: h("4002c40903bf13")}),
        ("bthome-objects", "DIY-sensor", -70, {}, {BTHOME_UUID: h("40000c016104138a010c020c")}),
        ("bthome-encrypted", None, -58, {}, {BTHOME_UUID: h("41a47266c95f730011223378237214")}),
        (
            "ruuvi",
            "Ruuvi 884F",
            -75,
            {RUUVI_COMPANY: h("0512fc5394c37c0004fffc040cac364200cdcbb8334c884f")},
            {},
        ),
        (
            "ruuvi",
            "Ruuvi 884F",
            -76,
            {RUUVI_COMPANY: h("057ffffffefffe7fff7fff7fffffdefefffecbb8334c884f")},
            {},
        ),
        (
            "ruuvi",
            "Ruuvi 884F",
            -74,
            {RUUVI_COMPANY: h("058001000000008001800180010000000000cbb8334c884f")},
            {},
        ),
        (
            "ruuvi",
            "Ruuvi 884F",
            -75,
            {RUUVI_COMPANY: h("058000ffffffff800080008000ffffffffffffffffffffff")},
            {},
        ),
        (
            "bluecharm",
            "BlueCharm_177999",
            -60,
            {IBEACON_COMPANY: b"\x02\x15BlueCharmBeacons\x0e\xfe\x13U\xc5"},
            {
                full_uuid(0x2080): h("6b0c0efe1355"),
                EDDYSTONE_UUID: h("20000bfe1c000000070800003e7c"),
            },
        ),
        ("eddystone-url", None, -66, {}, {EDDYSTONE_UUID: h("10ee03") + b"goo.gl/S6zT6P"}),
        ("eddystone-url-2", None, -81, {}, {EDDYSTONE_UUID: h("101203") + b"goo.gl/Aq18zF"}),
        ("eddystone-uid", None, -64, {}, {EDDYSTONE_UUID: h("00ee8b0ca750095477cb3e770000000000010000")}),
        ("nordic", "nRF52", -88, {0x0059: h("0102a0b0")}, {}),
    ]


def adverts() -> list[Advert]:
    """The adverts of the file, in order."""
    out = []
    for index, (source, name, rssi, manufacturer, service) in enumerate(_payloads()):
        out.append(
            Advert(
                address=ADDRESSES[source],
                rssi=rssi,
                name=name,
                manufacturer_data=manufacturer,
                service_data=service,
                service_uuids=tuple(service),
                tx_power=None,
                ts=START_TS + index * 0.5,
            )
        )
    return out


def lines() -> list[str]:
    """The file's lines (without newlines)."""
    return [advert_to_json(advert) for advert in adverts()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m firmware_sim.ble FILE``: write the replay file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m firmware_sim.ble FILE", file=sys.stderr)
        return 2
    Path(args[0]).write_text("".join(line + "\n" for line in lines()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
