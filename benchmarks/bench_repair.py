"""Recovery benchmark: kill -9 a node holding 1 GiB of 2-of-3 data, time until
every chunk is fully redundant again.

A 4-node ``prismfs dev`` cluster (so the lost shards have a node to go to),
``node_down_after_s`` at its default (10 s), ``repair_after_s = 0`` and
``repair_mb_per_s = 1000`` (no pacing to speak of). The file is written with
``prismfs put``; the victim is a node other than the leader (the figure is
repair, not an election). From the kill, the cluster status (the leader's
chunk health) is polled every 0.2 s. Printed: seconds until the node is
marked down, until no chunk is degraded, and the repair throughput (bytes
of shards rebuilt / time from "down" to fully redundant).

    .venv/bin/python benchmarks/bench_repair.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "prismfs"]


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    out = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"prismfs {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def measure(size_mib: int = 1024) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-repair-"))
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    cluster = base / "cluster"
    config = base / "node.toml"
    config.write_text("[data]\nrepair_after_s = 0\nrepair_mb_per_s = 1000\n")
    try:
        up = _cli(
            env,
            "dev",
            "up",
            "--nodes",
            "4",
            "--dir",
            str(cluster),
            "--json",
            "--node-config",
            str(config),
        )
        nodes = json.loads(up)["nodes"]
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        src = base / "big"
        with open(src, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        _cli(env, "put", str(src), "/big")
        src.unlink()
        status = json.loads(_cli(env, "cluster", "status", "--json"))
        health = status["health"]
        leader = health["leader"]
        victim = next(n for n in nodes if n["id"] != leader)
        chunks = health["chunks"]
        t0 = time.monotonic()
        os.kill(int(victim["pid"]), signal.SIGKILL)
        down_at = 0.0
        while True:
            time.sleep(0.2)
            try:
                h = json.loads(_cli(env, "cluster", "status", "--json", timeout=30))["health"]
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            if h is None:
                continue
            states = {n["node"]: n["state"] for n in h["nodes"]}
            if not down_at and states.get(victim["id"]) == "down":
                down_at = time.monotonic() - t0
            if down_at and h["degraded"] == 0 and h["unavailable"] == 0:
                done = time.monotonic() - t0
                rebuilt = h["repaired_bytes"]
                break
            if time.monotonic() - t0 > 1800:
                raise RuntimeError("not fully redundant after 30 minutes")
        return {
            "chunks": chunks,
            "down_after_s": round(down_at, 1),
            "redundant_after_s": round(done, 1),
            "rebuilt_mb": round(rebuilt / 1e6, 1),
            "repair_mb_per_s": round(rebuilt / 1e6 / max(done - down_at, 1e-3), 1),
        }
    finally:
        subprocess.run(
            [*CLI, "dev", "down", "--dir", str(cluster)],
            env=env,
            timeout=120,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    result = measure(args.size_mib)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
