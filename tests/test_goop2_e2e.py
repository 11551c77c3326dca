"""A goop peer and a goop2-style peer through a goop rendezvous, as real processes.

The goop peer is ``twistd -n goop``; the goop2 peer is ``tests/goop2peer.py``
(Autobahn, speaking GOOP2-PROTOCOL.md §4: POST online, /ws, update frames).
On 127.0.0.1 the goop peer runs without libp2p (``--no-p2p``); the test with
addresses and punch hints runs libp2p inside a network namespace (root
only), mDNS off. Waits are on log lines and viewer polls with deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goop import __version__
from goop.identity import load_or_create
from tests.netns import NetnsGoop, NetnsUnavailable, VethPair
from tests.procs import GoopProcess
from tests.test_peers_e2e import Cluster

GOOP2_PEER = str(Path(__file__).with_name("goop2peer.py"))
GOOP2_VERSION = "goop2-sim/0.9"
GOOP_VERSION = f"goop/{__version__}"


class Goop2Process(GoopProcess):
    """``python tests/goop2peer.py URL PEER_ID ...``, optionally inside a namespace."""

    def __init__(self, args: list[str], cwd: str, ns: str | None = None) -> None:
        argv = [sys.executable, GOOP2_PEER, *args]
        if ns is not None:
            argv = VethPair.exec_argv(ns, argv)
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def frames(self) -> list[dict[str, Any]]:
        prefix = "frame "
        return [json.loads(line[len(prefix) :]) for line in self.lines if line.startswith(prefix)]

    def wait_for_frame(self, pred: Any, timeout: float, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                if line.startswith("frame "):
                    msg = json.loads(line[len("frame ") :])
                    if pred(msg):
                        return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame within {timeout}s:\n{self.output()}")
            # Any new line (frame or not) wakes us up again.
            self.wait_for_line_after(r".", len(self.lines), left)


def new_peer_id(home: Path, name: str) -> str:
    return load_or_create(str(home / f"{name}.key"))[0].peer_id


def poll_rows(get: Any, pred: Any, timeout: float) -> dict[str, dict[str, Any]]:
    """The viewer's /peers (``get()``) polled every 20 ms until ``pred(rows)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {row["peer_id"]: row for row in get()}
        if pred(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"viewer condition not met within {timeout}s: {rows}")
        time.sleep(0.02)


