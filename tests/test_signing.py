"""goop.signing: the canonical encoding, signatures, keys inside peer IDs.

Property tests: every message round-trips through the canonical encoding;
any change to a signed field, or any single byte of what was signed, breaks
the signature. A fixed test vector (docs/signing.md) pins the format for
other implementations.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twisted.trial.unittest import SynchronousTestCase

from goop.identity import _from_seed
from goop.message import Origin, PresenceMessage, parse_message
from goop.signing import (
    SIGNED,
    SignatureError,
    Verifier,
    decode_payload,
    payload,
    public_key_of,
    sign,
    signed_bytes,
    signing_key,
)
from tests.strategies import presence_messages

SEED = bytes(range(32))
ME = _from_seed(SEED, "")
KEY = signing_key(SEED)
ids = st.just(ME.peer_id)


def signed(message: PresenceMessage) -> PresenceMessage:
    return replace(message, sig=sign(KEY, message))


class EncodingTests(SynchronousTestCase):
    @given(presence_messages())
    def test_every_message_round_trips(self, message: PresenceMessage) -> None:
        values = decode_payload(payload(message))
        self.assertEqual(values, {attr: getattr(message, attr) for attr, _ in SIGNED})

    @given(presence_messages(), st.data())
    def test_a_truncated_or_extended_payload_does_not_decode_to_the_same(
        self, message: PresenceMessage, data: st.DataObject
    ) -> None:
        raw = payload(message)
        cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        for other in (raw[:cut], raw + b"\0"):
            try:
                values = decode_payload(other)
            except (ValueError, UnicodeDecodeError):
                continue
            self.assertNotEqual(values, decode_payload(raw))

    def test_fields_outside_the_signature(self) -> None:
        """verified (the server's), target (punch), the token (never relayed) and sig."""
        base = PresenceMessage("online", ME.peer_id, "x", ts=5)
        for change in (
            {"verified": True},
            {"target": "someone"},
            {"verification_token": "t"},
            {"sig": "AAAA"},
        ):
            self.assertEqual(signed_bytes(replace(base, **change)), signed_bytes(base), change)


class SignatureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.verifier = Verifier()

    @settings(max_examples=60)
    @given(presence_messages(peer_ids=ids), st.data())
    def test_any_changed_signed_field_breaks_the_signature(
        self, message: PresenceMessage, data: st.DataObject
    ) -> None:
        good = signed(message)
        self.verifier.check(good)
        other = data.draw(presence_messages(peer_ids=ids))
        attr = data.draw(st.sampled_from([a for a, _ in SIGNED if a != "peer_id"]))
        forged = replace(good, **{attr: getattr(other, attr)})
        if getattr(forged, attr) == getattr(good, attr):
            return
        with self.assertRaises(SignatureError):
            self.verifier.check(forged)

    @settings(max_examples=60)
    @given(presence_messages(peer_ids=ids), st.data())
    def test_any_single_byte_change_of_the_signed_bytes_breaks_it(
        self, message: PresenceMessage, data: st.DataObject
    ) -> None:
        raw = signed_bytes(message)
        sig = KEY.sign(raw).signature
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        flip = data.draw(st.integers(min_value=1, max_value=255))
        changed = raw[:at] + bytes([raw[at] ^ flip]) + raw[at + 1 :]
        from nacl.exceptions import BadSignatureError

        with self.assertRaises(BadSignatureError):
            KEY.verify_key.verify(changed, sig)

    def test_it_survives_the_server_s_reencoding(self) -> None:
        """Relayed as JSON (with verified, keys reordered, nulls), parsed back: still valid."""
        good = signed(PresenceMessage("update", ME.peer_id, "héllo", "a@b", ts=1700000000000,
                                      addrs=("/ip4/10.0.0.1/tcp/1",), public_key="k"))
        relayed = json.loads(good.stamped(verified=True).encode())
        relayed = dict(reversed(list(relayed.items())))
        relayed["avatarHash"] = None
        back = parse_message(json.dumps(relayed).encode(), 1, Origin.RELAY)
        self.assertEqual(back.sig, good.sig)
        self.verifier.check(back)

    def test_another_peers_key_does_not_verify(self) -> None:
        other = SigningKey(bytes(32))
        message = PresenceMessage("online", ME.peer_id, "x", ts=1)
        forged = replace(message, sig=sign(other, message))
        with self.assertRaises(SignatureError) as e:
            self.verifier.check(forged)
        self.assertIn("bad signature", str(e.exception))

    def test_malformed_sigs(self) -> None:
        message = PresenceMessage("online", ME.peer_id, "x", ts=1)
        for sig, why in (
            ("not base64!", "not base64"),
            (base64.b64encode(b"short").decode(), "bytes, an Ed25519 signature is 64"),
        ):
            with self.assertRaises(SignatureError) as e:
                self.verifier.check(replace(message, sig=sig))
            self.assertIn(why, str(e.exception))

    def test_the_key_cache_is_bounded(self) -> None:
        verifier = Verifier(cache_size=2)
        for n in range(5):
            identity = _from_seed(bytes([n]) * 32, "")
            message = PresenceMessage("online", identity.peer_id, ts=1)
            verifier.check(replace(message, sig=sign(signing_key(identity.seed), message)))
        self.assertEqual(len(verifier._keys), 2)


class PeerIdKeyTests(SynchronousTestCase):
    def test_the_key_inside_an_ed25519_peer_id(self) -> None:
        self.assertEqual(public_key_of(ME.peer_id), ME.public_key)

    @given(st.integers(min_value=0, max_value=2**20))
    def test_other_ids_are_refused_with_a_reason(self, n: int) -> None:
        for peer_id in (
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # RSA (sha256 multihash)
            "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY",  # secp256k1
            "not-a-peer-id",
            "",
            "1" * 80,
            ME.peer_id[:-1],
            ME.peer_id + "1",
            str(n),
        ):
            with self.assertRaises(SignatureError):
                public_key_of(peer_id)


class VectorTests(SynchronousTestCase):
    """The test vector docs/signing.md gives other implementations."""

    def test_vector(self) -> None:
        message = PresenceMessage(
            "online", ME.peer_id, "alice", "a@example.org", ts=1796203421127,
            addrs=("/ip4/192.168.1.5/tcp/4001",), goop_client_version="goop/0.1",
        )
        self.assertEqual(ME.peer_id, "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB")
        self.assertEqual(
            signed_bytes(message).hex(),
            "0d676f6f702d70726573656e6365102f676f6f702f70726573656e63652f31"
            + "7f" + "06" + b"online".hex()
            + "34" + ME.peer_id.encode().hex()
            + "05616c696365" + "0d" + b"a@example.org".hex()
            + "00" + "00" + "00"
            + "01" + "19" + b"/ip4/192.168.1.5/tcp/4001".hex()
            + "00" + "00" + "08" + b"goop/0.1".hex()
            + "c7bbc4b0a334",
        )
        self.assertEqual(sign(KEY, message), VECTOR_SIG)


VECTOR_SIG = (
    "l3YtckvQ0fVQ8OYo+1QO3CUzDuoNim9KraS1m6Zzo3XWutrgxar3X0rM+QaSQGcaDzRddjBNBFMIdMdIRIP4Bg=="
)
