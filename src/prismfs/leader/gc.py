"""Deleting shards nobody needs: the GC queue (leader) and the orphan sweep (every node).

*GC*: chunk records replaced by a write, dropped by a truncate or freed with
their inode are queued in the namespace. The leader takes queue entries in
order, asks each node holding one of their shards to delete it, and
proposes `GcDone` for the entries whose shards are all gone (a node that is
down keeps its entries queued until it answers; a removed node's shards
count as gone).

*Orphan sweep*: shards stored by a client that died before committing its
chunk are referenced by no record. Every node lists its store now and then
and deletes shards older than the grace period whose chunk id neither a
file nor the GC queue refers to (asked with a linearizable read), once an
earlier sweep found them unreferenced at least a grace period before on the
node's monotonic clock (so a clock stepped forward cannot age an upload in
progress). The grace period must exceed the longest time between a shard's
upload and its commit; `put_file` commits progressively to keep that short.
GC never deletes a chunk a file's record still refers to, whatever queued it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import trio

from prismfs.clock import wall_ns
from prismfs.data.messages import DeleteShards
from prismfs.data.stores import ShardStore, shard_id
from prismfs.data.stores.threaded import ThreadedStore
from prismfs.errors import PrismError
from prismfs.meta.commands import GcDone, MetaValue, ShardRefs
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import decode_message, encode_message

log = logging.getLogger("prismfs.leader.gc")


async def gc_once(consensus: Consensus, namespace: Namespace, pool: RpcPool) -> int:
    """One pass on the leader; returns the number of queue entries finished."""
    entries = namespace.gc_pending(500)
    if not entries:
        return 0
    nodes = {n.node: n for n in namespace.nodes()}
    by_node: dict[str, list[tuple[int, str]]] = defaultdict(list)
    # Defence in depth: a chunk a file still refers to is never deleted, whatever
    # put it in the queue; its entry is dropped and the shards stay.
    live = namespace.live_chunk_ids([record.id for _, record in entries])
    for seq, record in entries:
        if record.id in live:
            log.error(
                "GC: chunk %s is queued for deletion but a file still refers to it; "
                "its shards are kept",
                record.id.hex(),
            )
            continue
        for i, node in enumerate(record.nodes):
            if node:  # "" = a shard a degraded write never stored
                by_node[node].append((seq, shard_id(record.id, i)))
    failed: set[int] = set()
    for node, items in sorted(by_node.items()):
        info = nodes.get(node)
        if info is None or info.state == "removed":
            continue  # the node and its shards are gone
        try:
            await pool.call(info.address, DeleteShards(tuple(s for _, s in items)), timeout=30)
        except PrismError as exc:
            log.info("GC: %d shards on %s stay queued: %s", len(items), node, exc.message)
            failed |= {seq for seq, _ in items}
    done = tuple(seq for seq, _ in entries if seq not in failed)
    if done:
        await consensus.propose_internal(encode_message(GcDone(wall_ns(), done)))
        log.info("GC: deleted the shards of %d replaced or freed chunks", len(done))
    return len(done)


async def gc_loop(
    consensus: Consensus, namespace: Namespace, pool: RpcPool, interval: float
) -> None:
    while True:
        await trio.sleep(interval)
        if consensus.role != "leader":
            continue
        try:
            while await gc_once(consensus, namespace, pool) == 500:
                pass
        except PrismError as exc:
            log.info("GC pass stopped: %s", exc.message)


async def sweep_orphans(
    consensus: Consensus,
    store: ShardStore,
    grace_s: float,
    node_id: str,
    suspects: dict[str, float] | None = None,
) -> int:
    """Delete shards that no record places on this node (nor the GC queue holds),
    older than ``grace_s`` by their file time *and* found unreferenced by an
    earlier sweep at least ``grace_s`` ago on this process's monotonic clock
    (``suspects``, kept across sweeps): a clock stepped forward never makes an
    upload in progress look old. Returns how many were deleted."""
    suspects = {} if suspects is None else suspects
    deleted = 0
    after = ""
    now = time.time_ns()  # the clock the file system stamps shard files with
    seen_now = trio.current_time()
    unreferenced: set[str] = set()
    while True:
        ids = await store.list(after, 1000)
        if not ids:
            break
        after = ids[-1]
        old = []
        versions: dict[str, int] = {}
        for sid in ids:
            try:
                st = await store.stat(sid)
            except PrismError:
                continue
            if (now - st.mtime_ns) / 1e9 > grace_s:
                old.append(sid)
                versions[sid] = st.mtime_ns
        if not old:
            continue
        reply = await consensus.query(encode_message(ShardRefs(node_id, tuple(old))))
        refs = decode_message(reply.result)
        assert isinstance(refs, MetaValue)
        referenced = {name.decode() for name in refs.names}
        for sid in old:
            if sid in referenced:
                continue
            unreferenced.add(sid)
            first = suspects.setdefault(sid, seen_now)
            if seen_now - first >= grace_s:
                unreferenced.discard(sid)
                # Only the file looked at: one written since (a rebuild placed
                # the shard here again) stays.
                if isinstance(store, ThreadedStore):
                    if not await store.delete_if(sid, versions[sid]):
                        continue
                else:
                    await store.delete(sid)
                deleted += 1
                log.info("orphan sweep: deleted shard %s (no chunk record places it here)", sid)
    for sid in set(suspects) - unreferenced:
        del suspects[sid]  # referenced again, deleted, or gone
    return deleted


async def orphan_loop(
    consensus: Consensus, store: ShardStore, interval: float, grace_s: float, node_id: str
) -> None:
    suspects: dict[str, float] = {}  # shard -> when a sweep first found it unreferenced
    while True:
        await trio.sleep(interval)
        try:
            await sweep_orphans(consensus, store, grace_s, node_id, suspects)
        except PrismError as exc:
            log.info("orphan sweep stopped: %s", exc.message)
