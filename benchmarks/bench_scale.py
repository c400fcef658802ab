"""Scale benchmark: millions of files through the real Raft path.

A 3-node `prismfs dev` cluster; ``--clients`` meta clients in this process
create ``--files`` empty files (10,000 per directory) with `Batch`es of
``--batch`` `Mknod`s, each batch one Raft entry, as a bulk import or a
mount's write-back would. Reported at each checkpoint (10k, 100k, 1M, 10M
files, as far as ``--files`` goes):

* creates per second over the interval since the previous checkpoint;
* every node's resident memory (VmRSS);
* the Raft term and leader (a term change is an election).

With ``--catch-up``, a fourth node then joins (a learner: a snapshot of the
whole namespace plus the log after it) and the time until it has applied
everything the leader had committed is reported, with the size of the
snapshot it received.

    .venv/bin/python benchmarks/bench_scale.py [--files 1000000] [--clients 4]
        [--batch 1000] [--catch-up] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_raft import DevCluster

from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, Mkdir, Mknod
from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply
from prismfs.wire.client import RpcPool, open_rpc_pool

REG = stat.S_IFREG | 0o644
PER_DIR = 10_000
CHECKPOINTS = (10_000, 100_000, 1_000_000, 10_000_000)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


async def leader_status(pool: RpcPool, addresses: list[str]) -> RaftStatusReply:
    while True:
        for address in addresses:
            try:
                reply = (await pool.call(address, RaftStatus(), timeout=5)).message
            except Exception:
                continue
            if isinstance(reply, RaftStatusReply) and reply.role == "leader":
                return reply
        await trio.sleep(0.1)


class Run:
    def __init__(self, files: int, batch: int) -> None:
        self.files = files
        self.batch = batch
        self.next = 0  # the next file number to hand out
        self.created = 0
        self.dirs: dict[int, int] = {}  # directory number -> inode
        self.terms: set[tuple[int, str]] = set()
        self.rows: list[dict[str, Any]] = []

    async def directory(self, meta: MetaClient, n: int) -> int:
        if n not in self.dirs:
            self.dirs[n] = -1  # being made
            attr = await meta.propose(Mkdir(0, ROOT_INO, f"d{n:05d}".encode(), 0o755, 0, 0))
            assert attr is not None
            self.dirs[n] = attr.ino
        while self.dirs[n] < 0:
            await trio.sleep(0.01)
        return self.dirs[n]

    async def worker(self, meta: MetaClient) -> None:
        while self.next < self.files:
            first = self.next
            # A batch never spans two directories.
            last = min(self.files, first + self.batch, (first // PER_DIR + 1) * PER_DIR)
            self.next = last
            parent = await self.directory(meta, first // PER_DIR)
            ops = [Mknod(0, parent, f"f{i:08d}".encode(), REG, 0, 0) for i in range(first, last)]
            results = await meta.batch(ops)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"{len(failed)} creates failed, e.g. {failed[0]}")
            self.created += len(ops)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = DevCluster()
    result: dict[str, Any] = {"files": args.files, "clients": args.clients, "batch": args.batch}
    try:
        nodes = await trio.to_thread.run_sync(cluster.up)
        addresses = [n.address for n in nodes]
        pids = {n.name: n.pid for n in nodes}
        async with open_rpc_pool(cluster.creds(), connect_timeout=2) as pool:
            state = Run(args.files, args.batch)
            metas = [MetaClient(pool, addresses, timeout=60) for _ in range(args.clients)]
            first = await leader_status(pool, addresses)
            state.terms.add((first.term, first.node_id))
            start = previous_t = time.perf_counter()
            previous_n = 0
            checkpoints = [c for c in CHECKPOINTS if c <= args.files]
            if args.files not in checkpoints:
                checkpoints.append(args.files)

            async def watch() -> None:
                nonlocal previous_t, previous_n
                while checkpoints:
                    await trio.sleep(0.5)
                    st = await leader_status(pool, addresses)
                    state.terms.add((st.term, st.node_id))
                    if state.created >= checkpoints[0]:
                        now = time.perf_counter()
                        row = {
                            "files": state.created,
                            "creates_per_s": round(
                                (state.created - previous_n) / (now - previous_t), 1
                            ),
                            "elapsed_s": round(now - start, 1),
                            "rss_mib": {name: rss_mib(pid) for name, pid in pids.items()},
                            "term": st.term,
                            "leader": st.node_id,
                        }
                        state.rows.append(row)
                        print(json.dumps(row), flush=True)
                        previous_t, previous_n = now, state.created
                        while checkpoints and state.created >= checkpoints[0]:
                            checkpoints.pop(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as workers:
                    for meta in metas:
                        workers.start_soon(state.worker, meta)
            result["checkpoints"] = state.rows
            result["terms_seen"] = sorted(state.terms)
            result["leader_changes"] = len(state.terms) - 1
            result["total_s"] = round(time.perf_counter() - start, 1)
            if args.catch_up:
                result["catch_up"] = await catch_up(cluster, pool, addresses)
    finally:
        if args.keep_logs:
            keep_logs(cluster, Path(args.keep_logs))
        await trio.to_thread.run_sync(cluster.teardown)
    return result


def keep_logs(cluster: DevCluster, into: Path) -> None:
    """Copy every node's log out of the cluster's directory before it goes."""
    into.mkdir(parents=True, exist_ok=True)
    for log in [*cluster.dir.glob("node*/node.log"), cluster.base / "node4.log"]:
        if log.exists():
            name = log.parent.name if log.name == "node.log" else log.stem
            shutil.copy(log, into / f"{name}.log")


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "prismfs", "node", "start", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def catch_up(cluster: DevCluster, pool: RpcPool, addresses: list[str]) -> dict[str, Any]:
    """A fourth node joins: the time until it applied what the leader had committed."""
    data = cluster.base / "node4"
    leader = await leader_status(pool, addresses)
    target = leader.commit
    secret = cluster.dir / "node1" / "cluster.secret"
    start = time.perf_counter()
    proc = start_node(
        [
            *("--data-dir", str(data), "--listen", "127.0.0.1:0"),
            *("--join", leader.leader_address, "--replica", "--secret-file", str(secret)),
            *("--log-file", str(cluster.base / "node4.log")),
        ],
        cluster.env,
    )
    try:
        with trio.fail_after(600):
            while not (data / "node.json").exists():
                await trio.sleep(0.1)
            address = json.loads((data / "node.json").read_text())["rpc_address"]
            while True:
                try:
                    reply = (await pool.call(address, RaftStatus(), timeout=5)).message
                except Exception:
                    reply = None
                if isinstance(reply, RaftStatusReply) and reply.applied >= target:
                    break
                await trio.sleep(0.2)
        seconds = time.perf_counter() - start
        images = list((data / "raft").glob("image-*.db"))
        return {
            "seconds": round(seconds, 1),
            "applied": target,
            "snapshot_bytes": sum(p.stat().st_size for p in images),
            "rss_mib": rss_mib(proc.pid),
            "installed_a_snapshot": "installed a snapshot"
            in (cluster.base / "node4.log").read_text(),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--catch-up", action="store_true", help="then time a new node's catch-up")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the nodes' logs there at the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = trio.run(run, args)
    print(json.dumps(result, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
