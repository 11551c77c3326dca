"""The libp2p adapter: py-libp2p behind a Twisted service whose methods return Deferreds.

One job: run a libp2p host for this peer (its own Ed25519 key, Noise as the
only security transport, Yamux as the only muxer), join GossipSub on the
presence topic, and serve ``/goop/content/1.0.0``. trio runs through
`TrioBridge`; nothing trio-shaped leaves this module.

Incoming GossipSub payloads are validated with `goop.message.parse_message`
on the reactor thread; our own are dropped, and so is a message whose
``peerId`` is not the peer that signed it (GossipSub messages are signed,
so on the LAN nobody can speak for another peer). Bad ones are logged and
ignored.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import sys
from collections.abc import Callable
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from goop.identity import Identity
from goop.logsafe import safe
from goop.message import (
    MAX_CONTENT_BYTES,
    MessageError,
    PresenceMessage,
    PunchFromClient,
    parse_message,
)
from goop.netaddrs import interface_addresses, presence_addrs
from goop.p2p.trio_bridge import Mode, shared_bridge

CONTENT_PROTOCOL: Final = "/goop/content/1.0.0"
# The content line and its newline; anything longer is refused.
MAX_CONTENT_ANSWER: Final = MAX_CONTENT_BYTES + 1
FETCH_TIMEOUT: Final = 5.0
# How long we keep serving one content stream (a reader that never reads).
SERVE_TIMEOUT: Final = 10.0
DIAL_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
# How long the interface list behind our published addresses is reused.
ADDRS_REFRESH: Final = 30.0
# Most addresses one dial (a punch hint) tries.
MAX_DIAL_ADDRS: Final = 20
_DIRECT_HOSTS: Final = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})
# After a dial: long enough for GossipSub to learn the new peer's subscriptions.
REPUBLISH_DELAY: Final = 0.5
# go-libp2p's heartbeat; py-libp2p's default (120 s) would delay the mesh.
HEARTBEAT_INTERVAL: Final = 1


class ContentError(Exception):
    """A content answer was unusable (too long, not UTF-8, not there)."""


class AdapterNotReady(Exception):
    """The libp2p host is not running (yet, or any more)."""


class DialError(Exception):
    """A dial could not even be tried (a bad peer ID, no usable address)."""


class _ToTwistedLog(logging.Handler):
    """libp2p's stdlib warnings into twisted.logger, handed over on the reactor thread."""

    log = Logger(namespace="libp2p")

    def __init__(self, reactor: Any) -> None:
        super().__init__(logging.WARNING)
        self.reactor = reactor

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        self.reactor.callFromThread(
            self.log.warn, "libp2p {name}: {text}", name=record.name, text=text[:500]
        )


_log_handler: _ToTwistedLog | None = None


def _route_libp2p_logging(reactor: Any) -> None:
    global _log_handler
    if _log_handler is not None:
        return
    _log_handler = _ToTwistedLog(reactor)
    lib = logging.getLogger("libp2p")
    lib.setLevel(logging.WARNING)
    lib.addHandler(_log_handler)
    lib.propagate = False


_LIBP2P_MODULES: Final = (
    "libp2p",
    "libp2p.pubsub.gossipsub",
    "libp2p.pubsub.pubsub",
    "libp2p.security.noise.transport",
    "libp2p.stream_muxer.yamux.yamux",
    "libp2p.tools.anyio_service",
    "multiaddr",
)


def _import_libp2p() -> None:
    for name in _LIBP2P_MODULES:
        importlib.import_module(name)


def _libp2p_imported() -> bool:
    return all(name in sys.modules for name in _LIBP2P_MODULES)


def dialable_hosts(listen_host: str) -> list[str]:
    """The IPv4 addresses a listener on ``listen_host`` answers on, loopback last."""
    bound = ipaddress.ip_address(listen_host)
    if not bound.is_unspecified:
        return [listen_host]
    found: list[str] = []
    loop: list[str] = []
    for text in interface_addresses():
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.version != 4 or ip.is_link_local:
            continue
        (loop if ip.is_loopback else found).append(str(ip))
    return sorted(set(found)) + sorted(set(loop))


