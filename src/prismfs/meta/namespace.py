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
SQLite's backup API, paced, from a read-only connection in a worker thread
(`snapshot_to`), or an in-memory image (`serialize`) for a database without
a file; `restore_file` and `restore` copy one back with SQLite's backup API.

The tables are kept by families, each a base class of `Namespace` over the
same database and the same apply (`ClusterTables` <- `TableBase` <-
`ChunkTables` <- `SessionTables` <- `InodeTables` <- `Namespace`): the
registry and tokens (`cluster_tables`), shared helpers (`table_base`),
chunk maps and the GC queue (`chunk_tables`), sessions, opens and orphans
(`session_tables`), the tree (`inode_tables`); the schema and its limits
are in `schema`. This module holds what makes them a state machine: the
dispatch of commands and queries, transactions, snapshots and migrations.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from prismfs.data.layout import LAYOUT_XATTR
from prismfs.errors import (
    InvalidArgument,
    LogCorrupt,
    PermissionDenied,
    PrismError,
    ProtocolError,
    ReplicaHalted,
)
from prismfs.meta.cluster_tables import SHARDS_TABLE, ClusterTables
from prismfs.meta.commands import (
    CLIENT_COMMANDS,
    MAX_BATCH,
    NODE_QUERIES,
    READ_ONLY_COMMANDS,
    ROOT_INO,
    Attr,
    Batch,
    BatchResults,
    ChunkRefs,
    CloseSession,
    CommitChunks,
    CreateCredential,
    CreateToken,
    CredentialList,
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
    ListCredentials,
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
    ReserveInodes,
    RevokeCredential,
    RevokeToken,
    Rmdir,
    SetAttr,
    SetNodeState,
    SetNodeVoting,
    SetNodeZone,
    SetXattr,
    ShardRefs,
    StatFs,
    Symlink,
    TokenList,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.inode_tables import InodeTables
from prismfs.meta.schema import (
    DEFAULT_LEASE_NS,
    INDEXES,
    SCHEMA,
    SCHEMA_VERSION,
    SessionObserver,
    session_of_lane,
)
from prismfs.raft.state_machine import ClientCommand
from prismfs.wire.auth import CLIENT, NODE, READ_ONLY
from prismfs.wire.codec import Message, decode_message, encode_message


def _read_only_uri(path: str | os.PathLike[str]) -> str:
    return f"{Path(path).resolve().as_uri()}?mode=ro"


def _cluster_setting(name: bytes) -> bool:
    """A ``prismfs.*`` attribute the cluster keeps for itself (the minimum
    redundancy, the scrub clock), as opposed to a directory's layout, which
    mounts set (``user.prismfs.layout``)."""
    return name.startswith(b"prismfs.") and name != LAYOUT_XATTR


def _check_sound(db: sqlite3.Connection) -> None:
    try:
        verdict = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LogCorrupt(f"the snapshot image is not a database: {exc}") from None
    if verdict != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in verdict[:3])
        raise LogCorrupt(f"the snapshot image is damaged: {problems}")


log = logging.getLogger("prismfs.meta.namespace")


