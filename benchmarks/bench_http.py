"""HTTP API benchmark: a 1 GiB file up and down with curl against one node,
as a ratio to the same file through a FUSE mount of the same cluster in the
same run; and small-object PUTs (4 KiB, 16 at a time) per second.

A 3-node ``prismfs dev up --http`` cluster (2-of-3, 4 MiB chunks). The
upload is ``curl -T`` of a local file of random bytes to a follower; the
mount's write is ``dd`` of the same file into the mount (conv=fsync). Reads
start from a cold page cache (``drop_caches``): ``curl -o /dev/null`` and
``dd`` from the mount. Each figure is the better of ``--runs`` runs, the
HTTP and mount runs interleaved. Small objects: an httpx AsyncClient (trio)
with 16 PUTs in flight, each to a new name.

    .venv/bin/python benchmarks/bench_http.py [--size-mib 1024] [--runs 2] [--objects 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_repair import _cli, _drop_caches, _Mount, _timed_read


def _curl(*args: str, timeout: float) -> float:
    """Run curl; seconds it took (raises on an HTTP error or a failure)."""
    t0 = time.monotonic()
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-o", "/dev/null", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args[-1:])}: {out.stderr.strip()} {out.stdout[:300]}")
    return time.monotonic() - t0


def _dd_write(src: Path, dst: Path, size: int) -> float:
    t0 = time.monotonic()
    out = subprocess.run(
        ["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"],
        capture_output=True,
        text=True,
        timeout=60 + size / 1e6,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"dd {dst}: {out.stderr.strip()}")
    return size / 1e6 / (time.monotonic() - t0)


def small_puts(url: str, token: str, count: int, parallel: int = 16) -> float:
    """PUTs of 4 KiB objects per second, ``parallel`` in flight."""
    import httpx
    import trio

    body = os.urandom(4096)

    async def run() -> float:
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=parallel)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
            r = await c.put("/v1/dirs/small")
            if r.status_code not in (200, 201):
                raise RuntimeError(f"mkdir: {r.status_code} {r.text}")
            names = iter(range(count))
            failures = 0

            async def worker() -> None:
                nonlocal failures
                for n in names:
                    r = await c.put(f"/v1/files/small/o{n:06d}", content=body)
                    if r.status_code != 201:
                        failures += 1

            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(parallel):
                    nursery.start_soon(worker)
            elapsed = trio.current_time() - t0
            if failures:
                raise RuntimeError(f"{failures} of {count} small PUTs failed")
            return count / elapsed

    return trio.run(run)


def measure(size_mib: int, runs: int, objects: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-http-"))
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    cluster = base / "cluster"
    size = size_mib << 20
    mount = _Mount(cluster / "client.toml", base / "mnt", env)
    try:
        up = json.loads(
            _cli(env, "dev", "up", "--nodes", "3", "--dir", str(cluster), "--json", "--http")
        )
        token = json.loads(
            _cli(
                env,
                "token",
                "create",
                "--uid",
                "0",
                "--gid",
                "0",
                "--config",
                str(cluster / "client.toml"),
                "--json",
            )
        )["token"]
        status = json.loads(
            _cli(env, "cluster", "status", "--json", "--config", str(cluster / "client.toml"))
        )
        leader = status["health"]["leader"]
        follower = next(n for n in up["nodes"] if n["id"] != leader)
        url = (
            "http://"
            + json.loads((Path(follower["data_dir"]) / "node.json").read_text())["http_address"]
        )
        print(f"bench_http: HTTP to {follower['id']} (a follower) at {url}", file=sys.stderr)
        src = base / "src.bin"
        with src.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        mount.mount()
        auth = f"Authorization: Bearer {token}"
        results: dict[str, list[float]] = {
            k: [] for k in ("http_put", "http_get", "fuse_write", "fuse_read")
        }
        for run in range(runs):
            name = f"f{run}.bin"
            _drop_caches()
            secs = _curl(
                "-H", auth, "-T", str(src), f"{url}/v1/files/{name}", timeout=600 + size / 1e6
            )
            results["http_put"].append(size / 1e6 / secs)
            _drop_caches()
            secs = _curl("-H", auth, f"{url}/v1/files/{name}", timeout=600 + size / 1e6)
            results["http_get"].append(size / 1e6 / secs)
            _drop_caches()
            results["fuse_write"].append(_dd_write(src, mount.point / f"m{run}.bin", size))
            results["fuse_read"].append(_timed_read(mount.point / f"m{run}.bin", size))
            print(
                f"bench_http: run {run + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f} MB/s" for k, v in results.items()),
                file=sys.stderr,
            )
            (mount.point / f"m{run}.bin").unlink()
            _curl("-H", auth, "-X", "DELETE", f"{url}/v1/files/{name}", timeout=60)
        puts = small_puts(url, token, objects)
        best = {k: max(v) for k, v in results.items()}
        return {
            "size_mib": size_mib,
            "runs": runs,
            "mb_per_s": {k: round(v, 1) for k, v in best.items()},
            "all_runs": {k: [round(x, 1) for x in v] for k, v in results.items()},
            "upload_ratio_http_over_mount": round(best["http_put"] / best["fuse_write"], 2),
            "download_ratio_http_over_mount": round(best["http_get"] / best["fuse_read"], 2),
            "small_put_4k_per_s_16_parallel": round(puts, 1),
            "small_objects": objects,
        }
    finally:
        mount.unmount()
        subprocess.run(
            [sys.executable, "-m", "prismfs", "dev", "down", "--dir", str(cluster)],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--objects", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.size_mib, args.runs, args.objects), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
