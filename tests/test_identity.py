"""The key file and the peer ID: libp2p vectors, the accepted layouts, and load_or_create."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop import identity as identity_module
from goop.identity import (
    KEY_TYPE_ED25519,
    Identity,
    IdentityError,
    base58btc,
    decode_key_message,
    encode_key_message,
    identity_from_key_file_bytes,
    load_or_create,
)

# From the libp2p peer-ids spec, checked against py-libp2p 0.8.1.
VECTOR_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
VECTOR_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
VECTOR_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
SEED = VECTOR_PRIVATE[4:36]
PUBLIC = VECTOR_PRIVATE[36:]

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _tempdir(case: SynchronousTestCase) -> Path:
    """A fresh absolute directory, removed after the test (not under the cwd)."""
    path = tempfile.mkdtemp(prefix="goop-identity-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


def _b58decode(text: str) -> bytes:
    """A reference decoder written for these tests (leading '1's are zero bytes)."""
    n = 0
    for ch in text:
        n = n * 58 + _ALPHABET.index(ch)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


@st.composite
def mangled_vectors(draw: st.DrawFn) -> bytes:
    """The valid vector with a few bytes replaced, dropped, inserted or cut off."""
    buf = bytearray(VECTOR_PRIVATE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        i = draw(st.integers(min_value=0, max_value=max(0, len(buf) - 1)))
        if op == "replace" and buf:
            buf[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == "delete" and buf:
            del buf[i]
        elif op == "insert":
            buf.insert(i, draw(st.integers(min_value=0, max_value=255)))
        else:
            del buf[i:]
    return bytes(buf)


class VectorTests(SynchronousTestCase):
    def test_spec_vector_gives_its_peer_id(self) -> None:
        """The spec's private key loads and yields the spec's peer ID."""
        ident = identity_from_key_file_bytes(VECTOR_PRIVATE)
        self.assertEqual(ident.peer_id, VECTOR_PEER_ID)

    def test_public_key_protobuf_matches_the_spec_vector(self) -> None:
        """The derived public key, protobuf-encoded, is the spec's public key."""
        ident = identity_from_key_file_bytes(VECTOR_PRIVATE)
        self.assertEqual(ident.public_key, PUBLIC)
        self.assertEqual(encode_key_message(KEY_TYPE_ED25519, ident.public_key), VECTOR_PUBLIC)

    def test_key_file_bytes_reproduce_the_vector(self) -> None:
        """key_file_bytes() is the spec vector byte for byte (go's 64-byte layout)."""
        ident = identity_from_key_file_bytes(VECTOR_PRIVATE)
        self.assertEqual(ident.key_file_bytes(), VECTOR_PRIVATE)
        self.assertEqual(ident.seed, SEED)

    def test_py_libp2p_32_byte_form_loads_to_the_same_peer_id(self) -> None:
        """py-libp2p's seed-only Data (32 bytes) is accepted."""
        raw = encode_key_message(KEY_TYPE_ED25519, SEED)
        self.assertEqual(raw[:4], bytes.fromhex("08011220"))
        self.assertEqual(identity_from_key_file_bytes(raw).peer_id, VECTOR_PEER_ID)

    def test_old_96_byte_form_loads_to_the_same_peer_id(self) -> None:
        """The old go layout seed || public || public is accepted."""
        raw = encode_key_message(KEY_TYPE_ED25519, SEED + PUBLIC + PUBLIC)
        self.assertEqual(identity_from_key_file_bytes(raw).peer_id, VECTOR_PEER_ID)

    def test_loaded_short_forms_are_written_back_in_the_64_byte_layout(self) -> None:
        """Whatever form was read, key_file_bytes() is go's 64-byte layout."""
        for data in (SEED, SEED + PUBLIC + PUBLIC):
            ident = identity_from_key_file_bytes(encode_key_message(KEY_TYPE_ED25519, data))
            self.assertEqual(ident.key_file_bytes(), VECTOR_PRIVATE)

    def test_fields_in_reverse_order_still_load(self) -> None:
        """Protobuf fields may come in any order: Data before Type is the same key."""
        raw = b"\x12\x40" + SEED + PUBLIC + b"\x08\x01"
        self.assertEqual(identity_from_key_file_bytes(raw).peer_id, VECTOR_PEER_ID)


