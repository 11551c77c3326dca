"""The rendezvous link's state machine (/ws or /events + POST), with a Clock and fakes.

No sockets: a fake connector hands out dials the test answers (open, HTTP
status, connection failure, drop), a fake POST channel records publishes
and a fake SSE consumer records what it is told. The goop2 frames are
written by hand from GOOP2-PROTOCOL.md (§1, §2, §5), not taken from goop2.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from goop.message import PresenceMessage
from goop.peertable import PeerTable
from goop.presence.consumer import EventStreamConsumer
from goop.presence.link import (
    MAX_DIAL_FAILURES,
    PROBE_EVERY,
    PROBE_FIRST,
    PROBE_TIMEOUT,
    STABLE,
    RendezvousLink,
)
from goop.presence.wsclient import HandshakeRefused, ws_url

ME = "12D3KooWGoopPeerUnderTestAAAAAAAAAAAAAAAAAAAAAAAAA"
G2 = "12D3KooWGoop2PeerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
OTHER = "12D3KooWSomeoneElseCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
BASE = "http://rv.example:8787"

# GOOP2-PROTOCOL.md §1: what a goop2 peer publishes (and a server relays, verified set).
GOOP2_ONLINE = {
    "type": "online", "peerId": G2, "content": "E", "addrs": ["/ip4/10.0.0.5/tcp/4001"],
    "publicKey": "bmFjbA==", "encryptionSupported": True, "goopClientVersion": "dev",
    "ts": 1796203421127, "verified": True,
}
# §2: the server's offline on expiry or a closed socket: nothing but type, peerId, ts.
GOOP2_EXPIRED = {"type": "offline", "peerId": G2, "ts": 1796203451127}
# §5: a punch hint, for us and (broadcast by goop2) for someone else.
PUNCH_FOR_ME = {
    "type": "punch", "peerId": G2, "target": ME, "addrs": ["/ip4/10.0.0.5/tcp/4001"],
    "ts": 1796203421130,
}
PUNCH_FOR_OTHER = {**PUNCH_FOR_ME, "target": OTHER}


def frame(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Highest(random.Random):
    """Jitter always at its top (factor 1), so backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.open = True
        self.closed = False

    def send(self, data: bytes) -> bool:
        if not self.open:
            return False
        self.sent.append(data)
        return True

    def close(self) -> Deferred[None]:
        self.open = False
        self.closed = True
        return succeed(None)


class Dial:
    def __init__(self, url: str, on_frame: Any, on_closed: Any, timeout: float, at: float) -> None:
        self.url = url
        self.on_frame = on_frame
        self.on_closed = on_closed
        self.timeout = timeout
        self.at = at
        self.deferred: Deferred[Any] = Deferred()
        self.socket: FakeSocket | None = None

    def open(self) -> FakeSocket:
        self.socket = FakeSocket()
        self.deferred.callback(self.socket)
        return self.socket

    def refuse(self, status: int) -> None:
        self.deferred.errback(HandshakeRefused(status, "nope"))

    def fail(self) -> None:
        self.deferred.errback(Failure(ConnectionRefusedError("refused")))

    def drop(self, why: str = "connection lost") -> None:
        assert self.socket is not None
        self.socket.open = False
        self.on_closed(why)


class FakeConnector:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.dials: list[Dial] = []

    def dial(self, url: str, on_frame: Any, on_closed: Any, timeout: float) -> Deferred[Any]:
        d = Dial(url, on_frame, on_closed, timeout, self.clock.seconds())
        self.dials.append(d)
        return d.deferred

    def peer_dials(self) -> list[Dial]:
        return [d for d in self.dials if "peer_id=" in d.url]

    def probes(self) -> list[Dial]:
        return [d for d in self.dials if "probe=1" in d.url]


