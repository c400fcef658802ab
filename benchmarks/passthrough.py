"""A minimal pyfuse3 passthrough file system: the FUSE + Python floor for fsbench.

``python benchmarks/passthrough.py SOURCE_DIR MOUNTPOINT`` mounts SOURCE_DIR
at MOUNTPOINT in the foreground until unmounted. Inodes are the source's
inode numbers; operations are plain os calls. Only what fsbench.sh needs
(and what a tar pipe does) is implemented.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import pyfuse3
import trio


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.fds: dict[int, int] = {}

    def _path(self, inode: int) -> str:
        return self.paths[inode]

    def _attr(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        e = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
            setattr(e, name, getattr(st, name))
        e.st_ino = st.st_ino if path != self.paths[pyfuse3.ROOT_INODE] else pyfuse3.ROOT_INODE
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        e.st_blksize, e.st_blocks = st.st_blksize, st.st_blocks
        e.attr_timeout = e.entry_timeout = 1.0
        if e.st_ino != pyfuse3.ROOT_INODE:
            self.paths[e.st_ino] = path  # the newest name: inode numbers are reused
        return e

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        path = self._path(inode)
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, attr.st_mode & 0o7777, follow_symlinks=False)
            if fields.update_uid or fields.update_gid:
                os.chown(
                    path,
                    attr.st_uid if fields.update_uid else -1,
                    attr.st_gid if fields.update_gid else -1,
                    follow_symlinks=False,
                )
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(
                    path,
                    ns=(
                        attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                        attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                    ),
                    follow_symlinks=False,
                )
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        return self._attr(path)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(os.readlink(self._path(inode)))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        return self._attr(path)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        os.symlink(target, path)
        return self._attr(path)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.unlink(self._child(parent_inode, name))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.rmdir(self._child(parent_inode, name))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        new = self._child(p_new, n_new)
        try:
            os.rename(self._child(p_old, n_old), new)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        self._attr(new)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        self.fds[fd] = inode
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, mode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        attr = self._attr(path)
        self.fds[fd] = attr.st_ino
        return pyfuse3.FileInfo(fh=fd), attr

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fsync(fh)

    async def release(self, fh: int) -> None:
        self.fds.pop(fh, None)
        os.close(fh)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        entries = sorted(os.scandir(path), key=lambda e: e.inode())
        for entry in entries:
            if entry.inode() <= start_id:
                continue
            if not pyfuse3.readdir_reply(
                token, os.fsencode(entry.name), self._attr(entry.path), entry.inode()
            ):
                return

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(out, name, getattr(s, name))
        return out


def main() -> None:
    source, mountpoint = sys.argv[1], sys.argv[2]
    ops = Passthrough(os.path.abspath(source))
    pyfuse3.init(ops, mountpoint, {"fsname=passthrough", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=False)
    _ = errno


if __name__ == "__main__":
    main()
