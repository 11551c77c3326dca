"""The presence publisher: ``online`` at start, ``update`` every heartbeat, ``offline`` at stop.

One `Channel` per place the peer announces itself (a rendezvous URL today,
the LAN topic later). Every channel runs on its own: a channel that is down,
slow or answering errors retries with capped exponential backoff and jitter
and never delays another. `stopService` sends ``offline`` everywhere at once
and is done within ``stop_timeout`` seconds even when a channel hangs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from goop.backoff import Backoff
from goop.message import PresenceMessage
from goop.presence.tlsclient import describe_failure

REQUEST_TIMEOUT: Final = 5.0
STOP_TIMEOUT: Final = 1.5


class Channel(Protocol):
    """Somewhere a presence message can be sent."""

    name: str

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]: ...


class PublishError(Exception):
    pass


class RendezvousChannel:
    """POST /publish on one rendezvous; the URL is read at send time (port 0 resolves late)."""

    def __init__(self, name: str, url: Callable[[], str], http: Any) -> None:
        self.name = name
        self._url = url
        self._http = http

    @property
    def url(self) -> str:
        return self._url()

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
        d: Deferred[Any] = self._http.post(
            self.url + "/publish",
            data=message.encode(),
            headers={b"Content-Type": [b"application/json"]},
            timeout=timeout,
        )

        def check(response: Any) -> Deferred[None]:
            body: Deferred[bytes] = response.content()

            def judge(raw: bytes) -> None:
                if response.code // 100 != 2:
                    detail = raw[:200].decode("utf-8", "replace")
                    try:
                        detail = json.loads(raw)["error"]
                    except Exception:
                        pass
                    raise PublishError(f"HTTP {response.code}: {detail}")

            return body.addCallback(judge)

        return d.addCallback(check)


class _Target:
    """One channel's publishing state."""

    def __init__(self, channel: Channel, backoff: Backoff) -> None:
        self.channel = channel
        self.backoff = backoff
        self.announced = False  # an "online" has been accepted here
        self.in_flight: Deferred[None] | None = None
        self.retry: IDelayedCall | None = None
        self.failing = False


class PresencePublisher(Service):
    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        message: Callable[[str], PresenceMessage],
        channels: list[Channel],
        heartbeat_seconds: float,
        rng: random.Random | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self._message = message
        rng = rng or random.Random()
        self._targets = [_Target(c, Backoff(0.25, 4.0, rng=rng)) for c in channels]
        self.heartbeat_seconds = heartbeat_seconds
        self.request_timeout = request_timeout
        self.stop_timeout = stop_timeout
        self._loop = LoopingCall(self._beat)
        self._loop.clock = reactor

    def add_channel(self, channel: Channel) -> None:
        target = _Target(channel, Backoff(0.25, 4.0))
        self._targets.append(target)
        if self.running:
            self._send(target)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self.heartbeat_seconds, now=True)

    def refresh(self) -> None:
        """Send our presence now rather than at the next heartbeat (it changed)."""
        if self.running:
            self._beat()

    def _beat(self) -> None:
        for target in self._targets:
            # A target still sending or waiting to retry will send the newest
            # state when its turn comes; a heartbeat never queues behind it.
            if target.in_flight is None and target.retry is None:
                self._send(target)

    def _send(self, target: _Target) -> None:
        target.retry = None
        kind = "update" if target.announced else "online"
        try:
            d = target.channel.send(self._message(kind), self.request_timeout)
        except Exception as e:
            d = Deferred()
            d.errback(e)
        target.in_flight = d

        def ok(_: None) -> None:
            target.in_flight = None
            target.announced = True
            target.backoff.reset()
            if target.failing:
                target.failing = False
                self.log.info("publishing to {channel} works again", channel=target.channel.name)

        def failed(failure: Any) -> None:
            target.in_flight = None
            if not self.running:
                return
            delay = target.backoff.next()
            if not target.failing:
                target.failing = True
                self.log.warn(
                    "publishing to {channel} failed ({why}); retrying with backoff",
                    channel=target.channel.name,
                    why=describe_failure(failure),
                )
            target.retry = self.reactor.callLater(delay, self._send, target)

        d.addCallbacks(ok, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()
        sends = []
        for target in self._targets:
            if target.retry is not None and target.retry.active():
                target.retry.cancel()
            target.retry = None
            if target.in_flight is not None:
                target.in_flight.cancel()
            sends.append(self._send_offline(target))
        if not sends:
            return succeed(None)
        done: Deferred[None] = DeferredList(sends, consumeErrors=True).addCallback(lambda _: None)
        return done

    def _send_offline(self, target: _Target) -> Deferred[None]:
        try:
            d = target.channel.send(self._message("offline"), self.stop_timeout)
        except Exception as e:
            d = Deferred()
            d.errback(e)
        # The channel's own timeout should fire first; this one is the guarantee.
        d.addTimeout(self.stop_timeout + 0.2, self.reactor)

        def failed(failure: Any) -> None:
            self.log.warn(
                "could not send offline to {channel}: {why}",
                channel=target.channel.name,
                why=describe_failure(failure),
            )

        return d.addErrback(failed)
