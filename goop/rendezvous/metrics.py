"""``/metrics``: the rendezvous's state and counters in Prometheus's text format.

One job: when scraped, read what the services already keep (the peer table,
the hub, the /ws channel, the stall probe's histograms, publish outcomes)
and write it through ``prometheus_client`` with a registry of our own (no
global state; several services in one process, as in the tests, each have
theirs). Nothing is computed between scrapes but plain integer counters.
Every metric is listed in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from twisted.web import resource

from goop.histogram import Histogram

if TYPE_CHECKING:
    from goop.rendezvous.service import RendezvousService

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
# HTTP status of a publish (or what a /ws frame would have got) -> outcome label.
OUTCOMES: Final = {
    204: "accepted",
    400: "invalid",
    403: "forbidden",
    405: "invalid",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


class PublishOutcomes:
    """Publishes counted by transport (``http``, ``ws``) and outcome."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, transport: str, status: int) -> None:
        key = (transport, OUTCOMES.get(status, "other"))
        self.counts[key] = self.counts.get(key, 0) + 1


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class RendezvousCollector(Collector):
    def __init__(self, service: RendezvousService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        s = self.service
        board, hub, ws = s.board, s.hub, s.web.ws
        on_ws = len(ws.sockets)
        peers = GaugeMetricFamily(
            "goop_peers_online", "Peers in the table, by how they reach us", labels=["transport"]
        )
        peers.add_metric(["ws"], on_ws)
        peers.add_metric(["http"], max(0, len(board.registry) - on_ws))
        yield peers
        streams = GaugeMetricFamily(
            "goop_streams_open", "Open event streams, by kind", labels=["kind"]
        )
        streams.add_metric(["sse"], hub.counts.get("sse", 0))
        streams.add_metric(["ws"], hub.counts.get("ws", 0))
        yield streams
        # Unlabelled families take their one value directly (value=...).
        yield GaugeMetricFamily(
            "goop_streams_paused", "Streams whose reader is not keeping up (paused)",
            value=sum(1 for sub in hub.subscribers if sub.paused),
        )  # fmt: skip
        publishes = CounterMetricFamily(
            "goop_publishes", "Presence messages received, by transport and outcome",
            labels=["transport", "outcome"],
        )  # fmt: skip
        counts = dict(s.web.outcomes.counts)
        too_large = s.site.publish_too_large
        if too_large:
            counts[("http", "too_large")] = counts.get(("http", "too_large"), 0) + too_large
        for (transport, outcome), n in sorted(counts.items()):
            publishes.add_metric([transport, outcome], n)
        yield publishes
        yield CounterMetricFamily(
            "goop_events_sent", "Event frames handed to streams (events times subscribers)",
            value=board.events_sent,
        )  # fmt: skip
        yield CounterMetricFamily(
            "goop_events_sent_bytes", "Bytes of those event frames", value=board.bytes_sent
        )
        yield CounterMetricFamily(
            "goop_coalesced_deliveries",
            "Batches a stream that was behind took as each peer's latest state",
            value=hub.coalesced,
        )
        yield CounterMetricFamily(
            "goop_streams_cut_off", "Streams cut off for not reading (or too far behind)",
            value=hub.cut_off,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "goop_event_log_head", "Id of the newest event", value=board.events.head
        )
        probe = s.stall_probe
        yield _histogram(
            "goop_reactor_stall_seconds",
            "How late the reactor ran a 10 ms timer: time it spent elsewhere",
            probe.stalls,
        )
        yield _histogram(
            "goop_gc_pause_seconds", "Pauses of Python's garbage collector", probe.gc_pauses
        )
        store = getattr(board, "store_latency", None)
        if isinstance(store, Histogram):
            yield _histogram(
                "goop_store_seconds", "Time of each shared-store (SQLite) operation", store
            )


class MetricsPage(resource.Resource):
    """The metrics port's only page: ``GET /metrics``, no password (bind it privately)."""

    isLeaf = True

    def __init__(self, text: Callable[[], bytes] | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._text = text

    def render_GET(self, request: Any) -> bytes:
        if request.path != b"/metrics" or self._text is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"only /metrics here\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self._text()


def registry_for(service: RendezvousService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RendezvousCollector(service))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    body: bytes = generate_latest(registry)
    return body
