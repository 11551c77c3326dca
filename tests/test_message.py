"""The presence message validator: wire compatibility, limits, and no crash on any input."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.message import (
    FIELDS,
    MAX_ADDR_BYTES,
    MAX_ADDRS,
    MAX_BODY_BYTES,
    MAX_CONTENT_BYTES,
    MAX_EMAIL_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_PUBLIC_KEY_BYTES,
    MAX_TEMPLATE_BYTES,
    MAX_TOKEN_BYTES,
    MAX_VERSION_BYTES,
    MessageError,
    Origin,
    PresenceMessage,
    PunchFromClient,
    message_from_object,
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


# Shapes goop2 peers and servers send today (GOOP2-PROTOCOL.md §1, §2, §5),
# written out by hand from the fact sheet.
GOOP2_ONLINE = (
    b'{"type":"online","peerId":"12D3KooWEx4mpLe","content":"E",'
    b'"addrs":["/ip4/10.0.0.5/tcp/4001"],"publicKey":"bmFjbC1rZXktZXhhbXBsZQ==",'
    b'"encryptionSupported":true,"goopClientVersion":"dev","ts":1796203421127,"verified":true}'
)
GOOP2_FULL_UPDATE = (
    b'{"type":"update","peerId":"12D3KooWEx4mpLe","content":"E","email":"e@example.org",'
    b'"avatarHash":"ab12","videoDisabled":true,"activeTemplate":"blog",'
    b'"addrs":["/ip4/192.168.1.20/tcp/4001","/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWRelay/'
    b'p2p-circuit"],"verificationToken":"tok-123","publicKey":"bmFj","encryptionSupported":true,'
    b'"goopClientVersion":"0.9.3","ts":1796203426127}'
)
GOOP2_SERVER_OFFLINE = b'{"type":"offline","peerId":"12D3KooWEx4mpLe","ts":1796203456000}'
GOOP2_PUNCH = (
    b'{"type":"punch","peerId":"12D3KooWAaa","target":"12D3KooWBbb",'
    b'"addrs":["/ip4/10.0.0.7/tcp/4001"],"ts":1796203421200}'
)


class Goop2MessageTests(SynchronousTestCase):
    """Today's goop2 messages: accepted, and relayed with what goop2 peers need."""

    def test_goop2_online_is_accepted_and_verified_is_not_taken_from_the_client(self) -> None:
        """The full online parses; the client's verified is ignored (the server sets it)."""
        m = parse_message(GOOP2_ONLINE, NOW)
        self.assertEqual(m.addrs, ("/ip4/10.0.0.5/tcp/4001",))
        self.assertEqual(m.public_key, "bmFjbC1rZXktZXhhbXBsZQ==")
        self.assertTrue(m.encryption_supported)
        self.assertEqual(m.goop_client_version, "dev")
        self.assertFalse(m.verified)

    def test_every_field_is_relayed_but_the_token(self) -> None:
        """An update with all 13 client fields: relayed with all but verificationToken."""
        m = parse_message(GOOP2_FULL_UPDATE, NOW).stamped(verified=True)
        out = json.loads(m.encode())
        sent = json.loads(GOOP2_FULL_UPDATE)
        del sent["verificationToken"]
        self.assertEqual(out, dict(sent, verified=True))
        self.assertEqual(list(out)[:5], ["type", "peerId", "content", "email", "avatarHash"])
        self.assertNotIn(b"tok-123", m.encode())

    def test_field_order_is_goop2s(self) -> None:
        """Keys come out in goop2's order (FIELDS), whatever order they came in."""
        m = message_from_object(
            dict(reversed(list(json.loads(GOOP2_FULL_UPDATE).items()))), NOW
        ).stamped(verified=True)
        order = [f.wire for f in FIELDS if f.wire in json.loads(m.encode())]
        self.assertEqual(list(json.loads(m.encode())), order)

    def test_unknown_keys_are_ignored_and_not_relayed(self) -> None:
        """Keys no version defines (goop2 adds some now and then) are dropped, not refused."""
        m = _parse({"type": "online", "peerId": PEER, "color": "red", "nested": {"a": [1]}})
        self.assertNotIn("color", m.encode().decode())
        self.assertNotIn("nested", m.encode().decode())

    def test_null_is_empty(self) -> None:
        """goop2 treats null as the empty value; so do we, for every optional field."""
        m = _parse(
            {"type": "online", "peerId": PEER, "content": None, "addrs": None,
             "videoDisabled": None, "ts": None}
        )
        self.assertEqual((m.content, m.addrs, m.video_disabled, m.ts), ("", (), False, NOW))

    def test_keys_are_case_insensitive(self) -> None:
        """PEERID, Addrs, PUBLICKEY: goop2 parses keys case-insensitively, so do we."""
        m = _parse({"TYPE": "online", "PEERID": PEER, "Addrs": ["/a"], "PUBLICKEY": "k"})
        self.assertEqual((m.peer_id, m.addrs, m.public_key), (PEER, ("/a",), "k"))

    def test_server_offline_and_punch_parse_from_a_stream(self) -> None:
        """A consumer reading a goop2 server takes its offline and punch (with target)."""
        off = parse_message(GOOP2_SERVER_OFFLINE, NOW, Origin.RELAY)
        self.assertEqual((off.type, off.ts), ("offline", 1796203456000))
        punch = parse_message(GOOP2_PUNCH, NOW, Origin.RELAY)
        self.assertEqual((punch.type, punch.target), ("punch", "12D3KooWBbb"))
        self.assertEqual(punch.addrs, ("/ip4/10.0.0.7/tcp/4001",))

    def test_relay_keeps_verified_and_drops_a_token(self) -> None:
        """On a stream, verified is the server's word; a token would never be relayed."""
        m = parse_message(
            b'{"type":"update","peerId":"p","verified":true,"verificationToken":"x"}',
            NOW, Origin.RELAY,
        )
        self.assertEqual((m.verified, m.verification_token), (True, ""))

    def test_client_cannot_set_target(self) -> None:
        """target is the server's (punch); a client's is ignored."""
        self.assertEqual(_parse({"type": "online", "peerId": PEER, "target": "x"}).target, "")

    def test_a_socket_fills_in_a_missing_peer_id(self) -> None:
        """On /ws a frame without peerId is the socket's peer (goop2's rule)."""
        m = parse_message(b'{"type":"update"}', NOW, Origin.CLIENT, peer_id=PEER)
        self.assertEqual(m.peer_id, PEER)

    def test_whitespace_peer_id_is_missing(self) -> None:
        """goop2 trims before checking that peerId is there."""
        with self.assertRaises(MessageError):
            parse_message(b'{"type":"online","peerId":"  "}', NOW)

    def test_same_state_ignores_address_order(self) -> None:
        """Reordered addresses are not a change (goop2's addrsChanged ignores order)."""
        a = PresenceMessage("update", PEER, addrs=("/a", "/b"))
        b = PresenceMessage("update", PEER, ts=9, addrs=("/b", "/a"))
        self.assertTrue(a.same_state(b))
        self.assertFalse(a.same_state(PresenceMessage("update", PEER, addrs=("/a",))))


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

    def test_punch_from_a_client(self) -> None:
        """type punch is the server's alone: refused from a client, with its own error class."""
        with self.assertRaises(PunchFromClient):
            parse_message(b'{"type":"punch","peerId":"p","target":"q"}', NOW)

    def test_duplicate_field_even_in_other_case(self) -> None:
        """peerId and peerID together are a duplicate."""
        self.assertRejected(b'{"type":"online","peerId":"a","peerID":"b"}', "duplicate field")
        self.assertRejected(b'{"type":"online","type":"update","peerId":"a"}', "duplicate field")

    def test_wrong_types(self) -> None:
        """Strings must be strings; ts an integer, not a float, bool or string."""
        self.assertRejected(b'{"type":"online","peerId":5}', "peerId: must be a string")
        self.assertRejected(b'{"type":"online","peerId":"p","content":7}', "content")
        self.assertRejected(b'{"type":"online","peerId":"p","addrs":"x"}', "addrs: must be an")
        self.assertRejected(b'{"type":"online","peerId":"p","addrs":[1]}', "entries must be")
        self.assertRejected(
            b'{"type":"online","peerId":"p","videoDisabled":"yes"}', "must be true or false"
        )
        self.assertRejected(
            b'{"type":"online","peerId":"p","encryptionSupported":1}', "must be true or false"
        )
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

    def test_goop2_limits_are_a_floor(self) -> None:
        """goop2 allows 20 addrs of 256 bytes: exactly that passes, one more does not."""
        addrs = ["/ip4/10.0.0.1/tcp/" + "1" * (MAX_ADDR_BYTES - 18)] * MAX_ADDRS
        self.assertEqual(len(_parse({"type": "online", "peerId": PEER, "addrs": addrs}).addrs), 20)
        self.assertRejected(
            json.dumps({"type": "online", "peerId": PEER, "addrs": [*addrs, "/x"]}).encode(),
            "more than 20 entries",
        )
        self.assertRejected(
            json.dumps({"type": "online", "peerId": PEER, "addrs": ["/" * 257]}).encode(),
            "longer than 256 bytes",
        )
        for field, limit in (
            ("publicKey", MAX_PUBLIC_KEY_BYTES),
            ("goopClientVersion", MAX_VERSION_BYTES),
            ("verificationToken", MAX_TOKEN_BYTES),
            ("activeTemplate", MAX_TEMPLATE_BYTES),
        ):
            self.assertRejected(
                json.dumps({"type": "online", "peerId": PEER, field: "k" * (limit + 1)}).encode(),
                f"{field}: longer than {limit} bytes",
            )


