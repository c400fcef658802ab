"""The namespace state machine: POSIX rules over SQLite, deterministic apply.

Theory of operation. Each replica keeps one SQLite database. `apply` runs one
command in one transaction that also records the Raft index applied, so a
replica restarted from its database knows exactly where to resume. A command
that breaks a POSIX rule raises a typed error *before* anything is written;
the transaction is rolled back, the applied index still advances, and the
result carries the error's code. Apply reads no clock and draws no random
numbers: times come in the command (stamped by the proposer) and inode
numbers from a counter in the database, so every replica ends in the same
state (compare `digest`).

Snapshots are consistent copies of the database (`serialize`); `restore`
copies one back with SQLite's backup API.

Not here yet (later steps of the metadata issue): open-but-unlinked files
and client sessions, chunk maps, readdir offsets stable across concurrent
changes, statfs counters.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from typing import Any

import xxhash

from prismfs.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    OutOfRange,
    PrismError,
    TooManyLinks,
    ValueTooLarge,
)
from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Link,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    RemoveXattr,
    Rename,
    Rmdir,
    SetAttr,
    SetXattr,
    Symlink,
    Unlink,
)
from prismfs.wire.codec import decode_message, encode_message

NAME_MAX = 255
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB
);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries (ino);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidArgument(f"invalid name {name!r}")


class Namespace:
    """A `StateMachine` (apply/snapshot/restore) plus the read operations."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            # The Raft log is the durable record; after a crash the database
            # may lose its last transactions but never its consistency, and
            # replay from the stored applied index redoes them.
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if self.db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO inodes (ino, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink)"
                " VALUES (?, ?, 0, 0, 0, 0, 0, 2)",
                (ROOT_INO, stat.S_IFDIR | 0o755),
            )
            self.db.execute(
                "INSERT INTO state VALUES ('next_ino', ?), ('applied', 0)", (ROOT_INO + 1,)
            )
            self.db.execute("COMMIT")
        self._handlers: dict[type[MetaCommand], Callable[[Any], Attr | None]] = {
            Mknod: self._mknod,
            Mkdir: self._mkdir,
            Symlink: self._symlink,
            Link: self._link,
            Unlink: self._unlink,
            Rmdir: self._rmdir,
            Rename: self._rename,
            SetAttr: self._setattr,
            SetXattr: self._setxattr,
            RemoveXattr: self._removexattr,
        }

    # --- StateMachine ---------------------------------------------------------

    def apply(self, index: int, command: bytes) -> bytes:
        cmd = decode_message(command)
        handler = self._handlers.get(type(cmd))  # type: ignore[arg-type]
        if handler is None:
            raise TypeError(f"not a namespace command: {type(cmd).__name__}")
        self.db.execute("BEGIN")
        try:
            attr = handler(cmd)
        except PrismError as exc:
            self.db.execute("ROLLBACK")
            self.db.execute("BEGIN")
            self._set_applied(index)
            self.db.execute("COMMIT")
            return encode_message(MetaFailed(exc.code, exc.message))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._set_applied(index)
        self.db.execute("COMMIT")
        return encode_message(MetaOk(attr))

    def snapshot(self) -> bytes:
        return bytes(self.db.serialize())

    def restore(self, snapshot: bytes) -> None:
        source = sqlite3.connect(":memory:")
        try:
            source.deserialize(snapshot)
            source.backup(self.db)
        finally:
            source.close()

    @property
    def applied(self) -> int:
        return int(self._state("applied"))

    def digest(self) -> str:
        """A hash of the whole namespace; equal on replicas that applied the same log."""
        h = xxhash.xxh3_64()
        for table, order in (
            ("inodes", "ino"),
            ("dentries", "parent, name"),
            ("xattrs", "ino, name"),
            ("state", "key"),
        ):
            for row in self.db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                h.update(repr(row).encode())
        return h.hexdigest()

    # --- reads -------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        row = self.db.execute(
            "SELECT ino, mode, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev"
            " FROM inodes WHERE ino = ?",
            (ino,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}", ino=ino)
        return Attr(*row)

    def lookup(self, parent: int, name: bytes) -> Attr:
        self._dir(parent)
        ino = self._child(parent, name)
        if ino is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        return self.getattr(ino)

    def readdir(self, ino: int, after: bytes = b"", limit: int = 1000) -> list[tuple[bytes, Attr]]:
        """Entries in name order strictly after ``after`` (a stable cursor)."""
        self._dir(ino)
        rows = self.db.execute(
            "SELECT name, ino FROM dentries WHERE parent = ? AND name > ? ORDER BY name LIMIT ?",
            (ino, after, limit),
        ).fetchall()
        return [(bytes(name), self.getattr(child)) for name, child in rows]

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

    # --- helpers -------------------------------------------------------------------

    def _state(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0])

    def _set_applied(self, index: int) -> None:
        self.db.execute("UPDATE state SET value = ? WHERE key = 'applied'", (index,))

    def _child(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute(
            "SELECT ino FROM dentries WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def _mode(self, ino: int) -> int:
        row = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}", ino=ino)
        return int(row[0])

    def _dir(self, ino: int) -> None:
        if not stat.S_ISDIR(self._mode(ino)):
            raise NotADirectory(f"inode {ino} is not a directory")

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        self.db.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?",
            (now, now, nlink_delta, ino),
        )

    def _new_inode(self, mode: int, uid: int, gid: int, now: int, nlink: int, **extra: Any) -> int:
        ino = self._state("next_ino")
        self.db.execute("UPDATE state SET value = value + 1 WHERE key = 'next_ino'")
        self.db.execute(
            "INSERT INTO inodes (ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink,"
            " rdev, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ino,
                mode,
                uid,
                gid,
                extra.get("size", 0),
                now,
                now,
                now,
                nlink,
                extra.get("rdev", 0),
                extra.get("target"),
            ),
        )
        return ino

    def _prepare_new(self, parent: int, name: bytes) -> None:
        check_name(name)
        self._dir(parent)
        if self._child(parent, name) is not None:
            raise AlreadyExists(f"{name!r} exists in directory {parent}")

    def _drop_link(self, ino: int, now: int) -> None:
        """One name of ``ino`` went away: free it with its last link."""
        self.db.execute(
            "UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? WHERE ino = ?", (now, ino)
        )
        (nlink,) = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if nlink <= 0 or stat.S_ISDIR(self._mode(ino)):
            self.db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
            self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        """Is ``ancestor`` on the path from ``ino`` up to the root (or ino itself)?"""
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            row = self.db.execute("SELECT parent FROM dentries WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                return False
            ino = int(row[0])

    # --- commands -------------------------------------------------------------------

    def _mknod(self, c: Mknod) -> Attr:
        self._prepare_new(c.parent, c.name)
        kind = stat.S_IFMT(c.mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot make file type {kind:o}")
        ino = self._new_inode(kind | (c.mode & 0o7777), c.uid, c.gid, c.now_ns, 1, rdev=c.rdev)
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (c.parent, c.name, ino))
        self._touch_dir(c.parent, c.now_ns)
        return self.getattr(ino)

    def _mkdir(self, c: Mkdir) -> Attr:
        self._prepare_new(c.parent, c.name)
        ino = self._new_inode(stat.S_IFDIR | (c.mode & 0o7777), c.uid, c.gid, c.now_ns, 2)
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (c.parent, c.name, ino))
        self._touch_dir(c.parent, c.now_ns, nlink_delta=1)
        return self.getattr(ino)

    def _symlink(self, c: Symlink) -> Attr:
        self._prepare_new(c.parent, c.name)
        if not c.target or len(c.target) > 4095 or b"\0" in c.target:
            raise InvalidArgument("symlink target must be 1 to 4095 bytes without NUL")
        ino = self._new_inode(
            stat.S_IFLNK | 0o777, c.uid, c.gid, c.now_ns, 1, size=len(c.target), target=c.target
        )
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (c.parent, c.name, ino))
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
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (c.new_parent, c.new_name, c.ino))
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
        self.db.execute(
            "UPDATE dentries SET parent = ?, name = ? WHERE parent = ? AND name = ?",
            (c.new_parent, c.new_name, c.parent, c.name),
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
            sets += ["size = ?", "mtime_ns = ?"]
            args += [c.size, c.now_ns]
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

    def _setxattr(self, c: SetXattr) -> None:
        self._mode(c.ino)
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
