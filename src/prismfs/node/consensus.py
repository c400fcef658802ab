"""The trio driver of the Raft core inside a node.

Theory of operation. One task, the *loop*, owns the `RaftNode`: every input
(a tick, messages from peers, a proposal, a read, a membership change) is a
small function queued in ``_inbox`` and run by the loop between two Readys,
so nothing touches the core between `ready()` and `advance()`. Per Ready the
loop does, in Raft's order:

1. **persist**: `DurableLog.save` in a worker thread (fsync), if the Ready
   holds entries, a snapshot or a new term or vote (a commit index alone is
   not written: no thread hop). Inputs that arrive meanwhile pile up in the
   inbox and go into the *next* Ready: many proposals, one append, one fsync
   (group commit);
2. **send**: messages are handed to per-peer sender tasks (bounded queues;
   Raft tolerates loss, so a full queue drops). A leader whose term and
   vote did not change sends *before* persisting, overlapping its fsync
   with the followers' (thesis section 10.2.1);
3. **apply**: snapshot restore and committed entries into the state machine
   (in one transaction if it offers ``batch()``), deduplicated by
   `ExactlyOnce` or by the state machine itself; results go to the
   proposers waiting on that index; reads waiting for a ReadIndex are
   answered once applied. An entry this replica cannot apply for a reason
   of its own stops the node (`ReplicaHalted`): fail-stop, never a skip;
4. **advance**.

Reads (`query`): a leader whose lease holds (`prismfs.raft.lease`: a quorum
acknowledged a heartbeat that left less than about an election timeout ago)
answers from its state once it applied its commit index, and checks the
lease again after reading; otherwise the read waits for a heartbeat round
that confirms leadership (ReadIndex), one round for all reads waiting. The
followers learn a new commit index from the next Append or heartbeat.

Proposals made on a follower are forwarded to the leader over RPC, so any
node accepts client requests. A proposer whose entry is overwritten (leader
change) gets `NotLeader` and may retry: the (client, seq) pair makes the
retry harmless.

Invariant: ``_waiters``, ``_reads`` and the core change only in the loop task
or in synchronous code queued to it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from prismfs.errors import (
    DeadlineExceeded,
    DelegationLost,
    InvalidArgument,
    NotLeader,
    PermissionDenied,
    PrismError,
    ReplicaHalted,
    Unavailable,
)
from prismfs.node.consensus_messages import (
    ChangeMembership,
    LeaseGrant,
    MembershipChanged,
    Propose,
    Proposed,
    Query,
    QueryResult,
    RaftBatch,
    RaftBatchAck,
    RaftStatus,
    RaftStatusReply,
    TransferLeadership,
)
from prismfs.node.leases import Change, LeaseService, is_lookup
from prismfs.node.metalink import MetadataLink
from prismfs.raft.core import RaftNode
from prismfs.raft.durable_log import DurableLog, FileSink, file_digest, read_image
from prismfs.raft.lease import LeaderLease, lease_seconds
from prismfs.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    RaftMessage,
)
from prismfs.raft.ready import RaftConfig, Ready, Role, Snapshot
from prismfs.raft.state_machine import (
    CommandRejected,
    ExactlyOnce,
    StateMachine,
    client_command,
)
from prismfs.stats import Stats
from prismfs.wire.auth import EVERYONE, NODE
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import encode_message
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.raft")

BOOTSTRAP_MARKER = "bootstrap"
"""File in the raft directory: this node founds the cluster on its first start."""


@dataclass(frozen=True)
class ConsensusConfig:
    tick_s: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_every: int = 10_000
    snapshot_bytes: int = 64 << 20
    """Also snapshot once this many bytes of entries applied since the last
    one (large batches of creates make few, large entries): the log between
    snapshots is on disk, and a new node replays all of it."""
    snapshot_mb_per_s: float = 50.0
    """How fast a snapshot copies the database (0: unpaced). Each replica
    snapshots on its own; a burst of a large copy delays the log's fsyncs
    on the same disk, and a follower that answers nothing for an election
    timeout costs the leader its quorum."""
    max_batch_bytes: int = 512 * 1024
    call_timeout: float = 10.0
    lease_reads: bool = True


@dataclass(eq=False)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    index: int = 0
    term: int = 0
    result: bytes = b""
    error: PrismError | None = None

    def finish(self, result: bytes = b"", error: PrismError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


def _in_effect(change: ChangeMembership, conf: ConfState) -> bool:
    """Does the membership ``conf`` already hold what ``change`` asks for?"""
    if change.op == "add_voter":
        return change.node in conf.voters
    if change.op == "add_learner":
        return change.node in conf.members()
    if change.op == "demote":
        return change.node in conf.learners
    return change.node not in conf.members()  # remove


TRUNCATE_STEP = 64 << 20


def _unlink_all(paths: list[Path], step: int = TRUNCATE_STEP, pause: float = 0.01) -> None:
    """Delete old snapshot images; call it in a worker thread. A large one
    is cut down ``step`` bytes at a time first: freeing gigabytes of a
    file at once is one long journal commit on ext4, and the Raft log's
    fsyncs on the same file system wait behind it."""
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            while size > step:
                size -= step
                os.ftruncate(fd, size)
                time.sleep(pause)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)


def _spread() -> float:
    """A factor in [0.75, 1.25) for the next snapshot's thresholds."""
    return 0.75 + random.random() / 2


