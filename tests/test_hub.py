"""The hub's batching, slicing and pacing, with a Clock and recording requests.

No sockets: each subscriber's request records what is written to it, and
the tests read the event ids back out of those bytes.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from goop.rendezvous.eventlog import Event
from goop.rendezvous.fanout import MAX_BATCH_EVENTS, Hub, Subscriber
from goop.sse import OK_COMMENT

# About a millisecond, exact in binary floating point, so clock sums are exact.
MS = 2.0**-10
ID = re.compile(rb"^id: (\d+)$", re.M)


class Recorder:
    """Enough of a twisted.web Request for a Subscriber: it records writes."""

    def __init__(self, clock: Clock | None = None, cost: float = 0.0) -> None:
        self.written: list[bytes] = []
        self.clock = clock
        self.cost = cost

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.clock is not None and self.cost:
            # A write that takes time: what a busy socket costs the reactor.
            # (Moving the clock without running what falls due, as time passes
            # inside a real reactor turn.)
            self.clock.rightNow += self.cost

    def ids(self) -> list[int]:
        return [int(m) for m in ID.findall(b"".join(self.written))]


def event(n: int, peer: str = "p") -> Event:
    return Event(n, peer, b"id: %d\ndata: {}\n\n" % n)


def subscribe(hub: Hub, request: Recorder, backlog: list[Event] | None = None) -> Subscriber:
    return hub.subscribe(request, "10.0.0.1", backlog or [])


class BatchingTests(SynchronousTestCase):
    def test_events_of_one_turn_share_one_write(self) -> None:
        clock = Clock()
        hub = Hub(clock)
        r = Recorder()
        subscribe(hub, r)
        for n in (1, 2, 3):
            hub.publish(event(n))
        self.assertEqual(r.written, [OK_COMMENT])
        clock.advance(0)
        self.assertEqual(len(r.written), 2)
        self.assertEqual(r.ids(), [1, 2, 3])

    def test_a_lone_event_on_an_idle_hub_goes_out_in_the_next_turn(self) -> None:
        clock = Clock()
        hub = Hub(clock)
        r = Recorder()
        subscribe(hub, r)
        hub.publish(event(1))
        clock.advance(0)
        self.assertEqual(r.ids(), [1])

    def test_a_turn_of_fan_out_stops_at_its_time_budget(self) -> None:
        """A 2 ms budget, each write taking ~1 ms: two streams per turn, and the
        turns ~2 ms apart (pacing)."""
        clock = Clock()
        hub = Hub(clock, turn_budget=2 * MS, pace=1.0, check_every=1)
        rs = [Recorder() for _ in range(5)]
        for r in rs:
            subscribe(hub, r)
            r.clock, r.cost = clock, MS
        hub.publish(event(1))
        done = []
        clock.advance(0)
        for _ in range(3):
            done.append(sum(1 for r in rs if r.ids() == [1]))
            clock.advance(2 * MS)
        self.assertEqual(done, [2, 4, 5])

    def test_newcomer_gets_no_event_of_its_backlog_twice(self) -> None:
        """Events batched before a subscribe are in its backlog: they go to the
        others only, even while an earlier batch is still being sliced out."""
        clock = Clock()
        hub = Hub(clock, turn_budget=MS, pace=1.0, check_every=1)
        old = [Recorder(clock, MS) for _ in range(3)]
        for r in old:
            subscribe(hub, r)
        hub.publish(event(1))
        clock.advance(0)  # batch 1 reached one of three
        self.assertEqual(sorted(len(r.ids()) for r in old), [0, 0, 1])
        hub.publish(event(2))
        new = Recorder(clock, MS)
        subscribe(hub, new, backlog=[event(1), event(2)])
        hub.publish(event(3))
        for _ in range(20):
            clock.advance(MS)
        for r in old:
            self.assertEqual(r.ids(), [1, 2, 3])
        self.assertEqual(new.ids(), [1, 2, 3])

    def test_flush_delivers_everything_at_once(self) -> None:
        clock = Clock()
        hub = Hub(clock, turn_budget=MS, pace=1.0, check_every=1)
        rs = [Recorder(clock, MS) for _ in range(4)]
        for r in rs:
            subscribe(hub, r)
        hub.publish(event(1))
        clock.advance(0)
        hub.publish(event(2))
        hub.flush()
        self.assertEqual([r.ids() for r in rs], [[1, 2]] * 4)
        self.assertEqual(clock.getDelayedCalls(), [])


class PileUpTests(SynchronousTestCase):
    def test_a_piled_up_batch_goes_out_as_each_peers_latest_state(self) -> None:
        """More than MAX_BATCH_EVENTS in one batch (the server fell behind): every
        stream gets each peer's latest event, in id order; a short batch is whole."""
        clock = Clock()
        hub = Hub(clock)
        classic, changes = Recorder(), Recorder()
        subscribe(hub, classic)
        hub.subscribe(changes, "10.0.0.2", [], changes_only=True)
        n = MAX_BATCH_EVENTS + 1
        for i in range(1, n + 1):
            e = event(i, "pqr"[i % 3])
            # Only the first event of each peer changes anything.
            e.changed = i <= 3
            hub.publish(e)
        clock.advance(0)
        self.assertEqual(classic.ids(), [n - 2, n - 1, n])
        self.assertEqual(changes.ids(), [1, 2, 3])
        for i in range(n + 1, n + 4):
            hub.publish(event(i, "p"))
        clock.advance(0)
        self.assertEqual(classic.ids()[3:], [n + 1, n + 2, n + 3])


