"""The shared store tells the truth (issue 11, item 8): a store that cannot be
written stops startup in one line, a locked one answers 503 within 2 s, a
failing or orphaned one makes /healthz say 503, and a file deleted or replaced
under a running instance is noticed instead of written on in the dark.

Everything here is real: SQLite files, a second connection holding ``BEGIN
EXCLUSIVE``, a read-only tmpfs mounted by the test (root ignores permission
bits, a read-only filesystem it does not), ``chattr +i``, os.unlink/rename.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.task import LoopingCall
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from goop.config import PresenceConfig
from goop.message import PresenceMessage
from goop.rendezvous import shared
from goop.rendezvous.service import RendezvousService
from goop.rendezvous.shared import DatabaseUnavailable, SharedBoard
from goop.rendezvous.store import SQLiteStore, StoreError
from tests.test_presence import until

REPO = str(Path(__file__).resolve().parent.parent)
PEER = "12D3KooWHonestStoreTestPeerAAAAAAAAAAAAAAAAAAAAAAAAAA"


# -- real failure conditions ---------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def tmpfs(where: str) -> Iterator[str]:
    """A fresh 8 MB tmpfs mounted on a new directory under ``where`` (needs root,
    or CAP_SYS_ADMIN): `read_only` turns it into a read-only filesystem, which
    stops root as it stops anyone. Skips the test when it cannot be mounted."""
    mnt = tempfile.mkdtemp(prefix="rofs-", dir=where)
    done = _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=755", "tmpfs", mnt)
    if done.returncode != 0:
        os.rmdir(mnt)
        raise SkipTest(
            f"cannot mount a tmpfs for a read-only filesystem ({done.stderr.strip()}): "
            "needs root or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        if _run("umount", mnt).returncode != 0:
            _run("umount", "-l", mnt)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


def read_only(mnt: str) -> None:
    done = _run("mount", "-o", "remount,ro", mnt)
    if done.returncode != 0:
        raise SkipTest(f"cannot remount {mnt} read-only: {done.stderr.strip()}")


@contextlib.contextmanager
def immutable(path: str) -> Iterator[None]:
    """``chattr +i``: not even root may write the file. Skips where unsupported."""
    done = _run("chattr", "+i", path)
    if done.returncode != 0:
        raise SkipTest(f"chattr +i {path} failed ({done.stderr.strip()}): needs root, ext4/tmpfs")
    try:
        yield
    finally:
        _run("chattr", "-i", path)


def crashed_store(path: str) -> None:
    """A goop store left as a killed instance leaves it: -wal and -shm still there.
    (With those present SQLite opens a read-only file without complaint.)"""
    code = (
        "import os; from goop.rendezvous.store import SQLiteStore\n"
        f"s = SQLiteStore({path!r}); s.open()\n"
        "s.append('12D3KooWx', 'online', b'{}', 1.0, 1)\n"
        "os._exit(0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=20, env={**os.environ, "PYTHONPATH": REPO}
    )
    assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")


def damaged_store(path: str) -> None:
    """A real store whose pages past the first are overwritten with random bytes:
    the header and schema still read, PRAGMA quick_check finds ~100 problems."""
    s = SQLiteStore(path)
    s.open()
    for i in range(2000):
        s.append(f"12D3KooWp{i}", "online", b"x" * 200, 1.0, 1)
    s.close()
    rng = random.Random(8)
    data = bytearray(Path(path).read_bytes())
    for page in range(4096, len(data), 4096):
        data[page + 100 : page + 400] = rng.randbytes(300)
    Path(path).write_bytes(bytes(data))


def hold_exclusive(path: str) -> sqlite3.Connection:
    """Another connection takes the write lock and keeps it until rolled back."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


# -- opening --------------------------------------------------------------------


class OpenTests(SynchronousTestCase):
    """Every startup failure: a StoreError, one line, naming the file and why."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "peers.db")

    def refused(self, path: str) -> str:
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, busy_timeout_ms=200).open()
        text = str(caught.exception)
        self.assertIn(path, text)
        self.assertNotIn("\n", text)
        return text

    def test_read_only_filesystem_with_a_crashed_instances_files(self) -> None:
        """The case that used to pass startup: -wal/-shm left on a filesystem now
        read-only. Opening now commits a real write, so it fails here, at once."""
        with tmpfs(self.dir) as mnt:
            path = os.path.join(mnt, "peers.db")
            crashed_store(path)
            read_only(mnt)
            text = self.refused(path)
        self.assertEqual(text, f"{path}: not writable (read-only file system)")

    def test_read_only_filesystem(self) -> None:
        """Without leftovers SQLite said only "unable to open database file"."""
        with tmpfs(self.dir) as mnt:
            path = os.path.join(mnt, "peers.db")
            store = SQLiteStore(path)
            store.open()
            store.close()
            read_only(mnt)
            text = self.refused(path)
        self.assertEqual(text, f"{path}: not writable (read-only file system)")

    def test_immutable_file(self) -> None:
        """chattr +i: SQLite opens it read-only and every check but a write passes."""
        crashed_store(self.path)
        with immutable(self.path):
            text = self.refused(self.path)
        self.assertIn(f"{self.path}: not writable (operation not permitted", text)

    def test_directory_given_as_path(self) -> None:
        self.assertEqual(self.refused(self.dir), f"{self.dir}: is a directory, not a database file")

    def test_missing_directory(self) -> None:
        path = os.path.join(self.dir, "nope", "peers.db")
        self.assertEqual(
            self.refused(path), f"{path}: directory {os.path.dirname(path)} does not exist"
        )

    def test_damaged_file_is_one_line(self) -> None:
        """quick_check's hundred problems used to make a 101-line error."""
        damaged_store(self.path)
        text = self.refused(self.path)
        self.assertIn(f"{self.path}: database is damaged: ", text)
        self.assertRegex(text, r"\(and \d+ more problems\)$")

    def test_random_bytes(self) -> None:
        Path(self.path).write_bytes(random.Random(1).randbytes(8192))
        self.assertEqual(self.refused(self.path), f"{self.path}: file is not a database")

    def test_locked(self) -> None:
        SQLiteStore(self.path).open()
        holder = hold_exclusive(self.path)
        self.addCleanup(holder.close)
        text = self.refused(self.path)
        self.assertIn(f"{self.path}: locked by another process for more than 0.2s", text)

    def test_a_new_file_says_so_and_identity_is_checked(self) -> None:
        """Opening records the file's (st_dev, st_ino); a deleted or replaced file shows."""
        store = SQLiteStore(self.path)
        store.open()
        self.addCleanup(store.close)
        self.assertTrue(store.created)
        self.assertIsNone(store.identity_problem())
        again = SQLiteStore(self.path)
        again.open()
        again.close()
        self.assertFalse(again.created)
        os.rename(self.path, self.path + ".old")
        self.assertEqual(store.identity_problem(), "was deleted or moved away")
        shutil.copy(self.path + ".old", self.path)
        self.assertEqual(store.identity_problem(), "was replaced by another file")


# -- a live instance ---------------------------------------------------------------


