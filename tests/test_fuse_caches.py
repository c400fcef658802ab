"""The mount's caches within the kernel's 1 s timeouts, on a real 3-node
cluster and two real mounts: negative entries, directory attributes answered
by the mount, readdir pages kept with the directory handle, chown/chmod/
utimens of directories and symlinks held back and sent with the next change,
and ``prismfs mount stats`` that counts all of it."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fuse_mount import Mount, two_mounts
from fuse_mount import mount_stats as stats
from fuse_mount import path_exists as exists
from prismfs.errors import NotFound
from prismfs.meta.commands import ROOT_INO

pytestmark = pytest.mark.timeout(300)

T0 = 1_600_000_000 * 10**9
SYS_GETDENTS64 = 217  # x86_64


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, Path, Path]]:
    with two_mounts(tmp_path_factory.mktemp("caches")) as mounts:
        yield mounts


def reset(point: Path) -> None:
    """Zero the mount's counters once its background work (releases, atime
    updates, settles) of earlier steps is done. A session renewal (one Raft
    write every 20 s) may still fall into a measurement: counts of Raft writes
    allow one more."""
    sync(point)
    time.sleep(0.5)
    os.setxattr(point, "user.prismfs.stats", b"reset")


def sync(point: Path) -> None:
    os.setxattr(point, "user.prismfs.sync", b"1")


def cluster_attr(cluster: Mount, *path: bytes):  # type: ignore[no-untyped-def]
    async def walk(meta):  # type: ignore[no-untyped-def]
        ino = ROOT_INO
        for name in path:
            ino = (await meta.lookup(ino, name)).ino
        return await meta.getattr(ino)

    return trio.run(cluster.library, walk)


def eventually(check, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Poll ``check`` until true; how long it took. Fails after ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - start


# --- negative entries --------------------------------------------------------------------


def test_a_negative_entry_becomes_positive_when_this_mount_makes_the_name(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, _ = two
    d = a / "neg"
    d.mkdir()
    reset(a)
    for name in ("f", "sub", "link", "moved"):
        assert not exists(d / name)  # now cached as absent by the kernel
        assert not exists(d / name)
    counts = stats(a)
    # the second stat of each never came here (answered by the cluster, or
    # from the lease on the directory this mount made)
    assert counts.get("fuse.lookup.negative", 0) + counts.get("fuse.lookup.leased", 0) == 4
    (d / "f").write_bytes(b"x")
    (d / "sub").mkdir()
    os.symlink("f", d / "link")
    (d / "tmp").write_bytes(b"y")
    os.rename(d / "tmp", d / "moved")
    assert (d / "f").read_bytes() == b"x"
    assert stat.S_ISDIR(os.stat(d / "sub").st_mode)
    assert os.readlink(d / "link") == "f"
    assert (d / "moved").read_bytes() == b"y"


def test_another_mounts_create_is_visible_within_entry_timeout(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    (a / "vis").mkdir()
    eventually(lambda: exists(b / "vis"), 3)
    assert not exists(b / "vis" / "new")  # B caches the absence
    (a / "vis" / "new").write_bytes(b"hello")  # closed: at the cluster now
    # B's negative entry lasts at most entry_timeout (1 s) from its lookup.
    eventually(lambda: exists(b / "vis" / "new"), 1.5)
    assert (b / "vis" / "new").read_bytes() == b"hello"


# --- directory attributes -------------------------------------------------------------------


def test_the_mount_answers_getattr_of_a_directory_it_just_changed(
    two: tuple[Mount, Path, Path],
) -> None:
    cluster, a, _ = two
    d = a / "attrs"
    d.mkdir()
    reset(a)
    for i in range(20):
        (d / f"f{i}").write_bytes(b"z")
        before = time.time_ns()
        (d / f"s{i}").mkdir()
        st = os.stat(d)  # what the kernel asks after each change
        assert st.st_mtime_ns >= before - 10**9  # the change's own time, not an old copy
    counts = stats(a)
    assert counts.get("fuse.getattr.cached", 0) + counts.get("fuse.getattr.leased", 0) >= 20
    # Nothing but the new names' lookups read from the cluster for these.
    assert counts.get("rpc.Query", 0) <= 45
    assert os.stat(d).st_nlink == 22
    assert cluster_attr(cluster, b"attrs").nlink == 22


# --- readdir pages ---------------------------------------------------------------------------


def getdents(fd: int, size: int = 1024) -> list[str]:
    """One getdents64(2) with a small buffer: the kernel asks the mount for
    about that much, so the rest of a listing is still to come."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(SYS_GETDENTS64, fd, buf, size)
    assert n >= 0, os.strerror(ctypes.get_errno())
    names, pos = [], 0
    while pos < n:
        reclen = struct.unpack_from("<H", buf.raw, pos + 16)[0]
        names.append(buf.raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode())
        pos += reclen
    return names


