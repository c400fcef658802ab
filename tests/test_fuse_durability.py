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
    """kill -9 of the mount daemon: whatever it had not sent is gone."""
    os.kill(int(point.with_suffix(".pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- fsyncdir ----------------------------------------------------------------------------


def test_fsyncdir_makes_a_deferred_unlink_durable(cluster: Mount, mounts: list[Path]) -> None:
    # settle_s=30: without fsyncdir nothing deferred would reach the cluster in time.
    mnt = mount_at(cluster, mounts, "m-unlink", "settle_s=30")
    (mnt / "u").mkdir()
    (mnt / "u" / "gone").write_bytes(b"x")
    fsync_dir(mnt / "u")
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
    rows = sqlite3.connect(again / "db" / "t.sqlite").execute("SELECT n FROM t").fetchall()
    assert rows == [(n,) for n in range(5)]
