"""A reactor stall probe: how late a timer that should fire every ``interval`` runs.

Lateness beyond the interval is time the reactor thread spent on something
else without returning to the event loop. The longest stall since start (and
since the last `take`) is what the benchmark and /stats.json report.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class StallProbe:
    def __init__(self, reactor: IReactorTime, interval: float = 0.01) -> None:
        self.reactor = reactor
        self.interval = interval
        self.max_stall = 0.0  # seconds, since start
        self.window_max = 0.0  # seconds, since the last take()
        self.ticks = 0
        self._last = 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        self._last = self.reactor.seconds()
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        now = self.reactor.seconds()
        stall = max(0.0, now - self._last - self.interval)
        self._last = now
        self.ticks += 1
        if stall > self.max_stall:
            self.max_stall = stall
        if stall > self.window_max:
            self.window_max = stall

    def take(self) -> dict[str, Any]:
        """The figures, and start a new window."""
        out = {
            "max_stall_ms": round(self.max_stall * 1000, 3),
            "window_max_stall_ms": round(self.window_max * 1000, 3),
            "probe_interval_ms": self.interval * 1000,
            "ticks": self.ticks,
        }
        self.window_max = 0.0
        return out
