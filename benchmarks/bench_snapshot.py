"""Snapshot benchmark: what making and installing a namespace snapshot costs
the event loop, at a given number of files.

One `Namespace` in a temporary file applies ``--files`` creates (spread over
1,000 directories, in batches of 1,000 as the Raft driver applies them),
then the two ways of snapshotting it are measured:

* **in memory, on the loop** (how every snapshot was made before): the
  database serialized (`Namespace.snapshot`) and its xxh3-128, in the
  event loop: the loop stalls for the whole time, and the image is held.
* **from the file, in a worker thread** (`Namespace.snapshot_to`, what the
  driver does now, unpaced here): SQLite's backup API from a read-only
  connection holding one read transaction, then the file's checksum, both
  in a worker thread, while the loop keeps applying
  creates (as a leader would) and a probe task measures how late 10 ms
  sleeps wake up (the loop's worst stall).

Then a follower's side: the image checked (`check_image`, in a thread) and
copied into a fresh database (`restore_file`, on the loop).

Memory is the peak resident set (VmHWM, reset before each step through
/proc/self/clear_refs) above the resident set before the step.

    .venv/bin/python benchmarks/bench_snapshot.py [--files 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import xxhash

from prismfs.meta.commands import ROOT_INO, Mkdir, Mknod
from prismfs.meta.namespace import Namespace
from prismfs.raft.durable_log import file_digest
from prismfs.wire.codec import encode_message

REG = stat.S_IFREG | 0o644
DIRS = 1000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset the peak resident set to the current one; returns the current one (KiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _peak_above(base_kib: int) -> float:
    return round((_status_kib("VmHWM") - base_kib) / 1024, 1)


def fill(ns: Namespace, files: int) -> int:
    index = 0
    with ns.batch():
        for d in range(DIRS):
            index += 1
            ns.apply(index, encode_message(Mkdir(index, ROOT_INO, f"d{d}".encode(), 0o755, 0, 0)))
    done = 0
    while done < files:
        with ns.batch():
            for _ in range(min(1000, files - done)):
                index += 1
                parent = 2 + done % DIRS
                name = f"file-{done:08d}.dat".encode()
                ns.apply(index, encode_message(Mknod(index, parent, name, REG, 1000, 1000)))
                done += 1
    ns.checkpoint()
    return index


class Probe:
    """How late a 10 ms sleep wakes up: the event loop's worst stall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            start = trio.current_time()
            await trio.sleep(0.01)
            self.worst = max(self.worst, trio.current_time() - start - 0.01)


async def in_memory(ns: Namespace) -> dict[str, Any]:
    probe = Probe()
    base = _reset_peak()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        await trio.sleep(0.05)
        start = time.perf_counter()
        image = ns.snapshot()  # on the loop, as the driver did
        checksum = xxhash.xxh3_128_digest(image)
        seconds = time.perf_counter() - start
        await trio.sleep(0.05)
        probe.stop = True
    assert checksum
    return {
        "seconds": round(seconds, 3),
        "loop_worst_stall_ms": round(probe.worst * 1000, 1),
        "image_bytes": len(image),
        "peak_rss_mib": _peak_above(base),
    }


async def from_file(ns: Namespace, index: int, directory: Path) -> dict[str, Any]:
    probe = Probe()
    path = directory / "image.db"
    applied = 0
    base = _reset_peak()
    result: dict[str, Any] = {}

    async def keep_applying() -> None:
        nonlocal applied, index
        while not probe.stop:
            with ns.batch():
                for _ in range(50):
                    index += 1
                    name = f"during-{index}".encode()
                    ns.apply(index, encode_message(Mknod(index, ROOT_INO, name, REG, 0, 0)))
                    applied += 1
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        nursery.start_soon(keep_applying)
        await trio.sleep(0.05)
        start = time.perf_counter()
        at = await trio.to_thread.run_sync(ns.snapshot_to, path)
        copied = time.perf_counter() - start
        await trio.to_thread.run_sync(file_digest, path)
        seconds = time.perf_counter() - start
        probe.stop = True
    result.update(
        seconds=round(seconds, 3),
        copy_seconds=round(copied, 3),
        loop_worst_stall_ms=round(probe.worst * 1000, 1),
        image_bytes=path.stat().st_size,
        peak_rss_mib=_peak_above(base),
        entries_applied_meanwhile=applied,
        image_index=at,
    )
    return result


async def install(directory: Path) -> dict[str, Any]:
    path = directory / "image.db"
    target = Namespace(directory / "follower.db")
    base = _reset_peak()
    start = time.perf_counter()
    await trio.to_thread.run_sync(target.check_image, path)
    checked = time.perf_counter() - start
    target.restore_file(path)
    seconds = time.perf_counter() - start
    files = target.db.execute("SELECT count(*) FROM inodes").fetchone()[0]
    target.db.close()
    return {
        "check_seconds_in_thread": round(checked, 3),
        "restore_seconds_on_loop": round(seconds - checked, 3),
        "peak_rss_mib": _peak_above(base),
        "inodes": files,
    }


async def run(files: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prismfs-bench-snapshot-") as tmp:
        directory = Path(tmp)
        ns = Namespace(directory / "namespace.db")
        start = time.perf_counter()
        index = await trio.to_thread.run_sync(fill, ns, files)
        filled = time.perf_counter() - start
        result: dict[str, Any] = {
            "files": files,
            "fill_seconds": round(filled, 1),
            "db_bytes": (directory / "namespace.db").stat().st_size,
        }
        result["from_file_in_thread"] = await from_file(ns, index, directory)
        result["in_memory_on_loop"] = await in_memory(ns)
        result["install"] = await install(directory)
        ns.db.close()
        os.sync()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = trio.run(run, args.files)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['files']:,} files, database {result['db_bytes'] / 2**20:.0f} MiB")
    for name in ("in_memory_on_loop", "from_file_in_thread", "install"):
        print(f"  {name}: {result[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
