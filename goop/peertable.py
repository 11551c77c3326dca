"""The peer's merged view of who is online, over every channel it listens on.

Pure logic; ``now`` (seconds) is passed in. Each peer carries its latest
message and, per channel (``lan``, ``local``, ``wan``), when it was last
heard there. A peer leaves when every channel that had it has either said
``offline`` or been silent for ``ttl`` seconds. The peer's own ID is never
listed. Observers hear ``appeared``, ``changed`` and ``left``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from goop.message import PRESENCE_TYPES, PresenceMessage

SOURCES: Final = ("lan", "local", "wan")
APPEARED: Final = "appeared"
CHANGED: Final = "changed"
LEFT: Final = "left"

Observer = Callable[[str, "PeerView"], None]


@dataclass
class PeerView:
    peer_id: str
    message: PresenceMessage
    seen: dict[str, float] = field(default_factory=dict)

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
        }


class PeerTable:
    def __init__(self, self_id: str, ttl: float) -> None:
        self.self_id = self_id
        self.ttl = ttl
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
        if message.type == "offline":
            if view is None or source not in view.seen:
                return None
            del view.seen[source]
            if view.seen:
                self._notify(CHANGED, view)
                return CHANGED
            del self._peers[peer_id]
            self._notify(LEFT, view)
            return LEFT
        if view is None:
            view = self._peers[peer_id] = PeerView(peer_id, message, {source: now})
            self._notify(APPEARED, view)
            return APPEARED
        new_source = source not in view.seen
        changed = new_source or not view.message.same_state(message)
        view.message = message
        view.seen[source] = now
        if changed:
            self._notify(CHANGED, view)
            return CHANGED
        return None

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
