"""The libp2p adapter alone: two (or three) adapters in this process on 127.0.0.1.

Real py-libp2p hosts over real loopback sockets, all in one trio guest run
on the test reactor. mDNS is not involved (no multicast anywhere here).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from goop.identity import Identity, load_or_create
from goop.message import PresenceMessage
from goop.p2p.adapter import ContentError, DialError, Libp2pAdapter
from goop.stallprobe import StallProbe


def until(predicate: Any, timeout: float = 10.0) -> defer.Deferred[None]:
    """Fires once ``predicate()`` holds (checked every 20 ms), or fails after ``timeout``."""
    deadline = time.monotonic() + timeout

    @defer.inlineCallbacks
    def poll():  # type: ignore[no-untyped-def]
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            yield task.deferLater(reactor, 0.02, lambda: None)

    d: defer.Deferred[None] = poll()
    return d


class _Silent(Libp2pAdapter):
    """Accepts content streams and never answers."""

    async def _serve_content(self, stream: Any) -> None:
        import trio

        await trio.sleep_forever()


class AdapterHarness(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.home, True)
        self.received: dict[str, list[PresenceMessage]] = {}
        self.probe = StallProbe(reactor, 0.01)
        self.probe.start()
        self.addCleanup(self.probe.stop)

    def identity(self, name: str) -> Identity:
        return load_or_create(os.path.join(self.home, name + ".key"))[0]

    @defer.inlineCallbacks
    def adapter(self, name: str, content: str = "", cls: type[Libp2pAdapter] = Libp2pAdapter):  # type: ignore[no-untyped-def]
        got = self.received.setdefault(name, [])
        a = cls(
            reactor,
            self.identity(name),
            "goop.test.v1",
            got.append,
            content=content,
            listen_host="127.0.0.1",
        )
        a.startService()
        self.addCleanup(a.stopService)
        addrs = yield a.when_ready()
        return a, addrs[0]

    @defer.inlineCallbacks
    def publish_until(self, sender: Libp2pAdapter, message: PresenceMessage, receiver: str):  # type: ignore[no-untyped-def]
        """Publishes every 200 ms until ``receiver`` got ``message`` (the mesh forms first)."""
        deadline = time.monotonic() + 10
        while message not in self.received[receiver]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{receiver} never got {message}")
            yield sender.publish(message)
            yield task.deferLater(reactor, 0.2, lambda: None)


class TwoAdapterTests(AdapterHarness):
    @defer.inlineCallbacks
    def test_gossipsub_message_and_content_stream(self):  # type: ignore[no-untyped-def]
        """Two adapters on 127.0.0.1 exchange a presence message and a content line."""
        a, a_addr = yield self.adapter("a", content="Alice's node")
        b, _ = yield self.adapter("b", content="Bob's node")
        self.assertTrue(a_addr.startswith("/ip4/127.0.0.1/tcp/"))
        self.assertTrue(a_addr.endswith("/p2p/" + a.peer_id))
        self.assertNotIn("/tcp/0/", a_addr)
        yield b.connect(a_addr)
        hello = PresenceMessage("online", a.peer_id, "Alice's node", ts=1)
        yield self.publish_until(a, hello, "b")
        self.assertNotIn(hello, self.received["a"], "own messages are dropped")
        line = yield b.fetch_content(a.peer_id)
        self.assertEqual(line, "Alice's node")
        line = yield a.fetch_content(b.peer_id)
        self.assertEqual(line, "Bob's node")
        print(f"\nadapter test: longest reactor stall {self.probe.take()['max_stall_ms']} ms")

    @defer.inlineCallbacks
    def test_bad_and_forged_payloads_are_logged_and_ignored(self):  # type: ignore[no-untyped-def]
        """Not-JSON, invalid and someone-else's presence on the topic never reach the table."""
        a, a_addr = yield self.adapter("a")
        b, _ = yield self.adapter("b")
        yield b.connect(a_addr)
        forged = PresenceMessage("online", b.peer_id, "I am b", ts=1)
        with capturedLogs() as events:
            yield a._call(a._publish, b"\xff not json")
            yield a._call(a._publish, b'{"type":"online"}')
            yield a._call(a._publish, forged.encode())
            good = PresenceMessage("online", a.peer_id, "real", ts=2)
            yield self.publish_until(a, good, "b")
        self.assertEqual([m for m in self.received["b"] if m != good], [])
        warnings = " ".join(
            e["log_format"].format(**e) for e in events if e["log_level"] == LogLevel.warn
        )
        self.assertIn("bad GossipSub presence", warnings)

    @defer.inlineCallbacks
    def test_content_answer_of_10_mb_is_refused(self):  # type: ignore[no-untyped-def]
        """A peer answering /goop/content/1.0.0 with 10 MB gets a ContentError, fast."""
        big, big_addr = yield self.adapter("big", content="x" * (10 * 1024 * 1024))
        b, _ = yield self.adapter("b")
        yield b.connect(big_addr)
        started = time.monotonic()
        yield self.assertFailure(b.fetch_content(big.peer_id), ContentError)
        self.assertLess(time.monotonic() - started, 3.0)
        line = yield big.fetch_content(b.peer_id)
        self.assertEqual(line, "", "both peers still work")

    @defer.inlineCallbacks
    def test_content_stream_that_never_answers_times_out(self):  # type: ignore[no-untyped-def]
        """fetch_content gives up after its timeout; the adapter keeps working."""
        silent, addr = yield self.adapter("silent", cls=_Silent)
        b, _ = yield self.adapter("b", content="still here")
        b.fetch_timeout = 1.0
        yield b.connect(addr)
        started = time.monotonic()
        yield self.assertFailure(b.fetch_content(silent.peer_id), Exception)
        self.assertLess(time.monotonic() - started, 3.0)
        line = yield silent.fetch_content(b.peer_id)
        self.assertEqual(line, "still here")

    @defer.inlineCallbacks
    def test_unknown_peer_fails_without_hurting_the_adapter(self):  # type: ignore[no-untyped-def]
        """fetch_content of a peer we cannot reach fails; a bad ID fails with ContentError."""
        a, _ = yield self.adapter("a")
        other = self.identity("nobody")
        a.fetch_timeout = 1.0
        yield self.assertFailure(a.fetch_content(other.peer_id), Exception)
        yield self.assertFailure(a.fetch_content("not-a-peer-id"), ContentError)

    @defer.inlineCallbacks
    def test_plaintext_only_dialer_is_refused(self):  # type: ignore[no-untyped-def]
        """A host offering only /plaintext/2.0.0 cannot connect: Noise is the only choice."""
        a, a_addr = yield self.adapter("a")
        seed = self.identity("plain").seed
        outcome = yield a.bridge.call(_dial_with_plaintext_only, a_addr, seed)
        self.assertNotEqual(outcome, "connected", "a plaintext dialer got in")
        peers = yield a.connected_peers()
        self.assertEqual(peers, [])

    @defer.inlineCallbacks
    def test_stop_ends_trio_cleanly(self):  # type: ignore[no-untyped-def]
        """Stopping the adapters ends the trio run; calls afterwards fail instead of hanging."""
        a, a_addr = yield self.adapter("a")
        b, _ = yield self.adapter("b")
        yield b.connect(a_addr)
        bridge = a.bridge
        started = time.monotonic()
        yield defer.gatherResults([a.stopService(), b.stopService()])
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertFalse(bridge.running)
        yield self.assertFailure(a.fetch_content(b.peer_id), Exception)
        names = [t.name for t in threading.enumerate()]
        self.assertNotIn("goop-trio", names)


