"""A million coded chunks through a real cluster: status, metrics and repair.

A 4-node ``prismfs dev`` cluster (with the HTTP API, ``repair_after_s = 0``,
``repair_mb_per_s = 1000``). ``--clients`` writers in this process store
``--chunks`` files of ``--size`` bytes (512 by default), each one 2-of-3
chunk whose three shards go to three of the four nodes (``inline_max = 0``:
nothing rides in the metadata), and create the files in `Batch`es of
``--batch`` (`Mknod` with a reserved inode number, then its `CommitChunks`),
10,000 files a directory. At 100k and 1M chunks (as far as ``--chunks``
goes) it reports chunks per second since the last checkpoint, every node's
resident memory and the Raft term.

Then, with every chunk written, it times what reads every record: ``prismfs
cluster status --json`` and ``GET /metrics`` of the leader (each three
times), and kills -9 a node other than the leader. From the kill it polls
the status every second: the time until the node is marked down, until no
chunk is degraded (every one of its shards rebuilt elsewhere), the shards
rebuilt per second, the longest status call meanwhile, and the Raft terms
seen (a change is an election) all along.

    .venv/bin/python benchmarks/bench_chunks.py [--chunks 1000000] [--clients 32]
        [--batch 200] [--size 512] [--json] [--keep-logs DIR]
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
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_repair import _cli, _dev_down
from bench_scale import leader_status, rss_mib

from prismfs.client.data import DataClient
from prismfs.data.layout import Layout
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, CommitChunks, Mkdir, Mknod
from prismfs.wire.auth import read_secret_file
from prismfs.wire.client import open_rpc_pool

REG = stat.S_IFREG | 0o644
PER_DIR = 10_000
CHECKPOINTS = (100_000, 1_000_000, 10_000_000)
NODE_TOML = "[data]\nrepair_after_s = 0\nrepair_mb_per_s = 1000\n"


def body(n: int, size: int) -> bytes:
    return (f"chunk {n} ".encode() * (size // 8 + 1))[:size]


class Writers:
    def __init__(self, chunks: int, batch: int, size: int) -> None:
        self.chunks = chunks
        self.batch = batch
        self.size = size
        self.next = 0
        self.written = 0
        self.dirs: dict[int, int] = {}

    async def directory(self, meta: MetaClient, n: int) -> int:
        if n not in self.dirs:
            self.dirs[n] = -1
            attr = await meta.propose(Mkdir(0, ROOT_INO, f"d{n:04d}".encode(), 0o755, 0, 0))
            assert attr is not None
            self.dirs[n] = attr.ino
        while self.dirs[n] < 0:
            await trio.sleep(0.01)
        return self.dirs[n]

    async def worker(self, meta: MetaClient, data: DataClient) -> None:
        layout = Layout(2, 3)
        while self.next < self.chunks:
            first = self.next
            last = min(self.chunks, first + self.batch, (first // PER_DIR + 1) * PER_DIR)
            self.next = last
            parent = await self.directory(meta, first // PER_DIR)
            inos = await meta.reserve_inodes(last - first)
            ops: list[Any] = []
            for ino, n in zip(inos, range(first, last), strict=False):
                record = await data.write_chunk(body(n, self.size), layout)
                ops.append(Mknod(0, parent, f"f{n:08d}".encode(), REG, 0, 0, ino=ino))
                ops.append(CommitChunks(0, ino, ((0, record),), self.size))
            results = await meta.batch(ops)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"{len(failed)} operations failed, e.g. {failed[0]}")
            self.written += last - first


def status(env: dict[str, str]) -> tuple[float, dict[str, Any] | None]:
    """(seconds, the leader's view) of one ``cluster status --json``."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "prismfs", "cluster", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - start
    view = json.loads(out.stdout).get("health") if out.stdout.strip() else None
    return took, view


async def write_all(args: argparse.Namespace, cluster: Path, nodes: list[dict[str, Any]]) -> Any:
    addresses = [str(n["rpc_address"]) for n in nodes]
    pids = {str(n["name"]): int(n["pid"]) for n in nodes}
    creds = read_secret_file(cluster / "node1" / "cluster.secret")
    rows: list[dict[str, Any]] = []
    terms: set[int] = set()
    async with open_rpc_pool(creds, connect_timeout=2) as pool:
        state = Writers(args.chunks, args.batch, args.size)
        clients = []
        for _ in range(args.clients):
            meta = MetaClient(pool, addresses, timeout=120)
            clients.append((meta, DataClient(pool, meta, inline_max=0)))
        start = previous_t = time.perf_counter()
        previous_n = 0
        checkpoints = [c for c in CHECKPOINTS if c <= args.chunks]
        if args.chunks not in checkpoints:
            checkpoints.append(args.chunks)

        async def watch() -> None:
            nonlocal previous_t, previous_n
            while checkpoints:
                await trio.sleep(1)
                st = await leader_status(pool, addresses)
                terms.add(st.term)
                if state.written >= checkpoints[0]:
                    now = time.perf_counter()
                    row = {
                        "chunks": state.written,
                        "chunks_per_s": round((state.written - previous_n) / (now - previous_t)),
                        "elapsed_s": round(now - start, 1),
                        "rss_mib": {name: rss_mib(pid) for name, pid in pids.items()},
                        "term": st.term,
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    previous_t, previous_n = now, state.written
                    while checkpoints and state.written >= checkpoints[0]:
                        checkpoints.pop(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as workers:
                for meta, data in clients:
                    workers.start_soon(state.worker, meta, data)
        leader = await leader_status(pool, addresses)
        terms.add(leader.term)
    return rows, terms, leader.node_id


def measure(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-chunks-"))
    cluster = base / "cluster"
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    config = base / "node.toml"
    config.write_text(NODE_TOML)
    result: dict[str, Any] = {"chunks": args.chunks, "size": args.size, "nodes": 4}
    try:
        up = _cli(env, "dev", "up", "--nodes", "4", "--dir", str(cluster), "--json", "--http",
                  "--node-config", str(config))  # fmt: skip
        nodes = list(json.loads(up)["nodes"])
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        rows, terms, leader = trio.run(write_all, args, cluster, nodes)
        result["checkpoints"] = rows
        du = subprocess.run(["du", "-sb", str(cluster)], capture_output=True, text=True)
        result["cluster_bytes"] = int(du.stdout.split()[0])
        # What reads every record, timed with every chunk healthy.
        result["status_s"] = [round(status(env)[0], 2) for _ in range(3)]
        http = next(str(n["http_address"]) for n in nodes if n["id"] == leader)
        token = json.loads(_cli(env, "token", "create", "--read-only", "--uid", "0", "--json"))[
            "token"
        ]
        metrics = []
        for _ in range(3):
            start = time.monotonic()
            httpx.get(
                f"http://{http}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=120
            ).raise_for_status()
            metrics.append(round(time.monotonic() - start, 2))
        result["metrics_s"] = metrics
        # A node lost: its shards rebuilt on the others.
        victim = next(n for n in nodes if n["id"] != leader)
        _, view = status(env)
        assert view is not None
        terms.add(int(view.get("term", 0)))
        repaired_before = int(view["repaired_bytes"])
        chunks_before = int(view["repaired_chunks"])
        t0 = time.monotonic()
        os.kill(int(victim["pid"]), signal.SIGKILL)
        down_at, slowest, degraded_max, done = 0.0, 0.0, 0, 0.0
        while time.monotonic() - t0 < args.repair_timeout:
            time.sleep(1)
            took, view = status(env)
            slowest = max(slowest, took)
            if view is None:
                continue
            terms.add(int(view.get("term", 0)))
            state = next(n["state"] for n in view["nodes"] if n["node"] == victim["id"])
            degraded_max = max(degraded_max, int(view["degraded"]))
            if state == "down" and not down_at:
                down_at = time.monotonic() - t0
            if down_at and view["degraded"] == 0 and view["unavailable"] == 0:
                done = time.monotonic() - t0
                break
        rebuilt = int(view["repaired_bytes"]) - repaired_before if view else 0
        shards = int(view["repaired_chunks"]) - chunks_before if view else 0
        result["repair"] = {
            "degraded_at_most": degraded_max,
            "shards_rebuilt": shards,
            "down_after_s": round(down_at, 1),
            "redundant_after_s": round(done, 1) if done else None,
            "shards_per_s": round(shards / (done - down_at)) if done else None,
            "rebuilt_mb": round(rebuilt / 1e6, 1),
            "slowest_status_s": round(slowest, 2),
        }
        result["terms_seen"] = sorted(t for t in terms if t)
        result["leader_changes"] = len(result["terms_seen"]) - 1
    finally:
        if args.keep_logs:
            into = Path(args.keep_logs)
            into.mkdir(parents=True, exist_ok=True)
            for log in cluster.glob("*/node.log"):
                shutil.copy(log, into / f"{log.parent.name}.log")
        _dev_down(env, cluster)
        shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repair-timeout", type=float, default=3600)
    parser.add_argument("--keep-logs", default="")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
