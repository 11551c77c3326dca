"""A board backed by the shared SQLite store, so several instances act as one server.

Every accepted message is committed to the store before the publisher gets
its 204; every instance (the one that accepted it included) learns of it by
tailing the store's event log, and only then applies and fans it out. So all
instances see the same events, in the same order, with the same ids.

SQLite runs on one dedicated thread per instance; the reactor thread only
hands work over and takes results back, so a busy or locked database delays
the database work, never the event loop. A failing database is logged and
retried (publishes answer 503 meanwhile); the instance keeps serving.
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from goop.message import MessageError, Origin, PresenceMessage, message_from_object
from goop.rendezvous.board import Board
from goop.rendezvous.fanout import Hub
from goop.rendezvous.store import EventRow, SQLiteStore, StoreError

TAIL_INTERVAL: Final = 0.02


class DatabaseUnavailable(Exception):
    """The store refused a write; the publisher should retry."""


def _offline_from(peer_id: str, data: bytes, now: float) -> bytes:
    try:
        last = message_from_object(json.loads(data), 0, Origin.RELAY)
        return last.offline(int(now * 1000)).encode()
    except (ValueError, MessageError):
        return PresenceMessage("offline", peer_id, ts=int(now * 1000)).encode()


class SharedBoard(Board):
    log = Logger()

    def __init__(self, hub: Hub, ttl_seconds: float, path: str, reactor: IReactorTime) -> None:
        self.store = SQLiteStore(path)
        # Opening checks the file: a locked or damaged one stops startup here.
        self.store.open()
        self.reactor = reactor
        peers, head = self.store.snapshot(reactor.seconds(), ttl_seconds)
        super().__init__(hub, ttl_seconds, first_event_id=head + 1)
        for row in peers:
            message = self._decode(row)
            if message is not None:
                event = self.events.add_snapshot(row.id, row.peer_id, row.data)
                self.registry.apply(message, event, row.created, 0)
        self.cursor = head
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="goop-sqlite")
        self._tailing: Deferred[None] | None = None
        self._tail_loop = LoopingCall(self._tail)
        self._tail_loop.clock = reactor
        self._failing = False
        self.restored = len(self.registry)

    # -- the database thread --------------------------------------------------

    def _in_db(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def start(self) -> None:
        self._pool.start()
        self._tail_loop.start(TAIL_INTERVAL, now=True)

    def stop(self) -> Deferred[None]:
        if self._tail_loop.running:
            self._tail_loop.stop()
        pending = self._tailing

        def close(_: object = None) -> None:
            self._pool.stop()
            self.store.close()

        if pending is not None:
            return pending.addBoth(close)
        close()
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    # -- writes -----------------------------------------------------------------

    def accept(self, message: PresenceMessage, nbytes: int, now: float) -> Deferred[None]:
        d = self._in_db(
            self.store.append, message.peer_id, message.type, message.encode(), now, nbytes
        )

        def written(_: EventRow) -> None:
            self._healthy()
            self._tail()  # fan it out now rather than at the next tick

        def failed(failure: Any) -> None:
            self._unhealthy("storing a publish", failure)
            raise DatabaseUnavailable(f"the peer database is unavailable ({failure.value})")

        d.addCallbacks(written, failed)
        return d

    def prune(self, now: float) -> list[str]:
        d = self._in_db(self.store.prune, now, self.ttl, _offline_from)
        d.addCallbacks(lambda _: self._healthy(), lambda f: self._unhealthy("pruning", f))
        # The offline events arrive through the tail like any other.
        return []

    # -- reads ------------------------------------------------------------------

    def _tail(self) -> None:
        if self._tailing is not None:
            return
        d = self._in_db(self.store.tail, self.cursor)
        self._tailing = d

        def got(rows: list[EventRow]) -> None:
            self._tailing = None
            for row in rows:
                self._deliver(row)
            if len(rows) >= 2000:
                self.reactor.callLater(0, self._tail)

        def failed(failure: Any) -> None:
            self._tailing = None
            self._unhealthy("reading new events", failure)

        d.addCallbacks(got, failed)

    def _deliver(self, row: EventRow) -> None:
        if row.id <= self.cursor:
            return
        self.cursor = row.id
        message = self._decode(row)
        if message is None:
            return
        if row.kind == "expired":
            self._why_left[row.peer_id] = "expired"
        event = self.events.add(row.id, row.peer_id, row.data)
        self.record(message, event, row.created, row.nbytes)

    def _decode(self, row: EventRow) -> PresenceMessage | None:
        try:
            return message_from_object(
                json.loads(row.data), int(row.created * 1000), Origin.RELAY
            )
        except (ValueError, MessageError) as e:
            self.log.warn("skipping unreadable event {id} in the store: {why}", id=row.id, why=e)
            return None

    # -- health -----------------------------------------------------------------

    def _healthy(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("peer database {path} works again", path=self.store.path)

    def _unhealthy(self, doing: str, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            self.log.error(
                "peer database {path} failed while {doing}: {why}; retrying",
                path=self.store.path,
                doing=doing,
                why=failure.getErrorMessage(),
            )


__all__ = ["DatabaseUnavailable", "SharedBoard", "StoreError"]
