"""Every row of the SPEC's rendezvous HTTP table, on the real Twisted HTTP stack in memory."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.message import MAX_BODY_BYTES
from tests.inmemory import InMemoryServer, basic
from tests.strategies import json_values

PEER_A = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


class PublishTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = InMemoryServer()

    def test_valid_message_gets_204_and_is_stored(self) -> None:
        """POST /publish with a valid message answers 204 and the peer is online."""
        r = self.server.publish(peerId=PEER_A, content="hi")
        self.assertEqual(r.status, 204)
        self.assertEqual(r.body, b"")
        self.assertIn(PEER_A, self.server.board.registry)

    def test_bad_message_gets_400_with_json_error(self) -> None:
        """A malformed body answers 400 with {"error": ...} naming the problem."""
        r = self.server.request("POST", "/publish", b'{"type":"online"}')
        self.assertEqual(r.status, 400)
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(r.json(), {"error": "peerId: required"})

    def test_wrong_method_gets_405_with_allow(self) -> None:
        """GET /publish answers 405 and says which method to use."""
        r = self.server.request("GET", "/publish")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["allow"], "POST")
        self.assertIn("error", r.json())

    def test_oversized_content_length_gets_413_before_the_body(self) -> None:
        """A Content-Length over 64 KiB is refused at once; no body byte is stored."""
        conn = self.server.connect()
        raw = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n" + b"x" * 1000
        conn.proto.dataReceived(raw)
        r = conn.response()
        self.assertEqual(r.status, 413)
        self.assertIn("larger than", r.json()["error"])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(len(self.server.board.registry), 0)

    def test_chunked_body_over_the_cap_is_cut_off_while_reading(self) -> None:
        """A chunked body is refused the moment it crosses 64 KiB, not after."""
        conn = self.server.connect()
        conn.proto.dataReceived(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * 4096
        sent = 0
        while not conn.transport.disconnecting and sent < 10 * 1024 * 1024:
            conn.proto.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        self.assertLessEqual(sent, MAX_BODY_BYTES + len(chunk))
        self.assertEqual(conn.response().status, 413)

    def test_body_at_the_cap_is_read(self) -> None:
        """Exactly 64 KiB is within the limit (and then judged as JSON)."""
        body = b" " * MAX_BODY_BYTES
        r = self.server.request("POST", "/publish", body)
        self.assertEqual(r.status, 400)
        self.assertIn("malformed JSON", r.json()["error"])

    @settings(max_examples=100)
    @given(json_values)
    def test_any_json_value_gets_204_or_400_never_500(self, value: object) -> None:
        """Whatever JSON is posted, the answer is 204 or a 400 with a JSON error."""
        r = self.server.request("POST", "/publish", json.dumps(value).encode())
        self.assertIn(r.status, (204, 400))
        if r.status == 400:
            self.assertIsInstance(r.json()["error"], str)

    @settings(max_examples=100)
    @given(st.binary(max_size=512))
    def test_any_bytes_get_204_or_400_never_500(self, body: bytes) -> None:
        """Arbitrary bytes as a body: 204 or 400, never a server error."""
        r = self.server.request("POST", "/publish", body)
        self.assertIn(r.status, (204, 400))

    def test_bad_input_is_not_seen_by_subscribers(self) -> None:
        """Rejected publishes write nothing to open streams."""
        self.server.publish(peerId=PEER_A)
        conn = self.server.subscribe()
        before = conn.transport.value()
        for body in (b"{not json", b'{"type":"online"}', b"\xff", b'{"type":"x","peerId":"p"}'):
            self.assertEqual(self.server.request("POST", "/publish", body).status, 400)
        self.assertEqual(conn.transport.value(), before)

    def test_bad_input_loses_nothing_stored(self) -> None:
        """A rejected publish leaves the stored peers as they were."""
        self.server.publish(peerId=PEER_A, content="kept")
        self.server.request("POST", "/publish", b"{not json")
        self.server.request("POST", "/publish", b'{"type":"offline","peerId":5}')
        self.assertEqual(self.server.board.registry.get(PEER_A).message.content, "kept")  # type: ignore[union-attr]


class RateLimitTests(SynchronousTestCase):
    def test_publishes_past_the_limit_get_429_with_retry_after(self) -> None:
        """More than publish_rate_limit per minute from one address: 429 + Retry-After."""
        server = InMemoryServer(publish_rate_limit=3)
        for _ in range(3):
            self.assertEqual(server.publish(peerId=PEER_A).status, 204)
        r = server.publish(peerId=PEER_A)
        self.assertEqual(r.status, 429)
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        self.assertIn("rate limit", r.json()["error"])
        # Another address is not affected.
        self.assertEqual(server.publish(ip="10.0.0.2", peerId=PEER_B).status, 204)
        # After the window, the first address may publish again.
        server.clock.advance(int(r.headers["retry-after"]))
        self.assertEqual(server.publish(peerId=PEER_A).status, 204)

    def test_zero_means_unlimited(self) -> None:
        """publish_rate_limit 0 never refuses."""
        server = InMemoryServer(publish_rate_limit=0)
        for _ in range(500):
            self.assertEqual(server.publish(peerId=PEER_A).status, 204)

    def test_forwarded_for_only_from_trusted_proxies(self) -> None:
        """X-Forwarded-For keys the limit only when the connection is from a trusted proxy."""
        server = InMemoryServer(publish_rate_limit=1, trusted_proxies=("10.9.0.0/16",))
        body = json.dumps({"type": "online", "peerId": PEER_A}).encode()
        via_proxy = {"X-Forwarded-For": "203.0.113.7"}
        self.assertEqual(
            server.request("POST", "/publish", body, via_proxy, "10.9.0.1").status, 204
        )
        other = {"X-Forwarded-For": "203.0.113.8"}
        self.assertEqual(server.request("POST", "/publish", body, other, "10.9.0.1").status, 204)
        self.assertEqual(
            server.request("POST", "/publish", body, via_proxy, "10.9.0.1").status, 429
        )
        # Not a trusted proxy: its header is ignored, the limit keys on 10.1.1.1.
        self.assertEqual(
            server.request("POST", "/publish", body, via_proxy, "10.1.1.1").status, 204
        )
        self.assertEqual(server.request("POST", "/publish", body, other, "10.1.1.1").status, 429)


class EventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = InMemoryServer()

    def test_stream_headers_and_ok_comment(self) -> None:
        """GET /events is text/event-stream, not cached, and starts with ': ok'."""
        conn = self.server.subscribe()
        r = conn.response()
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
        self.assertEqual(r.headers["cache-control"], "no-cache")
        self.assertTrue(r.body.startswith(b": ok\n\n"))
        self.assertFalse(r.complete)

    def test_snapshot_on_connect_then_live_events(self) -> None:
        """A new subscriber first gets every online peer, then live events with ids."""
        self.server.publish(peerId=PEER_A, content="a")
        self.server.publish(peerId=PEER_B, content="b")
        conn = self.server.subscribe()
        snap = conn.events()
        self.assertEqual([json.loads(e.data)["peerId"] for e in snap], [PEER_A, PEER_B])
        self.server.publish(peerId=PEER_A, type="update", content="a2")
        events = conn.events()
        self.assertEqual(len(events), 3)
        last = json.loads(events[-1].data)
        self.assertEqual((last["type"], last["content"]), ("update", "a2"))
        self.assertEqual(int(events[-1].last_event_id), self.server.board.events.head)

    def test_offline_peer_not_in_snapshot(self) -> None:
        """A peer that sent offline is not in a later snapshot."""
        self.server.publish(peerId=PEER_A)
        self.server.publish(peerId=PEER_A, type="offline")
        self.assertEqual(self.server.subscribe().events(), [])

    def test_last_event_id_replays_what_was_missed(self) -> None:
        """Reconnecting with Last-Event-ID gets exactly the events after it."""
        self.server.publish(peerId=PEER_A, content="1")
        first = self.server.subscribe()
        seen = first.events()[-1].last_event_id
        first.close()
        self.server.publish(peerId=PEER_A, type="update", content="2")
        self.server.publish(peerId=PEER_B, content="3")
        again = self.server.subscribe(headers={"Last-Event-ID": seen})
        got = [json.loads(e.data)["content"] for e in again.events()]
        self.assertEqual(got, ["2", "3"])

    def test_last_event_id_too_old_or_unknown_gets_snapshot(self) -> None:
        """An id the ring no longer holds, a future id, or garbage: a fresh snapshot."""
        self.server.publish(peerId=PEER_A, content="a")
        for bad in ("-5", "999999999", "not-a-number", ""):
            conn = self.server.subscribe(headers={"Last-Event-ID": bad})
            self.assertEqual([json.loads(e.data)["peerId"] for e in conn.events()], [PEER_A], bad)

    def test_ping_comment_every_25_seconds(self) -> None:
        """The hub writes ': ping' to every open stream (the service runs it every 25 s)."""
        conn = self.server.subscribe()
        self.server.hub.ping()
        self.assertTrue(conn.response().body.endswith(b": ping\n\n"))

    def test_disconnect_removes_the_subscriber(self) -> None:
        """A client that goes away leaves no subscriber or per-address count behind."""
        conn = self.server.subscribe()
        self.assertEqual(len(self.server.hub), 1)
        conn.close()
        self.assertEqual(len(self.server.hub), 0)
        self.assertEqual(self.server.hub.per_address, {})

    def test_wrong_method_gets_405(self) -> None:
        """POST /events answers 405 with Allow: GET."""
        r = self.server.request("POST", "/events", b"x")
        self.assertEqual((r.status, r.headers["allow"]), (405, "GET"))

    def test_per_address_cap_gets_429(self) -> None:
        """More than max_subscribers_per_ip streams from one address: 429."""
        server = InMemoryServer(max_subscribers_per_ip=2)
        server.subscribe()
        server.subscribe()
        r = server.subscribe().response()
        self.assertEqual(r.status, 429)
        self.assertIn("retry-after", r.headers)
        self.assertEqual(server.subscribe(ip="10.0.0.9").response().status, 200)

    def test_global_cap_gets_429(self) -> None:
        """More than max_subscribers streams in all: 429."""
        server = InMemoryServer(max_subscribers=2)
        server.subscribe(ip="10.0.0.1")
        server.subscribe(ip="10.0.0.2")
        self.assertEqual(server.subscribe(ip="10.0.0.3").response().status, 429)


class PruneTests(SynchronousTestCase):
    def test_expiry_sends_offline_after_ttl_and_nothing_before(self) -> None:
        """A silent peer gets a server-made offline event once ttl has passed, not before."""
        server = InMemoryServer(ttl=20)
        server.publish(peerId=PEER_A, content="a")
        conn = server.subscribe()
        server.clock.advance(19.9)
        self.assertEqual(server.board.prune(server.clock.seconds()), [])
        self.assertEqual(len(conn.events()), 1)
        server.clock.advance(0.1)
        self.assertEqual(server.board.prune(server.clock.seconds()), [PEER_A])
        server.clock.advance(0)
        last = json.loads(conn.events()[-1].data)
        self.assertEqual((last["type"], last["peerId"]), ("offline", PEER_A))
        self.assertNotIn(PEER_A, server.board.registry)
        # Pruned once: a second prune sends nothing more.
        self.assertEqual(server.board.prune(server.clock.seconds() + 100), [])

    def test_heartbeat_keeps_a_peer_online(self) -> None:
        """Any message within ttl resets the peer's clock."""
        server = InMemoryServer(ttl=20)
        for _ in range(10):
            server.publish(peerId=PEER_A, type="update")
            server.clock.advance(15)
            self.assertEqual(server.board.prune(server.clock.seconds()), [])

    def test_offline_message_removes_at_once(self) -> None:
        """An offline message removes the peer immediately and is fanned out."""
        server = InMemoryServer()
        server.publish(peerId=PEER_A)
        conn = server.subscribe()
        server.publish(peerId=PEER_A, type="offline")
        self.assertNotIn(PEER_A, server.board.registry)
        self.assertEqual(json.loads(conn.events()[-1].data)["type"], "offline")

    def test_transitions_logged_once_not_per_heartbeat(self) -> None:
        """One log line when a peer comes online and one when it leaves, with why."""
        from twisted.logger import capturedLogs  # type: ignore[attr-defined]

        server = InMemoryServer(ttl=20)
        with capturedLogs() as events:
            for _ in range(5):
                server.publish(peerId=PEER_A, type="update")
            server.publish(peerId=PEER_B)
            server.publish(peerId=PEER_B, type="offline")
            server.clock.advance(25)
            server.board.prune(server.clock.seconds())
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events if "peer_id" in e]
        self.assertEqual(len(lines), 4, lines)
        self.assertIn("online", lines[0])
        self.assertIn("offline message", lines[2])
        self.assertIn("expired", lines[3])


