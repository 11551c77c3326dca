"""What a new stream is owed before its live events, handed out in slices.

Pure logic over the board's table and event ring. A stream that connects
gets a *replay* (``Last-Event-ID`` still in the ring: the events it missed)
or a *snapshot* (each online peer's latest event). Either can be large: a
table of 8,192 peers with 30 KB fields is a 240 MB snapshot. Written in one
piece to a reader that does not read, it would all sit in the server's
memory. So a `Backlog` is a cursor, not a copy: the fan-out takes a slice
of at most `SLICE_BYTES` whenever the stream's socket drains
(`goop.rendezvous.fanout.Subscriber.drain`), and a reader that stops
reading holds only its cursor.

Memory per stream: a replay holds one event id; a snapshot holds the list
of peer IDs it still owes (8 bytes a peer, the strings are the table's own)
and looks each peer's event up when its turn comes, so it never pins an old
event. Events newer than the backlog's ``head`` reach the stream live (or
coalesced while it catches up), never through the backlog, so every stream
sees event ids ascending (a replay that falls out of the ring mid-way turns
into a snapshot, the one exception).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from goop.rendezvous.eventlog import Event, EventLog

SLICE_BYTES: Final = 64 * 1024


class _Table(Protocol):
    """The peer table as the snapshot reads it: each peer's latest event."""

    def get(self, peer_id: str) -> Event | None: ...

    def __iter__(self) -> Iterator[Event]: ...


class Backlog:
    def __init__(
        self,
        events: EventLog,
        table: _Table,
        last_id: int | None = None,
        changes_only: bool = False,
    ) -> None:
        self._events = events
        self._table = table
        self._changes_only = changes_only
        self.head = events.head  # newer events come live, not from here
        self._cursor: int | None = None
        self._peers: list[str] | None = None
        self._next = 0
        if last_id is not None and events.index_after(last_id) is not None:
            self._cursor = last_id
        else:
            self._start_snapshot()

    @property
    def is_replay(self) -> bool:
        return self._cursor is not None

    @property
    def done(self) -> bool:
        if self._cursor is not None:
            return self._cursor >= self.head
        return self._peers is None or self._next >= len(self._peers)

    def _start_snapshot(self) -> None:
        self._cursor = None
        head = self.head
        self._peers = [e.peer_id for e in self._table if e.id <= head]
        self._next = 0

    def take(self, limit: int, size: Callable[[Event], int]) -> list[Event]:
        """The next events, at most ``limit`` bytes by ``size`` (at least one event)."""
        out: list[Event] = []
        used = 0
        if self._cursor is not None:
            events, head = self._events, self.head
            index = events.index_after(self._cursor)
            if index is None:  # the ring moved past us: latest state instead
                self._start_snapshot()
                return self.take(limit, size)
            while self._cursor < head and used < limit:
                event = events.at(index)
                index += 1
                self._cursor = event.id
                if event.id > head:
                    self._cursor = head
                    break
                if self._changes_only and not event.changed:
                    continue
                out.append(event)
                used += size(event)
            return out
        peers, table, head = self._peers or [], self._table, self.head
        while self._next < len(peers) and used < limit:
            entry = table.get(peers[self._next])
            self._next += 1
            if entry is None or entry.id > head:
                continue  # gone, or changed since: that news comes live
            out.append(entry)
            used += size(entry)
        if self._next >= len(peers):
            self._peers = None  # free the list as soon as it is spent
        return out

    def all(self) -> list[Event]:
        """Everything at once (tests, small tables)."""
        out: list[Event] = []
        while not self.done:
            out.extend(self.take(1 << 62, lambda e: 1))
        return out


class ListBacklog(Backlog):
    """A backlog given as a list (tests, and callers that built one already)."""

    def __init__(self, events: list[Event]) -> None:
        self._list = list(events)
        self._pos = 0
        self.head = max((e.id for e in events), default=0)

    @property
    def is_replay(self) -> bool:
        return False

    @property
    def done(self) -> bool:
        return self._pos >= len(self._list)

    def take(self, limit: int, size: Callable[[Event], int]) -> list[Event]:
        out: list[Event] = []
        used = 0
        while self._pos < len(self._list) and used < limit:
            event = self._list[self._pos]
            self._pos += 1
            out.append(event)
            used += size(event)
        if self.done:
            self._list = []
        return out
