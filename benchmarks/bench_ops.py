"""What one metadata operation costs, counted: FUSE requests, RPCs, Raft
messages, Readys, thread hops, fsyncs, entries applied.

Starts a ``prismfs dev`` cluster with the HTTP API on (for each node's
``/metrics``), mounts it, and runs each workload on ``--count`` items in a
directory of its own: between the start and the end of a workload it reads
the mount's counters (``prismfs mount stats``, reset first) and every node's
(summed), subtracts what an idle cluster does in the same time (heartbeats,
session renewals, measured before the workloads), and divides by the item
count. A workload ends with ``prismfs sync`` of the mount, so deferred
creates and unlinks are counted in the workload that made them.

    .venv/bin/python benchmarks/bench_ops.py [--count 300] [--nodes 3] [--src DIR] [--json F]
    .venv/bin/python benchmarks/bench_ops.py --report BEFORE.json AFTER.json   # markdown

Workloads (``cp -a`` and ``tar x`` do what ``mkdir-cp-a`` and ``symlink-cp-a`` do):

* ``create-4k``: open(O_CREAT) + write 4 KiB + close of a new file;
* ``stat-cold``: os.stat of each file, after the 1 s kernel caches expired;
* ``open-read``: open + read + close of each existing 4 KiB file (caches expired);
* ``ls-l``: a listing with attributes (``scandir`` + stat) of the directory, per entry;
* ``mkdir-cp-a``: mkdir, then chown, chmod and utime of the new directory;
* ``symlink-cp-a``: symlink, then lchown and utime without following it;
* ``rename``: rename of each file within its directory;
* ``rm``: unlink of each file (caches expired), then rmdir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_fs import prismfs  # scripts beside this one
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

EXPIRE_S = 1.3  # past the mount's 1 s entry and attribute timeouts


class Cluster:
    def __init__(self, base: Path, point: Path, env: dict[str, str]) -> None:
        self.point = point
        self.env = env
        state = json.loads((base / "cluster" / "dev.json").read_text())
        self.http = [n["http_address"] for n in state["nodes"] if n.get("http_address")]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "prismfs",
                "token",
                "create",
                "--read-only",
                "--uid",
                "0",
                "--json",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        self.token = json.loads(out)["token"]

    def node_families(self, name: str) -> Iterator[Metric]:
        """The metric family ``name`` of each node's ``/metrics``, node by node."""
        for address in self.http:
            request = urllib.request.Request(
                f"http://{address}/metrics", headers={"Authorization": f"Bearer {self.token}"}
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                text = reply.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name == name:
                    yield family

    def node_counts(self) -> Counter[str]:
        """Every node's ``prismfs_events_total``, summed over the nodes."""
        total: Counter[str] = Counter()
        for family in self.node_families("prismfs_events"):
            for sample in family.samples:
                if sample.name == "prismfs_events_total":
                    total[sample.labels["event"]] += int(sample.value)
        return total

    def mount_counts(self) -> Counter[str]:
        raw = json.loads(os.getxattr(self.point, "user.prismfs.stats"))
        counts: Counter[str] = Counter(raw["counts"])
        for name, h in raw["latency"].items():
            counts[name] += h["count"]
        return counts

    def reset_mount(self) -> None:
        os.setxattr(self.point, "user.prismfs.stats", b"reset")

    def sync(self) -> None:
        os.setxattr(self.point, "user.prismfs.sync", b"1")


def measure(
    cluster: Cluster, name: str, count: int, run: Callable[[], None], idle: dict[str, float]
) -> dict[str, object]:
    nodes_before = cluster.node_counts()
    cluster.reset_mount()
    start = time.perf_counter()
    run()
    cluster.sync()
    elapsed = time.perf_counter() - start
    mount = cluster.mount_counts()
    nodes = cluster.node_counts()
    nodes.subtract(nodes_before)
    # what an idle cluster does meanwhile (heartbeats, renewals) is not the workload's
    for event, rate in idle.items():
        nodes[event] -= round(rate * elapsed)
    per = {k: v / count for k, v in (mount - Counter()).items()}
    per_node = {k: max(0.0, v / count) for k, v in nodes.items() if v > 0}
    return {"workload": name, "count": count, "seconds": elapsed, "mount": per, "nodes": per_node}


def summary(row: dict[str, object]) -> dict[str, float]:
    mount: dict[str, float] = row["mount"]  # type: ignore[assignment]
    nodes: dict[str, float] = row["nodes"]  # type: ignore[assignment]

    def total(d: dict[str, float], prefix: str, exclude: str = "") -> float:
        return sum(
            v
            for k, v in d.items()
            if k.startswith(prefix) and k.count(".") == prefix.count(".") and k != exclude
        )

    return {
        "ms/op": 1e3 * row["seconds"] / row["count"],  # type: ignore[operator]
        "fuse": total(mount, "fuse."),
        "R": mount.get("rpc.Query", 0.0),
        "W": mount.get("rpc.Propose", 0.0),
        "mount rpcs": total(mount, "rpc."),
        # RaftBatch requests awaiting an ack (before one-way batches) or notifications
        "raft batches": nodes.get("rpc.RaftBatch", 0.0) + nodes.get("notify.RaftBatch", 0.0),
        "raft msgs": total(nodes, "raft.sent."),
        "readys": nodes.get("raft.ready", 0.0),
        "hops": nodes.get("raft.persist_hop", 0.0),
        "fsyncs": nodes.get("raft.fsync", 0.0),
        "applied": nodes.get("raft.applied_entries", 0.0),
    }


def workloads(root: Path, count: int) -> list[tuple[str, Callable[[], None], bool]]:
    """(name, action, wait for the kernel caches to expire first)."""
    files = root / "files"
    names = [files / f"f{i:05d}" for i in range(count)]
    dirs = root / "dirs"
    links = root / "links"
    uid, gid = os.getuid(), os.getgid()
    block = b"x" * 4096

    def create() -> None:
        files.mkdir()
        for p in names:
            with open(p, "wb") as f:
                f.write(block)

    def stat() -> None:
        for p in names:
            os.stat(p)

    def open_read() -> None:
        for p in names:
            with open(p, "rb") as f:
                f.read()

    def ls_l() -> None:
        for entry in os.scandir(files):
            entry.stat(follow_symlinks=False)

    def mkdirs() -> None:
        dirs.mkdir()
        for i in range(count):
            d = dirs / f"d{i:05d}"
            d.mkdir()
            os.chown(d, uid, gid)
            os.chmod(d, 0o755)
            os.utime(d, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))

    def symlinks() -> None:
        links.mkdir()
        for i in range(count):
            p = links / f"l{i:05d}"
            os.symlink(f"target-{i}", p)
            os.lchown(p, uid, gid)
            os.utime(p, ns=(1_600_000_000 * 10**9,) * 2, follow_symlinks=False)

    def rename() -> None:
        for i, p in enumerate(names):
            os.rename(p, files / f"r{i:05d}")

    def rm() -> None:
        for i in range(count):
            os.unlink(files / f"r{i:05d}")
        os.rmdir(files)

    return [
        ("create-4k", create, False),
        ("stat-cold", stat, True),
        ("open-read", open_read, True),
        ("ls-l", ls_l, True),
        ("mkdir-cp-a", mkdirs, False),
        ("symlink-cp-a", symlinks, False),
        ("rename", rename, True),
        ("rm", rm, True),
    ]


