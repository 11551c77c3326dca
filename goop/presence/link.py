"""One rendezvous as a peer uses it: publish there and hear everyone there, over /ws or /events.

goop2's peers (GOOP2-PROTOCOL.md §4) keep one WebSocket per rendezvous:
their heartbeats go up it as text frames and everyone's presence comes down
it, and the server says a peer is gone the moment its socket closes. A
server without ``/ws`` is read over ``/events`` (SSE) and published to by
POST. `RendezvousLink` chooses between the two and switches when things
change; it reuses the POST channel (`RendezvousChannel`) and the SSE
consumer (`EventStreamConsumer`) rather than repeating them.

1. Start: nothing is dialled until the first ``POST /publish`` has an
   outcome (a goop2 server answers 425 to a /ws of a peer it does not know).
2. Dial ``/ws?peer_id=<id>&changes=1``. Open: frames feed the table, and
   `send` writes presence as frames (POST while no socket is open).
3. 425: redial as soon as a POST succeeds, or after a short backoff. The
   `MAX_DIAL_FAILURES`-th 425 in a row while POSTs fail: SSE (we can
   still listen to a server that will not take our publishes).
4. Any other HTTP answer (404, 400, 403, 501, ...): SSE + POST, and a probe
   of ``/ws?probe=1`` after `PROBE_FIRST` s, then every `PROBE_EVERY` s.
   A probe that upgrades leads to a dial while SSE keeps running; SSE
   stops only when the socket is open, so nothing is missed in between.
5. A dial failing without an HTTP answer (refused, TLS, timeout) is
   retried with capped backoff; after `MAX_DIAL_FAILURES` in a row while
   POSTs work (a proxy that breaks upgrades), SSE + probe as in 4.
6. An open socket that ends: our presence is POSTed again at once (the
   server dropped us when the socket closed), and the socket is redialled
   with capped backoff (reset when the socket had lasted `STABLE` s).

Exactly one of SSE and WS feeds the table at a time: every callback checks
that it comes from the current stream, so a late event of a stream being
torn down is dropped. Both report departures themselves, so while either
is up the table is told the source is *managed* (peers heard there leave
on the server's offline, not on our TTL); a goop server's /ws skips no-op
heartbeats (``changes=1``) and so must be managed, and a goop2 server sends
offline on every socket close and expiry.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import quote

from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goop.backoff import Backoff
from goop.message import MessageError, Origin, PresenceMessage, parse_message
from goop.presence.consumer import OnManaged, OnMessage, deliver
from goop.presence.publisher import REQUEST_TIMEOUT
from goop.presence.tlsclient import describe_failure
from goop.presence.wsclient import Connector, HandshakeRefused, Socket, ws_url

HANDSHAKE_TIMEOUT: Final = 5.0  # goop2's
PROBE_TIMEOUT: Final = 2.0  # goop2's
PROBE_FIRST: Final = 3.0
PROBE_EVERY: Final = 10.0
# Dials failing without an HTTP answer while POSTs work, or answered 425 while
# POSTs fail, before /events takes over.
MAX_DIAL_FAILURES: Final = 3
STABLE: Final = 10.0
TOO_EARLY: Final = 425

# Builds a fresh SSE consumer feeding (on_message, on_managed, on_punch).
SseFactory = Callable[[OnMessage, OnManaged, OnMessage], IService]


class Poster(Protocol):
    """The POST side of a rendezvous (`goop.presence.publisher.RendezvousChannel`)."""

    name: str

    @property
    def url(self) -> str: ...

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]: ...


class LinkChannel:
    """The publisher's `Channel` for a link: frames while its socket is open, else POST."""

    def __init__(self, link: RendezvousLink) -> None:
        self.name = link.post.name
        self._link = link

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
        return self._link.send(message, timeout)


class _Attempt:
    """One dial; its callbacks count only while it is the link's current one."""

    def __init__(self, link: RendezvousLink) -> None:
        self.link = link
        self.deferred: Deferred[Socket] | None = None

    def frame(self, payload: bytes) -> None:
        self.link._frame(self, payload)

    def closed(self, why: str) -> None:
        self.link._socket_closed(self, why)


def _ignore_frame(payload: bytes) -> None:
    pass


def _ignore_close(why: str) -> None:
    pass


