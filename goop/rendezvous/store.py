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

Honesty about the file: `SQLiteStore.open` proves the file is writable by
committing a real write, and turns every way it can fail (locked, damaged,
not a database, read-only, a directory, ...) into a one-line `StoreError`.
It records the file's identity (device, inode) so a file deleted or replaced
while in use can be noticed (`SQLiteStore.identity_problem`) instead of
writing on into an orphaned inode that no other instance reads.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

SCHEMA_VERSION: Final = 1
# How long opening waits for a lock held by another process.
BUSY_TIMEOUT_MS: Final = 5000
# Events kept in the log for replay; older ones are trimmed while pruning.
KEEP_EVENTS: Final = 16384


# (peer_id, its last message's JSON, now) -> the offline message's JSON
OfflineFactory = Callable[[str, bytes, float], bytes]


class StoreError(Exception):
    """The database cannot be used; str() names the file and the reason, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class StoreReplaced(StoreError):
    """The file at the path is no longer the one this store has open."""


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _strerror(e: OSError) -> str:
    why = e.strerror or str(e)
    if e.errno == errno.EPERM:
        why += ", an immutable (chattr +i) file?"
    return why[:1].lower() + why[1:]


class Store(Protocol):
    """What `goop.rendezvous.shared.SharedBoard` needs of a shared store (SQLite, Redis).

    Blocking calls, run on the board's store thread only; each raises
    `StoreError` (one line) when the engine fails, `StoreReplaced` when the
    data this instance knew is gone for good.
    """

    path: str  # how logs name it
    created: bool  # it was empty (new) when opened

    def open(self) -> None: ...
    def close(self) -> None: ...
    def head(self) -> int: ...
    def append(
        self, peer_id: str, kind: str, data: bytes, now: float, nbytes: int
    ) -> EventRow: ...
    def tail(self, after: int, limit: int = 2000) -> list[EventRow]: ...
    def snapshot(self, now: float, ttl: float) -> tuple[list[EventRow], int]: ...
    def prune(self, now: float, ttl: float, offline: OfflineFactory) -> list[EventRow]: ...
    def probe(self) -> int: ...
    def identity_problem(self) -> str | None: ...
    def set_busy_timeout(self, ms: int) -> None: ...


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
        self._busy_ms = -1
        # (st_dev, st_ino) of the file opened, and whether opening created it.
        self.identity: tuple[int, int] = (0, 0)
        self.created = False

    def _fail(self, e: BaseException) -> StoreError:
        return StoreError(f"{self.path}: {e}")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: not open")
        return self._db

    def open(self) -> None:
        """Open (creating if needed), check, and prove writable. Raises StoreError.

        Every failure is one line naming the file: locked, damaged, not a
        database, not writable (tried with a real committed write: a file
        that opens read-only passes every check short of that), a directory.
        """
        self._check_path()
        try:
            before = os.stat(self.path)
        except FileNotFoundError:
            before = None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read it ({_strerror(e)})") from None
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, ValueError) as e:
            raise self._explain(e) from None
        try:
            self._prepare(db)
            st = os.stat(self.path)
        except StoreError:
            db.close()
            raise
        except (sqlite3.Error, ValueError) as e:
            db.close()
            raise self._explain(e) from None
        except OSError as e:
            db.close()
            raise StoreError(f"{self.path}: cannot read it ({_strerror(e)})") from None
        self.identity = (st.st_dev, st.st_ino)
        self.created = before is None
        self._db = db
        self._busy_ms = self.busy_timeout_ms

    def _check_path(self) -> None:
        """What SQLite would only call "unable to open database file"."""
        if os.path.isdir(self.path):
            raise StoreError(f"{self.path}: is a directory, not a database file")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"{self.path}: directory {directory} does not exist")
        if not os.path.exists(self.path):
            # SQLite would pair a new, empty file with another database's WAL
            # (an instance still running on the deleted file): refuse instead.
            left = [os.path.basename(self.path + s) for s in ("-wal", "-shm")]
            left = [name for name in left if os.path.exists(os.path.join(directory, name))]
            if left:
                raise StoreError(
                    f"{self.path}: missing, but {' and '.join(left)} "
                    f"{'is' if len(left) == 1 else 'are'} there: the file "
                    "was deleted while in use; stop every instance on this path, move "
                    "those files away, then start again"
                )

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        problems = [
            line.strip()
            for (row,) in db.execute("PRAGMA quick_check").fetchall()
            for line in str(row).splitlines()
            if line.strip() and not line.startswith("***")
        ]
        if problems != ["ok"]:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise StoreError(f"{self.path}: database is damaged: {problems[0]}{more}")
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
            # A real write, committed: a file SQLite could only open read-only
            # (read-only filesystem, immutable file) fails here, not at the
            # first publish.
            self._stamp(db, "opened")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _stamp(db: sqlite3.Connection, key: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, repr(time.time())),
        )

    def _explain(self, e: BaseException) -> StoreError:
        """One line saying what is wrong with the file, from SQLite's error."""
        text = str(e)
        lowered = text.lower()
        if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            why = self._why_unwritable()
            if why is not None:
                return StoreError(f"{self.path}: not writable ({why})")
            if "unable to open" in lowered:
                return StoreError(f"{self.path}: cannot open it ({text})")
            return StoreError(f"{self.path}: not writable ({text})")
        if "locked" in lowered or "busy" in lowered:
            return StoreError(
                f"{self.path}: locked by another process for more than "
                f"{self.busy_timeout_ms / 1000:g}s ({text})"
            )
        if "malformed" in lowered or "corrupt" in lowered:
            return StoreError(f"{self.path}: database is damaged ({text})")
        return self._fail(e)

    def _why_unwritable(self) -> str | None:
        """Why this process cannot write the file (None: no reason found).

        Called only once SQLite's connection is closed: opening and closing
        another descriptor on a database file drops the POSIX locks this
        process holds on it.
        """
        for path in (self.path, self.path + "-wal", self.path + "-shm"):
            if not os.path.exists(path):
                continue
            try:
                os.close(os.open(path, os.O_RDWR))
            except OSError as e:
                where = "" if path == self.path else f"{os.path.basename(path)}: "
                return where + _strerror(e)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, probe = tempfile.mkstemp(prefix=".goop-write-check-", dir=directory)
        except OSError as e:
            return f"cannot create files in {directory}: {_strerror(e)}"
        os.close(fd)
        os.unlink(probe)
        return None

    def identity_problem(self) -> str | None:
        """None while the path still names the file this store opened, else what
        became of it. A cheap stat; raises StoreError when it cannot be checked."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted or moved away"
        except OSError as e:
            raise StoreError(f"{self.path}: cannot check the file ({_strerror(e)})") from None
        if (st.st_dev, st.st_ino) != self.identity:
            return "was replaced by another file"
        return None

    def set_busy_timeout(self, ms: int) -> None:
        """How long the next statements wait for another process's lock."""
        ms = max(1, int(ms))
        if ms != self._busy_ms:
            self.db.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_ms = ms

    def probe(self) -> int:
        """A small committed write and a read: is the database usable again? The head."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._stamp(db, "probed")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return self.head()

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
            if db.in_transaction:
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
            if db.in_transaction:
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
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return written
