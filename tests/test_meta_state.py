"""The namespace state machine beyond POSIX naming: durable exactly-once,
open-but-unlinked files and session leases, chunk maps with the GC queue,
statfs counters, readdir cookies, queries."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismfs.errors import InvalidArgument, NotFound, SessionExpired
from prismfs.meta.cluster_tables import decode_record
from prismfs.meta.commands import (
    ROOT_INO,
    ChunkRecord,
    CloseSession,
    CommitChunks,
    ExpireSessions,
    GcDone,
    GetAttr,
    Lookup,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    MoveShards,
    Open,
    OpenSession,
    ReadDir,
    ReencodeChunk,
    Release,
    Rename,
    SetAttr,
    StatFs,
    Unlink,
)
from prismfs.meta.namespace import Namespace
from prismfs.meta.schema import ORPHAN_GRACE_NS
from prismfs.raft.state_machine import client_command
from prismfs.wire.codec import decode_message, encode_message
from test_meta_namespace import Driver


@pytest.fixture
def d() -> Driver:
    return Driver()


REG = stat.S_IFREG | 0o644
SECOND = 1_000_000_000


def rec(tag: str, length: int = 100, nodes: tuple[str, ...] = ("a", "b", "c")) -> ChunkRecord:
    return ChunkRecord(tag.encode(), length, 50, 2, len(nodes), nodes)


def sweep(d: Driver, at_ns: int) -> None:
    """Two of the leader's sweeps a grace apart: inodes with no name and no
    open left are freed (the first sweep only notes them)."""
    d.run(ExpireSessions(at_ns))
    d.run(ExpireSessions(at_ns + ORPHAN_GRACE_NS))


def make_file(d: Driver, name: bytes = b"f", **kw: object) -> int:
    attr = d.run(Mknod(1, ROOT_INO, name, REG, 0, 0, **kw))  # type: ignore[arg-type]
    assert attr is not None
    return attr.ino


# --- exactly-once, durable ---------------------------------------------------------------


def test_retried_client_command_applies_once_and_returns_the_first_result(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta.db"
    ns = Namespace(path)
    create = client_command("c1", 1, encode_message(Mknod(1, ROOT_INO, b"x", REG, 0, 0)))
    first = ns.apply(1, create)
    assert isinstance(decode_message(first), MetaOk)
    ns.db.close()
    ns = Namespace(path)  # a restart in between: the dedup table is in the database
    again = ns.apply(2, create)  # the same (client, seq) committed a second time
    assert again == first  # not EEXIST: the first answer
    assert ns.duplicates == 1
    assert len(ns.readdir(ROOT_INO)) == 1
    other = client_command("c1", 2, encode_message(Mknod(1, ROOT_INO, b"x", REG, 0, 0)))
    failed = decode_message(ns.apply(3, other))
    assert isinstance(failed, MetaFailed) and failed.code == "already_exists"


def test_entries_at_or_below_the_applied_index_are_skipped(tmp_path: Path) -> None:
    ns = Namespace(tmp_path / "meta.db")
    ns.apply(1, encode_message(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0)))
    digest = ns.digest()
    assert ns.apply(1, encode_message(Mkdir(1, ROOT_INO, b"e", 0o755, 0, 0))) == b""
    assert ns.digest() == digest and ns.applied == 1


# --- open-but-unlinked files and sessions ---------------------------------------------------


def test_unlinked_open_file_stays_until_released(d: Driver) -> None:
    d.run(OpenSession(0, "s1", 60 * SECOND))
    ino = make_file(d, session="s1")  # create + open in one entry
    d.run(CommitChunks(2, ino, ((0, rec("c0")),), 100))
    d.run(Unlink(3, ROOT_INO, b"f"))
    assert d.ns.getattr(ino).nlink == 0  # still readable by the holder
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"c0"
    with pytest.raises(NotFound):
        d.ns.lookup(ROOT_INO, b"f")
    assert d.ns.statfs().files == 2 and d.ns.gc_pending() == []
    d.run(Release(4, "s1", ino))
    assert d.ns.getattr(ino).nlink == 0 and d.ns.orphans() == 1  # a grace for lazy opens
    sweep(d, 100 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(ino)
    assert d.ns.orphans() == 0
    assert [r.id for _, r in d.ns.gc_pending()] == [b"c0"]
    assert d.ns.statfs().files == 1 and d.ns.statfs().bytes == 0


def test_a_new_leaders_first_sweep_starts_every_orphans_grace_again(d: Driver) -> None:
    # An open a mount read but could not register while there was no leader
    # must still find its inode after the election.
    d.run(OpenSession(0, "s1", 60 * SECOND))
    ino = make_file(d)
    d.run(Unlink(1, ROOT_INO, b"f"))
    d.run(ExpireSessions(100 * SECOND))  # the old leader's sweep sees it first
    d.run(ExpireSessions(110 * SECOND, new_leader=True))  # long after: a grace again
    assert d.ns.orphans() == 1 and d.ns.getattr(ino).nlink == 0
    d.run(Open(111 * SECOND, "s1", ino))  # the queued open lands: kept while open
    d.run(ExpireSessions(120 * SECOND))
    assert d.ns.getattr(ino).nlink == 0
    d.run(Release(121 * SECOND, "s1", ino))
    sweep(d, 130 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(ino)
    # Without the new leader's flag, the same gap frees it at once.
    ino = make_file(d, b"g")
    d.run(Unlink(200 * SECOND, ROOT_INO, b"g"))
    d.run(ExpireSessions(200 * SECOND))
    d.run(ExpireSessions(210 * SECOND))
    with pytest.raises(NotFound):
        d.ns.getattr(ino)


def test_two_opens_need_two_releases(d: Driver) -> None:
    d.run(OpenSession(0, "s1", 60 * SECOND))
    ino = make_file(d)
    d.run(Open(1, "s1", ino))
    d.run(Open(1, "s1", ino))
    d.run(Unlink(2, ROOT_INO, b"f"))
    d.run(Release(3, "s1", ino))
    assert d.ns.getattr(ino).nlink == 0
    d.run(Release(3, "s1", ino))
    sweep(d, 100 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(ino)
    d.run(Release(3, "s1", ino))  # a retried release changes nothing


def test_expired_session_releases_its_files(d: Driver) -> None:
    d.run(OpenSession(0, "crashed", 10 * SECOND))
    d.run(OpenSession(0, "alive", 10 * SECOND))
    a = make_file(d, b"a", session="crashed")
    b = make_file(d, b"b", session="alive")
    d.run(Unlink(1, ROOT_INO, b"a"))
    d.run(Unlink(1, ROOT_INO, b"b"))
    d.run(ExpireSessions(9 * SECOND))  # the leader names no session: nothing ends
    assert d.ns.getattr(a).nlink == 0
    d.run(ExpireSessions(11 * SECOND, ("crashed",)))  # its lease ran out on the leader's clock
    sweep(d, 11 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(a)
    assert d.ns.getattr(b).nlink == 0  # the other session keeps its file
    with pytest.raises(SessionExpired):
        d.run(Open(12 * SECOND, "crashed", b))
    d.run(CloseSession(13 * SECOND, "alive"))
    sweep(d, 14 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(b)
    assert [s for s, _ in d.ns.session_leases()] == []


def test_a_session_end_forgets_the_lanes_of_that_session_only(d: Driver) -> None:
    """The exactly-once rows of an ended session's lanes ("<session>/<n>") go
    (a range of the key, no scan), and no others: not those of sessions whose
    names sort right next to it."""
    names = ("a", "a.", "a0", "ab")
    for s in names:
        d.run(OpenSession(0, s, 60 * SECOND))
        d.index += 1
        renew = encode_message(OpenSession(0, s, 60 * SECOND))
        d.ns.apply(d.index, client_command(f"{s}/1", 1, renew))

    def lanes() -> list[str]:
        return [str(r[0]) for r in d.ns.db.execute("SELECT client FROM clients ORDER BY client")]

    assert lanes() == sorted(f"{s}/1" for s in names)
    d.run(CloseSession(1, "a"))
    assert lanes() == ["a./1", "a0/1", "ab/1"]


def tables_scanned(ns: Namespace, action: Callable[[], object]) -> set[str]:
    """The tables SQLite reads whole (``SCAN``, per EXPLAIN QUERY PLAN) in the
    statements ``action`` runs."""
    statements: list[str] = []
    ns.db.set_trace_callback(statements.append)
    try:
        action()
    finally:
        ns.db.set_trace_callback(None)
    scanned = set()
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            continue
        for row in ns.db.execute("EXPLAIN QUERY PLAN " + sql, [None] * sql.count("?")):
            if str(row[3]).startswith("SCAN "):
                scanned.add(str(row[3]).removeprefix("SCAN "))  # "t" or "t USING INDEX i"
    return scanned


def test_closes_session_ends_and_statfs_read_no_whole_table(d: Driver) -> None:
    """Apply work follows the change, not the size of the tables: a release,
    a session's end and statfs read no table whole (each did: every open file
    of every session, every lane, the whole GC queue)."""
    d.run(OpenSession(0, "s1", 60 * SECOND))
    d.run(OpenSession(0, "s2", 60 * SECOND))
    ino = make_file(d)
    d.run(Open(1, "s1", ino))
    d.run(Open(1, "s2", ino))
    d.run(CommitChunks(2, ino, ((0, rec("a0", 100)),), 100))
    d.run(CommitChunks(3, ino, ((0, rec("b0", 100)),), 100))  # a0 goes to the GC queue
    assert tables_scanned(d.ns, lambda: d.run(Release(4, "s1", ino))) == set()
    assert tables_scanned(d.ns, lambda: d.run(CloseSession(5, "s2"))) == set()
    # (the orphan sweep reads its own table: unlinked files still open, its work)
    assert tables_scanned(d.ns, lambda: d.run(ExpireSessions(6, ("s1",)))) <= {"orphans"}
    assert tables_scanned(d.ns, d.ns.statfs) == {"node_usage"}  # a row per node: the answer
    # Repair's and the health view's reads: the shards of the nodes asked
    # about (an index), and the chunks written with a reduced layout (a
    # partial index of those only).
    assert tables_scanned(d.ns, lambda: list(d.ns.iter_chunks_on({"a"}))) == set()
    reduced_only = {"chunks USING INDEX chunks_reduced"}
    assert tables_scanned(d.ns, lambda: d.ns.chunk_health({"a"})) == reduced_only
    assert d.ns.statfs().gc_pending == 1


def test_open_needs_a_live_session(d: Driver) -> None:
    ino = make_file(d)
    with pytest.raises(SessionExpired):
        d.run(Open(1, "nobody", ino))
    d.run(OpenSession(0, "s", SECOND))
    d.run(Open(10**12, "s", ino))  # the time stamps of commands play no part in leases
    d.run(ExpireSessions(0, ("s",)))
    with pytest.raises(SessionExpired):
        d.run(Open(2, "s", ino))
    with pytest.raises(InvalidArgument):
        d.run(OpenSession(0, "", SECOND))
    with pytest.raises(InvalidArgument):
        d.run(OpenSession(0, "a/b", SECOND))  # lanes are "<session>/<n>"
    with pytest.raises(InvalidArgument):
        d.run(OpenSession(0, "t", SECOND // 2))  # a lease of at least a second


def test_renewing_an_ended_session_is_refused_and_its_id_never_restarts(d: Driver) -> None:
    d.run(OpenSession(0, "s", 10 * SECOND))
    d.run(OpenSession(0, "s", 10 * SECOND, renew=True))
    d.run(ExpireSessions(5 * SECOND, ("s",)))
    with pytest.raises(SessionExpired, match="ended"):
        d.run(OpenSession(0, "s", 10 * SECOND, renew=True))  # the client learns it
    with pytest.raises(SessionExpired):
        d.run(OpenSession(0, "s", 10 * SECOND))  # and cannot bring the id back
    with pytest.raises(SessionExpired):
        d.run(OpenSession(0, "never-started", 10 * SECOND, renew=True))


def test_a_retry_from_an_ended_session_is_refused_never_applied_twice(d: Driver) -> None:
    """The reply of a CommitChunks is lost; the session's lease runs out (its
    exactly-once rows go with it); the retry of the same (lane, seq) arrives:
    it must not apply again, and the live chunk must not reach the GC queue."""
    d.run(OpenSession(0, "m", 60 * SECOND))
    ino = make_file(d, session="m")

    def lane(seq: int, command: CommitChunks) -> MetaFailed | MetaOk:
        d.index += 1
        out = decode_message(
            d.ns.apply(d.index, client_command("m/2", seq, encode_message(command)))
        )
        assert isinstance(out, (MetaFailed, MetaOk))
        return out

    commit = CommitChunks(5 * SECOND, ino, ((0, rec("live")),), 100)
    assert isinstance(lane(7, commit), MetaOk)  # applied; the client never hears back
    d.run(ExpireSessions(65 * SECOND, ("m",)))
    refused = lane(7, commit)  # the client's retry, same lane and sequence
    assert isinstance(refused, MetaFailed) and refused.code == "session_expired"
    assert d.ns.gc_pending() == []
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"live"
    later = lane(8, CommitChunks(6 * SECOND, ino, ((0, rec("new")),), 100))
    assert isinstance(later, MetaFailed)  # any later command of that session too
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"live"


def test_ended_sessions_are_forgotten_after_a_day_of_the_leaders_clock(d: Driver) -> None:
    day = 86_400 * SECOND
    d.run(OpenSession(0, "old", 10 * SECOND))
    d.run(ExpireSessions(1000 * SECOND, ("old",)))
    d.run(ExpireSessions(1000 * SECOND + day - SECOND))
    assert d.ns.db.execute("SELECT count(*) FROM ended_sessions").fetchone()[0] == 1
    d.run(ExpireSessions(1000 * SECOND + day + SECOND))
    assert d.ns.db.execute("SELECT count(*) FROM ended_sessions").fetchone()[0] == 0


def test_committing_the_chunk_already_stored_queues_nothing(d: Driver) -> None:
    ino = make_file(d)
    commit = CommitChunks(1, ino, ((0, rec("same")),), 100)
    d.run(commit)
    d.run(commit)  # e.g. a command delivered twice outside exactly-once
    assert d.ns.gc_pending() == []
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"same"


def test_an_older_database_is_migrated(tmp_path: Path) -> None:
    """A data directory of schema 1 (leases as wall-clock expiry times) opens."""
    import sqlite3

    path = tmp_path / "old.db"
    ns = Namespace(path)
    ns.db.execute("DROP TABLE sessions")
    ns.db.execute("CREATE TABLE sessions (session TEXT PRIMARY KEY, expires_ns INTEGER NOT NULL)")
    ns.db.execute("DROP INDEX chunks_reduced")
    ns.db.execute("ALTER TABLE chunks DROP COLUMN reduced")
    ns.db.execute("INSERT INTO sessions VALUES ('s', 123)")
    ns.db.execute("UPDATE state SET value = 1 WHERE key = 'schema'")
    ns.db.execute("DELETE FROM state WHERE key = 'clock_ns'")
    ns.db.execute("DELETE FROM state WHERE key = 'gc_pending'")  # counted by schema 5
    ns.db.execute("ALTER TABLE nodes DROP COLUMN state_ns")  # schema 7
    ns.db.execute("ALTER TABLE nodes DROP COLUMN voting")  # schema 9
    for seq in (1, 2):
        ns.db.execute("INSERT INTO gc VALUES (?, x'00', x'00')", (seq,))
    ns.db.close()
    migrated = Namespace(path)
    assert migrated.statfs().gc_pending == 2
    assert migrated.nodes() == []  # read with the column schema 7 added
    assert migrated.session_leases() == [("s", 60 * SECOND)]
    assert migrated.db.execute("SELECT value FROM state WHERE key = 'schema'").fetchone()[0] >= 2
    with pytest.raises(sqlite3.OperationalError):
        migrated.db.execute("SELECT expires_ns FROM sessions")
    assert migrated.reduced_count() == 0


# --- chunk maps, truncate, GC, statfs ------------------------------------------------------


def test_commit_chunks_replaces_and_queues_the_old_ones(d: Driver) -> None:
    ino = make_file(d, chunk_size=4096)
    d.run(CommitChunks(5, ino, ((0, rec("a0", 4096)), (1, rec("a1", 904))), 5000))
    attr = d.ns.getattr(ino)
    assert attr.size == 5000 and attr.mtime_ns == 5
    d.run(CommitChunks(6, ino, ((1, rec("b1", 1000)),), 5096))
    cmap = d.ns.chunk_map(ino)
    assert cmap.chunk_size == 4096 and cmap.size == 5096
    assert [(i, r.id) for i, r in cmap.chunks] == [(0, b"a0"), (1, b"b1")]
    assert [r.id for _, r in d.ns.gc_pending()] == [b"a1"]
    stats = d.ns.statfs()
    assert stats.bytes == 5096 and stats.gc_pending == 1
    assert dict(stats.node_usage) == {"a": 150, "b": 150, "c": 150}  # 3 records of 50 each
    ((seq, _),) = d.ns.gc_pending()
    d.run(GcDone(7, (seq,)))
    d.run(GcDone(7, (seq,)))  # retried: harmless
    assert dict(d.ns.statfs().node_usage) == {"a": 100, "b": 100, "c": 100}
    assert d.ns.gc_pending() == []
    assert d.ns.statfs().gc_pending == 0  # a counter kept in apply: not below 0 on the retry


def test_commit_chunks_refuses_bad_input_and_changes_nothing(d: Driver) -> None:
    ino = make_file(d, chunk_size=4096)
    before = (d.ns.getattr(ino), d.ns.statfs())
    bad = [
        CommitChunks(1, ino, ((2, rec("x")),), 5000),  # chunk 2 starts past 5000
        CommitChunks(1, ino, ((0, rec("x")), (0, rec("y"))), 100),  # twice
        CommitChunks(1, ino, ((0, rec("x", 5000)),), 100),  # longer than a chunk
        CommitChunks(1, ino, ((0, rec("x", nodes=("a",))),), 100),  # m = 1 < k = 2
        CommitChunks(1, ROOT_INO, (), 0),  # a directory
        CommitChunks(1, 999, (), 0),  # no such inode
    ]
    for command in bad:
        assert d.errno_of(command) != 0, command
    assert (d.ns.getattr(ino), d.ns.statfs()) == before
    assert d.ns.chunk_map(ino).chunks == () and d.ns.gc_pending() == []


def test_truncate_drops_and_shortens_chunks(d: Driver) -> None:
    ino = make_file(d, chunk_size=4096)
    chunks = tuple((i, rec(f"c{i}", 4096)) for i in range(3))
    d.run(CommitChunks(1, ino, chunks, 3 * 4096))
    d.run(SetAttr(2, ino, size=4096 + 10))
    cmap = d.ns.chunk_map(ino)
    assert [(i, r.id, r.length) for i, r in cmap.chunks] == [(0, b"c0", 4096), (1, b"c1", 10)]
    assert [r.id for _, r in d.ns.gc_pending()] == [b"c2"]
    assert d.ns.statfs().bytes == 4096 + 10
    d.run(SetAttr(3, ino, size=1 << 20))  # growing makes a hole, no chunks
    assert len(d.ns.chunk_map(ino).chunks) == 2 and d.ns.statfs().bytes == 1 << 20
    d.run(SetAttr(4, ino, size=0))
    assert d.ns.chunk_map(ino).chunks == () and len(d.ns.gc_pending()) == 3


def test_statfs_counts_files_and_bytes(d: Driver) -> None:
    assert d.ns.statfs().files == 1  # the root
    d.run(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0))
    ino = make_file(d)
    d.run(SetAttr(2, ino, size=123))
    assert (d.ns.statfs().files, d.ns.statfs().bytes) == (3, 123)
    d.run(Unlink(3, ROOT_INO, b"f"))
    sweep(d, 10 * SECOND)
    assert (d.ns.statfs().files, d.ns.statfs().bytes) == (2, 0)


def test_an_unlinked_inode_waits_a_grace_for_opens_still_on_their_way(d: Driver) -> None:
    """A mount registers the open of an existing file in its next batch: an
    unlink by another mount meanwhile must not free the inode under it."""
    d.run(OpenSession(0, "s1", 60 * SECOND))
    ino = make_file(d)
    d.run(CommitChunks(1, ino, ((0, rec("c0")),), 100))
    d.run(Unlink(2, ROOT_INO, b"f"))
    d.run(ExpireSessions(10 * SECOND))  # a sweep notes it
    d.run(ExpireSessions(10 * SECOND + ORPHAN_GRACE_NS - 1))  # not a grace yet
    assert d.ns.getattr(ino).nlink == 0 and d.ns.gc_pending() == []
    d.run(Open(3, "s1", ino))  # the late open: the inode is held again
    sweep(d, 20 * SECOND)
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"c0" and d.ns.orphans() == 0
    d.run(Release(4, "s1", ino))
    sweep(d, 30 * SECOND)
    with pytest.raises(NotFound):
        d.ns.getattr(ino)
    assert [r.id for _, r in d.ns.gc_pending()] == [b"c0"]


# --- readdir cookies ------------------------------------------------------------------------


def test_readdir_continues_across_concurrent_changes(d: Driver) -> None:
    for i in range(100):
        d.run(Mknod(1, ROOT_INO, f"f{i:03d}".encode(), REG, 0, 0))
    seen: list[bytes] = []
    cookie = 0
    step = 0
    while True:
        page = d.ns.readdir_page(ROOT_INO, cookie, 7)
        seen += [e.name for e in page.entries]
        if page.entries:
            cookie = page.entries[-1].cookie
        # Meanwhile others create, delete and rename entries.
        step += 1
        d.run(Mknod(2, ROOT_INO, f"new{step}".encode(), REG, 0, 0))
        if step < 50:
            d.run(Unlink(2, ROOT_INO, f"f{99 - step:03d}".encode()))
        if not page.more:
            break
    untouched = {f"f{i:03d}".encode() for i in range(50)}
    assert untouched <= set(seen)  # every entry present throughout is listed ...
    assert len(seen) == len(set(seen))  # ... and nothing twice


def test_renamed_entry_is_listed_at_most_once(d: Driver) -> None:
    for name in (b"a", b"b", b"c"):
        d.run(Mknod(1, ROOT_INO, name, REG, 0, 0))
    first = d.ns.readdir(ROOT_INO, 0, 2)
    assert [e.name for e in first] == [b"a", b"b"]
    d.run(Rename(2, ROOT_INO, b"a", ROOT_INO, b"z"))  # already listed as "a"
    rest = d.ns.readdir(ROOT_INO, first[-1].cookie, 10)
    assert [e.name for e in rest] == [b"c", b"z"]  # at its new place, the move is new


def test_readdir_pages(d: Driver) -> None:
    for i in range(25):
        d.run(Mknod(1, ROOT_INO, f"{i}".encode(), REG, 0, 0))
    page = d.ns.readdir_page(ROOT_INO, 0, 10)
    assert len(page.entries) == 10 and page.more
    last = d.ns.readdir_page(ROOT_INO, d.ns.readdir(ROOT_INO, 0, 20)[-1].cookie, 10)
    assert len(last.entries) == 5 and not last.more


# --- queries ---------------------------------------------------------------------------------


def test_queries_answer_and_report_errors(d: Driver) -> None:
    ino = make_file(d)
    ok = decode_message(d.ns.query(encode_message(Lookup(ROOT_INO, b"f"))))
    assert isinstance(ok, MetaOk) and ok.attr is not None and ok.attr.ino == ino
    missing = decode_message(d.ns.query(encode_message(GetAttr(999))))
    assert isinstance(missing, MetaFailed) and missing.code == "not_found"
    notdir = decode_message(d.ns.query(encode_message(ReadDir(ino))))
    assert isinstance(notdir, MetaFailed) and notdir.code == "not_a_directory"
    stats = decode_message(d.ns.query(encode_message(StatFs())))
    assert stats.files == 2  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument):
        d.ns.query(encode_message(Mkdir(1, ROOT_INO, b"x", 0o755, 0, 0)))  # not a query


def test_snapshot_of_a_wal_database_restores_anywhere(tmp_path: Path) -> None:
    source = Driver(Namespace(tmp_path / "a.db"))
    ino = make_file(source)
    source.run(CommitChunks(1, ino, ((0, rec("x")),), 100))
    image = source.ns.snapshot()
    for target in (Namespace(), Namespace(tmp_path / "b.db")):
        target.restore(image)
        assert target.digest() == source.ns.digest()


def test_a_file_snapshot_is_consistent_while_apply_goes_on(tmp_path: Path) -> None:
    """`snapshot_to` copies the database from a thread of its own while the
    replica keeps applying: the copy is the state at the applied index it
    names (replaying the rest of the log onto it gives the live database),
    and `restore_file` brings it back."""
    import threading

    source = Driver(Namespace(tmp_path / "a.db"))
    for n in range(300):
        make_file(source, f"f{n}".encode())
    history: dict[int, str] = {}
    made: list[int | None] = []
    done = threading.Event()

    def copy() -> None:
        # One page a step: the copy spans many of the writes below.
        made.append(source.ns.snapshot_to(tmp_path / "copy.db", step_bytes=1))
        done.set()

    thread = threading.Thread(target=copy)
    n = 0
    history[source.ns.applied] = source.ns.digest()
    thread.start()
    while not done.is_set() or n < 50:
        make_file(source, f"g{n}".encode())
        history[source.ns.applied] = source.ns.digest()
        n += 1
    thread.join()
    index = made[0]
    assert index is not None
    target = Namespace(tmp_path / "b.db")
    target.check_image(tmp_path / "copy.db")
    target.restore_file(tmp_path / "copy.db")
    assert target.applied == index
    # The copy is exactly the state at its index, before or during the writes.
    assert target.digest() == history[index]
    assert Namespace().snapshot_to(tmp_path / "none.db") is None  # no file: in memory


def test_a_file_snapshot_is_paced_and_a_plain_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``mb_per_s``, the copy sleeps between steps so that the whole
    takes about size / rate; each step is flushed. The image is a plain
    (rollback-journal) database, opened read-only without side files."""
    import sqlite3

    from prismfs.meta import namespace

    source = Driver(Namespace(tmp_path / "a.db"))
    for n in range(400):
        make_file(source, f"f{n}".encode() * 20)
    slept: list[float] = []
    synced: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(namespace.time, "sleep", slept.append)

    def counting_fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(namespace.os, "fdatasync", counting_fdatasync)
    rate = 0.5  # MB/s
    assert source.ns.snapshot_to(tmp_path / "copy.db", mb_per_s=rate, step_bytes=16384) == (
        source.ns.applied
    )
    size = (tmp_path / "copy.db").stat().st_size
    steps = -(-size // 16384)
    assert len(synced) == steps
    # The sleeps here return at once, so each asks for all the time due so
    # far: the last one is about the whole copy at the rate.
    assert slept == sorted(slept)
    assert size / (rate * 1e6) * 0.8 <= slept[-1] <= size / (rate * 1e6)
    monkeypatch.undo()
    copy = sqlite3.connect(f"file:{tmp_path / 'copy.db'}?mode=ro", uri=True)
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        copy.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.db"]


def test_a_damaged_snapshot_file_is_refused_before_it_replaces_anything(tmp_path: Path) -> None:
    from prismfs.errors import LogCorrupt

    source = Driver(Namespace(tmp_path / "a.db"))
    for n in range(200):
        make_file(source, f"f{n}".encode())
    assert source.ns.snapshot_to(tmp_path / "copy.db") == source.ns.applied
    image = (tmp_path / "copy.db").read_bytes()
    target = Namespace(tmp_path / "b.db")
    page = 4096
    for at in (page, len(image) // page // 2 * page):
        bad = bytearray(image)
        bad[at : at + page] = os.urandom(page)
        (tmp_path / "bad.db").write_bytes(bad)
        with pytest.raises(LogCorrupt):
            target.check_image(tmp_path / "bad.db")
    (tmp_path / "bad.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(LogCorrupt):
        target.check_image(tmp_path / "bad.db")
    target.restore_file(tmp_path / "copy.db")
    assert target.digest() == source.ns.digest()


def test_cluster_counts_are_read_on_a_connection_of_their_own(tmp_path: Path) -> None:
    """`reader` gives the health and shard counts from a read-only connection
    that a worker thread may use while the loop's connection is in the middle
    of a batch: it sees what is committed, never half a batch."""
    import threading

    d = Driver(Namespace(tmp_path / "a.db"))
    for n in range(20):
        ino = make_file(d, f"f{n}".encode())
        nodes = ("a", "b", "c") if n % 2 else ("a", "c", "d")
        d.run(CommitChunks(2, ino, ((0, rec(f"c{n}", nodes=nodes)),), 100))
    committed = (d.ns.chunk_health({"b"}), d.ns.shards_per_node())
    assert committed == ((20, 10, 10, 0), {"a": 20, "b": 10, "c": 20, "d": 10})
    seen: list[object] = []

    def read() -> None:
        with d.ns.reader() as view:
            assert view is not d.ns and view.db is not d.ns.db
            seen.append((view.chunk_health({"b"}), view.shards_per_node()))

    with d.ns.batch():
        ino = make_file(d, b"in-the-batch")
        d.run(CommitChunks(2, ino, ((0, rec("new", nodes=("b", "e", "f"))),), 100))
        assert d.ns.shards_per_node()["b"] == 11  # the loop's connection sees its batch
        thread = threading.Thread(target=read)
        thread.start()
        thread.join(10)
    assert seen == [committed]
    with d.ns.reader() as view:
        assert view.chunk_health({"b"}) == (21, 10, 11, 0)
    with Namespace().reader() as same:  # no file: the database itself, on the loop
        assert isinstance(same, Namespace)


def test_batched_apply_equals_one_by_one(tmp_path: Path) -> None:
    """The driver applies a Ready's entries in one transaction: refused
    entries and undecodable ones undo only themselves, and the result is
    the state that applying them one by one gives."""
    commands = [
        encode_message(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0)),
        encode_message(Mknod(2, ROOT_INO, b"d", REG, 0, 0)),  # EEXIST
        encode_message(Mknod(3, ROOT_INO, b"f", REG, 0, 0)),
        encode_message(GcDone(4, ())),
        client_command("c", 1, encode_message(Unlink(5, ROOT_INO, b"f"))),
        client_command("c", 1, encode_message(Unlink(5, ROOT_INO, b"f"))),  # retry
        encode_message(Unlink(6, ROOT_INO, b"nope")),  # ENOENT
    ]
    one = Namespace()
    expected = [one.apply(i, c) for i, c in enumerate(commands, 1)]
    batched = Namespace(tmp_path / "b.db")
    with batched.batch():
        got = [batched.apply(i, c) for i, c in enumerate(commands, 1)]
        # Not a command: refused alike on every replica, the applied index moves on.
        refused = decode_message(batched.apply(len(commands) + 1, encode_message(GetAttr(1))))
    assert isinstance(refused, MetaFailed) and refused.code == "invalid_argument"
    assert got == expected
    assert batched.applied == len(commands) + 1
    one.apply(len(commands) + 1, encode_message(GcDone(9, ())))  # only the index differs
    batched.apply(len(commands) + 1, encode_message(GcDone(9, ())))
    assert batched.digest() == one.digest()


def test_batch_is_all_or_nothing_on_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    ns = Namespace(path)
    ns.apply(1, encode_message(Mkdir(1, ROOT_INO, b"kept", 0o755, 0, 0)))
    with pytest.raises(KeyboardInterrupt), ns.batch():
        ns.apply(2, encode_message(Mkdir(2, ROOT_INO, b"lost", 0o755, 0, 0)))
        raise KeyboardInterrupt  # the process dies mid-batch
    ns.db.close()
    again = Namespace(path)
    assert again.applied == 1
    assert [e.name for e in again.readdir(ROOT_INO)] == [b"kept"]


def test_crash_then_replay_of_the_whole_log_gives_the_same_digest(tmp_path: Path) -> None:
    """A node dies with a batch half applied; on restart Raft feeds it the log
    again from its snapshot: what the database holds is skipped, the rest is
    applied, and the state is the one of a node that never crashed."""
    from test_meta_namespace import _random_workload

    log = [encode_message(c) for c in _random_workload(21, 300)]
    steady = Namespace()
    for i, command in enumerate(log, 1):
        steady.apply(i, command)
    path = tmp_path / "meta.db"
    crashed = Namespace(path)
    for i, command in enumerate(log[:120], 1):
        crashed.apply(i, command)
    with pytest.raises(KeyboardInterrupt), crashed.batch():
        for i, command in enumerate(log[120:180], 121):
            crashed.apply(i, command)
        raise KeyboardInterrupt
    crashed.db.close()
    restarted = Namespace(path)
    assert restarted.applied == 120
    with restarted.batch():
        for i, command in enumerate(log, 1):  # the whole log again
            restarted.apply(i, command)
    assert restarted.digest() == steady.digest()


def test_node_registry(d: Driver) -> None:
    from prismfs.errors import NotPermitted
    from prismfs.meta.commands import RegisterNode, SetNodeState

    d.run(RegisterNode(5, "n1", "10.0.0.1:7070", "rack-a", 1 << 40))
    d.run(RegisterNode(6, "n2", "10.0.0.2:7070", "rack-b", 1 << 40))
    d.run(SetNodeState(7, "n1", "draining"))
    d.run(RegisterNode(8, "n1", "10.0.0.9:7070", "rack-a", 1 << 41))  # a restart elsewhere
    ino = make_file(d)
    d.run(CommitChunks(9, ino, ((0, rec("c", nodes=("n1", "n2"))),), 100))
    n1, n2 = d.ns.nodes()
    assert (n1.address, n1.state, n1.capacity, n1.registered_ns) == (
        "10.0.0.9:7070",
        "draining",
        1 << 41,
        5,
    )
    assert (n2.zone, n2.state, n2.used) == ("rack-b", "up", 50)
    # When the state last changed: at registration, then at each change (a
    # restart or the same state again keeps it).
    assert (n1.state_ns, n2.state_ns) == (7, 6)
    d.run(SetNodeState(9, "n1", "draining"))
    assert d.ns.nodes()[0].state_ns == 7
    d.run(SetNodeState(10, "n2", "removed"))
    assert d.ns.nodes()[1].state_ns == 10
    with pytest.raises(NotPermitted):
        d.run(RegisterNode(11, "n2", "10.0.0.2:7070"))
    with pytest.raises(NotFound):
        d.run(SetNodeState(12, "n9", "up"))
    # Voting: auto until an administrator pins or excludes it; a restart keeps it.
    from prismfs.errors import InvalidArgument
    from prismfs.meta.commands import SetNodeVoting

    assert [n.voting for n in d.ns.nodes()] == ["auto", "auto"]
    d.run(SetNodeVoting(13, "n1", "pin"))
    d.run(RegisterNode(14, "n1", "10.0.0.9:7070", "rack-a", 1 << 41))
    assert d.ns.nodes()[0].voting == "pin"
    d.run(SetNodeVoting(15, "n1", "never"))
    assert d.ns.nodes()[0].voting == "never"
    with pytest.raises(InvalidArgument):
        d.run(SetNodeVoting(16, "n1", "always"))
    with pytest.raises(NotFound):
        d.run(SetNodeVoting(17, "n9", "pin"))
    assert d.ns.nodes()[0].voting == "never"


def test_a_damaged_snapshot_image_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    from prismfs.errors import LogCorrupt

    source = Driver(Namespace(tmp_path / "a.db"))
    for n in range(200):
        make_file(source, f"f{n}".encode())
    image = bytearray(source.ns.snapshot())
    target = Namespace(tmp_path / "b.db")
    before = target.digest()
    # Random bytes in a record's content are the snapshot checksum's to catch
    # (`raft.durable_log`); what SQLite's check catches is a damaged structure.
    page = 4096
    for at in (0, page, len(image) // page // 2 * page):
        bad = bytearray(image)
        bad[at : at + page] = os.urandom(page)
        with pytest.raises(LogCorrupt):
            target.restore(bytes(bad))
        assert target.digest() == before
    target.restore(bytes(image))
    assert target.digest() == source.ns.digest()


def test_commits_are_conditional_on_the_record_the_writer_read(d: Driver) -> None:
    from prismfs.errors import Conflict

    ino = make_file(d, chunk_size=4096)
    d.run(CommitChunks(1, ino, ((0, rec("a", 100)),), 100, expect=((b"", 0),)))
    with pytest.raises(Conflict):  # a second writer that read "no chunk" loses the race
        d.run(CommitChunks(2, ino, ((0, rec("b", 200)),), 200, expect=((b"", 0),)))
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"a" and d.ns.getattr(ino).size == 100
    d.run(CommitChunks(3, ino, ((0, rec("b", 200)),), 200, expect=((b"a", 100),)))
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"b"
    d.run(SetAttr(4, ino, size=50))  # a truncate shortens the record in place
    with pytest.raises(Conflict):  # so a writer that read its old length must merge
        d.run(CommitChunks(5, ino, ((0, rec("c", 200)),), 200, expect=((b"b", 200),)))
    d.run(CommitChunks(6, ino, ((0, rec("c", 60)),), 60, expect=((b"b", 50),)))
    with pytest.raises(InvalidArgument):
        d.run(CommitChunks(7, ino, ((0, rec("d", 60)),), 60, expect=((b"c", 60), (b"", 0))))


def test_a_commit_never_shortens_the_file(d: Driver) -> None:
    ino = make_file(d, chunk_size=4096)
    d.run(CommitChunks(1, ino, ((0, rec("a", 4096)), (1, rec("b", 4096))), 8192))
    d.run(CommitChunks(2, ino, ((0, rec("c", 4096)),), 1))  # a writer whose view was small
    attr = d.ns.getattr(ino)
    assert attr.size == 8192
    assert [r.id for _, r in d.ns.chunk_map(ino).chunks] == [b"c", b"b"]
    assert [r.id for _, r in d.ns.gc_pending()] == [b"a"]


def test_a_reduced_chunk_is_reencoded_unless_it_changed(d: Driver) -> None:
    from prismfs.meta.commands import ReencodeChunk

    ino = make_file(d, chunk_size=4096)
    small = ChunkRecord(b"r1", 100, 100, 1, 2, ("a", "b"), want_k=2, want_m=3)
    d.run(CommitChunks(1, ino, ((0, small),), 100))
    assert small.reduced and small.layout == (2, 3)
    assert d.ns.reduced_count() == 1 and d.ns.reduced_chunks()[0].id == b"r1"
    total, healthy, degraded, _ = d.ns.chunk_health(set())
    assert (total, healthy, degraded) == (1, 0, 1)  # below its layout: degraded
    full = ChunkRecord(b"f1", 100, 50, 2, 3, ("a", "b", "c"))
    with pytest.raises(NotFound):  # the file replaced it meanwhile
        d.run(ReencodeChunk(2, b"gone", full))
    with pytest.raises(NotFound):  # not the same bytes
        d.run(ReencodeChunk(2, b"r1", msgspec.structs.replace(full, length=99)))
    d.run(ReencodeChunk(3, b"r1", full))
    assert d.ns.chunk_map(ino).chunks[0][1].id == b"f1"
    assert d.ns.reduced_count() == 0
    assert [r.id for _, r in d.ns.gc_pending()] == [b"r1"]
    assert d.ns.chunk_health(set())[1] == 1


def test_checkpoints_run_beside_the_writer_not_inside_commits(tmp_path: Path) -> None:
    """The WAL only grows while entries apply (no checkpoint inside a commit);
    `checkpoint` (the node runs it in a worker thread) copies it into the
    database, and the next commit starts the WAL over."""
    ns = Namespace(tmp_path / "ns.db")
    for i in range(300):
        ns.apply(i + 1, encode_message(Mkdir(i, ROOT_INO, f"d{i}".encode(), 0o755, 0, 0)))
    grown = ns.wal_bytes()
    assert grown > 1_000_000  # past SQLite's own autocheckpoint point: none ran
    ns.checkpoint()
    ns.apply(301, encode_message(Mkdir(301, ROOT_INO, b"after", 0o755, 0, 0)))
    ns.apply(302, encode_message(Mkdir(302, ROOT_INO, b"after2", 0o755, 0, 0)))
    assert ns.wal_bytes() == grown  # the file stays, its frames are reused from the start
    again = Namespace(tmp_path / "ns.db")  # everything reads back
    assert again.lookup(ROOT_INO, b"d299").ino and again.lookup(ROOT_INO, b"after2").ino


# --- the shards index against a full scan ----------------------------------------------------


NODE_NAMES = ("n1", "n2", "n3", "n4", "n5")


class ShardIndexMachine(RuleBasedStateMachine):
    """Random commits (with shards never stored, inline chunks, reduced
    layouts), moves, re-encodings, truncates and deletes: the index of shards
    by node and the count of chunks with shards always agree with decoding
    every record, as repair, drains and the health view read them."""

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.files: list[bytes] = []
        self.ids = itertools.count(1)
        self.clock = itertools.count(10)

    def _record(self, data: st.DataObject, chunk_id: bytes) -> ChunkRecord:
        if data.draw(st.integers(0, 5)) == 0:
            return ChunkRecord(chunk_id, 3, 0, 0, 0, (), inline=b"abc")
        k, m = data.draw(st.sampled_from([(1, 2), (2, 3), (3, 5)]))
        nodes = data.draw(st.permutations(NODE_NAMES))[:m]
        holes = data.draw(st.sets(st.integers(0, m - 1), max_size=1))
        nodes = tuple("" if i in holes else n for i, n in enumerate(nodes))
        want = data.draw(st.sampled_from([(0, 0), (k, m), (2, 3)]))
        return ChunkRecord(chunk_id, 100, 50, k, m, nodes, want_k=want[0], want_m=want[1])

    def _rows(self) -> list[tuple[int, int, ChunkRecord]]:
        rows = self.d.ns.db.execute("SELECT ino, idx, record FROM chunks").fetchall()
        return [(int(i), int(x), decode_record(b)) for i, x, b in rows]

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        if not self.files or data.draw(st.booleans()):
            name = f"f{next(self.ids)}".encode()
            self.d.run(Mknod(1, ROOT_INO, name, REG, 0, 0, chunk_size=4096))
            self.files.append(name)
        name = data.draw(st.sampled_from(self.files))
        ino = self.d.ns.lookup(ROOT_INO, name).ino
        idx = data.draw(st.integers(0, 3))
        record = self._record(data, next(self.ids).to_bytes(16, "big"))
        self.d.run(CommitChunks(next(self.clock), ino, ((idx, record),), idx * 4096 + 100))

    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        coded = [r for _, _, r in self._rows() if not r.is_inline]
        if not coded:
            return
        r = data.draw(st.sampled_from(coded))
        free = [n for n in NODE_NAMES if n not in r.nodes]
        if not free:
            return
        i = data.draw(st.integers(0, r.m - 1))
        self.d.run(MoveShards(next(self.clock), r.id, ((i, r.nodes[i], free[0]),)))

    @rule(data=st.data())
    def reencode(self, data: st.DataObject) -> None:
        rows = self._rows()
        if not rows:
            return
        _, _, old = data.draw(st.sampled_from(rows))
        new = self._record(data, next(self.ids).to_bytes(16, "big"))
        if new.is_inline:
            return
        new = msgspec.structs.replace(new, length=old.length)
        self.d.run(ReencodeChunk(next(self.clock), old.id, new))

    @rule(data=st.data())
    def truncate_or_delete(self, data: st.DataObject) -> None:
        if not self.files:
            return
        name = data.draw(st.sampled_from(self.files))
        if data.draw(st.booleans()):
            ino = self.d.ns.lookup(ROOT_INO, name).ino
            self.d.run(SetAttr(next(self.clock), ino, size=data.draw(st.integers(0, 4 * 4096))))
        else:
            self.d.run(Unlink(next(self.clock), ROOT_INO, name))
            self.files.remove(name)

    @invariant()
    def index_agrees_with_a_full_scan(self) -> None:
        rows = self._rows()
        coded = [(i, x, r) for i, x, r in rows if not r.is_inline]
        per_node: dict[str, int] = {}
        for _, _, r in coded:
            for n in filter(None, r.nodes):
                per_node[n] = per_node.get(n, 0) + 1
        assert self.d.ns.shards_per_node() == per_node
        for bad in (set(), {"n1"}, {"n2", "n4"}, set(NODE_NAMES)):
            expect = sorted(r.id for _, _, r in coded if any(not n or n in bad for n in r.nodes))
            assert sorted(r.id for r in self.d.ns.iter_chunks_on(bad)) == expect
            healthy = degraded = unavailable = 0
            for _, _, r in coded:
                live = sum(1 for n in r.nodes if n and n not in bad)
                if live >= r.m and not r.reduced:
                    healthy += 1
                elif live >= r.k:
                    degraded += 1
                else:
                    unavailable += 1
            assert self.d.ns.chunk_health(bad) == (len(coded), healthy, degraded, unavailable)


ShardIndexMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None
)
test_the_shards_index_agrees_with_a_full_scan = ShardIndexMachine.TestCase


def test_a_database_before_the_shards_index_gets_it_built(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    d = Driver(Namespace(path))
    f, g = make_file(d, b"f"), make_file(d, b"g")
    d.run(CommitChunks(2, f, ((0, rec("a0", nodes=("n1", "", "n3"))),), 100))
    d.run(CommitChunks(3, g, ((0, rec("a1", nodes=("n2", "n3", "n1"))),), 100))
    d.ns.db.execute("DROP TABLE shards")
    d.ns.db.execute("DELETE FROM state WHERE key = 'coded_chunks'")
    d.ns.db.execute("UPDATE state SET value = 5 WHERE key = 'schema'")
    d.ns.db.close()
    migrated = Namespace(path)
    assert migrated.shards_per_node() == {"n1": 2, "n2": 1, "n3": 2}
    assert [r.id for r in migrated.iter_chunks_on(set())] == [b"a0"]
    assert migrated.chunk_health({"n2"}) == (2, 0, 2, 0)


def test_a_schema_7_chunk_table_is_rebuilt_and_small_files_take_less_room(tmp_path: Path) -> None:
    """Schema 8 keeps chunk records in a rowid table: a 1 KiB file's inline
    record fits in a page with others (a WITHOUT ROWID table spilled every
    one to an overflow page). A schema 7 database is rebuilt, same contents."""

    def fill(path: Path, old: bool) -> Driver:
        ns = Namespace(path)
        if old:  # the table as schema 7 made it
            ns.db.execute("DROP TABLE chunks")
            ns.db.execute(
                "CREATE TABLE chunks (ino INTEGER NOT NULL, idx INTEGER NOT NULL,"
                " record BLOB NOT NULL, chunk_id BLOB NOT NULL,"
                " reduced INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ino, idx)) WITHOUT ROWID"
            )
            ns.db.execute("CREATE INDEX chunks_by_id ON chunks (chunk_id)")
            ns.db.execute("UPDATE state SET value = 7 WHERE key = 'schema'")
        d = Driver(ns)
        for n in range(500):
            ino = make_file(d, f"f{n}".encode())
            data = bytes([n % 251]) * 1024
            inline = ChunkRecord(f"i{n}".encode(), len(data), 0, 0, 0, (), inline=data)
            d.run(CommitChunks(2, ino, ((0, inline),), len(data)))
        d.ns.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return d

    def pages(d: Driver, table: str) -> int:
        return int(
            d.ns.db.execute(
                "SELECT count(*) FROM dbstat WHERE name = ? OR name LIKE 'sqlite_autoindex_' || ?",
                (table, table + "%"),
            ).fetchone()[0]
        )

    old, new = fill(tmp_path / "old.db", old=True), fill(tmp_path / "new.db", old=False)
    print(f"chunk pages: schema 7 {pages(old, 'chunks')}, schema 8 {pages(new, 'chunks')}")
    assert pages(new, "chunks") * 2 < pages(old, "chunks")
    digest, maps = old.ns.digest(), [old.ns.chunk_map(ino) for ino in range(2, 502)]
    old.ns.db.close()
    migrated = Namespace(tmp_path / "old.db")
    assert not migrated._without_rowid("chunks")
    assert migrated.db.execute("SELECT value FROM state WHERE key = 'schema'").fetchone()[0] >= 8
    assert [migrated.chunk_map(ino) for ino in range(2, 502)] == maps
    # (the digest covers the schema version too; everything else is equal)
    migrated.db.execute("UPDATE state SET value = 7 WHERE key = 'schema'")
    assert migrated.digest() == digest
    assert [r.id for r in migrated.iter_chunks_on(set())] == []  # inline: on no node
    assert migrated.referenced([b"i7", b"nope"]) == [b"i7"]  # chunks_by_id still there
