"""Small services a full peer is assembled from: identity, table upkeep, HTTP client.

Also `SelfPresence` (what this peer says about itself), `PunchDialer` (what
it does with a rendezvous's punch hint) and `SequentialMultiService`, which
stops its children one at a time in reverse order so the publisher's
``offline`` still reaches the peer's own rendezvous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from goop import __version__
from goop.identity import Identity
from goop.logsafe import safe
from goop.message import PresenceMessage
from goop.peertable import PeerTable, PeerView, Rejected
from goop.signing import sign, signing_key

EXPIRE_INTERVAL: Final = 1.0
# What goop says it runs, in goop2's goopClientVersion field.
CLIENT_VERSION: Final = f"goop/{__version__}"
# Punch hints dialled at once; more are dropped (a hint is only a hint).
MAX_PUNCH_DIALS: Final = 16


class SequentialMultiService(MultiService):
    """A MultiService whose stop waits for each child before stopping the next."""

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)  # type: ignore[no-untyped-call]
        for child in reversed(list(self)):
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                Logger().failure("stopping {child} failed", child=child)


class SelfPresence:
    """The presence message this peer publishes, built fresh each time.

    ``addrs`` says where libp2p can reach us (set by the LAN services once the
    host exists; nothing without libp2p); every message carries it, offline
    included, as goop2's do.
    """

    def __init__(self, reactor: IReactorTime, identity: Identity, content: str, email: str):
        self.reactor = reactor
        self.peer_id = identity.peer_id
        self._key = signing_key(identity.seed)
        self.content = content
        self.email = email
        self.avatar_hash = ""
        self.client_version = CLIENT_VERSION
        self.addrs: Callable[[], Sequence[str]] = tuple
        self.last: PresenceMessage = self.message("online")

    def message(self, kind: str) -> PresenceMessage:
        """A new message, signed (docs/signing.md). Its ``ts`` is always later than the
        previous one's: a rendezvous refuses a signed ``ts`` it has seen (replay)."""
        previous = getattr(self, "last", None)
        ts = int(self.reactor.seconds() * 1000)
        if previous is not None and ts <= previous.ts:
            ts = previous.ts + 1
        unsigned = PresenceMessage(
            kind,
            self.peer_id,
            self.content,
            self.email,
            self.avatar_hash,
            ts,
            addrs=tuple(self.addrs()),
            goop_client_version=self.client_version,
        )
        self.last = replace(unsigned, sig=sign(self._key, unsigned))
        return self.last

    def current(self) -> PresenceMessage:
        return self.last


class Dialer(Protocol):
    """What a punch hint needs from the libp2p adapter."""

    def dial(self, peer_id: str, addrs: tuple[str, ...]) -> Deferred[None]: ...


class PunchDialer:
    """A rendezvous's punch hint for us: dial the other peer at the addresses it gave.

    The hint says another peer just published new addresses and is dialling
    us now; dialling back at the same moment is what opens both NATs. One log
    line per hint. Without libp2p (``dialer`` None) the hint is logged and
    dropped. A peer already being dialled, or more than `MAX_PUNCH_DIALS` at
    once, is skipped: hints come from a server and are only hints.
    """

    log = Logger()

    def __init__(self, dialer: Dialer | None = None) -> None:
        self.dialer = dialer
        self.dialling: set[str] = set()

    def __call__(self, hint: PresenceMessage) -> None:
        peer_id = hint.peer_id
        addrs = safe(" ".join(hint.addrs), 400) or "(no address)"
        shown = safe(peer_id)
        if self.dialer is None:
            self.log.info(
                "punch hint: {peer_id} at {addrs}; ignored (libp2p is off)",
                peer_id=shown,
                addrs=addrs,
            )
            return
        if peer_id in self.dialling or len(self.dialling) >= MAX_PUNCH_DIALS:
            self.log.info(
                "punch hint: {peer_id} at {addrs}; skipped (already dialling)",
                peer_id=shown,
                addrs=addrs,
            )
            return
        self.dialling.add(peer_id)
        d = self.dialer.dial(peer_id, hint.addrs)

        def done(result: Any) -> None:
            self.dialling.discard(peer_id)
            if isinstance(result, Failure):
                self.log.info(
                    "punch hint: could not reach {peer_id} at {addrs}: {why}",
                    peer_id=shown,
                    addrs=addrs,
                    why=result.getErrorMessage() or type(result.value).__name__,
                )
            else:
                self.log.info(
                    "punch hint: connected to {peer_id} (at {addrs})",
                    peer_id=shown,
                    addrs=addrs,
                )

        d.addBoth(done)


