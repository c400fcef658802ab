"""Real tools on a real mount: cp -a + diff -r, rsync twice, tar x + tar -d,
git init/add/commit/clone/fsck, SQLite in WAL mode; two mounts of one
cluster (close-to-open); and the faults: the Raft leader killed during a
copy, a storage node killed during reads and writes, the whole cluster down
(EIO within failtimeout, then recovery)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuse_mount import Mount, fuse_available, is_mounted

pytestmark = pytest.mark.timeout(300)

STDLIB = Path(os.__file__).parent
TREE = ["json", "email", "asyncio", "http", "xml", "logging", "importlib", "concurrent"]


def sh(*cmd: str, cwd: Path | None = None, timeout: float = 120) -> str:
    result = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}: {result.stderr[-2000:]}"
    return result.stdout


def copy_tree(dst: Path) -> None:
    dst.mkdir()
    for name in TREE:
        sh("cp", "-a", str(STDLIB / name), str(dst / name))


def same_tree(dst: Path) -> None:
    for name in TREE:
        sh("diff", "-r", str(STDLIB / name), str(dst / name))


BOTH_WAYS = pytest.mark.parametrize(
    "mounted", ["", ",sync_meta"], ids=["write-back", "sync_meta"], indirect=True
)
"""With write-back (the default) and without (``sync_meta``)."""


def start_copy(dst: Path) -> subprocess.Popen[str]:
    """The test tree copied into ``dst`` by another process (an application that
    must see no error while nodes die under it)."""
    script = (
        "import shutil, sys\n"
        "for name in sys.argv[3:]:\n"
        "    shutil.copytree(sys.argv[1] + '/' + name, sys.argv[2] + '/' + name, symlinks=True)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(STDLIB), str(dst), *TREE],
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def mounted(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mount]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path)
    try:
        m.up()
        m.mount("failtimeout=20" + getattr(request, "param", ""))
        yield m
    finally:
        m.cleanup()


@BOTH_WAYS
def test_cp_diff_rsync_tar(mounted: Mount, tmp_path: Path) -> None:
    mnt = mounted.point
    copy_tree(mnt / "cp")
    same_tree(mnt / "cp")
    sh("rsync", "-a", str(STDLIB / "json") + "/", str(mnt / "rs"))
    second = sh("rsync", "-ai", str(STDLIB / "json") + "/", str(mnt / "rs"))
    assert second.strip() == "", second  # nothing left to transfer
    archive = tmp_path / "t.tar"
    sh("tar", "cf", str(archive), "-C", str(STDLIB), "email")
    (mnt / "tar").mkdir()
    sh("tar", "xf", str(archive), "-C", str(mnt / "tar"))
    assert sh("tar", "df", str(archive), "-C", str(mnt / "tar")) == ""  # timestamps too


@BOTH_WAYS
def test_git(mounted: Mount) -> None:
    repo = mounted.point / "repo"
    repo.mkdir()
    env = ["-c", "user.email=t@example.org", "-c", "user.name=t"]
    sh("git", "init", "-q", str(repo))
    sh("cp", "-a", str(STDLIB / "json"), str(repo / "json"))
    sh("git", *env, "-C", str(repo), "add", "-A")
    sh("git", *env, "-C", str(repo), "commit", "-qm", "first")
    (repo / "json" / "__init__.py").write_text("changed\n")
    sh("git", *env, "-C", str(repo), "commit", "-qam", "second")
    sh("git", "-C", str(repo), "fsck", "--strict")
    sh("git", "clone", "-q", str(repo), str(mounted.point / "clone"))
    assert (mounted.point / "clone" / "json" / "__init__.py").read_text() == "changed\n"
    log = sh("git", "-C", str(mounted.point / "clone"), "log", "--oneline")
    assert len(log.splitlines()) == 2


def test_sqlite_wal(mounted: Mount) -> None:
    db = mounted.point / "db.sqlite"
    script = "PRAGMA journal_mode=WAL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\n"
    for _ in range(10):
        script += (
            "BEGIN;\n"
            + "".join(
                f"INSERT INTO t(v) VALUES (randomblob({50 + i % 200}));\n" for i in range(1000)
            )
            + "COMMIT;\n"
        )
    subprocess.run(["sqlite3", str(db)], input=script, text=True, check=True, timeout=180)
    out = sh("sqlite3", str(db), "SELECT count(*) FROM t; PRAGMA integrity_check;")
    assert out.split() == ["10000", "ok"]


def test_two_mounts_close_to_open(mounted: Mount) -> None:
    second = mounted.point.parent / "mnt2"
    mounted.mount(point=second)
    try:
        (mounted.point / "f").write_bytes(b"from one")
        assert (second / "f").read_bytes() == b"from one"
        (second / "f").write_bytes(b"from two, longer")
        assert (mounted.point / "f").read_bytes() == b"from two, longer"
        # Same size, new bytes, written through the other mount: a reopen here
        # must not be served from pages cached by the earlier read.
        assert (mounted.point / "f").read_bytes() == b"from two, longer"
        fd = os.open(second / "f", os.O_WRONLY)
        os.pwrite(fd, b"FROM", 0)
        os.close(fd)
        time.sleep(1.2)  # attr_timeout
        assert (mounted.point / "f").read_bytes() == b"FROM two, longer"
        os.rename(mounted.point / "f", mounted.point / "g")
        time.sleep(1.2)  # entry_timeout: the other mount's cached name expires
        assert not (second / "f").exists() and (second / "g").exists()
        os.unlink(second / "g")
        time.sleep(1.2)
        assert not (mounted.point / "g").exists()
    finally:
        subprocess.run(["fusermount3", "-u", str(second)], timeout=30, check=False)
        second.rmdir()


def _leader(mounted: Mount) -> dict[str, object]:
    from conftest import run_cli

    for _ in range(100):
        result = run_cli("dev", "status", "--dir", str(mounted.dir), "--json", env=mounted.env)
        import json

        rows = json.loads(result.stdout)["nodes"]
        leaders = [r for r in rows if r.get("role") == "leader"]
        if leaders:
            return leaders[0]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError("no leader")


def test_leader_killed_during_cp(mounted: Mount) -> None:
    mnt = mounted.point
    copier = start_copy(mnt / "cp")
    try:
        time.sleep(3)
        leader = _leader(mounted)
        os.kill(int(leader["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        _, err = copier.communicate(timeout=240)
        assert copier.returncode == 0, err  # the application saw no error
    finally:
        if copier.poll() is None:
            copier.kill()
            copier.wait(timeout=10)
    same_tree(mnt / "cp")


@pytest.fixture
def mounted4(tmp_path: Path) -> Iterator[Mount]:
    """Four nodes: with one down, 2-of-3 chunks still find three nodes to go to."""
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path)
    try:
        m.up(nodes=4)
        m.mount("failtimeout=30")
        yield m
    finally:
        m.cleanup()


def test_storage_node_killed_during_reads_and_writes(mounted4: Mount) -> None:
    mnt = mounted4.point
    blobs = {f"f{i}": os.urandom(3_000_000) for i in range(6)}
    for name, blob in blobs.items():
        (mnt / name).write_bytes(blob)
    copier = start_copy(mnt / "cp")
    try:
        time.sleep(2)
        leader = _leader(mounted4)
        victim = next(n for n in mounted4.nodes() if n["node_id"] != leader["id"])
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        for name, blob in blobs.items():  # every file has shards on every... most nodes
            assert (mnt / name).read_bytes() == blob
        _, err = copier.communicate(timeout=240)
        assert copier.returncode == 0, err
    finally:
        if copier.poll() is None:
            copier.kill()
            copier.wait(timeout=10)
    same_tree(mnt / "cp")


def test_cluster_down_gives_eio_then_recovers(tmp_path: Path) -> None:
    from conftest import run_cli

    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path)
    try:
        m.up()
        m.mount("failtimeout=5")
        (m.point / "f").write_bytes(b"before")
        assert run_cli("dev", "down", "--dir", str(m.dir), env=m.env, timeout=60).returncode == 0
        started = time.monotonic()
        probe = subprocess.run(
            ["stat", str(m.point / "not-cached-name")], capture_output=True, text=True, timeout=60
        )
        waited = time.monotonic() - started
        assert probe.returncode != 0 and "Input/output error" in probe.stderr, probe.stderr
        assert waited < 30  # failtimeout is 5 s; never hangs
        listing = subprocess.run(["ls", str(m.point)], capture_output=True, text=True, timeout=60)
        assert listing.returncode != 0  # an error, not an invented empty listing
        m.up()  # same ports: the mount finds its cluster again
        deadline = time.monotonic() + 60
        while True:
            try:
                assert (m.point / "f").read_bytes() == b"before"
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        (m.point / "g").write_bytes(b"after")
        assert sorted(os.listdir(m.point)) == ["f", "g"]
        assert is_mounted(m.point)
    finally:
        m.cleanup()


def test_mount_t_prismfs_and_fstab(tmp_path: Path) -> None:
    """The helper installed where mount(8) looks: `mount -t prismfs`, `umount`,
    and an fstab line with _netdev (mount --fstab)."""
    from conftest import run_cli

    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    helper = Path("/sbin/mount.prismfs")
    previous = helper.read_bytes() if helper.exists() else None
    m = Mount(tmp_path)
    try:
        result = run_cli("install-mount-helper", timeout=30)
        assert result.returncode == 0, result.stderr
        assert os.access(helper, os.X_OK)
        m.up()
        m.point.mkdir()
        opts = f"log={m.log},pidfile={m.pidfile}"
        source = str(m.dir / "client.toml")
        sh("mount", "-t", "prismfs", source, str(m.point), "-o", opts, timeout=60)
        assert is_mounted(m.point)
        (m.point / "f").write_bytes(b"via mount -t")
        sh("umount", str(m.point), timeout=60)
        assert not is_mounted(m.point)
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{source} {m.point} prismfs _netdev,noauto,{opts} 0 0\n")
        sh("mount", "--fstab", str(fstab), str(m.point), timeout=60)
        assert (m.point / "f").read_bytes() == b"via mount -t"
    finally:
        m.cleanup()
        if previous is None:
            helper.unlink(missing_ok=True)
        else:
            helper.write_bytes(previous)
