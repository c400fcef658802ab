"""Counters and latency histograms of one process: what each operation costs.

A mount counts every FUSE request it answers and every RPC it makes; a node
counts every RPC it serves and sends and, per Raft `Ready`, the messages,
thread hops, fsyncs and apply time (``docs/architecture.md``, *Counting the
hops*). ``prismfs mount stats`` prints a mount's, a node's ``/metrics``
exposes its own. Dividing the counts of a run by the operations it did gives
the per-operation cost (``benchmarks/bench_ops.py``).

Plain Python, no clock and no trio: the callers pass the durations they
measured. Names are dotted, ``fuse.lookup``, ``rpc.Query``,
``raft.fsync``; a histogram and a counter may share a name.

A histogram keeps power-of-two buckets of microseconds (bucket ``i`` holds
durations in ``[2**(i-1), 2**i)`` us, bucket 0 those under 1 us), which is
coarse but costs one ``int.bit_length`` per sample and bounds every
percentile within a factor of two.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BUCKETS = 32
"""Enough for 2**31 us (36 minutes); longer samples share the last bucket."""


@dataclass
class Histogram:
    count: int = 0
    total_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        us = int(seconds * 1e6)
        self.buckets[min(us.bit_length(), BUCKETS - 1)] += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile, in seconds."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return (1 << i) / 1e6
        return (1 << (BUCKETS - 1)) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_s": self.total_s,
            "buckets": {str(i): n for i, n in enumerate(self.buckets) if n},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls(int(d["count"]), float(d["sum_s"]))
        for i, n in d.get("buckets", {}).items():
            h.buckets[int(i)] = int(n)
        return h


class Stats:
    """This process's counters (``count``) and latency histograms (``observe``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latency: dict[str, Histogram] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def observe(self, name: str, seconds: float) -> None:
        h = self.latency.get(name)
        if h is None:
            h = self.latency[name] = Histogram()
        h.observe(seconds)

    def reset(self) -> None:
        self.counts.clear()
        self.latency.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "latency": {k: h.to_dict() for k, h in sorted(self.latency.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        s = cls()
        s.counts.update({str(k): int(v) for k, v in d.get("counts", {}).items()})
        s.latency = {str(k): Histogram.from_dict(v) for k, v in d.get("latency", {}).items()}
        return s
