"""Peers and rendezvous servers as real twistd processes on 127.0.0.1.

Waits are on the processes' own log lines (each with a deadline); elapsed
times are measured from the moment a line is read.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import GoopProcess

FAST = ["--ttl-seconds", "4", "--heartbeat-seconds", "1"]
QUIET = ["--no-mdns", "--no-p2p", "--http-addr", "127.0.0.1:0"]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[GoopProcess] = []

    def start(self, name: str, args: list[str]) -> GoopProcess:
        cwd = self.root / name
        cwd.mkdir(exist_ok=True)
        proc = GoopProcess(args, cwd=str(cwd))
        self.procs.append(proc)
        return proc

    def rendezvous(
        self, name: str, port: int = 0, extra: list[str] | None = None
    ) -> tuple[GoopProcess, str]:
        proc = self.start(
            name, ["--rendezvous-only", "--rendezvous-port", str(port), *(extra or [])]
        )
        return proc, proc.url()

    def peer(self, name: str, args: list[str]) -> tuple[GoopProcess, str]:
        proc = self.start(name, [*QUIET, "--label", name, *args])
        peer_id = proc.wait_for_line(r"peer id (12D3KooW\w+)").group(1)
        proc.wait_for_line(r"viewer listening on (http://\S+)")
        return proc, peer_id

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def viewer_rows(proc: GoopProcess) -> dict[str, dict[str, object]]:
    url = proc.wait_for_line(r"viewer listening on (http://\S+)").group(1)
    with urllib.request.urlopen(url + "/peers", timeout=5) as resp:
        return {row["peer_id"]: row for row in json.load(resp)}


def sees(proc: GoopProcess, peer_id: str, timeout: float, after: int = 0) -> float:
    """Seconds until ``proc`` logs that it sees ``peer_id`` (only lines after index ``after``)."""
    started = time.monotonic()
    proc.wait_for_line_after(rf"sees peer {peer_id}\b", after, timeout)
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_peers_see_each_other_then_drop_on_stop_and_on_kill(cluster: Cluster) -> None:
    """Snapshot on connect: the peers list each other within 1 s of the second
    start; a clean stop is seen within 1 s; a kill -9 within ttl + 5 s."""
    _, url = cluster.rendezvous("rv", extra=FAST)
    a, a_id = cluster.peer("a", ["--rendezvous-wan", url, *FAST])
    a.wait_for_line(r"subscribed to")
    b, b_id = cluster.peer("b", ["--rendezvous-wan", url, *FAST])
    assert sees(b, a_id, timeout=1.0) <= 1.0
    assert sees(a, b_id, timeout=1.0) <= 1.0
    assert viewer_rows(a)[b_id]["sources"] == ["wan"]
    assert viewer_rows(b)[a_id]["content"] == "a"

    mark = len(a.lines)
    b.terminate()
    started = time.monotonic()
    a.wait_for_line_after(rf"peer {b_id} gone \(signed offline via wan\)", mark, timeout=1.0)
    assert time.monotonic() - started <= 1.0
    assert b.wait_exit(5) in (0, -15)

    c, c_id = cluster.peer("c", ["--rendezvous-wan", url, *FAST])
    sees(a, c_id, timeout=2.0, after=mark)
    mark = len(a.lines)
    c.kill()
    started = time.monotonic()
    # It signed; the offline that removes it is the server's (expiry), said as such.
    expired = rf"peer {c_id} gone \(the wan rendezvous.s own offline"
    a.wait_for_line_after(expired, mark, timeout=4 + 5)
    assert time.monotonic() - started <= 4 + 5


def test_rendezvous_restart_on_same_port_is_rejoined_without_restarting_peers(
    cluster: Cluster,
) -> None:
    """Kill the rendezvous until the peers forget each other, restart it on the
    same port: they see each other again within 10 s."""
    port = free_port()
    rv, url = cluster.rendezvous("rv", port, FAST)
    a, a_id = cluster.peer("a", ["--rendezvous-wan", url, *FAST])
    b, b_id = cluster.peer("b", ["--rendezvous-wan", url, *FAST])
    sees(a, b_id, timeout=3)
    sees(b, a_id, timeout=3)
    mark_a, mark_b = len(a.lines), len(b.lines)
    rv.kill()
    a.wait_for_line_after(rf"peer {b_id} gone", mark_a, timeout=10)
    b.wait_for_line_after(rf"peer {a_id} gone", mark_b, timeout=10)
    mark_a, mark_b = len(a.lines), len(b.lines)
    cluster.rendezvous("rv2", port, FAST)
    started = time.monotonic()
    a.wait_for_line_after(rf"sees peer {b_id}\b", mark_a, timeout=10)
    b.wait_for_line_after(rf"sees peer {a_id}\b", mark_b, timeout=10)
    assert time.monotonic() - started <= 10


def test_peer_hosting_a_rendezvous_and_joining_a_wan_sees_both_sides(cluster: Cluster) -> None:
    """Two rendezvous, three peers: the middle one (rendezvous_host + rendezvous_wan)
    publishes to both and merges both lists; the outer ones see only the middle."""
    _, wan = cluster.rendezvous("wan-rv")
    middle, m_id = cluster.peer(
        "middle", ["--rendezvous-host", "--rendezvous-port", "0", "--rendezvous-wan", wan]
    )
    local = middle.url()
    left, l_id = cluster.peer("left", ["--rendezvous-wan", local])
    right, r_id = cluster.peer("right", ["--rendezvous-wan", wan])
    sees(middle, l_id, timeout=3)
    sees(middle, r_id, timeout=3)
    sees(left, m_id, timeout=3)
    sees(right, m_id, timeout=3)
    rows = viewer_rows(middle)
    assert rows[l_id]["sources"] == ["local"]
    assert rows[r_id]["sources"] == ["wan"]
    assert set(viewer_rows(left)) == {m_id}
    assert set(viewer_rows(right)) == {m_id}
    with urllib.request.urlopen(
        middle.wait_for_line(r"viewer listening on (http://\S+)").group(1) + "/self", timeout=5
    ) as resp:
        me = json.load(resp)
    assert me["peerId"] == m_id and me["content"] == "middle"


def test_second_peer_with_default_viewer_port_taken_exits_clearly(tmp_path: Path) -> None:
    """A taken viewer port: one clear line naming the setting, non-zero exit."""
    from tests.procs import run_goop

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = run_goop(
            ["--no-mdns", "--no-p2p", "--http-addr", f"127.0.0.1:{port}"], cwd=str(tmp_path)
        )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"viewer cannot listen on 127.0.0.1:{port}" in text and "--http-addr" in text, text
    assert "Traceback" not in text


def test_corrupt_key_file_stops_startup_and_is_kept(tmp_path: Path) -> None:
    """A key file that is not a libp2p key: clear error naming it; the file is untouched."""
    from tests.procs import run_goop

    key = tmp_path / "data" / "identity.key"
    key.parent.mkdir()
    key.write_bytes(b"this is not a key")
    out = run_goop([*QUIET], cwd=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "identity.key_file" in text and str(key) in text, text
    assert "Traceback" not in text
    assert key.read_bytes() == b"this is not a key"


def _snapshot_event(url: str, peer_id: str, timeout: float = 5.0) -> dict[str, object]:
    """``peer_id``'s event in the snapshot a new ``/events`` stream gets."""
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url + "/events", timeout=timeout) as resp:
        while time.monotonic() < deadline:
            line = resp.readline()
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("peerId") == peer_id:
                    return dict(event)
    raise AssertionError(f"no event for {peer_id} in the snapshot")


