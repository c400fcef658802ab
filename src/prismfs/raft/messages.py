"""Raft's typed messages, log entries and persistent state.

Every message names its sender (``frm``) and receiver (``to``) and carries the
sender's term, so the core can apply the term rules of Figure 2 of the Raft
paper before looking at the rest. They are `Message`s of the ``raft`` family,
so the same structs travel over the wire RPC and are fuzzed with the others.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import xxhash

from prismfs.wire.codec import U64, Message

EntryKind = Literal["normal", "config", "noop"]


class RaftMessage(Message, frozen=True):
    family: ClassVar[str] = "raft"
    abstract: ClassVar[bool] = True

    frm: str
    to: str
    term: U64


class Entry(Message, frozen=True):
    """One log entry. ``config`` entries hold an encoded `ConfChange`."""

    family: ClassVar[str] = "raft"

    term: U64
    index: U64
    kind: EntryKind = "normal"
    data: bytes = b""


class ConfState(Message, frozen=True):
    """A membership: who votes and who only follows the log."""

    family: ClassVar[str] = "raft"

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()
    """(node, RPC address) pairs, sorted: the cluster's address book travels
    with the membership, through the log and in snapshots."""

    def members(self) -> tuple[str, ...]:
        return self.voters + self.learners

    def address_of(self, node: str) -> str:
        return dict(self.addresses).get(node, "")


class ConfChange(Message, frozen=True):
    """One single-server membership change (Ongaro's thesis, section 4.1).

    ``add_learner`` adds a non-voting member, ``add_voter`` adds a voter or
    promotes a learner, ``demote`` makes a voter a learner, ``remove`` removes
    either.
    """

    family: ClassVar[str] = "raft"

    op: Literal["add_learner", "add_voter", "demote", "remove"]
    node: str
    address: str = ""


class HardState(Message, frozen=True):
    """What must be on disk before a message depending on it is sent."""

    family: ClassVar[str] = "raft"

    term: U64 = 0
    vote: str = ""
    commit: U64 = 0


class SnapshotMeta(Message, frozen=True):
    family: ClassVar[str] = "raft"

    index: U64
    term: U64
    conf: ConfState
    checksum: bytes = b""
    """xxh3-128 of the image (`image_checksum`): checked when the snapshot file
    is read back and when a follower has received every chunk of it."""


def image_checksum(image: bytes) -> bytes:
    """The checksum of a snapshot image (xxh3-128)."""
    return xxhash.xxh3_128_digest(image)


class Vote(RaftMessage, frozen=True):
    """RequestVote; ``pre`` for a PreVote round, ``transfer`` after TimeoutNow."""

    last_index: U64
    last_term: U64
    pre: bool = False
    transfer: bool = False


class VoteResponse(RaftMessage, frozen=True):
    reject: bool
    pre: bool = False


class Append(RaftMessage, frozen=True):
    """AppendEntries: entries after (prev_index, prev_term) and the leader's commit."""

    prev_index: U64
    prev_term: U64
    entries: tuple[Entry, ...]
    commit: U64


class AppendResponse(RaftMessage, frozen=True):
    """Success: ``index`` is the follower's last matching index.

    Rejection: ``index`` is the rejected ``prev_index``; ``hint_index`` and
    ``hint_term`` let the leader skip a whole conflicting term at once
    (hint_term 0: the follower's log ends before ``hint_index``).
    """

    index: U64
    reject: bool = False
    hint_index: U64 = 0
    hint_term: U64 = 0


class Heartbeat(RaftMessage, frozen=True):
    """Leader liveness; ``context`` ties acknowledgements to ReadIndex requests,
    ``seq`` (one per broadcast in a term) to the leader's lease."""

    commit: U64
    context: U64 = 0
    seq: U64 = 0


class HeartbeatResponse(RaftMessage, frozen=True):
    context: U64 = 0
    seq: U64 = 0


class InstallSnapshot(RaftMessage, frozen=True):
    """One chunk of a snapshot; the follower acknowledges each chunk."""

    meta: SnapshotMeta
    offset: U64
    data: bytes
    done: bool


class SnapshotResponse(RaftMessage, frozen=True):
    """``offset``: the next byte the follower wants of the snapshot at ``index``."""

    index: U64
    offset: U64


class TimeoutNow(RaftMessage, frozen=True):
    """Leadership transfer: start an election now, without PreVote."""


class ReadIndexRequest(RaftMessage, frozen=True):
    """A follower asks the leader for a safe read index on behalf of ``context``."""

    context: U64


class ReadIndexResponse(RaftMessage, frozen=True):
    context: U64
    index: U64
