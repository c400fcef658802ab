"""The namespace state machine: POSIX rules over SQLite, deterministic apply.

Theory of operation. Each replica keeps one SQLite database. `apply` runs one
command in one transaction that also records the Raft index applied, so a
replica restarted from its database knows exactly where to resume. A command
that breaks a POSIX rule raises a typed error *before* anything is written;
the transaction is rolled back, the applied index still advances, and the
result carries the error's code. Apply reads no clock and draws no random
numbers: times come in the command (stamped by the proposer) and inode
numbers from a counter in the database (or from a range a client reserved
from it, named in its `Mknod`, `Mkdir` or `Symlink`), so every replica ends
in the same state (compare `digest`). A `Batch` applies its commands in
order, each in its own savepoint, in one entry.

Exactly-once: a command that arrives wrapped in a `ClientCommand` is
deduplicated by (client, sequence) against the ``clients`` table *in the same
transaction* as its effect, so a retry after a timeout or a restart never
applies twice and gets the first result back. A replayed entry at or below
the stored applied index is skipped (the database already holds it).

Open-but-unlinked files: client sessions hold leases; an inode whose last
name goes while a session holds it open stays (nlink 0) until released or
the session's lease runs out (`ExpireSessions`, proposed by the leader with
its clock). Freed inodes send their chunk records to the GC queue.

Directory entries carry a cookie from a counter: readdir continues after a
cookie, so a listing interrupted by creates, unlinks and renames returns
every entry that was there throughout exactly once (a renamed entry gets a
new cookie, like a new entry).

Snapshots are consistent copies of the database: a file written by
``VACUUM INTO`` from a read-only connection in a worker thread
(`snapshot_to`), or an in-memory image (`serialize`) for a database without
a file; `restore_file` and `restore` copy one back with SQLite's backup API.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import msgspec
import xxhash

from prismfs.data.layout import LAYOUT_XATTR, Layout
from prismfs.errors import (
    AlreadyExists,
    Conflict,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    LogCorrupt,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    OutOfRange,
    PrismError,
    ProtocolError,
    ReplicaHalted,
    SessionExpired,
    TooManyLinks,
    ValueTooLarge,
)
from prismfs.meta.cluster_tables import CHUNK_PAGE, SHARDS_TABLE, ClusterTables, decode_record
from prismfs.meta.commands import (
    BLOCK_SIZES,
    DEFAULT_CHUNK_SIZE,
    INLINE_MAX,
    MAX_BATCH,
    MIN_REDUNDANCY_XATTR,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    REPLY_RECORD_BYTES,
    ROOT_INO,
    SESSION_TOMBSTONE_NS,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Batch,
    BatchResults,
    ChunkMap,
    ChunkRecord,
    ChunkRefs,
    CloseSession,
    CommitChunks,
    CreateToken,
    DirEntry,
    DirPage,
    ExpireSessions,
    FsStats,
    GcDone,
    GcEntries,
    GcPending,
    GetAttr,
    GetChunks,
    GetDigest,
    GetLayout,
    GetToken,
    GetXattr,
    Link,
    ListNodes,
    ListTokens,
    ListXattr,
    Lookup,
    MetaCommand,
    MetaFailed,
    MetaOk,
    MetaQuery,
    MetaValue,
    Mkdir,
    Mknod,
    MoveShards,
    NodeList,
    Open,
    OpenSession,
    ReadDir,
    ReadLink,
    ReencodeChunk,
    RegisterNode,
    Release,
    RemoveXattr,
    Rename,
    Reserved,
    ReserveInodes,
    RevokeToken,
    Rmdir,
    SetAttr,
    SetNodeState,
    SetNodeZone,
    SetXattr,
    ShardRefs,
    StatFs,
    Symlink,
    TokenList,
    Unlink,
    UpdateAtime,
)
from prismfs.raft.state_machine import ClientCommand
from prismfs.wire.codec import Message, decode_message, encode_message

NAME_MAX = 255
MAX_FILE_SIZE = 2**62
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
SCHEMA_VERSION = 7
ORPHAN_GRACE_NS = 2 * 10**9
"""An inode with no name left and no open is freed at a sweep (`ExpireSessions`,
every few seconds) once a whole sweep interval and this much of the leader's
clock passed since a sweep first saw it: a mount registers the opens of
existing files lazily, in its next batch (every 0.2 s), and an open that was
read but not yet registered must find its inode still there. A new leader's
first sweep counts as the first sighting of every orphan (the batches of
opens wait while there is no leader); a mount's own unlink or rename carries
its queued opens in the same entry."""
INDEXES = """
CREATE INDEX IF NOT EXISTS chunks_reduced ON chunks (chunk_id) WHERE reduced = 1;
CREATE INDEX IF NOT EXISTS ended_sessions_by_time ON ended_sessions (ended_ns);
"""
DEFAULT_LEASE_NS = 60 * 10**9
MIN_LEASE_NS = 10**9
MAX_LEASE_NS = 86_400 * 10**9

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    chunk_size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    cookie INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries (ino);
CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_cookie ON dentries (parent, cookie);
CREATE TABLE IF NOT EXISTS chunks (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    record BLOB NOT NULL,
    chunk_id BLOB NOT NULL,
    reduced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ino, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (chunk_id);
CREATE TABLE IF NOT EXISTS gc (
    seq INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    chunk_id BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS gc_by_id ON gc (chunk_id);
CREATE TABLE IF NOT EXISTS node_usage (
    node TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    lease_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ended_sessions (
    session TEXT PRIMARY KEY,
    ended_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opens (
    session TEXT NOT NULL,
    ino INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (session, ino)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS opens_by_ino ON opens (ino);
CREATE TABLE IF NOT EXISTS orphans (
    ino INTEGER PRIMARY KEY,
    seen_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    zone TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    state TEXT NOT NULL,
    registered_ns INTEGER NOT NULL,
    state_ns INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    result BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SessionObserver(Protocol):
    """Told, as entries apply, of session renewals and ends (the leader's lease clock)."""

    def renewed(self, session: str, lease_ns: int) -> None: ...

    def ended(self, session: str) -> None: ...


def session_of_lane(client: str) -> str:
    """The session a client id belongs to: lanes are ``<session>/<n>``."""
    return client.rpartition("/")[0]


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidArgument(f"invalid name {name!r}")


def inherit_from_parent(parent: Attr, mode: int, gid: int) -> tuple[int, int]:
    """(mode, gid) of a new entry in directory ``parent``: a set-group-ID
    directory gives its group, and to a new directory also its S_ISGID bit."""
    if not parent.mode & stat.S_ISGID:
        return mode, gid
    return (mode | stat.S_ISGID if stat.S_ISDIR(mode) else mode), parent.gid


def _read_only_uri(path: str | os.PathLike[str]) -> str:
    return f"{Path(path).resolve().as_uri()}?mode=ro"


def _check_sound(db: sqlite3.Connection) -> None:
    try:
        verdict = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LogCorrupt(f"the snapshot image is not a database: {exc}") from None
    if verdict != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in verdict[:3])
        raise LogCorrupt(f"the snapshot image is damaged: {problems}")