async def _dial_with_plaintext_only(addr: str, seed: bytes) -> str:
    """Dial ``addr`` from a throwaway host whose only security transport is plaintext."""
    import multiaddr  # type: ignore[import-untyped]
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = create_new_key_pair(seed)
    host = new_host(
        key_pair=key_pair,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
    )
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            with trio.fail_after(5):
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        except Exception as e:
            return f"refused: {type(e).__name__}"
        return "connected"


class PunchDialTests(AdapterHarness):
    @defer.inlineCallbacks
    def test_dial_goop2_style_addresses_from_a_hint(self):  # type: ignore[no-untyped-def]
        """dial(peer, addrs) connects with addresses as goop2 publishes them (no /p2p
        suffix), skipping ones that do not parse, name another peer or need a relay;
        what a peer publishes (advertised_addrs) is its listener, without /p2p."""
        a, _ = yield self.adapter("a")
        b, _ = yield self.adapter("b")
        mine = f"/ip4/127.0.0.1/tcp/{b.port}"
        self.assertEqual(b.advertised_addrs(), [mine])
        yield a.dial(
            b.peer_id,
            [
                "not a multiaddr",
                f"{mine}/p2p/{a.peer_id}",
                f"{mine}/p2p/{b.peer_id}/p2p-circuit",
                mine,
            ],
        )
        peers = yield a.connected_peers()
        self.assertIn(b.peer_id, peers)

    @defer.inlineCallbacks
    def test_dial_with_nothing_to_dial_fails_clearly(self):  # type: ignore[no-untyped-def]
        """No usable address, a bad peer ID, or ourselves: DialError, nothing dialled."""
        a, _ = yield self.adapter("a")
        b, _ = yield self.adapter("b")
        yield self.assertFailure(a.dial(b.peer_id, ["junk", "/dns4/x/udp/1"]), DialError)
        yield self.assertFailure(a.dial("not-a-peer-id", ["/ip4/127.0.0.1/tcp/1"]), DialError)
        yield self.assertFailure(a.dial(a.peer_id, ["/ip4/127.0.0.1/tcp/1"]), DialError)
        self.assertEqual((yield a.connected_peers()), [])


class IdentifyTests(AdapterHarness):
    @defer.inlineCallbacks
    def test_identify_never_tells_a_peer_to_dial_0_0_0_0(self):  # type: ignore[no-untyped-def]
        """``a`` listens on 0.0.0.0 (bound, never dialled on anything but loopback);
        once identify has run, what ``b`` stored for it holds no unspecified address."""
        got = self.received.setdefault("a", [])
        a = Libp2pAdapter(reactor, self.identity("a"), "goop.test.v1", got.append,
                          listen_host="0.0.0.0")
        a.startService()
        self.addCleanup(a.stopService)
        yield a.when_ready()
        b, _ = yield self.adapter("b")
        yield b.connect(f"/ip4/127.0.0.1/tcp/{a.port}/p2p/{a.peer_id}")

        async def stored_addrs(peer_id: str) -> list[str]:
            import trio
            from libp2p.peer.id import ID

            store = b._host.get_peerstore()
            who = ID.from_base58(peer_id)
            with trio.move_on_after(10):
                while not store.get_protocols(who):  # identify has not answered yet
                    await trio.sleep(0.05)
            return [str(x) for x in store.addrs(who)]

        addrs = yield b._call(stored_addrs, a.peer_id)
        self.assertTrue(any(f"/tcp/{a.port}" in x for x in addrs), addrs)
        self.assertFalse([x for x in addrs if "/ip4/0.0.0.0/" in x], addrs)
        # Instead: the machine's own addresses (in a namespace: its veth's).
        from goop.netaddrs import interface_addresses, presence_addrs

        for real in presence_addrs("0.0.0.0", a.port, interface_addresses()):
            self.assertIn(f"{real}/p2p/{a.peer_id}", addrs)
