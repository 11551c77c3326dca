"""The local viewer: the peer's merged table as JSON (``/peers``) and a live page (``/``).

Also ``/self``: the presence message this peer is publishing now, and
``/stats``: the longest reactor stall seen by a probe (how long the reactor
thread was kept from its event loop, by libp2p, zeroconf or anything else). Binds
``viewer.http_addr``; a taken port stops startup with one clear line, port 0
takes a free one, and the real address is logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from klein import Klein
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from werkzeug.exceptions import NotFound

from goop.listening import cannot_listen
from goop.message import PresenceMessage
from goop.peertable import PeerTable
from goop.rendezvous.http import host_name, is_ip, make_site, page_of
from goop.rendezvous.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from goop.rendezvous.metrics import render as render_metrics
from goop.rendezvous.pages import new_nonce, security_headers
from goop.stallprobe import StallProbe
from goop.viewer.metrics import registry_for

_PAGE = resources.files("goop.viewer").joinpath("viewer.html").read_bytes()
# /peers: rows per page by default, and at most (the page asks for the first 200).
PEERS_PAGE = 200
MAX_PEERS_PAGE = 5000


def _json(request: Any, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value).encode()


class ViewerApp:
    app = Klein()

    def __init__(
        self,
        table: PeerTable,
        current: Callable[[], PresenceMessage],
        stats: Callable[[], dict[str, Any]] = dict,
        host: str = "127.0.0.1",
    ) -> None:
        self.table = table
        self.current = current
        self.stats = stats
        # Names a browser may use for this viewer: its bind address and loopback.
        self.allowed_hosts = frozenset(
            {"localhost", "127.0.0.1", "::1", host.lower()} - {"", "0.0.0.0", "::"}
        )
        # Bound to every interface: any of the machine's addresses, as an IP literal.
        self.any_ip = host in ("", "0.0.0.0", "::")
        self.registry: Any = None  # set by the service: its /metrics

    def resource(self) -> Any:
        return self.app.resource()

    def _refused(self, request: Any) -> bytes | None:
        """403 for a Host that is not this viewer's (DNS rebinding: a page on another
        site whose name now points at 127.0.0.1 must not read /self or /peers)."""
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        name = host_name(host)
        if name in self.allowed_hosts or (self.any_ip and is_ip(name)):
            return None
        return _json(request, {"error": f"Host {host[:100]!r} is not this viewer"}, 403)

    @app.route("/peers", branch=False, methods=["GET", "HEAD"])
    def peers(self, request: Any) -> bytes:
        refused = self._refused(request)
        if refused is not None:
            return refused
        page = page_of(request, PEERS_PAGE, MAX_PEERS_PAGE)
        if isinstance(page, str):
            return _json(request, {"error": page}, 400)
        request.setHeader(b"x-total-count", str(len(self.table)).encode())
        return _json(request, self.table.rows(*page))

    @app.route("/self", branch=False, methods=["GET", "HEAD"])
    def self_(self, request: Any) -> bytes:
        return self._refused(request) or _json(request, self.current().to_dict())

    @app.route("/stats", branch=False, methods=["GET", "HEAD"])
    def stats_(self, request: Any) -> bytes:
        return self._refused(request) or _json(request, self.stats())

    @app.route("/metrics", branch=False, methods=["GET", "HEAD"])
    def metrics(self, request: Any) -> bytes:
        """Prometheus text (docs/operations.md); the viewer is this machine's, no password."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.registry is None:
            return _json(request, {"error": "no metrics here"}, 404)
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        return render_metrics(self.registry)

    @app.route("/", branch=False, methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        refused = self._refused(request)
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        nonce = new_nonce()
        security_headers(request, nonce)
        return _PAGE.replace(b"$nonce", nonce.encode())

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return _json(request, {"error": "no such endpoint"}, 404)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ViewerService(Service):
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        table: PeerTable,
        current: Callable[[], PresenceMessage],
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.requested_port = port
        self.stall_probe = StallProbe(reactor)
        self.app = ViewerApp(table, current, self._stats, host)
        self.app.registry = registry_for(table, self.stall_probe)
        self.site = make_site(self.app.resource())
        self.listening: IListeningPort | None = None

    @property
    def url(self) -> str:
        assert self.listening is not None
        port = self.listening.getHost().port  # type: ignore[attr-defined]
        return f"http://{_url_host(self.host or '0.0.0.0')}:{port}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self.listening is not None:
            return
        try:
            self.listening = self.reactor.listenTCP(
                self.requested_port, self.site, interface=self.host
            )
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            raise cannot_listen(
                "viewer", self.host, self.requested_port, reason,
                "viewer.http_addr / --http-addr; use port 0 for any free port",
            ) from None  # fmt: skip

    def _stats(self) -> dict[str, Any]:
        return {"peers": len(self.app.table), **self.stall_probe.take()}

    def startService(self) -> None:
        self._listen()
        super().startService()  # type: ignore[no-untyped-call]
        self.stall_probe.start()
        self.log.info("viewer listening on {url}", url=self.url)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        self.stall_probe.stop()
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None
