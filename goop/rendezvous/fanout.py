"""SSE fan-out: one push producer per ``/events`` subscriber, and the hub that feeds them.

Every event is encoded once (its frame lives on the `Event`); events that
arrive in the same reactor turn are joined once into one batch and every
caught-up subscriber gets those same bytes in one write.

Back-pressure: each `Subscriber` is registered as the request's streaming
producer. When its socket stops draining, Twisted pauses it; while paused it
keeps only the newest pending event per peer, so its memory is bounded by the
number of peers whatever the publish rate, and when it resumes it receives
every peer's latest state in event-id order. A subscriber paused longer than
``max_pause`` seconds is cut off.

Fairness to the rest of the server: one reactor turn spends at most
`TURN_BUDGET` on fan-out (and on writing resumed subscribers' backlogs),
then lets the reactor read publishes again; a batch that piled up past
`MAX_BATCH_EVENTS` while the server was behind goes out as each peer's
latest state, so the work per turn stays bounded by the number of peers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from zope.interface import implementer

from goop.rendezvous.backlog import SLICE_BYTES, Backlog, ListBacklog
from goop.rendezvous.eventlog import Event
from goop.sse import OK_COMMENT, PING_COMMENT, format_event

SSE: Final = "sse"
WS: Final = "ws"
DEFAULT_MAX_PAUSE: Final = 120.0
# Punch hints kept for a stream that is catching up; more are dropped.
MAX_QUEUED_HINTS: Final = 64
# A batch longer than this is sent as each peer's latest state (see `_Job`).
# A batch is what arrived during one turn of fan-out: a few to a few dozen events
# at the benchmark's heaviest rates; hundreds only when the server is behind.
MAX_BATCH_EVENTS: Final = 256
# How long one reactor turn of fan-out may run (the reactor stall it causes).
# Deliveries cost ~5 us each on loopback (one send), so this is ~2,000 streams.
TURN_BUDGET: Final = 0.010
# Deliveries between two looks at the clock.
CHECK_EVERY: Final = 16
# After a turn of fan-out that took c seconds, the next starts no sooner than
# c * PACE later, so events arriving meanwhile share one write per subscriber.
# Off by default: at K=1000 streams and 200 msg/s (Go loadgen, 2-core machine)
# PACE 1 halved the server's CPU (99% -> 52%) but doubled p99 latency
# (16-20 -> 29-30 ms); 0.25 gave 80% and 19 ms. Latency wins for presence:
# the turn budget already keeps the reactor answering between turns.
PACE: Final = 0.0


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (what twisted.web writes for a chunked body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


@implementer(IPushProducer)
class Subscriber:
    """One open ``/events`` stream."""

    log = Logger()

    # Which bytes of a batch this subscriber takes (see `_Job.payload`).
    kind = SSE

    __slots__ = (
        "_abort_call",
        "_direct",
        "_hub",
        "address",
        "backlog",
        "changes_only",
        "done",
        "hints",
        "paused",
        "peer_id",
        "pending",
        "request",
    )

    def __init__(
        self,
        hub: Hub,
        request: Any,
        address: str,
        changes_only: bool = False,
        peer_id: str = "",
    ) -> None:
        self._hub = hub
        self.request: Any = request
        self.address = address
        self.changes_only = changes_only
        # The peer this stream says it belongs to (?peer_id=): targeted hints go here.
        self.peer_id = peer_id
        self.paused = False
        self.pending: dict[str, Event] | None = None
        # The snapshot or replay still owed, written a slice per drain.
        self.backlog: Backlog | None = None
        # Punch hints that arrived while the stream was catching up.
        self.hints: list[bytes] | None = None
        self._abort_call: IDelayedCall | None = None
        # The TCP transport to send chunks to directly, or None (see `_direct_transport`).
        self._direct: Any = None
        # Fires when the server ends the stream; cancelled when the client leaves.
        self.done: Deferred[bytes] = Deferred(lambda _: hub.remove(self))

    def deliver(self, data: bytes, chunk: bytes, latest: Callable[[], dict[str, Event]]) -> None:
        """Hand over one batch: ``data`` (SSE bytes), ``chunk`` (the same as an HTTP
        chunk); while paused, keep ``latest()`` instead: the batch's newest event
        per peer, worked out once per batch for every paused subscriber."""
        if self.pending is None:
            if data:
                t = self._direct
                if t is not None and chunk and idle_tcp(t) and not self.request._disconnected:
                    send_now(t, chunk)
                    self.request.sentLength += len(data)
                else:
                    self.request.write(data)
        else:
            self.coalesce(latest)

    def coalesce(self, latest: Callable[[], dict[str, Event]]) -> None:
        """While behind: keep each peer's newest event. Under churn (peers coming and
        going by the thousand) that is more peers than the table ever holds at once;
        past the hub's cap the stream is cut as a stalled one is (it reconnects and
        gets a fresh snapshot), so a reader that is behind costs bounded memory."""
        pending = self.pending
        assert pending is not None
        self._hub.coalesced += 1
        pending.update(latest())
        cap = self._hub.pending_cap
        if cap is not None and len(pending) > cap():
            self._cut_off(f"{len(pending)} peers' updates waiting")

    def write(self, data: bytes) -> None:
        if not self.paused:
            self.request.write(data)

    def ping(self) -> None:
        self.write(PING_COMMENT)

    def send_one(self, data: bytes) -> bool:
        """A message for this subscriber alone (a punch hint), outside the event log:
        written now, or, while the stream catches up, kept (a few) and written
        after what it is owed; dropped past that (it is a hint, not state)."""
        if self.paused or self.pending is not None:
            if self.hints is None:
                self.hints = []
            if len(self.hints) >= MAX_QUEUED_HINTS:
                return False
            self.hints.append(data)
            return True
        self.write(self.one_frame(data))
        return True

    def one_frame(self, data: bytes) -> bytes:
        """One message outside the event log, framed for this stream (no ``id:``)."""
        return format_event(data)

    # IPushProducer

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        if self.pending is None:
            self.pending = {}
        # else: resumed, but its backlog not written yet; keep coalescing into it.
        self._abort_call = self._hub.reactor.callLater(self._hub.max_pause, self._stalled)

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._cancel_abort()
        # The coalesced backlog is written in a hub turn, not here: thousands of
        # streams draining in one poll would otherwise each write it at once and
        # stall the reactor. Until then new events keep coalescing into it.
        self._hub.drain_later(self)

    def frame_size(self, event: Event) -> int:
        return len(event.frame)

    def drain(self) -> None:
        """Write the next slice of the backlog; when it is spent, the events coalesced
        meanwhile (oldest first), and go back to live writes."""
        if self.paused:
            return
        backlog = self.backlog
        if backlog is not None:
            events = backlog.take(SLICE_BYTES, self.frame_size)
            if events:
                self.write_events(events)
            if not backlog.done:
                self._hub.drain_later(self)  # the next slice in a later turn
                return
            self.backlog = None
        pending, self.pending = self.pending, None
        hints, self.hints = self.hints, None
        if pending or hints:
            ordered = sorted(pending.values(), key=lambda e: e.id) if pending else []
            tail = b"".join(self.one_frame(h) for h in hints) if hints else b""
            self.write_events(ordered, b"", tail)

    def write_events(self, events: list[Event], preface: bytes = b"", tail: bytes = b"") -> None:
        """Write ``events`` now, paused or not (a backlog the transport then buffers)."""
        self.request.write(preface + b"".join(e.frame for e in events) + tail)

    def stopProducing(self) -> None:
        self._hub.remove(self)

    def _direct_transport(self) -> Any:
        """The plain-TCP transport of a chunked stream whose head is written, else None."""
        request = self.request
        if not (
            getattr(request, "chunked", False)
            and getattr(request, "startedWriting", False)
            and hasattr(request, "_disconnected")
        ):
            return None
        return plain_tcp(getattr(getattr(request, "channel", None), "transport", None))

    def _cancel_abort(self) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None

    def _stalled(self) -> None:
        self._abort_call = None
        self._cut_off(f"not reading for {self._hub.max_pause:.0f}s")

    def _cut_off(self, why: str) -> None:
        self._hub.cut_off += 1
        self.log.info(
            "cutting off {kind} subscriber {address}: {why}",
            kind="/events" if self.kind == SSE else "/ws",
            address=self.address,
            why=why,
        )
        self._hub.remove(self)
        self._abort()

    def _abort(self) -> None:
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def close(self) -> None:
        """End the stream from the server side (shutdown)."""
        self._hub.remove(self)
        if not self.done.called:
            # Twisted refuses to finish a request that still has a producer.
            self.request.unregisterProducer()
            self.done.callback(b"")


class _Job:
    """One batch on its way to the subscribers that were open when it was cut."""

    __slots__ = (
        "_latest",
        "_latest_changed",
        "_variants",
        "batch",
        "chunk",
        "data",
        "pos",
        "sent",
        "subs",
    )

    def __init__(self, batch: list[Event], subs: list[Subscriber]) -> None:
        self.batch = batch
        self.subs = subs
        self.pos = 0
        # Each worked out once, and only if some subscriber needs it.
        self._latest: dict[str, Event] | None = None
        self._latest_changed: dict[str, Event] | None = None
        self._variants: dict[tuple[str, bool], tuple[bytes, bytes, Callable[[], Any]]] = {}
        sent = self.sent = self._coalesced(batch, self.latest)
        self.data = b"".join(e.frame for e in sent) if len(sent) > 1 else sent[0].frame
        self.chunk = _chunk(self.data)

    def _coalesced(
        self, events: list[Event], latest: Callable[[], dict[str, Event]]
    ) -> list[Event]:
        if len(events) > MAX_BATCH_EVENTS:
            # The server fell behind and events piled up: send each peer's
            # latest state in this batch, not every step on the way (bounded
            # by the number of peers, not by how far behind we are).
            return sorted(latest().values(), key=_by_id)
        return events

    def payload(self, kind: str, changes_only: bool) -> tuple[bytes, bytes, Callable[[], Any]]:
        """(bytes, HTTP chunk, latest-per-peer) of this batch for one kind of subscriber."""
        key = (kind, changes_only)
        found = self._variants.get(key)
        if found is not None:
            return found
        if changes_only:
            latest = self.latest_changed
            events = self._coalesced([e for e in self.batch if e.changed], latest)
        else:
            latest = self.latest
            events = self.sent
        if kind == SSE:
            data = b"".join(e.frame for e in events)
            made = (data, _chunk(data), latest)
        else:
            made = (b"".join(e.ws_frame for e in events), b"", latest)
        self._variants[key] = made
        return made

    def latest(self) -> dict[str, Event]:
        if self._latest is None:
            self._latest = {e.peer_id: e for e in self.batch}
        return self._latest

    def latest_changed(self) -> dict[str, Event]:
        if self._latest_changed is None:
            self._latest_changed = {e.peer_id: e for e in self.batch if e.changed}
        return self._latest_changed

    def run(
        self, live: set[Subscriber], clock: IReactorTime, budget: float, check_every: int
    ) -> None:
        """Deliver to the next subscribers until done or ``budget`` seconds are used."""
        subs, i, n = self.subs, self.pos, len(self.subs)
        data, chunk, latest = self.data, self.chunk, self.latest
        started = clock.seconds()
        while i < n:
            sub = subs[i]
            i += 1
            if sub in live:  # it may have left since the batch was cut
                if sub.changes_only or sub.kind is not SSE:
                    sub.deliver(*self.payload(sub.kind, sub.changes_only))
                else:
                    sub.deliver(data, chunk, latest)
            if not i % check_every and clock.seconds() - started >= budget:
                break
        self.pos = i

    @property
    def done(self) -> bool:
        return self.pos >= len(self.subs)


def plain_tcp(t: Any) -> Any:
    """``t`` if it is a plain (not TLS) Twisted TCP connection that `send_now` can
    write to, else None."""
    if (
        isinstance(t, Connection)
        and not getattr(t, "TLS", True)
        and all(
            hasattr(t, a) for a in ("socket", "dataBuffer", "_tempDataLen", "_writeDisconnected")
        )
    ):
        return t
    return None


def idle_tcp(t: Any) -> bool:
    """Whether nothing is queued on the open `plain_tcp` transport ``t``."""
    return bool(
        not t.dataBuffer
        and not t._tempDataLen
        and t.connected
        and not t.disconnecting
        and not t._writeDisconnected
    )


def send_now(t: Any, data: bytes) -> None:
    """Write ``data`` to an `idle_tcp` transport straight to its socket.

    Nothing is queued, so the socket is next in line: what send() takes is on
    the wire in order; the rest is queued behind it through the transport,
    which then applies back-pressure as usual. Saves ``transport.write``'s
    epoll registration and later flush for the common small write.
    """
    try:
        sent = t.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = 0  # the transport finds the error on its own write and closes
    if sent < len(data):
        t.write(data[sent:] if sent else data)


def no_delay(transport: Any) -> None:
    """Switch Nagle's algorithm off for an event stream's TCP connection.

    A stream gets a small write every few milliseconds; with Nagle on, a write
    made while the previous one is unacknowledged waits for the reader's
    delayed ACK (up to 40 ms on Linux): that was the p99 of the benchmark.
    """
    for t in (transport, getattr(transport, "transport", None)):  # TLS wraps TCP
        set_no_delay = getattr(t, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # already closed, or not TCP after all: nothing to tune
            return


def _by_id(event: Event) -> int:
    return event.id




class Hub:
    """All open subscribers; batches events and hands each batch to every one.

    Events published in the same reactor turn, or while the previous fan-out
    is being paced (see `PACE`), form one batch: one join, one write per
    subscriber. One reactor turn spends at most `TURN_BUDGET` seconds on
    fan-out, then yields; batches are delivered strictly in order, so every
    stream sees event ids ascending. `flush` delivers everything at once
    (shutdown, tests).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        max_subscribers: int = 0,
        max_subscribers_per_ip: int = 0,
        max_pause: float = DEFAULT_MAX_PAUSE,
        on_batch: Callable[[list[Event], int], None] | None = None,
        turn_budget: float = TURN_BUDGET,
        pace: float = PACE,
        check_every: int = CHECK_EVERY,
        max_websockets: int = 0,
        max_websockets_per_ip: int = 0,
    ) -> None:
        self.reactor = reactor
        self.max_pause = max_pause
        self.turn_budget = turn_budget
        self.check_every = check_every
        self.pace = pace
        # kind -> (global cap, per-address cap); 0 = unlimited.
        self.limits = {
            SSE: (max_subscribers, max_subscribers_per_ip),
            WS: (max_websockets, max_websockets_per_ip),
        }
        self.subscribers: set[Subscriber] = set()
        # The same, split by mode: changes-only ones skip batches with no change.
        self._plain: set[Subscriber] = set()
        self._changes_only: set[Subscriber] = set()
        self.counts: dict[str, int] = {SSE: 0, WS: 0}
        self.per_address: dict[str, int] = {}  # /events streams per client address
        self.ws_per_address: dict[str, int] = {}  # /ws sockets per client address
        # peer ID -> the subscribers that said they are that peer (targeted hints).
        self.by_peer: dict[str, list[Subscriber]] = {}
        self._batch: list[Event] = []
        self._jobs: deque[_Job] = deque()
        # Resumed subscribers whose coalesced backlog is still to be written.
        self._draining: deque[Subscriber] = deque()
        self._call: IDelayedCall | None = None
        # Earliest reactor time the next turn of fan-out may start (pacing).
        self._ready_at = 0.0
        # Told (events, subscriber count) for each batch: byte accounting.
        self.on_batch = on_batch
        # Most peers a stream that is behind may hold pending (None: no cap).
        self.pending_cap: Callable[[], int] | None = None
        # Counters since start, for /metrics.
        self.coalesced = 0  # batches a stream that was behind took as each peer's latest
        self.cut_off = 0  # streams cut for not reading (or too far behind)

    def __len__(self) -> int:
        return len(self.subscribers)

    def _per_address(self, kind: str) -> dict[str, int]:
        return self.per_address if kind == SSE else self.ws_per_address

    def refusal(self, address: str, kind: str = SSE) -> str | None:
        """Why a new subscriber (``/events`` or ``/ws``) from ``address`` is refused, or None."""
        total, per_ip = self.limits[kind]
        what = "subscriber" if kind == SSE else "WebSocket"
        if total and self.counts[kind] >= total:
            return f"server is at its {what} limit ({total})"
        if per_ip and self._per_address(kind).get(address, 0) >= per_ip:
            return f"too many {what}s from {address} (limit {per_ip})"
        return None

    def subscribe(
        self,
        request: Any,
        address: str,
        backlog: Backlog | list[Event],
        changes_only: bool = False,
        peer_id: str = "",
    ) -> Subscriber:
        """Open a stream on ``request``: ``: ok``, then ``backlog``, then live events."""
        sub = Subscriber(self, request, address, changes_only, peer_id)
        request.registerProducer(sub, True)
        no_delay(getattr(getattr(request, "channel", None), "transport", None))
        self.attach(sub, backlog, OK_COMMENT)
        sub._direct = sub._direct_transport()
        return sub

    def attach(
        self, sub: Subscriber, backlog: Backlog | list[Event], preface: bytes = b""
    ) -> None:
        """Start delivery to ``sub``: ``preface`` now, ``backlog`` slice by slice as the
        socket drains (live events meanwhile coalesce per peer), then live events."""
        # Anything still batched is already in ``backlog`` (which was read from
        # the current state): cut it now, for everyone but the newcomer.
        self._cut()
        if isinstance(backlog, list):
            backlog = ListBacklog(backlog)
        if preface:
            sub.write_events([], preface)
        if not backlog.done:
            sub.backlog = backlog
            sub.pending = {}
            self.drain_later(sub)
        self.subscribers.add(sub)
        (self._changes_only if sub.changes_only else self._plain).add(sub)
        self.counts[sub.kind] += 1
        counts = self._per_address(sub.kind)
        counts[sub.address] = counts.get(sub.address, 0) + 1
        if sub.peer_id:
            self.by_peer.setdefault(sub.peer_id, []).append(sub)

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        (self._changes_only if sub.changes_only else self._plain).discard(sub)
        sub._cancel_abort()
        sub.pending = None
        sub.backlog = None
        sub.hints = None
        self.counts[sub.kind] -= 1
        counts = self._per_address(sub.kind)
        left = counts[sub.address] - 1
        if left:
            counts[sub.address] = left
        else:
            del counts[sub.address]
        if sub.peer_id:
            mine = self.by_peer[sub.peer_id]
            mine.remove(sub)
            if not mine:
                del self.by_peer[sub.peer_id]

    def send_to(self, peer_id: str, data: bytes) -> int:
        """``data`` (one message's JSON) to ``peer_id``'s subscribers alone; how many took it."""
        return sum(1 for sub in self.by_peer.get(peer_id, ()) if sub.send_one(data))

    def publish(self, event: Event) -> None:
        if not event.changed and not self._plain:
            # A heartbeat that changes nothing is for plain streams only (see
            # `_cut`); with none open it has nowhere to go, and no turn is due.
            return
        self._batch.append(event)
        self._schedule()

    def _cut(self, schedule: bool = True) -> None:
        """Turn the events batched so far into a job for the current subscribers."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        # A batch of heartbeats that change nothing is for plain streams only:
        # 10,000 changes-only /ws peers must not each be visited per batch.
        subs = list(self._plain)
        if self._changes_only and any(e.changed for e in batch):
            subs.extend(self._changes_only)
        if subs:
            self._jobs.append(_Job(batch, subs))
            if schedule:
                self._schedule()
        if self.on_batch is not None:
            self.on_batch(batch, len(self.subscribers))

    def drain_later(self, sub: Subscriber) -> None:
        self._draining.append(sub)
        self._schedule()

    def _drain(self, started: float, budget: float) -> None:
        draining, live = self._draining, self.subscribers
        while draining:
            sub = draining.popleft()
            if sub in live:
                sub.drain()
            if self.reactor.seconds() - started >= budget:
                break

    def _schedule(self) -> None:
        if self._call is not None:
            return
        delay = max(0.0, self._ready_at - self.reactor.seconds())
        self._call = self.reactor.callLater(delay, self._turn)

    def _turn(self) -> None:
        self._call = None
        started = self.reactor.seconds()
        if self._draining:
            self._drain(started, self.turn_budget)
        if not self._jobs:
            self._cut(schedule=False)
        live = self.subscribers
        while self._jobs:
            left = self.turn_budget - (self.reactor.seconds() - started)
            if left <= 0:
                break
            job = self._jobs[0]
            job.run(live, self.reactor, left, self.check_every)
            if job.done:
                self._jobs.popleft()
        now = self.reactor.seconds()
        self._ready_at = now + (now - started) * self.pace
        if self._jobs or self._batch or self._draining:
            self._schedule()

    def flush(self) -> None:
        """Deliver every batched event to every subscriber now."""
        self._drain(self.reactor.seconds(), float("inf"))
        self._cut(schedule=False)
        live = self.subscribers
        while self._jobs:
            self._jobs.popleft().run(live, self.reactor, float("inf"), 1 << 30)
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def ping(self) -> None:
        for sub in list(self.subscribers):
            sub.ping()

    def close_all(self) -> None:
        self.flush()
        for sub in list(self.subscribers):
            sub.close()
