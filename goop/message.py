"""The presence message: one typed definition driving parsing, validation and encoding.

One job: turn untrusted bytes into a `PresenceMessage` or a `MessageError`
whose text names the problem, and turn a `PresenceMessage` back into the
compact JSON goop2 expects. No I/O, no reactor.

The fields are those of goop2's current PresenceMsg (GOOP2-PROTOCOL.md §1),
declared once in `FIELDS`: wire name, Python attribute, JSON type, limit, and
who may set it. docs/rendezvous.md's field table is this table.

    {"type":"online","peerId":"12D3KooW…","content":"E","addrs":["/ip4/10.0.0.5/tcp/4001"],
     "publicKey":"bmFj…","encryptionSupported":true,"goopClientVersion":"dev",
     "ts":1796203421127,"verified":true}

Input: names match case-insensitively (the brief writes ``peerID``); keys
no version defines are ignored and never relayed; ``null`` is the empty
value; a wrong type of a known field, bad UTF-8, NaN, a duplicate key or a
body that is not one JSON object is an error. Who sent the message decides
what it may carry (`Origin`): a client never sets ``verified`` or ``target``
nor sends ``punch``; a relayed event never carries ``verificationToken``.

Output: goop2's key order; ``content``, ``email`` and ``avatarHash`` always
present (older goop and goop2 readers take either), the other optional
fields only when set (goop2's omitempty); never ``verificationToken``.
"""

from __future__ import annotations

import enum
import json
import operator
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, Final

MAX_BODY_BYTES: Final = 64 * 1024
MAX_PEER_ID_BYTES: Final = 256
MAX_CONTENT_BYTES: Final = 4096
MAX_EMAIL_BYTES: Final = 320
# Not fixed by goop2 (unbounded there); generous for what each one holds.
MAX_AVATAR_HASH_BYTES: Final = 512
MAX_TEMPLATE_BYTES: Final = 256
MAX_TOKEN_BYTES: Final = 1024
MAX_PUBLIC_KEY_BYTES: Final = 1024  # a base64 NaCl key is 44 bytes
MAX_VERSION_BYTES: Final = 128
MAX_SIG_BYTES: Final = 128  # base64 of a 64-byte Ed25519 signature is 88
# goop2's own limits: at most 20 addresses of at most 256 bytes.
MAX_ADDRS: Final = 20
MAX_ADDR_BYTES: Final = 256
# Go's int64, which goop2 uses for ts.
MAX_TS: Final = 2**63 - 1

PRESENCE_TYPES: Final = frozenset({"online", "update", "offline"})
PUNCH: Final = "punch"


class Origin(enum.Enum):
    """Who a message comes from, which decides what it may carry."""

    CLIENT = "client"  # a peer publishing (POST /publish, /ws, the LAN topic)
    RELAY = "relay"  # a rendezvous's event stream (SSE or /ws) as a peer reads it


@dataclass(frozen=True, slots=True)
class Field:
    """One key of the presence message."""

    wire: str  # canonical JSON name
    attr: str  # PresenceMessage attribute
    kind: type  # str, bool, int or tuple (of strings)
    limit: int  # bytes for str (UTF-8), items for tuple; 0 = no limit
    # Keys ignored when the message comes from this origin.
    ignored_from: frozenset[Origin] = frozenset()
    relayed: bool = True  # written by encode()
    always: bool = False  # written even when empty
    doc: str = ""


_CLIENT_ONLY = frozenset({Origin.RELAY})
_SERVER_ONLY = frozenset({Origin.CLIENT})

FIELDS: Final[tuple[Field, ...]] = (
    Field("type", "type", str, 0, always=True, doc="online, update, offline (punch: server)"),
    Field("peerId", "peer_id", str, MAX_PEER_ID_BYTES, always=True, doc="libp2p peer ID"),
    Field("content", "content", str, MAX_CONTENT_BYTES, always=True, doc="the peer's label"),
    Field("email", "email", str, MAX_EMAIL_BYTES, always=True, doc="owner's email"),
    Field("avatarHash", "avatar_hash", str, MAX_AVATAR_HASH_BYTES, always=True),
    Field("videoDisabled", "video_disabled", bool, 0),
    Field("activeTemplate", "active_template", str, MAX_TEMPLATE_BYTES),
    Field("target", "target", str, MAX_PEER_ID_BYTES, _SERVER_ONLY, doc="punch: who it is for"),
    Field("addrs", "addrs", tuple, MAX_ADDRS, doc="libp2p multiaddrs to dial"),
    Field(
        "verificationToken", "verification_token", str, MAX_TOKEN_BYTES, _CLIENT_ONLY,
        relayed=False, doc="kept by the server, never relayed",
    ),
    Field("publicKey", "public_key", str, MAX_PUBLIC_KEY_BYTES, doc="base64 NaCl key"),
    Field("encryptionSupported", "encryption_supported", bool, 0),
    Field("goopClientVersion", "goop_client_version", str, MAX_VERSION_BYTES),
    Field("ts", "ts", int, 0, always=True, doc="Unix ms; 0 or missing = now"),
    Field("verified", "verified", bool, 0, _SERVER_ONLY, doc="set by the server"),
    # goop's, not goop2's (its servers and clients drop it): docs/signing.md.
    Field("sig", "sig", str, MAX_SIG_BYTES, doc="base64 Ed25519 signature by the peerId's key"),
)

