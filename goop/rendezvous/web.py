"""The rendezvous HTTP API as a Klein app (SPEC: "Rendezvous HTTP API").

Each handler does HTTP only — method, auth, status, headers, body — and
hands the work to the `Board`. Every error is a JSON ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, Final

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from werkzeug.exceptions import NotFound

from goop.logbuffer import LogBuffer
from goop.message import (
    MAX_PEER_ID_BYTES,
    MessageError,
    PresenceMessage,
    decode_json,
    parse_message,
    signed_ts,
)
from goop.ratelimit import SlidingWindowLimiter
from goop.rendezvous import pages
from goop.rendezvous.board import Board, Refused
from goop.rendezvous.http import (
    Network,
    client_address,
    error_json,
    host_name,
    is_ip,
    limit_key,
    page_of,
    reason,
    send_json,
    wrong_method,
)
from goop.rendezvous.keys import KeyDirectory, KeyRefused, parse_key_post
from goop.rendezvous.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from goop.rendezvous.metrics import PublishOutcomes
from goop.rendezvous.registry import row
from goop.rendezvous.shared import DatabaseUnavailable
from goop.rendezvous.signatures import SignatureRefused
from goop.rendezvous.throttle import LoginThrottle
from goop.rendezvous.websocket import WebSocketChannel

CHANGES_HEADER = b"x-goop-changes"
# /peers.json: rows per page by default, and at most (offset/limit page through).
PEERS_PAGE = 1000
MAX_PEERS_PAGE = 5000
SUBSCRIBER_RETRY_AFTER = 10


# Peers one /dashboard.json request may ask about (the page shows at most 200 rows).
DASHBOARD_LOOKUPS: Final = 200

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
        path = request.path
        if path != b"/publish":
            if path == b"/ws":
                return self._app.ws.render(request)
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
        ipv6_prefix: int = 64,
        server_names: Sequence[str] = (),
    ) -> None:
        self.board = board
        self.reactor = reactor
        self.admin_password = admin_password.encode()
        self.limiter = SlidingWindowLimiter(publish_rate_limit)
        self.trusted_proxies = tuple(trusted_proxies)
        self.logs = logs if logs is not None else LogBuffer()
        self.connect_urls = connect_urls
        self.stats = stats
        self.keys = KeyDirectory()
        self.ipv6_prefix = ipv6_prefix
        self.server_names = frozenset(n.lower() for n in server_names)
        self.logins = LoginThrottle()
        self.outcomes = PublishOutcomes()
        # Set by the service: the /metrics text, and whether a separate metrics
        # port serves it (then this port's /metrics says so when no password is set).
        self.metrics: Callable[[], bytes] | None = None
        self.metrics_elsewhere = ""
        self.history: Callable[[], list[tuple[float, int]]] = list  # set by the service
        self._warned_logins: dict[str, bool] = {}
        self.ws = WebSocketChannel(
            board, board.hub, reactor, self.submit, self._address, self.cross_site
        )
        self.ws.outcomes = self.outcomes

    def resource(self) -> Any:
        return _PublishFastPath(self, self.app.resource())

    def _address(self, request: Any) -> str:
        """The client's address as every per-address limit counts it (IPv6: its /64)."""
        host = request.getClientAddress()
        peer = getattr(host, "host", None) or "unknown"
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        return limit_key(client_address(peer, forwarded, self.trusted_proxies), self.ipv6_prefix)

    def cross_site(self, request: Any) -> bytes | None:
        """403 for a request a web page made a browser send (an ``Origin`` not ours).

        Peers are not browsers and send no ``Origin``; a page elsewhere could
        otherwise make a visitor's browser post an ``offline`` for anyone to a
        rendezvous on their LAN or loopback. Our own origin is the ``Host`` the
        request names, when that is an IP address, ``localhost`` or one of
        our TLS names (a DNS name pointed at us by someone else is not ours).
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return None
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        netloc = origin.decode("latin-1").lower().partition("://")[2].rstrip("/")
        if netloc and netloc == host and self.own_host(host):
            return None
        return error_json(
            request, 403, "cross-site request refused (its Origin is not this server)"
        )

    def own_host(self, host: str) -> bool:
        name = host_name(host)
        return name == "localhost" or name in self.server_names or is_ip(name)

    # -- peers ---------------------------------------------------------------

    def publish(self, request: Any) -> bytes | Deferred[bytes]:
        """POST /publish (served by `_PublishFastPath`, not through Klein's routing),
        its outcome counted for /metrics."""
        result = self._publish(request)
        if isinstance(result, bytes):
            self.outcomes.add("http", request.code)
            return result

        def counted(body: bytes) -> bytes:
            self.outcomes.add("http", request.code)
            return body

        return result.addCallback(counted)

    def _publish(self, request: Any) -> bytes | Deferred[bytes]:
        refused = wrong_method(request, "POST")
        if refused is not None:
            return refused
        if not self.board.accepting:
            return error_json(request, 503, "server is shutting down")
        cross = self.cross_site(request)
        if cross is not None:
            return cross
        now = self.reactor.seconds()
        address = self._address(request)
        wait = self.limiter.hit(address, now)
        if wait:
            request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
            return error_json(
                request, 429, f"rate limit: at most {self.limiter.limit} publishes per minute"
            )
        body = request.content.read()
        try:
            message = parse_message(body, int(now * 1000), verified=True)
        except MessageError as e:
            return error_json(request, 400, str(e))
        try:
            stored = self.submit(message, len(body), now, address)
        except SignatureRefused as e:
            return error_json(request, 403, str(e))
        except Refused as e:
            request.setHeader(b"retry-after", str(e.retry_after).encode())
            return error_json(request, e.status, str(e))
        if stored is None:
            request.setResponseCode(204)
            return b""

        def done(_: None) -> bytes:
            request.setResponseCode(204)
            return b""

        def unavailable(failure: Failure) -> bytes:
            failure.trap(DatabaseUnavailable)  # type: ignore[no-untyped-call]
            request.setHeader(b"retry-after", b"1")
            return error_json(request, 503, str(failure.value))

        return stored.addCallbacks(done, unavailable)

    def submit(
        self, message: PresenceMessage, nbytes: int, now: float, address: str
    ) -> Deferred[None] | None:
        """A validated client message (POST or /ws) into the board, as the server relays it.

        Raises `SignatureRefused` when a signature rule refuses it (docs/signing.md),
        `Refused` when it would register a peer past ``max_peers`` or past the
        sending address's share (``max_peers_per_ip``).

        ``verified``: goop runs no registration service, so, as goop2 does
        without one, every accepted message is relayed with ``verified: true``
        (docs/rendezvous.md); the client's own value was never read.
        """
        if not message.verified:
            message = message.stamped(verified=True)
        board = self.board
        signed = board.check_signature(message, now)
        board.admit(message, address)
        stored = board.accept(message, nbytes, now)
        if signed:
            if stored is None:
                board.signatures.accepted(message, now)
            else:
                stored.addCallback(lambda _: board.signatures.accepted(message, now))
        return stored

    @app.route("/events", branch=False)
    def events(self, request: Any) -> bytes | Deferred[bytes]:
        refused = wrong_method(request, "GET")
        if refused is not None:
            return refused
        if not self.board.accepting:
            return error_json(request, 503, "server is shutting down")
        address = self._address(request)
        hub = self.board.hub
        why = hub.refusal(address)
        if why is not None:
            request.setHeader(b"retry-after", str(SUBSCRIBER_RETRY_AFTER).encode())
            return error_json(request, 429, why)
        changes_only = request.args.get(b"changes", [b""])[0] in (b"1", b"true")
        # A stream that names its peer also gets that peer's punch hints.
        peer_id = request.args.get(b"peer_id", [b""])[0].decode("utf-8", "replace").strip()
        if len(peer_id.encode()) > MAX_PEER_ID_BYTES:
            return error_json(request, 400, f"peer_id: longer than {MAX_PEER_ID_BYTES} bytes")
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
        sub = hub.subscribe(request, address, backlog, changes_only, peer_id)
        # Klein cancels this Deferred when the client goes away; the canceller
        # removes the subscriber. The server fires it to end the stream.
        return sub.done

    # -- goop2's side endpoints ---------------------------------------------------

    @app.route("/api/encryption/keys", branch=False)
    def post_key(self, request: Any) -> bytes:
        """goop2's key directory: a peer registers its public key (201 is success)."""
        refused = wrong_method(request, "POST") or self.cross_site(request)
        if refused is not None:
            return refused
        now = self.reactor.seconds()
        wait = self.limiter.hit(self._address(request), now)
        if wait:
            request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
            return error_json(request, 429, "rate limit (shared with /publish)")
        header = (request.getHeader(b"x-goop-peerid") or b"").decode("utf-8", "replace").strip()
        try:
            peer_id, key = parse_key_post(decode_json(request.content.read()), header)
            signed = self._signed_key(peer_id)
            if signed is not None and key != signed:
                raise KeyRefused(
                    403,
                    "this peer signs its presence: the only key taken for it is the "
                    "publicKey its signed presence message carries",
                )
            self.keys.put(peer_id, key, now, self.board.registry, self._address(request))
        except MessageError as e:
            return error_json(request, 400, str(e))
        except KeyRefused as e:
            if e.status in (429, 503):
                request.setHeader(b"retry-after", b"60")
            return error_json(request, e.status, str(e))
        return send_json(request, 201, {"status": "ok"})

    @app.route("/api/encryption/keys/<path:peer_id>", branch=False)
    def get_key(self, request: Any, peer_id: str) -> bytes:
        refused = wrong_method(request, "GET")
        if refused is not None:
            return refused
        signed = self._signed_key(peer_id)
        if signed is not None:
            key = signed  # nothing the peer did not sign
        else:
            entry = self.board.registry.get(peer_id)
            key = entry.message.public_key if entry is not None else ""
            key = key or self.keys.get(peer_id) or ""
        if not key:
            return error_json(request, 404, "no key for this peer")
        return send_json(request, 200, {"public_key": key})

    def _signed_key(self, peer_id: str) -> str | None:
        """For a peer that signs its presence, the ``publicKey`` it signed ("" when it
        signed none); None for a peer that does not sign (goop2's directory rules)."""
        entry = self.board.registry.get(peer_id)
        if entry is not None and signed_ts(entry.fields):
            return entry.message.public_key
        return "" if self.board.signatures.remembers(peer_id) else None

    @app.route("/api/capabilities", branch=False)
    def capabilities(self, request: Any) -> bytes:
        """What this server offers, in goop2's shape (a relay and the rest: not here)."""
        refused = wrong_method(request, "GET")
        if refused is not None:
            return refused
        return send_json(
            request,
            200,
            {
                "encryption": True,
                "registration": False,
                "credits": False,
                "templates": False,
                "bridge": False,
                "relay": False,
            },
        )

    @app.route("/healthz", branch=False)
    def healthz(self, request: Any) -> bytes:
        refused = wrong_method(request, "GET")
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        why = self.board.healthy
        if why is not None:
            request.setResponseCode(503, reason(503))
            return why.encode("utf-8", "replace") + b"\n"
        return b"ok\n"

    @app.route("/", branch=False)
    def dashboard(self, request: Any) -> bytes:
        refused = wrong_method(request, "GET")
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        nonce = pages.new_nonce()
        pages.security_headers(request, nonce)
        registry = self.board.registry
        return pages.dashboard(
            peers=[e.message for e in islice(registry, pages.DASHBOARD_ROWS)],
            subscribers=len(self.board.hub),
            connect_urls=self.connect_urls(),
            nonce=nonce,
            total=len(registry),
        )

    # -- admin ---------------------------------------------------------------

    def _admin_refusal(self, request: Any) -> bytes | None:
        if not self.admin_password:
            return error_json(request, 403, "admin is disabled: no admin_password is configured")
        key = self._address(request)
        now = self.reactor.seconds()
        wait = self.logins.wait(key, now)
        if wait:
            request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
            return error_json(request, 429, "too many failed logins; wait before trying again")
        user = request.getUser() or b""
        password = request.getPassword() or b""
        # Both compares always run: no early exit that times the user name.
        ok_user = hmac.compare_digest(user, b"admin")
        ok_password = hmac.compare_digest(password, self.admin_password)
        if not (ok_user and ok_password):
            if user or password:  # a browser's first, credential-less try is no failure
                self.logins.failed(key, now)
                if self.logins.wait(key, now) and not self._warned_logins.get(key):
                    self._warned_logins[key] = True
                    self.log.warn("admin: failed logins from {key} are now throttled", key=key)
            request.setHeader(b"www-authenticate", b'Basic realm="goop admin", charset="UTF-8"')
            return error_json(request, 401, "admin login required (user admin)")
        self.logins.succeeded(key)
        self._warned_logins.pop(key, None)
        return None

    def _peer_rows(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        entries = islice(self.board.registry, offset, None if limit is None else offset + limit)
        return [row(entry) for entry in entries]

    @app.route("/admin", branch=False)
    def admin(self, request: Any) -> bytes:
        refused = wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        nonce = pages.new_nonce()
        pages.security_headers(request, nonce)
        return pages.admin(
            rows=self._peer_rows(0, pages.ADMIN_ROWS),
            logs=self.logs.lines()[-100:],
            subscribers=len(self.board.hub),
            now=self.reactor.seconds(),
            nonce=nonce,
            total=len(self.board.registry),
        )

    @app.route("/peers.json", branch=False)
    def peers_json(self, request: Any) -> bytes:
        refused = wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        page = page_of(request, PEERS_PAGE, MAX_PEERS_PAGE)
        if isinstance(page, str):
            return error_json(request, 400, page)
        request.setHeader(b"x-total-count", str(len(self.board.registry)).encode())
        return send_json(request, 200, self._peer_rows(*page))

    @app.route("/logs.json", branch=False)
    def logs_json(self, request: Any) -> bytes:
        refused = wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        return send_json(request, 200, self.logs.lines())

    @app.route("/dashboard.json", branch=False)
    def dashboard_json(self, request: Any) -> bytes:
        """What the dashboard polls: totals for its rates, the watchers, the hour's chart;
        with a POST of ``{"peers": [...]}`` (at most `DASHBOARD_LOOKUPS` IDs, the rows it
        shows) also when each was last heard and how (``ws`` or ``http``). Public, like
        the page; each answer costs a few hundred dictionary lookups at most."""
        refused = wrong_method(request, "GET, POST") or self.cross_site(request)
        if refused is not None:
            return refused
        board, hub = self.board, self.board.hub
        now = self.reactor.seconds()
        out: dict[str, Any] = {
            "now": now,
            "peers": len(board.registry),
            "watchers": hub.counts.get("sse", 0),
            "sockets": hub.counts.get("ws", 0),
            "accepted": sum(n for (_, o), n in self.outcomes.counts.items() if o == "accepted"),
            "events": board.events.head,
            "history": self.history(),
        }
        if request.method == b"POST":
            try:
                asked = decode_json(request.content.read())
            except MessageError as e:
                return error_json(request, 400, str(e))
            ids = asked.get("peers") if isinstance(asked, dict) else None
            if not isinstance(ids, list) or len(ids) > DASHBOARD_LOOKUPS:
                return error_json(
                    request, 400, f"peers: a list of at most {DASHBOARD_LOOKUPS} peer IDs"
                )
            seen: dict[str, list[Any]] = {}
            for peer_id in ids:
                entry = board.registry.get(peer_id) if isinstance(peer_id, str) else None
                if entry is not None:
                    via = "ws" if peer_id in self.ws.sockets else "http"
                    seen[peer_id] = [round(max(0.0, now - entry.last_seen), 1), via]
            out["seen"] = seen
        return send_json(request, 200, out)

    @app.route("/metrics", branch=False)
    def metrics_text(self, request: Any) -> bytes:
        """Prometheus's text format, behind the admin password (docs/operations.md)."""
        refused = wrong_method(request, "GET")
        if refused is None and not self.admin_password and self.metrics_elsewhere:
            refused = error_json(
                request, 403, f"metrics are served on {self.metrics_elsewhere} (metrics_port)"
            )
        refused = refused or self._admin_refusal(request)
        if refused is not None:
            return refused
        if self.metrics is None:
            return error_json(request, 404, "no metrics here")
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics()

    @app.route("/stats.json", branch=False)
    def stats_json(self, request: Any) -> bytes:
        """Admin: counters for operators and the benchmark (resets the stall window)."""
        refused = wrong_method(request, "GET") or self._admin_refusal(request)
        if refused is not None:
            return refused
        hub = self.board.hub
        return send_json(
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
        return error_json(request, 404, f"no such endpoint: {request.path.decode('latin-1')}")
