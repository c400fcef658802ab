"""What ``df`` shows on a mount: usable space after the layout's overhead.

The rule (docs/mount.md, *df*):

- each storage node in state "up" counts with its disk as the node sees it
  now (``StoreStats``: the store's total and used bytes, the file system
  the data directory is on); a node that does not answer within
  `STATS_TIMEOUT` counts with what the registry holds for it (the total
  it registered, and the bytes of the shards placed on it as used);
- raw size and raw free space are the sums over those nodes;
- a chunk of the mount root's layout, k data shards of m, takes m/k times
  its size, so size = raw size * k / m and available = raw free * k / m.
  Used is size minus available: whatever else fills the disks counts as used.

Nodes that share a disk (a dev cluster on one machine) each count it in
full: a node reports its file system, not which others are on it.
"""

from __future__ import annotations

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

    async def ask(i: int, node: NodeInfo) -> None:
        try:
            reply = (await pool.call(node.address, StoreStats(), timeout=STATS_TIMEOUT)).message
        except PrismError:
            return  # the registry's numbers stay
        if isinstance(reply, StoreStatsReply):
            disks[i] = Disk(reply.total, max(0, reply.total - reply.used))

    async with trio.open_nursery() as nursery:
        for i, node in enumerate(up):
            nursery.start_soon(ask, i, node)
    return disks


def usable(disks: Sequence[Disk], layout: Layout) -> Disk:
    """Raw disks as bytes of files of ``layout``."""
    total = sum(d.total for d in disks)
    free = sum(d.free for d in disks)
    return Disk(total * layout.k // layout.m, free * layout.k // layout.m)
