"""``/ws``: goop2's WebSocket presence channel, on the rendezvous port (TLS included).

One socket per peer (``/ws?peer_id=<id>``), Autobahn for the protocol
(handshake, framing, masking, UTF-8 checks, pings, close codes). What goes
over it (GOOP2-PROTOCOL.md §4, and what goop does differently):

- ``?probe=1``: upgrade, close 1000 ``probe-ok``. No other checks (goop2 peers
  probe every 10 s while on SSE to learn that /ws exists).
- No ``peer_id``: 400. A peer not registered: 425 until it has published.
  Past the per-address or global socket cap: 429 with Retry-After.
- On open, the same snapshot an ``/events`` stream gets (goop2 sends nothing;
  its peers ignore nothing), then every broadcast as a text frame, own echo
  included; ``?changes=1`` skips heartbeats that change nothing, as on SSE.
- Every incoming text frame is a publish, validated as ``/publish`` does;
  a frame for another peer ID, a bad one, or one past the per-socket rate is
  skipped (counted; logged once per socket per minute), the socket stays open.
  A message over 64 KiB closes the socket with 1009.
- A second socket for the same peer replaces the first, without the offline
  goop2 emits for the old one.
- The server keeps a goop2 client's 15 s read deadline from running out
  with empty control frames. A socket that has said nothing for `QUIET`
  seconds is pinged every 5 s (its pong proves it alive). One that talks (a
  goop2 peer heartbeats every 5 s, which proves it alive already) gets an
  unsolicited pong (RFC 6455 §5.5.3) every 10 s instead, which needs no
  answer: a pong back would be one more frame for the server to read, and
  at 10,000 peers each of these tiny sends costs more than the heartbeat it
  sits beside. A socket silent for 15 s is dropped. When a socket ends
  while its peer is still registered, everyone gets that peer's offline at
  once (kill -9 of a peer is seen within a second, not after the TTL).

Heartbeats and pongs are read by `goop.wsframe.simple_frames`, not by
Autobahn's general frame machine (four times its cost per heartbeat); any
other frame, and everything after it in the same read, goes to Autobahn.

Back-pressure is the SSE subscriber's (`goop.rendezvous.fanout.Subscriber`):
a socket that stops draining is paused, keeps each peer's latest state, and
is cut off when paused too long; frames are encoded once per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import create_transport_details
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from goop.logsafe import safe
from goop.message import (
    MAX_BODY_BYTES,
    MessageError,
    Origin,
    PresenceMessage,
    parse_message,
    signed_ts,
)
from goop.rendezvous.board import Board, Refused
from goop.rendezvous.eventlog import Event
from goop.rendezvous.fanout import WS, Hub, Subscriber, idle_tcp, no_delay, plain_tcp, send_now
from goop.rendezvous.http import error_json, wrong_method
from goop.rendezvous.metrics import PublishOutcomes
from goop.rendezvous.signatures import SignatureRefused
from goop.wsframe import PING_FRAME, PONG_FRAME, TEXT, simple_frames, text_frame

# Autobahn logs every frame and ping at debug level, and twistd writes debug
# lines: one line per heartbeat per peer. Its warnings and errors still show.
txaio.set_global_log_level("warn")  # type: ignore[attr-defined]

PING_INTERVAL: Final = 5.0
# A socket that sends nothing (no frame, no pong) for this long is dropped.
READ_DEADLINE: Final = 15.0
# Silent this long, a socket is pinged rather than sent a pong. Over
# PING_INTERVAL, so a peer heartbeating every 5 s is never pinged; the first
# ping still leaves it at least READ_DEADLINE - QUIET - PING_INTERVAL = 4 s
# to answer.
QUIET: Final = 6.0
# A talking socket gets an unsolicited pong once this long has passed since
# the last control frame it was sent: the sweep visits it every 5 s, so that
# is every second visit (10 s), leaving 5 s of a goop2 client's 15 s read
# deadline for the frame to arrive.
KEEPALIVE_AFTER: Final = 9.0
# The sweep that pings and checks deadlines runs this often, visiting one of
# PING_BUCKETS groups of sockets each time (so each socket every PING_INTERVAL).
SWEEP_EVERY: Final = 0.2
PING_BUCKETS: Final = round(PING_INTERVAL / SWEEP_EVERY)
HANDSHAKE_TIMEOUT: Final = 5.0
# Per-socket publish rate: a burst of BURST, then REFILL_PER_SECOND (a goop2
# peer sends one update per 5 s, plus an online and the odd address change).
BURST: Final = 20
REFILL_PER_SECOND: Final = 1.0
WARN_EVERY: Final = 60.0
RETRY_AFTER: Final = 10

Submit = Callable[[PresenceMessage, int, float, str], "Deferred[None] | None"]


class _Context:
    """What the HTTP side learned before the upgrade, for the protocol it builds."""

    __slots__ = ("address", "changes_only", "peer_id", "probe")

    def __init__(self, address: str, peer_id: str, changes_only: bool, probe: bool) -> None:
        self.address = address
        self.peer_id = peer_id
        self.changes_only = changes_only
        self.probe = probe


class SocketSubscriber(Subscriber):
    """The fan-out side of one peer's socket: batches arrive as prepared text frames."""

    kind = WS

    __slots__ = ("socket",)

    def __init__(self, hub: Hub, socket: PresenceSocket, ctx: _Context) -> None:
        super().__init__(hub, None, ctx.address, ctx.changes_only, ctx.peer_id)
        self.socket = socket

    def _write(self, data: bytes) -> None:
        transport = self.socket.transport
        if transport is not None and data:
            transport.write(data)

    def deliver(self, data: bytes, chunk: bytes, latest: Callable[[], dict[str, Event]]) -> None:
        if self.pending is None:
            self._write(data)
        else:
            self.coalesce(latest)

    def write(self, data: bytes) -> None:
        if not self.paused:
            self._write(data)

    def ping(self) -> None:
        pass  # the channel's sweep pings sockets (see WebSocketChannel._sweep)

    def one_frame(self, data: bytes) -> bytes:
        return text_frame(data)

    def write_events(self, events: list[Event], preface: bytes = b"", tail: bytes = b"") -> None:
        self._write(preface + b"".join(e.ws_frame for e in events) + tail)

    def frame_size(self, event: Event) -> int:
        return len(event.ws_frame)

    def _abort(self) -> None:
        transport: Any = self.socket.transport
        if transport is not None:
            transport.abortConnection()

    def close(self) -> None:
        self._hub.remove(self)
        # Autobahn lets an application close with 1000 or 3000-4999 only.
        self.socket.sendClose(1000, "server shutting down")


