"""Cluster administration RPCs, answered by the Raft leader.

Theory of operation. The admin CLI (``prismfs cluster status``, ``node
list``, ``fsck``, ``scrub``) finds the leader (any node's `RaftStatus` names
it) and sends these messages there; another node answers `NotLeader` with
the leader's address. The leader answers from its own replica of the
namespace (the node registry, the chunk records), its in-memory liveness
view (`Health`), and the progress of its repair and scrub tasks. `Fsck`
runs a full check (every shard read and checksummed where it lives, the
shard lists of every node compared with the records) in the call itself;
with ``repair`` it also rebuilds what it found and deletes orphans.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from prismfs.data.repair import Health, unavailable_nodes
from prismfs.data.scrub import Findings, Scrub, check_chunks, find_orphans
from prismfs.errors import NotLeader
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import I64, U64, Message
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.node.admin")


class AdminMessage(Message, frozen=True):
    family: ClassVar[str] = "admin"
    abstract: ClassVar[bool] = True


class ClusterHealth(AdminMessage, frozen=True):
    """The leader's view of the cluster (for ``prismfs cluster status``)."""


class NodeHealth(AdminMessage, frozen=True):
    node: str
    address: str
    zone: str
    state: str  # up, down, draining, removed
    capacity: U64
    used: U64
    silent_s: float  # since the leader last heard from it


class ScrubReport(AdminMessage, frozen=True):
    running: bool
    passes: U64
    started_ns: I64
    finished_ns: I64
    chunks: U64
    shards_checked: U64
    corrupt: U64
    missing: U64
    repaired: U64


class ClusterHealthReply(AdminMessage, frozen=True):
    leader: str
    term: U64
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    nodes: tuple[NodeHealth, ...]
    chunks: U64
    healthy: U64
    degraded: U64
    unavailable: U64
    repair_pending: U64
    repaired_chunks: U64
    repaired_bytes: U64
    scrub: ScrubReport


class Fsck(AdminMessage, frozen=True):
    repair: bool = False
    orphan_grace_s: float = 60.0
    mb_per_s: float = 200.0


class FsckReport(AdminMessage, frozen=True):
    clean: bool
    chunks: U64
    shards_checked: U64
    corrupt: tuple[str, ...]
    missing: tuple[str, ...]
    degraded: tuple[str, ...]
    unavailable: tuple[str, ...]
    unreachable: tuple[str, ...]
    orphans: tuple[str, ...]
    repaired: U64
    orphans_deleted: U64


class ScrubStart(AdminMessage, frozen=True):
    pass


class ScrubStatus(AdminMessage, frozen=True):
    pass


class Admin:
    def __init__(
        self,
        consensus: Consensus,
        namespace: Namespace,
        pool: RpcPool,
        health: Health,
        scrub: Scrub,
    ) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self.pool = pool
        self.health = health
        self.scrub = scrub

    def register(self, server: RpcServer) -> None:
        server.register(ClusterHealth, self._cluster_health)
        server.register(Fsck, self._fsck)
        server.register(ScrubStart, self._scrub_start)
        server.register(ScrubStatus, self._scrub_status)

    def _leader_only(self) -> None:
        status = self.consensus.status()
        if status.role != "leader":
            raise NotLeader(
                "ask the leader: " + (status.leader_address or "none is known yet"),
                leader=status.leader_address,
            )

    async def _cluster_health(self, request: ClusterHealth, call: Call) -> ClusterHealthReply:
        self._leader_only()
        status = self.consensus.status()
        total, healthy, degraded, unavailable = self.namespace.chunk_health(
            unavailable_nodes(self.namespace)
        )
        stats = self.health.stats
        return ClusterHealthReply(
            leader=status.node_id,
            term=status.term,
            voters=status.voters,
            learners=status.learners,
            nodes=tuple(
                NodeHealth(
                    n.node,
                    n.address,
                    n.zone,
                    n.state,
                    n.capacity,
                    n.used,
                    round(self.health.silent_for(n.node), 3),
                )
                for n in self.namespace.nodes()
            ),
            chunks=total,
            healthy=healthy,
            degraded=degraded,
            unavailable=unavailable,
            repair_pending=stats.pending,
            repaired_chunks=stats.chunks_repaired,
            repaired_bytes=stats.bytes_written,
            scrub=self._scrub_report(),
        )

    def _scrub_report(self) -> ScrubReport:
        p = self.scrub.progress
        f = p.findings
        return ScrubReport(
            p.running,
            p.passes,
            p.started_ns,
            p.finished_ns,
            f.chunks,
            f.shards_checked,
            len(f.corrupt),
            len(f.missing),
            f.repaired,
        )

    async def _scrub_start(self, request: ScrubStart, call: Call) -> ScrubReport:
        self._leader_only()
        self.scrub.start()
        return self._scrub_report()

    async def _scrub_status(self, request: ScrubStatus, call: Call) -> ScrubReport:
        self._leader_only()
        return self._scrub_report()

    async def _fsck(self, request: Fsck, call: Call) -> FsckReport:
        self._leader_only()
        findings = Findings()
        lost = unavailable_nodes(self.namespace)
        await check_chunks(
            self.consensus,
            self.namespace,
            self.pool,
            repair=request.repair,
            mb_per_s=max(request.mb_per_s, 1.0),
            lost=lost,
            findings=findings,
        )
        await find_orphans(
            self.namespace, self.pool, request.orphan_grace_s, request.repair, findings
        )
        log.info(
            "fsck%s: %d chunks, %d shards checked, clean=%s",
            " --repair" if request.repair else "",
            findings.chunks,
            findings.shards_checked,
            findings.clean,
        )
        return FsckReport(
            clean=findings.clean,
            chunks=findings.chunks,
            shards_checked=findings.shards_checked,
            corrupt=tuple(findings.corrupt),
            missing=tuple(findings.missing),
            degraded=tuple(findings.degraded),
            unavailable=tuple(findings.unavailable),
            unreachable=tuple(findings.unreachable),
            orphans=tuple(findings.orphans),
            repaired=findings.repaired,
            orphans_deleted=findings.orphans_deleted,
        )
