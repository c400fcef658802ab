"""Backups of the metadata, made online by the Raft leader.

``prismfs cluster backup FILE`` sends `StartBackup` to the leader. The
leader copies its namespace database with SQLite's backup API (a read-only
connection in a worker thread, paced like a snapshot, so apply and the log's
fsyncs go on) into ``D/meta/backups/``, and answers with the copy's id, size,
checksum and the Raft index it holds. The CLI then reads it in pieces
(`ReadBackup`, bytes in the frame payload) from that node and says
`EndBackup`, which deletes the copy (also when the CLI fails); copies
nobody ended and nobody read for `BACKUP_TTL_S` are deleted. Only node
credentials may ask: a backup holds the whole namespace, token hashes and
credentials included.

A backup is restored with ``prismfs node recover --from-backup``
(`prismfs.node.recover`), which also serves when a Raft majority is lost.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import ClassVar

import trio

from prismfs.errors import InvalidArgument, NotFound
from prismfs.leader.admin import leader_only
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.raft.durable_log import file_digest, read_image
from prismfs.wire.codec import U64, Message
from prismfs.wire.server import Call, Reply, RpcServer

log = logging.getLogger(__name__)

BACKUP_DIR = "backups"
BACKUP_TTL_S = 3600.0
"""A copy nobody ended (the CLI was killed) and nobody read for this long is
deleted at the next backup started."""
MAX_PIECE = 4 << 20
MAX_BACKUPS = 2
"""Copies at once: each is a whole copy of the namespace on this node's disk."""


class BackupMessage(Message, frozen=True):
    family: ClassVar[str] = "backup"
    abstract: ClassVar[bool] = True


class StartBackup(BackupMessage, frozen=True):
    mb_per_s: float = 0.0
    """Pace of the copy; 0: the node's snapshot pace."""


class BackupReady(BackupMessage, frozen=True):
    backup: str
    address: str
    """The node holding the copy: `ReadBackup` and `EndBackup` go there."""
    size: U64
    checksum: bytes
    """xxh3-128 of the whole file (as snapshot images are checked)."""
    index: U64
    """The Raft index whose state the copy holds."""


class ReadBackup(BackupMessage, frozen=True):
    backup: str
    offset: U64
    length: U64 = MAX_PIECE


class BackupPiece(BackupMessage, frozen=True):
    length: U64


class EndBackup(BackupMessage, frozen=True):
    backup: str


class BackupEnded(BackupMessage, frozen=True):
    pass


class Backups:
    def __init__(
        self, consensus: Consensus, namespace: Namespace, data_dir: Path, mb_per_s: float
    ) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self.dir = data_dir / "meta" / BACKUP_DIR
        self.mb_per_s = mb_per_s
        self._running = 0

    def register(self, server: RpcServer) -> None:
        server.register(StartBackup, self._start)
        server.register(ReadBackup, self._read)
        server.register(EndBackup, self._end)

    def _path(self, backup: str) -> Path:
        if len(backup) != 32 or not all(c in "0123456789abcdef" for c in backup):
            raise InvalidArgument(f"not a backup id: {backup!r}")
        path = self.dir / f"{backup}.db"
        if not path.exists():
            raise NotFound(f"no backup {backup} on this node (ended, or older than an hour)")
        return path

    def _sweep(self) -> None:
        """Delete copies nobody ended within `BACKUP_TTL_S`, and half-made ones."""
        if not self.dir.exists():
            return
        now = time.time()
        for path in self.dir.iterdir():
            try:
                stale = now - path.stat().st_mtime > BACKUP_TTL_S or path.suffix == ".part"
            except FileNotFoundError:
                continue
            if stale and (path.suffix == ".db" or self._running == 0):
                path.unlink(missing_ok=True)

    async def _start(self, request: StartBackup, call: Call) -> BackupReady:
        leader_only(self.consensus)
        if self.namespace.in_memory:
            raise InvalidArgument("this node keeps its namespace in memory: nothing to copy")
        await trio.to_thread.run_sync(self._sweep)
        if self._running + len(list(self.dir.glob("*.db")) if self.dir.exists() else []) >= (
            MAX_BACKUPS
        ):
            raise InvalidArgument(
                f"{MAX_BACKUPS} backups are being read from this node; one left unread is"
                " dropped an hour after its last read"
            )
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        backup = secrets.token_hex(16)
        part = self.dir / f"{backup}.part"
        pace = request.mb_per_s if request.mb_per_s > 0 else self.mb_per_s
        self._running += 1
        try:
            index = await trio.to_thread.run_sync(
                lambda: self.namespace.snapshot_to(part, mb_per_s=pace)
            )
            assert index is not None
            checksum, size = await trio.to_thread.run_sync(file_digest, part)
            os.chmod(part, 0o600)
            final = part.with_suffix(".db")
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            self._running -= 1
        log.info("metadata backup %s: %d bytes at index %d", backup, size, index)
        return BackupReady(backup, self.consensus.address, size, checksum, index)

    async def _read(self, request: ReadBackup, call: Call) -> Reply:
        path = self._path(request.backup)
        length = min(request.length, MAX_PIECE)
        data = await trio.to_thread.run_sync(read_image, path, request.offset, length)
        os.utime(path)  # the TTL counts from the last read
        return Reply(BackupPiece(len(data)), data)

    async def _end(self, request: EndBackup, call: Call) -> BackupEnded:
        self._path(request.backup).unlink(missing_ok=True)
        return BackupEnded()
