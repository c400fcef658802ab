"""A metadata-heavy workload in the manner of mdtest: create, stat, rename and
unlink of many empty files by several processes at once.

    python benchmarks/mdtest.py MOUNTPOINT LABEL [--files 20000] [--procs 4]

Theory of operation. The parent makes ``MOUNTPOINT/mdtest-LABEL-PID`` and
forks ``--procs`` workers (multiprocessing, ``fork`` context); worker ``i``
owns the subdirectory ``w<i>`` and ``--files / --procs`` names in it, so the
workers never contend for one directory's entries (mdtest's "unique
directory" mode). The phases run in lock step through one
``multiprocessing.Barrier`` shared by the workers and the parent:

    for each phase in create, stat, rename, unlink:
        parent: sync and drop the page, dentry and inode caches
        all:    barrier            <- the parent starts the clock here
        worker: the phase on each of its files
        all:    barrier            <- and stops it here

* create: ``open(O_CREAT | O_EXCL | O_WRONLY, 0o644)`` and ``close``: a
  0-byte file, no data.
* stat: ``os.stat`` of each file. The caches were dropped just before, so
  every call reaches the file system (after a create, the kernel would
  otherwise answer from its own attribute cache).
* rename: ``f<n>`` to ``r<n>`` in the same directory.
* unlink: of the renamed files.

A phase's figure is all files divided by the wall time between its two
barriers, so the slowest worker sets it, as in mdtest. Each result is printed
in fsbench.sh's format, one line each: ``LABEL md-create <ops/s> ops/s``.

A worker that fails puts its error on a queue and breaks the barrier (a
watchdog thread breaks it for a worker that dies outright); the parent then
raises with that error (the exit status is non-zero) and the
directory is removed on the way out. Dropping the caches needs root; without
it the drop is skipped silently, as in fsbench.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

PHASES = ("create", "stat", "rename", "unlink")
BARRIER_TIMEOUT = 3600.0  # one phase of 20,000 files at 20 ops/s still fits


def _create(d: Path, n: int) -> None:
    fd = os.open(d / f"f{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)


def _stat(d: Path, n: int) -> None:
    os.stat(d / f"f{n}")


def _rename(d: Path, n: int) -> None:
    os.rename(d / f"f{n}", d / f"r{n}")


def _unlink(d: Path, n: int) -> None:
    os.unlink(d / f"r{n}")


OPERATIONS: dict[str, Callable[[Path, int], None]] = {
    "create": _create,
    "stat": _stat,
    "rename": _rename,
    "unlink": _unlink,
}


def _worker(
    directory: Path, count: int, barrier: Barrier, errors: Queue[str]
) -> None:  # pragma: no cover - runs in the child
    try:
        directory.mkdir()
        for phase in PHASES:
            op = OPERATIONS[phase]
            barrier.wait(BARRIER_TIMEOUT)
            for n in range(count):
                op(directory, n)
            barrier.wait(BARRIER_TIMEOUT)
        directory.rmdir()
    except threading.BrokenBarrierError:
        pass  # another worker failed and said why
    except BaseException as exc:
        errors.put(f"{directory.name}: {phase} {n}: {exc!r}")
        barrier.abort()


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_mdtest(root: Path, files: int, procs: int) -> dict[str, float]:
    """Run the four phases under ``root``; returns ops/s per phase."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    errors: Queue[str] = ctx.Queue()
    per_worker = files // procs
    total = per_worker * procs
    root.mkdir()
    workers = [
        ctx.Process(
            target=_worker,
            args=(root / f"w{i}", per_worker, barrier, errors),
            name=f"mdtest-w{i}",
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    done = threading.Event()

    def watchdog() -> None:
        # a worker killed outright cannot abort the barrier itself
        while not done.wait(0.5):
            if any(w.exitcode not in (None, 0) for w in workers):
                barrier.abort()
                return

    threading.Thread(target=watchdog, name="mdtest-watchdog", daemon=True).start()
    rates: dict[str, float] = {}
    try:
        for phase in PHASES:
            drop_caches()
            barrier.wait(BARRIER_TIMEOUT)
            t0 = time.perf_counter()
            barrier.wait(BARRIER_TIMEOUT)
            rates[phase] = total / (time.perf_counter() - t0)
    except threading.BrokenBarrierError:
        for w in workers:
            w.join(timeout=60)
        reasons = []
        while not errors.empty():
            reasons.append(errors.get())
        if not reasons:
            codes = ", ".join(f"{w.name}: {w.exitcode}" for w in workers)
            reasons.append(f"a worker died or a phase timed out (exit codes {codes})")
        raise RuntimeError("mdtest worker failed: " + "; ".join(reasons)) from None
    finally:
        done.set()
        barrier.abort()  # lets any worker still waiting leave
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
                w.join()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("label")
    parser.add_argument("--files", type=int, default=20000, help="in all (default 20000)")
    parser.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    args = parser.parse_args(argv)
    if args.procs < 1 or args.files < args.procs:
        parser.error("need --procs >= 1 and --files >= --procs")
    root = args.mountpoint / f"mdtest-{args.label}-{os.getpid()}"
    try:
        rates = run_mdtest(root, args.files, args.procs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for phase, rate in rates.items():
        print(f"{args.label} md-{phase} {rate:.1f} ops/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
