"""``/ws`` on a real rendezvous over real sockets, with Autobahn's client as the peer."""

from __future__ import annotations

import json
import socket
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from goop.config import PresenceConfig
from goop.message import MAX_BODY_BYTES
from goop.rendezvous.service import RendezvousService
from tests.wspeer import WsPeer, open_ws

A = "12D3KooWAlice"
B = "12D3KooWBob"
GOOP2_UPDATE = {
    "type": "update", "peerId": A, "content": "Alice", "addrs": ["/ip4/10.0.0.5/tcp/4001"],
    "publicKey": "bmFj", "encryptionSupported": True, "goopClientVersion": "dev",
    "verificationToken": "secret-token", "verified": False, "futureKey": 1,
}


class RendezvousTestCase(TestCase):
    """A real rendezvous on 127.0.0.1:0 (no rate limit unless asked), stopped after."""

    timeout = 30

    def start(self, **config: Any) -> RendezvousService:
        settings: dict[str, Any] = {"rendezvous_port": 0, "publish_rate_limit": 0}
        settings.update(config)
        service = RendezvousService(PresenceConfig(**settings), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        return service


class WsTestCase(RendezvousTestCase):
    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    def post(self, message: dict[str, Any]) -> defer.Deferred[Any]:
        return treq.post(
            f"http://{self.base}/publish", data=json.dumps(message).encode(), pool=self.pool
        )

    def get(self, path: str) -> defer.Deferred[Any]:
        return treq.get(f"http://{self.base}{path}", pool=self.pool)

    @defer.inlineCallbacks
    def peer(self, peer_id: str, query: str = "", publish: bool = True) -> Any:
        if publish:
            r = yield self.post({"type": "online", "peerId": peer_id, "content": peer_id})
            self.assertEqual(r.code, 204)
        ws = yield open_ws(f"ws://{self.base}/ws?peer_id={peer_id}{query}")
        self.addCleanup(self._drop, ws)
        return ws

    def _drop(self, ws: WsPeer) -> defer.Deferred[Any]:
        if ws.transport is not None and not ws.closed.called:
            ws.transport.abortConnection()
        return ws.closed


class HandshakeTests(WsTestCase):
    @defer.inlineCallbacks
    def test_refusals_before_the_upgrade(self) -> None:
        """No peer_id: 400; a peer that never published: 425 (goop2 retries on it)."""
        self.start()
        r = yield self.get("/ws")
        self.assertEqual(r.code, 400)
        self.assertIn("peer_id", (yield r.json())["error"])
        r = yield self.get(f"/ws?peer_id={A}")
        self.assertEqual(r.code, 425)
        self.assertEqual(r.phrase, b"Too Early")
        self.assertIn("publish first", (yield r.json())["error"])
        r = yield treq.post(f"http://{self.base}/ws?peer_id={A}", pool=self.pool)
        self.assertEqual(r.code, 405)

    @defer.inlineCallbacks
    def test_probe_upgrades_then_closes_with_probe_ok(self) -> None:
        """?probe=1: a 101, then Close 1000 'probe-ok' (goop2's SSE fallback probes this)."""
        self.start()
        ws = yield open_ws(f"ws://{self.base}/ws?probe=1")
        code, reason = yield ws.closed
        self.assertEqual((code, reason), (1000, "probe-ok"))
        self.assertEqual(len(self.service.hub), 0)

    @defer.inlineCallbacks
    def test_per_address_cap(self) -> None:
        """Past max_websockets_per_ip, the next socket from that address gets 429."""
        self.start(max_websockets_per_ip=2)
        yield self.peer(A)
        yield self.peer(B)
        yield self.post({"type": "online", "peerId": "C"})
        r = yield self.get("/ws?peer_id=C")
        self.assertEqual(r.code, 429)
        self.assertEqual(r.headers.getRawHeaders(b"retry-after"), [b"10"])
        self.assertIn("too many WebSockets", (yield r.json())["error"])


class PresenceOverWsTests(WsTestCase):
    @defer.inlineCallbacks
    def test_snapshot_then_frames_published_and_echoed(self) -> None:
        """On open the socket gets every online peer; a text frame is a publish, relayed
        to SSE and /ws alike with verified set, the token and unknown keys dropped."""
        self.start()
        yield self.post({"type": "online", "peerId": B, "content": "Bob"})
        alice = yield self.peer(A)
        yield alice.wait_for(lambda: {m["peerId"] for m in alice.received} >= {A, B})
        alice.send_json(GOOP2_UPDATE)
        yield alice.wait_for(lambda: bool(alice.of_type("update", A)))
        echo = alice.of_type("update", A)[0]
        self.assertTrue(echo["verified"])
        self.assertEqual(echo["addrs"], GOOP2_UPDATE["addrs"])
        self.assertEqual(echo["goopClientVersion"], "dev")
        self.assertNotIn("verificationToken", echo)
        self.assertNotIn("futureKey", echo)
        self.assertEqual(self.service.board.registry.get(A).message.content, "Alice")

    @defer.inlineCallbacks
    def test_missing_peer_id_in_a_frame_is_the_sockets(self) -> None:
        """goop2's rule: a frame without peerId is taken as the socket's peer."""
        self.start()
        alice = yield self.peer(A)
        alice.send_json({"type": "update", "content": "no id"})
        yield alice.wait_for(lambda: any(m.get("content") == "no id" for m in alice.received))

    @defer.inlineCallbacks
    def test_bad_frames_are_skipped_and_the_socket_stays_open(self) -> None:
        """Bad JSON, a punch, a binary frame and another peer's ID are skipped and
        counted; the next good frame is taken; nothing stored for others changes."""
        self.start()
        yield self.post({"type": "online", "peerId": B, "content": "Bob"})
        alice = yield self.peer(A)
        alice.sendMessage(b"{not json")
        alice.send_json({"type": "punch", "peerId": A, "target": B})
        alice.sendMessage(b"\x00\x01", isBinary=True)
        alice.send_json({"type": "offline", "peerId": B})
        alice.send_json({"type": "update", "peerId": A, "content": "still here"})
        yield alice.wait_for(lambda: any(m.get("content") == "still here" for m in alice.received))
        self.assertEqual(self.service.web.ws.frames_skipped, 4)
        self.assertIn(B, self.service.board.registry)
        self.assertFalse(alice.closed.called)

    @defer.inlineCallbacks
    def test_oversized_message_closes_with_1009(self) -> None:
        """A message over 64 KiB closes the socket with 1009; the peer's state stays."""
        self.start()
        alice = yield self.peer(A)
        alice.sendMessage(b"x" * (MAX_BODY_BYTES + 1))
        code, _ = yield alice.closed
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_frames_past_the_per_socket_rate_are_skipped(self) -> None:
        """A burst of 50 frames: the first 20 are taken, the rest skipped, socket open."""
        self.start()
        alice = yield self.peer(A)
        for i in range(50):
            alice.send_json({"type": "update", "peerId": A, "content": f"n{i}"})
        alice.send_json({"type": "update", "peerId": A, "content": "marker"})
        ws = self.service.web.ws
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertLessEqual(ws.frames_accepted, 22)  # 20 + refill over the test's runtime
        self.assertGreaterEqual(ws.frames_skipped, 28)
        self.assertFalse(alice.closed.called)


class LifecycleTests(WsTestCase):
    @defer.inlineCallbacks
    def test_abrupt_close_broadcasts_offline_at_once(self) -> None:
        """A peer whose socket dies (kill -9) is offline for everyone within a second."""
        self.start()
        bob = yield self.peer(B)
        alice = yield self.peer(A)
        yield bob.wait_for(lambda: bool(bob.of_type("online", A)))
        started = reactor.seconds()
        alice.transport.abortConnection()
        yield bob.wait_for(lambda: bool(bob.of_type("offline", A)), timeout=1)
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertNotIn(A, self.service.board.registry)

    @defer.inlineCallbacks
    def test_own_offline_then_close_is_one_offline(self) -> None:
        """A peer that says offline and then closes is gone once, not twice."""
        self.start()
        bob = yield self.peer(B)
        alice = yield self.peer(A)
        alice.send_json({"type": "offline", "peerId": A})
        yield bob.wait_for(lambda: bool(bob.of_type("offline", A)))
        alice.sendClose(1000)
        yield alice.closed
        bob.send_json({"type": "update", "peerId": B, "content": "marker"})
        yield bob.wait_for(lambda: any(m.get("content") == "marker" for m in bob.received))
        self.assertEqual(len(bob.of_type("offline", A)), 1)

    @defer.inlineCallbacks
    def test_a_second_socket_replaces_the_first_without_an_offline(self) -> None:
        """goop2 quirk fixed: the replaced socket closes, nobody sees the peer leave."""
        self.start()
        bob = yield self.peer(B)
        first = yield self.peer(A)
        second = yield self.peer(A, publish=False)
        code, _ = yield first.closed
        self.assertEqual(code, 1000)
        second.send_json({"type": "update", "peerId": A, "content": "marker"})
        yield bob.wait_for(lambda: any(m.get("content") == "marker" for m in bob.received))
        self.assertEqual(bob.of_type("offline", A), [])
        self.assertIn(A, self.service.board.registry)
        self.assertIs(self.service.web.ws.sockets[A].subscriber is not None, True)

    @defer.inlineCallbacks
    def test_keepalive_pongs_to_a_talking_peer_pings_to_a_quiet_one(self) -> None:
        """The sweep keeps a goop2 peer's 15 s read deadline from running out: an
        unsolicited pong (no answer needed) every 10 s to a socket heard within QUIET
        seconds, a ping every 5 s to one silent longer (its pong counts as heard); a
        socket silent for 15 s is dropped, its peer offline for everyone. Time is a
        Clock; the socket and the frames are real."""
        from twisted.internet.task import Clock

        from goop.rendezvous import websocket

        self.start()
        alice = yield self.peer(A)
        sock = self.service.web.ws.sockets[A]
        clock = Clock()
        clock.advance(sock.heard)
        channel = self.service.web.ws
        channel.reactor = clock
        channel._sweeper.stop()
        channel._sweeper.clock = clock
        channel._sweeper.start(websocket.SWEEP_EVERY, now=False)
        cycle = [websocket.SWEEP_EVERY] * websocket.PING_BUCKETS
        reads: list[defer.Deferred[None]] = []
        read = sock.dataReceived

        def spy(data: bytes) -> None:
            read(data)
            waiting = reads[:]
            del reads[:]  # a waiter's callback may queue the next one
            for d in waiting:
                d.callback(None)

        sock.dataReceived = spy

        def next_read() -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            reads.append(d)
            return d.addTimeout(10, reactor)

        clock.pump(cycle)
        yield alice.wait_for(lambda: alice.control == ["pong"])
        # Heartbeats (read by the fast path) keep it a talking peer: a pong every
        # other visit (frames arrive in order, so a pong too many would show).
        for _ in range(2):
            heard = next_read()
            alice.send_json({"type": "update", "peerId": A, "content": A})
            yield heard
            self.assertEqual(sock.heard, clock.seconds())
            clock.pump(cycle)
        yield alice.wait_for(lambda: alice.control == ["pong", "pong"])
        # Quiet past QUIET (5 s after the last heartbeat nothing is due, 10 s a
        # ping); Alice's Autobahn answers, which counts as heard.
        answered = next_read()
        clock.pump(cycle + cycle)
        yield alice.wait_for(lambda: alice.control == ["pong", "pong", "ping"])
        yield answered
        self.assertEqual(sock.heard, clock.seconds())
        self.assertEqual(channel.dropped_silent, 0)
        # Nothing heard for READ_DEADLINE: dropped, and Alice is offline.
        sock.heard = clock.seconds() - websocket.READ_DEADLINE
        clock.pump(cycle)
        self.assertEqual(channel.dropped_silent, 1)
        yield alice.closed
        self.assertNotIn(A, self.service.board.registry)
        channel._sweeper.stop()


class _Silent(protocol.Protocol):
    """A raw client that completes the upgrade and then never reads."""

    def __init__(self) -> None:
        self.upgraded: defer.Deferred[None] = defer.Deferred()
        self.buffer = b""

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.upgraded.called:
            self.upgraded.callback(None)


class BackPressureTests(WsTestCase):
    @defer.inlineCallbacks
    def test_a_socket_that_stops_reading_keeps_latest_state_per_peer(self) -> None:
        """10,000 big publishes to a peer that does not read: its socket is paused and
        holds at most one pending event per peer, never a growing queue."""
        self.start()
        yield self.post({"type": "online", "peerId": A})
        silent = _Silent()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.port).connect(
            protocol.Factory.forProtocol(lambda: silent)
        )
        self.addCleanup(lambda: silent.transport.abortConnection())
        silent.transport.write(
            f"GET /ws?peer_id={A} HTTP/1.1\r\nHost: {self.base}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        yield silent.upgraded
        self.assertIn(b"101 Switching Protocols", silent.buffer)
        silent.transport.pauseProducing()
        sub = self.service.web.ws.sockets[A].subscriber
        peers = [f"12D3KooWp{i:02d}" for i in range(40)]
        filler = "x" * 3000
        for i in range(10_000):
            self.service.board.publish(
                _update(peers[i % len(peers)], f"{i}-{filler}"), 1, reactor.seconds()
            )
            if i % 50 == 0:
                yield task.deferLater(reactor, 0, lambda: None)
        yield task.deferLater(reactor, 0, lambda: None)
        assert sub is not None
        self.assertTrue(sub.paused, "30 MB written to a non-reading socket without a pause")
        self.assertLessEqual(len(sub.pending or {}), len(peers) + 1)


def _update(peer: str, content: str) -> Any:
    from goop.message import PresenceMessage

    return PresenceMessage("update", peer, content)


class PunchHintTests(WsTestCase):
    @defer.inlineCallbacks
    def test_new_addresses_bring_hints_to_both_peers_of_each_pair_and_no_one_else(self) -> None:
        """Bob (on /ws) and Carol (on /events?peer_id=) each get a hint about Alice's new
        addresses and Alice the mirror image; an anonymous SSE stream gets none; a second
        change within 60 s brings no new hint for the same pair."""
        self.start()
        yield self.post({"type": "online", "peerId": B, "addrs": ["/ip4/10.0.0.2/tcp/1"]})
        bob = yield self.peer(B, publish=False)
        carol = _SseReader()
        yield self.post({"type": "online", "peerId": "Carol", "addrs": ["/ip4/10.0.0.3/tcp/1"]})
        yield self._sse(carol, "/events?peer_id=Carol")
        anon = _SseReader()
        yield self._sse(anon, "/events")
        yield self.post({"type": "online", "peerId": A})
        alice = yield self.peer(A, publish=False)
        alice.send_json({"type": "update", "peerId": A, "addrs": ["/ip4/10.0.0.1/tcp/4001"]})
        yield bob.wait_for(lambda: bool(bob.of_type("punch", A)))
        yield alice.wait_for(lambda: len(alice.of_type("punch")) == 2)
        yield carol.wait_for(
            lambda: any(m["type"] == "punch" and m["peerId"] == A for m in carol.messages)
        )
        hint = bob.of_type("punch", A)[0]
        self.assertEqual(
            (hint["peerId"], hint["target"], hint["addrs"]), (A, B, ["/ip4/10.0.0.1/tcp/4001"])
        )
        mirrored = {m["peerId"]: m["addrs"] for m in alice.of_type("punch")}
        self.assertEqual(
            mirrored, {B: ["/ip4/10.0.0.2/tcp/1"], "Carol": ["/ip4/10.0.0.3/tcp/1"]}
        )
        self.assertTrue(all(m["target"] == A for m in alice.of_type("punch")))
        # Within the cooldown: a new address set, no new hint for these pairs.
        alice.send_json({"type": "update", "peerId": A, "addrs": ["/ip4/10.0.0.9/tcp/4001"]})
        alice.send_json({"type": "update", "peerId": A, "content": "marker"})
        yield anon.wait_for(lambda: any(m.get("content") == "marker" for m in anon.messages))
        yield bob.wait_for(lambda: any(m.get("content") == "marker" for m in bob.received))
        self.assertEqual(len(bob.of_type("punch", A)), 1)
        self.assertEqual([m for m in anon.messages if m["type"] == "punch"], [])

    def _sse(self, reader: _SseReader, path: str) -> defer.Deferred[Any]:
        d = self.get(path)

        def opened(response: Any) -> Any:
            response.deliverBody(reader)
            self.addCleanup(reader.stop)
            return reader.wait_for(lambda: reader.ok)

        return d.addCallback(opened)


class _SseReader(protocol.Protocol):
    def __init__(self) -> None:
        from goop.sseparse import SSEParser

        self.parser = SSEParser()
        self.messages: list[dict[str, Any]] = []
        self.ok = False
        self.done: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Any, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.ok = True
        for event in self.parser.feed(data):
            self.messages.append(json.loads(event.data))
        for pair in list(self._waiters):
            if pair[1].called or pair[0]():
                self._waiters.remove(pair)
                if not pair[1].called:
                    pair[1].callback(None)

    def wait_for(self, predicate: Any, timeout: float = 10) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        if predicate():
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)

    def stop(self) -> defer.Deferred[None]:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        return self.done