class Namespace(InodeTables):
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
            SetNodeVoting: self._set_node_voting,
            MoveShards: self._move_shards,
            ReencodeChunk: self._reencode_chunk,
            CreateToken: self._create_token,
            RevokeToken: self._revoke_token,
            CreateCredential: self._create_credential,
            RevokeCredential: self._revoke_credential,
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
            ListCredentials: lambda q: CredentialList(tuple(self.credentials())),
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
        if self._without_rowid("chunks"):
            self._rebuild_chunks()
        for column, kind in (("uid", "INTEGER"), ("gid", "INTEGER"), ("prefix", "TEXT")):
            if column not in self._columns("tokens"):
                default = "''" if kind == "TEXT" else "0"
                self.db.execute(
                    f"ALTER TABLE tokens ADD COLUMN {column} {kind} NOT NULL DEFAULT {default}"
                )
        if "voting" not in self._columns("nodes"):
            self.db.execute("ALTER TABLE nodes ADD COLUMN voting TEXT NOT NULL DEFAULT 'auto'")
        if "state_ns" not in self._columns("nodes"):
            # When a node's state last changed (0: unknown, before schema 7).
            self.db.execute("ALTER TABLE nodes ADD COLUMN state_ns INTEGER NOT NULL DEFAULT 0")
        self.db.execute("UPDATE state SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
        self.db.execute("COMMIT")

    def _without_rowid(self, table: str) -> bool:
        row = self.db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        return row is not None and "WITHOUT ROWID" in str(row[0]).upper()

    def _rebuild_chunks(self) -> None:
        """Schema 8: the chunk records move to a rowid table (see
        `SCHEMA_VERSION`), in one pass over them, inside the migration's
        transaction."""
        log.info("rebuilding the chunk table for schema %d (once)", SCHEMA_VERSION)
        self.db.execute("ALTER TABLE chunks RENAME TO chunks_v7")
        self.db.execute("DROP INDEX IF EXISTS chunks_by_id")
        self.db.execute("DROP INDEX IF EXISTS chunks_reduced")
        table = SCHEMA.split("CREATE TABLE IF NOT EXISTS chunks", 1)[1].split(";", 1)[0]
        self.db.execute("CREATE TABLE chunks" + table)
        self.db.execute("CREATE INDEX chunks_by_id ON chunks (chunk_id)")
        self.db.execute(
            "INSERT INTO chunks (ino, idx, record, chunk_id, reduced)"
            " SELECT ino, idx, record, chunk_id, reduced FROM chunks_v7 ORDER BY ino, idx"
        )
        self.db.execute("DROP TABLE chunks_v7")

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

    def check_role(self, op: bytes, role: str) -> None:
        """Refuse a command or query the role may not send (`PermissionDenied`):
        clients propose only `CLIENT_COMMANDS` (read-only ones only
        `READ_ONLY_COMMANDS`) and send no `NODE_QUERIES`; nodes anything."""
        if role == NODE:
            return
        message = self._decoded.get(op) or decode_message(op)
        if isinstance(message, MetaQuery):
            if type(message) in NODE_QUERIES:
                raise PermissionDenied(f"a {role} credential may not send {type(message).__name__}")
            return
        allowed = CLIENT_COMMANDS if role == CLIENT else READ_ONLY_COMMANDS
        inner = [decode_message(raw) for raw in message.ops] if isinstance(message, Batch) else []
        for cmd in (message, *inner):
            if type(cmd) not in allowed:
                what = "a read-only" if role == READ_ONLY else f"a {role}"
                raise PermissionDenied(f"{what} credential may not propose {type(cmd).__name__}")
            if isinstance(cmd, SetXattr | RemoveXattr) and _cluster_setting(cmd.name):
                raise PermissionDenied(
                    f"a {role} credential may not change the cluster setting {cmd.name!r}"
                )

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

    @contextlib.contextmanager
    def reader(self) -> Iterator[ClusterTables]:
        """The cluster tables' reads (chunk health, shards per node) on a
        read-only connection of their own, for a worker thread: a read over
        every chunk of a node must not hold the event loop, and must not share
        the connection the loop applies on. An in-memory database (tests) has
        no second connection: its view is itself, to be used on the loop."""
        if self.path == ":memory:":
            yield self
            return
        view = ClusterTables()
        view.db = sqlite3.connect(
            _read_only_uri(self.path), uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            yield view
        finally:
            view.db.close()

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:"

    def snapshot_to(
        self, path: Path, *, mb_per_s: float = 0.0, step_bytes: int = 4 << 20
    ) -> int | None:
        """Write a consistent copy of the database to the new file ``path`` and
        return the applied index it holds; None for an in-memory database
        (use `snapshot`). Call it from a worker thread while apply goes on:
        SQLite's backup API copies ``step_bytes`` at a time from a read-only
        connection that holds one read transaction throughout (so the copy
        is of one applied index and never restarts), and nothing is held in
        memory. Each step is flushed to disk before the next, and with
        ``mb_per_s`` the copy is paced to that rate: a copy of a large
        database written in one burst leaves so much dirty data that the
        Raft log's fsync on the same disk waits behind its write-back."""
        if self.path == ":memory:":
            return None
        path.unlink(missing_ok=True)
        source = sqlite3.connect(_read_only_uri(self.path), uri=True, isolation_level=None)
        target = sqlite3.connect(path, isolation_level=None)
        fd = -1
        try:
            source.execute("BEGIN")
            row = source.execute("SELECT value FROM state WHERE key = 'applied'").fetchone()
            applied = int(row[0])
            page_size = int(source.execute("PRAGMA page_size").fetchone()[0])
            pages = max(1, step_bytes // page_size)
            target.execute("PRAGMA journal_mode = OFF")
            target.execute("PRAGMA synchronous = OFF")
            fd = os.open(path, os.O_RDONLY)
            started = time.monotonic()

            def pace(_status: int, remaining: int, total: int) -> None:
                os.fdatasync(fd)
                if mb_per_s > 0:
                    due = started + (total - remaining) * page_size / (mb_per_s * 1e6)
                    time.sleep(max(0.0, due - time.monotonic()))

            source.backup(target, pages=pages, progress=pace)
            source.execute("COMMIT")
            # The copy carries the source's WAL flag; an image is a plain file.
            target.execute("PRAGMA journal_mode = DELETE")
            return applied
        finally:
            if fd >= 0:
                os.close(fd)
            target.close()
            source.close()

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

    # --- reads -------------------------------------------------------------------

    def statfs(self) -> FsStats:
        usage = self.db.execute("SELECT node, bytes FROM node_usage ORDER BY node").fetchall()
        return FsStats(
            self._state("files"),
            self._state("bytes"),
            tuple((str(n), int(b)) for n, b in usage),
            self._state("gc_pending"),
        )
