"""The namespace's SQLite schema, its limits and the small rules shared by
the table families (`prismfs.meta.namespace` and its bases)."""

from __future__ import annotations

import stat
from typing import Protocol

from prismfs.errors import (
    InvalidArgument,
    NameTooLong,
)
from prismfs.meta.commands import (
    Attr,
)

NAME_MAX = 255
MAX_FILE_SIZE = 2**62
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
SCHEMA_VERSION = 11
"""8: `chunks` is a rowid table. A record carrying a small file's data inline
(up to a few KiB) fits in a rowid table's page; in a WITHOUT ROWID table
(schema 7 and before) one over about 1,000 bytes spilled to overflow
pages, a page and more per small file. 9: `nodes.voting`. 10: `credentials`
(client credentials made and revoked). 11: `tokens.uid`, `gid`, `prefix` (a
token made before acts as root everywhere, as it did)."""
ORPHAN_GRACE_NS = 2 * 10**9
"""An inode with no name left and no open is freed at a sweep (`ExpireSessions`,
every few seconds) once a whole sweep interval and this much of the leader's
clock passed since a sweep first saw it: a mount registers the opens of
existing files lazily, in its next batch (every 0.2 s), and an open that was
read but not yet registered must find its inode still there. A new leader's
first sweep counts as the first sighting of every orphan (the batches of
opens wait while there is no leader); a mount's own unlink or rename carries
its queued opens in the same entry."""
INDEXES = """
CREATE INDEX IF NOT EXISTS chunks_reduced ON chunks (chunk_id) WHERE reduced = 1;
CREATE INDEX IF NOT EXISTS ended_sessions_by_time ON ended_sessions (ended_ns);
"""
DEFAULT_LEASE_NS = 60 * 10**9
MIN_LEASE_NS = 10**9
MAX_LEASE_NS = 86_400 * 10**9

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
    target BLOB,
    chunk_size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    cookie INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries (ino);
CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_cookie ON dentries (parent, cookie);
CREATE TABLE IF NOT EXISTS chunks (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    record BLOB NOT NULL,
    chunk_id BLOB NOT NULL,
    reduced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ino, idx)
);
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (chunk_id);
CREATE TABLE IF NOT EXISTS gc (
    seq INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    chunk_id BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS gc_by_id ON gc (chunk_id);
CREATE TABLE IF NOT EXISTS node_usage (
    node TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    lease_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ended_sessions (
    session TEXT PRIMARY KEY,
    ended_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opens (
    session TEXT NOT NULL,
    ino INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (session, ino)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS opens_by_ino ON opens (ino);
CREATE TABLE IF NOT EXISTS orphans (
    ino INTEGER PRIMARY KEY,
    seen_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    zone TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    state TEXT NOT NULL,
    registered_ns INTEGER NOT NULL,
    state_ns INTEGER NOT NULL DEFAULT 0,
    voting TEXT NOT NULL DEFAULT 'auto'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    result BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    uid INTEGER NOT NULL DEFAULT 0,
    gid INTEGER NOT NULL DEFAULT 0,
    prefix TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    credential TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    revoked_ns INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SessionObserver(Protocol):
    """Told, as entries apply, of session renewals and ends (the leader's lease clock)."""

    def renewed(self, session: str, lease_ns: int) -> None: ...

    def ended(self, session: str) -> None: ...


def session_of_lane(client: str) -> str:
    """The session a client id belongs to: lanes are ``<session>/<n>``."""
    return client.rpartition("/")[0]


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidArgument(f"invalid name {name!r}")


def inherit_from_parent(parent: Attr, mode: int, gid: int) -> tuple[int, int]:
    """(mode, gid) of a new entry in directory ``parent``: a set-group-ID
    directory gives its group, and to a new directory also its S_ISGID bit."""
    if not parent.mode & stat.S_ISGID:
        return mode, gid
    return (mode | stat.S_ISGID if stat.S_ISDIR(mode) else mode), parent.gid
