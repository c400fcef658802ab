"""The old copy of a moved shard is deleted only when that cannot lose data.

A move copies shard i of a chunk from node A to node B, commits, and
deletes A's copy a few seconds later. Meanwhile the cluster may have put the
same shard back on A (repair rebuilt it there when B went down), and the
node running the move may have been deposed in a partition, its replica's
view of the namespace stale. The delete must then keep A's copy: the leader
asks the cluster (a linearizable read), a node that is not the leader
deletes nothing, and the holder deletes only the very file that was there
when the move began (its version), so a copy written there since stays.

The rebalancer runs against two real namespaces (the cluster's and this
replica's, which can lag behind it) and a recording shard pool; the node
side runs a real `ShardService` on a real local store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from prismfs.data.messages import (
    CopyShard,
    DeleteShards,
    ShardInfo,
    ShardList,
    ShardPut,
    ShardsDeleted,
    StatShards,
)
from prismfs.data.service import ShardService
from prismfs.data.stores import shard_id
from prismfs.data.stores.local import LocalStore
from prismfs.errors import InvalidArgument
from prismfs.leader.rebalance import Mover
from prismfs.meta.commands import (
    ROOT_INO,
    ChunkRecord,
    CommitChunks,
    Mknod,
    MoveShards,
    RegisterNode,
)
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus_messages import Proposed, QueryResult
from prismfs.wire.client import Response
from prismfs.wire.codec import Message, encode_message
from prismfs.wire.server import Call

NODES = ("n1", "n2", "n3", "n4")
CHUNK = bytes([9]) * 16
MOVED = shard_id(CHUNK, 1)
VERSION = 1_700_000_000_123_456_789  # the old copy's mtime_ns on its node


class Cluster:
    """The cluster's namespace and this replica's; the leader's own commits
    reach both, other leaders' only the cluster's. Shard calls are recorded."""

    def __init__(self) -> None:
        self.truth = Namespace()
        self.view = Namespace()
        self.index = 0
        self.role = "leader"
        self.deletes: list[tuple[str, DeleteShards]] = []
        for n in NODES:
            self.everywhere(RegisterNode(0, n, f"addr-{n}", "", 1 << 30))
        self.everywhere(Mknod(0, ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0))
        ino = self.truth.lookup(ROOT_INO, b"f").ino
        rec = ChunkRecord(CHUNK, 100, 50, 2, 3, ("n1", "n4", "n3"), (b"",) * 3)
        self.everywhere(CommitChunks(1, ino, ((0, rec),), 100))
        self.record = rec

    def everywhere(self, command: Any) -> None:
        self.index += 1
        self.truth.apply(self.index, encode_message(command))
        self.view.apply(self.index, encode_message(command))

    def elsewhere(self, command: Any) -> None:
        """Committed by another leader: this replica has not applied it yet."""
        self.index += 1
        self.truth.apply(self.index, encode_message(command))

    # --- what the rebalancer calls -------------------------------------------------------

    async def propose_internal(self, op: bytes, timeout: float | None = None) -> Proposed:
        self.index += 1
        self.view.apply(self.index, op)
        return Proposed(self.index, self.truth.apply(self.index, op))

    async def query(self, op: bytes, *args: Any, **kwargs: Any) -> QueryResult:
        return QueryResult(self.index, self.truth.query(op))

    async def call(self, address: str, request: Message, *a: Any, **kw: Any) -> Response:
        if isinstance(request, CopyShard):
            return Response(ShardPut(50))
        if isinstance(request, StatShards):
            return Response(ShardList(tuple(ShardInfo(s, 50, VERSION) for s in request.shard_ids)))
        assert isinstance(request, DeleteShards)
        self.deletes.append((address, request))
        return Response(ShardsDeleted(len(request.shard_ids)))


def mover_for(cluster: Cluster) -> Mover:
    return Mover(
        cluster,  # type: ignore[arg-type]
        cluster.view,
        cluster,  # type: ignore[arg-type]
        SimpleNamespace(stats=SimpleNamespace(pending=1)),  # type: ignore[arg-type]  # repair busy: no rebalancing
        delete_after_s=5,
    )


async def move_shard_1_to_n2(cluster: Cluster, mover: Mover) -> None:
    nodes = {n.node: n for n in cluster.view.nodes()}
    assert await mover.move(cluster.record, 1, nodes, "n2")
    assert cluster.truth.referenced_shards("n2", (MOVED,)) == [MOVED]


def test_the_old_copy_is_deleted_once_the_move_is_committed() -> None:
    async def main() -> None:
        cluster = Cluster()
        mover = mover_for(cluster)
        await move_shard_1_to_n2(cluster, mover)
        await trio.sleep(4)
        await mover._delete_due()
        assert cluster.deletes == []  # not before the grace period
        await trio.sleep(2)
        await mover._delete_due()
        assert [(a, r.shard_ids) for a, r in cluster.deletes] == [("addr-n4", (MOVED,))]
        # Only that version: a copy written there since is another file.
        assert cluster.deletes[0][1].versions == (VERSION,)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_shard_put_back_on_the_old_node_is_not_deleted_by_a_stale_view() -> None:
    async def main() -> None:
        cluster = Cluster()
        mover = mover_for(cluster)
        await move_shard_1_to_n2(cluster, mover)
        # n2 went down; a new leader rebuilt the shard on n4, where it was
        # before the move. This replica has not heard of it yet.
        cluster.elsewhere(MoveShards(2, CHUNK, ((1, "n2", "n4"),)))
        assert cluster.view.referenced_shards("n4", (MOVED,)) == []
        assert cluster.truth.referenced_shards("n4", (MOVED,)) == [MOVED]
        await trio.sleep(6)
        await mover._delete_due()
        assert cluster.deletes == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_node_no_longer_the_leader_deletes_nothing() -> None:
    async def main() -> None:
        cluster = Cluster()
        mover = mover_for(cluster)
        await move_shard_1_to_n2(cluster, mover)
        cluster.role = "follower"  # deposed before the grace period ran out
        async with trio.open_nursery() as nursery:
            await nursery.start(mover.run)
            await trio.sleep(10)
            assert cluster.deletes == []
            cluster.role = "leader"  # elected again: the forgotten copy stays
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert cluster.deletes == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def node_call() -> Call:
    return Call(1, b"", "10.0.0.1:1234", "node n1")


def test_the_holder_deletes_only_the_version_it_was_asked_to(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalStore(tmp_path)
        service = ShardService(store)
        old, rewritten = shard_id(CHUNK, 0), shard_id(CHUNK, 1)
        await store.put(old, b"old copy")
        await store.put(rewritten, b"the first copy")
        listing = await service._stat_shards(
            StatShards((old, rewritten, "ab" * 16 + ".2")), node_call()
        )
        assert [i.shard_id for i in listing.shards] == [old, rewritten]  # only what is here
        seen = {i.shard_id: i.mtime_ns for i in listing.shards}
        # Repair writes the second shard again (another file) after its version was seen.
        later = seen[rewritten] + 1_000_000
        await store.put(rewritten, b"the first copy")
        os.utime(store._path(rewritten), ns=(later, later))
        reply = await service._delete(
            DeleteShards((old, rewritten), (seen[old], seen[rewritten])), node_call()
        )
        assert reply.deleted == 1
        assert await store.list("", 10) == [rewritten]
        # Version 0, or none: deleted whatever it is (the GC's deletes of dead chunks).
        reply = await service._delete(DeleteShards((rewritten,), (0,)), node_call())
        assert reply.deleted == 1 and await store.list("", 10) == []
        with pytest.raises(InvalidArgument):
            await service._delete(DeleteShards((old, rewritten), (1,)), node_call())

    trio.run(main)
