"""What the Raft core (`prismfs.raft.core`) and its driver share: the core's
configuration, its roles and their legal changes, and the `Ready` it hands
the driver to carry out (see the core's docstring for the order)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

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
    read_image: Callable[[Path, int, int], bytes] | None = None
    """How the leader reads ``n`` bytes at ``offset`` of a snapshot image kept
    in a file (`Snapshot.file`); the driver gives it (the core does no I/O)."""
    read_entries: Callable[[int, int, int], list[Entry]] | None = None
    """How the core reads back entries its driver persisted, ``(lo, hi,
    max_bytes)`` as `prismfs.raft.log.Loader`: with it, the data of entries
    both applied and persisted is dropped from memory, and read back only for
    a follower that lags (the log between snapshots is then no longer held).
    None keeps every entry in memory until a snapshot covers it."""
    image_sink: Callable[[SnapshotMeta], ImageSink] | None = None
    """Where a follower gathers the chunks of a snapshot it receives: None
    keeps them in memory (`MemorySink`); the node's driver gives a sink that
    writes them to a file (`prismfs.raft.durable_log.FileSink`)."""
    lease: bool = False
    """Count heartbeat acknowledgements for the driver's leader lease (`lease_seq`),
    and refuse votes for an election timeout after a (re)start, as a follower
    does while it hears from a leader: a node that acknowledged a lease before
    it restarted must not help elect another leader before that lease ends.
    Needs ``check_quorum`` (which makes followers refuse votes under a leader)."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot point and its image: in memory (``data``) or, for images too
    large to hold, in a file (``file``, of ``file_size`` bytes) that the
    leader reads a chunk at a time through `RaftConfig.read_image`."""

    meta: SnapshotMeta
    data: bytes = b""
    file: Path | None = None
    file_size: int = 0

    @property
    def size(self) -> int:
        return self.file_size if self.file is not None else len(self.data)


class ImageSink(Protocol):
    """The chunks of one incoming snapshot image, in order."""

    size: int

    def write(self, data: bytes) -> None: ...

    def finish(self) -> Snapshot | None:
        """The whole image as a `Snapshot`, or None (and nothing kept) when
        it does not match the meta's checksum."""
        ...

    def discard(self) -> None: ...


class MemorySink:
    def __init__(self, meta: SnapshotMeta) -> None:
        self.meta = meta
        self.size = 0
        self._buf = bytearray()
        self._hash = xxhash.xxh3_128()

    def write(self, data: bytes) -> None:
        self._buf += data
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> Snapshot | None:
        if self.meta.checksum and self._hash.digest() != self.meta.checksum:
            return None
        return Snapshot(self.meta, bytes(self._buf))

    def discard(self) -> None:
        self._buf = bytearray()


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
