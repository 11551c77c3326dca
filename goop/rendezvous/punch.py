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
from typing import Final

from goop.message import PresenceMessage

COOLDOWN: Final = 60.0
# Pairs introduced per arrival; each costs two small writes.
MAX_PAIRS: Final = 256
# Most pairs remembered for the cooldown; past this, new pairs wait for pruning.
MAX_COOLDOWNS: Final = 65536


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


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
        self._hinted: dict[tuple[str, str], float] = {}
        self.skipped_full = 0  # pairs not introduced because the table was full

    def __len__(self) -> int:
        return len(self._hinted)

    def plan(
        self,
        arriving: PresenceMessage,
        others: Iterable[PresenceMessage],
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
        pairs = 0
        for other in others:
            peer = other.peer_id
            if peer == me or not other.addrs:
                continue
            other_hears = peer in reachable
            i_hear = me in reachable
            if not (other_hears or i_hear):
                continue
            key = _pair(me, peer)
            last = self._hinted.get(key)
            if last is not None and now - last < self.cooldown:
                continue
            if last is None and len(self._hinted) >= self.max_cooldowns:
                self.skipped_full += 1
                continue
            self._hinted[key] = now
            if other_hears:
                out.append((peer, _punch(me, peer, arriving.addrs, ts)))
            if i_hear:
                out.append((me, _punch(peer, me, other.addrs, ts)))
            pairs += 1
            if pairs >= self.max_pairs:
                break
        return out

    def prune(self, now: float) -> None:
        """Forget pairs whose cooldown is over."""
        stale = [k for k, t in self._hinted.items() if now - t >= self.cooldown]
        for key in stale:
            del self._hinted[key]


def _punch(peer_id: str, target: str, addrs: tuple[str, ...], ts: int) -> PresenceMessage:
    return PresenceMessage("punch", peer_id, ts=ts, target=target, addrs=addrs)


def brings_new_addrs(message: PresenceMessage, before: PresenceMessage | None) -> bool:
    """goop2's *addrsChanged*: a new peer, or a different set of addresses (order ignored)."""
    if message.type == "offline" or not message.addrs:
        return False
    return before is None or set(before.addrs) != set(message.addrs)
