"""A full peer's ``/metrics`` (on its viewer's port): who it sees, over which channel.

Read when scraped from the peer table and the viewer's stall probe, through a
``prometheus_client`` registry of its own. Listed in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from goop.peertable import SOURCES, VERIFIED, PeerTable
from goop.stallprobe import StallProbe


class PeerCollector(Collector):
    def __init__(self, table: PeerTable, probe: StallProbe) -> None:
        self.table = table
        self.probe = probe

    def collect(self) -> Iterator[Any]:
        views = self.table.views()
        seen = GaugeMetricFamily(
            "goop_peer_sees",
            "Peers this peer lists, by the channel it heard them on (one peer may be on several)",
            labels=["source"],
        )
        for source in SOURCES:
            seen.add_metric([source], sum(1 for v in views if source in v.seen))
        yield seen
        yield GaugeMetricFamily("goop_peer_peers_online", "Peers this peer lists", value=len(views))
        yield GaugeMetricFamily(
            "goop_peer_peers_signed",
            "Listed peers whose shown message carried a checked signature",
            value=sum(1 for v in views if v.proof == VERIFIED),
        )
        yield CounterMetricFamily(
            "goop_peer_messages_rejected",
            "Messages dropped by the signature rules (bad signature, replay, unsigned for a "
            "signed peer)",
            value=self.table.rejected,
        )
        h = self.probe.stalls
        yield HistogramMetricFamily(
            "goop_reactor_stall_seconds", "How late the reactor ran a 10 ms timer",
            buckets=h.cumulative(), sum_value=h.sum,
        )  # fmt: skip


def registry_for(table: PeerTable, probe: StallProbe) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(table, probe))
    ProcessCollector(registry=registry)
    return registry
