"""Health and repair reads at a million chunk records: what they cost the event loop.

One `Namespace` in a temporary file holds ``--chunks`` files of one 2-of-3
chunk each, spread over 6 nodes. With one node down, it measures the reads
the leader makes for `cluster status` and `/metrics` (chunk health, shards
per node) and a repair pass's walk over the down node's records
(`chunk_pages`, with no rebuild), each two ways:

* **on the loop** (how they ran before): the worst stall a 10 ms probe sees
  is the whole read;
* **as the leader runs them now**: in a worker thread on a read-only
  connection (`off_loop`, `chunk_pages`), the probe measuring the loop's
  worst stall meanwhile.

A stall past the election timeout (0.5-1.0 s by default) means followers
stop hearing heartbeats and elect another leader.

    .venv/bin/python benchmarks/bench_health.py [--chunks 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_snapshot import Probe

from prismfs.leader.repair import chunk_pages, off_loop
from prismfs.meta.commands import ROOT_INO, ChunkRecord, CommitChunks, Mkdir, Mknod
from prismfs.meta.namespace import Namespace
from prismfs.wire.codec import encode_message

REG = stat.S_IFREG | 0o644
NODES = [f"n{i}" for i in range(6)]


def fill(ns: Namespace, chunks: int) -> None:
    index = 0
    with ns.batch():
        for d in range(100):
            index += 1
            ns.apply(index, encode_message(Mkdir(index, ROOT_INO, f"d{d}".encode(), 0o755, 0, 0)))
    done = 0
    while done < chunks:
        with ns.batch():
            for _ in range(min(500, chunks - done)):
                index += 1
                name = f"f{done:08d}".encode()
                ns.apply(index, encode_message(Mknod(index, 2 + done % 100, name, REG, 0, 0)))
                ino = ns.lookup(2 + done % 100, name).ino
                nodes = tuple(NODES[(done + k) % 6] for k in range(3))
                rec = ChunkRecord(done.to_bytes(16, "big"), 4096, 2048, 2, 3, nodes)
                index += 1
                ns.apply(index, encode_message(CommitChunks(index, ino, ((0, rec),), 4096)))
                done += 1
    ns.checkpoint()


async def probed(work: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    probe = Probe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        await trio.sleep(0.05)
        start = time.perf_counter()
        result = await work()
        seconds = time.perf_counter() - start
        await trio.sleep(0.05)
        probe.stop = True
    return {"seconds": round(seconds, 3), "loop_worst_stall_ms": round(probe.worst * 1000, 1)} | (
        {"result": result} if result is not None else {}
    )


async def run(chunks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prismfs-bench-health-") as tmp:
        ns = Namespace(Path(tmp) / "namespace.db")
        start = time.perf_counter()
        await trio.to_thread.run_sync(fill, ns, chunks)
        out: dict[str, Any] = {"chunks": chunks, "fill_s": round(time.perf_counter() - start, 1)}
        down = {"n0"}

        async def health_on_loop() -> Any:
            return ns.chunk_health(down), len(ns.shards_per_node())

        async def health_off_loop() -> Any:
            return await off_loop(ns, lambda v: (v.chunk_health(down), len(v.shards_per_node())))

        async def walk_on_loop() -> Any:
            return sum(1 for _ in ns.iter_chunks_on(down))

        async def walk_off_loop() -> Any:
            send, receive = trio.open_memory_channel[list[ChunkRecord]](2)
            seen = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chunk_pages, ns, down, send)
                async with receive:
                    async for page in receive:
                        seen += len(page)
                        await trio.lowlevel.checkpoint()  # a repair would start rebuilds here
            return seen

        out["health_on_loop"] = await probed(health_on_loop)
        out["health_in_thread"] = await probed(health_off_loop)
        out["repair_walk_on_loop"] = await probed(walk_on_loop)
        out["repair_walk_in_thread"] = await probed(walk_off_loop)
        ns.db.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = trio.run(run, args.chunks)
    print(json.dumps(result, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
