"""make soak: the hardening issue's attack mix, all at once, against a pinned rendezvous.

A ``twistd goop --rendezvous-only`` with its default limits runs on core 0;
this process (core 1) runs, for ``--seconds`` (default 120):

- 100 well-behaved peers heartbeating every 5 s (POST, keep-alive, ten per
  address) and 10 well-behaved subscribers reading ``/events``;
- a flood of distinct peerIds from 100 addresses, a tenth of them with
  every character of their content escaped by JSON (6x on the wire) and
  escape sequences in their IDs;
- 64 ``/events`` streams and 8 ``Last-Event-ID`` replays that never read
  (4 KiB receive buffers), 32 ``/ws`` sockets of flood peers that never read;
- 4 clients looping on the dashboard, 300 slowloris connections trickling a
  header, 300 idle connections, one admin password guesser, and cross-site
  ``offline`` posts for the well-behaved peers (``Origin`` of another site).

It then writes the server's peak RSS (``VmHWM``), its longest reactor stall
(``/stats.json``), the share of well-behaved publishes accepted and of their
events delivered (each subscriber saw that heartbeat or a later one of the
same peer) into docs/hardening.md between its result markers.

    .venv/bin/python bench/soak.py [--seconds 120] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "hardening.md"
START = "<!-- soak:results:start -->"
END = "<!-- soak:results:end -->"
ADMIN_PASSWORD = "soak-admin"
URL_RE = re.compile(r"rendezvous listening on (http://127\.0\.0\.1:(\d+))")
NASTY = "\x01" * 4000
HEARTBEAT = 5.0
TARGETS = {"rss_mb": 512, "stall_ms": 100, "publish": 0.99, "delivery": 0.99}


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


class Counts:
    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def add(self, key: str, by: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + by


COUNTS = Counts()


def connect(port: int, factory: protocol.Factory, source: str) -> defer.Deferred[Any]:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    d = endpoint.connect(factory)
    d.addErrback(lambda f: COUNTS.add("connect_failed"))
    return d


# ------------------------------------------------------------ HTTP, by hand


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + extra
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


class Responses(protocol.Protocol):
    """Reads pipelined HTTP/1.1 responses (Content-Length bodies) in order."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: list[defer.Deferred[int]] = []
        self.closed = False

    def request(self, raw: bytes) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        if self.closed or self.transport is None:
            d.callback(0)
            return d
        self.waiting.append(d)
        self.transport.write(raw)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            length = int(m.group(1)) if m else 0
            if len(rest) < length:
                return
            self.buf = rest[length:]
            status = int(head.split(b" ", 2)[1])
            if self.waiting:
                self.waiting.pop(0).callback(status)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        for d in self.waiting:
            d.callback(0)
        self.waiting = []


class Looper:
    """A client that sends requests one after another on a kept-alive connection,
    reconnecting when the server closes it; ``make()`` gives the next request."""

    def __init__(self, port: int, source: str, make: Any, on_status: Any, pause: float = 0):
        self.port, self.source, self.make, self.on_status = port, source, make, on_status
        self.pause = pause
        self.proto: Responses | None = None
        self.running = True

    @defer.inlineCallbacks
    def run(self) -> Any:
        while self.running:
            if self.proto is None or self.proto.closed:
                self.proto = Responses()
                p = self.proto
                yield connect(self.port, protocol.Factory.forProtocol(lambda p=p: p), self.source)
                if p.transport is None:
                    yield task.deferLater(reactor, 0.5, lambda: None)
                    continue
            status = yield self.proto.request(self.make())
            self.on_status(status)
            if self.pause:
                yield task.deferLater(reactor, self.pause, lambda: None)
            elif status in (0, 429, 503):
                yield task.deferLater(reactor, 0.05, lambda: None)


# ------------------------------------------------------------ well-behaved


_WB = re.compile(rb'"content":"wb(\d+):(\d+)"')


