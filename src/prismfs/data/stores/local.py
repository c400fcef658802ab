"""Shards as files on a local file system.

``<root>/<id[0:2]>/<id[2:4]>/<id>``: two levels of 256 fan-out directories
keep directories small. A put writes a temporary file in the same directory
(``.<id>.tmp<pid>-<n>``, mode 0600), fsyncs it, renames it over the final name
and fsyncs the directory (and a new fan-out directory's parent), so a crash
leaves the old shard or the new one, never a torn one. The temporary files a
crash leaves are removed when the node starts again (`clean_temporary`).
Blocking file work runs in worker threads (`ThreadedStore`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import trio

from prismfs.data.stores import Capacity, ShardStat, validate_shard_id
from prismfs.data.stores.threaded import ThreadedStore
from prismfs.durable import fsync_dir, write_all
from prismfs.errors import ConfigError, NoSpace, NotFound, StorageError

TMP_MARK = ".tmp"


class LocalStore(ThreadedStore):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp_seq = itertools.count(1)  # next() is atomic: puts run in several threads

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LocalStore:
        path = options.get("path")
        if not path:
            raise ConfigError("the local shard store needs a path")
        return cls(Path(path))

    def _path(self, shard_id: str) -> Path:
        validate_shard_id(shard_id)
        return self.root / shard_id[0:2] / shard_id[2:4] / shard_id

    # --- blocking halves ------------------------------------------------------------------

    def _put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(shard_id)
        if not path.parent.is_dir():
            self._make_fanout(path.parent)
        tmp = path.with_name(f".{shard_id}{TMP_MARK}{os.getpid()}-{next(self._tmp_seq)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise NoSpace(f"shard store {self.root} is full") from None
            raise StorageError(f"cannot write shard {shard_id}: {exc.strerror}") from None

    def _make_fanout(self, directory: Path) -> None:
        """Create a fan-out directory durably: its entry in its parent is fsynced."""
        for d in (directory.parent, directory):
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                fsync_dir(d.parent)

    async def clean_temporary(self) -> int:
        """Delete the temporary files an earlier process left (a crash mid-put)."""
        return await trio.to_thread.run_sync(self._clean_temporary)

    def _clean_temporary(self) -> int:
        mine = f"{TMP_MARK}{os.getpid()}-"
        removed = 0
        for top in os.scandir(self.root):
            if not (top.is_dir() and len(top.name) == 2):
                continue
            for mid in os.scandir(top.path):
                if not mid.is_dir():
                    continue
                for entry in os.scandir(mid.path):
                    if (
                        entry.name.startswith(".")
                        and TMP_MARK in entry.name
                        and mine not in entry.name
                    ):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        return removed

    def _get(self, shard_id: str, offset: int, length: int | None) -> bytes:
        path = self._path(shard_id)
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFound(f"no shard {shard_id}") from None
        except OSError as exc:
            raise StorageError(f"cannot read shard {shard_id}: {exc.strerror}") from None

    def _delete(self, shard_id: str) -> bool:
        path = self._path(shard_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def _list(self, after: str, limit: int) -> list[str]:
        out: list[str] = []
        for top in sorted(p.name for p in self.root.iterdir() if len(p.name) == 2):
            if top < after[:2]:
                continue
            for mid in sorted(p.name for p in (self.root / top).iterdir()):
                if top + mid < after[:4]:
                    continue
                names = sorted(
                    n for n in os.listdir(self.root / top / mid) if not n.startswith(".")
                )
                out += [n for n in names if n > after]
                if len(out) >= limit:
                    return out[:limit]
        return out

    def _stat(self, shard_id: str) -> ShardStat:
        try:
            st = self._path(shard_id).stat()
        except FileNotFoundError:
            raise NotFound(f"no shard {shard_id}") from None
        return ShardStat(st.st_size, st.st_mtime_ns)

    def _capacity(self) -> Capacity:
        usage = shutil.disk_usage(self.root)
        return Capacity(usage.total, usage.used)
