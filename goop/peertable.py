"""The peer's merged view of who is online, over every channel it listens on.

Pure logic; ``now`` (seconds) is passed in. Each peer carries its latest
message and, per channel (``lan``, ``local``, ``wan``), when it was last
heard there. A peer leaves when every channel that had it has either said
``offline`` or been silent for ``ttl`` seconds. The peer's own ID is never
listed. Observers hear ``appeared``, ``changed`` and ``left``.

Signed presence (docs/signing.md): a message with ``sig`` is checked
against its peer ID's key (``verify``) and must not be older than the last
signed one heard on that channel; once a channel has carried a peer's
signed message, an unsigned one for it there is refused, except a
rendezvous's own ``offline`` (its expiry or a closed socket: a server
never signs those). Refusals raise `Rejected`; nothing changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from goop.message import PRESENCE_TYPES, PresenceMessage
from goop.signing import Verifier

SOURCES: Final = ("lan", "local", "wan")
APPEARED: Final = "appeared"
CHANGED: Final = "changed"
LEFT: Final = "left"

Observer = Callable[[str, "PeerView"], None]


# Channels where an unsigned offline is the rendezvous's own (never on the LAN).
RENDEZVOUS_SOURCES: Final = frozenset({"local", "wan"})
VERIFIED: Final = "verified"
UNSIGNED: Final = "unsigned"


class Rejected(ValueError):
    """A message the table refused (bad signature, replay, unsigned for a signed peer)."""


@dataclass
class PeerView:
    peer_id: str
    message: PresenceMessage
    seen: dict[str, float] = field(default_factory=dict)
    # channel -> ts of the last signed message heard there
    signed: dict[str, int] = field(default_factory=dict)
    # How it left, once it has: its own offline (signed or not), the
    # rendezvous's (a signed peer's offline that no signature covers, which
    # only a server makes: expiry or a closed socket), or silence.
    departure: str = ""

    @property
    def proof(self) -> str:
        """``verified`` when the message shown is signed (and was checked), else ``unsigned``."""
        return VERIFIED if self.message.sig else UNSIGNED

    @property
    def last_seen(self) -> float:
        return max(self.seen.values(), default=0.0)

    @property
    def sources(self) -> list[str]:
        return sorted(self.seen)

    def row(self) -> dict[str, Any]:
        m = self.message
        return {
            "peer_id": self.peer_id,
            "content": m.content,
            "email": m.email,
            "avatar_hash": m.avatar_hash,
            "sources": self.sources,
            "last_seen": self.last_seen,
            "ts": m.ts,
            # goop2 peers say which client they run; goop's own say "goop/<version>".
            "client": m.goop_client_version,
            "verified": m.verified,
            "addrs": list(m.addrs),
            "encryption": m.encryption_supported,
            "proof": self.proof,
        }


class PeerTable:
    def __init__(
        self,
        self_id: str,
        ttl: float,
        verify: Callable[[PresenceMessage], None] | None = None,
    ) -> None:
        self.self_id = self_id
        self.ttl = ttl
        # Raises (any ValueError) when a message's sig is not its peer's signature.
        self.verify = verify or Verifier().check
        self.rejected = 0  # messages refused by the signature rules (counted by feeders)
        self._peers: dict[str, PeerView] = {}
        self._observers: list[Observer] = []
        # source -> since when its stream reports departures itself (a
        # changes-only rendezvous stream): peers heard there since then are
        # not timed out by us; the server's offline events remove them.
        self._managed: dict[str, float] = {}

    def manage(self, source: str, since: float) -> None:
        """From ``since`` on, ``source``'s stream reports departures itself."""
        self._managed[source] = since

    def unmanage(self, source: str, now: float) -> None:
        """That stream went away at ``now``: peers heard on it time out from now."""
        started = self._managed.pop(source, None)
        if started is None:
            return
        for view in self._peers.values():
            heard = view.seen.get(source)
            if heard is not None and heard >= started:
                view.seen[source] = now

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> PeerView | None:
        return self._peers.get(peer_id)

    def views(self) -> list[PeerView]:
        return list(self._peers.values())

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def _notify(self, kind: str, view: PeerView) -> None:
        for observer in list(self._observers):
            observer(kind, view)

    def observe(self, source: str, message: PresenceMessage, now: float) -> str | None:
        """Take ``message`` heard on ``source``; returns the change it caused, if any."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        peer_id = message.peer_id
        if peer_id == self.self_id or message.type not in PRESENCE_TYPES:
            return None
        view = self._peers.get(peer_id)
        self._check_proof(source, message, view)
        if message.type == "offline":
            if view is None or source not in view.seen:
                return None
            if message.sig:
                view.departure = f"signed offline via {source}"
            elif source in view.signed:
                view.departure = f"the {source} rendezvous's own offline (expiry or socket closed)"
            else:
                view.departure = f"offline via {source}"
            view.signed.pop(source, None)
            del view.seen[source]
            if view.seen:
                self._notify(CHANGED, view)
                return CHANGED
            del self._peers[peer_id]
            self._notify(LEFT, view)
            return LEFT
        if view is None:
            view = self._peers[peer_id] = PeerView(peer_id, message, {source: now})
            if message.sig:
                view.signed[source] = message.ts
            self._notify(APPEARED, view)
            return APPEARED
        if message.sig:
            view.signed[source] = message.ts
        new_source = source not in view.seen
        changed = new_source or not view.message.same_state(message)
        view.message = message
        view.seen[source] = now
        if changed:
            self._notify(CHANGED, view)
            return CHANGED
        return None

    def _check_proof(self, source: str, message: PresenceMessage, view: PeerView | None) -> None:
        """Raise `Rejected` unless ``message`` passes the signature rules (module docstring)."""
        last = view.signed.get(source) if view is not None else None
        if not message.sig:
            if last is None:
                return
            if message.type == "offline" and source in RENDEZVOUS_SOURCES:
                return  # the rendezvous's own: it expired the peer or its socket closed
            raise Rejected("unsigned message for a peer that signs its messages")
        if last is not None and message.ts < last:
            raise Rejected("replay: older than the last signed message heard")
        if view is not None and view.message == message:
            return  # the same message again (a snapshot after a reconnect): checked already
        try:
            self.verify(message)
        except ValueError as e:
            raise Rejected(str(e)) from None

    def expire(self, now: float) -> list[str]:
        """Drop channels silent for ``ttl``; peers with none left leave. Returns who left."""
        gone = []
        for view in list(self._peers.values()):
            stale = [
                s
                for s, t in view.seen.items()
                if now - t >= self.ttl and not (s in self._managed and t >= self._managed[s])
            ]
            if not stale:
                continue
            for s in stale:
                del view.seen[s]
            if view.seen:
                self._notify(CHANGED, view)
            else:
                view.departure = f"silent for {self.ttl:g}s"
                del self._peers[view.peer_id]
                self._notify(LEFT, view)
                gone.append(view.peer_id)
        return gone

    def rows(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows sorted by peer ID, ``limit`` of them from ``offset`` (all by default).

        A page near the start costs a partial sort (the viewer polls the first
        page every second), not a sort of the whole table.
        """
        views = self._peers.values()
        if limit is None:
            chosen = sorted(views, key=_by_peer_id)[offset:]
        else:
            chosen = heapq.nsmallest(offset + limit, views, key=_by_peer_id)[offset:]
        return [v.row() for v in chosen]


def _by_peer_id(view: PeerView) -> str:
    return view.peer_id