def post(port: int, body: dict[str, object]) -> tuple[int, float, str | None]:
    """POST /publish over a real socket (in a thread): status, seconds, Retry-After."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    started = time.monotonic()
    try:
        conn.request("POST", "/publish", json.dumps(body).encode())
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - started, resp.getheader("retry-after")
    finally:
        conn.close()


def healthz(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class LiveTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "peers.db")
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def instance(self) -> RendezvousService:
        rv = RendezvousService(
            PresenceConfig(
                rendezvous_port=0,
                peer_db_path=self.path,
                ttl_seconds=20,
                heartbeat_seconds=1,
                publish_rate_limit=0,
            ),
            reactor,
        )
        rv.startService()
        self.addCleanup(rv.stopService)
        return rv

    def errors(self, text: str) -> list[str]:
        return [
            formatEvent(e)
            for e in self.logged
            if e.get("log_level") is not None
            and e["log_level"].name == "error"
            and text in formatEvent(e)
        ]

    def stall_meter(self) -> list[float]:
        """The longest lateness of a 10 ms timer: how long the reactor was blocked."""
        worst = [0.0]
        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            worst[0] = max(worst[0], now - last[0] - 0.01)
            last[0] = now

        loop = LoopingCall(tick)
        loop.start(0.01, now=False)
        self.addCleanup(lambda: loop.running and loop.stop())
        return worst

    @defer.inlineCallbacks
    def test_locked_store_answers_503_within_2s_and_recovers(self):  # type: ignore[no-untyped-def]
        """Another connection holds BEGIN EXCLUSIVE: ten concurrent publishes over real
        sockets each get 503 + Retry-After in < 2 s (they used to queue for 5 s each),
        /healthz says 503, the reactor never blocks; once the lock goes, /healthz says
        200 again and a publish is stored."""
        rv = self.instance()
        port = rv.port
        assert port is not None
        status, _, _ = yield threads.deferToThread(post, port, {"type": "online", "peerId": PEER})
        self.assertEqual(status, 204)
        worst_stall = self.stall_meter()
        holder = hold_exclusive(self.path)
        self.addCleanup(holder.close)
        answers = yield defer.gatherResults(
            [
                threads.deferToThread(
                    post, port, {"type": "update", "peerId": PEER, "content": f"locked {i}"}
                )
                for i in range(10)
            ]
        )
        later = yield threads.deferToThread(post, port, {"type": "update", "peerId": PEER})
        print(
            f"\nlock -> 503: first wave {sorted(round(s, 3) for _, s, _ in answers)} s, "
            f"while failing {later[1] * 1000:.1f} ms"
        )
        for status, seconds, retry in [*answers, later]:
            self.assertEqual((status, retry), (503, "1"))
            self.assertLess(seconds, 2.0)
        code, text = yield threads.deferToThread(healthz, port)
        self.assertEqual(code, 503)
        self.assertIn("peer database failing: database is locked", text)
        self.assertEqual(len(self.errors("failed while storing a publish")), 1)
        holder.execute("ROLLBACK")
        yield until(lambda: rv.board.healthy is None, timeout=10)
        code, _ = yield threads.deferToThread(healthz, port)
        self.assertEqual(code, 200)
        status, _, _ = yield threads.deferToThread(
            post, port, {"type": "update", "peerId": PEER, "content": "after"}
        )
        self.assertEqual(status, 204)
        yield until(lambda: rv.board.registry.get(PEER).message.content == "after")  # type: ignore[union-attr]
        self.assertLess(worst_stall[0], 0.25)
        # Nothing refused was stored.
        tail = rv.board.store.tail(0)  # type: ignore[attr-defined]
        self.assertFalse([r for r in tail if b"locked" in r.data])

    @defer.inlineCallbacks
    def test_a_publish_queued_past_its_deadline_is_refused_and_never_stored(self):  # type: ignore[no-untyped-def]
        """The database thread stuck (not on a lock: any call): a queued publish gets
        503 at its deadline and is then skipped, never written behind the client's
        back, nor left counting against its address's peer limit; once a call has
        run > 1 s new publishes are refused at once and /healthz says so."""
        rv = self.instance()
        board = rv.board
        assert isinstance(board, SharedBoard)
        release = threading.Event()
        self.addCleanup(release.set)
        stuck = board._in_db(release.wait, 30)
        started = time.monotonic()
        # Through the web app's submit, which claims the new peer for its address
        # (per-address peer limit): a 503 must leave no claim behind.
        queued = rv.web.submit(PresenceMessage("online", PEER, "queued"), 1, reactor.seconds(), "a")
        self.assertEqual(board._owned, {"a": 1})
        failure = yield self.assertFailure(queued, DatabaseUnavailable)
        self.assertEqual(board._owned, {})
        waited = time.monotonic() - started
        self.assertIn("no answer within 1s", str(failure))
        self.assertLess(waited, shared.PUBLISH_DEADLINE + 0.5)
        yield until(lambda: board.healthy is not None, timeout=5)
        self.assertIn("peer database busy for", board.healthy or "")
        started = time.monotonic()
        refused = rv.web.submit(
            PresenceMessage("online", PEER, "refused"), 1, reactor.seconds(), "a"
        )
        yield self.assertFailure(refused, DatabaseUnavailable)
        self.assertLess(time.monotonic() - started, 0.1)
        self.assertEqual(board._owned, {})
        release.set()
        yield stuck
        yield until(lambda: board.healthy is None)
        done = yield board.accept(PresenceMessage("online", PEER, "ok"), 1, reactor.seconds())
        self.assertIsNone(done)
        yield until(lambda: PEER in board.registry)
        contents = [json.loads(r.data)["content"] for r in board.store.tail(0)]
        self.assertEqual(contents, ["ok"])

    @defer.inlineCallbacks
    def _orphaned(self, replace: bool):  # type: ignore[no-untyped-def]
        a, b = self.instance(), self.instance()
        yield a.board.accept(PresenceMessage("online", PEER), 1, reactor.seconds())
        if replace:
            os.rename(self.path, self.path + ".moved")
            shutil.copy(self.path + ".moved", self.path)
            expect = "was replaced by another file"
        else:
            os.unlink(self.path)
            expect = "was deleted or moved away"
        started = time.monotonic()
        yield until(lambda: a.board.healthy and b.board.healthy, timeout=5)
        print(f"\n{expect}: noticed in {time.monotonic() - started:.2f} s")
        for rv in (a, b):
            self.assertEqual(
                rv.board.healthy, f"peer database file {expect}; restart this instance"
            )
            refused = rv.board.accept(PresenceMessage("update", PEER), 1, reactor.seconds())
            yield self.assertFailure(refused, DatabaseUnavailable)
            code, _ = yield threads.deferToThread(healthz, rv.port)
            self.assertEqual(code, 503)
        # More identity checks, prunes and refused publishes later: still one error each.
        board = a.board
        assert isinstance(board, SharedBoard)
        checks = [0]
        read = board._read

        def counting(after: int, check: bool) -> Any:
            checks[0] += 1
            return read(after, check)

        board._read = counting  # type: ignore[method-assign]
        a.board.prune(reactor.seconds())
        yield until(lambda: checks[0] >= 20)
        self.assertEqual(len(self.errors(f"peer database {self.path} {expect} while in use")), 2)

    def test_deleted_file_is_noticed_once_and_refuses_publishes(self) -> Any:
        """os.unlink under two running instances: both notice within ~1 s, log one error,
        refuse publishes, /healthz 503 (they used to write on into the orphaned inode)."""
        return self._orphaned(replace=False)

    def test_replaced_file_is_noticed_once_and_refuses_publishes(self) -> Any:
        """The file renamed away and a copy put in its place: the same."""
        return self._orphaned(replace=True)
