"""Deterministic simulation of a Raft cluster with a key-value workload.

Theory of operation. One seeded ``random.Random`` decides everything: fault
rates, message delays, drops, duplicates, partitions, crashes, client
operations. A plain event loop (a heap of ``(time, sequence, event)``) drives
the pure `RaftNode` cores; no trio, no threads, no clock, so a seed replays
bit for bit, and the trace hash (xxh3 over every event) proves it.

Each node carries out its `Ready` exactly as the real driver does: persist
(to a simulated disk), send, apply, advance. A crash may strike in the
middle of that: a random prefix of the entries reaches the disk (a torn
tail), the hard state may not, and no message of that Ready is sent, which
is precisely what a power cut before fsync allows.

In about half the runs the membership changes while the faults run: a
spare node is added as a learner, promoted, voters (the leader too) and
learners are removed and re-added, one change at a time. Every run also asks
the leader to hand over leadership now and then, and snapshots go out in
chunks as small as 48 bytes, so InstallSnapshot takes many rounds that the
faults can interrupt.

Most runs with CheckQuorum also serve reads from the leader's lease
(`prismfs.raft.lease`): each node's clock runs at its own rate (within the
drift the lease allows for), ticks come at that rate, the lease is measured
on the leader's clock, and processes pause (a node handles nothing, not even
ticks, for up to four election timeouts; what is sent to it waits), so a
leader resumes with a lease that ran out while it slept.

Clients issue put/append/get on a few keys. Writes go through the log as
`ClientCommand`s (exactly-once by client id and sequence); reads use
ReadIndex. A client that times out retries the same operation, possibly at
another node. Every operation is recorded (call and return times, output)
for the linearizability checker.

Checked while running: one leader per term (election safety), every applied
entry identical on every node at its index (log matching and state machine
safety), a new leader holds every committed entry (leader completeness),
commit and apply never go backwards within a node's life. After the fault
phase the network heals, dead nodes restart, and the run must finish every
client operation and converge all members of the last committed membership
to the same state digest (removed nodes are left behind).

The disk is a model (entries, hard state, snapshot), not `DurableLog`: the
file format and its recovery are tested on a real file system in
``tests/test_raft_durable_log.py``; here only what a crash can leave matters.
"""

from __future__ import annotations

import collections
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from prismfs.check.linearizability import check
from prismfs.check.models import UNKNOWN, Operation
from prismfs.errors import PrismError
from prismfs.raft.core import RaftNode
from prismfs.raft.lease import LeaderLease, lease_seconds
from prismfs.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    RaftMessage,
)
from prismfs.raft.ready import RaftConfig, Ready, Role, Snapshot
from prismfs.raft.state_machine import ClientCommand, StateMachine, client_command
from prismfs.sim.workloads import WORKLOADS, Workload
from prismfs.wire.codec import decode_message

TICK_MS = 10


class Violation(AssertionError):
    """A safety or liveness property failed in a simulation."""


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 5
    partition_every: int = 0  # mean ms between partition changes; 0 = never
    crash_every: int = 0  # mean ms between crashes; 0 = never
    torn_crash: float = 0.0  # chance a crash strikes in the middle of a Ready
    pause_every: int = 0  # mean ms between process pauses; 0 = never

    @classmethod
    def random(cls, rng: random.Random) -> Faults:
        return cls(
            drop=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            max_delay=rng.choice([2, 10, 40]),
            partition_every=rng.choice([0, 300, 1000]),
            crash_every=rng.choice([0, 500, 2000]),
            torn_crash=rng.choice([0.0, 0.3, 0.7]),
            pause_every=rng.choice([0, 0, 400, 1500]),
        )


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    reads: int = 0  # entries read back (`read_entries`)

    def read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """The driver's read-back of persisted entries (`RaftConfig.read_entries`)."""
        out = read_back(self.entries, lo, hi, max_bytes)
        self.reads += len(out)
        return out


