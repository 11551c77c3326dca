"""`goop.gcpacer.GcPacer`: the collection schedule, driven by a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from goop.gcpacer import (
    FULL_WHEN_PROMOTED,
    MIDDLE_EVERY_YOUNG,
    MIN_MIDDLE_BETWEEN_FULL,
    YOUNG_EVERY,
    GcPacer,
)

MIDDLE = [YOUNG_EVERY] * MIDDLE_EVERY_YOUNG  # the ticks from one middle collection to the next


def test_young_on_every_tick_middle_every_few_full_by_growth_and_not_too_often() -> None:
    clock = Clock()
    ran: list[int] = []
    sizes = {0: 0, 1: 100, 2: 0}  # objects per generation, as gc.get_objects says
    pacer = GcPacer(clock, collect=lambda g: ran.append(g) or 0, count=lambda g: sizes[g])
    pacer.startService()
    clock.pump([YOUNG_EVERY] * (MIDDLE_EVERY_YOUNG - 1))
    assert ran == [0] * (MIDDLE_EVERY_YOUNG - 1)
    # The old generation starts empty: each middle collection's 100 objects pass
    # any multiple of it at once, yet the first full one waits for its turn.
    clock.pump(MIDDLE * MIN_MIDDLE_BETWEEN_FULL)
    sizes[2] = 1000  # what the full collection leaves
    clock.pump(MIDDLE)
    assert [g for g in ran if g] == [1] * MIN_MIDDLE_BETWEEN_FULL + [2]
    assert ran.count(0) == (MIN_MIDDLE_BETWEEN_FULL + 2) * (MIDDLE_EVERY_YOUNG - 1)
    # Then the next only once FULL_WHEN_PROMOTED x 1,000 objects were promoted
    # (more middle collections than the minimum).
    needed = int(1000 * FULL_WHEN_PROMOTED) // 100 + 1
    assert needed > MIN_MIDDLE_BETWEEN_FULL
    clock.pump(MIDDLE * needed)
    assert [g for g in ran if g][MIN_MIDDLE_BETWEEN_FULL + 1 :] == [1] * (needed - 1) + [2]
    assert pacer.collections == [ran.count(0), ran.count(1), 2]
    pacer.stopService()
    before = len(ran)
    clock.pump([YOUNG_EVERY] * 10)
    assert len(ran) == before


def test_the_twistd_tree_carries_a_pacer() -> None:
    from goop.tap import makeService

    root = makeService({"rendezvous_only": True, "rendezvous_port": 0, "no_p2p": True})
    assert root.getServiceNamed("gc-pacer") is not None
