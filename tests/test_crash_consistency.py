"""Crash consistency: a checksummed, fsync'd workload (`crash_workload.py`) on a
real mount of a real 3-node cluster, one fault per test:

- kill -9 of the Raft leader;
- kill -9 of a storage node for good (and every acknowledged chunk still
  readable with one more node gone; then a replacement node is added);
- kill -9 of the mount daemon itself (remount, then verify);
- a follower cut off from the leader (an injected network partition);
- the leader's wall clock jumped 120 s ahead (an injected clock);
- an apply error on one replica (its metadata database held locked by another
  process, as an operator's sqlite3 shell would: SQLITE_BUSY);
- the leader stopped (SIGSTOP) three times for longer than an election under
  writers that close small files without fsync (``crash_workload.py
  --no-fsync``): a running mount loses nothing it acknowledged.

After recovery, every operation the workload saw succeed (recorded only after
its fsync and fsyncdir) is checked: every file present and byte-exact, nothing
removed after fsyncdir is back, every replica's namespace digest equal, and
fsck clean. Each test prints written / verified / errors / wrong / missing,
fails on any wrong or missing file, and, where the cluster kept a quorum and
enough nodes, on any error the application saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from crash_workload import Report, check, replay
from fuse_mount import Mount, fuse_available
from prismfs.client.config import load_client_toml
from prismfs.client.data import DataClient
from prismfs.errors import PrismError
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, ChunkRecord
from prismfs.procs import process_alive
from prismfs.wire.client import open_rpc_pool
from test_membership import Nodes, wait_for

pytestmark = pytest.mark.timeout(600)

WORKLOAD = Path(__file__).with_name("crash_workload.py")
NODE_TOML = (
    "[data]\nheartbeat_s = 0.3\nnode_down_after_s = 3\nrepair_after_s = 2\n"
    "rebalance_mb_per_s = 300\nrepair_mb_per_s = 300\nmove_delete_after_s = 5\n"
    "gc_interval_s = 1\n"
)


class Crash:
    """A 3-node cluster, a mount, the workload, and what the checks need."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes = Nodes(base)
        self.nodes.config.write_text(NODE_TOML)
        # Each node reads its own clock offset and partition from its data directory.
        self.nodes.env["PRISMFS_CLOCK_OFFSET_FILE"] = "clock_offset"
        self.nodes.env["PRISMFS_PARTITION_FILE"] = "partition"
        self.started: list[dict[str, Any]] = []
        self.manifest = base / "manifest.jsonl"
        self.workload: subprocess.Popen[bytes] | None = None

    @property
    def mnt(self) -> Path:
        return self.nodes.mount.point

    def up(self) -> None:
        self.started = self.nodes.up(3)
        self.mount()

    def mount(self) -> None:
        self.nodes.mount.mount("failtimeout=60")

    def start_workload(self, *args: str) -> None:
        self.workload = subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(self.mnt / "work"), str(self.manifest), *args],
            stdin=subprocess.DEVNULL,
        )

    def run_for(self, seconds: float) -> None:
        assert self.workload is not None and self.workload.poll() is None, "the workload died"
        time.sleep(seconds)

    def stop_workload(self) -> None:
        assert self.workload is not None
        self.workload.send_signal(signal.SIGTERM)
        try:
            self.workload.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.workload.kill()
            self.workload.wait(timeout=30)
            raise AssertionError("the workload did not stop within 180 s") from None

    def leader(self) -> dict[str, Any]:
        leader = self.nodes.health()["leader"]
        return next(n for n in self.started if n["id"] == leader)

    def all_up(self) -> bool:
        return [n["state"] for n in self.nodes.health()["nodes"]] == ["up"] * len(self.started)

    def follower(self) -> dict[str, Any]:
        leader = self.leader()
        return next(n for n in self.started if n["id"] != leader["id"])

    def data_dir(self, node: dict[str, Any]) -> Path:
        return Path(str(node["data_dir"]))

    def kill(self, node: dict[str, Any]) -> None:
        os.kill(int(node["pid"]), signal.SIGKILL)
        wait_for(lambda: not process_alive(int(node["pid"])), 10, "node exit")

    def restart(self, node: dict[str, Any]) -> None:
        self.nodes.start(self.data_dir(node), str(node["rpc_address"]), new=False)
        node["pid"] = self.nodes.procs[-1].pid

    def verify(
        self, what: str, *, errors_allowed: bool = False, root: Path | None = None
    ) -> Report:
        report = check((root or self.mnt) / "work", replay(self.manifest))
        print(f"\n{what}: {report.line()}")
        for kind, items in (("wrong", report.wrong), ("missing", report.missing)):
            assert not items, f"{kind}: {items[:10]}"
        assert not report.back, f"removed after fsyncdir, yet back: {report.back[:10]}"
        if not errors_allowed:
            assert not report.errors, f"the application saw errors: {report.errors[:5]}"
        assert report.written > 10, "the workload hardly ran"
        return report

    def settled(self, timeout: float = 180) -> None:
        """Every replica's namespace digest equal; every chunk fully redundant
        (status exit 0); fsck clean."""
        addresses = [str(n["rpc_address"]) for n in self.started]
        trio.run(digests_converged, self.nodes.client_toml, addresses)
        wait_for(lambda: self.nodes.cli("cluster", "status")[0] == 0, timeout, "status clean")
        code, out, err = self.nodes.cli("fsck", timeout=600)
        assert code == 0, out + err + self._trace_missing()

    def _trace_missing(self) -> str:
        """What the logs say of the chunks whose shards fsck found missing
        (every shard delete is logged with its ids and who asked)."""
        _, out, _ = self.nodes.cli("fsck", "--json", timeout=600)
        try:
            missing = json.loads(out.splitlines()[-1]).get("missing", [])  # the summary
        except (ValueError, IndexError):
            return "\n(fsck --json gave no report)"
        chunks = {str(sid).rsplit(":", 1)[-1].split(".")[0] for sid in missing}
        logs = [
            path
            for n in self.started
            for d in [self.data_dir(n)]
            for path in (d / "node.log", d.parent / f"{d.name}.log")
        ]
        logs.append(self.nodes.mount.log)
        lines = [f"\nmissing shards: {sorted(missing)[:20]}"]
        for path in logs:
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                found = [c for c in chunks if c in line]
                if found:  # (a delete's line lists many ids: keep its head)
                    lines.append(f"{path.name}: {line[:200]} [{' '.join(found)}]")
        return "\n".join(lines[:60])

    def cleanup(self) -> None:
        if self.workload is not None and self.workload.poll() is None:
            self.workload.kill()
            self.workload.wait(timeout=30)
        self.nodes.cleanup()


