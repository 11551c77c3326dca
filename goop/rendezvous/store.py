"""The shared SQLite store behind several rendezvous instances (``peer_db_path``).

Blocking code, meant to run on one dedicated thread per instance (see
`goop.rendezvous.shared`); nothing here touches the reactor.

Two tables. ``events`` is the one ordered log every instance appends what it
accepts to and tails to fan out: its ids are the SSE event ids, shared by all
instances, so ``Last-Event-ID`` means the same thing everywhere. ``peers``
holds each online peer's latest message and when it was last heard, so a
restarted instance starts with the peers still within their TTL. Pruning
runs in one ``BEGIN IMMEDIATE`` transaction: however many instances prune,
each stale peer is deleted, and gets its ``offline`` event, exactly once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_MS: Final = 5000
# Events kept in the log for replay; older ones are trimmed while pruning.
KEEP_EVENTS: Final = 16384


# (peer_id, its last message's JSON, now) -> the offline message's JSON
OfflineFactory = Callable[[str, bytes, float], bytes]


class StoreError(Exception):
    """The database cannot be used; str() names the file and the reason."""


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    peer_id: str
    data: bytes  # the message's canonical JSON
    created: float  # server time when it was accepted
    nbytes: int  # request body size, for the admin byte counts
    kind: str = ""  # the message type, or "expired" for the pruner's offline


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    nbytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    event_id INTEGER NOT NULL,
    data BLOB NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS peers_last_seen ON peers (last_seen);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore:
    def __init__(self, path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None

    def _fail(self, e: BaseException) -> StoreError:
        return StoreError(f"{self.path}: {e}")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: not open")
        return self._db

    def open(self) -> None:
        """Open (creating if needed) and check the file. Raises StoreError."""
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise self._fail(e) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"{self.path}: database is damaged ({check})")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    # Ids start at the creation time in microseconds, as in memory
                    # mode, so an id from another store is never mistaken for ours.
                    db.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)",
                        (int(time.time() * 1e6),),
                    )
                elif row[0] != str(SCHEMA_VERSION):
                    raise StoreError(
                        f"{self.path}: schema version {row[0]}, this goop needs {SCHEMA_VERSION}"
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except StoreError:
            db.close()
            raise
        except sqlite3.Error as e:
            db.close()
            raise self._fail(e) from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def head(self) -> int:
        """The newest event id (the sequence's value when the log is empty)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def append(self, peer_id: str, kind: str, data: bytes, now: float, nbytes: int) -> EventRow:
        """Record one accepted message: its event, and the peer's row."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO events (peer_id, kind, data, created, nbytes) VALUES (?, ?, ?, ?, ?)",
                (peer_id, kind, data, now, nbytes),
            )
            event_id = int(cur.lastrowid or 0)
            if kind == "offline":
                db.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
            else:
                db.execute(
                    "INSERT INTO peers (peer_id, event_id, data, last_seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (peer_id) DO UPDATE SET event_id = excluded.event_id, "
                    "data = excluded.data, last_seen = excluded.last_seen",
                    (peer_id, event_id, data, now),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return EventRow(event_id, peer_id, data, now, nbytes, kind)

    def tail(self, after: int, limit: int = 2000) -> list[EventRow]:
        rows = self.db.execute(
            "SELECT id, peer_id, data, created, nbytes, kind FROM events WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [EventRow(int(r[0]), r[1], bytes(r[2]), float(r[3]), int(r[4]), r[5]) for r in rows]

    def snapshot(self, now: float, ttl: float) -> tuple[list[EventRow], int]:
        """Peers still within their TTL (with the event that set their state, oldest
        first) and the log's head, read together in one transaction."""
        db = self.db
        db.execute("BEGIN")
        try:
            rows = db.execute(
                "SELECT event_id, peer_id, data, last_seen FROM peers WHERE last_seen > ? "
                "ORDER BY event_id",
                (now - ttl,),
            ).fetchall()
            head = self.head()
        finally:
            db.execute("COMMIT")
        peers = [EventRow(int(r[0]), r[1], bytes(r[2]), float(r[3]), 0) for r in rows]
        return peers, head

    def prune(self, now: float, ttl: float, offline: OfflineFactory) -> list[EventRow]:
        """Delete peers silent for ``ttl`` and log an offline event for each; trim the log.

        ``offline(peer_id, data, now)`` makes the offline message's JSON from
        the peer's last one. Returns the offline events written (by this call).
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            stale = db.execute(
                "SELECT peer_id, data FROM peers WHERE last_seen <= ?", (now - ttl,)
            ).fetchall()
            written = []
            for peer_id, data in stale:
                body = offline(peer_id, bytes(data), now)
                cur = db.execute(
                    "INSERT INTO events (peer_id, kind, data, created, nbytes) "
                    "VALUES (?, 'expired', ?, ?, 0)",
                    (peer_id, body, now),
                )
                db.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
                written.append(EventRow(int(cur.lastrowid or 0), peer_id, body, now, 0, "expired"))
            db.execute(
                "DELETE FROM events WHERE id <= (SELECT seq FROM sqlite_sequence "
                "WHERE name = 'events') - ?",
                (KEEP_EVENTS,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return written
