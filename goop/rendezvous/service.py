"""The rendezvous as one `IService`: listener, prune timer, keep-alive timer.

Startable alone (tests do), or as a child of the goop service tree. Binding
happens in ``privilegedStartService``; a port that cannot be bound stops
startup with one clear line instead of running on with nothing listening.
"""

from __future__ import annotations

import time
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher

from goop.config import PresenceConfig
from goop.logbuffer import LogBuffer
from goop.netaddrs import connect_urls
from goop.rendezvous.board import PRUNE_INTERVAL, Board
from goop.rendezvous.fanout import Hub
from goop.rendezvous.http import make_site, parse_networks
from goop.rendezvous.web import RendezvousApp

PING_INTERVAL: Final = 25.0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class RendezvousService(Service):
    log = Logger()

    def __init__(self, config: PresenceConfig, reactor: Any, logs: LogBuffer | None = None):
        self.config = config
        self.reactor: IReactorTime = reactor
        self._tcp: IReactorTCP = reactor
        self.logs = logs if logs is not None else LogBuffer()
        self.hub = Hub(
            reactor,
            max_subscribers=config.max_subscribers,
            max_subscribers_per_ip=config.max_subscribers_per_ip,
        )
        # Ids start at the wall clock in microseconds, so they keep growing
        # across restarts and an id from an earlier run reads as "too old".
        self.board = Board(self.hub, config.ttl_seconds, first_event_id=int(time.time() * 1e6))
        self.web = RendezvousApp(
            self.board,
            reactor,
            admin_password=config.admin_password,
            publish_rate_limit=config.publish_rate_limit,
            trusted_proxies=parse_networks(config.trusted_proxies),
            logs=self.logs,
            connect_urls=lambda: connect_urls(config.rendezvous_bind, self.port or 0),
        )
        self.site = make_site(self.web.resource())
        self.listening: IListeningPort | None = None
        self._pruner = LoopingCall(self._prune)
        self._pruner.clock = reactor
        self._pinger = LoopingCall(self.hub.ping)
        self._pinger.clock = reactor

    @property
    def port(self) -> int | None:
        if self.listening is None:
            return None
        port: int = self.listening.getHost().port  # type: ignore[attr-defined]
        return port

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.config.rendezvous_bind)}:{self.port}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self.listening is not None:
            return
        bind, port = self.config.rendezvous_bind, self.config.rendezvous_port
        try:
            self.listening = self._tcp.listenTCP(port, self.site, interface=bind)  # type: ignore[arg-type]
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            raise SystemExit(
                f"goop: rendezvous cannot listen on {bind}:{port}: {reason}"
                " (presence.rendezvous_port / --rendezvous-port)"
            ) from None

    def startService(self) -> None:
        self._listen()
        super().startService()  # type: ignore[no-untyped-call]
        globalLogPublisher.addObserver(self.logs)
        self.board.accepting = True
        self._pruner.start(PRUNE_INTERVAL, now=False)
        self._pinger.start(PING_INTERVAL, now=False)
        self.log.info("rendezvous listening on {url}", url=self.url)

    def _prune(self) -> None:
        # Guarded: an exception would otherwise stop the LoopingCall for good.
        try:
            now = self.reactor.seconds()
            self.board.prune(now)
            self.web.limiter.prune(now)
        except Exception:
            self.log.failure("pruning failed; will retry in {interval}s", interval=PRUNE_INTERVAL)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.board.accepting = False
        for loop in (self._pruner, self._pinger):
            if loop.running:
                loop.stop()
        self.hub.close_all()
        globalLogPublisher.removeObserver(self.logs)
        listening, self.listening = self.listening, None
        if listening is None:
            return succeed(None)
        self.log.info("rendezvous stopped listening on {url}", url=self._stopped_url(listening))
        stopped = listening.stopListening()
        return stopped if stopped is not None else succeed(None)

    def _stopped_url(self, listening: IListeningPort) -> str:
        port = listening.getHost().port  # type: ignore[attr-defined]
        return f"http://{_url_host(self.config.rendezvous_bind)}:{port}"