class PagesTests(SynchronousTestCase):
    def test_dashboard_is_html_with_peers_and_counts(self) -> None:
        """GET / is an HTML page listing online peers, counts and connect URLs."""
        server = InMemoryServer(connect_urls=["http://192.0.2.5:8787"])
        server.publish(peerId=PEER_A, content="<b>Alice</b>")
        r = server.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/html"))
        self.assertIn(b"EventSource", r.body)
        self.assertIn(PEER_A.encode(), r.body)
        self.assertNotIn(b"<b>Alice</b>", r.body)  # escaped for the page
        self.assertIn(b"http://192.0.2.5:8787", r.body)

    def test_dashboard_on_loopback_says_how_to_open_up(self) -> None:
        """With no connect URLs the page explains rendezvous_bind."""
        r = InMemoryServer().request("GET", "/")
        self.assertIn(b"rendezvous_bind", r.body)

    def test_healthz(self) -> None:
        """GET /healthz is 200 'ok' text/plain while accepting, 503 when stopping."""
        server = InMemoryServer()
        r = server.request("GET", "/healthz")
        self.assertEqual((r.status, r.body), (200, b"ok\n"))
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))
        server.board.accepting = False
        self.assertEqual(server.request("GET", "/healthz").status, 503)
        self.assertEqual(server.publish(peerId=PEER_A).status, 503)

    def test_unknown_path_is_json_404(self) -> None:
        """An unknown path answers 404 with a JSON error."""
        r = InMemoryServer().request("GET", "/nope")
        self.assertEqual(r.status, 404)
        self.assertIn("/nope", r.json()["error"])

    def test_wrong_method_on_pages_is_405(self) -> None:
        """POST to /, /healthz, /admin, /peers.json, /logs.json: 405."""
        server = InMemoryServer(admin_password="pw")
        for path in ("/", "/healthz", "/admin", "/peers.json", "/logs.json"):
            self.assertEqual(server.request("POST", path, b"x").status, 405, path)


