"""A checksummed application workload on a mounted PrismFS, run as its own process.

    python tests/mount_workload.py DIR STATUS_JSON

A writer thread writes files of mixed sizes (inline, one chunk, several
chunks) with contents derived from their sequence number, fsyncs and closes
them, and deletes the oldest beyond a working set. A reader thread re-reads
random finished files and compares every byte. A third thread keeps one file
open for the whole run and re-reads it through that one handle after dropping
its cached pages (so the mount's view of where its shards are gets old while
they move). Every error (any exception from a file operation) and every
wrong byte is recorded. STATUS_JSON is rewritten every 0.5 s with the
counters; on SIGTERM the threads stop, every file still kept is read back
once more, and the final counters are written with ``"done": true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

SIZES = (3_000, 200_000, 1_500_000, 3_500_000)  # chunk size of the test layout: 1 MiB
KEEP = 24


def body(n: int) -> bytes:
    rng = random.Random(n)
    return rng.randbytes(SIZES[n % len(SIZES)] + rng.randrange(1, 4096))


class Workload:
    def __init__(self, root: Path, status: Path) -> None:
        self.root = root
        self.status = status
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.files: dict[str, str] = {}  # finished files -> sha256
        self.counts = {"written": 0, "read": 0, "anchor_reads": 0, "deleted": 0}
        self.errors: list[str] = []
        self.wrong: list[str] = []

    def error(self, what: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {exc!r}")

    def check(self, name: str, data: bytes, digest: str) -> None:
        if hashlib.sha256(data).hexdigest() != digest:
            with self.lock:
                self.wrong.append(f"{time.strftime('%H:%M:%S')} {name}: {len(data)} bytes")

    def writer(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"f{n:06d}"
            data = body(n)
            try:
                with open(self.root / name, "wb") as f:
                    for at in range(0, len(data), 256 * 1024):
                        f.write(data[at : at + 256 * 1024])
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                self.error(f"write {name}", exc)
                continue
            with self.lock:
                self.files[name] = hashlib.sha256(data).hexdigest()
                self.counts["written"] += 1
                old = sorted(self.files)[:-KEEP] if len(self.files) > KEEP else []
                for gone in old:
                    del self.files[gone]
            for gone in old:
                try:
                    os.unlink(self.root / gone)
                    with self.lock:
                        self.counts["deleted"] += 1
                except OSError as exc:
                    self.error(f"unlink {gone}", exc)

    def reader(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            with self.lock:
                names = list(self.files.items())
            if not names:
                time.sleep(0.05)
                continue
            # Files the writer may delete meanwhile are skipped, not failed: only
            # the newest half (it keeps 24) is read.
            name, digest = rng.choice(sorted(names)[len(names) // 2 :])
            try:
                data = (self.root / name).read_bytes()
            except OSError as exc:
                self.error(f"read {name}", exc)
                continue
            self.check(name, data, digest)
            with self.lock:
                self.counts["read"] += 1

    def anchor(self) -> None:
        data = random.Random(99).randbytes(4 * 1024 * 1024 + 123)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "anchor"
        try:
            path.write_bytes(data)
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            self.error("anchor setup", exc)
            return
        try:
            while not self.stop.is_set():
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, len(data) + 1, 0)
                except OSError as exc:
                    self.error("anchor read", exc)
                    time.sleep(0.2)
                    continue
                self.check("anchor", got, digest)
                with self.lock:
                    self.counts["anchor_reads"] += 1
                self.stop.wait(0.3)
        finally:
            os.close(fd)

    def write_status(self, done: bool = False) -> None:
        with self.lock:
            state = {
                **self.counts,
                "errors": list(self.errors),
                "wrong": list(self.wrong),
                "kept": len(self.files),
                "done": done,
                "time": time.time(),
            }
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.status)

    def final_check(self) -> None:
        for name, digest in sorted(self.files.items()):
            try:
                self.check(name, (self.root / name).read_bytes(), digest)
            except OSError as exc:
                self.error(f"final read {name}", exc)
            with self.lock:
                self.counts["read"] += 1


def main() -> None:
    root, status = Path(sys.argv[1]), Path(sys.argv[2])
    root.mkdir(exist_ok=True)
    work = Workload(root, status)
    signal.signal(signal.SIGTERM, lambda *_: work.stop.set())
    threads = [threading.Thread(target=fn, daemon=True) for fn in (work.writer, work.reader)]
    threads.append(threading.Thread(target=work.anchor, daemon=True))
    for t in threads:
        t.start()
    while not work.stop.is_set():
        work.write_status()
        work.stop.wait(0.5)
    for t in threads:
        t.join(timeout=60)
    work.final_check()
    work.write_status(done=True)


if __name__ == "__main__":
    main()
