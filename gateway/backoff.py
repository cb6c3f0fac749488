"""Exponential backoff with jitter, shared by the device supervisor and the MQTT forwarder's reconnects.

At scale (thousands of gateways behind one broker, or one gateway's many devices on one converter) jitter
keeps retries from arriving in step; the floor of half the initial delay keeps a failing peer from being
hammered in a tight loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Jittered: uniform in [initial/2, min(maximum, initial * 2**attempt)]."""
        ceiling = min(self.maximum, self.initial * (2.0 ** min(attempt, 30)))
        floor = min(self.initial / 2, ceiling)
        return floor + (ceiling - floor) * rng()