class Subscriber(protocol.Protocol):
    """An HTTP/1.0 /events reader (no chunking) recording which well-behaved heartbeats
    it saw. It scans the raw stream with one regular expression (a full SSE parse of
    the attack's flood would make this process, not the server, the bottleneck)."""

    def __init__(self) -> None:
        self.tail = b""
        self.seen: dict[str, int] = {}
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        text = self.tail + data
        seen = self.seen
        for m in _WB.finditer(text):
            peer, seq = m.group(1).decode(), int(m.group(2))
            if seq > seen.get(peer, 0):
                seen[peer] = seq
        self.tail = text[-64:]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def delivered(self, peer: str, seq: int) -> bool:
        return self.seen.get(peer, 0) >= seq


class WellBehaved:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.accepted: list[tuple[str, int, float]] = []
        self.refused: dict[int, int] = {}

    def peer(self, i: int) -> Looper:
        seq = [0]
        peer_id = f"12D3KooWwellbehaved{i:03d}"

        def make() -> bytes:
            seq[0] += 1
            self.sent += 1
            kind = "online" if seq[0] == 1 else "update"
            body = json.dumps({"type": kind, "peerId": peer_id, "content": f"wb{i}:{seq[0]}"})
            return post("/publish", body.encode())

        def on_status(status: int) -> None:
            if status == 204:
                self.accepted.append((str(i), seq[0], time.monotonic()))
            else:
                self.refused[status] = self.refused.get(status, 0) + 1

        return Looper(self.port, f"127.0.0.{2 + i // 10}", make, on_status, pause=HEARTBEAT)


# ------------------------------------------------------------ attackers


