"""Cluster administration RPCs, answered by the Raft leader.

Theory of operation. The admin CLI (``prismfs cluster status``, ``node
list/add/drain/cancel-drain/remove``, ``fsck``, ``scrub``) finds the leader
(any node's `RaftStatus` names it) and sends these messages there; another
node answers `NotLeader` with the leader's address. The leader answers from
its own replica of the namespace (the node registry, the chunk records), its
in-memory liveness view (`Health`), and the progress of its repair, move and
scrub tasks. `Fsck` runs a full check (every shard read and checksummed
where it lives, the shard lists of every node compared with the records) in
the call itself; with ``repair`` it also rebuilds what it found and deletes
orphans.

Membership. `AddNode` asks the node at an address for its id (it must be
running with the cluster's secret and not be a member yet) and makes it a
storage-only node by default (it is told where the metadata group's members
are, `ClusterSeeds`, and replays no log), or with ``replica`` a Raft learner
(a non-voting copy of the namespace); it waits for the node to enter the
node registry, sets its zone if given, and with ``voter`` makes it a learner
and promotes it once it has caught up with the log (at most `MAX_VOTERS`
voters).
`DrainNode` marks the node "draining" (placement skips it; the `Mover`
moves its shards off), hands its vote to an up node that does not vote
(`_successor`: from the zone with the fewest remaining voters, a learner
before a storage-only node, which first becomes a learner and catches up);
with no such node it is demoted if more than three voters remain, and
otherwise keeps its vote until it is removed. If it is the leader, it hands
leadership to another voter first and answers `NotLeader` (the CLI asks the
new leader, which finds the node draining and goes on). `RemoveNode`
refuses while some chunk could not do without the node's shard (fewer than
k other live shards) unless ``force``; otherwise it marks the node
"removed" (its shards, if any, are rebuilt by repair), gives its vote to a
successor first if three or fewer voters would be left, and takes it out of
the Raft group. Each step is
idempotent, so a retried request finishes what an interrupted one began.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import trio

from prismfs.clock import wall_ns
from prismfs.errors import (
    ConfChangeInProgress,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    NotLeader,
    NotPermitted,
    PrismError,
)
from prismfs.leader.rebalance import Mover
from prismfs.leader.repair import Health, cluster_counts, unavailable_nodes, usable
from prismfs.leader.scrub import Findings, Scrub, check_chunks, find_orphans
from prismfs.meta.client import decode_result
from prismfs.meta.commands import (
    VOTING,
    ChunkRecord,
    MetaCommand,
    NodeInfo,
    SetNodeState,
    SetNodeVoting,
    SetNodeZone,
)
from prismfs.meta.namespace import Namespace
from prismfs.node.config import ORPHAN_GRACE_S
from prismfs.node.consensus import Consensus
from prismfs.node.consensus_messages import (
    ChangeMembership,
    ClusterSeeds,
    RaftStatus,
    RaftStatusReply,
)
from prismfs.wire.auth import EVERYONE
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import I64, U32, U64, Message, encode_message
from prismfs.wire.messages import Ping, Pong
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.leader.admin")


def leader_only(consensus: Consensus) -> None:
    """`NotLeader`, naming the leader if known, unless this node leads."""
    status = consensus.status()
    if status.role != "leader":
        raise NotLeader(
            "ask the leader: " + (status.leader_address or "none is known yet"),
            leader=status.leader_address,
        )


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
    role: str = ""  # voter, learner or storage (not in the Raft group)
    shards: U64 = 0  # shards the chunk records place on it
    voting: str = "auto"  # auto, pin or never (`prismfs node voting`)


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
    next_ns: I64 = 0
    """When the schedule starts the next pass (0: no schedule, or not yet known)."""


class MoveReport(AdminMessage, frozen=True):
    shards_moved: U64
    bytes_moved: U64
    to_move_bytes: U64  # rebalancing still to do (estimate)
    draining: tuple[tuple[str, U64, U64], ...]  # (node, shards left, shards at the start)
    reencoded: U64 = 0  # chunks given their file's layout back (written with a reduced one)


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
    moves: MoveReport = MoveReport(0, 0, 0, ())
    reduced: U64 = 0  # of the degraded: written with a reduced layout (too few nodes up)


class Fsck(AdminMessage, frozen=True):
    """A check of the whole cluster in one call, or (``page``) one step of it.

    Paged, the check is a sequence of calls each naming where to go on:
    ``cursor`` "" or ``chunks:<hex id>`` checks about ``page`` chunks after
    that id; ``orphans:<node id>`` looks for orphans on the next node after
    it. Each reply's ``cursor`` is the next step ("" when done), so a client
    can stream findings, show progress and resume after an interruption."""

    repair: bool = False
    orphan_grace_s: float = ORPHAN_GRACE_S
    mb_per_s: float = 200.0
    page: U32 = 0  # 0: everything in this one call
    cursor: str = ""


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
    cursor: str = ""  # paged: the next step ("" when the check is complete)


class ScrubStart(AdminMessage, frozen=True):
    pass


class ScrubStatus(AdminMessage, frozen=True):
    pass


class AddNode(AdminMessage, frozen=True):
    address: str
    zone: str = ""
    voter: bool = False
    replica: bool = False
    """A non-voting replica of the namespace (a Raft learner); without it
    or ``voter`` the node is storage-only."""


class DrainNode(AdminMessage, frozen=True):
    node: str


class CancelDrain(AdminMessage, frozen=True):
    node: str


class RemoveNode(AdminMessage, frozen=True):
    node: str
    force: bool = False


class SetVoting(AdminMessage, frozen=True):
    """Pin ``node`` to the metadata voters, exclude it from them, or leave
    the choice to the leader (``voting``: pin, never, auto)."""

    node: str
    voting: str


class NodeChanged(AdminMessage, frozen=True):
    """What a membership command did: the node's state and Raft role after it,
    the shards the records still place on it, and a sentence for the operator."""

    node: str
    address: str
    state: str
    role: str
    shards: U64
    message: str


def _report(findings: Findings, cursor: str = "") -> FsckReport:
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
        cursor=cursor,
    )


MAX_VOTERS = 5
CATCH_UP_S = 60.0  # a new node must reach the leader's commit index within this to vote


class Admin:
    def __init__(
        self,
        consensus: Consensus,
        namespace: Namespace,
        pool: RpcPool,
        health: Health,
        scrub: Scrub,
        mover: Mover,
    ) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self.pool = pool
        self.health = health
        self.scrub = scrub
        self.mover = mover
        # Changes of who votes, one at a time: the voter keeper's and admins'.
        self._voting = trio.Lock()

    def register(self, server: RpcServer) -> None:
        server.register(ClusterHealth, self._cluster_health, roles=EVERYONE)
        server.register(Fsck, self._fsck)
        server.register(ScrubStart, self._scrub_start)
        server.register(ScrubStatus, self._scrub_status, roles=EVERYONE)
        server.register(AddNode, self._add_node)
        server.register(DrainNode, self._drain_node)
        server.register(CancelDrain, self._cancel_drain)
        server.register(RemoveNode, self._remove_node)
        server.register(SetVoting, self._set_voting)

    def _leader_only(self) -> None:
        leader_only(self.consensus)

    async def _cluster_health(self, request: ClusterHealth, call: Call) -> ClusterHealthReply:
        self._leader_only()
        status = self.consensus.status()
        (total, healthy, degraded, unavailable), shards = await cluster_counts(self.namespace)
        stats = self.health.stats
        registry = self.namespace.nodes()
        moves = self.mover.stats
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
                    _role(status, n.node, n),
                    shards.get(n.node, 0),
                    n.voting,
                )
                for n in registry
            ),
            chunks=total,
            healthy=healthy,
            degraded=degraded,
            unavailable=unavailable,
            repair_pending=stats.pending,
            repaired_chunks=stats.chunks_repaired,
            repaired_bytes=stats.bytes_written,
            scrub=self._scrub_report(),
            reduced=self.namespace.reduced_count(),
            moves=MoveReport(
                moves.shards_moved,
                moves.bytes_moved,
                moves.to_move_bytes,
                # What is left is counted from the records (a client whose view of
                # the registry is a few seconds old may still have placed a shard
                # there after the mover's last pass).
                tuple(
                    (
                        n.node,
                        shards.get(n.node, 0),
                        max(moves.drain_total.get(n.node, 0), shards.get(n.node, 0)),
                    )
                    for n in registry
                    if n.state == "draining"
                ),
                moves.reencoded,
            ),
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
            self.scrub.next_due_ns(),
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
        if request.page:
            return await self._fsck_step(request)
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
        return _report(findings)

    async def _fsck_step(self, request: Fsck) -> FsckReport:
        """One step of a paged fsck (see `Fsck`)."""
        findings = Findings()
        phase, _, where = request.cursor.partition(":")
        if phase in ("", "chunks"):
            try:
                after = bytes.fromhex(where)
            except ValueError:
                raise InvalidArgument(f"bad fsck cursor {request.cursor!r}") from None
            await check_chunks(
                self.consensus,
                self.namespace,
                self.pool,
                repair=request.repair,
                mb_per_s=max(request.mb_per_s, 1.0),
                lost=unavailable_nodes(self.namespace),
                findings=findings,
                after=after,
                limit=request.page,
            )
            resume = findings.resume_after
            cursor = "orphans:" if resume is None else f"chunks:{resume.hex()}"
        elif phase == "orphans":
            node = await find_orphans(
                self.namespace,
                self.pool,
                request.orphan_grace_s,
                request.repair,
                findings,
                after_node=where,
            )
            cursor = "" if node is None else f"orphans:{node}"
        else:
            raise InvalidArgument(f"bad fsck cursor {request.cursor!r}")
        return _report(findings, cursor)

    # --- membership ---------------------------------------------------------------------

    async def _add_node(self, request: AddNode, call: Call) -> NodeChanged:
        self._leader_only()
        try:
            pong = (await self.pool.call(request.address, Ping(), timeout=5)).message
        except PrismError as exc:
            raise type(exc)(f"node at {request.address}: {exc.message}") from None
        assert isinstance(pong, Pong)
        node = pong.node_id
        status = self.consensus.status()
        known = self._registry().get(node)
        if known is not None and known.state == "removed":
            raise NotPermitted(
                f"node {node} was removed from the cluster; start it with an empty data "
                "directory to add it as a new node"
            )
        if request.voter and node not in status.voters and len(status.voters) >= MAX_VOTERS:
            raise InvalidArgument(
                f"the cluster has {len(status.voters)} voters, the most it takes; "
                "add the node without --voter (it stores shards all the same)"
            )
        replica = request.voter or request.replica
        if replica and node not in status.voters + status.learners:
            await self._membership(ChangeMembership("add_learner", node, request.address))
            log.info("node %s at %s added as a learner", node, request.address)
        elif not replica and known is None:
            # Storage-only: it learns where the metadata group is and
            # registers itself through it; it replays no log.
            members = set(status.voters) | set(status.learners)
            seeds = tuple(a for n, a in status.addresses if n in members and a)
            await self.pool.call(request.address, ClusterSeeds(seeds), timeout=5)
            log.info("node %s at %s added as storage-only", node, request.address)
        info = await self._registered(node)
        if request.zone and info.zone != request.zone:
            await self._propose(SetNodeZone(wall_ns(), node, request.zone))
        async with self._voting:
            if request.voter and node not in self.consensus.status().voters:
                await self._make_voter(node)
        role = _role(self.consensus.status(), node, self._registry().get(node))
        what = {"voter": "a voter", "learner": "a learner (a non-voting replica)"}
        return await self._changed(
            node, f"node {node} at {request.address} is {what.get(role, 'storage-only')}"
        )

    async def _drain_node(self, request: DrainNode, call: Call) -> NodeChanged:
        self._leader_only()
        info = self._node(request.node)
        if info.state == "removed":
            raise NotPermitted(f"node {info.node} was removed from the cluster")
        if info.state != "draining":
            await self._propose(SetNodeState(wall_ns(), info.node, "draining", info.state))
            log.info("node %s is draining", info.node)
        vote = ""
        async with self._voting:
            status = self.consensus.status()
            if info.node in status.voters:
                if info.node == status.node_id:
                    await self._hand_leadership_away(status)
                successor = self._successor(status, info.node)
                if successor is not None:
                    await self._make_voter(successor)
                    await self._membership(ChangeMembership("demote", info.node))
                    vote = f"; its vote went to {successor}"
                elif len(status.voters) > 3:
                    await self._membership(ChangeMembership("demote", info.node))
                    vote = f"; it no longer votes ({len(status.voters) - 1} voters remain)"
                else:
                    vote = "; it keeps its vote until it is removed (no other node can take it)"
        shards = len(await self.mover.all_on(info.node))
        return await self._changed(
            info.node, f"node {info.node} is draining: {shards} shards to move off{vote}", shards
        )

    async def _set_voting(self, request: SetVoting, call: Call) -> NodeChanged:
        self._leader_only()
        if request.voting not in VOTING:
            raise InvalidArgument(f"voting is one of {', '.join(VOTING)}, not {request.voting!r}")
        info = self._node(request.node)
        if info.state == "removed":
            raise InvalidArgument(f"node {info.node} was removed from the cluster")
        await self._propose(SetNodeVoting(wall_ns(), info.node, request.voting))
        log.info("node %s: voting %s", info.node, request.voting)
        what = {
            "pin": "gets a vote before any other node while it is up (within seconds)",
            "never": "never votes (a vote it holds goes to another node within seconds)",
            "auto": "may get a vote when the leader needs one",
        }[request.voting]
        return await self._changed(info.node, f"node {info.node} {what}")

    async def _cancel_drain(self, request: CancelDrain, call: Call) -> NodeChanged:
        self._leader_only()
        info = self._node(request.node)
        if info.state != "draining":
            raise InvalidArgument(f"node {info.node} is {info.state}, not draining")
        await self._propose(SetNodeState(wall_ns(), info.node, "up", "draining"))
        log.info("drain of node %s cancelled", info.node)
        return await self._changed(
            info.node,
            f"node {info.node} takes new shards again (a vote it handed on stays where it "
            "went; `node add --voter` gives it one back)",
        )

    async def _remove_node(self, request: RemoveNode, call: Call) -> NodeChanged:
        self._leader_only()
        status = self.consensus.status()
        registry = self._registry()
        info = registry.get(request.node)
        member = request.node in status.voters + status.learners
        if info is None and not member:
            raise NotFound(f"no node {request.node} in the cluster")
        held = await self.mover.all_on(request.node)
        lost = unavailable_nodes(self.namespace) | {request.node}
        needed = [r for r in held if _live_shards(r, lost, registry) < r.k]
        if needed and not request.force:
            raise NotPermitted(
                f"node {request.node} holds shards that {len(needed)} chunks cannot do without "
                f"(e.g. {needed[0].id.hex()}): drain it first, or bring their other nodes "
                "back; --force removes it anyway and those chunks are lost"
            )
        if request.node == status.node_id:
            await self._hand_leadership_away(status)
        if info is not None and info.state != "removed":
            await self._propose(SetNodeState(wall_ns(), request.node, "removed"))
        async with self._voting:
            status = self.consensus.status()
            if request.node in status.voters and len(status.voters) <= 3:
                # Keep three votes: another node takes this one first.
                successor = self._successor(status, request.node)
                if successor is not None:
                    await self._make_voter(successor)
        if member:
            await self._membership(ChangeMembership("remove", request.node))
        log.warning(
            "node %s removed (%d chunks had a shard on it, %d of them lost)",
            request.node,
            len(held),
            len(needed),
        )
        message = f"node {request.node} removed"
        if held:
            message += f"; {len(held)} chunks had a shard on it and are rebuilt by repair"
        if needed:
            message += f"; {len(needed)} chunks could not be rebuilt"
        return await self._changed(request.node, message)

    # --- helpers ------------------------------------------------------------------------

    def _registry(self) -> dict[str, NodeInfo]:
        return {n.node: n for n in self.namespace.nodes()}

    def _node(self, node: str) -> NodeInfo:
        info = self._registry().get(node)
        if info is None:
            raise NotFound(f"no node {node} in the cluster")
        return info

    async def _changed(self, node: str, message: str, shards: int | None = None) -> NodeChanged:
        """The answer to a membership command (``shards``: already counted)."""
        info = self._registry().get(node)
        if shards is None:
            shards = len(await self.mover.all_on(node)) if info else 0
        return NodeChanged(
            node,
            info.address if info else "",
            info.state if info else "removed",
            _role(self.consensus.status(), node, info),
            shards,
            message,
        )

    async def _propose(self, command: MetaCommand) -> None:
        decode_result((await self.consensus.propose_internal(encode_message(command))).result)

    async def _membership(self, change: ChangeMembership) -> None:
        """One membership change, retried while the previous one commits."""
        with trio.fail_after(30):
            while True:
                try:
                    await self.consensus.change_membership(change)
                    return
                except ConfChangeInProgress:
                    await trio.sleep(0.2)

    async def _registered(self, node: str) -> NodeInfo:
        """Wait for a new node to enter the node registry (it does, once it
        learns who leads)."""
        with trio.move_on_after(30):
            while True:
                info = self._registry().get(node)
                if info is not None:
                    return info
                await trio.sleep(0.2)
        raise DeadlineExceeded(
            f"node {node} was added but did not register within 30 s; "
            "is its data directory's cluster secret this cluster's?"
        )

    async def keep_voters(self, target: int, replace_after_s: float, interval: float = 2.0) -> None:
        """On the leader: keep ``target`` voters (3 or 5) by themselves. A
        cluster with fewer grows when it can reach an odd number (a node at a
        time, each a learner first); a voter down for ``replace_after_s``
        hands its vote to an up node (`_successor`, zone-aware) and is
        demoted. Larger groups an operator made are left as they are."""
        while True:
            await trio.sleep(interval)
            if self.consensus.role != "leader":
                continue
            try:
                async with self._voting:
                    await self._balance_voters(target, replace_after_s)
            except PrismError as exc:
                log.info("keeping %d voters: %s; will retry", target, exc.message)

    async def _balance_voters(self, target: int, replace_after_s: float) -> None:
        status = self.consensus.status()
        registry = self._registry()
        now = wall_ns()
        if await self._apply_voting(status, registry, target):
            return
        for voter in status.voters:
            info = registry.get(voter)
            if (
                info is None
                or info.state != "down"
                or not info.state_ns
                or now - info.state_ns < replace_after_s * 1e9
            ):
                continue
            successor = self._successor(status, voter)
            if successor is None:
                return
            log.warning(
                "voter %s has been down for over %g s: its vote goes to %s",
                voter,
                replace_after_s,
                successor,
            )
            await self._make_voter(successor)
            await self._membership(ChangeMembership("demote", voter))
            return
        voters = len(status.voters)
        if voters >= target:
            return
        candidates = [
            n
            for n in registry.values()
            if _live(n) and n.node not in status.voters and n.voting != "never"
        ]
        # From an odd number, grow only when the next odd one is in reach: an
        # even group tolerates no more failures than the odd one below it.
        if not candidates or (voters % 2 == 1 and len(candidates) < 2):
            return
        successor = self._successor(status, "")
        if successor is not None:
            log.info("the metadata group has %d voters of %d: adding %s", voters, target, successor)
            await self._make_voter(successor)

    async def _apply_voting(
        self, status: RaftStatusReply, registry: dict[str, NodeInfo], target: int
    ) -> bool:
        """An operator's choices first (`SetVoting`): a voter that must
        never vote hands its vote on (if any node can take it; a leader
        hands its leadership away first); with the group full, a pinned
        node that is up and does not vote takes the vote of a voter that
        is not pinned (a down one first, then one of the zone with the
        most voters). One change a call; True if it made one."""
        for voter in status.voters:
            info = registry.get(voter)
            if info is None or info.voting != "never":
                continue
            successor = self._successor(status, voter)
            if successor is None:
                return False
            if voter == status.node_id:
                await self._hand_leadership_away(status)  # (NotLeader: the next leader goes on)
            log.warning("node %s must not vote: its vote goes to %s", voter, successor)
            await self._make_voter(successor)
            await self._membership(ChangeMembership("demote", voter))
            return True
        pinned = [
            n
            for n in registry.values()
            if n.voting == "pin" and _live(n) and n.node not in status.voters
        ]
        if not pinned or len(status.voters) < target:
            return False  # (growing picks pinned nodes first: `_successor`)
        per_zone = _voters_per_zone(registry, status.voters)
        movable = [
            v
            for v in status.voters
            if v != status.node_id and (registry.get(v) is None or registry[v].voting != "pin")
        ]
        if not movable:
            return False

        def zone_of(v: str) -> str:
            return registry[v].zone if v in registry else ""

        leaving = min(
            movable, key=lambda v: (_live(registry.get(v)), -per_zone.get(zone_of(v), 0), v)
        )
        newcomer = pinned[0].node
        log.info("node %s is pinned: it takes the vote of %s", newcomer, leaving)
        await self._make_voter(newcomer)
        await self._membership(ChangeMembership("demote", leaving))
        return True

    def _successor(self, status: RaftStatusReply, leaving: str) -> str | None:
        """Who takes the vote of ``leaving``: an up node that does not vote
        and may (not ``never``), a pinned one first, then from the zone with
        the fewest of the remaining voters (so a zone's loss takes as few
        votes as it can), a learner before a storage-only node (it already
        holds the namespace); None if no node is up."""
        registry = self._registry()
        per_zone = _voters_per_zone(registry, [v for v in status.voters if v != leaving])
        candidates = [
            n
            for n in registry.values()
            if _live(n) and n.node not in status.voters and n.voting != "never"
        ]
        if not candidates:
            return None
        learners = set(status.learners)
        best = min(
            candidates,
            key=lambda n: (
                n.voting != "pin",
                per_zone.get(n.zone, 0),
                n.node not in learners,
                n.node,
            ),
        )
        return best.node

    async def _make_voter(self, node: str) -> None:
        """Give ``node`` a vote: a storage-only node first becomes a learner
        (it receives a snapshot of the namespace), and a learner votes once
        it has applied the log up to this leader's commit index."""
        address = self._node(node).address
        status = self.consensus.status()
        if node not in status.voters + status.learners:
            await self._membership(ChangeMembership("add_learner", node, address))
            log.info("node %s at %s added as a learner", node, address)
        await self._caught_up(node, address)
        await self._membership(ChangeMembership("add_voter", node, address))
        log.info("node %s promoted to voter", node)

    async def _caught_up(self, node: str, address: str) -> None:
        """Wait until ``node`` has applied the log up to the leader's commit index."""
        target = self.consensus.status().commit
        with trio.move_on_after(CATCH_UP_S):
            while True:
                try:
                    reply = (await self.pool.call(address, RaftStatus(), timeout=5)).message
                    if isinstance(reply, RaftStatusReply) and reply.applied >= target:
                        return
                except PrismError:
                    pass
                await trio.sleep(0.2)
        raise DeadlineExceeded(f"node {node} did not catch up with the log in {CATCH_UP_S:g} s")

    async def _hand_leadership_away(self, status: RaftStatusReply) -> None:
        """This leader is asked to give up its vote: another voter takes over, and
        the caller is told to ask it (`NotLeader`)."""
        registry = self._registry()
        others = [v for v in status.voters if v != status.node_id and _live(registry.get(v))]
        if not others:
            raise InvalidArgument(f"node {status.node_id} is the only voter that is up")
        await self.consensus.transfer_leadership(others[0])
        with trio.move_on_after(5):
            while self.consensus.role == "leader":
                await trio.sleep(0.05)
        leader = self.consensus.status().leader_address
        raise NotLeader(
            f"leadership handed from {status.node_id} to another voter; ask the new leader",
            leader=leader or None,
        )


def _role(status: RaftStatusReply, node: str, info: NodeInfo | None) -> str:
    """A node's part in the metadata group: "voter", "learner" (a non-voting
    replica of the namespace), "storage" (outside the Raft group), or ""
    once removed."""
    if node in status.voters:
        return "voter"
    if node in status.learners:
        return "learner"
    return "" if info is None or info.state == "removed" else "storage"


def _voters_per_zone(
    registry: dict[str, NodeInfo], voters: list[str] | tuple[str, ...]
) -> dict[str, int]:
    per_zone: dict[str, int] = {}
    for voter in voters:
        zone = registry[voter].zone if voter in registry else ""
        per_zone[zone] = per_zone.get(zone, 0) + 1
    return per_zone


def _live(info: NodeInfo | None) -> bool:
    return info is not None and info.state == "up"


def _live_shards(rec: ChunkRecord, lost: set[str], registry: dict[str, NodeInfo]) -> int:
    return sum(1 for n in rec.nodes if usable(n, lost, registry))