class AdminTests(SynchronousTestCase):
    PATHS = ("/admin", "/peers.json", "/logs.json", "/stats.json")

    def test_disabled_without_password_is_403(self) -> None:
        """No admin_password configured: 403 whatever the credentials."""
        server = InMemoryServer()
        for path in self.PATHS:
            self.assertEqual(server.request("GET", path).status, 403)
            self.assertEqual(server.request("GET", path, headers=basic("admin", "")).status, 403)

    def test_missing_or_wrong_credentials_are_401(self) -> None:
        """No credentials, a wrong password or a wrong user: 401 with a Basic challenge."""
        server = InMemoryServer(admin_password="s3cret")
        for path in self.PATHS:
            for headers in ({}, basic("admin", "nope"), basic("root", "s3cret")):
                r = server.request("GET", path, headers=headers)
                self.assertEqual(r.status, 401, (path, headers))
                self.assertTrue(r.headers["www-authenticate"].startswith("Basic"))

    def test_right_credentials_show_peers_and_logs(self) -> None:
        """admin + the password: peers with last-seen and byte counts, recent log lines."""
        server = InMemoryServer(admin_password="s3cret")
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(server.logs)
        self.addCleanup(globalLogPublisher.removeObserver, server.logs)
        server.subscribe()
        server.publish(peerId=PEER_A, content="a", email="a@example.com", avatarHash="h")
        auth = basic("admin", "s3cret")
        rows = server.request("GET", "/peers.json", headers=auth).json()
        self.assertEqual(len(rows), 1)
        row = rows[0]
        self.assertEqual(
            set(row),
            {
                "peer_id",
                "type",
                "content",
                "email",
                "avatar_hash",
                "ts",
                "client",
                "verified",
                "addrs",
                "last_seen",
                "bytes_sent",
                "bytes_received",
            },
        )
        self.assertEqual((row["peer_id"], row["avatar_hash"]), (PEER_A, "h"))
        self.assertGreater(row["bytes_received"], 0)
        self.assertGreater(row["bytes_sent"], 0)
        logs = server.request("GET", "/logs.json", headers=auth).json()
        self.assertTrue(any(PEER_A in line["text"] for line in logs))
        stats = server.request("GET", "/stats.json", headers=auth).json()
        self.assertEqual((stats["peers"], stats["subscribers"]), (1, 1))
        page = server.request("GET", "/admin", headers=auth)
        self.assertEqual(page.status, 200)
        self.assertIn(PEER_A.encode(), page.body)
