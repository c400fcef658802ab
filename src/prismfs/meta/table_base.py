"""The helpers under the namespace's table families: one SQLite database, one
deterministic apply (see `prismfs.meta.namespace`)."""

from __future__ import annotations

import contextlib
import stat
from typing import Any

import msgspec

from prismfs.errors import (
    AlreadyExists,
    NotADirectory,
    NotFound,
)
from prismfs.meta.cluster_tables import ClusterTables, decode_record
from prismfs.meta.commands import (
    DEFAULT_CHUNK_SIZE,
    ROOT_INO,
    Attr,
    BatchResults,
    MetaOk,
    Reserved,
)
from prismfs.meta.schema import (
    SessionObserver,
    check_name,
)
from prismfs.wire.codec import Message, encode_message


class TableBase(ClusterTables):
    """Helpers every table family uses: counters in `state`, inode and
    directory-entry primitives, freeing an inode and its chunks."""

    _touched: list[int]
    session_observer: SessionObserver | None

    def getattr(self, ino: int) -> Attr:
        row = self.db.execute(
            "SELECT ino, mode, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev"
            " FROM inodes WHERE ino = ?",
            (ino,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}", ino=ino)
        return Attr(*row)

    def _orphan(self, ino: int) -> None:
        """No name and no open left: freed by a later sweep (`ORPHAN_GRACE_NS`)."""
        self.db.execute("INSERT OR IGNORE INTO orphans VALUES (?, 0)", (ino,))

    def _state(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0])

    def _bump(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to a counter in ``state``; returns the value before."""
        value = self._state(key)
        self.db.execute("UPDATE state SET value = ? WHERE key = ?", (value + delta, key))
        return value

    def _add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        self.db.execute(
            "INSERT INTO dentries VALUES (?, ?, ?, ?)",
            (parent, name, ino, self._bump("next_cookie")),
        )

    def _gc_push(self, record: bytes) -> None:
        chunk_id = decode_record(record).id
        self.db.execute(
            "INSERT INTO gc VALUES (?, ?, ?)", (self._bump("next_gc"), record, chunk_id)
        )
        self._bump("gc_pending")

    def _free(self, ino: int) -> None:
        """Delete an inode nothing refers to any more; its chunks go to the GC queue."""
        mode, size = self.db.execute(
            "SELECT mode, size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        for idx, record in self.db.execute(
            "SELECT idx, record FROM chunks WHERE ino = ? ORDER BY idx", (ino,)
        ).fetchall():
            self._gc_push(record)
            self._index_shards(ino, idx, decode_record(record), None)
        self.db.execute("DELETE FROM chunks WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        self._bump("files", -1)
        if stat.S_ISREG(mode):
            self._bump("bytes", -size)

    def _is_open(self, ino: int) -> bool:
        return (
            self.db.execute("SELECT 1 FROM opens WHERE ino = ? LIMIT 1", (ino,)).fetchone()
            is not None
        )

    def _set_size(self, ino: int, size: int, now: int) -> None:
        """Set a regular file's size: chunks past it are dropped, the last one shortened."""
        old, chunk_size = self.db.execute(
            "SELECT size, chunk_size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        if size < old:
            first_gone = -(-size // chunk_size)
            for idx, record in self.db.execute(
                "SELECT idx, record FROM chunks WHERE ino = ? AND idx >= ? ORDER BY idx",
                (ino, first_gone),
            ).fetchall():
                self._gc_push(record)
                self._index_shards(ino, idx, decode_record(record), None)
            self.db.execute("DELETE FROM chunks WHERE ino = ? AND idx >= ?", (ino, first_gone))
            if size % chunk_size:
                idx = size // chunk_size
                row = self.db.execute(
                    "SELECT record FROM chunks WHERE ino = ? AND idx = ?", (ino, idx)
                ).fetchone()
                if row is not None:
                    rec = decode_record(row[0])
                    keep = size - idx * chunk_size
                    if rec.length > keep:
                        shorter = msgspec.structs.replace(rec, length=keep)
                        self.db.execute(
                            "UPDATE chunks SET record = ? WHERE ino = ? AND idx = ?",
                            (encode_message(shorter), ino, idx),
                        )
        self.db.execute(
            "UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
            (size, now, now, ino),
        )
        self._bump("bytes", size - old)

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

    def _result(self, out: Attr | Message | None) -> Message:
        if isinstance(out, (Reserved, BatchResults)):
            return out
        parents = []
        for ino in dict.fromkeys(self._touched):
            with contextlib.suppress(NotFound):
                parents.append(self.getattr(ino))
        return MetaOk(out, tuple(parents))  # type: ignore[arg-type]

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        self._touched.append(ino)
        self.db.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?",
            (now, now, nlink_delta, ino),
        )

    def _new_inode(self, mode: int, uid: int, gid: int, now: int, nlink: int, **extra: Any) -> int:
        ino = extra.get("ino") or self._bump("next_ino")
        self._bump("files")
        self.db.execute(
            "INSERT INTO inodes (ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink,"
            " rdev, target, chunk_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                extra.get("chunk_size", 0),
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
        if stat.S_ISDIR(self._mode(ino)):
            self._free(ino)
        elif nlink <= 0 and not self._is_open(ino):
            self._orphan(ino)

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