async def digests_converged(client_toml: Path, addresses: list[str], deadline: float = 120) -> None:
    """Until every replica's namespace digest is the same."""
    client = load_client_toml(client_toml)
    async with open_rpc_pool(client.credentials(), connect_timeout=2) as pool:
        meta = MetaClient(pool, addresses)
        with trio.fail_after(deadline):
            while True:
                digests = set()
                for address in addresses:
                    try:
                        digests.add(await meta.digest(address))
                    except PrismError as exc:
                        digests.add(f"{address}: {exc.message}")
                if len(digests) == 1:
                    return
                await trio.sleep(0.5)


@pytest.fixture
def crash(tmp_path: Path) -> Iterator[Crash]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    c = Crash(tmp_path)
    try:
        c.up()
        yield c
    finally:
        c.cleanup()


def test_leader_killed(crash: Crash) -> None:
    crash.start_workload()
    crash.run_for(4)
    leader = crash.leader()
    crash.kill(leader)
    crash.run_for(8)
    crash.stop_workload()
    crash.restart(leader)
    crash.verify("leader killed")
    crash.settled()


def test_files_closed_without_fsync_survive_leader_changes(crash: Crash) -> None:
    """Small files closed without fsync (held back in the mount's write-back,
    under directory delegations) while the leader is stopped three times
    for longer than an election (as a leader stalled on its disk), then
    continued: a running mount loses none of them and fails none, as seen
    from a second mount. (Before the fix, 4 to 6 of about 8,000 were lost.)"""
    crash.start_workload("--no-fsync", "--writers", "4")
    crash.run_for(3)
    for _ in range(3):
        leader = crash.leader()
        os.kill(int(leader["pid"]), signal.SIGSTOP)
        try:
            crash.run_for(3)
        finally:
            os.kill(int(leader["pid"]), signal.SIGCONT)
        wait_for(crash.all_up, 60, "every node up")
        crash.run_for(3)
    crash.stop_workload()
    other = Mount(crash.base, "mnt2")
    try:
        other.mount()
        crash.verify("leader stopped three times, no fsync", root=other.point)
    finally:
        other.unmount()


def test_storage_node_lost_for_good(crash: Crash, logs: Any) -> None:
    crash.start_workload()
    crash.run_for(4)
    lost = crash.follower()
    crash.kill(lost)
    crash.run_for(10)
    crash.stop_workload()
    crash.verify("node lost for good")
    survivors = [n for n in crash.started if n["id"] != lost["id"]]
    # Every acknowledged chunk, those written before the loss too (repair gives
    # them a layout the two nodes left can hold), survives one more node loss.
    wait_for(lambda: trio.run(all_survive_one_more_loss, crash), 120, "redundancy restored")
    # The operator adds a replacement: the chunks get their 2-of-3 layout back.
    replacement = crash.base / "node4"
    address = crash.nodes.start(replacement)
    crash.nodes.ok("node", "add", address)
    # ... and removes the lost node (a node down counts against `cluster status`).
    crash.nodes.ok("node", "remove", str(lost["id"]), "--force")
    crash.started = [*survivors, {"rpc_address": address, "data_dir": str(replacement)}]
    crash.settled()


