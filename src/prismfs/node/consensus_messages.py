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


class Propose(ConsensusMessage, frozen=True):
    """Apply ``op`` once (deduplicated by client and seq); answered after it is applied."""

    client: str
    seq: U64
    op: bytes


class Proposed(ConsensusMessage, frozen=True):
    index: U64
    result: bytes


class Query(ConsensusMessage, frozen=True):
    """A linearizable read of the state machine (ReadIndex; not logged)."""

    op: bytes


class QueryResult(ConsensusMessage, frozen=True):
    index: U64
    result: bytes


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
    pass


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
