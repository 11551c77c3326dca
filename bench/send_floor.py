"""The floor under the fan-out: one non-blocking ``send`` per stream, nothing else.

Opens N loopback TCP connections (and, for comparison, N Unix socket pairs),
writes one 200-byte HTTP chunk to every one of them in a bare Python loop,
and prints the cost per send in microseconds. The server's CPU per delivered
event at one event per batch (``make bench``) is this plus goop's own work.

    .venv/bin/python bench/send_floor.py [--n 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import time

CHUNK = b"c8\r\n" + b"x" * 200 + b"\r\n"


def drain(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for _, reader in pairs:
        try:
            while reader.recv(1 << 16):
                pass
        except BlockingIOError:
            pass


def per_send_us(pairs: list[tuple[socket.socket, socket.socket]], rounds: int) -> float:
    sends = [writer.send for writer, _ in pairs]
    spent = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for send in sends:
            send(CHUNK)
        spent += time.perf_counter() - started
        drain(pairs)  # not timed: the readers are another process in real life
    return spent / rounds / len(pairs) * 1e6


def tcp_pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(n)
    pairs = []
    for _ in range(n):
        reader = socket.create_connection(listener.getsockname())
        writer, _ = listener.accept()
        writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for s in (reader, writer):
            s.setblocking(False)
        pairs.append((writer, reader))
    listener.close()
    return pairs


def unix_pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(n):
        writer, reader = socket.socketpair()
        for s in (reader, writer):
            s.setblocking(False)
        pairs.append((writer, reader))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    for kind, make in (("tcp_loopback", tcp_pairs), ("unix_socketpair", unix_pairs)):
        pairs = make(args.n)
        try:
            per_send_us(pairs, 2)  # warm up
            result = per_send_us(pairs, args.rounds)
        finally:
            for a, b in pairs:
                a.close()
                b.close()
        print(json.dumps({"kind": kind, "streams": args.n, "us_per_send": round(result, 2)}))


if __name__ == "__main__":
    main()