class PacingTests(SynchronousTestCase):
    def test_next_turn_waits_as_long_as_the_last_one_took(self) -> None:
        """A fan-out turn that took ~30 ms (three ~10 ms writes) is followed by as
        much rest; what is published meanwhile goes out together after it."""
        clock = Clock()
        hub = Hub(clock, pace=1.0)
        rs = [Recorder() for _ in range(3)]
        for r in rs:
            subscribe(hub, r)
            r.clock, r.cost = clock, 10 * MS
        hub.publish(event(1))
        clock.advance(0)
        self.assertEqual(clock.seconds(), 30 * MS)
        hub.publish(event(2))
        hub.publish(event(3))
        clock.advance(29 * MS)
        self.assertEqual([r.ids() for r in rs], [[1]] * 3)
        clock.advance(1 * MS)
        self.assertEqual([r.ids() for r in rs], [[1, 2, 3]] * 3)
        # Each subscriber got batch 2+3 in one write.
        self.assertEqual([len(r.written) for r in rs], [3] * 3)

    def test_no_rest_after_free_turns(self) -> None:
        clock = Clock()
        hub = Hub(clock)
        r = Recorder()
        subscribe(hub, r)
        for n in range(1, 4):
            hub.publish(event(n))
            clock.advance(0)
            self.assertEqual(r.ids(), list(range(1, n + 1)))


class DrainTests(SynchronousTestCase):
    def test_resumed_streams_are_drained_within_the_turn_budget(self) -> None:
        """Six streams resume in one poll: their backlogs go out two per turn, not
        in the poll; what is published meanwhile arrives after them, or joins a
        backlog not yet written, coalesced per peer."""
        clock = Clock()
        hub = Hub(clock, turn_budget=2 * MS, pace=1.0, check_every=1)
        rs = [Recorder() for _ in range(6)]
        subs = [subscribe(hub, r) for r in rs]
        for sub in subs:
            sub.pauseProducing()
        hub.publish(event(1, "p"))
        hub.publish(event(2, "q"))
        hub.publish(event(3, "p"))
        clock.advance(0)
        for r in rs:
            r.clock, r.cost = clock, MS
        for sub in subs:
            sub.resumeProducing()
        self.assertEqual([r.ids() for r in rs], [[]] * 6)  # nothing written in the poll
        clock.advance(0)
        self.assertEqual(sorted(len(r.ids()) for r in rs), [0, 0, 0, 0, 2, 2])
        hub.publish(event(4, "q"))
        for _ in range(10):
            clock.advance(2 * MS)
        for r in rs:
            # Event 4 came live, or superseded event 2 (same peer) in the backlog.
            self.assertIn(r.ids(), ([2, 3, 4], [3, 4]))

    def test_paused_again_before_its_drain_keeps_the_backlog(self) -> None:
        clock = Clock()
        hub = Hub(clock)
        r = Recorder()
        sub = subscribe(hub, r)
        sub.pauseProducing()
        hub.publish(event(1, "p"))
        clock.advance(0)
        sub.resumeProducing()
        sub.pauseProducing()  # full again before the hub's turn
        hub.publish(event(2, "q"))
        clock.advance(0)
        self.assertEqual(r.ids(), [])
        sub.resumeProducing()
        clock.advance(0)
        self.assertEqual(r.ids(), [1, 2])


# Operations on a hub: publish an event, subscribe a new stream, drop a stream,
# pause or resume one, or let the reactor take one turn.
ops = st.lists(
    st.one_of(
        st.just(("publish",)),
        st.just(("subscribe",)),
        st.tuples(st.just("drop"), st.integers(0, 20)),
        st.tuples(st.just("pause"), st.integers(0, 20)),
        st.tuples(st.just("resume"), st.integers(0, 20)),
        st.just(("turn",)),
    ),
    max_size=60,
)


class OrderingProperties(SynchronousTestCase):
    @given(ops, st.integers(1, 4), st.sampled_from(["p", "q", "r"]))
    def test_every_stream_sees_ascending_ids_and_every_live_peer_state(
        self, script: list[tuple[Any, ...]], per_turn: int, _peer: str
    ) -> None:
        """Whatever the interleaving: ids only go up on every stream, nothing is
        doubled, and a stream that stays gets the latest event of every peer
        published after it joined."""
        clock = Clock()
        hub = Hub(clock, turn_budget=per_turn * MS, pace=1.0, check_every=1)
        streams: list[tuple[Recorder, Subscriber, int]] = []
        published: list[Event] = []
        peers = ["p", "q", "r"]
        for op in script:
            kind = op[0]
            if kind == "publish":
                e = event(len(published) + 1, peers[len(published) % 3])
                published.append(e)
                hub.publish(e)
            elif kind == "subscribe":
                # Each write takes ~1 ms, so one "turn" runs one slice only.
                r = Recorder(clock, MS)
                # The backlog a real server gives: everything published so far.
                sub = subscribe(hub, r, backlog=list(published))
                streams.append((r, sub, len(published)))
            elif streams and kind in ("drop", "pause", "resume"):
                _, sub, _ = streams[op[1] % len(streams)]
                if kind == "drop":
                    hub.remove(sub)
                elif kind == "pause":
                    sub.pauseProducing()
                else:
                    sub.resumeProducing()
            elif kind == "turn":
                clock.advance(0)
        for _, sub, _ in streams:
            sub.resumeProducing()
        for _ in range(1000):
            if not clock.getDelayedCalls():
                break
            clock.advance(1.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        for r, sub, joined in streams:
            ids = r.ids()
            self.assertEqual(ids, sorted(set(ids)))
            if sub in hub.subscribers:
                latest = {e.peer_id: e.id for e in published[joined:]}
                got = set(ids)
                for peer_id, last in latest.items():
                    self.assertIn(last, got, (peer_id, ids))
