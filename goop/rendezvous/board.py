"""The bulletin board: accepted messages in, events out, peers expired.

Ties the peer table, the event log and the fan-out hub together and logs
each peer's arrival and departure (once, with the reason), never each
heartbeat. Time is passed in; the board never reads a clock itself.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from goop.message import PresenceMessage
from goop.rendezvous.eventlog import Event, EventLog
from goop.rendezvous.fanout import Hub
from goop.rendezvous.punch import PunchPlanner, brings_new_addrs
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
        # Why a peer's coming offline event was made by the server (expiry, a
        # closed /ws socket); shared mode applies the event later, so it waits here.
        self._why_left: dict[str, str] = {}
        self.punch = PunchPlanner()
        self.hints_sent = 0
        hub.on_batch = self._count_sent

    @property
    def healthy(self) -> str | None:
        """None while publishes can be stored, else why not (``/healthz`` says 503)."""
        return None if self.accepting else "stopping"

    def _count_sent(self, batch: list[Event], subscribers: int) -> None:
        if not subscribers:
            return
        for event in batch:
            entry = self.registry.get(event.peer_id)
            if entry is not None:
                entry.bytes_sent += len(event.frame) * subscribers

    def accept(self, message: PresenceMessage, nbytes: int, now: float) -> Deferred[None] | None:
        """A validated publish: stored and fanned out (a Deferred when that waits on I/O)."""
        self.publish(message, nbytes, now)
        return None

    def publish(self, message: PresenceMessage, nbytes: int, now: float) -> Event:
        """Record ``message`` and fan it out; returns its event."""
        event = self.events.append(message.peer_id, message.encode())
        self.record(message, event, now, nbytes)
        return event

    def server_offline(self, peer_id: str, why: str, now: float) -> Deferred[None] | None:
        """The server says ``peer_id`` is gone (its /ws closed); no-op when it is not here."""
        entry = self.registry.get(peer_id)
        if entry is None:
            return None
        self._why_left[peer_id] = why
        return self.accept(entry.message.offline(int(now * 1000)), 0, now)

    def record(self, message: PresenceMessage, event: Event, now: float, nbytes: int) -> Change:
        """Apply an event to the table, log a transition, hand it to the hub."""
        before = self.registry.get(message.peer_id)
        previous = before.message if before is not None else None
        change = self.registry.apply(message, event, now, nbytes)
        event.changed = change is not Change.REFRESHED
        if change is Change.APPEARED:
            self.log.info(
                "peer {peer_id} online ({kind} message, content {content!r})",
                peer_id=message.peer_id,
                kind=message.type,
                content=message.content,
            )
        elif change is Change.LEFT:
            why = self._why_left.pop(event.peer_id, "offline message")
            self.log.info("peer {peer_id} offline ({why})", peer_id=message.peer_id, why=why)
        self.hub.publish(event)
        if self.hub.by_peer and brings_new_addrs(message, previous):
            self._hint(message, now)
        return change

    def _hint(self, message: PresenceMessage, now: float) -> None:
        """Punch hints for a peer that brought new addresses, each to its target alone."""
        plan = self.punch.plan(message, self.registry.newest_first(), self.hub.by_peer, now)
        for recipient, hint in plan:
            self.hints_sent += self.hub.send_to(recipient, hint.encode())

    def prune(self, now: float) -> list[str]:
        """Expire peers silent for ``ttl`` seconds; each gets an ``offline`` event."""
        gone = []
        for entry in self.registry.expired(now, self.ttl):
            self.registry.remove(entry.message.peer_id)
            old = entry.message
            offline = old.offline(int(now * 1000))
            self.hub.publish(self.events.append(old.peer_id, offline.encode()))
            self._why_left.pop(old.peer_id, None)
            self.log.info(
                "peer {peer_id} offline (expired: silent for {silent:.0f}s, ttl {ttl}s)",
                peer_id=old.peer_id,
                silent=now - entry.last_seen,
                ttl=self.ttl,
            )
            gone.append(old.peer_id)
        return gone

    def backlog(self, last_event_id: str | None, changes_only: bool = False) -> list[Event]:
        """What a new subscriber gets first: a replay when possible, else the snapshot."""
        if last_event_id is not None:
            try:
                last = int(last_event_id.strip())
            except ValueError:
                last = None
            if last is not None:
                missed = self.events.since(last)
                if missed is not None:
                    return [e for e in missed if e.changed] if changes_only else missed
        return self.registry.snapshot()
