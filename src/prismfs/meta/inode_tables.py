"""The namespace's tree: inodes, directory entries, symlinks and extended
attributes; the POSIX commands on them and their reads."""

from __future__ import annotations

import stat

from prismfs.data.layout import LAYOUT_XATTR, Layout
from prismfs.errors import (
    AlreadyExists,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    OutOfRange,
    TooManyLinks,
    ValueTooLarge,
)
from prismfs.meta.commands import (
    MIN_REDUNDANCY_XATTR,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    DirEntry,
    DirPage,
    Link,
    Mkdir,
    Mknod,
    RemoveXattr,
    Rename,
    Reserved,
    ReserveInodes,
    Rmdir,
    SetAttr,
    SetXattr,
    Symlink,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.schema import (
    LINK_MAX,
    MAX_FILE_SIZE,
    NAME_MAX,
    XATTR_NAME_MAX,
    XATTR_VALUE_MAX,
    check_name,
    inherit_from_parent,
)
from prismfs.meta.session_tables import SessionTables


class InodeTables(SessionTables):
    """Inodes, directory entries, symlinks and extended attributes."""

    def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > NAME_MAX:
            raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
        self._dir(parent)
        ino = self._child(parent, name)
        if ino is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        return self.getattr(ino)

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000) -> list[DirEntry]:
        """Entries with a cookie greater than ``cookie``, in cookie order."""
        self._dir(ino)
        rows = self.db.execute(
            "SELECT d.name, d.cookie, i.ino, i.mode, i.nlink, i.uid, i.gid, i.size, i.atime_ns,"
            " i.mtime_ns, i.ctime_ns, i.rdev FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?",
            (ino, cookie, limit),
        ).fetchall()
        return [DirEntry(bytes(r[0]), r[1], Attr(*r[2:])) for r in rows]

    def readdir_page(self, ino: int, cookie: int, limit: int) -> DirPage:
        limit = max(1, min(limit, 10_000))
        entries = self.readdir(ino, cookie, limit + 1)
        parent = 0
        if cookie == 0:
            row = self.db.execute("SELECT parent FROM dentries WHERE ino = ?", (ino,)).fetchone()
            parent = ROOT_INO if row is None else int(row[0])
        return DirPage(tuple(entries[:limit]), more=len(entries) > limit, parent=parent)

    def readlink(self, ino: int) -> bytes:
        attr = self.getattr(ino)
        if not stat.S_ISLNK(attr.mode):
            raise InvalidArgument(f"inode {ino} is not a symbolic link")
        (target,) = self.db.execute("SELECT target FROM inodes WHERE ino = ?", (ino,)).fetchone()
        return bytes(target)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getattr(ino)
        row = self.db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        if row is None:
            raise NoAttribute(f"no attribute {name!r} on inode {ino}")
        return bytes(row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        rows = self.db.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    def _done_before(self, parent: int, name: bytes, ino: int) -> Attr | None:
        """A create with a reserved inode number ``ino`` (0: none): the
        attributes if ``name`` holds that number already (a retry of this
        very create: it is done), else None; EINVAL for a number that is not
        a free reserved one."""
        if not ino:
            return None
        if self._child(parent, name) == ino:
            return self.getattr(ino)
        if not ROOT_INO < ino < self._state("next_ino") or self._exists(ino):
            raise InvalidArgument(f"inode number {ino} is not a free reserved one")
        return None

    def _mknod(self, c: Mknod) -> Attr:
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        kind = stat.S_IFMT(c.mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot make file type {kind:o}")
        if c.chunk_size and not 4096 <= c.chunk_size <= 64 * 1024 * 1024:
            raise InvalidArgument(f"chunk size {c.chunk_size} is not in 4 KiB..64 MiB")
        if c.session:
            self._live_session(c.session)
        mode, gid = self._inherit(c.parent, kind | (c.mode & 0o7777), c.gid)
        ino = self._new_inode(
            mode,
            c.uid,
            gid,
            c.now_ns,
            1,
            rdev=c.rdev,
            chunk_size=c.chunk_size if stat.S_ISREG(kind) else 0,
            ino=c.ino,
        )
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns)
        if c.session:
            self._add_open(c.session, ino)
        return self.getattr(ino)

    def _inherit(self, parent: int, mode: int, gid: int) -> tuple[int, int]:
        """A set-group-ID directory gives new entries its group, and new
        directories its set-group-ID bit (as Linux does; FUSE leaves it to us)."""
        return inherit_from_parent(self.getattr(parent), mode, gid)

    def _exists(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ino,)).fetchone() is not None

    def _reserve_inodes(self, c: ReserveInodes) -> Reserved:
        if not 1 <= c.count <= 1 << 20:
            raise InvalidArgument(f"cannot reserve {c.count} inode numbers (1..1048576)")
        first = self._state("next_ino")
        self._bump("next_ino", c.count)
        return Reserved(first, c.count)

    def _mkdir(self, c: Mkdir) -> Attr:
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        mode, gid = self._inherit(c.parent, stat.S_IFDIR | (c.mode & 0o7777), c.gid)
        ino = self._new_inode(mode, c.uid, gid, c.now_ns, 2, ino=c.ino)
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns, nlink_delta=1)
        return self.getattr(ino)

    def _symlink(self, c: Symlink) -> Attr:
        # As in Linux, the target is checked first (it is copied in before
        # the new name is looked up): empty is ENOENT, too long ENAMETOOLONG.
        if not c.target:
            raise NotFound("a symlink target cannot be empty")
        if len(c.target) > 4095:
            raise NameTooLong(f"symlink target of {len(c.target)} bytes is longer than 4095")
        if b"\0" in c.target:
            raise InvalidArgument("a symlink target cannot hold NUL")
        if (done := self._done_before(c.parent, c.name, c.ino)) is not None:
            return done
        self._prepare_new(c.parent, c.name)
        mode, gid = self._inherit(c.parent, stat.S_IFLNK | 0o777, c.gid)
        ino = self._new_inode(
            mode, c.uid, gid, c.now_ns, 1, size=len(c.target), target=c.target, ino=c.ino
        )
        self._add_dentry(c.parent, c.name, ino)
        self._touch_dir(c.parent, c.now_ns)
        return self.getattr(ino)

    def _link(self, c: Link) -> Attr:
        mode = self._mode(c.ino)
        check_name(c.new_name)
        self._dir(c.new_parent)
        if self._child(c.new_parent, c.new_name) is not None:
            raise AlreadyExists(f"{c.new_name!r} exists in directory {c.new_parent}")
        if stat.S_ISDIR(mode):
            raise NotPermitted("hard links to directories are not allowed")
        if self.getattr(c.ino).nlink >= LINK_MAX:
            raise TooManyLinks(f"inode {c.ino} has {LINK_MAX} links")
        self._add_dentry(c.new_parent, c.new_name, c.ino)
        self.db.execute(
            "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino)
        )
        self._touch_dir(c.new_parent, c.now_ns)
        return self.getattr(c.ino)

    def _unlink(self, c: Unlink) -> None:
        check_name(c.name)
        self._dir(c.parent)
        ino = self._child(c.parent, c.name)
        if ino is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        if c.ino and ino != c.ino:
            raise NotFound(f"{c.name!r} in directory {c.parent} is no longer inode {c.ino}")
        if stat.S_ISDIR(self._mode(ino)):
            raise IsADirectory(f"{c.name!r} is a directory")
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (c.parent, c.name))
        self._drop_link(ino, c.now_ns)
        self._touch_dir(c.parent, c.now_ns)

    def _rmdir(self, c: Rmdir) -> None:
        check_name(c.name)
        self._dir(c.parent)
        ino = self._child(c.parent, c.name)
        if ino is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        if not stat.S_ISDIR(self._mode(ino)):
            raise NotADirectory(f"{c.name!r} is not a directory")
        if self.db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone():
            raise NotEmpty(f"directory {c.name!r} is not empty")
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (c.parent, c.name))
        self._drop_link(ino, c.now_ns)
        self._touch_dir(c.parent, c.now_ns, nlink_delta=-1)

    def _rename(self, c: Rename) -> None:
        check_name(c.name)
        check_name(c.new_name)
        if c.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or c.flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise InvalidArgument(f"bad rename flags {c.flags}")
        self._dir(c.parent)
        self._dir(c.new_parent)
        src = self._child(c.parent, c.name)
        if src is None:
            raise NotFound(f"no entry {c.name!r} in directory {c.parent}")
        dst = self._child(c.new_parent, c.new_name)
        src_dir = stat.S_ISDIR(self._mode(src))
        if c.flags & RENAME_EXCHANGE:
            if dst is None:
                raise NotFound(f"no entry {c.new_name!r} to exchange with")
            self._exchange(c, src, dst)
            return
        if dst is not None and c.flags & RENAME_NOREPLACE:
            raise AlreadyExists(f"{c.new_name!r} exists in directory {c.new_parent}")
        # The checks below come in the order Linux makes them, so that every
        # errno matches what a local file system returns.
        if src_dir and self._is_ancestor(src, c.new_parent):
            raise InvalidArgument("cannot move a directory into itself")
        if dst is not None and c.parent != c.new_parent and self._is_ancestor(dst, c.parent):
            raise NotEmpty(f"{c.new_name!r} is an ancestor of the source")
        if dst == src:
            return  # two names of one inode (or the same entry): POSIX says do nothing
        if dst is not None:
            dst_dir = stat.S_ISDIR(self._mode(dst))
            if src_dir and not dst_dir:
                raise NotADirectory(f"{c.new_name!r} is not a directory")
            if dst_dir and not src_dir:
                raise IsADirectory(f"{c.new_name!r} is a directory")
            if (
                dst_dir
                and self.db.execute(
                    "SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (dst,)
                ).fetchone()
            ):
                raise NotEmpty(f"directory {c.new_name!r} is not empty")
            self.db.execute(
                "DELETE FROM dentries WHERE parent = ? AND name = ?", (c.new_parent, c.new_name)
            )
            self._drop_link(dst, c.now_ns)
            if dst_dir:
                self._touch_dir(c.new_parent, c.now_ns, nlink_delta=-1)
        # A moved entry gets a new cookie: a listing in progress sees it at
        # most once (under its old name before, or its new name after).
        self.db.execute(
            "UPDATE dentries SET parent = ?, name = ?, cookie = ? WHERE parent = ? AND name = ?",
            (c.new_parent, c.new_name, self._bump("next_cookie"), c.parent, c.name),
        )
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, src))
        moved_dir = src_dir and c.parent != c.new_parent
        self._touch_dir(c.parent, c.now_ns, nlink_delta=-1 if moved_dir else 0)
        self._touch_dir(c.new_parent, c.now_ns, nlink_delta=1 if moved_dir else 0)

    def _exchange(self, c: Rename, src: int, dst: int) -> None:
        src_dir = stat.S_ISDIR(self._mode(src))
        dst_dir = stat.S_ISDIR(self._mode(dst))
        if (src_dir and c.parent != c.new_parent and self._is_ancestor(src, c.new_parent)) or (
            dst_dir and c.parent != c.new_parent and self._is_ancestor(dst, c.parent)
        ):
            raise InvalidArgument("cannot exchange a directory with its own descendant")
        if src == dst:
            return
        self.db.execute(
            "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?", (dst, c.parent, c.name)
        )
        self.db.execute(
            "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?",
            (src, c.new_parent, c.new_name),
        )
        if c.parent != c.new_parent and src_dir != dst_dir:
            delta = 1 if dst_dir else -1
            self._touch_dir(c.parent, c.now_ns, nlink_delta=delta)
            self._touch_dir(c.new_parent, c.now_ns, nlink_delta=-delta)
        else:
            self._touch_dir(c.parent, c.now_ns)
            self._touch_dir(c.new_parent, c.now_ns)
        for ino in (src, dst):
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, ino))

    def _setattr(self, c: SetAttr) -> Attr:
        mode = self._mode(c.ino)
        sets: list[str] = ["ctime_ns = ?"]
        args: list[int] = [c.now_ns]
        if c.size is not None:
            if stat.S_ISDIR(mode):
                raise IsADirectory(f"inode {c.ino} is a directory")
            if not stat.S_ISREG(mode):
                raise InvalidArgument(f"inode {c.ino} is not a regular file")
            if c.size > MAX_FILE_SIZE:
                raise FileTooLarge(f"size {c.size} exceeds the maximum {MAX_FILE_SIZE}")
            self._set_size(c.ino, c.size, c.now_ns)
        if c.mode is not None:
            sets.append("mode = ?")
            args.append(stat.S_IFMT(mode) | (c.mode & 0o7777))
        for column in ("uid", "gid", "atime_ns", "mtime_ns"):
            value = getattr(c, column)
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        self.db.execute(f"UPDATE inodes SET {', '.join(sets)} WHERE ino = ?", (*args, c.ino))
        return self.getattr(c.ino)

    def _update_atime(self, c: UpdateAtime) -> None:
        self._mode(c.ino)  # NotFound for a missing inode
        self.db.execute(
            "UPDATE inodes SET atime_ns = max(atime_ns, ?) WHERE ino = ?", (c.atime_ns, c.ino)
        )

    def _setxattr(self, c: SetXattr) -> None:
        mode = self._mode(c.ino)
        if c.name == LAYOUT_XATTR:
            if not stat.S_ISDIR(mode):
                raise InvalidArgument("prismfs.layout can only be set on a directory")
            Layout.parse(c.value)  # InvalidArgument for a bad one
        if c.name == MIN_REDUNDANCY_XATTR and (
            c.ino != ROOT_INO or c.value not in (b"0", b"1", b"2", b"3", b"4")
        ):
            raise InvalidArgument("prismfs.min_redundancy is 0 to 4, on the root directory")
        if not c.name or len(c.name) > XATTR_NAME_MAX:
            raise OutOfRange(f"attribute name of {len(c.name)} bytes")
        if len(c.value) > XATTR_VALUE_MAX:
            raise ValueTooLarge(
                f"attribute value of {len(c.value)} bytes exceeds {XATTR_VALUE_MAX}"
            )
        exists = self.db.execute(
            "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (c.ino, c.name)
        ).fetchone()
        if exists and c.flags & XATTR_CREATE:
            raise AlreadyExists(f"attribute {c.name!r} exists")
        if not exists and c.flags & XATTR_REPLACE:
            raise NoAttribute(f"no attribute {c.name!r} to replace")
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (c.ino, c.name, c.value))
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino))

    def _removexattr(self, c: RemoveXattr) -> None:
        self._mode(c.ino)
        cursor = self.db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (c.ino, c.name))
        if cursor.rowcount == 0:
            raise NoAttribute(f"no attribute {c.name!r}")
        self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (c.now_ns, c.ino))