def prepare_bootstrap(raft_dir: Path) -> None:
    """Mark a fresh data directory as the founder of a new cluster."""
    raft_dir.mkdir(parents=True, exist_ok=True)
    (raft_dir / BOOTSTRAP_MARKER).touch()


class Consensus:
    def __init__(
        self,
        node_id: str,
        address: str,
        raft_dir: Path,
        pool: RpcPool,
        state_machine: StateMachine,
        config: ConsensusConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.dir = raft_dir
        self.pool = pool
        self.cfg = config or ConsensusConfig()
        # A state machine that deduplicates client commands itself (durably,
        # in the same transaction as their effect) is not wrapped again.
        self.sm: StateMachine = (
            state_machine
            if getattr(state_machine, "exactly_once", False)
            else ExactlyOnce(state_machine)
        )
        self._query = getattr(state_machine, "query", None)
        self._check_command = getattr(state_machine, "check_command", None)
        self._check_query = getattr(state_machine, "check_query", None)
        # What a client's credential may send (`Namespace.check_role`).
        self._check_role: Callable[[bytes, str], None] | None = getattr(
            state_machine, "check_role", None
        )
        self.revoked: Callable[[], frozenset[str]] = frozenset
        """The client credentials revoked (told to storage-only nodes that ask)."""
        self.log = DurableLog(raft_dir)
        # The durable log is written from worker threads by the Ready loop and
        # by a compaction running beside it: one at a time.
        self._log_lock = trio.Lock()
        self._compacting = False
        self._applied_bytes = 0  # of entries applied since the last snapshot began
        self._applied_at_start = 0  # the state machine's own applied index when opened
        # Replicas apply the same entries at about the same time: a factor
        # drawn afresh after each snapshot keeps their copies apart.
        self._snapshot_spread = _spread()
        self.core: RaftNode | None = None
        self._inbox: list[Callable[[RaftNode], None]] = []
        self._kick = trio.Event()
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[int, _Waiter] = {}
        self._read_waiting: list[_Waiter] = []
        self._peers: dict[str, trio.MemorySendChannel[RaftMessage]] = {}
        self._nursery: trio.Nursery | None = None
        self._applied_event = trio.Event()
        self._was_leader = False
        self._known_leader = ""
        self._term_vote: tuple[int, str] = (0, "")  # as last persisted
        self._forwarding: set[trio.CancelScope] = set()  # cancelled when the leader changes
        self._learned_addresses: dict[str, str] = {}
        self._lease = LeaderLease(lease_seconds(self.cfg.election_ticks, self.cfg.tick_s))
        # Directory leases of mounts (`prismfs.node.leases`): grants with reads,
        # the gate of changes. Set by the node; None: no leases.
        self.leases: LeaseService | None = None
        self.stats = Stats()  # per Ready: messages, thread hops, fsyncs, apply time
        # A node outside the Raft group (storage-only) reaches it over RPC.
        self.link = MetadataLink(raft_dir, node_id, pool)

    # --- start ---------------------------------------------------------------

    def register(self, server: RpcServer) -> None:
        server.register(RaftBatch, self._on_batch)  # from nodes that still await an ack
        server.register_notification(RaftBatch, self._on_batch_notice)
        server.register(Propose, self._on_propose, roles=EVERYONE)
        server.register(Query, self._on_query, fast=self._on_query_now, roles=EVERYONE)
        server.register(ChangeMembership, self._on_membership)
        server.register(RaftStatus, self._on_status, roles=EVERYONE)
        server.register(TransferLeadership, self._on_transfer)
        self.link.register(server)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        recovered = await trio.to_thread.run_sync(self.log.open)
        marker = self.dir / BOOTSTRAP_MARKER
        if marker.exists() and not recovered.entries and recovered.snapshot is None:
            first = Entry(
                1, 1, "config", encode_message(ConfChange("add_voter", self.node_id, self.address))
            )
            await trio.to_thread.run_sync(
                self.log.save, Ready(entries=[first], hard_state=HardState(1, "", 1))
            )
            recovered.entries, recovered.hard_state = [first], HardState(1, "", 1)
            log.info("founded a new Raft group with %s as its only voter", self.node_id)
        marker.unlink(missing_ok=True)
        # A persistent state machine that already applied past the snapshot
        # keeps its state; the log replay skips what it holds.
        snapshot = recovered.snapshot
        self._applied_at_start = int(getattr(self.sm, "applied", 0))
        if snapshot is not None and self._applied_at_start < snapshot.meta.index:
            await self._check_image(snapshot)
            self._restore(snapshot)
        # A state machine that restores from a file receives snapshots into
        # one, a chunk at a time; others (small, in memory) into memory.
        files = hasattr(self.sm, "restore_file")
        self._term_vote = (recovered.hard_state.term, recovered.hard_state.vote)
        self.core = RaftNode(
            RaftConfig(
                node_id=self.node_id,
                election_ticks=self.cfg.election_ticks,
                heartbeat_ticks=self.cfg.heartbeat_ticks,
                max_append_bytes=self.cfg.max_batch_bytes // 2,
                snapshot_chunk_bytes=self.cfg.max_batch_bytes // 2,
                image_sink=(lambda meta: FileSink(self.log, meta)) if files else None,
                read_image=read_image,
                read_entries=self.log.read_entries,
                lease=self.cfg.lease_reads,
            ),
            random.Random(secrets.randbits(64)),
            conf=ConfState(),
            hard_state=recovered.hard_state,
            snapshot=recovered.snapshot,
            entries=recovered.entries,
        )
        log.info(
            "raft log open: term %d, %d entries, commit %d, members %s",
            self.core.term,
            len(recovered.entries),
            self.core.commit,
            list(self.core.conf.members()),
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._ticker, name="raft-ticker")
                nursery.start_soon(self._loop, name="raft-loop")
                nursery.start_soon(self.link.run, self.is_member, self.address, name="meta-link")
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.log.close)

    # --- the loop ------------------------------------------------------------------

    def _submit(self, fn: Callable[[RaftNode], None]) -> None:
        self._inbox.append(fn)
        self._kick.set()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.cfg.tick_s)
            self._submit(lambda core: core.tick())

    async def _loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            while True:
                inbox, self._inbox = self._inbox, []
                for fn in inbox:
                    fn(core)
                if not core.has_ready():
                    break
                rd = core.ready()
                self.stats.count("raft.ready")
                self._note_heartbeats(core, rd)
                # A leader may send its Appends while it writes the same
                # entries to its own disk (thesis 10.2.1): its own copy
                # counts towards commitment only after `advance`, so nothing
                # is committed on the strength of an unsynced write. Not when
                # the term or vote changed: those must be durable first.
                early = rd.role == Role.LEADER and not self._new_term_or_vote(rd)
                if early:
                    for m in rd.messages:
                        self._send(m)
                # A Ready whose hard state only moves the commit index writes
                # nothing (`DurableLog.save`): no thread hop for it.
                if rd.snapshot is not None:
                    await self._check_image(rd.snapshot)
                elif rd.entries and rd.entries[0].index <= self._applied_floor():
                    raise ReplicaHalted(self._diverged(rd.entries[0].index))
                if rd.entries or rd.snapshot is not None or self._new_term_or_vote(rd):
                    fsyncs = self.log.fsyncs
                    start = trio.current_time()
                    async with self._log_lock:
                        await trio.to_thread.run_sync(self.log.save, rd)
                    self.stats.observe("raft.persist", trio.current_time() - start)
                    self.stats.count("raft.persist_hop")
                    self.stats.count("raft.fsync", self.log.fsyncs - fsyncs)
                    if rd.hard_state is not None:
                        self._term_vote = (rd.hard_state.term, rd.hard_state.vote)
                if not early:
                    for m in rd.messages:
                        self._send(m)
                self._apply(rd)
                core.advance(rd)
                if rd.role != Role.LEADER and self._was_leader:
                    log.info("no longer the leader: term %d, leader %s", core.term, core.leader)
                    self._lost_leadership()
                    if self.leases is not None:
                        self.leases.stop()
                elif rd.role == Role.LEADER and not self._was_leader:
                    log.info("leader of term %d", core.term)
                    if self.leases is not None:
                        self.leases.start(core.term)
                self._was_leader = rd.role == Role.LEADER
                if core.leader != self._known_leader:
                    self._known_leader = core.leader
                    for scope in self._forwarding:
                        scope.cancel()
                self._maybe_snapshot(core)

    def _note_heartbeats(self, core: RaftNode, rd: Ready) -> None:
        """When each heartbeat broadcast leaves: the leader lease is timed from it."""
        now = trio.current_time()
        for m in rd.messages:
            if isinstance(m, Heartbeat) and m.seq:
                self._lease.sent(core.term, m.seq, now)

    def _lease_valid(self) -> bool:
        core = self.core
        return (
            core is not None
            and core.role == Role.LEADER
            and self._lease.valid(core.term, core.lease_seq, trio.current_time())
        )

    def _new_term_or_vote(self, rd: Ready) -> bool:
        hs = rd.hard_state
        return hs is not None and (hs.term, hs.vote) != self._term_vote

    def _apply(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
            meta = rd.snapshot.meta
            log.info(
                "installed a snapshot at index %d (term %d) from the leader", meta.index, meta.term
            )
        # One state-machine transaction for all entries of this Ready, if the
        # state machine offers it (the namespace does: one WAL write per batch).
        if rd.committed:
            start = trio.current_time()
            self._apply_committed(rd)
            self.stats.observe("raft.apply", trio.current_time() - start)
            self.stats.count("raft.applied_entries", len(rd.committed))
            self._applied_bytes += sum(len(e.data) for e in rd.committed)
        for rs in rd.read_states:
            waiter = self._reads.pop(rs.context, None)
            if waiter is not None:
                waiter.index = rs.index
                self._read_waiting.append(waiter)
        assert self.core is not None
        applied = max([self.core.applied] + [e.index for e in rd.committed])
        if rd.snapshot is not None:
            applied = max(applied, rd.snapshot.meta.index)
        still = []
        for waiter in self._read_waiting:
            if waiter.index <= applied:
                waiter.finish()
            else:
                still.append(waiter)
        self._read_waiting = still

    def _apply_committed(self, rd: Ready) -> None:
        batch = getattr(self.sm, "batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            for entry in rd.committed:
                result = b""
                if entry.kind == "normal":
                    result = self._apply_entry(entry)
                waiter = self._waiters.pop(entry.index, None)
                if waiter is not None:
                    if waiter.term == entry.term:
                        waiter.finish(result)
                    else:
                        waiter.finish(
                            error=NotLeader("the proposal was replaced after a leader change")
                        )

    def _apply_entry(self, entry: Entry) -> bytes:
        """One committed entry into the state machine. Only a refusal every
        replica makes alike (`CommandRejected`) is skipped; any other failure
        is this replica's own (full disk, database locked by another process,
        I/O error, no memory): the node stops instead of moving past an entry
        it does not hold, and a restart replays the log from its applied index."""
        try:
            return self.sm.apply(entry.index, entry.data)
        except CommandRejected as exc:
            log.error("entry %d is refused by the state machine (skipped): %s", entry.index, exc)
            return b""
        except Exception as exc:
            log.critical(
                "could not apply committed entry %d (%s: %s); this node stops so that its "
                "replica cannot diverge. Fix the cause (a full disk? another process holding "
                "the metadata database?) and start the node again: it replays the log.",
                entry.index,
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            raise ReplicaHalted(
                f"could not apply committed entry {entry.index}: {type(exc).__name__}: {exc}"
            ) from exc

    def _lost_leadership(self) -> None:
        error = NotLeader("leadership changed", leader=self.core.leader if self.core else None)
        for waiter in self._waiters.values():
            waiter.finish(error=error)
        self._waiters.clear()
        for waiter in self._reads.values():
            waiter.finish(error=error)
        self._reads.clear()

    def _applied_floor(self) -> int:
        """The highest index this replica's state machine holds (its own count
        survives restarts; the core's starts from the snapshot)."""
        assert self.core is not None
        return max(self.core.applied, self._applied_at_start)

    def _diverged(self, index: int) -> str:
        """Entries this replica applied are being replaced: its log diverged
        from the leader's, which Raft never does by itself. It happens to a
        former voter started with its old log after `prismfs node recover`
        made another node the only voter (and when that voter and another
        elected a leader of their own meanwhile). Applying on would leave its
        namespace unlike the leader's, so the node stops (as etcd does)."""
        message = (
            f"this node's log diverged from the leader's at index {index} (entries it applied"
            " are being replaced; was another node recovered with `prismfs node recover`?):"
            " remove raft/ and meta/ from its data directory and start it again to catch up"
        )
        log.critical("%s", message)
        return message

    async def _check_image(self, snapshot: Snapshot) -> None:
        """Refuse a snapshot file that is not a sound image, reading it in a
        worker thread (`LogCorrupt` stops the node, as a damaged log does)."""
        check = getattr(self.sm, "check_image", None)
        if snapshot.file is not None and check is not None:
            await trio.to_thread.run_sync(check, snapshot.file)

    def _restore(self, snapshot: Snapshot) -> None:
        if snapshot.file is None:
            self.sm.restore(snapshot.data)
        elif hasattr(self.sm, "restore_file"):
            self.sm.restore_file(snapshot.file)
        else:
            self.sm.restore(snapshot.file.read_bytes())

    def _maybe_snapshot(self, core: RaftNode) -> None:
        if self._compacting:
            return
        spread = self._snapshot_spread
        if (
            core.applied - core.log.offset < self.cfg.snapshot_every * spread
            and self._applied_bytes < self.cfg.snapshot_bytes * spread
        ):
            return
        self._compacting = True
        self._applied_bytes = 0
        self._snapshot_spread = _spread()
        assert self._nursery is not None
        self._nursery.start_soon(self._compact, core, name="raft-compact")

    async def _compact(self, core: RaftNode) -> None:
        """Snapshot the state machine and drop the log it covers, beside the
        Ready loop: a state machine with a file (the namespace) copies it in a
        worker thread (`snapshot_to`) and its image is hashed there too, so
        heartbeats and applies go on however large it is. Only a small state
        machine without one is serialized in memory, on the loop."""
        try:
            start = trio.current_time()
            snapshot_to = getattr(self.sm, "snapshot_to", None)
            tmp = self.dir / "image.tmp"
            index = None
            if snapshot_to is not None:
                copy = functools.partial(snapshot_to, tmp, mb_per_s=self.cfg.snapshot_mb_per_s)
                index = await trio.to_thread.run_sync(copy)
            checksum, size = b"", 0
            if index is not None:
                # Hashed before the log lock is taken: the Ready loop persists
                # under it, and hashing gigabytes would hold its fsyncs.
                checksum, size = await trio.to_thread.run_sync(file_digest, tmp)
            async with self._log_lock:
                if index is None:
                    index = core.applied
                    if not core.compact(index, self.sm.snapshot()):
                        return
                else:
                    if index <= core.log.offset:  # a snapshot from the leader came first
                        tmp.unlink(missing_ok=True)
                        return
                    term = core.log.term(index)
                    assert term is not None
                    final = self.log.adopt_image(tmp, index, term)
                    core.compact(index, file=final, checksum=checksum, size=size)
                snapshot = core.snapshot
                assert snapshot is not None
                save = functools.partial(self.log.save_snapshot, snapshot, delete_stale=False)
                stale = await trio.to_thread.run_sync(save)
                await trio.to_thread.run_sync(self.log.compact, index)
            # Outside the lock: freeing the old image's gigabytes takes a while.
            await trio.to_thread.run_sync(_unlink_all, stale)
            elapsed = trio.current_time() - start
            self.stats.observe("raft.snapshot", elapsed)
            log.info("snapshot at index %d (%d bytes, %.2f s)", index, snapshot.size, elapsed)
        finally:
            self._compacting = False

    # --- transport -------------------------------------------------------------------

    def _send(self, m: RaftMessage) -> None:
        self.stats.count(f"raft.sent.{type(m).__name__}")
        channel = self._peers.get(m.to)
        if channel is None:
            assert self._nursery is not None
            channel, receive = trio.open_memory_channel[RaftMessage](4096)
            self._peers[m.to] = channel
            self._nursery.start_soon(self._sender, m.to, receive, name=f"raft-send {m.to}")
        with contextlib.suppress(trio.WouldBlock):  # peer slow or gone: Raft retransmits
            channel.send_nowait(m)

    async def _sender(self, peer: str, receive: trio.MemoryReceiveChannel[RaftMessage]) -> None:
        backoff = 0.05
        async for first in receive:
            batch = [first]
            size = _weight(first)
            while size < self.cfg.max_batch_bytes:
                try:
                    m = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(m)
                size += _weight(m)
            address = self._address_of(peer)
            if not address:
                continue
            request = RaftBatch(tuple(batch), self.address)  # type: ignore[arg-type]
            try:
                # One-way: the next batch goes as soon as this one is queued
                # on the connection (whose queue bounds what is in flight).
                await self.pool.notify(address, request, timeout=self.cfg.call_timeout)
                backoff = 0.05
            except PrismError as exc:
                log.debug("raft messages to %s (%s) lost: %s", peer, address, exc.message)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _address_of(self, node: str) -> str:
        conf_address = self.core.conf.address_of(node) if self.core else ""
        return conf_address or self._learned_addresses.get(node, "")

    def is_member(self) -> bool:
        """Is this node in the Raft group (a voter or a non-voting replica)?
        Other nodes are storage-only: they hold no namespace and reach the
        group through `link`."""
        core = self.core
        return core is not None and self.node_id in core.conf.members()

    async def _on_batch(self, request: RaftBatch, call: Call) -> RaftBatchAck:
        forged = self._forged(request, call)
        if forged:
            raise PermissionDenied(forged)
        self._on_batch_notice(request, call)
        return RaftBatchAck()

    def _require_role(self, op: bytes, call: Call) -> None:
        """Refuse (and log) a command or query outside the caller's role."""
        if self._check_role is None:
            return
        try:
            self._check_role(op, call.role)
        except PermissionDenied as exc:
            self.stats.count("refused.op")
            log.warning("refused from %s (%s): %s", call.peer, call.credential or "-", exc.message)
            raise

    def _forged(self, request: RaftBatch, call: Call) -> str:
        """Why a batch is refused: Raft messages must come from the member the
        connection authenticated as, and be meant for this node ("" if fine)."""
        for m in request.messages:
            if m.frm != call.credential or m.to != self.node_id:
                self.stats.count("raft.refused")
                why = (
                    f"a Raft message from {m.frm} to {m.to} on a connection of node "
                    f"{call.credential or '(none)'} to node {self.node_id}"
                )
                log.warning("refused %s from %s", why, call.peer)
                return f"refused {why}"
        return ""

    def _on_batch_notice(self, request: RaftBatch, call: Call) -> None:
        if call.request_id == 0 and self._forged(request, call):
            return  # a notification: there is nobody to answer
        messages = request.messages
        for m in messages:
            self.stats.count(f"raft.received.{type(m).__name__}")
        if messages and request.sender_address:
            self._learned_addresses[messages[0].frm] = request.sender_address

        def step(core: RaftNode) -> None:
            for m in messages:
                core.step(m)

        self._submit(step)

    # --- services ------------------------------------------------------------------------

    async def propose(
        self,
        client: str,
        seq: int,
        op: bytes,
        timeout: float | None = None,
        holder: str = "",
        delegated: tuple[tuple[int, int, int], ...] = (),
    ) -> Proposed:
        """Apply ``op`` through the log, on whichever node leads. On the leader
        a change of directories passes the lease gate first (recalls); a
        flush made under ``delegated`` is appended only while those
        delegations hold (checked again right before the append)."""
        if self._check_command is not None:
            self._check_command(op)  # bad input never reaches the log
        core = self._require_core()
        if core.role != Role.LEADER:
            forwarded: Proposed = await self._forward(
                Propose(client, seq, op, holder, delegated), timeout
            )
            return forwarded
        command = client_command(client, seq, op)
        change = None
        if delegated and (self.leases is None or not self.leases.enabled):
            raise DelegationLost("this cluster grants no delegations (leases are off)")
        if delegated and self.leases is not None:
            delegated = self._current_delegations(delegated)
        if self.leases is not None:
            seconds = self.cfg.call_timeout if timeout is None else timeout
            with trio.move_on_after(seconds if seconds > 0 else math.inf) as scope:
                change = await self.leases.begin(holder, op, delegated)
            if scope.cancelled_caught:
                raise DeadlineExceeded(f"recalls for a change not done within {seconds:g}s")
        leases = self.leases

        def append(core: RaftNode) -> int:
            if delegated and leases is not None:
                leases.check_delegated(holder, delegated)
            return core.propose(command)

        if change is None:
            waiter = await self._append_and_wait(append, timeout, "proposal")
            return Proposed(waiter.index, waiter.result)
        waiter = _Waiter()
        grants: tuple[LeaseGrant, ...] = ()
        try:
            waiter = await self._append_and_wait(append, timeout, "proposal", waiter)
        finally:
            if waiter.done.is_set():
                if waiter.error is None:
                    grants = change.finish(waiter.result)
                else:
                    change.abandon()
            else:
                # Its fate is open (timed out, or the caller went away): the
                # directories stay locked until the entry applies or is lost.
                assert self._nursery is not None
                self._nursery.start_soon(self._finish_later, change, waiter)
        return Proposed(waiter.index, waiter.result, grants)

    def _current_delegations(
        self, delegated: tuple[tuple[int, int, int], ...]
    ) -> tuple[tuple[int, int, int], ...]:
        """The delegations a flush names that this leader's term granted.
        One granted by an earlier leader is unknown here: its directory's
        changes go the usual way instead (the gate recalls other holders),
        under the flush's own client and seq, so a flush the old leader
        had logged already applies once, not twice, and nothing a mount
        acknowledged is lost with a leader that failed. (Other mounts may
        have read the directory without them meanwhile: the one window
        where write-back is not linearizable.)"""
        assert self.leases is not None
        term = self.leases.table.term
        current = tuple(d for d in delegated if d[1] >= term)
        if len(current) < len(delegated):
            self.stats.count("leases.flush_of_earlier_leader")
        return current

    async def _finish_later(self, change: Change, waiter: _Waiter) -> None:
        await waiter.done.wait()
        if waiter.error is None:
            change.finish(waiter.result)
        else:
            change.abandon()

    async def propose_internal(self, op: bytes, timeout: float | None = None) -> Proposed:
        """Propose a command of the node itself (not a client's): leader only,
        not deduplicated, so only for commands that are idempotent."""
        waiter = await self._append_and_wait(lambda core: core.propose(op), timeout, "proposal")
        return Proposed(waiter.index, waiter.result)

    async def _append_and_wait(
        self,
        append: Callable[[RaftNode], int],
        timeout: float | None,
        what: str,
        waiter: _Waiter | None = None,
    ) -> _Waiter:
        """Run ``append`` in the loop (it returns a log index); wait until that entry applies."""
        waiter = waiter or _Waiter()

        def do(core: RaftNode) -> None:
            try:
                waiter.index = append(core)
                waiter.term = core.term
                self._waiters[waiter.index] = waiter
            except PrismError as exc:
                waiter.finish(error=exc)

        self._submit(do)
        await self._wait(waiter, timeout, what)
        return waiter

    async def query(
        self,
        op: bytes,
        timeout: float | None = None,
        holder: str = "",
        exclusive: bool = False,
        lease: bool = True,
    ) -> QueryResult:
        """A linearizable read: under the leader lease, from this state as soon as it
        applied the commit index; otherwise after a ReadIndex round. With
        ``holder``, the leader may grant that mount a lease with the answer
        (a delegation, with ``exclusive``). A read of a directory another
        mount holds delegated first recalls it (the holder flushes)."""
        if self._check_query is not None:
            self._check_query(op)
        if self._query is None:
            raise InvalidArgument("this state machine serves no queries")
        core = self.core
        leases = self.leases
        if core is not None and not self.is_member():
            # Storage-only: no namespace here; the group answers.
            forwarded: QueryResult = await self._forward(
                Query(op, holder, exclusive, lease), timeout
            )
            return forwarded
        if leases is not None and leases.enabled:
            if core is not None and core.role != Role.LEADER:
                # Only the leader knows which directories are delegated.
                result: QueryResult = await self._forward(
                    Query(op, holder, exclusive, lease), timeout
                )
                return result
            if leases.read_blocked(op, holder):
                await leases.before_read(op, holder)
        grantee = holder if lease else ""
        answer = await self._query_now(op, timeout, grantee, exclusive)
        if leases is not None and leases.enabled:
            ino = leases.blocked_inode(answer.result, holder) if is_lookup(op) else None
            if ino is not None:
                await leases.before_read(op, holder, (ino,))
                answer = await self._query_now(op, timeout, grantee, exclusive)
        return answer

    async def _query_now(
        self, op: bytes, timeout: float | None, holder: str, exclusive: bool
    ) -> QueryResult:
        assert self._query is not None
        core = self.core
        if core is not None and self._lease_valid():
            index = core.commit
            if core.applied < index:
                waiter = _Waiter(index=index)
                self._read_waiting.append(waiter)
                await self._wait(waiter, timeout, "read")
            answer = self._lease_read(index, op, holder, exclusive)
            if answer is not None:
                return answer
        self.stats.count("raft.read_index")
        waiter = _Waiter()
        context = secrets.randbits(62) + 1

        def do(core: RaftNode) -> None:
            self._reads[context] = waiter
            try:
                core.read_index(context)
            except PrismError as exc:
                self._reads.pop(context, None)
                waiter.finish(error=exc)

        self._submit(do)
        try:
            await self._wait(waiter, timeout, "read")
        finally:
            self._reads.pop(context, None)
        start = trio.current_time()
        result = self._query(op)
        self.stats.observe("raft.query", trio.current_time() - start)
        return QueryResult(waiter.index, result, self._grant(op, result, holder, exclusive))

    def _grant(
        self, op: bytes, result: bytes, holder: str, exclusive: bool = False
    ) -> LeaseGrant | None:
        if not holder or self.leases is None or not self._is_leader():
            return None
        return self.leases.grant(op, result, holder, exclusive)

    def _is_leader(self) -> bool:
        return self.core is not None and self.core.role == Role.LEADER

    async def change_membership(
        self, change: ChangeMembership, timeout: float | None = None
    ) -> MembershipChanged:
        core = self._require_core()
        if core.role != Role.LEADER:
            reply = await self._forward(change, timeout)
            assert isinstance(reply, MembershipChanged)
            return reply
        conf = core.conf
        if _in_effect(change, conf):
            # Already so (a retry, or another caller made the same change):
            # done, as the caller wants, instead of an error.
            return MembershipChanged(core.commit, conf.voters, conf.learners)
        conf_change = ConfChange(change.op, change.node, change.address)
        waiter = await self._append_and_wait(
            lambda core: core.propose_conf_change(conf_change), timeout, "membership change"
        )
        conf = self._require_core().conf
        log.info("membership change %s %s committed at %d", change.op, change.node, waiter.index)
        return MembershipChanged(waiter.index, conf.voters, conf.learners)

    def status(self) -> RaftStatusReply:
        core = self._require_core()
        remote = self.link.status
        if remote is not None and not self.is_member():
            # What the group last told this storage-only node, with its own role.
            return RaftStatusReply(
                node_id=self.node_id,
                role=self.role,
                term=remote.term,
                leader=remote.leader,
                leader_address=remote.leader_address,
                commit=0,
                applied=0,
                last_index=0,
                voters=remote.voters,
                learners=remote.learners,
                addresses=remote.addresses,
            )
        conf = core.conf
        return RaftStatusReply(
            node_id=self.node_id,
            role=self.role,
            term=core.term,
            leader=core.leader,
            leader_address=conf.address_of(core.leader) if core.leader else "",
            commit=core.commit,
            applied=core.applied,
            last_index=core.log.last_index,
            voters=conf.voters,
            learners=conf.learners,
            addresses=conf.addresses,
        )

    @property
    def role(self) -> str:
        core = self.core
        if core is None:
            return "starting"
        if core.role == Role.FOLLOWER and self.node_id in core.conf.learners:
            return "learner"
        if core.role == Role.FOLLOWER and self.node_id not in core.conf.members():
            return "storage"
        return core.role.value

    async def _wait(self, waiter: _Waiter, timeout: float | None, what: str) -> None:
        seconds = self.cfg.call_timeout if timeout is None else timeout
        with trio.move_on_after(seconds if seconds > 0 else math.inf) as scope:
            await waiter.done.wait()
        if scope.cancelled_caught:
            raise DeadlineExceeded(f"{what} not finished within {seconds:g}s")
        if waiter.error is not None:
            raise waiter.error

    async def _forward(
        self, request: Propose | ChangeMembership | Query, timeout: float | None
    ) -> Any:
        core = self._require_core()
        leader = core.leader
        address = self._address_of(leader) if leader else ""
        remote = False
        if not address and not self.is_member():
            leader, address = self.link.leader
            remote = True
        if not address or leader == self.node_id:
            raise NotLeader("no leader is known yet; retry shortly", leader=None)
        # If this node learns of another leader meanwhile (the old one crashed
        # or was cut off), stop waiting for it: the caller retries at once and
        # exactly-once makes a retry of a proposal that did apply harmless.
        with trio.CancelScope() as scope:
            self._forwarding.add(scope)
            try:
                reply = await self.pool.call(
                    address, request, timeout=timeout or self.cfg.call_timeout
                )
            except PrismError as exc:
                if remote and exc.transient:
                    self.link.forget_leader()  # ask the members who leads now
                raise
            finally:
                self._forwarding.discard(scope)
        if scope.cancelled_caught:
            raise NotLeader(
                f"leader {leader} was replaced while the request was forwarded; retry",
                leader=self._known_leader or None,
            )
        return reply.message

    def _require_core(self) -> RaftNode:
        if self.core is None:
            raise Unavailable("the consensus service is still starting")
        return self.core

    # --- RPC handlers --------------------------------------------------------------------

    async def _on_propose(self, request: Propose, call: Call) -> Proposed:
        self._require_role(request.op, call)
        return await self.propose(
            request.client,
            request.seq,
            request.op,
            holder=request.holder,
            delegated=request.delegated,
        )

    async def _on_query(self, request: Query, call: Call) -> QueryResult:
        self._require_role(request.op, call)
        return await self.query(
            request.op, holder=request.holder, exclusive=request.exclusive, lease=request.lease
        )

    def _on_query_now(self, request: Query, call: Call) -> QueryResult | None:
        """A read the leader answers under its lease without waiting for
        anything: right in the RPC reader, no task (None: the usual way)."""
        if self._check_query is not None:
            self._check_query(request.op)
        self._require_role(request.op, call)
        core = self.core
        if self._query is None or core is None or not self._lease_valid():
            return None
        if core.applied < core.commit:
            return None
        leases = self.leases
        if leases is not None and leases.read_blocked(request.op, request.holder):
            return None  # a recall first: the usual way
        grantee = request.holder if request.lease else ""
        answer = self._lease_read(core.commit, request.op, grantee, request.exclusive)
        if (
            answer is not None
            and leases is not None
            and is_lookup(request.op)
            and leases.blocked_inode(answer.result, request.holder) is not None
        ):
            return None
        return answer

    def _lease_read(
        self, index: int, op: bytes, holder: str = "", exclusive: bool = False
    ) -> QueryResult | None:
        assert self._query is not None
        start = trio.current_time()
        result = self._query(op)
        self.stats.observe("raft.query", trio.current_time() - start)
        # Checked after reading, right before replying: if this process
        # stalled past the lease meanwhile, the answer may be stale.
        if not self._lease_valid():
            return None
        self.stats.count("raft.lease_read")
        return QueryResult(index, result, self._grant(op, result, holder, exclusive))

    async def _on_membership(self, request: ChangeMembership, call: Call) -> MembershipChanged:
        return await self.change_membership(request)

    async def _on_status(self, request: RaftStatus, call: Call) -> RaftStatusReply:
        status = self.status()
        if request.revoked and call.role == NODE and self.is_member():
            status = msgspec.structs.replace(status, revoked=tuple(sorted(self.revoked())))
        return status

    async def _on_transfer(self, request: TransferLeadership, call: Call) -> RaftStatusReply:
        await self.transfer_leadership(request.target)
        return self.status()

    async def transfer_leadership(self, target: str, timeout: float | None = None) -> None:
        """Start handing leadership to voter ``target`` (it takes over within an election
        timeout, or the transfer is abandoned)."""
        waiter = _Waiter()

        def do(core: RaftNode) -> None:
            try:
                core.transfer_leadership(target)
                waiter.finish()
            except PrismError as exc:
                waiter.finish(error=exc)

        self._submit(do)
        await self._wait(waiter, timeout, "leadership transfer")


def _weight(m: RaftMessage) -> int:
    data = getattr(m, "data", b"")
    entries = getattr(m, "entries", ())
    return 64 + len(data) + sum(len(e.data) + 32 for e in entries)
