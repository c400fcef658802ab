"""Shard RPCs between clients and storage nodes (bulk bytes go in the frame payload)."""

from __future__ import annotations

from typing import ClassVar

from prismfs.meta.commands import ChunkRecord
from prismfs.wire.codec import U8, U32, U64, Message


class DataMessage(Message, frozen=True):
    family: ClassVar[str] = "data"
    abstract: ClassVar[bool] = True


class PutShard(DataMessage, frozen=True):
    """Store the payload as ``shard_id``; refused unless it matches ``checksum`` (xxh3-128)."""

    shard_id: str
    checksum: bytes


class ShardPut(DataMessage, frozen=True):
    size: U64


class GetShard(DataMessage, frozen=True):
    """The shard's bytes (or a range) as the reply payload. With a ``checksum``
    (whole shard only) the node verifies it before answering and reports
    `CorruptShard` instead of bad bytes."""

    shard_id: str
    offset: U64 = 0
    length: U64 | None = None
    checksum: bytes = b""


class ShardData(DataMessage, frozen=True):
    size: U64


class DeleteShards(DataMessage, frozen=True):
    shard_ids: tuple[str, ...]
    # With versions, one per shard (its file's mtime_ns as `StatShards` saw it;
    # 0: any): a shard is deleted only if it is still that very file. A move's
    # old copy is deleted so: a copy written there again since (repair put the
    # shard back while the delete was on its way) is another file, and stays.
    versions: tuple[U64, ...] = ()


class ShardsDeleted(DataMessage, frozen=True):
    deleted: U32


class ListShards(DataMessage, frozen=True):
    after: str = ""
    limit: U32 = 1000


class ShardInfo(DataMessage, frozen=True):
    shard_id: str
    size: U64
    mtime_ns: U64
    age_s: float = 0.0
    """Seconds since ``mtime_ns`` by the clock of the node that holds the shard
    (the one that stamped it): ages never mix two machines' clocks."""


class ShardList(DataMessage, frozen=True):
    shards: tuple[ShardInfo, ...]


class StatShards(DataMessage, frozen=True):
    """The size and version (mtime_ns) of each of these shards that is here
    (answered as a `ShardList`)."""

    shard_ids: tuple[str, ...]


class StoreStats(DataMessage, frozen=True):
    pass


class StoreStatsReply(DataMessage, frozen=True):
    backend: str
    total: U64
    used: U64
    corrupt_found: U64 = 0
    disk: str = ""
    """Which file system the store is on (machine and device), so that nodes
    sharing one disk count it once in ``df``; "" when unknown (S3, plugins)."""


class CopyShard(DataMessage, frozen=True):
    """Fetch shard ``shard_id`` from the node at ``source`` and store it here,
    checked against ``checksum``: a move of the leader's mover, the bytes
    going from node to node (not through the leader). Answered `ShardPut`."""

    shard_id: str
    checksum: bytes
    source: str


class RebuildShards(DataMessage, frozen=True):
    """Rebuild shards ``indices`` of the chunk ``record`` here: read k of its
    other shards from ``sources`` ((shard index, node address), in the order
    to try), decode, re-encode, check each rebuilt shard against the record's
    checksum and store it. Repair's work, done by the node that keeps the
    result. Answered `ShardsRebuilt`."""

    record: ChunkRecord
    indices: tuple[U8, ...]
    sources: tuple[tuple[U8, str], ...]


class ShardsRebuilt(DataMessage, frozen=True):
    stored: U32
    bytes_read: U64
    bytes_written: U64


class ReencodeShards(DataMessage, frozen=True):
    """Read the chunk ``record`` from k of ``sources`` ((shard index, node
    address), in the order to try), encode it ``k``-of-``m`` as the new chunk
    ``chunk_id`` and store its shard i on the node at ``targets[i]``: a change
    of layout (repair with too few nodes, the mover giving a chunk its layout
    back), done by a node, not the leader. Answered `ShardsReencoded`, whose
    record names ``nodes`` and the layout ``want_k``/``want_m``."""

    record: ChunkRecord
    sources: tuple[tuple[U8, str], ...]
    chunk_id: bytes
    k: U8
    m: U8
    nodes: tuple[str, ...]
    targets: tuple[str, ...]
    want_k: U8 = 0
    want_m: U8 = 0


class ShardsReencoded(DataMessage, frozen=True):
    record: ChunkRecord
    bytes_read: U64
    bytes_written: U64


class NodeHeartbeat(DataMessage, frozen=True):
    """A node tells the leader it is alive (see `prismfs.leader.repair`)."""

    node: str
    bytes_in: U64 = 0  # shard bytes this node stored since it started
    bytes_out: U64 = 0  # and served


class HeartbeatAck(DataMessage, frozen=True):
    removed: bool = False  # the node was removed from the cluster: it should stop


class VerifyShards(DataMessage, frozen=True):
    """Read each shard here and check it against its checksum (scrub, fsck)."""

    shard_ids: tuple[str, ...]
    checksums: tuple[bytes, ...]


class ShardsVerified(DataMessage, frozen=True):
    corrupt: tuple[str, ...]
    missing: tuple[str, ...]
    bytes_read: U64
