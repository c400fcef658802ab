"""A tiny deterministic in-memory network for Raft core tests.

Each node's "disk" is a list of persisted entries plus a hard state and a
snapshot, written exactly as the `Ready` contract says; applying appends the
command bytes to ``applied[node]``. Messages are delivered in FIFO order
unless a link is cut (``cut``) or a filter drops them.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prismfs.raft.core import RaftNode
from prismfs.raft.messages import ConfState, Entry, HardState, RaftMessage
from prismfs.raft.ready import RaftConfig, ReadState, Ready, Role, Snapshot
from prismfs.sim.simulator import read_back


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    reads: int = 0

    def read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """The driver's read-back of persisted entries (`RaftConfig.read_entries`)."""
        out = read_back(self.entries, lo, hi, max_bytes)
        self.reads += len(out)
        return out

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state


class Network:
    def __init__(
        self,
        voters: Iterable[str],
        learners: Iterable[str] = (),
        *,
        seed: int = 1,
        read_back: bool = False,
        **config: object,
    ) -> None:
        """``read_back``: each node drops applied entries from memory and reads
        them back from its disk model (`RaftConfig.read_entries`)."""
        self.conf = ConfState(tuple(voters), tuple(learners))
        self.read_back = read_back
        self.config = config
        self.seed = seed
        self.nodes: dict[str, RaftNode] = {}
        self.disks: dict[str, Disk] = {}
        self.applied: dict[str, list[bytes]] = {}
        self.applied_entries: dict[str, list[Entry]] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.cut_links: set[tuple[str, str]] = set()
        self.drop: Callable[[RaftMessage], bool] = lambda m: False
        self.queue: deque[RaftMessage] = deque()
        self.sent: list[RaftMessage] = []
        for node_id in self.conf.members():
            self.add(node_id)

    def _config(self, node_id: str) -> RaftConfig:
        disk = self.disks[node_id]
        reader = {"read_entries": disk.read_entries} if self.read_back else {}
        return RaftConfig(node_id=node_id, **reader, **self.config)  # type: ignore[arg-type]

    def add(self, node_id: str, conf: ConfState | None = None) -> RaftNode:
        self.disks[node_id] = Disk()
        cfg = self._config(node_id)
        rng = random.Random(f"{self.seed}-{node_id}")
        node = RaftNode(cfg, rng, conf=conf or self.conf)
        self.nodes[node_id] = node
        self.applied[node_id] = []
        self.applied_entries[node_id] = []
        self.read_states[node_id] = []
        return node

    def restart(self, node_id: str) -> RaftNode:
        """Crash and restart from the disk (un-persisted state is lost)."""
        disk = self.disks[node_id]
        cfg = self._config(node_id)
        node = RaftNode(
            cfg,
            random.Random(f"{self.seed}-{node_id}-restart"),
            conf=self.conf,
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=list(disk.entries),
        )
        self.nodes[node_id] = node
        # Re-applying from the snapshot point is the driver's job; model it.
        base = disk.snapshot.meta.index if disk.snapshot else 0
        self.applied_entries[node_id] = [
            e for e in self.applied_entries[node_id] if e.index <= base
        ]
        self.applied[node_id] = [
            e.data for e in self.applied_entries[node_id] if e.kind == "normal"
        ]
        return node

    # --- moving things along ---------------------------------------------------

    def process(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        if not node.has_ready():
            return False
        rd = node.ready()
        self.disks[node_id].persist(rd)
        for m in rd.messages:
            self.sent.append(m)
            self.queue.append(m)
        if rd.snapshot is not None:
            self.applied_entries[node_id] = [
                Entry(rd.snapshot.meta.term, rd.snapshot.meta.index, "noop", b"<snapshot>")
            ]
            self.applied[node_id] = [rd.snapshot.data]
        for entry in rd.committed:
            self.applied_entries[node_id].append(entry)
            if entry.kind == "normal":
                self.applied[node_id].append(entry.data)
        self.read_states[node_id].extend(rd.read_states)
        node.advance(rd)
        return True

    def deliver_one(self) -> bool:
        if not self.queue:
            return False
        m = self.queue.popleft()
        if (m.frm, m.to) in self.cut_links or self.drop(m) or m.to not in self.nodes:
            return True
        self.nodes[m.to].step(m)
        return True

    def stabilize(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            progressed = False
            for node_id in list(self.nodes):
                progressed |= self.process(node_id)
            progressed |= self.deliver_one()
            if not progressed:
                return
        raise AssertionError("network did not stabilize")

    def tick(self, node_ids: Iterable[str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            for node_id in list(node_ids or self.nodes):
                self.nodes[node_id].tick()
            self.stabilize()

    def elect(self, node_id: str) -> RaftNode:
        """Make ``node_id`` time out first and win, then settle.

        The others are treated as having heard nothing from a leader for an
        election timeout (their CheckQuorum lease is over), as they would be
        by the time a real node's election timer fires after a leader died.
        """
        node = self.nodes[node_id]
        for other in self.nodes.values():
            if other is not node and other.role != Role.LEADER:
                other._election_elapsed = max(other._election_elapsed, other.cfg.election_ticks)
                other._quiet_ticks = 0  # (a restart's quiet period is over by then too)
        for _ in range(10 * node.cfg.election_ticks):
            node.tick()
            self.stabilize()
            if node.role == Role.LEADER:
                self.spread_commit(node_id)
                return node
        raise AssertionError(f"{node_id} did not become leader: {node.status()}")

    def leader(self) -> RaftNode | None:
        leaders = [n for n in self.nodes.values() if n.role == Role.LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None

    # --- faults ------------------------------------------------------------------

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut_links.add((node_id, other))
                self.cut_links.add((other, node_id))

    def cut(self, a: str, b: str) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def heal(self) -> None:
        self.cut_links.clear()

    def propose(self, node_id: str, *commands: bytes) -> list[int]:
        indexes = [self.nodes[node_id].propose(c) for c in commands]
        self.stabilize()
        self.spread_commit(node_id)
        return indexes

    def spread_commit(self, leader_id: str) -> None:
        """Tick the leader to its next heartbeat: followers learn a new commit
        index from the next Append or heartbeat, not from a round of its own."""
        leader = self.nodes[leader_id]
        if leader.role == Role.LEADER:
            self.tick([leader_id], times=leader.cfg.heartbeat_ticks)
