"""Small-file benchmark: a million real files written through a FUSE mount.

A 3-node ``prismfs dev`` cluster is mounted as the tests mount it, and
``--procs`` worker processes write ``--files`` files of ``--size`` bytes
(1 KiB by default: their data rides inline in the metadata) into
directories of 10,000 files each, each file with ``open``, ``write`` and
``close`` (the mount's write-back batches the creates into Raft entries).
At 10k, 100k and 1M files (as far as ``--files`` goes) it reports the files
per second over the interval since the previous checkpoint, every node's
resident memory and the Raft term (a change is an election). At the end a
sample of 1,000 files is read back and compared (missing ones named). The
writers never fsync, as ``tar x`` does not.

    .venv/bin/python benchmarks/bench_smallfiles.py [--files 1000000] [--procs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_cluster import health
from bench_repair import _cli, _dev_down, _Mount
from bench_scale import rss_mib

PER_DIR = 10_000
CHECKPOINTS = (10_000, 100_000, 1_000_000, 10_000_000)


def body(n: int, size: int) -> bytes:
    return (f"file {n} ".encode() * (size // 8 + 1))[:size]


def worker(root: str, first: int, count: int, size: int, done: Any) -> None:
    """Write files ``first .. first + count - 1``; count them in ``done``."""
    made: set[int] = set()
    for n in range(first, first + count):
        directory = os.path.join(root, f"d{n // PER_DIR}")
        if n // PER_DIR not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(n // PER_DIR)
        with open(os.path.join(directory, f"f{n}"), "wb") as f:
            f.write(body(n, size))
        if n % 100 == 99:
            with done.get_lock():
                done.value += 100


def measure(files: int, procs: int, size: int, keep_logs: Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-small-"))
    cluster = base / "cluster"
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    mount = _Mount(cluster / "client.toml", base / "mnt", env)
    try:
        up = json.loads(_cli(env, "dev", "up", "--nodes", "3", "--dir", str(cluster), "--json"))
        pids = {n["name"]: int(n["pid"]) for n in up["nodes"]}
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        mount.mount()
        root = base / "mnt" / "small"
        root.mkdir()
        done = multiprocessing.Value("q", 0)
        per = files // procs
        workers = [
            multiprocessing.Process(target=worker, args=(str(root), i * per, per, size, done))
            for i in range(procs)
        ]
        start = time.monotonic()
        for w in workers:
            w.start()
        rows: list[dict[str, Any]] = []
        last_t, last_n = start, 0
        for mark in [c for c in CHECKPOINTS if c <= per * procs]:
            while done.value < mark and any(w.is_alive() for w in workers):
                time.sleep(0.2)
            now, n = time.monotonic(), int(done.value)
            view = health(env)
            rows.append(
                {
                    "files": n,
                    "files_per_s": round((n - last_n) / (now - last_t), 1),
                    "elapsed_s": round(now - start, 1),
                    "rss_mib": {name: rss_mib(pid) for name, pid in pids.items()},
                    "term": view["term"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            last_t, last_n = now, n
        for w in workers:
            w.join()
        if any(w.exitcode for w in workers):
            raise RuntimeError("a writer failed")
        wrong, missing = 0, []
        for n in range(0, per * procs, max(1, per * procs // 1000)):
            path = root / f"d{n // PER_DIR}" / f"f{n}"
            try:
                wrong += path.read_bytes() != body(n, size)
            except FileNotFoundError:
                missing.append(path.name)
        return {
            "files": per * procs,
            "size": size,
            "procs": procs,
            "rows": rows,
            "wrong": wrong,
            "missing": missing,
        }
    finally:
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*cluster.glob("node*/node.log"), mount.log]:
                if log.exists():
                    shutil.copy(log, keep_logs / f"{log.parent.name}-{log.name}")
        mount.unmount()
        _dev_down(env, cluster)
        subprocess.run(["sync"], check=False)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the node and mount logs there")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep = Path(args.keep_logs) if args.keep_logs else None
    result = measure(args.files, args.procs, args.size, keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['files']} files of {result['size']} bytes, {result['procs']} writers")
    for row in result["rows"]:
        print(
            f"{row['files']:>9} files  {row['files_per_s']:>8.1f} files/s  "
            f"term {row['term']}  RSS {row['rss_mib']}"
        )
    print(f"read back a sample: {result['wrong']} wrong, missing: {result['missing']}")
    return 0 if result["wrong"] == 0 and not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
