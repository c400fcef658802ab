"""Failure detection and repair, run by the Raft leader.

Theory of operation. Every node sends a `NodeHeartbeat` to the leader every
``heartbeat_s``. The leader keeps, in memory, when it last heard from each
node (`Health`); a node silent for ``node_down_after_s`` is marked "down" in
the node registry (`SetNodeState`, through the log, so placement on every
client stops choosing it), and "up" again when it is heard from. A new
leader starts the clock of every node the registry has up at its own start,
so it never declares a node down sooner than ``node_down_after_s`` after
taking over; a node the registry has down stays down until it is heard
from, down since the time its state changed (`NodeInfo.state_ns`, recorded
through the log), so repair goes on after a change of leader instead of
waiting its delay again.

Repair: once a node has been down for ``repair_after_s`` (and for shards a
degraded write never stored, at once), `repair_pass` walks the chunk
records that have a shard on such a node, the most endangered first (fewest
live shards). For each lost shard it picks a node by placement among the
"up" nodes that hold none of the chunk and asks that node to rebuild it
(`RebuildShards`): the node fetches k intact shards from live nodes (each
checked against its checksum by the node that holds it and again there),
decodes the chunk, re-encodes it (zfec is deterministic: the rebuilt shards
are byte for byte the lost ones, checked against the record's checksums)
and stores its shard. The bytes go node to node, never through the leader.
Then the leader commits `MoveShards`. The commit is refused if the file
changed the chunk meanwhile; the shard written is then an orphan, which the
node's orphan sweep deletes. Repair reads the records a page at a time in a
worker thread (the endangered ones, one loss from unavailable, in a first
sweep), works on two chunks per up node at a time (at most 32), and is
paced to ``repair_mb_per_s`` per up node (bytes read and written): the
more nodes, the faster, each doing its share. A chunk with fewer
than k live shards cannot be rebuilt: it is counted as unavailable and
logged, and tried again on the next pass (its node may come back).

The down node's own copies become unreferenced once their shards moved; if
it comes back, its orphan sweep (which asks which shards a record places on
*this* node) deletes them.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from prismfs.clock import wall_ns
from prismfs.data.messages import (
    HeartbeatAck,
    NodeHeartbeat,
    RebuildShards,
    ReencodeShards,
    ShardsRebuilt,
    ShardsReencoded,
)
from prismfs.data.placement import NotEnoughNodes, fit_layout, place, up_candidates
from prismfs.data.rebuild import NotEnoughShardsToRepair
from prismfs.errors import InternalError, NotFound, PrismError
from prismfs.exception_groups import single_exception
from prismfs.meta.cluster_tables import CHUNK_PAGE, ClusterTables
from prismfs.meta.commands import (
    ChunkRecord,
    MoveShards,
    NodeInfo,
    ReencodeChunk,
    SetNodeState,
)
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import decode_message, encode_message
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.leader.repair")

REBUILD_TIMEOUT_S = 120.0  # a node reads k shards, decodes, re-encodes and stores

PER_NODE_CHUNKS = 2  # chunks rebuilt at once per up node
T = TypeVar("T")
MAX_PARALLEL_CHUNKS = 32


@dataclass
class RepairStats:
    chunks_repaired: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    unavailable: int = 0  # chunks with fewer than k live shards at the last pass
    pending: int = 0  # chunks below full redundancy found by the last pass
    passes: int = 0


@dataclass
class Health:
    """The leader's view of which nodes are alive (from heartbeats)."""

    since: float = field(default_factory=trio.current_time)
    last_seen: dict[str, float] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    stats: RepairStats = field(default_factory=RepairStats)
    # node -> (shard bytes stored, served) since it started, from its heartbeats
    traffic: dict[str, tuple[int, int]] = field(default_factory=dict)

    def beat(self, node: str) -> None:
        self.last_seen[node] = trio.current_time()

    def silent_for(self, node: str) -> float:
        """Seconds since this leader last heard from ``node`` (or took over)."""
        return trio.current_time() - self.last_seen.get(node, self.since)

    def restart(self) -> None:
        """This node became the leader: everyone gets a fresh allowance."""
        self.since = trio.current_time()
        self.last_seen.clear()
        self.down_since.clear()

    def register(self, server: RpcServer) -> None:
        server.register(NodeHeartbeat, self._heartbeat)

    async def _heartbeat(self, request: NodeHeartbeat, call: Call) -> HeartbeatAck:
        self.beat(request.node)
        self.traffic[request.node] = (request.bytes_in, request.bytes_out)
        return HeartbeatAck(removed=request.node in self.removed)


