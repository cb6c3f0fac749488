"""The reconnect backoff as a fleet lives it (issue 15 §5): N gateways lose the broker at the same instant,
retry with the shipped ``upstream.mqtt.reconnect`` defaults the way the forwarder does (a pause of
``delay(0)`` after a lost session, then ``delay(1)``, ``delay(2)``... after each refused attempt), and the
broker is back after 30 s. The jitter must spread their reconnects: at most N/5 in any one second, every
gateway back within ``max_s`` of the restart. bench/fleet.py measures the same with real processes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.backoff import Backoff
from gateway.config.models import ReconnectConfig

OUTAGE_S = 30.0


def reconnect_times(n: int, seed: int, outage_s: float = OUTAGE_S) -> list[float]:
    defaults = ReconnectConfig()
    backoff = Backoff(defaults.initial_s, defaults.max_s)
    rng = random.Random(seed)
    times = []
    for _ in range(n):
        t = backoff.delay(0, rng.random)  # the pause after the lost session
        attempt = 1
        while t < outage_s:  # refused at once while the broker is down
            t += backoff.delay(attempt, rng.random)
            attempt += 1
        times.append(t)
    return times


@pytest.mark.parametrize("n", [50, 500, 5000])
@pytest.mark.parametrize("seed", range(5))
def test_after_a_broker_restart_the_fleet_comes_back_spread_out(n: int, seed: int) -> None:
    times = reconnect_times(n, seed)
    per_second = Counter(int(t - OUTAGE_S) for t in times)
    assert max(per_second.values()) <= n / 5, sorted(per_second.items())
    assert max(times) - OUTAGE_S <= ReconnectConfig().max_s
    if n >= 500:  # a burst for the broker is what the jitter prevents: no second holds a tenth of the fleet
        assert max(per_second.values()) <= n / 10

