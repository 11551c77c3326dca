"""Three ``twistd -n goop --rendezvous-only`` processes sharing one peer_db_path."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from goop.rendezvous.store import SQLiteStore
from goop.sseparse import SSEParser
from tests.procs import GoopProcess, run_goop
from tests.test_shared_honesty import crashed_store, damaged_store, immutable, read_only, tmpfs

PASSWORD = "pw"


class Reader(threading.Thread):
    """Reads one /events stream (HTTP/1.0) in a thread, timestamping every event and
    keeping its id; with ``last_event_id`` it resumes from there."""

    def __init__(self, url: str, last_event_id: str = "") -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.sock.sendall(f"GET /events HTTP/1.0\r\nHost: x\r\n{resume}\r\n".encode())
        self.received: list[tuple[float, dict[str, object]]] = []
        self.ids: list[str] = []
        self.ready = threading.Event()
        self.start()

    def run(self) -> None:
        parser = SSEParser()
        head = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                now = time.monotonic()
                if not self.ready.is_set():
                    head += data
                    if b"\r\n\r\n" not in head:
                        continue
                    _, _, data = head.partition(b"\r\n\r\n")
                    self.ready.set()
                for event in parser.feed(data):
                    self.ids.append(event.last_event_id)
                    self.received.append((now, json.loads(event.data)))
        except OSError:
            return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def contents(self) -> set[str]:
        return {str(m["content"]) for _, m in self.received}


class Publisher:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)

    def post(self, body: dict[str, object]) -> int:
        self.conn.request(
            "POST", "/publish", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        resp = self.conn.getresponse()
        resp.read()
        return int(resp.status)


def admin_json(url: str, path: str) -> object:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
    value = json.loads(conn.getresponse().read())
    conn.close()
    return value


def peers_json(url: str) -> list[dict[str, object]]:
    rows = admin_json(url, "/peers.json")
    assert isinstance(rows, list)
    return sorted(rows, key=lambda r: str(r["peer_id"]))


def without_counters(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Rows minus bytes_sent/bytes_received, which each instance counts for itself."""
    return [{k: v for k, v in row.items() if not k.startswith("bytes_")} for row in rows]


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling our own readers' state, not the network


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, list[GoopProcess]]]:
    procs: list[GoopProcess] = []
    try:
        yield tmp_path / "peers.db", procs
    finally:
        for p in procs:
            p.kill()


def start(procs: list[GoopProcess], db: Path, name: str, ttl: int = 20) -> tuple[GoopProcess, str]:
    cwd = db.parent / name
    cwd.mkdir(exist_ok=True)
    proc = GoopProcess(
        [
            "--rendezvous-only",
            "--rendezvous-port",
            "0",
            "--peer-db-path",
            str(db),
            "--publish-rate-limit",
            "0",
            "--admin-password",
            PASSWORD,
            "--ttl-seconds",
            str(ttl),
            "--heartbeat-seconds",
            "1",
        ],
        cwd=str(cwd),
    )
    procs.append(proc)
    return proc, proc.url()


def test_three_instances_act_as_one(cluster: tuple[Path, list[GoopProcess]]) -> None:
    """A message published to any instance reaches the subscribers of all three
    (p99 latency over 1,000 messages is reported and within 500 ms); all three
    /peers.json agree."""
    db, procs = cluster
    urls = [start(procs, db, f"i{i}")[1] for i in range(3)]
    readers = [Reader(u) for u in urls]
    try:
        for r in readers:
            assert r.ready.wait(10)
        publishers = [Publisher(u) for u in urls]
        sent: dict[str, float] = {}
        for i in range(1000):
            content = f"m{i}"
            sent[content] = time.monotonic()
            status = publishers[i % 3].post(
                {"type": "update", "peerId": f"12D3KooWpeer{i % 20:02d}", "content": content}
            )
            assert status == 204
        wait(
            lambda: all(len(r.contents() & set(sent)) == 1000 for r in readers),
            30,
            "every message on every stream",
        )
        latencies = sorted(
            t - sent[str(m["content"])]
            for r in readers
            for t, m in r.received
            if str(m["content"]) in sent
        )
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"\nshared store: {len(latencies)} deliveries, p50 "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms"
        )
        assert p99 <= 0.5
        stalls = [admin_json(u, "/stats.json")["max_stall_ms"] for u in urls]  # type: ignore[index]
        print(f"longest reactor stall per instance under this load: {stalls} ms")
        # Each stream saw the events in the same order with the same ids.
        orders = [
            [str(m["content"]) for _, m in r.received if str(m["content"]) in sent] for r in readers
        ]
        assert orders[0] == orders[1] == orders[2]
        tables = [without_counters(peers_json(u)) for u in urls]
        assert len(tables[0]) == 20
        assert tables[0] == tables[1] == tables[2]
    finally:
        for r in readers:
            r.close()