def listing(fd: int) -> list[str]:
    names: list[str] = []
    while batch := getdents(fd):
        names += batch
    return [n for n in names if n not in (".", "..")]


def test_a_listing_served_from_a_kept_page_sees_this_mounts_changes(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, _ = two
    d = a / "list"
    d.mkdir()
    names = [f"n{i:03d}" for i in range(200)]
    for name in names:
        (d / name).write_bytes(b"")
    reset(a)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(listing(fd)) == names
        counts = stats(a)
        # Many small requests; one page of 500 entries read from the cluster.
        assert counts["fuse.readdir"] >= 5
        assert counts.get("fuse.readdir.kept", 0) == counts["fuse.readdir"] - 1
        # Part of a listing, then this mount changes the directory, then the rest.
        os.lseek(fd, 0, os.SEEK_SET)
        first = getdents(fd)
        later = names[-1]
        assert later not in first and len(first) < 100
        os.unlink(d / later)
        (d / "zzz-new").write_bytes(b"")
        rest = listing(fd)
    finally:
        os.close(fd)
    seen = set(first) | set(rest)
    assert later not in seen  # never served from the page read before the unlink
    assert set(names) - {later} <= seen


# --- held attribute changes ------------------------------------------------------------------


def test_chown_chmod_utimens_of_a_directory_are_held_and_then_sent_together(
    two: tuple[Mount, Path, Path],
) -> None:
    cluster, a, b = two
    d = a / "held"
    reset(a)
    d.mkdir()
    os.chown(d, 1234, 5678)
    os.chmod(d, 0o750)
    os.utime(d, ns=(T0, T0))
    st = os.stat(d)  # this mount shows them at once
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        1234,
        5678,
        0o750,
        T0,
    )
    counts = stats(a)
    assert counts["fuse.setattr.held"] == 3
    assert counts.get("rpc.Propose", 0) <= 1 + 1 + 1  # the mkdir only (four without holding)
    # The next change carries them: one more Raft entry, not four.
    (a / "held-next").mkdir()
    assert stats(a)["rpc.Propose"] <= 2 + 1
    got = cluster_attr(cluster, b"held")
    assert (got.uid, got.gid, stat.S_IMODE(got.mode), got.mtime_ns) == (1234, 5678, 0o750, T0)
    st_b = os.stat(b / "held")
    assert (st_b.st_uid, st_b.st_mtime_ns) == (1234, T0)


def test_held_changes_reach_other_mounts_within_settle_s_and_sync_sends_them(
    two: tuple[Mount, Path, Path],
) -> None:
    cluster, a, b = two
    (a / "lone").mkdir()
    eventually(lambda: exists(b / "lone"), 3)
    os.chmod(a / "lone", 0o711)
    # Nothing else happens on A: the background sends them after settle_s (1 s);
    # B's cached attributes last attr_timeout (1 s) more at most.
    eventually(lambda: stat.S_IMODE(os.stat(b / "lone").st_mode) == 0o711, 3.5)
    os.utime(a / "lone", ns=(T0, T0))
    sync(a)
    assert cluster_attr(cluster, b"lone").mtime_ns == T0


def test_a_create_after_utimens_of_its_directory_moves_the_directory_mtime(
    two: tuple[Mount, Path, Path],
) -> None:
    cluster, a, _ = two
    d = a / "order"
    d.mkdir()
    os.utime(d, ns=(T0, T0))
    (d / "f").write_bytes(b"1")  # POSIX order: the create's time wins
    sync(a)
    assert os.stat(d).st_mtime_ns > T0
    assert cluster_attr(cluster, b"order").mtime_ns > T0


