"""The event-stream consumer: one per rendezvous URL, feeding the peer table.

Reads ``/events`` with treq as a stream (never buffered whole) through the
incremental SSE parser. Reconnects with capped exponential backoff and jitter,
sends ``Last-Event-ID`` so the server can replay what was missed, and treats a
stream silent for 2.5 keep-alive periods as dead. A bad event is logged and
skipped; it never ends the stream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from goop.backoff import Backoff
from goop.message import MessageError, Origin, PresenceMessage, message_from_object
from goop.presence.tlsclient import describe_failure
from goop.sseparse import SSEParser, SSEProtocolError

KEEPALIVE: Final = 25.0  # the server's ping period
SILENCE_FACTOR: Final = 2.5
CONNECT_TIMEOUT: Final = 10.0

OnMessage = Callable[[PresenceMessage], None]
# Told (True, now) when a stream in changes-only mode opens, (False, now) when it ends.
OnManaged = Callable[[bool, float], None]


class _StreamReader(Protocol):
    """Receives the body of one /events response."""

    def __init__(self, consumer: EventStreamConsumer) -> None:
        self.consumer = consumer
        self.parser = SSEParser()
        self.finished: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.consumer._heard()
        try:
            events = self.parser.feed(data)
        except SSEProtocolError as e:
            self.consumer.log.warn(
                "{url}: bad event stream ({why}); reconnecting", url=self.consumer.url, why=e
            )
            self.abort()
            return
        for event in events:
            self.consumer._event(event.data, event.last_event_id)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.finished.callback(None)


class EventStreamConsumer(Service):
    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        url: Callable[[], str],
        on_message: OnMessage,
        http: Any,
        keepalive: float = KEEPALIVE,
        rng: random.Random | None = None,
        name: str = "rendezvous",
        on_managed: OnManaged | None = None,
        self_id: str = "",
        on_punch: OnMessage | None = None,
    ) -> None:
        self.reactor = reactor
        self._url = url
        self._on_message = on_message
        self._http = http
        self.silence_limit = keepalive * SILENCE_FACTOR
        self.backoff = Backoff(0.25, 4.0, rng=rng)
        self.channel_name = name
        self.last_event_id = ""
        self.connected = False
        self.connections = 0  # streams opened so far (observable in tests)
        self.bad_events = 0
        self.changes_only = False  # the open stream skips no-op heartbeats
        self._on_managed = on_managed
        self.self_id = self_id
        self._on_punch = on_punch
        self._request: Deferred[Any] | None = None
        self._reader: _StreamReader | None = None
        self._retry: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None
        self._failing = False

    @property
    def url(self) -> str:
        return self._url()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._connect()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        for call in (self._retry, self._watchdog):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._watchdog = None
        if self._request is not None:
            self._request.cancel()
        if self._reader is not None:
            self._reader.abort()

    def _connect(self) -> None:
        self._retry = None
        headers = {b"Accept": [b"text/event-stream"], b"Cache-Control": [b"no-cache"]}
        if self.last_event_id:
            headers[b"Last-Event-ID"] = [self.last_event_id.encode("utf-8", "replace")]
        # goop servers then skip heartbeats that change nothing (and say so in a
        # header); others ignore the parameter and send everything.
        url = self.url + "/events?changes=1"
        if self.self_id:
            # A goop server then sends this stream the punch hints meant for us.
            url += "&peer_id=" + quote(self.self_id, safe="")
        d = self._http.get(url, headers=headers, unbuffered=True, timeout=CONNECT_TIMEOUT)
        self._request = d
        d.addCallbacks(self._response, self._lost)

    def _response(self, response: Any) -> None:
        self._request = None
        if response.code != 200:
            response.deliverBody(_Discard())
            self._lost(Failure(ConnectionError(f"HTTP {response.code}")))  # type: ignore[no-untyped-call]
            return
        self.connections += 1
        self.connected = True
        advertised = response.headers.getRawHeaders(b"x-goop-changes") or []
        self.changes_only = b"1" in advertised
        if self.changes_only and self._on_managed is not None:
            self._on_managed(True, self.reactor.seconds())
        if self._failing:
            self._failing = False
        self.log.info("subscribed to {url}/events", url=self.url)
        reader = self._reader = _StreamReader(self)
        self._heard()
        response.deliverBody(reader)
        reader.finished.addCallback(lambda _: self._ended(reader))

    def _ended(self, reader: _StreamReader) -> None:
        if reader is not self._reader:
            return
        self._reader = None
        self.connected = False
        if self.changes_only and self._on_managed is not None:
            self._on_managed(False, self.reactor.seconds())
        self.changes_only = False
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self.running:
            self.log.info("stream from {url} ended; reconnecting", url=self.url)
            self._schedule()

    def _lost(self, failure: Failure) -> None:
        self._request = None
        if not self.running:
            return
        if not self._failing:
            self._failing = True
            self.log.warn(
                "cannot subscribe to {url}/events ({why}); retrying with backoff",
                url=self.url,
                why=describe_failure(failure),
            )
        self._schedule()

    def _schedule(self) -> None:
        self._retry = self.reactor.callLater(self.backoff.next(), self._connect)

    def _heard(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.silence_limit)
        else:
            self._watchdog = self.reactor.callLater(self.silence_limit, self._silent)

    def _silent(self) -> None:
        self._watchdog = None
        self.log.warn(
            "{url}/events silent for {seconds:.1f}s; reconnecting",
            url=self.url,
            seconds=self.silence_limit,
        )
        if self._reader is not None:
            self._reader.abort()

    def _event(self, data: str, last_event_id: str) -> None:
        self.last_event_id = last_event_id
        self.backoff.reset()  # a stream that delivers is a healthy one
        try:
            message = message_from_object(
                json.loads(data), int(self.reactor.seconds() * 1000), Origin.RELAY
            )
        except (ValueError, RecursionError, MessageError) as e:
            self.bad_events += 1
            self.log.warn("{url}: ignoring a bad event ({why})", url=self.url, why=e)
            return
        deliver(message, self.self_id, self._on_message, self._on_punch)


def deliver(
    message: PresenceMessage, self_id: str, on_message: OnMessage, on_punch: OnMessage | None
) -> None:
    """Hand a relayed message on: presence to the table, a punch hint only when it is
    for us (goop2 servers broadcast hints to everyone; the rest are skipped quietly)."""
    if message.type != "punch":
        on_message(message)
    elif on_punch is not None and self_id and message.target == self_id:
        on_punch(message)


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass
