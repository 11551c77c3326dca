"""Guest mode or a trio thread? Measures both ways of hosting py-libp2p in the reactor.

For each mode (``guest``: `trio.lowlevel.start_guest_run` on the reactor;
``thread``: ``trio.run`` in a thread of its own) this runs two libp2p
adapters in one process on 127.0.0.1, connects them, and measures:

- ``fetch_ms``: round trip of ``fetch_content`` (a new /goop/content/1.0.0
  stream each time), Deferred to Deferred, p50 and p99 over N fetches;
- ``gossip_ms``: publish on one adapter to delivery on the reactor thread of
  the other, p50 and p99 over N messages (spaced 120 ms: GossipSub allows
  10 messages/s per peer);
- ``stall_ms``: the longest reactor stall (a 10 ms LoopingCall probe) while
  doing it;
- ``cpu_ms``: process CPU time for the whole run.

    .venv/bin/python bench/trio_modes.py [--n 200]

Prints one JSON line per mode. docs/lan.md quotes the figures and the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task

from goop.identity import load_or_create
from goop.message import PresenceMessage
from goop.p2p.adapter import Libp2pAdapter, _import_libp2p
from goop.stallprobe import StallProbe


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@defer.inlineCallbacks
def measure(mode: str, n: int) -> Any:
    home = tempfile.mkdtemp()
    arrived: dict[int, float] = {}

    def on_b(message: PresenceMessage) -> None:
        arrived.setdefault(message.ts, time.perf_counter())

    ids = [load_or_create(os.path.join(home, f"{name}.key"))[0] for name in "ab"]
    a = Libp2pAdapter(reactor, ids[0], "bench", lambda m: None, "a line",
                      listen_host="127.0.0.1", mode=mode)  # type: ignore[arg-type]
    b = Libp2pAdapter(reactor, ids[1], "bench", on_b, "b line",
                      listen_host="127.0.0.1", mode=mode)  # type: ignore[arg-type]
    for x in (a, b):
        x.startService()
    a_addr = (yield a.when_ready())[0]
    yield b.when_ready()
    yield b.connect(a_addr)
    # Let the GossipSub mesh form (subscriptions, heartbeat).
    # Messages are told apart by ts (publishing also sets a's content line).
    warm = PresenceMessage("update", ids[0].peer_id, "a line", "", "", 1)
    while 1 not in arrived:
        yield a.publish(warm)
        yield task.deferLater(reactor, 0.2, lambda: None)

    probe = StallProbe(reactor, 0.01)
    probe.start()
    started_cpu = cpu_s()
    fetches: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        line = yield b.fetch_content(ids[0].peer_id)
        assert line == "a line", line
        fetches.append(time.perf_counter() - t)
    gossip: list[float] = []
    for i in range(n):
        ts = i + 2
        sent = time.perf_counter()
        yield a.publish(PresenceMessage("update", ids[0].peer_id, "a line", "", "", ts))
        deadline = sent + 5
        while ts not in arrived and time.perf_counter() < deadline:
            yield task.deferLater(reactor, 0.001, lambda: None)
        if ts in arrived:
            gossip.append(arrived[ts] - sent)
        yield task.deferLater(reactor, max(0.0, 0.12 - (time.perf_counter() - sent)), lambda: None)
    used = cpu_s() - started_cpu
    stats = probe.take()
    probe.stop()
    yield defer.gatherResults([a.stopService(), b.stopService()])
    return {
        "mode": mode,
        "n": n,
        "fetch_ms_p50": pct(fetches, 0.5),
        "fetch_ms_p99": pct(fetches, 0.99),
        "gossip_delivered": len(gossip),
        "gossip_ms_p50": pct(gossip, 0.5) if gossip else None,
        "gossip_ms_p99": pct(gossip, 0.99) if gossip else None,
        "stall_ms": stats["max_stall_ms"],
        "cpu_ms": round(used * 1000),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("mode", nargs="?", choices=("guest", "thread"))
    args = p.parse_args()
    if args.mode is None:
        # One process per mode: trio allows one guest run per thread, and a
        # fresh interpreter keeps the modes from sharing warm caches.
        import subprocess

        for mode in ("guest", "thread"):
            subprocess.run([sys.executable, __file__, "--n", str(args.n), mode], check=True)
        return
    _import_libp2p()

    @defer.inlineCallbacks
    def run() -> Any:
        try:
            result = yield measure(args.mode, args.n)
            print(json.dumps(result), flush=True)
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":
    main()