async def send_heartbeats(
    consensus: Consensus,
    pool: RpcPool,
    node_id: str,
    interval: float,
    on_removed: Callable[[], None] = lambda: None,
    traffic: Callable[[], tuple[int, int]] = lambda: (0, 0),
) -> None:
    """On every node: tell the leader this node is alive, every ``interval``.
    If the leader answers that this node was removed, ``on_removed`` is called
    (the daemon shuts down: it is no longer a member and cannot learn so through
    the log it no longer receives). ``traffic`` gives the shard bytes this node
    stored and served, which the leader sums for its throughput chart."""
    while True:
        await trio.sleep(interval)
        try:
            status = consensus.status()
        except PrismError:
            continue
        if status.leader == node_id or not status.leader_address:
            continue
        try:
            reply = await pool.call(
                status.leader_address,
                NodeHeartbeat(node_id, *traffic()),
                timeout=interval * 2,
            )
        except PrismError as exc:
            log.debug("heartbeat to %s failed: %s", status.leader_address, exc.message)
            continue
        if isinstance(reply.message, HeartbeatAck) and reply.message.removed:
            log.warning("the leader says this node was removed from the cluster: stopping")
            on_removed()
            return


async def watch_nodes(
    consensus: Consensus,
    namespace: Namespace,
    health: Health,
    node_id: str,
    interval: float,
    down_after: float,
) -> None:
    """On the leader: mark nodes down when silent, up when heard from again."""
    leading = False
    while True:
        await trio.sleep(interval)
        if consensus.role != "leader":
            leading = False
            continue
        if not leading:
            health.restart()
            leading = True
        health.beat(node_id)
        now = trio.current_time()
        registry = namespace.nodes()
        health.removed = {n.node for n in registry if n.state == "removed"}
        for node in registry:
            if node.node not in health.last_seen and node.state != "down":
                # A node this leader has not heard of yet (just registered, or
                # the leader is new) gets a full allowance from now; one the
                # registry has down stays down until it is heard from.
                health.last_seen[node.node] = now
            silent = now - health.last_seen.get(node.node, -math.inf)
            new_state = ""
            if node.state == "up" and silent > down_after:
                new_state = "down"
                log.warning("node %s missed heartbeats for %.1f s: down", node.node, silent)
            elif node.state == "down" and silent <= down_after:
                new_state = "up"
                log.info("node %s is heard from again: up", node.node)
            if new_state:
                command = SetNodeState(wall_ns(), node.node, new_state, expect=node.state)  # type: ignore[arg-type]
                try:
                    await consensus.propose_internal(encode_message(command))
                except PrismError as exc:
                    log.info("could not mark node %s %s: %s", node.node, new_state, exc.message)
                    continue
            state = new_state or node.state
            if state == "down":
                # Down since the time the log recorded (a new leader goes on
                # from there; repair does not wait its delay again).
                since = now
                if not new_state and node.state_ns:
                    since = now - max(0, wall_ns() - node.state_ns) / 1e9
                health.down_since.setdefault(node.node, since)
            else:
                health.down_since.pop(node.node, None)


async def repair_loop(
    consensus: Consensus,
    namespace: Namespace,
    pool: RpcPool,
    health: Health,
    repair_after: float,
    mb_per_s: float,
) -> None:
    """On the leader: a repair pass every second while anything needs one."""
    while True:
        await trio.sleep(1.0)
        if consensus.role != "leader":
            continue
        now = trio.current_time()
        lost = {n for n, t in health.down_since.items() if now - t >= repair_after}
        lost |= {n.node for n in namespace.nodes() if n.state == "removed"}
        try:
            await repair_pass(consensus, namespace, pool, health.stats, lost, mb_per_s)
        except PrismError as exc:
            log.info("repair pass stopped: %s", exc.message)


