"""``GET /metrics``: Prometheus text format.

Per node: HTTP requests (by method, route and status), their latency, bytes
received and sent; this node's Raft term, commit and applied index and
whether it leads; and, as this node's replica of the metadata sees them,
chunks healthy / degraded / unavailable and every node's capacity, usage and
state. Repair and shard-move counters are the leader's (zero elsewhere: the
leader does that work). Cluster-wide figures from a follower's replica may
trail the leader's by the replication lag.

And the node's own costs (`prismfs.stats`): ``prismfs_events_total{event}``
counts RPCs served and sent, Readys, the Raft messages by type, thread hops,
fsyncs and entries applied; ``prismfs_latency_seconds{what}`` histograms the
time of RPCs served and made, of each Ready's apply and of each query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from prismfs.leader.repair import cluster_counts
from prismfs.stats import Stats

if TYPE_CHECKING:
    from prismfs.leader.rebalance import Mover
    from prismfs.leader.repair import Health
    from prismfs.meta.namespace import Namespace
    from prismfs.node.consensus import Consensus

STATES = ("up", "down", "draining", "removed")


class NodeCollector(Collector):
    def __init__(
        self, consensus: Consensus, namespace: Namespace, health: Health, mover: Mover
    ) -> None:
        self.consensus, self.namespace, self.health, self.mover = (
            consensus,
            namespace,
            health,
            mover,
        )
        self.chunk_health = (0, 0, 0, 0)  # as of the last `refresh`

    async def refresh(self) -> None:
        """Read the chunk health off the event loop (`cluster_counts`) before a scrape."""
        self.chunk_health = (await cluster_counts(self.namespace))[0]

    def collect(self) -> Iterator[Metric]:

        status = self.consensus.status()
        for name, value, doc in (
            ("prismfs_raft_term", status.term, "Raft term this node is in."),
            ("prismfs_raft_commit_index", status.commit, "Raft commit index known here."),
            ("prismfs_raft_applied_index", status.applied, "Last Raft index applied here."),
            ("prismfs_raft_last_index", status.last_index, "Last index in this node's log."),
            ("prismfs_raft_leader", int(status.role == "leader"), "1 if this node leads."),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        _, healthy, degraded, unavailable = self.chunk_health
        chunks = GaugeMetricFamily(
            "prismfs_chunks",
            "Chunks with shards, by health (this replica's view).",
            labels=["health"],
        )
        for label, value in (
            ("healthy", healthy),
            ("degraded", degraded),
            ("unavailable", unavailable),
        ):
            chunks.add_metric([label], value)
        yield chunks
        capacity = GaugeMetricFamily(
            "prismfs_node_capacity_bytes", "Raw capacity.", labels=["node"]
        )
        used = GaugeMetricFamily("prismfs_node_used_bytes", "Shard bytes placed.", labels=["node"])
        state = GaugeMetricFamily(
            "prismfs_node_state", "1 for the node's registry state.", labels=["node", "state"]
        )
        for n in self.namespace.nodes():
            capacity.add_metric([n.node], n.capacity)
            used.add_metric([n.node], n.used)
            for s in STATES:
                state.add_metric([n.node, s], int(n.state == s))
        yield capacity
        yield used
        yield state
        stats = self.health.stats
        pending = GaugeMetricFamily(
            "prismfs_repair_pending_chunks", "Chunks the last repair pass found below redundancy."
        )
        pending.add_metric([], stats.pending)
        yield pending
        for name, value, doc in (
            ("prismfs_repair_chunks", stats.chunks_repaired, "Chunks rebuilt by this leader."),
            ("prismfs_repair_bytes", stats.bytes_written, "Shard bytes rebuilt by this leader."),
            (
                "prismfs_moved_shards",
                self.mover.stats.shards_moved,
                "Shards moved (drain, rebalance).",
            ),
            ("prismfs_moved_bytes", self.mover.stats.bytes_moved, "Shard bytes moved."),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        yield from stats_metrics(self.consensus.stats)


def stats_metrics(stats: Stats) -> Iterator[Metric]:
    """A process's `Stats` as Prometheus families."""
    events = CounterMetricFamily(
        "prismfs_events",
        "RPCs served (served.TYPE) and made (rpc.TYPE), Readys, Raft messages sent and "
        "received by type, thread hops, fsyncs, entries applied.",
        labels=["event"],
    )
    for name, n in sorted(stats.counts.items()):
        events.add_metric([name], n)
    for name, h in sorted(stats.latency.items()):
        events.add_metric([name], h.count)
    yield events
    latency = HistogramMetricFamily(
        "prismfs_latency_seconds",
        "Time of RPCs served and made, of each Ready's apply, of each query.",
        labels=["what"],
    )
    for name, h in sorted(stats.latency.items()):
        buckets, seen = [], 0
        for i, n in enumerate(h.buckets):
            seen += n
            if n or i == len(h.buckets) - 1:
                buckets.append((f"{(1 << i) / 1e6:g}", seen))
        buckets[-1] = ("+Inf", h.count)
        latency.add_metric([name], buckets, h.total_s)
    yield latency


class Metrics:
    def __init__(self, node: NodeCollector | None = None) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "prismfs_http_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "prismfs_http_request_seconds",
            "Time to the response's first byte.",
            ["method", "route"],
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "prismfs_http_received_bytes", "File bytes received (PUT).", registry=self.registry
        )
        self.bytes_out = Counter(
            "prismfs_http_sent_bytes", "File bytes sent (GET).", registry=self.registry
        )
        if node is not None:
            self.registry.register(node)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    async def render(self) -> tuple[bytes, str]:
        if self.node is not None:
            await self.node.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
