"""Directory leases on a real 3-node cluster with two real mounts: a mount
answers lookups of a directory it holds a lease on by itself (the negative
lookup before each create costs nothing), and another mount's change
recalls that lease first, so the change is seen at once, never a second
later (`prismfs.fuse.leased`, `prismfs.node.leases`)."""

from __future__ import annotations

import json
import os
import signal
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
    # Every name was new: each create's lookup was answered from the lease.
    assert counts.get("fuse.lookup.leased", 0) >= 60
    assert counts.get("fuse.lookup.negative", 0) == 0, counts
    # and each change went under the mount's delegation, which it kept
    assert counts.get("leases.written_back", 0) >= 50, counts
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
    (b / "listed").mkdir()
    for n in range(30):
        (b / "listed" / f"n{n}").write_bytes(b"")
    fsync_dir(b / "listed")
    d = a / "listed"
    assert len(os.listdir(d)) == 30  # read to its end: a complete copy
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
