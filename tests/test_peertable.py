"""The merged peer table: sources, expiry, offline, observers, rows, and a reference model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.message import PresenceMessage
from goop.peertable import APPEARED, CHANGED, LEFT, SOURCES, PeerTable, PeerView
from tests.strategies import presence_messages

SELF = "12D3KooWself"
TTL = 10.0


def online(peer: str, content: str = "hi", ts: int = 1, **kw: str) -> PresenceMessage:
    return PresenceMessage("online", peer, content, ts=ts, **kw)


def offline(peer: str) -> PresenceMessage:
    return PresenceMessage("offline", peer, ts=2)


class Recorder:
    """An observer that keeps (kind, peer_id, sources at the time) for each event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, list[str]]] = []

    def __call__(self, kind: str, view: PeerView) -> None:
        self.events.append((kind, view.peer_id, view.sources))

    def take(self) -> list[tuple[str, str, list[str]]]:
        out, self.events = self.events, []
        return out


def table() -> tuple[PeerTable, Recorder]:
    t, rec = PeerTable(SELF, TTL), Recorder()
    t.add_observer(rec)
    return t, rec


class ObserveTests(SynchronousTestCase):
    def test_unknown_source_raises_value_error(self) -> None:
        """Only lan, local and wan are channels; anything else is a ValueError."""
        t, rec = table()
        for source in ("", "LAN", "mdns", "wan "):
            self.assertRaises(ValueError, t.observe, source, online("a"), 0.0)
            self.assertRaises(ValueError, t.observe, source, offline("a"), 0.0)
        self.assertEqual(len(t), 0)
        self.assertEqual(rec.events, [])

    def test_first_message_appears_with_its_source_and_message(self) -> None:
        """A new peer is appeared, carries the message and where/when it was heard."""
        t, rec = table()
        m = online("a", "hello", ts=5, email="a@x", avatar_hash="ab")
        self.assertEqual(t.observe("lan", m, 3.0), APPEARED)
        self.assertEqual(rec.take(), [(APPEARED, "a", ["lan"])])
        view = t.get("a")
        assert view is not None
        self.assertEqual((view.message, view.seen, view.last_seen), (m, {"lan": 3.0}, 3.0))
        self.assertIn("a", t)
        self.assertEqual(len(t), 1)

    def test_update_type_also_makes_a_peer_appear(self) -> None:
        """Any non-offline message, not just online, puts the peer in the table."""
        t, _ = table()
        self.assertEqual(t.observe("wan", PresenceMessage("update", "a", "x"), 0.0), APPEARED)

    def test_self_is_never_listed(self) -> None:
        """The peer's own messages, on any channel, change nothing and notify no one."""
        t, rec = table()
        for source in SOURCES:
            self.assertIsNone(t.observe(source, online(SELF), 0.0))
            self.assertIsNone(t.observe(source, offline(SELF), 0.0))
        self.assertNotIn(SELF, t)
        self.assertEqual((len(t), t.rows(), rec.events), (0, [], []))

    def test_identical_refresh_from_same_source_notifies_nothing(self) -> None:
        """Same content, email and avatar again on the same channel: silent refresh."""
        t, rec = table()
        t.observe("lan", online("a", "x", ts=1, email="e", avatar_hash="h"), 0.0)
        rec.take()
        again = PresenceMessage("update", "a", "x", "e", "h", ts=9)
        self.assertIsNone(t.observe("lan", again, 4.0))
        self.assertEqual(rec.events, [])
        view = t.get("a")
        assert view is not None
        self.assertEqual(view.seen, {"lan": 4.0})
        self.assertEqual(t.rows()[0]["ts"], 9)  # the latest message is kept

    def test_new_source_notifies_changed(self) -> None:
        """The same peer heard on another channel is changed, with both sources."""
        t, rec = table()
        t.observe("lan", online("a"), 0.0)
        rec.take()
        self.assertEqual(t.observe("wan", online("a"), 1.0), CHANGED)
        self.assertEqual(rec.take(), [(CHANGED, "a", ["lan", "wan"])])
        self.assertEqual(len(t), 1)

    def test_changed_content_email_or_avatar_notifies_changed(self) -> None:
        """A different content, email or avatar hash is a change, on any channel."""
        t, rec = table()
        t.observe("lan", online("a", "x"), 0.0)
        rec.take()
        for m in (online("a", "y"), online("a", "y", email="e"),
                  online("a", "y", email="e", avatar_hash="h")):
            self.assertEqual(t.observe("lan", m, 1.0), CHANGED)
            self.assertEqual(rec.take(), [(CHANGED, "a", ["lan"])])
            view = t.get("a")
            assert view is not None
            self.assertEqual(view.message, m)

    def test_last_seen_is_the_latest_over_all_sources(self) -> None:
        """last_seen is the most recent time the peer was heard on any channel."""
        t, _ = table()
        t.observe("wan", online("a"), 5.0)
        t.observe("lan", online("a"), 2.0)
        view = t.get("a")
        assert view is not None
        self.assertEqual(view.last_seen, 5.0)
        t.observe("lan", online("a"), 7.0)
        self.assertEqual(view.last_seen, 7.0)


