"""The presence message validator: wire compatibility, limits, and no crash on any input."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.message import (
    MAX_BODY_BYTES,
    MAX_CONTENT_BYTES,
    MAX_EMAIL_BYTES,
    MAX_PEER_ID_BYTES,
    MessageError,
    PresenceMessage,
    parse_message,
)
from tests.strategies import json_values, presence_messages

NOW = 1_738_764_000_123
PEER = "12D3KooWGzBmLRDPmsKp5YyEwLsJjpS5cWFyQ3e5GfL8Q7kTq5hA"


def _parse(obj: object) -> PresenceMessage:
    return parse_message(json.dumps(obj).encode(), NOW)


class WireCompatibilityTests(SynchronousTestCase):
    def test_goop2_publish_body_is_accepted(self) -> None:
        """goop2's body (peerId, avatarHash, ts in ms) parses to the same values."""
        body = (
            b'{"type":"online","peerId":"' + PEER.encode() + b'","content":"Alice\'s node",'
            b'"email":"alice@example.com","avatarHash":"abc123","ts":1738764000000}'
        )
        m = parse_message(body, NOW)
        self.assertEqual(
            m,
            PresenceMessage(
                "online", PEER, "Alice's node", "alice@example.com", "abc123", 1738764000000
            ),
        )

    def test_brief_spelling_peerID_is_accepted(self) -> None:
        """The brief writes peerID; field names match case-insensitively."""
        m = _parse({"TYPE": "update", "peerID": PEER, "AvatarHash": "x"})
        self.assertEqual((m.type, m.peer_id, m.avatar_hash), ("update", PEER, "x"))

    def test_goop2_omits_empty_fields(self) -> None:
        """goop2 sends content/email/avatarHash only when non-empty (omitempty)."""
        m = _parse({"type": "offline", "peerId": PEER, "ts": 5})
        self.assertEqual((m.content, m.email, m.avatar_hash, m.ts), ("", "", "", 5))

    def test_output_uses_canonical_names_on_one_line(self) -> None:
        """The encoding uses peerId and avatarHash and never contains a line break."""
        m = PresenceMessage("online", PEER, "a\nb\r\nc\u2028", "e", "h", 7)
        out = m.encode()
        self.assertNotIn(b"\n", out)
        self.assertNotIn(b"\r", out)
        decoded = json.loads(out)
        self.assertEqual(set(decoded), {"type", "peerId", "content", "email", "avatarHash", "ts"})
        self.assertEqual(decoded["content"], "a\nb\r\nc\u2028")

    def test_zero_or_missing_ts_means_now(self) -> None:
        """ts 0 or absent is filled in with the server's time in ms."""
        self.assertEqual(_parse({"type": "online", "peerId": PEER}).ts, NOW)
        self.assertEqual(_parse({"type": "online", "peerId": PEER, "ts": 0}).ts, NOW)


