"""The benchmark's load generator: SSE subscribers and keep-alive publishers.

Two roles, each run as its own process pinned to the generator's core by
``bench/run.py`` and driven through one-line commands on stdin (answers are
one JSON line each on stdout):

``subscribe``
    Opens K ``GET /events`` streams on raw non-blocking sockets in one
    ``selectors`` (epoll) loop, undoes HTTP/1.1 chunking and parses the SSE
    stream incrementally. Prints ``{"ready": ...}`` once every stream has
    received the server's ``: ok``. Commands: ``go`` (start counting events
    and latencies), ``drain <json {peer: content}>`` (wait until every
    subscriber holds each peer's latest content, or nothing arrives for a
    while, then print the results), ``quit``.

``publish``
    Opens a few keep-alive HTTP/1.1 connections (requests may be pipelined),
    prints ``{"ready": ...}``, waits for ``start``, then POSTs presence
    messages at a target rate (or as fast as the server answers) for a fixed
    time, waits for the outstanding answers and prints the results, including
    the latest *accepted* content of every peer. Each peer is always sent on
    the same connection, so the server sees its messages in send order.

Steady-state mode (``--steady`` on both roles): the publisher first
registers every peer once (``--register``), then each peer heartbeats in
turn at the given rate with its content unchanged, except every
``--change-every``-th message, which carries a new content; subscribers (with
``--changes``: ``/events?changes=1``) count the bytes they receive and time
only the events that change a peer's content.

Every message's ``content`` is the send time in ``time.monotonic_ns()``
(CLOCK_MONOTONIC is shared by all processes on the machine), so a subscriber
measures end-to-end latency from publish send to receipt; a server that
coalesces for slow readers shows fewer deliveries, not errors.

Every loop is bounded in count and time; only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import resource
import select
import selectors
import socket
import sys
import time
from collections import deque
from typing import Any

LOOPBACK = "127.0.0.1"
# The server's canonical encoding puts type, peerId, content first (goop.message).
_FAST_EVENT = re.compile(
    rb'^data: \{"type":"[a-z]+","peerId":"((?:[^"\\]|\\.)*)","content":"((?:[^"\\]|\\.)*)"',
    re.MULTILINE,
)
# Latency percentiles use every event up to this many, else every n-th arrival.
MAX_LATENCY_SAMPLES = 3_000_000
# recv_into buffer of the subscriber process.
RECV_SIZE = 256 * 1024
# Distinct batch texts remembered by the fast parser.
MEMO_SIZE = 512


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def percentile(sorted_values: Any, q: float) -> float:
    if not len(sorted_values):
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[i])


# ---------------------------------------------------------------- subscribers


class StdinCommands:
    """The driver's one-line commands on stdin, read through a generator's epoll.

    ``attach`` registers stdin with the epoll (its fd 0 maps to None in the
    generator's fd table); the pump calls `read` when fd 0 is ready.
    """

    def __init__(self) -> None:
        self.queue: deque[str] = deque()
        self.closed = False
        self._buf = b""
        self._ep: Any = None
        self._byfd: dict[int, Any] = {}

    def attach(self, ep: Any, byfd: dict[int, Any]) -> None:
        self._ep, self._byfd = ep, byfd
        byfd[0] = None
        ep.register(0, select.EPOLLIN)

    def read(self) -> None:
        data = os.read(0, 1 << 20)
        if not data:
            self.closed = True
            self._byfd.pop(0, None)
            self._ep.unregister(0)
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.queue.append(line.decode().strip())


class ChunkDecoder:
    """Incremental HTTP/1.1 ``Transfer-Encoding: chunked`` body decoder."""

    __slots__ = ("ended", "left", "raw", "skip")

    def __init__(self) -> None:
        self.raw = b""
        self.left = 0  # bytes of the current chunk still to come
        self.skip = 0  # bytes of the CRLF after a chunk still to skip
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        n = len(raw)
        pos = 0
        out = []
        # Each round consumes at least one byte or breaks: bounded by len(raw).
        while pos < n:
            if self.left:
                take = min(self.left, n - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.skip = 2
                continue
            if self.skip:
                take = min(self.skip, n - pos)
                pos += take
                self.skip -= take
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 64:
                    raise ValueError("bad chunk header")
                break
            size = int(raw[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.ended = True
                pos = n
                break
            self.left = size
        self.raw = raw[pos:] if pos < n else b""
        return out[0] if len(out) == 1 else b"".join(out)


class Sub:
    __slots__ = ("chunks", "head", "idx", "parser", "sock", "state", "status", "tail")

    def __init__(self, idx: int, sock: socket.socket, parser: Any) -> None:
        self.idx = idx
        self.sock = sock
        self.head = b""  # response head until it is complete
        self.status = 0  # 0: connecting/head; 1: streaming, waiting for ": ok"; 2: ready
        self.chunks = ChunkDecoder()
        self.tail = b""  # SSE bytes after the last complete event
        self.parser = parser  # an SSEParser, or None for the fast parser
        self.state: dict[bytes, bytes] = {}  # peer -> latest content seen


class Subscribers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = select.epoll()
        self.byfd: dict[int, Sub | None] = {}  # None: stdin
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.subs: list[Sub] = []
        self.failed = 0
        self.closed = 0
        self.counting = False
        self.events = 0
        self.arrivals: list[tuple[int, list[int]]] = []  # (receive ns, send ns of its events)
        self.lat_max = 0
        self.memo: dict[bytes, tuple[list[tuple[bytes, bytes]], list[int], int]] = {}
        self.last_event_ns = 0
        self.go_ns = 0
        self.go_cpu = 0.0
        self.ports = [int(p) for p in str(args.port).split(",")]
        path = "/events?changes=1" if args.changes else "/events"
        self.requests = [
            (
                f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            ).encode()
            for port in self.ports
        ]
        self.bytes = 0  # stream bytes received while counting (chunk framing included)
        self.bytes_at_drain = 0
        self.drain_ns = 0
        self.change_lat: list[int] = []  # steady mode: latencies (ns) of content changes
        if args.parser == "sseparse":
            from goop.sseparse import SSEParser

            self.parser_factory: Any = SSEParser
        else:
            self.parser_factory = None
        self.commands = StdinCommands()

    # -- connecting ------------------------------------------------------

    def connect_all(self) -> None:
        a = self.args
        deadline = time.monotonic() + a.connect_timeout
        started = 0
        pending = 0
        ready = 0
        while ready + self.failed < a.k:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"subscribe: only {ready}/{a.k} streams ready after {a.connect_timeout}s"
                )
            while started < a.k and pending < a.connect_concurrency:
                self._open(started)
                started += 1
                pending += 1
            for fd, mask in self.ep.poll(0.05):
                sub = self.byfd.get(fd)
                if sub is None:
                    continue
                before = sub.status
                if mask & select.EPOLLOUT and sub.status == 0 and not sub.head:
                    self._send_request(sub)
                    continue
                self._read(sub)
                if before < 2 and (sub.status == 2 or sub.sock is None):
                    pending -= 1
                    if sub.status == 2:
                        ready += 1
        self.ready_count = ready
        if a.expect_peers:
            self._wait_snapshots(deadline)

    def _wait_snapshots(self, deadline: float) -> None:
        """Read until every stream holds ``expect_peers`` peers (the whole snapshot)."""
        want = self.args.expect_peers
        # Bounded by the connect deadline.
        while any(len(s.state) < want for s in self.subs if s.status == 2):
            if time.monotonic() > deadline:
                short = sum(1 for s in self.subs if s.status == 2 and len(s.state) < want)
                raise SystemExit(f"subscribe: {short} streams without the whole snapshot")
            self.pump(0.05)

    def _open(self, idx: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.args.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.args.rcvbuf)
        sub = Sub(idx, s, self.parser_factory() if self.parser_factory else None)
        self.subs.append(sub)
        err = s.connect_ex((LOOPBACK, self.ports[idx % len(self.ports)]))
        if err not in (0, errno.EINPROGRESS):
            self._fail(sub, f"connect: {os.strerror(err)}")
            return
        self.byfd[s.fileno()] = sub
        self.ep.register(s.fileno(), select.EPOLLOUT)

    def _send_request(self, sub: Sub) -> None:
        err = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(sub, f"connect: {os.strerror(err)}")
            return
        sub.sock.send(self.requests[sub.idx % len(self.requests)])  # tiny; fits the buffer
        sub.head = b" "  # marks "request sent"
        self.ep.modify(sub.sock.fileno(), select.EPOLLIN)

    def _fail(self, sub: Sub, why: str) -> None:
        if sub.sock is not None:
            fd = sub.sock.fileno()
            if self.byfd.pop(fd, None) is not None:
                self.ep.unregister(fd)
            sub.sock.close()
            sub.sock = None  # type: ignore[assignment]
        if sub.status == 2:
            self.closed += 1
        else:
            self.failed += 1
        if self.failed + self.closed <= 5:
            print(f"subscriber {sub.idx}: {why}", file=sys.stderr)

    # -- reading ---------------------------------------------------------

    def _read(self, sub: Sub) -> None:
        try:
            n = sub.sock.recv_into(self.rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(sub, f"recv: {e}")
            return
        data = self.rview[:n].tobytes()
        if self.counting:
            self.bytes += n
        if not n:
            self._fail(sub, "server closed the stream")
            return
        if sub.status == 0:
            head = sub.head[1:] + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                sub.head = b" " + head
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self._fail(sub, f"answer {head[:40]!r}")
                return
            if b"chunked" not in head[:end].lower():
                self._fail(sub, "stream is not chunked")
                return
            sub.status = 1
            data = head[end + 4 :]
            if not data:
                return
        try:
            body = sub.chunks.feed(data)
        except ValueError as e:
            self._fail(sub, str(e))
            return
        if sub.status == 1:
            text = sub.tail + body
            if b": ok\n\n" not in text:
                sub.tail = text
                return
            sub.status = 2
            sub.tail = b""
            body = text
        if sub.parser is None:
            self._parse_fast(sub, body)
        else:
            self._parse_reference(sub, body)

    def _parse_fast(self, sub: Sub, body: bytes) -> None:
        text = sub.tail + body if sub.tail else body
        cut = text.rfind(b"\n\n")
        if cut < 0:
            sub.tail = text
            return
        cut += 2
        if cut == len(text):
            sub.tail = b""
        else:
            sub.tail = text[cut:]
            text = text[:cut]
        # The server hands every caught-up subscriber the same bytes for a
        # batch: parse each distinct text once (exact match), reuse the result.
        parsed = self.memo.get(text)
        if parsed is None:
            pairs = _FAST_EVENT.findall(text)
            sends = [int(c) for _, c in pairs]
            parsed = (pairs, sends, min(sends) if sends else 0)
            if len(self.memo) >= MEMO_SIZE:
                self.memo.clear()
            self.memo[text] = parsed
        if parsed[0]:
            self._got(sub, parsed)

    def _parse_reference(self, sub: Sub, body: bytes) -> None:
        events = sub.parser.feed(body)
        if not events:
            return
        pairs = []
        for ev in events:
            msg = json.loads(ev.data)
            pairs.append((msg["peerId"].encode(), msg["content"].encode()))
        sends = [int(c) for _, c in pairs]
        self._got(sub, (pairs, sends, min(sends)))

    def _got(self, sub: Sub, parsed: tuple[list[tuple[bytes, bytes]], list[int], int]) -> None:
        pairs = parsed[0]
        if self.args.steady:
            self._got_steady(sub, pairs, parsed[1])
            return
        # In stream order, so the last pair of each peer is its newest state.
        sub.state.update(pairs)
        if not self.counting:
            return
        now = time.monotonic_ns()
        self.events += len(pairs)
        self.last_event_ns = now
        # Latencies are expanded after the cell (see `latencies`), not here.
        self.arrivals.append((now, parsed[1]))
        if now - parsed[2] > self.lat_max:
            self.lat_max = now - parsed[2]

    def _got_steady(self, sub: Sub, pairs: list[tuple[bytes, bytes]], sends: list[int]) -> None:
        # Only events that change a peer's content are timed: a heartbeat
        # repeats content sent long before, so its "latency" means nothing.
        st = sub.state
        if not self.counting:
            st.update(pairs)
            return
        now = time.monotonic_ns()
        self.events += len(pairs)
        self.last_event_ns = now
        lat = self.change_lat
        for (peer, content), sent in zip(pairs, sends, strict=True):
            if st.get(peer) != content:
                st[peer] = content
                if len(lat) < MAX_LATENCY_SAMPLES:
                    lat.append(now - sent)
                if now - sent > self.lat_max:
                    self.lat_max = now - sent

    def latencies(self) -> tuple[list[int], int]:
        """Sorted latencies (ns) of all counted events, or of every n-th arrival."""
        if self.args.steady:
            return sorted(self.change_lat), 1
        total = self.events
        stride = max(1, -(-total // MAX_LATENCY_SAMPLES))
        out: list[int] = []
        for now, sends in self.arrivals[::stride]:
            out.extend([now - s for s in sends])
        out.sort()
        return out, stride

    # -- commands --------------------------------------------------------

    def pump(self, timeout: float) -> None:
        byfd = self.byfd
        read = self._read
        for fd, _mask in self.ep.poll(timeout, 8192):
            sub = byfd.get(fd)
            if sub is not None:
                read(sub)
            elif fd == 0:
                self.commands.read()

    def serve(self) -> None:
        a = self.args
        self.commands.attach(self.ep, self.byfd)
        hard_deadline = time.monotonic() + a.max_lifetime
        while time.monotonic() < hard_deadline:
            while self.commands.queue:
                cmd = self.commands.queue.popleft()
                if cmd == "go":
                    self.counting = True
                    self.events = 0
                    self.arrivals = []
                    self.lat_max = 0
                    self.bytes = 0
                    self.change_lat = []
                    self.go_ns = time.monotonic_ns()
                    self.go_cpu = cpu_seconds()
                    emit({"go": True})
                elif cmd.startswith("drain "):
                    self.bytes_at_drain = self.bytes
                    self.drain_ns = time.monotonic_ns()
                    self.drain(json.loads(cmd[6:]))
                elif cmd == "quit":
                    return
            if self.commands.closed:
                return
            self.pump(0.1)
        print("subscribe: max lifetime reached", file=sys.stderr)

    def _missing(self, subs: list[Sub], final: list[tuple[bytes, bytes]]) -> list[Sub]:
        out = []
        for sub in subs:
            st = sub.state
            for peer, content in final:
                if st.get(peer) != content:
                    out.append(sub)
                    break
        return out

    def drain(self, final_json: dict[str, str]) -> None:
        a = self.args
        final = [(p.encode(), c.encode()) for p, c in final_json.items()]
        start = time.monotonic()
        waiting = [s for s in self.subs if s.status == 2]
        check_at = 0.0
        complete = False
        # Bounded by drain_max; stops early once all hold the latest state, or
        # when no event has arrived for drain_idle seconds.
        while True:
            now = time.monotonic()
            if now >= check_at:
                waiting = self._missing(waiting, final)
                check_at = now + 0.05
                if not waiting:
                    complete = True
                    break
            if now - start > a.drain_max:
                break
            last = self.last_event_ns / 1e9 if self.last_event_ns else start
            if now - max(last, start) > a.drain_idle:
                break
            self.pump(0.02)
        end_ns = time.monotonic_ns()
        cpu = cpu_seconds() - self.go_cpu
        held = 0
        for sub in self.subs:
            st = sub.state
            held += sum(1 for peer, content in final if st.get(peer) == content)
        pairs = len(self.subs) * len(final)
        lat, stride = self.latencies()
        last_ns = self.last_event_ns or end_ns
        window_ns = max(1, last_ns - self.go_ns)
        emit(
            {
                "events": self.events,
                "window_s": window_ns / 1e9,
                "events_per_s": self.events / (window_ns / 1e9),
                "latest_ratio": held / pairs if pairs else float("nan"),
                "complete": complete,
                "subs_missing": len(waiting) if not complete else 0,
                "lat_p50_ms": percentile(lat, 0.50) / 1e6,
                "lat_p99_ms": percentile(lat, 0.99) / 1e6,
                "lat_max_ms": self.lat_max / 1e6 if lat else float("nan"),
                "lat_samples": len(lat),
                "lat_stride": stride,
                "bytes": self.bytes,
                "bytes_at_drain": self.bytes_at_drain,
                "go_to_drain_s": (self.drain_ns - self.go_ns) / 1e9,
                "closed": self.closed,
                "failed": self.failed,
                "cpu_s": cpu,
                "drain_s": time.monotonic() - start,
            }
        )


def run_subscribe(args: argparse.Namespace) -> None:
    raise_nofile()
    subs = Subscribers(args)
    t = time.monotonic()
    subs.connect_all()
    emit(
        {
            "ready": subs.ready_count,
            "failed": subs.failed,
            "connect_s": round(time.monotonic() - t, 3),
        }
    )
    subs.serve()


# ---------------------------------------------------------------- publishers


class PubConn:
    __slots__ = ("buf", "inflight", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""  # unparsed response bytes
        self.out = b""  # request bytes not yet written
        self.inflight: deque[tuple[bytes, bytes]] = deque()  # (peer, content) in order


class Publishers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.conns: list[PubConn] = []
        self.peers = [f"{args.peer_prefix}{i:04d}".encode() for i in range(args.peers)]
        self.head = (
            f"POST /publish HTTP/1.1\r\nHost: {LOOPBACK}:{args.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.sent = 0
        self.accepted = 0
        self.errors: dict[str, int] = {}
        self.latest: dict[bytes, bytes] = {}
        self.late_max = 0.0  # seconds the schedule fell behind, at most
        self.kind = b"update"
        # Steady mode: each peer's current content (heartbeats repeat it).
        self.content: dict[bytes, bytes] = {}

    def connect(self) -> None:
        for _ in range(self.args.conns):
            s = socket.create_connection((LOOPBACK, self.args.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c = PubConn(s)
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)

    def _queue(self, seq: int) -> bool:
        """Queue message ``seq`` on its peer's connection; False if that one is full."""
        peer = self.peers[seq % len(self.peers)]
        conn = self.conns[(seq % len(self.peers)) % len(self.conns)]
        if len(conn.inflight) >= self.args.depth:
            return False
        every = self.args.change_every
        if self.args.steady and peer in self.content and not (every and seq % every == every - 1):
            content = self.content[peer]  # a heartbeat: nothing changes
        else:
            content = str(time.monotonic_ns()).encode()
            self.content[peer] = content
        body = b'{"type":"%s","peerId":"%s","content":"%s"}' % (self.kind, peer, content)
        conn.out += self.head + str(len(body)).encode() + b"\r\n\r\n" + body
        conn.inflight.append((peer, content))
        self.sent += 1
        return True

    def _flush(self, conn: PubConn) -> None:
        if not conn.out:
            return
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        conn.out = conn.out[n:]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self.sel.modify(conn.sock, want, conn)

    def _read(self, conn: PubConn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise SystemExit("publish: server closed a publishing connection")
        buf = conn.buf + data
        # Each round consumes one whole response or breaks: bounded by len(buf).
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            status = int(buf[9:12])
            stop = end + 4
            if b"transfer-encoding: chunked" in head:
                term = buf.find(b"\r\n0\r\n\r\n", end)
                if term < 0:
                    break
                stop = term + 7
            else:
                m = re.search(rb"content-length: *(\d+)", head)
                if m:
                    stop += int(m.group(1))
                    if stop > len(buf):
                        break
            buf = buf[stop:]
            peer, content = conn.inflight.popleft()
            if status == 204:
                self.accepted += 1
                self.latest[peer] = content
            else:
                self.errors[str(status)] = self.errors.get(str(status), 0) + 1
        conn.buf = buf

    def register(self) -> None:
        """Steady mode: every peer publishes once ("online"), as fast as answered."""
        self.kind = b"online"
        res = self.run(0.0, self.args.max_lifetime / 2, len(self.peers), depth=16)
        if res["accepted"] != len(self.peers):
            raise SystemExit(f"publish: registering peers failed: {res}")
        self.kind = b"update"
        self.sent = self.accepted = 0
        self.latest = {}
        self.late_max = 0.0

    def run(
        self,
        rate: float | None = None,
        seconds: float | None = None,
        max_msgs: int | None = None,
        depth: int | None = None,
    ) -> dict[str, Any]:
        a = self.args
        rate = a.rate if rate is None else rate
        seconds = a.seconds if seconds is None else seconds
        max_msgs = a.max_msgs if max_msgs is None else max_msgs
        saved_depth = a.depth
        if depth is not None:
            a.depth = depth
        try:
            return self._run(rate, seconds, max_msgs)
        finally:
            a.depth = saved_depth

    def _pump(self, timeout: float) -> None:
        """Send what is queued, then handle what the sockets say within ``timeout``."""
        for conn in self.conns:
            if conn.out:
                self._flush(conn)
        for key, mask in self.sel.select(timeout):
            conn = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ:
                self._read(conn)

    def _run(self, rate: float, seconds: float, max_msgs: int) -> dict[str, Any]:
        a = self.args
        cpu0 = cpu_seconds()
        t0 = time.monotonic()
        deadline = t0 + seconds
        seq = 0
        # Bounded by the deadline and by max_msgs.
        while True:
            now = time.monotonic()
            if now >= deadline or seq >= max_msgs:
                break
            if rate > 0:
                due = min(max_msgs, int((now - t0) * rate) + 1)
                while seq < due and self._queue(seq):
                    seq += 1
                if seq < due:
                    self.late_max = max(self.late_max, now - (t0 + seq / rate))
                    timeout = 0.001
                else:
                    timeout = max(0.0, min(deadline, t0 + seq / rate) - time.monotonic())
            else:
                while seq < max_msgs and self._queue(seq):
                    seq += 1
                timeout = 0.05
            self._pump(timeout)
        send_end = time.monotonic()
        # Collect the answers still due, bounded in time.
        wait_until = send_end + a.answer_timeout
        while any(c.inflight for c in self.conns) and time.monotonic() < wait_until:
            self._pump(0.05)
        end = time.monotonic()
        unanswered = sum(len(c.inflight) for c in self.conns)
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "errors": self.errors,
            "unanswered": unanswered,
            "send_s": send_end - t0,
            "answers_s": end - t0,
            "late_max_s": round(self.late_max, 4),
            "cpu_s": cpu_seconds() - cpu0,
            "latest": {p.decode(): c.decode() for p, c in self.latest.items()},
        }


def run_publish(args: argparse.Namespace) -> None:
    pubs = Publishers(args)
    pubs.connect()
    registered = 0.0
    if args.register:
        t = time.monotonic()
        pubs.register()
        registered = time.monotonic() - t
    emit({"ready": len(pubs.conns), "register_s": round(registered, 3)})
    # Wait (bounded) for the start command.
    line = ""
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    if sel.select(args.max_lifetime):
        line = sys.stdin.readline().strip()
    if line != "start":
        return
    emit(pubs.run())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("--port", required=True, help="port, or ports a,b,c (stream i on port i %% n)")
    s.add_argument("--changes", action="store_true", help="subscribe to /events?changes=1")
    s.add_argument("--steady", action="store_true", help="time only content changes")
    s.add_argument("--expect-peers", type=int, default=0, help="ready once snapshots hold this")
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--parser", choices=("fast", "sseparse"), default="fast")
    s.add_argument("--connect-concurrency", type=int, default=64)
    s.add_argument("--connect-timeout", type=float, default=60.0)
    s.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF (0: kernel default)")
    s.add_argument("--drain-max", type=float, default=10.0)
    s.add_argument("--drain-idle", type=float, default=2.0)
    s.add_argument("--max-lifetime", type=float, default=600.0)
    u = sub.add_parser("publish")
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--rate", type=float, default=0.0, help="msg/s; 0 = as fast as possible")
    u.add_argument("--seconds", type=float, default=10.0)
    u.add_argument("--peers", type=int, default=100)
    u.add_argument("--peer-prefix", default="bench-peer-")
    u.add_argument("--conns", type=int, default=4)
    u.add_argument("--depth", type=int, default=4, help="requests in flight per connection")
    u.add_argument("--max-msgs", type=int, default=2_000_000)
    u.add_argument("--answer-timeout", type=float, default=10.0)
    u.add_argument("--max-lifetime", type=float, default=600.0)
    u.add_argument("--steady", action="store_true", help="heartbeats repeat each peer's content")
    u.add_argument("--change-every", type=int, default=0, help="steady: every n-th is a change")
    u.add_argument("--register", action="store_true", help="publish every peer once first")
    args = p.parse_args(argv)
    if args.role == "subscribe":
        run_subscribe(args)
    else:
        run_publish(args)


if __name__ == "__main__":
    main()
