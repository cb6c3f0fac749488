"""Shared test setup.

Hypothesis runs without deadlines everywhere (this machine is shared and noisy: a deadline is a timing
assertion) and derandomised under CI, so a run is reproducible and never flaky.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
