"""Three ``twistd -n goop --rendezvous-only`` processes sharing one peer_db_path."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from goop.sseparse import SSEParser
from tests.procs import GoopProcess, run_goop

PASSWORD = "pw"


class Reader(threading.Thread):
    """Reads one /events stream (HTTP/1.0) in a thread, timestamping every event."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.sendall(b"GET /events HTTP/1.0\r\nHost: x\r\n\r\n")
        self.received: list[tuple[float, dict[str, object]]] = []
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


def test_damaged_database_stops_startup_naming_it(tmp_path: Path) -> None:
    """A peer_db_path that is not a database: exit non-zero with the path and reason."""
    db = tmp_path / "peers.db"
    db.write_bytes(b"garbage" * 1000)
    out = run_goop(["--rendezvous-only", "--peer-db-path", str(db)], cwd=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "presence.peer_db_path" in text and str(db) in text and "not a database" in text
    assert "Traceback" not in text
