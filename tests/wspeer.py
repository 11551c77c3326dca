"""A test WebSocket peer for ``/ws``: Autobahn's client, collecting what the server sends.

It speaks GOOP2-PROTOCOL.md §4 as a goop2 peer would (text frames of presence
JSON, answering pings); tests wait on its Deferreds with timeouts, never sleep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor


class WsPeer(WebSocketClientProtocol):
    factory: PeerFactory

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.control: list[str] = []  # "ping" / "pong", as they arrive
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def onOpen(self) -> None:
        opened = self.factory.opened
        if not opened.called:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))
        self._check()

    def onPing(self, payload: bytes) -> None:
        self.control.append("ping")
        super().onPing(payload)  # answers with a pong
        self._check()

    def onPong(self, payload: bytes) -> None:
        self.control.append("pong")
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before open: {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send_json(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode())

    def of_type(self, kind: str, peer_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m for m in self.received
            if m.get("type") == kind and (peer_id is None or m.get("peerId") == peer_id)
        ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        self._waiters.append((predicate, d))
        self._check()
        return d

    def _check(self) -> None:
        for pair in list(self._waiters):
            predicate, d = pair
            if d.called:
                self._waiters.remove(pair)
            elif predicate():
                self._waiters.remove(pair)
                d.callback(None)


class PeerFactory(WebSocketClientFactory):
    protocol = WsPeer

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.opened: defer.Deferred[WsPeer] = defer.Deferred()
        self.failed_status: int | None = None

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(reason)


def open_ws(url: str, endpoint: Any = None, timeout: float = 10) -> defer.Deferred[WsPeer]:
    """Connect to ``url`` (over ``endpoint`` when given, e.g. TLS to 127.0.0.1 for a
    wss:// URL naming the certificate's host); fires with the open socket's protocol."""
    factory = PeerFactory(url)
    if endpoint is None:
        connectWS(factory)
    else:
        endpoint.connect(factory).addErrback(
            lambda f: None if factory.opened.called else factory.opened.errback(f)
        )
    factory.opened.addTimeout(timeout, reactor)
    return factory.opened
