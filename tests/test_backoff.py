"""Capped exponential backoff with jitter: growth, cap, reset, validation, determinism."""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.backoff import Backoff


class FixedJitter(random.Random):
    """A random source whose uniform() always returns one end and records its bounds."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


def spec_base(initial: float, cap: float, factor: float, n: int) -> float:
    """min(cap, initial * factor**n), computed without overflow for any n."""
    if factor == 1 or math.log(initial) + n * math.log(factor) < math.log(cap):
        return min(cap, initial * factor**n)
    return cap


class GrowthTests(SynchronousTestCase):
    def test_defaults_double_from_a_quarter_second_up_to_four(self) -> None:
        """With the top of the jitter range: 0.25, 0.5, 1, 2, 4, then 4 for ever."""
        b = Backoff(rng=FixedJitter(high=True))
        self.assertEqual([b.next() for _ in range(8)], [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0])

    def test_bottom_of_the_jitter_range_is_half_the_base(self) -> None:
        """With the bottom of the jitter range each delay is half the base."""
        b = Backoff(initial=1.0, cap=10.0, factor=3.0, rng=FixedJitter(high=False))
        self.assertEqual([b.next() for _ in range(5)], [0.5, 1.5, 4.5, 5.0, 5.0])

    def test_jitter_is_drawn_from_half_to_one(self) -> None:
        """Each delay asks the random source for one factor in [0.5, 1.0]."""
        rng = FixedJitter(high=True)
        b = Backoff(rng=rng)
        for _ in range(3):
            b.next()
        self.assertEqual(rng.calls, [(0.5, 1.0)] * 3)

    def test_factor_one_is_constant(self) -> None:
        """factor=1 never grows: every base is the initial delay."""
        b = Backoff(initial=2.0, cap=5.0, factor=1.0, rng=FixedJitter(high=True))
        self.assertEqual({b.next() for _ in range(20)}, {2.0})

    def test_attempts_are_counted_and_reset_starts_over(self) -> None:
        """next() counts attempts; reset() goes back to the initial delay."""
        b = Backoff(rng=FixedJitter(high=True))
        for _ in range(6):
            b.next()
        self.assertEqual(b.attempts, 6)
        b.reset()
        self.assertEqual(b.attempts, 0)
        self.assertEqual([b.next() for _ in range(3)], [0.25, 0.5, 1.0])

    def test_seeded_random_gives_the_same_sequence(self) -> None:
        """Two backoffs on equally seeded random.Random agree; another seed differs."""
        def run(seed: int) -> list[float]:
            b = Backoff(rng=random.Random(seed))
            return [b.next() for _ in range(10)]

        self.assertEqual(run(7), run(7))
        self.assertNotEqual(run(7), run(8))

    def test_reset_does_not_rewind_the_random_source(self) -> None:
        """After reset the bases repeat but the jitter keeps drawing fresh values."""
        b = Backoff(rng=random.Random(1))
        first = [b.next() for _ in range(4)]
        b.reset()
        self.assertNotEqual([b.next() for _ in range(4)], first)


class ValidationTests(SynchronousTestCase):
    def test_invalid_arguments_raise_value_error(self) -> None:
        """initial <= 0, cap < initial or factor < 1 is refused."""
        cases: list[dict[str, Any]] = [
            {"initial": 0.0},
            {"initial": -1.0},
            {"initial": 5.0, "cap": 4.0},
            {"initial": 1.0, "cap": 0.5},
            {"factor": 0.99},
            {"factor": 0.0},
            {"factor": -2.0},
        ]
        for kwargs in cases:
            with self.assertRaises(ValueError, msg=str(kwargs)):
                Backoff(**kwargs)

    def test_boundary_arguments_are_accepted(self) -> None:
        """cap == initial and factor == 1 are fine: a constant delay."""
        b = Backoff(initial=3.0, cap=3.0, factor=1.0, rng=FixedJitter(high=True))
        self.assertEqual([b.next() for _ in range(3)], [3.0, 3.0, 3.0])

    def test_nan_arguments_raise_value_error(self) -> None:
        """NaN initial, cap or factor is refused like any other invalid value.

        Every comparison with NaN is false, so `initial <= 0 or cap < initial or
        factor < 1` lets NaN through; cap=NaN then gives NaN delays.
        """
        nan = float("nan")
        cases: list[dict[str, Any]] = [{"initial": nan}, {"cap": nan}, {"factor": nan}]
        for kwargs in cases:
            with self.assertRaises(ValueError, msg=str(kwargs)):
                Backoff(**kwargs)


class PropertyTests(SynchronousTestCase):
    @given(
        initial=st.floats(min_value=0.001, max_value=10.0),
        span=st.floats(min_value=1.0, max_value=1000.0),
        factor=st.floats(min_value=1.0, max_value=4.0),
        count=st.integers(min_value=1, max_value=60),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    @example(initial=0.25, span=16.0, factor=2.0, count=10, seed=0)
    @example(initial=1.0, span=1.0, factor=4.0, count=5, seed=1)
    def test_every_delay_is_between_half_and_all_of_the_capped_base(
        self, initial: float, span: float, factor: float, count: int, seed: int
    ) -> None:
        """Property: delay n is in [0.5*b, b] for b = min(cap, initial*factor**n), <= cap."""
        cap = initial * span
        b = Backoff(initial=initial, cap=cap, factor=factor, rng=random.Random(seed))
        for n in range(count):
            base = min(cap, initial * factor**n)
            delay = b.next()
            self.assertLessEqual(0.5 * base, delay, n)
            self.assertLessEqual(delay, base, n)
            self.assertLessEqual(delay, cap, n)

    @given(
        initial=st.floats(min_value=1e-6, max_value=100.0),
        span=st.floats(min_value=1.0, max_value=1e6),
        factor=st.floats(min_value=1.0, max_value=10.0),
    )
    @example(initial=1e-6, span=1e6, factor=10.0)
    @example(initial=100.0, span=1.0, factor=1.0)
    def test_a_thousand_attempts_stay_finite_and_capped(
        self, initial: float, span: float, factor: float
    ) -> None:
        """Property: after 1000 attempts nothing overflows and no delay exceeds cap."""
        cap = initial * span
        b = Backoff(initial=initial, cap=cap, factor=factor, rng=random.Random(0))
        delays = [b.next() for _ in range(1000)]
        self.assertTrue(all(math.isfinite(d) for d in delays))
        self.assertLessEqual(max(delays), cap)
        self.assertGreaterEqual(min(delays), 0.5 * initial)
        self.assertEqual(b.attempts, 1000)

    def test_a_large_factor_does_not_overflow(self) -> None:
        """Any accepted factor survives many attempts: initial first, then the cap
        (1e6**52 would overflow a float if computed directly)."""
        b = Backoff(initial=1.0, cap=10.0, factor=1e6, rng=FixedJitter(high=True))
        self.assertEqual([b.next() for _ in range(100)], [1.0] + [10.0] * 99)

    def test_growth_continues_past_64_attempts_until_cap(self) -> None:
        """delay n follows min(cap, initial*factor**n) for n > 64 too.

        With initial=0.01, factor=1.1, cap=100 the base is frozen at 0.01*1.1**64
        (about 4.45) instead of reaching cap at attempt 97.
        """
        initial, cap, factor = 0.01, 100.0, 1.1
        b = Backoff(initial=initial, cap=cap, factor=factor, rng=FixedJitter(high=True))
        delays = [b.next() for _ in range(120)]
        expected = [spec_base(initial, cap, factor, n) for n in range(120)]
        for n in (64, 65, 96, 97, 119):
            self.assertAlmostEqual(delays[n], expected[n], places=6, msg=f"attempt {n}")
