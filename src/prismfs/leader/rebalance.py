"""Moving shards between live nodes, run by the Raft leader: drains, re-encoding
and rebalancing.

Theory of operation. A shard moves in three steps, so redundancy never
drops while it moves: its bytes are copied from the node that holds it to
the new node (checked against the record's checksum on both ends), the new
place is committed (`MoveShards`, refused if the file changed the chunk or
repair moved that shard meanwhile), and only then, ``delete_after_s`` later,
is the old copy deleted (a reader that opened the file before the move still
finds it there for that long; after that it reads around it, and re-reads
the chunk map if it must). A commit that was refused leaves the new copy
unreferenced; the node's orphan sweep removes it. The old copy is deleted
only by the leader, only if the cluster (a linearizable read, never this
replica's possibly stale view) places no shard of that id on that node any
more, and only if the holder's file is still the one that was there when
the move began (its version, `StatShards`, checked and deleted atomically by
the holder): repair may have put the same shard back on that node since,
even while the delete was on its way, and a leader deposed in a partition
must not delete it. A leader that loses office forgets its pending deletes;
those copies are left to the sweep. If the old holder cannot
be read (a draining node that died), the shard is rebuilt from the others
instead (`repair_chunk`).

Draining: every shard on a node in state "draining" (which placement
already skips) moves to a node placement picks among the "up" nodes that
hold none of the chunk, preferring a failure domain the chunk is not in yet.
Rebalancing: among the "up" nodes, each node's share of the bytes stored is
compared with its share of the capacity; while the fullest and the emptiest
differ by more than ``spread`` (a fraction of the mean fill) and a move
still improves it, shards move from the fullest to the emptiest node (never
to a node that holds the chunk, never out of a failure domain the chunk
would then miss). Rebalancing waits while repair has work; draining does
not. Re-encoding: a chunk written with a reduced layout (fewer nodes were
up than its file's layout needs; the record names the layout it should
have) is read, encoded with that layout as a new chunk on the nodes
placement picks, and swapped in (`ReencodeChunk`, refused if the file
changed it meanwhile) once enough nodes are up; its old shards go through
GC. All three are paced to ``mb_per_s`` (bytes read plus written).

Progress (`MoveStats`) is kept in the leader's memory and shown by
``prismfs cluster status``; a new leader starts counting from zero.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from prismfs.clock import wall_ns
from prismfs.data.messages import CopyShard, DeleteShards, ShardList, ShardPut, StatShards
from prismfs.data.placement import Candidate, score, up_candidates
from prismfs.data.service import COPY_TIMEOUT_S
from prismfs.data.stores import shard_id
from prismfs.errors import NotFound, PrismError, ProtocolError
from prismfs.exception_groups import single_exception
from prismfs.leader.repair import (
    Health,
    chunk_pages,
    cluster_counts,
    commit_chunk_change,
    off_loop,
    reencode_on_node,
    repair_chunk,
    usable,
)
from prismfs.meta.commands import (
    ChunkRecord,
    MetaValue,
    MoveShards,
    NodeInfo,
    ReencodeChunk,
    ShardRefs,
)
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import decode_message, encode_message

log = logging.getLogger("prismfs.leader.rebalance")

T = TypeVar("T")

PARALLEL_MOVES = 2
MOVES_PER_PASS = 64  # then the usage is read again
SCAN_PER_PASS = 5000  # records of one node a rebalance pass looks at, at most
DELETE_BATCH = 1000  # old copies checked and deleted per call


@dataclass
class MoveStats:
    shards_moved: int = 0
    bytes_moved: int = 0
    to_move_bytes: int = 0  # rebalancing still to do, as estimated by the last pass
    draining: dict[str, int] = field(default_factory=dict)  # node -> shards still on it
    drain_total: dict[str, int] = field(default_factory=dict)  # node -> shards when first seen
    passes: int = 0
    reencoded: int = 0  # chunks given their file's layout back


class Mover:
    def __init__(
        self,
        consensus: Consensus,
        namespace: Namespace,
        pool: RpcPool,
        health: Health,
        *,
        spread: float = 0.1,
        mb_per_s: float = 50.0,
        delete_after_s: float = 30.0,
    ) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self.pool = pool
        self.health = health
        self.spread = spread
        self.mb_per_s = max(mb_per_s, 0.1)
        self.delete_after_s = delete_after_s
        self.stats = MoveStats()
        # (due, node, shard id, version): the version (mtime_ns) the old copy had
        # when the move began; 0 for shards nothing ever referred to
        self._deletes: list[tuple[float, str, str, int]] = []
        self._stuck: dict[str, int] = {}  # draining node -> chunks no node can take (logged)
        self._cursors: dict[str, _Cursor] = {}  # rebalance: where each node's list was left

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # Deletes of old copies in a task of their own: a node slow to answer
            # them holds up no drain.
            nursery.start_soon(self._delete_loop)
            task_status.started()
            await self._move_loop()

    async def _delete_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            if self.consensus.role != "leader":
                self._forget_deletes()
                continue
            try:
                await self._delete_due()
            except PrismError as exc:
                log.info("old copies of moved shards not deleted now: %s", exc.message)

    async def _move_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            if self.consensus.role != "leader":
                self.stats = MoveStats()
                continue
            try:
                await self.drain_pass()
                await self.reencode_pass()
                if not self.health.stats.pending:
                    await self.rebalance_pass()
            except PrismError as exc:
                log.info("shard moves paused: %s", exc.message)

    # --- draining -----------------------------------------------------------------------

    async def drain_pass(self) -> int:
        """Move every shard off the draining nodes; returns how many moved."""
        nodes = {n.node: n for n in self.namespace.nodes()}
        draining = [n.node for n in nodes.values() if n.state == "draining"]
        for gone in set(self.stats.draining) - set(draining):
            self.stats.draining.pop(gone, None)
            self.stats.drain_total.pop(gone, None)
        moved = 0
        counts = (await cluster_counts(self.namespace))[1] if draining else {}
        for node in draining:
            left = counts.get(node, 0)
            self.stats.draining[node] = left
            total = self.stats.drain_total.setdefault(node, left)
            self.stats.drain_total[node] = max(total, left)
            if not left:
                continue
            self.stats.passes += 1
            stuck: set[bytes] = set()

            async def one(rec: ChunkRecord, node: str = node, stuck: set[bytes] = stuck) -> bool:
                i = rec.nodes.index(node)
                target = pick_target(rec, i, nodes)
                if target is None:
                    stuck.add(rec.id)
                    return False
                return await self.move(rec, i, nodes, target)

            # A page at a time, read in a worker thread: a node's million
            # records are never listed at once nor read on the event loop.
            done = 0
            pages_in, pages_out = trio.open_memory_channel[list[ChunkRecord]](1)
            with single_exception():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chunk_pages, self.namespace, {node}, pages_in)
                    async with pages_out:
                        async for page in pages_out:
                            mine = [r for r in page if node in r.nodes]
                            done += await self._run_moves(mine, one)
                            self.stats.draining[node] = max(0, left - done)
            moved += done
            if stuck and len(stuck) != self._stuck.get(node):
                log.warning(
                    "drain of %s: no node can take a shard of %d chunks (every other node "
                    "that is up holds one of each); add a node",
                    node,
                    len(stuck),
                )
            self._stuck[node] = len(stuck)
            if done:
                log.info("drain of %s: moved %d shards, %d left", node, done, max(0, left - done))
        return moved

    async def all_on(self, node: str) -> list[ChunkRecord]:
        """Every chunk record with a shard on ``node``, at once, read in a
        worker thread: only for an admin's command (a removal's check of what
        the node holds, the count in an answer)."""
        return await off_loop(
            self.namespace, lambda view: [r for r in view.iter_chunks_on({node}) if node in r.nodes]
        )

    # --- re-encoding ----------------------------------------------------------------------

    async def reencode_pass(self) -> int:
        """Chunks written with a reduced layout (too few nodes were up) get their
        file's layout back once enough nodes are up; returns how many."""
        records = self.namespace.reduced_chunks(limit=MOVES_PER_PASS)  # an index scan
        if not records:
            return 0
        nodes = {n.node: n for n in self.namespace.nodes()}
        up = sum(1 for n in nodes.values() if n.state == "up")
        ready = [r for r in records if up >= r.layout[1]]
        if not ready:
            return 0
        self.stats.passes += 1
        done = await self._run_moves(ready, lambda rec: self.reencode(rec, nodes))
        if done:
            log.info("re-encoded %d chunks to their layout", done)
        return done

    async def reencode(self, rec: ChunkRecord, nodes: dict[str, NodeInfo]) -> bool:
        """Read the chunk, encode it with its file's layout as a new chunk on the
        nodes placement picks, commit (`ReencodeChunk`, refused if the file
        changed it meanwhile); the old shards go through GC."""
        started = trio.current_time()
        lost = {n.node for n in nodes.values() if n.state in ("down", "removed")}
        sources = [i for i, n in enumerate(rec.nodes) if usable(n, lost, nodes)]
        try:
            record = await reencode_on_node(self.pool, rec, sources, *rec.layout, nodes)
            committed = await commit_chunk_change(
                self.consensus, ReencodeChunk(wall_ns(), rec.id, record)
            )
        except PrismError as exc:
            log.info("re-encoding chunk %s failed, will retry: %s", rec.id.hex(), exc.message)
            return False
        if not committed:
            log.debug("chunk %s changed during its re-encoding", rec.id.hex())
            now = trio.current_time()
            for i, node in enumerate(record.nodes):  # nothing refers to the new shards
                if node:
                    self._deletes.append((now, node, shard_id(record.id, i), 0))
            return False
        self.stats.reencoded += 1
        spent = rec.shard_size * rec.k + record.shard_size * record.m
        await trio.sleep_until(started + spent * PARALLEL_MOVES / (self.mb_per_s * 1e6))
        return True

    # --- rebalancing ----------------------------------------------------------------------

    async def rebalance_pass(self) -> int:
        """Move shards from the fullest "up" node to the emptiest while they are
        further apart than the spread allows; returns how many moved."""
        nodes = {n.node: n for n in self.namespace.nodes()}
        up = [n for n in nodes.values() if n.state == "up" and n.capacity > 0]
        self.stats.to_move_bytes = 0
        if len(up) < 2:
            return 0
        used = {n.node: n.used for n in up}
        total_used = sum(used.values())
        total_cap = sum(n.capacity for n in up)
        if total_used == 0:
            return 0
        # Each pass: a fresh look at up to SCAN_PER_PASS records of each node,
        # from where the last pass left off (from the start once at the end).
        self._cursors = {n: c for n, c in self._cursors.items() if not c.done}
        for cursor in self._cursors.values():
            cursor.budget = SCAN_PER_PASS
            cursor.passed.clear()
        target = {n.node: total_used * n.capacity / total_cap for n in up}
        band = self.spread * total_used / len(up)
        rough = int(sum(max(0.0, used[n] - target[n] - band) for n in used))
        plan: list[tuple[ChunkRecord, int, str]] = []
        skip: set[bytes] = set()
        while len(plan) < MOVES_PER_PASS:
            excess = {n: used[n] - target[n] for n in used}
            full = max(excess, key=lambda n: excess[n])
            empty = min(excess, key=lambda n: excess[n])
            if excess[full] <= band and -excess[empty] <= band:
                break
            rec = self._movable(full, empty, nodes, skip)
            if rec is None or excess[full] - excess[empty] <= 2 * rec.shard_size:
                break
            skip.add(rec.id)
            plan.append((rec, rec.nodes.index(full), empty))
            used[full] -= rec.shard_size
            used[empty] += rec.shard_size
        # What is left to do: this pass's moves (and, if it stopped at its cap,
        # the rough excess over the band); 0 once no move would improve things.
        planned = sum(rec.shard_size for rec, _, _ in plan)
        self.stats.to_move_bytes = max(planned, rough) if len(plan) == MOVES_PER_PASS else planned
        if not plan:
            return 0
        self.stats.passes += 1

        async def one(item: tuple[ChunkRecord, int, str]) -> bool:
            rec, i, to = item
            return await self.move(rec, i, nodes, to)

        done = await self._run_moves(plan, one)
        if done:
            log.info("rebalance: moved %d shards", done)
        return done

    def _movable(
        self, src: str, dst: str, nodes: dict[str, NodeInfo], skip: set[bytes]
    ) -> ChunkRecord | None:
        """A chunk with a shard on ``src``, none on ``dst``, whose spread over the
        failure domains the move keeps. The chunks of ``src`` are read through
        a cursor kept from move to move and pass to pass (`_Cursor`), at most
        ``SCAN_PER_PASS`` records a pass, so planning never walks a node's
        whole list on the event loop, let alone once per move."""

        def fits(rec: ChunkRecord) -> bool:
            if rec.id in skip or src not in rec.nodes or dst in rec.nodes:
                return False
            zones = [nodes[n].zone if n in nodes else "" for n in rec.nodes]
            i = rec.nodes.index(src)
            after_move = [*zones[:i], nodes[dst].zone, *zones[i + 1 :]]
            return len(set(after_move)) >= len(set(zones))

        cursor = self._cursors.get(src)
        if cursor is None:
            cursor = self._cursors[src] = _Cursor(self.namespace.iter_chunks_on({src}))
        return cursor.next_fitting(fits)

    # --- one move -------------------------------------------------------------------------

    async def _run_moves(self, items: Sequence[T], one: Callable[[T], Awaitable[bool]]) -> int:
        """Run ``one`` on each item, a few at a time, while this node leads; how many moved."""
        limiter = trio.Semaphore(PARALLEL_MOVES)
        done = 0

        async def run(item: T) -> None:
            nonlocal done
            async with limiter:
                if self.consensus.role != "leader":
                    return
                if await one(item):
                    done += 1

        with single_exception():
            async with trio.open_nursery() as nursery:
                for item in items:
                    nursery.start_soon(run, item)
        return done

    async def move(self, rec: ChunkRecord, i: int, nodes: dict[str, NodeInfo], to: str) -> bool:
        """Shard ``i`` of ``rec`` to node ``to``: copy, commit, delete the old one later."""
        src = rec.nodes[i]
        sid = shard_id(rec.id, i)
        started = trio.current_time()
        try:
            # The version of the old copy: only that file is deleted later (a
            # copy written there again since, by repair, is another file).
            listing = await self.pool.call(nodes[src].address, StatShards((sid,)), timeout=10)
            found = listing.message.shards if isinstance(listing.message, ShardList) else ()
            if not found:
                raise NotFound(f"shard {sid} is not on {src}")
            version = found[0].mtime_ns
            # The new node copies the shard from the old one: node to node.
            reply = await self.pool.call(
                nodes[to].address,
                CopyShard(sid, rec.checksums[i], nodes[src].address),
                timeout=COPY_TIMEOUT_S,
            )
        except PrismError as exc:
            log.info("move of %s from %s: %s; rebuilding it", sid, src, exc.message)
            try:
                return bool(
                    await repair_chunk(
                        self.consensus,
                        self.pool,
                        rec,
                        {src},
                        nodes,
                        self.health.stats,
                        min_redundancy=self.namespace.min_redundancy(),
                    )
                )
            except PrismError as exc2:
                log.info("move of %s failed, will retry: %s", sid, exc2.message)
                return False
        assert isinstance(reply.message, ShardPut)
        size = reply.message.size
        try:
            committed = await commit_chunk_change(
                self.consensus, MoveShards(wall_ns(), rec.id, ((i, src, to),))
            )
        except PrismError as exc:
            log.info("move of %s to %s failed, will retry: %s", sid, to, exc.message)
            return False
        if not committed:
            log.debug("chunk %s changed during the move of shard %d", rec.id.hex(), i)
            return False
        self.stats.shards_moved += 1
        self.stats.bytes_moved += size
        self._deletes.append((trio.current_time() + self.delete_after_s, src, sid, version))
        # Read once, written once; the budget is shared by the moves in flight.
        spent = 2 * size * PARALLEL_MOVES
        await trio.sleep_until(started + spent / (self.mb_per_s * 1e6))
        return True

    def _forget_deletes(self) -> None:
        """No longer the leader: this replica's view may be stale and the new
        leader may put these shards back where they were, so their deletion
        is not this node's to do (the holders' orphan sweeps remove them)."""
        if self._deletes:
            log.info(
                "no longer the leader: %d old copies of moved shards are left to the orphan sweep",
                len(self._deletes),
            )
            self._deletes.clear()

    async def _delete_due(self) -> None:
        """Delete the old copies of moved shards whose grace has passed: only
        those the cluster places on that node no more, and only the very file
        that was there when the move began (best effort: a node that does not
        answer has them swept as orphans)."""
        now = trio.current_time()
        due = [d for d in self._deletes if d[0] <= now]
        if not due:
            return
        self._deletes = [d for d in self._deletes if d[0] > now]
        by_node: dict[str, list[tuple[str, int]]] = {}
        for _, node, sid, version in due:
            by_node.setdefault(node, []).append((sid, version))
        nodes = {n.node: n for n in self.namespace.nodes()}

        async def delete_on(info: NodeInfo, items: list[tuple[str, int]]) -> None:
            for start in range(0, len(items), DELETE_BATCH):
                batch = items[start : start + DELETE_BATCH]
                try:
                    # A linearizable read: a later move or a repair may have put
                    # the shard back on that node (a read of this replica's
                    # state could miss it).
                    reply = await self.consensus.query(
                        encode_message(ShardRefs(info.node, tuple(s for s, _ in batch)))
                    )
                    refs = decode_message(reply.result)
                    if not isinstance(refs, MetaValue):
                        raise ProtocolError(f"ShardRefs answered {type(refs).__name__}")
                    placed = {name.decode() for name in refs.names}
                    stale = [(s, v) for s, v in batch if s not in placed]
                    if not stale:
                        continue
                    await self.pool.call(
                        info.address,
                        DeleteShards(tuple(s for s, _ in stale), tuple(v for _, v in stale)),
                        timeout=10,
                    )
                except PrismError as exc:
                    log.debug("old copies on %s not deleted now: %s", info.node, exc.message)

        async with trio.open_nursery() as nursery:  # a node that does not answer delays no other
            for node, items in by_node.items():
                info = nodes.get(node)
                if info is not None and info.state != "removed":
                    nursery.start_soon(delete_on, info, items)


