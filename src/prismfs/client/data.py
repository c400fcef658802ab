"""Chunks in and out of the cluster: encode, place, upload; fetch, verify, decode.

Writing a chunk: a fresh random chunk id, zfec-encoded in a worker thread,
m target nodes from placement over the node registry (nodes "up"), the m
shards uploaded in parallel. A node that fails its upload is replaced by the
next-ranked node not yet used, and is not written to for `SUSPECT_S`. A
chunk is acknowledged only if it survives the cluster's ``min_redundancy``
more node losses: with all m shards stored, or at least k + min_redundancy
(the rest recorded as never stored, "" , for repair). With fewer nodes
usable than the layout needs, it is written with the widest layout they
allow that keeps that margin (`fit_layout`: 2-of-3 on two nodes is two
replicas) and its record names the layout it should have, which the
leader's mover restores when nodes return. The `ChunkRecord` returned is
what `commit_chunks` records. A chunk of at most ``inline_max`` bytes
(`INLINE_DEFAULT`, 8 KiB) is not encoded at all: it goes inline in its
record (see `ChunkRecord`).

Reading a chunk: the k data shards are fetched in parallel (whole shards,
checksum verified by the node and again here). A shard that is missing,
corrupt or slow (no answer within ``hedge_after``) is replaced by a parity
shard; as soon as any k intact shards are in, the chunk is decoded and the
rest of the fetches are cancelled. Corrupt shards found are counted in
`DataClient.corrupt` (the repair issue acts on them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import trio
import xxhash

from prismfs.data.codec import (
    ChunkBytes,
    NotEnoughShards,
    decode_chunk_async,
    encode_chunk_async,
)
from prismfs.data.layout import Layout
from prismfs.data.messages import DeleteShards, GetShard, PutShard, ShardData
from prismfs.data.placement import (
    Candidate,
    NotEnoughNodes,
    fit_layout,
    place,
    score,
    too_few_nodes,
    up_candidates,
)
from prismfs.data.stores import shard_id
from prismfs.errors import CorruptShard, PrismError
from prismfs.exception_groups import single_exception
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import INLINE_MAX, ChunkRecord, NodeInfo
from prismfs.wire.auth import NODE
from prismfs.wire.client import RpcPool

log = logging.getLogger("prismfs.client.data")

REGISTRY_TTL_S = 5.0
SUSPECT_S = 10.0  # a node that failed an upload gets no new shards for this long
INLINE_DEFAULT = 8 * 1024
BLOCK_CACHE_BYTES = 8 << 20  # verified blocks kept for small reads (`BlockCache`)


@dataclass
class DataStats:
    shards_put: int = 0
    shards_got: int = 0
    parity_reads: int = 0
    range_reads: int = 0  # parts of chunks read from one data shard
    block_hits: int = 0  # parts of chunks read from verified blocks kept here
    degraded_writes: int = 0
    reduced_writes: int = 0  # chunks written with a smaller layout (too few nodes up)
    corrupt: list[str] = field(default_factory=list)
    failed_nodes: set[str] = field(default_factory=set)


class DataClient:
    def __init__(
        self,
        pool: RpcPool,
        meta: MetaClient,
        *,
        shard_timeout: float = 30.0,
        hedge_after: float = 2.0,
        inline_max: int = INLINE_DEFAULT,
    ) -> None:
        self.pool = pool
        self.inline_max = min(inline_max, INLINE_MAX)
        self.meta = meta
        self.shard_timeout = shard_timeout
        self.hedge_after = hedge_after
        self.stats = DataStats()
        self._nodes: dict[str, NodeInfo] = {}
        self.min_redundancy = 1  # the cluster's, from the registry
        self._suspects: dict[str, float] = {}  # node -> until when it is not written to
        self._fetched_at = -math.inf
        self._registry_lock = trio.Lock()
        self.blocks = BlockCache()

    # --- the node registry ---------------------------------------------------------------

    async def nodes(self, *, refresh: bool = False) -> dict[str, NodeInfo]:
        if not refresh and trio.current_time() - self._fetched_at <= REGISTRY_TTL_S:
            return self._nodes  # (fresh: no lock, no checkpoint on every shard call)
        async with self._registry_lock:
            if refresh or trio.current_time() - self._fetched_at > REGISTRY_TTL_S:
                registry = await self.meta.registry()
                self._nodes = {n.node: n for n in registry.nodes}
                self.min_redundancy = registry.min_redundancy
                self._fetched_at = trio.current_time()
        return self._nodes

    async def _address(self, node: str) -> str:
        info = (await self.nodes()).get(node) or (await self.nodes(refresh=True)).get(node)
        if info is None:
            raise NotEnoughNodes(f"node {node} is not in the node registry")
        return info.address

    async def _candidates(self, exclude: set[str], *, refresh: bool = False) -> list[Candidate]:
        """Nodes that are up and did not fail an upload just now (``exclude``, and
        the suspects of the last `SUSPECT_S`), weighted by capacity."""
        now = trio.current_time()
        self._suspects = {n: t for n, t in self._suspects.items() if t > now}
        nodes = (await self.nodes(refresh=refresh)).values()
        return up_candidates(nodes, exclude=exclude | set(self._suspects))

    # --- writing ---------------------------------------------------------------------------

    async def write_chunk(
        self, data: bytes | bytearray | memoryview, layout: Layout
    ) -> ChunkRecord:
        """Store one chunk; its record. With every node of the layout up, k-of-m
        on m nodes. With fewer up (or failing), the widest layout the live nodes
        allow that still survives ``min_redundancy`` more losses (2-of-3 on two
        nodes: two replicas), recorded with the layout it should have so the
        leader re-encodes it later; `NotEnoughNodes` below that."""
        if len(data) <= self.inline_max:  # kept in the record: no shards at all
            return ChunkRecord(os.urandom(16), len(data), 0, 0, 0, (), inline=bytes(data))
        members = [n for n in (await self.nodes()).values() if n.state != "removed"]
        if len(members) < layout.m:
            members = [n for n in (await self.nodes(refresh=True)).values() if n.state != "removed"]
        if len(members) < layout.m:
            raise too_few_nodes(layout.m, len(members))
        failed: set[str] = set()
        for attempt in range(3):
            candidates = await self._candidates(failed, refresh=attempt > 0)
            k, m = fit_layout(layout.k, layout.m, len(candidates), self.min_redundancy)
            record = await self._store(data, k, m, candidates, failed)
            if record is not None:
                if (k, m) != (layout.k, layout.m):
                    self.stats.reduced_writes += 1
                    log.info(
                        "chunk %s written %d-of-%d (its layout is %d-of-%d): %d nodes usable",
                        record.id.hex(),
                        k,
                        m,
                        layout.k,
                        layout.m,
                        len(candidates),
                    )
                    record = msgspec.structs.replace(record, want_k=layout.k, want_m=layout.m)
                return record
        raise NotEnoughNodes(
            f"a chunk could not be stored with {self.min_redundancy} shard(s) to spare: "
            f"nodes {', '.join(sorted(failed))} failed"
        )

    async def _store(
        self,
        data: bytes | bytearray | memoryview,
        k: int,
        m: int,
        candidates: list[Candidate],
        failed: set[str],
    ) -> ChunkRecord | None:
        """Encode k-of-m and upload the m shards (a failing node replaced by the
        next-ranked one); the record, or None if too few shards were stored to
        survive ``min_redundancy`` more losses (the failing nodes are added to
        ``failed`` and what was stored is deleted)."""
        chunk_id = os.urandom(16)
        encoded = await encode_chunk_async(data, k, m)
        targets = place(chunk_id, candidates, m)
        # Fallbacks for a failed upload: every other node up, best score first.
        ranked = sorted(candidates, key=lambda c: -score(chunk_id, c))
        spare = [c.node for c in ranked if c.node not in targets]
        placed: list[str] = list(targets)

        async def upload(i: int) -> None:
            sid = shard_id(chunk_id, i)
            while True:
                node = placed[i]
                try:
                    address = await self._address(node)
                    await self.pool.call(
                        address,
                        PutShard(sid, encoded.checksums[i]),
                        encoded.shards[i],
                        timeout=self.shard_timeout,
                    )
                    self.stats.shards_put += 1
                    return
                except PrismError as exc:
                    self.stats.failed_nodes.add(node)
                    failed.add(node)
                    self._suspects[node] = trio.current_time() + SUSPECT_S
                    if not spare:
                        log.warning("shard %s to %s failed (%s); no other node", sid, node, exc)
                        placed[i] = ""
                        return
                    log.warning("shard %s to %s failed (%s); trying %s", sid, node, exc, spare[0])
                    placed[i] = spare.pop(0)

        with single_exception():
            async with trio.open_nursery() as nursery:
                for i in range(m):
                    nursery.start_soon(upload, i)
        stored = sum(1 for n in placed if n)
        if stored < m and stored < k + self.min_redundancy:
            # Too little redundancy to acknowledge: drop it, try with the others.
            await self._delete_quietly(chunk_id, placed)
            return None
        if stored < m:
            # Degraded, but survives min_redundancy more losses: the shards that
            # could not be stored (node "") are rebuilt by repair.
            self.stats.degraded_writes += 1
        return ChunkRecord(
            chunk_id,
            encoded.length,
            encoded.shard_size,
            k,
            m,
            tuple(placed),
            encoded.checksums,
            block_sums=encoded.block_sums,
            block_size=encoded.block_size,
        )

    async def forget_chunk(self, record: ChunkRecord) -> None:
        """Delete the shards of a chunk that was stored and is not recorded
        anywhere (best effort: the orphan sweep removes what this cannot)."""
        if not record.is_inline:
            await self._delete_quietly(record.id, list(record.nodes))

    async def _delete_quietly(self, chunk_id: bytes, placed: list[str]) -> None:
        """Best effort: the orphan sweep removes what this cannot (all of it
        for a client's credential, which may not delete shards)."""
        if self.pool.creds.role != NODE:
            return
        for i, node in enumerate(placed):
            if node:
                with contextlib.suppress(PrismError):
                    address = await self._address(node)
                    await self.pool.call(address, DeleteShards((shard_id(chunk_id, i),)), timeout=5)

    # --- reading ---------------------------------------------------------------------------

    async def read_chunk(self, record: ChunkRecord) -> bytes:
        """The chunk's ``record.length`` bytes."""
        if record.is_inline:
            return record.inline[: record.length]
        return (await self.read_chunk_parts(record)).tobytes()

    async def read_chunk_parts(self, record: ChunkRecord) -> ChunkBytes:
        """The chunk's bytes as its data shards (see `ChunkBytes`)."""
        if record.is_inline:
            return ChunkBytes([record.inline[: record.length]], record.length)
        k, m = record.k, record.m
        got: dict[int, bytes | bytearray | memoryview] = {}
        failed: set[int] = set()
        enough = trio.Event()
        next_parity = k
        started: set[int] = set()

        async def fetch(i: int, nursery: trio.Nursery) -> None:
            nonlocal next_parity
            sid = shard_id(record.id, i)
            node = record.nodes[i]
            try:
                if not node:
                    raise NotEnoughShards(f"shard {sid} was never stored (degraded write)")
                address = await self._address(node)
                reply = await self.pool.call(
                    address,
                    GetShard(sid, checksum=record.checksums[i]),
                    timeout=self.shard_timeout,
                )
                assert isinstance(reply.message, ShardData)
                got[i] = reply.payload
                self.stats.shards_got += 1
                if len(got) >= k:
                    enough.set()
                return
            except PrismError as exc:
                if exc.code == "corrupt_shard":
                    self.stats.corrupt.append(sid)
                log.info("shard %s from %s unavailable: %s", sid, node, exc.message)
                self.stats.failed_nodes.add(node)
            failed.add(i)
            start_more(nursery)

        def start_more(nursery: trio.Nursery) -> None:
            """One more parity fetch (a data shard failed or is slow)."""
            nonlocal next_parity
            while next_parity < m and next_parity in started:
                next_parity += 1
            if next_parity < m:
                started.add(next_parity)
                self.stats.parity_reads += 1
                nursery.start_soon(fetch, next_parity, nursery)
            elif len(failed) > m - k:
                enough.set()  # cannot succeed: stop waiting

        async with trio.open_nursery() as nursery:
            for i in range(k):
                started.add(i)
                nursery.start_soon(fetch, i, nursery)

            async def hedge() -> None:
                await trio.sleep(self.hedge_after)
                while not enough.is_set() and len(started) - len(failed) - len(got) > 0:
                    start_more(nursery)
                    await trio.sleep(self.hedge_after)

            nursery.start_soon(hedge)
            await enough.wait()
            nursery.cancel_scope.cancel()
        try:
            if len(got) < k:
                raise NotEnoughShards(
                    f"chunk {record.id.hex()}: only {len(got)} of the {k} shards needed could "
                    f"be read ({len(failed)} failed)"
                )
            decoded = await decode_chunk_async(
                got,
                k=k,
                m=m,
                length=record.length,
                shard_size=record.shard_size,
                checksums=record.checksums,
            )
        finally:
            # fetch and start_more refer to each other (a reference cycle that
            # only the cyclic GC frees): drop the shards now, not at the next
            # collection, or a long read keeps hundreds of MB of them alive.
            got.clear()
        for sid in decoded.bad:
            self.stats.corrupt.append(shard_id(record.id, sid))
        return decoded.chunk

    async def read_range(self, record: ChunkRecord, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the chunk (cut at its length).

        Only the verified blocks of the data shards that hold them are fetched
        (or taken from `blocks`, the verified blocks read lately); a node that
        fails, is slow (``hedge_after``) or returns a block that does not
        match its digest sends the read to `read_chunk` (parity, hedging,
        decoding)."""
        end = min(offset + size, record.length)
        if offset >= end:
            return b""
        if record.is_inline:
            return record.inline[offset:end]
        if len(record.block_sums) != record.k:
            return (await self.read_chunk(record))[offset:end]
        pieces = []
        with trio.move_on_after(self.hedge_after) as scope:
            try:
                pos = offset
                while pos < end:
                    i, within = divmod(pos, record.shard_size)
                    take = min(record.shard_size - within, end - pos)
                    pieces.append(await self._shard_range(record, i, within, take))
                    pos += take
                self.stats.range_reads += 1
                self.pool.stats.count("data.range_reads")
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            except PrismError as exc:
                log.info("range read of chunk %s: %s; reading it whole", record.id.hex(), exc)
        if scope.cancelled_caught:
            log.info("range read of chunk %s is slow; reading it whole", record.id.hex())
        return (await self.read_chunk(record))[offset:end]

    async def _shard_range(self, record: ChunkRecord, i: int, within: int, take: int) -> bytes:
        """``take`` bytes at ``within`` of data shard ``i``: its blocks that are
        not in `blocks` fetched in one call and checked against their digests."""
        block = record.blocks_of
        first, last = within // block, (within + take - 1) // block
        have = [self.blocks.get((record.id, i, n)) for n in range(first, last + 1)]
        missing = [n for n, got in zip(range(first, last + 1), have, strict=True) if got is None]
        if missing:
            fetched = await self._fetch_blocks(record, i, missing[0], missing[-1])
            for n, fresh in enumerate(fetched, start=missing[0]):
                have[n - first] = fresh
        else:
            self.stats.block_hits += 1
            self.pool.stats.count("data.block_hits")
        blocks = [b for b in have if b is not None]
        skip = within - first * block
        if len(blocks) == 1:
            return bytes(blocks[0][skip : skip + take])
        return b"".join(blocks)[skip : skip + take]

    async def _fetch_blocks(
        self, record: ChunkRecord, i: int, first: int, last: int
    ) -> list[memoryview]:
        """Blocks ``first..last`` of data shard ``i``, verified and kept in `blocks`."""
        sid = shard_id(record.id, i)
        node = record.nodes[i]
        if not node:
            raise NotEnoughShards(f"shard {sid} was never stored (degraded write)")
        block = record.blocks_of
        start, stop = first * block, min((last + 1) * block, record.shard_size)
        try:
            reply = await self.pool.call(
                await self._address(node),
                GetShard(sid, offset=start, length=stop - start),
                timeout=self.shard_timeout,
            )
        except PrismError:
            self.stats.failed_nodes.add(node)
            raise
        view = memoryview(reply.payload)
        sums = record.block_sums[i]
        out = [view[at : at + block] for at in range(0, len(view), block)]
        if len(view) != stop - start or any(
            xxhash.xxh3_64_digest(got) != sums[(first + n) * 8 : (first + n + 1) * 8]
            for n, got in enumerate(out)
        ):
            self.stats.corrupt.append(sid)
            raise CorruptShard(f"shard {sid}: blocks {first}..{last} do not match their digests")
        for n, got in enumerate(out, start=first):
            # (a view of a reply of several blocks would keep all of it alive
            # in the cache as long as any one of them stays: those are copied)
            self.blocks.put((record.id, i, n), got if len(out) == 1 else memoryview(bytes(got)))
        return out


class BlockCache:
    """Verified blocks of data shards read lately, by (chunk id, shard, block):
    a chunk is never changed once written (a change writes a new chunk under
    a new id), so an entry is never stale. LRU, at most ``max_bytes``."""

    def __init__(self, max_bytes: int = BLOCK_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._blocks: OrderedDict[tuple[bytes, int, int], memoryview] = OrderedDict()

    def get(self, key: tuple[bytes, int, int]) -> memoryview | None:
        got = self._blocks.get(key)
        if got is not None:
            self._blocks.move_to_end(key)
        return got

    def put(self, key: tuple[bytes, int, int], data: memoryview) -> None:
        old = self._blocks.pop(key, None)
        if old is not None:
            self.size -= len(old)
        if len(data) > self.max_bytes:
            return
        self._blocks[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= len(dropped)


def chunk_ranges(offset: int, size: int, chunk_size: int) -> Sequence[tuple[int, int, int]]:
    """(chunk index, offset in chunk, length) pieces covering [offset, offset + size)."""
    out = []
    end = offset + size
    while offset < end:
        idx, within = divmod(offset, chunk_size)
        n = min(chunk_size - within, end - offset)
        out.append((idx, within, n))
        offset += n
    return out
