"""The rendezvous as one `IService`: listener, prune timer, keep-alive timer.

Startable alone (tests do), or as a child of the goop service tree. Binding
happens in ``privilegedStartService``; a port that cannot be bound stops
startup with one clear line instead of running on with nothing listening.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource

from goop.config import PresenceConfig
from goop.listening import cannot_listen
from goop.logbuffer import LogBuffer
from goop.netaddrs import connect_urls
from goop.rendezvous.board import PRUNE_INTERVAL, Board
from goop.rendezvous.fanout import Hub
from goop.rendezvous.history import MinuteCounts
from goop.rendezvous.http import make_site, parse_networks
from goop.rendezvous.metrics import MetricsPage, registry_for
from goop.rendezvous.metrics import render as render_metrics
from goop.rendezvous.shared import SharedBoard
from goop.rendezvous.signatures import SignaturePolicy
from goop.rendezvous.tls import ReloadableSNI, TLSSetupError
from goop.rendezvous.web import RendezvousApp
from goop.stallprobe import StallProbe

PING_INTERVAL: Final = 25.0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _RedirectToHTTPS(resource.Resource):
    """Plain HTTP on the redirect port: every request is sent to the HTTPS port."""

    isLeaf = True

    def __init__(self, https_port: Any, tls: ReloadableSNI) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._https_port = https_port
        self._tls = tls

    def render(self, request: Any) -> bytes:
        # Never the Host header as sent: it would let anyone who can reach this
        # port build a redirect to a host of their choosing. A name we hold a
        # certificate for is kept; anything else goes to our public name.
        asked = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        host = asked if asked in self._tls.names and asked != "default" else self._tls.public_name
        path = request.uri.decode("latin-1")
        if not path.startswith("/") or path.startswith("//"):
            path = "/"
        target = f"https://{_url_host(host)}:{self._https_port()}{path}"
        request.setResponseCode(308)
        request.setHeader(b"location", target.encode("latin-1", "replace"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"use {target}\n".encode()


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
            max_websockets=config.max_websockets,
            max_websockets_per_ip=config.max_websockets_per_ip,
        )
        self.board: Board
        if config.redis_url:
            from goop.rendezvous.redisstore import RedisStore

            store = RedisStore(config.redis_url)
            store.open()  # raises StoreError, one line, when Redis cannot be reached
            self.board = SharedBoard(self.hub, config.ttl_seconds, store, reactor)
        elif config.peer_db_path:
            # Raises StoreError naming the file when it is locked or damaged.
            self.board = SharedBoard(self.hub, config.ttl_seconds, config.peer_db_path, reactor)
        else:
            # Ids start at the wall clock in microseconds, so they keep growing
            # across restarts and an id from an earlier run reads as "too old".
            self.board = Board(
                self.hub, config.ttl_seconds, first_event_id=int(time.time() * 1e6)
            )
        self.board.max_peers = config.max_peers
        self.board.max_peers_per_ip = config.max_peers_per_ip
        self.board.max_table_bytes = config.max_table_mb * 2**20
        self.board.signatures = SignaturePolicy(
            config.signature_window, require_signed=config.require_signed
        )
        self.stall_probe = StallProbe(reactor)
        # Raises TLSSetupError naming the file when the directory cannot be served.
        self.tls = ReloadableSNI(config.rendezvous_tls_dir) if config.rendezvous_tls_dir else None
        trusted = parse_networks(config.trusted_proxies)
        self.web = RendezvousApp(
            self.board,
            reactor,
            admin_password=config.admin_password,
            publish_rate_limit=config.publish_rate_limit,
            trusted_proxies=trusted,
            logs=self.logs,
            connect_urls=lambda: connect_urls(config.rendezvous_bind, self.port or 0),
            stats=self.stall_probe.take,
            ipv6_prefix=config.ipv6_prefix,
            server_names=self.tls.names if self.tls is not None else (),
        )
        self.site = self._site(self.web.resource())
        self.metrics_registry = registry_for(self)
        self.web.metrics = lambda: render_metrics(self.metrics_registry)
        if config.metrics_port:
            self.web.metrics_elsewhere = f"{config.metrics_bind}:{config.metrics_port}"
        self.metrics_listening: IListeningPort | None = None
        self.listening: IListeningPort | None = None
        self.redirecting: IListeningPort | None = None
        self._previous_hup: Any = None
        self._pruning: Any = None
        self._pruner = LoopingCall(self._prune)
        self._pruner.clock = reactor
        self._pinger = LoopingCall(self.hub.ping)
        self._pinger.clock = reactor
        # The dashboard's chart: peers online, once a minute, for the last hour.
        self.history = MinuteCounts()
        self.web.history = self.history.points
        self._sampler = LoopingCall(
            lambda: self.history.record(self.reactor.seconds(), len(self.board.registry))
        )
        self._sampler.clock = reactor

    def _site(self, resource: Any) -> Any:
        config = self.config
        return make_site(
            resource,
            idle_timeout=config.idle_timeout,
            request_timeout=config.request_timeout,
            max_connections_per_ip=config.max_connections_per_ip,
            ipv6_prefix=config.ipv6_prefix,
            trusted=parse_networks(config.trusted_proxies),
            reactor=self.reactor,
        )

    @property
    def port(self) -> int | None:
        if self.listening is None:
            return None
        port: int = self.listening.getHost().port  # type: ignore[attr-defined]
        return port

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{_url_host(self.config.rendezvous_bind)}:{self.port}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self.listening is not None:
            return
        port = self.config.rendezvous_port
        factory: Any = self.site
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, self.site)
        self.listening = self._bind(port, factory, "presence.rendezvous_port / --rendezvous-port")
        if self.config.metrics_port:
            # Its own port, no password: for a Prometheus on this host or a
            # private network (metrics_bind), never the public one.
            self.metrics_listening = self._bind(
                self.config.metrics_port,
                self._site(MetricsPage(self.web.metrics)),
                "presence.metrics_port / --metrics-port",
                self.config.metrics_bind,
                "metrics",
            )
        redirect = self.config.rendezvous_redirect_port
        if redirect and self.tls is not None:
            plain = self._site(_RedirectToHTTPS(lambda: self.port, self.tls))
            self.redirecting = self._bind(
                redirect, plain, "presence.rendezvous_redirect_port / --rendezvous-redirect-port"
            )

    def _bind(
        self, port: int, factory: Any, setting: str, bind: str = "", what: str = "rendezvous"
    ) -> IListeningPort:
        bind = bind or self.config.rendezvous_bind
        try:
            return self._tcp.listenTCP(port, factory, interface=bind)
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            raise cannot_listen(what, bind, port, reason, setting) from None

    def startService(self) -> None:
        self._listen()
        super().startService()  # type: ignore[no-untyped-call]
        globalLogPublisher.addObserver(self.logs)
        self.board.accepting = True
        if isinstance(self.board, SharedBoard):
            self.board.start()
            self.log.info(
                "sharing peers through {path}: {count} peers still online from before",
                path=self.config.peer_db_path,
                count=self.board.restored,
            )
        self._pruner.start(PRUNE_INTERVAL, now=False)
        self.stall_probe.start()
        self._pinger.start(PING_INTERVAL, now=False)
        self._sampler.start(60.0, now=True)
        self.web.ws.start()
        self.log.info("rendezvous listening on {url}", url=self.url)
        if self.tls is not None:
            self.log.info(
                "TLS certificates for {names} (default {default}) from {directory}",
                names=", ".join(self.tls.names),
                default=self.tls.default_name,
                directory=self.tls.directory,
            )
            self._install_reload_signal()
        if self.metrics_listening is not None:
            self.log.info(
                "metrics on http://{bind}:{port}/metrics",
                bind=_url_host(self.config.metrics_bind),
                port=self.metrics_listening.getHost().port,  # type: ignore[attr-defined]
            )
        if self.redirecting is not None:
            self.log.info(
                "redirecting plain HTTP on port {port} to HTTPS",
                port=self.redirecting.getHost().port,  # type: ignore[attr-defined]
            )

    def _install_reload_signal(self) -> None:
        # Signals can only be handled on the main thread (twistd's); tests
        # that run the service elsewhere call reload_tls() themselves.
        if threading.current_thread() is not threading.main_thread():
            return
        callFromThread = self.reactor.callFromThread  # type: ignore[attr-defined]
        self._previous_hup = signal.signal(
            signal.SIGHUP, lambda signum, frame: callFromThread(self.reload_tls)
        )

    def reload_tls(self) -> bool:
        """Re-read the certificate directory (SIGHUP); keeps the old ones on error."""
        if self.tls is None:
            return False
        try:
            names = self.tls.reload()
        except TLSSetupError as e:
            self.log.error("TLS reload failed, still serving the old certificates: {why}", why=e)
            return False
        self.log.info("TLS certificates reloaded: {names}", names=", ".join(names))
        return True

    def _prune(self) -> None:
        # Guarded: an exception would otherwise stop the LoopingCall for good.
        try:
            now = self.reactor.seconds()
            if self._pruning is None:
                self._prune_slice()
            self.board.punch.prune(now)
            self.web.limiter.prune(now)
            self.web.keys.prune(now, self.board.registry)
            self.web.logins.prune(now)
        except Exception:
            self.log.failure("pruning failed; will retry in {interval}s", interval=PRUNE_INTERVAL)

    def _prune_slice(self) -> None:
        """Expire one slice of stale peers; the next slice in the next reactor turn."""
        self._pruning = None
        if not self.running:
            return
        now = self.reactor.seconds()
        try:
            self.board.prune(now)
            more = self.board.prune_pending(now)
        except Exception:
            self.log.failure("pruning failed; will retry in {interval}s", interval=PRUNE_INTERVAL)
            return
        if more:
            self._pruning = self.reactor.callLater(0, self._prune_slice)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.board.accepting = False
        for loop in (self._pruner, self._pinger, self._sampler):
            if loop.running:
                loop.stop()
        if self._pruning is not None and self._pruning.active():
            self._pruning.cancel()
        self._pruning = None
        self.stall_probe.stop()
        self.web.ws.stop()
        sockets_closed = self.web.ws.close_all()
        self.hub.close_all()
        globalLogPublisher.removeObserver(self.logs)
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        if self.redirecting is not None:
            self.redirecting.stopListening()
            self.redirecting = None
        if self.metrics_listening is not None:
            self.metrics_listening.stopListening()
            self.metrics_listening = None
        done: list[Deferred[None]] = [sockets_closed]
        if isinstance(self.board, SharedBoard):
            done.append(self.board.stop())
        listening, self.listening = self.listening, None
        if listening is not None:
            self.log.info(
                "rendezvous stopped listening on {url}", url=self._stopped_url(listening)
            )
            stopped = listening.stopListening()
            if stopped is not None:
                done.append(stopped)
        return gatherResults(done).addCallback(lambda _: None)

    def _stopped_url(self, listening: IListeningPort) -> str:
        port = listening.getHost().port  # type: ignore[attr-defined]
        return f"{self.scheme}://{_url_host(self.config.rendezvous_bind)}:{port}"
