"""A/B of two commits on a PrismFS mount: ``fsbench.sh`` (and bench_meta's
namespace operations) on the code of REV_A and of REV_B, interleaved, in one run.

Each revision is checked out into a temporary git worktree; a 3-node ``prismfs
dev`` cluster with a mount is started from it (``PYTHONPATH`` at its ``src``,
the same virtualenv for both) and ``fsbench.sh`` runs on the mount; then the
same for the other revision, ``--runs`` times in turn (A B A B ...). The
table gives each workload's median per revision and the ratio B / A (above 1:
B is better; times are inverted). The machine is shared, so only the ratio of
one run means anything.

    .venv/bin/python benchmarks/bench_ab.py REV_A REV_B [--runs 2] [--size-mib 256] [--tools|--data]

``--data`` runs only fsbench's fio workloads (sequential write and read, 4 KiB
random reads). ``--tools`` runs ``toolsbench.sh`` instead (``cp -a /usr/share/doc``, ``tar x``
and ``rsync -a`` of the Python standard library, ``rm -rf``: seconds each).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_fs import HIGHER_IS_BETTER, prismfs, run_fsbench

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev_a")
    parser.add_argument("rev_b")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--tools", action="store_true", help="run toolsbench.sh, not fsbench.sh")
    parser.add_argument("--data", action="store_true", help="only fsbench.sh's fio workloads")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-ab-"))
    trees: dict[str, Path] = {}
    script = "toolsbench.sh" if args.tools else "fsbench.sh"
    results: dict[str, list[dict[str, tuple[float, str]]]] = {}
    try:
        for label, rev in (("A", args.rev_a), ("B", args.rev_b)):
            tree = base / f"tree-{label}"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                check=True,
                capture_output=True,
            )
            trees[label] = tree
            results[label] = []
        for run in range(args.runs):
            for label in ("A", "B"):
                work = base / f"run-{run}-{label}"
                work.mkdir()
                with prismfs(work, trees[label] / "src") as point:
                    extra = ["data"] if args.data and not args.tools else []
                    results[label].append(run_fsbench(point, label, args.size_mib, script, *extra))
                shutil.rmtree(work, ignore_errors=True)
    finally:
        for tree in trees.values():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nA = {args.rev_a}, B = {args.rev_b}, {args.runs} runs each, interleaved")
    print("| workload | A (median) | B (median) | B / A |")
    print("|---|---:|---:|---:|")
    for workload, (_, unit) in results["A"][0].items():
        a = statistics.median(r[workload][0] for r in results["A"])
        b = statistics.median(r[workload][0] for r in results["B"])
        better = b / a if workload in HIGHER_IS_BETTER else a / b
        print(f"| {workload} ({unit}) | {a:g} | {b:g} | {better:.2f} |")
    print("\nratios: above 1, B is better (times are inverted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
