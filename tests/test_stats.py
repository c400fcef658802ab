"""`prismfs.stats`: counters and power-of-two latency histograms, and their
round trip through the JSON a mount hands out and the Prometheus text a node
serves."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from prismfs.gateway.metrics import stats_metrics
from prismfs.stats import Histogram, Stats


def test_histogram_quantiles_are_bucket_upper_bounds() -> None:
    h = Histogram()
    for us in (3, 3, 3, 100, 5000):
        h.observe(us / 1e6)
    assert h.count == 5
    assert abs(h.total_s - 5109e-6) < 1e-9
    assert h.quantile(0.5) == 4e-6  # 3 us lies in [2, 4)
    assert h.quantile(0.8) == 128e-6  # 100 us in [64, 128)
    assert h.quantile(1.0) == 8192e-6  # 5000 us in [4096, 8192)
    assert Histogram().quantile(0.5) == 0.0


def test_huge_samples_share_the_last_bucket() -> None:
    h = Histogram()
    h.observe(1e9)
    assert h.buckets[-1] == 1


def test_stats_round_trip_through_json_and_reset() -> None:
    s = Stats()
    s.count("raft.fsync", 3)
    s.count("raft.fsync")
    s.observe("fuse.lookup", 0.001)
    s.observe("fuse.lookup", 0.002)
    back = Stats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.counts["raft.fsync"] == 4
    assert back.latency["fuse.lookup"].count == 2
    assert back.latency["fuse.lookup"].buckets == s.latency["fuse.lookup"].buckets
    s.reset()
    assert not s.counts and not s.latency


def test_stats_as_prometheus_families() -> None:
    s = Stats()
    s.count("raft.ready", 7)
    s.observe("served.Query", 0.0005)
    s.observe("served.Query", 0.05)

    class C(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return stats_metrics(s)

    registry = CollectorRegistry()
    registry.register(C())
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    events = {x.labels["event"]: x.value for x in families["prismfs_events"].samples}
    assert events == {"raft.ready": 7, "served.Query": 2}
    samples = families["prismfs_latency_seconds"].samples
    count = [x.value for x in samples if x.name.endswith("_count")]
    inf = [x.value for x in samples if x.labels.get("le") == "+Inf"]
    below_1ms = [x.value for x in samples if x.labels.get("le") == "0.000512"]
    assert count == [2] and inf == [2] and below_1ms == [1]
