"""A fixed-bucket histogram: what Prometheus's histograms count, without a client library.

Pure and cheap (one bisect per observation), so the stall probe and the
garbage-collection callback can feed it on the reactor thread; the metrics
endpoint reads `cumulative` when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # A value equal to a bound belongs to that bucket ("le", less or equal).
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) for each bucket, then ("+Inf", all)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self._counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out
