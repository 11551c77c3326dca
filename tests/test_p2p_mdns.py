"""The zeroconf bridge: TXT parsing (hypothesis) and the bridge itself in namespaces.

The bridge tests send real multicast, so they run only inside two network
namespaces the test creates (`tests.netns`); each side is a small Twisted
process (`probe_main` below, run with ``ip netns exec``) that reports what
it saw as one JSON line. A fake dialer stands in for libp2p.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goop.p2p.mdns import (
    MAX_TXT_STRING,
    TxtError,
    advertisement,
    decode_txt,
    encode_txt,
    parse_advertisement,
    service_type,
)
from tests.netns import VethPair

ROOT = Path(__file__).resolve().parent.parent
PEER = "12D3KooWPsW1sDd7wPi2k2tMdL4uE3G8kCwZT4SF46ciYitp8Pc1"
OTHER = "12D3KooWRVuuFHo5SB5A7Cp2Y941omko2m8ZvfFmficokWcbFfcc"


# --- pure: TXT records ---------------------------------------------------------


@given(st.lists(st.binary(max_size=MAX_TXT_STRING), max_size=20))
def test_txt_strings_round_trip(strings: list[bytes]) -> None:
    """encode_txt/decode_txt are inverse for any strings up to 255 bytes."""
    assert decode_txt(encode_txt(strings)) == strings


@given(st.binary(max_size=600))
def test_any_txt_bytes_parse_or_fail_with_txt_error(raw: bytes) -> None:
    """Arbitrary TXT data never raises anything but TxtError."""
    try:
        peer_id, addrs = parse_advertisement(raw)
    except TxtError:
        return
    assert addrs and all(a.endswith("/p2p/" + peer_id) for a in addrs)


def test_own_advertisement_parses_back() -> None:
    """Our TXT (go-libp2p's dnsaddr= form) yields our peer ID and addresses."""
    addrs = [f"/ip4/10.0.0.7/tcp/4001/p2p/{PEER}", f"/ip4/192.168.1.2/tcp/4001/p2p/{PEER}"]
    assert parse_advertisement(advertisement(PEER, addrs)) == (PEER, addrs)


def test_foreign_keys_and_undialable_addresses_are_skipped() -> None:
    """Other keys, /dns or /udp addresses and bad IPs are skipped, not fatal."""
    raw = encode_txt(
        [
            b"tag=goop",
            f"dnsaddr=/dns4/example.com/tcp/1/p2p/{PEER}".encode(),
            f"dnsaddr=/ip4/10.0.0.1/udp/1/quic/p2p/{PEER}".encode(),
            f"dnsaddr=/ip4/999.0.0.1/tcp/1/p2p/{PEER}".encode(),
            f"dnsaddr=/ip4/10.0.0.1/tcp/4001/p2p/{PEER}".encode(),
        ]
    )
    assert parse_advertisement(raw) == (PEER, [f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"])


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"\x08dnsaddr=", "no dialable"),
        (b"\x30dnsaddr=/ip4/1.2.3.4", "truncated"),
        (encode_txt([b"dnsaddr=/ip4/1.2.3.4/tcp/0/p2p/" + PEER.encode()]), "no dialable"),
        (
            encode_txt(
                [
                    f"dnsaddr=/ip4/10.0.0.1/tcp/1/p2p/{PEER}".encode(),
                    f"dnsaddr=/ip4/10.0.0.2/tcp/1/p2p/{OTHER}".encode(),
                ]
            ),
            "different peer IDs",
        ),
    ],
)
def test_bad_txt_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(TxtError, match=why):
        parse_advertisement(raw)


def test_service_type_from_tag() -> None:
    """The tag becomes a browsable DNS-SD type (goop2's bare 'goop-mdns.local.' is not)."""
    assert service_type("goop-mdns") == "_goop-mdns._udp.local."


# --- the bridge's dial rules, on a Clock (no zeroconf, no network) ------------


