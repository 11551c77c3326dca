"""The bounded ring of recent events, for ``Last-Event-ID`` replay.

Pure logic. Each accepted message becomes one `Event` whose SSE frame is
encoded once here and shared by every subscriber. Event ids are consecutive
integers starting at ``first_id``; the server seeds that with its start time
in microseconds so ids keep growing across restarts and an id from an
earlier run is recognised as "too far behind".
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Final

from goop.message import ADDRS_AT, PresenceMessage
from goop.sse import format_event
from goop.wsframe import text_frame

DEFAULT_CAPACITY: Final = 8192
# Bytes of SSE frames the ring may hold; the oldest events go first past it.
MAX_BYTES: Final = 16 * 1024 * 1024


class Event:
    """One fanned-out message: its id, whose state it carries, its JSON, its SSE bytes.

    The WebSocket frame is made on first use (only when some /ws subscriber
    wants it) and then shared by every socket, like the SSE frame.

    While an event is its peer's latest, it is also that peer's row in the
    table (`goop.rendezvous.registry`): the message's `values` and the
    table's bookkeeping live here, so a peer costs the garbage collector one
    tracked object, not three (an entry, a message and an event). A full
    collection visits every tracked object: at 25,000 peers that was 75,000
    of them, 50-150 ms of stall on this machine.
    """

    __slots__ = (
        "_ws",
        "bytes_received",
        "bytes_sent",
        "changed",
        "fields",
        "first_seen",
        "frame",
        "id",
        "last_seen",
        "peer_id",
    )

    def __init__(self, event_id: int, peer_id: str, frame: bytes) -> None:
        self.id = event_id
        self.peer_id = peer_id
        self.frame = frame
        self._ws: bytes | None = None
        # False for a heartbeat that changed nothing: changes-only streams skip it.
        self.changed = True
        # Set by the table when this event becomes its peer's latest state.
        self.fields: tuple[Any, ...] = ()
        self.first_seen = 0.0
        self.last_seen = 0.0
        self.bytes_received = 0
        self.bytes_sent = 0

    @property
    def message(self) -> PresenceMessage:
        """The message this event carries, as the table stored it (built anew each time)."""
        return PresenceMessage.from_values(self.fields)

    @property
    def addrs(self) -> tuple[str, ...]:
        addrs: tuple[str, ...] = self.fields[ADDRS_AT]
        return addrs

    @property
    def data(self) -> bytes:
        """The message's JSON, read back out of the SSE frame (one ``data:`` line, as
        our encoding never contains a line break) rather than kept twice."""
        frame = self.frame
        start = frame.index(b"data: ") + 6
        if frame.count(b"\ndata: ") > 1:  # not ours: joined as SSE would join it
            lines = [ln[6:] for ln in frame.split(b"\n") if ln.startswith(b"data: ")]
            return b"\n".join(lines)
        return frame[start:-2]

    @property
    def ws_frame(self) -> bytes:
        """This event as one WebSocket text frame (server to client: unmasked)."""
        if self._ws is None:
            self._ws = text_frame(self.data)
        return self._ws

    @property
    def size(self) -> int:
        """Bytes this event holds (its frames), for the byte budgets."""
        return len(self.frame) + (len(self._ws) if self._ws is not None else 0)

    def __repr__(self) -> str:
        return f"Event({self.id}, {self.peer_id!r})"


class EventLog:
    def __init__(
        self, first_id: int = 1, capacity: int = DEFAULT_CAPACITY, max_bytes: int = MAX_BYTES
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self.max_bytes = max_bytes
        self.bytes = 0  # SSE bytes held by the ring
        self.head = first_id - 1  # id of the newest event; first_id - 1 when empty

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, peer_id: str, data: bytes) -> Event:
        """A new event with the next id."""
        return self.add(self.head + 1, peer_id, data)

    def add_snapshot(self, event_id: int, peer_id: str, data: bytes) -> Event:
        """An old event known only as a peer's latest state (a restart's table): it
        is framed like any other but is not in the replay ring."""
        return Event(event_id, peer_id, format_event(data, event_id))

    def add(self, event_id: int, peer_id: str, data: bytes) -> Event:
        """An event whose id was chosen elsewhere (the shared store); ids only grow."""
        if event_id <= self.head:
            raise ValueError(f"event id {event_id} is not after {self.head}")
        self.head = event_id
        event = Event(event_id, peer_id, format_event(data, event_id))
        ring = self._ring
        if len(ring) == ring.maxlen:
            self.bytes -= len(ring[0].frame)
        ring.append(event)
        self.bytes += len(event.frame)
        # A byte budget as well as a count: 8,192 events of 60 KB each would
        # otherwise hold half a gigabyte for replays nobody may ever ask for.
        while self.bytes > self.max_bytes and len(ring) > 1:
            self.bytes -= len(ring.popleft().frame)
        return event

    def index_after(self, last_id: int) -> int | None:
        """Ring index of the first event after ``last_id`` (len() when none yet), or
        None when the ring no longer holds (or never held) every event after it."""
        ring = self._ring
        if last_id > self.head:
            return None
        if last_id == self.head:
            return len(ring)
        if not ring or last_id < ring[0].id - 1:
            return None
        start = last_id - ring[0].id + 1
        if start < len(ring) and ring[start].id == last_id + 1:
            return start
        # Ids with gaps (a shared store's rolled-back inserts): search.
        lo, hi = 0, len(ring)
        while lo < hi:
            mid = (lo + hi) // 2
            if ring[mid].id <= last_id:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def at(self, index: int) -> Event:
        return self._ring[index]

    def since(self, last_id: int) -> list[Event] | None:
        """Events after ``last_id``, or None when they are no longer all here.

        None also answers an id this log never issued (from the future, or
        from before its first event): the caller sends a snapshot instead.
        """
        start = self.index_after(last_id)
        if start is None:
            return None
        return list(itertools.islice(self._ring, start, None))
