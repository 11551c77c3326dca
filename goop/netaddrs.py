"""Which URLs other machines can use to reach a server bound to an address.

Reads the machine's interface addresses (ifaddr) and keeps the ones a
listener on ``bind`` actually answers on, loopback left out; the same for
the libp2p addresses a peer publishes in its presence (`presence_addrs`).
"""

from __future__ import annotations

import ipaddress

import ifaddr

from goop.message import MAX_ADDRS


def interface_addresses() -> list[str]:
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.append(ip.ip)
            else:
                # IPv6 entries are (address, flowinfo, scope_id).
                found.append(ip.ip[0])
    return found


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def connect_urls(bind: str, port: int, scheme: str = "http") -> list[str]:
    """URLs for peers elsewhere: empty when ``bind`` is a loopback address."""
    try:
        bound = ipaddress.ip_address(bind)
    except ValueError:
        return []
    if bound.is_loopback:
        return []
    if not bound.is_unspecified:
        return [f"{scheme}://{_url_host(bind)}:{port}"]
    urls = []
    for text in interface_addresses():
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.version != bound.version:
            continue
        urls.append(f"{scheme}://{_url_host(str(ip))}:{port}")
    return sorted(set(urls))


def presence_addrs(listen_host: str, port: int, interfaces: list[str]) -> list[str]:
    """``/ip4/<ip>/tcp/<port>`` for each IPv4 address a TCP listener answers on.

    ``listen_host`` ``0.0.0.0`` stands for every IPv4 address in ``interfaces``;
    loopback and link-local ones are left out unless nothing else is there
    (goop2 publishes its LAN addresses the same way). At most
    `goop.message.MAX_ADDRS`, so the message stays within goop2's limit.
    """
    try:
        bound = ipaddress.ip_address(listen_host)
    except ValueError:
        return []
    if bound.version != 4 or not 0 < port < 65536:
        return []
    if bound.is_unspecified:
        found: set[ipaddress.IPv4Address] = set()
        for text in interfaces:
            try:
                ip = ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                continue
            if isinstance(ip, ipaddress.IPv4Address) and not ip.is_unspecified:
                found.add(ip)
        candidates = sorted(found)
    else:
        candidates = [ipaddress.IPv4Address(listen_host)]
    usable = [ip for ip in candidates if not (ip.is_loopback or ip.is_link_local)]
    chosen = usable or candidates
    return [f"/ip4/{ip}/tcp/{port}" for ip in chosen[:MAX_ADDRS]]