def read_back(entries: list[Entry], lo: int, hi: int, max_bytes: int) -> list[Entry]:
    """A disk model's `prismfs.raft.log.Loader`: the stored entries lo <= index
    < hi, stopping after the first that takes their data past ``max_bytes``."""
    out, size = [], 0
    for entry in entries:
        if lo <= entry.index < hi:
            out.append(entry)
            size += len(entry.data)
            if size > max_bytes:
                break
    return out


@dataclass
class ClientRequest:
    client: str
    seq: int
    op: tuple[str, ...]
    to: str


@dataclass
class ClientResponse:
    client: str
    seq: int
    ok: bool
    output: Any = None
    leader: str = ""


@dataclass
class SimNode:
    id: str
    raft: RaftNode
    sm: StateMachine
    store: Any  # what reads and digests use (the KV store, or the namespace itself)
    disk: Disk
    alive: bool = True
    proposals: dict[int, tuple[str, int]] = field(default_factory=dict)
    reads: dict[int, tuple[str, int, tuple[Any, ...]]] = field(default_factory=dict)
    waiting_reads: list[tuple[int, str, int, tuple[Any, ...]]] = field(default_factory=list)
    applied: int = 0
    last_commit: int = 0
    checked_term: int = -1
    lease: LeaderLease | None = None
    paused_until: int = 0


@dataclass
class SimClient:
    id: str
    ops_left: int
    seq: int = 0
    op: tuple[str, ...] | None = None
    call_time: float = 0.0
    target: str = ""
    deadline: int = 0
    good: str = ""  # the node that completed this client's last operation


@dataclass
class Result:
    seed: int
    nodes: int
    trace_hash: str
    operations: int
    completed: int
    end_time: int
    linearizable: bool
    digest: str


