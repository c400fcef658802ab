"""The shard service of a storage node: put, get, delete, list, stats over RPC;
and, as the leader directs, shards copied from another node (`CopyShard`) or
rebuilt from the chunk's other shards (`RebuildShards`), stored here; or a
chunk encoded anew with another layout and stored on the nodes the leader
names (`ReencodeShards`).

Every put is checked against the checksum the client computed before it is
stored; a whole-shard get with a checksum is checked before it is sent, and
a mismatch is answered with `CorruptShard` (and logged, and counted) so the
client fetches another shard instead of decoding bad bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from prismfs.data.codec import encode_chunk_async, shard_checksum
from prismfs.data.messages import (
    CopyShard,
    DeleteShards,
    GetShard,
    ListShards,
    PutShard,
    RebuildShards,
    ReencodeShards,
    ShardData,
    ShardInfo,
    ShardList,
    ShardPut,
    ShardsDeleted,
    ShardsRebuilt,
    ShardsReencoded,
    ShardsVerified,
    StatShards,
    StoreStats,
    StoreStatsReply,
    VerifyShards,
)
from prismfs.data.rebuild import read_chunk_from
from prismfs.data.stores import ShardStore, shard_id, validate_shard_id
from prismfs.data.stores.threaded import ThreadedStore
from prismfs.errors import CorruptShard, InternalError, InvalidArgument, NotFound, Unavailable
from prismfs.exception_groups import single_exception
from prismfs.meta.commands import ChunkRecord
from prismfs.wire.auth import EVERYONE, WRITERS
from prismfs.wire.client import RpcPool
from prismfs.wire.server import Call, Reply, RpcServer

COPY_TIMEOUT_S = 60.0

log = logging.getLogger("prismfs.data.service")


class ShardService:
    def __init__(self, store: ShardStore, pool: RpcPool | None = None) -> None:
        self.store = store
        self.pool = pool  # to read from other nodes (copies, rebuilds)
        self.corrupt_found = 0
        # Shard bytes this node stored and served (heartbeats carry them to the
        # leader, whose console charts the cluster's throughput).
        self.bytes_in = 0
        self.bytes_out = 0

    def register(self, server: RpcServer) -> None:
        server.register(PutShard, self._put, roles=WRITERS)
        server.register(GetShard, self._get, fast=self._get_cached, roles=EVERYONE)
        server.register(DeleteShards, self._delete)
        server.register(ListShards, self._list)
        server.register(StatShards, self._stat_shards)
        server.register(StoreStats, self._stats, roles=EVERYONE)  # df on a mount
        server.register(VerifyShards, self._verify)
        server.register(CopyShard, self._copy)
        server.register(RebuildShards, self._rebuild)
        server.register(ReencodeShards, self._reencode)

    async def _put(self, request: PutShard, call: Call) -> ShardPut:
        await self._put_checked(request.shard_id, call.payload, request.checksum)
        return ShardPut(len(call.payload))

    async def _put_checked(
        self, sid: str, data: bytes | bytearray | memoryview, checksum: bytes
    ) -> None:
        validate_shard_id(sid)
        if isinstance(self.store, ThreadedStore):
            # checked and written in one worker thread, off the event loop
            await self.store.put_checked(sid, data, checksum)
            self.bytes_in += len(data)
            return
        if await trio.to_thread.run_sync(shard_checksum, data) != checksum:
            raise InvalidArgument(
                f"shard {sid}: payload does not match its checksum (damaged in transit)"
            )
        await self.store.put(sid, data)
        self.bytes_in += len(data)

    def _peers(self) -> RpcPool:
        if self.pool is None:
            raise Unavailable("this node cannot reach other nodes yet")
        return self.pool

    async def _copy(self, request: CopyShard, call: Call) -> ShardPut:
        validate_shard_id(request.shard_id)
        reply = await self._peers().call(
            request.source,
            GetShard(request.shard_id, checksum=request.checksum),
            timeout=COPY_TIMEOUT_S,
        )
        await self._put_checked(request.shard_id, reply.payload, request.checksum)
        log.info("copied shard %s from %s", request.shard_id, request.source)
        return ShardPut(len(reply.payload))

    async def _rebuild(self, request: RebuildShards, call: Call) -> ShardsRebuilt:
        rec = request.record
        if (
            rec.is_inline
            or len(rec.checksums) != rec.m
            or not request.indices
            or len(set(request.indices)) != len(request.indices)
            or any(not 0 <= i < rec.m for i in request.indices)
            or any(not 0 <= i < rec.m or i in request.indices for i, _ in request.sources)
        ):
            raise InvalidArgument("a rebuild names shards out of range, twice, or as sources")
        data, read = await read_chunk_from(self._peers(), rec, request.sources)
        encoded = await encode_chunk_async(data, rec.k, rec.m)
        written = 0
        for i in request.indices:
            # zfec is deterministic: a rebuilt shard is byte for byte the lost one
            if encoded.checksums[i] != rec.checksums[i]:
                raise InternalError(f"shard {i} of {rec.id.hex()} rebuilt differently")
        for i in request.indices:
            await self._put_checked(shard_id(rec.id, i), encoded.shards[i], rec.checksums[i])
            written += len(encoded.shards[i])
        log.info("rebuilt shards %s of chunk %s", list(request.indices), rec.id.hex())
        return ShardsRebuilt(len(request.indices), read, written)

    async def _reencode(self, request: ReencodeShards, call: Call) -> ShardsReencoded:
        rec, k, m = request.record, request.k, request.m
        if (
            rec.is_inline
            or len(rec.checksums) != rec.m
            or not 1 <= k <= m
            or len(request.nodes) != m
            or len(request.targets) != m
            or len(request.chunk_id) != len(rec.id)
            or request.chunk_id == rec.id
            or any(not 0 <= i < rec.m for i, _ in request.sources)
        ):
            raise InvalidArgument("a re-encoding names a bad layout, chunk id or shards")
        pool = self._peers()
        data, read = await read_chunk_from(pool, rec, request.sources)
        encoded = await encode_chunk_async(data, k, m)

        async def put(i: int) -> None:
            await pool.call(
                request.targets[i],
                PutShard(shard_id(request.chunk_id, i), encoded.checksums[i]),
                encoded.shards[i],
                timeout=COPY_TIMEOUT_S,
            )

        with single_exception():
            async with trio.open_nursery() as nursery:
                for i in range(m):
                    nursery.start_soon(put, i)
        log.info("re-encoded chunk %s %d-of-%d as %s", rec.id.hex(), k, m, request.chunk_id.hex())
        record = ChunkRecord(
            request.chunk_id,
            encoded.length,
            encoded.shard_size,
            k,
            m,
            request.nodes,
            encoded.checksums,
            block_sums=encoded.block_sums,
            block_size=encoded.block_size,
            want_k=request.want_k,
            want_m=request.want_m,
        )
        return ShardsReencoded(record, read, sum(len(s) for s in encoded.shards))

    def _get_cached(self, request: GetShard, call: Call) -> Reply | None:
        """A part of a shard the page cache holds, answered right in the RPC
        reader (no task, no thread); None for the usual way. Whole shards
        with a checksum (megabytes to verify) always go the usual way."""
        if request.checksum or not isinstance(self.store, ThreadedStore):
            return None
        data = self.store.get_cached(request.shard_id, request.offset, request.length)
        if data is None:
            return None
        self.bytes_out += len(data)
        return Reply(ShardData(len(data)), data)

    async def _get(self, request: GetShard, call: Call) -> Reply:
        whole = request.offset == 0 and request.length is None
        data = await self.store.get(request.shard_id, request.offset, request.length)
        if request.checksum and whole and shard_checksum(data) != request.checksum:
            self.corrupt_found += 1
            log.error("shard %s is corrupt on this node (checksum mismatch)", request.shard_id)
            raise CorruptShard(f"shard {request.shard_id} is corrupt", shard=request.shard_id)
        self.bytes_out += len(data)
        return Reply(ShardData(len(data)), data)

    async def _delete(self, request: DeleteShards, call: Call) -> ShardsDeleted:
        if len(request.shard_ids) > 10_000:
            raise InvalidArgument("at most 10,000 shards per delete")
        versions = request.versions or (0,) * len(request.shard_ids)
        if len(versions) != len(request.shard_ids):
            raise InvalidArgument("a delete's versions must be one per shard, or none")
        deleted: list[str] = []
        kept: list[str] = []
        for sid, version in zip(request.shard_ids, versions, strict=True):
            validate_shard_id(sid)
            if version:
                gone = await self._delete_version(sid, version)
                if not gone:
                    kept.append(sid)
                    continue
            else:
                gone = await self.store.delete(sid)
            if gone:
                deleted.append(sid)
        # Which shards went, and at whose request: a shard found missing
        # later is traced to the delete that took it.
        log.info(
            "deleted %d of %d shards asked by %s (%s): %s",
            len(deleted),
            len(request.shard_ids),
            call.client_name,
            call.peer,
            " ".join(deleted),
        )
        if kept:
            log.info(
                "kept %d shards that are not (or no longer) the version to delete: %s",
                len(kept),
                " ".join(kept),
            )
        return ShardsDeleted(len(deleted))

    async def _delete_version(self, sid: str, mtime_ns: int) -> bool:
        """Delete ``sid`` only if it is still the file stamped ``mtime_ns``."""
        if isinstance(self.store, ThreadedStore):
            return await self.store.delete_if(sid, mtime_ns)
        try:  # a plugin store: checked, then deleted (not atomic)
            if (await self.store.stat(sid)).mtime_ns != mtime_ns:
                return False
        except NotFound:
            return False
        return await self.store.delete(sid)

    async def _stat_shards(self, request: StatShards, call: Call) -> ShardList:
        if len(request.shard_ids) > 10_000:
            raise InvalidArgument("at most 10,000 shards per request")
        return ShardList(await self._infos(request.shard_ids))

    async def _infos(self, ids: Sequence[str]) -> tuple[ShardInfo, ...]:
        infos = []
        now = time.time_ns()  # the clock this node's file system stamps shards with
        for sid in ids:
            validate_shard_id(sid)
            try:
                st = await self.store.stat(sid)
            except NotFound:
                continue  # not here, or deleted meanwhile
            infos.append(ShardInfo(sid, st.size, st.mtime_ns, max(0.0, (now - st.mtime_ns) / 1e9)))
        return tuple(infos)

    async def _list(self, request: ListShards, call: Call) -> ShardList:
        ids = await self.store.list(request.after, max(1, min(request.limit, 10_000)))
        return ShardList(await self._infos(ids))

    async def _verify(self, request: VerifyShards, call: Call) -> ShardsVerified:
        if len(request.shard_ids) != len(request.checksums) or len(request.shard_ids) > 1000:
            raise InvalidArgument("one checksum per shard, at most 1,000 shards per request")
        corrupt: list[str] = []
        missing: list[str] = []
        read = 0
        for sid, checksum in zip(request.shard_ids, request.checksums, strict=True):
            validate_shard_id(sid)
            try:
                data = await self.store.get(sid)
            except NotFound:
                missing.append(sid)
                continue
            read += len(data)
            if shard_checksum(data) != checksum:
                self.corrupt_found += 1
                log.error("shard %s is corrupt on this node (checksum mismatch)", sid)
                corrupt.append(sid)
        return ShardsVerified(tuple(corrupt), tuple(missing), read)

    async def _stats(self, request: StoreStats, call: Call) -> StoreStatsReply:
        cap = await self.store.capacity()
        return StoreStatsReply(
            self.store.name, cap.total, cap.used, self.corrupt_found, _disk_of(self.store)
        )


def _disk_of(store: ShardStore) -> str:
    """The file system a local store is on, named by machine and device."""
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        return ""
    try:
        device = os.stat(root).st_dev
    except OSError:
        return ""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    return f"{machine or socket.gethostname()}:{device}"
