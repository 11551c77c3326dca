"""mDNS packets by hand, for the LAN interop tests (run inside a network namespace only).

Builds the three kinds of announcement a goop peer may meet on a LAN, byte by
byte from RFC 1035/6762 (no DNS library), and reads answers back:

- ``spec``: the libp2p mDNS spec (js-libp2p): a PTR for the service name and
  TXT ``dnsaddr=`` records for the instance; no SRV, no A.
- ``goop2``: go-libp2p's mDNS as goop2 uses it (GOOP2-MDNS.md): the bare
  service name ``<tag>.local.``, a random 32-63 character instance label,
  SRV (port 4001) and A for ``<label>.local.``, TTL 3200 (A: 120), no
  cache-flush bits.
- ``dnssd``: plain DNS-SD under ``_<tag>._udp.local.`` with SRV, TXT and A.

As a program (``python tests/mdnswire.py``):

    announce FORMAT TAG OUR_IP PEER_ID SECONDS   multicast that announcement every 0.5 s
                                                 (FORMAT flood: PEER_ID is how many peers)
    query TAG OUR_IP SECONDS                     ask as goop2 and as DNS-SD browsers do;
                                                 print every answer packet as JSON lines

Every loop is bounded by SECONDS; packets go to 224.0.0.251:5353 on OUR_IP's
interface only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any

MDNS = ("224.0.0.251", 5353)
PTR, TXT, SRV, A = 12, 16, 33, 1
IN = 1
TYPES = {PTR: "PTR", TXT: "TXT", SRV: "SRV", A: "A", 28: "AAAA", 47: "NSEC"}


def name(text: str) -> bytes:
    """A domain name as labels (no compression)."""
    out = b""
    for label in text.rstrip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def record(owner: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return name(owner) + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def txt(strings: list[str]) -> bytes:
    return b"".join(bytes([len(s.encode())]) + s.encode() for s in strings)


def response(answers: list[bytes], additionals: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A response: id 0, QR and AA set, no questions."""
    head = struct.pack("!HHHHHH", 0, 0x8400, 0, len(answers), 0, len(additionals))
    return head + b"".join(answers) + b"".join(additionals)


def query(names: list[str]) -> bytes:
    """A query with one PTR question per name (QM, no RD), as goop2's browser sends."""
    head = struct.pack("!HHHHHH", int.from_bytes(os.urandom(2), "big"), 0, len(names), 0, 0, 0)
    return head + b"".join(name(n) + struct.pack("!HH", PTR, IN) for n in names)


def announcement(fmt: str, tag: str, ip: str, peer_id: str) -> bytes:
    """One response packet announcing ``peer_id`` at ``/ip4/<ip>/tcp/4001`` in ``fmt``."""
    dnsaddr = [f"dnsaddr=/ip4/{ip}/tcp/4001/p2p/{peer_id}"]
    if fmt == "spec":
        service = f"_{tag}._udp.local."
        instance = f"{peer_id.lower()[:40]}.{service}"
        return response(
            [record(service, PTR, 120, name(instance))], [record(instance, TXT, 120, txt(dnsaddr))]
        )
    if fmt == "goop2":
        service = f"{tag}.local."
        label = "k3j9x0q2m5v8b1n4c7z6l0p9r2t5w8y1"  # 32 of [a-z0-9], as goop2's randomString
        instance, host = f"{label}.{service}", f"{label}.local."
        srv = struct.pack("!HHH", 0, 0, 4001) + name(host)
        return response(
            [record(service, PTR, 3200, name(instance))],
            [
                record(instance, SRV, 3200, srv),
                record(instance, TXT, 3200, txt(dnsaddr)),
                record(host, A, 120, socket.inet_aton(ip)),
            ],
        )
    if fmt == "dnssd":
        service = f"_{tag}._udp.local."
        instance, host = f"{peer_id}.{service}", "dnssd-peer.local."
        srv = struct.pack("!HHH", 0, 0, 4001) + name(host)
        return response(
            [record(service, PTR, 4500, name(instance))],
            [
                record(instance, SRV, 120, srv),
                record(instance, TXT, 4500, txt(dnsaddr)),
                record(host, A, 120, socket.inet_aton(ip)),
            ],
        )
    raise ValueError(f"unknown format {fmt!r}")


# --- reading ---------------------------------------------------------------------


def _read_name(buf: bytes, pos: int, depth: int = 0) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if pos >= len(buf) or depth > 20:
            raise ValueError("name runs past the packet")
        n = buf[pos]
        if n == 0:
            return ".".join(labels) + ".", pos + 1
        if n & 0xC0 == 0xC0:
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            rest, _ = _read_name(buf, target, depth + 1)
            return ".".join([*labels, rest.rstrip(".")]) + ".", pos + 2
        labels.append(buf[pos + 1 : pos + 1 + n].decode("utf-8", "replace"))
        pos += 1 + n


