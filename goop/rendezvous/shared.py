"""A board backed by the shared SQLite store, so several instances act as one server.

Every accepted message is committed to the store before the publisher gets
its 204; every instance (the one that accepted it included) learns of it by
tailing the store's event log, and only then applies and fans it out. So all
instances see the same events, in the same order, with the same ids.

SQLite runs on one dedicated thread per instance; the reactor thread only
hands work over and takes results back, so a busy or locked database delays
the database work, never the event loop.

A publish waits for the database a bounded time, never in an open-ended
queue: at most `PUBLISH_DEADLINE` seconds in all (queue and lock together),
then 503 with ``Retry-After``. While the store is failing (a write failed:
locked, read-only, damaged), while a database call has been stuck for more
than `STUCK_AFTER` seconds, while `MAX_WAITING` publishes already wait, or
once the file was deleted or replaced under the instance, publishes are
refused at once and `healthy` says why (``/healthz`` answers 503). A small
probe write every `PROBE_INTERVAL` seconds finds out when the store works
again. A deleted or replaced file is final: the instance keeps serving its
streams but refuses publishes until it is restarted, rather than writing on
into an orphaned inode no other instance reads.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Final

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from goop.histogram import Histogram
from goop.message import MessageError, Origin, PresenceMessage, message_from_object
from goop.rendezvous.board import Board
from goop.rendezvous.fanout import Hub
from goop.rendezvous.store import EventRow, SQLiteStore, Store, StoreError, StoreReplaced

# Seconds per shared-store call (a healthy SQLite write is well under 10 ms).
STORE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

TAIL_INTERVAL: Final = 0.02
# Longest a publish waits for the database, queue and lock together, before 503.
PUBLISH_DEADLINE: Final = 1.0
# A database call running longer than this: new publishes are refused at once.
STUCK_AFTER: Final = 1.0
# Publishes queued for the database thread beyond which new ones are refused at once.
MAX_WAITING: Final = 1000
# SQLite busy timeouts (ms): tail and prune; the recovery probe.
OP_BUSY_MS: Final = 1000
PROBE_BUSY_MS: Final = 100
# While failing, how often a probe write checks whether the store works again.
PROBE_INTERVAL: Final = 1.0
# How often the tail also checks that the path still names the file opened.
IDENTITY_INTERVAL: Final = 1.0


class DatabaseUnavailable(Exception):
    """The store refused a write; the publisher should retry."""


class _GivenUp(Exception):
    """A queued publish whose deadline passed before the database thread reached it."""


class _Ticket:
    """One queued publish: the database thread claims it or the reactor gives
    up on it, never both, so a 503 is never stored and a 204 never dropped."""

    __slots__ = ("_lock", "_state", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic()
        self._lock = threading.Lock()
        self._state = "waiting"

    def _move(self, to: str) -> bool:
        with self._lock:
            if self._state != "waiting":
                return False
            self._state = to
            return True

    def claim(self) -> bool:
        return self._move("running")

    def give_up(self) -> bool:
        return self._move("given up")


def _offline_from(peer_id: str, data: bytes, now: float) -> bytes:
    try:
        last = message_from_object(json.loads(data), 0, Origin.RELAY)
        return last.offline(int(now * 1000)).encode()
    except (ValueError, MessageError):
        return PresenceMessage("offline", peer_id, ts=int(now * 1000)).encode()


def _reason(failure: Failure) -> str:
    return " ".join(failure.getErrorMessage().split()) or type(failure.value).__name__


class SharedBoard(Board):
    log = Logger()

    def __init__(
        self, hub: Hub, ttl_seconds: float, store: str | Store, reactor: IReactorTime
    ) -> None:
        # A path is a SQLite file; a Store is any engine behind the same five
        # operations (goop.rendezvous.redisstore).
        self.store: Store = SQLiteStore(store) if isinstance(store, str) else store
        # Opening checks the file: a locked, damaged or unwritable one stops
        # startup here, with one line (StoreError). A store given opened is kept.
        if isinstance(store, str):
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
        self._tail_loop = LoopingCall(self._tick)
        self._tail_loop.clock = reactor
        self._closing = False
        self._pruning = False
        self._probing = False
        self._next_probe = 0.0
        self._next_identity_check = 0.0
        # Set on the database thread while it runs a call (time.monotonic()).
        self._busy_since: float | None = None
        self._waiting = 0  # publishes handed to the database thread, not yet back
        self._failing: str | None = None  # why the store fails, until a write works
        self._orphaned: str | None = None  # what became of the file; final
        self.restored = len(self.registry)
        # Each database call's time on its thread, for /metrics (goop_store_seconds).
        self.store_latency = Histogram(STORE_BUCKETS)

    # -- the database thread --------------------------------------------------

    def _in_db(self, f: Any, *args: Any) -> Deferred[Any]:
        reactor: Any = self.reactor
        return deferToThreadPool(reactor, self._pool, self._timed, f, *args)

    def _timed(self, f: Any, *args: Any) -> Any:
        started = self._busy_since = time.monotonic()
        try:
            return f(*args)
        finally:
            self._busy_since = None
            # Only this thread writes it; a scrape reading it meanwhile is off by one at most.
            self.store_latency.observe(time.monotonic() - started)

    def _check_identity(self) -> None:
        problem = self.store.identity_problem()
        if problem is not None:
            raise StoreReplaced(problem)

    def start(self) -> None:
        if self.store.created:
            # Expected on a first start; on a restart it means the store was lost.
            self.log.warn(
                "peer database {path} did not exist: created a new, empty one",
                path=self.store.path,
            )
        self._pool.start()
        self._tail_loop.start(TAIL_INTERVAL, now=True)

    def stop(self) -> Deferred[None]:
        """Stop tailing; close the database on its own thread after queued work."""
        if self._tail_loop.running:
            self._tail_loop.stop()
        self._closing = True
        if not self._pool.started:
            self.store.close()
            return succeed(None)
        d = self._in_db(self.store.close)

        def stop_pool(result: object) -> None:
            self._pool.stop()  # idle by now: its last call was the close
            if isinstance(result, Failure):
                self.log.warn("closing the peer database: {why}", why=_reason(result))

        return d.addBoth(stop_pool)

    # -- writes -----------------------------------------------------------------

    def _refusal(self) -> str | None:
        """Why publishes are refused at once (None: hand them to the database)."""
        if self._closing:
            return "stopping"
        if self._orphaned is not None:
            return f"peer database file {self._orphaned}; restart this instance"
        if self._failing is not None:
            return f"peer database failing: {self._failing}"
        since = self._busy_since
        if since is not None and time.monotonic() - since > STUCK_AFTER:
            return f"peer database busy for {time.monotonic() - since:.1f}s"
        if self._waiting >= MAX_WAITING:
            return f"peer database backlog: {self._waiting} publishes waiting"
        return None

    @property
    def healthy(self) -> str | None:
        return super().healthy or self._refusal()

    def accept(self, message: PresenceMessage, nbytes: int, now: float) -> Deferred[None]:
        refused = self._refusal()
        if refused is not None:
            self._unclaim(message.peer_id)
            return fail(DatabaseUnavailable(f"the peer database is unavailable ({refused})"))
        ticket = _Ticket(time.monotonic() + PUBLISH_DEADLINE)
        result: Deferred[None] = Deferred()
        self._waiting += 1
        d = self._in_db(
            self._append, ticket, message.peer_id, message.type, message.encode(), now, nbytes
        )
        timer = self.reactor.callLater(
            PUBLISH_DEADLINE, self._give_up, ticket, result, message.peer_id
        )

        def finished(outcome: object) -> object:
            self._waiting -= 1
            if timer.active():
                timer.cancel()
            return outcome

        def written(_: EventRow) -> None:
            self._healthy()
            self._tail()  # fan it out now rather than at the next tick
            result.callback(None)

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, _GivenUp):
                return  # the timer has answered already
            self._store_failed("storing a publish", failure)
            self._unclaim(message.peer_id)
            result.errback(
                DatabaseUnavailable(f"the peer database is unavailable ({_reason(failure)})")
            )

        d.addBoth(finished).addCallbacks(written, failed)
        return result

    def _give_up(self, ticket: _Ticket, result: Deferred[None], peer_id: str) -> None:
        """The deadline passed with the publish still queued: 503 now, and never store it."""
        if ticket.give_up():
            self._unclaim(peer_id)
            result.errback(
                DatabaseUnavailable(
                    f"the peer database is unavailable (busy: no answer within "
                    f"{PUBLISH_DEADLINE:g}s)"
                )
            )
        # else the database thread has it: its own busy timeout ends at the deadline.

    def _unclaim(self, peer_id: str) -> None:
        """A publish not stored leaves no claim on the per-address peer limit (`admit`)."""
        if peer_id not in self.registry:
            self._release(peer_id)

    def _append(
        self, ticket: _Ticket, peer_id: str, kind: str, data: bytes, now: float, nbytes: int
    ) -> EventRow:
        """On the database thread: the publish, if still wanted, within its deadline."""
        if not ticket.claim():
            raise _GivenUp()
        self._check_identity()
        left = ticket.deadline - time.monotonic()
        self.store.set_busy_timeout(min(OP_BUSY_MS, int(left * 1000)))
        return self.store.append(peer_id, kind, data, now, nbytes)

    def prune(self, now: float, limit: int = 0) -> list[str]:
        """Prune in the store: one transaction for every stale peer (``limit`` is
        not needed), whichever instance gets there first; nothing once orphaned."""
        if self._orphaned is not None or self._pruning or self._closing:
            return []
        self._pruning = True
        d = self._in_db(self._prune, now)

        def done(result: object) -> None:
            self._pruning = False
            if isinstance(result, Failure):
                self._store_failed("pruning", result)

        d.addBoth(done)
        # The offline events arrive through the tail like any other.
        return []

    def prune_pending(self, now: float) -> bool:
        """Never: the store's prune takes every stale peer at once; their offline
        events reach the table through the tail, not through another prune."""
        return False

    def _prune(self, now: float) -> list[EventRow]:
        self._check_identity()
        self.store.set_busy_timeout(OP_BUSY_MS)
        return self.store.prune(now, self.ttl, _offline_from)

    # -- reads ------------------------------------------------------------------

    def _tick(self) -> None:
        self._tail()
        if (
            self._failing is not None
            and self._orphaned is None
            and not self._probing
            and time.monotonic() >= self._next_probe
        ):
            self._probe()

    def _tail(self) -> None:
        if self._tailing is not None or self._closing:
            return
        check = self._orphaned is None and time.monotonic() >= self._next_identity_check
        if check:
            self._next_identity_check = time.monotonic() + IDENTITY_INTERVAL
        d = self._in_db(self._read, self.cursor, check)
        self._tailing = d

        def got(result: tuple[list[EventRow], str | None]) -> None:
            self._tailing = None
            rows, problem = result
            if problem is not None:
                self._orphan(problem)
            for row in rows:
                self._deliver(row)
            if len(rows) >= 2000:
                self.reactor.callLater(0, self._tail)

        def failed(failure: Failure) -> None:
            self._tailing = None
            self._store_failed("reading new events", failure)

        d.addCallbacks(got, failed)

    def _read(self, after: int, check: bool) -> tuple[list[EventRow], str | None]:
        problem = self.store.identity_problem() if check else None
        self.store.set_busy_timeout(OP_BUSY_MS)
        return self.store.tail(after), problem

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
            return message_from_object(json.loads(row.data), int(row.created * 1000), Origin.RELAY)
        except (ValueError, MessageError) as e:
            self.log.warn("skipping unreadable event {id} in the store: {why}", id=row.id, why=e)
            return None

    # -- health -----------------------------------------------------------------

    def _probe(self) -> None:
        """While failing: a small write; when it commits, publishes are taken again."""
        self._probing = True
        self._next_probe = time.monotonic() + PROBE_INTERVAL

        def probe() -> int:
            self._check_identity()
            self.store.set_busy_timeout(PROBE_BUSY_MS)
            return self.store.probe()

        def done(result: object) -> None:
            self._probing = False
            if isinstance(result, Failure):
                if isinstance(result.value, StoreReplaced):
                    self._orphan(str(result.value))
            else:
                self._healthy()

        self._in_db(probe).addBoth(done)

    def _store_failed(self, doing: str, failure: Failure) -> None:
        if isinstance(failure.value, StoreReplaced):
            self._orphan(str(failure.value))
        else:
            self._unhealthy(doing, _reason(failure))

    def _orphan(self, problem: str) -> None:
        if self._orphaned is not None:
            return
        self._orphaned = problem
        self.log.error(
            "peer database {path} {problem} while in use: this instance now refuses "
            "publishes (503) and /healthz says 503 until it is restarted; other instances "
            "may be using a new file at that path, so restart every instance sharing it",
            path=self.store.path,
            problem=problem,
        )

    def _healthy(self) -> None:
        if self._failing is not None:
            self._failing = None
            self.log.info("peer database {path} works again", path=self.store.path)

    def _unhealthy(self, doing: str, why: str) -> None:
        if self._failing is None:
            self._failing = why
            self.log.error(
                "peer database {path} failed while {doing}: {why}; publishes answer 503 "
                "until a probe write succeeds",
                path=self.store.path,
                doing=doing,
                why=why,
            )


__all__ = ["DatabaseUnavailable", "SharedBoard", "StoreError"]
