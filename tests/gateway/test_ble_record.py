"""``edgegw ble record`` through the real command line and bleak's real BleakScanner, with only the scanner's
platform backend replaced (tests/drivers/blefake.py); what it writes replays through the ble driver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from drivers import ble
from drivers.ble import REPLAY_ENDED, BleDriver, BleOptions
from drivers.kinds import BLE_ADVERT
from drivers.testing import running
from firmware_sim import ble as sim
from gateway.cli.commands import main
from protocols.ble_adverts import advert_from_json
from tests.drivers.blefake import Air, FakeScanner

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def air(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Air]]:
    Air.reset()
    monkeypatch.setattr(ble, "SCANNER_BACKEND", FakeScanner)
    yield Air
    Air.reset()


def test_record_writes_what_the_adapter_hears(air: type[Air], tmp_path: Path) -> None:
    air.on_start = sim.adverts()
    out = tmp_path / "capture.jsonl"
    assert main(["ble", "record", "--out", str(out), "--adapter", "hci1", "--count", "5"]) == 0
    recorded = [advert_from_json(line) for line in out.read_text().splitlines()]
    assert [replace(a, ts=0.0) for a in recorded] == [replace(a, ts=0.0) for a in sim.adverts()[:5]]
    (scanner,) = air.started
    assert scanner.adapter == "hci1" and scanner.mode == "passive" and air.stopped == [scanner]


def test_record_stops_after_its_duration_and_appends(air: type[Air], tmp_path: Path) -> None:
    out = tmp_path / "capture.jsonl"
    out.write_text(sim.lines()[0] + "\n")
    air.on_start = sim.adverts()[1:3]
    assert main(["ble", "record", "--out", str(out), "--duration", "0.2", "--scanning-mode", "active"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert air.started[0].mode == "active"


def test_record_fails_clearly_when_the_adapter_cannot_scan(
    air: type[Air], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    air.reset(passive_supported=False)
    code = main(
        ["ble", "record", "--out", str(tmp_path / "c.jsonl"), "--scanning-mode", "passive", "--count", "1"]
    )
    assert code == 1
    assert "bluetooth hci0: cannot scan" in capsys.readouterr().err


async def test_a_recorded_capture_replays_through_the_driver(air: type[Air], tmp_path: Path) -> None:
    air.on_start = sim.adverts()
    out = tmp_path / "capture.jsonl"
    # the CLI runs its own event loop: from a thread here
    assert (
        await asyncio.to_thread(main, ["ble", "record", "--out", str(out), "--count", str(len(sim.lines()))])
        == 0
    )
    options = BleOptions.model_validate({"replay": str(out), "replay_speed": 0, "raw": True})
    async with running({"replayed": lambda: BleDriver("replayed", options)}) as run:
        await run.until_state(REPLAY_ENDED)
    formats = [a["format"] for a in run.data(BLE_ADVERT)]
    assert sorted(set(formats)) == [
        "bthome",
        "eddystone-tlm",
        "eddystone-uid",
        "eddystone-url",
        "ibeacon",
        "raw",
        "ruuvi",
    ]
