"""The last hour of the cluster's activity, kept in memory on every node, and
answered by the leader (`Activity`) for the web console's charts and rates.

Every ``INTERVAL_S`` each node samples counters that only grow: the Raft
commit index, the shard bytes stored and served cluster-wide, and the
leader's repair, move and scrub counters. Cluster bytes add up what each
node's counter grew by since the last sample (its own, and on the leader
those the nodes' heartbeats carry): a node's first report is only a
baseline, and a node restarted counts from zero again, so neither a new
leader nor a restart shows a burst that did not happen. Rates and estimated times left are
differences between samples, worked out by the reader. A sample where a
counter went down (a new leader counts its own repairs from zero, a node
restarted) is a reset: rates skip across it. Nothing here is durable: a
restarted node, or a new leader, starts an empty hour.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

import trio

from prismfs.clock import wall_ns
from prismfs.errors import PrismError
from prismfs.leader.admin import AdminMessage, leader_only
from prismfs.leader.rebalance import Mover
from prismfs.leader.repair import Health
from prismfs.leader.scrub import Scrub
from prismfs.node.consensus import Consensus
from prismfs.wire.auth import EVERYONE
from prismfs.wire.codec import I64, U64
from prismfs.wire.server import Call, RpcServer

INTERVAL_S = 5.0
KEEP = 720  # an hour of samples

FIELDS = (
    "t_ns",
    "commit",
    "bytes_in",
    "bytes_out",
    "repaired_chunks",
    "moved_shards",
    "moved_bytes",
    "scrub_chunks",
)


class Activity(AdminMessage, frozen=True):
    """The leader's samples of the last hour (oldest first)."""


class ActivityReply(AdminMessage, frozen=True):
    interval_s: float
    fields: tuple[str, ...]  # the names of each sample's values
    samples: tuple[tuple[I64 | U64, ...], ...]


class ActivityHistory:
    """The samples, and the task that takes them."""

    def __init__(
        self,
        consensus: Consensus,
        health: Health,
        mover: Mover,
        scrub: Scrub,
        own_traffic: Callable[[], tuple[int, int]],
        node_id: str,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.consensus = consensus
        self.health = health
        self.mover = mover
        self.scrub = scrub
        self.own_traffic = own_traffic
        self.node_id = node_id
        self.interval_s = interval_s
        self.samples: deque[tuple[int, ...]] = deque(maxlen=KEEP)
        self._seen: dict[str, tuple[int, int]] = {}  # node -> its counters at the last sample
        self._bytes = (0, 0)  # cluster bytes stored, served, seen growing here

    def register(self, server: RpcServer) -> None:
        server.register(Activity, self._answer, roles=EVERYONE)

    def traffic(self, leader: bool) -> tuple[int, int]:
        """The cluster's bytes stored and served, as grown since this node started."""
        counters = {self.node_id: self.own_traffic()}
        if leader:
            counters |= {n: c for n, c in self.health.traffic.items() if n != self.node_id}
        else:  # other nodes' counters are heard only while leading: baselines anew then
            self._seen = {n: c for n, c in self._seen.items() if n == self.node_id}
        total_in, total_out = self._bytes
        for node, (i, o) in counters.items():
            last = self._seen.get(node)
            if last is not None:
                total_in += i - last[0] if i >= last[0] else i  # restarted: from zero
                total_out += o - last[1] if o >= last[1] else o
            self._seen[node] = (i, o)
        self._bytes = (total_in, total_out)
        return self._bytes

    def sample(self) -> tuple[int, ...]:
        status = self.consensus.status()
        bytes_in, bytes_out = self.traffic(status.role == "leader")
        stats, moves = self.health.stats, self.mover.stats
        return (
            wall_ns(),
            status.commit,
            bytes_in,
            bytes_out,
            stats.chunks_repaired,
            moves.shards_moved,
            moves.bytes_moved,
            self.scrub.progress.findings.chunks,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with contextlib.suppress(PrismError):  # the consensus service is still starting
                self.samples.append(self.sample())
            await trio.sleep(self.interval_s)

    async def _answer(self, request: Activity, call: Call) -> ActivityReply:
        leader_only(self.consensus)
        # The latest values too, so a rate is never older than one interval.
        return ActivityReply(self.interval_s, FIELDS, (*self.samples, self.sample()))
