"""A per-key sliding-window rate limiter (publishes per minute per address).

Pure logic: the caller passes ``now`` (seconds). The window is kept as
one-second buckets, at most ``window`` of them per key, so memory per key is
bounded and the count is exact to the second. A strictly periodic client at
exactly the limit is never refused: the window never spans more than
``window`` seconds of arrivals.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

DEFAULT_WINDOW: Final = 60


class _Window:
    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        # (second, count) pairs, oldest first; only seconds that saw a hit.
        self.buckets: deque[list[int]] = deque()
        self.total = 0


class SlidingWindowLimiter:
    """At most ``limit`` hits per key in any ``window``-second span; 0 = unlimited."""

    def __init__(self, limit: int, window: int = DEFAULT_WINDOW) -> None:
        if limit < 0 or window < 1:
            raise ValueError("limit must be >= 0 and window >= 1")
        self.limit = limit
        self.window = window
        self._keys: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def _expire(self, w: _Window, second: int) -> None:
        oldest_kept = second - self.window + 1
        while w.buckets and w.buckets[0][0] < oldest_kept:
            w.total -= w.buckets.popleft()[1]

    def hit(self, key: str, now: float) -> float:
        """Count one hit for ``key``; 0.0 if allowed, else seconds until it would be."""
        if self.limit == 0:
            return 0.0
        second = math.floor(now)
        w = self._keys.get(key)
        if w is None:
            w = self._keys[key] = _Window()
        self._expire(w, second)
        if w.total >= self.limit:
            return self._retry_after(w, now)
        if w.buckets and w.buckets[-1][0] == second:
            w.buckets[-1][1] += 1
        else:
            w.buckets.append([second, 1])
        w.total += 1
        return 0.0

    def _retry_after(self, w: _Window, now: float) -> float:
        # The earliest moment enough old buckets have left the window.
        excess = w.total - self.limit + 1
        for second, count in w.buckets:
            excess -= count
            if excess <= 0:
                return max(second + self.window - now, 0.001)
        return float(self.window)  # unreachable while total >= limit > 0

    def prune(self, now: float) -> None:
        """Forget keys with no hits inside the window (bounds memory)."""
        second = math.floor(now)
        for key in list(self._keys):
            w = self._keys[key]
            self._expire(w, second)
            if not w.buckets:
                del self._keys[key]