def test_stale_peer_yields_exactly_one_offline_on_every_stream(
    cluster: tuple[Path, list[GoopProcess]],
) -> None:
    """Three instances prune; every stream gets one offline for the silent peer."""
    db, procs = cluster
    urls = [start(procs, db, f"i{i}", ttl=2)[1] for i in range(3)]
    readers = [Reader(u) for u in urls]
    try:
        for r in readers:
            assert r.ready.wait(10)
        assert Publisher(urls[0]).post({"type": "online", "peerId": "12D3KooWstale"}) == 204

        def offlines(r: Reader, peer: str) -> int:
            return sum(1 for _, m in r.received if m["type"] == "offline" and m["peerId"] == peer)

        wait(
            lambda: all(offlines(r, "12D3KooWstale") == 1 for r in readers),
            15,
            "offline on every stream",
        )
        # A second stale peer's offline proves later prune passes ran: none of
        # them may have produced another offline for the first.
        assert Publisher(urls[1]).post({"type": "online", "peerId": "12D3KooWlater"}) == 204
        wait(
            lambda: all(offlines(r, "12D3KooWlater") == 1 for r in readers),
            15,
            "the second peer's offline",
        )
        assert [offlines(r, "12D3KooWstale") for r in readers] == [1, 1, 1]
    finally:
        for r in readers:
            r.close()


def test_kill_9_under_load_loses_nothing_accepted(cluster: tuple[Path, list[GoopProcess]]) -> None:
    """Kill -9 one of three instances while all publish and stream: the others keep
    serving and deliver every accepted message; restarted, it serves the current table."""
    db, procs = cluster
    started = [start(procs, db, f"i{i}") for i in range(3)]
    urls = [u for _, u in started]
    readers = [Reader(u) for u in urls]
    accepted: set[str] = set()
    stop = threading.Event()

    def publish_loop(index: int) -> None:
        pub = Publisher(urls[index])
        i = 0
        while not stop.is_set() and i < 5000:
            content = f"p{index}-{i}"
            try:
                if (
                    pub.post(
                        {
                            "type": "update",
                            "peerId": f"12D3KooWload{index}{i % 5}",
                            "content": content,
                        }
                    )
                    == 204
                ):
                    accepted.add(content)
            except (OSError, http.client.HTTPException):
                return  # its instance is gone
            i += 1

    threads = [threading.Thread(target=publish_loop, args=(i,), daemon=True) for i in range(3)]
    try:
        for r in readers:
            assert r.ready.wait(10)
        for t in threads:
            t.start()
        wait(lambda: len(accepted) >= 300, 20, "load to build up")
        started[2][0].kill()
        killed_at = len(accepted)
        wait(lambda: len(accepted) >= killed_at + 300, 20, "the survivors to keep accepting")
        stop.set()
        for t in threads:
            t.join(10)
        survivors = readers[:2]
        wait(
            lambda: all(accepted <= r.contents() for r in survivors),
            20,
            "every accepted message on the survivors' streams",
        )
        _, again = start(procs, db, "i2-again")
        assert without_counters(peers_json(again)) == without_counters(peers_json(urls[0]))
        assert len(peers_json(again)) == 15
    finally:
        stop.set()
        for r in readers:
            r.close()


