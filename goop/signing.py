"""Signed presence: the bytes a peer signs, and checking a signature against its peer ID.

One job, no I/O and no reactor: docs/signing.md is the specification this
module implements (another implementation follows that, not this code).

The construction is libp2p's signed envelope (RFC 0002) without the
envelope: the signed bytes are

    varint(len(DOMAIN)) DOMAIN varint(len(PAYLOAD_TYPE)) PAYLOAD_TYPE varint(len(p)) p

where ``p`` is `payload(message)`: the fields a reader acts on, in a fixed
order, each length-prefixed (strings UTF-8, booleans one byte, ``ts`` an
unsigned varint, ``addrs`` a count then its strings). The key is the one
inside the ``12D3KooW…`` peer ID (an identity multihash of libp2p's
protobuf PublicKey), so nothing but the 64-byte signature travels: base64
in the message's ``sig`` key, which goop2 servers and clients ignore.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from typing import Any, Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from goop.identity import KEY_TYPE_ED25519, decode_key_message, read_varint, varint
from goop.message import PresenceMessage

DOMAIN: Final = b"goop-presence"
PAYLOAD_TYPE: Final = b"/goop/presence/1"
SIG_BYTES: Final = 64
# (attribute, kind) in signing order: who, what it says, where to dial, when.
SIGNED: Final[tuple[tuple[str, type], ...]] = (
    ("type", str),
    ("peer_id", str),
    ("content", str),
    ("email", str),
    ("avatar_hash", str),
    ("video_disabled", bool),
    ("active_template", str),
    ("addrs", tuple),
    ("public_key", str),
    ("encryption_supported", bool),
    ("goop_client_version", str),
    ("ts", int),
)
_PREFIX: Final = varint(len(DOMAIN)) + DOMAIN + varint(len(PAYLOAD_TYPE)) + PAYLOAD_TYPE
_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_VALUE: Final = {c: i for i, c in enumerate(_B58)}
# Parsed public keys kept, most recently used last (10,000 peers heartbeating
# would otherwise decode base58 and build a key object per message).
KEY_CACHE_SIZE: Final = 65536


class SignatureError(ValueError):
    """A signature that cannot be checked or does not verify; str() says why."""


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return varint(len(raw)) + raw


def payload(message: PresenceMessage) -> bytes:
    """The canonical encoding of ``message``'s signed fields (see the module docstring)."""
    out = bytearray()
    for attr, kind in SIGNED:
        value = getattr(message, attr)
        if kind is str:
            out += _text(value)
        elif kind is bool:
            out.append(1 if value else 0)
        elif kind is int:
            out += varint(value)
        else:
            out += varint(len(value))
            for item in value:
                out += _text(item)
    return bytes(out)


def decode_payload(raw: bytes) -> dict[str, Any]:
    """The fields `payload` encoded (attribute -> value); `ValueError` for anything else."""
    values: dict[str, Any] = {}
    pos = 0

    def text() -> str:
        nonlocal pos
        length, pos = read_varint(raw, pos)
        if pos + length > len(raw):
            raise ValueError("truncated string")
        start, pos = pos, pos + length
        return raw[start:pos].decode("utf-8")

    for attr, kind in SIGNED:
        if kind is str:
            values[attr] = text()
        elif kind is bool:
            if pos >= len(raw) or raw[pos] > 1:
                raise ValueError("bad boolean")
            values[attr] = raw[pos] == 1
            pos += 1
        elif kind is int:
            values[attr], pos = read_varint(raw, pos)
        else:
            count, pos = read_varint(raw, pos)
            values[attr] = tuple(text() for _ in range(count))
    if pos != len(raw):
        raise ValueError("trailing bytes")
    return values


def signed_bytes(message: PresenceMessage) -> bytes:
    """What the signature covers: the envelope prefix and the length-prefixed payload."""
    body = payload(message)
    return _PREFIX + varint(len(body)) + body


def sign(key: SigningKey, message: PresenceMessage) -> str:
    """The ``sig`` value for ``message``: base64 of the Ed25519 signature."""
    return base64.b64encode(key.sign(signed_bytes(message)).signature).decode("ascii")


def signing_key(seed: bytes) -> SigningKey:
    return SigningKey(seed)


def _base58_decode(text: str) -> bytes:
    n = 0
    for c in text:
        digit = _B58_VALUE.get(c)
        if digit is None:
            raise SignatureError("peerId is not base58")
        n = n * 58 + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def public_key_of(peer_id: str) -> bytes:
    """The Ed25519 public key inside a libp2p peer ID, or `SignatureError`.

    Only inline (identity multihash) Ed25519 IDs carry their key; RSA and
    secp256k1 ones (``Qm…``, ``16Uiu2…``) cannot sign goop presence.
    """
    if len(peer_id) > 64:
        raise SignatureError("peerId is too long to hold an Ed25519 key")
    raw = _base58_decode(peer_id)
    try:
        code, pos = read_varint(raw, 0)
        length, pos = read_varint(raw, pos)
        if code != 0 or pos + length != len(raw):
            raise ValueError("not an identity multihash")
        key_type, data = decode_key_message(raw[pos:])
    except ValueError:
        raise SignatureError("peerId does not carry a public key (not 12D3KooW…)") from None
    if key_type != KEY_TYPE_ED25519 or len(data) != 32:
        raise SignatureError("peerId's key is not Ed25519")
    return data


class Verifier:
    """Checks ``sig`` against the key in the peer ID, keeping parsed keys (bounded LRU)."""

    def __init__(self, cache_size: int = KEY_CACHE_SIZE) -> None:
        self._keys: OrderedDict[str, VerifyKey] = OrderedDict()
        self._size = cache_size
        self.verified = 0

    def _key(self, peer_id: str) -> VerifyKey:
        key = self._keys.get(peer_id)
        if key is not None:
            self._keys.move_to_end(peer_id)
            return key
        key = VerifyKey(public_key_of(peer_id))
        self._keys[peer_id] = key
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return key

    def check(self, message: PresenceMessage) -> None:
        """Returns when ``message.sig`` is ``message``'s signature by its peer; else
        `SignatureError` saying why not. The message must carry a ``sig``."""
        try:
            sig = base64.b64decode(message.sig, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("sig: not base64") from None
        if len(sig) != SIG_BYTES:
            raise SignatureError(f"sig: {len(sig)} bytes, an Ed25519 signature is {SIG_BYTES}")
        key = self._key(message.peer_id)
        try:
            key.verify(signed_bytes(message), sig)
        except BadSignatureError:
            raise SignatureError("bad signature: sig does not match the message") from None
        self.verified += 1
