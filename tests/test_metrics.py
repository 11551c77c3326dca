"""``/metrics``: Prometheus's text format, who may read it, and a real Prometheus scraping it.

Load is made over real sockets (POST /publish, /ws frames); the text is read
back with prometheus_client's own parser, and once by Debian's Prometheus
(installed by `make test`) through its HTTP query API.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task, threads

from goop.identity import _from_seed
from goop.message import PresenceMessage
from goop.signing import sign, signing_key
from tests.test_ws import WsTestCase

AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:secret").decode()}
ALICE = _from_seed(b"\x06" * 32, "")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Scraping(WsTestCase):
    @defer.inlineCallbacks
    def scrape(self, headers: dict[str, str] | None = None, base: str = "") -> Any:
        r = yield treq.get(f"http://{base or self.base}/metrics", headers=headers, pool=self.pool)
        body = yield r.content()
        return r.code, r.headers.getRawHeaders(b"content-type", [b""])[0], body.decode()


class MetricsTests(_Scraping):
    @defer.inlineCallbacks
    def test_publish_outcomes_streams_and_histograms(self) -> None:
        self.start(admin_password="secret", publish_rate_limit=8)
        codes = []
        for n in range(3):
            r = yield self.post({"type": "online", "peerId": f"peer-{n}", "content": "x"})
            codes.append(r.code)
        r = yield self.post({"type": "online"})  # no peerId: 400
        codes.append(r.code)
        signed = PresenceMessage("online", ALICE.peer_id, ts=int(time.time() * 1000))
        signed = replace(signed, sig=sign(signing_key(ALICE.seed), signed))
        r = yield self.post(signed.to_dict())
        codes.append(r.code)
        r = yield self.post({"type": "update", "peerId": ALICE.peer_id})  # unsigned: 403
        codes.append(r.code)
        r = yield treq.post(f"http://{self.base}/publish", data=b"x" * 70_000, pool=self.pool)
        codes.append(r.code)
        for _ in range(4):  # past 8 a minute: 429
            r = yield self.post({"type": "update", "peerId": "peer-0", "content": "x"})
            codes.append(r.code)
        self.assertEqual(codes, [204, 204, 204, 400, 204, 403, 413, 204, 204, 429, 429])
        ws = yield self.peer("peer-1", publish=False)
        ws.send_json({"type": "update", "peerId": "peer-1", "content": "y"})
        ws.send_json({"type": 5})
        yield ws.wait_for(lambda: bool(ws.of_type("update", "peer-1")))

        code, _, _ = yield self.scrape()
        self.assertEqual(code, 401)
        code, kind, text = yield self.scrape(AUTH)
        self.assertEqual(code, 200)
        self.assertTrue(kind.startswith(b"text/plain; version=0.0.4"), kind)
        got = samples(text)

        def publishes(transport: str, outcome: str) -> float:
            key = ("goop_publishes_total", (("outcome", outcome), ("transport", transport)))
            return got.get(key, 0.0)

        self.assertEqual(publishes("http", "accepted"), 6)
        self.assertEqual(publishes("http", "invalid"), 1)
        self.assertEqual(publishes("http", "forbidden"), 1)
        self.assertEqual(publishes("http", "too_large"), 1)
        self.assertEqual(publishes("http", "rate_limited"), 2)
        self.assertEqual(publishes("ws", "accepted"), 1)
        # The bad frame may still be in flight; it is counted by the time the
        # socket has answered a later one.
        self.assertEqual(got[("goop_peers_online", (("transport", "ws"),))], 1)
        self.assertEqual(got[("goop_peers_online", (("transport", "http"),))], 3)
        self.assertEqual(got[("goop_streams_open", (("kind", "ws"),))], 1)
        self.assertGreater(got[("goop_events_sent_total", ())], 0)
        self.assertGreater(got[("goop_events_sent_bytes_total", ())], 0)
        self.assertGreater(got[("goop_reactor_stall_seconds_count", ())], 0)
        self.assertIn(("goop_reactor_stall_seconds_bucket", (("le", "0.1"),)), got)
        self.assertIn(("goop_gc_pause_seconds_count", ()), got)
        self.assertGreater(got[("process_resident_memory_bytes", ())], 0)

    @defer.inlineCallbacks
    def test_who_may_read_it(self) -> None:
        self.start()
        code, _, body = yield self.scrape()
        self.assertEqual(code, 403)
        self.assertIn("no admin_password", json.loads(body)["error"])
        yield self.service.stopService()

        port = free_port()
        self.start(metrics_port=port)
        code, _, body = yield self.scrape()
        self.assertEqual(code, 403)
        self.assertIn(f"127.0.0.1:{port}", json.loads(body)["error"])
        code, _, text = yield self.scrape(base=f"127.0.0.1:{port}")
        self.assertEqual(code, 200)
        self.assertIn("goop_peers_online", text)
        r = yield treq.get(f"http://127.0.0.1:{port}/", pool=self.pool)
        self.assertEqual(r.code, 404)


class StoreMetricsTests(_Scraping):
    @defer.inlineCallbacks
    def test_the_shared_store_reports_its_latency(self) -> None:
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        self.start(admin_password="secret", peer_db_path=os.path.join(home, "peers.db"))
        r = yield self.post({"type": "online", "peerId": "stored", "content": "x"})
        self.assertEqual(r.code, 204)
        _, _, text = yield self.scrape(AUTH)
        got = samples(text)
        self.assertGreater(got[("goop_store_seconds_count", ())], 0)
        self.assertIn(("goop_store_seconds_bucket", (("le", "0.01"),)), got)


class RealPrometheusTests(WsTestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_a_real_prometheus_scrapes_what_load_made(self) -> None:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            self.skipTest("prometheus is missing (make test installs Debian's prometheus)")
        metrics_port = free_port()
        self.start(metrics_port=metrics_port)
        sent = 25
        for n in range(sent):
            r = yield self.post({"type": "online", "peerId": f"scraped-{n}", "content": "x"})
            self.assertEqual(r.code, 204)
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        config = os.path.join(home, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: goop\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
            )
        api = free_port()
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={home}/data",
             f"--web.listen-address=127.0.0.1:{api}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

        self.addCleanup(stop)
        query = 'goop_publishes_total{outcome="accepted",transport="http"}'
        url = f"http://127.0.0.1:{api}/api/v1/query"
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = yield treq.get(url, params={"query": query}, pool=self.pool)
                body = yield r.json()
                result = body.get("data", {}).get("result", [])
                if result:
                    value = float(result[0]["value"][1])
                    up = yield treq.get(url, params={"query": "up"}, pool=self.pool)
                    up_body = yield up.json()
                    break
            except Exception:
                pass  # not listening yet
            yield task.deferLater(reactor, 0.5, lambda: None)
        if value is None:
            err = yield threads.deferToThread(proc.stderr.read) if proc.poll() is not None else ""
            self.fail(f"Prometheus never had the metric (exit {proc.poll()}): {err!r}")
        self.assertGreaterEqual(value, sent)
        self.assertEqual(up_body["data"]["result"][0]["value"][1], "1")


class DashboardJsonTests(_Scraping):
    @defer.inlineCallbacks
    def test_what_the_dashboard_polls_and_its_bounds(self) -> None:
        self.start()
        yield self.post({"type": "online", "peerId": "p1", "content": "x"})
        ws = yield self.peer("p2", publish=True)
        self.assertIsNotNone(ws)
        body = json.dumps({"peers": ["p1", "p2", "nobody", 5]}).encode()
        r = yield treq.post(f"http://{self.base}/dashboard.json", data=body, pool=self.pool)
        d = yield r.json()
        self.assertEqual(r.code, 200)
        self.assertEqual((d["peers"], d["sockets"], d["accepted"]), (2, 1, 2))
        self.assertEqual(sorted(d["seen"]), ["p1", "p2"])
        self.assertEqual((d["seen"]["p1"][1], d["seen"]["p2"][1]), ("http", "ws"))
        self.assertEqual(len(d["history"]), 1)  # sampled at start, then once a minute
        too_many = json.dumps({"peers": [f"p{n}" for n in range(201)]}).encode()
        r = yield treq.post(f"http://{self.base}/dashboard.json", data=too_many, pool=self.pool)
        self.assertEqual(r.code, 400)
        r = yield treq.post(
            f"http://{self.base}/dashboard.json", data=body, pool=self.pool,
            headers={"Origin": "http://evil.example"},
        )  # fmt: skip
        self.assertEqual(r.code, 403)
        r = yield treq.get(f"http://{self.base}/dashboard.json", pool=self.pool)
        d = yield r.json()
        self.assertNotIn("seen", d)