class RefusalTests(SynchronousTestCase):
    def test_64_byte_form_with_a_foreign_public_half_is_refused(self) -> None:
        """Seed || some other public key does not load."""
        other = bytes(b ^ 0xFF for b in PUBLIC)
        raw = encode_key_message(KEY_TYPE_ED25519, SEED + other)
        with self.assertRaises(IdentityError) as cm:
            identity_from_key_file_bytes(raw)
        self.assertIn("does not match", str(cm.exception))

    def test_96_byte_form_with_a_foreign_last_third_is_refused(self) -> None:
        """In the old layout, the repeated public key must match too."""
        raw = encode_key_message(KEY_TYPE_ED25519, SEED + PUBLIC + bytes(32))
        self.assertRaises(IdentityError, identity_from_key_file_bytes, raw)

    def test_wrong_key_types_are_refused(self) -> None:
        """RSA (0), Secp256k1 (2) and ECDSA (3) keys are not Ed25519."""
        for key_type in (0, 2, 3, 300):
            raw = encode_key_message(key_type, SEED + PUBLIC)
            with self.assertRaises(IdentityError) as cm:
                identity_from_key_file_bytes(raw)
            self.assertIn(f"key type {key_type}", str(cm.exception))

    def test_other_data_lengths_are_refused(self) -> None:
        """Only 32, 64 and 96 bytes of key data make sense."""
        for n in (0, 1, 31, 33, 63, 65, 95, 97, 128):
            raw = encode_key_message(KEY_TYPE_ED25519, (SEED + PUBLIC * 3)[:n])
            self.assertRaises(IdentityError, identity_from_key_file_bytes, raw)

    def test_every_truncation_of_the_vector_is_refused(self) -> None:
        """Any proper prefix of a valid key file is not a key."""
        for n in range(len(VECTOR_PRIVATE)):
            self.assertRaises(IdentityError, identity_from_key_file_bytes, VECTOR_PRIVATE[:n])

    def test_error_names_where_the_key_came_from(self) -> None:
        """The message starts with the path it was given."""
        with self.assertRaises(IdentityError) as cm:
            identity_from_key_file_bytes(b"garbage", "/etc/goop/key")
        self.assertTrue(str(cm.exception).startswith("/etc/goop/key: "), str(cm.exception))

    @given(st.binary(max_size=120) | mangled_vectors())
    @example(b"")
    @example(b"\x08")
    @example(b"\x08\x80")
    @example(b"\x08" + b"\xff" * 12)
    @example(b"\x08\x01\x12")
    @example(b"\x08\x01\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    @example(b"\x0b\x0c")  # group wire types
    @example(b"\x09" + bytes(8))  # fixed64 wire type
    @example(b"\x08\x01\x0a\x20" + bytes(32))  # Data with the wrong field number
    def test_any_bytes_give_an_identity_or_identity_error(self, raw: bytes) -> None:
        """Property: arbitrary bytes load or raise IdentityError, never anything else."""
        try:
            ident = identity_from_key_file_bytes(raw)
        except IdentityError:
            return
        self.assertIsInstance(ident, Identity)
        key_type, data = decode_key_message(raw)
        self.assertEqual(key_type, KEY_TYPE_ED25519)
        self.assertEqual(ident.seed, data[:32])
        self.assertTrue(ident.peer_id.startswith("12D3KooW"))


class Base58Tests(SynchronousTestCase):
    def test_known_vectors(self) -> None:
        """base58btc matches the reference vectors, leading zeros as '1'."""
        vectors = [
            (b"", ""),
            (b"\x00", "1"),
            (b"\x00\x00\x01", "112"),
            (b"\x00\x00\x28\x7f\xb4\xcd", "11233QC4"),
            (b"Hello World!", "2NEpo7TZRRrLZSi2U"),
            (
                b"The quick brown fox jumps over the lazy dog.",
                "USm3fpXnKG5EUBx2ndxBDMPVciP5hGey2Jh4NDv6gmeo1LkMeiKrLJUUBk6Z",
            ),
        ]
        for data, text in vectors:
            self.assertEqual(base58btc(data), text, data)

    @given(st.binary(max_size=64))
    @example(b"\x00" * 5)
    @example(b"\x00\xff")
    def test_round_trips_through_a_reference_decoder(self, data: bytes) -> None:
        """Property: the output is base58btc text that decodes back to the input."""
        text = base58btc(data)
        self.assertTrue(set(text) <= set(_ALPHABET), text)
        self.assertEqual(_b58decode(text), data)


class PeerIdTests(SynchronousTestCase):
    @settings(max_examples=40)
    @given(st.binary(min_size=32, max_size=32))
    @example(bytes(32))
    @example(b"\xff" * 32)
    def test_every_ed25519_peer_id_starts_12D3KooW(self, seed: bytes) -> None:
        """Property: any Ed25519 key gives a 52-character peer ID starting 12D3KooW."""
        ident = identity_from_key_file_bytes(encode_key_message(KEY_TYPE_ED25519, seed))
        self.assertTrue(ident.peer_id.startswith("12D3KooW"), ident.peer_id)
        self.assertEqual(len(ident.peer_id), 52)

    def test_generated_identities_have_12D3KooW_peer_ids(self) -> None:
        """Three dozen freshly created keys all give distinct 12D3KooW peer IDs."""
        base = _tempdir(self)
        ids = set()
        for i in range(36):
            ident, created = load_or_create(str(base / f"k{i}"))
            self.assertTrue(created)
            self.assertTrue(ident.peer_id.startswith("12D3KooW"), ident.peer_id)
            ids.add(ident.peer_id)
        self.assertEqual(len(ids), 36)


class LoadOrCreateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = _tempdir(self) / "d"

    def test_missing_file_is_created_with_parents_mode_0600_and_go_layout(self) -> None:
        """First run: parent dirs made, a 0600 file in go's 64-byte layout, created=True."""
        path = self.dir / "a" / "b" / "identity.key"
        ident, created = load_or_create(str(path))
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        raw = path.read_bytes()
        self.assertEqual(raw, ident.key_file_bytes())
        self.assertEqual(len(raw), 68)
        self.assertEqual(raw[:4], bytes.fromhex("08011240"))
        self.assertEqual(raw[36:], ident.public_key)
        self.assertEqual(ident.path, str(path))
        self.assertEqual(os.listdir(path.parent), ["identity.key"])  # no .tmp left over

    def test_file_is_0600_whatever_the_umask(self) -> None:
        """A permissive umask does not loosen the key file's mode."""
        old = os.umask(0)
        try:
            ident, _ = load_or_create(str(self.dir / "key"))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE((self.dir / "key").stat().st_mode), 0o600)
        self.assertTrue(ident.peer_id.startswith("12D3KooW"))

    def test_second_call_loads_the_same_identity(self) -> None:
        """Next run: the same peer ID, created=False, file untouched."""
        path = self.dir / "key"
        first, _ = load_or_create(str(path))
        before = path.read_bytes()
        again, created = load_or_create(str(path))
        self.assertFalse(created)
        self.assertEqual(again.peer_id, first.peer_id)
        self.assertEqual(path.read_bytes(), before)

    def test_existing_vector_file_is_loaded_not_replaced(self) -> None:
        """A valid file written by someone else is used as-is."""
        path = self.dir / "key"
        self.dir.mkdir()
        path.write_bytes(encode_key_message(KEY_TYPE_ED25519, SEED))
        ident, created = load_or_create(str(path))
        self.assertFalse(created)
        self.assertEqual(ident.peer_id, VECTOR_PEER_ID)
        self.assertEqual(path.read_bytes(), encode_key_message(KEY_TYPE_ED25519, SEED))

    def test_corrupt_file_raises_naming_the_path_and_is_left_unchanged(self) -> None:
        """Garbage, empty, wrong-type or mismatched files stop startup; never replaced."""
        self.dir.mkdir()
        path = self.dir / "key"
        bad_contents = [
            b"not a key at all\n",
            b"",
            VECTOR_PRIVATE[:-1],
            encode_key_message(0, SEED + PUBLIC),
            encode_key_message(KEY_TYPE_ED25519, SEED + bytes(32)),
        ]
        for bad in bad_contents:
            path.write_bytes(bad)
            os.chmod(path, 0o640)
            with self.assertRaises(IdentityError) as cm:
                load_or_create(str(path))
            self.assertIn(str(path), str(cm.exception))
            self.assertEqual(path.read_bytes(), bad)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o640)
            self.assertEqual(os.listdir(self.dir), ["key"])

    def test_unreadable_key_path_raises_identity_error(self) -> None:
        """A directory where the key file should be is an error, not a new key."""
        path = self.dir / "key"
        path.mkdir(parents=True)
        with self.assertRaises(IdentityError) as cm:
            load_or_create(str(path))
        self.assertIn(str(path), str(cm.exception))
        self.assertEqual(os.listdir(path), [])

    def test_uncreatable_key_file_raises_identity_error(self) -> None:
        """A parent that is a regular file cannot hold the key: IdentityError naming it."""
        self.dir.mkdir()
        (self.dir / "file").write_bytes(b"x")
        path = self.dir / "file" / "key"
        with self.assertRaises(IdentityError) as cm:
            load_or_create(str(path))
        self.assertIn(str(path), str(cm.exception))
        self.assertEqual((self.dir / "file").read_bytes(), b"x")

    def test_dangling_symlink_key_path_is_an_identity_error(self) -> None:
        """A key path that is a dangling symlink gives IdentityError, not a crash
        (read says "missing", link says "exists")."""
        self.dir.mkdir()
        path = self.dir / "key"
        os.symlink(self.dir / "missing" / "key", path)
        try:
            load_or_create(str(path))
        except IdentityError:
            return
        except RecursionError:
            outcome = "RecursionError"  # not re-raised: its traceback takes pytest ~25 s
        else:
            outcome = "no error"
        self.fail(f"dangling symlink key path: {outcome}, want IdentityError")

    def test_concurrent_creator_that_links_first_wins_for_both(self) -> None:
        """When another process creates the key between our read and our link,
        we return its key (the one on disk) and leave no temp file behind."""
        path = self.dir / "key"
        theirs = encode_key_message(KEY_TYPE_ED25519, SEED + PUBLIC)
        real_link = os.link

        def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            Path(dst).write_bytes(theirs)  # the other process got there first
            real_link(src, dst)

        self.patch(identity_module.os, "link", racing_link)
        ident, created = load_or_create(str(path))
        self.assertFalse(created)
        self.assertEqual(ident.peer_id, identity_from_key_file_bytes(theirs).peer_id)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["key"])


