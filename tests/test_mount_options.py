"""The mount as an operator meets it: generic mount(8) options reaching the
kernel, the source as fsname (findmnt, ``mount -a`` run twice), auto_unmount
after kill -9, the daemon's logs (syslog by default, levels, one-line
errors), subdir mounts, ``prismfs umount``, and what ``df`` shows. One
3-node dev cluster serves every test of the module."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from conftest import run_cli
from fuse_mount import Mount, errno_of, fuse_available, is_mounted, stop_daemon
from prismfs.errors import NotFound

pytestmark = pytest.mark.timeout(240)

HELPER = [sys.executable, "-m", "prismfs.cli.mount_helper_main"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path_factory.mktemp("mount-options"), "full")
    try:
        m.up()
        yield m
    finally:
        m.cleanup()


@contextlib.contextmanager
def mounted(cluster: Mount, name: str, options: str = "") -> Iterator[Mount]:
    """Another mount of the module's cluster, always unmounted."""
    m = Mount(cluster.base, name)
    m.dir = cluster.dir
    try:
        m.mount(options)
        yield m
    finally:
        m.unmount()


def helper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HELPER, *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The helper's stderr, checked to be one ``mount.prismfs:`` line."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mount.prismfs: "), result.stderr
    return lines[0]


def mountinfo(point: Path) -> list[list[str]]:
    """The /proc/self/mountinfo lines of mounts at ``point``, split in fields."""
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f if line.split()[4] == str(point)]


def wait_for(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


# --- generic options and fsname ----------------------------------------------------------


def test_generic_options_reach_the_kernel(cluster: Mount) -> None:
    fstab_only = "comment=systemd.x,x-systemd.automount,_netdev,nofail,defaults,nodiratime"
    with mounted(cluster, "flags", f"nosuid,nodev,noexec,{fstab_only}") as m:
        [fields] = mountinfo(m.point)
        assert {"nosuid", "nodev", "noexec"} <= set(fields[5].split(",")), fields
        # The source, as given, is what findmnt shows and mount -a matches.
        assert fields[fields.index("-") + 1 :][:2] == [
            "fuse.prismfs",
            str(cluster.dir / "mount.toml"),
        ]
        script = m.point / "x.sh"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
        assert errno_of(subprocess.run, [str(script)], timeout=30) == errno.EACCES
    with mounted(cluster, "plain") as m:
        [fields] = mountinfo(m.point)
        assert "noexec" not in fields[5].split(",")
        assert subprocess.run([str(m.point / "x.sh")], timeout=30).returncode == 0


def test_bad_options_and_paths_are_one_line(cluster: Mount, tmp_path: Path) -> None:
    source = str(cluster.dir / "mount.toml")
    point = tmp_path / "mnt"
    point.mkdir()
    cases = [
        ("nosuchoption", "unknown mount option 'nosuchoption'"),
        ("suid", "suid needs no_auto_unmount"),
        ("loglevel=loud", "loglevel is one of"),
        ("subdir=/a/../b", "may not contain '..'"),
        (f"log={tmp_path}/missing/m.log", f"the directory of the log {tmp_path}/missing/m.log"),
        (f"pidfile={tmp_path}/missing/m.pid", "the directory of the pidfile"),
    ]
    for options, message in cases:
        for extra in ([], ["-f"]):
            result = helper(source, str(point), "-o", options, *extra)
            assert result.returncode == 1, (options, result.stderr)
            assert message in one_line(result), (options, result.stderr)
    assert not is_mounted(point)


def test_unreachable_cluster_is_one_line_without_traceback(cluster: Mount, tmp_path: Path) -> None:
    secret = cluster.dir / "node1" / "client.secret"
    point = tmp_path / "mnt"
    point.mkdir()
    log = tmp_path / "m.log"
    opts = f"secret={secret},failtimeout=2,log={log}"
    daemon = helper("127.0.0.1:1", str(point), "-o", opts)
    assert daemon.returncode == 32, daemon.stderr
    assert "cannot connect to 127.0.0.1:1" in one_line(daemon)
    text = log.read_text()
    assert "mount failed: " in text and "Traceback" not in text, text
    foreground = helper("127.0.0.1:1", str(point), "-o", opts, "-f")
    assert foreground.returncode == 32 and "cannot connect" in one_line(foreground)
    assert "Traceback" not in log.read_text()


def test_mount_a_twice_mounts_once(cluster: Mount, tmp_path: Path) -> None:
    """fsname is the source, so mount -a sees the fstab entry mounted; the
    helper installed as install-mount-helper does (and put back after)."""
    target = Path("/sbin/mount.prismfs")
    previous = target.read_bytes() if target.exists() else None
    m = Mount(cluster.base, "fstab")
    m.dir = cluster.dir
    m.point.mkdir(exist_ok=True)
    try:
        installed = run_cli("install-mount-helper", timeout=30)
        assert installed.returncode == 0, installed.stderr
        assert f"it runs {sys.executable}" in installed.stdout
        if sys.prefix != sys.base_prefix:
            assert f"virtual environment {sys.prefix}" in installed.stdout
            assert "need it to stay where it is" in installed.stdout
        fstab = tmp_path / "fstab"
        source = str(cluster.dir / "mount.toml")
        fstab.write_text(f"{source} {m.point} prismfs log={m.log},pidfile={m.pidfile} 0 0\n")
        for _ in range(2):
            done = subprocess.run(
                ["mount", "-a", "-T", str(fstab)], capture_output=True, text=True, timeout=90
            )
            assert done.returncode == 0, done.stderr
        assert len(mountinfo(m.point)) == 1
        found = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(m.point)], capture_output=True, text=True
        )
        assert found.stdout.strip() == source
    finally:
        m.unmount()
        if previous is None:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(previous)


