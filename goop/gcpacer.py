"""Garbage collection on a clock, in small steps, instead of by allocation count.

CPython starts a young collection when its count of allocations minus
deallocations passes a threshold. Under churn (peers registering and
expiring by the thousand) old objects die as fast as young ones are made,
so the count stays low while the young generation's list keeps growing:
under the hardening soak one young collection examined 60,000 objects and
paused the reactor for 100-150 ms. Collecting the young generation every
quarter second keeps each one to what a quarter second allocated, a few
milliseconds; the middle one follows every half second. Full collections
keep CPython's own rule, which its automatic path would no longer reach:
one when the objects promoted to the old generation since the last one
pass what that one left (see `FULL_WHEN_PROMOTED`; a full collection costs
in proportion to the old generation, so this keeps their total cost linear).

The collector is injected so tests can drive the schedule with a Clock.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Final

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

YOUNG_EVERY: Final = 0.25
MIDDLE_EVERY_YOUNG: Final = 2  # a middle collection every 0.5 s
# A full collection when the objects promoted since the last one pass this
# multiple of the old generation's size after it. CPython uses a quarter;
# but here young collections, four a second, free nearly every short-lived
# cycle (a finished request) before it is promoted, so what reaches the old
# generation is mostly live state (peers, open connections) and a full
# collection finds little to free while pausing in proportion to all of it:
# at 25,000 peers and 1,000 connections, 55-110 ms on the soak's machine,
# every 10-20 s under its churn with a quarter. Cycles that do reach the old
# generation (a connection that lived a while) wait longer: memory bounded
# by this multiple of the old generation, for shorter and rarer pauses.
FULL_WHEN_PROMOTED: Final = 4.0
# And not before this many middle collections since the last full one
# (20 s): right after start the old generation is nearly empty (everything
# loaded is frozen), so the first thousands of objects a burst of
# connections promotes would otherwise trigger a full collection over all
# of them at once (438 ms with 5,000 streams just opened).
MIN_MIDDLE_BETWEEN_FULL: Final = 40


def _count(generation: int) -> int:
    return len(gc.get_objects(generation))


class GcPacer(Service):
    """Runs young and middle collections on a timer, full ones by CPython's rule."""

    name = "gc-pacer"

    def __init__(
        self,
        reactor: IReactorTime,
        collect: Callable[[int], int] = gc.collect,
        count: Callable[[int], int] = _count,
        young_every: float = YOUNG_EVERY,
        middle_every_young: int = MIDDLE_EVERY_YOUNG,
    ) -> None:
        self._reactor = reactor
        self._collect = collect
        self._count = count
        self._young_every = young_every
        self._middle_every = middle_every_young
        self._ticks = 0
        self._old = 0  # the old generation's size after the last full collection
        self._promoted = 0  # objects moved to it since (counted before each middle one)
        self._middles = 0  # middle collections since the last full one
        self.collections = [0, 0, 0]
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._old = self._count(2)
        self._loop.start(self._young_every, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()  # type: ignore[no-untyped-call]

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % self._middle_every:
            self._run(0)
            return
        # What the middle generation holds now has survived a young collection
        # already; most of it survives this one too and moves to the old one.
        if self._old < 0:  # a full collection ran last time: size it now, not then
            self._old = self._count(2)
        self._promoted += self._count(1)
        if (
            self._middles >= MIN_MIDDLE_BETWEEN_FULL
            and self._promoted > self._old * FULL_WHEN_PROMOTED
        ):
            self._run(2)
            self._old = -1
            self._promoted = 0
            self._middles = 0
        else:
            self._run(1)
            self._middles += 1

    def _run(self, generation: int) -> None:
        self._collect(generation)
        self.collections[generation] += 1
