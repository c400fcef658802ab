"""File-system benchmark: fsbench.sh on a PrismFS mount, a local directory and a
pyfuse3 passthrough file system, in one run.

PrismFS: 3 nodes of a ``prismfs dev`` cluster on loopback, default layout
(2-of-3, 4 MiB chunks), mounted with default options. Local: a directory on
the same disk. Passthrough: ``benchmarks/passthrough.py`` (pyfuse3, plain
os calls) over another local directory: the floor that FUSE plus Python
sets. Each system runs ``fsbench.sh`` once, in the order passthrough, local,
PrismFS; the table gives the figures and PrismFS's ratio to each.

    .venv/bin/python benchmarks/bench_fs.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
HIGHER_IS_BETTER = {"seq-write", "seq-read", "rand-read-4k", "create-4k", "stat"}


def is_mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


def unmount(point: Path) -> None:
    if is_mounted(point):
        subprocess.run(["fusermount3", "-u", str(point)], timeout=60, check=False)
    if is_mounted(point):
        subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=60, check=False)


@contextlib.contextmanager
def passthrough(base: Path) -> Iterator[Path]:
    source, point = base / "pt-source", base / "pt-mnt"
    source.mkdir()
    point.mkdir()
    proc = subprocess.Popen([sys.executable, str(HERE / "passthrough.py"), str(source), str(point)])
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(point):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the passthrough file system did not mount")
            time.sleep(0.05)
        yield point
    finally:
        unmount(point)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def prismfs(
    base: Path, src: Path | None = None, *, nodes: int = 3, http: bool = False
) -> Iterator[Path]:
    """A dev cluster of ``nodes`` nodes mounted at ``base``/prism-mnt; with ``src``,
    run from that source tree (``PYTHONPATH``) instead of the installed one; with
    ``http``, the nodes serve the HTTP API (``/metrics``)."""
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cluster, point = base / "cluster", base / "prism-mnt"
    cli = [sys.executable, "-m", "prismfs", "dev"]
    extra: list[str] = []
    if nodes == 1:
        # One node cannot hold 2-of-3 shards, nor survive a loss: one copy.
        config = base / "one-node.toml"
        config.write_text('[data]\ndefault_layout = "k=1,m=1"\nmin_redundancy = 0\n')
        extra = ["--node-config", str(config)]
    try:
        # inside the try: nodes that started before a failed mount are stopped too
        subprocess.run(
            [
                *cli,
                "up",
                "--nodes",
                str(nodes),
                "--dir",
                str(cluster),
                "--mount",
                str(point),
                *(["--http"] if http else []),
                *extra,
            ],
            env=env,
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )
        if nodes == 1:
            # The node gives the root its default layout shortly after it starts.
            deadline = time.monotonic() + 30
            while True:
                try:
                    os.getxattr(point, "user.prismfs.layout")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield point
    finally:
        subprocess.run(
            [*cli, "down", "--dir", str(cluster)],
            env=env,
            timeout=120,
            check=False,
            stdout=subprocess.DEVNULL,
        )


def run_fsbench(
    point: Path, label: str, size: int, script: str = "fsbench.sh", *extra: str
) -> dict[str, tuple[float, str]]:
    """Run ``script`` (``fsbench.sh`` or ``toolsbench.sh``) on ``point``; its rows."""
    out = subprocess.run(
        ["bash", str(HERE / script), str(point), label, str(size), *extra],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        _, workload, value, unit = line.split(maxsplit=3)
        rows[workload] = (float(value), unit)
        print(line, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-fs-"))
    results: dict[str, dict[str, tuple[float, str]]] = {}
    try:
        with passthrough(base) as point:
            results["passthrough"] = run_fsbench(point, "passthrough", args.size_mib)
        local = base / "local"
        local.mkdir()
        results["local"] = run_fsbench(local, "local", args.size_mib)
        with prismfs(base) as point:
            results["prismfs"] = run_fsbench(point, "prismfs", args.size_mib)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print("| workload | PrismFS | local | passthrough | PrismFS / local | PrismFS / passthrough |")
    print("|---|---:|---:|---:|---:|---:|")
    for workload, (value, unit) in results["prismfs"].items():
        loc = results["local"][workload][0]
        pt = results["passthrough"][workload][0]

        def ratio(other: float, workload: str = workload, value: float = value) -> str:
            if workload in HIGHER_IS_BETTER:
                return f"{value / other:.2f}" if other else "-"
            return f"{other / value:.2f}" if value else "-"  # times: lower is better

        print(
            f"| {workload} ({unit}) | {value:g} | {loc:g} | {pt:g} | {ratio(loc)} | {ratio(pt)} |"
        )
    print("\nratios: higher is better for PrismFS (times are inverted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
