"""Test settings shared by every tier: a stable hypothesis profile for CI; and the
`veth` fixture (two network namespaces joined by a veth pair) the LAN tests share."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.netns import NetnsUnavailable, VethPair

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


@pytest.fixture
def veth() -> Iterator[VethPair]:
    try:
        pair = VethPair.create()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    try:
        yield pair
    finally:
        pair.delete()