def test_a_symlinks_lchown_and_times_are_held(two: tuple[Mount, Path, Path]) -> None:
    cluster, a, _ = two
    (a / "links").mkdir()  # made here: delegated to this mount (see docs/mount.md)
    link = a / "links" / "sl"
    reset(a)
    os.symlink("target", link)
    os.lchown(link, 42, 43)
    os.utime(link, ns=(T0, T0), follow_symlinks=False)
    st = os.lstat(link)
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (42, 43, T0)
    assert stats(a).get("rpc.Propose", 0) <= 1 + 1  # the symlink only (three without holding)
    sync(a)
    got = cluster_attr(cluster, b"links", b"sl")
    assert (got.uid, got.gid, got.mtime_ns) == (42, 43, T0)


def test_rmdir_of_a_directory_with_held_changes(two: tuple[Mount, Path, Path]) -> None:
    _, a, _ = two
    d = a / "gone"
    d.mkdir()
    os.chmod(d, 0o700)
    d.rmdir()
    assert not exists(d)
    sync(a)  # the held chmod went before the rmdir: nothing fails


# --- prismfs mount stats ----------------------------------------------------------------


def prismfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prismfs", *args], capture_output=True, text=True, timeout=60
    )


def test_prismfs_mount_stats(two: tuple[Mount, Path, Path], tmp_path: Path) -> None:
    _, a, _ = two
    reset(a)
    assert not exists(a / "no-such")
    out = prismfs("mount", "stats", str(a), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # answered as "no such name" by the cluster, or from the lease on the root
    counts = data["counts"]
    assert counts.get("fuse.lookup.negative", 0) + counts.get("fuse.lookup.leased", 0) == 1
    assert data["latency"]["fuse.lookup"]["count"] == 1
    table = prismfs("mount", "stats", str(a), "--reset")
    assert table.returncode == 0 and "fuse.lookup" in table.stdout
    assert "fuse.lookup" not in stats(a)
    wrong = prismfs("mount", "stats", str(tmp_path))
    assert wrong.returncode != 0 and "not on a PrismFS mount" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_name_this_mount_just_made_is_looked_up_without_the_cluster_until_rmdir(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, _ = two
    d = a / "named"
    d.mkdir()
    os.utime(d, ns=(T0, T0))  # cp -a's order: the kernel looks the name up again here
    assert os.stat(d).st_mtime_ns == T0
    d.rmdir()
    assert not exists(d)  # the name this mount knew is gone with it
    d.mkdir()
    assert stat.S_IMODE(os.stat(d).st_mode) and exists(d)


# --- lazily registered opens -----------------------------------------------------------------


def test_opens_of_existing_files_are_registered_in_batches(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, _ = two
    d = a / "opens"
    d.mkdir()
    for i in range(20):
        (d / f"f{i}").write_bytes(b"%d" % i * 1000)
    time.sleep(1.3)  # past the kernel's timeouts: every open reaches the mount
    reset(a)
    files = [open(d / f"f{i}", "rb") for i in range(20)]  # noqa: SIM115
    try:
        for i, f in enumerate(files):
            assert f.read() == b"%d" % i * 1000
        time.sleep(0.6)  # the background registers them
    finally:
        for f in files:
            f.close()
    time.sleep(0.6)  # and sends the releases
    counts = stats(a)
    assert counts["fuse.open"] == 20
    # Not one Raft write per open: opens, releases and relatime updates go
    # in batches, each time the background runs (every 0.2 s), and what
    # comes while a batch is on its way waits for the next round. One per
    # open and one per release would be 40; sent one or two at a time
    # behind each other (as before 2026-12-05) 6 to 16; batched, 3 to 5
    # on an idle machine.
    assert counts.get("rpc.Propose", 0) <= 10, counts


def test_a_file_open_here_and_unlinked_elsewhere_stays_readable(
    two: tuple[Mount, Path, Path],
) -> None:
    cluster, a, b = two
    data = os.urandom(3 << 20)  # in shards, not inline
    (a / "held-open").write_bytes(data)
    sync(a)
    eventually(lambda: exists(b / "held-open"), 3)
    with open(b / "held-open", "rb") as f:  # registered in B's next batch
        os.unlink(a / "held-open")
        sync(a)
        # Past the leader's sweeps and their grace: an inode nobody held would be gone.
        time.sleep(11)
        assert f.read() == data
    with pytest.raises(NotFound):
        cluster_attr(cluster, b"held-open")
