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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from zope.interface import implementer

from goop.rendezvous.eventlog import Event
from goop.sse import OK_COMMENT, PING_COMMENT

DEFAULT_MAX_PAUSE: Final = 120.0


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (what twisted.web writes for a chunked body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


@implementer(IPushProducer)
class Subscriber:
    """One open ``/events`` stream."""

    log = Logger()

    __slots__ = (
        "_abort_call",
        "_direct",
        "_hub",
        "address",
        "changes_only",
        "done",
        "paused",
        "pending",
        "request",
    )

    def __init__(self, hub: Hub, request: Any, address: str, changes_only: bool = False) -> None:
        self._hub = hub
        self.request: Any = request
        self.address = address
        self.changes_only = changes_only
        self.paused = False
        self.pending: dict[str, Event] | None = None
        self._abort_call: IDelayedCall | None = None
        # The TCP transport to send chunks to directly, or None (see `_direct_transport`).
        self._direct: Any = None
        # Fires when the server ends the stream; cancelled when the client leaves.
        self.done: Deferred[bytes] = Deferred(lambda _: hub.remove(self))

    def deliver(self, data: bytes, events: Iterable[Event], chunk: bytes = b"") -> None:
        """Hand over one batch: ``data`` (SSE bytes), ``chunk`` (the same as an HTTP chunk)."""
        if self.pending is None:
            if data:
                t = self._direct
                if (
                    t is not None
                    and chunk
                    and not t.dataBuffer
                    and not t._tempDataLen
                    and t.connected
                    and not t.disconnecting
                    and not t._writeDisconnected
                    and not self.request._disconnected
                ):
                    self._send(t, data, chunk)
                else:
                    self.request.write(data)
        else:
            changes_only = self.changes_only
            for event in events:
                if event.changed or not changes_only:
                    self.pending[event.peer_id] = event

    def _send(self, t: Any, data: bytes, chunk: bytes) -> None:
        # Nothing is queued on the transport, so the socket is next in line:
        # what send() takes is on the wire in order; the rest is queued behind
        # it through the transport, which then applies back-pressure as usual.
        try:
            sent = t.socket.send(chunk)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the transport finds the error on its own write and closes
        self.request.sentLength += len(data)
        if sent < len(chunk):
            t.write(chunk[sent:] if sent else chunk)

    def write(self, data: bytes) -> None:
        if not self.paused:
            self.request.write(data)

    # IPushProducer

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pending = {}
        self._abort_call = self._hub.reactor.callLater(self._hub.max_pause, self._stalled)

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._cancel_abort()
        pending, self.pending = self.pending, None
        if pending:
            ordered = sorted(pending.values(), key=lambda e: e.id)
            self.request.write(b"".join(e.frame for e in ordered))

    def stopProducing(self) -> None:
        self._hub.remove(self)

    def _direct_transport(self) -> Any:
        """The plain-TCP transport of a chunked stream whose head is written, else None."""
        request = self.request
        t = getattr(getattr(request, "channel", None), "transport", None)
        if (
            isinstance(t, Connection)
            and not getattr(t, "TLS", True)
            and getattr(request, "chunked", False)
            and getattr(request, "startedWriting", False)
            and all(
                hasattr(t, a)
                for a in ("socket", "dataBuffer", "_tempDataLen", "_writeDisconnected")
            )
            and hasattr(request, "_disconnected")
        ):
            return t
        return None

    def _cancel_abort(self) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None

    def _stalled(self) -> None:
        self._abort_call = None
        self.log.info(
            "cutting off /events subscriber {address}: not reading for {seconds:.0f}s",
            address=self.address,
            seconds=self._hub.max_pause,
        )
        self._hub.remove(self)
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


class Hub:
    """All open subscribers; batches events and hands each batch to every one."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        max_subscribers: int = 0,
        max_subscribers_per_ip: int = 0,
        max_pause: float = DEFAULT_MAX_PAUSE,
        on_batch: Callable[[list[Event], int], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.max_subscribers = max_subscribers
        self.max_subscribers_per_ip = max_subscribers_per_ip
        self.max_pause = max_pause
        self.subscribers: set[Subscriber] = set()
        self.per_address: dict[str, int] = {}
        self._batch: list[Event] = []
        self._flush_call: IDelayedCall | None = None
        # Told (events, subscriber count) after each batch: byte accounting.
        self.on_batch = on_batch

    def __len__(self) -> int:
        return len(self.subscribers)

    def refusal(self, address: str) -> str | None:
        """Why a new subscriber from ``address`` is refused, or None."""
        if self.max_subscribers and len(self.subscribers) >= self.max_subscribers:
            return f"server is at its subscriber limit ({self.max_subscribers})"
        per_ip = self.max_subscribers_per_ip
        if per_ip and self.per_address.get(address, 0) >= per_ip:
            return f"too many subscribers from {address} (limit {per_ip})"
        return None

    def subscribe(
        self, request: Any, address: str, backlog: list[Event], changes_only: bool = False
    ) -> Subscriber:
        """Open a stream on ``request``: ``: ok``, then ``backlog``, then live events."""
        # Anything still batched is already in ``backlog`` (which was read from
        # the current state), so deliver it now to everyone else first.
        self.flush()
        sub = Subscriber(self, request, address, changes_only)
        request.registerProducer(sub, True)
        request.write(OK_COMMENT + b"".join(e.frame for e in backlog))
        sub._direct = sub._direct_transport()
        self.subscribers.add(sub)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return sub

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        sub._cancel_abort()
        sub.pending = None
        left = self.per_address[sub.address] - 1
        if left:
            self.per_address[sub.address] = left
        else:
            del self.per_address[sub.address]

    def publish(self, event: Event) -> None:
        self._batch.append(event)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        data = b"".join(e.frame for e in batch) if len(batch) > 1 else batch[0].frame
        chunk = _chunk(data)
        changes: bytes | None = None  # joined once, only if a changes-only stream wants it
        changes_chunk = b""
        for sub in list(self.subscribers):
            if sub.changes_only:
                if changes is None:
                    changes = b"".join(e.frame for e in batch if e.changed)
                    changes_chunk = _chunk(changes)
                sub.deliver(changes, batch, changes_chunk)
            else:
                sub.deliver(data, batch, chunk)
        if self.on_batch is not None:
            self.on_batch(batch, len(self.subscribers))

    def ping(self) -> None:
        for sub in list(self.subscribers):
            sub.write(PING_COMMENT)

    def close_all(self) -> None:
        self.flush()
        for sub in list(self.subscribers):
            sub.close()
