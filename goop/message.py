"""The presence message: parsing, validation and the canonical wire encoding.

One job: turn untrusted bytes into a `PresenceMessage` or a `MessageError`
whose text names the problem, and turn a `PresenceMessage` back into the
compact JSON goop2 expects. No I/O, no reactor.

Wire format (compatible with goop2):

    {"type": "online|update|offline", "peerId": "12D3KooW...",
     "content": "...", "email": "...", "avatarHash": "...", "ts": 1738764000000}

Input field names match case-insensitively (the brief writes ``peerID``,
goop2 sends ``peerId``); output always uses ``peerId`` and ``avatarHash``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

MAX_BODY_BYTES: Final = 64 * 1024
MAX_PEER_ID_BYTES: Final = 256
MAX_CONTENT_BYTES: Final = 4096
MAX_EMAIL_BYTES: Final = 320
# Not fixed by the spec; an avatar hash is a short digest. Generous on purpose.
MAX_AVATAR_HASH_BYTES: Final = 512
# Go's int64, which goop2 uses for ts.
MAX_TS: Final = 2**63 - 1

TYPES: Final = frozenset({"online", "update", "offline"})

# lower-cased input name -> canonical output name
_FIELDS: Final = {
    "type": "type",
    "peerid": "peerId",
    "content": "content",
    "email": "email",
    "avatarhash": "avatarHash",
    "ts": "ts",
}
_STRING_LIMITS: Final = {
    "peerId": MAX_PEER_ID_BYTES,
    "content": MAX_CONTENT_BYTES,
    "email": MAX_EMAIL_BYTES,
    "avatarHash": MAX_AVATAR_HASH_BYTES,
}


class MessageError(ValueError):
    """The input is not a valid presence message; str() says why."""


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    type: str
    peer_id: str
    content: str = ""
    email: str = ""
    avatar_hash: str = ""
    ts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "peerId": self.peer_id,
            "content": self.content,
            "email": self.email,
            "avatarHash": self.avatar_hash,
            "ts": self.ts,
        }

    def encode(self) -> bytes:
        """Compact one-line JSON (never contains CR or LF), UTF-8."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _reject_constant(name: str) -> Any:
    raise MessageError(f"invalid JSON number {name}")


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    folded: set[str] = set()
    for key, value in pairs:
        low = key.lower()
        if low in folded:
            raise _Duplicate(key)
        folded.add(low)
        seen[key] = value
    return seen


def _utf8_len(field: str, value: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # json.loads accepts "\ud800"; such a string cannot be sent on.
        raise MessageError(f"{field}: contains an unpaired surrogate") from None


def parse_message(body: bytes, now_ms: int) -> PresenceMessage:
    """Validate ``body`` as one presence message.

    ``now_ms`` fills in ``ts`` when it is 0 or missing. Raises `MessageError`
    for anything else than a well-formed message; never anything else.
    """
    if len(body) > MAX_BODY_BYTES:
        raise MessageError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MessageError(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)
    except _Duplicate as d:
        raise MessageError(f"duplicate field {d.key!r}") from None
    except MessageError:
        raise
    except RecursionError:
        raise MessageError("JSON nested too deeply") from None
    except ValueError as e:
        raise MessageError(f"malformed JSON: {e}") from None
    return message_from_object(obj, now_ms)


def message_from_object(obj: object, now_ms: int) -> PresenceMessage:
    """Validate an already-decoded JSON value (see `parse_message`)."""
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {_json_type(obj)}")
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        canonical = _FIELDS.get(key.lower())
        if canonical is None:
            raise MessageError(f"unknown field {_short(key)!r}")
        if canonical in fields:
            raise MessageError(f"duplicate field {key!r}")
        fields[canonical] = value

    for name, limit in _STRING_LIMITS.items():
        value = fields.get(name, "")
        if not isinstance(value, str):
            raise MessageError(f"{name}: must be a string, got {_json_type(value)}")
        if _utf8_len(name, value) > limit:
            raise MessageError(f"{name}: longer than {limit} bytes")

    kind = fields.get("type")
    if kind is None:
        raise MessageError("type: required")
    if not isinstance(kind, str) or kind not in TYPES:
        raise MessageError("type: must be one of online, update, offline")
    peer_id = fields.get("peerId")
    if not peer_id:
        raise MessageError("peerId: required")

    ts = fields.get("ts", 0)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise MessageError(f"ts: must be an integer (Unix milliseconds), got {_json_type(ts)}")
    if ts < 0 or ts > MAX_TS:
        raise MessageError("ts: out of range")
    if ts == 0:
        ts = now_ms

    return PresenceMessage(
        type=kind,
        peer_id=peer_id,
        content=fields.get("content", ""),
        email=fields.get("email", ""),
        avatar_hash=fields.get("avatarHash", ""),
        ts=ts,
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
