"""The chaos run of ``bench/chaos.py``, short: 60 s of every simulated device family into one ``edgegw run``,
with 3 broker restarts, 2 gateway SIGKILLs (one with the buffer file corrupted before the restart), a phase
with the buffer's filesystem full, and the simulators' unplugs and line noise; the accounting as assertions.

The rates are the benchmark's (``python -m bench.chaos``): here every device must still be read between the
breaks, however loaded the machine is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bench.chaos import Plan, account, report, run

pytestmark = pytest.mark.timeout(600)

log = logging.getLogger(__name__)

PLAN = Plan(
    seconds=60,
    broker_restarts=3,
    gateway_kills=2,
    corrupt=True,
    disk_full_s=5,
    unplug_every=20,
    rate=1000,
    seed=2,
)


@pytest.mark.skipif(os.geteuid() != 0, reason="the disk-full phase mounts a tmpfs: root is needed")
async def test_chaos_loses_nothing_committed_and_counts_every_drop(tmp_path: Path) -> None:
    outcome = await run(PLAN, tmp_path, progress=log.info)
    acc = account(outcome)
    summary = report(acc, PLAN) + "\n" + outcome.log_tail
    assert acc.disk_full_skipped is None, summary

    # Every committed seq reached the subscriber, or was in the file moved aside as corrupt.
    assert acc.committed > 0
    assert acc.lost == [], summary
    assert acc.left_in_buffer == 0, summary
    assert acc.delivered + acc.moved_aside_corrupt == acc.committed, summary
    # The corrupt file (killed with a backlog, the broker being down) was moved aside, once, and counted.
    assert acc.corrupt_files == 1 and len(acc.corrupt_moved) == 1, summary
    assert acc.moved_aside_corrupt > 0, summary
    # The disk-full phase refused events, each counted under its reason, and nothing else was dropped.
    assert acc.dropped.get("disk_full", 0) > 0, summary
    assert {reason for reason, n in acc.dropped.items() if n} == {"disk_full"}, summary

    # Duplicates only around a break, each copy the same event with the same id.
    assert acc.duplicates_outside_breaks == 0, summary
    assert acc.conflicting_duplicates == 0 and acc.bad_ids == 0, summary

    # Restarts: the ones the run made, and none of the gateway's own doing; a clean stop at the end.
    assert acc.gateway_kills == 2 and acc.gateway_starts == 3, summary
    assert acc.unexpected_exits == [], summary
    assert acc.broker_restarts == 3, summary
    assert acc.stop_code == 0, summary

    # Every device was read between the breaks; the memory stayed flat.
    for rate in acc.rates:
        assert rate.seconds > 0 and rate.measured > 0, (rate, summary)
    assert acc.rss_flat, summary