class NonReader(protocol.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(self.request)
        self.transport.pauseProducing()  # type: ignore[attr-defined]


class Trickle(protocol.Protocol):
    """Slowloris: a request head, one byte every two seconds."""

    def connectionMade(self) -> None:
        self.left = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-a: " + b"b" * 500
        self.call = task.LoopingCall(self.drip)
        self.call.start(2.0, now=True)

    def drip(self) -> None:
        if self.left and self.transport is not None:
            self.transport.write(self.left[:1])
            self.left = self.left[1:]

    def connectionLost(self, reason: Any = None) -> None:
        COUNTS.add("slowloris_cut")
        if self.call.running:
            self.call.stop()


class Dashboard(protocol.Protocol):
    """One GET / per connection (the page is sent chunked), read whole, then closed."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        self.status = b""

    def dataReceived(self, data: bytes) -> None:
        if not self.status:
            self.status = data.split(b" ", 2)[1]
            COUNTS.add(f"dash_{self.status.decode()}")


class Closer(protocol.Protocol):
    def connectionLost(self, reason: Any = None) -> None:
        COUNTS.add("idle_cut")


def keep(port: int, source: str, make: Any, every: float = 1.0) -> None:
    """Keep one connection of ``make()`` open from ``source``: reopen it when cut."""

    @defer.inlineCallbacks
    def loop() -> Any:
        while RUNNING[0]:
            proto = make()
            lost: defer.Deferred[None] = defer.Deferred()
            original = proto.connectionLost

            def lost_hook(reason: Any = None, original: Any = original, lost: Any = lost) -> None:
                original(reason)
                if not lost.called:
                    lost.callback(None)

            proto.connectionLost = lost_hook
            yield connect(port, protocol.Factory.forProtocol(lambda p=proto: p), source)
            if proto.transport is None:
                yield task.deferLater(reactor, every, lambda: None)
                continue
            yield lost
            if every:
                yield task.deferLater(reactor, every, lambda: None)

    loop()


RUNNING = [True]


def start_attacks(port: int, board_head: Any) -> list[Looper]:
    loopers: list[Looper] = []
    flood_n = [0]

    def flood_make(a: int) -> Any:
        def make() -> bytes:
            flood_n[0] += 1
            n = flood_n[0]
            nasty = n % 10 == 0
            peer_id = f"12D3KooWflood{a}x{n}" + ("\r\x1b[31m\x1b]0;pwned\x07" if nasty else "")
            body = {"type": "online", "peerId": peer_id, "content": NASTY if nasty else "x"}
            return post("/publish", json.dumps(body).encode())

        return make

    def flood_status(status: int) -> None:
        COUNTS.add(f"flood_{status}")

    for a in range(100):
        loopers.append(Looper(port, f"127.1.{a // 250}.{1 + a % 250}", flood_make(a), flood_status))

    for a in range(4):
        keep(port, f"127.2.0.{1 + a}", Dashboard, every=0.0)

    guesses = [0]

    def guess() -> bytes:
        guesses[0] += 1
        token = base64.b64encode(f"admin:guess{guesses[0]}".encode())
        return (
            b"GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Basic %s\r\n\r\n" % token
        )

    loopers.append(Looper(port, "127.2.1.1", guess, lambda s: COUNTS.add(f"admin_{s}")))

    def cross(i: int) -> Any:
        def make() -> bytes:
            body = json.dumps({"type": "offline", "peerId": f"12D3KooWwellbehaved{i:03d}"})
            return post("/publish", body.encode(), b"Origin: http://evil.example\r\n")

        return make

    for i in range(4):
        loopers.append(
            Looper(port, f"127.2.2.{1 + i}", cross(i), lambda s: COUNTS.add(f"cross_{s}"), 0.2)
        )

    for i in range(64):
        req = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        keep(port, f"127.3.{i // 8}.{1 + i % 8}", lambda r=req: NonReader(r), every=2.0)
    for i in range(8):
        req = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: %d\r\n\r\n" % (
            max(0, board_head() - 4000)
        )
        keep(port, f"127.3.9.{1 + i}", lambda r=req: NonReader(r), every=2.0)
    for i in range(32):
        peer = f"12D3KooWwsflood{i}"

        def ws(peer: str = peer) -> NonReader:
            return NonReader(
                b"GET /ws?peer_id=" + peer.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )

        keep(port, f"127.3.10.{1 + i}", ws, every=2.0)
    for i in range(300):
        keep(port, f"127.4.{i // 200}.{1 + i % 200}", Trickle, every=1.0)
    for i in range(300):
        keep(port, f"127.5.{i // 200}.{1 + i % 200}", Closer, every=1.0)
    return loopers


# ------------------------------------------------------------ the server


def admin_json(port: int, path: str) -> Any:
    import http.client

    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=("127.0.0.250", 0)
    )
    auth = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    try:
        conn.request("GET", path, headers={"Authorization": f"Basic {auth}"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(tmp: str) -> tuple[subprocess.Popen[str], int]:
    twistd = str(Path(sys.executable).parent / "twistd")
    cmd = [
        "taskset", "-c", "0", twistd, "--pidfile=", "-n", "goop", "--rendezvous-only",
        "--rendezvous-port", "0", "--admin-password", ADMIN_PASSWORD,
    ]  # fmt: skip
    # Its log goes to a file: a pipe nobody reads would fill and block the server.
    log_path = Path(tmp) / "server.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = URL_RE.search(log_path.read_text())
        if m:
            return proc, int(m.group(2))
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


@defer.inlineCallbacks
def soak(port: int, pid: int, seconds: float) -> Any:
    wb = WellBehaved(port)
    subs = [Subscriber() for _ in range(10)]
    for i, sub in enumerate(subs):
        yield connect(port, protocol.Factory.forProtocol(lambda s=sub: s), f"127.0.0.{20 + i}")
    peers = [wb.peer(i) for i in range(100)]
    for i, p in enumerate(peers):
        reactor.callLater(i * HEARTBEAT / 100, p.run)
    yield task.deferLater(reactor, 2, lambda: None)
    head = admin_json(port, "/stats.json")["event_head"]
    loopers = start_attacks(port, lambda: head)
    for looper in loopers:
        looper.run()
    started = time.monotonic()
    samples = []
    while time.monotonic() - started < seconds:
        yield task.deferLater(reactor, 10, lambda: None)
        s = admin_json(port, "/stats.json")
        samples.append(
            (
                round(time.monotonic() - started),
                round(rss_mb(pid)),
                s["peers"],
                s["subscribers"],
                s.get("window_max_stall_ms"),
                s.get("window_max_gc_ms"),
            )
        )
        log(
            f"t={samples[-1][0]}s rss={samples[-1][1]} MB peers={s['peers']} "
            f"subscribers={s['subscribers']} stall(10s)={s.get('window_max_stall_ms')} ms "
            f"gc(10s)={s.get('window_max_gc_ms')} ms gen {s.get('window_max_gc_generation')}"
        )
    RUNNING[0] = False
    for looper in loopers + peers:
        looper.running = False
    # Heartbeats sent in the last seconds get time to arrive.
    yield task.deferLater(reactor, 3, lambda: None)
    final = admin_json(port, "/stats.json")
    cutoff = time.monotonic() - 2
    counted = [(p, q) for p, q, t in wb.accepted if t < cutoff]
    delivered = sum(1 for p, q in counted for sub in subs if sub.delivered(p, q))
    return {
        "seconds": seconds,
        "peak_rss_mb": round(peak_rss_mb(pid), 1),
        "max_stall_ms": final.get("max_stall_ms"),
        "publishes_sent": wb.sent,
        "publishes_accepted": len(wb.accepted),
        "publish_refusals": wb.refused,
        "events_expected": len(counted) * len(subs),
        "events_delivered": delivered,
        "subscribers_cut": sum(1 for s in subs if s.lost),
        "attack": dict(sorted(COUNTS.n.items())),
        "samples": samples,
    }


def write_doc(result: dict[str, Any]) -> None:
    pub = result["publishes_accepted"] / max(1, result["publishes_sent"])
    dlv = result["events_delivered"] / max(1, result["events_expected"])
    ok = {
        "rss": result["peak_rss_mb"] < TARGETS["rss_mb"],
        "stall": (result["max_stall_ms"] or 0) <= TARGETS["stall_ms"],
        "pub": pub >= TARGETS["publish"],
        "dlv": dlv >= TARGETS["delivery"],
    }

    def mark(good: bool) -> str:
        return "met" if good else "**missed**"

    atk = result["attack"]
    lines = [
        START,
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {result['seconds']:.0f} s, "
        f"{os.cpu_count()} cores (server pinned to core 0, everything else on core 1), "
        "default limits.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| server peak RSS (VmHWM) | {result['peak_rss_mb']} MB | < 512 MB | {mark(ok['rss'])} |",
        f"| longest reactor stall | {result['max_stall_ms']} ms | ≤ 100 ms | {mark(ok['stall'])} |",
        f"| well-behaved publishes accepted | {result['publishes_accepted']} of "
        f"{result['publishes_sent']} ({pub:.2%}) | ≥ 99% | {mark(ok['pub'])} |",
        f"| their events delivered to the 10 subscribers | {result['events_delivered']} of "
        f"{result['events_expected']} ({dlv:.2%}) | ≥ 99% | {mark(ok['dlv'])} |",
        "",
        "What the attackers got (HTTP status: count; connections cut by the server):",
        "",
        "```",
        json.dumps(atk, indent=1),
        "```",
        "",
        "Every 10 s (seconds, server RSS MB, peers, subscribers, longest stall in the window ms):",
        "",
        "```",
        "\n".join(str(s) for s in result["samples"]),
        "```",
        END,
    ]
    text = DOC.read_text() if DOC.exists() else ""
    block = "\n".join(lines)
    if START in text and END in text:
        text = text.split(START)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    log(f"wrote {DOC}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    try:
        os.sched_setaffinity(0, {1})
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="goop-soak-") as tmp:
        proc, port = start_server(tmp)
        log(f"server pid {proc.pid} on port {port}")
        out: dict[str, Any] = {}

        def done(result: Any) -> None:
            out.update(result)
            reactor.stop()

        def failed(f: Any) -> None:
            log(f"failed: {f.getTraceback()}")
            reactor.stop()

        reactor.callWhenRunning(
            lambda: soak(port, proc.pid, args.seconds).addCallbacks(done, failed)
        )
        reactor.run()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not out:
        return 1
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1))
    if not args.no_write:
        write_doc(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
