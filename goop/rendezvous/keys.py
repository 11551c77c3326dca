"""The encryption key directory (goop2's ``/api/encryption/keys``), bounded.

Pure logic, time passed in. A goop2 peer registers its NaCl public key once
at start (``POST {"peer_id", "public_key"}``) and looks up another peer's key
when it must decrypt from a peer whose key it does not have. The same key
also travels in every presence message (``publicKey``), so a lookup answers
from the peer's latest message first and from this directory second.

Bounds: a key is at most `MAX_KEY_BYTES`; at most ``max_keys`` entries; an
entry whose peer is not online is dropped `GRACE` seconds after it was
posted (a peer posts its key before its first presence message, and may
restart), so the directory never outgrows the peers actually present. One
client address may hold at most ``max_per_address`` keys of peers that are
not online (a NAT of goop2 peers posts one each, then publishes): without
it, a few addresses could fill the directory with keys for made-up peer IDs
and lock everyone else out (503) for the grace period.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, Final

from goop.message import MAX_PEER_ID_BYTES, MAX_PUBLIC_KEY_BYTES

GRACE: Final = 300.0
DEFAULT_MAX_KEYS: Final = 20000
DEFAULT_MAX_PER_ADDRESS: Final = 64


class KeyRefused(ValueError):
    """A refused key post; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_key_post(obj: Any, header_peer: str) -> tuple[str, str]:
    """(peer_id, public_key) from a decoded POST body, or `KeyRefused` saying why not."""
    if not isinstance(obj, dict):
        raise KeyRefused(400, "expected a JSON object with peer_id and public_key")
    fields = {str(k).lower(): v for k, v in obj.items()}
    peer_id = fields.get("peer_id")
    key = fields.get("public_key")
    if not isinstance(peer_id, str) or not peer_id.strip():
        raise KeyRefused(400, "peer_id: required (a string)")
    if not isinstance(key, str) or not key.strip():
        raise KeyRefused(400, "public_key: required (a string)")
    if len(peer_id.encode("utf-8", "surrogatepass")) > MAX_PEER_ID_BYTES:
        raise KeyRefused(400, f"peer_id: longer than {MAX_PEER_ID_BYTES} bytes")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_PUBLIC_KEY_BYTES:
        raise KeyRefused(400, f"public_key: longer than {MAX_PUBLIC_KEY_BYTES} bytes")
    if header_peer and header_peer != peer_id:
        raise KeyRefused(403, "X-Goop-PeerID does not match peer_id")
    return peer_id, key


class KeyDirectory:
    def __init__(
        self,
        max_keys: int = DEFAULT_MAX_KEYS,
        grace: float = GRACE,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
    ) -> None:
        self.max_keys = max_keys
        self.grace = grace
        self.max_per_address = max_per_address
        self._keys: dict[str, tuple[str, float]] = {}
        self._posted_by: dict[str, str] = {}  # peer ID -> the address key that posted it

    def __len__(self) -> int:
        return len(self._keys)

    def put(
        self, peer_id: str, key: str, now: float, online: Container[str], address: str = ""
    ) -> None:
        """Store ``peer_id``'s key, posted from ``address``; `KeyRefused`: 503 when the
        directory is full, 429 when ``address`` holds its share of keys of peers not
        online."""
        if peer_id not in self._keys and self.max_keys and len(self._keys) >= self.max_keys:
            self.prune(now, online)
            if len(self._keys) >= self.max_keys:
                raise KeyRefused(503, f"key directory is full ({self.max_keys} keys)")
        cap = self.max_per_address
        if address and cap and peer_id not in online and self._posted_by.get(peer_id) != address:
            held = sum(
                1 for p, a in self._posted_by.items() if a == address and p not in online
            )
            if held >= cap:
                raise KeyRefused(
                    429, f"too many keys of peers not online from {address} (limit {cap})"
                )
        self._keys.pop(peer_id, None)  # re-inserted last: the dict stays in posting order
        self._keys[peer_id] = (key, now)
        if address:
            self._posted_by[peer_id] = address

    def get(self, peer_id: str) -> str | None:
        found = self._keys.get(peer_id)
        return found[0] if found is not None else None

    def prune(self, now: float, online: Container[str]) -> int:
        """Drop keys of peers not online that were posted ``grace`` seconds ago or more."""
        stale = [
            p for p, (_, posted) in self._keys.items()
            if now - posted >= self.grace and p not in online
        ]
        for peer_id in stale:
            del self._keys[peer_id]
            self._posted_by.pop(peer_id, None)
        return len(stale)
