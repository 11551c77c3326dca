"""LAN interop at the packet level: every mDNS format a libp2p peer may use, both ways.

Inside two network namespaces (never on the machine's interfaces):
`tests/mdnswire.py` in one sends hand-built announcements (the libp2p spec's
PTR + TXT only; goop2's bare ``goop-mdns.local.`` with SRV/A; DNS-SD) and
the bridge in the other must dial the announced address within 5 s; then
the other way round, it asks as goop2's browser and a DNS-SD browser do and
checks goop's answers carry each format. Also: the dial rules against
hostile announcements (on a Clock), and identify's addresses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from goop.p2p.mdns import MAX_PEERS, bare_type, on_the_lan
from tests.netns import VethPair
from tests.test_p2p_mdns import OTHER, PEER, _bridge, result_of, run_probe

WIRE = Path(__file__).resolve().parent / "mdnswire.py"


def wire(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        VethPair.exec_argv(ns, [sys.executable, str(WIRE), *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("fmt", ["spec", "goop2", "dnssd"])
def test_each_announcement_format_is_dialled_within_5_s(veth: VethPair, fmt: str) -> None:
    """A peer announced in ``fmt`` is dialled at its TXT ``dnsaddr=`` address within
    5 s of the bridge's start (the spec format has no SRV/A to wait for)."""
    announcer = wire(veth.b, "announce", fmt, "goop-mdns", veth.addr_b, OTHER, "20")
    try:
        probe = run_probe(veth.a, "goop-mdns", veth.addr_a, PEER, "find", "")
        result = result_of(probe)
    finally:
        announcer.kill()
        announcer.communicate(timeout=10)
    assert result["dialled"][:1] == [f"/ip4/{veth.addr_b}/tcp/4001/p2p/{OTHER}"], result["log"]
    assert result["first_dial_s"] <= 5.0, result


def _packets(out: str, source: str) -> list[dict[str, Any]]:
    packets = []
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("from") == source and "records" in item:
            packets.append(item)
    return packets


def test_goops_answers_carry_every_format(veth: VethPair) -> None:
    """Asked as goop2's browser asks (PTR ``goop-mdns.local.``) and as DNS-SD ones do,
    goop answers: PTR + TXT ``dnsaddr=`` (the libp2p spec); under the bare name, a
    packet goop2's browser takes (PTR named exactly ``goop-mdns.local.``, SRV and
    TXT under it, the A of the SRV target in the same packet); SRV/A for DNS-SD;
    and nothing for a name it does not own."""
    probe = run_probe(veth.a, "goop-mdns", veth.addr_a, PEER, "wait:8", "")
    asker = wire(veth.b, "query", "goop-mdns", veth.addr_b, "7")
    out, _ = asker.communicate(timeout=30)
    result_of(probe)
    packets = _packets(out, veth.addr_a)
    assert packets, out
    dnsaddr = f"dnsaddr=/ip4/{veth.addr_a}/tcp/4001/p2p/{PEER}"

    def has(packet: dict[str, Any], **want: Any) -> list[dict[str, Any]]:
        return [r for r in packet["records"] if all(r.get(k) == v for k, v in want.items())]

    dnssd = "_goop-mdns._udp.local."
    instance = f"{PEER.lower()}.{dnssd}"
    spec_ok = any(
        has(p, type="PTR", name=dnssd, target=instance)
        and any(dnsaddr in r["strings"] for r in has(p, type="TXT", name=instance))
        for p in packets
    )
    assert spec_ok, packets

    bare = bare_type("goop-mdns")

    def goop2_takes(p: dict[str, Any]) -> bool:
        ptrs = has(p, type="PTR", name=bare)
        if not ptrs:
            return False
        name = ptrs[0]["target"]
        srvs = [r for r in has(p, type="SRV") if r["name"].endswith(bare)]
        txts = [r for r in has(p, type="TXT") if r["name"] == name]
        if not (name.endswith(bare) and srvs and txts):
            return False
        a = has(p, type="A", name=srvs[0]["target"])
        return bool(a) and any(dnsaddr in r["strings"] for r in txts)

    assert any(goop2_takes(p) for p in packets), packets
    assert any(
        has(p, type="SRV", name=instance) and has(p, type="A", address=veth.addr_a)
        for p in packets
    ), packets
    # Only names goop owns are ever in its answers (it was asked for _nobody too).
    owned = (dnssd, bare)
    for p in packets:
        for r in p["records"]:
            assert r["name"].endswith(owned) or r["type"] in ("A", "AAAA", "NSEC"), r


