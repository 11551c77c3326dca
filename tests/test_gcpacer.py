"""`goop.gcpacer.GcPacer`: the collection schedule, driven by a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from goop.gcpacer import MIDDLE_EVERY_YOUNG, YOUNG_EVERY, GcPacer


def test_young_every_quarter_second_middle_every_eighth_full_by_cpythons_rule() -> None:
    clock = Clock()
    ran: list[int] = []
    sizes = {0: 0, 1: 100, 2: 1000}  # objects per generation, as gc.get_objects says
    pacer = GcPacer(clock, collect=lambda g: ran.append(g) or 0, count=lambda g: sizes[g])
    pacer.startService()
    clock.pump([YOUNG_EVERY] * (MIDDLE_EVERY_YOUNG - 1))
    assert ran == [0] * (MIDDLE_EVERY_YOUNG - 1)
    # Each middle collection promotes ~100 objects; past four times the old
    # generation's 250 on the eleventh, which is a full collection instead.
    sizes[2] = 250
    pacer._old = 250
    clock.pump([YOUNG_EVERY] * (MIDDLE_EVERY_YOUNG * 10 - (MIDDLE_EVERY_YOUNG - 1)))
    sizes[2] = 100  # what the full collection leaves
    clock.pump([YOUNG_EVERY] * MIDDLE_EVERY_YOUNG)
    assert ran.count(0) == 11 * (MIDDLE_EVERY_YOUNG - 1)
    assert [g for g in ran if g] == [1] * 10 + [2]
    assert pacer.collections == [77, 10, 1]
    # Then past 4 x 100: four middle collections, and the fifth is full.
    clock.pump([YOUNG_EVERY] * MIDDLE_EVERY_YOUNG * 5)
    assert [g for g in ran if g][11:] == [1] * 4 + [2]
    pacer.stopService()
    clock.pump([YOUNG_EVERY] * 10)
    assert sum(pacer.collections) == len(ran) == 8 * 16


def test_the_twistd_tree_carries_a_pacer() -> None:
    from goop.tap import makeService

    root = makeService({"rendezvous_only": True, "rendezvous_port": 0, "no_p2p": True})
    assert root.getServiceNamed("gc-pacer") is not None
