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

from goop.message import PresenceMessage
from goop.peertable import PeerTable
from goop.rendezvous.http import make_site
from goop.stallprobe import StallProbe

_PAGE = resources.files("goop.viewer").joinpath("viewer.html").read_bytes()


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
    ) -> None:
        self.table = table
        self.current = current
        self.stats = stats

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/peers", branch=False, methods=["GET", "HEAD"])
    def peers(self, request: Any) -> bytes:
        return _json(request, self.table.rows())

    @app.route("/self", branch=False, methods=["GET", "HEAD"])
    def self_(self, request: Any) -> bytes:
        return _json(request, self.current().to_dict())

    @app.route("/stats", branch=False, methods=["GET", "HEAD"])
    def stats_(self, request: Any) -> bytes:
        return _json(request, self.stats())

    @app.route("/", branch=False, methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _PAGE

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
        self.app = ViewerApp(table, current, self._stats)
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
            raise SystemExit(
                f"goop: viewer cannot listen on {self.host}:{self.requested_port}: {reason}"
                " (viewer.http_addr / --http-addr; use port 0 for any free port)"
            ) from None

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
