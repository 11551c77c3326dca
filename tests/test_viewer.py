"""The viewer's HTTP side: paging /peers, refusing foreign Hosts, security headers."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from goop.message import PresenceMessage
from goop.peertable import PeerTable
from goop.viewer.service import ViewerApp

ME = PresenceMessage("online", "12D3KooWme", "me", "me@example.org")


def _app(n: int, host: str = "127.0.0.1") -> tuple[ViewerApp, StubTreq]:
    table = PeerTable(ME.peer_id, 20)
    for i in range(n):
        table.observe("wan", PresenceMessage("online", f"p{i:05d}", f"c{i}"), 0.0)
    app = ViewerApp(table, lambda: ME, host=host)
    return app, StubTreq(app.resource())


class ViewerTests(SynchronousTestCase):
    def get(self, stub: StubTreq, url: str, host: str | None = None) -> tuple[int, object, object]:
        headers = {"Host": host} if host else {}
        r = self.successResultOf(stub.get(url, headers=headers))
        body = self.successResultOf(r.content())
        return r.code, r.headers, json.loads(body) if body.startswith((b"[", b"{")) else body

    def test_peers_is_paged_with_a_total(self) -> None:
        """50,000 peers: /peers sends the first 200 by ID and says how many there are."""
        _, stub = _app(50_000)
        code, headers, rows = self.get(stub, "http://127.0.0.1:8788/peers")
        self.assertEqual(code, 200)
        self.assertEqual(len(rows), 200)  # type: ignore[arg-type]
        self.assertEqual(rows[0]["peer_id"], "p00000")  # type: ignore[index]
        self.assertEqual(headers.getRawHeaders(b"x-total-count"), [b"50000"])  # type: ignore[attr-defined]
        code, _, rows = self.get(stub, "http://127.0.0.1:8788/peers?offset=49990&limit=50")
        self.assertEqual([r["peer_id"] for r in rows], [f"p{i:05d}" for i in range(49990, 50000)])  # type: ignore[attr-defined,index]
        code, _, _ = self.get(stub, "http://127.0.0.1:8788/peers?limit=0")
        self.assertEqual(code, 400)

    def test_a_foreign_host_is_refused(self) -> None:
        """DNS rebinding: a page whose name points at 127.0.0.1 cannot read /self."""
        _, stub = _app(1)
        for path in ("/self", "/peers", "/stats", "/"):
            code, _, body = self.get(stub, f"http://127.0.0.1:8788{path}", "evil.example:8788")
            self.assertEqual(code, 403, path)
        for host in ("127.0.0.1:8788", "localhost:8788", "[::1]:8788"):
            code, _, body = self.get(stub, "http://127.0.0.1:8788/self", host)
            self.assertEqual((code, body["peerId"]), (200, ME.peer_id))  # type: ignore[index]

    def test_bound_to_all_interfaces_any_ip_literal_is_fine(self) -> None:
        """On 0.0.0.0 the viewer answers to the machine's addresses, not to DNS names."""
        _, stub = _app(1, host="0.0.0.0")
        self.assertEqual(self.get(stub, "http://x/self", "192.168.1.20:8788")[0], 200)
        self.assertEqual(self.get(stub, "http://x/self", "rebind.example:8788")[0], 403)

    def test_page_has_a_nonce_csp(self) -> None:
        """The page's inline script and style run under a per-response nonce."""
        _, stub = _app(1)
        _, headers, body = self.get(stub, "http://127.0.0.1:8788/")
        csp = headers.getRawHeaders(b"content-security-policy")[0]  # type: ignore[attr-defined]
        nonce = csp.split(b"'nonce-")[1].split(b"'")[0]
        self.assertIn(b'<script nonce="' + nonce + b'">', body)  # type: ignore[operator]
        self.assertIn(b"frame-ancestors 'none'", csp)

    @given(st.integers(0, 60), st.integers(1, 30))
    def test_rows_page_is_a_slice_of_the_sorted_table(self, offset: int, limit: int) -> None:
        """rows(offset, limit) equals slicing the full sorted list."""
        table = PeerTable(ME.peer_id, 20)
        for i in range(50):
            table.observe("lan", PresenceMessage("online", f"q{(i * 37) % 50}"), 0.0)
        self.assertEqual(table.rows(offset, limit), table.rows()[offset : offset + limit])


class ViewerMetricsTests(SynchronousTestCase):
    def test_a_peer_s_metrics_say_who_it_sees_where(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.internet.task import Clock

        from goop.stallprobe import StallProbe
        from goop.viewer.metrics import registry_for

        table = PeerTable(ME.peer_id, 20)
        table.observe("lan", PresenceMessage("online", "a", "A"), 0.0)
        table.observe("wan", PresenceMessage("online", "a", "A"), 0.0)
        table.observe("wan", PresenceMessage("online", "b", "B"), 0.0)
        app = ViewerApp(table, lambda: ME)
        app.registry = registry_for(table, StallProbe(Clock()))
        stub = StubTreq(app.resource())
        r = self.successResultOf(stub.get("http://127.0.0.1:8788/metrics"))
        self.assertEqual(r.code, 200)
        text = self.successResultOf(r.content()).decode()
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
        }
        self.assertEqual(got[("goop_peer_sees", (("source", "lan"),))], 1)
        self.assertEqual(got[("goop_peer_sees", (("source", "wan"),))], 2)
        self.assertEqual(got[("goop_peer_sees", (("source", "local"),))], 0)
        self.assertEqual(got[("goop_peer_peers_online", ())], 2)
        self.assertEqual(got[("goop_peer_messages_rejected_total", ())], 0)
        r = self.successResultOf(
            stub.get("http://127.0.0.1:8788/metrics", headers={"Host": "evil.example"})
        )
        self.assertEqual(r.code, 403)
