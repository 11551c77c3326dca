"""LAN discovery: the libp2p adapter and the zeroconf (mDNS) bridge, wired into a peer.

This package is imported only by a full peer with ``p2p.enabled`` (see
``goop.tap``); ``--rendezvous-only`` never imports it, nor libp2p, nor
zeroconf. docs/lan.md describes the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from goop.logsafe import safe
from goop.message import PresenceMessage

log = Logger()


class LanChannel:
    """The publisher's channel ``lan``: presence goes out on the GossipSub topic."""

    name = "lan"

    def __init__(self, adapter: Any, reactor: Any) -> None:
        self.adapter = adapter
        self.reactor = reactor

    def send(self, message: PresenceMessage, timeout: float) -> Deferred[None]:
        # At start libp2p needs a moment; wait for it instead of failing.
        d: Deferred[Any] = self.adapter.when_ready()
        d.addCallback(lambda _: self.adapter.publish(message))
        return d.addTimeout(timeout, self.reactor)


class _ContentCheck:
    """Fetches each new LAN peer's content line once and logs it.

    It proves the direct stream works both ways (an operator sees it in the
    log) and costs one short stream per peer arrival.
    """

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.checked: set[str] = set()

    def __call__(self, kind: str, view: Any) -> None:
        if kind == "left":
            self.checked.discard(view.peer_id)
            return
        if "lan" not in view.sources or view.peer_id in self.checked:
            return
        peer_id = view.peer_id
        self.checked.add(peer_id)
        d = self.adapter.fetch_content(peer_id)
        d.addCallbacks(
            lambda line: log.info(
                "content of {peer_id} over libp2p: {line}",
                peer_id=peer_id,
                line=safe(line, quote=True),
            ),
            lambda f: log.info(
                "content of {peer_id} over libp2p failed: {why}",
                peer_id=peer_id,
                why=f.getErrorMessage() or f.type.__name__,
            ),
        )


def add_lan_services(
    root: Any,
    config: Any,
    reactor: Any,
    identity: Any,
    table: Any,
    me: Any,
    punch: Any = None,
    on_ready: Callable[[], None] | None = None,
) -> list[Any]:
    """Attach the libp2p adapter (and the mDNS bridge) to ``root``.

    Returns the publisher channels they provide (``lan``), so the caller can
    hand them to the publisher; call this before the publisher is attached,
    so the publisher stops (and says ``offline`` on the topic) first.
    From then on ``me`` publishes the adapter's addresses, ``punch`` (a
    `goop.presence.node.PunchDialer`) dials through it, and ``on_ready`` is
    called once the host listens (our presence has addresses now).
    """
    from goop.p2p.adapter import Libp2pAdapter
    from goop.presence.node import table_feeder

    p2p = config.p2p
    if not p2p.enabled:
        if p2p.mdns_enabled:
            log.info("mDNS is off too: it only finds libp2p peers, and p2p.enabled is false")
        return []

    feed = table_feeder(table, "lan", reactor)
    adapter = Libp2pAdapter(
        reactor,
        identity,
        config.presence.topic,
        feed,
        content=me.current().content,
        listen_port=p2p.listen_port,
    )
    adapter.setName("libp2p")  # type: ignore[no-untyped-call]
    adapter.setServiceParent(root)  # type: ignore[no-untyped-call]
    me.addrs = adapter.advertised_addrs
    if punch is not None:
        punch.dialer = adapter
    if on_ready is not None:
        ready = on_ready

        def listening(_: Any) -> None:
            ready()

        adapter.when_ready().addCallbacks(listening, lambda f: None)
    table.add_observer(_ContentCheck(adapter))
    if p2p.mdns_enabled:
        from goop.p2p.mdns import MdnsBridge

        bridge = MdnsBridge(reactor, adapter, p2p.mdns_tag, p2p.mdns_interfaces)
        bridge.setName("mdns")  # type: ignore[no-untyped-call]
        bridge.setServiceParent(root)  # type: ignore[no-untyped-call]
    return [LanChannel(adapter, reactor)]
