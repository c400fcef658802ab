"""Namespace commands (the Raft log entries of the metadata) and their results.

Every command carries the time stamp the *proposer* chose (``now_ns``): apply
reads no clock, so every replica computes the same state. Names are bytes
(POSIX names are byte strings); inode numbers come from a counter in the
state, never from the proposer.
"""

from __future__ import annotations

from typing import ClassVar

from prismfs.wire.codec import I64, U32, U64, Message

ROOT_INO = 1


class MetaCommand(Message, frozen=True):
    family: ClassVar[str] = "meta"
    abstract: ClassVar[bool] = True

    now_ns: I64


class Mknod(MetaCommand, frozen=True):
    """Create a regular file, fifo, socket or device node (type from ``mode``'s S_IFMT)."""

    parent: U64
    name: bytes
    mode: U32
    uid: U32
    gid: U32
    rdev: U64 = 0


class Mkdir(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    mode: U32
    uid: U32
    gid: U32


class Symlink(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    target: bytes
    uid: U32
    gid: U32


class Link(MetaCommand, frozen=True):
    ino: U64
    new_parent: U64
    new_name: bytes


class Unlink(MetaCommand, frozen=True):
    parent: U64
    name: bytes


class Rmdir(MetaCommand, frozen=True):
    parent: U64
    name: bytes


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Rename(MetaCommand, frozen=True):
    parent: U64
    name: bytes
    new_parent: U64
    new_name: bytes
    flags: U32 = 0


class SetAttr(MetaCommand, frozen=True):
    """Change the fields that are not None; ctime moves in any case."""

    ino: U64
    mode: U32 | None = None
    uid: U32 | None = None
    gid: U32 | None = None
    size: U64 | None = None
    atime_ns: I64 | None = None
    mtime_ns: I64 | None = None


XATTR_CREATE = 1
XATTR_REPLACE = 2


class SetXattr(MetaCommand, frozen=True):
    ino: U64
    name: bytes
    value: bytes
    flags: U32 = 0


class RemoveXattr(MetaCommand, frozen=True):
    ino: U64
    name: bytes


class Attr(Message, frozen=True):
    """What getattr returns."""

    family: ClassVar[str] = "meta"

    ino: U64
    mode: U32
    nlink: U32
    uid: U32
    gid: U32
    size: U64
    atime_ns: I64
    mtime_ns: I64
    ctime_ns: I64
    rdev: U64 = 0


class MetaOk(Message, frozen=True):
    """A command's result: the attributes of the inode it made or changed, if any."""

    family: ClassVar[str] = "meta"

    attr: Attr | None = None


class MetaFailed(Message, frozen=True):
    """A command refused by POSIX rules; nothing changed. ``code`` is an errors code."""

    family: ClassVar[str] = "meta"

    code: str
    message: str
