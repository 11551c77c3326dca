"""A hostile LAN peer for the namespace tests: joins the presence topic and forges.

    python tests/lanforger.py KEYFILE DIAL_MULTIADDR VICTIM_PEER_ID VICTIM_SIGNED_JSON

It is a real libp2p peer (goop's own adapter, its own key), dials the given
peer, and for at most 15 s publishes on the presence topic, every 200 ms:
an unsigned update naming the victim, and the victim's own signed message
with its content changed. Each publish prints ``forged N``; it exits 0.
Run inside a network namespace only (it listens on 0.0.0.0 there).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from twisted.internet import defer, reactor, task

from goop.identity import load_or_create
from goop.message import Origin, PresenceMessage, message_from_object
from goop.p2p.adapter import Libp2pAdapter

TOPIC = "goop.presence.v1"
ROUNDS = 75  # 15 s at 200 ms


@defer.inlineCallbacks
def main(key_file: str, dial: str, victim: str, victim_json: str):  # type: ignore[no-untyped-def]
    identity, _ = load_or_create(key_file)
    adapter = Libp2pAdapter(reactor, identity, TOPIC, lambda m: None, listen_host="0.0.0.0")
    adapter.startService()
    yield adapter.when_ready()
    yield adapter.connect(dial)
    print(f"forger {identity.peer_id} connected", flush=True)
    real = message_from_object(json.loads(victim_json), 1, Origin.RELAY)
    unsigned = PresenceMessage("update", victim, "forged by a LAN peer", ts=real.ts + 1)
    altered = replace(real, content="forged by a LAN peer", verified=False)
    for n in range(ROUNDS):
        for message in (unsigned, altered):
            yield adapter._call(adapter._publish, message.encode())
        print(f"forged {n}", flush=True)
        yield task.deferLater(reactor, 0.2, lambda: None)
    yield adapter.stopService()


def run() -> None:
    def done(result: object) -> None:
        if isinstance(result, defer.failure.Failure):  # type: ignore[attr-defined]
            result.printTraceback()
        reactor.stop()  # type: ignore[attr-defined]

    main(*sys.argv[1:5]).addBoth(done)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    run()
