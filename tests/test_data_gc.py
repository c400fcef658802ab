"""The GC worker (`gc_once`) against a real namespace and a recording shard pool:
it deletes the shards of queued chunks and forgets them, keeps the entries of
nodes it cannot reach, and never deletes a chunk a file still refers to."""

from __future__ import annotations

import stat
from typing import Any

import trio

from prismfs.data.messages import DeleteShards, ShardsDeleted
from prismfs.errors import Unavailable
from prismfs.leader.gc import gc_once
from prismfs.meta.commands import ROOT_INO, ChunkRecord, CommitChunks, Mknod, RegisterNode
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus_messages import Proposed
from prismfs.wire.client import Response
from prismfs.wire.codec import Message, encode_message


class Leader:
    """`propose_internal` applied straight to the namespace; shard deletes recorded."""

    def __init__(self) -> None:
        self.ns = Namespace()
        self.index = 0
        self.deleted: list[str] = []
        self.down: set[str] = set()

    async def propose_internal(self, op: bytes, timeout: float | None = None) -> Proposed:
        self.index += 1
        return Proposed(self.index, self.ns.apply(self.index, op))

    def run(self, command: Any) -> None:
        self.index += 1
        self.ns.apply(self.index, encode_message(command))

    async def call(self, address: str, request: Message, *a: Any, **kw: Any) -> Response:
        assert isinstance(request, DeleteShards)
        if address in self.down:
            raise Unavailable(f"{address} is down")
        self.deleted += list(request.shard_ids)
        return Response(ShardsDeleted(len(request.shard_ids)))


def record(tag: int) -> ChunkRecord:
    return ChunkRecord(bytes([tag]) * 16, 100, 50, 2, 3, ("n1", "n2", "n3"), (b"",) * 3)


def setup() -> tuple[Leader, int]:
    leader = Leader()
    for n in ("n1", "n2", "n3"):
        leader.run(RegisterNode(0, n, f"addr-{n}", "", 1 << 30))
    leader.run(Mknod(0, ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0))
    ino = leader.ns.lookup(ROOT_INO, b"f").ino
    return leader, ino


def test_replaced_chunks_are_deleted_and_forgotten() -> None:
    leader, ino = setup()
    leader.run(CommitChunks(1, ino, ((0, record(1)),), 100))
    leader.run(CommitChunks(2, ino, ((0, record(2)),), 100))  # record 1 is replaced
    leader.down = {"addr-n3"}
    done = trio.run(gc_once, leader, leader.ns, leader)  # type: ignore[arg-type]
    assert done == 0  # n3 did not answer: the entry stays queued
    assert sorted(leader.deleted) == [f"{'01' * 16}.0", f"{'01' * 16}.1"]
    leader.down = set()
    assert trio.run(gc_once, leader, leader.ns, leader) == 1  # type: ignore[arg-type]
    assert leader.ns.gc_pending() == []


def test_a_chunk_a_file_still_refers_to_is_never_deleted(logs: Any) -> None:
    logs.allow("still refers to it")
    leader, ino = setup()
    leader.run(CommitChunks(1, ino, ((0, record(7)),), 100))
    # Whatever bug puts a live chunk in the queue, GC must not act on it.
    live = leader.ns.db.execute("SELECT record FROM chunks").fetchone()[0]
    leader.ns.db.execute("BEGIN")
    leader.ns._gc_push(live)
    leader.ns.db.execute("COMMIT")
    trio.run(gc_once, leader, leader.ns, leader)  # type: ignore[arg-type]
    assert leader.deleted == []
    assert leader.ns.gc_pending() == []  # the entry is dropped
    assert leader.ns.chunk_map(ino).chunks[0][1].id == bytes([7]) * 16
    assert logs.matching("still refers to it")
