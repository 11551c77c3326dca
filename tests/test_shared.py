"""Several rendezvous instances sharing one SQLite file: the store, then live instances."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from goop.config import PresenceConfig
from goop.message import PresenceMessage
from goop.rendezvous.service import RendezvousService
from goop.rendezvous.shared import SharedBoard, _offline_from
from goop.rendezvous.store import SQLiteStore, StoreError
from tests.test_presence import until


def msg(kind: str, peer: str, content: str = "") -> bytes:
    return PresenceMessage(kind, peer, content, ts=1).encode()


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "peers.db")

    def open(self, **kw: Any) -> SQLiteStore:
        store = SQLiteStore(self.path, **kw)
        store.open()
        self.addCleanup(store.close)
        return store

    def test_append_and_tail_share_ids_across_connections(self) -> None:
        """What one connection appends, another tails, in order, with the same ids."""
        a, b = self.open(), self.open()
        start = b.head()
        first = a.append("p1", "online", msg("online", "p1"), 10.0, 50)
        second = b.append("p2", "online", msg("online", "p2"), 11.0, 60)
        self.assertEqual(second.id, first.id + 1)
        self.assertGreater(first.id, 10**15)  # ids start at a microsecond clock
        rows = a.tail(start)
        self.assertEqual(
            [(r.id, r.peer_id, r.nbytes) for r in rows],
            [(first.id, "p1", 50), (second.id, "p2", 60)],
        )

    def test_snapshot_has_peers_within_ttl_and_the_head(self) -> None:
        """A restarting instance reads the peers still within TTL, and where the log is."""
        s = self.open()
        s.append("old", "online", msg("online", "old"), 0.0, 1)
        s.append("new", "online", msg("online", "new", "v1"), 15.0, 1)
        last = s.append("new", "update", msg("update", "new", "v2"), 16.0, 1)
        s.append("gone", "online", msg("online", "gone"), 16.0, 1)
        s.append("gone", "offline", msg("offline", "gone"), 17.0, 1)
        peers, head = s.snapshot(now=25.0, ttl=20)
        self.assertEqual([(p.peer_id, p.id) for p in peers], [("new", last.id)])
        self.assertEqual(json.loads(peers[0].data)["content"], "v2")
        self.assertEqual(head, s.head())

    def test_two_instances_pruning_emit_one_offline_per_stale_peer(self) -> None:
        """However many instances prune, each stale peer is removed and logged once."""
        a, b = self.open(), self.open()
        a.append("stale", "online", msg("online", "stale", "x"), 0.0, 1)
        a.append("fresh", "online", msg("online", "fresh"), 19.0, 1)
        first = a.prune(25.0, 20, _offline_from)
        second = b.prune(25.5, 20, _offline_from)
        self.assertEqual([r.peer_id for r in first], ["stale"])
        self.assertEqual(second, [])
        offline = json.loads(first[0].data)
        # Who and when only, as goop2's server sends an expiry.
        self.assertEqual(
            (offline["type"], offline["peerId"], offline["content"]), ("offline", "stale", "")
        )
        self.assertEqual(first[0].kind, "expired")

    def test_log_is_trimmed(self) -> None:
        """The event log keeps a bounded number of events."""
        from goop.rendezvous import store as store_module

        self.patch(store_module, "KEEP_EVENTS", 10)
        s = self.open()
        for i in range(50):
            s.append("p", "update", msg("update", "p", str(i)), float(i), 1)
        s.prune(50.0, 20, _offline_from)
        self.assertEqual(len(s.tail(0)), 10)

    def test_damaged_file_is_reported_with_its_path(self) -> None:
        """A file that is not a database: StoreError naming the path."""
        with open(self.path, "wb") as f:
            f.write(b"definitely not sqlite" * 100)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path).open()
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("not a database", str(caught.exception))

    def test_locked_file_is_reported_with_its_path(self) -> None:
        """A database another process holds exclusively: StoreError after the busy timeout."""
        self.open()  # create it
        holder = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        self.addCleanup(holder.execute, "ROLLBACK")
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path, busy_timeout_ms=100).open()
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("locked", str(caught.exception))


PEER = "12D3KooWSharedTestPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


class LiveInstanceTests(TestCase):
    """Two RendezvousServices in this process on one file, over real sockets."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "peers.db")

    def store(self) -> dict[str, Any]:
        """The PresenceConfig fields that choose the shared store (tests/test_redis.py: Redis)."""
        return {"peer_db_path": self.path}

    def instance(self, ttl: int = 20) -> RendezvousService:
        rv = RendezvousService(
            PresenceConfig(rendezvous_port=0, ttl_seconds=ttl, heartbeat_seconds=1, **self.store()),
            reactor,
        )
        rv.startService()
        self.addCleanup(rv.stopService)
        return rv

    def events_of(self, rv: RendezvousService) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        original = rv.hub.on_batch

        def spy(events: Any, n: int) -> None:
            seen.extend(json.loads(e.frame.split(b"data: ")[1]) for e in events)
            if original is not None:
                original(events, n)

        rv.hub.on_batch = spy
        return seen

    @defer.inlineCallbacks
    def test_publish_to_one_reaches_the_other(self):  # type: ignore[no-untyped-def]
        """Accepted by A, fanned out by both A and B, with the same event id."""
        a, b = self.instance(), self.instance()
        seen_a, seen_b = self.events_of(a), self.events_of(b)
        yield a.board.accept(PresenceMessage("online", PEER, "hi"), 10, reactor.seconds())
        yield until(lambda: len(seen_a) == 1 and len(seen_b) == 1)
        self.assertEqual(a.board.events.head, b.board.events.head)
        self.assertIn(PEER, b.board.registry)

    @defer.inlineCallbacks
    def test_last_event_id_replays_on_another_instance(self):  # type: ignore[no-untyped-def]
        """An id seen on A is understood by B: B replays exactly what came after."""
        a, b = self.instance(), self.instance()
        yield a.board.accept(PresenceMessage("online", PEER, "1"), 1, reactor.seconds())
        # A learns of its own event by tailing the store too: wait for both.
        yield until(lambda: PEER in a.board.registry and PEER in b.board.registry)
        seen = str(a.board.events.head)
        yield a.board.accept(PresenceMessage("update", PEER, "2"), 1, reactor.seconds())
        yield a.board.accept(PresenceMessage("online", PEER + "x", "3"), 1, reactor.seconds())
        yield until(lambda: PEER + "x" in b.board.registry)
        replay = b.board.backlog(seen).all()
        self.assertEqual(
            [json.loads(e.frame.split(b"data: ")[1])["content"] for e in replay], ["2", "3"]
        )

    @defer.inlineCallbacks
    def test_stale_peer_gets_exactly_one_offline_everywhere(self):  # type: ignore[no-untyped-def]
        """Both instances prune; each stream sees one offline for the stale peer."""
        a, b = self.instance(ttl=2), self.instance(ttl=2)
        seen_a, seen_b = self.events_of(a), self.events_of(b)
        yield a.board.accept(PresenceMessage("online", PEER), 1, reactor.seconds() - 5)
        yield until(lambda: len(seen_b) == 1)
        a.board.prune(reactor.seconds())
        b.board.prune(reactor.seconds())
        yield until(lambda: PEER not in a.board.registry and PEER not in b.board.registry)
        a.board.prune(reactor.seconds())
        b.board.prune(reactor.seconds())
        yield until(lambda: not a.board._tailing and not b.board._tailing)  # type: ignore[attr-defined]
        for seen in (seen_a, seen_b):
            self.assertEqual([m["type"] for m in seen], ["online", "offline"])

    @defer.inlineCallbacks
    def test_restarted_instance_starts_with_the_current_table(self):  # type: ignore[no-untyped-def]
        """A new instance on the file begins with every peer still within its TTL."""
        a = self.instance()
        yield a.board.accept(PresenceMessage("online", PEER, "still here"), 1, reactor.seconds())
        c = self.instance()
        assert isinstance(c.board, SharedBoard)
        self.assertEqual(c.board.restored, 1)
        self.assertEqual(c.board.registry.get(PEER).message.content, "still here")  # type: ignore[union-attr]
        snapshot = c.board.backlog(None).all()
        self.assertEqual([e.peer_id for e in snapshot], [PEER])