def test_kill_9_of_the_daemon_unmounts(cluster: Mount) -> None:
    m = Mount(cluster.base, "killed")
    m.dir = cluster.dir
    try:
        m.mount()
        pid = int(m.pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not is_mounted(m.point), timeout=5)
        assert errno_of(os.stat, m.point) == 0  # not ENOTCONN: the empty directory
        assert os.listdir(m.point) == []
    finally:
        m.unmount()


# --- logging ------------------------------------------------------------------------------


def test_daemon_logs_to_syslog_by_default(cluster: Mount, tmp_path: Path) -> None:
    sock_path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    point = tmp_path / "mnt"
    point.mkdir()
    pidfile = tmp_path / "m.pid"
    try:
        result = helper(
            str(cluster.dir / "mount.toml"),
            str(point),
            "-o",
            f"pidfile={pidfile}",
            env={"PRISMFS_SYSLOG": str(sock_path)},
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        message = sock.recv(65536).decode()
        pid = pidfile.read_text().strip()
        # Syslog framing, then the node's line format with node=mount.
        assert message.startswith(f"<14>mount.prismfs[{pid}]: "), message
        assert "INFO    node=mount prismfs.fuse: mounted " in message, message
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], timeout=30, check=False)
        stop_daemon(pidfile)
        sock.close()


def test_no_syslog_is_said_before_detaching(cluster: Mount, tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    pidfile = tmp_path / "m.pid"
    try:
        result = helper(
            str(cluster.dir / "mount.toml"),
            str(point),
            "-o",
            f"pidfile={pidfile}",
            env={"PRISMFS_SYSLOG": str(tmp_path / "nobody-listens")},
        )
        assert result.returncode == 0
        assert "the daemon's messages are lost (give -o log=FILE)" in one_line(result)
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], timeout=30, check=False)
        stop_daemon(pidfile)


def test_loglevel_and_foreground_stderr(cluster: Mount, tmp_path: Path) -> None:
    with mounted(cluster, "quiet", "loglevel=warning") as m:
        pass
    assert "mounted" not in m.log.read_text()
    with mounted(cluster, "info", "loglevel=info") as m:
        pass
    assert "node=mount prismfs.fuse: mounted" in m.log.read_text()
    point = tmp_path / "fg"
    point.mkdir()
    proc = subprocess.Popen(
        [*HELPER, str(cluster.dir / "mount.toml"), str(point), "-f"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: is_mounted(point), timeout=30)
        subprocess.run(["fusermount3", "-u", str(point)], timeout=30, check=True)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "node=mount prismfs.fuse: mounted" in err and "unmounted" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if is_mounted(point):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=30, check=False)