async def repair_pass(
    consensus: Consensus,
    namespace: Namespace,
    pool: RpcPool,
    stats: RepairStats,
    lost: set[str],
    mb_per_s: float,
) -> int:
    """Rebuild the shards of every chunk with a shard on a ``lost`` node or never
    stored; returns the number of chunks repaired.

    The records are read a page at a time in a worker thread (`chunk_pages`), never
    all at once nor on the event loop, in two sweeps: first the chunks one
    more loss would make unavailable (live shards <= k), then the rest.
    ``PER_NODE_CHUNKS`` chunks per up node are rebuilt at once (at most
    ``MAX_PARALLEL_CHUNKS``), each by its own target node, and the budget is
    ``mb_per_s`` per up node: repair gets faster as the cluster grows."""
    stats.passes += 1
    nodes = {n.node: n for n in namespace.nodes()}
    redundancy = namespace.min_redundancy()
    up = max(1, sum(1 for n in nodes.values() if n.state == "up" and n.node not in lost))
    parallel = min(MAX_PARALLEL_CHUNKS, PER_NODE_CHUNKS * up)
    budget = mb_per_s * 1e6 * up  # bytes per second, shared by the chunks in flight
    done = unavailable = seen = 0
    stuck: list[str] = []

    def live(rec: ChunkRecord) -> int:
        return sum(1 for n in rec.nodes if usable(n, lost, nodes))

    async def one(rec: ChunkRecord) -> None:
        nonlocal done, unavailable
        started = trio.current_time()
        try:
            moved = await repair_chunk(
                consensus, pool, rec, lost, nodes, stats, min_redundancy=redundancy
            )
        except NotEnoughShardsToRepair as exc:
            unavailable += 1
            log.debug("chunk %s cannot be repaired now: %s", rec.id.hex(), exc.message)
            stuck.append(f"{rec.id.hex()}: {exc.message}")
            return
        except PrismError as exc:
            log.info("repair of chunk %s failed, will retry: %s", rec.id.hex(), exc.message)
            return
        if moved:
            done += 1
        # Pace to the bandwidth budget (k shards read, the lost ones written),
        # shared by the chunks repaired at once.
        spent = rec.shard_size * (rec.k + moved)
        await trio.sleep_until(started + spent * parallel / budget)

    async def worker(receive: trio.MemoryReceiveChannel[ChunkRecord]) -> None:
        async with receive:
            async for rec in receive:
                await one(rec)

    for sweep in ("endangered", "the rest"):
        pages_in, pages_out = trio.open_memory_channel[list[ChunkRecord]](2)
        work_in, work_out = trio.open_memory_channel[ChunkRecord](parallel)
        with single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chunk_pages, namespace, lost, pages_in)
                async with work_out:
                    for _ in range(parallel):
                        nursery.start_soon(worker, work_out.clone())
                async with work_in, pages_out:
                    async for page in pages_out:
                        if sweep == "endangered":
                            seen += len(page)
                            stats.pending = max(stats.pending, seen)
                        for rec in page:
                            if (live(rec) <= rec.k) == (sweep == "endangered"):
                                await work_in.send(rec)
        if sweep == "endangered":
            stats.pending = seen
            if not seen:
                break
    if unavailable != stats.unavailable and stuck:
        log.error("repair: %d chunks cannot be rebuilt now, e.g. %s", unavailable, stuck[0])
    stats.unavailable = unavailable
    if done:
        log.info("repair: rebuilt %d chunks (%d unavailable)", done, unavailable)
    return done


async def chunk_pages(
    namespace: Namespace, lost: set[str], send: trio.MemorySendChannel[list[ChunkRecord]]
) -> None:
    """The records with a shard on a ``lost`` node (or never stored), in pages
    of ``CHUNK_PAGE``, read in a worker thread on a connection of its own; the
    channel's small buffer bounds what is held while repairs go on."""

    def pages(records: Iterator[ChunkRecord]) -> Iterator[list[ChunkRecord]]:
        while page := list(itertools.islice(records, CHUNK_PAGE)):
            yield page

    async with send:
        if namespace.in_memory:  # tests: no second connection; a page at a time on the loop
            for page in pages(namespace.iter_chunks_on(lost)):
                await send.send(page)
            return

        def produce() -> None:
            with namespace.reader() as view:
                for page in pages(view.iter_chunks_on(lost)):
                    trio.from_thread.run(send.send, page)

        await trio.to_thread.run_sync(produce)


