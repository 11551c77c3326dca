"""The opt-in changes-only stream (``/events?changes=1``) and the peer side that uses it."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from goop.message import PresenceMessage
from goop.peertable import PeerTable
from tests.inmemory import InMemoryServer

A, B = "12D3KooWchangesA", "12D3KooWchangesB"


def contents(conn: object) -> list[tuple[str, str]]:
    return [
        (m["type"], m["content"])
        for m in (json.loads(e.data) for e in conn.events())  # type: ignore[attr-defined]
    ]


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = InMemoryServer(ttl=20)

    def test_changes_stream_skips_heartbeats_that_change_nothing(self) -> None:
        """Heartbeats reach plain streams; a changes stream gets only arrivals,
        changes and departures (including the server's own expiry offline)."""
        plain = self.server.subscribe()
        changes = self.server.subscribe(path="/events?changes=1")
        self.assertEqual(changes.response().headers["x-goop-changes"], "1")
        self.assertEqual(plain.response().headers["x-goop-changes"], "available")
        self.server.publish(peerId=A, content="a")
        for _ in range(5):
            self.server.publish(peerId=A, type="update", content="a")
        self.server.publish(peerId=A, type="update", content="a2")
        self.server.clock.advance(25)
        self.server.board.prune(self.server.clock.seconds())
        self.server.clock.advance(0)
        self.assertEqual(len(plain.events()), 8)
        self.assertEqual(contents(changes), [("online", "a"), ("update", "a2"), ("offline", "")])

    def test_paused_changes_stream_coalesces_without_heartbeats(self) -> None:
        """A paused changes stream keeps only changed states; heartbeats don't displace them."""
        changes = self.server.subscribe(path="/events?changes=1")
        changes.pause()
        self.server.publish(peerId=A, content="x")
        self.server.publish(peerId=B, content="y")
        for _ in range(50):
            self.server.publish(peerId=A, type="update", content="x")
        changes.resume()
        self.assertEqual(sorted(contents(changes)), [("online", "x"), ("online", "y")])

    def test_replay_on_a_changes_stream_skips_heartbeats(self) -> None:
        """Last-Event-ID replay on a changes stream carries only changes."""
        self.server.publish(peerId=A, content="1")
        first = self.server.subscribe(path="/events?changes=1")
        seen = first.events()[-1].last_event_id
        first.close()
        for _ in range(3):
            self.server.publish(peerId=A, type="update", content="1")
        self.server.publish(peerId=A, type="update", content="2")
        again = self.server.subscribe(path="/events?changes=1", headers={"Last-Event-ID": seen})
        self.assertEqual(contents(again), [("update", "2")])


class ManagedTableTests(SynchronousTestCase):
    def msg(self, peer: str, content: str = "c") -> PresenceMessage:
        return PresenceMessage("update", peer, content)

    def test_managed_source_does_not_time_out_peers_heard_on_the_stream(self) -> None:
        """While the changes stream is up, its peers stay past ttl (the server reports
        departures); when it ends they get a full ttl from that moment."""
        table = PeerTable("me", ttl=20)
        table.manage("wan", since=100.0)
        table.observe("wan", self.msg(A), 100.0)
        self.assertEqual(table.expire(500.0), [])
        table.unmanage("wan", 500.0)
        self.assertEqual(table.expire(519.0), [])
        self.assertEqual(table.expire(520.0), [A])

    def test_peers_from_before_the_stream_still_time_out(self) -> None:
        """A peer last heard before the current changes stream opened (and absent from
        its snapshot) is timed out normally, so it cannot linger forever."""
        table = PeerTable("me", ttl=20)
        table.observe("wan", self.msg(A), 0.0)
        table.manage("wan", since=10.0)
        table.observe("wan", self.msg(B), 10.0)
        self.assertEqual(table.expire(25.0), [A])
        self.assertIn(B, table)

    def test_other_sources_still_expire(self) -> None:
        """Managing one source leaves the others' TTLs alone."""
        table = PeerTable("me", ttl=20)
        table.manage("wan", since=0.0)
        table.observe("local", self.msg(A), 1.0)
        self.assertEqual(table.expire(30.0), [A])
