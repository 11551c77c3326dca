"""Test settings shared by every tier: a stable hypothesis profile for CI."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
# Derandomized by default, so `make test` on CI and a laptop see the same
# examples; HYPOTHESIS_PROFILE=dev explores new ones.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