def unavailable_nodes(namespace: Namespace) -> set[str]:
    """Nodes whose shards cannot be read now: down or removed."""
    return {n.node for n in namespace.nodes() if n.state in ("down", "removed")}


async def cluster_counts(namespace: Namespace) -> tuple[tuple[int, int, int, int], dict[str, int]]:
    """(chunk health, shards per node) as `cluster status` and `/metrics` show
    them, read in a worker thread on a connection of its own: with a node
    down, health reads every chunk with a shard there (a million rows for a
    large node), which must not hold the event loop that sends heartbeats."""
    bad = unavailable_nodes(namespace)
    return await off_loop(namespace, lambda view: (view.chunk_health(bad), view.shards_per_node()))


async def off_loop(namespace: Namespace, read: Callable[[ClusterTables], T]) -> T:
    """``read`` on the cluster tables in a worker thread, on a read-only
    connection of its own (`Namespace.reader`); on the loop for a database
    without a file (tests)."""

    def run() -> T:
        with namespace.reader() as view:
            return read(view)

    if namespace.in_memory:
        return run()
    return await trio.to_thread.run_sync(run)


def usable(node: str, lost: set[str], nodes: dict[str, NodeInfo]) -> bool:
    """Is ``node`` a live holder of a shard (set, not lost, in the registry, not removed)?"""
    info = nodes.get(node)
    return bool(node) and node not in lost and info is not None and info.state != "removed"


async def commit_chunk_change(consensus: Consensus, command: MoveShards | ReencodeChunk) -> bool:
    """Propose a change of where or how a chunk is stored; False if the namespace
    refused it because the file changed the chunk meanwhile (the shards just
    written are then orphans, which the orphan sweep removes)."""
    proposed = await consensus.propose_internal(encode_message(command))
    result = decode_message(proposed.result)
    return getattr(result, "code", "") != NotFound.code


def addressed(
    rec: ChunkRecord, sources: Sequence[int], nodes: dict[str, NodeInfo]
) -> tuple[tuple[int, str], ...]:
    """(shard index, address of the node holding it) for ``sources``."""
    return tuple((i, nodes[rec.nodes[i]].address) for i in sources)


async def reencode_on_node(
    pool: RpcPool,
    rec: ChunkRecord,
    sources: Sequence[int],
    k: int,
    m: int,
    nodes: dict[str, NodeInfo],
    want: tuple[int, int] = (0, 0),
    stats: RepairStats | None = None,
) -> ChunkRecord:
    """``rec``'s bytes (read from k of ``sources``) as a new k-of-m chunk on the
    "up" nodes placement picks, all m shards stored, or an error; its record,
    naming ``want`` as its layout. The node that gets the first new shard
    reads, encodes and stores (`ReencodeShards`): the leader carries no bytes."""
    chunk_id = os.urandom(16)
    placed = tuple(place(chunk_id, up_candidates(nodes.values()), m))
    targets = tuple(nodes[n].address for n in placed)
    reply = await pool.call(
        targets[0],
        ReencodeShards(rec, addressed(rec, sources, nodes), chunk_id, k, m, placed, targets, *want),
        timeout=REBUILD_TIMEOUT_S,
    )
    done = reply.message
    assert isinstance(done, ShardsReencoded)
    record = done.record
    if (record.id, record.k, record.m, record.nodes) != (chunk_id, k, m, placed):
        raise InternalError(
            f"node {placed[0]} re-encoded chunk {rec.id.hex()} otherwise than asked"
        )
    if stats is not None:
        stats.shards_written += m
        stats.bytes_written += done.bytes_written
    return record