def test_a_flood_of_announcements_is_bounded_and_logged_once_per_kind(veth: VethPair) -> None:
    """400 peers, plus loopback-only and public-only ones, 255-byte junk TXT strings and
    unknown record types, repeated every 0.5 s: at most MAX_PEERS peers are dialled,
    none at a loopback or public address, and each kind of drop is logged once."""
    announcer = wire(veth.b, "announce", "flood", "goop-mdns", veth.addr_b, "400", "15")
    try:
        probe = run_probe(veth.a, "goop-mdns", veth.addr_a, PEER, "wait:8", "")
        result = result_of(probe)
    finally:
        announcer.kill()
        announcer.communicate(timeout=10)
    dialled = result["dialled"]
    peers = {a.rsplit("/", 1)[1] for a in dialled}
    assert 100 <= len(peers) <= MAX_PEERS, len(peers)
    assert all(a.startswith(f"/ip4/{veth.addr_b}/") for a in dialled), dialled[:5]
    drops = [line for line in result["log"] if "dropped so far" in line]
    assert len(drops) <= 3, drops  # one line per kind in the minute, not one per packet
    for why in (f"already {MAX_PEERS} peers", "no private or link-local address", "no dialable"):
        assert sum(why in line for line in drops) == 1, (why, drops)


# --- the dial rules against hostile announcements (no network) ----------------------


def test_only_lan_addresses_are_dialled() -> None:
    assert on_the_lan(f"/ip4/10.1.2.3/tcp/1/p2p/{OTHER}")
    assert on_the_lan(f"/ip4/192.168.0.9/tcp/1/p2p/{OTHER}")
    assert on_the_lan(f"/ip4/169.254.3.4/tcp/1/p2p/{OTHER}")
    assert on_the_lan(f"/ip4/100.64.0.1/tcp/1/p2p/{OTHER}")
    for host in ("127.0.0.1", "0.0.0.0", "8.8.8.8", "224.0.0.251", "255.255.255.255"):
        assert not on_the_lan(f"/ip4/{host}/tcp/1/p2p/{OTHER}"), host


def _txt(*addrs: str) -> bytes:
    from goop.p2p.mdns import encode_txt

    return encode_txt([f"dnsaddr={a}".encode() for a in addrs])


def test_hostile_announcements_are_dropped_bounded_and_logged_once_a_minute() -> None:
    """goop2 also lists 127.0.0.1 (skipped, the LAN address dialled); an announcement
    of only public or loopback addresses is dropped; past MAX_PEERS peers, new ones
    are refused; each kind of drop is logged at most once a minute."""
    from twisted.logger import LogLevel, capturedLogs

    from goop.identity import _from_seed

    bridge, clock, dialer = _bridge()
    bridge._found("x", _txt(f"/ip4/127.0.0.1/tcp/4001/p2p/{OTHER}",
                            f"/ip4/10.0.0.2/tcp/4001/p2p/{OTHER}"))
    assert dialer.dialled == [f"/ip4/10.0.0.2/tcp/4001/p2p/{OTHER}"]
    with capturedLogs() as events:
        for _ in range(50):
            bridge._found("y", _txt(f"/ip4/8.8.8.8/tcp/4001/p2p/{PEER[:-1]}A"))
        ids = [_from_seed(n.to_bytes(32, "big"), "").peer_id for n in range(1, MAX_PEERS + 20)]
        for pid in ids:
            bridge._found("z", _txt(f"/ip4/10.0.0.9/tcp/4001/p2p/{pid}"))
    assert len(bridge.known) == MAX_PEERS
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2, [e["log_format"] for e in warnings]
    assert bridge.refused == 50 + 20
    clock.advance(61)
    with capturedLogs() as events:
        bridge._found("y", _txt(f"/ip4/8.8.8.8/tcp/4001/p2p/{PEER[:-1]}A"))
    assert [e["log_level"] for e in events] == [LogLevel.warn]


def test_identify_lists_real_addresses_never_unspecified() -> None:
    """What identify sends for a listener on 0.0.0.0: this machine's addresses."""
    import multiaddr
    from twisted.internet import reactor

    from goop.identity import _from_seed
    from goop.p2p.adapter import Libp2pAdapter

    adapter = Libp2pAdapter(reactor, _from_seed(b"\x03" * 32, ""), "t", lambda m: None)
    out = [str(a) for a in adapter._announced([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001")])]
    assert out and all("/ip4/0.0.0.0/" not in a and a.endswith("/tcp/4001") for a in out), out
    kept = adapter._announced([multiaddr.Multiaddr("/ip4/10.9.8.7/tcp/5")])
    assert [str(a) for a in kept] == ["/ip4/10.9.8.7/tcp/5"]


def test_identify_in_a_namespace_lists_its_lan_address(veth: VethPair) -> None:
    """The identify test of tests/test_p2p_adapter.py, run inside namespace ``a``
    (interfaces: loopback and the veth): nothing unspecified is ever stored."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        VethPair.exec_argv(veth.a, [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_p2p_adapter.py::IdentifyTests",
        ]),
        cwd=str(root), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout, out.stdout
