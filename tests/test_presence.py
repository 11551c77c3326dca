"""Publisher and event-stream consumer against real rendezvous servers on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from goop.config import Config, IdentityConfig, P2PConfig, PresenceConfig, ViewerConfig
from goop.message import PresenceMessage
from goop.presence.consumer import EventStreamConsumer
from goop.presence.node import HttpClientService
from goop.presence.publisher import PresencePublisher, RendezvousChannel
from goop.rendezvous.service import RendezvousService
from goop.tap import build_service

PEER = "12D3KooWPresenceTestPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def until(predicate: Any, timeout: float = 5.0) -> defer.Deferred[None]:
    """Fires once ``predicate()`` holds (checked every reactor turn), or times out."""
    d: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if d.called:
            return
        if predicate():
            d.callback(None)
        else:
            reactor.callLater(0.01, check)

    check()
    return d.addTimeout(timeout, reactor)


class _Silent(protocol.Protocol):
    """Answers one /events request with headers and ': ok', then says nothing."""

    body = b": ok\n\n"

    def dataReceived(self, data: bytes) -> None:
        self.factory.requests.append(data)  # type: ignore[attr-defined]
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + self.body
        )


class _Hang(protocol.Protocol):
    """Accepts and never answers."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.requests.append(data)  # type: ignore[attr-defined]


class _Error500(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(500)
        return b'{"error": "boom"}'


class _Scripted(protocol.Protocol):
    """Answers each /events request with the next body of ``bodies`` (the last one
    repeats), then closes the connection if that body's flag says so."""

    bodies: list[tuple[bytes, bool]] = []

    def dataReceived(self, data: bytes) -> None:
        requests = self.factory.requests  # type: ignore[attr-defined]
        requests.append(data)
        body, close = self.bodies[min(len(requests), len(self.bodies)) - 1]
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body
        )
        if close:
            self.transport.loseConnection()  # type: ignore[union-attr]


