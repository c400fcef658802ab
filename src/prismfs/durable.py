"""Durable small-file writes: temp file, fsync, rename, fsync of the directory.

A crash at any point leaves either the old file or the complete new one,
never a partial file under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from prismfs.errors import NoSpace, StorageError


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` durably; raises `NoSpace`/`StorageError` naming it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by umask, ignored if tmp existed
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cls = NoSpace if exc.errno == errno.ENOSPC else StorageError
        raise cls(f"cannot write {path}: {exc.strerror or exc}") from None
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``write`` until everything is written: a short write (ENOSPC soon) is continued."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
