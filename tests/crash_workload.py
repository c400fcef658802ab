"""A checksummed, fsync'd workload on a mounted PrismFS, run as its own process.

    python tests/crash_workload.py DIR MANIFEST [--writers N] [--seed S] [--no-fsync]

Writer threads create files of random sizes (0 to 8 MiB; contents derived from
their names), fsync each file and its directory, rename and unlink some of
them (then fsync the directories involved). Every operation is written to
MANIFEST (a local file, fsynced line by line) as ``begin`` before it starts and
``done`` only once it and its fsyncs returned, or ``error`` if anything
failed: a ``done`` line is a promise the file system made. A writer never
touches again a file whose operation failed (its fate is unknown). Runs until
SIGTERM, then finishes the operation in progress and exits. `replay` turns a
manifest into what must be on the file system; `check` compares.

With ``--no-fsync`` the writers only create small files (up to 64 KiB, most
of them small enough to ride inline in the metadata) and never fsync, as
``tar x`` does not: ``done`` is written once ``close`` returned. That is no
promise across a crash of the mount, but it is one across anything else (a
leader change, a node lost): a running mount loses nothing it acknowledged.
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
from dataclasses import dataclass, field
from pathlib import Path

MAX_SIZE = 8 << 20
DIRS = 4


def body(name: str, seed: int, small: bool = False) -> bytes:
    """The content of file ``name``: its size and bytes follow from the name."""
    rng = random.Random(f"{seed}:{name}")
    kind = rng.random()
    if small:
        return rng.randbytes(rng.randrange(0, 2048) if kind < 0.7 else rng.randrange(8192, 65536))
    if kind < 0.3:
        size = rng.randrange(0, 8 * 1024)  # inline
    elif kind < 0.7:
        size = rng.randrange(8 * 1024, 1 << 20)
    else:
        size = rng.randrange(1 << 20, MAX_SIZE + 1)
    return rng.randbytes(size)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Manifest:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()

    def write(self, **record: object) -> None:
        line = (json.dumps(record) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)
            os.fsync(self.fd)


class Writer:
    def __init__(
        self, root: Path, manifest: Manifest, who: int, seed: int, fsync: bool = True
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.manifest = manifest
        self.who = who
        self.seed = seed
        self.rng = random.Random(f"{seed}/{who}")
        self.files: list[str] = []  # relative paths of this writer's finished files
        self.n = 0

    def op(self, kind: str, **what: str) -> str:
        self.n += 1
        op_id = f"{self.who}-{self.n}"
        self.manifest.write(op="begin", id=op_id, kind=kind, **what)
        return op_id

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            choice = self.rng.random()
            try:
                if choice < 0.7 or len(self.files) < 3 or not self.fsync:
                    self.create()
                elif choice < 0.85:
                    self.rename()
                else:
                    self.unlink()
            except OSError:
                time.sleep(0.2)  # recorded; the file system may be gone

    def create(self) -> None:
        name = f"d{self.n % DIRS}/w{self.who}-{self.n:06d}"
        data = body(name, self.seed, small=not self.fsync)
        digest = hashlib.sha256(data).hexdigest()
        op_id = self.op("create", path=name, sha=digest, size=str(len(data)))
        try:
            with open(self.root / name, "wb") as f:
                for at in range(0, len(data), 256 * 1024):
                    f.write(data[at : at + 256 * 1024])
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            if self.fsync:
                fsync_dir((self.root / name).parent)
        except OSError as exc:
            self.manifest.write(op="error", id=op_id, error=repr(exc))
            raise
        self.manifest.write(op="done", id=op_id)
        self.files.append(name)

    def rename(self) -> None:
        old = self.files.pop(self.rng.randrange(len(self.files)))
        new = f"d{self.rng.randrange(DIRS)}/{Path(old).name}-r{self.n}"
        op_id = self.op("rename", path=old, to=new)
        try:
            os.rename(self.root / old, self.root / new)
            fsync_dir((self.root / new).parent)
            fsync_dir((self.root / old).parent)
        except OSError as exc:
            self.manifest.write(op="error", id=op_id, error=repr(exc))
            raise
        self.manifest.write(op="done", id=op_id)
        self.files.append(new)

    def unlink(self) -> None:
        gone = self.files.pop(self.rng.randrange(len(self.files)))
        op_id = self.op("unlink", path=gone)
        try:
            os.unlink(self.root / gone)
            fsync_dir((self.root / gone).parent)
        except OSError as exc:
            self.manifest.write(op="error", id=op_id, error=repr(exc))
            raise
        self.manifest.write(op="done", id=op_id)


@dataclass
class Expected:
    """What the file system promised, from a manifest."""

    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    removed: set[str] = field(default_factory=set)  # unlinked or renamed away, after fsyncdir
    either: list[tuple[str, str, str]] = field(default_factory=list)  # unfinished renames
    written: int = 0
    errors: list[str] = field(default_factory=list)


def replay(manifest: Path) -> Expected:
    ops: dict[str, dict[str, str]] = {}
    order: list[str] = []
    ended: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record["op"] == "begin":
            ops[record["id"]] = record
            order.append(record["id"])
        else:
            ended[record["id"]] = record["op"]
            if record["op"] == "error":
                ops[record["id"]]["error"] = record["error"]
    out = Expected()
    for op_id in order:
        op = ops[op_id]
        done = ended.get(op_id) == "done"
        if "error" in op:
            out.errors.append(f"{op['kind']} {op['path']}: {op['error']}")
        if op["kind"] == "create":
            if done:
                out.files[op["path"]] = op["sha"]
                out.written += 1
        elif op["kind"] == "rename":
            sha = out.files.pop(op["path"])
            if done:
                out.files[op["to"]] = sha
                out.removed.add(op["path"])
            else:
                out.either.append((op["path"], op["to"], sha))
        elif op["kind"] == "unlink":
            out.files.pop(op["path"])
            if done:
                out.removed.add(op["path"])
    out.removed -= set(out.files)
    return out


@dataclass
class Report:
    written: int
    verified: int
    errors: list[str]
    wrong: list[str]
    missing: list[str]
    back: list[str]  # removed after fsyncdir, yet there again

    def line(self) -> str:
        return (
            f"written {self.written} / verified {self.verified} / errors {len(self.errors)} / "
            f"wrong {len(self.wrong)} / missing {len(self.missing)} / back {len(self.back)}"
        )


def check(root: Path, expected: Expected) -> Report:
    def sha(path: str) -> str | None:
        try:
            return hashlib.sha256((root / path).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    wrong, missing, back = [], [], []
    verified = 0
    for path, digest in sorted(expected.files.items()):
        got = sha(path)
        if got is None:
            missing.append(path)
        elif got != digest:
            wrong.append(path)
        else:
            verified += 1
    for old, new, digest in expected.either:
        found = [p for p in (old, new) if sha(p) == digest]
        if len(found) != 1:
            missing.append(f"{old} or {new}")
        else:
            verified += 1
    for path in sorted(expected.removed):
        if (root / path).exists():
            back.append(path)
    return Report(expected.written, verified, expected.errors, wrong, missing, back)


def main() -> None:
    root, manifest_path = Path(sys.argv[1]), Path(sys.argv[2])
    writers = int(sys.argv[sys.argv.index("--writers") + 1]) if "--writers" in sys.argv else 2
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    fsync = "--no-fsync" not in sys.argv
    for d in range(DIRS):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
    fsync_dir(root)
    manifest = Manifest(manifest_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(
            target=Writer(root, manifest, w, seed, fsync).run, args=(stop,), daemon=True
        )
        for w in range(writers)
    ]
    for t in threads:
        t.start()
    while not stop.is_set():
        stop.wait(0.2)
    for t in threads:
        t.join(timeout=120)


if __name__ == "__main__":
    main()
