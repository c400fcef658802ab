"""Reading a chunk back from its shards, for whoever rebuilds lost ones.

Repair and the mover used to pull every byte through the Raft leader: it read
k shards, decoded, re-encoded and pushed the rebuilt shards to their new
nodes. Now the leader only decides; the node that is to keep a shard does
the work (`RebuildShards`, `CopyShard`, served by `ShardService`), so
repair's throughput grows with the number of nodes and the leader's event
loop (which sends Raft heartbeats) moves no bulk data. `read_chunk_from` is
the reading half both use: k intact shards from the given nodes, each
checked by the node that holds it and again here, then decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prismfs.data.codec import decode_chunk_async
from prismfs.data.messages import GetShard
from prismfs.data.stores import shard_id
from prismfs.errors import PrismError, Unavailable
from prismfs.meta.commands import ChunkRecord
from prismfs.wire.client import RpcPool

log = logging.getLogger("prismfs.data.rebuild")

READ_TIMEOUT_S = 30.0


class NotEnoughShardsToRepair(Unavailable):
    """Fewer than k shards of a chunk are readable, or no node can take one."""

    code = "not_enough_shards_to_repair"


async def read_chunk_from(
    pool: RpcPool, rec: ChunkRecord, sources: Sequence[tuple[int, str]]
) -> tuple[bytes, int]:
    """The chunk's bytes from k of ``sources`` ((shard index, node address), tried
    in order), and the bytes read; `NotEnoughShardsToRepair` if fewer than k
    can be read."""
    got: dict[int, bytes | bytearray | memoryview] = {}
    read = 0
    for i, address in sources:
        if len(got) >= rec.k:
            break
        try:
            reply = await pool.call(
                address,
                GetShard(shard_id(rec.id, i), checksum=rec.checksums[i]),
                timeout=READ_TIMEOUT_S,
            )
        except PrismError as exc:
            log.info("shard %d of %s unreadable: %s", i, rec.id.hex(), exc.message)
            continue
        got[i] = reply.payload
        read += len(reply.payload)
    if len(got) < rec.k:
        raise NotEnoughShardsToRepair(
            f"{len(got)} of the {rec.k} shards needed are readable ({rec.m - len(sources)} lost)"
        )
    decoded = await decode_chunk_async(
        got,
        k=rec.k,
        m=rec.m,
        length=rec.length,
        shard_size=rec.shard_size,
        checksums=rec.checksums,
    )
    return decoded.data, read