# --- subdir -------------------------------------------------------------------------------


def test_subdir_is_the_root_and_dotdot_does_not_escape(cluster: Mount, tmp_path: Path) -> None:
    with mounted(cluster, "whole") as whole:
        top = whole.point / "projects" / "a"
        top.mkdir(parents=True)
        (top / "f").write_bytes(b"from the whole mount")
        (whole.point / "projects" / "file").write_bytes(b"not a directory")
        with mounted(cluster, "sub", "subdir=/projects/a") as sub:
            assert os.listdir(sub.point) == ["f"]
            assert (sub.point / "f").read_bytes() == b"from the whole mount"
            root = os.stat(sub.point)
            assert stat.S_ISDIR(root.st_mode) and root.st_ino == os.stat(top).st_ino
            # ".." at the mount's root is the directory the mount sits in.
            assert os.stat(sub.point / "..").st_ino == os.stat(sub.point.parent).st_ino
            assert sorted(os.listdir(sub.point / "..")) == sorted(os.listdir(sub.point.parent))
            (sub.point / "g").write_bytes(b"from the subdir mount")
            (sub.point / "d").mkdir()
            (sub.point / "d" / "h").write_bytes(b"deeper")
            assert sorted(os.listdir(top)) == ["d", "f", "g"]
            assert (top / "d" / "h").read_bytes() == b"deeper"
            # A name the subdir mount was told is missing (under its lease of
            # the directory, once the two mounts' sharing of it has passed),
            # then made by the other mount: the recall's invalidation reaches
            # the kernel at node id 1, so the name is there at once.
            time.sleep(5)
            assert "late" not in os.listdir(sub.point)
            assert not (sub.point / "late").exists()
            (top / "late").write_bytes(b"made elsewhere")
            assert (sub.point / "late").exists()
        source = str(cluster.dir / "mount.toml")
        point = tmp_path / "mnt"
        point.mkdir()
        for subdir, message in [
            ("/projects/missing", "subdir /projects/missing: no such directory"),
            ("/projects/file", "subdir /projects/file is not a directory"),
        ]:
            result = helper(source, str(point), "-o", f"subdir={subdir}", "-f")
            assert result.returncode == 32 and message in one_line(result), result.stderr
            assert not is_mounted(point)


# --- prismfs umount -----------------------------------------------------------------------


