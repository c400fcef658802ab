"""Namespace benchmark: metadata operations per second on 3 real nodes.

What it measures (3 node processes from ``prismfs dev up`` on loopback, every
node fsyncing its Raft log as always, clients in this process over one
`RpcPool`):

* **creates, lookups, getattrs, renames per second** with 1 and with 32
  concurrent clients. Each client is its own `MetaClient` (its own session
  and exactly-once lanes) working in a directory of its own, one call at a
  time, for ``--seconds``. Creates are ``mknod`` of regular files; lookups
  and getattrs read back the files created (linearizable reads: a ReadIndex
  round with the leader, then the local replica); renames move a file
  within the client's directory.
* **readdir of a 10,000-entry directory**: the entries are created first (32
  clients), then one client lists the directory page by page (1,000 entries
  a page, the default) and the wall time of the whole listing is reported.
* **database size per million inodes** (``--million``): one `Namespace` in a
  temporary file applies 1,000,000 creates spread over 1,000 directories
  directly (no cluster), then the SQLite file (after a checkpoint) is measured.

Targets (issue 4): at least 3,000 creates/s with 32 clients; readdir of
10,000 entries under 0.5 s.

    .venv/bin/python benchmarks/bench_meta.py [--seconds 5] [--million] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_raft import DevCluster, _percentile

from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, Mkdir, Mknod
from prismfs.meta.namespace import Namespace
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.codec import encode_message

REG = stat.S_IFREG | 0o644
CLIENTS = (1, 32)
READDIR_ENTRIES = 10_000
TARGET_CREATES = 3_000.0
TARGET_READDIR_S = 0.5


class Worker:
    def __init__(self, client: MetaClient, home: int) -> None:
        self.client = client
        self.home = home
        self.files: list[tuple[bytes, int]] = []
        self.n = 0


async def run_phase(
    workers: list[Worker], seconds: float, op: Callable[[Worker], Awaitable[None]]
) -> dict[str, Any]:
    latencies: list[float] = []
    t_end = time.perf_counter() + seconds
    count = 0

    async def loop(w: Worker) -> None:
        nonlocal count
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            await op(w)
            latencies.append((time.perf_counter() - t0) * 1000)
            count += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in workers:
            nursery.start_soon(loop, w)
    wall = time.perf_counter() - t0
    return {
        "ops_per_s": round(count / wall, 1),
        "ops": count,
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
    }


async def create(w: Worker) -> None:
    w.n += 1
    name = f"f{w.n}".encode()
    attr = await w.client.mknod(w.home, name, REG)
    w.files.append((name, attr.ino))


async def lookup(w: Worker) -> None:
    w.n += 1
    name, _ = w.files[w.n % len(w.files)]
    await w.client.lookup(w.home, name)


async def getattr_(w: Worker) -> None:
    w.n += 1
    _, ino = w.files[w.n % len(w.files)]
    await w.client.getattr(ino)


async def rename(w: Worker) -> None:
    w.n += 1
    i = w.n % len(w.files)
    name, ino = w.files[i]
    new = b"r" + name
    await w.client.rename(w.home, name, w.home, new)
    w.files[i] = (new, ino)


async def measure_level(
    pool: RpcPool, addresses: list[str], clients: int, seconds: float
) -> dict[str, Any]:
    workers = []
    for i in range(clients):
        client = MetaClient(pool, addresses[i % len(addresses) :] + addresses[: i % len(addresses)])
        home = await client.mkdir(ROOT_INO, f"bench-{clients}-{i}".encode(), 0o755)
        workers.append(Worker(client, home.ino))
    row: dict[str, Any] = {"clients": clients}
    for name, op in (
        ("create", create),
        ("lookup", lookup),
        ("getattr", getattr_),
        ("rename", rename),
    ):
        row[name] = await run_phase(workers, seconds, op)
    return row


async def measure_readdir(pool: RpcPool, addresses: list[str]) -> dict[str, Any]:
    owner = MetaClient(pool, addresses)
    big = await owner.mkdir(ROOT_INO, b"big", 0o755)
    per = -(-READDIR_ENTRIES // 32)

    async def fill(i: int) -> None:
        client = MetaClient(pool, addresses)
        for j in range(per):
            await client.mknod(big.ino, f"e{i:02d}-{j:05d}".encode(), REG)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(fill, i)
    fill_s = time.perf_counter() - t0
    timings = []
    count = 0
    for _ in range(3):
        t0 = time.perf_counter()
        count = sum([1 async for _ in owner.readdir(big.ino)])
        timings.append(time.perf_counter() - t0)
    assert count == per * 32, count
    return {
        "entries": count,
        "seconds": [round(t, 3) for t in timings],
        "best_s": round(min(timings), 3),
        "fill_creates_per_s": round(count / fill_s, 1),
    }


def measure_million(n: int = 1_000_000, dirs: int = 1000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prismfs-bench-meta-") as tmp:
        path = Path(tmp) / "namespace.db"
        ns = Namespace(path)
        t0 = time.perf_counter()
        index = 0
        for d in range(dirs):
            index += 1
            ns.apply(index, encode_message(Mkdir(index, ROOT_INO, f"d{d}".encode(), 0o755, 0, 0)))
        for i in range(n - dirs):
            index += 1
            parent = 2 + i % dirs
            command = Mknod(index, parent, f"file-{i:07d}.dat".encode(), REG, 1000, 1000)
            ns.apply(index, encode_message(command))
        apply_s = time.perf_counter() - t0
        ns.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = path.stat().st_size
        snapshot = len(ns.snapshot())
        ns.db.close()
    return {
        "inodes": n,
        "db_bytes": size,
        "bytes_per_inode": round(size / n, 1),
        "snapshot_bytes": snapshot,
        "apply_per_s": round(n / apply_s, 1),
    }


async def run(seconds: float) -> dict[str, Any]:
    cluster = DevCluster()
    try:
        nodes = await trio.to_thread.run_sync(cluster.up)
        addresses = [n.address for n in nodes]
        async with open_rpc_pool(cluster.creds(), connect_timeout=2) as pool:
            levels = [await measure_level(pool, addresses, c, seconds) for c in CLIENTS]
            readdir = await measure_readdir(pool, addresses)
        return {"levels": levels, "readdir": readdir}
    finally:
        await trio.to_thread.run_sync(cluster.teardown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="window per operation")
    parser.add_argument("--million", action="store_true", help="also measure 1M inodes' size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = trio.run(run, args.seconds)
    if args.million:
        result["million"] = measure_million()
    result["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'clients':>8} {'op':>8} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for level in result["levels"]:
        for op in ("create", "lookup", "getattr", "rename"):
            r = level[op]
            print(
                f"{level['clients']:>8} {op:>8} {r['ops_per_s']:>10} "
                f"{r['p50_ms']:>8} {r['p99_ms']:>8}"
            )
    rd = result["readdir"]
    print(
        f"readdir of {rd['entries']} entries: best {rd['best_s']} s of {rd['seconds']} "
        f"(target < {TARGET_READDIR_S} s)"
    )
    creates = result["levels"][-1]["create"]["ops_per_s"]
    print(f"creates/s with 32 clients: {creates} (target >= {TARGET_CREATES:g})")
    if "million" in result:
        m = result["million"]
        print(
            f"1M inodes: {m['db_bytes'] / 2**20:.1f} MiB ({m['bytes_per_inode']} B/inode), "
            f"snapshot {m['snapshot_bytes'] / 2**20:.1f} MiB, apply {m['apply_per_s']}/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
