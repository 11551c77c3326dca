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
from typing import Any

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
        body = json.dumps({"error": why}).encode()
        # The request has not been dispatched yet, so answer on the raw
        # transport and close: reading the rest would mean accepting it.
        self.channel.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        self.channel.loseConnection()  # type: ignore[no-untyped-call]


class QuietSite(Site):
    """A Site that writes no access log line per request (heartbeats would flood it)."""

    requestFactory = BoundedRequest

    def log(self, request: Any) -> None:
        pass


def make_site(resource: IResource) -> QuietSite:
    site = QuietSite(resource)  # type: ignore[no-untyped-call]
    site.requestFactory = BoundedRequest
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


def send_json(request: Any, code: int, value: object) -> bytes:
    request.setResponseCode(code, reason(code))
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value).encode()


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
