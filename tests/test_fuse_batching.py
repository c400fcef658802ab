"""Deferred creates and metadata batching on a real mount of a real 3-node cluster.

Mount ``a`` has the defaults (creates deferred, sent with the file's first
data commit in one batch); mount ``b`` of the same cluster has
``sync_meta`` (every create its own Raft entry), as a contrast and as the
"other client" that must see what ``a`` did."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fuse_mount import Mount, errno_of, fuse_available, mount_stats
from prismfs.meta.client import MetaClient
from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, Mount]]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    base = tmp_path_factory.mktemp("batching")
    a, b = Mount(base, "a"), Mount(base, "b")
    try:
        a.up()
        a.mount("settle_s=5")
        b.mount("sync_meta")
        yield a, b
    finally:
        b.unmount()
        a.cleanup()


def commit_index(m: Mount) -> int:
    """The highest Raft commit index any node reports (the leader's)."""

    async def highest(meta: MetaClient) -> int:
        best = 0
        for address in meta.addresses:
            reply = (await meta.pool.call(address, RaftStatus(), timeout=3)).message
            assert isinstance(reply, RaftStatusReply)
            best = max(best, reply.commit)
        return best

    return int(trio.run(m.library, highest))


STAMP = 1_500_000_000_123_456_789


def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_small_file_costs_one_raft_entry_not_two(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    n = 60
    bodies = [os.urandom(4096) for _ in range(n)]
    entries = {}
    for label, root in (("deferred", a.point), ("sync", b.point)):
        (root / label).mkdir()
        before = commit_index(a)
        for i, body in enumerate(bodies):
            (root / label / f"f{i}").write_bytes(body)
        entries[label] = commit_index(a) - before
    # Deferred: the Mknod and the data commit (inline: 4 KiB needs no shards) in
    # one batch per file; releases go in batches. Plus a few entries of the
    # cluster's own (session renewal, lease expiry).
    assert entries["deferred"] <= n + 12, entries
    # sync_meta: the Mknod and the data commit are two entries per file.
    assert entries["sync"] >= 2 * n, entries
    for i, body in enumerate(bodies):  # each mount reads what the other wrote
        assert (b.point / "deferred" / f"f{i}").read_bytes() == body
        assert (a.point / "sync" / f"f{i}").read_bytes() == body


def test_times_set_through_an_open_new_file_join_its_held_back_create(
    mounts: tuple[Mount, Mount],
) -> None:
    """tar sets a new file's times with futimens before it closes it: the
    data is staged, the times join the held-back create, and no Raft entry
    is spent on either; the other mount sees the data and the times set."""
    a, b = mounts
    n = 40
    (a.point / "times").mkdir()
    bodies = [os.urandom(20_000 + i) for i in range(n)]  # over inline_max: shards
    stamp = STAMP
    before = commit_index(a)
    for i, body in enumerate(bodies):
        fd = os.open(a.point / "times" / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, body)
            os.utime(fd, ns=(stamp + i, stamp + i))
            assert os.fstat(fd).st_mtime_ns == stamp + i
        finally:
            os.close(fd)
    entries = commit_index(a) - before
    # Before: each futimens sent the create, the data and the times at once.
    assert entries < n // 2, entries
    for i, body in enumerate(bodies):  # b's lookups recall a's delegation first
        path = b.point / "times" / f"f{i}"
        assert path.read_bytes() == body
        st = path.stat()
        assert (st.st_mtime_ns, st.st_size, stat.S_IMODE(st.st_mode)) == (
            stamp + i,
            len(body),
            0o640,
        )
    # A write after the times moves mtime on again, as POSIX orders it.
    fd = os.open(a.point / "times" / "late", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 20_000)
        os.utime(fd, ns=(stamp, stamp))
        os.write(fd, b"y" * 20_000)
    finally:
        os.close(fd)
    st = (b.point / "times" / "late").stat()
    assert st.st_size == 40_000 and st.st_mtime_ns > stamp


def test_a_new_file_renamed_in_its_directory_joins_its_held_back_create(
    mounts: tuple[Mount, Mount],
) -> None:
    """rsync writes a temporary file, sets its times, opens it again for
    its mode, then renames it to its name: all of it joins the held-back
    create, nothing costs a Raft entry of its own; the other mount sees
    only the final names, with their times and modes. A rename onto a name in
    use still replaces it."""
    a, b = mounts
    n = 40
    d = a.point / "renamed"
    d.mkdir()
    (d / "old").write_bytes(b"old")
    bodies = [os.urandom(10_000 + i) for i in range(n)]
    before = commit_index(a)
    for i, body in enumerate(bodies):
        tmp = d / f".f{i}.XXXX"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        # rsync's order: times by name, then open again for the mode, rename
        os.utime(tmp, ns=(STAMP + i, STAMP + i), follow_symlinks=False)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.rename(tmp, d / f"f{i}")
        assert not tmp.exists() and (d / f"f{i}").stat().st_size == len(body)
    entries = commit_index(a) - before
    # Before: each rename sent the held-back creates, then itself: 2 per file.
    assert entries < n // 2, entries
    fd = os.open(d / ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"new")
    os.close(fd)
    os.rename(d / ".new", d / "old")  # a name in use: the usual way
    expected = sorted(["old"] + [f"f{i}" for i in range(n)])
    assert sorted(os.listdir(b.point / "renamed")) == expected
    for i, body in enumerate(bodies):
        path = b.point / "renamed" / f"f{i}"
        assert path.read_bytes() == body
        st = path.stat()
        assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (STAMP + i, 0o644)
    assert (b.point / "renamed" / "old").read_bytes() == b"new"
    assert sorted(os.listdir(d)) == expected


@pytest.fixture(scope="module")
def legacy(mounts: tuple[Mount, Mount]) -> Iterator[Mount]:
    """A third mount of the same cluster without leases: deferral bounded by
    ``settle_s`` only (the weaker contract it documents)."""
    a, _ = mounts
    c = Mount(a.base, "c")
    c.dir = a.dir
    try:
        c.mount("no_leases,settle_s=5")
        yield c
    finally:
        c.unmount()


def test_without_leases_an_open_new_file_reaches_other_mounts_after_settle_s(
    mounts: tuple[Mount, Mount], legacy: Mount
) -> None:
    _, b = mounts
    a = legacy
    (a.point / "vis").mkdir()
    fd = os.open(a.point / "vis" / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    created = time.monotonic()
    try:
        os.write(fd, b"hello")
        assert os.fstat(fd).st_size == 5
        assert not (b.point / "vis" / "f").exists()  # deferred: only mount c knows it
        wait_for(lambda: (b.point / "vis" / "f").exists(), timeout=15)
        assert time.monotonic() - created >= 4.0  # settle_s=5 (checked every 0.2 s)
        os.write(fd, b", world")
    finally:
        os.close(fd)
    # Close-to-open: the close committed the data; b sees it once its cached size expires.
    wait_for(lambda: (b.point / "vis" / "f").read_bytes() == b"hello, world", timeout=5)
    assert stat.S_IMODE((b.point / "vis" / "f").stat().st_mode) == 0o640


def test_an_open_new_file_is_visible_to_other_mounts_at_once(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    (a.point / "vis2").mkdir()
    time.sleep(0.3)  # (its delegation comes with the mkdir)
    fd = os.open(a.point / "vis2" / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    try:
        os.write(fd, b"hello")
        # Deferred in a's delegated directory; b's lookup recalls the
        # delegation, and a flushes before it acknowledges.
        st = (b.point / "vis2" / "f").stat()
        assert stat.S_IMODE(st.st_mode) == 0o640
        os.write(fd, b", world")
    finally:
        os.close(fd)
    wait_for(lambda: (b.point / "vis2" / "f").read_bytes() == b"hello, world", timeout=5)


def test_namespace_changes_around_an_open_new_file(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    d = a.point / "ops"
    d.mkdir()
    fd = os.open(d / "new", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"abc")
        assert sorted(os.listdir(d)) == ["new"]  # a listing here includes it
        os.fchmod(fd, 0o600)
        os.fchown(fd, 1234, 5678)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        try:
            os.rmdir(d)
        except OSError as exc:
            assert exc.errno == errno.ENOTEMPTY
        else:
            raise AssertionError("rmdir of a directory holding an open new file succeeded")
        os.rename(d / "new", d / "renamed")
        os.link(d / "renamed", d / "second")
        os.write(fd, b"def")
        os.utime(fd, ns=(1_000_000_123, 2_000_000_456))
    finally:
        os.close(fd)
    # Never settled before its close: attributes and times travel with the data.
    fd = os.open(d / "plain", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"xyz")
        os.fchmod(fd, 0o640)
        os.utime(fd, ns=(3_000_000_000, 4_000_000_789))
    finally:
        os.close(fd)
    other = b.point / "ops"
    assert sorted(os.listdir(other)) == ["plain", "renamed", "second"]
    st = (other / "renamed").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert (st.st_nlink, st.st_size, st.st_mtime_ns) == (2, 6, 2_000_000_456)
    assert (other / "second").read_bytes() == b"abcdef"
    st = (other / "plain").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (0o640, 4_000_000_789, 3)
    assert (other / "plain").read_bytes() == b"xyz"


def test_without_leases_a_name_taken_meanwhile_by_another_mount_fails_the_close(
    mounts: tuple[Mount, Mount], legacy: Mount
) -> None:
    _, b = mounts
    a = legacy
    (a.point / "race").mkdir()
    fd = os.open(a.point / "race" / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"from a")
    # b creates the same name first: a's create is still deferred (settle_s=5).
    (b.point / "race" / "x").write_bytes(b"from b")
    try:
        os.close(fd)
    except OSError as exc:
        assert exc.errno == errno.EEXIST
    else:
        raise AssertionError("the close of a create that lost its name succeeded")
    assert (b.point / "race" / "x").read_bytes() == b"from b"
    # Mount a drops its name for the lost file: the next lookup finds b's.
    assert (a.point / "race" / "x").read_bytes() == b"from b"


def test_o_excl_is_exclusive_across_mounts(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    (a.point / "excl").mkdir()
    time.sleep(0.3)
    fd = os.open(a.point / "excl" / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"from a")
    # a's create is deferred under its delegation; b's O_EXCL create of the
    # same name recalls it, so a's create lands first and b's fails.
    assert (
        errno_of(lambda: os.open(b.point / "excl" / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        == errno.EEXIST
    )
    os.close(fd)  # a's file stands
    assert (b.point / "excl" / "x").read_bytes() == b"from a"


def test_rm_rf_sends_a_directory_of_unlinks_in_a_few_batches(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    n = 300
    entries = {}
    for label, root in (("deferred-rm", a.point), ("sync-rm", b.point)):
        d = root / label
        d.mkdir()
        for i in range(n):
            (d / f"f{i}").write_bytes(b"x")
        before = commit_index(a)
        subprocess.run(["rm", "-rf", str(d)], check=True, timeout=120)
        entries[label] = commit_index(a) - before
        assert not d.exists()
    # Deferred: the rmdir first sends the 300 unlinks as one batch.
    assert entries["deferred-rm"] <= 15, entries
    assert entries["sync-rm"] >= n, entries
    assert not (b.point / "deferred-rm").exists() and not (a.point / "sync-rm").exists()


def test_a_backlog_longer_to_flush_than_the_lease_left_is_flushed_whole_at_a_recall(
    mounts: tuple[Mount, Mount],
) -> None:
    """8,000 new files held back (``settle_s=60``), then another mount lists
    their directory: the recall's flush takes about twenty batches, longer
    than a delegation's lease. The leader keeps a recalled delegation while
    its holder's flushes keep coming; before, it refused the batches after
    the lease ran out, and their files were lost (one run in four of a
    `tar x` of 2,000 files and 40 directories)."""
    a, b = mounts
    n = 8000
    a.unmount()
    a.mount("settle_s=60")
    try:
        top = a.point / "backlog"
        top.mkdir()
        time.sleep(0.3)
        counted = mount_stats(a.point)
        make = (
            "import sys, pathlib\n"
            "d = pathlib.Path(sys.argv[1])\n"
            "for i in range(int(sys.argv[2])):\n"
            "    (d / f'f{i:05d}').write_bytes(b'%d' % i)\n"
        )
        subprocess.run([sys.executable, "-c", make, str(top), str(n)], check=True, timeout=120)
        names = sorted(os.listdir(b.point / "backlog"))
        assert names == [f"f{i:05d}" for i in range(n)]
        assert (b.point / "backlog" / f"f{n - 1:05d}").read_bytes() == b"%d" % (n - 1)
        after = mount_stats(a.point)
        assert after.get("fuse.writeback.lost", 0) == counted.get("fuse.writeback.lost", 0)
        assert after.get("fuse.writeback.recall_flushes", 0) > counted.get(
            "fuse.writeback.recall_flushes", 0
        )
        subprocess.run(["rm", "-rf", str(top)], check=True, timeout=120)
    finally:
        a.unmount()
        a.mount("settle_s=5")


def test_processes_at_work_in_their_own_directories_see_each_change_done_once(
    mounts: tuple[Mount, Mount],
) -> None:
    """mdtest's pattern (`benchmarks/mdtest.py`): four processes create,
    stat, rename and unlink 2,000 files in lock step, each in its own
    directory. Renames held back by the others while a flush was on its way
    made a rename riding that flush go twice, and the second one failed:
    ENOENT for a rename that had happened (three runs in six, before)."""
    a, _ = mounts
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mdtest.py"
    for run in range(3):
        label = f"procs{run}"
        argv = [sys.executable, str(script), str(a.point), label, "--files", "2000"]
        out = subprocess.run([*argv, "--procs", "4"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        phases = [line.split()[1] for line in out.stdout.splitlines() if line.startswith(label)]
        assert phases == ["md-create", "md-stat", "md-rename", "md-unlink"], out.stdout
    assert not [p for p in a.point.iterdir() if p.name.startswith("mdtest-")]


def test_symlinks_in_a_delegated_directory_are_held_back_with_the_files(
    mounts: tuple[Mount, Mount], tmp_path: Path
) -> None:
    """tar's order for a tree with symlinks: a file, a symlink to it, its
    owner and times set (lchown, utimensat). Each symlink used to be a Raft
    entry of its own (after a flush of the files before it); held back, it
    goes with the files, in the order made, and another mount sees every
    one of them at once with its target, owner and times."""
    a, b = mounts
    source = tmp_path / "src"
    source.mkdir()
    for i in range(40):
        (source / f"f{i}").write_bytes(b"%d" % i)
        (source / f"l{i}").symlink_to(f"f{i}")
        os.utime(source / f"l{i}", ns=(STAMP, STAMP), follow_symlinks=False)
    os.symlink("no/such/target", source / "dangling")
    archive = tmp_path / "links.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(source), "."], check=True, timeout=60)
    top = a.point / "links"
    top.mkdir()
    time.sleep(0.3)
    before = commit_index(a)
    subprocess.run(["tar", "xf", str(archive), "-C", str(top)], check=True, timeout=120)
    assert os.readlink(top / "l7") == "f7" and (top / "l7").read_bytes() == b"7"
    subprocess.run(["sync", "-f", str(top)], check=True, timeout=60)
    # 81 files and symlinks and 82 attribute changes: a few batches, not one entry each.
    assert commit_index(a) - before <= 12
    seen = b.point / "links"
    for i in range(40):
        link = seen / f"l{i}"
        assert os.readlink(link) == f"f{i}"
        assert link.read_bytes() == b"%d" % i
        assert os.lstat(link).st_mtime_ns == STAMP // 10**9 * 10**9  # (tar keeps seconds)
    assert os.readlink(seen / "dangling") == "no/such/target"
    # Removed, the other mount sees them gone.
    subprocess.run(["rm", "-rf", str(top)], check=True, timeout=120)
    assert not seen.exists()


def test_what_is_held_back_reaches_the_cluster_at_unmount_in_order(
    mounts: tuple[Mount, Mount],
) -> None:
    """An unmount sends everything held back (the mount's files and
    symlinks among them) before the daemon exits, in the order made."""
    a, b = mounts
    top = a.point / "unmounted"
    top.mkdir()
    time.sleep(0.3)
    (top / "f").write_bytes(b"again")
    os.symlink("f", top / "l")
    (top / "g").write_bytes(b"after")
    try:
        a.unmount()
        seen = b.point / "unmounted"
        assert sorted(os.listdir(seen)) == ["f", "g", "l"]
        assert (seen / "l").read_bytes() == b"again"
    finally:
        a.mount("settle_s=5")


def same_tree(source: Path, copy: Path) -> None:
    """``copy`` holds what ``source`` does: names, types, modes, contents,
    symlink targets, times (tar keeps seconds), a directory's link count."""
    for here, dirs, files in os.walk(source):
        rel = Path(here).relative_to(source)
        assert sorted(os.listdir(copy / rel)) == sorted(dirs + files), rel
        for name in [".", *dirs, *files]:
            want, got = os.lstat(Path(here) / name), os.lstat(copy / rel / name)
            assert (got.st_mode, got.st_nlink) == (want.st_mode, want.st_nlink), rel / name
            if stat.S_ISLNK(want.st_mode):
                assert os.readlink(copy / rel / name) == os.readlink(Path(here) / name)
                continue
            assert got.st_mtime_ns == want.st_mtime_ns // 10**9 * 10**9, rel / name
            if stat.S_ISREG(want.st_mode):
                assert (copy / rel / name).read_bytes() == (Path(here) / name).read_bytes()


def test_a_tree_tar_makes_is_held_back_whole_and_seen_whole_on_another_mount(
    mounts: tuple[Mount, Mount], tmp_path: Path
) -> None:
    """Directories made in a delegated directory are held back with what
    is made in them (under the parent's delegation): `tar x` of a tree of
    directories and files costs a few batches, not a Raft entry per
    directory, and another mount sees it all, with the times and modes tar
    set on the directories after their files. (tar makes a symlink in two
    steps, a placeholder file first: the unlink of that sends what is held
    back, so symlinks are left to the test above.)"""
    a, b = mounts
    source = tmp_path / "tree"
    for i in range(6):
        deep = source / f"d{i}" / "inner" / "deep"
        deep.mkdir(parents=True)
        for j in range(4):
            (source / f"d{i}" / f"f{j}").write_bytes(os.urandom(1000 * j))
        (deep / "leaf").write_bytes(b"leaf %d" % i)
        os.chmod(source / f"d{i}" / "inner", 0o750)
        for d in (deep, deep.parent, source / f"d{i}"):
            os.utime(d, ns=(STAMP, STAMP))
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(source), "."], check=True, timeout=60)
    top = a.point / "tree"
    top.mkdir()
    time.sleep(0.3)
    before, counted = commit_index(a), mount_stats(a.point)
    subprocess.run(["tar", "xf", str(archive), "-C", str(top)], check=True, timeout=120)
    same_tree(source, top)
    subprocess.run(["sync", "-f", str(top)], check=True, timeout=60)
    after = mount_stats(a.point)
    made = {k: after.get(k, 0) - counted.get(k, 0) for k in after}
    print("\n", {k: v for k, v in made.items() if v and not k.startswith("fuse.get")})
    # 18 directories, 30 files, their times and modes: all held back, sent
    # in batches (one entry per directory and file without write-back: 48 at
    # least). How many batches depends on the machine's load: 3-6 alone, 13
    # and 25 seen under full CI runs (flushes as delegations near their end
    # split the tree, and each directory sent then takes a delegation of
    # its own).
    assert made["fuse.writeback.mkdirs"] == 18
    assert made["rpc.Propose"] < 18 + 30
    assert commit_index(a) - before < 18 + 30 + 6
    same_tree(source, b.point / "tree")
    subprocess.run(["rm", "-rf", str(top)], check=True, timeout=120)
    assert not (b.point / "tree").exists()


def test_a_big_tree_made_at_once_loses_nothing_when_its_flushes_split(
    mounts: tuple[Mount, Mount], tmp_path: Path
) -> None:
    """`tar x` of 40 directories of 50 files: flushes of more than one
    batch, files made in a directory while its mkdir was on its way. Those
    were held back under the parent's delegation and, sent after the
    directory got its own, moved that one to a new grant: the leader then
    refused what was held back under the first (49 files of the standard
    library lost in one `tar x`)."""
    a, b = mounts
    source = tmp_path / "big"
    for i in range(40):
        (source / f"d{i:02d}").mkdir(parents=True)
        for j in range(50):
            (source / f"d{i:02d}" / f"f{j:02d}").write_bytes(b"%d.%d" % (i, j))
    archive = tmp_path / "big.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(source), "."], check=True, timeout=60)
    top = a.point / "bigtree"
    top.mkdir()
    time.sleep(0.3)
    counted = mount_stats(a.point)
    subprocess.run(["tar", "xf", str(archive), "-C", str(top)], check=True, timeout=300)
    subprocess.run(["sync", "-f", str(top)], check=True, timeout=60)
    after = mount_stats(a.point)
    assert after.get("fuse.writeback.lost", 0) == counted.get("fuse.writeback.lost", 0)
    same_tree(source, b.point / "bigtree")
    subprocess.run(["rm", "-rf", str(top)], check=True, timeout=120)


def test_cp_a_of_many_small_directories_keeps_every_mode_owner_and_time(
    mounts: tuple[Mount, Mount], tmp_path: Path
) -> None:
    """``cp -a`` makes each directory 0700, fills it, then sets its mode and
    times (and tries its POSIX ACL first: refused, so it sets the mode),
    all held back, with flushes going on meanwhile (the default
    ``settle_s``). Small directories made, filled and set while a flush
    was on its way had their times sent before their files or their mkdir
    (13 of 895 directories of /usr/share/doc kept 0700 and the copy's
    time); the two races are reproduced in `test_writeback_order.py`, this
    one did not catch them in a few runs."""
    a, b = mounts
    source = tmp_path / "small"
    for i in range(250):
        d = source / f"d{i:03d}"
        d.mkdir(parents=True)
        for j in range(3):
            (d / f"f{j}").write_bytes(b"%d.%d" % (i, j))
            os.utime(d / f"f{j}", ns=(STAMP, STAMP + j))
        os.chmod(d, 0o750 if i % 2 else 0o755)
        os.utime(d, ns=(STAMP, STAMP - i * 10**9))
    a.unmount()
    a.mount()  # the defaults: what is held back goes within a second, while cp goes on
    try:
        subprocess.run(["cp", "-a", str(source), str(a.point / "cpa")], check=True, timeout=300)
        after = mount_stats(a.point)
        check_copy(source, [a.point / "cpa", b.point / "cpa"])
        subprocess.run(["rm", "-rf", str(a.point / "cpa")], check=True, timeout=120)
    finally:
        a.unmount()
        a.mount("settle_s=5")
    assert after.get("fuse.setxattr.ENOTSUP", 0) > 0
    assert after.get("fuse.writeback.mkdirs", 0) >= 200


def check_copy(source: Path, copies: list[Path]) -> None:
    """Each of ``copies`` has what ``source`` has: names, contents, and
    each entry's mode, owner and times to the nanosecond."""
    for copy in copies:
        for here, _, files in os.walk(source):
            rel = Path(here).relative_to(source)
            assert sorted(os.listdir(copy / rel)) == sorted(os.listdir(here)), rel
            for name in [".", *files]:
                want, got = os.lstat(Path(here) / name), os.lstat(copy / rel / name)
                fields = ("st_mode", "st_uid", "st_gid", "st_mtime_ns")
                assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields], (
                    rel / name
                )
        assert (copy / "d007" / "f2").read_bytes() == b"7.2"


def test_a_mkdir_after_held_back_creates_rides_in_the_batch_that_sends_them(
    mounts: tuple[Mount, Mount],
) -> None:
    """tar's order: a file, then a subdirectory of the same directory. The
    mkdir must reach the cluster after the create held back before it;
    under the delegation it goes in the last batch of that flush instead
    of a Raft entry of its own after it (two entries per pair before)."""
    a, b = mounts
    top = a.point / "tarlike"
    top.mkdir()
    time.sleep(0.3)
    before = commit_index(a)
    for i in range(20):
        (top / f"f{i}").write_bytes(b"%d" % i)
        (top / f"d{i}").mkdir()
        (top / f"d{i}" / "inner").write_bytes(b"in %d" % i)
    with pytest.raises(OSError) as failed:  # its held-back create lands first
        os.rmdir(top / "d0")
    assert failed.value.errno == errno.ENOTEMPTY
    entries = commit_index(a) - before
    # One entry per pair (the mkdir with the flush before it), plus the
    # cluster's own (session renewal, lease expiry).
    assert entries <= 20 + 8, entries
    assert sorted(os.listdir(b.point / "tarlike")) == sorted(
        [f"f{i}" for i in range(20)] + [f"d{i}" for i in range(20)]
    )
    for i in range(20):
        assert (b.point / "tarlike" / f"f{i}").read_bytes() == b"%d" % i
        assert (b.point / "tarlike" / f"d{i}" / "inner").read_bytes() == b"in %d" % i


def test_unlink_then_create_and_lookups_on_the_same_mount(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    d = a.point / "recreate"
    d.mkdir()
    (d / "f").write_bytes(b"old")
    (d / "keep").write_bytes(b"k")
    os.link(d / "keep", d / "keep2")
    os.unlink(d / "f")
    assert not (d / "f").exists()
    assert errno_of(os.stat, d / "f") == errno.ENOENT
    (d / "f").write_bytes(b"new")  # the same name again at once
    assert (d / "f").read_bytes() == b"new"
    os.unlink(d / "keep2")
    assert (d / "keep").stat().st_nlink == 1  # the other name's link count is right at once
    assert sorted(os.listdir(d)) == ["f", "keep"]
    assert sorted(os.listdir(b.point / "recreate")) == ["f", "keep"]
    assert (b.point / "recreate" / "f").read_bytes() == b"new"


def test_a_deferred_unlink_never_removes_a_replacement(mounts: tuple[Mount, Mount]) -> None:
    a, b = mounts
    (a.point / "guard").mkdir()
    (a.point / "guard" / "x").write_bytes(b"first")
    assert (b.point / "guard" / "x").read_bytes() == b"first"
    os.unlink(a.point / "guard" / "x")  # deferred on a (settle_s=5)
    # Meanwhile b puts a new file in the name's place.
    (b.point / "guard" / "y").write_bytes(b"replacement")
    os.rename(b.point / "guard" / "y", b.point / "guard" / "x")
    assert os.listdir(a.point / "guard") == ["x"]  # a's listing sends its unlink first
    assert (a.point / "guard" / "x").read_bytes() == b"replacement"
    assert (b.point / "guard" / "x").read_bytes() == b"replacement"