async def all_survive_one_more_loss(crash: Crash) -> bool:
    """Read every file's chunks with each node in turn taken away (as if it
    died too): each must still decode to the file's bytes."""
    expected = replay(crash.manifest)
    client = load_client_toml(crash.nodes.client_toml)
    async with open_rpc_pool(client.credentials(), connect_timeout=2) as pool:
        meta = MetaClient(pool, list(client.addresses))
        data = DataClient(pool, meta)
        up = {n.node for n in await meta.nodes() if n.state == "up"}
        for path, _ in sorted(expected.files.items()):
            ino = ROOT_INO
            for part in ("work", *path.split("/")):
                ino = (await meta.lookup(ino, part.encode())).ino
            records: list[ChunkRecord] = [r for _, r in (await meta.chunk_map(ino)).chunks]
            for rec in records:
                if rec.is_inline:
                    continue  # in the metadata, replicated by Raft on every voter
                live = [n for n in rec.nodes if n in up]
                if len(live) - rec.k < 1:
                    return False  # not yet: repair is still at work
                for gone in live:
                    alone = tuple(n if n in up and n != gone else "" for n in rec.nodes)
                    body = await data.read_chunk(msgspec.structs.replace(rec, nodes=alone))
                    assert len(body) == rec.length
    return True


def test_mount_daemon_killed(crash: Crash, logs: Any) -> None:
    crash.start_workload()
    crash.run_for(5)
    pid = int(crash.nodes.mount.pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    crash.run_for(1)
    crash.stop_workload()
    crash.nodes.mount.unmount()
    crash.mount()
    report = crash.verify("mount daemon killed", errors_allowed=True)
    assert report.errors, "the workload should have seen its mount go away"
    crash.settled()


def test_mount_killed_after_fsync_of_chunks_uploaded_ahead(crash: Crash) -> None:
    """A 40 MiB file written in 1 MiB writes: each full chunk is uploaded in
    the background while the writer goes on, and some are committed before
    the end (``writeback_mb=8``). Once its fsync (and the directory's)
    returned, kill -9 of the mount loses none of it."""
    crash.nodes.mount.unmount()
    crash.nodes.mount.mount("failtimeout=60,writeback_mb=8")
    data = os.urandom((40 << 20) + 12345)
    path = crash.mnt / "uploaded-ahead"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for at in range(0, len(data), 1 << 20):
            os.write(fd, data[at : at + (1 << 20)])
        os.fsync(fd)
        dir_fd = os.open(crash.mnt, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        counts = json.loads(os.getxattr(crash.mnt, "user.prismfs.stats"))["counts"]
        assert counts.get("data.uploads_ahead", 0) >= 8, counts
        os.kill(int(crash.nodes.mount.pidfile.read_text()), signal.SIGKILL)
    finally:
        with contextlib.suppress(OSError):  # (the mount is gone: ENOTCONN)
            os.close(fd)
    crash.nodes.mount.unmount()
    crash.mount()
    with open(path, "rb") as f:
        assert f.read() == data
    crash.settled()


def test_follower_partitioned_from_the_leader(crash: Crash) -> None:
    crash.start_workload()
    crash.run_for(3)
    leader, follower = crash.leader(), crash.follower()
    cut = [(leader, follower), (follower, leader)]
    for a, b in cut:
        (crash.data_dir(a) / "partition").write_text(f"{b['rpc_address']}\n")
    crash.run_for(10)
    for a, _ in cut:
        (crash.data_dir(a) / "partition").write_text("")
    crash.run_for(3)
    crash.stop_workload()
    crash.verify("follower partitioned")
    crash.settled()


def test_leader_clock_jumps_ahead(crash: Crash) -> None:
    crash.start_workload()
    crash.run_for(3)
    leader = crash.leader()
    (crash.data_dir(leader) / "clock_offset").write_text("120")
    crash.run_for(12)  # two session sweeps and more
    crash.stop_workload()
    crash.verify("leader clock +120 s")
    mount_log = crash.nodes.mount.log.read_text()
    assert "was ended by the cluster" not in mount_log
    node_log = crash.data_dir(leader).parent / f"{crash.data_dir(leader).name}.log"
    if node_log.exists():
        assert "lease ran out" not in node_log.read_text()
    crash.settled()


def test_apply_error_on_one_replica(crash: Crash) -> None:
    crash.start_workload()
    crash.run_for(3)
    victim = crash.follower()
    db = sqlite3.connect(crash.data_dir(victim) / "meta" / "namespace.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell holds the write lock
    try:
        # Its next apply waits out SQLite's busy timeout, fails, and the node stops.
        wait_for(lambda: not process_alive(int(victim["pid"])), 60, "the replica halts")
    finally:
        db.execute("ROLLBACK")
        db.close()
    crash.run_for(3)  # the other two go on
    crash.restart(victim)  # replays the log from its applied index
    crash.run_for(3)
    crash.stop_workload()
    crash.verify("apply error on one replica")
    halted = (crash.data_dir(victim) / "node.log").read_text()
    assert "could not apply committed entry" in halted
    crash.settled()