class OfflineTests(SynchronousTestCase):
    def test_offline_from_the_only_source_leaves_at_once(self) -> None:
        """offline on the channel that had the peer removes it now, not at expiry."""
        t, rec = table()
        t.observe("local", online("a"), 0.0)
        rec.take()
        self.assertEqual(t.observe("local", offline("a"), 0.5), LEFT)
        self.assertEqual(rec.take(), [(LEFT, "a", [])])
        self.assertNotIn("a", t)
        self.assertIsNone(t.get("a"))

    def test_offline_from_one_of_two_sources_keeps_the_peer(self) -> None:
        """Still heard on another channel, the peer stays, with that channel only."""
        t, rec = table()
        t.observe("lan", online("a"), 0.0)
        t.observe("wan", online("a"), 1.0)
        rec.take()
        t.observe("lan", offline("a"), 2.0)
        self.assertNotIn(LEFT, [kind for kind, _, _ in rec.events])
        view = t.get("a")
        assert view is not None
        self.assertEqual(view.sources, ["wan"])
        # It now expires by the remaining channel's clock.
        self.assertEqual(t.expire(1.0 + TTL - 0.001), [])
        self.assertEqual(t.expire(1.0 + TTL), ["a"])

    def test_offline_from_one_of_two_sources_notifies_changed(self) -> None:
        """losing a channel by offline is reported as changed, as expiry is.

        observe() deletes the source and returns None, so observers keep showing
        sources ["lan", "wan"] while rows() says ["wan"].
        """
        t, rec = table()
        t.observe("lan", online("a"), 0.0)
        t.observe("wan", online("a"), 1.0)
        rec.take()
        self.assertEqual(t.observe("lan", offline("a"), 2.0), CHANGED)
        self.assertEqual(rec.take(), [(CHANGED, "a", ["wan"])])

    def test_offline_from_a_channel_without_the_peer_is_ignored(self) -> None:
        """offline heard on wan does not remove a peer only seen on lan."""
        t, rec = table()
        t.observe("lan", online("a"), 0.0)
        rec.take()
        self.assertIsNone(t.observe("wan", offline("a"), 1.0))
        self.assertEqual(rec.events, [])
        view = t.get("a")
        assert view is not None
        self.assertEqual(view.seen, {"lan": 0.0})

    def test_offline_for_an_unknown_peer_is_ignored(self) -> None:
        """offline for a peer never seen changes nothing."""
        t, rec = table()
        self.assertIsNone(t.observe("lan", offline("nobody"), 0.0))
        self.assertEqual((len(t), rec.events), (0, []))

    def test_peer_can_appear_again_after_leaving(self) -> None:
        """After leaving, the next message makes the peer appear afresh."""
        t, rec = table()
        t.observe("lan", online("a", "old"), 0.0)
        t.observe("lan", offline("a"), 1.0)
        self.assertEqual(t.observe("wan", online("a", "new"), 2.0), APPEARED)
        self.assertEqual([k for k, _, _ in rec.events], [APPEARED, LEFT, APPEARED])
        view = t.get("a")
        assert view is not None
        self.assertEqual((view.seen, view.message.content), ({"wan": 2.0}, "new"))


