"""The shipped BLE capture is what firmware_sim.ble writes from the published vectors, line for line, and
every line is a capture line the driver reads."""

from __future__ import annotations

from pathlib import Path

from firmware_sim import ble as sim
from protocols.ble_adverts import advert_from_json

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "examples" / "ble-adverts.jsonl"


def test_the_shipped_capture_is_the_vectors(tmp_path: Path) -> None:
    assert SHIPPED.read_text(encoding="utf-8").splitlines() == sim.lines()
    written = tmp_path / "again.jsonl"
    assert sim.main([str(written)]) == 0
    assert written.read_bytes() == SHIPPED.read_bytes()


def test_every_line_reads_back_and_every_source_is_named() -> None:
    adverts = [advert_from_json(line) for line in sim.lines()]
    assert {a.address for a in adverts} == set(sim.ADDRESSES.values())
    assert [a.ts for a in adverts] == sorted(a.ts for a in adverts)
