"""A stand-in for a goop2 peer's rendezvous client, run as its own process by the e2e tests.

Written from GOOP2-PROTOCOL.md §1 and §4 (no goop2 code): POST ``online``
with every client field, then ``/ws?peer_id=<id>`` (425: retry in 250 ms),
an ``update`` text frame every ``--heartbeat`` seconds (POST while the socket
is down), answers pings, never pings. It reports on stdout, one line each:

    posted online <status>
    ws open
    frame <json>                 (every text frame the server sends)
    ws closed <code> <reason>
    listening <host> <port>      (with --listen-host: where punches should land)
    tcp connection from <ip>     (someone dialled the address we published)

Usage: python tests/goop2peer.py URL PEER_ID [--heartbeat S] [--listen-host IP]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

VERSION = "goop2-sim/0.9"
PUBLIC_KEY = "bmFjbC1wdWJsaWMta2V5LWZvci10ZXN0cy0wMDAwMDA="


def say(*words: object) -> None:
    print(*words, flush=True)


class Goop2:
    """One simulated goop2 peer: its presence, its socket, its heartbeat."""

    def __init__(self, base: str, peer_id: str, heartbeat: float) -> None:
        self.base = base.rstrip("/")
        self.peer_id = peer_id
        self.heartbeat = heartbeat
        self.addrs: list[str] = []
        self.socket: Socket | None = None

    def message(self, kind: str) -> dict[str, Any]:
        # §1: a goop2 peer fills every client field in every message.
        out: dict[str, Any] = {
            "type": kind,
            "peerId": self.peer_id,
            "content": "goop2 stand-in",
            "email": "g2@example.test",
            "avatarHash": "a1b2c3",
            "activeTemplate": "blog",
            "publicKey": PUBLIC_KEY,
            "encryptionSupported": True,
            "goopClientVersion": VERSION,
            "verificationToken": "not-relayed",
            "ts": int(time.time() * 1000),
        }
        if self.addrs:
            out["addrs"] = self.addrs
        return out

    def post(self, kind: str) -> Any:
        body = json.dumps(self.message(kind)).encode()
        return treq.post(self.base + "/publish", data=body, timeout=2)

    def start(self) -> None:
        d = self.post("online")

        def posted(response: Any) -> None:
            say("posted online", response.code)
            self.dial()

        d.addCallbacks(posted, lambda f: (say("post failed", f.getErrorMessage()), self.dial()))
        beat = task.LoopingCall(self.beat)
        beat.start(self.heartbeat, now=False)

    def beat(self) -> None:
        if self.socket is not None and self.socket.opened:
            self.socket.sendMessage(json.dumps(self.message("update")).encode())
        else:
            self.post("update").addErrback(lambda f: None)

    def dial(self) -> None:
        host_port = self.base.split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        factory = Factory(f"ws://{host_port}/ws?peer_id={self.peer_id}", self)
        endpoint = TCP4ClientEndpoint(reactor, host, int(port), timeout=5)
        endpoint.connect(factory).addErrback(lambda f: self.redial(f.getErrorMessage()))

    def redial(self, why: str) -> None:
        say("ws dial failed", why)
        reactor.callLater(0.25, self.dial)  # type: ignore[attr-defined]


class Socket(WebSocketClientProtocol):
    factory: Factory

    def __init__(self) -> None:
        super().__init__()
        self.opened = False

    def onOpen(self) -> None:
        self.opened = True
        self.factory.peer.socket = self
        say("ws open")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            say("frame", payload.decode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        peer = self.factory.peer
        if not self.opened:
            peer.redial(f"handshake: {reason}")  # 425 before our POST landed
            return
        self.opened = False
        peer.socket = None
        say("ws closed", code, reason)
        peer.redial("closed")


class Factory(WebSocketClientFactory):
    protocol = Socket

    def __init__(self, url: str, peer: Goop2) -> None:
        super().__init__(url)
        self.peer = peer


class Listener(protocol.Protocol):
    """Where our published address points: each dial (a punch) is reported, then cut."""

    def connectionMade(self) -> None:
        say("tcp connection from", self.transport.getPeer().host)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("peer_id")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--listen-host", default="")
    args = parser.parse_args(argv)
    peer = Goop2(args.url, args.peer_id, args.heartbeat)

    def go(port: Any = None) -> None:
        if port is not None:
            number = port.getHost().port
            peer.addrs = [f"/ip4/{args.listen_host}/tcp/{number}"]
            say("listening", args.listen_host, number)
        peer.start()

    if args.listen_host:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface=args.listen_host)
        endpoint.listen(protocol.Factory.forProtocol(Listener)).addCallback(go)
    else:
        reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
