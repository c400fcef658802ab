"""What the fsync of a shard's fan-out directory costs a node's puts.

    python benchmarks/store_fsync.py [--dir /var/tmp/store-fsync] [--puts 300]
        [--size 2097152] [--threads 1 4] [--rounds 3]

Puts ``--puts`` shards of ``--size`` random bytes through `LocalStore`'s
blocking half (temporary file, fsync, rename, fsync of the directory), from
1 and 4 threads (a node runs puts in worker threads), then the same with the
directory fsync left out (not crash-safe: the comparison only). Rounds
alternate the two so the machine's drift hits both; each line is one round.
The fan-out directories are made before the clock starts, as on a node that
has stored a while.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from prismfs.data.stores import local
from prismfs.data.stores.local import LocalStore


def run(root: Path, puts: int, size: int, threads: int, dir_fsync: bool) -> float:
    """Puts per second."""
    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    body = os.urandom(size)
    ids = [f"{secrets.token_hex(16)}.0" for _ in range(puts)]
    for sid in ids:
        store._make_fanout(store._path(sid).parent)
    real = local.fsync_dir
    if not dir_fsync:
        local.fsync_dir = lambda directory: None  # type: ignore[assignment]
    todo = iter(ids)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                sid = next(todo, None)
            if sid is None:
                return
            store._put(sid, body)

    try:
        start = time.perf_counter()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return puts / (time.perf_counter() - start)
    finally:
        local.fsync_dir = real  # type: ignore[assignment]
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/store-fsync"))
    parser.add_argument("--puts", type=int, default=300)
    parser.add_argument("--size", type=int, default=2 << 20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.puts} puts of {args.size} bytes in {args.dir}")
    for r in range(args.rounds):
        for threads in args.threads:
            with_dir = run(args.dir, args.puts, args.size, threads, True)
            without = run(args.dir, args.puts, args.size, threads, False)
            print(
                f"round {r + 1} threads {threads}: with the directory fsync "
                f"{with_dir:7.1f} puts/s, without {without:7.1f} (ratio {with_dir / without:.2f})"
            )


if __name__ == "__main__":
    main()
