"""Directory leases on a real 3-node cluster with two real mounts: a mount
answers lookups of a directory it holds a lease on by itself (the negative
lookup before each create costs nothing), and another mount's change
recalls that lease first, so the change is seen at once, never a second
later (`prismfs.fuse.leased`, `prismfs.node.leases`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from crash_workload import fsync_dir
from fuse_mount import Mount, two_mounts
from fuse_mount import mount_stats as stats
from fuse_mount import path_exists as exists

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, Path, Path]]:
    with two_mounts(tmp_path_factory.mktemp("leases")) as mounts:
        yield mounts


def reset(point: Path) -> None:
    os.setxattr(point, "user.prismfs.sync", b"1")
    time.sleep(0.3)
    os.setxattr(point, "user.prismfs.stats", b"reset")


def listed_on(a: Path, b: Path, name: str, data: bytes) -> Path:
    """A directory of 30 files made on mount B, listed to its end on mount A
    (A then holds a complete copy of it): its path on A."""
    (b / name).mkdir()
    for n in range(30):
        (b / name / f"n{n}").write_bytes(data)
    fsync_dir(b / name)
    d = a / name
    assert len(os.listdir(d)) == 30  # read to its end: a complete copy
    return d


def test_a_mount_alone_in_a_directory_answers_its_lookups_itself(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, _ = two
    d = a / "alone"
    d.mkdir()  # created here: a lease on an empty directory comes with it
    reset(a)
    for n in range(40):
        (d / f"f{n}").write_bytes(b"x" * n)
    sub = d / "sub"
    sub.mkdir()
    for n in range(10):
        (sub / f"g{n}").write_bytes(b"y")
        assert not exists(sub / f"missing{n}")
    counts = stats(a)
    # Every name was new: each create's lookup was answered from the lease
    # (in ``sub``, held back until the end: as made here).
    assert counts.get("fuse.lookup.leased", 0) + counts.get("fuse.lookup.made_here", 0) >= 60
    assert counts.get("fuse.lookup.negative", 0) == 0, counts
    # Each close returned without a Raft write: the creates and data commits
    # went under the mount's delegation in a few batches (a mkdir sends
    # what was held back before it).
    assert counts.get("fuse.writeback.closes", 0) >= 50, counts
    assert counts.get("rpc.Propose", 0) <= 6, counts
    assert sorted(os.listdir(d)) == sorted([f"f{n}" for n in range(40)] + ["sub"])
    assert (d / "f7").read_bytes() == b"x" * 7


def test_another_mounts_changes_are_seen_at_once(two: tuple[Mount, Path, Path]) -> None:
    _, a, b = two
    (a / "shared").mkdir()
    da, db = a / "shared", b / "shared"
    assert exists(db)
    reset(a)
    for n in range(15):
        name = f"x{n}"
        assert not exists(da / name)  # a holds the answer "no such name"
        assert not exists(da / name)
        with open(db / name, "wb") as f:  # b's close sends the create
            f.write(b"data")
        assert exists(da / name), f"round {n}: a create on b is not seen on a"
        assert (da / name).read_bytes() == b"data"
        os.unlink(db / name)
        fsync_dir(db)  # b's unlink reaches the cluster
        assert not exists(da / name), f"round {n}: an unlink on b is not seen on a"
        (db / f"d{n}").mkdir()
        assert (da / f"d{n}").is_dir()
        os.rename(db / f"d{n}", db / f"e{n}")
        assert not exists(da / f"d{n}") and exists(da / f"e{n}")
    assert stats(a).get("leases.recalls", 0) >= 15


def test_a_listing_read_to_its_end_answers_lookups_until_another_mount_changes_it(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    d = listed_on(a, b, "listed", b"")
    reset(a)
    for n in range(30):
        assert not exists(d / f"absent{n}")
    assert stats(a).get("fuse.lookup.negative", 0) == 0
    (b / "listed" / "absent3").write_bytes(b"now")
    assert (d / "absent3").read_bytes() == b"now"


def test_a_listing_of_several_pages_and_lookups_that_keep_missing_fill_the_copy(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    big, small = b / "big", b / "small"
    big.mkdir()
    small.mkdir()
    for n in range(1100):  # three pages of 500
        os.close(os.open(big / f"n{n}", os.O_CREAT | os.O_WRONLY, 0o644))
    for n in range(50):
        os.close(os.open(small / f"n{n}", os.O_CREAT | os.O_WRONLY, 0o644))
    fsync_dir(big)
    fsync_dir(small)
    assert len(os.listdir(a / "big")) == 1100
    reset(a)
    for n in range(20):
        assert not exists(a / "big" / f"absent{n}")
    assert stats(a).get("fuse.lookup.negative", 0) == 0  # all three pages, one lease
    # a directory never listed: after a few lookups the mount reads its listing
    for n in range(6):
        assert exists(a / "small" / f"n{n}")
    time.sleep(0.3)
    reset(a)
    for n in range(20):
        assert not exists(a / "small" / f"absent{n}")
    assert stats(a).get("fuse.lookup.negative", 0) == 0


def test_unlinks_of_names_a_lease_vouches_for_ask_nothing_and_a_stat_still_sees_other_writes(
    two: tuple[Mount, Path, Path],
) -> None:
    """Past the attribute timeout the lease still vouches for a name and its
    inode (not its size): an unlink asks the cluster nothing, while a stat
    of a file another mount wrote meanwhile shows what it wrote."""
    _, a, b = two
    d = listed_on(a, b, "vouched", b"x")  # with every name's attributes
    assert os.stat(d / "n0").st_size == 1
    for n in range(7):  # past attr_timeout: those attributes may no longer be given,
        time.sleep(0.2)  # while the copy, kept in use, stays leased
        assert not exists(d / f"absent{n}")
    with open(b / "vouched" / "n0", "ab") as f:  # another mount writes one of the files
        f.write(b"more")
    Path("/proc/sys/vm/drop_caches").write_text("2")  # the kernel forgets its entries
    reset(a)
    for n in range(1, 30):
        os.unlink(d / f"n{n}")
    counts = stats(a)
    # (the kernel's lookup of the directory itself, and a renewal, may ask)
    assert counts.get("fuse.lookup.leased_name", 0) >= 27, counts
    assert counts.get("rpc.Query", 0) <= 3, counts
    assert os.stat(d / "n0").st_size == 5  # the kernel asked: not the 1 it was told
    assert sorted(os.listdir(b / "vouched")) == ["n0"]


def test_a_stat_of_a_file_made_here_asks_nothing_until_another_mount_reaches_it(
    two: tuple[Mount, Path, Path],
) -> None:
    """Files this mount made in a directory delegated to it: nobody else can
    reach them before a recall, so their attributes are this mount's to
    give (`prismfs.fuse.owned`). Once another mount opened one (recalling
    the delegation) and wrote to it, a stat here shows what it wrote."""
    _, a, b = two
    d = a / "owned"
    d.mkdir()
    for n in range(20):
        (d / f"f{n}").write_bytes(b"x" * n)
    os.chmod(d / "f3", 0o600)
    os.utime(d / "f4", ns=(10**18, 2 * 10**18))
    fsync_dir(d)  # at the cluster now: nothing held back answers for them
    time.sleep(1.2)  # past attr_timeout: the kernel asks for each
    Path("/proc/sys/vm/drop_caches").write_text("2")
    reset(a)
    got = [os.stat(d / f"f{n}") for n in range(20)]
    assert [s.st_size for s in got] == list(range(20))
    assert stat.S_IMODE(got[3].st_mode) == 0o600
    assert (got[4].st_atime_ns, got[4].st_mtime_ns) == (10**18, 2 * 10**18)
    counts = stats(a)
    # (renewals of the directory's lease are queries too)
    assert counts.get("rpc.Query", 0) <= 4, counts
    with open(b / "owned" / "f5", "ab") as f:  # B's lookup recalls A's delegation
        f.write(b"more")
    os.chmod(b / "owned" / "f6", 0o640)
    time.sleep(1.1)  # what A's kernel was told of the file has expired
    assert os.stat(d / "f5").st_size == 9
    assert stat.S_IMODE(os.stat(d / "f6").st_mode) == 0o640


def test_renames_in_a_delegated_directory_are_held_back_and_seen_at_once_elsewhere(
    two: tuple[Mount, Path, Path],
) -> None:
    """A rename of a file within a directory delegated to this mount, to a
    name it knows is free, is held back with the unlinks (nothing is sent):
    this mount answers the old and the new name at once, and another
    mount's listing (which recalls the delegation) finds every rename."""
    _, a, b = two
    d = a / "moves"
    d.mkdir()
    for n in range(30):
        (d / f"f{n}").write_bytes(b"y" * n)
    fsync_dir(d)
    reset(a)
    before = time.time_ns()
    for n in range(20):
        os.rename(d / f"f{n}", d / f"r{n}")
    counts = stats(a)
    assert counts.get("fuse.writeback.renames_held", 0) == 20, counts
    # (the background sends what is held back after settle_s, 1 s)
    assert counts.get("rpc.Propose", 0) <= 3, counts
    assert not exists(d / "f3")
    assert (d / "r3").read_bytes() == b"y" * 3
    assert os.stat(d / "r5").st_ctime_ns >= before  # a rename moves its ctime
    (d / "f0").write_bytes(b"new")  # the old name is free again here
    os.rename(d / "f21", d / "r1")  # onto a name in use: the usual way, after the rest
    want = sorted(
        [f"r{n}" for n in range(20)] + [f"f{n}" for n in range(20, 30) if n != 21] + ["f0"]
    )
    assert sorted(os.listdir(b / "moves")) == want
    assert (b / "moves" / "r7").read_bytes() == b"y" * 7
    assert (b / "moves" / "r1").read_bytes() == b"y" * 21
    assert (b / "moves" / "f0").read_bytes() == b"new"
    assert sorted(os.listdir(d)) == want


