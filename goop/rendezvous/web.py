"""The rendezvous HTTP API as a Klein app (SPEC: "Rendezvous HTTP API").

Each handler does HTTP only — method, auth, status, headers, body — and
hands the work to the `Board`. Every error is a JSON ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from werkzeug.exceptions import NotFound

from goop.logbuffer import LogBuffer
from goop.message import MessageError, parse_message
from goop.ratelimit import SlidingWindowLimiter
from goop.rendezvous import pages
from goop.rendezvous.board import Board
from goop.rendezvous.http import Network, client_address
from goop.rendezvous.shared import DatabaseUnavailable

JSON = b"application/json"
CHANGES_HEADER = b"x-goop-changes"
SUBSCRIBER_RETRY_AFTER = 10


def _send_json(request: Any, code: int, value: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value).encode()


def _error(request: Any, code: int, message: str) -> bytes:
    return _send_json(request, code, {"error": message})


def _wrong_method(request: Any, allowed: str) -> bytes | None:
    method = request.method
    if method == b"HEAD" and "GET" in allowed:
        return None
    if method.decode("latin-1") not in allowed.split(", "):
        request.setHeader(b"allow", allowed.encode())
        return _error(request, 405, f"method {method.decode('latin-1')} not allowed; use {allowed}")
    return None


class _PublishFastPath(resource.Resource):
    """The site's root: ``/publish`` straight to its handler, the rest to Klein.

    Every peer hits /publish every few seconds; Klein's routing and Deferred
    plumbing cost as much as the rest of the request together (measured), so
    the hot path skips them. Same handler, same responses.
    """

    isLeaf = True

    def __init__(self, app: RendezvousApp, rest: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._app = app
        self._rest = rest

    def render(self, request: Any) -> Any:
        if request.path != b"/publish":
            return self._rest.render(request)
        result = self._app.publish(request)
        if isinstance(result, bytes):
            return result

        def write(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        result.addCallback(write).addErrback(
            lambda f: self._app.log.failure("publish failed", f)
        )
        return server.NOT_DONE_YET


class RendezvousApp:
    """Routes of one rendezvous server; state is the instance's, not global."""

    app = Klein()
    log = Logger()

    def __init__(
        self,
        board: Board,
        reactor: IReactorTime,
        *,
        admin_password: str = "",
        publish_rate_limit: int = 0,
        trusted_proxies: Sequence[Network] = (),
        logs: LogBuffer | None = None,
        connect_urls: Callable[[], list[str]] = list,
        stats: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.board = board
        self.reactor = reactor
        self.admin_password = admin_password.encode()
        self.limiter = SlidingWindowLimiter(publish_rate_limit)
        self.trusted_proxies = tuple(trusted_proxies)
        self.logs = logs if logs is not None else LogBuffer()
        self.connect_urls = connect_urls
        self.stats = stats

    def resource(self) -> Any:
        return _PublishFastPath(self, self.app.resource())

    def _address(self, request: Any) -> str:
        host = request.getClientAddress()
        peer = getattr(host, "host", None) or "unknown"
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        return client_address(peer, forwarded, self.trusted_proxies)

    # -- peers ---------------------------------------------------------------

    def publish(self, request: Any) -> bytes | Deferred[bytes]:
        """POST /publish (served by `_PublishFastPath`, not through Klein's routing)."""
        refused = _wrong_method(request, "POST")
        if refused is not None:
            return refused
        if not self.board.accepting:
            return _error(request, 503, "server is shutting down")
        now = self.reactor.seconds()
        address = self._address(request)
        wait = self.limiter.hit(address, now)
        if wait:
            request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
            return _error(
                request, 429, f"rate limit: at most {self.limiter.limit} publishes per minute"
            )
        body = request.content.read()
        try:
            message = parse_message(body, int(now * 1000))
        except MessageError as e:
            return _error(request, 400, str(e))
        stored = self.board.accept(message, len(body), now)
        if stored is None:
            request.setResponseCode(204)
            return b""

        def done(_: None) -> bytes:
            request.setResponseCode(204)
            return b""

        def unavailable(failure: Failure) -> bytes:
            failure.trap(DatabaseUnavailable)  # type: ignore[no-untyped-call]
            request.setHeader(b"retry-after", b"1")
            return _error(request, 503, str(failure.value))

        return stored.addCallbacks(done, unavailable)

    @app.route("/events", branch=False)
    def events(self, request: Any) -> bytes | Deferred[bytes]:
        refused = _wrong_method(request, "GET")
        if refused is not None:
            return refused
        if not self.board.accepting:
            return _error(request, 503, "server is shutting down")
        address = self._address(request)
        hub = self.board.hub
        why = hub.refusal(address)
        if why is not None:
            request.setHeader(b"retry-after", str(SUBSCRIBER_RETRY_AFTER).encode())
            return _error(request, 429, why)
        changes_only = request.args.get(b"changes", [b""])[0] in (b"1", b"true")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # Advertises the changes-only mode: this stream honours ?changes=1.
        request.setHeader(CHANGES_HEADER, b"1" if changes_only else b"available")
        # Tells nginx-style proxies not to buffer the stream.
        request.setHeader(b"x-accel-buffering", b"no")
        if request.method == b"HEAD":
            return b""
        last = request.getHeader(b"last-event-id")
        backlog = self.board.backlog(
            last.decode("latin-1") if last is not None else None, changes_only
        )
        sub = hub.subscribe(request, address, backlog, changes_only)
        # Klein cancels this Deferred when the client goes away; the canceller
        # removes the subscriber. The server fires it to end the stream.
        return sub.done

    @app.route("/healthz", branch=False)
    def healthz(self, request: Any) -> bytes:
        refused = _wrong_method(request, "GET")
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if not self.board.accepting:
            request.setResponseCode(503)
            return b"stopping\n"
        return b"ok\n"

    @app.route("/", branch=False)
    def dashboard(self, request: Any) -> bytes:
        refused = _wrong_method(request, "GET")
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return pages.dashboard(
            peers=[e.message for e in self.board.registry],
            subscribers=len(self.board.hub),
            connect_urls=self.connect_urls(),
        )

    # -- admin ---------------------------------------------------------------

    def _admin_refusal(self, request: Any) -> bytes | None:
        if not self.admin_password:
            return _error(request, 403, "admin is disabled: no admin_password is configured")
        user = request.getUser() or b""
        password = request.getPassword() or b""
        # Both compares always run: no early exit that times the user name.
        ok_user = hmac.compare_digest(user, b"admin")
        ok_password = hmac.compare_digest(password, self.admin_password)
        if not (ok_user and ok_password):
            request.setHeader(b"www-authenticate", b'Basic realm="goop admin", charset="UTF-8"')
            return _error(request, 401, "admin login required (user admin)")
        return None

    def _peer_rows(self) -> list[dict[str, Any]]:
        return [entry.row() for entry in self.board.registry]

    @app.route("/admin", branch=False)
    def admin(self, request: Any) -> bytes:
        refused = _wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return pages.admin(
            rows=self._peer_rows(),
            logs=self.logs.lines()[-100:],
            subscribers=len(self.board.hub),
            now=self.reactor.seconds(),
        )

    @app.route("/peers.json", branch=False)
    def peers_json(self, request: Any) -> bytes:
        refused = _wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        return _send_json(request, 200, self._peer_rows())

    @app.route("/logs.json", branch=False)
    def logs_json(self, request: Any) -> bytes:
        refused = _wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        return _send_json(request, 200, self.logs.lines())

    @app.route("/stats.json", branch=False)
    def stats_json(self, request: Any) -> bytes:
        """Admin: counters for operators and the benchmark (resets the stall window)."""
        refused = _wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        hub = self.board.hub
        return _send_json(
            request,
            200,
            {
                "peers": len(self.board.registry),
                "subscribers": len(hub),
                "paused_subscribers": sum(1 for s in hub.subscribers if s.paused),
                "event_head": self.board.events.head,
                **self.stats(),
            },
        )

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Failure) -> bytes:
        return _error(request, 404, f"no such endpoint: {request.path.decode('latin-1')}")
