"""A reactor stall probe: how late a timer that should fire every ``interval`` runs.

Lateness beyond the interval is time the reactor thread spent on something
else without returning to the event loop. The longest stall since start (and
since the last `take`) is what the benchmark and /stats.json report.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from goop.histogram import Histogram

# Seconds: a healthy reactor stays in the first buckets; the soak's target is 0.1.
STALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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
        # The longest garbage collection (seconds) since the last take(), and
        # of which generation: the usual cause of a stall nobody scheduled.
        self.gc_window_max = 0.0
        self.gc_window_gen = -1
        self._gc_started = 0.0
        # Since start, for /metrics: every tick's lateness, every collection's pause.
        self.stalls = Histogram(STALL_BUCKETS)
        self.gc_pauses = Histogram(GC_BUCKETS)

    def start(self) -> None:
        self._last = self.reactor.seconds()
        self._loop.start(self.interval, now=False)
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        self.gc_pauses.observe(took)
        if took > self.gc_window_max:
            self.gc_window_max = took
            self.gc_window_gen = int(info.get("generation", -1))

    def _tick(self) -> None:
        now = self.reactor.seconds()
        stall = max(0.0, now - self._last - self.interval)
        self._last = now
        self.ticks += 1
        self.stalls.observe(stall)
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
            "window_max_gc_ms": round(self.gc_window_max * 1000, 3),
            "window_max_gc_generation": self.gc_window_gen,
        }
        self.window_max = 0.0
        self.gc_window_max = 0.0
        self.gc_window_gen = -1
        return out

