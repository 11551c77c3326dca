"""goop2's side endpoints and message rules on /publish, on the real HTTP stack in memory."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.message import PresenceMessage
from goop.presence.consumer import deliver
from goop.rendezvous.keys import GRACE, KeyDirectory, KeyRefused, parse_key_post
from goop.rendezvous.punch import PunchPlanner, brings_new_addrs
from tests.inmemory import InMemoryServer
from tests.test_message import GOOP2_FULL_UPDATE, GOOP2_ONLINE

A = "12D3KooWEx4mpLe"


class PublishGoop2Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = InMemoryServer()

    def test_goop2_online_and_full_update_get_204_and_are_relayed_stamped(self) -> None:
        """Every message a goop2 peer sends is accepted; the stream carries addrs and
        publicKey, verified set by the server, never the token."""
        sub = self.server.subscribe()
        for body in (GOOP2_ONLINE, GOOP2_FULL_UPDATE):
            r = self.server.request("POST", "/publish", body)
            self.assertEqual(r.status, 204, r.body)
        self.server.clock.advance(0)
        relayed = [json.loads(e.data) for e in sub.events()]
        self.assertEqual([m["type"] for m in relayed], ["online", "update"])
        self.assertTrue(all(m["verified"] is True for m in relayed))
        self.assertEqual(relayed[0]["addrs"], ["/ip4/10.0.0.5/tcp/4001"])
        self.assertEqual(relayed[1]["activeTemplate"], "blog")
        self.assertNotIn("verificationToken", relayed[1])

    def test_a_client_cannot_post_a_punch(self) -> None:
        """type punch on /publish: 400, nothing stored."""
        r = self.server.request(
            "POST", "/publish", b'{"type":"punch","peerId":"x","target":"y","addrs":["/a"]}'
        )
        self.assertEqual(r.status, 400)
        self.assertIn("punch", r.json()["error"])
        self.assertEqual(len(self.server.board.registry), 0)

    def test_a_clients_verified_false_is_overwritten(self) -> None:
        """The server's verified wins over whatever the client claimed."""
        self.server.publish(peerId=A, verified=False)
        self.assertTrue(self.server.board.registry.get(A).message.verified)

    def test_rate_limit_answers_with_a_reason_phrase(self) -> None:
        """429 says Too Many Requests, not "Unknown Status"."""
        server = InMemoryServer(publish_rate_limit=1)
        server.publish(peerId=A)
        conn = server.connect()
        conn.send("POST", "/publish", json.dumps({"type": "update", "peerId": A}).encode())
        self.assertIn(b"429 Too Many Requests", conn.transport.value())


class KeyDirectoryHttpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = InMemoryServer()

    def post_key(self, body: object, headers: dict[str, str] | None = None) -> object:
        return self.server.request(
            "POST", "/api/encryption/keys", json.dumps(body).encode(), headers=headers
        )

    def test_post_then_get(self) -> None:
        """goop2's shapes: POST {peer_id, public_key} is 201; GET returns {public_key}."""
        r = self.post_key({"peer_id": A, "public_key": "bmFj"}, {"X-Goop-PeerID": A})
        self.assertEqual(r.status, 201)  # type: ignore[attr-defined]
        r = self.server.request("GET", f"/api/encryption/keys/{A}")
        self.assertEqual((r.status, r.json()), (200, {"public_key": "bmFj"}))

    def test_unknown_peer_is_404(self) -> None:
        """No key: 404 (goop2 peers treat it as 'no key')."""
        r = self.server.request("GET", "/api/encryption/keys/nobody")
        self.assertEqual(r.status, 404)
        self.assertIn("error", r.json())

    def test_the_key_in_presence_answers_first(self) -> None:
        """A peer's current publicKey (sent every heartbeat) is the answer even unposted."""
        self.server.publish(peerId=A, publicKey="from-presence")
        r = self.server.request("GET", f"/api/encryption/keys/{A}")
        self.assertEqual(r.json(), {"public_key": "from-presence"})

    def test_bad_posts(self) -> None:
        """Missing fields, oversize keys, a header for another peer, bad JSON: 4xx JSON."""
        self.assertEqual(self.post_key({"peer_id": A}).status, 400)  # type: ignore[attr-defined]
        r = self.post_key({"peer_id": A, "public_key": "k" * 2000})
        self.assertEqual(r.status, 400)  # type: ignore[attr-defined]
        r = self.post_key({"peer_id": A, "public_key": "k"}, {"X-Goop-PeerID": "other"})
        self.assertEqual(r.status, 403)  # type: ignore[attr-defined]
        r = self.server.request("POST", "/api/encryption/keys", b"{nope")
        self.assertEqual(r.status, 400)
        r = self.server.request("GET", "/api/encryption/keys")
        self.assertEqual(r.status, 405)

    def test_capabilities_and_no_relay(self) -> None:
        """GET /api/capabilities is truthful; /relay is 404 until a relay exists."""
        r = self.server.request("GET", "/api/capabilities")
        self.assertEqual(
            r.json(),
            {"encryption": True, "registration": False, "credits": False, "templates": False,
             "bridge": False, "relay": False},
        )
        self.assertEqual(self.server.request("GET", "/relay").status, 404)


