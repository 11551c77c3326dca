"""HTTP plumbing for the rendezvous: bounded request bodies, a quiet Site, client addresses.

`BoundedRequest` refuses a body larger than the cap while it is being read:
a ``Content-Length`` over the cap is answered 413 before any body byte is
read, and a chunked body is cut off the moment it crosses the cap. Nothing
past the cap is ever stored.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from http import HTTPStatus
from io import BytesIO
from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from goop.message import MAX_BODY_BYTES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BoundedRequest(Request):
    max_body = MAX_BODY_BYTES

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse(f"body of {length} bytes is larger than {self.max_body} bytes")
        # Small bodies only: always in memory, never a temp file.
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse(f"body larger than {self.max_body} bytes")
            return
        self.content.write(data)  # type: ignore[union-attr]

    def _cleanup(self) -> None:
        super()._cleanup()  # type: ignore[no-untyped-call]
        # Klein's per-request closures hold the request in a reference cycle
        # (one of them refers to itself), so a finished request and all it
        # reaches (headers, transport, Klein's adapter with werkzeug's matcher:
        # ~50 objects) waited for the garbage collector. Under the hardening
        # soak that was 12,000 objects per young collection, most of its 50 ms
        # pause. Let go of them now; the cycle left is a handful of objects.
        self._adapterCache = {}
        self.requestHeaders = self.responseHeaders = Headers()
        self.transport = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        # No endpoint takes form posts; without this twisted.web parses every
        # POST's Content-Type through the email package: a third of the CPU of
        # a publish at 2,000 publishes/s (py-spy, bench steady state).
        self._parsePOSTFormSubmission = False
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _refuse(self, why: str) -> None:
        if self._refused:
            return
        self._refused = True
        site = getattr(self.channel, "site", None)
        path = (getattr(self.channel, "_path", None) or b"").split(b"?")[0]
        if site is not None and path == b"/publish":
            site.publish_too_large += 1
        # The request has not been dispatched yet, so answer on the raw
        # transport and close: reading the rest would mean accepting it.
        self.channel.transport.write(raw_error(413, why))  # type: ignore[union-attr]
        self.channel.loseConnection()  # type: ignore[no-untyped-call]


DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 60.0


class GuardedChannel(HTTPChannel):
    """An HTTP connection with a deadline per request and a place in the per-address count.

    Twisted's own timeout restarts with every byte received, so a client
    sending one header byte every 20 s kept its connection forever. Here a
    request must be complete (head and body) within ``request_timeout`` of
    its first byte, or the client gets 408 and is disconnected; between
    requests the idle timeout (Twisted's, set from the site) applies. A
    request being answered (an ``/events`` stream) has neither: streams are
    kept alive by their pings.
    """

    request_timeout = DEFAULT_REQUEST_TIMEOUT
    _deadline: IDelayedCall | None = None
    _key: str | None = None  # this connection's slot in the site's per-address count

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(  # type: ignore[no-untyped-call]
                self.request_timeout, self._too_slow
            )
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        site = getattr(self, "site", None)
        if self._key is not None and isinstance(site, QuietSite):
            site.connection_closed(self._key)
            self._key = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        transport.write(
            raw_error(408, f"request not complete within {self.request_timeout:g} s")
        )
        self.timeoutConnection()  # type: ignore[no-untyped-call]  # close; abort if the client does not read it either


class _TooMany(Protocol):
    """Answers a connection over the per-address cap with 503 and hangs up."""

    def __init__(self, why: str) -> None:
        self.why = why

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(raw_error(503, self.why, b"Retry-After: 10\r\n"))
        self.transport.loseConnection()


class QuietSite(Site):
    """A Site that writes no access log line per request (heartbeats would flood it),
    with a cap on open connections per client address and a per-request deadline."""

    requestFactory = BoundedRequest
    protocol = GuardedChannel  # type: ignore[assignment]  # plain HTTP/1.1, no HTTP/2
    max_connections_per_ip = 0
    request_timeout = DEFAULT_REQUEST_TIMEOUT
    ipv6_prefix = 64
    trusted: tuple[Network, ...] = ()
    refused_connections = 0
    publish_too_large = 0  # POST /publish bodies refused (413) before the handler ran

    def __init__(self, resource: IResource, **kw: Any) -> None:
        super().__init__(resource, **kw)  # type: ignore[no-untyped-call]
        self.connections: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "")
        key = limit_key(host, self.ipv6_prefix)
        cap = self.max_connections_per_ip
        exempt = not cap or _in_any(host, self.trusted)
        if not exempt and self.connections.get(key, 0) >= cap:
            self.refused_connections += 1
            return _TooMany(f"too many connections from {key} (limit {cap})")
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        channel.request_timeout = self.request_timeout
        if not exempt:
            channel._key = key
            self.connections[key] = self.connections.get(key, 0) + 1
        return channel

    def connection_closed(self, key: str) -> None:
        left = self.connections.get(key, 0) - 1
        if left > 0:
            self.connections[key] = left
        else:
            self.connections.pop(key, None)

    def log(self, request: Any) -> None:
        pass


def make_site(
    resource: IResource,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_connections_per_ip: int = 0,
    ipv6_prefix: int = 64,
    trusted: Sequence[Network] = (),
    reactor: Any = None,
) -> QuietSite:
    kw: dict[str, Any] = {"timeout": idle_timeout}
    if reactor is not None:
        kw["reactor"] = reactor
    site = QuietSite(resource, **kw)
    site.requestFactory = BoundedRequest
    site.request_timeout = request_timeout
    site.max_connections_per_ip = max_connections_per_ip
    site.ipv6_prefix = ipv6_prefix
    site.trusted = tuple(trusted)
    site.noisy = False  # no "Starting factory" lines; the service logs its URL
    return site


def parse_networks(specs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def _in_any(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8788`` -> ``::1``, ``x:80`` -> ``x``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0]


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def limit_key(address: str, ipv6_prefix: int = 64) -> str:
    """The key every per-address limit counts a client under.

    IPv4: the address. IPv6: its /``ipv6_prefix`` network, since one host
    often holds a whole /64 (2^64 addresses to rotate through); an IPv4
    address mapped into IPv6 counts as itself.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return address


def client_address(
    peer_host: str, forwarded_for: Sequence[bytes], trusted: Sequence[Network]
) -> str:
    """The address a request really comes from.

    ``X-Forwarded-For`` is believed only when the connection comes from a
    trusted proxy; then the right-most address that is not itself a trusted
    proxy is the client (entries to its left could be forged by the client).
    """
    if not trusted or not forwarded_for or not _in_any(peer_host, trusted):
        return peer_host
    hops = [h.strip() for raw in forwarded_for for h in raw.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        if not _in_any(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer_host
    return peer_host


JSON = b"application/json"


def reason(code: int) -> bytes:
    """The standard reason phrase (Twisted answers "Unknown Status" for 425 and 429)."""
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Unknown Status"


def raw_error(code: int, why: str, headers: bytes = b"") -> bytes:
    """A whole ``Connection: close`` response with a JSON error, for answering on the
    raw transport before (or instead of) a request being dispatched."""
    body = json.dumps({"error": why}).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, reason(code), headers, len(body), body)
    )


def send_json(request: Any, code: int, value: object) -> bytes:
    request.setResponseCode(code, reason(code))
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    body = json.dumps(value).encode()
    # A known length, not chunked framing: simpler for small clients (and
    # the keep-alive parsers of load tools) to read.
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def error_json(request: Any, code: int, message: str) -> bytes:
    return send_json(request, code, {"error": message})


def wrong_method(request: Any, allowed: str) -> bytes | None:
    method = request.method
    if method == b"HEAD" and "GET" in allowed:
        return None
    if method.decode("latin-1") not in allowed.split(", "):
        request.setHeader(b"allow", allowed.encode())
        name = method.decode("latin-1")
        return error_json(request, 405, f"method {name} not allowed; use {allowed}")
    return None


def page_of(request: Any, default: int, most: int) -> tuple[int, int] | str:
    """``(offset, limit)`` from a request's ``?offset=&limit=``, or why they are wrong."""
    try:
        offset = int(request.args.get(b"offset", [b"0"])[0])
        limit = int(request.args.get(b"limit", [str(default).encode()])[0])
    except ValueError:
        return "offset and limit must be integers"
    if offset < 0 or not 1 <= limit <= most:
        return f"offset >= 0 and 1 <= limit <= {most}"
    return offset, limit