def parse(buf: bytes) -> dict[str, Any]:
    """A packet as {"response": bool, "records": [{section, name, type, ttl, ...}]}."""
    _, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", buf[:12])
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(buf, pos)
        pos += 4
    records = []
    for section, count in (("answer", an), ("authority", ns), ("additional", ar)):
        for _ in range(count):
            owner, pos = _read_name(buf, pos)
            rtype, rclass, ttl, length = struct.unpack("!HHIH", buf[pos : pos + 10])
            pos += 10
            rdata = buf[pos : pos + length]
            item: dict[str, Any] = {
                "section": section, "name": owner.lower(), "type": TYPES.get(rtype, rtype),
                "ttl": ttl, "flush": bool(rclass & 0x8000),
            }  # fmt: skip
            if rtype == PTR:
                item["target"] = _read_name(buf, pos)[0].lower()
            elif rtype == SRV:
                item["port"] = struct.unpack("!H", rdata[4:6])[0]
                item["target"] = _read_name(buf, pos + 6)[0].lower()
            elif rtype == TXT:
                strings, i = [], 0
                while i < len(rdata):
                    strings.append(rdata[i + 1 : i + 1 + rdata[i]].decode("utf-8", "replace"))
                    i += 1 + rdata[i]
                item["strings"] = strings
            elif rtype == A:
                item["address"] = socket.inet_ntoa(rdata)
            records.append(item)
            pos += length
    return {"response": bool(flags & 0x8000), "records": records}


# --- the program -------------------------------------------------------------------


def _socket(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 5353))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(
        socket.IPPROTO_IP,
        socket.IP_ADD_MEMBERSHIP,
        socket.inet_aton(MDNS[0]) + socket.inet_aton(ip),
    )
    return s


def flood(tag: str, ip: str, peers: int) -> list[bytes]:
    """A hostile LAN's worth of announcements: ``peers`` distinct (valid) peers in PTR +
    TXT packets of 20, plus peers with only loopback or public addresses, a TXT of
    255-byte junk strings, and records of types nobody asked for."""
    from goop.identity import _from_seed

    service = f"_{tag}._udp.local."
    ids = [_from_seed((n + 1000).to_bytes(32, "big"), "").peer_id for n in range(peers + 20)]
    packets = []
    for start in range(0, peers, 20):
        answers, extra = [], []
        for pid in ids[start : min(start + 20, peers)]:
            instance = f"{pid.lower()[:40]}.{service}"
            answers.append(record(service, PTR, 120, name(instance)))
            extra.append(record(instance, TXT, 120, txt([f"dnsaddr=/ip4/{ip}/tcp/4001/p2p/{pid}"])))
        packets.append(response(answers, extra))
    answers, extra = [], []
    for n, pid in enumerate(ids[peers:]):
        instance = f"bad{n}.{service}"
        host = "127.0.0.1" if n % 2 else "8.8.8.8"
        answers.append(record(service, PTR, 120, name(instance)))
        extra.append(record(instance, TXT, 120, txt([f"dnsaddr=/ip4/{host}/tcp/4001/p2p/{pid}"])))
    packets.append(response(answers, extra))
    junk = f"junk.{service}"
    packets.append(response(
        [record(service, PTR, 120, name(junk)), record(service, 99, 120, b"\x00" * 40)],
        [record(junk, TXT, 120, b"".join(b"\xff" + b"x" * 255 for _ in range(20)))],
    ))
    return packets


def announce(fmt: str, tag: str, ip: str, peer_id: str, seconds: float) -> None:
    s = _socket(ip)
    packets = flood(tag, ip, int(peer_id)) if fmt == "flood" else [
        announcement(fmt, tag, ip, peer_id)
    ]
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline and sent < 1000:
        for packet in packets:
            s.sendto(packet, MDNS)
        sent += 1
        print(json.dumps({"sent": sent}), flush=True)
        time.sleep(0.5)


def listen(tag: str, ip: str, seconds: float) -> None:
    s = _socket(ip)
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    asked = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - asked >= 1.0:
            # And a name nobody here owns: nothing may answer it.
            s.sendto(query([f"{tag}.local.", f"_{tag}._udp.local.", "_nobody._udp.local."]), MDNS)
            asked = time.monotonic()
        try:
            data, source = s.recvfrom(9000)
        except TimeoutError:
            continue
        try:
            packet = parse(data)
        except (ValueError, struct.error, IndexError) as e:
            print(json.dumps({"from": source[0], "unparsable": str(e)}), flush=True)
            continue
        if packet["response"] and source[0] != ip:
            print(json.dumps({"from": source[0], **packet}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "announce":
        announce(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))
    elif sys.argv[1] == "query":
        listen(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