class ExpireTests(SynchronousTestCase):
    def test_expires_after_ttl_seconds_of_silence(self) -> None:
        """Present until ttl seconds have passed since last heard; then left."""
        t, rec = table()
        t.observe("lan", online("a"), 100.0)
        rec.take()
        self.assertEqual(t.expire(100.0 + TTL - 0.001), [])
        self.assertIn("a", t)
        self.assertEqual(t.expire(100.0 + TTL), ["a"])
        self.assertEqual(rec.take(), [(LEFT, "a", [])])
        self.assertNotIn("a", t)
        self.assertEqual(t.expire(1000.0), [])
        self.assertEqual(rec.events, [])

    def test_refresh_postpones_expiry(self) -> None:
        """Hearing the peer again, even unchanged, restarts its ttl."""
        t, _ = table()
        t.observe("lan", online("a"), 0.0)
        t.observe("lan", online("a"), 8.0)
        self.assertEqual(t.expire(TTL), [])
        self.assertEqual(t.expire(8.0 + TTL), ["a"])

    def test_expiry_of_one_of_two_sources_notifies_changed_and_peer_stays(self) -> None:
        """One silent channel is dropped (changed); the peer stays on the other."""
        t, rec = table()
        t.observe("lan", online("a"), 0.0)
        t.observe("wan", online("a"), 5.0)
        rec.take()
        self.assertEqual(t.expire(TTL), [])
        self.assertEqual(rec.take(), [(CHANGED, "a", ["wan"])])
        view = t.get("a")
        assert view is not None
        self.assertEqual(view.sources, ["wan"])
        self.assertEqual(t.expire(TTL + 1.0), [])
        self.assertEqual(rec.events, [])
        self.assertEqual(t.expire(5.0 + TTL), ["a"])
        self.assertEqual(rec.take(), [(LEFT, "a", [])])

    def test_expire_returns_every_peer_that_left(self) -> None:
        """Several silent peers leave in one expire call; fresh ones stay."""
        t, _ = table()
        t.observe("lan", online("a"), 0.0)
        t.observe("local", online("b"), 1.0)
        t.observe("wan", online("c"), 9.0)
        self.assertEqual(sorted(t.expire(11.0)), ["a", "b"])
        self.assertEqual([r["peer_id"] for r in t.rows()], ["c"])


class ObserverTests(SynchronousTestCase):
    def test_every_observer_hears_and_removed_ones_do_not(self) -> None:
        """All observers get each event; after remove_observer, that one hears nothing."""
        t, first = table()
        second = Recorder()
        t.add_observer(second)
        t.observe("lan", online("a"), 0.0)
        t.remove_observer(first)
        t.observe("lan", offline("a"), 1.0)
        self.assertEqual(first.events, [(APPEARED, "a", ["lan"])])
        self.assertEqual(second.events, [(APPEARED, "a", ["lan"]), (LEFT, "a", [])])

    def test_observer_may_remove_itself_while_notified(self) -> None:
        """An observer unsubscribing during a notification does not skip the others."""
        t, rec = PeerTable(SELF, TTL), Recorder()

        def once(kind: str, view: PeerView) -> None:
            t.remove_observer(once)

        t.add_observer(once)
        t.add_observer(rec)
        t.observe("lan", online("a"), 0.0)
        t.observe("lan", online("b"), 0.0)
        self.assertEqual([p for _, p, _ in rec.events], ["a", "b"])


