"""The rendezvous's signature rules, over real sockets (POST /publish and /ws).

A signed peer cannot be updated, evicted or replayed by anyone else; unsigned
(goop2) peers keep working unless ``require_signed``; a /ws socket opened
for a signed peer by someone else neither replaces its socket nor evicts it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase

from goop.identity import _from_seed
from goop.message import PresenceMessage
from goop.rendezvous.signatures import SignaturePolicy, SignatureRefused
from goop.signing import sign, signing_key
from tests.test_ws import WsTestCase

ALICE = _from_seed(b"\x01" * 32, "")
BOB = _from_seed(b"\x02" * 32, "")
GOOP2 = "12D3KooWGoop2PeerThatDoesNotSign"


def signed_by(identity: Any, kind: str, ts: int, **fields: Any) -> PresenceMessage:
    message = PresenceMessage(kind, identity.peer_id, ts=ts, **fields)
    return replace(message, sig=sign(signing_key(identity.seed), message))


class SignedPublishTests(WsTestCase):
    def now_ms(self) -> int:
        return int(reactor.seconds() * 1000)

    @defer.inlineCallbacks
    def publish(self, message: PresenceMessage | dict[str, Any]) -> Any:
        body = message.to_dict() if isinstance(message, PresenceMessage) else message
        r = yield self.post(body)
        payload = yield r.content()
        return r.code, (json.loads(payload)["error"] if payload else "")

    def stored(self, peer_id: str) -> PresenceMessage | None:
        entry = self.service.board.registry.get(peer_id)
        return entry.message if entry is not None else None

    @defer.inlineCallbacks
    def test_a_signed_peer_cannot_be_rewritten_evicted_or_replayed(self) -> None:
        self.start()
        t = self.now_ms()
        online = signed_by(ALICE, "online", t, content="alice", email="a@x")
        self.assertEqual((yield self.publish(online)), (204, ""))
        before = self.stored(ALICE.peer_id)
        assert before is not None
        self.assertEqual(before.sig, online.sig)

        evict = PresenceMessage("offline", ALICE.peer_id, ts=t + 2)
        attacks = {
            "unsigned update": {"type": "update", "peerId": ALICE.peer_id, "content": "pwned"},
            "unsigned offline": {"type": "offline", "peerId": ALICE.peer_id},
            "altered content": replace(signed_by(ALICE, "update", t + 1), content="pwned"),
            "signed by another key": replace(
                evict, sig=sign(signing_key(BOB.seed), evict)
            ),
            "replayed": online,
            "older": signed_by(ALICE, "offline", t - 1),
            "outside the window": signed_by(ALICE, "offline", t + 10 * 60 * 1000),
        }
        reasons = []
        for name, attack in attacks.items():
            code, why = yield self.publish(attack)
            self.assertEqual(code, 403, name)
            self.assertTrue(why, name)
            self.assertEqual(self.stored(ALICE.peer_id), before, name)
            reasons.append(why)
        self.assertIn("unsigned message for a signed peer", reasons[0])
        self.assertIn("bad signature", reasons[2])
        self.assertIn("bad signature", reasons[3])
        self.assertIn("replay", reasons[4])
        self.assertIn("replay", reasons[5])
        self.assertIn("replay", reasons[6])

        # The peer itself still updates and leaves.
        code, _ = yield self.publish(signed_by(ALICE, "update", t + 5, content="a2"))
        self.assertEqual(code, 204)
        self.assertEqual(self.stored(ALICE.peer_id).content, "a2")  # type: ignore[union-attr]
        self.assertEqual((yield self.publish(signed_by(ALICE, "offline", t + 6)))[0], 204)
        self.assertIsNone(self.stored(ALICE.peer_id))
        # Gone, it is still protected for the window: no unsigned comeback, no replay.
        code, _ = yield self.publish({"type": "online", "peerId": ALICE.peer_id, "content": "x"})
        self.assertEqual(code, 403)
        code, _ = yield self.publish(online)
        self.assertEqual(code, 403)
        self.assertIsNone(self.stored(ALICE.peer_id))

    @defer.inlineCallbacks
    def test_events_carry_the_signature(self) -> None:
        self.start()
        message = signed_by(ALICE, "online", self.now_ms(), content="alice")
        yield self.publish(message)
        r = yield self.get("/events")
        # The snapshot's event for alice, as a subscriber receives it.
        frame = yield _first_data_line(r)
        relayed = json.loads(frame)
        self.assertEqual(relayed["sig"], message.sig)
        self.assertEqual(relayed["ts"], message.ts)
        self.assertTrue(relayed["verified"])

    @defer.inlineCallbacks
    def test_unsigned_goop2_peers_work_unless_signatures_are_required(self) -> None:
        self.start()
        code, _ = yield self.publish({"type": "online", "peerId": GOOP2, "content": "g"})
        self.assertEqual(code, 204)
        code, _ = yield self.publish({"type": "offline", "peerId": GOOP2})
        self.assertEqual(code, 204)
        yield self.service.stopService()

        self.start(require_signed=True)
        code, why = yield self.publish({"type": "online", "peerId": GOOP2, "content": "g"})
        self.assertEqual(code, 403)
        self.assertIn("requires signed presence", why)
        self.assertIsNone(self.stored(GOOP2))
        code, _ = yield self.publish(signed_by(BOB, "online", self.now_ms()))
        self.assertEqual(code, 204)

    @defer.inlineCallbacks
    def test_a_hijacking_socket_neither_replaces_nor_evicts_a_signed_peer(self) -> None:
        """Someone opens /ws?peer_id=<alice> and closes it: alice stays, on her socket."""
        self.start()
        t = self.now_ms()
        yield self.publish(signed_by(ALICE, "online", t, content="alice"))
        alice = yield self.peer(ALICE.peer_id, publish=False)
        alice.send_json(signed_by(ALICE, "update", t + 1, content="alice").to_dict())
        sockets = self.service.web.ws.sockets
        yield alice.wait_for(lambda: bool(alice.of_type("update", ALICE.peer_id)))
        mine = sockets[ALICE.peer_id]

        thief = yield self.peer(ALICE.peer_id, publish=False)
        thief.send_json({"type": "update", "peerId": ALICE.peer_id, "content": "pwned"})
        thief.send_json(replace(signed_by(ALICE, "update", t + 2), content="pwned").to_dict())
        watcher = yield self.peer(BOB.peer_id, query="", publish=True)
        self.assertIs(sockets[ALICE.peer_id], mine, "the thief's socket did not take over")
        thief.transport.abortConnection()
        yield thief.closed
        # A later event proves the server has handled the close before we look.
        yield self.publish({"type": "update", "peerId": BOB.peer_id, "content": "marker"})
        yield watcher.wait_for(lambda: any(
            e.get("content") == "marker" for e in watcher.of_type("update", BOB.peer_id)))
        self.assertEqual(watcher.of_type("offline", ALICE.peer_id), [])
        self.assertEqual(self.stored(ALICE.peer_id).content, "alice")  # type: ignore[union-attr]
        self.assertFalse(alice.closed.called)
        self.assertGreaterEqual(self.service.web.ws.frames_skipped, 2)

        # Alice's own new socket takes over once it has sent a signed frame.
        second = yield self.peer(ALICE.peer_id, publish=False)
        self.assertIs(sockets[ALICE.peer_id], mine)
        second.send_json(signed_by(ALICE, "update", t + 3, content="alice").to_dict())
        yield alice.closed.addTimeout(10, reactor)
        self.assertIsNot(sockets[ALICE.peer_id], mine)


class SignedKeyDirectoryTests(WsTestCase):
    @defer.inlineCallbacks
    def post_key(self, peer_id: str, key: str) -> Any:
        r = yield treq.post(
            f"http://{self.base}/api/encryption/keys",
            data=json.dumps({"peer_id": peer_id, "public_key": key}).encode(),
            pool=self.pool,
        )
        yield r.content()
        return r.code

    @defer.inlineCallbacks
    def get_key(self, peer_id: str) -> Any:
        r = yield self.get(f"/api/encryption/keys/{peer_id}")
        body = yield r.json()
        return body.get("public_key")

    @defer.inlineCallbacks
    def test_only_the_key_a_signed_peer_signed(self) -> None:
        """A key posted before the peer signed is not served once it signs; another key
        for it is refused (403); the one it signed is taken and served."""
        self.start()
        self.assertEqual((yield self.post_key(ALICE.peer_id, "planted-by-someone")), 201)
        message = signed_by(ALICE, "online", int(reactor.seconds() * 1000), public_key="K1")
        r = yield self.post(message.to_dict())
        self.assertEqual(r.code, 204)
        self.assertEqual((yield self.get_key(ALICE.peer_id)), "K1")
        self.assertEqual((yield self.post_key(ALICE.peer_id, "K2")), 403)
        self.assertEqual((yield self.post_key(ALICE.peer_id, "K1")), 201)
        self.assertEqual((yield self.get_key(ALICE.peer_id)), "K1")
        # A peer that does not sign keeps goop2's rules.
        self.assertEqual((yield self.post_key(GOOP2, "G")), 201)
        self.assertEqual((yield self.get_key(GOOP2)), "G")


def _first_data_line(response: Any) -> defer.Deferred[str]:
    """The first ``data:`` line of an SSE response body."""
    from twisted.internet.protocol import Protocol

    found: defer.Deferred[str] = defer.Deferred()

    class Reader(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            for line in self.buf.split(b"\n"):
                if line.startswith(b"data: ") and not found.called:
                    found.callback(line[6:].decode())
                    assert self.transport is not None
                    self.transport.loseConnection()

    response.deliverBody(Reader())
    from twisted.internet import reactor

    return found.addTimeout(10, reactor)


class PolicyTests(SynchronousTestCase):
    """The rules alone, with time passed in."""

    def test_memory_is_bounded_by_the_window_and_a_cap(self) -> None:
        policy = SignaturePolicy(window=120, max_remembered=3)
        for n in range(5):
            identity = _from_seed(bytes([n + 10]) * 32, "")
            message = signed_by(identity, "online", 1_000_000 + n)
            policy.check(message, 0, 1000.0)
            policy.accepted(message, 1000.0)
        self.assertEqual(len(policy), 3)
        late = signed_by(ALICE, "online", 1_000_000 + 121_000)
        policy.check(late, 0, 1121.0)
        self.assertEqual(len(policy), 0, "all older than the window are forgotten")

    def test_a_stored_signed_ts_counts_as_the_last_accepted(self) -> None:
        """Another instance (shared store) accepted ts 10: 10 again is a replay here."""
        policy = SignaturePolicy()
        with self.assertRaises(SignatureRefused):
            policy.check(signed_by(ALICE, "update", 10_000), 10_000, 10.0)
        with self.assertRaises(SignatureRefused):
            policy.check(PresenceMessage("update", ALICE.peer_id, ts=11_000), 10_000, 10.0)
        self.assertTrue(policy.check(signed_by(ALICE, "update", 10_001), 10_000, 10.0))
        self.assertEqual(policy.refused, 2)