def publish_timed(url: str, body: dict[str, object]) -> tuple[int, float, str | None]:
    """One POST /publish on a fresh connection: status, seconds, Retry-After."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    started = time.monotonic()
    try:
        conn.request("POST", "/publish", json.dumps(body).encode())
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - started, resp.getheader("retry-after")
    finally:
        conn.close()


def healthz(url: str) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_locked_store_answers_503_within_2s(cluster: tuple[Path, list[GoopProcess]]) -> None:
    """Another process holds BEGIN EXCLUSIVE on the shared file: every publish to
    either instance answers 503 with Retry-After in under 2 s (they used to queue
    behind the database thread, 5 s and more each), /healthz says 503; once the
    lock is released both accept again, and every publish that got 204, before,
    during or after, reaches the streams."""
    db, procs = cluster
    urls = [start(procs, db, f"i{i}")[1] for i in range(2)]
    readers = [Reader(u) for u in urls]
    answers: list[tuple[str, int, float, str | None, float]] = []  # content, status, s, retry, t
    stop = threading.Event()

    def publish_loop(index: int) -> None:
        for i in range(2000):
            if stop.is_set():
                return
            content = f"t{index}-{i}"
            status, took, retry = publish_timed(
                urls[i % 2],
                {"type": "update", "peerId": f"12D3KooWlock{index}", "content": content},
            )
            answers.append((content, status, took, retry, time.monotonic()))
            if status != 204:
                stop.wait(0.05)  # a poll interval; a real peer waits Retry-After

    def count(status: int, since: float = 0.0) -> int:
        return sum(1 for a in list(answers) if a[1] == status and a[4] >= since)

    threads = [threading.Thread(target=publish_loop, args=(i,), daemon=True) for i in range(3)]
    holder: sqlite3.Connection | None = None
    try:
        for r in readers:
            assert r.ready.wait(10)
        for t in threads:
            t.start()
        wait(lambda: count(204) >= 30, 20, "publishes before the lock")
        holder = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        wait(lambda: count(503, locked_at) >= 30, 20, "503s while locked")
        states = [healthz(u) for u in urls]
        assert [code for code, _ in states] == [503, 503], states
        assert all("peer database failing: database is locked" in text for _, text in states)
        holder.execute("ROLLBACK")
        released_at = time.monotonic()
        wait(lambda: count(204, released_at) >= 30, 20, "publishes accepted again")
        assert [code for code, _ in (healthz(u) for u in urls)] == [200, 200]
        stop.set()
        for t in threads:
            t.join(20)
        refused = [a for a in answers if a[1] == 503]
        slowest = max(a[2] for a in refused)
        first = min((a for a in refused), key=lambda a: a[4] - a[2])
        latencies = sorted(a[2] for a in refused)
        print(
            f"\nlocked store: {len(refused)} publishes refused; first after the lock "
            f"{first[2] * 1000:.0f} ms; p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
            f"max {slowest * 1000:.0f} ms; healthy again "
            f"{min(a[4] for a in answers if a[1] == 204 and a[4] >= released_at) - released_at:.2f}"
            " s after the release"
        )
        assert slowest < 2.0
        assert all(a[3] == "1" for a in refused)
        assert {a[1] for a in answers} == {204, 503}
        accepted = {a[0] for a in answers if a[1] == 204}
        wait(
            lambda: all(accepted <= r.contents() for r in readers),
            20,
            "every accepted publish on both streams",
        )
        assert not ({a[0] for a in refused} & readers[0].contents())
    finally:
        stop.set()
        if holder is not None:
            holder.close()
        for r in readers:
            r.close()


def test_deleted_store_file_is_noticed(cluster: tuple[Path, list[GoopProcess]]) -> None:
    """The file deleted under two running instances: each logs one error naming it,
    refuses publishes and says 503 on /healthz (they used to go on writing into the
    orphaned inode, and a restarted instance split from them on a new file). An
    instance started meanwhile refuses the leftover -wal/-shm in one line; once the
    old ones are stopped and the leftovers moved away, a new one says it created a
    new, empty file."""
    db, procs = cluster
    started = [start(procs, db, f"i{i}") for i in range(2)]
    for _, url in started:
        assert publish_timed(url, {"type": "online", "peerId": "12D3KooWdeleted"})[0] == 204
    db.unlink()
    for proc, url in started:
        proc.wait_for_line(f"peer database {db} was deleted or moved away while in use", 10)
        code, text = healthz(url)
        assert code == 503
        assert text.strip() == (
            "peer database file was deleted or moved away; restart this instance"
        )
        status, took, retry = publish_timed(url, {"type": "online", "peerId": "12D3KooWafter"})
        assert (status, retry) == (503, "1") and took < 0.5
    out = run_goop(["--rendezvous-only", "--peer-db-path", str(db)], cwd=str(db.parent), timeout=20)
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 1
    assert lines == [
        f"goop: presence.peer_db_path: {db}: missing, but peers.db-wal and peers.db-shm are "
        "there: the file was deleted while in use; stop every instance on this path, move "
        "those files away, then start again"
    ]
    for proc, _ in started:
        # Still one error line each, after more identity checks, prunes, publishes.
        assert sum("was deleted or moved away" in line for line in proc.lines) == 1
        proc.terminate()
        assert proc.wait_exit(20) in (0, -15)  # twistd re-raises SIGTERM after a clean stop
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").rename(db.parent / f"old{suffix}")
    new, new_url = start(procs, db, "i2")
    new.wait_for_line(f"peer database {db} did not exist: created a new, empty one", 10)
    assert healthz(new_url)[0] == 200
    assert publish_timed(new_url, {"type": "online", "peerId": "12D3KooWnew"})[0] == 204


def _damaged(path: Path) -> None:
    damaged_store(str(path))


def _locked(path: Path) -> sqlite3.Connection:
    SQLiteStore(str(path)).open()
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


@pytest.mark.parametrize(
    "case", ["not a database", "damaged", "directory", "no directory", "locked", "immutable"]
)
def test_every_store_startup_error_is_one_line(tmp_path: Path, case: str) -> None:
    """Whatever is wrong with peer_db_path, startup stops with exit status 1 and
    exactly one line naming the setting, the file and why (a damaged file used to
    print 101 lines)."""
    db = tmp_path / "peers.db"
    cleanup: contextlib.ExitStack = contextlib.ExitStack()
    with cleanup:
        if case == "not a database":
            db.write_bytes(b"garbage" * 1000)
            why = "file is not a database"
        elif case == "damaged":
            _damaged(db)
            why = "database is damaged: "
        elif case == "directory":
            db = tmp_path
            why = "is a directory, not a database file"
        elif case == "no directory":
            db = tmp_path / "missing" / "peers.db"
            why = f"directory {tmp_path / 'missing'} does not exist"
        elif case == "locked":
            cleanup.callback(_locked(db).close)
            why = "locked by another process for more than 5s (database is locked)"
        else:
            crashed_store(str(db))
            cleanup.enter_context(immutable(str(db)))
            why = "not writable (operation not permitted"
        out = run_goop(
            ["--rendezvous-only", "--peer-db-path", str(db)], cwd=str(tmp_path), timeout=20
        )
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"goop: presence.peer_db_path: {db}: {why}"), lines


def test_read_only_filesystem_stops_startup_in_one_line(tmp_path: Path) -> None:
    """A store on a filesystem now mounted read-only, with the -wal/-shm a killed
    instance left: it used to start, say 200 on /healthz and 503 every publish.
    Now startup tries a real write and stops: one line, exit status 1."""
    with tmpfs(str(tmp_path)) as mnt:
        db = os.path.join(mnt, "peers.db")
        crashed_store(db)
        read_only(mnt)
        try:
            out = run_goop(
                ["--rendezvous-only", "--peer-db-path", db], cwd=str(tmp_path), timeout=20
            )
        except subprocess.TimeoutExpired:
            pytest.fail("goop started on a read-only store instead of refusing it")
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 1
    assert lines == [f"goop: presence.peer_db_path: {db}: not writable (read-only file system)"]
