"""The benchmark's ``/ws`` load generator: N WebSocket peers in one epoll loop.

Run as one process pinned to the generator's core by ``bench/run.py`` and
driven through one-line commands on stdin (answers: one JSON line each on
stdout), like ``bench/loadgen.py``:

1. At start, registers every peer over HTTP (``POST /publish`` of an
   ``online``, pipelined on a few keep-alive connections, loadgen's
   publisher), closes those connections and prints ``{"registered": N}``.
2. ``open``: opens ``/ws?peer_id=ID&changes=1`` for every peer on raw
   non-blocking sockets, doing the RFC 6455 handshake itself (``101`` and
   ``Sec-WebSocket-Accept`` checked), a bounded number at a time (``--open``:
   each until its snapshot is in, or only until its handshake is), reads until
   every socket holds the server's snapshot (one text frame per registered
   peer), and prints ``{"open": n, ...}``.
3. ``go``: every peer sends its heartbeat, a masked text frame built once per
   peer (``{"type":"update","peerId":ID,"content":C}``, C being the content it
   registered with, so nothing changes), every ``--interval`` seconds, the
   peers staggered evenly over the interval. ``stop`` ends that. With
   ``--signed`` the peers have real Ed25519 identities and each heartbeat is
   built and signed when sent (with ``ts`` now), as a goop peer's is.
4. ``stats``: prints the counters (heartbeats written, pings seen, pongs sent,
   the server's unsolicited pongs seen,
   frames, sockets closed by the server, own CPU seconds). ``quit``.

Server frames are unmasked. The generator walks every frame header it
receives: it counts text frames (so ``open`` can wait until each socket holds
the whole snapshot), answers every ping with a masked pong echoing its
payload and counts the server's unsolicited pongs; any other frame than text,
ping, pong or close ends that socket.

Every loop is bounded in count and time; only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import os
import select
import socket
import sys
import time
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # the sibling module: emit, cpu_seconds, the HTTP publisher

LOOPBACK = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV_SIZE = 256 * 1024

# Socket states.
CONNECTING, HANDSHAKE, OPEN, CLOSED = 0, 1, 2, 3


def mask_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One FIN frame from the client: masked with ``key`` (4 bytes), as RFC 6455 demands."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


class Peer:
    __slots__ = (
        "accept",
        "frame",
        "head",
        "idx",
        "out",
        "peer_id",
        "sock",
        "state",
        "tail",
        "texts",
    )

    def __init__(self, idx: int, peer_id: bytes, frame: bytes) -> None:
        self.idx = idx
        self.peer_id = peer_id
        self.frame = frame  # the heartbeat, masked, built once
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.accept = b""  # the Sec-WebSocket-Accept the server must answer
        self.head = b""  # response head until complete
        self.tail = b""  # stream bytes not yet parsed (an incomplete frame)
        self.out = b""  # bytes the socket did not take yet
        self.texts = 0  # text frames received


class WsPeers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = select.epoll()
        self.byfd: dict[int, Peer | None] = {}  # None: stdin
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.peers: list[Peer] = []
        self.open_peers: list[Peer] = []
        self.failed = 0
        self.closed = 0  # sockets the server closed (or reset) after the handshake
        self.errors: dict[str, int] = {}
        self.bytes_in = 0
        self.pings = 0
        self.pongs = 0
        self.keepalives = 0
        self.heartbeats = 0
        self.hb_partial = 0  # heartbeats the socket did not take at once
        self.late_max = 0.0
        self.beating = False
        self.beat_t0 = 0.0
        self.beat_seq = 0
        self.commands = loadgen.StdinCommands()
        self.keys: list[Any] = []  # --signed: each peer's signing key
        self.contents: list[str] = []
        self.last_ts = [0] * args.n

    # -- registering --------------------------------------------------------------

    def register(self) -> float:
        """POST every peer's ``online`` over HTTP; returns seconds taken."""
        a = self.args
        ns = argparse.Namespace(
            port=a.port, peers=a.n, peer_prefix=a.prefix, conns=a.conns, depth=16,
            rate=0.0, seconds=a.max_lifetime, max_msgs=a.n, answer_timeout=30.0,
            max_lifetime=a.max_lifetime, steady=True, change_every=0,
        )  # fmt: skip
        pubs = loadgen.Publishers(ns)
        if a.signed:
            # Real identities: each peer's ID carries the key its heartbeats are
            # signed with (goop.signing), as a goop peer's does.
            self.keys = [_key(a.prefix, i) for i in range(a.n)]
            pubs.peers = [_peer_id(k).encode() for k in self.keys]
        pubs.connect()
        t = time.monotonic()
        pubs.register()
        took = time.monotonic() - t
        for c in pubs.conns:
            c.sock.close()
        key_src = os.urandom(4 * a.n)
        for i, peer_id in enumerate(pubs.peers):
            body = b'{"type":"update","peerId":"%s","content":"%s"}' % (
                peer_id,
                pubs.content[peer_id],
            )
            key = key_src[4 * i : 4 * i + 4]
            self.peers.append(Peer(i, peer_id, mask_frame(0x1, body, key)))
            self.contents.append(pubs.content[peer_id].decode())
        return took

    def _signed_frame(self, peer: Peer) -> bytes:
        """A fresh heartbeat signed by ``peer``'s key: its ts is now (the server's
        replay rule refuses a ts it has seen), so it is built and signed per send."""
        from goop.message import PresenceMessage
        from goop.signing import sign

        ts = max(int(time.time() * 1000), self.last_ts[peer.idx] + 1)
        self.last_ts[peer.idx] = ts
        message = PresenceMessage("update", peer.peer_id.decode(), self.contents[peer.idx], ts=ts)
        message = replace(message, sig=sign(self.keys[peer.idx], message))
        return mask_frame(0x1, message.encode(), os.urandom(4))

    # -- opening ------------------------------------------------------------------

    def open_all(self) -> dict[str, Any]:
        """Open every peer's socket, at most ``connect_concurrency`` at a time: in
        ``paced`` mode a socket holds its slot until its whole snapshot is in (peers
        arriving over time), in ``storm`` mode only until its handshake is done (a
        reconnect storm: every snapshot owed at once)."""
        a = self.args
        t0 = time.monotonic()
        deadline = t0 + a.connect_timeout
        n = want = len(self.peers)
        hold = a.open == "paced"
        started = 0
        inflight: set[Peer] = set()
        report_at = t0 + a.progress_s if a.progress_s else float("inf")
        while started < n or inflight:
            now = time.monotonic()
            if now >= report_at:
                report_at = now + a.progress_s
                print(
                    f"wsload: {now - t0:.0f}s: {len(self.open_peers)}/{n} open, "
                    f"{self.failed} failed, {self.closed} closed, "
                    f"{self.bytes_in / 1e6:.0f} MB read, {self.pings} pings, "
                    f"cpu {loadgen.cpu_seconds():.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
            if now > deadline:
                raise SystemExit(
                    f"wsload: only {len(self.open_peers)}/{n} sockets open after "
                    f"{a.connect_timeout}s"
                )
            while started < n and len(inflight) < a.connect_concurrency:
                peer = self.peers[started]
                started += 1
                self._connect(peer)
                inflight.add(peer)
            for fd, mask in self.ep.poll(0.05, 4096):
                peer = self.byfd.get(fd)
                if peer is None:
                    continue
                if mask & select.EPOLLOUT and peer.state == CONNECTING:
                    self._send_handshake(peer)
                elif mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    self._read(peer)
                if mask & select.EPOLLOUT and peer.state == OPEN and peer.out:
                    self._flush(peer)
            done = [
                p
                for p in inflight
                if p.state == CLOSED or (p.state == OPEN and (not hold or p.texts >= want))
            ]
            inflight.difference_update(done)
        handshakes_s = time.monotonic() - t0
        # Read the snapshots (bounded) until every socket holds one text frame
        # per registered peer.
        short = list(self.open_peers)
        while time.monotonic() < deadline:
            self.pump(0.05)
            now = time.monotonic()
            if now >= report_at:
                report_at = now + a.progress_s
                print(
                    f"wsload: {now - t0:.0f}s: snapshots: {self.bytes_in / 1e6:.0f} MB read, "
                    f"{len(short)} sockets short, cpu {loadgen.cpu_seconds():.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
            short = [p for p in short if p.texts < want and p.state == OPEN]
            if not short:
                break
        if short:
            raise SystemExit(f"wsload: {len(short)} sockets without the whole snapshot in time")
        out: dict[str, Any] = {
            "open": len(self.open_peers),
            "failed": self.failed,
            "closed": self.closed,
            "errors": self.errors,
            "handshakes_s": round(handshakes_s, 2),
            "open_s": round(time.monotonic() - t0, 2),
            "bytes_in": self.bytes_in,
            "pings": self.pings,
            "texts_min": min((p.texts for p in self.open_peers), default=0),
            "texts_max": max((p.texts for p in self.open_peers), default=0),
        }
        return out

    def _connect(self, peer: Peer) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.sock = s
        err = s.connect_ex((LOOPBACK, self.args.port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(peer, f"connect: {os.strerror(err)}")
            return
        self.byfd[s.fileno()] = peer
        self.ep.register(s.fileno(), select.EPOLLOUT)

    def _send_handshake(self, peer: Peer) -> None:
        assert peer.sock is not None
        err = peer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(peer, f"connect: {os.strerror(err)}")
            return
        key = base64.b64encode(os.urandom(16))
        peer.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        req = (
            b"GET /ws?peer_id=%s&changes=1 HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ) % (peer.peer_id, LOOPBACK.encode(), self.args.port, key)
        try:
            peer.sock.send(req)  # tiny; fits the empty send buffer
        except OSError as e:
            self._fail(peer, f"connect: {e}")
            return
        peer.state = HANDSHAKE
        self.ep.modify(peer.sock.fileno(), select.EPOLLIN)

    def _fail(self, peer: Peer, why: str) -> None:
        if peer.sock is not None:
            fd = peer.sock.fileno()
            if self.byfd.pop(fd, None) is not None:
                self.ep.unregister(fd)
            peer.sock.close()
            peer.sock = None
        if peer.state == OPEN:
            self.closed += 1
        else:
            self.failed += 1
        peer.state = CLOSED
        key = why.split(":", 1)[0][:40]
        self.errors[key] = self.errors.get(key, 0) + 1
        if self.failed + self.closed <= 5:
            print(f"wsload: peer {peer.idx}: {why}", file=sys.stderr)

    # -- reading ------------------------------------------------------------------

    def _read(self, peer: Peer) -> None:
        sock = peer.sock
        if sock is None:
            return
        try:
            n = sock.recv_into(self.rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(peer, f"recv: {e}")
            return
        if not n:
            self._fail(peer, "server closed the socket")
            return
        self.bytes_in += n
        data = self.rview[:n].tobytes()
        if peer.state == HANDSHAKE:
            head = peer.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > 8192:
                    self._fail(peer, "handshake: answer head too long")
                else:
                    peer.head = head
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(peer, f"handshake: answer {head[:12].decode('latin-1')!r}")
                return
            lines = head[:end].split(b"\r\n")[1:]
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in lines)
            }
            if fields.get(b"sec-websocket-accept") != peer.accept:
                self._fail(peer, "handshake: wrong Sec-WebSocket-Accept")
                return
            peer.head = b""
            peer.state = OPEN
            self.open_peers.append(peer)
            data = head[end + 4 :]
            if not data:
                return
        self._frames(peer, data)

    def _frames(self, peer: Peer, data: bytes) -> None:
        buf = peer.tail + data if peer.tail else data
        n = len(buf)
        pos = 0
        texts = 0
        # Each round consumes one whole frame or ends: bounded by len(buf).
        while pos + 2 <= n:
            b0 = buf[pos]
            ln = buf[pos + 1]
            if ln < 126:
                start = pos + 2
            elif ln == 126:
                if pos + 4 > n:
                    break
                start = pos + 4
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
            elif ln == 127:
                if pos + 10 > n:
                    break
                start = pos + 10
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            else:  # mask bit set: servers never mask
                self._fail(peer, f"frame: masked server frame (0x{b0:02x} 0x{ln:02x})")
                return
            end = start + ln
            if end > n:
                break
            if b0 == 0x81:
                texts += 1
            elif b0 == 0x89:
                self._pong(peer, buf[start:end])
            elif b0 == 0x8A:
                self.keepalives += 1  # the server's unsolicited pong: no answer
            elif b0 == 0x88:
                pass  # the server closes the TCP connection next
            else:
                self._fail(peer, f"frame: unexpected first byte 0x{b0:02x}")
                return
            pos = end
        peer.texts += texts
        peer.tail = buf[pos:] if pos < n else b""

    def _pong(self, peer: Peer, payload: bytes) -> None:
        self.pings += 1
        self._send(peer, mask_frame(0xA, payload, os.urandom(4)))
        self.pongs += 1

    # -- writing ------------------------------------------------------------------

    def _send(self, peer: Peer, data: bytes) -> bool:
        """Write ``data`` (queued behind anything not yet taken); False if not all went now."""
        sock = peer.sock
        if sock is None:
            return False
        if peer.out:
            peer.out += data
            return False
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._fail(peer, f"send: {e}")
            return False
        if sent == len(data):
            return True
        peer.out = data[sent:]
        self.ep.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        return False

    def _flush(self, peer: Peer) -> None:
        sock = peer.sock
        if sock is None or not peer.out:
            return
        try:
            sent = sock.send(peer.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(peer, f"send: {e}")
            return
        peer.out = peer.out[sent:]
        if not peer.out:
            self.ep.modify(sock.fileno(), select.EPOLLIN)

    def _beat(self) -> float:
        """Send the heartbeats due by now; returns seconds until the next is due."""
        live = self.open_peers
        n = len(live)
        if not n:
            return 0.1
        gap = self.args.interval / n
        now = time.monotonic()
        due = int((now - self.beat_t0) / gap) + 1
        seq = self.beat_seq
        if due - seq > 1:
            self.late_max = max(self.late_max, now - (self.beat_t0 + seq * gap))
        # At most one interval's worth per call (a peer never sends twice at
        # once): bounded even after a long stall.
        seq = max(seq, due - n)
        while seq < due:
            peer = live[seq % n]
            seq += 1
            if peer.state != OPEN:
                continue
            self.heartbeats += 1
            frame = self._signed_frame(peer) if self.keys else peer.frame
            if not self._send(peer, frame):
                self.hb_partial += 1
        self.beat_seq = seq
        return max(0.0, self.beat_t0 + seq * gap - time.monotonic())

    # -- loop ---------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        byfd = self.byfd
        for fd, mask in self.ep.poll(timeout, 8192):
            peer = byfd.get(fd)
            if peer is None:
                if fd == 0:
                    self.commands.read()
                continue
            if mask & select.EPOLLOUT:
                self._flush(peer)
            if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                self._read(peer)

    def stats(self) -> dict[str, Any]:
        return {
            "open": sum(1 for p in self.open_peers if p.state == OPEN),
            "closed": self.closed,
            "heartbeats": self.heartbeats,
            "hb_partial": self.hb_partial,
            "pings": self.pings,
            "pongs": self.pongs,
            "keepalives": self.keepalives,
            "bytes_in": self.bytes_in,
            "texts": sum(p.texts for p in self.open_peers),
            "late_max_s": round(self.late_max, 4),
            "cpu_s": loadgen.cpu_seconds(),
            "t": time.monotonic(),
        }

    def serve(self) -> None:
        self.commands.attach(self.ep, self.byfd)
        hard_deadline = time.monotonic() + self.args.max_lifetime
        while time.monotonic() < hard_deadline:
            while self.commands.queue:
                cmd = self.commands.queue.popleft()
                if cmd == "open":
                    loadgen.emit(self.open_all())
                elif cmd == "go":
                    self.beating = True
                    self.beat_t0 = time.monotonic()
                    self.beat_seq = 0
                    loadgen.emit({"go": True})
                elif cmd == "stop":
                    self.beating = False
                    loadgen.emit({"stopped": True})
                elif cmd == "stats":
                    loadgen.emit(self.stats())
                elif cmd == "quit":
                    return
            if self.commands.closed:
                return
            timeout = 0.1
            if self.beating:
                timeout = min(timeout, self._beat())
            self.pump(timeout)
        print("wsload: max lifetime reached", file=sys.stderr)


def _key(prefix: str, i: int) -> Any:
    from nacl.signing import SigningKey

    return SigningKey(hashlib.sha256(f"{prefix}{i}".encode()).digest())


def _peer_id(key: Any) -> str:
    from goop.identity import peer_id_from_public_key

    return peer_id_from_public_key(bytes(key.verify_key))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="peers, one socket each")
    p.add_argument("--prefix", default="ws-peer-", help="peer IDs are PREFIX0000, ...")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats")
    p.add_argument(
        "--open",
        choices=("paced", "storm"),
        default="paced",
        help="paced: a socket's slot is free once its snapshot is in; "
        "storm: once its handshake is done",
    )
    p.add_argument("--conns", type=int, default=4, help="HTTP connections for registering")
    p.add_argument(
        "--connect-concurrency", type=int, default=64, help="handshakes in flight at most"
    )
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument("--max-lifetime", type=float, default=900.0)
    p.add_argument("--progress-s", type=float, default=10.0, help="open: progress to stderr")
    p.add_argument(
        "--signed", action="store_true", help="real peer IDs; every heartbeat signed (fresh ts)"
    )
    args = p.parse_args(argv)
    loadgen.raise_nofile()
    peers = WsPeers(args)
    took = peers.register()
    loadgen.emit({"registered": len(peers.peers), "register_s": round(took, 3)})
    peers.serve()


if __name__ == "__main__":
    main()