class RendezvousLink(Service):
    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        post: Poster,
        self_id: str,
        connector: Connector,
        make_sse: SseFactory,
        on_message: OnMessage,
        on_managed: OnManaged,
        on_punch: OnMessage | None = None,
        rng: random.Random | None = None,
        probe_first: float = PROBE_FIRST,
        probe_every: float = PROBE_EVERY,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.post = post
        self.self_id = self_id
        self.connector = connector
        self._make_sse = make_sse
        self._on_message = on_message
        self._on_managed = on_managed
        self._on_punch = on_punch
        self.backoff = Backoff(0.25, 4.0, rng=rng)
        self.probe_first = probe_first
        self.probe_every = probe_every
        self.handshake_timeout = handshake_timeout
        self.probe_timeout = probe_timeout
        self.channel = LinkChannel(self)
        self._socket: Socket | None = None
        self._live: _Attempt | None = None  # the attempt whose socket is open
        self._attempt: _Attempt | None = None  # a dial in flight
        self._probing: Deferred[Socket] | None = None
        self._sse: IService | None = None
        self._sse_managed = False
        self._timer: IDelayedCall | None = None
        self._redial_on_publish = False  # the last dial got 425
        self._posts_work: bool | None = None  # outcome of the last POST (None: none yet)
        self._last: PresenceMessage | None = None
        self._opened_at = 0.0
        self._dial_failures = 0
        self._too_early = 0
        self._failing = False
        # Observable in tests and by an operator's debugger.
        self.frames_sent = 0
        self.posts_sent = 0
        self.frames_received = 0
        self.bad_frames = 0
        self.sockets_opened = 0
        self.probes = 0

    @property
    def url(self) -> str:
        return self.post.url

    @property
    def state(self) -> str:
        """``ws``, ``sse``, ``dialing``, ``waiting`` (a timer), ``idle`` or ``stopped``."""
        if not self.running:
            return "stopped"
        if self._socket is not None:
            return "ws"
        if self._sse is not None:
            return "sse"
        if self._attempt is not None:
            return "dialing"
        return "waiting" if self._timer is not None else "idle"

    @property
    def connected(self) -> bool:
        """Whether presence is arriving from this rendezvous now."""
        if self._socket is not None:
            return True
        return self._sse is not None and bool(getattr(self._sse, "connected", False))

    @property
    def sse(self) -> IService | None:
        return self._sse

    # -- publishing ----------------------------------------------------------------

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
        """Over the open socket as a text frame, else by POST."""
        self._last = message
        sock = self._socket
        if sock is not None and sock.send(message.encode()):
            self.frames_sent += 1
            return succeed(None)
        self.posts_sent += 1
        d = self.post.send(message, timeout)
        d.addBoth(self._posted)
        return d

    def _posted(self, result: Any) -> Any:
        ok = not isinstance(result, Failure)
        self._posts_work = ok
        if not self.running or self._socket is not None or self._attempt is not None:
            return result
        if self._sse is None and self._timer is None:
            self._dial()  # the first POST has an outcome: now /ws
        elif ok and self._redial_on_publish and self._sse is None:
            self._dial()  # the server knows us now
        return result

    def _reannounce(self) -> None:
        last = self._last
        if last is None or last.type == "offline":
            return
        again = dataclasses.replace(last, type="update", ts=int(self.reactor.seconds() * 1000))
        try:
            d = self.send(again, REQUEST_TIMEOUT)
        except Exception:
            self.log.failure("re-announcing to {url} failed", url=self.url)
            return
        d.addErrback(lambda f: None)  # the publisher's heartbeats log failures

    # -- the socket ----------------------------------------------------------------

    def _dial(self) -> None:
        self._cancel_timer()
        self._redial_on_publish = False
        attempt = self._attempt = _Attempt(self)
        query = f"peer_id={quote(self.self_id, safe='')}&changes=1"
        d = self.connector.dial(
            ws_url(self.url, query), attempt.frame, attempt.closed, self.handshake_timeout
        )
        attempt.deferred = d
        d.addCallbacks(
            lambda sock: self._opened(attempt, sock), lambda f: self._dial_failed(attempt, f)
        )

    def _opened(self, attempt: _Attempt, sock: Socket) -> None:
        if attempt is not self._attempt or not self.running:
            sock.close()
            return
        self._attempt = None
        if self._sse is not None:
            self._leave_sse()
        self._socket = sock
        self._live = attempt
        now = self.reactor.seconds()
        self._opened_at = now
        self._dial_failures = 0
        self._too_early = 0
        self._failing = False
        self.sockets_opened += 1
        self._on_managed(True, now)
        self.log.info("subscribed to {url}/ws (WebSocket)", url=self.url)

    def _dial_failed(self, attempt: _Attempt, failure: Failure) -> None:
        if attempt is not self._attempt:
            return
        self._attempt = None
        if not self.running:
            return
        why = self._describe(failure, self.handshake_timeout)
        if self._sse is not None:
            self.log.info(
                "{url}/ws answered the probe but not us ({why}); staying on /events",
                url=self.url,
                why=why,
            )
            self._schedule_probe(self.probe_every)
            return
        refused = failure.value if isinstance(failure.value, HandshakeRefused) else None
        if refused is not None and refused.status == TOO_EARLY:
            self._too_early += 1
            if not self._posts_work and self._too_early >= MAX_DIAL_FAILURES:
                self._fall_back(f"/ws wants a publish first ({why}) and publishing fails")
                return
            self._redial_on_publish = True
            self._schedule_dial(self.backoff.next())
            return
        if refused is not None:
            self._fall_back(f"/ws answered {why}")
            return
        self._dial_failures += 1
        if not self._failing:
            self._failing = True
            self.log.warn(
                "cannot subscribe to {url}/ws ({why}); retrying with backoff",
                url=self.url,
                why=why,
            )
        if self._dial_failures >= MAX_DIAL_FAILURES and self._posts_work:
            self._fall_back(f"{self._dial_failures} WebSocket dials failed while /publish works")
            return
        self._schedule_dial(self.backoff.next())

    def _frame(self, attempt: _Attempt, payload: bytes) -> None:
        if attempt is not self._live:
            return
        self.frames_received += 1
        try:
            message = parse_message(payload, int(self.reactor.seconds() * 1000), Origin.RELAY)
        except MessageError as e:
            self.bad_frames += 1
            self.log.warn("{url}/ws: ignoring a bad frame ({why})", url=self.url, why=e)
            return
        deliver(message, self.self_id, self._on_message, self._on_punch)

    def _socket_closed(self, attempt: _Attempt, why: str) -> None:
        if attempt is not self._live:
            return
        self._live = None
        self._socket = None
        now = self.reactor.seconds()
        self._on_managed(False, now)
        if not self.running:
            return
        if now - self._opened_at >= STABLE:
            self.backoff.reset()
        self.log.info("{url}/ws ended ({why}); reconnecting", url=self.url, why=why)
        self._schedule_dial(self.backoff.next())
        # The server dropped us with the socket; be listed again before the next beat.
        self._reannounce()

    # -- the SSE fallback ------------------------------------------------------------

    def _fall_back(self, why: str) -> None:
        self.log.info(
            "{url}: {why}; receiving over /events, probing /ws every {every:g}s",
            url=self.url,
            why=why,
            every=self.probe_every,
        )
        self._start_sse()
        self._schedule_probe(self.probe_first)

    def _start_sse(self) -> None:
        consumer: IService | None = None

        def message(m: PresenceMessage) -> None:
            if self._sse is consumer:
                self._on_message(m)

        def managed(on: bool, now: float) -> None:
            if self._sse is consumer:
                self._sse_managed = on
                self._on_managed(on, now)

        def punch(m: PresenceMessage) -> None:
            if self._sse is consumer and self._on_punch is not None:
                self._on_punch(m)

        consumer = self._sse = self._make_sse(message, managed, punch)
        consumer.startService()  # type: ignore[no-untyped-call]

    def _leave_sse(self) -> None:
        consumer, self._sse = self._sse, None
        if self._sse_managed:
            self._sse_managed = False
            self._on_managed(False, self.reactor.seconds())
        if consumer is not None:
            consumer.stopService()  # type: ignore[no-untyped-call]

    def _probe(self) -> None:
        self._timer = None
        self.probes += 1
        d = self._probing = self.connector.dial(
            ws_url(self.url, "probe=1"), _ignore_frame, _ignore_close, self.probe_timeout
        )
        d.addCallbacks(lambda sock: self._probed(d, sock), lambda f: self._probed(d, None))

    def _probed(self, d: Deferred[Socket], sock: Socket | None) -> None:
        if d is not self._probing:
            return
        self._probing = None
        if sock is not None:
            sock.close()
        if not self.running or self._sse is None:
            return
        if sock is None:
            self._schedule_probe(self.probe_every)
            return
        self.log.info("{url}/ws answers again; switching to it", url=self.url)
        self._dial()

    # -- timers ------------------------------------------------------------------------

    def _schedule_dial(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.reactor.callLater(delay, self._timed_dial)

    def _timed_dial(self) -> None:
        self._timer = None
        self._dial()

    def _schedule_probe(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.reactor.callLater(delay, self._probe)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @staticmethod
    def _describe(failure: Failure, timeout: float) -> str:
        if isinstance(failure.value, TimeoutError | CancelledError):
            return f"no answer within {timeout:g}s"
        return describe_failure(failure)

    # -- the service -----------------------------------------------------------------

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._cancel_timer()
        attempt, self._attempt = self._attempt, None
        if attempt is not None and attempt.deferred is not None:
            attempt.deferred.cancel()
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()
        if self._sse is not None:
            self._leave_sse()
        sock, self._socket = self._socket, None
        self._live = None
        if sock is None:
            return None
        self._on_managed(False, self.reactor.seconds())
        return sock.close()