class KeyDirectoryTests(SynchronousTestCase):
    def test_full_directory_prunes_then_refuses_with_503(self) -> None:
        """At max_keys, stale keys of absent peers make room; if none are stale, 503."""
        keys = KeyDirectory(max_keys=2)
        keys.put("a", "1", 0.0, set())
        keys.put("b", "2", 0.0, set())
        with self.assertRaises(KeyRefused) as caught:
            keys.put("c", "3", 1.0, set())
        self.assertEqual(caught.exception.status, 503)
        keys.put("c", "3", GRACE, {"b"})  # a is stale and absent: dropped
        self.assertEqual((keys.get("a"), keys.get("b"), keys.get("c")), (None, "2", "3"))

    def test_online_peers_keep_their_keys(self) -> None:
        """prune drops only keys of peers that are gone and past the grace period."""
        keys = KeyDirectory()
        keys.put("a", "1", 0.0, set())
        keys.put("b", "2", 0.0, set())
        self.assertEqual(keys.prune(GRACE, {"a"}), 1)
        self.assertEqual((keys.get("a"), keys.get("b")), ("1", None))

    @given(st.dictionaries(st.text(max_size=5), st.none() | st.text() | st.integers()))
    def test_any_post_body_is_a_pair_or_a_clear_refusal(self, body: dict[str, object]) -> None:
        """The key post validator never raises anything but KeyRefused."""
        try:
            peer, key = parse_key_post(body, "")
        except KeyRefused as e:
            self.assertIn(e.status, (400, 403))
        else:
            self.assertTrue(peer.strip() and key.strip())


def _peer(peer_id: str, *addrs: str) -> PresenceMessage:
    return PresenceMessage("update", peer_id, addrs=addrs)


class PunchPlannerTests(SynchronousTestCase):
    def test_pairs_both_ways_then_cooldown(self) -> None:
        """Each reachable side of a pair gets one hint; within 60 s none; after, again."""
        planner = PunchPlanner()
        a = _peer("a", "/ip4/1.1.1.1/tcp/1")
        others = [_peer("b", "/ip4/2.2.2.2/tcp/1"), _peer("c"), a]
        plan = planner.plan(a, others, {"a", "b", "c"}, 100.0)
        self.assertEqual(
            sorted((to, m.peer_id, m.target, m.addrs) for to, m in plan),
            [("a", "b", "a", ("/ip4/2.2.2.2/tcp/1",)), ("b", "a", "b", ("/ip4/1.1.1.1/tcp/1",))],
        )
        self.assertEqual(planner.plan(a, others, {"a", "b"}, 159.0), [])
        planner.prune(160.0)
        self.assertEqual(len(planner), 0)
        self.assertEqual(len(planner.plan(a, others, {"a", "b"}, 160.0)), 2)

    def test_unreachable_peers_get_nothing(self) -> None:
        """A peer with no /ws and no ?peer_id= stream is not hinted (goop2 would broadcast)."""
        planner = PunchPlanner()
        a = _peer("a", "/x")
        plan = planner.plan(a, [_peer("b", "/y")], {"a"}, 0.0)
        self.assertEqual([to for to, _ in plan], ["a"])

    @given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=10))
    def test_work_per_arrival_and_memory_are_bounded(self, n: int, cap: int) -> None:
        """At most max_pairs pairs per arrival; the cooldown table stops at its cap."""
        planner = PunchPlanner(max_pairs=cap, max_cooldowns=cap * 2)
        peers = [_peer(f"p{i}", f"/a{i}") for i in range(n)]
        for i, arriving in enumerate(peers):
            plan = planner.plan(arriving, peers, {p.peer_id for p in peers}, float(i))
            self.assertLessEqual(len(plan), 2 * cap)
            self.assertLessEqual(len(planner), cap * 2)

    def test_brings_new_addrs_is_goop2s_addrs_changed(self) -> None:
        """New peer or a different set (order ignored); empty sets and offlines never."""
        self.assertTrue(brings_new_addrs(_peer("a", "/x"), None))
        self.assertFalse(brings_new_addrs(_peer("a"), None))
        self.assertFalse(brings_new_addrs(_peer("a", "/x", "/y"), ("/y", "/x")))
        self.assertTrue(brings_new_addrs(_peer("a", "/x"), ("/y",)))
        gone = PresenceMessage("offline", "a", addrs=("/x",))
        self.assertFalse(brings_new_addrs(gone, None))


class ConsumerPunchTests(SynchronousTestCase):
    def test_only_punches_for_us_reach_the_punch_handler(self) -> None:
        """goop2 servers broadcast hints; a peer acts on its own and skips the rest quietly."""
        seen: list[str] = []
        hints: list[str] = []
        me = "me"
        for target in ("me", "someone-else"):
            punch = PresenceMessage("punch", "x", target=target, addrs=("/a",))
            deliver(punch, me, lambda m: seen.append(m.type), lambda m: hints.append(m.target))
        deliver(_peer("x"), me, lambda m: seen.append(m.type), None)
        self.assertEqual((seen, hints), (["update"], ["me"]))
