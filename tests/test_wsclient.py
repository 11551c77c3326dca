"""The /ws client and the rendezvous link over real sockets on 127.0.0.1.

A real goop rendezvous in this process (plain and TLS with a trustme CA),
Autobahn's client dialling it, and links built as a full peer builds them
(POST channel, SSE consumer factory, peer table). Every wait is a Deferred
or a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from goop.config import PresenceConfig
from goop.message import PresenceMessage
from goop.peertable import PeerTable
from goop.presence.consumer import EventStreamConsumer
from goop.presence.link import RendezvousLink
from goop.presence.node import HttpClientService
from goop.presence.publisher import RendezvousChannel
from goop.presence.tlsclient import RendezvousTrust, describe_failure
from goop.presence.wsclient import AutobahnConnector, HandshakeRefused
from goop.rendezvous.service import RendezvousService
from tests.test_presence import until

A = "12D3KooWLinkTestAliceAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
B = "12D3KooWLinkTestBobBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b'{"error": "no such endpoint"}'


class Harness(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.http = HttpClientService(reactor)
        self.http.startService()
        self.addCleanup(self.http.stopService)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def rendezvous(self, **settings: Any) -> RendezvousService:
        config: dict[str, Any] = {"rendezvous_port": 0, "publish_rate_limit": 0}
        config.update(settings)
        rv = RendezvousService(PresenceConfig(**config), reactor)
        rv.startService()
        self.addCleanup(rv.stopService)
        return rv

    def post(self, url: str, peer_id: str) -> defer.Deferred[Any]:
        body = json.dumps({"type": "online", "peerId": peer_id, "content": peer_id}).encode()
        return treq.post(url + "/publish", data=body, pool=self.pool)

    def dial(
        self, connector: AutobahnConnector, url: str, frames: list[bytes] | None = None
    ) -> tuple[defer.Deferred[Any], list[str]]:
        closed: list[str] = []
        got = frames if frames is not None else []
        d = connector.dial(url, got.append, closed.append, 5.0)
        return d, closed

    def link(
        self, url: str, peer_id: str, table: PeerTable, source: str = "wan", **kw: Any
    ) -> RendezvousLink:
        post = RendezvousChannel(source, lambda: url, self.http.client)

        def make_sse(on_message: Any, on_managed: Any, on_punch: Any) -> EventStreamConsumer:
            return EventStreamConsumer(
                reactor, lambda: url, on_message, self.http.client,
                on_managed=on_managed, self_id=peer_id, on_punch=on_punch,
            )

        def managed(on: bool, now: float) -> None:
            if on:
                table.manage(source, now)
            else:
                table.unmanage(source, now)

        link = RendezvousLink(
            reactor, post, peer_id, AutobahnConnector(reactor, self.http.tls_policy), make_sse,
            lambda m: table.observe(source, m, reactor.seconds()), managed,
            rng=random.Random(1), **kw,
        )
        link.startService()
        self.addCleanup(link.stopService)
        return link

    def beat(self, link: RendezvousLink, peer_id: str, kind: str = "online") -> defer.Deferred[Any]:
        d = link.channel.send(PresenceMessage(kind, peer_id, peer_id), 5)
        return d.addErrback(lambda f: None)


class ConnectorTests(Harness):
    @defer.inlineCallbacks
    def test_425_then_open_after_publishing_with_frames_both_ways(self) -> None:
        """Unknown peer: HandshakeRefused(425). After a POST: open; the snapshot and
        the echo of a frame we send arrive as frames; closing is clean."""
        rv = self.rendezvous()
        connector = AutobahnConnector(reactor, RendezvousTrust())
        url = f"ws://127.0.0.1:{rv.port}/ws?peer_id={A}&changes=1"
        d, _ = self.dial(connector, url)
        failure = yield self.assertFailure(d, HandshakeRefused)
        self.assertEqual(failure.status, 425)
        response = yield self.post(rv.url, A)
        self.assertEqual(response.code, 204)
        frames: list[bytes] = []
        d, closed = self.dial(connector, url, frames)
        sock = yield d
        yield until(lambda: any(json.loads(f)["peerId"] == A for f in frames))
        self.assertTrue(sock.send(PresenceMessage("update", A, "over ws").encode()))
        yield until(lambda: any(json.loads(f)["content"] == "over ws" for f in frames))
        yield sock.close()
        self.assertEqual(closed, [], "a socket we close ourselves is not reported as lost")
        self.assertFalse(sock.send(b"{}"))

    @defer.inlineCallbacks
    def test_probe_opens_and_a_server_close_is_reported(self) -> None:
        """/ws?probe=1 upgrades, then the server closes it with 1000 probe-ok."""
        rv = self.rendezvous()
        connector = AutobahnConnector(reactor, RendezvousTrust())
        d, closed = self.dial(connector, f"ws://127.0.0.1:{rv.port}/ws?probe=1")
        yield d
        yield until(lambda: bool(closed))
        self.assertEqual(closed, ["closed by the server: 1000 probe-ok"])

    @defer.inlineCallbacks
    def test_a_silent_socket_is_dropped_as_dead(self) -> None:
        """Nothing at all (no frame, no ping) for the silence limit: the socket is cut and
        reported lost. (The limit is 15 s; the server pings every 5 s.)"""
        rv = self.rendezvous()
        yield self.post(rv.url, A)
        connector = AutobahnConnector(reactor, RendezvousTrust(), silence=0.3)
        d, closed = self.dial(connector, f"ws://127.0.0.1:{rv.port}/ws?peer_id={A}&changes=1")
        yield d
        yield until(lambda: bool(closed), timeout=5)
        self.assertEqual(closed, ["nothing heard for 0.3s"])

    @defer.inlineCallbacks
    def test_plain_http_404_and_refused_port(self) -> None:
        """A server without /ws: HandshakeRefused(404). Nothing listening: refused."""
        port = reactor.listenTCP(0, server.Site(_NotFound()), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        connector = AutobahnConnector(reactor, RendezvousTrust())
        d, _ = self.dial(connector, f"ws://127.0.0.1:{port.getHost().port}/ws?probe=1")
        failure = yield self.assertFailure(d, HandshakeRefused)
        self.assertEqual(failure.status, 404)
        gone = reactor.listenTCP(0, server.Site(_NotFound()), interface="127.0.0.1")  # type: ignore[attr-defined]
        free = gone.getHost().port
        yield gone.stopListening()
        d, _ = self.dial(connector, f"ws://127.0.0.1:{free}/ws?probe=1")
        yield self.assertFailure(d, ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_wss_uses_the_peers_tls_trust(self) -> None:
        """wss:// is checked like https://: our CA bundle is trusted, an unknown CA and a
        certificate for another name are refused with the reason spelled out."""
        import trustme

        ca = trustme.CA()
        tls_dir = self.mktemp()
        os.mkdir(tls_dir)
        with open(os.path.join(tls_dir, "localhost.pem"), "wb") as f:
            f.write(ca.issue_cert("localhost").private_key_and_cert_chain_pem.bytes())
        ca_file = self.mktemp()
        ca.cert_pem.write_to_path(ca_file)
        rv = self.rendezvous(rendezvous_tls_dir=tls_dir)
        trusted = AutobahnConnector(reactor, RendezvousTrust(ca_file))
        d, _ = self.dial(trusted, f"wss://localhost:{rv.port}/ws?probe=1")
        sock = yield d
        yield sock.close()
        stranger = AutobahnConnector(reactor, RendezvousTrust())
        d, _ = self.dial(stranger, f"wss://localhost:{rv.port}/ws?probe=1")
        [failure] = yield d.addCallbacks(lambda s: self.fail("opened"), lambda f: [f])
        self.assertIn("not from a trusted CA", describe_failure(failure))
        d, _ = self.dial(trusted, f"wss://127.0.0.1:{rv.port}/ws?probe=1")
        [failure] = yield d.addCallbacks(lambda s: self.fail("opened"), lambda f: [f])
        self.assertIn("certificate is for another name", describe_failure(failure))


class LinkTests(Harness):
    @defer.inlineCallbacks
    def test_two_links_see_each_other_over_ws(self) -> None:
        """Two peers' links on one goop rendezvous: both on /ws, each table lists the
        other; heartbeats travel as frames; a closed socket drops its peer at once."""
        rv = self.rendezvous()
        table_a, table_b = PeerTable(A, 20), PeerTable(B, 20)
        a = self.link(rv.url, A, table_a)
        b = self.link(rv.url, B, table_b)
        yield self.beat(a, A)
        yield self.beat(b, B)
        yield until(lambda: a.state == "ws" and b.state == "ws")
        yield until(lambda: B in table_a and A in table_b)
        yield self.beat(a, A, "update")
        self.assertEqual(a.frames_sent, 1)
        self.assertEqual(a.posts_sent, 1)
        yield b.stopService()
        yield until(lambda: B not in table_a)

    @defer.inlineCallbacks
    def test_server_without_ws_then_with_it(self) -> None:
        """/ws answers 404: the link reads /events (the peer is seen), then /ws comes
        back: the probe finds it and the link moves over, the peer still listed."""
        rv = self.rendezvous()
        real_render = rv.web.ws.render
        rv.web.ws.render = _NotFound().render  # type: ignore[method-assign]
        table = PeerTable(A, 20)
        a = self.link(rv.url, A, table, probe_first=0.2, probe_every=0.3)
        yield self.beat(a, A)
        yield until(lambda: a.state == "sse")
        yield self.post(rv.url, B)
        yield until(lambda: B in table)
        self.assertTrue(a.connected)
        rv.web.ws.render = real_render  # type: ignore[method-assign]
        yield until(lambda: a.state == "ws")
        self.assertIn(B, table)
        self.assertGreaterEqual(a.probes, 1)

    @defer.inlineCallbacks
    def test_socket_cut_by_the_server_is_redialled_and_we_are_listed_again(self) -> None:
        """The server cuts our socket (it then lists us offline): the link POSTs us back
        at once and reopens /ws."""
        rv = self.rendezvous()
        a = self.link(rv.url, A, PeerTable(A, 20))
        yield self.beat(a, A)
        yield until(lambda: a.state == "ws")
        rv.web.ws.sockets[A].transport.abortConnection()
        yield until(lambda: a.sockets_opened == 2 and a.state == "ws", timeout=10)
        self.assertIn(A, rv.board.registry)