class TlsTests(WsTestCase):
    @defer.inlineCallbacks
    def test_wss_on_the_https_port(self) -> None:
        """With rendezvous_tls_dir, /ws is served as wss:// on the same port (SNI cert)."""
        import os

        import trustme
        from twisted.internet import ssl as tssl
        from twisted.internet.endpoints import wrapClientTLS

        ca = trustme.CA()
        tls_dir = self.mktemp()
        os.mkdir(tls_dir)
        cert = ca.issue_cert("rv.example.test")
        with open(os.path.join(tls_dir, "rv.example.test.pem"), "wb") as f:
            f.write(cert.private_key_and_cert_chain_pem.bytes())
        self.start(rendezvous_tls_dir=tls_dir)
        options = tssl.optionsForClientTLS(
            "rv.example.test", trustRoot=tssl.Certificate.loadPEM(ca.cert_pem.bytes())
        )

        def tls() -> Any:
            tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.port)
            return wrapClientTLS(options, tcp)

        from twisted.web.client import Agent
        from twisted.web.iweb import IPolicyForHTTPS
        from zope.interface import implementer

        @implementer(IPolicyForHTTPS)
        class _Policy:
            def creatorForNetloc(self, host: bytes, port: int) -> Any:
                return options

        client = treq.client.HTTPClient(Agent(reactor, contextFactory=_Policy(), pool=self.pool))
        r = yield client.post(
            f"https://127.0.0.1:{self.service.port}/publish",
            data=json.dumps({"type": "online", "peerId": A}).encode(),
        )
        self.assertEqual(r.code, 204)
        ws = yield open_ws(f"wss://rv.example.test:{self.service.port}/ws?peer_id={A}", tls())
        self.addCleanup(self._drop, ws)
        yield ws.wait_for(lambda: bool(ws.of_type("online", A)))
        ws.send_json({"type": "update", "peerId": A, "content": "over tls"})
        yield ws.wait_for(lambda: any(m.get("content") == "over tls" for m in ws.received))