# A rejected message is logged at most once a minute per channel and peer.
REJECTION_LOG_EVERY: Final = 60.0
_REJECTIONS_LOGGED: Final = 4096  # (channel, peer) pairs remembered for that


def table_feeder(
    table: PeerTable, source: str, reactor: IReactorTime
) -> Callable[[PresenceMessage], None]:
    """What a channel calls with each message it hears: into ``table``, refusals
    (bad signature, replay, unsigned for a signed peer) dropped, counted and logged."""
    log = Logger()
    warned: dict[str, float] = {}

    def feed(message: PresenceMessage) -> None:
        now = reactor.seconds()
        try:
            table.observe(source, message, now)
        except Rejected as e:
            table.rejected += 1
            if now - warned.get(message.peer_id, float("-inf")) < REJECTION_LOG_EVERY:
                return
            if len(warned) >= _REJECTIONS_LOGGED:
                warned.clear()
            warned[message.peer_id] = now
            log.warn(
                "{source}: dropped a {kind} for {peer_id}: {why} ({count} dropped so far)",
                source=source,
                kind=safe(message.type),
                peer_id=safe(message.peer_id),
                why=e,
                count=table.rejected,
            )

    return feed


class IdentityService(Service):
    """Holds the peer's identity and says who we are when the peer starts."""

    log = Logger()

    def __init__(self, identity: Identity, created: bool) -> None:
        self.identity = identity
        self.created = created

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        how = "new key created in" if self.created else "key from"
        self.log.info(
            "peer id {peer_id} ({how} {path})",
            peer_id=self.identity.peer_id,
            how=how,
            path=self.identity.path,
        )


class PeerTableService(Service):
    """Expires silent peers every second and logs arrivals and departures."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, table: PeerTable) -> None:
        self.reactor = reactor
        self.table = table
        self._loop = LoopingCall(self._expire)
        self._loop.clock = reactor
        table.add_observer(self._changed)

    def _changed(self, kind: str, view: PeerView) -> None:
        if kind == "appeared":
            self.log.info(
                "sees peer {peer_id} ({content}) via {sources}",
                peer_id=safe(view.peer_id),
                content=safe(view.message.content, quote=True),
                sources=",".join(view.sources),
            )
        elif kind == "left":
            self.log.info(
                "peer {peer_id} gone ({why})", peer_id=safe(view.peer_id), why=view.departure
            )

    def _expire(self) -> None:
        try:
            self.table.expire(self.reactor.seconds())
        except Exception:
            self.log.failure("expiring peers failed")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(EXPIRE_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()


class _QuietPool(HTTPConnectionPool):
    """A pool whose connection factories do not log every start and stop."""

    class _factory(_HTTP11ClientFactory):
        noisy = False


class HttpClientService(Service):
    """One treq client with a persistent pool; closes its connections at stop."""

    def __init__(self, reactor: Any, tls_policy: Any = None) -> None:
        import treq

        from goop.presence.tlsclient import RendezvousTrust

        self.tls_policy = tls_policy if tls_policy is not None else RendezvousTrust()
        self.pool = _QuietPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self.pool.maxPersistentPerHost = 4
        agent = Agent(reactor, contextFactory=self.tls_policy, pool=self.pool)  # type: ignore[no-untyped-call]
        self.client = treq.client.HTTPClient(agent)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        closed: Deferred[None] = self.pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return closed
