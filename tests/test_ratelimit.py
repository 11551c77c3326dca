"""The sliding-window publish limiter."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.ratelimit import SlidingWindowLimiter


class SlidingWindowTests(SynchronousTestCase):
    def test_allows_limit_then_refuses_with_retry_after(self) -> None:
        """`limit` hits pass; the next is refused with the wait until the oldest leaves."""
        lim = SlidingWindowLimiter(3, window=60)
        self.assertEqual([lim.hit("a", t) for t in (0.0, 10.0, 20.0)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(lim.hit("a", 30.0), 30.0)
        self.assertEqual(lim.hit("a", 60.0), 0.0)  # the hit at 0 has left the window

    def test_refused_hits_do_not_count(self) -> None:
        """A refused publish does not extend the wait."""
        lim = SlidingWindowLimiter(1, window=10)
        lim.hit("a", 0.0)
        for t in range(1, 10):
            self.assertGreater(lim.hit("a", float(t)), 0)
        self.assertEqual(lim.hit("a", 10.0), 0.0)

    def test_keys_are_independent(self) -> None:
        """One address at its limit does not affect another."""
        lim = SlidingWindowLimiter(1)
        lim.hit("a", 0.0)
        self.assertEqual(lim.hit("b", 0.0), 0.0)

    def test_zero_is_unlimited(self) -> None:
        """limit 0 never refuses and keeps no state."""
        lim = SlidingWindowLimiter(0)
        for i in range(10_000):
            self.assertEqual(lim.hit("a", i / 1000), 0.0)
        self.assertEqual(len(lim), 0)

    def test_prune_forgets_idle_keys(self) -> None:
        """Keys silent for a whole window are dropped, bounding memory."""
        lim = SlidingWindowLimiter(5, window=60)
        for i in range(1000):
            lim.hit(f"10.0.{i // 250}.{i % 250}", 0.0)
        lim.prune(30.0)
        self.assertEqual(len(lim), 1000)
        lim.prune(61.0)
        self.assertEqual(len(lim), 0)

    def test_default_lets_100_peers_behind_one_nat_heartbeat_every_5s(self) -> None:
        """1200/min: 100 peers, each online then an update every 5 s (with timer
        drift), through one address for 10 minutes: nothing is refused."""
        lim = SlidingWindowLimiter(1200)
        rng = random.Random(7)
        times = []
        for _ in range(100):
            t = rng.uniform(0, 5)
            while t < 600:
                times.append(t)
                t += 5 + rng.uniform(0, 0.01)  # LoopingCall drift is late, never early
        refused = sum(1 for t in sorted(times) if lim.hit("nat", t) > 0)
        self.assertEqual(refused, 0)

    def test_goop2_rate_would_lock_out_that_household(self) -> None:
        """The same load at goop2's 60/min is mostly refused (why our default differs)."""
        lim = SlidingWindowLimiter(60)
        refused = sum(1 for i in range(1200) if lim.hit("nat", i * 0.05) > 0)
        self.assertGreater(refused, 1000)

    @given(
        st.integers(min_value=1, max_value=50),
        st.lists(st.floats(min_value=0, max_value=300, allow_nan=False), max_size=300),
    )
    def test_never_more_than_limit_in_any_window(self, limit: int, raw: list[float]) -> None:
        """Property: the accepted hits never exceed `limit` in any window-long span
        (at one-second granularity), and every refusal names a positive wait."""
        lim = SlidingWindowLimiter(limit, window=60)
        accepted = []
        for t in sorted(raw):
            wait = lim.hit("k", t)
            if wait == 0:
                accepted.append(int(t))
            else:
                self.assertGreater(wait, 0)
        for second in set(accepted):
            in_window = sum(1 for a in accepted if second - 59 <= a <= second)
            self.assertLessEqual(in_window, limit)