class RowsTests(SynchronousTestCase):
    def test_rows_shape_and_order(self) -> None:
        """One dict per peer, sorted by peer id, with exactly the documented fields."""
        t, _ = table()
        t.observe("wan", online("c", "C", ts=3), 3.0)
        t.observe("lan", PresenceMessage("online", "a", "A", "a@x", "aa", ts=1), 1.0)
        t.observe("local", online("b", "B", ts=2), 2.0)
        t.observe("lan", online("b", "B", ts=4), 4.0)
        rows = t.rows()
        self.assertEqual([r["peer_id"] for r in rows], ["a", "b", "c"])
        for r in rows:
            self.assertEqual(
                set(r),
                {"peer_id", "content", "email", "avatar_hash", "sources", "last_seen", "ts",
                 "client", "verified", "addrs", "encryption", "proof"},
            )
        self.assertEqual(
            rows[0],
            {"peer_id": "a", "content": "A", "email": "a@x", "avatar_hash": "aa",
             "sources": ["lan"], "last_seen": 1.0, "ts": 1, "client": "", "verified": False,
             "addrs": [], "encryption": False, "proof": "unsigned"},
        )
        self.assertEqual(
            rows[1],
            {"peer_id": "b", "content": "B", "email": "", "avatar_hash": "",
             "sources": ["lan", "local"], "last_seen": 4.0, "ts": 4, "client": "",
             "verified": False, "addrs": [], "encryption": False, "proof": "unsigned"},
        )

    def test_empty_table_has_no_rows(self) -> None:
        """No peers, no rows."""
        self.assertEqual(PeerTable(SELF, TTL).rows(), [])

    @given(st.lists(st.tuples(st.sampled_from(SOURCES), presence_messages()), max_size=20))
    def test_rows_are_sorted_unique_and_never_self(
        self, ops: list[tuple[str, PresenceMessage]]
    ) -> None:
        """Property: any messages at one instant give rows sorted by id, without self."""
        t = PeerTable("self", TTL)
        for source, m in ops:
            t.observe(source, m, 0.0)
        ids = [r["peer_id"] for r in t.rows()]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertNotIn("self", ids)
        self.assertEqual(len(ids), len(t))


# --- the reference model -----------------------------------------------------------


@dataclass
class ModelPeer:
    seen: dict[str, float] = field(default_factory=dict)
    message: PresenceMessage | None = None


class Model:
    """The table's specification, written plainly: per peer, channel -> last time heard."""

    def __init__(self, self_id: str, ttl: float) -> None:
        self.self_id, self.ttl = self_id, ttl
        self.peers: dict[str, ModelPeer] = {}

    def observe(self, source: str, m: PresenceMessage, now: float) -> None:
        if m.peer_id == self.self_id:
            return
        if m.type == "offline":
            peer = self.peers.get(m.peer_id)
            if peer is not None:
                peer.seen.pop(source, None)
                if not peer.seen:
                    del self.peers[m.peer_id]
            return
        peer = self.peers.setdefault(m.peer_id, ModelPeer())
        peer.seen[source] = now
        peer.message = m

    def expire(self, now: float) -> None:
        for pid in list(self.peers):
            peer = self.peers[pid]
            peer.seen = {s: t for s, t in peer.seen.items() if now - t < self.ttl}
            if not peer.seen:
                del self.peers[pid]


MODEL_PEERS = ["p1", "p2", "p3", "me"]
model_messages = st.builds(
    PresenceMessage,
    type=st.sampled_from(["online", "update", "offline"]),
    peer_id=st.sampled_from(MODEL_PEERS),
    content=st.sampled_from(["", "x"]),
    email=st.sampled_from(["", "e"]),
    avatar_hash=st.just(""),
    ts=st.integers(min_value=1, max_value=5),
)
operations = st.one_of(
    st.tuples(st.just("observe"), st.sampled_from(SOURCES), model_messages,
              st.integers(min_value=0, max_value=6)),
    st.tuples(st.just("expire"), st.just(""), st.none(), st.integers(min_value=0, max_value=12)),
)
Op = tuple[str, str, PresenceMessage | None, int]


class ReferenceModelTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(st.lists(operations, max_size=40))
    @example([("observe", "lan", online("p1"), 0), ("expire", "", None, 10)])
    @example([("observe", "lan", online("p1"), 0), ("observe", "wan", online("p1"), 3),
              ("observe", "lan", offline("p1"), 0), ("expire", "", None, 10)])
    @example([("observe", "lan", online("p1"), 0), ("observe", "wan", online("p1"), 3),
              ("expire", "", None, 10), ("observe", "wan", offline("p1"), 0)])
    def test_table_agrees_with_the_reference_model(self, ops: list[Op]) -> None:
        """Property: membership, sources, times and message match the model after every
        step, and observers see appeared/left exactly when membership changes."""
        t, rec = PeerTable("me", 10), Recorder()
        t.add_observer(rec)
        model = Model("me", 10)
        now = 0.0
        present: set[str] = set()  # as told by the observer
        for kind, source, m, advance in ops:
            now += advance
            before = set(model.peers)
            if kind == "observe":
                assert m is not None
                t.observe(source, m, now)
                model.observe(source, m, now)
            else:
                t.expire(now)
                model.expire(now)
            after = set(model.peers)

            for event, pid, _ in rec.take():
                if event == APPEARED:
                    self.assertNotIn(pid, present, f"{pid} appeared twice")
                    present.add(pid)
                elif event == LEFT:
                    self.assertIn(pid, present, f"{pid} left without appearing")
                    present.discard(pid)
                else:
                    self.assertEqual(event, CHANGED)
                    self.assertIn(pid, present, f"{pid} changed while absent")
            self.assertEqual(present, after, (before, after))

            self.assertEqual({r["peer_id"] for r in t.rows()}, after)
            for pid, peer in model.peers.items():
                view = t.get(pid)
                assert view is not None
                self.assertEqual(view.seen, peer.seen, pid)
                self.assertEqual(view.message, peer.message, pid)
                self.assertEqual(view.last_seen, max(peer.seen.values()))