class Namespace(ClusterTables):
    """A `StateMachine` (apply/snapshot/restore) plus the read operations."""

    exactly_once = True  # deduplicates ClientCommands itself, durably (the driver must not wrap it)

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        path = os.fspath(path)
        self.duplicates = 0
        self.halted: int | None = None  # the entry this replica could not apply
        self._touched: list[int] = []  # directories the command being applied changed
        # op bytes -> the message `check_command`/`check_query` decoded from
        # them: the leader then applies (or answers) without decoding again
        self._decoded: dict[bytes, Any] = {}
        self._in_batch = False
        self.path = path
        self._checkpointer: sqlite3.Connection | None = None
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            # The Raft log is the durable record; after a crash the database
            # may lose its last transactions but never its consistency, and
            # replay from the stored applied index redoes them.
            self.db.execute("PRAGMA synchronous=NORMAL")
            # No checkpoint inside a commit (it would stall the event loop
            # for milliseconds every few hundred entries): `checkpoint` runs
            # in a worker thread instead.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self.db.execute("PRAGMA busy_timeout=2000")
        self.db.executescript(SCHEMA + SHARDS_TABLE)
        if self.db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO inodes (ino, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink)"
                " VALUES (?, ?, 0, 0, 0, 0, 0, 2)",
                (ROOT_INO, stat.S_IFDIR | 0o755),
            )
            self.db.execute(
                "INSERT INTO state VALUES ('next_ino', ?), ('applied', 0), ('next_cookie', 1),"
                " ('next_gc', 1), ('files', 1), ('bytes', 0), ('clock_ns', 0), ('gc_pending', 0),"
                " ('coded_chunks', 0), ('schema', ?)",
                (ROOT_INO + 1, SCHEMA_VERSION),
            )
            self.db.execute("COMMIT")
        self._migrate()
        self.db.executescript(INDEXES)
        # Told of session starts, renewals and ends as they apply (the leader
        # times leases on its own clock, see `OpenSession`).
        self.session_observer: SessionObserver | None = None
        self._handlers: dict[type[MetaCommand], Callable[[Any], Attr | Message | None]] = {
            Mknod: self._mknod,
            ReserveInodes: self._reserve_inodes,
            Batch: self._batch,
            Mkdir: self._mkdir,
            Symlink: self._symlink,
            Link: self._link,
            Unlink: self._unlink,
            Rmdir: self._rmdir,
            Rename: self._rename,
            SetAttr: self._setattr,
            UpdateAtime: self._update_atime,
            SetXattr: self._setxattr,
            RemoveXattr: self._removexattr,
            OpenSession: self._open_session,
            CloseSession: self._close_session,
            ExpireSessions: self._expire_sessions,
            Open: self._open,
            Release: self._release,
            CommitChunks: self._commit_chunks,
            GcDone: self._gc_done,
            RegisterNode: self._register_node,
            SetNodeState: self._set_node_state,
            SetNodeZone: self._set_node_zone,
            MoveShards: self._move_shards,
            ReencodeChunk: self._reencode_chunk,
            CreateToken: self._create_token,
            RevokeToken: self._revoke_token,
        }
        self._queries: dict[type[MetaQuery], Callable[[Any], Message]] = {
            Lookup: lambda q: MetaOk(self.lookup(q.parent, q.name)),
            GetAttr: lambda q: MetaOk(self.getattr(q.ino)),
            ReadDir: lambda q: self.readdir_page(q.ino, q.cookie, q.limit),
            ReadLink: lambda q: MetaValue(self.readlink(q.ino)),
            GetXattr: lambda q: MetaValue(self.getxattr(q.ino, q.name)),
            ListXattr: lambda q: MetaValue(names=tuple(self.listxattr(q.ino))),
            GetChunks: lambda q: self.chunk_map(q.ino, q.first, q.count),
            StatFs: lambda q: self.statfs(),
            GcPending: lambda q: GcEntries(tuple(self.gc_pending(q.limit))),
            GetDigest: lambda q: MetaValue(self.digest().encode()),
            ListNodes: lambda q: NodeList(tuple(self.nodes()), self.min_redundancy()),
            ListTokens: lambda q: TokenList(tuple(self.tokens())),
            GetToken: lambda q: self.token(q.token_id),
            GetLayout: lambda q: MetaValue(self.effective_layout(q.ino)),
            ChunkRefs: lambda q: MetaValue(names=tuple(self.referenced(q.ids))),
            ShardRefs: lambda q: MetaValue(
                names=tuple(s.encode() for s in self.referenced_shards(q.node, q.shard_ids))
            ),
        }

    def _migrate(self) -> None:
        """Bring a database of an earlier schema (a data directory or snapshot of
        an older version) to this one; every replica does the same steps."""
        version = self._state("schema")
        if version >= SCHEMA_VERSION:
            return
        self.db.execute("BEGIN")
        if version < 2 and "expires_ns" in self._columns("sessions"):
            # Leases were absolute wall-clock expiry times; they become lease
            # lengths timed by the leader (every session gets the default).
            self.db.execute("ALTER TABLE sessions RENAME COLUMN expires_ns TO lease_ns")
            self.db.execute("UPDATE sessions SET lease_ns = ?", (DEFAULT_LEASE_NS,))
        self.db.execute("INSERT OR IGNORE INTO state VALUES ('clock_ns', 0)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS orphans (ino INTEGER PRIMARY KEY, seen_ns INTEGER NOT NULL)"
        )
        # The length of the GC queue is a counter kept in apply (statfs read it
        # with a count over the whole queue).
        self.db.execute("INSERT OR IGNORE INTO state SELECT 'gc_pending', count(*) FROM gc")
        if "reduced" not in self._columns("chunks"):
            # Chunks written with a reduced layout are marked (and indexed).
            self.db.execute("ALTER TABLE chunks ADD COLUMN reduced INTEGER NOT NULL DEFAULT 0")
        if version < 6:
            self._index_all_shards()
        if "state_ns" not in self._columns("nodes"):
            # When a node's state last changed (0: unknown, before schema 7).
            self.db.execute("ALTER TABLE nodes ADD COLUMN state_ns INTEGER NOT NULL DEFAULT 0")
        self.db.execute("UPDATE state SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
        self.db.execute("COMMIT")

    def _columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self.db.execute(f"PRAGMA table_info({table})")}

    # --- StateMachine ---------------------------------------------------------

    def apply(self, index: int, command: bytes) -> bytes:
        if self.halted is not None:
            raise ReplicaHalted(f"this replica stopped applying at entry {self.halted}")
        if index <= self.applied:
            return b""  # replayed after a restart: the database already holds it
        try:
            return self._apply(index, command)
        except BaseException:
            # Not a POSIX refusal: the database could not take the entry here
            # (full disk, locked by another process, I/O error, no memory).
            # Nothing of it stays, and nothing after it may be applied: the
            # applied index would move past an entry this replica lacks.
            self.halted = index
            with contextlib.suppress(sqlite3.Error):
                self._abort()
            raise

    def _apply(self, index: int, command: bytes) -> bytes:
        try:
            cmd = decode_message(command)
        except ProtocolError as exc:
            return self._refuse(index, None, exc)
        wrapper: ClientCommand | None = None
        if isinstance(cmd, ClientCommand):
            wrapper = cmd
            ended = self._ended(session_of_lane(cmd.client))
            if ended is not None:
                # A lane of an ended session: its exactly-once rows are gone, so
                # this may be a retry of a command that already applied. Refused,
                # never applied twice; the client learns its session is gone.
                return self._refuse(index, None, ended)
            row = self.db.execute(
                "SELECT seq, result FROM clients WHERE client = ?", (cmd.client,)
            ).fetchone()
            if row is not None and cmd.seq <= row[0]:
                self.duplicates += 1
                self._commit_applied_only(index)
                # Only the newest result is kept: an older sequence means the
                # client already has its answer and moved on.
                return bytes(row[1]) if cmd.seq == row[0] else b""
            try:
                cmd = self._decode(cmd.op)
            except ProtocolError as exc:
                return self._refuse(index, wrapper, exc)
        handler = self._handlers.get(type(cmd))  # type: ignore[arg-type]
        if handler is None:
            refusal = InvalidArgument(f"not a namespace command: {type(cmd).__name__}")
            return self._refuse(index, wrapper, refusal)
        self._begin()
        try:
            self._touched = []
            result = encode_message(self._result(handler(cmd)))
        except PrismError as exc:
            self._undo()
            result = encode_message(MetaFailed(exc.code, exc.message))
        self._finish(index, wrapper, result, cmd)
        return result

    def _refuse(self, index: int, wrapper: ClientCommand | None, exc: PrismError) -> bytes:
        """An entry every replica refuses alike (it does not decode, or is no
        command): its refusal is the result, and the applied index moves on."""
        result = encode_message(MetaFailed(exc.code, exc.message))
        self._begin()
        self._finish(index, wrapper, result)
        return result

    def _finish(
        self, index: int, wrapper: ClientCommand | None, result: bytes, cmd: object = None
    ) -> None:
        """Record the result for exactly-once and the applied index; commit."""
        if wrapper is not None and not (
            # A command that ended its own session (CloseSession): its lane is fenced now.
            isinstance(cmd, (CloseSession, ExpireSessions))
            and self._ended(session_of_lane(wrapper.client)) is not None
        ):
            self.db.execute(
                "INSERT OR REPLACE INTO clients VALUES (?, ?, ?)",
                (wrapper.client, wrapper.seq, result),
            )
        self._set_applied(index)
        self._commit()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Apply many entries in one SQLite transaction (each in a savepoint).

        The driver wraps the committed entries of one Ready in it: the pages
        they touch are written to the WAL once per batch instead of once per
        entry. A crash loses the whole batch or nothing; the applied index
        inside says which, and the log replays the rest. An entry that fails
        to apply rolls the whole batch back (SQLite may already have done so
        itself, for a full disk), so the applied index never passes it.
        """
        self.db.execute("BEGIN")
        self._in_batch = True
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._in_batch = False

    def _begin(self) -> None:
        self.db.execute("SAVEPOINT entry" if self._in_batch else "BEGIN")

    def _commit(self) -> None:
        self.db.execute("RELEASE entry" if self._in_batch else "COMMIT")

    def _undo(self) -> None:
        """Drop the entry's changes so far; the transaction stays open."""
        if self._in_batch:
            self.db.execute("ROLLBACK TO entry")
        else:
            self.db.execute("ROLLBACK")
            self.db.execute("BEGIN")

    def _abort(self) -> None:
        """After a failed apply: drop whatever the entry changed."""
        if not self.db.in_transaction:
            return  # SQLite rolled it back itself
        if self._in_batch:
            self.db.execute("ROLLBACK TO entry")
            self.db.execute("RELEASE entry")
        else:
            self.db.execute("ROLLBACK")

    def _commit_applied_only(self, index: int) -> None:
        self._begin()
        self._set_applied(index)
        self._commit()

    def check_command(self, op: bytes, *, inner: bool = False) -> None:
        """Refuse, before it reaches the log, an op that is not a namespace command."""
        cmd = decode_message(op)  # ProtocolError for bytes that are no message
        if type(cmd) not in self._handlers:
            raise InvalidArgument(f"not a namespace command: {type(cmd).__name__}")
        if isinstance(cmd, Batch):
            if inner:
                raise InvalidArgument("a batch inside a batch")
            if len(cmd.ops) > MAX_BATCH:
                raise InvalidArgument(f"a batch of {len(cmd.ops)} commands (at most {MAX_BATCH})")
            for raw in cmd.ops:
                self.check_command(raw, inner=True)
        self._remember(op, cmd)

    def check_query(self, op: bytes) -> None:
        q = decode_message(op)
        if type(q) not in self._queries:
            raise InvalidArgument(f"not a namespace query: {type(q).__name__}")
        self._remember(op, q)

    def _remember(self, raw: bytes, message: Any) -> None:
        if len(self._decoded) >= 4096:  # checked here but applied elsewhere (forwarded)
            self._decoded.clear()
        self._decoded[raw] = message

    def _decode(self, raw: bytes) -> Any:
        """The message in ``raw``, decoded once: by a check on this node, or now."""
        message = self._decoded.pop(raw, None)
        return decode_message(raw) if message is None else message

    def query(self, op: bytes) -> bytes:
        """A read, served after a ReadIndex round: `MetaFailed` for a POSIX error."""
        q = self._decode(op)
        handler = self._queries.get(type(q))
        if handler is None:
            raise InvalidArgument(f"not a namespace query: {type(q).__name__}")
        try:
            return encode_message(handler(q))
        except PrismError as exc:
            return encode_message(MetaFailed(exc.code, exc.message))

    def wal_bytes(self) -> int:
        """Size of the write-ahead log not yet copied into the database file."""
        try:
            return os.path.getsize(f"{self.path}-wal") if self.path != ":memory:" else 0
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (PASSIVE: it neither
        waits for nor blocks the writer). Blocking: call it in a worker thread,
        one call at a time."""
        if self.path == ":memory:":
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def snapshot(self) -> bytes:
        image = bytearray(self.db.serialize())
        # The file-format bytes say "WAL" for a database in WAL mode; an
        # in-memory copy cannot open as WAL, so the image says "rollback".
        image[18:20] = b"\x01\x01"
        return bytes(image)

    def snapshot_to(self, path: Path) -> int | None:
        """Write a consistent copy of the database to the new file ``path`` and
        return the applied index it holds; None for an in-memory database
        (use `snapshot`). ``VACUUM INTO`` runs on a read-only connection of its
        own, in one read transaction: call this from a worker thread while
        apply goes on; nothing is held in memory."""
        if self.path == ":memory:":
            return None
        path.unlink(missing_ok=True)
        source = sqlite3.connect(_read_only_uri(self.path), uri=True, isolation_level=None)
        try:
            source.execute("VACUUM INTO ?", (os.fspath(path),))
        finally:
            source.close()
        copy = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            return int(copy.execute("SELECT value FROM state WHERE key = 'applied'").fetchone()[0])
        finally:
            copy.close()

    def check_image(self, path: Path) -> None:
        """Refuse (`LogCorrupt`) a snapshot file that is not a sound database.
        Reads the whole file: call it from a worker thread before `restore_file`."""
        source = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            _check_sound(source)
        finally:
            source.close()

    def restore_file(self, path: Path) -> None:
        """Replace the whole database by the snapshot file ``path`` (see `check_image`)."""
        source = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            source.backup(self.db)
        finally:
            source.close()
        self._migrate()
        self.db.executescript(INDEXES)

    def restore(self, snapshot: bytes) -> None:
        """Replace the whole database by a snapshot image, after SQLite checked it
        (an image that is not a sound database is refused: `LogCorrupt`)."""
        source = sqlite3.connect(":memory:")
        try:
            try:
                source.deserialize(snapshot)
            except sqlite3.DatabaseError as exc:
                raise LogCorrupt(f"the snapshot image is not a database: {exc}") from None
            _check_sound(source)
            source.backup(self.db)
        finally:
            source.close()
        self._migrate()
        self.db.executescript(INDEXES)

    @property
    def applied(self) -> int:
        return int(self._state("applied"))

    def digest(self) -> str:
        """A hash of the whole namespace; equal on replicas that applied the same log."""
        h = xxhash.xxh3_64()
        for table, order in (
            ("inodes", "ino"),
            ("dentries", "parent, name"),
            ("xattrs", "ino, name"),
            ("chunks", "ino, idx"),
            ("gc", "seq"),
            ("node_usage", "node"),
            ("sessions", "session"),
            ("ended_sessions", "session"),
            ("opens", "session, ino"),
            ("orphans", "ino"),
            ("clients", "client"),
            ("nodes", "node"),
            ("tokens", "token_id"),
            ("state", "key"),
        ):
            for row in self.db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                h.update(repr(row).encode())
        return h.hexdigest()

    # --- reads -------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        row = self.db.execute(
            "SELECT ino, mode, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev"
            " FROM inodes WHERE ino = ?",
            (ino,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}", ino=ino)
        return Attr(*row)

    def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > NAME_MAX:
            raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
        self._dir(parent)
        ino = self._child(parent, name)
        if ino is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        return self.getattr(ino)

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000) -> list[DirEntry]:
        """Entries with a cookie greater than ``cookie``, in cookie order."""
        self._dir(ino)
        rows = self.db.execute(
            "SELECT d.name, d.cookie, i.ino, i.mode, i.nlink, i.uid, i.gid, i.size, i.atime_ns,"
            " i.mtime_ns, i.ctime_ns, i.rdev FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?",
            (ino, cookie, limit),
        ).fetchall()
        return [DirEntry(bytes(r[0]), r[1], Attr(*r[2:])) for r in rows]

    def readdir_page(self, ino: int, cookie: int, limit: int) -> DirPage:
        limit = max(1, min(limit, 10_000))
        entries = self.readdir(ino, cookie, limit + 1)
        parent = 0
        if cookie == 0:
            row = self.db.execute("SELECT parent FROM dentries WHERE ino = ?", (ino,)).fetchone()
            parent = ROOT_INO if row is None else int(row[0])
        return DirPage(tuple(entries[:limit]), more=len(entries) > limit, parent=parent)

    def chunk_map(self, ino: int, first: int = 0, count: int = 1024) -> ChunkMap:
        mode = self._mode(ino)
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"inode {ino} is not a regular file")
        size, chunk_size = self.db.execute(
            "SELECT size, chunk_size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        rows = self.db.execute(
            "SELECT idx, record FROM chunks WHERE ino = ? AND idx >= ? ORDER BY idx LIMIT ?",
            (ino, first, max(0, min(count, 100_000))),
        )
        chunks: list[tuple[int, ChunkRecord]] = []
        spent = 0
        more = False
        for i, r in rows:
            if chunks and spent + len(r) > REPLY_RECORD_BYTES:
                more = True  # (the rest: another query)
                break
            spent += len(r)
            chunks.append((int(i), decode_record(r)))
        return ChunkMap(chunk_size or DEFAULT_CHUNK_SIZE, size, tuple(chunks), more)

    def statfs(self) -> FsStats:
        usage = self.db.execute("SELECT node, bytes FROM node_usage ORDER BY node").fetchall()
        return FsStats(
            self._state("files"),
            self._state("bytes"),
            tuple((str(n), int(b)) for n, b in usage),
            self._state("gc_pending"),
        )

    def gc_pending(self, limit: int = 1000) -> list[tuple[int, ChunkRecord]]:
        """The oldest GC entries, at most ``limit`` and `REPLY_RECORD_BYTES` of records."""
        rows = self.db.execute("SELECT seq, record FROM gc ORDER BY seq LIMIT ?", (limit,))
        out: list[tuple[int, ChunkRecord]] = []
        spent = 0
        for seq, r in rows:
            if out and spent + len(r) > REPLY_RECORD_BYTES:
                break
            spent += len(r)
            out.append((int(seq), decode_record(r)))
        return out

    def readlink(self, ino: int) -> bytes:
        attr = self.getattr(ino)
        if not stat.S_ISLNK(attr.mode):
            raise InvalidArgument(f"inode {ino} is not a symbolic link")
        (target,) = self.db.execute("SELECT target FROM inodes WHERE ino = ?", (ino,)).fetchone()
        return bytes(target)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getattr(ino)
        row = self.db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        if row is None:
            raise NoAttribute(f"no attribute {name!r} on inode {ino}")
        return bytes(row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        rows = self.db.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    # --- helpers -------------------------------------------------------------------

    def _state(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0])

    def _bump(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to a counter in ``state``; returns the value before."""
        value = self._state(key)
        self.db.execute("UPDATE state SET value = ? WHERE key = ?", (value + delta, key))
        return value

    def _add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        self.db.execute(
            "INSERT INTO dentries VALUES (?, ?, ?, ?)",
            (parent, name, ino, self._bump("next_cookie")),
        )

    def _gc_push(self, record: bytes) -> None:
        chunk_id = decode_record(record).id
        self.db.execute(
            "INSERT INTO gc VALUES (?, ?, ?)", (self._bump("next_gc"), record, chunk_id)
        )
        self._bump("gc_pending")

    def _free(self, ino: int) -> None:
        """Delete an inode nothing refers to any more; its chunks go to the GC queue."""
        mode, size = self.db.execute(
            "SELECT mode, size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        for idx, record in self.db.execute(
            "SELECT idx, record FROM chunks WHERE ino = ? ORDER BY idx", (ino,)
        ).fetchall():
            self._gc_push(record)
            self._index_shards(ino, idx, decode_record(record), None)
        self.db.execute("DELETE FROM chunks WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        self._bump("files", -1)
        if stat.S_ISREG(mode):
            self._bump("bytes", -size)

    def _is_open(self, ino: int) -> bool:
        return (
            self.db.execute("SELECT 1 FROM opens WHERE ino = ? LIMIT 1", (ino,)).fetchone()
            is not None
        )

    def _set_size(self, ino: int, size: int, now: int) -> None:
        """Set a regular file's size: chunks past it are dropped, the last one shortened."""
        old, chunk_size = self.db.execute(
            "SELECT size, chunk_size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        if size < old:
            first_gone = -(-size // chunk_size)
            for idx, record in self.db.execute(
                "SELECT idx, record FROM chunks WHERE ino = ? AND idx >= ? ORDER BY idx",
                (ino, first_gone),
            ).fetchall():
                self._gc_push(record)
                self._index_shards(ino, idx, decode_record(record), None)
            self.db.execute("DELETE FROM chunks WHERE ino = ? AND idx >= ?", (ino, first_gone))
            if size % chunk_size:
                idx = size // chunk_size
                row = self.db.execute(
                    "SELECT record FROM chunks WHERE ino = ? AND idx = ?", (ino, idx)
                ).fetchone()
                if row is not None:
                    rec = decode_record(row[0])
                    keep = size - idx * chunk_size
                    if rec.length > keep:
                        shorter = msgspec.structs.replace(rec, length=keep)
                        self.db.execute(
                            "UPDATE chunks SET record = ? WHERE ino = ? AND idx = ?",
                            (encode_message(shorter), ino, idx),
                        )
        self.db.execute(
            "UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
            (size, now, now, ino),
        )
        self._bump("bytes", size - old)

    def _set_applied(self, index: int) -> None:
        self.db.execute("UPDATE state SET value = ? WHERE key = 'applied'", (index,))

    def _child(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute(
            "SELECT ino FROM dentries WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def _mode(self, ino: int) -> int:
        row = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}", ino=ino)
        return int(row[0])

    def _dir(self, ino: int) -> None:
        if not stat.S_ISDIR(self._mode(ino)):
            raise NotADirectory(f"inode {ino} is not a directory")

    def _result(self, out: Attr | Message | None) -> Message:
        if isinstance(out, (Reserved, BatchResults)):
            return out
        parents = []
        for ino in dict.fromkeys(self._touched):
            with contextlib.suppress(NotFound):
                parents.append(self.getattr(ino))
        return MetaOk(out, tuple(parents))  # type: ignore[arg-type]

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        self._touched.append(ino)
        self.db.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?",
            (now, now, nlink_delta, ino),
        )

    def _new_inode(self, mode: int, uid: int, gid: int, now: int, nlink: int, **extra: Any) -> int:
        ino = extra.get("ino") or self._bump("next_ino")
        self._bump("files")
        self.db.execute(
            "INSERT INTO inodes (ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink,"
            " rdev, target, chunk_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ino,
                mode,
                uid,
                gid,
                extra.get("size", 0),
                now,
                now,
                now,
                nlink,
                extra.get("rdev", 0),
                extra.get("target"),
                extra.get("chunk_size", 0),
            ),
        )
        return ino

    def _prepare_new(self, parent: int, name: bytes) -> None:
        check_name(name)
        self._dir(parent)
        if self._child(parent, name) is not None:
            raise AlreadyExists(f"{name!r} exists in directory {parent}")

    def _drop_link(self, ino: int, now: int) -> None:
        """One name of ``ino`` went away: free it with its last link."""
        self.db.execute(
            "UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? WHERE ino = ?", (now, ino)
        )
        (nlink,) = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if stat.S_ISDIR(self._mode(ino)):
            self._free(ino)
        elif nlink <= 0 and not self._is_open(ino):
            self._orphan(ino)

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        """Is ``ancestor`` on the path from ``ino`` up to the root (or ino itself)?"""
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            row = self.db.execute("SELECT parent FROM dentries WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                return False
            ino = int(row[0])

    # --- commands -------------------------------------------------------------------

    def _done_before(self, parent: int, name: bytes, ino: int) -> Attr | None:
        """A create with a reserved inode number ``ino`` (0: none): the
        attributes if ``name`` holds that number already (a retry of this
        very create: it is done), else None; EINVAL for a number that is not
        a free reserved one."""
        if not ino:
            return None
        if self._child(parent, name) == ino:
            return self.getattr(ino)
        if not ROOT_INO < ino < self._state("next_ino") or self._exists(ino):
            raise InvalidArgument(f"inode number {ino} is not a free reserved one")
        return None

    def _mknod(self, c: Mknod) -> Attr:
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        kind = stat.S_IFMT(c.mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot make file type {kind:o}")
        if c.chunk_size and not 4096 <= c.chunk_size <= 64 * 1024 * 1024:
            raise InvalidArgument(f"chunk size {c.chunk_size} is not in 4 KiB..64 MiB")
        if c.session:
            self._live_session(c.session)
        mode, gid = self._inherit(c.parent, kind | (c.mode & 0o7777), c.gid)
        ino = self._new_inode(
            mode,
            c.uid,
            gid,
            c.now_ns,
            1,
            rdev=c.rdev,
            chunk_size=c.chunk_size if stat.S_ISREG(kind) else 0,
            ino=c.ino,
        )
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns)
        if c.session:
            self._add_open(c.session, ino)
        return self.getattr(ino)

    def _inherit(self, parent: int, mode: int, gid: int) -> tuple[int, int]:
        """A set-group-ID directory gives new entries its group, and new
        directories its set-group-ID bit (as Linux does; FUSE leaves it to us)."""
        return inherit_from_parent(self.getattr(parent), mode, gid)

    def _exists(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ino,)).fetchone() is not None

    def _reserve_inodes(self, c: ReserveInodes) -> Reserved:
        if not 1 <= c.count <= 1 << 20:
            raise InvalidArgument(f"cannot reserve {c.count} inode numbers (1..1048576)")
        first = self._state("next_ino")
        self._bump("next_ino", c.count)
        return Reserved(first, c.count)

    def _batch(self, c: Batch) -> BatchResults:
        results = []
        for raw in c.ops:
            op = self._decode(raw)
            handler = self._handlers.get(type(op))
            if handler is None or isinstance(op, Batch):
                raise InvalidArgument(f"not a command for a batch: {type(op).__name__}")
            self.db.execute("SAVEPOINT op")
            try:
                self._touched = []
                results.append(encode_message(self._result(handler(op))))
            except PrismError as exc:
                self.db.execute("ROLLBACK TO op")
                results.append(encode_message(MetaFailed(exc.code, exc.message)))
            self.db.execute("RELEASE op")
        return BatchResults(tuple(results))

    def _mkdir(self, c: Mkdir) -> Attr:
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        mode, gid = self._inherit(c.parent, stat.S_IFDIR | (c.mode & 0o7777), c.gid)
        ino = self._new_inode(mode, c.uid, gid, c.now_ns, 2, ino=c.ino)
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns, nlink_delta=1)
        return self.getattr(ino)

    def _symlink(self, c: Symlink) -> Attr:
        # As in Linux, the target is checked first (it is copied in before
        # the new name is looked up): empty is ENOENT, too long ENAMETOOLONG.
        if not c.target:
            raise NotFound("a symlink target cannot be empty")
        if len(c.target) > 4095:
            raise NameTooLong(f"symlink target of {len(c.target)} bytes is longer than 4095")
        if b"\0" in c.target:
            raise InvalidArgument("a symlink target cannot hold NUL")
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        mode, gid = self._inherit(c.parent, stat.S_IFLNK | 0o777, c.gid)
        ino = self._new_inode(
            mode, c.uid, gid, c.now_ns, 1, size=len(c.target), target=c.target, ino=c.ino
        )
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns)
        return self.getattr(ino)

    def _link(self, c: Link) -> Attr:
        mode = self._mode(c.ino)
        check_name(c.new_name)
        self._dir(c.new_parent)
        if self._child(c.new_parent, c.new_name) is not None:
            raise AlreadyExists(f"{c.new_name!r} exists in directory {c.new_parent}")
        if stat.S_ISDIR(mode):
            raise NotPermitted("hard links to directories are not allowed")
        if self.getattr(c.ino).nlink >= LINK_MAX:
            raise TooManyLinks(f"inode {c.ino} has {LINK_MAX} links")
        self._add_dentry(c.new_parent, c.new_name, c.ino)
        self.db.execute(
            "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino)
        )
        self._touch_dir(c.new_parent, c.now_ns)
        return self.getattr(c.ino)

    def _unlink(self, c: Unlink) -> None:
        check_name(c.name)
        self._dir(c.parent)
        ino = self._child(c.parent, c.name)
        if ino is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        if c.ino and ino != c.ino:
            raise NotFound(f"{c.name!r} in directory {c.parent} is no longer inode {c.ino}")
        if stat.S_ISDIR(self._mode(ino)):
            raise IsADirectory(f"{c.name!r} is a directory")
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (c.parent, c.name))
        self._drop_link(ino, c.now_ns)
        self._touch_dir(c.parent, c.now_ns)

    def _rmdir(self, c: Rmdir) -> None:
        check_name(c.name)
        self._dir(c.parent)
        ino = self._child(c.parent, c.name)
        if ino is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        if not stat.S_ISDIR(self._mode(ino)):
            raise NotADirectory(f"{c.name!r} is not a directory")
        if self.db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone():
            raise NotEmpty(f"directory {c.name!r} is not empty")
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (c.parent, c.name))
        self._drop_link(ino, c.now_ns)
        self._touch_dir(c.parent, c.now_ns, nlink_delta=-1)

    def _rename(self, c: Rename) -> None:
        check_name(c.name)
        check_name(c.new_name)
        if c.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or c.flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise InvalidArgument(f"bad rename flags {c.flags}")
        self._dir(c.parent)
        self._dir(c.new_parent)
        src = self._child(c.parent, c.name)
        if src is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        dst = self._child(c.new_parent, c.new_name)
        src_dir = stat.S_ISDIR(self._mode(src))
        if c.flags & RENAME_EXCHANGE:
            if dst is None:
                raise NotFound(f"no entry {c.new_name!r} to exchange with")
            self._exchange(c, src, dst)
            return
        if dst is not None and c.flags & RENAME_NOREPLACE:
            raise AlreadyExists(f"{c.new_name!r} exists in directory {c.new_parent}")
        # The checks below come in the order Linux makes them, so that every
        # errno matches what a local file system returns.
        if src_dir and self._is_ancestor(src, c.new_parent):
            raise InvalidArgument("cannot move a directory into itself")
        if dst is not None and c.parent != c.new_parent and self._is_ancestor(dst, c.parent):
            raise NotEmpty(f"{c.new_name!r} is an ancestor of the source")
        if dst == src:
            return  # two names of one inode (or the same entry): POSIX says do nothing
        if dst is not None:
            dst_dir = stat.S_ISDIR(self._mode(dst))
            if src_dir and not dst_dir:
                raise NotADirectory(f"{c.new_name!r} is not a directory")
            if dst_dir and not src_dir:
                raise IsADirectory(f"{c.new_name!r} is a directory")
            if (
                dst_dir
                and self.db.execute(
                    "SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (dst,)
                ).fetchone()
            ):
                raise NotEmpty(f"directory {c.new_name!r} is not empty")
            self.db.execute(
                "DELETE FROM dentries WHERE parent = ? AND name = ?", (c.new_parent, c.new_name)
            )
            self._drop_link(dst, c.now_ns)
            if dst_dir:
                self._touch_dir(c.new_parent, c.now_ns, nlink_delta=-1)
        # A moved entry gets a new cookie: a listing in progress sees it at
        # most once (under its old name before, or its new name after).
        self.db.execute(
            "UPDATE dentries SET parent = ?, name = ?, cookie = ? WHERE parent = ? AND name = ?",
            (c.new_parent, c.new_name, self._bump("next_cookie"), c.parent, c.name),
        )
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, src))
        moved_dir = src_dir and c.parent != c.new_parent
        self._touch_dir(c.parent, c.now_ns, nlink_delta=-1 if moved_dir else 0)
        self._touch_dir(c.new_parent, c.now_ns, nlink_delta=1 if moved_dir else 0)

    def _exchange(self, c: Rename, src: int, dst: int) -> None:
        src_dir = stat.S_ISDIR(self._mode(src))
        dst_dir = stat.S_ISDIR(self._mode(dst))
        if (src_dir and c.parent != c.new_parent and self._is_ancestor(src, c.new_parent)) or (
            dst_dir and c.parent != c.new_parent and self._is_ancestor(dst, c.parent)
        ):
            raise InvalidArgument("cannot exchange a directory with its own descendant")
        if src == dst:
            return
        self.db.execute(
            "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?", (dst, c.parent, c.name)
        )
        self.db.execute(
            "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?",
            (src, c.new_parent, c.new_name),
        )
        if c.parent != c.new_parent and src_dir != dst_dir:
            delta = 1 if dst_dir else -1
            self._touch_dir(c.parent, c.now_ns, nlink_delta=delta)
            self._touch_dir(c.new_parent, c.now_ns, nlink_delta=-delta)
        else:
            self._touch_dir(c.parent, c.now_ns)
            self._touch_dir(c.new_parent, c.now_ns)
        for ino in (src, dst):
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, ino))

    def _setattr(self, c: SetAttr) -> Attr:
        mode = self._mode(c.ino)
        sets: list[str] = ["ctime_ns = ?"]
        args: list[int] = [c.now_ns]
        if c.size is not None:
            if stat.S_ISDIR(mode):
                raise IsADirectory(f"inode {c.ino} is a directory")
            if not stat.S_ISREG(mode):
                raise InvalidArgument(f"inode {c.ino} is not a regular file")
            if c.size > MAX_FILE_SIZE:
                raise FileTooLarge(f"size {c.size} exceeds the maximum {MAX_FILE_SIZE}")
            self._set_size(c.ino, c.size, c.now_ns)
        if c.mode is not None:
            sets.append("mode = ?")
            args.append(stat.S_IFMT(mode) | (c.mode & 0o7777))
        for column in ("uid", "gid", "atime_ns", "mtime_ns"):
            value = getattr(c, column)
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        self.db.execute(f"UPDATE inodes SET {', '.join(sets)} WHERE ino = ?", (*args, c.ino))
        return self.getattr(c.ino)

    def _update_atime(self, c: UpdateAtime) -> None:
        self._mode(c.ino)  # NotFound for a missing inode
        self.db.execute(
            "UPDATE inodes SET atime_ns = max(atime_ns, ?) WHERE ino = ?", (c.atime_ns, c.ino)
        )

    def _setxattr(self, c: SetXattr) -> None:
        mode = self._mode(c.ino)
        if c.name == LAYOUT_XATTR:
            if not stat.S_ISDIR(mode):
                raise InvalidArgument("prismfs.layout can only be set on a directory")
            Layout.parse(c.value)  # InvalidArgument for a bad one
        if c.name == MIN_REDUNDANCY_XATTR and (
            c.ino != ROOT_INO or c.value not in (b"0", b"1", b"2", b"3", b"4")
        ):
            raise InvalidArgument("prismfs.min_redundancy is 0 to 4, on the root directory")
        if not c.name or len(c.name) > XATTR_NAME_MAX:
            raise OutOfRange(f"attribute name of {len(c.name)} bytes")
        if len(c.value) > XATTR_VALUE_MAX:
            raise ValueTooLarge(
                f"attribute value of {len(c.value)} bytes exceeds {XATTR_VALUE_MAX}"
            )
        exists = self.db.execute(
            "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (c.ino, c.name)
        ).fetchone()
        if exists and c.flags & XATTR_CREATE:
            raise AlreadyExists(f"attribute {c.name!r} exists")
        if not exists and c.flags & XATTR_REPLACE:
            raise NoAttribute(f"no attribute {c.name!r} to replace")
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (c.ino, c.name, c.value))
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino))

    def _removexattr(self, c: RemoveXattr) -> None:
        self._mode(c.ino)
        cursor = self.db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (c.ino, c.name))
        if cursor.rowcount == 0:
            raise NoAttribute(f"no attribute {c.name!r}")
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino))

    # --- sessions and open files -------------------------------------------------------

    def _live_session(self, session: str) -> None:
        if (
            self.db.execute("SELECT 1 FROM sessions WHERE session = ?", (session,)).fetchone()
            is None
        ):
            raise SessionExpired(f"client session {session!r} is unknown or expired")

    def _ended(self, session: str) -> SessionExpired | None:
        """The refusal for a session that ended, if ``session`` did."""
        if not session:
            return None
        row = self.db.execute(
            "SELECT 1 FROM ended_sessions WHERE session = ?", (session,)
        ).fetchone()
        if row is None:
            return None
        return SessionExpired(
            f"client session {session!r} ended (its lease ran out, or it was closed); "
            "its open files were released"
        )

    def _add_open(self, session: str, ino: int) -> None:
        self.db.execute(
            "INSERT INTO opens VALUES (?, ?, 1)"
            " ON CONFLICT (session, ino) DO UPDATE SET count = count + 1",
            (session, ino),
        )

    def _open_session(self, c: OpenSession) -> None:
        if not c.session or len(c.session) > 128 or "/" in c.session:
            raise InvalidArgument("a session id is 1 to 128 characters, without '/'")
        if not MIN_LEASE_NS <= c.lease_ns <= MAX_LEASE_NS:
            raise InvalidArgument("a lease lasts 1 second to 1 day")
        ended = self._ended(c.session)
        if ended is not None:
            raise ended
        if c.renew:
            self._live_session(c.session)
        self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (c.session, c.lease_ns))
        if self.session_observer is not None:
            self.session_observer.renewed(c.session, c.lease_ns)

    def _close_session(self, c: CloseSession) -> None:
        self._end_sessions([c.session])

    def _expire_sessions(self, c: ExpireSessions) -> None:
        # The leader's wall clock, kept only to forget ended sessions after a day.
        clock = max(self._state("clock_ns"), c.now_ns)
        self.db.execute("UPDATE state SET value = ? WHERE key = 'clock_ns'", (clock,))
        self.db.execute(
            "DELETE FROM ended_sessions WHERE ended_ns < ?", (clock - SESSION_TOMBSTONE_NS,)
        )
        self._end_sessions(sorted(set(c.sessions)))
        if c.new_leader:
            self.db.execute("UPDATE orphans SET seen_ns = 0")  # first seen at this sweep
        self._sweep_orphans(clock)

    def _end_sessions(self, sessions: list[str]) -> None:
        for session in sessions:
            if (
                self.db.execute("SELECT 1 FROM sessions WHERE session = ?", (session,)).fetchone()
                is None
            ):
                continue  # not a live session (already ended, or never started)
            inos = [
                int(r[0])
                for r in self.db.execute(
                    "SELECT ino FROM opens WHERE session = ? ORDER BY ino", (session,)
                ).fetchall()
            ]
            self.db.execute("DELETE FROM opens WHERE session = ?", (session,))
            self.db.execute("DELETE FROM sessions WHERE session = ?", (session,))
            # The exactly-once rows of its lanes ("<session>/<n>") go; the
            # session is remembered as ended instead, so that a late retry on
            # one of its lanes is refused rather than applied a second time.
            # (a range of the primary key: "0" sorts right after "/")
            self.db.execute(
                "DELETE FROM clients WHERE client >= ? AND client < ?",
                (session + "/", session + "0"),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO ended_sessions VALUES (?, ?)",
                (session, self._state("clock_ns")),
            )
            if self.session_observer is not None:
                self.session_observer.ended(session)
            for ino in inos:
                self._free_if_orphan(ino)

    def session_leases(self) -> list[tuple[str, int]]:
        """Every live session and its lease length (ns)."""
        rows = self.db.execute("SELECT session, lease_ns FROM sessions ORDER BY session")
        return [(str(a), int(b)) for a, b in rows]

    def _free_if_orphan(self, ino: int) -> None:
        row = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is not None and row[0] <= 0 and not self._is_open(ino):
            self._orphan(ino)

    def _orphan(self, ino: int) -> None:
        """No name and no open left: freed by a later sweep (`ORPHAN_GRACE_NS`)."""
        self.db.execute("INSERT OR IGNORE INTO orphans VALUES (?, 0)", (ino,))

    def _sweep_orphans(self, clock: int) -> None:
        rows = self.db.execute("SELECT ino, seen_ns FROM orphans ORDER BY ino").fetchall()
        for ino, seen in rows:
            row = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if row is None or row[0] > 0 or self._is_open(ino):
                self.db.execute("DELETE FROM orphans WHERE ino = ?", (ino,))
            elif seen == 0:
                self.db.execute("UPDATE orphans SET seen_ns = ? WHERE ino = ?", (clock, ino))
            elif clock - seen >= ORPHAN_GRACE_NS:
                self.db.execute("DELETE FROM orphans WHERE ino = ?", (ino,))
                self._free(ino)

    def orphans(self) -> int:
        """Inodes waiting for a sweep to free them."""
        return int(self.db.execute("SELECT count(*) FROM orphans").fetchone()[0])

    def _open(self, c: Open) -> Attr:
        self._live_session(c.session)
        attr = self.getattr(c.ino)
        self._add_open(c.session, c.ino)
        return attr

    def _release(self, c: Release) -> None:
        # Idempotent: a release after the session expired (or twice) changes nothing.
        self.db.execute(
            "UPDATE opens SET count = count - 1 WHERE session = ? AND ino = ?", (c.session, c.ino)
        )
        self.db.execute(
            "DELETE FROM opens WHERE session = ? AND ino = ? AND count <= 0", (c.session, c.ino)
        )
        self._free_if_orphan(c.ino)

    # --- chunk maps ---------------------------------------------------------------------

    def _commit_chunks(self, c: CommitChunks) -> Attr:
        mode = self._mode(c.ino)
        if stat.S_ISDIR(mode):
            raise IsADirectory(f"inode {c.ino} is a directory")
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"inode {c.ino} is not a regular file")
        if c.size > MAX_FILE_SIZE:
            raise FileTooLarge(f"size {c.size} exceeds the maximum {MAX_FILE_SIZE}")
        chunk_size, old_size = self.db.execute(
            "SELECT chunk_size, size FROM inodes WHERE ino = ?", (c.ino,)
        ).fetchone()
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        size = max(old_size, c.size)  # a commit never shortens a file
        if c.expect and len(c.expect) != len(c.chunks):
            raise InvalidArgument("one expected record per chunk committed")
        seen: set[int] = set()
        for idx, rec in c.chunks:
            if idx in seen:
                raise InvalidArgument(f"chunk {idx} appears twice")
            seen.add(idx)
            if idx * chunk_size >= max(size, 1):
                raise InvalidArgument(f"chunk {idx} lies past the new size {size}")
            if rec.length > chunk_size or not _well_formed(rec):
                raise InvalidArgument(f"malformed record for chunk {idx}")
        olds: list[bytes | None] = []
        for n, (idx, _) in enumerate(c.chunks):
            row = self.db.execute(
                "SELECT record FROM chunks WHERE ino = ? AND idx = ?", (c.ino, idx)
            ).fetchone()
            olds.append(None if row is None else bytes(row[0]))
            if c.expect:
                now = (b"", 0) if row is None else _id_and_length(row[0])
                if now != (bytes(c.expect[n][0]), c.expect[n][1]):
                    raise Conflict(f"chunk {idx} of inode {c.ino} changed since the writer read it")
        for (idx, rec), old in zip(c.chunks, olds, strict=True):
            if old is not None and decode_record(old).id == rec.id:
                continue  # this very chunk is stored already: never queue a live id
            if old is not None:
                self._gc_push(old)
            self.db.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
                (c.ino, idx, encode_message(rec), rec.id, int(rec.reduced)),
            )
            self._index_shards(c.ino, idx, None if old is None else decode_record(old), rec)
            for node in filter(None, rec.nodes):
                self.db.execute(
                    "INSERT INTO node_usage VALUES (?, ?)"
                    " ON CONFLICT (node) DO UPDATE SET bytes = bytes + excluded.bytes",
                    (node, rec.shard_size),
                )
        self._set_size(c.ino, size, c.now_ns)
        return self.getattr(c.ino)

    def _reencode_chunk(self, c: ReencodeChunk) -> None:
        rec = c.record
        rows = self.db.execute(
            "SELECT ino, idx, record FROM chunks WHERE chunk_id = ?", (c.chunk_id,)
        ).fetchall()
        if not rows:
            raise NotFound(f"no file holds chunk {c.chunk_id.hex()} any more")
        if not _well_formed(rec) or rec.is_inline or rec.id == c.chunk_id:
            raise InvalidArgument("malformed record for a re-encoded chunk")
        for ino, idx, blob in rows:
            if decode_record(blob).length != rec.length:
                raise NotFound(f"chunk {c.chunk_id.hex()} changed during its re-encoding")
            self.db.execute(
                "UPDATE chunks SET record = ?, chunk_id = ?, reduced = ? WHERE ino = ? AND idx = ?",
                (encode_message(rec), rec.id, int(rec.reduced), ino, idx),
            )
            self._index_shards(ino, idx, decode_record(blob), rec)
            self._gc_push(bytes(blob))
        for node in filter(None, rec.nodes):
            self.db.execute(
                "INSERT INTO node_usage VALUES (?, ?)"
                " ON CONFLICT (node) DO UPDATE SET bytes = bytes + excluded.bytes",
                (node, rec.shard_size),
            )

    def reduced_chunks(self, after: bytes = b"", limit: int = CHUNK_PAGE) -> list[ChunkRecord]:
        """Chunk records written with a reduced layout, by id after ``after``."""
        rows = self.db.execute(
            "SELECT record FROM chunks WHERE reduced = 1 AND chunk_id > ? ORDER BY chunk_id"
            " LIMIT ?",
            (after, limit),
        )
        return [decode_record(r[0]) for r in rows]

    def reduced_count(self) -> int:
        (count,) = self.db.execute("SELECT count(*) FROM chunks WHERE reduced = 1").fetchone()
        return int(count)

    def min_redundancy(self) -> int:
        """The cluster's ``[data] min_redundancy`` as the leader set it (default 1)."""
        row = self.db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ROOT_INO, MIN_REDUNDANCY_XATTR)
        ).fetchone()
        return 1 if row is None else int(bytes(row[0]))

    def _gc_done(self, c: GcDone) -> None:
        for seq in sorted(set(c.seqs)):
            row = self.db.execute("SELECT record FROM gc WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                continue  # already forgotten (a retried GcDone)
            rec = decode_record(row[0])
            for node in filter(None, rec.nodes):
                self.db.execute(
                    "UPDATE node_usage SET bytes = max(0, bytes - ?) WHERE node = ?",
                    (rec.shard_size, node),
                )
            self.db.execute("DELETE FROM gc WHERE seq = ?", (seq,))
            self._bump("gc_pending", -1)
        self.db.execute("DELETE FROM node_usage WHERE bytes = 0")

    # --- node registry ------------------------------------------------------------------

    def effective_layout(self, ino: int) -> bytes:
        """The nearest ``prismfs.layout`` up the directory chain ("" for none)."""
        seen = 0
        while seen < 4096:
            row = self.db.execute(
                "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, LAYOUT_XATTR)
            ).fetchone()
            if row is not None:
                return bytes(row[0])
            if ino == ROOT_INO:
                return b""
            parent = self.db.execute(
                "SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)
            ).fetchone()
            if parent is None:
                self._mode(ino)  # NotFound for no such inode
                ino = ROOT_INO  # an unlinked file: the cluster default
                continue
            ino = int(parent[0])
            seen += 1
        return b""


def _well_formed(rec: ChunkRecord) -> bool:
    if rec.is_inline:
        return rec.m == 0 and not rec.nodes and len(rec.inline) == rec.length <= INLINE_MAX
    return (
        1 <= rec.k <= rec.m
        and len(rec.nodes) == rec.m
        and not rec.inline
        and len(rec.block_sums) in (0, rec.k)
        and rec.block_size in (0, *BLOCK_SIZES)
    )


def _id_and_length(blob: bytes) -> tuple[bytes, int]:
    rec = decode_record(blob)
    return rec.id, rec.length