# lower-cased input name -> field
_BY_KEY: Final = {f.wire.lower(): f for f in FIELDS}
# The same, per origin, without the keys that origin may not set.
_KEYS_FROM: Final = {
    origin: {k: f for k, f in _BY_KEY.items() if origin not in f.ignored_from} for origin in Origin
}
# What encode() writes, in order: (wire name, attribute, written even when empty, list?).
_OUT: Final = tuple((f.wire, f.attr, f.always, f.kind is tuple) for f in FIELDS if f.relayed)
_OUT_PUNCH: Final = tuple(
    (wire, attr, wire in ("type", "peerId", "ts"), is_list) for wire, attr, _, is_list in _OUT
)
# PresenceMessage.values(): every attribute, in FIELDS order.
_ATTRS: Final = tuple(f.attr for f in FIELDS)
_VALUES: Final = operator.attrgetter(*_ATTRS)
ADDRS_AT: Final = _ATTRS.index("addrs")
_TS_AT: Final = _ATTRS.index("ts")
_SIG_AT: Final = _ATTRS.index("sig")
# What same_state compares, addrs aside (compared as a set).
_STATE_ATTRS: Final = (
    "content", "email", "avatar_hash", "video_disabled", "active_template", "public_key",
    "encryption_supported", "goop_client_version", "verified",
)  # fmt: skip
_STATE_OF_MESSAGE: Final = operator.attrgetter(*_STATE_ATTRS)
_STATE_OF_VALUES: Final = operator.itemgetter(*(_ATTRS.index(a) for a in _STATE_ATTRS))
# Made once: json.dumps/loads with options build a new encoder/decoder per call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_EMPTY: Final[dict[type, Any]] = {str: "", bool: False, int: 0, tuple: ()}


class MessageError(ValueError):
    """The input is not a valid presence message; str() says why."""


class PunchFromClient(MessageError):
    """A ``punch`` from a client: refused on /publish, skipped quietly elsewhere."""


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    type: str
    peer_id: str
    content: str = ""
    email: str = ""
    avatar_hash: str = ""
    ts: int = 0
    _: KW_ONLY
    video_disabled: bool = False
    active_template: str = ""
    target: str = ""
    addrs: tuple[str, ...] = ()
    verification_token: str = ""
    public_key: str = ""
    encryption_supported: bool = False
    goop_client_version: str = ""
    verified: bool = False
    sig: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The relayed fields, in goop2's order, empty optional ones left out."""
        out: dict[str, Any] = {}
        # A punch carries what goop2's does: type, peerId, target, addrs, ts.
        plan = _OUT_PUNCH if self.type == PUNCH else _OUT
        for wire, attr, always, is_list in plan:
            value = getattr(self, attr)
            if always or value:
                out[wire] = list(value) if is_list else value
        return out

    def encode(self) -> bytes:
        """Compact one-line JSON (never contains CR or LF), UTF-8."""
        return _ENCODER.encode(self.to_dict()).encode()

    def values(self) -> tuple[Any, ...]:
        """Every field, in `FIELDS` order, as one tuple of strings, bools, ints and the
        ``addrs`` tuple. The garbage collector stops tracking such a tuple (it holds
        no containers that could form a cycle), which a message object it always
        tracks; the peer table keeps this, not the message (see `goop.rendezvous.registry`)."""
        values: tuple[Any, ...] = _VALUES(self)
        return values

    @classmethod
    def from_values(cls, values: tuple[Any, ...]) -> PresenceMessage:
        """The message `values` was taken from."""
        return cls(**dict(zip(_ATTRS, values, strict=True)))

    def same_state_as(self, values: tuple[Any, ...]) -> bool:
        """`same_state` against another message's `values`, without rebuilding it."""
        if _STATE_OF_MESSAGE(self) != _STATE_OF_VALUES(values):
            return False
        theirs = values[ADDRS_AT]
        return self.addrs == theirs or frozenset(self.addrs) == frozenset(theirs)

    def same_state(self, other: PresenceMessage) -> bool:
        """True when ``other`` says the same about the peer (only type or ts differ)."""
        return self.state() == other.state()

    def state(self) -> tuple[Any, ...]:
        """Everything a reader would show or act on, without type, ts and the token."""
        state: tuple[Any, ...] = (*_STATE_OF_MESSAGE(self), frozenset(self.addrs))
        return state

    def offline(self, ts: int) -> PresenceMessage:
        """The server's offline for this peer (expiry, socket closed).

        Only who and when, as goop2's server sends it: a departure needs no
        content, and a stream that is behind may hold thousands of these.
        """
        return PresenceMessage("offline", self.peer_id, ts=ts)

    def stamped(self, verified: bool) -> PresenceMessage:
        """This message as the server relays it: its ``verified``, no token."""
        return replace(self, verified=verified, verification_token="")


