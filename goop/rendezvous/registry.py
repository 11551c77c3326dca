"""The rendezvous server's table of online peers.

Pure logic, time passed in as ``now`` (seconds). The table keeps each peer's
latest message, the `Event` that carried it, when it was last heard and how
many bytes it moved. Iteration order is the order of each peer's latest
event, so walking the table yields a snapshot already sorted by event id.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from goop.message import PresenceMessage
from goop.rendezvous.eventlog import Event


class Change(enum.Enum):
    APPEARED = "appeared"  # a peer we did not have
    REFRESHED = "refreshed"  # a known peer, nothing but ts changed
    CHANGED = "changed"  # a known peer with new content, email or avatar
    LEFT = "left"  # an offline message for a peer we had
    IGNORED = "ignored"  # an offline message for a peer we did not have


@dataclass(slots=True)
class PeerEntry:
    message: PresenceMessage
    event: Event
    first_seen: float
    last_seen: float
    bytes_received: int = 0
    bytes_sent: int = 0

    def row(self) -> dict[str, Any]:
        """The admin row (SPEC: /peers.json)."""
        m = self.message
        return {
            "peer_id": m.peer_id,
            "type": m.type,
            "content": m.content,
            "email": m.email,
            "avatar_hash": m.avatar_hash,
            "ts": m.ts,
            "client": m.goop_client_version,
            "verified": m.verified,
            "addrs": list(m.addrs),
            "last_seen": self.last_seen,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


class PeerRegistry:
    def __init__(self) -> None:
        self._peers: dict[str, PeerEntry] = {}
        self.bytes = 0  # SSE bytes of every peer's latest event (the memory budget)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __iter__(self) -> Iterator[PeerEntry]:
        return iter(self._peers.values())

    def newest_first(self) -> Iterator[PresenceMessage]:
        """Each peer's latest message, the most recently heard first."""
        return (e.message for e in reversed(self._peers.values()))

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def apply(self, message: PresenceMessage, event: Event, now: float, nbytes: int) -> Change:
        """Record ``message`` (carried by ``event``) heard at ``now``."""
        peer_id = message.peer_id
        entry = self._peers.pop(peer_id, None)
        if entry is not None:
            self.bytes -= len(entry.event.frame)
        if message.type == "offline":
            return Change.IGNORED if entry is None else Change.LEFT
        self.bytes += len(event.frame)
        if entry is None:
            self._peers[peer_id] = PeerEntry(message, event, now, now, nbytes)
            return Change.APPEARED
        change = Change.REFRESHED if entry.message.same_state(message) else Change.CHANGED
        entry.message = message
        entry.event = event
        entry.last_seen = now
        entry.bytes_received += nbytes
        # Re-inserting keeps the dict ordered by latest event id.
        self._peers[peer_id] = entry
        return change

    def expired(self, now: float, ttl: float, limit: int = 0) -> list[PeerEntry]:
        """Up to ``limit`` (0: all) peers silent for ``ttl`` seconds or more, oldest first
        (not removed; see `remove`).

        The table is ordered by each peer's latest event, which is the order of
        last-heard times, so the stale peers are a prefix: the scan stops at the
        first peer still alive and costs what it finds, not the table's size.
        """
        out = []
        for entry in self._peers.values():
            if now - entry.last_seen < ttl:
                break
            out.append(entry)
            if len(out) == limit:
                break
        return out

    def remove(self, peer_id: str) -> PeerEntry | None:
        entry = self._peers.pop(peer_id, None)
        if entry is not None:
            self.bytes -= len(entry.event.frame)
        return entry

    def snapshot(self) -> list[Event]:
        """Each online peer's latest event, oldest first."""
        return [e.event for e in self._peers.values()]