class Simulation:
    def __init__(
        self,
        seed: int,
        n_nodes: int = 3,
        *,
        faults: Faults | None = None,
        clients: int = 4,
        ops_per_client: int = 40,
        fault_ms: int = 6000,
        snapshot_every: int = 40,
        think_ms: int = 200,
        membership: bool | None = None,
        workload: str | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults if faults is not None else Faults.random(self.rng)
        # Safety must not depend on the optional protections: explore without them too.
        self.pre_vote = self.rng.random() < 0.75
        self.check_quorum = self.rng.random() < 0.75
        self.max_inflight = self.rng.choice([1, 2, 8, 64])
        # Small chunks make every snapshot transfer take many InstallSnapshot rounds.
        self.snapshot_chunk = self.rng.choice([48, 512, 1 << 20])
        # Membership changes and leadership transfers while the faults run. A
        # spare node starts outside the membership and may be added, promoted,
        # removed and re-added. Removed nodes keep running, so CheckQuorum is
        # on in those runs (thesis 4.2.3: without it they disrupt forever).
        self.membership = membership if membership is not None else self.rng.random() < 0.5
        if self.membership:
            self.check_quorum = True
        # Leader leases rest on CheckQuorum's vote refusal.
        self.lease = self.check_quorum and self.rng.random() < 0.75
        # Half the runs drop applied entries from memory and read them back
        # from the disk model for followers that lag (drawn apart from the
        # scenario's generator, so older seeds replay the same faults).
        self.read_back = random.Random(f"{seed}-read-back").random() < 0.5
        skew = self.rng.choice([0.0, 0.01, 0.03])
        voters = [f"n{i}" for i in range(1, n_nodes + 1)]
        self.ids = voters + ([f"n{n_nodes + 1}"] if self.membership else [])
        # Each node's clock rate: its ticks come at that rate and its lease is
        # measured by it. The spread stays inside the lease's drift allowance.
        self.rates = {i: 1.0 + self.rng.uniform(-skew, skew) for i in self.ids}
        self._next_tick: dict[str, float] = {}
        self.lease_reads = 0
        self.pauses = 0
        self.conf = ConfState(tuple(voters))
        self.min_voters = max(1, n_nodes - 1)
        # A third of the runs replicate the real namespace state machine.
        if workload is None:
            workload = "namespace" if self.rng.random() < 1 / 3 else "kv"
        self.workload: Workload = WORKLOADS[workload]
        if workload == "namespace":
            # A namespace snapshot is a whole SQLite image (tens of KiB): in
            # 48-byte chunks its transfer would outlast the healing phase.
            self.snapshot_chunk = max(self.snapshot_chunk, 8192)
        self._ops: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.fault_ms = fault_ms
        self.snapshot_every = snapshot_every
        self.think_ms = think_ms
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, str, Any]] = []
        self._trace = xxhash.xxh3_64()
        self.cut: set[tuple[str, str]] = set()
        self.nodes: dict[str, SimNode] = {i: self._boot(i, Disk()) for i in self.ids}
        self.clients = {f"c{i}": SimClient(f"c{i}", ops_per_client) for i in range(1, clients + 1)}
        self.history: dict[tuple[str, int], Operation] = {}
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        # index -> the lowest term a node was in when it applied it: the entry
        # was committed in that term or earlier
        self.committed_by: dict[int, int] = {}
        self._ctx = 0
        for node_id in self.ids:
            first = self.rng.randint(1, TICK_MS)
            self._next_tick[node_id] = float(first)
            self._at(first, "tick", node_id)
        for client in self.clients.values():
            self._at(self.rng.randint(1, 50), "client", client.id)
        if self.faults.partition_every:
            self._at(self.rng.randint(1, self.faults.partition_every), "partition", None)
        if self.faults.crash_every:
            self._at(self.rng.randint(1, self.faults.crash_every), "crash", None)
        if self.faults.pause_every:
            self._at(self.rng.randint(1, self.faults.pause_every), "pause", None)
        if self.membership:
            self._at(self.rng.randint(100, 800), "member", None)
        self._at(self.rng.randint(200, 2000), "transfer", None)
        self.conf_changes = 0
        self.delivered: collections.Counter[str] = collections.Counter()
        self.transfers = 0

    # --- scheduling ---------------------------------------------------------------

    def _at(self, when: int, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, payload))

    def _record(self, *parts: object) -> None:
        self._trace.update(repr((self.now, *parts)).encode())

    def _boot(self, node_id: str, disk: Disk) -> SimNode:
        cfg = RaftConfig(
            node_id=node_id,
            election_ticks=10,
            heartbeat_ticks=2,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_inflight=self.max_inflight,
            snapshot_chunk_bytes=self.snapshot_chunk,
            lease=self.lease,
            read_entries=disk.read_entries if self.read_back else None,
        )
        raft = RaftNode(
            cfg,
            random.Random(self.rng.getrandbits(64)),
            conf=self.conf,
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=list(disk.entries),
        )
        sm, store = self.workload.state_machine()
        if disk.snapshot is not None:
            sm.restore(disk.snapshot.data)
        return SimNode(
            node_id,
            raft,
            sm,
            store,
            disk,
            last_commit=raft.commit,
            applied=raft.applied,
            lease=LeaderLease(lease_seconds(cfg.election_ticks, TICK_MS)) if self.lease else None,
        )

    def _clock(self, node: SimNode) -> float:
        """``node``'s own clock (ms): it runs at the node's rate."""
        return self.now * self.rates[node.id]

    # --- the loop -----------------------------------------------------------------------

    def run(self, *, heal_ms: int = 20000) -> Result:
        end_faults = self.fault_ms
        healed = False
        limit = end_faults + heal_ms
        while self._queue:
            when, _, kind, payload = heapq.heappop(self._queue)
            self.now = when
            if not healed and self.now >= end_faults:
                healed = True
                self._heal()
            if self.now > limit:
                break
            self._dispatch(kind, payload, faults_on=not healed)
            if healed and self._done():
                break
        return self._finish()

    def _dispatch(self, kind: str, payload: Any, *, faults_on: bool) -> None:
        if kind == "tick":
            node = self.nodes[payload]
            if node.paused_until > self.now:
                # Asleep: no tick fires; the next comes when it wakes up.
                self._next_tick[node.id] = float(node.paused_until)
                self._at(node.paused_until, "tick", payload)
                return
            if node.alive:
                node.raft.tick()
                self._process(node)
                self._maybe_snapshot(node)
            nxt = self._next_tick[node.id] + TICK_MS / self.rates[node.id]
            self._next_tick[node.id] = nxt
            self._at(max(self.now + 1, round(nxt)), "tick", payload)
        elif kind == "msg":
            self._deliver(payload)
        elif kind == "client":
            self._client_step(self.clients[payload])
        elif kind == "partition" and faults_on:
            self._change_partition()
            self._at(
                self.now + self.rng.randint(1, 2 * self.faults.partition_every), "partition", None
            )
        elif kind == "crash" and faults_on:
            victim = self.nodes[self.rng.choice(self.ids)]
            if victim.alive:
                self._crash(victim)
                self._at(self.now + self.rng.randint(50, 800), "restart", victim.id)
            self._at(self.now + self.rng.randint(1, 2 * self.faults.crash_every), "crash", None)
        elif kind == "pause" and faults_on:
            victim = self.nodes[self.rng.choice(self.ids)]
            if victim.alive and victim.paused_until <= self.now:
                victim.paused_until = self.now + self.rng.randint(20, 400)
                self.pauses += 1
                self._record("pause", victim.id, victim.paused_until)
            self._at(self.now + self.rng.randint(1, 2 * self.faults.pause_every), "pause", None)
        elif kind == "member" and faults_on:
            self._change_membership()
            self._at(self.now + self.rng.randint(100, 1200), "member", None)
        elif kind == "transfer" and faults_on:
            self._transfer()
            self._at(self.now + self.rng.randint(300, 3000), "transfer", None)
        elif kind == "restart":
            node = self.nodes[payload]
            if not node.alive:
                self._restart(node)

    # --- nodes ---------------------------------------------------------------------------

    def _process(self, node: SimNode) -> None:
        while node.alive and node.raft.has_ready():
            rd = node.raft.ready()
            if node.lease is not None:
                for m in rd.messages:
                    if isinstance(m, Heartbeat) and m.seq:
                        node.lease.sent(node.raft.term, m.seq, self._clock(node))
            # As the node driver: a leader whose term and vote did not change
            # sends before it persists (thesis 10.2.1), so a crash can strike
            # after its Appends left but before its own copy is on disk.
            hs = rd.hard_state
            early = rd.role == Role.LEADER and (
                hs is None
                or (hs.term, hs.vote) == (node.disk.hard_state.term, node.disk.hard_state.vote)
            )
            if early:
                for m in rd.messages:
                    self._send(m)
            if self.faults.torn_crash and self.rng.random() < self.faults.torn_crash * 0.002:
                self._persist(node, rd, torn=True)
                self._crash(node)
                self._at(self.now + self.rng.randint(50, 800), "restart", node.id)
                return
            self._persist(node, rd, torn=False)
            if not early:
                for m in rd.messages:
                    self._send(m)
            self._apply(node, rd)
            node.raft.advance(rd)
            self._check_node(node)

    def _persist(self, node: SimNode, rd: Ready, *, torn: bool) -> None:
        disk = node.disk
        if rd.snapshot is not None:
            disk.snapshot = rd.snapshot
            disk.entries = []
        entries = list(rd.entries)
        if torn:
            entries = entries[: self.rng.randint(0, len(entries))]
        if entries:
            first = entries[0].index
            disk.entries = [e for e in disk.entries if e.index < first] + entries
        # The driver writes (and fsyncs) the entries before the hard state, so
        # a crash leaves the new hard state only if every entry made it.
        complete = len(entries) == len(rd.entries)
        if rd.hard_state is not None and complete and not (torn and self.rng.random() < 0.5):
            disk.hard_state = rd.hard_state
        self._record("persist", node.id, len(entries), torn)

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data)
            node.applied = rd.snapshot.meta.index
        for entry in rd.committed:
            self.committed_by[entry.index] = min(
                node.raft.term, self.committed_by.get(entry.index, node.raft.term)
            )
            known = self.committed.get(entry.index)
            if known is None:
                self.committed[entry.index] = (entry.term, entry.data)
            elif known != (entry.term, entry.data):
                raise Violation(
                    f"state machine safety: {node.id} applied {entry.index} term {entry.term}, "
                    f"another node applied term {known[0]} there"
                )
            result = b""
            if entry.kind == "normal":
                result = node.sm.apply(entry.index, entry.data)
            node.applied = entry.index
            waiting = node.proposals.pop(entry.index, None)
            if waiting is not None and entry.kind == "normal":
                cmd = decode_message(entry.data)
                if isinstance(cmd, ClientCommand) and (cmd.client, cmd.seq) == waiting:
                    op = self._ops[waiting]
                    out = self.workload.write_output(op, result)
                    self._reply(node.id, ClientResponse(cmd.client, cmd.seq, True, out))
        for rs in rd.read_states:
            read = node.reads.pop(rs.context, None)
            if read is not None:
                node.waiting_reads.append((rs.index, *read))
        still = []
        for index, client, seq, op in node.waiting_reads:
            if node.applied >= index:
                output = self.workload.read(node.store, op)
                self._reply(node.id, ClientResponse(client, seq, True, output))
            else:
                still.append((index, client, seq, op))
        node.waiting_reads = still

    def _maybe_snapshot(self, node: SimNode) -> None:
        raft = node.raft
        if self.snapshot_every and raft.applied - raft.log.offset >= self.snapshot_every:
            raft.compact(raft.applied, node.sm.snapshot())
            node.disk.snapshot = raft.snapshot
            node.disk.entries = [e for e in node.disk.entries if e.index > raft.log.offset]
            self._record("snapshot", node.id, raft.applied)

    def _check_node(self, node: SimNode) -> None:
        raft = node.raft
        if raft.commit < node.last_commit:
            raise Violation(f"{node.id}: commit went back from {node.last_commit} to {raft.commit}")
        node.last_commit = raft.commit
        if raft.role == Role.LEADER and node.checked_term != raft.term:
            node.checked_term = raft.term
            holder = self.leaders.setdefault(raft.term, node.id)
            if holder != node.id:
                raise Violation(
                    f"election safety: {holder} and {node.id} both lead term {raft.term}"
                )
            for index, (term, data) in self.committed.items():
                if self.committed_by[index] >= raft.term:
                    # Leader completeness speaks of leaders of later terms; a
                    # stale leader (a paused node may win an old election
                    # late) need not hold what was committed since.
                    continue
                if index <= raft.log.offset or index > raft.log.last_index:
                    if index > raft.log.last_index:
                        raise Violation(f"leader completeness: {node.id} lacks committed {index}")
                    continue
                (entry,) = raft.log.slice(index, index + 1)  # read back if released
                if (entry.term, entry.data) != (term, data):
                    raise Violation(f"leader completeness: {node.id} differs at {index}")

    def _crash(self, node: SimNode) -> None:
        node.alive = False
        self._record("crash", node.id)

    def _restart(self, node: SimNode) -> None:
        fresh = self._boot(node.id, node.disk)
        self.nodes[node.id] = fresh
        self._record("restart", node.id)

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.alive and n.raft.role == Role.LEADER]
        return max(leaders, key=lambda n: n.raft.term, default=None)

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        conf = leader.raft.conf
        choices = [ConfChange("add_learner", n) for n in self.ids if n not in conf.members()]
        choices += [ConfChange("add_voter", n) for n in conf.learners]
        choices += [ConfChange("remove", n) for n in conf.learners]
        if len(conf.voters) > self.min_voters:
            choices += [ConfChange("remove", n) for n in conf.voters]
            choices += [ConfChange("demote", n) for n in conf.voters]
        if not choices:
            return
        change = self.rng.choice(choices)
        try:
            leader.raft.propose_conf_change(change)
        except PrismError as exc:
            self._record("member refused", leader.id, change.op, change.node, exc.code)
            return
        self.conf_changes += 1
        self._record("member", leader.id, change.op, change.node)
        self._process(leader)

    def _transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        targets = [v for v in leader.raft.conf.voters if v != leader.id]
        if not targets:
            return
        target = self.rng.choice(targets)
        try:
            leader.raft.transfer_leadership(target)
        except PrismError:
            return
        self.transfers += 1
        self._record("transfer", leader.id, target)
        self._process(leader)

    def _members(self) -> tuple[str, ...]:
        """The membership every replica must converge to: the latest committed one."""
        best = max(self.nodes.values(), key=lambda n: (n.raft.commit, n.raft.term))
        return best.raft.conf_at(best.raft.commit).members()

    # --- network ---------------------------------------------------------------------------

    def _send(self, m: RaftMessage) -> None:
        self._transmit(m.frm, m.to, m)

    def _transmit(self, frm: str, to: str, m: Any) -> None:
        if (frm, to) in self.cut:
            return
        if self.faults.drop and self.rng.random() < self.faults.drop:
            return
        copies = 2 if self.faults.duplicate and self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self._at(self.now + self.rng.randint(1, self.faults.max_delay), "msg", m)

    def _deliver(self, m: Any) -> None:
        self._record("deliver", type(m).__name__)
        self.delivered[type(m).__name__] += 1
        if isinstance(m, InstallSnapshot) and m.offset > 0:
            self.delivered["InstallSnapshot chunk > 0"] += 1
        to = m.to if isinstance(m, (RaftMessage, ClientRequest)) else ""
        if to and self.nodes[to].paused_until > self.now:
            self._at(self.nodes[to].paused_until, "msg", m)  # waits in its socket
            return
        if isinstance(m, RaftMessage):
            node = self.nodes[m.to]
            if node.alive:
                node.raft.step(m)
                self._process(node)
        elif isinstance(m, ClientRequest):
            self._serve(m)
        elif isinstance(m, ClientResponse):
            self._client_response(m)

    def _change_partition(self) -> None:
        self.cut.clear()
        choice = self.rng.random()
        if choice < 0.3 or len(self.ids) == 1:
            pass  # healed
        elif choice < 0.6:
            leader = next((n for n in self.nodes.values() if n.raft.role == Role.LEADER), None)
            victim = leader.id if leader else self.rng.choice(self.ids)
            for other in self.ids:
                if other != victim:
                    self.cut |= {(victim, other), (other, victim)}
        elif choice < 0.85:
            side = set(self.rng.sample(self.ids, self.rng.randint(1, len(self.ids) - 1)))
            for a in side:
                for b in self.ids:
                    if b not in side:
                        self.cut |= {(a, b), (b, a)}
        else:
            a, b = self.rng.sample(self.ids, 2)
            self.cut.add((a, b))  # asymmetric: a cannot reach b, b still reaches a
        self._record("partition", sorted(self.cut))

    def _heal(self) -> None:
        self.cut.clear()
        for node in self.nodes.values():
            if not node.alive:
                self._restart(node)
        self.faults = Faults(max_delay=self.faults.max_delay)
        self._record("heal")

    # --- clients ---------------------------------------------------------------------------

    def _client_step(self, client: SimClient) -> None:
        if client.op is None:
            if client.ops_left == 0:
                return
            client.ops_left -= 1
            client.seq += 1
            client.op = self.workload.next_op(self.rng, client.id, client.seq)
            self._ops[(client.id, client.seq)] = client.op
            client.call_time = self.now
            client.target = self.rng.choice(self.ids)
        elif self.now < client.deadline:
            return  # a response for the current attempt may still come
        elif client.good and self.rng.random() < 0.5:
            client.target = client.good  # timed out: the node that answered last
        else:
            client.target = self.rng.choice(self.ids)  # timed out: try elsewhere
        client.deadline = self.now + 300
        req = ClientRequest(client.id, client.seq, client.op, client.target)
        self._transmit(client.id, client.target, req)
        self._at(client.deadline, "client", client.id)

    def _serve(self, req: ClientRequest) -> None:
        node = self.nodes[req.to]
        if not node.alive:
            return
        raft = node.raft
        try:
            if self.workload.is_read(req.op) and self._lease_read(node, req):
                return
            if self.workload.is_read(req.op):
                self._ctx += 1
                node.reads[self._ctx] = (req.client, req.seq, req.op)
                raft.read_index(self._ctx)
            else:
                command = self.workload.command(req.op)
                index = raft.propose(client_command(req.client, req.seq, command))
                node.proposals[index] = (req.client, req.seq)
        except PrismError:
            self._reply(node.id, ClientResponse(req.client, req.seq, False, leader=raft.leader))
            return
        self._process(node)

    def _lease_read(self, node: SimNode, req: ClientRequest) -> bool:
        """Answer a read from the leader's state under its lease, as the node
        driver does: read, then check the lease on the leader's clock."""
        raft = node.raft
        if node.lease is None or raft.role != Role.LEADER or node.applied < raft.commit:
            return False
        output = self.workload.read(node.store, req.op)
        if not node.lease.valid(raft.term, raft.lease_seq, self._clock(node)):
            return False
        self.lease_reads += 1
        self._record("lease read", node.id)
        self._reply(node.id, ClientResponse(req.client, req.seq, True, output))
        return True

    def _reply(self, node_id: str, resp: ClientResponse) -> None:
        self._transmit(node_id, resp.client, resp)

    def _client_response(self, resp: ClientResponse) -> None:
        client = self.clients[resp.client]
        if client.op is None or resp.seq != client.seq:
            return  # an answer to an operation already finished
        if not resp.ok:
            if resp.leader and resp.leader != client.target:
                client.target = resp.leader
                client.deadline = self.now + 300
                req = ClientRequest(client.id, client.seq, client.op, client.target)
                self._transmit(client.id, client.target, req)
                self._at(client.deadline, "client", client.id)
            return
        op = client.op
        client.good = client.target
        output = resp.output
        self.history[(client.id, client.seq)] = Operation(
            client.id, _model_input(op), output, client.call_time, self.now
        )
        client.op = None
        self._at(self.now + self.rng.randint(0, self.think_ms), "client", client.id)

    # --- the end -----------------------------------------------------------------------------

    def _done(self) -> bool:
        if any(c.op is not None or c.ops_left for c in self.clients.values()):
            return False
        members = [self.nodes[m] for m in self._members()]
        commits = {n.raft.commit for n in members}
        applied = {n.raft.applied for n in members}
        return len(commits) == 1 and applied == commits

    def _finish(self) -> Result:
        pending = [c for c in self.clients.values() if c.op is not None or c.ops_left]
        if pending:
            raise Violation(
                f"liveness: {len(pending)} clients still have operations after healing "
                f"(time {self.now} ms)"
            )
        members = [self.nodes[m] for m in self._members()]
        digests = {n.store.digest() for n in members}
        applied = {n.raft.applied for n in members}
        if len(digests) != 1 or len(applied) != 1:
            raise Violation(f"replicas did not converge: applied {applied}, {len(digests)} digests")
        history = list(self.history.values())
        for client in self.clients.values():
            if client.op is not None:
                history.append(
                    Operation(
                        client.id, _model_input(client.op), UNKNOWN, client.call_time, math.inf
                    )
                )
        linearizable = check(self.workload.model, history)
        if not linearizable:
            raise Violation("the client history is not linearizable")
        return Result(
            seed=self.seed,
            nodes=len(self.ids),
            trace_hash=self._trace.hexdigest(),
            operations=len(history),
            completed=len(self.history),
            end_time=self.now,
            linearizable=linearizable,
            digest=digests.pop(),
        )


def _model_input(op: tuple[str, ...]) -> tuple[str, ...]:
    return op


def run_seed(seed: int, n_nodes: int, **kwargs: Any) -> Result:
    return Simulation(seed, n_nodes, **kwargs).run()


Runner = Callable[[int, int], Result]