def signed_ts(values: tuple[Any, ...]) -> int:
    """The ``ts`` of the message whose `PresenceMessage.values` these are when it is
    signed, else 0 (what the signature rules need of a stored peer)."""
    ts: int = values[_TS_AT] if values[_SIG_AT] else 0
    return ts


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _reject_constant(name: str) -> Any:
    raise MessageError(f"invalid JSON number {name}")


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs) or len({k.lower() for k in out}) != len(out):
        folded: set[str] = set()
        for key, _ in pairs:
            if key.lower() in folded:
                raise _Duplicate(key)
            folded.add(key.lower())
    return out


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)


def _utf8_len(field: str, value: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # json.loads accepts "\ud800"; such a string cannot be sent on.
        raise MessageError(f"{field}: contains an unpaired surrogate") from None


def decode_json(body: bytes) -> object:
    """Bytes to one JSON value, refusing what goop refuses (size, UTF-8, NaN, duplicates)."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MessageError(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        return _DECODER.decode(text)
    except _Duplicate as d:
        raise MessageError(f"duplicate field {_short(d.key)!r}") from None
    except MessageError:
        raise
    except RecursionError:
        raise MessageError("JSON nested too deeply") from None
    except ValueError as e:
        raise MessageError(f"malformed JSON: {e}") from None


def parse_message(
    body: bytes,
    now_ms: int,
    origin: Origin = Origin.CLIENT,
    peer_id: str = "",
    verified: bool | None = None,
) -> PresenceMessage:
    """Validate ``body`` as one presence message (see `message_from_object`)."""
    return message_from_object(decode_json(body), now_ms, origin, peer_id, verified)


def _check(f: Field, value: Any) -> Any:
    kind = f.kind
    if kind is str and value.__class__ is str and len(value) * 4 <= f.limit:
        # Short enough that its UTF-8 cannot be over the limit; only a lone
        # surrogate (which json.loads lets through) could still be wrong.
        if value.isascii():
            return value
        _utf8_len(f.wire, value)
        return value
    if value is None:
        return _EMPTY[kind]
    if kind is str:
        if not isinstance(value, str):
            raise MessageError(f"{f.wire}: must be a string, got {_json_type(value)}")
        if _utf8_len(f.wire, value) > f.limit and f.limit:
            raise MessageError(f"{f.wire}: longer than {f.limit} bytes")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise MessageError(f"{f.wire}: must be true or false, got {_json_type(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(
                f"{f.wire}: must be an integer (Unix milliseconds), got {_json_type(value)}"
            )
        if value < 0 or value > MAX_TS:
            raise MessageError(f"{f.wire}: out of range")
        return value
    # tuple: an array of strings
    if not isinstance(value, list):
        raise MessageError(f"{f.wire}: must be an array of strings, got {_json_type(value)}")
    if len(value) > f.limit:
        raise MessageError(f"{f.wire}: more than {f.limit} entries")
    for item in value:
        if not isinstance(item, str):
            raise MessageError(f"{f.wire}: entries must be strings, got {_json_type(item)}")
        if _utf8_len(f.wire, item) > MAX_ADDR_BYTES:
            raise MessageError(f"{f.wire}: an entry is longer than {MAX_ADDR_BYTES} bytes")
    return tuple(value)


def message_from_object(
    obj: object,
    now_ms: int,
    origin: Origin = Origin.CLIENT,
    peer_id: str = "",
    verified: bool | None = None,
) -> PresenceMessage:
    """Validate an already-decoded JSON value as a message from ``origin``.

    ``now_ms`` fills in ``ts`` when it is 0 or missing; ``peer_id`` fills in
    ``peerId`` when it is missing (a /ws socket knows whose it is). With
    ``verified`` given, the message is made as a server relays it: that
    ``verified``, and no token (the same as `PresenceMessage.stamped`, without
    a copy). Raises `MessageError` for anything but a well-formed message;
    never anything else.
    """
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {_json_type(obj)}")
    values: dict[str, Any] = {}
    fields = _KEYS_FROM[origin]
    for key, value in obj.items():
        f = fields.get(key.lower())
        if f is None:
            continue  # unknown to goop and goop2, or not this sender's to set
        if f.attr in values:
            raise MessageError(f"duplicate field {_short(key)!r}")
        values[f.attr] = _check(f, value)

    kind = values.get("type")
    if not kind:
        raise MessageError("type: required")
    if kind == PUNCH:
        if origin is Origin.CLIENT:
            raise PunchFromClient("type: punch is sent by the server only")
    elif kind not in PRESENCE_TYPES:
        raise MessageError("type: must be one of online, update, offline")
    if not values.get("peer_id", "").strip():
        if not peer_id:
            raise MessageError("peerId: required")
        values["peer_id"] = peer_id
    if not values.get("ts"):
        values["ts"] = now_ms
    if verified is not None:
        values["verified"] = verified
        values.pop("verification_token", None)
    return PresenceMessage(**values)


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