def test_without_leases_a_mount_asks_the_cluster(two: tuple[Mount, Path, Path]) -> None:
    cluster, _, _ = two
    plain = Mount(cluster.base, "plain")
    plain.dir = cluster.dir
    point = plain.mount("no_leases")
    try:
        d = point / "plain"
        d.mkdir()
        reset(point)
        for n in range(10):
            (d / f"f{n}").write_bytes(b"")
        counts = stats(point)
        assert counts.get("fuse.lookup.leased", 0) == 0
        assert counts.get("fuse.lookup.negative", 0) == 10
    finally:
        plain.unmount()


def test_a_holder_that_stops_answering_delays_a_change_by_at_most_its_lease(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    (a / "frozen").mkdir()
    assert not exists(a / "frozen" / "new")  # a holds the directory's lease
    pid = int((a.parent / "a.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # a cannot answer the recall (nothing may touch a now)
    try:
        start = time.monotonic()
        with open(b / "frozen" / "new", "wb") as f:
            f.write(b"late")
        took = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    # b's create waited for a's lease to run out (2 s, plus the clock-drift
    # margin), not for a; a's copy ended before the leader stopped waiting.
    assert 0.5 < took < 2 * 1.1 + 2.0, took
    assert (a / "frozen" / "new").read_bytes() == b"late"


def test_after_the_leader_is_killed_no_mount_answers_from_an_old_lease(
    tmp_path: Path,
) -> None:
    cluster = Mount(tmp_path, "a")
    other = Mount(tmp_path, "b")
    other.dir = cluster.dir
    try:
        nodes = cluster.up()
        a, b = cluster.mount(), other.mount()
        (a / "kept").mkdir()
        assert exists(b / "kept")
        assert not exists(a / "kept" / "x")  # a holds the answer, from this leader
        status = run_cli(
            "cluster",
            "status",
            "--json",
            "--config",
            str(cluster.dir / "client.toml"),
            env=cluster.env,
            timeout=60,
        )
        leader = json.loads(status.stdout)["health"]["leader"]
        victim = next(n for n in nodes if n["id"] == leader)
        os.kill(int(str(victim["pid"])), signal.SIGKILL)  # the grant dies with it
        (b / "kept" / "x").write_bytes(b"after")  # through the new leader
        # The new leader waited out every lease the old one may have granted.
        assert (a / "kept" / "x").read_bytes() == b"after"
        assert sorted(os.listdir(a / "kept")) == ["x"]
    finally:
        other.unmount()
        cluster.cleanup()


# --- delegations and write-back --------------------------------------------------------------


def test_o_excl_from_both_mounts_at_once_exactly_one_wins(two: tuple[Mount, Path, Path]) -> None:
    _, a, b = two
    (a / "race").mkdir()
    wins = {"a": 0, "b": 0}

    def excl(point: Path, who: str, name: str, out: dict[str, int]) -> None:
        try:
            fd = os.open(point / "race" / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.write(fd, who.encode())
        os.close(fd)
        out[who] += 1

    for n in range(20):
        threads = [
            threading.Thread(target=excl, args=(point, who, f"n{n}", wins))
            for point, who in ((a, "a"), (b, "b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        # exactly one create of each name succeeded, and both see its content
        assert sum(wins.values()) == n + 1, (n, wins)
        body = (a / "race" / f"n{n}").read_bytes()
        assert body in (b"a", b"b") and (b / "race" / f"n{n}").read_bytes() == body


def test_a_rename_across_directories_delegated_to_different_mounts(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    (a / "from_a").mkdir()
    (b / "from_b").mkdir()
    time.sleep(0.3)
    # each mount works alone in its directory: delegated, its creates held back
    fa = os.open(a / "from_a" / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    fb = os.open(b / "from_b" / "held", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fa, b"moved")
        # a's rename into b's directory recalls b's delegation (b flushes
        # "held" first) and moves a file a has not flushed yet
        os.rename(a / "from_a" / "x", a / "from_b" / "y")
        assert sorted(os.listdir(b / "from_b")) == ["held", "y"]
        assert os.listdir(b / "from_a") == []
        assert sorted(os.listdir(a / "from_b")) == ["held", "y"]
    finally:
        os.close(fa)
        os.close(fb)
    assert (b / "from_b" / "y").read_bytes() == b"moved"


def test_two_mounts_in_one_directory_fall_back_to_the_synchronous_way(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    (a / "pingpong").mkdir()
    time.sleep(0.3)
    (a / "pingpong" / "first").write_bytes(b"")
    reset(a)
    os.setxattr(b, "user.prismfs.stats", b"reset")
    for n in range(20):  # the two mounts take turns
        (a / "pingpong" / f"a{n}").write_bytes(b"a")
        (b / "pingpong" / f"b{n}").write_bytes(b"b")
    names = sorted(os.listdir(a / "pingpong"))
    assert names == sorted(["first"] + [f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)])
    # After the first conflict the directory stays shared for a while: no
    # delegation goes back and forth 40 times (each create still recalls
    # the other mount's shared lease, as without delegations).
    delegated = stats(a).get("leases.delegated", 0) + stats(b).get("leases.delegated", 0)
    assert delegated <= 4, delegated


def test_a_holder_cut_off_past_its_lease_loses_what_it_held_back_and_says_so(
    two: tuple[Mount, Path, Path],
) -> None:
    _, a, b = two
    (a / "cut").mkdir()
    with open(a / "cut" / "before", "wb") as f:
        f.write(b"fsynced")
        os.fsync(f.fileno())  # (a close alone returns before the create is sent)
    time.sleep(0.3)
    fd = os.open(a / "cut" / "held", os.O_CREAT | os.O_WRONLY, 0o644)  # held back
    try:
        pid = int((a.parent / "a.pid").read_text())
        os.kill(pid, signal.SIGSTOP)  # cut off: it can neither flush nor answer the recall
        try:
            start = time.monotonic()
            names = sorted(os.listdir(b / "cut"))  # waits for a's lease to end
            took = time.monotonic() - start
        finally:
            os.kill(pid, signal.SIGCONT)
        assert names == ["before"] and took > 0.5, (names, took)
        # a's flush comes after the leader stopped counting its delegation: refused
        with pytest.raises(OSError) as failed:
            os.fsync(fd)
        assert failed.value.errno == errno.EIO
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    assert sorted(os.listdir(a / "cut")) == ["before"]
    assert sorted(os.listdir(b / "cut")) == ["before"]
    (a / "cut" / "after").write_bytes(b"fine again")
    assert (b / "cut" / "after").read_bytes() == b"fine again"


@contextlib.contextmanager
def one_mount(tmp_path: Path, name: str) -> Iterator[tuple[Mount, Path]]:
    """A cluster with one mount and a new directory ``name`` on it (held
    delegated: the mount made it), cleaned up at the end."""
    m = Mount(tmp_path, "a")
    try:
        m.up()
        d = m.mount() / name
        d.mkdir()
        time.sleep(0.3)
        yield m, d
    finally:
        m.cleanup()


def killed_and_mounted_again(m: Mount) -> Path:
    """kill -9 of the mount (within settle_s: what it held back last was
    not sent), then a new mount: its mountpoint."""
    os.kill(int(m.pidfile.read_text()), signal.SIGKILL)
    subprocess.run(["fusermount3", "-u", "-z", str(m.point)], timeout=30, check=False)
    return m.mount()


def test_a_mount_killed_with_changes_held_back_keeps_a_prefix_and_all_it_fsynced(
    tmp_path: Path,
) -> None:
    with one_mount(tmp_path, "seq") as (m, d):
        bodies = {f"f{n:03d}": os.urandom(100 + n) for n in range(200)}
        for n, (name, body) in enumerate(bodies.items()):
            with open(d / name, "wb") as f:
                f.write(body)
                if n == 99:
                    os.fsync(f.fileno())  # f000..f099 durable from here
        a = killed_and_mounted_again(m)
        present = sorted(os.listdir(a / "seq"))
        names = list(bodies)
        # What survived is the first k files, k >= 100: a prefix, and every
        # file before the fsync; each one byte-exact.
        assert present == names[: len(present)], present[:5]
        assert len(present) >= 100, len(present)
        for name in present:
            assert (a / "seq" / name).read_bytes() == bodies[name], name
        print(f"\nkept {len(present)} of 200 files (100 fsynced)")


def test_a_mount_killed_with_files_and_symlinks_held_back_keeps_a_prefix_of_both(
    tmp_path: Path,
) -> None:
    """Held-back symlinks are sent among the held-back creates, in the order
    made: after a kill -9 the directory holds the first k of the files and
    symlinks made (k >= those before an fsync), each symlink with its target."""
    with one_mount(tmp_path, "mixed") as (m, d):
        made = []
        for n in range(80):
            name = f"e{2 * n:03d}"
            with open(d / name, "wb") as f:
                f.write(b"%d" % n)
                if n == 40:
                    os.fsync(f.fileno())  # everything up to here durable
            made.append(name)
            link = f"e{2 * n + 1:03d}"
            os.symlink(name, d / link)
            made.append(link)
        a = killed_and_mounted_again(m)
        present = sorted(os.listdir(a / "mixed"))
        assert present == made[: len(present)], (present[:4], len(present))
        assert len(present) >= 81, len(present)
        for name in present:
            n = int(name[1:])
            if n % 2:
                assert os.readlink(a / "mixed" / name) == f"e{n - 1:03d}", name
            else:
                assert (a / "mixed" / name).read_bytes() == b"%d" % (n // 2), name
        print(f"\nkept {len(present)} of 160 files and symlinks (81 fsynced)")


def test_a_mount_killed_with_directories_held_back_keeps_a_prefix_of_the_tree(
    tmp_path: Path,
) -> None:
    """Directories made in a delegated directory, and what is made in them,
    are held back and sent in the order made: after a kill -9 the tree is
    the first k of the directories and files made (k >= those before an
    fsync), never a file without its directory or a later directory alone."""
    with one_mount(tmp_path, "nest") as (m, d):
        made = []
        for n in range(60):
            (d / f"d{n:02d}").mkdir()
            made.append(f"d{n:02d}")
            with open(d / f"d{n:02d}" / "f", "wb") as f:
                f.write(b"%d" % n)
                if n == 29:
                    os.fsync(f.fileno())  # everything up to here durable
            made.append(f"d{n:02d}/f")
        a = killed_and_mounted_again(m)
        top = a / "nest"
        present = sorted(
            str(p.relative_to(top)) for p in top.rglob("*")
        )  # (d00 < d00/f < d01 ...: sorted is the order made)
        assert present == made[: len(present)], (present[-3:], len(present))
        assert len(present) >= 60, len(present)
        for name in present:
            if name.endswith("/f"):
                assert (top / name).read_bytes() == b"%d" % int(name[1:3]), name
            else:
                assert os.stat(top / name).st_nlink == 2, name
        print(f"\nkept {len(present)} of 120 directories and files (60 fsynced)")


def test_a_mount_killed_with_renames_held_back_keeps_a_prefix_of_them(tmp_path: Path) -> None:
    """Held-back renames are sent in the order made: after a kill -9 the
    directory shows the first k of them (k >= those before an fsyncdir),
    each file with its own content."""
    with one_mount(tmp_path, "moves") as (m, d):
        bodies = {n: os.urandom(50 + n) for n in range(60)}
        for n, body in bodies.items():
            (d / f"f{n:02d}").write_bytes(body)
        fsync_dir(d)
        for n in range(40):
            os.rename(d / f"f{n:02d}", d / f"r{n:02d}")
            if n == 19:
                fsync_dir(d)  # r00..r19 durable from here
        a = killed_and_mounted_again(m)
        present = set(os.listdir(a / "moves"))
        k = sum(1 for n in range(40) if f"r{n:02d}" in present)
        want = {f"r{n:02d}" for n in range(k)} | {f"f{n:02d}" for n in range(k, 60)}
        assert present == want, sorted(present ^ want)
        assert k >= 20, k
        for n, body in bodies.items():
            name = f"r{n:02d}" if n < k else f"f{n:02d}"
            assert (a / "moves" / name).read_bytes() == body, name
        print(f"\nkept {k} of 40 renames (20 fsynced)")
