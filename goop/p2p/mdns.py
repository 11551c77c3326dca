"""The zeroconf (mDNS) bridge: advertise this peer on the LAN, find others, dial them.

One job: python-zeroconf announces this peer under two service names, the
DNS-SD type ``_<mdns_tag>._udp.local.`` and the bare ``<mdns_tag>.local.``
that goop2 (go-libp2p's mDNS with its tag) puts on the wire, each with one
TXT string ``dnsaddr=<multiaddr>/p2p/<peer id>`` per libp2p address (the
libp2p mDNS spec's form) plus SRV and A records (for DNS-SD browsers and
goop2, which wants them); browses both, on one Zeroconf (one socket); and
hands every peer it finds to the libp2p adapter to dial. A peer is dialled
from its TXT ``dnsaddr=`` records as soon as they are known, without
waiting for SRV/A records a spec-only announcer (js-libp2p) never sends.
See docs/lan.md for the records on the wire.

Hostile input: only private, link-local or shared (CGNAT) addresses are
dialled (never loopback, unspecified, multicast or public ones: a LAN
announcement must not make us dial the internet); at most `MAX_PEERS`
peers are remembered and dialled at once; each kind of refusal is logged
at most once a minute.

Threads: zeroconf runs its own event-loop thread, and a threaded
ServiceBrowser calls its handler in the browser's thread. The handler
resolves there (never on the event-loop thread) and crosses into the
reactor with ``reactor.callFromThread``; nothing here touches Twisted state
from another thread. Starting (``register_service`` blocks ~1.6 s) and
stopping (goodbye packets, joining zeroconf's threads) run in the reactor's
thread pool.

A peer leaving mDNS is only logged: the presence TTL decides when it is gone.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from goop.logsafe import safe

RESOLVE_TIMEOUT_MS: Final = 3000
# Seconds before the same addresses of a peer are dialled again.
REDIAL_AFTER: Final = 10.0
MAX_TXT_STRING: Final = 255
# Enough for every address of a well-connected machine; more is noise.
MAX_ADDRS: Final = 16
_DNSADDR: Final = re.compile(
    r"^dnsaddr=(/ip4/(\d{1,3}(?:\.\d{1,3}){3})/tcp/(\d{1,5})/p2p/([1-9A-HJ-NP-Za-km-z]{32,128}))$"
)


class TxtError(ValueError):
    """A TXT record that is not a usable goop advertisement; str() says why."""


# Peers found by mDNS remembered (and so dialled) at once; more are refused.
MAX_PEERS: Final = 256
WARN_EVERY: Final = 60.0
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")


def service_type(tag: str) -> str:
    """The DNS-SD type for ``p2p.mdns_tag`` (1-15 letters, digits, hyphens)."""
    return f"_{tag}._udp.local."


def bare_type(tag: str) -> str:
    """The service name goop2 (go-libp2p's mDNS) uses for the same tag: ``<tag>.local.``."""
    return f"{tag}.local."


def on_the_lan(multiaddr: str) -> bool:
    """True for an ``/ip4/`` address a LAN peer may be dialled at (private, link-local
    or CGNAT; never loopback, unspecified, multicast or public)."""
    try:
        ip = ipaddress.IPv4Address(_host_of(multiaddr))
    except (ValueError, IndexError):
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return False
    return ip.is_private or ip.is_link_local or ip in _CGNAT


def encode_txt(strings: list[bytes]) -> bytes:
    """DNS TXT RDATA: each string prefixed by its length (at most 255 bytes)."""
    out = bytearray()
    for s in strings:
        if len(s) > MAX_TXT_STRING:
            raise ValueError(f"TXT string longer than {MAX_TXT_STRING} bytes")
        out.append(len(s))
        out += s
    return bytes(out)


def decode_txt(raw: bytes) -> list[bytes]:
    """The strings of TXT RDATA; raises `TxtError` when a length runs past the end."""
    strings = []
    pos = 0
    while pos < len(raw):
        n = raw[pos]
        if pos + 1 + n > len(raw):
            raise TxtError("TXT data truncated")
        strings.append(raw[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return strings


def advertisement(peer_id: str, addrs: list[str]) -> bytes:
    """Our TXT RDATA: one ``dnsaddr=`` string per multiaddr (each ending /p2p/<id>)."""
    return encode_txt([f"dnsaddr={a}".encode() for a in addrs[:MAX_ADDRS]])


def parse_advertisement(raw: bytes) -> tuple[str, list[str]]:
    """(peer ID, dialable multiaddrs) from a peer's TXT RDATA.

    Strings other than ``dnsaddr=`` are skipped (others may add keys); a
    ``dnsaddr=`` we cannot dial (not /ip4/.../tcp/.../p2p/...) is skipped.
    Raises `TxtError` when nothing usable is left or the peer IDs disagree.
    """
    peer_ids: set[str] = set()
    addrs: list[str] = []
    for s in decode_txt(raw):
        if not s.startswith(b"dnsaddr="):
            continue
        try:
            text = s.decode("ascii")
        except UnicodeDecodeError:
            continue
        m = _DNSADDR.match(text)
        if m is None:
            continue
        try:
            ipaddress.IPv4Address(m.group(2))
        except ValueError:
            continue
        port = int(m.group(3))
        if not 0 < port <= 65535:
            continue
        peer_ids.add(m.group(4))
        addrs.append(m.group(1))
    if not addrs:
        raise TxtError("no dialable dnsaddr=/ip4/.../tcp/.../p2p/... entry")
    if len(peer_ids) > 1:
        raise TxtError("dnsaddr entries name different peer IDs")
    return peer_ids.pop(), addrs[:MAX_ADDRS]


def _host_of(multiaddr: str) -> str:
    return multiaddr.split("/")[2]


def _bare_listener(bridge: MdnsBridge) -> Any:
    """A zeroconf record listener (it runs on zeroconf's event loop) that hands the
    PTR records of ``bridge.bare`` to the reactor: added ones to resolve, expired
    ones (a goodbye) as gone."""
    from zeroconf import RecordUpdateListener
    from zeroconf.const import _TYPE_PTR

    class BareNameListener(RecordUpdateListener):
        def async_update_records(self, zc: Any, now: float, records: list[Any]) -> None:
            for update in records:
                record = update.new
                if record.type != _TYPE_PTR or record.name.lower() != bridge.bare:
                    continue
                if record.is_expired(now):
                    bridge.reactor.callFromThread(bridge._gone, record.alias)
                elif update.old is None:
                    bridge.reactor.callFromThread(bridge._bare_added, record.alias)

        def async_update_records_complete(self) -> None:
            pass

    return BareNameListener()


def _cached_txt(zeroconf: Any, service_type: str, name: str) -> bytes:
    """The TXT RDATA zeroconf holds for ``name`` (b"" when none)."""
    from zeroconf import ServiceInfo

    info = ServiceInfo(service_type, name)
    info.load_from_cache(zeroconf)
    return bytes(info.text or b"")


class Dialer(Protocol):
    """What the bridge needs from the libp2p adapter."""

    peer_id: str

    def when_ready(self) -> Deferred[list[str]]: ...

    def connect(self, multiaddr: str) -> Deferred[None]: ...


class MdnsBridge(Service):
    """python-zeroconf on the LAN, with every callback handed to the reactor."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        dialer: Dialer,
        tag: str,
        interfaces: tuple[str, ...] = (),
        on_found: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.dialer = dialer
        self.type = service_type(tag)
        self.bare = bare_type(tag)
        self.interfaces = interfaces
        self.on_found = on_found
        self.zeroconf: Any = None
        self._browser: Any = None
        self._starting: Deferred[Any] | None = None
        self._closed = False
        # peer ID -> (addresses, when we last dialled them).
        self.known: dict[str, tuple[list[str], float]] = {}
        # Threads our handlers ran on (the tests assert it is the reactor's).
        self.handler_threads: set[str] = set()
        # zeroconf's own threads (event loop, browser), to check they end at stop.
        self.threads: list[threading.Thread] = []
        self.refused = 0  # announcements dropped (bad TXT, no LAN address, too many peers)
        self._warned: dict[str, float] = {}

    def privilegedStartService(self) -> None:
        # zeroconf is imported before the reactor runs (under twistd): an import
        # in a pool thread holds the GIL long enough to stall the reactor.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        import zeroconf  # noqa: F401

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._closed = False
        d = self.dialer.when_ready()
        d.addCallback(self._advertise)
        d.addErrback(self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        if self.running:
            self.log.warn("mDNS not started: {why}", why=failure.getErrorMessage())

    def _advertised_addrs(self, addrs: list[str]) -> list[str]:
        if self.interfaces:
            wanted = set(self.interfaces)
            return [a for a in addrs if _host_of(a) in wanted]
        lan = [a for a in addrs if not ipaddress.ip_address(_host_of(a)).is_loopback]
        return lan or addrs

    def _advertise(self, addrs: list[str]) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        mine = self._advertised_addrs(addrs)
        port = int(mine[0].split("/")[4]) if mine else 0
        d = self._starting = deferToThread(self._start_zeroconf, mine, port)

        def started(_: None) -> None:
            self.log.info(
                "mDNS: advertising {type} and {bare} with {addrs}; browsing for peers",
                type=self.type,
                bare=self.bare,
                addrs=" ".join(mine) or "(no address)",
            )

        return d.addCallback(started)

    # --- runs in a pool thread -------------------------------------------------

    def _start_zeroconf(self, addrs: list[str], port: int) -> None:
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceInfo,
            Zeroconf,
        )
        from zeroconf._dns import DNSQuestion
        from zeroconf.const import _CLASS_IN, _TYPE_PTR

        interfaces: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.All
        zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self.zeroconf = zc
        self.threads = [t for t in (getattr(zc, "_loop_thread", None),) if t is not None]
        if self._closed:
            return
        # The browser asks for both names, but reports only DNS-SD types (it
        # matches names by their leading underscores): a listener of our own
        # hears the PTR records of goop2's bare name.
        self._browser = ServiceBrowser(zc, [self.type, self.bare], handlers=[self._on_change])
        self.threads.append(self._browser)
        zc.add_listener(_bare_listener(self), DNSQuestion(self.bare, _TYPE_PTR, _CLASS_IN))
        if not addrs:
            return
        peer_id = self.dialer.peer_id
        for kind in (self.type, self.bare):
            info = ServiceInfo(
                kind,
                f"{peer_id}.{kind}",
                port=port,
                properties=advertisement(peer_id, addrs),
                server=f"{peer_id.lower()[-16:]}.local.",
                addresses=[socket.inet_aton(_host_of(a)) for a in addrs],
            )
            # The bare name is no valid DNS-SD type: registered without the check.
            zc.register_service(info, strict=kind == self.type)

    def _stop_zeroconf(self) -> None:
        zc, self.zeroconf = self.zeroconf, None
        browser, self._browser = self._browser, None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.unregister_all_services()
            zc.close()

    # --- runs in the browser's thread -----------------------------------------

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self.reactor.callFromThread(self._gone, name)
            return
        # The libp2p mDNS spec's answer is a PTR with TXT dnsaddr= records (in
        # the same packet, so in the cache now) and nothing else: dial from
        # those. Only when no TXT came along, ask (SRV, TXT, A), and take the
        # TXT even if SRV/A never come.
        try:
            txt = _cached_txt(zeroconf, service_type, name)
            if not txt:
                info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
                txt = bytes(info.text or b"") if info is not None else b""
                txt = txt or _cached_txt(zeroconf, service_type, name)
        except Exception as e:
            self.reactor.callFromThread(self._unresolved, name, repr(e))
            return
        if not txt:
            self.reactor.callFromThread(self._unresolved, name, "no TXT record")
            return
        self.reactor.callFromThread(self._found, name, txt)

    # --- runs on the reactor thread -------------------------------------------

    def _bare_added(self, name: str) -> None:
        """A PTR under goop2's bare name arrived: resolve it as the browser's would be."""
        self.handler_threads.add(threading.current_thread().name)
        zc = self.zeroconf
        if zc is None or not self.running:
            return
        from zeroconf import ServiceStateChange

        d = deferToThread(self._on_change, zc, self.bare, name, ServiceStateChange.Added)
        d.addErrback(lambda f: self._unresolved(name, f.getErrorMessage()))

    def _unresolved(self, name: str, why: str) -> None:
        self.handler_threads.add(threading.current_thread().name)
        self.log.debug("mDNS: could not resolve {name}: {why}", name=name, why=why)

    def _gone(self, name: str) -> None:
        self.handler_threads.add(threading.current_thread().name)
        # The presence TTL (or a GossipSub offline) decides when it is gone;
        # forgetting its addresses makes its return dial it again at once.
        self.known.pop(name.split(".", 1)[0], None)
        self.log.info("mDNS: {name} left", name=name)

    def _found(self, name: str, txt: bytes) -> None:
        self.handler_threads.add(threading.current_thread().name)
        if not self.running:
            return
        try:
            peer_id, addrs = parse_advertisement(txt)
        except TxtError as e:
            self._refuse("txt", f"ignoring {safe(name, 120)}: {e}")
            return
        if peer_id == self.dialer.peer_id:
            return
        lan = [a for a in addrs if on_the_lan(a)]
        if not lan:
            listed = " ".join(addrs)
            self._refuse("addrs", f"ignoring {peer_id}: no private or link-local address: {listed}")
            return
        addrs = lan
        if peer_id not in self.known and len(self.known) >= MAX_PEERS:
            self._refuse("full", f"ignoring {peer_id}: already {MAX_PEERS} peers found by mDNS")
            return
        if self.on_found is not None:
            self.on_found(peer_id, addrs)
        now = self.reactor.seconds()
        seen = self.known.get(peer_id)
        # The same announcement again (zeroconf repeats them) is not redialled
        # at once; later it is, since a peer killed and restarted on the same
        # port announces the same addresses and needs a new connection.
        if seen is not None and seen[0] == addrs and now - seen[1] < REDIAL_AFTER:
            return
        self.known[peer_id] = (addrs, now)
        self.log.info("mDNS: found {peer_id} at {addrs}", peer_id=peer_id, addrs=" ".join(addrs))
        self._dial(peer_id, list(addrs))

    def _refuse(self, kind: str, why: str) -> None:
        """Count a dropped announcement; log it unless one of its kind was logged
        in the last `WARN_EVERY` seconds (a flood of them is one line a minute)."""
        self.refused += 1
        now = self.reactor.seconds()
        if now - self._warned.get(kind, float("-inf")) < WARN_EVERY:
            return
        self._warned[kind] = now
        self.log.warn("mDNS: {why} ({count} dropped so far)", why=why, count=self.refused)

    def _dial(self, peer_id: str, addrs: list[str]) -> None:
        if not addrs or not self.running:
            return
        addr = addrs.pop(0)
        d = self.dialer.connect(addr)

        def failed(failure: Any) -> None:
            self.log.info(
                "mDNS: dialling {addr} failed: {why}", addr=addr, why=failure.getErrorMessage()
            )
            if addrs:
                self._dial(peer_id, addrs)
            else:
                # Let a later announcement try again.
                self.known.pop(peer_id, None)

        d.addErrback(failed)

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        self._closed = True
        starting, self._starting = self._starting, None
        if starting is not None:
            # A start still in its thread finishes first; then we close it.
            try:
                yield starting
            except Exception:
                pass
        try:
            yield deferToThread(self._stop_zeroconf)
        except Exception:
            self.log.failure("stopping zeroconf failed")
