"""Punch hints: which pairs of peers to introduce when one brings new addresses.

Pure logic, time passed in. goop2's rule (GOOP2-PROTOCOL.md §5): after an
accepted ``online``/``update`` whose address set is new and not empty, each
other peer with addresses gets ``{"type":"punch","peerId":<arriving>,
"target":<other>,"addrs":<arriving's>}`` and the arriving peer gets the
mirror image, at most once per pair per `COOLDOWN` seconds, so both sides
dial at about the same time (hole punching).

Unlike goop2, a hint goes only to its target (over its /ws, or an
``/events?peer_id=`` stream), never broadcast; so only peers that can
receive one are considered, and at most `MAX_PAIRS` of them per arrival,
the most recently heard first. The cooldown table is bounded too: a flood of
arrivals costs a fixed amount of memory (see docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Final, Protocol

from goop.message import PresenceMessage

COOLDOWN: Final = 60.0
# Pairs introduced per arrival; each costs two small writes.
MAX_PAIRS: Final = 256
# Most pairs remembered for the cooldown; past this, new pairs wait for pruning.
MAX_COOLDOWNS: Final = 65536


class Reachable(Protocol):
    """A stored peer as the planner reads it (a table entry, or a message)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def addrs(self) -> tuple[str, ...]: ...


class PunchPlanner:
    def __init__(
        self,
        cooldown: float = COOLDOWN,
        max_pairs: int = MAX_PAIRS,
        max_cooldowns: int = MAX_COOLDOWNS,
    ) -> None:
        self.cooldown = cooldown
        self.max_pairs = max_pairs
        self.max_cooldowns = max_cooldowns
        # (recipient, about) -> when the recipient was last told about that peer.
        # Directed: a side that could not hear a hint then (a goop2 peer posts
        # before its socket is up) still gets its half when it can (`introduce`).
        self._hinted: dict[tuple[str, str], float] = {}
        self.skipped_full = 0  # pairs not introduced because the table was full

    def __len__(self) -> int:
        return len(self._hinted)

    def plan(
        self,
        arriving: PresenceMessage,
        others: Iterable[Reachable],
        reachable: Container[str],
        now: float,
    ) -> list[tuple[str, PresenceMessage]]:
        """Hints for ``arriving``'s new addresses: (recipient, punch message) pairs.

        ``others`` are the stored peers, most recently heard last; ``reachable``
        holds the IDs that can receive a hint. The caller has already decided
        that ``arriving`` brings a new, non-empty address set.
        """
        me = arriving.peer_id
        ts = int(now * 1000)
        out: list[tuple[str, PresenceMessage]] = []
        i_hear = me in reachable
        pairs = 0
        for other in others:
            peer = other.peer_id
            if peer == me or not other.addrs:
                continue
            told = False
            if peer in reachable and self._stamp(peer, me, now):
                out.append((peer, _punch(me, peer, arriving.addrs, ts)))
                told = True
            if i_hear and self._stamp(me, peer, now):
                out.append((me, _punch(peer, me, other.addrs, ts)))
                told = True
            pairs += told
            if pairs >= self.max_pairs:
                break
        return out

    def introduce(
        self, me: str, addrs: tuple[str, ...], others: Iterable[Reachable], now: float
    ) -> list[tuple[str, PresenceMessage]]:
        """Hints for peer ``me`` (at ``addrs``), which just became reachable (its /ws
        opened): the halves it missed while it could not hear them, each pair's
        cooldown still applying."""
        if not addrs:
            return []
        ts = int(now * 1000)
        out: list[tuple[str, PresenceMessage]] = []
        for other in others:
            if other.peer_id == me or not other.addrs:
                continue
            if self._stamp(me, other.peer_id, now):
                out.append((me, _punch(other.peer_id, me, other.addrs, ts)))
                if len(out) >= self.max_pairs:
                    break
        return out

    def _stamp(self, recipient: str, about: str, now: float) -> bool:
        """Record a hint to ``recipient`` about ``about``; False in cooldown or when full."""
        key = (recipient, about)
        last = self._hinted.get(key)
        if last is not None and now - last < self.cooldown:
            return False
        if last is None and len(self._hinted) >= self.max_cooldowns:
            self.skipped_full += 1
            return False
        self._hinted[key] = now
        return True

    def prune(self, now: float) -> None:
        """Forget pairs whose cooldown is over."""
        stale = [k for k, t in self._hinted.items() if now - t >= self.cooldown]
        for key in stale:
            del self._hinted[key]


def _punch(peer_id: str, target: str, addrs: tuple[str, ...], ts: int) -> PresenceMessage:
    return PresenceMessage("punch", peer_id, ts=ts, target=target, addrs=addrs)


def brings_new_addrs(message: PresenceMessage, before: tuple[str, ...] | None) -> bool:
    """goop2's *addrsChanged*: a new peer (``before`` None), or a different set of
    addresses than ``before`` (order ignored)."""
    if message.type == "offline" or not message.addrs:
        return False
    return before is None or set(before) != set(message.addrs)
