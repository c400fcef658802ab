"""Mounting a real 3-node dev cluster for tests, and always unmounting it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from conftest import run_cli
from prismfs.procs import process_alive


def errno_of(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """The errno ``fn(*args)`` fails with (0: it did not fail)."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno or 0
    return 0


def mount_stats(point: Path) -> dict[str, int]:
    """The mount's counters (`prismfs mount stats`), a histogram as its count."""
    raw = json.loads(os.getxattr(point, "user.prismfs.stats"))
    counts = dict(raw["counts"])
    for name, h in raw["latency"].items():
        counts[name] = counts.get(name, 0) + h["count"]
    return counts


def path_exists(path: Path) -> bool:
    """lstat succeeds (unlike Path.exists, any error but ENOENT is raised)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def two_mounts(base: Path) -> Iterator[tuple[Mount, Path, Path]]:
    """A 3-node dev cluster in ``base`` with two mounts, "a" and "b"."""
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    cluster = Mount(base, "a")
    other = Mount(base, "b")
    other.dir = cluster.dir
    try:
        cluster.up()
        a = cluster.mount()
        b = other.mount()
        yield cluster, a, b
    finally:
        other.unmount()
        cluster.cleanup()


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse")


def is_mounted(mountpoint: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(mountpoint) for line in f)


def stop_daemon(pidfile: Path) -> None:
    """Wait up to 10 s for the mount daemon in ``pidfile`` to exit after its
    unmount, then kill it."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pidfile.read_text().strip())
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Mount:
    def __init__(self, base: Path, name: str = "mnt") -> None:
        self.base = base
        self.env = {"PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
        self.dir = base / "state" / "c"
        self.point = base / name
        self.pidfile = base / f"{name}.pid"
        self.log = base / f"{name}.log"

    def up(self, *, nodes: int = 3) -> list[dict[str, object]]:
        result = run_cli(
            "dev",
            "up",
            "--nodes",
            str(nodes),
            "--dir",
            str(self.dir),
            "--json",
            env=self.env,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["nodes"])

    def nodes(self) -> list[dict[str, object]]:
        return list(json.loads((self.dir / "dev.json").read_text())["nodes"])

    def mount(self, options: str = "", point: Path | None = None) -> Path:
        point = point or self.point
        point.mkdir(exist_ok=True)
        opts = f"log={self.log},pidfile={self.pidfile}" + (f",{options}" if options else "")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "prismfs.cli.mount_helper_main",
                str(self.dir / "mount.toml"),  # a client credential, as mount hosts get
                str(point),
                "-o",
                opts,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
        )
        assert result.returncode == 0, result.stderr + self.log.read_text()
        assert is_mounted(point)
        return point

    def unmount(self, point: Path | None = None) -> None:
        point = point or self.point
        if is_mounted(point):
            subprocess.run(["fusermount3", "-u", str(point)], timeout=30, check=False)
            deadline = time.monotonic() + 10
            while is_mounted(point) and time.monotonic() < deadline:
                time.sleep(0.1)
            if is_mounted(point):
                subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=30, check=False)
        self._stop_daemon()

    def _stop_daemon(self) -> None:
        stop_daemon(self.pidfile)

    async def library(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run ``fn(meta, *args)`` with a MetaClient of this cluster (beside the mount)."""
        from prismfs.client.config import load_client_toml
        from prismfs.meta.client import MetaClient
        from prismfs.wire.client import open_rpc_pool

        client = load_client_toml(self.dir / "client.toml")
        async with open_rpc_pool(client.credentials(), connect_timeout=2) as pool:
            return await fn(MetaClient(pool, list(client.addresses)), *args)

    def cleanup(self, extra: Sequence[subprocess.Popen[bytes]] = ()) -> None:
        """Unmount, kill the ``extra`` node processes a test started itself, stop
        the dev cluster if there is one, and check that none of its processes
        is left."""
        self.unmount()
        for proc in extra:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        if not (self.dir / "dev.json").exists():
            return  # no dev cluster: the test started every node itself
        run_cli("dev", "down", "--dir", str(self.dir), env=self.env, timeout=60)
        for node in self.nodes():
            assert not process_alive(int(node["pid"]), str(node["data_dir"]))  # type: ignore[call-overload]