@pytest.mark.skipif(
    importlib.util.find_spec("libp2p") is None, reason="py-libp2p is not installed"
)
class PyLibp2pCrossCheckTests(SynchronousTestCase):
    def test_py_libp2p_key_loads_with_py_libp2p_peer_id(self) -> None:
        """A key py-libp2p generates and serialises loads here to py-libp2p's peer ID."""
        ed25519 = importlib.import_module("libp2p.crypto.ed25519")
        peer_id = importlib.import_module("libp2p.peer.id")
        pair = ed25519.create_new_key_pair()
        ident = identity_from_key_file_bytes(pair.private_key.serialize())
        self.assertEqual(ident.peer_id, peer_id.ID.from_pubkey(pair.public_key).to_base58())

    def test_our_public_key_gives_the_same_peer_id_in_py_libp2p(self) -> None:
        """py-libp2p reads our public key protobuf and derives the same peer ID."""
        serialization = importlib.import_module("libp2p.crypto.serialization")
        peer_id = importlib.import_module("libp2p.peer.id")
        ident, _ = load_or_create(str(_tempdir(self) / "key"))
        public = serialization.deserialize_public_key(
            encode_key_message(KEY_TYPE_ED25519, ident.public_key)
        )
        self.assertEqual(peer_id.ID.from_pubkey(public).to_base58(), ident.peer_id)
