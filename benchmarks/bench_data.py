"""Data plane benchmark: codec speed, and put/get of a large file through 3 nodes.

What it measures, in one run:

* **codec**: `encode_chunk` and `decode_chunk` of 4 MiB chunks (2-of-3 and
  4-of-6) in MB/s of chunk data on one thread, against calling zfec's
  `Encoder.encode` / `Decoder.decode` directly on the same blocks (the
  difference is splitting, padding, checksums and the checks before decode).
  Decoding is measured twice: from the k data shards (the normal case, no
  zfec call) and from parity (one data shard missing).
* **put / get**: a ``--size`` file (default 1 GiB) into and out of a 3-node
  ``prismfs dev`` cluster on loopback with 2-of-3 and with 1-of-3 (three
  copies), through the client library (`put_file`, `get_file`; 4 chunks in
  flight). The data comes from a 64 MiB random buffer read in slices, so the
  source costs no CPU; the get hashes nothing and keeps nothing. MB/s is
  file bytes over wall time.
* **wire**: in the same run, `Echo` RPCs moving 4 MiB payloads to and from
  one node with 4 in flight (the RPC layer's ceiling on this machine; the
  foundation benchmark compares it with raw sockets).

Targets (issue 5): put >= 250 MB/s and get >= 300 MB/s with 2-of-3.

    .venv/bin/python benchmarks/bench_data.py [--size-mib 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio
import zfec

sys.path.insert(0, str(Path(__file__).parent))

from bench_raft import DevCluster, _cpu_seconds

from prismfs.client.data import DataClient
from prismfs.client.files import get_file, put_file
from prismfs.data.codec import decode_chunk, encode_chunk
from prismfs.data.layout import Layout
from prismfs.meta.client import open_meta_client
from prismfs.meta.commands import ROOT_INO
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.messages import Echo

MB = 1_000_000
CHUNK = 4 * 1024 * 1024
TARGET_PUT = 250.0
TARGET_GET = 300.0


def _rate(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / MB, 1)


def measure_codec(rounds: int = 40) -> dict[str, Any]:
    data = os.urandom(CHUNK)
    out: dict[str, Any] = {}
    for k, m in ((2, 3), (4, 6)):
        enc = encode_chunk(data, k, m)
        blocks = tuple(enc.shards[:k])
        t0 = time.perf_counter()
        for _ in range(rounds):
            encode_chunk(data, k, m)
        ours = time.perf_counter() - t0
        encoder = zfec.Encoder(k, m)
        t0 = time.perf_counter()
        for _ in range(rounds):
            encoder.encode(blocks)
        raw = time.perf_counter() - t0
        common = {"k": k, "m": m, "length": CHUNK, "shard_size": enc.shard_size}
        data_shards = dict(enumerate(enc.shards[:k]))
        with_parity = {i: enc.shards[i] for i in range(1, k + 1)}
        timings = {}
        for label, shards in (("data", data_shards), ("parity", with_parity)):
            t0 = time.perf_counter()
            for _ in range(rounds):
                decode_chunk(shards, checksums=enc.checksums, **common)  # type: ignore[arg-type]
            timings[label] = time.perf_counter() - t0
        decoder = zfec.Decoder(k, m)
        ids = tuple(sorted(with_parity))
        t0 = time.perf_counter()
        for _ in range(rounds):
            decoder.decode(tuple(with_parity[i] for i in ids), ids)
        raw_decode = time.perf_counter() - t0
        total = rounds * CHUNK
        out[f"{k}of{m}"] = {
            "encode_MBps": _rate(total, ours),
            "zfec_encode_MBps": _rate(total, raw),
            "decode_data_MBps": _rate(total, timings["data"]),
            "decode_parity_MBps": _rate(total, timings["parity"]),
            "zfec_decode_MBps": _rate(total, raw_decode),
        }
    return out


class Source:
    def __init__(self, size: int) -> None:
        self.buf = memoryview(os.urandom(64 * 1024 * 1024))
        self.left = size
        self.pos = 0

    async def read(self, n: int) -> bytes:
        n = min(n, self.left, len(self.buf) - self.pos)
        if n <= 0 and self.left:
            self.pos = 0
            n = min(self.left, len(self.buf))
        block = bytes(self.buf[self.pos : self.pos + n])
        self.pos = (self.pos + n) % len(self.buf)
        self.left -= n
        return block


async def measure_cluster(size: int) -> dict[str, Any]:
    cluster = DevCluster()
    try:
        nodes = await trio.to_thread.run_sync(cluster.up)
        addresses = [n.address for n in nodes]
        result: dict[str, Any] = {}
        async with (
            open_rpc_pool(cluster.creds(), connect_timeout=2, call_timeout=60) as pool,
            open_meta_client(pool, addresses) as meta,
        ):
            data = DataClient(pool, meta)
            for layout in (Layout(2, 3), Layout(1, 3)):
                cpu0 = {n.name: _cpu_seconds(n.pid) for n in nodes}
                t0 = time.perf_counter()
                name = f"f-{layout.k}of{layout.m}".encode()
                ino = await put_file(meta, data, ROOT_INO, name, Source(size).read, layout=layout)
                put_s = time.perf_counter() - t0
                cpu1 = {n.name: _cpu_seconds(n.pid) for n in nodes}
                received = 0

                async def sink(block: bytes) -> None:
                    nonlocal received
                    received += len(block)

                t0 = time.perf_counter()
                await get_file(meta, data, ino, sink)
                get_s = time.perf_counter() - t0
                cpu2 = {n.name: _cpu_seconds(n.pid) for n in nodes}
                assert received == size
                result[f"{layout.k}of{layout.m}"] = {
                    "put_MBps": _rate(size, put_s),
                    "get_MBps": _rate(size, get_s),
                    "node_cpu_put_pct": [
                        round(100 * (cpu1[n] - cpu0[n]) / put_s) for n in sorted(cpu0)
                    ],
                    "node_cpu_get_pct": [
                        round(100 * (cpu2[n] - cpu1[n]) / get_s) for n in sorted(cpu0)
                    ],
                }
                await meta.unlink(ROOT_INO, name)
            result["wire"] = await measure_wire(pool, addresses[0])
        return result
    finally:
        await trio.to_thread.run_sync(cluster.teardown)


async def measure_wire(pool: Any, address: str, seconds: float = 3.0) -> dict[str, float]:
    payload = os.urandom(CHUNK)
    out = {}
    for mode in ("sink", "source"):
        moved = 0
        t_end = time.perf_counter() + seconds

        async def worker(mode: str = mode, t_end: float = t_end) -> None:
            nonlocal moved
            while time.perf_counter() < t_end:
                if mode == "sink":
                    await pool.call(address, Echo(mode="sink"), payload)
                else:
                    await pool.call(address, Echo(mode="source", size=CHUNK))
                moved += CHUNK

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(worker)
        label = "upload" if mode == "sink" else "download"
        out[f"rpc_{label}_MBps"] = _rate(moved, time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"codec": measure_codec()}
    result["cluster"] = trio.run(measure_cluster, args.size_mib * 1024 * 1024)
    result["size_mib"] = args.size_mib
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("codec (one thread, 4 MiB chunks), MB/s:")
    for geometry, row in result["codec"].items():
        print(f"  {geometry}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    print(f"cluster ({args.size_mib} MiB file, 3 nodes on loopback):")
    for geometry, row in result["cluster"].items():
        print(f"  {geometry}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    two = result["cluster"]["2of3"]
    print(
        f"put 2-of-3: {two['put_MBps']} MB/s (target {TARGET_PUT:g}); "
        f"get 2-of-3: {two['get_MBps']} MB/s (target {TARGET_GET:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
