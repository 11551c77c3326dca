"""What a goop peer says about itself (addrs, client version) and does with punch hints.

Pure logic and fakes: `presence_addrs` under hypothesis, `SelfPresence`
with a fake address source, `PunchDialer` with a fake dialer, the
publisher's immediate refresh with a Clock.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from goop import __version__
from goop.identity import load_or_create
from goop.message import MAX_ADDRS, PresenceMessage, parse_message
from goop.netaddrs import presence_addrs
from goop.presence.node import PunchDialer, SelfPresence
from goop.presence.publisher import PresencePublisher

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
interfaces = st.lists(st.one_of(ipv4, ipv6, st.just("fe80::1%eth0"), st.just("junk")), max_size=40)
ports = st.integers(1, 65535)


def _ip(addr: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(addr.split("/")[2])


class PresenceAddrsTests(SynchronousTestCase):
    @given(interfaces, ports)
    def test_wildcard_listener_publishes_usable_ipv4_addresses(
        self, found: list[str], port: int
    ) -> None:
        """0.0.0.0: one /ip4/<ip>/tcp/<port> per distinct IPv4 interface address, at most
        goop2's 20; loopback and link-local only when nothing else is there."""
        out = presence_addrs("0.0.0.0", port, found)
        self.assertLessEqual(len(out), MAX_ADDRS)
        self.assertEqual(len(out), len(set(out)))
        for addr in out:
            self.assertRegex(addr, rf"^/ip4/\d+\.\d+\.\d+\.\d+/tcp/{port}$")
        v4 = {ipaddress.ip_address(a) for a in found if "." in a and ":" not in a}
        v4.discard(ipaddress.IPv4Address("0.0.0.0"))
        usable = {ip for ip in v4 if not (ip.is_loopback or ip.is_link_local)}
        ips = {_ip(a) for a in out}
        if usable:
            self.assertTrue(ips <= usable)
            self.assertEqual(len(ips), min(len(usable), MAX_ADDRS))
        else:
            self.assertEqual(len(ips), min(len(v4), MAX_ADDRS))
        # Every one of them fits in a message goop2 accepts.
        parse_message(PresenceMessage("online", "p", addrs=tuple(out)).encode(), 1)

    def test_examples(self) -> None:
        """LAN addresses win over loopback; a fixed bind address is itself; no port, no addrs."""
        found = ["127.0.0.1", "::1", "192.168.1.20", "169.254.3.4", "10.0.0.5", "fe80::1%eth0"]
        self.assertEqual(
            presence_addrs("0.0.0.0", 4001, found),
            ["/ip4/10.0.0.5/tcp/4001", "/ip4/192.168.1.20/tcp/4001"],
        )
        self.assertEqual(
            presence_addrs("0.0.0.0", 4001, ["127.0.0.1"]), ["/ip4/127.0.0.1/tcp/4001"]
        )
        self.assertEqual(presence_addrs("127.0.0.1", 4001, found), ["/ip4/127.0.0.1/tcp/4001"])
        self.assertEqual(presence_addrs("0.0.0.0", 0, found), [])
        self.assertEqual(presence_addrs("::", 4001, found), [])


class SelfPresenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        self.identity = load_or_create(os.path.join(home, "id.key"))[0]
        self.clock = Clock()
        self.clock.advance(1000)

    def test_every_message_says_goop_and_its_version_and_no_addrs_without_libp2p(self) -> None:
        """goopClientVersion is goop/<version>; with p2p disabled there are no addrs."""
        me = SelfPresence(self.clock, self.identity, "label", "")
        for kind in ("online", "update", "offline"):
            m = me.message(kind)
            self.assertEqual(m.goop_client_version, f"goop/{__version__}")
            self.assertEqual(m.addrs, ())
            self.assertEqual(m.to_dict()["goopClientVersion"], f"goop/{__version__}")
            self.assertNotIn("addrs", m.to_dict())

    def test_addrs_come_from_the_adapter_each_time(self) -> None:
        """Once libp2p listens, each message carries its current addresses, offline too."""
        me = SelfPresence(self.clock, self.identity, "label", "")
        current = ["/ip4/10.0.0.5/tcp/4001"]
        me.addrs = lambda: current
        self.assertEqual(me.message("online").addrs, ("/ip4/10.0.0.5/tcp/4001",))
        current = ["/ip4/10.0.0.6/tcp/4001"]
        m = me.message("offline")
        self.assertEqual(m.addrs, ("/ip4/10.0.0.6/tcp/4001",))
        self.assertEqual(m.to_dict()["addrs"], ["/ip4/10.0.0.6/tcp/4001"])
        self.assertIs(me.current(), m)


class FakeDialer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.pending: list[Deferred[None]] = []

    def dial(self, peer_id: str, addrs: tuple[str, ...]) -> Deferred[None]:
        self.calls.append((peer_id, addrs))
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


HINT = PresenceMessage("punch", "12D3KooWOther", target="12D3KooWMe", addrs=("/ip4/1.2.3.4/tcp/9",))


class PunchDialerTests(SynchronousTestCase):
    def test_without_libp2p_a_hint_is_logged_and_dropped(self) -> None:
        """p2p disabled: one line naming the peer and its addresses; nothing dialled."""
        with capturedLogs() as events:
            PunchDialer()(HINT)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1)
        self.assertIn("12D3KooWOther", lines[0])
        self.assertIn("/ip4/1.2.3.4/tcp/9", lines[0])
        self.assertIn("libp2p is off", lines[0])

    def test_hint_dials_and_logs_one_line_per_outcome(self) -> None:
        """The hinted addresses go to the adapter's dial; one line says how it went."""
        dialer = FakeDialer()
        punch = PunchDialer(dialer)
        with capturedLogs() as events:
            punch(HINT)
            self.assertEqual(events, [])
            dialer.pending[0].callback(None)
            punch(HINT)
            dialer.pending[1].errback(ConnectionError("no route"))
        self.assertEqual(dialer.calls, [("12D3KooWOther", ("/ip4/1.2.3.4/tcp/9",))] * 2)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2)
        self.assertIn("connected to 12D3KooWOther", lines[0])
        self.assertIn("could not reach 12D3KooWOther", lines[1])
        self.assertIn("no route", lines[1])

    def test_a_peer_being_dialled_is_not_dialled_twice(self) -> None:
        """Hints repeat (SSE broadcast, several rendezvous): one dial per peer at a time."""
        dialer = FakeDialer()
        punch = PunchDialer(dialer)
        punch(HINT)
        punch(HINT)
        self.assertEqual(len(dialer.calls), 1)
        dialer.pending[0].callback(None)
        punch(HINT)
        self.assertEqual(len(dialer.calls), 2)


class RefreshTests(SynchronousTestCase):
    def test_refresh_publishes_now_not_at_the_next_beat(self) -> None:
        """When libp2p starts listening our addresses change: they go out at once."""
        clock = Clock()
        sent: list[str] = []

        class Chan:
            name = "x"

            def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
                sent.append(message.type)
                return succeed(None)

        pub = PresencePublisher(clock, lambda k: PresenceMessage(k, "p"), [Chan()], 5.0)
        pub.refresh()
        self.assertEqual(sent, [], "not before it runs")
        pub.startService()
        pub.refresh()
        self.assertEqual(sent, ["online", "update"])
        clock.advance(5)
        self.assertEqual(sent, ["online", "update", "update"])
        pub.stopService()
