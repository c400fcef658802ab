"""What a mount promises under faults and with more than one client, on a real
3-node cluster and real mounts: fsyncdir makes deferred creates and unlinks
durable (the mount daemon killed right after loses neither, and SQLite's
rollback-journal commit survives); a mount whose session the cluster ended
says so and fails its open files with ESTALE; two mounts writing one file
lose nothing; another mount's open and fstat see fresh sizes and times; a
reader on one mount keeps reading while another overwrites the file."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from crash_workload import fsync_dir
from fuse_mount import Mount, fuse_available, is_mounted
from prismfs.errors import NotFound
from prismfs.meta.commands import ROOT_INO

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path_factory.mktemp("durability"))
    try:
        m.up()
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def mounts(cluster: Mount) -> Iterator[list[Path]]:
    """Mount points of this test (mounted with `mount_at`), all unmounted after it."""
    points: list[Path] = []
    yield points
    for point in points:
        unmount(point)


def mount_at(cluster: Mount, mounts: list[Path], name: str, options: str = "") -> Path:
    m = Mount(cluster.base, name)
    m.dir = cluster.dir
    point = m.mount(options)
    mounts.append(point)
    return point


def unmount(point: Path) -> None:
    if is_mounted(point):
        subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=30, check=False)
    pidfile = point.with_suffix(".pid")
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def kill_mount(point: Path) -> None:
    """kill -9 of the mount daemon: whatever it had not sent is gone. The
    mount goes with it (auto_unmount), or is left not connected
    (no_auto_unmount)."""
    os.kill(int(point.with_suffix(".pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and is_mounted(point):
        try:
            os.stat(point)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                break
        time.sleep(0.05)
    subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=30, check=False)


def lookup(cluster: Mount, *path: bytes) -> bool:
    """Does ``path`` exist in the cluster (asked beside any mount)?"""

    async def walk(meta) -> bool:  # type: ignore[no-untyped-def]
        ino = ROOT_INO
        try:
            for name in path:
                ino = (await meta.lookup(ino, name)).ino
        except NotFound:
            return False
        return True

    return bool(trio.run(cluster.library, walk))


def wait_gc_done(cluster: Mount, timeout: float = 60) -> None:
    """Until the leader's GC deleted the shards of every replaced chunk."""

    async def pending(meta) -> int:  # type: ignore[no-untyped-def]
        return len((await meta.gc_pending()).entries)

    deadline = time.monotonic() + timeout
    while trio.run(cluster.library, pending):
        assert time.monotonic() < deadline, "GC did not catch up"
        time.sleep(0.5)


# --- fsyncdir ----------------------------------------------------------------------------


def test_fsyncdir_makes_a_deferred_unlink_durable(cluster: Mount, mounts: list[Path]) -> None:
    # settle_s=30: without fsyncdir nothing deferred would reach the cluster in time.
    mnt = mount_at(cluster, mounts, "m-unlink", "settle_s=30")
    (mnt / "u").mkdir()
    (mnt / "u" / "gone").write_bytes(b"x")
    (mnt / "u" / "sub").mkdir()  # settles the create: the unlink below is deferred
    assert lookup(cluster, b"u", b"gone")
    os.unlink(mnt / "u" / "gone")  # deferred (unlinks go in batches)
    fsync_dir(mnt / "u")
    kill_mount(mnt)  # before anything else could send it
    assert not lookup(cluster, b"u", b"gone")


def test_fsyncdir_makes_a_deferred_create_durable(cluster: Mount, mounts: list[Path]) -> None:
    mnt = mount_at(cluster, mounts, "m-create", "settle_s=30")
    (mnt / "c").mkdir()
    fd = os.open(mnt / "c" / "made", os.O_CREAT | os.O_WRONLY, 0o644)  # deferred create
    fsync_dir(mnt / "c")
    kill_mount(mnt)
    with contextlib.suppress(OSError):
        os.close(fd)  # the mount is gone
    assert lookup(cluster, b"c", b"made")


