"""The namespace's chunk tables: each file's chunk records, commits and
re-encodings of them, the GC queue of replaced chunks, each directory's
effective layout."""

from __future__ import annotations

import stat

from prismfs.data.layout import LAYOUT_XATTR
from prismfs.errors import (
    Conflict,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    NotFound,
)
from prismfs.meta.cluster_tables import CHUNK_PAGE, decode_record
from prismfs.meta.commands import (
    BLOCK_SIZES,
    DEFAULT_CHUNK_SIZE,
    INLINE_MAX,
    MIN_REDUNDANCY_XATTR,
    REPLY_RECORD_BYTES,
    ROOT_INO,
    Attr,
    ChunkMap,
    ChunkRecord,
    CommitChunks,
    GcDone,
    ReencodeChunk,
)
from prismfs.meta.schema import (
    MAX_FILE_SIZE,
)
from prismfs.meta.table_base import TableBase
from prismfs.wire.codec import encode_message


class ChunkTables(TableBase):
    """Chunk maps: commits of written chunks, re-encodings, the GC queue."""

    def chunk_map(self, ino: int, first: int = 0, count: int = 1024) -> ChunkMap:
        mode = self._mode(ino)
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"inode {ino} is not a regular file")
        size, chunk_size = self.db.execute(
            "SELECT size, chunk_size FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        rows = self.db.execute(
            "SELECT idx, record FROM chunks WHERE ino = ? AND idx >= ? ORDER BY idx LIMIT ?",
            (ino, first, max(0, min(count, 100_000))),
        )
        chunks: list[tuple[int, ChunkRecord]] = []
        spent = 0
        more = False
        for i, r in rows:
            if chunks and spent + len(r) > REPLY_RECORD_BYTES:
                more = True  # (the rest: another query)
                break
            spent += len(r)
            chunks.append((int(i), decode_record(r)))
        return ChunkMap(chunk_size or DEFAULT_CHUNK_SIZE, size, tuple(chunks), more)

    def gc_pending(self, limit: int = 1000) -> list[tuple[int, ChunkRecord]]:
        """The oldest GC entries, at most ``limit`` and `REPLY_RECORD_BYTES` of records."""
        rows = self.db.execute("SELECT seq, record FROM gc ORDER BY seq LIMIT ?", (limit,))
        out: list[tuple[int, ChunkRecord]] = []
        spent = 0
        for seq, r in rows:
            if out and spent + len(r) > REPLY_RECORD_BYTES:
                break
            spent += len(r)
            out.append((int(seq), decode_record(r)))
        return out

    def _commit_chunks(self, c: CommitChunks) -> Attr:
        mode = self._mode(c.ino)
        if stat.S_ISDIR(mode):
            raise IsADirectory(f"inode {c.ino} is a directory")
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"inode {c.ino} is not a regular file")
        if c.size > MAX_FILE_SIZE:
            raise FileTooLarge(f"size {c.size} exceeds the maximum {MAX_FILE_SIZE}")
        chunk_size, old_size = self.db.execute(
            "SELECT chunk_size, size FROM inodes WHERE ino = ?", (c.ino,)
        ).fetchone()
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        size = max(old_size, c.size)  # a commit never shortens a file
        if c.expect and len(c.expect) != len(c.chunks):
            raise InvalidArgument("one expected record per chunk committed")
        seen: set[int] = set()
        for idx, rec in c.chunks:
            if idx in seen:
                raise InvalidArgument(f"chunk {idx} appears twice")
            seen.add(idx)
            if idx * chunk_size >= max(size, 1):
                raise InvalidArgument(f"chunk {idx} lies past the new size {size}")
            if rec.length > chunk_size or not _well_formed(rec):
                raise InvalidArgument(f"malformed record for chunk {idx}")
        olds: list[bytes | None] = []
        for n, (idx, _) in enumerate(c.chunks):
            row = self.db.execute(
                "SELECT record FROM chunks WHERE ino = ? AND idx = ?", (c.ino, idx)
            ).fetchone()
            olds.append(None if row is None else bytes(row[0]))
            if c.expect:
                now = (b"", 0) if row is None else _id_and_length(row[0])
                if now != (bytes(c.expect[n][0]), c.expect[n][1]):
                    raise Conflict(f"chunk {idx} of inode {c.ino} changed since the writer read it")
        for (idx, rec), old in zip(c.chunks, olds, strict=True):
            if old is not None and decode_record(old).id == rec.id:
                continue  # this very chunk is stored already: never queue a live id
            if old is not None:
                self._gc_push(old)
            self.db.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
                (c.ino, idx, encode_message(rec), rec.id, int(rec.reduced)),
            )
            self._index_shards(c.ino, idx, None if old is None else decode_record(old), rec)
            for node in filter(None, rec.nodes):
                self.db.execute(
                    "INSERT INTO node_usage VALUES (?, ?)"
                    " ON CONFLICT (node) DO UPDATE SET bytes = bytes + excluded.bytes",
                    (node, rec.shard_size),
                )
        self._set_size(c.ino, size, c.now_ns)
        return self.getattr(c.ino)

    def _reencode_chunk(self, c: ReencodeChunk) -> None:
        rec = c.record
        rows = self.db.execute(
            "SELECT ino, idx, record FROM chunks WHERE chunk_id = ?", (c.chunk_id,)
        ).fetchall()
        if not rows:
            raise NotFound(f"no file holds chunk {c.chunk_id.hex()} any more")
        if not _well_formed(rec) or rec.is_inline or rec.id == c.chunk_id:
            raise InvalidArgument("malformed record for a re-encoded chunk")
        for ino, idx, blob in rows:
            if decode_record(blob).length != rec.length:
                raise NotFound(f"chunk {c.chunk_id.hex()} changed during its re-encoding")
            self.db.execute(
                "UPDATE chunks SET record = ?, chunk_id = ?, reduced = ? WHERE ino = ? AND idx = ?",
                (encode_message(rec), rec.id, int(rec.reduced), ino, idx),
            )
            self._index_shards(ino, idx, decode_record(blob), rec)
            self._gc_push(bytes(blob))
        for node in filter(None, rec.nodes):
            self.db.execute(
                "INSERT INTO node_usage VALUES (?, ?)"
                " ON CONFLICT (node) DO UPDATE SET bytes = bytes + excluded.bytes",
                (node, rec.shard_size),
            )

    def reduced_chunks(self, after: bytes = b"", limit: int = CHUNK_PAGE) -> list[ChunkRecord]:
        """Chunk records written with a reduced layout, by id after ``after``."""
        rows = self.db.execute(
            "SELECT record FROM chunks WHERE reduced = 1 AND chunk_id > ? ORDER BY chunk_id"
            " LIMIT ?",
            (after, limit),
        )
        return [decode_record(r[0]) for r in rows]

    def reduced_count(self) -> int:
        (count,) = self.db.execute("SELECT count(*) FROM chunks WHERE reduced = 1").fetchone()
        return int(count)

    def min_redundancy(self) -> int:
        """The cluster's ``[data] min_redundancy`` as the leader set it (default 1)."""
        row = self.db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ROOT_INO, MIN_REDUNDANCY_XATTR)
        ).fetchone()
        return 1 if row is None else int(bytes(row[0]))

    def _gc_done(self, c: GcDone) -> None:
        for seq in sorted(set(c.seqs)):
            row = self.db.execute("SELECT record FROM gc WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                continue  # already forgotten (a retried GcDone)
            rec = decode_record(row[0])
            for node in filter(None, rec.nodes):
                self.db.execute(
                    "UPDATE node_usage SET bytes = max(0, bytes - ?) WHERE node = ?",
                    (rec.shard_size, node),
                )
            self.db.execute("DELETE FROM gc WHERE seq = ?", (seq,))
            self._bump("gc_pending", -1)
        self.db.execute("DELETE FROM node_usage WHERE bytes = 0")

    def effective_layout(self, ino: int) -> bytes:
        """The nearest ``prismfs.layout`` up the directory chain ("" for none)."""
        seen = 0
        while seen < 4096:
            row = self.db.execute(
                "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, LAYOUT_XATTR)
            ).fetchone()
            if row is not None:
                return bytes(row[0])
            if ino == ROOT_INO:
                return b""
            parent = self.db.execute(
                "SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)
            ).fetchone()
            if parent is None:
                self._mode(ino)  # NotFound for no such inode
                ino = ROOT_INO  # an unlinked file: the cluster default
                continue
            ino = int(parent[0])
            seen += 1
        return b""


def _well_formed(rec: ChunkRecord) -> bool:
    if rec.is_inline:
        return rec.m == 0 and not rec.nodes and len(rec.inline) == rec.length <= INLINE_MAX
    return (
        1 <= rec.k <= rec.m
        and len(rec.nodes) == rec.m
        and not rec.inline
        and len(rec.block_sums) in (0, rec.k)
        and rec.block_size in (0, *BLOCK_SIZES)
    )


def _id_and_length(blob: bytes) -> tuple[bytes, int]:
    rec = decode_record(blob)
    return rec.id, rec.length