class FakePost:
    name = "wan"
    url = BASE

    def __init__(self) -> None:
        self.sent: list[tuple[PresenceMessage, Deferred[None]]] = []

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.sent.append((message, d))
        return d

    def answer(self, ok: bool = True) -> None:
        """Answer every POST still waiting."""
        for _, d in self.sent:
            if not d.called:
                if ok:
                    d.callback(None)
                else:
                    d.errback(ConnectionRefusedError("refused"))
                    d.addErrback(lambda f: None)


class FakeSse(Service):
    def __init__(self, on_message: Any, on_managed: Any, on_punch: Any) -> None:
        self.on_message = on_message
        self.on_managed = on_managed
        self.on_punch = on_punch
        self.connected = False
        self.starts = 0
        self.stops = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.starts += 1

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.stops += 1


class LinkTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector(self.clock)
        self.post = FakePost()
        self.sses: list[FakeSse] = []
        self.table = PeerTable(ME, ttl=20)
        self.punches: list[PresenceMessage] = []
        self.link = RendezvousLink(
            self.clock,
            self.post,
            ME,
            self.connector,
            self.make_sse,
            lambda m: self.table.observe("wan", m, self.clock.seconds()),
            self.managed,
            on_punch=self.punches.append,
            rng=Highest(),
        )
        self.managed_calls: list[bool] = []

    def make_sse(self, on_message: Any, on_managed: Any, on_punch: Any) -> FakeSse:
        sse = FakeSse(on_message, on_managed, on_punch)
        self.sses.append(sse)
        return sse

    def managed(self, on: bool, now: float) -> None:
        self.managed_calls.append(on)
        if on:
            self.table.manage("wan", now)
        else:
            self.table.unmanage("wan", now)

    def start_published(self) -> Dial:
        """Start, publish online (answered 204): the first /ws dial."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5)
        self.post.answer()
        return self.connector.peer_dials()[-1]

    def start_on_ws(self) -> FakeSocket:
        return self.start_published().open()

    def start_on_sse(self) -> FakeSse:
        self.start_published().refuse(404)
        return self.sses[-1]


class StartTests(LinkTestCase):
    def test_no_dial_until_the_first_publish_has_an_outcome(self) -> None:
        """goop2's server answers 425 to a /ws of a peer it does not know: the link
        publishes online by POST first and dials only when that POST is answered."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5)
        self.clock.advance(10)
        self.assertEqual(self.connector.dials, [])
        self.assertEqual(self.link.state, "idle")
        self.post.answer()
        [dial] = self.connector.dials
        self.assertEqual(dial.url, f"ws://rv.example:8787/ws?peer_id={ME}&changes=1")
        self.assertEqual(dial.timeout, 5.0)
        self.assertEqual(self.link.state, "dialing")

    def test_a_failed_first_publish_still_dials(self) -> None:
        """A refused POST is an outcome too: the link dials (and learns what /ws says)."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5).addErrback(lambda f: None)
        self.post.answer(ok=False)
        self.assertEqual(len(self.connector.peer_dials()), 1)

    def test_ws_url_follows_the_scheme(self) -> None:
        """http → ws, https → wss, same host, port and path (no wss guess for http)."""
        self.assertEqual(ws_url("http://10.0.0.1:8787", "probe=1"), "ws://10.0.0.1:8787/ws?probe=1")
        self.assertEqual(
            ws_url("https://rv.example/goop/", "probe=1"), "wss://rv.example/goop/ws?probe=1"
        )


class WebSocketTests(LinkTestCase):
    def test_frames_feed_the_table_and_the_source_is_managed(self) -> None:
        """Frames on the open socket reach the table as source ``wan``, whose departures
        the server reports (the table is told the source is managed)."""
        sock = self.start_on_ws()
        dial = self.connector.peer_dials()[0]
        self.assertEqual(self.link.state, "ws")
        self.assertTrue(self.link.connected)
        self.assertEqual(self.managed_calls, [True])
        dial.on_frame(frame(GOOP2_ONLINE))
        view = self.table.get(G2)
        assert view is not None
        self.assertEqual(view.sources, ["wan"])
        self.assertEqual(view.message.goop_client_version, "dev")
        self.assertTrue(view.message.verified)
        self.assertEqual(view.message.addrs, ("/ip4/10.0.0.5/tcp/4001",))
        # Managed: no TTL expiry while the socket is up; the server's offline removes it.
        self.table.expire(self.clock.seconds() + 100)
        self.assertIn(G2, self.table)
        dial.on_frame(frame(GOOP2_EXPIRED))
        self.assertNotIn(G2, self.table)
        self.assertEqual(sock.sent, [])

    def test_heartbeats_go_as_frames_while_open_and_by_post_when_not(self) -> None:
        """With the socket open, updates are text frames (no POST); once it is gone,
        they go by POST again."""
        sock = self.start_on_ws()
        posts = len(self.post.sent)
        update = PresenceMessage("update", ME, "me", ts=5)
        d = self.link.channel.send(update, 5)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(sock.sent, [update.encode()])
        self.assertEqual(len(self.post.sent), posts)
        self.connector.peer_dials()[0].drop()
        self.link.channel.send(PresenceMessage("update", ME, "me", ts=6), 5)
        self.assertEqual(self.post.sent[-1][0].ts, 6)
        self.assertEqual(len(sock.sent), 1)

    def test_a_socket_that_refuses_to_send_falls_back_to_post(self) -> None:
        """A socket already closing (send returns False) never swallows a heartbeat."""
        sock = self.start_on_ws()
        sock.open = False
        self.link.channel.send(PresenceMessage("update", ME, "me", ts=7), 5)
        self.assertEqual(self.post.sent[-1][0].ts, 7)

    def test_punch_hints_for_us_are_handed_on_others_skipped(self) -> None:
        """A punch naming us as target goes to the punch handler; goop2's broadcast
        hints for others are skipped quietly; neither touches the table."""
        self.start_on_ws()
        dial = self.connector.peer_dials()[0]
        dial.on_frame(frame(PUNCH_FOR_ME))
        dial.on_frame(frame(PUNCH_FOR_OTHER))
        self.assertEqual([p.target for p in self.punches], [ME])
        self.assertEqual(self.punches[0].addrs, ("/ip4/10.0.0.5/tcp/4001",))
        self.assertEqual(len(self.table), 0)

    def test_bad_frames_are_counted_logged_and_skipped(self) -> None:
        """Not JSON, not a message, a wrong type: skipped; the next good frame arrives."""
        self.start_on_ws()
        dial = self.connector.peer_dials()[0]
        with capturedLogs() as events:
            dial.on_frame(b"not json")
            dial.on_frame(b'{"type":"nope","peerId":"x"}')
            dial.on_frame(b'{"type":"online","peerId":"x","addrs":"oops"}')
            dial.on_frame(frame(GOOP2_ONLINE))
        self.assertEqual(self.link.bad_frames, 3)
        self.assertIn(G2, self.table)
        self.assertEqual(sum("ignoring a bad frame" in formatEvent(e) for e in events), 3)


class TooEarlyTests(LinkTestCase):
    def test_425_redials_as_soon_as_a_publish_succeeds(self) -> None:
        """425 means "publish first": the next successful POST redials at once."""
        self.start_published().refuse(425)
        self.assertEqual(self.link.state, "waiting")
        self.link.channel.send(PresenceMessage("update", ME, "me"), 5)
        self.post.answer()
        self.assertEqual(len(self.connector.peer_dials()), 2)
        self.assertEqual(self.connector.peer_dials()[1].at, 0)

    def test_425_redials_shortly_even_without_a_publish(self) -> None:
        """... or after a short backoff (0.25 s, doubling) if no POST comes first."""
        self.start_published().refuse(425)
        self.clock.advance(0.24)
        self.assertEqual(len(self.connector.peer_dials()), 1)
        self.clock.advance(0.01)
        self.connector.peer_dials()[1].refuse(425)
        self.clock.advance(0.5)
        self.assertEqual([d.at for d in self.connector.peer_dials()], [0, 0.25, 0.75])
        self.assertEqual(self.sses, [])

    def test_425_while_publishing_fails_listens_over_sse(self) -> None:
        """The server will not take our publishes (three 425s while POSTs fail): we still
        hear everyone, over /events. Fewer is a start-up race and is just redialled."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5).addErrback(lambda f: None)
        self.post.answer(ok=False)
        for _ in range(MAX_DIAL_FAILURES - 1):
            self.connector.peer_dials()[-1].refuse(425)
            self.assertEqual(self.link.state, "waiting")
            self.clock.advance(4)
        self.connector.peer_dials()[-1].refuse(425)
        self.assertEqual(self.link.state, "sse")
        self.assertEqual(len(self.sses), 1)

    def test_server_up_late_its_first_425_waits_for_our_publish(self) -> None:
        """Server down at start (POST and dial fail), then up: a 425 before our POST
        retry lands is followed by /ws as soon as that POST succeeds, not by SSE."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5).addErrback(lambda f: None)
        self.post.answer(ok=False)
        self.connector.peer_dials()[0].fail()
        self.clock.advance(0.25)
        self.connector.peer_dials()[1].refuse(425)
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5)
        self.post.answer()
        self.connector.peer_dials()[2].open()
        self.assertEqual(self.link.state, "ws")
        self.assertEqual(self.sses, [])


class FallbackTests(LinkTestCase):
    def test_404_and_other_answers_use_sse_and_post(self) -> None:
        """404, 400, 403, 501, 500: /events carries presence in, POST carries ours out."""
        for status in (404, 400, 403, 501, 500):
            self.setUp()
            sse = self.start_on_sse() if status == 404 else None
            if sse is None:
                self.start_published().refuse(status)
                sse = self.sses[-1]
            self.assertEqual(self.link.state, "sse", status)
            self.assertEqual(sse.starts, 1)
            self.link.channel.send(PresenceMessage("update", ME, "me", ts=9), 5)
            self.assertEqual(self.post.sent[-1][0].ts, 9)
            self.link.stopService()

    def test_sse_events_feed_the_table_with_its_own_managed_mode(self) -> None:
        """The SSE consumer's messages, managed mode and punches pass through while it
        is the current stream."""
        sse = self.start_on_sse()
        sse.on_managed(True, 0.0)
        sse.on_message(PresenceMessage("online", G2, "E"))
        sse.on_punch(PresenceMessage("punch", G2, target=ME))
        self.assertIn(G2, self.table)
        self.assertEqual(self.managed_calls, [True])
        self.assertEqual(len(self.punches), 1)

    def test_probe_after_3s_then_every_10s(self) -> None:
        """On SSE, /ws?probe=1 is tried after 3 s, then every 10 s while it fails,
        each with a 2 s timeout."""
        self.start_on_sse()
        self.clock.advance(PROBE_FIRST - 0.01)
        self.assertEqual(self.connector.probes(), [])
        self.clock.advance(0.01)
        [probe] = self.connector.probes()
        self.assertEqual(probe.url, "ws://rv.example:8787/ws?probe=1")
        self.assertEqual(probe.timeout, PROBE_TIMEOUT)
        probe.refuse(404)
        self.clock.advance(PROBE_EVERY)
        self.connector.probes()[1].fail()
        self.clock.advance(PROBE_EVERY)
        self.assertEqual(
            [d.at for d in self.connector.probes()],
            [PROBE_FIRST, PROBE_FIRST + PROBE_EVERY, PROBE_FIRST + 2 * PROBE_EVERY],
        )
        self.assertEqual(len(self.connector.peer_dials()), 1)

    def test_probe_101_switches_to_ws_without_a_gap_and_never_both(self) -> None:
        """A probe that upgrades leads to a dial while SSE keeps feeding; when the socket
        opens SSE is stopped and anything it still says is dropped."""
        sse = self.start_on_sse()
        sse.on_managed(True, 0.0)
        self.clock.advance(PROBE_FIRST)
        probe_sock = self.connector.probes()[0].open()
        self.assertTrue(probe_sock.closed, "the probe socket is closed at once")
        dial = self.connector.peer_dials()[1]
        self.assertTrue(sse.running, "SSE runs until the socket is open")
        sse.on_message(PresenceMessage("online", G2, "still via sse"))
        self.assertIn(G2, self.table)
        dial.open()
        self.assertFalse(sse.running)
        self.assertEqual(self.link.state, "ws")
        self.assertEqual(self.managed_calls, [True, False, True])
        sse.on_message(PresenceMessage("online", OTHER, "late sse event"))
        sse.on_managed(False, 1.0)
        sse.on_punch(PresenceMessage("punch", OTHER, target=ME))
        self.assertNotIn(OTHER, self.table)
        self.assertEqual(self.managed_calls, [True, False, True])
        self.assertEqual(self.punches, [])
        dial.on_frame(frame({**GOOP2_ONLINE, "peerId": OTHER}))
        self.assertIn(OTHER, self.table)

    def test_dial_refused_after_a_good_probe_keeps_sse(self) -> None:
        """The probe upgrades but our dial is refused (e.g. 429): SSE goes on
        undisturbed and the next probe is 10 s later."""
        sse = self.start_on_sse()
        self.clock.advance(PROBE_FIRST)
        self.connector.probes()[0].open()
        self.connector.peer_dials()[1].refuse(429)
        self.assertTrue(sse.running)
        self.assertEqual((sse.starts, sse.stops), (1, 0))
        self.assertEqual(len(self.sses), 1)
        self.clock.advance(PROBE_EVERY)
        self.assertEqual(len(self.connector.probes()), 2)

    def test_failed_dials_while_posts_work_fall_back_to_sse(self) -> None:
        """A proxy that breaks upgrades: after 3 dials fail without an HTTP answer while
        POSTs succeed, presence comes over /events (and /ws is probed)."""
        self.start_published().fail()
        for _ in range(MAX_DIAL_FAILURES - 1):
            self.assertEqual(self.link.state, "waiting")
            self.clock.advance(4)
            self.connector.peer_dials()[-1].fail()
        self.assertEqual(len(self.connector.peer_dials()), MAX_DIAL_FAILURES)
        self.assertEqual(self.link.state, "sse")

    def test_failed_dials_while_posts_fail_keep_retrying_ws(self) -> None:
        """Server unreachable altogether: /ws is redialled with backoff, no SSE."""
        self.link.startService()
        self.link.channel.send(PresenceMessage("online", ME, "me"), 5).addErrback(lambda f: None)
        self.post.answer(ok=False)
        for _ in range(6):
            self.connector.peer_dials()[-1].fail()
            self.clock.advance(4)
        self.assertEqual(self.sses, [])
        self.assertEqual(len(self.connector.peer_dials()), 7)


class LogTests(LinkTestCase):
    def test_a_failing_streak_is_logged_once_with_its_reason(self) -> None:
        """Dials that time out: one warning naming the URL and the reason, not one per try."""
        with capturedLogs() as events:
            self.start_published().deferred.errback(TimeoutError(5.0, "Deferred"))
            for _ in range(2):
                self.clock.advance(4)
                self.connector.peer_dials()[-1].deferred.errback(TimeoutError(5.0, "Deferred"))
        lines = [formatEvent(e) for e in events if "cannot subscribe" in formatEvent(e)]
        self.assertEqual(lines, [f"cannot subscribe to {BASE}/ws (no answer within 5s); "
                                 "retrying with backoff"])


class ReconnectTests(LinkTestCase):
    def test_lost_socket_reannounces_and_redials_with_capped_backoff(self) -> None:
        """A dropped socket: the source is no longer managed, our presence is POSTed at
        once (the server dropped us with the socket), and /ws is redialled after
        0.25, 0.5, 1, 2, 4, 4 s while it keeps failing."""
        self.start_on_ws()
        self.link.channel.send(PresenceMessage("update", ME, "me", ts=1), 5)
        posts = len(self.post.sent)
        self.connector.peer_dials()[0].drop()
        self.assertEqual(self.managed_calls, [True, False])
        self.assertEqual(len(self.post.sent), posts + 1)
        again = self.post.sent[-1][0]
        self.assertEqual((again.type, again.content), ("update", "me"))
        self.post.answer(ok=False)  # the server is gone
        gaps = []
        for _ in range(6):
            [call] = self.clock.getDelayedCalls()
            gaps.append(call.getTime() - self.clock.seconds())
            self.clock.advance(gaps[-1])
            self.connector.peer_dials()[-1].fail()
        self.assertEqual(gaps, [0.25, 0.5, 1.0, 2.0, 4.0, 4.0])

    def test_a_socket_that_lasted_resets_the_backoff(self) -> None:
        """After a socket that stayed up STABLE seconds, the redial is quick again."""
        self.start_published().fail()
        self.clock.advance(0.25)
        self.connector.peer_dials()[-1].fail()
        self.clock.advance(0.5)
        self.connector.peer_dials()[-1].open()
        self.clock.advance(STABLE)
        self.connector.peer_dials()[-1].drop()
        dials = len(self.connector.peer_dials())
        self.clock.advance(0.25)
        self.assertEqual(len(self.connector.peer_dials()), dials + 1)

    def test_no_reannounce_after_our_offline(self) -> None:
        """Having said offline (stopping), a lost socket does not publish us again."""
        self.start_on_ws()
        self.link.channel.send(PresenceMessage("offline", ME, "me"), 5)
        posts = len(self.post.sent)
        self.connector.peer_dials()[0].drop()
        self.assertEqual(len(self.post.sent), posts)


class StopTests(LinkTestCase):
    def test_stop_closes_the_socket_and_stops_timers(self) -> None:
        """Stop: Close on the socket, the source unmanaged, no dial afterwards."""
        sock = self.start_on_ws()
        d = self.link.stopService()
        assert d is not None
        self.successResultOf(d)
        self.assertTrue(sock.closed)
        self.assertEqual(self.managed_calls, [True, False])
        self.connector.peer_dials()[0].on_closed("closed")
        self.clock.advance(100)
        self.assertEqual(len(self.connector.dials), 1)

    def test_stop_while_dialling_or_on_sse(self) -> None:
        """A dial in flight is cancelled; an SSE consumer is stopped; nothing restarts."""
        self.start_published()
        self.link.stopService()
        self.assertTrue(self.connector.peer_dials()[0].deferred.called)
        self.setUp()
        sse = self.start_on_sse()
        self.link.stopService()
        self.assertFalse(sse.running)
        self.clock.advance(100)
        self.assertEqual(self.connector.probes(), [])

    def test_offline_goes_over_the_socket_before_it_closes(self) -> None:
        """The publisher's offline at stop (before the link stops) is a frame."""
        sock = self.start_on_ws()
        offline = PresenceMessage("offline", ME, "me", ts=3)
        self.successResultOf(self.link.channel.send(offline, 1.5))
        self.link.stopService()
        self.assertEqual(sock.sent, [offline.encode()])


class SseUrlTests(SynchronousTestCase):
    def test_events_url_names_our_peer(self) -> None:
        """/events?changes=1&peer_id=<id>: a goop server sends that stream our punch hints."""
        asked: list[str] = []

        class Http:
            def get(self, url: str, **kw: Any) -> Deferred[Any]:
                asked.append(url)
                return Deferred()

        c = EventStreamConsumer(Clock(), lambda: BASE, lambda m: None, Http(), self_id=ME)
        c.startService()
        self.assertEqual(asked, [f"{BASE}/events?changes=1&peer_id={ME}"])
