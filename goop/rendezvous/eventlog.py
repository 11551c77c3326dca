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
from typing import Final

from goop.sse import format_event

DEFAULT_CAPACITY: Final = 8192


class Event:
    """One fanned-out message: its id, whose state it carries, its SSE bytes."""

    __slots__ = ("frame", "id", "peer_id")

    def __init__(self, event_id: int, peer_id: str, frame: bytes) -> None:
        self.id = event_id
        self.peer_id = peer_id
        self.frame = frame

    def __repr__(self) -> str:
        return f"Event({self.id}, {self.peer_id!r})"


class EventLog:
    def __init__(self, first_id: int = 1, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self.head = first_id - 1  # id of the newest event; first_id - 1 when empty

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, peer_id: str, data: bytes) -> Event:
        self.head += 1
        event = Event(self.head, peer_id, format_event(data, self.head))
        self._ring.append(event)
        return event

    def since(self, last_id: int) -> list[Event] | None:
        """Events after ``last_id``, or None when they are no longer all here.

        None also answers an id this log never issued (from the future, or
        from before its first event): the caller sends a snapshot instead.
        """
        if last_id > self.head:
            return None
        if last_id == self.head:
            return []
        if not self._ring or last_id < self._ring[0].id - 1:
            return None
        start = last_id - self._ring[0].id + 1
        return list(itertools.islice(self._ring, start, None))