class RejectionTests(SynchronousTestCase):
    def assertRejected(self, body: bytes, fragment: str) -> None:
        with self.assertRaises(MessageError) as caught:
            parse_message(body, NOW)
        self.assertIn(fragment, str(caught.exception))

    def test_missing_type(self) -> None:
        """type is required."""
        self.assertRejected(json.dumps({"peerId": PEER}).encode(), "type: required")

    def test_bad_type(self) -> None:
        """type must be online, update or offline."""
        self.assertRejected(json.dumps({"type": "hello", "peerId": PEER}).encode(), "type")

    def test_missing_or_empty_peer_id(self) -> None:
        """peerId is required and non-empty."""
        self.assertRejected(b'{"type":"online"}', "peerId: required")
        self.assertRejected(b'{"type":"online","peerId":""}', "peerId: required")

    def test_unknown_field(self) -> None:
        """An unknown field is named in the error."""
        self.assertRejected(
            b'{"type":"online","peerId":"p","color":"red"}', "unknown field 'color'"
        )

    def test_duplicate_field_even_in_other_case(self) -> None:
        """peerId and peerID together are a duplicate."""
        self.assertRejected(b'{"type":"online","peerId":"a","peerID":"b"}', "duplicate field")
        self.assertRejected(b'{"type":"online","type":"update","peerId":"a"}', "duplicate field")

    def test_wrong_types(self) -> None:
        """Strings must be strings; ts an integer, not a float, bool or string."""
        self.assertRejected(b'{"type":"online","peerId":5}', "peerId: must be a string")
        self.assertRejected(b'{"type":"online","peerId":"p","content":null}', "content")
        self.assertRejected(b'{"type":"online","peerId":"p","ts":1.5}', "ts: must be an integer")
        self.assertRejected(b'{"type":"online","peerId":"p","ts":true}', "ts: must be an integer")
        self.assertRejected(b'{"type":"online","peerId":"p","ts":"1"}', "ts: must be an integer")
        self.assertRejected(b'{"type":"online","peerId":"p","ts":-1}', "ts: out of range")

    def test_nesting(self) -> None:
        """Objects and arrays as values are refused."""
        self.assertRejected(b'{"type":"online","peerId":{"a":1}}', "must be a string")
        self.assertRejected(b'{"type":"online","peerId":"p","email":[]}', "must be a string")
        self.assertRejected(b"[" * 100_000, "")

    def test_not_an_object(self) -> None:
        """A JSON array, string or number is not a message."""
        self.assertRejected(b"[]", "expected a JSON object, got array")
        self.assertRejected(b'"x"', "expected a JSON object, got string")

    def test_nan_and_infinity(self) -> None:
        """Non-standard JSON constants are refused."""
        self.assertRejected(b'{"type":"online","peerId":"p","ts":NaN}', "invalid JSON number NaN")
        self.assertRejected(b'{"type":"online","peerId":"p","ts":Infinity}', "Infinity")

    def test_bad_utf8(self) -> None:
        """Bytes that are not UTF-8 are named as such."""
        self.assertRejected(b'{"type":"online","peerId":"\xff"}', "not valid UTF-8")

    def test_lone_surrogate(self) -> None:
        """A \\ud800 escape decodes but could never be re-encoded: refused."""
        self.assertRejected(b'{"type":"online","peerId":"\\ud800"}', "surrogate")

    def test_malformed_json(self) -> None:
        """Truncated JSON says malformed."""
        self.assertRejected(b'{"type":"online",', "malformed JSON")
        self.assertRejected(b"", "malformed JSON")

    def test_limits(self) -> None:
        """peerId <= 256 bytes, content <= 4096, email <= 320, body <= 64 KiB."""
        base = {"type": "online", "peerId": PEER}
        for field, limit in (
            ("peerId", MAX_PEER_ID_BYTES),
            ("content", MAX_CONTENT_BYTES),
            ("email", MAX_EMAIL_BYTES),
        ):
            ok = dict(base, **{field: "é" * (limit // 2)})
            self.assertEqual(_parse(ok).to_dict()[field], "é" * (limit // 2))
            too_long = json.dumps(dict(base, **{field: "é" * (limit // 2) + "x"})).encode()
            self.assertRejected(too_long, f"{field}: longer than {limit} bytes")
        self.assertRejected(b" " * (MAX_BODY_BYTES + 1), "body larger than")


class PropertyTests(SynchronousTestCase):
    @given(json_values)
    def test_any_json_value_is_a_message_or_a_clear_error(self, value: object) -> None:
        """Any JSON value parses or raises MessageError; nothing else."""
        try:
            m = parse_message(json.dumps(value).encode(), NOW)
        except MessageError as e:
            self.assertTrue(str(e))
        else:
            self.assertIsInstance(m, PresenceMessage)

    @given(st.binary(max_size=2048))
    def test_any_bytes_are_a_message_or_a_clear_error(self, body: bytes) -> None:
        """Arbitrary bytes never raise anything but MessageError."""
        try:
            parse_message(body, NOW)
        except MessageError:
            pass

    @given(presence_messages())
    def test_encode_then_parse_is_identity(self, m: PresenceMessage) -> None:
        """Every valid message survives its own wire encoding unchanged."""
        self.assertEqual(parse_message(m.encode(), NOW), m)

    @given(presence_messages(), st.data())
    def test_field_name_case_does_not_matter(self, m: PresenceMessage, data: st.DataObject) -> None:
        """Any casing of the field names yields the same message."""
        recased = {}
        for key, value in m.to_dict().items():
            flips = data.draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
            recased[
                "".join(c.upper() if f else c.lower() for c, f in zip(key, flips, strict=True))
            ] = value
        self.assertEqual(_parse(recased), m)