class _RecordingDialer:
    """Stands in for libp2p: records dials; ``fail`` makes the next ones fail."""

    def __init__(self) -> None:
        self.peer_id = PEER
        self.dialled: list[str] = []
        self.fail = 0

    def when_ready(self) -> Any:
        from twisted.internet import defer

        return defer.Deferred()  # never ready: start does not touch zeroconf

    def connect(self, multiaddr: str) -> Any:
        from twisted.internet import defer

        self.dialled.append(multiaddr)
        if self.fail:
            self.fail -= 1
            return defer.fail(ConnectionRefusedError("refused"))
        return defer.succeed(None)


def _bridge() -> tuple[Any, Any, _RecordingDialer]:
    from twisted.internet.task import Clock

    from goop.p2p.mdns import MdnsBridge

    clock = Clock()
    dialer = _RecordingDialer()
    bridge = MdnsBridge(clock, dialer, "goop-mdns")
    bridge.startService()
    return bridge, clock, dialer


A1 = f"/ip4/10.0.0.2/tcp/4001/p2p/{OTHER}"
A2 = f"/ip4/10.0.0.3/tcp/4001/p2p/{OTHER}"
NAME = f"{OTHER}._goop-mdns._udp.local."


def test_a_repeated_announcement_is_dialled_again_only_after_a_while() -> None:
    from goop.p2p.mdns import REDIAL_AFTER

    bridge, clock, dialer = _bridge()
    bridge._found(NAME, advertisement(OTHER, [A1]))
    bridge._found(NAME, advertisement(OTHER, [A1]))
    assert dialer.dialled == [A1]
    clock.advance(REDIAL_AFTER)
    bridge._found(NAME, advertisement(OTHER, [A1]))
    assert dialer.dialled == [A1, A1]


def test_new_addresses_or_a_return_after_leaving_are_dialled_at_once() -> None:
    bridge, _, dialer = _bridge()
    bridge._found(NAME, advertisement(OTHER, [A1]))
    bridge._found(NAME, advertisement(OTHER, [A2]))
    bridge._gone(NAME)
    bridge._found(NAME, advertisement(OTHER, [A2]))
    assert dialer.dialled == [A1, A2, A2]


def test_a_failed_dial_tries_the_next_address_then_forgets_the_peer() -> None:
    bridge, _, dialer = _bridge()
    dialer.fail = 2
    bridge._found(NAME, advertisement(OTHER, [A1, A2]))
    assert dialer.dialled == [A1, A2]
    # Both failed: the next announcement is dialled at once, not after a while.
    bridge._found(NAME, advertisement(OTHER, [A1, A2]))
    assert dialer.dialled == [A1, A2, A1]


def test_our_own_announcement_is_never_dialled() -> None:
    bridge, _, dialer = _bridge()
    mine = A1.replace(OTHER, PEER)
    bridge._found(f"{PEER}._goop-mdns._udp.local.", advertisement(PEER, [mine]))
    assert dialer.dialled == []


# --- the bridge in two namespaces ---------------------------------------------


def run_probe(ns: str, *args: str) -> subprocess.Popen[str]:
    code = "import sys; from tests.test_p2p_mdns import probe_main; probe_main(sys.argv[1:])"
    return subprocess.Popen(
        VethPair.exec_argv(ns, [sys.executable, "-c", code, *args]),
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=40)
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return parsed
    raise AssertionError(f"probe printed no result:\n{out}")


def test_bridges_find_each_other_on_the_reactor_thread_and_stop_their_threads(
    veth: VethPair,
) -> None:
    """Two bridges (one per namespace) find each other and dial; every handler ran on
    the reactor thread; bad TXT data is ignored with a log line; stopping ends
    zeroconf's threads."""
    a = run_probe(veth.a, "goop-mdns", veth.addr_a, PEER, "find", "bad")
    b = run_probe(veth.b, "goop-mdns", veth.addr_b, OTHER, "find", "")
    ra, rb = result_of(a), result_of(b)
    assert ra["dialled"] == [f"/ip4/{veth.addr_b}/tcp/4001/p2p/{OTHER}"], ra
    assert rb["dialled"] == [f"/ip4/{veth.addr_a}/tcp/4001/p2p/{PEER}"], rb
    for r in (ra, rb):
        assert r["handler_threads"] == [r["reactor_thread"]], r
        assert r["zeroconf_threads"] >= 2, r
        assert r["alive_after_stop"] == [], r
    assert any("ignoring bogus" in line and "no dialable" in line for line in rb["log"]), rb
    assert ra["found"] == [OTHER] and rb["found"] == [PEER], (ra, rb)


