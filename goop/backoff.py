"""Capped exponential backoff with jitter, for anything that retries a remote.

Pure: the random source is injected. Delay n is ``min(cap, initial * 2**n)``
scaled by a random factor in [0.5, 1.0], so many peers that lost the same
server do not come back to it in lockstep.
"""

from __future__ import annotations

import math
import random


class Backoff:
    def __init__(
        self,
        initial: float = 0.25,
        cap: float = 4.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not all(math.isfinite(x) for x in (initial, cap, factor)):
            raise ValueError("initial, cap and factor must be finite numbers")
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("need 0 < initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count this one)."""
        base = self._base(self.attempts)
        self.attempts += 1
        return base * self._rng.uniform(0.5, 1.0)

    def _base(self, n: int) -> float:
        # Compared in logs, so a huge factor or attempt count cannot overflow.
        if self.factor == 1:
            return self.initial
        if n * math.log(self.factor) >= math.log(self.cap / self.initial):
            return self.cap
        return min(self.cap, self.initial * self.factor**n)

    def reset(self) -> None:
        self.attempts = 0
