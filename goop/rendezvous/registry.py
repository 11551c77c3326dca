"""The rendezvous server's table of online peers.

Pure logic, time passed in as ``now`` (seconds). The table keeps each peer's
latest `Event`, which holds the message it carried (as its values), when the
peer was first and last heard and how many bytes it moved. Iteration order
is the order of each peer's latest event, so walking the table yields a
snapshot already sorted by event id.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

from goop.message import PresenceMessage
from goop.rendezvous.eventlog import Event


class Change(enum.Enum):
    APPEARED = "appeared"  # a peer we did not have
    REFRESHED = "refreshed"  # a known peer, nothing but ts changed
    CHANGED = "changed"  # a known peer with new content, email or avatar
    LEFT = "left"  # an offline message for a peer we had
    IGNORED = "ignored"  # an offline message for a peer we did not have


# A peer's row: its latest event, which carries the table's bookkeeping (see
# `Event`: one object per peer for the garbage collector to visit).
PeerEntry = Event


def row(entry: PeerEntry) -> dict[str, Any]:
    """The admin row (SPEC: /peers.json)."""
    m = entry.message
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
        "last_seen": entry.last_seen,
        "bytes_sent": entry.bytes_sent,
        "bytes_received": entry.bytes_received,
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

    def newest_first(self) -> Iterator[PeerEntry]:
        """Each peer's entry (``peer_id``, ``addrs``, ``message``), the most recently
        heard first."""
        return reversed(self._peers.values())

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def apply(self, message: PresenceMessage, event: Event, now: float, nbytes: int) -> Change:
        """Record ``message`` (carried by ``event``) heard at ``now``: ``event`` becomes
        the peer's entry, with the bookkeeping of the one it replaces."""
        peer_id = message.peer_id
        entry = self._peers.pop(peer_id, None)
        if entry is not None:
            self.bytes -= len(entry.frame)
        if message.type == "offline":
            return Change.IGNORED if entry is None else Change.LEFT
        self.bytes += len(event.frame)
        event.fields = message.values()
        event.last_seen = now
        if entry is None:
            event.first_seen = now
            event.bytes_received = nbytes
            self._peers[peer_id] = event
            return Change.APPEARED
        change = Change.REFRESHED if message.same_state_as(entry.fields) else Change.CHANGED
        event.first_seen = entry.first_seen
        event.bytes_received = entry.bytes_received + nbytes
        event.bytes_sent = entry.bytes_sent
        # Inserting anew keeps the dict ordered by latest event id.
        self._peers[peer_id] = event
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
            self.bytes -= len(entry.frame)
        return entry

    def snapshot(self) -> list[Event]:
        """Each online peer's latest event, oldest first."""
        return list(self._peers.values())
