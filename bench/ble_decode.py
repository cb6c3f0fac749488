"""BLE advertisement decode cost: ``python -m bench.ble_decode [--runs N] [--adverts N]``.

For each format of the shipped capture (config/examples/ble-adverts.jsonl: BTHome v2 plain and encrypted,
Ruuvi RAWv2, iBeacon, Eddystone UID/URL/TLM), the CPU time per advertisement (this process, one core;
medians of ``--runs`` runs of ``--adverts`` adverts each, the cases interleaved run by run) of:

- ``ours``: :func:`protocols.ble_adverts.decode`, what the ``ble`` driver calls;
- ``ours + driver``: the driver's whole work per advert (duplicate check, decode, the event's data), each
  advert decoded (``min_interval_s: 0``: none suppressed), emitted into a counter instead of a queue;
- ``construct``: the construct definitions the fast paths are tested against (fixed layouts only);
- ``bthome-ble`` / ``ruuvitag-ble``: the field's parsers (Home Assistant's) on the same bytes, through their
  public ``update()`` (a ``BluetoothServiceInfoBleak`` built per advert, as a scanner would; encrypted
  adverts with an increasing counter, as a sensor sends them, else bthome-ble refuses the repeats); and
  ``ruuvitag-ble df5`` its data format 5 decoder class alone.

Then what importing each costs a gateway process (a fresh interpreter per module: wall time and the growth
of its resident memory), which decided the choice as much as the per-advert figures (see
protocols/ble_adverts.py).
The machine is shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from drivers.ble import BleDriver, BleOptions
from firmware_sim import ble as sim
from protocols.ble_adverts import (
    BTHOME_UUID,
    EDDYSTONE_TLM,
    EDDYSTONE_UID,
    EDDYSTONE_UUID,
    IBEACON,
    IBEACON_COMPANY,
    RUUVI_COMPANY,
    RUUVI_RAWV2,
    Advert,
    decode,
    encode_bthome,
    encrypt_bthome,
)

KEY = bytes.fromhex(sim.BTHOME_BINDKEY)


def samples() -> dict[str, Advert]:
    """One advert per format, from the shipped capture."""
    adverts = sim.adverts()
    by_address = {a.address: a for a in adverts}
    a = sim.ADDRESSES
    bluecharm = by_address[a["bluecharm"]]
    return {
        "bthome": by_address[a["bthome"]],
        "bthome-encrypted": by_address[a["bthome-encrypted"]],
        "ruuvi": next(x for x in adverts if x.address == a["ruuvi"]),
        "ibeacon": Advert(bluecharm.address, -60, None, manufacturer_data=dict(bluecharm.manufacturer_data)),
        "eddystone-tlm": Advert(
            bluecharm.address,
            -60,
            None,
            service_data={EDDYSTONE_UUID: bluecharm.service_data[EDDYSTONE_UUID]},
        ),
        "eddystone-url": by_address[a["eddystone-url"]],
        "eddystone-uid": by_address[a["eddystone-uid"]],
    }


class _Ctx:
    """A DeviceContext that counts what the driver emits."""

    device = "bench"
    log = logging.getLogger("bench.ble")

    def __init__(self) -> None:
        self.events = 0

    def emit(self, kind: str, data: Any, ts: float | None = None) -> None:
        self.events += 1

    def count(self, counter: str, n: int = 1) -> None:
        pass


def cpu_us(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def sealed_stream(advert: Advert, count: int) -> Callable[[], Advert]:
    """The encrypted advert again and again, its counter increasing (a parser that checks the counter, as
    bthome-ble does, would otherwise refuse every repeat before decrypting it)."""
    body = encode_bthome([(0x02, 2506), (0x03, 5055)])
    mac = bytes.fromhex(advert.address.replace(":", ""))
    adverts = iter(
        [
            Advert(advert.address, advert.rssi, advert.name, service_data={BTHOME_UUID: sealed})
            for sealed in (encrypt_bthome(body, mac=mac, bindkey=KEY, counter=n) for n in range(1, count + 1))
        ]
    )
    return lambda: next(adverts)


def cases(name: str, advert: Advert, total: int) -> dict[str, Callable[[], object]]:
    key = KEY if name == "bthome-encrypted" else None
    if key is None:
        next_advert: Callable[[], Advert] = lambda: advert  # noqa: E731  # the same advert every time
    else:
        next_advert = sealed_stream(advert, total)
    out: dict[str, Callable[[], object]] = {"ours": lambda: decode(next_advert(), key)}
    if key is not None:
        next_for_driver = sealed_stream(advert, total)
        next_for_library = sealed_stream(advert, total)
    else:
        next_for_driver = next_for_library = next_advert

    options = BleOptions.model_validate(
        {"replay": __file__, "min_interval_s": 0, "bindkeys": {advert.address: sim.BTHOME_BINDKEY}}
        if key
        else {"replay": __file__, "min_interval_s": 0}
    )
    driver = BleDriver("bench", options)
    ctx = _Ctx()
    out["ours + driver"] = lambda: driver._handle(next_for_driver(), ctx)  # type: ignore[arg-type]  # a counting context

    if name == "ruuvi":
        data = advert.manufacturer_data[RUUVI_COMPANY]
        out["construct"] = lambda: RUUVI_RAWV2.parse(data)
    elif name == "ibeacon":
        data = advert.manufacturer_data[IBEACON_COMPANY]
        out["construct"] = lambda: IBEACON.parse(data)
    elif name == "eddystone-uid":
        data = advert.service_data[EDDYSTONE_UUID]
        out["construct"] = lambda: EDDYSTONE_UID.parse(data[:18])
    elif name == "eddystone-tlm":
        data = advert.service_data[EDDYSTONE_UUID]
        out["construct"] = lambda: EDDYSTONE_TLM.parse(data)

    if name.startswith("bthome"):
        from bthome_ble import BTHomeBluetoothDeviceData  # noqa: PLC0415  # the library only where compared

        parser = BTHomeBluetoothDeviceData(bindkey=key)
        out["bthome-ble"] = lambda: parser.update(_service_info(next_for_library()))
    elif name == "ruuvi":
        from ruuvitag_ble.df5_decoder import DataFormat5Decoder  # noqa: PLC0415
        from ruuvitag_ble.parser import RuuvitagBluetoothDeviceData  # noqa: PLC0415

        ruuvi = RuuvitagBluetoothDeviceData()
        out["ruuvitag-ble"] = lambda: ruuvi.update(_service_info(advert))
        data = advert.manufacturer_data[RUUVI_COMPANY]

        def df5() -> object:
            d = DataFormat5Decoder(data)
            return (d.temperature_celsius, d.humidity_percentage, d.pressure_hpa, d.battery_voltage_mv)

        out["ruuvitag-ble df5"] = df5
    return out


def _service_info(advert: Advert) -> Any:
    from bleak.backends.device import BLEDevice  # noqa: PLC0415
    from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415

    return BluetoothServiceInfoBleak(
        name=advert.name or advert.address,
        address=advert.address,
        rssi=advert.rssi,
        manufacturer_data=dict(advert.manufacturer_data),
        service_data=dict(advert.service_data),
        service_uuids=list(advert.service_uuids) or [BTHOME_UUID],
        source="local",
        device=BLEDevice(advert.address, advert.name, None),
        advertisement=None,
        connectable=False,
        time=time.monotonic() + time.perf_counter(),  # always "later": the parser never skips it as old
        tx_power=None,
    )


BASE = "import drivers.ble, bleak, cryptography.hazmat.primitives.ciphers.aead"
"""What a gateway with a scanning ble device has loaded anyway (pydantic, construct, bleak, cryptography)."""

IMPORTS = {
    "the ble driver, bleak, cryptography (bare)": ("", BASE),
    "bthome_ble, on top of those": (BASE, "import bthome_ble"),
    "ruuvitag_ble, on top of those": (BASE, "import ruuvitag_ble.df5_decoder"),
}


def import_cost(before: str, statement: str) -> tuple[float, float]:
    """(ms, MB of resident memory gained) to run ``statement`` in a fresh interpreter."""
    # VmRSS, not ru_maxrss: a child started from this (large) process inherits its peak across exec
    probe = (
        f"import time\n{before}\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "r0 = rss(); t0 = time.perf_counter()\n"
        f"{statement}\n"
        "print((time.perf_counter() - t0) * 1000, rss() - r0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--adverts", type=int, default=5000)
    parser.add_argument("--import-runs", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("bthome_ble").setLevel(logging.ERROR)
    total = args.runs * args.adverts
    table = {name: cases(name, advert, total) for name, advert in samples().items()}
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):  # interleaved: every case once per run
        for name, fns in table.items():
            for case, fn in fns.items():
                results.setdefault((name, case), []).append(cpu_us(fn, args.adverts))
    print(f"CPU us per advertisement, median of {args.runs} runs of {args.adverts} (adverts/s in brackets)\n")
    columns = ["ours", "ours + driver", "construct", "bthome-ble", "ruuvitag-ble", "ruuvitag-ble df5"]
    print(f"{'format':<18}" + "".join(f"{c:>22}" for c in columns))
    for name in table:
        row = f"{name:<18}"
        for case in columns:
            got = results.get((name, case))
            if got is None:
                row += f"{'-':>22}"
            else:
                us = statistics.median(got)
                row += f"{f'{us:.2f} ({1e6 / us:,.0f}/s)':>22}"
        print(row)
    print("\nimport cost in a fresh interpreter (median of", args.import_runs, "runs)")
    for label, statements in IMPORTS.items():
        costs = [import_cost(*statements) for _ in range(args.import_runs)]
        ms = statistics.median(c[0] for c in costs)
        mb = statistics.median(c[1] for c in costs)
        print(f"  {label:<44} {ms:7.0f} ms {mb:7.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