def pick_target(rec: ChunkRecord, i: int, nodes: dict[str, NodeInfo]) -> str | None:
    """The "up" node that should take shard ``i`` of ``rec``: none of the chunk's
    holders, a failure domain the other shards are not in if there is one, and
    among those the rendezvous choice."""
    holders = [n for n in rec.nodes if n]
    candidates = up_candidates(nodes.values(), exclude=holders)
    if not candidates:
        return None
    others = {nodes[n].zone for j, n in enumerate(rec.nodes) if j != i and n in nodes}
    fresh = [c for c in candidates if c.zone not in others]
    choices: list[Candidate] = fresh or candidates
    return max(choices, key=lambda c: (score(rec.id, c), c.node)).node


class _Cursor:
    """Where the rebalancer is in one node's chunk list: records it passed over
    for one destination are kept, within a pass, for the next; the list starts
    over once read to its end (`done`)."""

    def __init__(self, records: Iterator[ChunkRecord]) -> None:
        self.records = records
        self.passed: list[ChunkRecord] = []
        self.budget = SCAN_PER_PASS
        self.done = False

    def next_fitting(self, fits: Callable[[ChunkRecord], bool]) -> ChunkRecord | None:
        for k, earlier in enumerate(self.passed):
            if fits(earlier):
                del self.passed[k]
                return earlier
        while self.budget > 0:
            rec = next(self.records, None)
            if rec is None:
                self.budget = 0
                self.done = True  # read again from the start next pass
                return None
            self.budget -= 1
            if fits(rec):
                return rec
            if len(self.passed) < SCAN_PER_PASS:
                self.passed.append(rec)
        return None