class PropertyTests(SynchronousTestCase):
    @given(presence_messages(), presence_messages())
    def test_values_round_trip_and_compare_as_messages_do(
        self, a: PresenceMessage, b: PresenceMessage
    ) -> None:
        """The peer table keeps `values()`, not the message: nothing may be lost, and
        `same_state_as` must agree with `same_state` (and see itself as unchanged)."""
        self.assertEqual(PresenceMessage.from_values(a.values()), a)
        self.assertEqual(a.same_state_as(b.values()), a.same_state(b))
        moved = replace(a, ts=a.ts + 1, type="update", addrs=tuple(reversed(a.addrs)))
        self.assertTrue(moved.same_state_as(a.values()))

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


class RelayPropertyTests(SynchronousTestCase):
    @given(presence_messages(), st.booleans())
    def test_relayed_encoding_round_trips_on_a_stream(self, m: PresenceMessage, v: bool) -> None:
        """What the server relays parses back on a stream to the same message; a client
        re-posting it cannot carry the server's verified along."""
        relayed = m.stamped(verified=v)
        self.assertEqual(parse_message(relayed.encode(), NOW, Origin.RELAY), relayed)
        self.assertFalse(parse_message(relayed.encode(), NOW, Origin.CLIENT).verified)
        self.assertNotIn(b"\n", relayed.encode())
