"""Where the time of a small-file create goes, by the mount's and the nodes'
latency histograms: optionally after a large fsync'd write (as in
``fsbench.sh``, whose 4 KiB creates follow a 1 GiB fio write), then
``--count`` 4 KiB creates in one directory; prints per create the mount's
FUSE create/flush/lookup and RPCs, and the nodes' persist (log write and
fdatasync), apply and served Propose/Query times.

    .venv/bin/python benchmarks/bench_commit.py [--fill-mib 1024] [--count 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_fs import prismfs  # scripts beside this one
from bench_ops import Cluster


def node_latency(cluster: Cluster) -> dict[str, list[float]]:
    """(sum of seconds, count) per histogram, summed over the nodes."""
    out: dict[str, list[float]] = {}
    for family in cluster.node_families("prismfs_latency_seconds"):
        for sample in family.samples:
            slot = out.setdefault(sample.labels["what"], [0.0, 0.0])
            if sample.name.endswith("_sum"):
                slot[0] += sample.value
            elif sample.name.endswith("_count"):
                slot[1] += sample.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fill-mib", type=int, default=1024, help="write this much first (0: none)")
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        base = Path(tmp)
        env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
        with prismfs(base, http=True) as point:
            cluster = Cluster(base, point, env)
            if args.fill_mib:
                dd = ["dd", "if=/dev/zero", f"of={point}/big", "bs=1M", f"count={args.fill_mib}"]
                subprocess.run([*dd, "conv=fsync"], check=True, capture_output=True)
            (point / "small").mkdir()
            before = node_latency(cluster)
            cluster.reset_mount()
            start = time.perf_counter()
            for i in range(args.count):
                with open(point / "small" / f"f{i}", "wb") as f:
                    f.write(b"x" * 4096)
            elapsed = time.perf_counter() - start
            mount = json.loads(os.getxattr(point, "user.prismfs.stats"))["latency"]
            after = node_latency(cluster)
    n = args.count
    print(f"{n / elapsed:.0f} creates/s after {args.fill_mib} MiB written")
    for name in ("fuse.create", "fuse.flush", "fuse.lookup", "rpc.Propose", "rpc.Query"):
        h = mount.get(name)
        if h:
            mean_ms = 1e3 * h["sum_s"] / h["count"]
            print(f"  mount {name}: {h['count'] / n:.2f}/create, mean {mean_ms:.2f} ms")
    for name in ("raft.persist", "raft.apply", "served.Propose", "served.Query"):
        total, count = (
            a - b for a, b in zip(after.get(name, [0, 0]), before.get(name, [0, 0]), strict=True)
        )
        if count:
            print(f"  nodes {name}: {count / n:.2f}/create, mean {1e3 * total / count:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