class Harness(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.http = HttpClientService(reactor)
        self.http.startService()
        self.addCleanup(self.http.stopService)

    def rendezvous(self, port: int = 0) -> RendezvousService:
        rv = RendezvousService(PresenceConfig(rendezvous_port=port), reactor)
        rv.startService()
        self.addCleanup(rv.stopService)
        return rv

    def raw_server(self, proto: type[protocol.Protocol]) -> tuple[str, list[bytes]]:
        factory = protocol.Factory.forProtocol(proto)
        factory.requests = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", factory.requests  # type: ignore[attr-defined]

    def consumer(
        self, url: str, keepalive: float = 25.0
    ) -> tuple[EventStreamConsumer, list[PresenceMessage]]:
        got: list[PresenceMessage] = []
        c = EventStreamConsumer(reactor, lambda: url, got.append, self.http.client, keepalive)
        c.startService()
        self.addCleanup(c.stopService)
        return c, got


def accepted(rv: RendezvousService, seen: Any) -> None:
    """Call ``seen(message)`` for every message ``rv`` accepts (a heartbeat that
    changes nothing reaches no stream, so the hub is not where to look)."""
    board = rv.board
    real = board.publish

    def spy(message: PresenceMessage, nbytes: int, now: float) -> Any:
        seen(message)
        return real(message, nbytes, now)

    board.publish = spy  # type: ignore[method-assign]


def publish(rv: RendezvousService, content: str, peer: str = PEER, kind: str = "online") -> None:
    rv.board.publish(PresenceMessage(kind, peer, content), 10, reactor.seconds())


class ConsumerTests(Harness):
    @defer.inlineCallbacks
    def test_snapshot_then_live_events(self):  # type: ignore[no-untyped-def]
        """The consumer gets the peers already online, then live ones."""
        rv = self.rendezvous()
        publish(rv, "before")
        c, got = self.consumer(rv.url)
        yield until(lambda: [m.content for m in got] == ["before"])
        publish(rv, "after", kind="update")
        yield until(lambda: [m.content for m in got] == ["before", "after"])
        self.assertEqual(c.last_event_id, str(rv.board.events.head))

    @defer.inlineCallbacks
    def test_reconnect_sends_last_event_id_and_gets_only_what_was_missed(self):  # type: ignore[no-untyped-def]
        """When the server ends the stream, the consumer reconnects with Last-Event-ID
        and receives the missed events, not a second snapshot."""
        rv = self.rendezvous()
        publish(rv, "one")
        c, got = self.consumer(rv.url)
        yield until(lambda: len(got) == 1)
        asked: list[str | None] = []
        original = rv.board.backlog

        def spy(last: str | None, changes_only: bool = False) -> Any:
            asked.append(last)
            return original(last, changes_only)

        rv.board.backlog = spy  # type: ignore[method-assign]
        seen = c.last_event_id
        rv.hub.close_all()
        publish(rv, "two", kind="update")
        yield until(lambda: c.connections == 2 and len(got) == 2)
        self.assertEqual(asked, [seen])
        self.assertEqual([m.content for m in got], ["one", "two"])

    @defer.inlineCallbacks
    def test_changes_only_mode_is_detected_and_reported(self):  # type: ignore[no-untyped-def]
        """Against a goop rendezvous the consumer's stream is changes-only (the server
        says so), and it reports the mode when the stream opens and when it ends."""
        rv = self.rendezvous()
        calls: list[bool] = []
        c = EventStreamConsumer(
            reactor,
            lambda: rv.url,
            lambda m: None,
            self.http.client,
            on_managed=lambda on, now: calls.append(on),
        )
        c.startService()
        self.addCleanup(c.stopService)
        yield until(lambda: calls == [True])
        self.assertTrue(c.changes_only)
        rv.hub.close_all()
        yield until(lambda: calls[:2] == [True, False])

    @defer.inlineCallbacks
    def test_silent_stream_is_treated_as_dead(self):  # type: ignore[no-untyped-def]
        """A stream with nothing (not even a ping) for 2.5 keep-alive periods is reconnected."""
        url, requests = self.raw_server(_Silent)
        self.consumer(url, keepalive=0.2)
        started = time.monotonic()
        yield until(lambda: len(requests) >= 2, timeout=5)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)

    @defer.inlineCallbacks
    def test_bad_events_are_skipped_not_fatal(self):  # type: ignore[no-untyped-def]
        """Non-JSON and invalid messages are counted and skipped; good ones still arrive."""
        good = json.dumps({"type": "online", "peerId": PEER, "content": "ok"}).encode()
        _Silent.body = (
            b': ok\n\ndata: not json\n\ndata: {"type":"nope"}\n\ndata: [1]\n\ndata: '
            + good
            + b"\n\n"
        )
        self.addCleanup(setattr, _Silent, "body", b": ok\n\n")
        url, _ = self.raw_server(_Silent)
        c, got = self.consumer(url)
        yield until(lambda: len(got) == 1)
        self.assertEqual(c.bad_events, 3)
        self.assertEqual(got[0].content, "ok")

    @defer.inlineCallbacks
    def test_ten_megabyte_line_ends_the_stream_and_the_next_one_works(self):  # type: ignore[no-untyped-def]
        """A 10 MB line with no end is refused while reading (never buffered whole),
        the stream is dropped with a logged reason, and the reconnect is served."""
        good = json.dumps({"type": "online", "peerId": PEER, "content": "after"}).encode()
        _Scripted.bodies = [
            (b": ok\n\ndata: " + b"x" * (10 * 1024 * 1024), False),
            (b": ok\n\ndata: " + good + b"\n\n", False),
        ]
        url, requests = self.raw_server(_Scripted)
        with capturedLogs() as events:
            _, got = self.consumer(url)
            yield until(lambda: len(got) == 1, timeout=15)
        self.assertEqual([m.content for m in got], ["after"])
        self.assertEqual(len(requests), 2)
        self.assertTrue(
            any("bad event stream" in formatEvent(e) for e in events),
            [formatEvent(e) for e in events],
        )

    @defer.inlineCallbacks
    def test_server_closing_mid_event_dispatches_nothing_of_it(self):  # type: ignore[no-untyped-def]
        """An event cut off by the server closing (no blank line yet) is discarded,
        as the WHATWG parser says; the consumer reconnects and gets the next one."""
        cut = json.dumps({"type": "online", "peerId": PEER, "content": "cut"}).encode()
        good = json.dumps({"type": "online", "peerId": PEER, "content": "whole"}).encode()
        _Scripted.bodies = [
            (b": ok\n\ndata: " + cut + b"\n", True),
            (b": ok\n\ndata: " + good + b"\n\n", False),
        ]
        url, requests = self.raw_server(_Scripted)
        c, got = self.consumer(url)
        yield until(lambda: len(got) == 1, timeout=15)
        self.assertEqual([m.content for m in got], ["whole"])
        self.assertEqual(len(requests), 2)
        self.assertEqual(c.bad_events, 0)

    @defer.inlineCallbacks
    def test_server_that_appears_later_is_picked_up(self):  # type: ignore[no-untyped-def]
        """Refused at first, the consumer keeps retrying and subscribes once the
        rendezvous is (re)started on that port."""
        probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        port = probe.getHost().port
        yield probe.stopListening()
        c, got = self.consumer(f"http://127.0.0.1:{port}")
        yield until(lambda: c.backoff.attempts >= 2)
        rv = self.rendezvous(port)
        publish(rv, "late")
        yield until(lambda: [m.content for m in got] == ["late"], timeout=8)