def test_sqlite_rollback_journal_commit_survives_a_mount_crash(
    cluster: Mount, mounts: list[Path]
) -> None:
    """SQLite's DELETE journal commits by unlinking ``-journal``; with
    synchronous=EXTRA it then fsyncs the directory. A crash of the mount daemon
    right after must not bring the journal back (a hot journal would roll the
    committed transaction back at the next open)."""
    mnt = mount_at(cluster, mounts, "m-sqlite", "settle_s=30")
    (mnt / "db").mkdir()
    db = sqlite3.connect(mnt / "db" / "t.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=EXTRA")
    db.execute("CREATE TABLE t (n INTEGER)")
    for n in range(5):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (n,))
        db.execute("COMMIT")
    kill_mount(mnt)
    with contextlib.suppress(sqlite3.Error):
        db.close()
    assert not lookup(cluster, b"db", b"t.sqlite-journal")
    again = mount_at(cluster, mounts, "m-sqlite2")
    reopened = sqlite3.connect(again / "db" / "t.sqlite")
    try:
        rows = reopened.execute("SELECT n FROM t").fetchall()
    finally:
        reopened.close()
    assert rows == [(n,) for n in range(5)]


# --- a mount whose session the cluster ended ----------------------------------------------


def test_a_mount_that_lost_its_session_says_so_and_fails_its_open_files(
    cluster: Mount, mounts: list[Path]
) -> None:
    """The mount daemon is frozen (SIGSTOP, like a suspended VM or a long
    partition) for longer than its lease: the leader ends its session. When it
    runs again it is told, logs it, fails the files it had open with ESTALE,
    and goes on with a new session."""
    mnt = mount_at(cluster, mounts, "m-lost", "lease=2")
    # fsynced: a close alone does not make a new file durable (write-back
    # holds its create back, and a mount frozen past its lease loses it)
    fd = os.open(mnt / "kept", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"k" * 5000)
    os.fsync(fd)
    os.close(fd)
    reader = os.open(mnt / "kept", os.O_RDONLY)
    writer = os.open(mnt / "w", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(writer, b"buffered, never committed")
    pid = int(mnt.with_suffix(".pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(12)  # 2 s lease + the leader's 5 s sweep, with room
    finally:
        os.kill(pid, signal.SIGCONT)
    log = mnt.with_suffix(".log")
    deadline = time.monotonic() + 20
    while "was ended by the cluster" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "was ended by the cluster" in log.read_text()
    os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)
    with pytest.raises(OSError) as stale:
        os.pread(reader, 100, 0)
    assert stale.value.errno == errno.ESTALE
    os.close(reader)
    with pytest.raises(OSError) as lost:
        os.close(writer)  # its buffered bytes cannot be committed for it
    assert lost.value.errno == errno.ESTALE
    # New opens work, in the new session.
    assert (mnt / "kept").read_bytes() == b"k" * 5000
    (mnt / "after").write_bytes(b"fine")
    assert lookup(cluster, b"after")


# --- close-to-open: sizes and times -------------------------------------------------------


def test_open_on_another_mount_sees_the_new_size(cluster: Mount, mounts: list[Path]) -> None:
    a = mount_at(cluster, mounts, "m-cto-a")
    b = mount_at(cluster, mounts, "m-cto-b")
    old = os.urandom(300_000)
    (a / "grow").write_bytes(old)
    (a / "small").write_bytes(b"s" * 1000)
    assert (b / "grow").read_bytes() == old  # b's kernel now caches size 300,000
    assert os.stat(b / "small").st_size == 1000
    new = os.urandom(8 << 20)
    (a / "grow").write_bytes(new)  # rewritten and closed on a
    (a / "small").write_bytes(b"S" * 6000)
    fd = os.open(b / "small", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 6000  # fstat right after the open
    finally:
        os.close(fd)
    assert (b / "grow").read_bytes() == new  # within b's attribute timeout


def test_fstat_after_a_write_shows_the_new_mtime(cluster: Mount, mounts: list[Path]) -> None:
    mnt = mount_at(cluster, mounts, "m-mtime")
    path = mnt / "t"
    path.write_bytes(b"before")
    os.utime(path, ns=(10**18, 10**18))  # long ago... in 2001
    fd = os.open(path, os.O_WRONLY)
    try:
        start = time.time_ns()
        os.write(fd, b"after")
        st = os.fstat(fd)
        assert st.st_mtime_ns >= start - 10**9 and st.st_ctime_ns >= start - 10**9
    finally:
        os.close(fd)
    assert os.stat(path).st_mtime_ns >= start - 10**9


def test_unlinking_one_hard_link_moves_the_others_ctime(cluster: Mount, mounts: list[Path]) -> None:
    mnt = mount_at(cluster, mounts, "m-ctime")
    other = mount_at(cluster, mounts, "m-ctime2")
    (mnt / "h").mkdir()
    (mnt / "h" / "one").write_bytes(b"x")
    (mnt / "h" / "sub").mkdir()  # settles the create: the unlink below is deferred
    os.link(other / "h" / "one", other / "h" / "two")  # a name this mount never looked up
    time.sleep(1.2)  # attribute timeouts
    before = os.stat(mnt / "h" / "one")
    assert before.st_nlink == 2
    time.sleep(0.05)
    os.unlink(mnt / "h" / "one")  # deferred here
    after = os.stat(mnt / "h" / "two")
    assert after.st_nlink == 1
    assert after.st_ctime_ns > before.st_ctime_ns


# --- two writers, and a reader while another mount rewrites ------------------------------


def test_a_small_write_from_a_stale_view_never_truncates(
    cluster: Mount, mounts: list[Path]
) -> None:
    a = mount_at(cluster, mounts, "m-w1")
    b = mount_at(cluster, mounts, "m-w2")
    (a / "log").write_bytes(b"")
    fd = os.open(a / "log", os.O_WRONLY)  # a opens it while it is empty
    try:
        big = os.urandom(12 << 20)
        (b / "log").write_bytes(big)  # b writes 12 MiB and closes
        os.pwrite(fd, b"A", 0)  # a writes one byte at 0 from its stale view
    finally:
        os.close(fd)
    time.sleep(1.2)  # attribute timeouts
    got = (b / "log").read_bytes()
    assert len(got) == len(big)
    assert got == b"A" + big[1:]


def test_two_mounts_writing_different_bytes_of_one_chunk_keep_both(
    cluster: Mount, mounts: list[Path]
) -> None:
    a = mount_at(cluster, mounts, "m-w3")
    b = mount_at(cluster, mounts, "m-w4")
    base = bytes(1 << 20)
    (a / "shared").write_bytes(base)
    time.sleep(1.2)
    fa = os.open(a / "shared", os.O_WRONLY)
    fb = os.open(b / "shared", os.O_WRONLY)
    try:
        os.pwrite(fa, b"a" * 4096, 0)
        os.pwrite(fb, b"b" * 4096, 8192)
        os.fsync(fa)  # a commits first
        os.fsync(fb)  # b's commit finds a's chunk: it merges its bytes into it
        os.pwrite(fa, b"A" * 100, 20_000)
        os.close(fa)
        fa = -1
    finally:
        if fa >= 0:
            os.close(fa)
        os.close(fb)
    time.sleep(1.2)
    expected = bytearray(base)
    expected[0:4096] = b"a" * 4096
    expected[8192 : 8192 + 4096] = b"b" * 4096
    expected[20_000:20_100] = b"A" * 100
    assert (a / "shared").read_bytes() == bytes(expected)
    assert (b / "shared").read_bytes() == bytes(expected)


def test_a_reader_keeps_reading_while_another_mount_rewrites(
    cluster: Mount, mounts: list[Path]
) -> None:
    a = mount_at(cluster, mounts, "m-r1")
    b = mount_at(cluster, mounts, "m-r2")
    chunk = 4 << 20
    old = os.urandom(3 * chunk)
    (a / "f").write_bytes(old)
    time.sleep(1.2)
    fd = os.open(b / "f", os.O_RDONLY)
    try:
        # (a small read: a sequential one would have the next chunks read ahead,
        # and the reader would go on with the old version it holds)
        first = os.pread(fd, 4096, 0)
        new = os.urandom(3 * chunk)
        (a / "f").write_bytes(new)  # a replaces every chunk; GC deletes the old ones
        wait_gc_done(cluster)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        rest = [os.pread(fd, chunk, n * chunk) for n in (1, 2)]  # never EIO
    finally:
        os.close(fd)
    assert first == old[:4096]
    for n, piece in zip((1, 2), rest, strict=True):
        assert piece in (old[n * chunk : (n + 1) * chunk], new[n * chunk : (n + 1) * chunk])
    assert rest[-1] == new[2 * chunk :]  # the old chunks were gone: it moved to the new version


def test_a_read_across_chunks_never_mixes_two_versions(cluster: Mount, mounts: list[Path]) -> None:
    """Reader b holds the end of chunk 0 (verified blocks kept); a rewrites the
    file and the old chunks are collected; b's read across chunks 0 and 1
    then finds chunk 1 gone and moves to the new version: the whole read
    must come from it, not old bytes of chunk 0 followed by new of chunk 1."""
    a = mount_at(cluster, mounts, "m-x1")
    b = mount_at(cluster, mounts, "m-x2")
    chunk = 4 << 20
    (a / "f").write_bytes(b"o" * (2 * chunk))
    time.sleep(1.2)
    fd = os.open(b / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 8192, chunk - 8192) == b"o" * 8192
        for version in b"123":
            (a / "f").write_bytes(bytes([version]) * (2 * chunk))
            wait_gc_done(cluster)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = os.pread(fd, 16384, chunk - 8192)
            assert len(got) == 16384
            assert len(set(got)) == 1, f"one read returned bytes of two versions: {set(got)}"
            assert got[:1] in (b"o", b"1", b"2", b"3")
    finally:
        os.close(fd)


# --- sync: what sync(2) cannot ask of a FUSE file system ----------------------------------


def size_in_cluster(cluster: Mount, *path: bytes) -> int:
    async def walk(meta) -> int:  # type: ignore[no-untyped-def]
        ino = ROOT_INO
        for name in path:
            ino = (await meta.lookup(ino, name)).ino
        return int((await meta.getattr(ino)).size)

    return int(trio.run(cluster.library, walk))


def test_prismfs_sync_makes_everything_held_back_durable(
    cluster: Mount, mounts: list[Path]
) -> None:
    from conftest import run_cli

    mnt = mount_at(cluster, mounts, "m-sync", "settle_s=600,writeback_s=600")
    (mnt / "s").mkdir()
    (mnt / "s" / "old").write_bytes(b"x")
    (mnt / "s" / "sub").mkdir()  # settles the create: the unlink below is deferred
    buffered = os.open(mnt / "s" / "buffered", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(buffered, os.urandom(1 << 20))  # held in the mount, not committed
    made = os.open(mnt / "s" / "made", os.O_CREAT | os.O_WRONLY, 0o644)
    os.unlink(mnt / "s" / "old")
    result = run_cli("sync", str(mnt / "s"))
    assert result.returncode == 0, result.stderr
    kill_mount(mnt)
    for fd in (buffered, made):
        with contextlib.suppress(OSError):
            os.close(fd)
    assert size_in_cluster(cluster, b"s", b"buffered") == 1 << 20
    assert lookup(cluster, b"s", b"made")
    assert not lookup(cluster, b"s", b"old")
    elsewhere = run_cli("sync", "/tmp")
    assert elsewhere.returncode == 1 and "is not on a PrismFS mount" in elsewhere.stderr


def test_data_held_in_an_open_file_is_written_back(cluster: Mount, mounts: list[Path]) -> None:
    mnt = mount_at(cluster, mounts, "m-writeback", "writeback_s=1")
    fd = os.open(mnt / "slow-log", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"line\n" * 20_000)  # then the application goes quiet, never fsyncs
    time.sleep(3)
    kill_mount(mnt)
    with contextlib.suppress(OSError):
        os.close(fd)
    assert size_in_cluster(cluster, b"slow-log") == 100_000
