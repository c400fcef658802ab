"""What the Raft core (`prismfs.raft.core`) and its driver share: the core's
configuration, its roles and their legal changes, and the `Ready` it hands
the driver to carry out (see the core's docstring for the order)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from prismfs.raft.messages import Entry, HardState, RaftMessage, SnapshotMeta


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.PRE_CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}
"""Legal role changes. A candidate whose election times out starts over (with
a PreVote round if enabled); a single voter goes pre-candidate -> candidate ->
leader within one call; a TimeoutNow skips the pre-candidate step."""


@dataclass(frozen=True)
class RaftConfig:
    node_id: str
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_entries: int = 512
    max_append_bytes: int = 1 << 20
    max_inflight: int = 64
    snapshot_chunk_bytes: int = 1 << 20
    lease: bool = False
    """Count heartbeat acknowledgements for the driver's leader lease (`lease_seq`),
    and refuse votes for an election timeout after a (re)start, as a follower
    does while it hears from a leader: a node that acknowledged a lease before
    it restarted must not help elect another leader before that lease ends.
    Needs ``check_quorum`` (which makes followers refuse votes under a leader)."""


@dataclass(frozen=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True)
class ReadState:
    """Reads for ``context`` are linearizable once ``index`` has been applied."""

    context: int
    index: int


@dataclass
class Ready:
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[RaftMessage] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    role: Role = Role.FOLLOWER
    leader: str = ""
