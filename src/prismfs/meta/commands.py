"""Namespace commands (the Raft log entries of the metadata) and their results.

Every command carries the time stamp the *proposer* chose (``now_ns``): apply
reads no clock, so every replica computes the same state. Names are bytes
(POSIX names are byte strings); inode numbers come from a counter in the
state, never from the proposer, except that a client may reserve a range
(`ReserveInodes`) and name the number of a file it creates (a deferred
create: the FUSE client answers ``create`` at once and sends the `Mknod`
later, together with the file's first data commit, in one `Batch`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from prismfs.wire.codec import I64, U8, U32, U64, Message

ROOT_INO = 1
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
INLINE_MAX = 64 * 1024  # the largest inline chunk the namespace accepts


class MetaCommand(Message, frozen=True):
    family: ClassVar[str] = "meta"
    abstract: ClassVar[bool] = True

    now_ns: I64


class Mknod(MetaCommand, frozen=True):
    """Create a regular file, fifo, socket or device node (type from ``mode``'s S_IFMT)."""

    parent: U64
    name: bytes
    mode: U32
    uid: U32
    gid: U32
    rdev: U64 = 0
    session: str = ""
    """If set, the new file is opened by this client session in the same
    entry (create + open), so it cannot vanish between the two."""
    chunk_size: U32 = 0
    """Bytes per chunk of a regular file; 0 = the default (4 MiB)."""
    ino: U64 = 0
    """The inode number, from a range the proposer reserved (`ReserveInodes`);
    0 = the next one of the counter. With a number, a retry that finds the name
    already holding that inode succeeds again (the first attempt's result)."""


class ReserveInodes(MetaCommand, frozen=True):
    """Take ``count`` inode numbers off the counter for the proposer's own
    creates; answered with `Reserved`. Unused numbers are simply never used."""

    count: U32


MAX_BATCH = 1024


class Batch(MetaCommand, frozen=True):
    """Several commands (encoded, no `Batch` among them) applied in order in
    one log entry, each on its own: one that fails changes nothing, the others
    still apply. Answered with `BatchResults`, one `MetaOk`/`MetaFailed` (or
    `Reserved`) per command. The whole batch is one exactly-once request."""

    ops: tuple[bytes, ...]


class Mkdir(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    mode: U32
    uid: U32
    gid: U32
    ino: U64 = 0
    """A reserved inode number, or 0 (as `Mknod.ino`)."""


class Symlink(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    target: bytes
    uid: U32
    gid: U32
    ino: U64 = 0
    """A reserved inode number, or 0 (as `Mknod.ino`)."""


class Link(MetaCommand, frozen=True):
    ino: U64
    new_parent: U64
    new_name: bytes


class Unlink(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    ino: U64 = 0
    """If set, the name must still be this inode's, else NotFound: a deferred
    unlink never removes a file another client put in the name's place."""


class Rmdir(MetaCommand, frozen=True):
    parent: U64
    name: bytes


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Rename(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    new_parent: U64
    new_name: bytes
    flags: U32 = 0


class SetAttr(MetaCommand, frozen=True):
    """Change the fields that are not None; ctime moves in any case."""

    ino: U64
    mode: U32 | None = None
    uid: U32 | None = None
    gid: U32 | None = None
    size: U64 | None = None
    atime_ns: I64 | None = None
    mtime_ns: I64 | None = None


class UpdateAtime(MetaCommand, frozen=True):
    """A read: atime becomes ``atime_ns`` if that is later. ctime stays (a read
    changes nothing); the FUSE client sends these in batches (relatime)."""

    ino: U64
    atime_ns: I64


XATTR_CREATE = 1
XATTR_REPLACE = 2


class SetXattr(MetaCommand, frozen=True):
    ino: U64
    name: bytes
    value: bytes
    flags: U32 = 0


class RemoveXattr(MetaCommand, frozen=True):
    ino: U64
    name: bytes


class OpenSession(MetaCommand, frozen=True):
    """Start (``renew`` false) or renew a client session holding a lease of
    ``lease_ns``. The lease is timed by the leader on its own monotonic clock,
    from the last renewal it applied (never from the time stamps of two
    machines); a new leader gives every session a full lease from its start.
    A renewal of a session that ended (its lease ran out, or it was closed) is
    refused with `SessionExpired`, and so is a new start under an ended id: the
    client learns that its open files were released and starts a new session."""

    session: str
    lease_ns: I64
    renew: bool = False


class CloseSession(MetaCommand, frozen=True):
    """A clean unmount: release every file the session holds open."""

    session: str


class ExpireSessions(MetaCommand, frozen=True):
    """Proposed by the leader: these sessions' leases ran out on its monotonic
    clock, so they lose their open files (a crashed client's are reclaimed).
    ``now_ns`` is the leader's wall clock, used only to forget ended sessions
    after a day (`SESSION_TOMBSTONE_NS`). ``new_leader``: the first sweep of
    a leader's term; every orphan's grace starts again (opens the mounts
    queued while there was no leader still have to land)."""

    sessions: tuple[str, ...] = ()
    new_leader: bool = False


SESSION_TOMBSTONE_NS = 86_400 * 10**9
"""How long an ended session is remembered. Until then a command sent on one
of its lanes is refused (`SessionExpired`) rather than applied: a client that
retries a command after its session ended never has it applied twice."""


class Open(MetaCommand, frozen=True):
    session: str
    ino: U64


class Release(MetaCommand, frozen=True):
    session: str
    ino: U64


REPLY_RECORD_BYTES = 512 * 1024
"""Chunk records one query's reply carries at most (a reply's header is at
most 1 MiB; a record of a 4 MiB chunk with 32 KiB blocks is about 1.2 KiB)."""
LEGACY_BLOCK_SIZE = 128 * 1024
BLOCK_SIZES = frozenset(4096 << n for n in range(9))
"""Block sizes a chunk record may name: powers of two from 4 KiB to 1 MiB."""


class ChunkRecord(Message, frozen=True):
    """Where one chunk of a file lives: m shards, shard i on ``nodes[i]``.

    ``length`` is the number of valid bytes of the chunk (a truncate shortens
    it without rewriting shards; bytes past it read as zeros). The data plane
    fills the checksums; the namespace only keeps, moves and frees records.

    A small chunk (at most `INLINE_MAX` bytes) may instead be *inline*: its
    bytes in ``inline``, with k = m = 0 and no nodes. It is then replicated by
    the metadata's Raft log on every voter, and writing it costs no shard
    round trip (a small file is one namespace commit).
    """

    family: ClassVar[str] = "meta"

    id: bytes
    length: U32
    shard_size: U32
    k: U8
    m: U8
    nodes: tuple[str, ...]
    checksums: tuple[bytes, ...] = ()
    inline: bytes = b""
    block_sums: tuple[bytes, ...] = ()
    """Per data shard (k of them, or none): xxh3-64 digests of its blocks of
    ``block_size`` bytes, for reads of a part of a chunk (see
    `prismfs.data.codec`)."""
    want_k: U8 = 0
    want_m: U8 = 0
    """The layout the chunk should have, when it was written with a smaller one
    because too few nodes were up (0: as ``k`` and ``m``). The leader's mover
    re-encodes such a chunk to this layout once enough nodes are up."""
    block_size: U32 = 0
    """The size of the blocks ``block_sums`` digest; 0 for a record written
    before it was recorded, whose blocks are `LEGACY_BLOCK_SIZE` (128 KiB)."""

    @property
    def blocks_of(self) -> int:
        """The size of the blocks ``block_sums`` digest, in bytes."""
        return self.block_size or LEGACY_BLOCK_SIZE

    @property
    def is_inline(self) -> bool:
        return self.k == 0

    @property
    def reduced(self) -> bool:
        """Written with a smaller layout than its file's (see ``want_k``)."""
        return bool(self.want_m) and (self.want_k, self.want_m) != (self.k, self.m)

    @property
    def layout(self) -> tuple[int, int]:
        """(k, m) of the layout this chunk's file asks for."""
        return (self.want_k, self.want_m) if self.want_m else (self.k, self.m)


class CommitChunks(MetaCommand, frozen=True):
    """Replace chunk records of a file in one step; the records replaced go to
    the GC queue. The size becomes at least ``size`` (a commit never shortens a
    file: only a truncate, `SetAttr`, does), and mtime and ctime ``now_ns``.

    ``expect``, one per entry of ``chunks``: the (chunk id, length) of the
    record the writer built that chunk on, ``(b"", 0)`` for none. If any record
    is not that one now (another client committed the chunk, truncated it, or
    repair re-encoded it), nothing changes and the commit fails with
    `Conflict`: the writer merges the bytes it wrote into the new content and
    commits again, so two writers never silently undo each other. An empty
    ``expect`` commits unconditionally (the first chunks of a new file)."""

    ino: U64
    chunks: tuple[tuple[U64, ChunkRecord], ...]
    size: U64
    expect: tuple[tuple[bytes, U32], ...] = ()


class ReencodeChunk(MetaCommand, frozen=True):
    """The leader's mover re-encoded a chunk written with a reduced layout: the
    record of chunk ``chunk_id`` becomes ``record`` (same bytes, new chunk id,
    the full layout); the old record goes to the GC queue. Refused
    (`NotFound`) if no file holds that chunk any more (it was rewritten)."""

    chunk_id: bytes
    record: ChunkRecord


class GcDone(MetaCommand, frozen=True):
    """The shards of these GC queue entries are deleted: forget them."""

    seqs: tuple[U64, ...]


class RegisterNode(MetaCommand, frozen=True):
    """A storage node announces itself (at start): address, failure domain and
    raw capacity. Its state stays as it was ("up" for a new node), and so does
    its zone if ``zone`` is empty (one an administrator set is kept)."""

    node: str
    address: str
    zone: str = ""
    capacity: U64 = 0


class SetNodeState(MetaCommand, frozen=True):
    """Set a node's state. With ``expect``, only if the state is that now (else
    `Conflict`): the leader's liveness watch never undoes an administrator's
    drain or removal it did not see."""

    node: str
    state: Literal["up", "down", "draining", "removed"]
    expect: str = ""


class SetNodeZone(MetaCommand, frozen=True):
    """An administrator places a node in a failure domain (``node add --zone``)."""

    node: str
    zone: str


VOTING = ("auto", "pin", "never")
"""How the leader's voter keeper treats a node (`SetNodeVoting`): ``auto``
(it may get a vote), ``pin`` (it gets one before any ``auto`` node while it
is up), ``never`` (it never gets one; a vote it holds goes to another)."""


class SetNodeVoting(MetaCommand, frozen=True):
    """An administrator pins a node to the metadata voters, excludes it, or
    gives the choice back to the leader (``prismfs node voting``)."""

    node: str
    voting: str


class MoveShards(MetaCommand, frozen=True):
    """Repair: shard ``index`` of chunk ``chunk_id`` is now on ``to_node`` (its
    bytes were rebuilt there) instead of ``from_node``, for each move. Refused
    (`NotFound`) if no file holds that chunk any more, or if the shard is no
    longer where the move says: the rebuilt shard is then an orphan."""

    chunk_id: bytes
    moves: tuple[tuple[U8, str, str], ...]


class CreateToken(MetaCommand, frozen=True):
    """An HTTP API bearer token: its public id, the SHA-256 of its secret part
    (the secret itself is never stored), its scope and a name for people. Its
    requests act as ``uid``/``gid`` (checked against modes and owners like a
    mount's) and reach only paths under ``prefix`` ("" = everywhere)."""

    token_id: str
    digest: bytes
    scope: Literal["read", "write", "admin"]
    name: str = ""
    uid: U32 = 0
    gid: U32 = 0
    prefix: str = ""


class RevokeToken(MetaCommand, frozen=True):
    token_id: str


class CreateCredential(MetaCommand, frozen=True):
    """Record a client credential made by ``prismfs credentials create`` (its key
    is derived from the cluster secret and never stored: the record is for
    listing and revoking it)."""

    credential: str
    role: str
    name: str = ""


class RevokeCredential(MetaCommand, frozen=True):
    """From now on no node accepts this client credential (recorded or not:
    ``client.secret`` from ``cluster init`` is made before any node runs)."""

    credential: str


class Attr(Message, frozen=True):
    """What getattr returns."""

    family: ClassVar[str] = "meta"

    ino: U64
    mode: U32
    nlink: U32
    uid: U32
    gid: U32
    size: U64
    atime_ns: I64
    mtime_ns: I64
    ctime_ns: I64
    rdev: U64 = 0


class MetaOk(Message, frozen=True):
    """A command's result: the attributes of the inode it made or changed, if
    any, and those of the directories whose entries it changed, after the
    change (a mount answers the kernel's next getattr of them itself)."""

    family: ClassVar[str] = "meta"

    attr: Attr | None = None
    parents: tuple[Attr, ...] = ()


class Reserved(Message, frozen=True):
    """`ReserveInodes`' result: the numbers ``first .. first + count - 1`` are the proposer's."""

    family: ClassVar[str] = "meta"

    first: U64
    count: U32


class BatchResults(Message, frozen=True):
    family: ClassVar[str] = "meta"

    results: tuple[bytes, ...]


class MetaFailed(Message, frozen=True):
    """A command refused by POSIX rules; nothing changed. ``code`` is an errors code."""

    family: ClassVar[str] = "meta"

    code: str
    message: str


# --- reads (served by `Namespace.query` after a ReadIndex round, never logged) ---


class MetaQuery(Message, frozen=True):
    family: ClassVar[str] = "meta"
    abstract: ClassVar[bool] = True


class Lookup(MetaQuery, frozen=True):
    parent: U64
    name: bytes


class GetAttr(MetaQuery, frozen=True):
    ino: U64


class ReadDir(MetaQuery, frozen=True):
    """Entries of a directory after ``cookie`` (0 = from the start), in cookie order."""

    ino: U64
    cookie: U64 = 0
    limit: U32 = 1000


class ReadLink(MetaQuery, frozen=True):
    ino: U64


class GetXattr(MetaQuery, frozen=True):
    ino: U64
    name: bytes


class ListXattr(MetaQuery, frozen=True):
    ino: U64


class GetChunks(MetaQuery, frozen=True):
    """Chunk records of a file with index in [first, first + count)."""

    ino: U64
    first: U64 = 0
    count: U32 = 1024


class StatFs(MetaQuery, frozen=True):
    pass


class GcPending(MetaQuery, frozen=True):
    limit: U32 = 1000


class GetDigest(MetaQuery, frozen=True):
    """A hash of the whole namespace at this replica (tests compare replicas)."""


class DirEntry(Message, frozen=True):
    family: ClassVar[str] = "meta"

    name: bytes
    cookie: U64
    attr: Attr


class DirPage(Message, frozen=True):
    family: ClassVar[str] = "meta"

    entries: tuple[DirEntry, ...]
    more: bool
    parent: U64 = 0
    """The directory's parent (the root's is the root), on the first page."""


class MetaValue(Message, frozen=True):
    """A read's result that is bytes (readlink, getxattr, digest) or names (listxattr)."""

    family: ClassVar[str] = "meta"

    value: bytes = b""
    names: tuple[bytes, ...] = ()


class ChunkMap(Message, frozen=True):
    family: ClassVar[str] = "meta"

    chunk_size: U32
    size: U64
    chunks: tuple[tuple[U64, ChunkRecord], ...]
    more: bool = False
    """The reply was cut at `REPLY_RECORD_BYTES` of records: ask again from
    the index after the last one (`MetaClient.chunk_map_all`)."""


class FsStats(Message, frozen=True):
    family: ClassVar[str] = "meta"

    files: U64
    bytes: U64
    node_usage: tuple[tuple[str, U64], ...]
    gc_pending: U64


class GcEntries(Message, frozen=True):
    family: ClassVar[str] = "meta"

    entries: tuple[tuple[U64, ChunkRecord], ...]


class ListTokens(MetaQuery, frozen=True):
    pass


class GetToken(MetaQuery, frozen=True):
    """One token's digest and scope (answered as `TokenInfo`; `NotFound` if none)."""

    token_id: str


class TokenInfo(Message, frozen=True):
    family: ClassVar[str] = "meta"

    token_id: str
    scope: str
    name: str
    created_ns: I64
    digest: bytes = b""  # only in `GetToken`'s answer
    uid: U32 = 0
    gid: U32 = 0
    prefix: str = ""


class TokenList(Message, frozen=True):
    family: ClassVar[str] = "meta"

    tokens: tuple[TokenInfo, ...]


class ListNodes(MetaQuery, frozen=True):
    pass


class NodeInfo(Message, frozen=True):
    family: ClassVar[str] = "meta"

    node: str
    address: str
    zone: str
    capacity: U64
    state: str
    registered_ns: I64
    used: U64 = 0
    state_ns: I64 = 0
    """When the state last changed, by the wall clock of the leader that
    proposed the change (0: before it was recorded): a new leader goes on
    timing a node's absence from there instead of from its own start."""
    voting: str = "auto"
    """One of `VOTING`: whether the voter keeper may, must or must not give
    this node a vote."""


class NodeList(Message, frozen=True):
    family: ClassVar[str] = "meta"

    nodes: tuple[NodeInfo, ...]
    min_redundancy: U8 = 1
    """How many more node losses a chunk must survive when its write is
    acknowledged (the cluster setting `MIN_REDUNDANCY_XATTR`)."""


MIN_REDUNDANCY_XATTR = b"prismfs.min_redundancy"
"""On the root directory: the cluster's ``[data] min_redundancy``, set by the leader."""


class GetLayout(MetaQuery, frozen=True):
    """The layout text that applies to new files under ``ino`` ("" = the cluster default)."""

    ino: U64


class ShardRefs(MetaQuery, frozen=True):
    """Which of these shard ids (``<chunk id hex>.<index>``) a chunk record places
    on ``node`` (or the GC queue still holds): answered as `MetaValue.names`."""

    node: str
    shard_ids: tuple[str, ...]


class ChunkRefs(MetaQuery, frozen=True):
    """Which of these chunk ids are still referenced (answered as `MetaValue.names`)."""

    ids: tuple[bytes, ...]


class ListCredentials(MetaQuery, frozen=True):
    pass


class CredentialInfo(Message, frozen=True):
    family: ClassVar[str] = "meta"

    credential: str
    role: str  # "" for a credential revoked without a record
    name: str
    created_ns: I64
    revoked_ns: I64 = 0


class CredentialList(Message, frozen=True):
    family: ClassVar[str] = "meta"

    credentials: tuple[CredentialInfo, ...]


CLIENT_COMMANDS: frozenset[type[MetaCommand]] = frozenset(
    (
        Mknod,
        ReserveInodes,
        Batch,
        Mkdir,
        Symlink,
        Link,
        Unlink,
        Rmdir,
        Rename,
        SetAttr,
        UpdateAtime,
        SetXattr,
        RemoveXattr,
        OpenSession,
        CloseSession,
        Open,
        Release,
        CommitChunks,
    )
)
"""What a client credential may propose; every other command (session
expiry, node registry, shard moves, GC, tokens, credentials) is the
cluster's own and needs a node's credential."""
READ_ONLY_COMMANDS: frozenset[type[MetaCommand]] = frozenset(
    (OpenSession, CloseSession, Open, Release)
)
"""What a read-only client credential may propose: its session and opens."""
NODE_QUERIES: frozenset[type[MetaQuery]] = frozenset((ListTokens, GetToken, ListCredentials))
"""Queries only a node's credential may send (the HTTP tokens' digests)."""
