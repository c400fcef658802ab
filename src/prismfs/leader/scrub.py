"""Scrub and fsck: every shard re-read where it lives and checked, on the leader.

Theory of operation. `check_chunks` walks the chunk records (by chunk id,
500 at a time), groups their shards by the node a record places them on and
asks each node to read and checksum them itself (`VerifyShards`: only the
verdicts cross the network). A shard the node reports corrupt or missing is
rewritten in place from the chunk's other shards (`repair_chunk` with
``rewrite``) when ``repair`` is set; a shard on a node that is down, removed
or was never stored makes the chunk *degraded*, which repair (the same
function) rebuilds on another node. Reads are paced to ``mb_per_s`` (bytes
the nodes read). A node that does not answer is reported, not guessed about.

`find_orphans` asks every node that is up for its shard list and the
namespace which of those a record places on that node (or the GC queue
still holds); the rest, older than ``grace_s``, are orphans (fsck reports
them; with repair it deletes them).

`Scrub` runs `check_chunks` with repair in the background, one pass at a
time, with its progress kept for ``prismfs scrub status`` and the cluster
status. It also starts passes by itself, every ``[data] scrub_interval_days``
(0: never): the leader looks at the time the last pass completed and starts a
pass once it is that old. That time is durable, an attribute of the root
directory (`SCRUB_COMPLETED_XATTR`, wall-clock ns) committed through Raft at
the end of every completed pass, scheduled or started by hand, so a new
leader goes on with the same clock instead of starting one of its own. A
cluster without that attribute (new, or from before scheduled scrubs) gets
the current time, as if a pass had just completed: the first scheduled pass
comes one interval after the schedule started, never at once on a cluster
that was just made (or just upgraded, with all its data to read).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial

import trio

from prismfs.clock import wall_ns
from prismfs.data.messages import DeleteShards, ListShards, ShardList, ShardsVerified, VerifyShards
from prismfs.data.stores import shard_id
from prismfs.errors import NoAttribute, PrismError
from prismfs.leader.repair import RepairStats, off_loop, repair_chunk, unavailable_nodes, usable
from prismfs.meta.cluster_tables import ClusterTables
from prismfs.meta.commands import ROOT_INO, ChunkRecord, NodeInfo, SetXattr
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import encode_message

log = logging.getLogger("prismfs.leader.scrub")

SCRUB_COMPLETED_XATTR = b"prismfs.scrub_completed"
"""On the root directory: when the last scrub pass completed (wall-clock ns, as
decimal text), set by the leader at the end of each pass (and when the
schedule first runs)."""
SCHEDULE_CHECK_S = 1.0
"""How often the leader compares the last pass's time with the interval (one
read of the local database; more often for an interval of seconds)."""


@dataclass
class Findings:
    chunks: int = 0
    shards_checked: int = 0
    bytes_read: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)  # chunk ids below full redundancy
    unavailable: list[str] = field(default_factory=list)  # chunk ids that cannot be read
    unreachable: list[str] = field(default_factory=list)  # nodes that did not answer
    orphans: list[str] = field(default_factory=list)  # "node:shard id"
    repaired: int = 0  # shards rebuilt
    orphans_deleted: int = 0
    resume_after: bytes | None = None  # `check_chunks` stopped at its limit: go on after it

    @property
    def clean(self) -> bool:
        return not (
            self.corrupt
            or self.missing
            or self.degraded
            or self.unavailable
            or self.unreachable
            or self.orphans
        )


def _coded_page(view: ClusterTables, after: bytes, limit: int) -> list[ChunkRecord]:
    return view.coded_chunks(after, limit) if limit else view.coded_chunks(after)


async def check_chunks(
    consensus: Consensus,
    namespace: Namespace,
    pool: RpcPool,
    *,
    repair: bool,
    mb_per_s: float,
    lost: set[str],
    findings: Findings,
    after: bytes = b"",
    limit: int = 0,
) -> Findings:
    """Check the chunks after chunk id ``after``: all of them, or (``limit``)
    about that many, leaving ``findings.resume_after`` where to go on."""
    stats = RepairStats()
    findings.resume_after = None
    checked = 0
    while True:
        if limit and checked >= limit:
            findings.resume_after = after
            return findings
        # Read in a worker thread: a page may have to pass over many small
        # files' inline chunks to find its coded ones.
        page = await off_loop(
            namespace, partial(_coded_page, after=after, limit=min(limit, 500) if limit else 0)
        )
        if not page:
            return findings
        after = page[-1].id
        checked += len(page)
        nodes = {n.node: n for n in namespace.nodes()}
        started = trio.current_time()
        read = await _verify_page(pool, page, nodes, lost, findings)
        bad_shards = set(findings.corrupt) | set(findings.missing)
        for rec in page:
            findings.chunks += 1
            bad = [i for i in range(rec.m) if shard_id(rec.id, i) in bad_shards]
            gone = [i for i, n in enumerate(rec.nodes) if not usable(n, lost, nodes)]
            if gone or rec.reduced:  # a shard lost, or written with a reduced layout
                findings.degraded.append(rec.id.hex())
            if rec.m - len(set(bad) | set(gone)) < rec.k:
                findings.unavailable.append(rec.id.hex())
                continue
            if repair and (bad or gone):
                try:
                    findings.repaired += await repair_chunk(
                        consensus,
                        pool,
                        rec,
                        lost,
                        nodes,
                        stats,
                        rewrite=bad,
                        min_redundancy=namespace.min_redundancy(),
                    )
                except PrismError as exc:
                    log.warning("could not repair chunk %s: %s", rec.id.hex(), exc.message)
        await trio.sleep_until(started + read / (mb_per_s * 1e6))


async def _verify_page(
    pool: RpcPool,
    page: list[ChunkRecord],
    nodes: dict[str, NodeInfo],
    lost: set[str],
    findings: Findings,
) -> int:
    by_node: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for rec in page:
        for i, node in enumerate(rec.nodes):
            if usable(node, lost, nodes):  # lost holds the down nodes
                by_node[node].append((shard_id(rec.id, i), rec.checksums[i]))
    read = 0

    async def verify(node: str, items: list[tuple[str, bytes]]) -> None:
        nonlocal read
        try:
            reply = await pool.call(
                nodes[node].address,
                VerifyShards(tuple(s for s, _ in items), tuple(c for _, c in items)),
                timeout=300,
            )
        except PrismError as exc:
            log.warning("node %s did not verify its shards: %s", node, exc.message)
            if node not in findings.unreachable:
                findings.unreachable.append(node)
            return
        verdict = reply.message
        assert isinstance(verdict, ShardsVerified)
        findings.shards_checked += len(items)
        findings.corrupt += verdict.corrupt
        findings.missing += verdict.missing
        findings.bytes_read += verdict.bytes_read
        read += verdict.bytes_read

    async with trio.open_nursery() as nursery:
        for node, items in by_node.items():
            nursery.start_soon(verify, node, items)
    return read


async def find_orphans(
    namespace: Namespace,
    pool: RpcPool,
    grace_s: float,
    delete: bool,
    findings: Findings,
    after_node: str | None = None,
) -> str | None:
    """Look for orphans on every node that is up or draining; with
    ``after_node`` ("" to start), only on the next such node by id, returning
    its id (None: no node was left)."""
    for node in sorted(namespace.nodes(), key=lambda n: n.node):
        if node.state not in ("up", "draining"):
            continue
        if after_node is not None and node.node <= after_node:
            continue
        after = ""
        while True:
            try:
                reply = await pool.call(node.address, ListShards(after, 1000), timeout=60)
            except PrismError as exc:
                if node.node not in findings.unreachable:
                    findings.unreachable.append(node.node)
                log.warning("node %s did not list its shards: %s", node.node, exc.message)
                break
            listing = reply.message
            assert isinstance(listing, ShardList)
            if not listing.shards:
                break
            after = listing.shards[-1].shard_id
            # Ages as the node that holds the shard measures them (its clock
            # stamped the file), never this node's clock against another's.
            old = tuple(s.shard_id for s in listing.shards if s.age_s > grace_s)
            placed = set(namespace.referenced_shards(node.node, old))
            orphans = [sid for sid in old if sid not in placed]
            findings.orphans += [f"{node.node}:{sid}" for sid in orphans]
            if delete and orphans:
                await pool.call(node.address, DeleteShards(tuple(orphans)), timeout=60)
                findings.orphans_deleted += len(orphans)
        if after_node is not None:
            return node.node
    return None


@dataclass
class ScrubProgress:
    running: bool = False
    passes: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    findings: Findings = field(default_factory=Findings)


class Scrub:
    """Background scrub passes on the leader (`start` begins one if none runs)."""

    def __init__(
        self,
        consensus: Consensus,
        namespace: Namespace,
        pool: RpcPool,
        mb_per_s: float,
        interval_s: float = 0.0,
    ) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self.pool = pool
        self.mb_per_s = mb_per_s
        self.interval_s = interval_s
        """Start a pass once the last completed one is this old (0: only by hand)."""
        self.progress = ScrubProgress()
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.interval_s > 0:
                nursery.start_soon(self._schedule, name="scrub schedule")
            task_status.started()
            await trio.sleep_forever()

    def last_completed_ns(self) -> int:
        """When the last pass completed, on whichever leader (0: never)."""
        try:
            value = self.namespace.getxattr(ROOT_INO, SCRUB_COMPLETED_XATTR)
        except NoAttribute:
            return 0
        return int(value) if value.isdigit() else 0

    def next_due_ns(self) -> int:
        """When the schedule starts the next pass (0: no schedule, or its clock
        has not started yet)."""
        last = self.last_completed_ns() if self.interval_s > 0 else 0
        return last + int(self.interval_s * 1e9) if last else 0

    async def _schedule(self) -> None:
        """On the leader: start a pass when the last completed one is
        ``interval_s`` old (paced like any pass, by ``mb_per_s``)."""
        check_s = max(min(SCHEDULE_CHECK_S, self.interval_s / 4), 0.05)
        while True:
            await trio.sleep(check_s)
            if self.consensus.role != "leader" or self.progress.running:
                continue
            last = self.last_completed_ns()
            if not last:
                await self._record_completion(wall_ns())  # the clock starts now
            elif wall_ns() - last >= self.interval_s * 1e9:
                log.info(
                    "scheduled scrub: the last pass completed %.2f days ago",
                    (wall_ns() - last) / 86400e9,
                )
                self.start()

    async def _record_completion(self, finished_ns: int) -> None:
        command = SetXattr(wall_ns(), ROOT_INO, SCRUB_COMPLETED_XATTR, str(finished_ns).encode())
        try:
            await self.consensus.propose_internal(encode_message(command))
        except PrismError as exc:  # a new leader scrubs again sooner: no harm
            log.info("could not record the scrub pass's completion: %s", exc.message)

    def start(self) -> ScrubProgress:
        if not self.progress.running and self._nursery is not None:
            self.progress = ScrubProgress(
                running=True, passes=self.progress.passes, started_ns=wall_ns()
            )
            self._nursery.start_soon(self._pass)
        return self.progress

    async def _pass(self) -> None:
        progress = self.progress
        try:
            await check_chunks(
                self.consensus,
                self.namespace,
                self.pool,
                repair=True,
                mb_per_s=self.mb_per_s,
                lost=unavailable_nodes(self.namespace),
                findings=progress.findings,
            )
            f = progress.findings
            log.info(
                "scrub: %d chunks, %d shards checked, %d corrupt, %d missing, %d rebuilt",
                f.chunks,
                f.shards_checked,
                len(f.corrupt),
                len(f.missing),
                f.repaired,
            )
            await self._record_completion(wall_ns())
        except PrismError as exc:
            log.warning("scrub pass stopped: %s", exc.message)
        finally:
            progress.running = False
            progress.passes += 1
            progress.finished_ns = wall_ns()
