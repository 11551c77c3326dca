"""The Redis shared store, against a real redis-server (tests/redisproc.py).

The SQLite store's tests and the live two-instance tests run again on Redis
(same behaviour is the point of the store seam), plus what only Redis has:
a server that goes away and comes back.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from goop.config import ConfigError, load_config
from goop.message import PresenceMessage
from goop.rendezvous.redisstore import RedisStore, redacted
from goop.rendezvous.store import StoreError
from tests import redisproc, test_shared
from tests.test_presence import until
from tests.test_shared import PEER

if redisproc.REDIS is None:
    pytest.skip("redis-server is missing (make test installs it)", allow_module_level=True)

_server: redisproc.RedisServer | None = None


def server() -> redisproc.RedisServer:
    global _server
    if _server is None:
        _server = redisproc.RedisServer()
    return _server


def teardown_module() -> None:
    if _server is not None:
        _server.stop()


class RedisStoreTests(test_shared.StoreTests):
    """StoreTests on Redis, each test with its own key prefix."""

    def setUp(self) -> None:
        self.prefix = "t" + secrets.token_hex(4)

    def open(self, **kw: Any) -> RedisStore:  # type: ignore[override]
        store = RedisStore(server().url, prefix=self.prefix)
        store.open()
        self.addCleanup(store.close)
        return store

    def test_log_is_trimmed(self) -> None:
        from goop.rendezvous import redisstore

        self.patch(redisstore, "KEEP_EVENTS", 10)
        s = self.open()
        for i in range(50):
            s.append("p", "update", b'{"type":"update","peerId":"p"}', float(i), 1)
        s.prune(50.0, 20, lambda p, d, n: b"{}")
        self.assertEqual(len(s.tail(0)), 10)

    def test_damaged_file_is_reported_with_its_path(self) -> None:
        store = RedisStore("redis://127.0.0.1:1/0")
        with self.assertRaises(StoreError) as e:
            store.open()
        self.assertIn("redis://127.0.0.1:1/0", str(e.exception))

    def test_locked_file_is_reported_with_its_path(self) -> None:
        """Redis has no file lock; a lost data set is what it reports instead."""
        s = self.open()
        self.assertIsNone(s.identity_problem())
        s.client.delete(f"{self.prefix}:epoch")
        self.assertIn("lost", s.identity_problem() or "")


class RedisLiveInstanceTests(test_shared.LiveInstanceTests):
    def setUp(self) -> None:
        self.url = server().url
        # One data set per test: flush it (the instances use the default prefix).
        import redis

        from goop.rendezvous.redisstore import PREFIX

        redis.Redis.from_url(self.url).delete(
            *[f"{PREFIX}:{k}" for k in ("head", "log", "peers", "seen", "epoch")]
        )

    def store(self) -> dict[str, Any]:
        return {"redis_url": self.url}

    @defer.inlineCallbacks
    def test_redis_gone_then_back(self):  # type: ignore[no-untyped-def]
        """Redis killed (kill -9): publishes get 503 within 2 s and /healthz says why;
        restarted on its port (AOF on): the instances recover by themselves and every
        accepted message is still there."""
        a, b = self.instance(), self.instance()
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"http://127.0.0.1:{a.port}"
        yield a.board.accept(PresenceMessage("online", PEER, "before"), 1, reactor.seconds())
        yield until(lambda: PEER in b.board.registry)
        server().kill()
        started = time.monotonic()
        r = yield treq.post(
            url + "/publish", data=json.dumps({"type": "online", "peerId": "x"}).encode(),
            pool=pool,
        )  # fmt: skip
        self.assertEqual(r.code, 503)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIsNotNone(r.headers.getRawHeaders(b"retry-after"))
        yield until(lambda: a.board.healthy is not None, timeout=10)
        server().start()
        yield until(lambda: a.board.healthy is None and b.board.healthy is None, timeout=30)
        yield a.board.accept(PresenceMessage("update", PEER, "after"), 1, reactor.seconds())
        yield until(lambda: b.board.registry.get(PEER).message.content == "after")  # type: ignore[union-attr]
        c = self.instance()
        self.assertEqual(c.board.registry.get(PEER).message.content, "after")  # type: ignore[union-attr]


    @defer.inlineCallbacks
    def test_a_redis_answering_errors_means_503_logged_once(self):  # type: ignore[no-untyped-def]
        """Redis out of memory (maxmemory 1 byte, noeviction): every publish gets 503, the
        reason is logged once (not per request), and nothing accepted before is lost."""
        import redis
        from twisted.logger import capturedLogs, formatEvent

        a = self.instance()
        yield a.board.accept(PresenceMessage("online", PEER, "kept"), 1, reactor.seconds())
        admin = redis.Redis.from_url(self.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        self.addCleanup(admin.config_set, "maxmemory", 0)
        pool = HTTPConnectionPool(reactor, persistent=False)
        codes = []
        with capturedLogs() as events:
            for n in range(5):
                r = yield treq.post(
                    f"http://127.0.0.1:{a.port}/publish",
                    data=json.dumps({"type": "online", "peerId": f"oom{n}"}).encode(), pool=pool,
                )  # fmt: skip
                codes.append(r.code)
        self.assertEqual(codes, [503] * 5)
        said = [formatEvent(e) for e in events if "OOM" in formatEvent(e) or "maxmemory" in
                formatEvent(e)]  # fmt: skip
        self.assertEqual(len(said), 1, said)
        admin.config_set("maxmemory", 0)
        yield until(lambda: a.board.healthy is None, timeout=15)
        self.assertEqual(a.board.registry.get(PEER).message.content, "kept")  # type: ignore[union-attr]


def test_redis_url_is_checked_with_one_line() -> None:
    for url, why in (
        ("http://x:1/0", "scheme must be redis or rediss"),
        ("redis://", "no host"),
        ("redis://h:99999/0", "port"),
        ("redis://h:1/x", "must be a number"),
    ):
        with pytest.raises(ConfigError) as e:
            load_config(None, {"presence.redis_url": url}, {}, "/")
        assert why in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, {"presence.redis_url": "redis://h/0", "presence.peer_db_path": "/x"},
                    {}, "/")
    assert "not both" in str(e.value)
    config = load_config(None, {}, {"GOOP_REDIS_URL": "rediss://:pw@h:6380/2"}, "/")
    assert config.presence.redis_url == "rediss://:pw@h:6380/2"
    assert redacted("rediss://:pw@h:6380/2") == "rediss://:***@h:6380/2"


def test_a_redis_that_cannot_be_reached_stops_startup_in_one_line(tmp_path: Any) -> None:
    from tests.procs import run_goop

    out = run_goop(
        ["--rendezvous-only", "--redis-url", "redis://:wrong@127.0.0.1:1/0"],
        cwd=str(tmp_path), timeout=20,
    )  # fmt: skip
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith(
        "goop: presence.redis_url: redis://:***@127.0.0.1:1/0: "
    ), lines