def viewer_getter(proc: GoopProcess) -> Any:
    url = proc.wait_for_line(r"viewer listening on (http://\S+)").group(1) + "/peers"

    def get() -> Any:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    return get


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_goop_and_goop2_peers_see_each_other_and_a_kill_is_seen_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Through a goop rendezvous: within 2 s of the goop2 peer's online, the goop peer's
    viewer lists it with its goopClientVersion (verified, seen on ``wan``) and the goop2
    peer has received the goop peer's presence (goop/<version>, verified, no addrs
    without libp2p). kill -9 of the goop2 peer: the viewer drops it within 1 s."""
    _, url = cluster.rendezvous("rv")
    peer, peer_id = cluster.peer("goop", ["--rendezvous-wan", url])
    peer.wait_for_line(rf"subscribed to {url}/ws")
    get = viewer_getter(peer)

    g2_id = new_peer_id(tmp_path, "g2")
    g2 = Goop2Process([url, g2_id, "--heartbeat", "2"], cwd=str(tmp_path))
    cluster.procs.append(g2)
    g2.wait_for_line(r"posted online 204", timeout=20)
    started = time.monotonic()
    rows = poll_rows(get, lambda r: g2_id in r, timeout=2.0)
    mine = g2.wait_for_frame(
        lambda m: m.get("peerId") == peer_id and m.get("type") != "offline",
        timeout=max(0.0, 2.0 - (time.monotonic() - started)),
    )
    assert time.monotonic() - started <= 2.0

    row = rows[g2_id]
    assert row["client"] == GOOP2_VERSION
    assert row["verified"] is True
    assert row["sources"] == ["wan"]
    assert row["encryption"] is True
    assert mine["goopClientVersion"] == GOOP_VERSION
    assert mine["verified"] is True
    assert "addrs" not in mine  # --no-p2p: nothing to dial
    assert "verificationToken" not in json.dumps(g2.frames())

    # The goop2 peer's heartbeats (update frames) keep it listed past the first beats.
    g2.wait_for_line(r"ws open")
    mark = len(g2.lines)
    g2.wait_for_frame(lambda m: m.get("peerId") == g2_id and m["type"] == "update", 10, mark)
    assert g2_id in {r["peer_id"] for r in get()}

    g2.proc.kill()
    g2.proc.wait(10)
    killed = time.monotonic()
    poll_rows(get, lambda r: g2_id not in r, timeout=1.0)
    assert time.monotonic() - killed <= 1.0
    assert "Traceback" not in peer.output(), peer.output()


@pytest.fixture
def pair() -> Iterator[VethPair]:
    try:
        p = VethPair.create()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    try:
        yield p
    finally:
        p.delete()


def test_goop_peer_publishes_its_libp2p_addresses_and_dials_a_punch_hint(
    pair: VethPair, tmp_path: Path
) -> None:
    """In a namespace, libp2p on (mDNS off), the goop peer hosting the rendezvous: the
    goop2 peer receives its presence with its LAN address (loopback left out); the goop
    peer, whose socket is open when the goop2 peer arrives with an address, gets the
    punch hint (only its target does) and dials the goop2 peer's published address
    (a TCP listener that reports the dial), logging one line about it."""
    procs: list[GoopProcess] = []
    try:
        (tmp_path / "goop").mkdir()
        peer = NetnsGoop(
            pair.a,
            [
                "--no-mdns", "--label", "goop", "--http-addr", "127.0.0.1:0",
                "--rendezvous-host", "--rendezvous-port", "0",
            ],
            str(tmp_path / "goop"),
        )
        procs.append(peer)
        peer_id = peer.wait_for_line(r"peer id (12D3KooW\w+)", timeout=30).group(1)
        url = peer.url(timeout=30)
        lib = peer.wait_for_line(r"libp2p listening .* on (\S+)", timeout=30).group(1)
        port = lib.split("/")[4]
        peer.wait_for_line(rf"subscribed to {url}/ws", timeout=30)
        viewer = peer.wait_for_line(r"viewer listening on (http://\S+)").group(1)
        deadline = time.monotonic() + 10
        while not peer.get_json(viewer + "/self").get("addrs"):
            assert time.monotonic() < deadline, "the goop peer never published addresses"
            time.sleep(0.05)

        g2_id = new_peer_id(tmp_path, "g2")
        g2 = Goop2Process(
            [url, g2_id, "--heartbeat", "2", "--listen-host", pair.addr_a],
            cwd=str(tmp_path),
            ns=pair.a,
        )
        procs.append(g2)
        g2_port = g2.wait_for_line(r"listening \S+ (\d+)", timeout=20).group(1)

        presence = g2.wait_for_frame(
            lambda m: m.get("peerId") == peer_id and m["type"] in ("online", "update"), 10
        )
        assert presence["addrs"] == [f"/ip4/{pair.addr_a}/tcp/{port}"], presence
        assert presence["verified"] is True
        assert presence["goopClientVersion"] == GOOP_VERSION

        g2.wait_for_line(rf"tcp connection from {pair.addr_a}", timeout=10)
        line = peer.wait_for_line(rf"punch hint: .*{g2_id}", timeout=20).group(0)
        assert f"/ip4/{pair.addr_a}/tcp/{g2_port}" in line, line

        # goop sends a hint to its target alone; the goop2 peer, not yet on /ws when it
        # arrived, gets its half (the goop peer's addresses) once its socket is up.
        hints = [m for m in g2.frames() if m["type"] == "punch"]
        assert hints, g2.output()
        assert all(h["target"] == g2_id for h in hints), hints
        assert hints[0]["addrs"] == presence["addrs"], hints
        assert set(hints[0]) == {"type", "peerId", "target", "addrs", "ts"}, hints
        rows = {r["peer_id"]: r for r in peer.get_json(viewer + "/peers")}
        assert rows[g2_id]["sources"] == ["local"]
        assert rows[g2_id]["client"] == GOOP2_VERSION
        assert rows[g2_id]["addrs"] == [f"/ip4/{pair.addr_a}/tcp/{g2_port}"]
    finally:
        for p in procs:
            p.kill()
