"""Peers online over the last hour: one count a minute, in a ring (for the dashboard's chart).

Pure; the service records into it on a timer and `/dashboard.json` reads it.
"""

from __future__ import annotations

from collections import deque
from typing import Final

MINUTES: Final = 60


class MinuteCounts:
    def __init__(self, size: int = MINUTES) -> None:
        self._points: deque[tuple[float, int]] = deque(maxlen=size)

    def record(self, now: float, count: int) -> None:
        self._points.append((now, count))

    def points(self) -> list[tuple[float, int]]:
        """(time, count) pairs, oldest first, at most ``size`` of them."""
        return list(self._points)