def test_prismfs_umount_flushes_then_unmounts(cluster: Mount, tmp_path: Path) -> None:
    m = Mount(cluster.base, "umount")
    m.dir = cluster.dir
    busy: subprocess.Popen[bytes] | None = None
    try:
        m.mount("writeback_s=3600,settle_s=3600")
        work = m.point / "umount"
        work.mkdir()
        (work / "first").write_bytes(b"")  # this mount has the directory's delegation
        with open(work / "kept", "wb") as f:
            f.write(b"flushed by prismfs umount")
        ino = os.stat(work / "kept").st_ino
        # Held back (settle_s): the cluster does not know the inode yet.
        assert not trio.run(cluster.library, known, ino)
        busy = subprocess.Popen(["sleep", "60"], cwd=m.point)
        refused = run_cli("umount", str(m.point), timeout=60)
        assert refused.returncode == 1 and "busy" in refused.stderr, refused.stderr
        assert refused.stderr.startswith(f"prismfs: cannot unmount {m.point}: ")
        assert is_mounted(m.point)
        # The flush came first: the file is on the cluster, by its inode.
        assert trio.run(cluster.library, known, ino)
        busy.kill()
        busy.wait(timeout=10)
        result = run_cli("umount", str(m.point), timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"flushed and unmounted {m.point}"
        assert not is_mounted(m.point)
        stop_daemon(m.pidfile)
        m.mount()
        assert (work / "kept").read_bytes() == b"flushed by prismfs umount"
        m.unmount()
        # A read-only mount has nothing to flush: it is unmounted all the same.
        m.mount("ro")
        result = run_cli("umount", str(m.point), timeout=60)
        assert result.returncode == 0 and not is_mounted(m.point), result.stderr
        stop_daemon(m.pidfile)
    finally:
        if busy is not None and busy.poll() is None:
            busy.kill()
            busy.wait(timeout=10)
        m.unmount()
    for path in (m.point, tmp_path / "missing"):
        refused = run_cli("umount", str(path), timeout=30)
        assert refused.returncode == 1
        assert refused.stderr.strip() == f"prismfs: {path} is not a PrismFS mount point"


async def known(meta, ino: int) -> bool:  # type: ignore[no-untyped-def]
    """Does the cluster know inode ``ino`` (asked by number: no recall)?"""
    try:
        await meta.getattr(ino)
    except NotFound:
        return False
    return True


# --- df -----------------------------------------------------------------------------------


def test_df_shows_usable_space_after_the_layout(cluster: Mount) -> None:
    """The dev cluster's 3 nodes, 2-of-3 layout: size = the nodes' disks *
    2/3, available = their free space * 2/3, a disk the nodes share counted
    once (docs/mount.md, df)."""
    with mounted(cluster, "df") as m:
        fs = os.statvfs(m.point)
        disks = [shutil.disk_usage(str(n["data_dir"])) for n in cluster.nodes()]
        devices = [os.stat(str(n["data_dir"])).st_dev for n in cluster.nodes()]
    assert len(set(devices)) == 1  # one machine, one disk: counted once, not three times
    share = len(devices)
    k, m_ = 2, 3
    total = sum(d.total // share for d in disks) * k // m_
    free = sum((d.total - d.used) // share for d in disks) * k // m_
    assert fs.f_blocks * fs.f_frsize == total // 4096 * 4096
    # Other processes write to the same disks meanwhile: within 1%.
    assert abs(fs.f_bavail * fs.f_frsize - free) <= free // 100, (fs, disks)
    assert fs.f_bfree == fs.f_bavail


def test_shard_space_against_brute_force() -> None:
    """The closed form of the df rule against its definition: the most shard
    bytes S with sum(min(free_i, S/m)) >= S (each node one shard of m)."""
    import random

    from prismfs.data.layout import Layout
    from prismfs.fuse.capacity import Disk, shard_space, usable

    rng = random.Random(21)
    for _ in range(300):
        m = rng.randint(1, 5)
        sizes = [rng.choice([0, rng.randint(0, 60)]) for _ in range(rng.randint(m, 7))]
        brute = max(s for s in range(sum(sizes) + 1) if sum(min(m * f, s) for f in sizes) >= m * s)
        assert shard_space(sizes, m) == brute, (sizes, m)
    # One big node cannot hold more than one shard of each chunk.
    big = [Disk(1000, 900), Disk(100, 90), Disk(100, 90)]
    assert usable(big, Layout(2, 3)) == Disk(200, 180)
    # Fewer nodes than the layout's m: the plain sums.
    assert usable(big[:2], Layout(2, 3)) == Disk(1100 * 2 // 3, 990 * 2 // 3)
    # Nodes naming the same disk split it; an unknown disk ("") counts alone.
    from prismfs.fuse.capacity import shared

    assert shared([Disk(90, 30), Disk(90, 30), Disk(50, 5)], ["h:1", "h:1", ""]) == [
        Disk(45, 15), Disk(45, 15), Disk(50, 5)]  # fmt: skip


async def root_xattrs(meta) -> list[bytes]:  # type: ignore[no-untyped-def]
    return list(await meta.listxattr(1))


def test_the_cluster_s_own_root_attributes_are_not_listed(cluster: Mount) -> None:
    """The scrub clock and the minimum redundancy live on the root as
    ``prismfs.*`` attributes, a namespace Linux does not have: a mount lists
    only what cp -a and rsync -X can copy."""
    deadline = time.monotonic() + 60
    while b"prismfs.scrub_completed" not in trio.run(cluster.library, root_xattrs):
        assert time.monotonic() < deadline, "the leader starts the scrub clock"
        time.sleep(0.5)
    m = Mount(cluster.base, "xattrs")
    m.dir = cluster.dir
    try:
        m.mount()
        os.setxattr(m.point, "user.note", b"mine")
        assert os.listxattr(m.point) == ["user.note"]
        os.removexattr(m.point, "user.note")
    finally:
        m.unmount()