def report(before_file: Path, after_file: Path) -> None:
    """A markdown table: per workload, each summary column before -> after."""
    before = {r["workload"]: summary(r) for r in json.loads(before_file.read_text())}
    after = {r["workload"]: summary(r) for r in json.loads(after_file.read_text())}
    columns = list(next(iter(after.values())))
    print("| workload | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in after.items():
        old = before.get(name, {})
        cells = [f"{old.get(c, float('nan')):.2f} → {row[c]:.2f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--src", type=Path, help="run PrismFS from this source tree")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--report", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.report:
        report(*args.report)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        base = Path(tmp)
        env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
        if args.src is not None:
            env["PYTHONPATH"] = str(args.src)
        with prismfs(base, args.src, nodes=args.nodes, http=True) as point:
            cluster = Cluster(base, point, env)
            time.sleep(2)
            before = cluster.node_counts()
            time.sleep(3)
            idle_counts = cluster.node_counts()
            idle_counts.subtract(before)
            idle = {k: v / 3.0 for k, v in idle_counts.items() if v > 0}
            rows = []
            for name, action, expire in workloads(point / "bench", args.count):
                if name == "create-4k":
                    (point / "bench").mkdir()
                if expire:
                    time.sleep(EXPIRE_S)
                rows.append(measure(cluster, name, args.count, action, idle))
    columns = list(summary(rows[0]))
    print(f"per operation, {args.count} each, {args.nodes} node(s)")
    print(f"{'workload':14}" + "".join(f"{c:>11}" for c in columns))
    for row in rows:
        s = summary(row)
        print(f"{row['workload']:14}" + "".join(f"{s[c]:>11.2f}" for c in columns))
    print()
    for row in rows:
        mount: dict[str, float] = row["mount"]  # type: ignore[assignment]
        detail = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(mount.items()) if v >= 0.01 and "." in k
        )
        print(f"{row['workload']}: {detail}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
