"""Shared test setup.

Hypothesis runs without deadlines everywhere (this machine is shared and noisy: a deadline is a timing
assertion) and derandomised under CI, so a run is reproducible and never flaky.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.broker import Mosquitto

settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- a private Mosquitto (tests/broker.py) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """One private broker for the session. Persistent, with unbounded per-client queues, so a subscriber's
    session (and what was queued for it) survives a test stopping and restarting the broker."""
    broker = Mosquitto(persistence=True, extra_config=["max_queued_messages 0"])
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The session broker, (re)started if an earlier test left it stopped."""
    return mosquitto.start()
