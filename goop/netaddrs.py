"""Which URLs other machines can use to reach a server bound to an address.

Reads the machine's interface addresses (ifaddr) and keeps the ones a
listener on ``bind`` actually answers on, loopback left out.
"""

from __future__ import annotations

import ipaddress

import ifaddr


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
