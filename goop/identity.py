"""The peer's identity: an Ed25519 libp2p key on disk and the peer ID it yields.

The key file is libp2p's protobuf ``PrivateKey`` (Type=Ed25519, Data=key)
with go-libp2p's 64-byte Data layout (seed || public key), so the same file
loads in go-libp2p. On load we also accept py-libp2p's 32-byte seed and the
old 96-byte go layout, and check that any embedded public key matches.

The peer ID is the base58btc identity multihash of the protobuf
``PublicKey``: for Ed25519 it always begins ``12D3KooW``. No reactor here:
this runs once, before the services start.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_TYPE_ED25519: Final = 1
_B58_ALPHABET: Final = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class IdentityError(Exception):
    """The key file is missing-and-uncreatable, unreadable or not an Ed25519 libp2p key."""


def base58btc(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return (b"1" * pad + bytes(reversed(out))).decode("ascii")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_key_message(key_type: int, data: bytes) -> bytes:
    """libp2p's PublicKey/PrivateKey protobuf: field 1 varint Type, field 2 bytes Data."""
    return b"\x08" + varint(key_type) + b"\x12" + varint(len(data)) + data


def decode_key_message(buf: bytes) -> tuple[int, bytes]:
    key_type: int | None = None
    data: bytes | None = None
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
            if field == 1:
                key_type = value
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            if field == 2:
                data = buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    if key_type is None or data is None:
        raise ValueError("missing Type or Data")
    return key_type, data


def peer_id_from_public_key(public_key: bytes) -> str:
    encoded = encode_key_message(KEY_TYPE_ED25519, public_key)
    # <= 42 bytes: the "identity" multihash (code 0x00), no hashing.
    return base58btc(b"\x00" + varint(len(encoded)) + encoded)


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    public_key: bytes
    peer_id: str
    path: str

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes_raw()

    def key_file_bytes(self) -> bytes:
        """go-libp2p's layout: Data = seed || public key (64 bytes)."""
        return encode_key_message(KEY_TYPE_ED25519, self.seed + self.public_key)


def _from_seed(seed: bytes, path: str) -> Identity:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Identity(key, public, peer_id_from_public_key(public), path)


def identity_from_key_file_bytes(raw: bytes, path: str = "") -> Identity:
    where = path or "key"
    try:
        key_type, data = decode_key_message(raw)
    except ValueError as e:
        raise IdentityError(f"{where}: not a libp2p private key file ({e})") from None
    if key_type != KEY_TYPE_ED25519:
        raise IdentityError(f"{where}: key type {key_type} is not Ed25519 (1)")
    if len(data) not in (32, 64, 96):
        raise IdentityError(f"{where}: Ed25519 key data is {len(data)} bytes (want 32, 64 or 96)")
    identity = _from_seed(data[:32], path)
    # 64: seed || public; 96 (old go): seed || public || public.
    for start in range(32, len(data), 32):
        if data[start : start + 32] != identity.public_key:
            raise IdentityError(f"{where}: embedded public key does not match the private key")
    return identity


def _read_existing(path: str) -> Identity | None:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"{path}: cannot read key file: {e.strerror}") from None
    return identity_from_key_file_bytes(raw, path)


def load_or_create(path: str) -> tuple[Identity, bool]:
    """The identity in ``path``, creating it (mode 0600) when the file does not exist.

    Returns (identity, created). A file that exists but cannot be read or
    parsed raises `IdentityError`: it is never silently replaced.
    """
    existing = _read_existing(path)
    if existing is not None:
        return existing, False
    identity = _from_seed(Ed25519PrivateKey.generate().private_bytes_raw(), path)
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        # A private temp name per creator; then link, not rename, so that when
        # two processes create at once the first key on disk wins for both.
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        try:
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
            os.write(fd, identity.key_file_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)
            linked = True
        except FileExistsError:
            linked = False
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise IdentityError(f"{path}: cannot create key file: {e.strerror}") from None
    if linked:
        return identity, True
    winner = _read_existing(path)
    if winner is None:  # the name exists but leads nowhere: a dangling symlink
        raise IdentityError(f"{path}: is a symbolic link to a missing file")
    return winner, False
