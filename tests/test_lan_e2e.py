"""Two full peers (real ``twistd -n goop``) in two network namespaces, no rendezvous.

Each peer finds the other with mDNS, dials it over libp2p and hears its
presence on GossipSub: everything a LAN peer has without any server. The
namespaces and their veth pair are made and removed by the fixture; mDNS
never leaves them. Waits are on the peers' own log lines, each with a
deadline; elapsed times are measured from the moment a line is read.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import NetnsGoop, NetnsUnavailable, VethPair

FAST = ["--ttl-seconds", "4", "--heartbeat-seconds", "1"]


class Lan:
    """Peers started inside the namespaces of one veth pair."""

    def __init__(self, pair: VethPair, root: Path) -> None:
        self.pair = pair
        self.root = root
        self.procs: list[NetnsGoop] = []

    def peer(self, side: str, label: str, extra: list[str] | None = None) -> tuple[NetnsGoop, str]:
        ns, addr = (
            (self.pair.a, self.pair.addr_a) if side == "a" else (self.pair.b, self.pair.addr_b)
        )
        cwd = self.root / label
        cwd.mkdir()
        args = [
            "--label", label,
            "--http-addr", "127.0.0.1:0",
            "--mdns-interfaces", addr,
            *FAST,
            *(extra or []),
        ]
        proc = NetnsGoop(ns, args, str(cwd))
        self.procs.append(proc)
        peer_id = proc.wait_for_line(r"peer id (12D3KooW\w+)", timeout=30).group(1)
        return proc, peer_id

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    try:
        pair = VethPair.create()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    world = Lan(pair, tmp_path)
    try:
        yield world
    finally:
        world.close()
        pair.delete()


def viewer_url(proc: NetnsGoop) -> str:
    return proc.wait_for_line(r"viewer listening on (http://\S+)").group(1)


def test_two_lan_peers_find_each_other_talk_directly_and_see_a_clean_stop(lan: Lan) -> None:
    """mDNS + libp2p only: each lists the other with source ``lan`` within 10 s of
    the second start, fetches its content line over a direct stream, and drops it
    within 1 s of its clean stop (the GossipSub ``offline``)."""
    a, a_id = lan.peer("a", "alice on the lan")
    b, b_id = lan.peer("b", "bob on the lan")
    started = time.monotonic()
    a.wait_for_line(rf"sees peer {b_id}\b.*\blan\b", timeout=10)
    b.wait_for_line(rf"sees peer {a_id}\b.*\blan\b", timeout=10)
    assert time.monotonic() - started <= 10

    rows_a = {row["peer_id"]: row for row in a.get_json(viewer_url(a) + "/peers")}
    rows_b = {row["peer_id"]: row for row in b.get_json(viewer_url(b) + "/peers")}
    assert set(rows_a) == {b_id} and set(rows_b) == {a_id}, (rows_a, rows_b)
    assert rows_a[b_id]["sources"] == ["lan"] and rows_a[b_id]["content"] == "bob on the lan"
    assert rows_b[a_id]["sources"] == ["lan"] and rows_b[a_id]["content"] == "alice on the lan"

    # The content line over /goop/content/1.0.0, fetched by each side on arrival.
    a.wait_for_line(rf"content of {b_id} over libp2p: 'bob on the lan'", timeout=10)
    b.wait_for_line(rf"content of {a_id} over libp2p: 'alice on the lan'", timeout=10)

    stats = a.get_json(viewer_url(a) + "/stats")
    print(f"\nlongest reactor stall of a LAN peer (libp2p + zeroconf): {stats['max_stall_ms']} ms")
    assert stats["ticks"] > 0, stats

    mark = len(a.lines)
    b.terminate()
    stopped = time.monotonic()
    a.wait_for_line_after(rf"peer {b_id} gone", mark, timeout=1.0)
    assert time.monotonic() - stopped <= 1.0
    assert b.wait_exit(10) in (0, -15)
    assert "Traceback" not in b.output(), b.output()


def test_peers_with_different_mdns_tags_never_see_each_other(lan: Lan) -> None:
    """Different ``mdns_tag``: neither finds, dials or lists the other. The control
    is a third peer beside ``b`` with ``a``'s tag: by the time ``a`` and ``c`` see
    each other, ``b`` has been advertising longer than ``c`` without being seen."""
    a, a_id = lan.peer("a", "alice", ["--mdns-tag", "goop-one"])
    b, b_id = lan.peer("b", "bob", ["--mdns-tag", "goop-two"])
    b.wait_for_line(r"mDNS: advertising", timeout=20)
    c, c_id = lan.peer("b", "carol", ["--mdns-tag", "goop-one"])
    a.wait_for_line(rf"sees peer {c_id}\b.*\blan\b", timeout=10)
    c.wait_for_line(rf"sees peer {a_id}\b.*\blan\b", timeout=10)
    assert [row["peer_id"] for row in a.get_json(viewer_url(a) + "/peers")] == [c_id]
    assert [row["peer_id"] for row in c.get_json(viewer_url(c) + "/peers")] == [a_id]
    assert b.get_json(viewer_url(b) + "/peers") == []
    assert not any(b_id in line for line in a.lines + c.lines), a.output() + c.output()
    assert not any(a_id in line or c_id in line for line in b.lines), b.output()


def test_a_forged_presence_message_from_a_third_lan_peer_is_dropped(lan: Lan) -> None:
    """A third libp2p peer (tests/lanforger.py, its own key) joins the topic and
    publishes presence naming ``b``: unsigned, and with a signature that is not
    ``b``'s. ``a`` drops every one (logged), and still lists ``b`` as ``b`` says
    it is, signature checked."""
    a, a_id = lan.peer("a", "alice")
    _, b_id = lan.peer("b", "bob")
    a.wait_for_line(rf"sees peer {b_id}\b.*\blan\b", timeout=10)
    port = a.wait_for_line(r"libp2p listening .* on /ip4/\S+/tcp/(\d+)/p2p/").group(1)
    dial = f"/ip4/{lan.pair.addr_a}/tcp/{port}/p2p/{a_id}"
    fake_sig = base64.b64encode(bytes(64)).decode()
    victim = json.dumps({"type": "update", "peerId": b_id, "content": "bob", "ts": 1,
                         "sig": fake_sig})
    cwd = lan.root / "forger"
    cwd.mkdir()
    forger = NetnsGoop(
        lan.pair.b, [], str(cwd),
        command=[sys.executable, str(Path(__file__).parent / "lanforger.py"),
                 str(cwd / "forger.key"), dial, b_id, victim],
    )
    lan.procs.append(forger)
    forger_id = forger.wait_for_line(r"forger (12D3KooW\w+) connected", timeout=30).group(1)
    forger.wait_for_line(r"forged 10\b", timeout=20)  # 2 s of forging, 22 messages
    a.wait_for_line(rf"ignoring GossipSub presence for {b_id} signed by {forger_id}", timeout=5)

    rows = {row["peer_id"]: row for row in a.get_json(viewer_url(a) + "/peers")}
    assert rows[b_id]["content"] == "bob", rows
    assert rows[b_id]["proof"] == "verified", rows
    assert not any("forged by" in line for line in a.lines), a.output()
    assert forger_id not in rows or rows[forger_id]["content"] != "bob"
