"""RPC messages of a node's consensus service (node <-> node and client -> node)."""

from __future__ import annotations

from typing import ClassVar, Literal

from prismfs.raft.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotResponse,
    TimeoutNow,
    Vote,
    VoteResponse,
)
from prismfs.wire.codec import U64, Message

AnyRaftMessage = (
    Vote
    | VoteResponse
    | Append
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)


class ConsensusMessage(Message, frozen=True):
    family: ClassVar[str] = "consensus"
    abstract: ClassVar[bool] = True


class RaftBatch(ConsensusMessage, frozen=True):
    """Raft messages from one node to another, sent together.

    ``sender_address`` lets a node that has no log yet (just joining) answer
    a leader it has no address for in its membership.
    """

    messages: tuple[AnyRaftMessage, ...]
    sender_address: str = ""


class RaftBatchAck(ConsensusMessage, frozen=True):
    pass


class LeaseGrant(ConsensusMessage, frozen=True):
    """A shared read lease on directory ``key`` (`prismfs.node.leases`): grant
    id ``(term, seq)``, good for ``seconds`` from when the request was sent.
    In a change's answer, ``continues`` names the grant of the writer it
    continues ((0, 0): a new directory's first grant). ``exclusive``: a
    delegation (the mount may change the directory and flush later)."""

    key: U64
    term: U64
    seq: U64
    seconds: float
    continues: tuple[U64, U64] = (0, 0)
    exclusive: bool = False


class Propose(ConsensusMessage, frozen=True):
    """Apply ``op`` once (deduplicated by client and seq); answered after it is
    applied. ``holder``: the mount (session) whose leases the change keeps.
    ``delegated``: ``(key, term, seq)`` of the delegations the change was
    made under (a flush of write-back): applied only while each still holds,
    else refused with `DelegationLost`."""

    client: str
    seq: U64
    op: bytes
    holder: str = ""
    delegated: tuple[tuple[U64, U64, U64], ...] = ()


class Proposed(ConsensusMessage, frozen=True):
    index: U64
    result: bytes
    leases: tuple[LeaseGrant, ...] = ()


class Query(ConsensusMessage, frozen=True):
    """A linearizable read of the state machine (ReadIndex; not logged).
    ``holder``: the mount that would take a lease with the answer. A read
    of a directory another mount holds delegated waits for its recall."""

    op: bytes
    holder: str = ""
    exclusive: bool = False  # the holder would take a delegation
    lease: bool = True  # False: ``holder`` only says who reads (no grant wanted)


class QueryResult(ConsensusMessage, frozen=True):
    index: U64
    result: bytes
    lease: LeaseGrant | None = None


class LeasePoll(ConsensusMessage, frozen=True):
    """A mount's open channel for recalls (long poll at the leader): it
    acknowledges the recalls it handled, ``(key, term, seq)``, and waits up
    to ``wait_s`` for more."""

    holder: str
    acks: tuple[tuple[U64, U64, U64], ...] = ()
    wait_s: float = 10.0
    writeback: bool = False  # the mount takes delegations (its new directories come delegated)


class LeaseRecalls(ConsensusMessage, frozen=True):
    """Recalls for the polling mount: drop the copies of these directories
    (grants up to ``(term, seq)``), then acknowledge."""

    recalls: tuple[tuple[U64, U64, U64], ...] = ()


class RenewSession(ConsensusMessage, frozen=True):
    """A client's session renewal, to the leader only and outside the log:
    the leader notes it on its own clock (`prismfs.node.sessions`)."""

    session: str


class SessionRenewed(ConsensusMessage, frozen=True):
    lease_ns: U64


class ChangeMembership(ConsensusMessage, frozen=True):
    op: Literal["add_learner", "add_voter", "demote", "remove"]
    node: str
    address: str = ""


class MembershipChanged(ConsensusMessage, frozen=True):
    index: U64
    voters: tuple[str, ...]
    learners: tuple[str, ...]


class TransferLeadership(ConsensusMessage, frozen=True):
    target: str


class RaftStatus(ConsensusMessage, frozen=True):
    revoked: bool = False
    """Also name the revoked client credentials (a storage-only node's poll)."""


class RaftStatusReply(ConsensusMessage, frozen=True):
    node_id: str
    role: str
    term: U64
    leader: str
    leader_address: str
    commit: U64
    applied: U64
    last_index: U64
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    addresses: tuple[tuple[str, str], ...]
    revoked: tuple[str, ...] = ()


class ClusterSeeds(ConsensusMessage, frozen=True):
    """From the leader to a node it adds as storage-only: where the metadata
    group's members are (`prismfs.node.metalink`)."""

    addresses: tuple[str, ...]


class ClusterSeedsAck(ConsensusMessage, frozen=True):
    pass