async def reduce_chunk(
    consensus: Consensus,
    pool: RpcPool,
    rec: ChunkRecord,
    sources: Sequence[int],
    live: int,
    nodes: dict[str, NodeInfo],
    stats: RepairStats,
    min_redundancy: int,
    why: PrismError,
) -> int:
    """Too few nodes are up to rebuild the chunk's lost shards elsewhere (2-of-3
    with a node of three gone): re-encode it with the widest layout the nodes
    up allow that survives ``min_redundancy`` more losses (two replicas), if it
    survives fewer now; the mover restores its layout when nodes return."""
    want = rec.layout
    up = up_candidates(nodes.values())
    try:
        k, m = fit_layout(*want, len(up), min_redundancy)
    except NotEnoughNodes as exc:
        raise NotEnoughShardsToRepair(f"no node to rebuild on: {exc.message}") from None
    if m - k <= live - rec.k:
        raise NotEnoughShardsToRepair(f"no node to rebuild on: {why.message}")
    record = await reencode_on_node(pool, rec, sources, k, m, nodes, want=want, stats=stats)
    if not await commit_chunk_change(consensus, ReencodeChunk(wall_ns(), rec.id, record)):
        log.info("chunk %s changed during its repair; the rebuilt shards are orphans", rec.id.hex())
        return 0
    log.info(
        "repair: chunk %s re-encoded %d-of-%d on the %d nodes up (its layout is %d-of-%d)",
        rec.id.hex(),
        k,
        m,
        len(up),
        *want,
    )
    stats.chunks_repaired += 1
    return m


async def repair_chunk(
    consensus: Consensus,
    pool: RpcPool,
    rec: ChunkRecord,
    lost: set[str],
    nodes: dict[str, NodeInfo],
    stats: RepairStats,
    rewrite: Sequence[int] = (),
    min_redundancy: int = 1,
) -> int:
    """Rebuild the chunk's lost shards on new nodes, and the ``rewrite`` ones
    (corrupt or missing on a node that is fine) where they are; returns how
    many shards were rebuilt. With no node free to take a lost shard (every
    node up holds one of the chunk), the chunk is re-encoded with a smaller
    layout over the nodes up that survives ``min_redundancy`` more losses
    (`reduce_chunk`), if that is more than it survives now."""
    missing = [i for i, n in enumerate(rec.nodes) if not usable(n, lost, nodes)]
    rewrite = [i for i in rewrite if i not in missing]
    if not missing and not rewrite:
        return 0
    sources = [i for i in range(rec.m) if i not in missing and i not in rewrite]
    holders = [n for n in rec.nodes if n]
    targets: list[str] = []
    if missing:
        try:
            targets = place(rec.id, up_candidates(nodes.values(), exclude=holders), len(missing))
        except NotEnoughNodes as exc:
            if rewrite:
                raise NotEnoughShardsToRepair(f"no node to rebuild on: {exc.message}") from None
            live = len(rec.nodes) - len(missing)
            return await reduce_chunk(
                consensus, pool, rec, sources, live, nodes, stats, min_redundancy, exc
            )
    # Each node that is to hold a rebuilt shard rebuilds it itself.
    jobs: dict[str, list[int]] = {}
    for i, target in zip(missing, targets, strict=True):
        jobs.setdefault(target, []).append(i)
    for i in rewrite:
        jobs.setdefault(rec.nodes[i], []).append(i)
    from_nodes = addressed(rec, sources, nodes)

    failed: list[PrismError] = []

    async def rebuild(target: str, indices: list[int]) -> None:
        try:
            reply = await pool.call(
                nodes[target].address,
                RebuildShards(rec, tuple(indices), from_nodes),
                timeout=REBUILD_TIMEOUT_S,
            )
        except PrismError as exc:
            failed.append(exc)
            return
        assert isinstance(reply.message, ShardsRebuilt)
        stats.shards_written += reply.message.stored
        stats.bytes_written += reply.message.bytes_written

    async with trio.open_nursery() as nursery:
        for target, indices in jobs.items():
            nursery.start_soon(rebuild, target, indices)
    if failed:
        # One error for the caller, however many targets failed at once (a
        # group of them would pass every ``except PrismError`` above); what
        # the others rebuilt is an orphan the sweep deletes.
        raise failed[0]
    if not missing:
        log.info("repair: rewrote shards %s of chunk %s in place", rewrite, rec.id.hex())
        return len(rewrite)
    moves = tuple((i, rec.nodes[i], t) for i, t in zip(missing, targets, strict=True))
    if not await commit_chunk_change(consensus, MoveShards(wall_ns(), rec.id, moves)):
        log.info("chunk %s changed during its repair; the rebuilt shards are orphans", rec.id.hex())
        return 0
    stats.chunks_repaired += 1
    return len(moves) + len(rewrite)
