"""A WebSocket client for a rendezvous's ``/ws``: Autobahn on Twisted, one socket per dial.

One job: open ``ws://`` or ``wss://`` to a URL and report the outcome in
terms a rendezvous link acts on:

- open: the Deferred fires with a `Socket` (send text frames, close); each
  received text frame goes to ``on_frame``, and ``on_closed`` is told once,
  with a readable reason, when the open socket ends;
- refused with an HTTP status (`HandshakeRefused`: 425 is goop2's "publish
  first", anything else means "no /ws here");
- failed otherwise (connection refused, TLS, no answer in time): the
  failure itself, which `goop.presence.tlsclient.describe_failure` explains.

``wss://`` uses the `IPolicyForHTTPS` of the peer's HTTP client, so a
rendezvous is trusted for /ws exactly as for /publish. Servers ping every
5 s (goop and goop2); a socket silent for `SILENCE` seconds is dropped as
dead. Autobahn answers pings; we never ping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from goop.message import MAX_BODY_BYTES
from goop.presence.node import CLIENT_VERSION

# Autobahn logs every frame and handshake at debug/info level; twistd writes
# them all. Its warnings and errors still show. (The rendezvous does the same.)
txaio.set_global_log_level("warn")  # type: ignore[attr-defined]

SILENCE: Final = 15.0  # goop2's read deadline; servers ping every 5 s
CLOSE_WAIT: Final = 1.0  # for the server's Close after ours, then the TCP is cut

OnFrame = Callable[[bytes], None]
OnClosed = Callable[[str], None]


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"HTTP {status}" + (f" {reason}" if reason else ""))
        self.status = status


class HandshakeFailed(Exception):
    """The connection ended during the opening handshake, without an HTTP status."""


class Socket(Protocol):
    """An open /ws connection, as the rendezvous link uses it."""

    def send(self, data: bytes) -> bool:
        """Queue one text frame; False when the socket is no longer open."""
        ...

    def close(self) -> Deferred[None]:
        """Close 1000; fires once the connection is gone (at most `CLOSE_WAIT` later)."""
        ...


class Connector(Protocol):
    """Opens sockets (Autobahn here, a fake in the state-machine tests)."""

    def dial(
        self, url: str, on_frame: OnFrame, on_closed: OnClosed, timeout: float
    ) -> Deferred[Socket]: ...


class _ClientSocket(WebSocketClientProtocol):
    factory: _Factory

    def __init__(self) -> None:
        super().__init__()
        self.refused: HandshakeRefused | None = None
        self.lost: Failure | None = None
        self.was_open = False
        self.silent = False
        self.closing = False  # we asked for the close: not reported as a loss
        self._watchdog: IDelayedCall | None = None
        self._gone: list[Deferred[None]] = []
        self._ended = False

    # -- handshake ---------------------------------------------------------------

    def failHandshake(self, reason: str) -> None:
        # Autobahn reports a non-101 answer only as text; the status line is kept.
        parts = (getattr(self, "http_status_line", None) or "").split()
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            self.refused = HandshakeRefused(int(parts[1]), " ".join(parts[2:]))
        super().failHandshake(reason)  # type: ignore[no-untyped-call]

    def onOpen(self) -> None:
        self.was_open = True
        self._heard()
        self.factory.opened(self)

    # -- traffic -------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._heard()
        if not isBinary:
            self.factory.on_frame(payload)

    def onPing(self, payload: bytes) -> None:
        self._heard()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._heard()

    def _heard(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.factory.silence)
        else:
            self._watchdog = self.factory.reactor.callLater(self.factory.silence, self._silent)

    def _silent(self) -> None:
        self._watchdog = None
        self.silent = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def send(self, data: bytes) -> bool:
        if self.state != self.STATE_OPEN:
            return False
        self.sendMessage(data, isBinary=False)  # type: ignore[no-untyped-call]
        return True

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._ended:
            d.callback(None)
            return d
        self._gone.append(d)
        self.closing = True
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
            cut = self.factory.reactor.callLater(CLOSE_WAIT, self._abort)

            def closed(result: None) -> None:
                if cut.active():
                    cut.cancel()

            d.addCallback(closed)
        else:
            self._abort()
        return d

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- the end -------------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        # Straight to Autobahn's transport-neutral handling: its Twisted adapter
        # would log a TLS failure at error level on every redial; the link
        # logs the reason once per failing streak.
        self._connectionLost(reason)  # type: ignore[no-untyped-call]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        self._ended = True
        self.factory.closed(self, code, reason or "")
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)


class _Factory(WebSocketClientFactory):
    protocol = _ClientSocket  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, url: str, reactor: Any, on_frame: OnFrame, on_closed: OnClosed, silence: float
    ) -> None:
        super().__init__(url, reactor=reactor, useragent=CLIENT_VERSION)  # type: ignore[no-untyped-call]
        self.on_frame = on_frame
        self.on_closed = on_closed
        self.silence = silence
        self.connecting: Deferred[Any] | None = None
        self.socket: _ClientSocket | None = None
        self.result: Deferred[Socket] = Deferred(self._cancel)
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            # The dial's own timeout (on the injected reactor) covers the handshake.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=CLOSE_WAIT,
            maxFramePayloadSize=MAX_BODY_BYTES,
            maxMessagePayloadSize=MAX_BODY_BYTES,
        )

    def buildProtocol(self, addr: Any) -> Any:
        sock = super().buildProtocol(addr)
        assert isinstance(sock, _ClientSocket)
        self.socket = sock
        return sock

    def connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if not self.result.called:
            self.result.errback(failure)

    def opened(self, sock: _ClientSocket) -> None:
        if not self.result.called:
            self.result.callback(sock)
        else:  # the dial timed out or was cancelled as the handshake finished
            sock.close()

    def closed(self, sock: _ClientSocket, code: int | None, reason: str) -> None:
        if not self.result.called:
            if sock.refused is not None:
                self.result.errback(sock.refused)
            elif sock.lost is not None and not isinstance(sock.lost.value, ConnectionDone):
                self.result.errback(sock.lost)
            else:
                self.result.errback(
                    HandshakeFailed(reason or "connection closed during the WebSocket handshake")
                )
            return
        if not sock.was_open or sock.closing:
            return
        if sock.silent:
            why = f"nothing heard for {self.silence:g}s"
        elif code is not None and code != 1006:
            why = f"closed by the server: {code}" + (f" {reason}" if reason else "")
        else:
            why = "connection lost"
        self.on_closed(why)

    def _cancel(self, _: Deferred[Socket]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.socket is not None and self.socket.transport is not None:
            self.socket.transport.abortConnection()  # type: ignore[attr-defined]


class AutobahnConnector:
    """`Connector` over real sockets: TCP (or TLS through ``tls_policy``), then Autobahn."""

    def __init__(self, reactor: Any, tls_policy: Any, silence: float = SILENCE) -> None:
        self.reactor = reactor
        self.tls_policy = tls_policy
        self.silence = silence

    def dial(
        self, url: str, on_frame: OnFrame, on_closed: OnClosed, timeout: float
    ) -> Deferred[Socket]:
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        factory = _Factory(url, self.reactor, on_frame, on_closed, self.silence)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, host, port, timeout)
        if secure:
            creator = self.tls_policy.creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        result = factory.result
        connecting = factory.connecting = endpoint.connect(factory)

        def connected(proto: Any) -> None:
            factory.connecting = None

        connecting.addCallbacks(connected, factory.connect_failed)
        return result.addTimeout(timeout, self.reactor)


def ws_url(base: str, query: str) -> str:
    """``<base>/ws?<query>`` with http(s) turned into ws(s): the same host, port and
    TLS as the POSTs (goop2 dials wss:// for any non-loopback http:// URL; we don't)."""
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base.rstrip('/')}/ws?{query}"