def test_different_tags_never_see_each_other(veth: VethPair) -> None:
    """A bridge browsing one tag never hears a peer advertising another."""
    a = run_probe(veth.a, "goop-one", veth.addr_a, PEER, "wait", "")
    b = run_probe(veth.b, "goop-two", veth.addr_b, OTHER, "wait", "")
    ra, rb = result_of(a), result_of(b)
    assert ra["dialled"] == [] and rb["dialled"] == [], (ra, rb)
    assert ra["found"] == [] and rb["found"] == [], (ra, rb)


# --- the probe process -----------------------------------------------------------


def probe_main(argv: list[str]) -> None:
    """Runs in a namespace: one MdnsBridge with a fake dialer; prints RESULT <json>.

    argv: tag, our address, our peer ID, "find" (stop once a peer was dialled,
    at most 15 s) or "wait" (run 4 s; "wait:N" N s), "bad" to also advertise a
    bogus record. The result has ``first_dial_s``: seconds from the bridge's
    start to its first dial.
    """
    import socket
    import threading
    import time

    from twisted.internet import defer, reactor, task
    from twisted.logger import globalLogPublisher

    from goop.p2p.mdns import MdnsBridge

    tag, addr, peer_id, how, bad = argv
    log: list[str] = []
    result: dict[str, Any] = {}

    def observe(event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent

        log.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    dialled: list[str] = []
    found: list[str] = []

    class FakeDialer:
        def __init__(self) -> None:
            self.peer_id = peer_id

        def when_ready(self) -> defer.Deferred[list[str]]:
            return defer.succeed([f"/ip4/{addr}/tcp/4001/p2p/{peer_id}"])

        def connect(self, multiaddr: str) -> defer.Deferred[None]:
            if not dialled:
                result["first_dial_s"] = round(time.monotonic() - result["started"], 3)
            dialled.append(multiaddr)
            return defer.succeed(None)

    bridge = MdnsBridge(
        reactor, FakeDialer(), tag, (addr,), on_found=lambda p, a: found.append(p)
    )

    def register_bogus() -> None:
        from zeroconf import ServiceInfo

        kind = service_type(tag)
        info = ServiceInfo(
            kind,
            f"bogus.{kind}",
            port=1,
            properties=encode_txt([b"dnsaddr=junk"]),
            server="bogus.local.",
            addresses=[socket.inet_aton(addr)],
        )
        bridge.zeroconf.register_service(info)

    @defer.inlineCallbacks
    def main():  # type: ignore[no-untyped-def]
        result["reactor_thread"] = threading.current_thread().name
        result["started"] = time.monotonic()
        bridge.startService()
        wait = float(how.split(":")[1]) if ":" in how else 4
        deadline = time.monotonic() + (15 if how == "find" else wait)
        registered = False
        while time.monotonic() < deadline:
            if bad and not registered and bridge.zeroconf is not None:
                registered = True
                yield threads.deferToThread(register_bogus)
            if how == "find" and dialled and (not bad or registered):
                # Give the bogus record time to reach the other side.
                yield task.deferLater(reactor, 2.0 if bad else 0.5, lambda: None)
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        result["zeroconf_threads"] = len(bridge.threads)
        yield bridge.stopService()
        result["alive_after_stop"] = [t.name for t in bridge.threads if t.is_alive()]
        result["dialled"] = dialled
        result["found"] = sorted(set(found))
        result["handler_threads"] = sorted(bridge.handler_threads)
        result["log"] = log
        reactor.stop()

    from twisted.internet import threads

    reactor.callWhenRunning(main)
    reactor.run()
    print("RESULT " + json.dumps(result), flush=True)