def _post(url: str, body: object) -> tuple[int, str]:
    request = urllib.request.Request(
        url + "/publish", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


def test_an_attacker_cannot_evict_or_rewrite_signed_peers(cluster: Cluster) -> None:
    """Two goop peers (they sign) and an attacker on one rendezvous: every spoofed
    update, offline and replay is refused with 403, and each peer still lists the
    other, with its own content, as verified."""
    _, url = cluster.rendezvous("rv", extra=FAST)
    a, a_id = cluster.peer("a", ["--rendezvous-wan", url, *FAST])
    b, b_id = cluster.peer("b", ["--rendezvous-wan", url, *FAST])
    sees(a, b_id, timeout=5)
    sees(b, a_id, timeout=5)
    captured = {pid: _snapshot_event(url, pid) for pid in (a_id, b_id)}
    for event in captured.values():
        assert isinstance(event["sig"], str) and len(event["sig"]) == 88, event

    for victim, event in captured.items():
        forged = dict(event, content="pwned", ts=int(time.time() * 1000) + 10_000)
        attempts = {
            "unsigned update": {"type": "update", "peerId": victim, "content": "pwned"},
            "unsigned offline": {"type": "offline", "peerId": victim},
            "altered signed message": forged,
            "replayed signed message": event,
            "replayed as offline": dict(event, type="offline"),
        }
        for name, body in attempts.items():
            code, why = _post(url, body)
            assert code == 403, (name, code, why)

    # What the server holds and serves is still each peer's own signed state...
    for pid, name in ((a_id, "a"), (b_id, "b")):
        event = _snapshot_event(url, pid)
        assert event["content"] == name and event["sig"], event
    # ... and each peer lists the other as it said it is, verified.
    assert viewer_rows(a)[b_id]["content"] == "b"
    assert viewer_rows(b)[a_id]["content"] == "a"
    assert viewer_rows(a)[b_id]["proof"] == "verified"
    assert viewer_rows(b)[a_id]["proof"] == "verified"
    assert not any("gone" in line for line in a.lines + b.lines), a.output() + b.output()
