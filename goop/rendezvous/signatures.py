"""The rendezvous's rules for signed presence: who may publish as a peer ID.

Pure logic; time is passed in. For every client message (POST /publish and
/ws frames alike), before it touches the table (docs/signing.md):

- a message with ``sig`` must verify against the key in its peer ID, carry a
  ``ts`` within ``window`` seconds of the server's clock, and be newer than
  the last signed ``ts`` accepted for that peer;
- once a peer ID has published a verified message, unsigned ones for it are
  refused while it is in the table and for ``window`` seconds after it left
  (trust on first signature);
- with ``require_signed``, every unsigned message is refused.

The server's own offlines (expiry, a closed /ws) never come through here.
Each refusal is a `SignatureRefused` (HTTP 403) naming the rule.

Memory: the last accepted ``ts`` per signed peer is kept only while it could
still matter, i.e. ``window`` seconds (an older ``ts`` fails the window
rule on its own), and at most ``max_remembered`` entries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from goop.message import PresenceMessage
from goop.signing import SignatureError, Verifier

DEFAULT_WINDOW: Final = 120
DEFAULT_MAX_REMEMBERED: Final = 200_000


class SignatureRefused(Exception):
    """A message refused by a signature rule (answered with 403); str() says which."""


class SignaturePolicy:
    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        require_signed: bool = False,
        verifier: Verifier | None = None,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
    ) -> None:
        self.window_ms = int(window * 1000)
        self.require_signed = require_signed
        self.verifier = verifier or Verifier()
        self.max_remembered = max_remembered
        # peer ID -> last accepted signed ts, oldest acceptance first.
        self._last: OrderedDict[str, int] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._last)

    def check(self, message: PresenceMessage, stored_ts: int, now: float) -> bool:
        """Raise `SignatureRefused` unless ``message`` may be taken; ``stored_ts`` is the
        ``ts`` of the peer's message in the table when that one is signed, else 0
        (`goop.message.signed_ts`). Returns whether ``message`` is signed."""
        try:
            return self._check(message, stored_ts, int(now * 1000))
        except SignatureRefused:
            self.refused += 1
            raise

    def _check(self, message: PresenceMessage, stored_ts: int, now_ms: int) -> bool:
        self._forget(now_ms)
        peer_id = message.peer_id
        if not message.sig:
            if stored_ts or peer_id in self._last:
                raise SignatureRefused(
                    "unsigned message for a signed peer: this peerId has published "
                    "signed messages; every message for it must be signed"
                )
            if self.require_signed:
                raise SignatureRefused(
                    "unsigned message: this rendezvous requires signed presence (sig)"
                )
            return False
        try:
            self.verifier.check(message)
        except SignatureError as e:
            raise SignatureRefused(str(e)) from None
        ts = message.ts
        if abs(ts - now_ms) > self.window_ms:
            raise SignatureRefused(
                f"replay: ts is {abs(ts - now_ms) / 1000:.0f} s from the server's clock "
                f"(allowed: {self.window_ms / 1000:g} s)"
            )
        if ts <= max(stored_ts, self._last.get(peer_id, 0)):
            raise SignatureRefused("replay: ts is not newer than the last accepted message")
        return True

    def remembers(self, peer_id: str) -> bool:
        """True when ``peer_id`` published a signed message within the window."""
        return peer_id in self._last

    def accepted(self, message: PresenceMessage, now: float) -> None:
        """``message`` (signed) went into the table: remember its ts."""
        if not message.sig:
            return
        self._last.pop(message.peer_id, None)
        self._last[message.peer_id] = message.ts
        if len(self._last) > self.max_remembered:
            self._last.popitem(last=False)

    def _forget(self, now_ms: int) -> None:
        """Drop entries whose ts fell out of the window (oldest first; amortised)."""
        horizon = now_ms - self.window_ms
        last = self._last
        while last:
            peer_id, ts = next(iter(last.items()))
            if ts >= horizon:
                return
            del last[peer_id]