class Libp2pAdapter(Service):
    """A libp2p host in this process; every public method returns a Deferred."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        identity: Identity,
        topic: str,
        on_message: Callable[[PresenceMessage], None],
        content: str = "",
        listen_port: int = 0,
        listen_host: str = "0.0.0.0",
        mode: Mode = "guest",
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.identity = identity
        self.peer_id = identity.peer_id
        self.topic = topic
        self.on_message = on_message
        self.content = content
        self.listen_port = listen_port
        self.listen_host = listen_host
        self.fetch_timeout = fetch_timeout
        self.bridge = shared_bridge(reactor, mode)
        self._stop_main: Callable[[], Deferred[None]] | None = None
        self.port = 0
        self.addrs: list[str] = []
        self._waiting: list[Deferred[list[str]]] = []
        self._host: Any = None
        self._pubsub: Any = None
        self._last: PresenceMessage | None = None
        self._acquired = False
        self._republish: IDelayedCall | None = None
        self._interfaces: list[str] = []
        self._interfaces_at = float("-inf")

    # --- Twisted side --------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Importing libp2p takes 0.4-2 s. Under twistd this runs before the
        # reactor does, so the cost lands on startup, not on a running reactor:
        # imported in a thread instead, C-extension loading holds the GIL and
        # stalled the reactor 50-115 ms (measured with the viewer's probe).
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        _import_libp2p()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        _route_libp2p_logging(self.reactor)
        # Started without privilegedStartService (tests, a late setServiceParent):
        # import off the reactor thread rather than block it for a second.
        d = succeed(None) if _libp2p_imported() else deferToThread(_import_libp2p)
        d.addCallback(self._acquire)

        def spawn(_: None) -> None:
            if self.running:
                self._stop_main = self.bridge.spawn(self._main)

        d.addCallbacks(spawn, self._start_failed)

    def _acquire(self, _: None) -> Deferred[None] | None:
        if not self.running:
            return None
        self._acquired = True
        return self.bridge.acquire()

    def _start_failed(self, failure: Any) -> None:
        self.log.failure("libp2p did not start", failure)
        self._fire_ready(failure)

    def when_ready(self) -> Deferred[list[str]]:
        """Fires with our dialable multiaddrs (``.../p2p/<id>``) once the host listens."""
        if self.addrs:
            return succeed(list(self.addrs))
        d: Deferred[list[str]] = Deferred()
        self._waiting.append(d)
        return d

    def advertised_addrs(self) -> list[str]:
        """What our presence says we listen on: ``/ip4/<ip>/tcp/<port>``, LAN addresses
        (loopback only when there is nothing else); empty until the host listens.

        The interface list is read again at most every `ADDRS_REFRESH` seconds,
        so a new DHCP lease shows up without costing a syscall per heartbeat.
        """
        if not self.addrs or not self.port:
            return []
        now = self.reactor.seconds()
        if now - self._interfaces_at >= ADDRS_REFRESH:
            self._interfaces = interface_addresses()
            self._interfaces_at = now
        return presence_addrs(self.listen_host, self.port, self._interfaces)

    def _fire_ready(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, list):
                d.callback(list(result))
            else:
                d.errback(result)

    def _listening(self, port: int, hosts: list[str]) -> None:
        self.port = port
        self.addrs = [f"/ip4/{h}/tcp/{port}/p2p/{self.peer_id}" for h in hosts]
        self.log.info(
            "libp2p listening ({mode} trio, noise+yamux) on {addrs}",
            mode=self.bridge.mode,
            addrs=" ".join(self.addrs),
        )
        self._fire_ready(list(self.addrs))

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        self._fire_ready(AdapterNotReady("stopped before it was ready"))
        self._pubsub = None
        if self._republish is not None and self._republish.active():
            self._republish.cancel()
        stop, self._stop_main = self._stop_main, None
        try:
            if stop is not None:
                yield stop().addTimeout(STOP_TIMEOUT, self.reactor)
        except Exception:
            self.log.failure("libp2p did not stop cleanly")
        finally:
            self.addrs = []
            if self._acquired:
                self._acquired = False
                yield self.bridge.release().addTimeout(STOP_TIMEOUT, self.reactor)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._pubsub is None or not self.bridge.running or not self.running:
            d: Deferred[Any] = Deferred()
            d.errback(AdapterNotReady("libp2p is not running"))
            return d
        return self.bridge.call(fn, *args)

    def publish(self, message: PresenceMessage) -> Deferred[None]:
        """Send ``message`` on the presence topic (and remember our content line)."""
        if message.peer_id == self.peer_id:
            self.content = message.content
            self._last = message
        return self._call(self._publish, message.encode())

    def connect(self, multiaddr: str) -> Deferred[None]:
        """Dial ``multiaddr`` (which must end in ``/p2p/<peer id>``).

        Once connected, our latest presence goes out again shortly (after the
        peers have swapped subscriptions), so a new neighbour need not wait
        for the next heartbeat to see us.
        """
        d = self._call(self._connect, multiaddr)
        d.addTimeout(DIAL_TIMEOUT, self.reactor)
        return d.addCallback(self._connected)

    def dial(self, peer_id: str, addrs: list[str] | tuple[str, ...]) -> Deferred[None]:
        """Connect to ``peer_id`` at any of ``addrs`` (a rendezvous's punch hint).

        Each address is a multiaddr with or without ``/p2p/<peer_id>``; ones
        that do not parse, name another peer, or are not plain TCP (a relay's
        ``/p2p-circuit``, QUIC, WebSocket) are skipped. Fails with `DialError` when nothing
        is left to try, else with libp2p's reason or a timeout. Once connected,
        our presence goes out again shortly, as after `connect`.
        """
        if peer_id == self.peer_id:
            d: Deferred[None] = Deferred()
            d.errback(DialError("that is our own peer ID"))
            return d
        d = self._call(self._dial, peer_id, [str(a) for a in addrs[:MAX_DIAL_ADDRS]])
        d.addTimeout(DIAL_TIMEOUT, self.reactor)
        return d.addCallback(self._connected)

    def _connected(self, _: None) -> None:
        if self._republish is None or not self._republish.active():
            self._republish = self.reactor.callLater(REPUBLISH_DELAY, self._publish_again)

    def _publish_again(self) -> None:
        self._republish = None
        last = self._last
        if last is None or last.type == "offline" or not self.running:
            return
        d = self.publish(last)
        d.addErrback(lambda f: self.log.info("re-announce failed: {why}", why=f.getErrorMessage()))

    def fetch_content(self, peer_id: str) -> Deferred[str]:
        """The content line of ``peer_id``, over a direct ``/goop/content/1.0.0`` stream.

        Fails with `ContentError` on a too long or non-UTF-8 answer, and with
        a timeout when the peer does not answer within ``fetch_timeout``.
        """
        d = self._call(self._fetch, peer_id)
        d.addTimeout(self.fetch_timeout + 0.5, self.reactor)
        return d

    def connected_peers(self) -> Deferred[list[str]]:
        return self._call(self._peers)

    def _received(self, sender: str, data: bytes) -> None:
        if sender == self.peer_id:
            return
        try:
            message = parse_message(data, int(self.reactor.seconds() * 1000))
        except PunchFromClient:
            return  # a rendezvous's hint has no meaning on the LAN topic
        except MessageError as e:
            self.log.warn(
                "ignoring a bad GossipSub presence message from {sender}: {why}",
                sender=sender,
                why=str(e),
            )
            return
        if message.peer_id != sender:
            self.log.warn(
                "ignoring GossipSub presence for {claimed} signed by {sender}",
                claimed=safe(message.peer_id, 80),
                sender=sender,
            )
            return
        try:
            self.on_message(message)
        except Exception:
            self.log.failure("handling presence from {sender} failed", sender=sender)

    # --- trio side -----------------------------------------------------------
    # Everything below runs in trio; it reaches Twisted only via callFromThread.

    async def _main(self) -> None:
        import multiaddr  # type: ignore[import-untyped]
        import trio
        from libp2p.tools.anyio_service import background_trio_service

        host, pubsub, gossipsub = self._build()
        listen = multiaddr.Multiaddr(f"/ip4/{self.listen_host}/tcp/{self.listen_port}")
        async with host.run([listen]):
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                subscription = await pubsub.subscribe(self.topic)
                self._host, self._pubsub = host, pubsub
                port = int(host.get_transport_addrs()[0].value_for_protocol("tcp"))
                hosts = dialable_hosts(self.listen_host)
                self.reactor.callFromThread(self._listening, port, hosts)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop, subscription)
                    await trio.sleep_forever()

    def _announced(self, candidates: list[Any]) -> list[Any]:
        """What identify (and signed peer records) tell other peers we listen on:
        every unspecified listen address (``0.0.0.0``) replaced by the interface
        addresses it stands for, loopback only when nothing else exists. py-libp2p
        would send ``/ip4/0.0.0.0/tcp/N``, which the other side stores and cannot
        dial. Runs in trio, per identify exchange (reading interfaces is one
        syscall, no I/O)."""
        import multiaddr

        out: list[Any] = []
        for addr in candidates:
            try:
                ip = addr.value_for_protocol("ip4")
                port = int(addr.value_for_protocol("tcp"))
            except Exception:
                out.append(addr)
                continue
            if ip != "0.0.0.0":
                out.append(addr)
                continue
            for text in presence_addrs(ip, port, interface_addresses()):
                if text not in (str(a) for a in out):
                    out.append(multiaddr.Multiaddr(text))
        return out

    def _build(self) -> tuple[Any, Any, Any]:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_pair
        from libp2p.custom_types import TProtocol
        from libp2p.pubsub.gossipsub import (
            PROTOCOL_ID,
            PROTOCOL_ID_V11,
            PROTOCOL_ID_V12,
            GossipSub,
        )
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
        from libp2p.stream_muxer.yamux.yamux import Yamux

        key_pair = create_new_key_pair(self.identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_pair().private_key)
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_ID: noise},
            muxer_opt={TProtocol(YAMUX_ID): Yamux},
            addrs_factory=self._announced,
        )
        if host.get_id().to_base58() != self.peer_id:
            raise RuntimeError("libp2p derived a different peer ID from our key")
        host.set_stream_handler(TProtocol(CONTENT_PROTOCOL), self._serve_content)
        gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=HEARTBEAT_INTERVAL,
        )
        pubsub = Pubsub(host, gossipsub)
        return host, pubsub, gossipsub

    async def _read_loop(self, subscription: Any) -> None:
        while True:
            message = await subscription.get()
            try:
                from libp2p.peer.id import ID

                sender = ID(message.from_id).to_base58()
            except Exception:
                continue
            self.reactor.callFromThread(self._received, sender, bytes(message.data))

    async def _publish(self, data: bytes) -> None:
        await self._pubsub.publish(self.topic, data)

    async def _connect(self, text: str) -> None:
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = info_from_p2p_addr(multiaddr.Multiaddr(text))
        if info.peer_id == self._host.get_id():
            return
        await self._host.connect(info)

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise DialError(f"not a peer ID: {peer_id[:80]!r}") from None
        usable = []
        for text in addrs:
            try:
                addr = multiaddr.Multiaddr(text)
                names = [p.name for p in addr.protocols()]
                if names[-1:] == ["p2p"]:
                    if addr.value_for_protocol("p2p") != peer_id:
                        continue
                    addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}"))
                    names = names[:-1]
            except Exception:
                continue
            # Our only transport is plain TCP (no relay, QUIC or WebSocket).
            if len(names) == 2 and names[0] in _DIRECT_HOSTS and names[1] == "tcp":
                usable.append(addr)
        if not usable:
            raise DialError("no address we can dial directly")
        await self._host.connect(PeerInfo(pid, usable))

    async def _peers(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_connected_peers()]

    async def _serve_content(self, stream: Any) -> None:
        import trio

        line = self.content.encode("utf-8") + b"\n"
        with trio.move_on_after(SERVE_TIMEOUT) as scope:
            try:
                await stream.write(line)
                await stream.close()
            except Exception:
                await _reset(stream)
        if scope.cancelled_caught:
            await _reset(stream)

    async def _fetch(self, peer_id: str) -> str:
        import trio
        from libp2p.custom_types import TProtocol
        from libp2p.network.stream.exceptions import StreamEOF
        from libp2p.peer.id import ID

        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise ContentError(f"not a peer ID: {peer_id[:80]!r}") from None
        with trio.fail_after(self.fetch_timeout):
            stream = await self._host.new_stream(pid, [TProtocol(CONTENT_PROTOCOL)])
            buf = bytearray()
            try:
                while len(buf) <= MAX_CONTENT_ANSWER:
                    try:
                        chunk = await stream.read(MAX_CONTENT_ANSWER + 1 - len(buf))
                    except StreamEOF:
                        break
                    if not chunk:
                        break
                    buf += chunk
            finally:
                await _reset(stream)
        if len(buf) > MAX_CONTENT_ANSWER:
            raise ContentError(f"answer longer than {MAX_CONTENT_ANSWER} bytes")
        try:
            text = bytes(buf).decode("utf-8")
        except UnicodeDecodeError:
            raise ContentError("answer is not UTF-8") from None
        return text[:-1] if text.endswith("\n") else text


async def _reset(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:
        pass