class Goop2OrderTests(WsTestCase):
    @defer.inlineCallbacks
    def test_a_peer_that_posts_before_its_socket_gets_its_half_when_the_socket_opens(
        self,
    ) -> None:
        """goop2 POSTs online (with addrs) before dialling /ws: the other side gets its
        hint at once, and the newcomer gets the mirror image once its socket is up."""
        self.start()
        yield self.post({"type": "online", "peerId": B, "addrs": ["/ip4/10.0.0.2/tcp/1"]})
        bob = yield self.peer(B, publish=False)
        yield self.post({"type": "online", "peerId": A, "addrs": ["/ip4/10.0.0.1/tcp/1"]})
        yield bob.wait_for(lambda: bool(bob.of_type("punch", A)))
        alice = yield self.peer(A, publish=False)
        yield alice.wait_for(lambda: bool(alice.of_type("punch", B)))
        hint = alice.of_type("punch", B)[0]
        self.assertEqual((hint["target"], hint["addrs"]), (A, ["/ip4/10.0.0.2/tcp/1"]))
        # The hint comes after the snapshot the socket is owed.
        kinds = [m["type"] for m in alice.received]
        self.assertLess(kinds.index("online"), kinds.index("punch"))

    @defer.inlineCallbacks
    def test_the_upgrade_says_whether_the_socket_is_changes_only(self) -> None:
        """The 101 carries X-Goop-Changes like /events' 200 does."""
        self.start()
        yield self.post({"type": "online", "peerId": A})
        for query, expected in ((b"&changes=1", b"1"), (b"", b"available")):
            raw = protocol.Protocol()
            got: list[bytes] = []
            raw.dataReceived = got.append  # type: ignore[method-assign]
            yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.port).connect(
                protocol.Factory.forProtocol(lambda r=raw: r)
            )
            self.addCleanup(raw.transport.abortConnection)
            raw.transport.write(
                b"GET /ws?peer_id=" + A.encode() + query + b" HTTP/1.1\r\nHost: x\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            while b"\r\n\r\n" not in b"".join(got):
                yield task.deferLater(reactor, 0.01, lambda: None)
            head = b"".join(got).split(b"\r\n\r\n")[0]
            self.assertIn(b"101", head.split(b"\r\n")[0])
            self.assertIn(b"X-Goop-Changes: " + expected, head)
