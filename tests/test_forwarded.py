"""X-Forwarded-For: who a request really comes from, under hypothesis.

`client_address` decides whose rate limit and subscriber cap a request
counts against, so it must never raise, never trust an untrusted peer, and
never let a client choose its address by adding hops on the left.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from goop.rendezvous.http import client_address, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])
PROXY = "10.1.2.3"

ipv4 = st.ip_addresses(v=4).map(str)
outside = ipv4.filter(lambda a: ipaddress.ip_address(a) not in ipaddress.ip_network("10.0.0.0/8"))
header_values = st.lists(st.binary(max_size=80), max_size=3)


@given(ipv4, header_values)
def test_an_untrusted_peer_is_never_believed(peer: str, headers: list[bytes]) -> None:
    if ipaddress.ip_address(peer) in ipaddress.ip_network("10.0.0.0/8"):
        peer = "192.0.2.1"
    assert client_address(peer, headers, TRUSTED) == peer


@given(header_values)
def test_any_header_from_a_proxy_gives_the_proxy_or_an_untrusted_ip(headers: list[bytes]) -> None:
    got = client_address(PROXY, headers, TRUSTED)
    if got != PROXY:
        ip = ipaddress.ip_address(got)  # a real address, never garbage
        assert not any(ip in net for net in TRUSTED)


@given(st.lists(st.text(max_size=20), max_size=5), outside, st.integers(0, 2))
def test_hops_added_on_the_left_change_nothing(forged: list[str], client: str, hops: int) -> None:
    """Whatever the client wrote before its real address, the proxies' view wins
    (behind any number of further trusted proxies)."""
    inner = [f"10.9.0.{i + 1}" for i in range(hops)]
    header = ", ".join([*forged, client, *inner]).encode("utf-8")
    assert client_address(PROXY, [header], TRUSTED) == client


def test_no_trusted_proxies_means_the_socket_address() -> None:
    assert client_address("10.1.2.3", [b"203.0.113.9"], ()) == "10.1.2.3"
