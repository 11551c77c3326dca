"""An in-memory rendezvous: the real Klein app and Twisted HTTP stack, no sockets.

Each `Conn` is a real `HTTPChannel` on a `StringTransport`, so status lines,
headers, chunked SSE bodies and producer back-pressure are Twisted's own;
time is a `Clock`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from goop.logbuffer import LogBuffer
from goop.rendezvous.board import Board
from goop.rendezvous.fanout import Hub
from goop.rendezvous.http import make_site, parse_networks
from goop.rendezvous.web import RendezvousApp
from goop.sseparse import SSEEvent, SSEParser


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = []
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return b"".join(out), False
        size = int(data[:line_end], 16)
        if size == 0:
            return b"".join(out), True
        start = line_end + 2
        if len(data) < start + size + 2:
            out.append(data[start:])
            return b"".join(out), False
        out.append(data[start : start + size])
        data = data[start + size + 2 :]


def parse_response(raw: bytes) -> Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body, complete = _dechunk(rest)
    else:
        length = int(headers.get("content-length", len(rest)))
        body, complete = rest[:length], len(rest) >= length
    return Response(status, headers, body, complete)


@dataclass
class Conn:
    server: InMemoryServer
    ip: str
    transport: StringTransport = field(init=False)

    def __post_init__(self) -> None:
        self.proto = self.server.site.buildProtocol(IPv4Address("TCP", self.ip, 40000))
        assert self.proto is not None
        self.proto.callLater = self.server.clock.callLater  # type: ignore[attr-defined]
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", self.ip, 40000))
        self.proto.makeConnection(self.transport)

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        hdrs = {"Host": "rv.test", **(headers or {})}
        if body or method in ("POST", "PUT"):
            hdrs.setdefault("Content-Length", str(len(body)))
        raw = f"{method} {path} HTTP/1.1\r\n".encode()
        raw += b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs.items())
        self.proto.dataReceived(raw + b"\r\n" + body)
        self.server.clock.advance(0)

    def response(self) -> Response:
        return parse_response(self.transport.value())

    def events(self) -> list[SSEEvent]:
        """Every SSE event received so far on this connection."""
        return SSEParser().feed(self.response().body)

    def pause(self) -> None:
        """Act as a socket whose send buffer is full."""
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        """The socket drains; the hub writes the coalesced backlog in its next turn."""
        self.transport.producer.resumeProducing()
        self.server.clock.advance(0)

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionDone()))


class InMemoryServer:
    def __init__(
        self,
        *,
        ttl: float = 20,
        admin_password: str = "",
        publish_rate_limit: int = 0,
        max_subscribers: int = 0,
        max_subscribers_per_ip: int = 0,
        trusted_proxies: tuple[str, ...] = (),
        connect_urls: list[str] | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hub = Hub(self.clock, max_subscribers, max_subscribers_per_ip)
        self.board = Board(self.hub, ttl, first_event_id=1)
        self.logs = LogBuffer()
        self.app = RendezvousApp(
            self.board,
            self.clock,
            admin_password=admin_password,
            publish_rate_limit=publish_rate_limit,
            trusted_proxies=parse_networks(trusted_proxies),
            logs=self.logs,
            connect_urls=lambda: list(connect_urls or []),
        )
        self.site = make_site(self.app.resource())

    def connect(self, ip: str = "10.0.0.1") -> Conn:
        return Conn(self, ip)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        ip: str = "10.0.0.1",
    ) -> Response:
        conn = self.connect(ip)
        conn.send(method, path, body, headers)
        return conn.response()

    def publish(self, ip: str = "10.0.0.1", **fields: Any) -> Response:
        msg = {"type": "online", "peerId": "peer-1", **fields}
        return self.request("POST", "/publish", json.dumps(msg).encode(), ip=ip)

    def subscribe(
        self, ip: str = "10.0.0.1", headers: dict[str, str] | None = None, path: str = "/events"
    ) -> Conn:
        conn = self.connect(ip)
        conn.send("GET", path, headers=headers)
        return conn


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
