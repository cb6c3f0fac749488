"""bench/fleet.py in small (the N=50 run is in bench/README.md): 4 real gateways, the broker away for 3 s;
every gateway reconnects once after the restart and every committed event is delivered (lost 0)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.fleet import report, run

pytestmark = pytest.mark.timeout(240)


async def test_a_small_fleet_survives_a_broker_restart_with_nothing_lost(tmp_path: Path) -> None:
    args = argparse.Namespace(gateways=4, outage=3.0, poll=0.5, warmup=1.0)
    outcome = await run(args, tmp_path)
    text = report(outcome)
    assert sum(outcome.curve) == 4, text  # each gateway's first CONNECT after the restart, once
    assert outcome.committed > 0 and outcome.delivered == outcome.committed, text
    assert outcome.left == 0 and not any(outcome.lost.values()), text
    assert outcome.outage_events > 0 and outcome.conflicting == 0 and outcome.bad_ids == 0, text
