"""The replay ring, the peer registry's ordering, the SSE framing, and connect URLs."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop import netaddrs
from goop.message import PresenceMessage
from goop.rendezvous.eventlog import EventLog
from goop.rendezvous.registry import Change, PeerRegistry
from goop.sse import format_event
from goop.sseparse import SSEParser
from tests.strategies import presence_messages


class EventLogTests(SynchronousTestCase):
    def test_ids_are_consecutive_from_first_id(self) -> None:
        """Ids start at first_id and grow by one; head is the newest."""
        log = EventLog(first_id=100)
        self.assertEqual(log.head, 99)
        self.assertEqual([log.append("p", b"{}").id for _ in range(3)], [100, 101, 102])
        self.assertEqual(log.head, 102)

    def test_since_returns_exactly_the_missed_events(self) -> None:
        """since(n) is every event after n, in order; since(head) is empty."""
        log = EventLog(first_id=1)
        for i in range(10):
            log.append(f"p{i}", b"{}")
        self.assertEqual([e.id for e in log.since(6) or []], [7, 8, 9, 10])
        self.assertEqual(log.since(10), [])
        self.assertEqual([e.id for e in log.since(0) or []], list(range(1, 11)))

    def test_since_too_old_future_or_foreign_is_none(self) -> None:
        """An id the ring no longer covers, or never issued, asks for a snapshot."""
        log = EventLog(first_id=1, capacity=4)
        for _ in range(10):
            log.append("p", b"{}")
        self.assertIsNone(log.since(5))  # 6 was dropped
        self.assertEqual([e.id for e in log.since(6) or []], [7, 8, 9, 10])
        self.assertIsNone(log.since(11))

    @given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=200),
           st.integers(min_value=-5, max_value=260))
    @example(50, 5, -1)
    @example(4, 10, 5)
    def test_since_is_a_suffix_or_none(self, capacity: int, count: int, last: int) -> None:
        """Property: since() is None or exactly the ids last+1..head."""
        log = EventLog(first_id=1, capacity=capacity)
        for _ in range(count):
            log.append("p", b"{}")
        got = log.since(last)
        if got is not None:
            self.assertEqual([e.id for e in got], list(range(last + 1, log.head + 1)))
        else:
            # The oldest id still held is max(1, head - capacity + 1).
            self.assertTrue(last > log.head or last < max(0, log.head - capacity))

    def test_frame_is_the_sse_event_with_its_id(self) -> None:
        """Each event carries its SSE frame, encoded once."""
        e = EventLog(first_id=7).append("p", b'{"a":1}')
        self.assertEqual(e.frame, b'id: 7\ndata: {"a":1}\n\n')


class RegistryTests(SynchronousTestCase):
    def test_changes(self) -> None:
        """appeared, refreshed (ts only), changed, left, and ignored offline."""
        reg, log = PeerRegistry(), EventLog()

        def apply(m: PresenceMessage) -> Change:
            return reg.apply(m, log.append(m.peer_id, m.encode()), 0.0, 10)

        self.assertEqual(apply(PresenceMessage("online", "a", "x", ts=1)), Change.APPEARED)
        self.assertEqual(apply(PresenceMessage("update", "a", "x", ts=2)), Change.REFRESHED)
        self.assertEqual(apply(PresenceMessage("update", "a", "y", ts=3)), Change.CHANGED)
        self.assertEqual(apply(PresenceMessage("offline", "a")), Change.LEFT)
        self.assertEqual(apply(PresenceMessage("offline", "a")), Change.IGNORED)

    @given(st.lists(presence_messages(peer_ids=st.sampled_from("abcdef")), max_size=60))
    def test_snapshot_is_latest_state_per_online_peer_in_id_order(
        self, messages: list[PresenceMessage]
    ) -> None:
        """Property: the snapshot holds each online peer's latest event, sorted by id."""
        reg, log = PeerRegistry(), EventLog()
        latest: dict[str, int] = {}
        for m in messages:
            event = log.append(m.peer_id, m.encode())
            reg.apply(m, event, 0.0, 1)
            if m.type == "offline":
                latest.pop(m.peer_id, None)
            else:
                latest[m.peer_id] = event.id
        snap = reg.snapshot()
        self.assertEqual([e.id for e in snap], sorted(latest.values()))
        self.assertEqual({e.peer_id: e.id for e in snap}, latest)


class FramingTests(SynchronousTestCase):
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
           st.none() | st.integers(min_value=0, max_value=2**63))
    def test_any_text_frames_to_one_event(self, text: str, event_id: int | None) -> None:
        """Property: any text framed as an event parses back to one event with the
        text (line ends normalised to LF) and the id."""
        events = SSEParser().feed(format_event(text.encode(), event_id))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].data, text.replace("\r\n", "\n").replace("\r", "\n"))
        if event_id is not None:
            self.assertEqual(events[0].last_event_id, str(event_id))


class ConnectUrlTests(SynchronousTestCase):
    def test_loopback_bind_has_no_connect_urls(self) -> None:
        """A server bound to loopback is not reachable from elsewhere."""
        self.assertEqual(netaddrs.connect_urls("127.0.0.1", 8787), [])

    def test_specific_address_is_its_own_url(self) -> None:
        """Bound to one address, that address is the URL."""
        self.assertEqual(netaddrs.connect_urls("192.0.2.5", 80), ["http://192.0.2.5:80"])

    def test_wildcard_lists_non_loopback_interfaces(self) -> None:
        """Bound to 0.0.0.0: one URL per non-loopback IPv4 interface address."""
        self.patch(netaddrs, "interface_addresses",
                   lambda: ["127.0.0.1", "192.0.2.5", "fe80::1", "198.51.100.7", "::1"])
        self.assertEqual(
            netaddrs.connect_urls("0.0.0.0", 8787),
            ["http://192.0.2.5:8787", "http://198.51.100.7:8787"],
        )

    def test_interface_addresses_include_loopback(self) -> None:
        """The real interface reader returns at least this machine's loopback."""
        self.assertIn("127.0.0.1", netaddrs.interface_addresses())


class StallProbeTests(SynchronousTestCase):
    def test_reports_the_longest_lateness_and_resets_its_window(self) -> None:
        """A tick that runs late by d reports a stall of d; take() starts a new window."""
        from twisted.internet.task import Clock

        from goop.stallprobe import StallProbe

        clock = Clock()
        probe = StallProbe(clock, interval=0.01)
        probe.start()
        clock.advance(0.01)
        clock.advance(0.01)
        self.assertEqual(probe.take()["max_stall_ms"], 0.0)
        clock.advance(0.26)  # the reactor was busy for a quarter second
        first = probe.take()
        self.assertAlmostEqual(first["max_stall_ms"], 250.0, places=3)
        self.assertAlmostEqual(first["window_max_stall_ms"], 250.0, places=3)
        clock.advance(0.01)
        self.assertEqual(probe.take()["window_max_stall_ms"], 0.0)
        probe.stop()