class PublisherTests(Harness):
    def publisher(self, urls: dict[str, str], heartbeat: float = 0.2) -> PresencePublisher:
        def message(kind: str) -> PresenceMessage:
            return PresenceMessage(kind, PEER, "me", ts=int(reactor.seconds() * 1000))

        channels = [
            RendezvousChannel(n, (lambda u=u: u), self.http.client) for n, u in urls.items()
        ]
        pub = PresencePublisher(reactor, message, channels, heartbeat)  # type: ignore[arg-type]
        pub.startService()
        self.addCleanup(lambda: pub.running and pub.stopService())
        return pub

    @defer.inlineCallbacks
    def test_online_then_updates_then_offline(self):  # type: ignore[no-untyped-def]
        """online at start, update each heartbeat, offline on stop."""
        rv = self.rendezvous()
        kinds: list[str] = []
        accepted(rv, lambda message: kinds.append(message.type))
        pub = self.publisher({"local": rv.url})
        yield until(lambda: kinds.count("update") >= 2)
        yield pub.stopService()
        yield until(lambda: kinds[-1:] == ["offline"])
        self.assertEqual(kinds[0], "online")
        self.assertNotIn(PEER, rv.board.registry)

    @defer.inlineCallbacks
    def test_bad_targets_never_delay_the_good_one(self):  # type: ignore[no-untyped-def]
        """A target refusing connections, one never answering and one answering 500:
        the good rendezvous still gets online and every heartbeat, and stop takes < 2 s."""
        rv = self.rendezvous()
        hang_url, hang_requests = self.raw_server(_Hang)
        site = server.Site(_Error500())
        p500 = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(p500.stopListening)
        probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        refused_url = f"http://127.0.0.1:{probe.getHost().port}"
        yield probe.stopListening()
        beats: list[float] = []
        accepted(rv, lambda message: beats.append(time.monotonic()))
        pub = self.publisher(
            {
                "refused": refused_url,
                "hang": hang_url,
                "error": f"http://127.0.0.1:{p500.getHost().port}",
                "good": rv.url,
            },
            heartbeat=0.2,
        )
        yield until(lambda: len(beats) >= 6, timeout=5)
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        self.assertLess(max(gaps), 0.6, gaps)  # heartbeats every 0.2 s, never held up
        self.assertTrue(hang_requests)
        started = time.monotonic()
        yield pub.stopService()
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertNotIn(PEER, rv.board.registry)


