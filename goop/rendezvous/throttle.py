"""Failed admin logins, throttled per client address.

Pure logic, time passed in. An address gets `FREE` wrong passwords; after
that each further attempt must wait, and the wait doubles with every
failure (1 s, 2 s, 4 s, ... capped at `MAX_WAIT`). A right password clears
the address's record; so does `FORGET` seconds without a failure. The table
is bounded: past `MAX_ADDRESSES` entries the oldest are dropped first.
"""

from __future__ import annotations

from typing import Final

FREE: Final = 10
BASE_WAIT: Final = 1.0
MAX_WAIT: Final = 3600.0
FORGET: Final = 3600.0
MAX_ADDRESSES: Final = 100_000


class LoginThrottle:
    def __init__(self, free: int = FREE, max_addresses: int = MAX_ADDRESSES) -> None:
        self.free = free
        self.max_addresses = max_addresses
        # key -> (failures, time of the last failure); insertion order = age
        self._failures: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait before it may try again (0: go ahead)."""
        found = self._failures.get(key)
        if found is None:
            return 0.0
        failures, last = found
        if now - last >= FORGET:
            del self._failures[key]
            return 0.0
        if failures < self.free:
            return 0.0
        until = last + min(MAX_WAIT, BASE_WAIT * 2.0 ** (failures - self.free))
        return max(0.0, until - now)

    def failed(self, key: str, now: float) -> None:
        failures, _ = self._failures.pop(key, (0, now))
        self._failures[key] = (failures + 1, now)
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def prune(self, now: float) -> None:
        for key in [k for k, (_, last) in self._failures.items() if now - last >= FORGET]:
            del self._failures[key]
