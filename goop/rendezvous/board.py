"""The bulletin board: accepted messages in, events out, peers expired.

Ties the peer table, the event log and the fan-out hub together and logs
each peer's arrival and departure (once, with the reason), never each
heartbeat. Time is passed in; the board never reads a clock itself.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

from goop.message import PresenceMessage
from goop.rendezvous.eventlog import Event, EventLog
from goop.rendezvous.fanout import Hub
from goop.rendezvous.registry import Change, PeerRegistry

PRUNE_INTERVAL: Final = 5.0


class Board:
    log = Logger()

    def __init__(self, hub: Hub, ttl_seconds: float, first_event_id: int = 1) -> None:
        self.hub = hub
        self.ttl = ttl_seconds
        self.registry = PeerRegistry()
        self.events = EventLog(first_event_id)
        self.accepting = True
        hub.on_batch = self._count_sent

    def _count_sent(self, batch: list[Event], subscribers: int) -> None:
        if not subscribers:
            return
        for event in batch:
            entry = self.registry.get(event.peer_id)
            if entry is not None:
                entry.bytes_sent += len(event.frame) * subscribers

    def publish(self, message: PresenceMessage, nbytes: int, now: float) -> Event:
        """Record ``message`` and fan it out; returns its event."""
        event = self.events.append(message.peer_id, message.encode())
        change = self.registry.apply(message, event, now, nbytes)
        if change is Change.APPEARED:
            self.log.info(
                "peer {peer_id} online ({kind} message, content {content!r})",
                peer_id=message.peer_id,
                kind=message.type,
                content=message.content,
            )
        elif change is Change.LEFT:
            self.log.info("peer {peer_id} offline (offline message)", peer_id=message.peer_id)
        self.hub.publish(event)
        return event

    def prune(self, now: float) -> list[str]:
        """Expire peers silent for ``ttl`` seconds; each gets an ``offline`` event."""
        gone = []
        for entry in self.registry.expired(now, self.ttl):
            self.registry.remove(entry.message.peer_id)
            old = entry.message
            offline = PresenceMessage(
                "offline", old.peer_id, old.content, old.email, old.avatar_hash,
                int(now * 1000),
            )
            self.hub.publish(self.events.append(old.peer_id, offline.encode()))
            self.log.info(
                "peer {peer_id} offline (expired: silent for {silent:.0f}s, ttl {ttl}s)",
                peer_id=old.peer_id,
                silent=now - entry.last_seen,
                ttl=self.ttl,
            )
            gone.append(old.peer_id)
        return gone

    def backlog(self, last_event_id: str | None) -> list[Event]:
        """What a new subscriber gets first: a replay when possible, else the snapshot."""
        if last_event_id is not None:
            try:
                last = int(last_event_id.strip())
            except ValueError:
                last = None
            if last is not None:
                missed = self.events.since(last)
                if missed is not None:
                    return missed
        return self.registry.snapshot()