class SignedPresenceTests(SynchronousTestCase):
    """What the table does with signatures (docs/signing.md, "A goop peer")."""

    def setUp(self) -> None:
        from goop.identity import _from_seed

        self.alice = _from_seed(b"\x07" * 32, "")
        self.table = PeerTable("me", ttl=20)

    def signed(self, kind: str, ts: int, **fields: Any) -> PresenceMessage:
        from dataclasses import replace

        from goop.signing import sign, signing_key

        m = PresenceMessage(kind, self.alice.peer_id, ts=ts, **fields)
        return replace(m, sig=sign(signing_key(self.alice.seed), m))

    def test_verified_entries_and_what_a_lying_relay_cannot_do(self) -> None:
        from dataclasses import replace

        from goop.peertable import Rejected

        pid = self.alice.peer_id
        good = self.signed("online", 10, content="alice")
        self.assertEqual(self.table.observe("wan", good, 1.0), "appeared")
        self.assertEqual(self.table.rows()[0]["proof"], "verified")
        for bad in (
            replace(good, content="forged by the relay"),  # altered
            replace(self.signed("update", 11, content="x"), ts=12),  # ts changed
            PresenceMessage("update", pid, "unsigned now", ts=13),  # signature stripped
            self.signed("update", 9, content="older"),  # replayed older one
        ):
            with self.assertRaises(Rejected):
                self.table.observe("wan", bad, 2.0)
            view = self.table.get(pid)
            assert view is not None
            self.assertEqual(view.message, good)
        # The same message again (a snapshot after a reconnect) is fine.
        self.assertIsNone(self.table.observe("wan", good, 3.0))
        # Another channel that never carried her signature (a goop2 server
        # strips it) may still show her unsigned message.
        self.table.observe("local", PresenceMessage("update", pid, "via goop2", ts=14), 4.0)
        self.assertEqual(self.table.rows()[0]["proof"], "unsigned")

    def test_a_rendezvous_offline_is_taken_unsigned_the_lan_one_is_not(self) -> None:
        from goop.peertable import Rejected

        pid = self.alice.peer_id
        self.table.observe("lan", self.signed("online", 10), 1.0)
        self.table.observe("wan", self.signed("online", 11), 1.0)
        with self.assertRaises(Rejected):
            self.table.observe("lan", PresenceMessage("offline", pid, ts=12), 2.0)
        self.assertEqual(self.table.observe("wan", PresenceMessage("offline", pid, ts=12), 2.0),
                         "changed")
        view = self.table.get(pid)
        assert view is not None
        self.assertEqual(view.sources, ["lan"])

    def test_how_a_peer_left_is_kept_for_the_log(self) -> None:
        pid = self.alice.peer_id
        self.table.observe("wan", self.signed("online", 10), 1.0)
        self.table.observe("wan", PresenceMessage("offline", pid, ts=11), 2.0)
        self.assertIsNone(self.table.get(pid))
        left: list[PeerView] = []
        self.table.add_observer(lambda kind, view: left.append(view) if kind == LEFT else None)
        self.table.observe("wan", self.signed("online", 12), 3.0)
        self.table.observe("wan", self.signed("offline", 13), 4.0)
        self.table.observe("lan", self.signed("online", 14), 5.0)
        self.table.expire(100.0)
        self.assertEqual(
            [v.departure for v in left], ["signed offline via wan", "silent for 20s"]
        )
