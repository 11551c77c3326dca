"""The bulletin board: accepted messages in, events out, peers expired.

Ties the peer table, the event log and the fan-out hub together and logs
each peer's arrival and departure (once, with the reason), never each
heartbeat. Time is passed in; the board never reads a clock itself.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from goop.logsafe import safe
from goop.message import PresenceMessage, signed_ts
from goop.rendezvous.backlog import Backlog
from goop.rendezvous.eventlog import Event, EventLog
from goop.rendezvous.fanout import Hub
from goop.rendezvous.punch import PunchPlanner, brings_new_addrs
from goop.rendezvous.registry import Change, PeerRegistry
from goop.rendezvous.signatures import SignaturePolicy

PRUNE_INTERVAL: Final = 5.0
# Peers expired per reactor turn; the rest in the next turns. 1,000 took
# 30-36 ms under the hardening soak's churn (on its slow machine); 250 keeps
# a slice under 10 ms, and 1,000 expiries a second still take 4 turns.
PRUNE_SLICE: Final = 250
# Expiries logged one by one per slice; past this, one summary line.
LOG_EACH_EXPIRY: Final = 20
# A stream that is behind may hold this many more pending peers than the
# table has now (peers that left meanwhile) before it is cut (see fanout).
PENDING_SLACK: Final = 4096
# Retry-After (seconds) when the peer table or an address's share of it is full.
FULL_RETRY_AFTER: Final = 30


class Refused(Exception):
    """A publish refused by a limit on state: HTTP status, reason, Retry-After."""

    def __init__(self, status: int, why: str, retry_after: int) -> None:
        super().__init__(why)
        self.status = status
        self.retry_after = retry_after


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
        self.signatures = SignaturePolicy()
        # Limits on state (0 = none): peers in the table, new peers per address.
        self.max_peers = 0
        self.max_peers_per_ip = 0
        self.max_table_bytes = 0
        self._owner: dict[str, str] = {}  # peer ID -> the address key that registered it
        self._owned: dict[str, int] = {}  # address key -> peers it registered
        self.hints_sent = 0
        # Since start, for /metrics: event frames handed to streams (each batch's
        # events times its subscribers; coalescing and changes-only streams send
        # fewer), and their bytes.
        self.events_sent = 0
        self.bytes_sent = 0
        hub.on_batch = self._count_sent
        hub.pending_cap = lambda: len(self.registry) + PENDING_SLACK

    @property
    def healthy(self) -> str | None:
        """None while publishes can be stored, else why not (``/healthz`` says 503)."""
        return None if self.accepting else "stopping"

    def _count_sent(self, batch: list[Event], subscribers: int) -> None:
        if not subscribers:
            return
        self.events_sent += len(batch) * subscribers
        for event in batch:
            sent = len(event.frame) * subscribers
            self.bytes_sent += sent
            entry = self.registry.get(event.peer_id)
            if entry is not None:
                entry.bytes_sent += sent

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
        return self.accept(PresenceMessage("offline", peer_id, ts=int(now * 1000)), 0, now)

    def record(self, message: PresenceMessage, event: Event, now: float, nbytes: int) -> Change:
        """Apply an event to the table, log a transition, hand it to the hub."""
        before = self.registry.get(message.peer_id)
        previous = before.addrs if before is not None else None
        change = self.registry.apply(message, event, now, nbytes)
        event.changed = change is not Change.REFRESHED
        if change is Change.APPEARED:
            self.log.info(
                "peer {peer_id} online ({kind} message, content {content})",
                peer_id=safe(message.peer_id),
                kind=message.type,
                content=safe(message.content, quote=True),
            )
        elif change is Change.LEFT:
            self._release(event.peer_id)
            why = self._why_left.pop(event.peer_id, "offline message")
            self.log.info("peer {peer_id} offline ({why})", peer_id=safe(message.peer_id), why=why)
        self.hub.publish(event)
        if self.hub.by_peer and brings_new_addrs(message, previous):
            self._hint(message, now)
        return change

    def introduce(self, peer_id: str, now: float) -> None:
        """``peer_id`` can hear hints now (its /ws opened): the ones it missed."""
        entry = self.registry.get(peer_id)
        if entry is None:
            return
        for recipient, hint in self.punch.introduce(
            entry.peer_id, entry.addrs, self.registry.newest_first(), now
        ):
            self.hints_sent += self.hub.send_to(recipient, hint.encode())

    def _hint(self, message: PresenceMessage, now: float) -> None:
        """Punch hints for a peer that brought new addresses, each to its target alone."""
        plan = self.punch.plan(message, self.registry.newest_first(), self.hub.by_peer, now)
        for recipient, hint in plan:
            self.hints_sent += self.hub.send_to(recipient, hint.encode())

    def prune(self, now: float, limit: int = PRUNE_SLICE) -> list[str]:
        """Expire up to ``limit`` peers silent for ``ttl`` seconds; each gets an ``offline``
        event. Call again (next reactor turn) while `prune_pending` says more are due:
        100,000 peers expiring at once must not freeze the server for a second."""
        gone: list[str] = []
        for entry in self.registry.expired(now, self.ttl, limit):
            peer_id = entry.peer_id
            self.registry.remove(peer_id)
            self._release(peer_id)
            offline = PresenceMessage("offline", peer_id, ts=int(now * 1000))
            self.hub.publish(self.events.append(peer_id, offline.encode()))
            self._why_left.pop(peer_id, None)
            if len(gone) < LOG_EACH_EXPIRY:
                self.log.info(
                    "peer {peer_id} offline (expired: silent for {silent:.0f}s, ttl {ttl}s)",
                    peer_id=safe(peer_id),
                    silent=now - entry.last_seen,
                    ttl=self.ttl,
                )
            gone.append(peer_id)
        if len(gone) > LOG_EACH_EXPIRY:
            self.log.info(
                "{more} more peers expired (silent for {ttl}s or more)",
                more=len(gone) - LOG_EACH_EXPIRY,
                ttl=self.ttl,
            )
        return gone

    def prune_pending(self, now: float) -> bool:
        """True when an expired peer is still in the table (the slice ran out)."""
        return bool(self.registry.expired(now, self.ttl, 1))

    # -- limits on state ------------------------------------------------------

    def admit(self, message: PresenceMessage, key: str) -> None:
        """Raise `Refused` when a message would register a peer past a limit.

        Only a new peer is counted: updates and offlines of a registered peer
        always pass. ``key`` is the client's address as limits see it
        (`goop.rendezvous.http.limit_key`).
        """
        peer_id = message.peer_id
        if message.type == "offline":
            return
        budget = self.max_table_bytes
        entry = self.registry.get(peer_id)
        if entry is not None or peer_id in self._owner:
            # A registered peer always gets its heartbeats through; only growing
            # its state is refused while the table is over its byte budget.
            if (
                budget
                and entry is not None
                and self.registry.bytes >= budget
                and len(message.encode()) > len(entry.frame)
            ):
                raise Refused(503, "the peer table is full (bytes)", FULL_RETRY_AFTER)
            return
        if budget and self.registry.bytes >= budget:
            raise Refused(
                503, f"the peer table is full ({budget // 2**20} MB)", FULL_RETRY_AFTER
            )
        if self.max_peers and len(self.registry) >= self.max_peers:
            raise Refused(
                503, f"server is at its peer limit ({self.max_peers})", FULL_RETRY_AFTER
            )
        per_ip = self.max_peers_per_ip
        if per_ip and self._owned.get(key, 0) >= per_ip:
            raise Refused(
                429, f"too many peers registered from {key} (limit {per_ip})", FULL_RETRY_AFTER
            )
        self._owner[peer_id] = key
        self._owned[key] = self._owned.get(key, 0) + 1

    def check_signature(self, message: PresenceMessage, now: float) -> bool:
        """Raise `goop.rendezvous.signatures.SignatureRefused` unless the signature rules
        let ``message`` in (docs/signing.md); True when it is signed."""
        entry = self.registry.get(message.peer_id)
        stored = signed_ts(entry.fields) if entry is not None else 0
        return self.signatures.check(message, stored, now)

    def _release(self, peer_id: str) -> None:
        key = self._owner.pop(peer_id, None)
        if key is None:
            return
        left = self._owned[key] - 1
        if left:
            self._owned[key] = left
        else:
            del self._owned[key]

    def backlog(self, last_event_id: str | None, changes_only: bool = False) -> Backlog:
        """What a new subscriber gets first: a replay when possible, else the snapshot.

        A cursor, handed out slice by slice as the stream drains (see `Backlog`).
        """
        last: int | None = None
        if last_event_id is not None:
            try:
                last = int(last_event_id.strip())
            except ValueError:
                last = None
        return Backlog(self.events, self.registry, last, changes_only)