class PresenceSocket(WebSocketServerProtocol):
    """One peer's /ws connection."""

    def __init__(self, channel: WebSocketChannel, ctx: _Context) -> None:
        super().__init__()
        self.channel = channel
        self.ctx = ctx
        self.subscriber: SocketSubscriber | None = None
        self.replaced = False
        self.invalid = 0  # frames skipped (bad, for another peer, or over the rate)
        self.last_warned = float("-inf")
        self.tokens = float(BURST)
        self.refilled = channel.reactor.seconds()
        self.lost: Deferred[None] = Deferred()
        self.heard = self.refilled  # last frame or pong from the peer
        self.bucket = channel.next_bucket()
        self.direct: Any = None  # the plain TCP transport the sweep writes to, if any
        self.told = float("-inf")  # when the sweep last sent this socket a ping or pong

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        # Autobahn leaves its handshake deadlines pending after the connection
        # is gone; they would only fire into a dead socket.
        for name in ("closeHandshakeTimeoutCall", "openHandshakeTimeoutCall"):
            call = getattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self.channel.connections.discard(self)
        if not self.lost.called:
            self.lost.callback(None)

    def connectionMade(self) -> None:
        # The HTTP channel that handed us this connection is still its
        # producer; from now on the socket's subscriber is (see opened()).
        transport: Any = self.transport
        transport.unregisterProducer()
        if not ISSLTransport.providedBy(self.transport):
            super().connectionMade()
            return
        # Over TLS, Autobahn's connectionMade computes a "tls-unique" channel
        # binding and asserts that the handle is a pyOpenSSL Connection; txsni's
        # SNI map hands out a proxy, so it fails. Nothing here uses the channel
        # binding (it is for WAMP authentication): describe the TCP connection
        # underneath and carry on as Autobahn's own method does. (Marked secure,
        # Autobahn would try the same binding again when the socket opens.)
        details = create_transport_details(transport.transport, True)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self._transport_details = details
        self.peer = details.peer
        no_delay(transport)
        self._connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own reader takes ~4x as long over a heartbeat (and its
        # dataReceived builds debug-log arguments for every read); the frames it
        # alone can judge, and all that follow them in this read, still go to it.
        if (
            self.state == WebSocketServerProtocol.STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message
        ):
            frames, used = simple_frames(data, MAX_BODY_BYTES)
            if frames:
                self.heard = self.channel.reactor.seconds()
                for opcode, payload in frames:
                    if opcode == TEXT:
                        self.channel.received(self, payload, False)
                if used == len(data) or self.state != WebSocketServerProtocol.STATE_OPEN:
                    return
                data = data[used:]
        self._dataReceived(data)

    def onConnect(self, request: Any) -> tuple[None, dict[str, str]]:
        # Says, as /events does, whether this socket skips no-op heartbeats.
        return None, {"X-Goop-Changes": "1" if self.ctx.changes_only else "available"}

    def onOpen(self) -> None:
        if self.ctx.probe:
            self.sendClose(1000, "probe-ok")
            return
        self.channel.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.heard = self.channel.reactor.seconds()
        self.channel.received(self, payload, isBinary)

    def onPong(self, payload: bytes) -> None:
        self.heard = self.channel.reactor.seconds()

    def onPing(self, payload: bytes) -> None:
        self.heard = self.channel.reactor.seconds()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.channel.closed(self)

    def take_token(self, now: float) -> bool:
        self.tokens = min(BURST, self.tokens + (now - self.refilled) * REFILL_PER_SECOND)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Timers:
    """Autobahn's timer hook (pings, handshake deadlines) on the injected reactor.

    Autobahn's default batches timers into shared buckets that outlive the
    sockets they served (a stopped server leaves them pending) and read the
    global reactor; plain delayed calls on our own clock do neither.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any) -> Any:
        return self._reactor.callLater(delay, func, *args)


class _Factory(WebSocketServerFactory):
    """Builds each socket with the context its HTTP request was checked with."""

    def __init__(self, channel: WebSocketChannel) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.channel = channel
        self.next_context: _Context | None = None
        self._batched_timer = _Timers(channel.reactor)
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxFramePayloadSize=MAX_BODY_BYTES,
            maxMessagePayloadSize=MAX_BODY_BYTES,
            # Pings and read deadlines are the channel's sweep, not Autobahn's
            # per-socket timers: two delayed calls per socket every 5 s were a
            # fifth of the server's CPU with 10,000 sockets (bench, py-spy).
            autoPingInterval=0,
            openHandshakeTimeout=HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=1,
            # Send the close frame (1009 for an oversized message, 1002 for a
            # protocol error) before hanging up, so the peer learns why.
            failByDrop=False,
        )

    def buildProtocol(self, addr: Any) -> PresenceSocket:
        ctx = self.next_context
        if ctx is None:  # only reached through WebSocketChannel.upgrade
            raise RuntimeError("a /ws socket was built without its request's context")
        proto = PresenceSocket(self.channel, ctx)
        proto.factory = self
        self.channel.connections.add(proto)
        return proto


class WebSocketChannel:
    """The ``/ws`` endpoint: HTTP checks, then the sockets and what they publish."""

    log = Logger()

    def __init__(
        self,
        board: Board,
        hub: Hub,
        reactor: IReactorTime,
        submit: Submit,
        address: Callable[[Any], str],
        cross_site: Callable[[Any], bytes | None] = lambda request: None,
    ) -> None:
        self.board = board
        self.hub = hub
        self.reactor = reactor
        self._submit = submit
        self.outcomes = PublishOutcomes()  # the app shares its own (web.py)
        self._address = address
        self._cross_site = cross_site
        self.sockets: dict[str, PresenceSocket] = {}  # the live socket of each peer
        self.connections: set[PresenceSocket] = set()  # every connection, probes included
        self.frames_accepted = 0
        self.frames_skipped = 0
        self._factory = _Factory(self)
        self._resource = WebSocketResource(self._factory)  # type: ignore[no-untyped-call]
        self._buckets: list[set[PresenceSocket]] = [set() for _ in range(PING_BUCKETS)]
        self._next_bucket = 0
        self._tick = 0
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self.dropped_silent = 0

    def next_bucket(self) -> int:
        self._next_bucket = (self._next_bucket + 1) % PING_BUCKETS
        return self._next_bucket

    def start(self) -> None:
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_EVERY, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()

    def _sweep(self) -> None:
        """Keep one group of open sockets alive (a ping to the quiet ones, a pong every
        other visit to the rest); drop the ones silent past the read deadline."""
        self._tick = (self._tick + 1) % PING_BUCKETS
        now = self.reactor.seconds()
        for sock in list(self._buckets[self._tick]):
            transport: Any = sock.transport
            if transport is None:
                continue
            silent = now - sock.heard
            if silent >= READ_DEADLINE:
                self.dropped_silent += 1
                self.log.info(
                    "/ws {peer_id}: nothing heard for {seconds:.0f}s; dropping the socket",
                    peer_id=safe(sock.ctx.peer_id),
                    seconds=silent,
                )
                transport.abortConnection()
                continue
            if silent >= QUIET:
                frame = PING_FRAME
            elif now - sock.told >= KEEPALIVE_AFTER:
                frame = PONG_FRAME
            else:
                continue
            sock.told = now
            t = sock.direct
            if t is not None and idle_tcp(t):
                send_now(t, frame)
            else:
                transport.write(frame)

    # -- HTTP side --------------------------------------------------------------

    def render(self, request: Any) -> Any:
        """GET /ws: refuse with an HTTP status, or hand the connection to Autobahn."""
        refused = wrong_method(request, "GET") or self._cross_site(request)
        if refused is not None:
            return refused
        args = request.args
        address = self._address(request)
        if args.get(b"probe", [b""])[0] in (b"1", b"true"):
            return self._upgrade(request, _Context(address, "", False, True))
        if not self.board.accepting:
            return error_json(request, 503, "server is shutting down")
        raw = args.get(b"peer_id", [b""])[0]
        try:
            peer_id = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return error_json(request, 400, "peer_id: not valid UTF-8")
        if not peer_id:
            return error_json(request, 400, "peer_id: required (/ws?peer_id=<your peer ID>)")
        why = self.hub.refusal(address, WS)
        if why is not None:
            request.setHeader(b"retry-after", str(RETRY_AFTER).encode())
            return error_json(request, 429, why)
        if peer_id not in self.board.registry:
            return error_json(request, 425, "unknown peer \u2014 publish first")
        changes_only = args.get(b"changes", [b""])[0] in (b"1", b"true")
        return self._upgrade(request, _Context(address, peer_id, changes_only, False))

    def _upgrade(self, request: Any, ctx: _Context) -> Any:
        self._factory.next_context = ctx
        try:
            return self._resource.render(request)  # type: ignore[no-untyped-call]
        finally:
            self._factory.next_context = None

    # -- sockets ----------------------------------------------------------------

    def opened(self, sock: PresenceSocket) -> None:
        ctx = sock.ctx
        entry = self.board.registry.get(ctx.peer_id)
        # Anyone can open /ws?peer_id=X. For a peer that signs, a socket speaks
        # for it (replaces its socket; its end is the peer's offline) only once
        # it has sent a message signed by it: until then it only listens.
        if entry is None or not signed_ts(entry.fields):
            self._claim(sock)
        sock.heard = self.reactor.seconds()
        self._buckets[sock.bucket].add(sock)
        sub = sock.subscriber = SocketSubscriber(self.hub, sock, ctx)
        sock.transport.registerProducer(sub, True)  # type: ignore[union-attr]
        no_delay(sock.transport)
        sock.direct = plain_tcp(sock.transport)
        self.hub.attach(sub, self.board.backlog(None, ctx.changes_only))
        # Hints this peer could not hear before its socket was up (goop2 posts
        # its online first), queued behind the snapshot it is owed.
        self.board.introduce(ctx.peer_id, self.reactor.seconds())

    def _claim(self, sock: PresenceSocket) -> None:
        """``sock`` is now its peer's socket: the newer one wins, the old one
        leaves without an offline."""
        old = self.sockets.get(sock.ctx.peer_id)
        if old is sock:
            return
        if old is not None:
            old.replaced = True
            if old.subscriber is not None:
                self.hub.remove(old.subscriber)
                old.subscriber = None
                self._buckets[old.bucket].discard(old)
            old.sendClose(1000, "replaced by a newer connection")
        self.sockets[sock.ctx.peer_id] = sock

    def received(self, sock: PresenceSocket, payload: bytes, is_binary: bool) -> None:
        if sock.ctx.probe or sock.subscriber is None:
            return
        now = self.reactor.seconds()
        if is_binary:
            self._skip(sock, now, "binary frame (presence frames are text)", 400)
            return
        if not sock.take_token(now):
            self._skip(sock, now, f"over the rate limit ({REFILL_PER_SECOND:g} per second)", 429)
            return
        peer_id = sock.ctx.peer_id
        try:
            message = parse_message(payload, int(now * 1000), Origin.CLIENT, peer_id, True)
        except MessageError as e:
            self._skip(sock, now, str(e), 400)
            return
        if message.peer_id != peer_id:
            self._skip(sock, now, "peerId differs from this socket's peer_id", 403)
            return
        try:
            stored = self._submit(message, len(payload), now, sock.ctx.address)
        except SignatureRefused as e:
            self._skip(sock, now, str(e), 403)
            return
        except Refused as e:
            self._skip(sock, now, str(e), e.status)
            return
        self.frames_accepted += 1
        self.outcomes.add("ws", 204)
        if self.sockets.get(peer_id) is not sock and message.sig:
            self._claim(sock)
        if stored is not None:
            stored.addErrback(
                lambda f: self._skip(sock, self.reactor.seconds(), f.getErrorMessage(), 503)
            )

    def _skip(self, sock: PresenceSocket, now: float, why: str, status: int) -> None:
        """A frame not taken; ``status`` is what the same message would get on POST."""
        self.outcomes.add("ws", status)
        sock.invalid += 1
        self.frames_skipped += 1
        if now - sock.last_warned >= WARN_EVERY:
            sock.last_warned = now
            self.log.warn(
                "/ws {peer_id}: skipped a frame ({why}); {count} skipped on this socket",
                peer_id=safe(sock.ctx.peer_id),
                why=why,
                count=sock.invalid,
            )

    def closed(self, sock: PresenceSocket) -> None:
        sub = sock.subscriber
        if sub is None:
            return  # a probe, or a handshake that never completed
        sock.subscriber = None
        self._buckets[sock.bucket].discard(sock)
        self.hub.remove(sub)
        peer_id = sock.ctx.peer_id
        if self.sockets.get(peer_id) is not sock:
            return  # replaced, or never its peer's (see opened): not the peer leaving
        del self.sockets[peer_id]
        if sock.replaced or not self.board.accepting:
            return
        d = self.board.server_offline(peer_id, "its /ws socket closed", self.reactor.seconds())
        if d is not None:
            d.addErrback(
                lambda f: self.log.warn(
                    "offline for {peer_id} (socket closed) not stored: {why}",
                    peer_id=safe(peer_id),
                    why=f.getErrorMessage(),
                )
            )

    def close_all(self, timeout: float = 2.0) -> Deferred[None]:
        """Close every socket (shutdown); fires when all are gone, aborting stragglers."""
        lost = []
        for sock in list(self.connections):
            sock.replaced = True  # shutting down is not the peer leaving
            if sock.subscriber is not None:
                sock.subscriber.close()
            elif sock.transport is not None:
                sock.transport.loseConnection()
            lost.append(sock.lost)
        done: Deferred[None] = gatherResults(lost).addCallback(lambda _: None)

        def abort(_: Any) -> None:
            for sock in list(self.connections):
                transport: Any = sock.transport
                if transport is not None:
                    transport.abortConnection()

        late = self.reactor.callLater(timeout, abort, None)

        def finished(_: object) -> None:
            if late.active():
                late.cancel()

        done.addBoth(finished)
        return done
