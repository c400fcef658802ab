"""What ``df`` shows on a mount: usable space after the layout's overhead.

The rule (docs/mount.md, *df*):

- each storage node in state "up" counts with its disk as the node sees it
  now (``StoreStats``: the store's total and used bytes, the file system
  the data directory is on); a node that does not answer within
  `STATS_TIMEOUT` counts with what the registry holds for it (the total
  it registered, and the bytes of the shards placed on it as used);
- a chunk of the mount root's layout is k data shards of m, each on a
  different node: its shards take m/k times its size, and a node holds at
  most one shard of it, so at most 1/m of all shards. The space for shards
  is the largest S with sum(min(free_i, S/m)) >= S, that is the smallest
  over t = 0..m-1 of m * (the sum without the t largest nodes) / (m - t);
  with equal nodes simply their sum. Size and available are that, over the
  nodes' sizes and their free space, times k/m. Used is size minus
  available: whatever else fills the disks counts as used. With fewer
  nodes than m (writes then use a reduced layout) the plain sums are used.

Nodes that report the same disk (machine and device: a dev cluster on one
machine) share it: each counts with an equal part of its size and free
space, so the disk counts once. Nodes whose disk is unknown (S3, plugins,
no answer) count alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from prismfs.data.layout import Layout
from prismfs.data.messages import StoreStats, StoreStatsReply
from prismfs.errors import PrismError
from prismfs.meta.commands import NodeInfo
from prismfs.wire.client import RpcPool

STATS_TIMEOUT = 2.0


@dataclass(frozen=True)
class Disk:
    total: int
    free: int


async def node_disks(pool: RpcPool, nodes: Sequence[NodeInfo]) -> list[Disk]:
    """Each "up" node's disk, asked of all of them at once."""
    up = [n for n in nodes if n.state == "up"]
    disks: list[Disk] = [Disk(n.capacity, max(0, n.capacity - n.used)) for n in up]
    names = [""] * len(up)

    async def ask(i: int, node: NodeInfo) -> None:
        try:
            reply = (await pool.call(node.address, StoreStats(), timeout=STATS_TIMEOUT)).message
        except PrismError:
            return  # the registry's numbers stay
        if isinstance(reply, StoreStatsReply):
            disks[i] = Disk(reply.total, max(0, reply.total - reply.used))
            names[i] = reply.disk

    async with trio.open_nursery() as nursery:
        for i, node in enumerate(up):
            nursery.start_soon(ask, i, node)
    return shared(disks, names)


def shared(disks: Sequence[Disk], names: Sequence[str]) -> list[Disk]:
    """Nodes on the same disk (same non-empty name) split it equally."""
    count = Counter(n for n in names if n)
    return [
        Disk(d.total // count[n], d.free // count[n]) if n else d
        for d, n in zip(disks, names, strict=True)
    ]


def usable(disks: Sequence[Disk], layout: Layout) -> Disk:
    """Raw disks as bytes of files of ``layout``."""
    total = shard_space([d.total for d in disks], layout.m)
    free = shard_space([d.free for d in disks], layout.m)
    return Disk(total * layout.k // layout.m, free * layout.k // layout.m)


def shard_space(sizes: Sequence[int], m: int) -> int:
    """How many bytes of shards fit on nodes of these ``sizes`` when each
    node takes at most one of every m shards (of one chunk)."""
    if len(sizes) < m:
        return sum(sizes)
    ordered = sorted(sizes, reverse=True)
    rest = sum(ordered)
    best = rest
    for t in range(m):  # the t largest nodes full to their 1/m share
        best = min(best, m * rest // (m - t))
        rest -= ordered[t]
    return best