class WanFailureTests(TestCase):
    """A full peer (own rendezvous + a broken WAN) keeps its local path working."""

    timeout = 30

    @defer.inlineCallbacks
    def check_local_path_with_wan(self, wan: str):  # type: ignore[no-untyped-def]
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        key = os.path.join(home, "identity.key")
        config = Config(
            identity=IdentityConfig(key_file=key),
            p2p=P2PConfig(enabled=False, mdns_enabled=False),
            presence=PresenceConfig(rendezvous_host=True, rendezvous_port=0, rendezvous_wan=wan),
            viewer=ViewerConfig(http_addr="127.0.0.1:0"),
        )
        tree = build_service(config, reactor)
        tree.privilegedStartService()
        tree.startService()
        self.addCleanup(tree.stopService)
        rv = tree.getServiceNamed("rendezvous")
        local = tree.getServiceNamed("link-local")
        wan_link = tree.getServiceNamed("link-wan")
        publish(rv, "neighbour", peer=PEER)
        viewer = next(s for s in tree if type(s).__name__ == "ViewerService")
        yield until(lambda: PEER in viewer.app.table, timeout=5)
        me = viewer.app.current().peer_id
        yield until(lambda: me in rv.board.registry, timeout=5)
        self.assertEqual(viewer.app.table.get(PEER).sources, ["local"])
        yield until(lambda: local.state == "ws", timeout=5)
        self.assertTrue(local.connected)
        self.assertFalse(wan_link.connected)

    def test_wan_refusing_connections(self) -> defer.Deferred[None]:
        """WAN port closed: the local rendezvous path works."""
        probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{probe.getHost().port}"
        return defer.maybeDeferred(probe.stopListening).addCallback(
            lambda _: self.check_local_path_with_wan(url)
        )

    def test_wan_accepting_and_never_answering(self) -> defer.Deferred[None]:
        """WAN accepts connections and never answers: the local path works."""
        factory = protocol.Factory.forProtocol(_Hang)
        factory.requests = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return self.check_local_path_with_wan(f"http://127.0.0.1:{port.getHost().port}")

    def test_wan_answering_500(self) -> defer.Deferred[None]:
        """WAN answers 500 to everything: the local path works."""
        port = reactor.listenTCP(0, server.Site(_Error500()), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return self.check_local_path_with_wan(f"http://127.0.0.1:{port.getHost().port}")


class LyingRelayTests(Harness):
    @defer.inlineCallbacks
    def test_a_rendezvous_that_alters_a_signed_peer_is_caught(self) -> None:
        """A relay serves alice's real signed event, then the same with its content
        changed, then an unsigned update for her: the peer keeps the real one (marked
        verified), drops the other two, and logs why."""
        from dataclasses import replace

        from goop.identity import _from_seed
        from goop.peertable import PeerTable
        from goop.presence.node import table_feeder
        from goop.signing import sign, signing_key

        alice = _from_seed(b"\x04" * 32, "")
        real = PresenceMessage("online", alice.peer_id, "alice", ts=1_796_203_421_127)
        real = replace(real, sig=sign(signing_key(alice.seed), real))
        altered = replace(real, type="update", content="rewritten by the relay")
        unsigned = PresenceMessage("update", alice.peer_id, "unsigned", ts=real.ts + 5)
        body = b"".join(
            b"id: %d\ndata: %s\n\n" % (n, m.encode())
            for n, m in enumerate((real, altered, unsigned), 1)
        ) + b"id: 4\ndata: " + json.dumps({"type": "online", "peerId": "marker"}).encode() + b"\n\n"
        _Scripted.bodies = [(body, False)]
        url, _ = self.raw_server(_Scripted)
        table = PeerTable("me", ttl=60)
        feed = table_feeder(table, "wan", reactor)
        with capturedLogs() as events:
            c = EventStreamConsumer(reactor, lambda: url, feed, self.http.client)
            c.startService()
            self.addCleanup(c.stopService)
            yield until(lambda: "marker" in table)
        view = table.get(alice.peer_id)
        assert view is not None
        self.assertEqual(view.message.content, "alice")
        self.assertEqual(view.proof, "verified")
        self.assertEqual(table.rejected, 2)
        logged = " ".join(formatEvent(e) for e in events)
        self.assertIn("bad signature", logged)
