"""Shards as files on a local file system.

``<root>/<id[0:2]>/<id[2:4]>/<id>``: two levels of 256 fan-out directories
keep directories small. A put writes a temporary file in the same directory
(``.<id>.tmp<pid>-<n>``, mode 0600), fsyncs it, renames it over the final name
and fsyncs the directory (and a new fan-out directory's parent), so a crash
leaves the old shard or the new one, never a torn one. The temporary files a
crash leaves are removed when the node starts again (`clean_temporary`).
Blocking file work runs in worker threads (`ThreadedStore`).

Reads go through a small cache of open file descriptors (`OpenShards`): a
read of a shard read lately is one ``pread``, not open, seek, read and
close. It is first tried on the event loop with ``RWF_NOWAIT``, which
answers from the page cache or refuses at once, so a read of cached bytes
costs no thread hop; only a read that must wait for the disk goes to a
worker thread. A cached descriptor whose file was unlinked or renamed over
since (a delete or a new put of that shard, by this process or anyone)
has no links left; `get` sees that in its ``fstat`` and opens the path
again, so a cached descriptor never serves a shard that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from prismfs.data.stores import Capacity, ShardStat, validate_shard_id
from prismfs.data.stores.threaded import ThreadedStore
from prismfs.durable import fsync_dir, write_all
from prismfs.errors import ConfigError, NoSpace, NotFound, StorageError

TMP_MARK = ".tmp"
OPEN_SHARDS = 256  # descriptors kept open for reads
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


@dataclass
class _Descriptor:
    fd: int
    users: int = 0
    dropped: bool = False  # out of the cache: closed by its last user


class OpenShards:
    """Read-only descriptors of the shards read last (LRU, ``capacity``).

    Used from the event loop and from worker threads at once, so every
    change is under one lock. A descriptor in use is never closed under
    its user: eviction and `drop` mark it, and the last `release` closes it
    (its number could otherwise be reused by another open and read as the
    wrong file)."""

    def __init__(self, capacity: int = OPEN_SHARDS) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Descriptor] = OrderedDict()

    def take(self, shard_id: str) -> _Descriptor | None:
        """The cached descriptor of this shard, held for the caller, or None."""
        with self._lock:
            found = self._open.get(shard_id)
            if found is not None:
                self._open.move_to_end(shard_id)
                found.users += 1
            return found

    def open(self, shard_id: str, path: Path) -> _Descriptor:
        """This shard's descriptor, held for the caller, opened if needed
        (blocking: call it in a worker thread). Raises FileNotFoundError."""
        found = self.take(shard_id)
        if found is not None:
            return found
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        closing: list[int] = []
        with self._lock:
            found = self._open.get(shard_id)
            if found is not None:  # another thread opened it meanwhile
                closing.append(fd)
            else:
                found = self._open[shard_id] = _Descriptor(fd)
                while len(self._open) > self.capacity:
                    _, old = self._open.popitem(last=False)
                    old.dropped = True
                    if not old.users:
                        closing.append(old.fd)
            found.users += 1
        for n in closing:
            os.close(n)
        return found

    def release(self, desc: _Descriptor) -> None:
        with self._lock:
            desc.users -= 1
            close = desc.dropped and not desc.users
        if close:
            os.close(desc.fd)

    def drop(self, shard_id: str) -> None:
        """Forget this shard's descriptor (its file was replaced or deleted)."""
        with self._lock:
            desc = self._open.pop(shard_id, None)
            if desc is None:
                return
            desc.dropped = True
            close = not desc.users
        if close:
            os.close(desc.fd)

    def close(self) -> None:
        with self._lock:
            for desc in self._open.values():
                desc.dropped = True
                if not desc.users:
                    os.close(desc.fd)
            self._open.clear()


def _read_at(fd: int, offset: int, length: int | None, flags: int) -> bytearray | None:
    """``length`` bytes (None: to the end) at ``offset``, or None if the file
    has no links left (deleted or replaced since it was opened). With
    ``RWF_NOWAIT`` in ``flags``, BlockingIOError unless all of it is cached."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return None
    size = max(0, st.st_size - offset)
    want = size if length is None else min(length, size)
    if want == 0:
        return bytearray()
    buf = bytearray(want)
    got = 0
    view = memoryview(buf)
    while got < want:
        n = os.preadv(fd, [view[got:]], offset + got, flags)
        if n == 0:
            break  # shortened meanwhile: what there is
        if flags and n < want - got:
            raise BlockingIOError(errno.EAGAIN, "partly cached")
        got += n
    view.release()
    del buf[got:]  # (shortened meanwhile: what there is)
    return buf


class LocalStore(ThreadedStore):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp_seq = itertools.count(1)  # next() is atomic: puts run in several threads
        self.open_shards = OpenShards()
        # Held around a put's rename and a conditional delete's check and unlink,
        # so a shard written again in between is never the file deleted.
        self._swap = threading.Lock()

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
            with self._swap:  # never between a conditional delete's check and unlink
                os.replace(tmp, path)
            self.open_shards.drop(shard_id)
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

    def get_cached(
        self, shard_id: str, offset: int = 0, length: int | None = None
    ) -> bytearray | None:
        """The read, if the shard is open here and its bytes are in the page cache."""
        desc = self.open_shards.take(validate_shard_id(shard_id)) if _NOWAIT else None
        if desc is None:
            return None
        try:
            return _read_at(desc.fd, offset, length, _NOWAIT)
        except OSError:
            return None  # not (all) in the page cache, or failing: in a thread
        finally:
            self.open_shards.release(desc)

    async def get(
        self, shard_id: str, offset: int = 0, length: int | None = None
    ) -> bytes | bytearray:
        data = self.get_cached(shard_id, offset, length)
        if data is not None:
            return data
        return await super().get(shard_id, offset, length)

    def _get(self, shard_id: str, offset: int, length: int | None) -> bytearray:
        path = self._path(shard_id)
        try:
            for _ in range(3):
                desc = self.open_shards.open(shard_id, path)
                try:
                    data = _read_at(desc.fd, offset, length, 0)
                finally:
                    self.open_shards.release(desc)
                if data is not None:
                    return data
                self.open_shards.drop(shard_id)  # replaced or deleted: open it anew
            raise StorageError(f"shard {shard_id} keeps being replaced while it is read")
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
        finally:
            self.open_shards.drop(shard_id)
        fsync_dir(path.parent)
        return True

    def _delete_if(self, shard_id: str, mtime_ns: int) -> bool:
        path = self._path(shard_id)
        with self._swap:
            try:
                if path.stat().st_mtime_ns != mtime_ns:
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
        self.open_shards.drop(shard_id)
        fsync_dir(path.parent)
        return True

    def _close(self) -> None:
        self.open_shards.close()

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
