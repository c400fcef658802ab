"""File I/O through the cluster: open files by inode, and whole-file put/get.

`OpenFile` is what the FUSE layer and the CLI use. Writes are copy-on-write
at chunk granularity: a chunk that is written goes to a buffer (a partial
write first reads the chunk's current content: read-modify-write); `flush`
encodes and uploads every dirty chunk as a *new* chunk (new id, m shards in
parallel, several chunks at once) and then records them all with one
`commit_chunks`, which also sets the size and queues the replaced chunks for
GC. Until that commit, readers see the old content; after it, the new.
Dirty buffers are bounded (``max_dirty``): a write past the bound flushes.

A file's ``prelude`` holds namespace commands that must reach the cluster
before its data: the `Mknod` of a deferred create and attribute changes made
since. The next flush sends them, the data commit and any ``after`` commands
in one `Batch` (one Raft round trip instead of one per command); `settle`
sends just the prelude. A mount's write-back *stages* a new file's close
instead (`stage`): the data is uploaded and its commit joins the prelude,
sent later with many others (`send_preludes`); a small enough file is
uploaded in the background (`Uploads`), the task holding the file's lock
meanwhile.

Reads go chunk by chunk through `DataClient.read_chunk`; bytes past a chunk
record's ``length`` (a truncated chunk) and chunks without a record (holes)
read as zeros. A small cache keeps the last chunks read, and sequential
reads fetch the next chunks ahead. A small read out of sequence (a quarter
of a chunk or less) fetches only the verified blocks it needs of one data
shard (`DataClient.read_range`) and caches nothing.

`put_file` streams a local file into a new inode with a pipeline of chunk
uploads (bounded memory) and replaces the destination name atomically at
the end (the old content stays readable until then, and intact if the
client dies); `get_file` streams one out with read-ahead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from prismfs.client.data import DataClient, chunk_ranges
from prismfs.data.codec import ChunkBytes, NotEnoughShards
from prismfs.data.layout import Layout
from prismfs.errors import (
    Conflict,
    DelegationLost,
    InvalidArgument,
    IsADirectory,
    PrismError,
    SessionExpired,
    WriteConflict,
)
from prismfs.exception_groups import single_exception
from prismfs.meta.client import MetaClient, now_ns
from prismfs.meta.commands import (
    MAX_BATCH,
    RENAME_NOREPLACE,
    Attr,
    ChunkRecord,
    CommitChunks,
    MetaCommand,
    Mkdir,
    Mknod,
    Rename,
    Symlink,
)
from prismfs.meta.schema import NAME_MAX
from prismfs.wire.codec import encode_message

log = logging.getLogger("prismfs.client.files")

READ_CACHE_CHUNKS = 8
PARALLEL_CHUNKS = 4
READ_AHEAD_CHUNKS = 4  # chunks fetched ahead of a sequential reader (with a nursery)
COMMIT_EVERY = 32  # chunks recorded per commit during a put
COMMIT_ATTEMPTS = 10  # commits of one flush that may conflict (each merges) before giving up
Progress = Callable[[int], None]
_T = TypeVar("_T")
Body = bytes | bytearray  # a chunk's bytes to store


@dataclass
class _Fetch:
    """A chunk being fetched: its record, and its bytes once ``done`` (None if it failed)."""

    record: ChunkRecord
    data: bytes | ChunkBytes | None = None
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Upload:
    """A full chunk uploaded ahead of its commit while the writer goes on:
    the bytes it copied (of buffer version ``version``), and once ``done``
    its record (None if the upload failed: the flush uploads it again)."""

    version: int
    body: Body  # (never written again: see `_Dirty.frozen`)
    done: trio.Event = field(default_factory=trio.Event)
    record: ChunkRecord | None = None


@dataclass
class _Dirty:
    """A chunk written here and not committed yet: its bytes as this handle sees
    them, the record they were read from (``base``: the commit's condition),
    and the byte ranges written here (what a merge lays over newer content)."""

    buf: bytearray
    base: tuple[bytes, int]
    ranges: list[tuple[int, int]] = field(default_factory=list)
    version: int = 0  # writes so far: an upload ahead is of the version it took
    ahead: _Upload | None = None
    # ``buf`` is being uploaded as it is (`_Upload.body`): the next write
    # copies it first (copy-on-write), so the upload's bytes never change.
    frozen: bool = False

    @property
    def uploaded(self) -> _Upload | None:
        """The upload ahead of this buffer as it is now (none, or of older bytes: None)."""
        ahead = self.ahead
        return ahead if ahead is not None and ahead.version == self.version else None

    def body(self) -> Body:
        """The bytes to store: those of the upload ahead, if it is of them."""
        ahead = self.uploaded
        return ahead.body if ahead is not None else bytes(self.buf)

    def freeze(self) -> bytearray:
        """``buf`` for an upload that keeps it: no copy, later writes copy first."""
        self.frozen = True
        return self.buf

    def write(self, within: int, data: bytes | memoryview) -> None:
        if self.frozen:
            self.buf, self.frozen = bytearray(self.buf), False
        self.version += 1
        end = within + len(data)
        if within == len(self.buf):
            self.buf += data  # (appending: one copy, no zeros first)
        else:
            if len(self.buf) < end:
                self.buf.extend(bytes(end - len(self.buf)))
            self.buf[within:end] = data
        self.ranges = _add_range(self.ranges, within, end)

    def merged_onto(self, content: Body) -> bytes:
        """``content`` (another client's version) with this handle's writes on top."""
        out = bytearray(content)
        for start, end in self.ranges:
            if len(out) < end:
                out.extend(bytes(end - len(out)))
            out[start:end] = self.buf[start:end]
        return bytes(out)

    def rebase(self, committed: Body, record: tuple[bytes, int]) -> None:
        """The chunk was committed as ``committed`` while this buffer was written:
        build on that, with this buffer's writes on top."""
        self.buf, self.frozen = bytearray(self.merged_onto(committed)), False
        self.base = record


def _add_range(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``ranges`` (sorted, disjoint) with [start, end) added, touching ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b < start or a > end:
            out.append((a, b))
        else:
            start, end = min(a, start), max(b, end)
    out.append((start, end))
    return sorted(out)


class OpenFile:
    def __init__(
        self,
        meta: MetaClient,
        data: DataClient,
        ino: int,
        layout: Layout,
        *,
        max_dirty: int = 64 * 1024 * 1024,
    ) -> None:
        self.meta = meta
        self.data = data
        self.ino = ino
        self.layout = layout
        # False for an open of an existing file with no coded chunk yet: its
        # layout is then its directory's, asked for before its first shard
        # write (`_known_layout`), not the built-in default.
        self.layout_known = True
        self.chunk_size = layout.chunk_size
        self.size = 0
        self.max_dirty = max_dirty
        self._records: dict[int, ChunkRecord] = {}
        self._dirty: dict[int, _Dirty] = {}
        self._flushing: dict[int, _Dirty] = {}
        self._cache: OrderedDict[int, bytes | ChunkBytes] = OrderedDict()
        # Chunks being fetched, by index: a read of one waits for that fetch.
        self._fetching: dict[int, _Fetch] = {}
        self._version = 0  # chunk maps loaded (`refresh`)
        # Where reads ahead and background uploads run (the mount's); without
        # one, reads fetch only what they need and the next chunk.
        self.nursery: trio.Nursery | None = None
        self._lock = trio.Lock()  # one flush at a time
        self._ahead = trio.Semaphore(PARALLEL_CHUNKS)  # uploads ahead in flight
        self._write_lock = trio.Lock()  # one write (or truncate) at a time
        self._closed = False
        self._last_read_end = -1
        self.opened_as: tuple[int, int] | None = None  # (mtime, size) of the version read
        self.attr_at_open: Attr | None = None
        self.changed_elsewhere = False  # the last reopen found another client's version
        self.modified_ns = 0  # wall time of the last write here
        self.dirty_since: float | None = None  # trio time the buffers were first written
        self.prelude: list[MetaCommand] = []  # sent ahead of the next commit (see above)
        self.lost: PrismError | None = None  # the prelude was refused: this file never was
        # the directory delegations the prelude was made under (a mount's write-back)
        self.delegated: tuple[tuple[int, int, int], ...] = ()
        # What must reach the cluster before the prelude, sent first (not
        # under this file's lock): a directory it was made in that is held
        # back too (`prismfs.fuse.deferred.Made`).
        self.depends: Callable[[], Awaitable[None]] | None = None
        self.session = meta.session  # the session holding it open
        self._staging = False  # a stage in the background holds the lock, uploading
        # attribute changes made meanwhile: they follow its commit (`join_prelude`)
        self._after: list[MetaCommand] = []

    @classmethod
    async def open(
        cls,
        meta: MetaClient,
        data: DataClient,
        ino: int,
        *,
        layout: Layout | None = None,
        register: bool = True,
    ) -> OpenFile:
        """Open an existing file. ``register=False``: do not register the open
        (a Raft write); the caller does, soon (the mount batches them)."""
        session = meta.session
        attr = await meta.open(ino) if register else await meta.getattr(ino)
        if stat.S_ISDIR(attr.mode):
            if register:
                await meta.release(ino)
            raise IsADirectory(f"inode {ino} is a directory")
        f = cls(meta, data, ino, layout or Layout())
        f.layout_known = layout is not None
        f.session = session
        f.opened_as = (attr.mtime_ns, attr.size)
        f.attr_at_open = attr
        await f.refresh()
        return f

    async def reopen(self, attr: Attr) -> None:
        """One more open of this already open file, with the namespace's current
        attributes: if another client changed it since this handle read it and
        nothing is buffered here, read the new version (close-to-open)."""
        self.attr_at_open = attr
        self.changed_elsewhere = False
        if self.opened_as == (attr.mtime_ns, attr.size):
            return
        if self._dirty or self._flushing or self.prelude:
            return  # this handle's own writes come first; they commit over it
        async with self._lock:
            await self.refresh()
        self.opened_as = (attr.mtime_ns, attr.size)
        self.changed_elsewhere = True

    async def refresh(self) -> None:
        """Reload size and chunk map (close-to-open: called at open)."""
        cmap = await self.meta.chunk_map_all(self.ino)
        self.chunk_size, self.size = cmap.chunk_size, cmap.size
        records = dict(cmap.chunks)
        self._records = records
        self._version += 1
        coded = [r for r in records.values() if not r.is_inline]
        if coded:
            # The file's layout, as its chunks say (a chunk written with a
            # reduced layout names the one it should have).
            k, m = coded[0].layout
            if (k, m) != (self.layout.k, self.layout.m):
                self.layout = Layout(k, m, self.chunk_size)
            self.layout_known = True
        elif self.layout.chunk_size != self.chunk_size:
            self.layout = Layout(self.layout.k, self.layout.m, self.chunk_size)
        self._cache.clear()

    # --- reading ------------------------------------------------------------------------------

    async def _chunk(self, idx: int) -> bytes:
        """The valid bytes of chunk ``idx`` as committed (or as buffered)."""
        chunk = await self._chunk_any(idx)
        return chunk if isinstance(chunk, bytes) else chunk.tobytes()

    async def _chunk_any(self, idx: int) -> bytes | ChunkBytes:
        """`_chunk`, as the cache keeps it: in one piece or as its data shards."""
        if idx in self._dirty:
            return bytes(self._dirty[idx].buf)
        if idx in self._flushing:  # being committed: newer than the committed record
            return bytes(self._flushing[idx].buf)
        cached = self._cache.get(idx)
        if cached is not None:
            self._cache.move_to_end(idx)
            return cached
        fetch = self._fetching.get(idx)
        record = self._records.get(idx)
        if fetch is not None and fetch.record is record:
            await fetch.done.wait()
            if fetch.data is not None:
                return fetch.data
            # (it failed: again here, where the error reaches the reader)
        return await self._fetch(idx, record)

    async def _fetch(self, idx: int, record: ChunkRecord | None) -> bytes | ChunkBytes:
        """Chunk ``idx`` of ``record``, kept in the cache if the file still has
        that record when it arrives (a write or refresh meanwhile wins)."""
        if record is None:
            return b""
        fetch = self._fetching[idx] = _Fetch(record)
        try:
            data = await self._read(idx, record, self.data.read_chunk_parts)
            fetch.data = data
        finally:
            fetch.done.set()
            if self._fetching.get(idx) is fetch:
                del self._fetching[idx]
        if self._records.get(idx) is record:
            self._keep(idx, data)
        return data

    def _keep(self, idx: int, data: bytes | ChunkBytes) -> None:
        if idx in self._dirty or idx in self._flushing:
            return
        self._cache[idx] = data
        self._cache.move_to_end(idx)
        while len(self._cache) > READ_CACHE_CHUNKS:
            self._cache.popitem(last=False)

    def _read_ahead(self, after: int) -> None:
        """Fetch up to `READ_AHEAD_CHUNKS` chunks past ``after`` in the background."""
        nursery = self.nursery
        if nursery is None:
            return
        for idx in range(after + 1, after + 1 + READ_AHEAD_CHUNKS):
            if idx * self.chunk_size >= self.size:
                break
            record = self._records.get(idx)
            if record is None or self._have(idx) or idx in self._fetching:
                continue
            self.data.pool.stats.count("data.read_ahead")
            try:
                nursery.start_soon(self._fetch_quietly, idx, record)
            except RuntimeError:  # the nursery closed (unmounting)
                self.nursery = None
                return

    async def _fetch_quietly(self, idx: int, record: ChunkRecord) -> None:
        """A read ahead: a failure is left to the read that needs the chunk."""
        try:
            await self._fetch(idx, record)
        except PrismError as exc:
            log.info("read ahead of chunk %d of inode %d: %s", idx, self.ino, exc.message)

    @property
    def stale(self) -> bool:
        """Was the session this file was opened in ended by the cluster?"""
        return self.session != self.meta.session

    def _check_session(self) -> None:
        if self.stale:
            raise SessionExpired(
                f"inode {self.ino} was opened in session {self.session}, which the cluster "
                "ended; its open was released: reopen the file"
            )

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(await self.read_view(offset, size))

    async def read_view(self, offset: int, size: int) -> bytes | memoryview:
        """`read`, as a view of the cached chunk where the bytes are one piece of
        it (no copy: what the FUSE layer hands to the kernel).

        A read that finds its file's chunks replaced midway (`_read` moves to
        the current version) is read again, all of it from that version: one
        read never returns bytes of two versions."""
        if offset < 0 or size < 0:
            raise InvalidArgument("negative offset or size")
        self._check_session()
        for _ in range(3):
            version = self._version
            got = await self._read_once(offset, size)
            if self._version == version:
                break
        return got

    async def _read_once(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        pieces = chunk_ranges(offset, end - offset, self.chunk_size)
        sequential = offset == self._last_read_end
        # (set now: the kernel sends a reader's next read before this one is answered)
        self._last_read_end = end
        # Fetch the chunks of this read in parallel; a sequential reader's
        # next chunks are fetched ahead in the background (with no background
        # nursery: the next one, here); a small read out of sequence fetches
        # just the blocks it needs.
        wanted = [idx for idx, _, _ in pieces if not self._have(idx)]
        if sequential:
            if self.nursery is not None:
                self._read_ahead(pieces[-1][0])
            else:
                nxt = pieces[-1][0] + 1
                if nxt * self.chunk_size < self.size and nxt in self._records:
                    wanted.append(nxt)
        elif end - offset <= self.chunk_size // 4:
            wanted = []
        if len(wanted) <= 1:  # (no nursery to open: the common case)
            return await self._pieces(pieces, wanted)
        with single_exception():
            async with trio.open_nursery() as nursery:
                for idx in wanted[1:]:
                    nursery.start_soon(self._chunk_any, idx)
                return await self._pieces(pieces, wanted)

    async def _pieces(
        self, pieces: Sequence[tuple[int, int, int]], wanted: list[int]
    ) -> bytes | memoryview:
        out: list[bytes | memoryview] = []
        for idx, within, n in pieces:
            record = self._records.get(idx)
            whole = idx in wanted or idx in self._fetching or record is None
            if whole or self._have(idx):
                chunk = await self._chunk_any(idx)
                piece: bytes | memoryview = (
                    chunk.view(within, n)
                    if isinstance(chunk, ChunkBytes)
                    else memoryview(chunk)[within : within + n]
                )
            else:
                assert record is not None

                async def part(rec: ChunkRecord, within: int = within, n: int = n) -> bytes:
                    return await self.data.read_range(rec, within, n)

                piece = await self._read(idx, record, part)
            out.append(piece)
            if len(piece) < n:
                out.append(bytes(n - len(piece)))  # past a chunk's length: zeros
        return out[0] if len(out) == 1 else b"".join(out)

    async def _read(
        self, idx: int, record: ChunkRecord, read: Callable[[ChunkRecord], Awaitable[_T]]
    ) -> _T | bytes:
        """``read(record)``; if too few of its shards are where the record (as of
        this open) says: when the shards of that chunk moved since (a drain,
        rebalance or repair), read again where they are now; when the chunk was
        replaced (another client rewrote or truncated the file, or repair
        re-encoded it) and its old shards are gone, move to the file's current
        version (its whole chunk map and size, read at one moment) and read
        from that: a reader never fails because a writer elsewhere went on."""
        try:
            return await read(record)
        except NotEnoughShards:
            cmap = await self.meta.chunk_map(self.ino, idx, 1)
            fresh = dict(cmap.chunks).get(idx)
            if fresh is not None and fresh.id == record.id:
                if fresh.nodes == record.nodes:
                    raise
                log.info(
                    "chunk %s moved since this file was opened; reading it anew", fresh.id.hex()
                )
                self._records[idx] = fresh
                return await read(fresh)
            if self._dirty or self._flushing:
                raise  # this handle's own writes are built on the version it has
            log.info(
                "chunk %d of inode %d was replaced by another client; reading its current version",
                idx,
                self.ino,
            )
            await self.refresh()
            current = self._records.get(idx)
            return b"" if current is None else await read(current)

    def _have(self, idx: int) -> bool:
        """Is chunk ``idx`` here without a fetch (buffered, being committed, cached)?"""
        return idx in self._dirty or idx in self._flushing or idx in self._cache

    # --- writing ------------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        if offset < 0:
            raise InvalidArgument("negative offset")
        self._check_session()
        # Writers take turns: two writes that both start a chunk's buffer from
        # its committed content must not each build one and lose the other.
        async with self._write_lock:
            return await self._write(offset, data)

    async def _write(self, offset: int, data: bytes | memoryview) -> int:
        view = memoryview(data)
        pos = 0
        full: list[int] = []
        for idx, within, n in chunk_ranges(offset, len(view), self.chunk_size):
            dirty = self._dirty.get(idx)
            if dirty is None:
                dirty = self._dirty[idx] = await self._start_dirty(idx, within, n)
                self._cache.pop(idx, None)
            dirty.write(within, view[pos : pos + n])
            pos += n
            if within + n == self.chunk_size and len(dirty.buf) == self.chunk_size:
                full.append(idx)  # written to its end: likely done with (sequential)
        self.size = max(self.size, offset + len(view))
        self.modified_ns = now_ns()
        if self.dirty_since is None:
            self.dirty_since = trio.current_time()
        for idx in full:
            await self._upload_ahead(idx)
        if sum(len(d.buf) for d in self._dirty.values()) >= self.max_dirty:
            await self._flush_uploaded()
        return len(view)

    async def _upload_ahead(self, idx: int) -> None:
        """Start uploading full chunk ``idx`` in the background (with a nursery):
        at most `PARALLEL_CHUNKS` of this file at once, the writer waiting
        for room. Its commit waits for the next flush, which uses the upload
        if the chunk was not written again since."""
        dirty = self._dirty.get(idx)
        if self.nursery is None or dirty is None or dirty.uploaded is not None:
            return
        await self._ahead.acquire()
        if self._dirty.get(idx) is not dirty:  # flushed meanwhile
            self._ahead.release()
            return
        upload = dirty.ahead = _Upload(dirty.version, dirty.freeze())
        try:
            self.nursery.start_soon(self._upload_behind, upload)
        except RuntimeError:  # the nursery closed (unmounting): the flush uploads it
            self.nursery = None
            dirty.ahead = None
            upload.done.set()
            self._ahead.release()

    async def _upload_behind(self, upload: _Upload) -> None:
        try:
            layout = await self._known_layout([upload.body])
            upload.record = await self.data.write_chunk(upload.body, layout)
            self.data.pool.stats.count("data.uploads_ahead")
        except PrismError as exc:
            log.info("inode %d: upload ahead failed (the flush retries): %s", self.ino, exc.message)
        except Exception:
            log.exception("inode %d: upload ahead failed (the flush retries)", self.ino)
        finally:
            upload.done.set()
            self._ahead.release()

    async def _flush_uploaded(self) -> None:
        """Over ``max_dirty``: commit the chunks uploaded ahead (waiting for the
        first of them if none is done yet), so a sequential writer never waits
        for a whole flush; without any upload ahead, flush everything."""
        ahead = sorted(idx for idx, d in self._dirty.items() if d.uploaded is not None)
        if not ahead:
            await self.flush()
            return
        first = self._dirty[ahead[0]].uploaded
        assert first is not None
        await first.done.wait()
        ready = [
            idx
            for idx in ahead
            if (d := self._dirty.get(idx)) is not None
            and (up := d.uploaded) is not None
            and up.done.is_set()
        ]
        await self.flush(only=ready)

    async def _start_dirty(self, idx: int, within: int, n: int) -> _Dirty:
        """A buffer for chunk ``idx``: the content this handle sees (committed, or
        being committed) and the record that content is (the commit's condition)."""
        flushing = self._flushing.get(idx)
        if flushing is not None:  # being committed: go on from it, on its conditions
            return _Dirty(bytearray(flushing.buf), flushing.base, list(flushing.ranges))
        record = self._records.get(idx)
        base = (b"", 0) if record is None else (record.id, record.length)
        if within == 0 and n == self.chunk_size:
            return _Dirty(bytearray(), base)  # all of it is overwritten: nothing to read
        return _Dirty(bytearray(await self._chunk(idx)), base)

    async def truncate(self, size: int) -> None:
        self._check_session()
        async with self._write_lock:
            await self.flush()
            await self.meta.setattr(self.ino, size=size)
            await self.refresh()

    async def settle(self) -> None:
        """Send the prelude (a deferred create) now, without the data."""
        if self.prelude and self.depends is not None:
            await self.depends()
        async with self._lock:
            if self.prelude:
                await self._send([])

    async def _send(self, ops: list[MetaCommand]) -> list[Attr | None]:
        """The prelude, then ``ops``, in one batch; the results of ``ops``.

        A prelude command that is refused (another mount took the name of a
        deferred create) fails the flush with its error, and the prelude is
        dropped (it would be refused again); a transient error keeps it."""
        prelude = list(self.prelude)
        if not prelude and len(ops) == 1:
            return [await self.meta.propose(ops[0])]
        try:
            results = await self.meta.batch(
                prelude + ops, delegated=self.delegated if prelude else ()
            )
        except DelegationLost as exc:
            # The delegation its create was made under ended first: the
            # create was not applied, and never will be.
            self.prelude = []
            self.lost = exc
            raise
        self.prelude = self.prelude[len(prelude) :]
        if not self.prelude:
            self.delegated = ()
        for n, result in enumerate(results):
            if isinstance(result, PrismError):
                if n < len(prelude) and isinstance(prelude[n], Mknod):
                    self.lost = result
                raise result
        return results[len(prelude) :]  # type: ignore[return-value]

    @property
    def uploading(self) -> bool:
        """A stage of it is uploading in the background."""
        return self._staging

    def may_join(self, times: bool) -> bool:
        """Whether an attribute change of this held-back file may join its
        prelude now: times only once its data is staged (the data commit sets
        mtime, and a time set after the writes must win over it)."""
        return not times or not (self._dirty or (self._flushing and not self._staging))

    def join_prelude(self, op: MetaCommand) -> None:
        """An attribute change of this held-back file, sent with its create:
        behind the data commit a background stage is uploading, if any."""
        (self._after if self._staging else self.prelude).append(op)

    async def stage(self, uploads: Uploads | None = None) -> None:
        """Write-back of a new file's close (its create still held back): the
        dirty chunks are uploaded, and their commit joins the prelude, sent
        with it later (`send_preludes`). Nobody else can see this file before
        then, so the commit cannot conflict. With ``uploads`` a file that
        fits its window is uploaded in the background: this returns once the
        upload started (with the file's lock held, so every later flush,
        settle or send of this file waits for it). A background upload that
        fails leaves the data dirty, for the next stage or flush."""
        if not self._dirty and self.lost is None:
            self._check_session()
            return  # (staged already, perhaps still uploading)
        size = sum(len(d.buf) for d in self._dirty.values())
        inline = all(len(d.buf) <= self.data.inline_max for d in self._dirty.values())
        if uploads is None or inline or not uploads.fits(size):
            async with self._lock:
                await self._stage_now()
            return
        await uploads.reserve(size)
        begun: list[bool] = []
        try:
            await uploads.nursery.start(self._stage_behind, uploads, size, begun)
        except RuntimeError:
            if begun:
                raise
            uploads.release(size)  # the nursery is closed (unmounting): here, then
            async with self._lock:
                await self._stage_now()

    async def _stage_now(self) -> None:
        self._check_session()
        if self.lost is not None:
            self._dirty = {}
            raise self.lost
        if not self.prelude:
            # Its create was sent meanwhile (a flush of the mount): nothing
            # would carry a staged commit now, so this is a close like any
            # other (a later change of the file must find it committed).
            await self._flush_now([])
            return
        if not self._dirty:
            return
        snapshot = self._take_dirty()
        try:
            bodies = {idx: d.body() for idx, d in snapshot.items()}
            records = await self._upload(bodies, snapshot)
        except BaseException:
            self._put_back(snapshot)
            raise
        finally:
            self._flushing = {}
        self._staged(snapshot, bodies, records)

    async def _stage_behind(
        self,
        uploads: Uploads,
        size: int,
        begun: list[bool],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        begun.append(True)
        try:
            async with self._lock:
                self._check_session()
                if self.lost is not None:
                    self._dirty = {}
                    raise self.lost
                if not self._dirty or not self.prelude:
                    await self._stage_now()  # (its create was sent meanwhile: a close)
                    task_status.started()
                    return
                snapshot = self._take_dirty()
                bodies = {idx: d.body() for idx, d in snapshot.items()}
                self._staging = True
                task_status.started()
                try:
                    records = await self._upload(bodies, snapshot)
                except BaseException as exc:
                    self._put_back(snapshot)
                    if isinstance(exc, PrismError):
                        log.warning(
                            "inode %d: background upload failed, kept for the next flush: %s",
                            self.ino,
                            exc.message,
                        )
                    elif isinstance(exc, Exception):
                        log.exception("inode %d: background upload failed", self.ino)
                    else:
                        raise  # (cancelled: unmounting)
                    return
                finally:
                    self._flushing = {}
                    self._staging = False
                self._staged(snapshot, bodies, records)
        finally:
            uploads.release(size)

    def _staged(
        self, snapshot: dict[int, _Dirty], bodies: dict[int, Body], records: dict[int, ChunkRecord]
    ) -> None:
        """The commit of an upload joins the prelude, and what waited for it."""
        order = sorted(records)
        size = max(idx * self.chunk_size + len(bodies[idx]) for idx in order)
        self.prelude.append(
            CommitChunks(
                now_ns(),
                self.ino,
                tuple((idx, records[idx]) for idx in order),
                size,
                expect=tuple(snapshot[idx].base for idx in order),
            )
        )
        self.prelude += self._after
        self._after = []
        self._stored(bodies, records)

    def abandon(self, exc: PrismError) -> None:
        """This held-back file can never reach the cluster (``exc`` says why):
        its create, data and attribute changes are dropped."""
        self.lost = exc
        self.prelude, self._after, self._dirty = [], [], {}
        self.delegated = ()

    def _take_dirty(self, only: list[int] | None = None) -> dict[int, _Dirty]:
        """The buffers (``only`` these chunks') become immutable snapshots while
        they are uploaded and committed; writes meanwhile start new buffers
        from them."""
        if only is None:
            snapshot, self._dirty = self._dirty, {}
        else:
            snapshot = {idx: self._dirty.pop(idx) for idx in only if idx in self._dirty}
        self._flushing = snapshot
        if not self._dirty:
            self.dirty_since = None
        return snapshot

    def _put_back(self, snapshot: dict[int, _Dirty]) -> None:
        """Nothing was committed: keep the data dirty so a retry can flush it
        (a newer buffer of the same chunk already holds it)."""
        for idx, dirty in snapshot.items():
            self._dirty.setdefault(idx, dirty)
        self.dirty_since = trio.current_time()

    def _stored(self, bodies: dict[int, Body], records: dict[int, ChunkRecord]) -> None:
        """``bodies`` are now ``records``: kept for reads, and a buffer written
        meanwhile is now on the new record."""
        self._records.update(records)
        for idx, body in bodies.items():
            # (a bytearray kept is one an upload froze: never written again)
            self._cache[idx] = body if isinstance(body, bytes) else ChunkBytes([body], len(body))
            newer = self._dirty.get(idx)
            if newer is not None:
                newer.rebase(body, (records[idx].id, records[idx].length))
        while len(self._cache) > READ_CACHE_CHUNKS:
            self._cache.popitem(last=False)

    async def flush(
        self, after: list[MetaCommand] | None = None, *, only: list[int] | None = None
    ) -> list[Attr | None]:
        """Upload the dirty chunks as new chunks and commit them in one step
        (with the prelude before and ``after`` behind, in the same batch);
        returns the results of ``after``.

        The commit is conditional on the records the buffers were built on. If
        another client changed one of those chunks meanwhile, the bytes this
        handle wrote are laid over the new content, uploaded again and the
        commit retried: concurrent writers to different bytes of one chunk
        both keep their writes, and a write never shortens the file."""
        if self.prelude and self.depends is not None:
            await self.depends()
        async with self._lock:
            return await self._flush_now(after or [], only)

    async def _flush_now(
        self, after: list[MetaCommand], only: list[int] | None = None
    ) -> list[Attr | None]:
        """`flush`, with the lock held (``only``: just these chunks' buffers)."""
        if self._dirty or self.prelude or after:
            self._check_session()
        if self.lost is not None:
            self._dirty = {}
            raise self.lost
        if only is not None and not any(idx in self._dirty for idx in only):
            return []  # (flushed meanwhile)
        if not self._dirty:
            return await self._send(after) if after or self.prelude else []
        # (times set while a background upload of it failed: behind its data)
        before, self._after = self._after, []
        snapshot = self._take_dirty(only)
        try:
            bodies = {idx: d.body() for idx, d in snapshot.items()}
            bases = {idx: d.base for idx, d in snapshot.items()}
            records = await self._upload(bodies, snapshot)
            results = await self._commit(snapshot, bodies, bases, records, before + after)
        except BaseException:
            self._put_back(snapshot)
            self._after = before + self._after
            raise
        finally:
            self._flushing = {}
        self._stored(bodies, records)
        attr = results[0]
        if attr is not None:
            self.opened_as = (attr.mtime_ns, attr.size)
        return results[1 + len(before) :]

    async def _known_layout(self, bodies: Iterable[Body]) -> Layout:
        """The layout to code these bodies with: the file's own, once it is
        known (its chunks, or the directory it was created in); else, if any
        body is too big to go inline, its directory's, asked for now."""
        if not self.layout_known and any(len(b) > self.data.inline_max for b in bodies):
            found = await layout_for(self.meta, self.ino)
            self.layout = Layout(found.k, found.m, self.chunk_size)
            self.layout_known = True
        return self.layout

    async def _upload(
        self, bodies: dict[int, Body], buffers: dict[int, _Dirty] | None = None
    ) -> dict[int, ChunkRecord]:
        """Each body as a new chunk (several at once); their records. A body
        whose buffer (in ``buffers``) was uploaded ahead as it is takes that
        upload's record; an upload ahead of bytes written again since is
        deleted (best effort: the orphan sweep takes what this misses)."""
        await self._known_layout(bodies.values())
        records: dict[int, ChunkRecord] = {}
        limiter = trio.Semaphore(PARALLEL_CHUNKS)

        async def upload(idx: int, body: Body) -> None:
            dirty = (buffers or {}).get(idx)
            if dirty is not None and dirty.ahead is not None:
                await dirty.ahead.done.wait()
                done = dirty.ahead.record
                if done is not None and dirty.uploaded is not None:
                    records[idx] = done
                    return
                if done is not None:  # of bytes written again since
                    await self.data.forget_chunk(done)
            async with limiter:
                records[idx] = await self.data.write_chunk(body, self.layout)

        with single_exception():
            async with trio.open_nursery() as nursery:
                for idx, body in sorted(bodies.items()):
                    nursery.start_soon(upload, idx, body)
        return records

    async def _commit(
        self,
        dirty: dict[int, _Dirty],
        bodies: dict[int, Body],
        bases: dict[int, tuple[bytes, int]],
        records: dict[int, ChunkRecord],
        after: list[MetaCommand],
    ) -> list[Attr | None]:
        """Commit ``records`` on the condition of ``bases``; on a conflict, merge
        this handle's writes into each changed chunk and try again."""
        for _ in range(COMMIT_ATTEMPTS):
            order = sorted(records)
            size = max(idx * self.chunk_size + len(bodies[idx]) for idx in order)
            commit = CommitChunks(
                now_ns(),
                self.ino,
                tuple((idx, records[idx]) for idx in order),
                size,
                expect=tuple(bases[idx] for idx in order),
            )
            try:
                return await self._send([commit, *after])
            except Conflict:
                pass
            fresh = await self._records_now(order)
            for idx in order:
                now = fresh.get(idx)
                current = (b"", 0) if now is None else (now.id, now.length)
                if current == bases[idx]:
                    continue
                if now is not None and now.id == records[idx].id:
                    bases[idx] = current  # this very chunk applied already (a repeat)
                    continue
                log.info(
                    "chunk %d of inode %d was changed by another client; merging", idx, self.ino
                )
                content = b"" if now is None else await self._read(idx, now, self.data.read_chunk)
                bodies[idx] = dirty[idx].merged_onto(content)
                bases[idx] = current
                layout = await self._known_layout([bodies[idx]])
                records[idx] = await self.data.write_chunk(bodies[idx], layout)
        raise WriteConflict(
            f"inode {self.ino}: other clients kept changing the chunks written here; "
            f"gave up after {COMMIT_ATTEMPTS} merges"
        )

    async def _records_now(self, indices: list[int]) -> dict[int, ChunkRecord]:
        """The records of these chunks as the namespace has them now."""
        wanted = set(indices)
        out: dict[int, ChunkRecord] = {}
        first, last = min(indices), max(indices)
        cmap = await self.meta.chunk_map_all(self.ino, first, last - first + 1)
        out.update((i, r) for i, r in cmap.chunks if i in wanted)
        return out

    async def fsync(self) -> None:
        await self.flush()  # commit_chunks returns once the entry is applied: durable

    def mark_closed(self) -> None:
        """Closed by its holder after everything was sent (`send_preludes`)."""
        self._closed = True

    async def close(self, *, release: bool = True) -> None:
        """Flush and end the open (``release=False``: the caller releases it later)."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if release:
                await self.meta.release(self.ino)


BACKGROUND_BYTES = 16 << 20
"""Chunk data a mount uploads in the background at once (`Uploads`)."""
BACKGROUND_FILES = 64
"""Files a mount uploads in the background at once."""


class Uploads:
    """The window of a mount's background uploads (`OpenFile.stage`): at
    most ``max_bytes`` of data and ``max_files`` files at once; a stage
    waits for room (the close that staged it returns once it has some).
    A file over a quarter of the window is uploaded by its close, as
    before: what is held back stays small enough to flush within a lease
    when a recall comes."""

    def __init__(
        self,
        nursery: trio.Nursery,
        max_bytes: int = BACKGROUND_BYTES,
        max_files: int = BACKGROUND_FILES,
    ) -> None:
        self.nursery = nursery
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.files = 0
        self._room = trio.Event()

    def fits(self, size: int) -> bool:
        return size <= self.max_bytes // 4

    async def reserve(self, size: int) -> None:
        while self.files and (self.files >= self.max_files or self.bytes + size > self.max_bytes):
            await self._room.wait()
        self.bytes += size
        self.files += 1

    def release(self, size: int) -> None:
        self.bytes -= size
        self.files -= 1
        self._room.set()
        self._room = trio.Event()


BATCH_BYTES = 256 * 1024
"""What one batch of preludes may weigh, encoded (a message's header is at
most 1 MiB, and a Raft entry is copied to every voter)."""


class Held(Protocol):
    """What `send_preludes` sends: an `OpenFile` whose create is held back,
    or a symlink made in a delegated directory (`prismfs.fuse.deferred.Made`)."""

    ino: int
    prelude: list[MetaCommand]
    lost: PrismError | None
    delegated: tuple[tuple[int, int, int], ...]
    _lock: trio.Lock


@dataclass
class Lead:
    """Held-back changes made before the creates `send_preludes` sends (the
    mount's unlinks): they go in front of the preludes, in the first batch,
    so that a crash cannot keep them and lose a create made before them
    (nor the other way round). ``results`` once sent: one per op, an error
    for all of them if their delegation was lost. As a *tail*, changes
    made after all of them (a mkdir under the delegation): behind the
    preludes, in the last batch."""

    ops: list[MetaCommand]
    delegated: tuple[tuple[int, int, int], ...]
    results: list[object] | None = None


async def send_preludes(
    meta: MetaClient,
    files: Sequence[Held],
    lead: Lead | None = None,
    tail: Lead | None = None,
) -> list[PrismError | None]:
    """The preludes of several files (held-back creates, with their staged
    commits), in this order, in as few batches as `MAX_BATCH` allows (one
    file's prelude never split), behind ``lead`` and in front of ``tail``
    if given: per file None, or the error that lost it. A transient error
    keeps every prelude not sent yet (and ``lead`` and ``tail``, if they
    were not sent), and is raised."""
    async with contextlib.AsyncExitStack() as stack:
        for f in files:
            await stack.enter_async_context(f._lock)
        todo = [f for f in files if f.prelude and f.lost is None]
        group: list[Held] = []
        count = size = 0
        if lead is not None:
            count, size = len(lead.ops), sum(len(encode_message(op)) for op in lead.ops)
        for f in todo:
            # (small files' data rides inline in their commits: bytes count too)
            more = sum(len(encode_message(op)) for op in f.prelude)
            if (group or lead) and (
                count + len(f.prelude) > MAX_BATCH or size + more > BATCH_BYTES
            ):
                await _send_group(meta, group, lead)
                group, count, size, lead = [], 0, 0, None
            group.append(f)
            count += len(f.prelude)
            size += more
        if tail is not None and (
            count + len(tail.ops) > MAX_BATCH
            or size + sum(len(encode_message(op)) for op in tail.ops) > BATCH_BYTES
        ):
            if group or lead:
                await _send_group(meta, group, lead)
            group, lead = [], None
        if group or lead or tail:
            await _send_group(meta, group, lead, tail)
    return [f.lost for f in files]


async def _send_group(
    meta: MetaClient, group: list[Held], lead: Lead | None = None, tail: Lead | None = None
) -> None:
    # What each prelude holds now: an attribute change may join one while
    # the batch is on its way (it goes in the next).
    sent = [list(f.prelude) for f in group]
    first = lead.ops if lead is not None else []
    last = tail.ops if tail is not None else []
    ops = [*first, *(op for prelude in sent for op in prelude), *last]
    delegated = {d for f in group for d in f.delegated}
    for extra in (lead, tail):
        if extra is not None:
            delegated.update(extra.delegated)
    try:
        results = await meta.batch(ops, delegated=tuple(delegated))
    except DelegationLost as exc:
        if lead is not None:
            lead.results = [exc] * len(first)
        if tail is not None:
            tail.results = [exc] * len(last)
        for f in group:
            f.prelude, f.lost = [], exc
        return
    if lead is not None:
        lead.results = list(results[: len(first)])
    if tail is not None:
        tail.results = list(results[len(results) - len(last) :])
    at = len(first)
    for f, prelude in zip(group, sent, strict=True):
        mine = results[at : at + len(prelude)]
        at += len(prelude)
        for op, result in zip(prelude, mine, strict=True):
            if isinstance(result, PrismError):
                if isinstance(op, (Mknod, Symlink, Mkdir)):
                    f.lost = result  # (the name was taken: this file never was)
                else:
                    log.warning("inode %d: %r failed: %s", f.ino, op, result.message)
        f.prelude = f.prelude[len(prelude) :]
        if not f.prelude:
            f.delegated = ()
        if isinstance(f, OpenFile) and f.lost is None and mine and isinstance(mine[-1], Attr):
            f.opened_as = (mine[-1].mtime_ns, mine[-1].size)


async def layout_for(meta: MetaClient, parent: int, default: Layout | None = None) -> Layout:
    text = await meta.layout(parent)
    return Layout.parse(text) if text else (default or Layout())


async def put_file(
    meta: MetaClient,
    data: DataClient,
    parent: int,
    name: bytes,
    read: Callable[[int], Awaitable[bytes]],
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    layout: Layout | None = None,
    progress: Progress | None = None,
    replace: bool = True,
) -> int:
    """Stream ``read(n)`` (b"" at the end) into ``parent/name``; returns the inode.
    Without ``replace``, an existing ``name`` fails it (`AlreadyExists`, at
    the final rename: nothing is replaced).

    The content goes into a new, unnamed inode held open by this client's
    session; only when every chunk is committed does it take the name (a
    link, then a rename over the old file). A client that dies before leaves
    the old file untouched and the new inode to the lease sweep.
    """
    chosen = layout or await layout_for(meta, parent)
    tmp = temporary_name(name)
    attr = await meta.mknod(
        parent,
        tmp,
        stat.S_IFREG | (mode & 0o7777),
        uid,
        gid,
        open_it=True,
        chunk_size=chosen.chunk_size,
    )
    ino = attr.ino
    try:
        await meta.unlink(parent, tmp)  # unnamed until complete; kept alive by the open
        size = 0
        send, receive = trio.open_memory_channel[tuple[int, bytes]](PARALLEL_CHUNKS)
        records: dict[int, ChunkRecord] = {}

        async def producer() -> None:
            nonlocal size
            async with send:
                idx = 0
                while True:
                    block = await _read_exactly(read, chosen.chunk_size)
                    if not block:
                        return
                    await send.send((idx, block))
                    size += len(block)
                    idx += 1
                    if len(block) < chosen.chunk_size:
                        return

        committed_size = 0
        commit_lock = trio.Lock()

        async def commit_full_chunks() -> None:
            """Record finished full chunks early: uploaded shards wait at most
            one batch for their record (the orphan sweep's grace period)."""
            nonlocal committed_size
            async with commit_lock:
                full = sorted((i, r) for i, r in records.items() if r.length == chosen.chunk_size)
                if len(full) < COMMIT_EVERY:
                    return
                for i, _ in full:
                    del records[i]
                committed_size = max(committed_size, (full[-1][0] + 1) * chosen.chunk_size)
                await meta.commit_chunks(ino, full, committed_size)

        async def uploader(rx: trio.MemoryReceiveChannel[tuple[int, bytes]]) -> None:
            async with rx:
                async for idx, block in rx:
                    records[idx] = await data.write_chunk(block, chosen)
                    if progress is not None:
                        progress(len(block))
                    await commit_full_chunks()

        with single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                async with receive:
                    for _ in range(PARALLEL_CHUNKS):
                        nursery.start_soon(uploader, receive.clone())
        rest = sorted(records.items())
        for first in range(0, max(len(rest), 1), 1024):
            await meta.commit_chunks(ino, rest[first : first + 1024], size)
        await meta.link(ino, parent, tmp)
        try:
            await meta.rename(parent, tmp, parent, name, 0 if replace else RENAME_NOREPLACE)
        except PrismError:  # e.g. the name exists (not replace) or is too long
            with contextlib.suppress(PrismError):
                await meta.unlink(parent, tmp)
            raise
    finally:
        await meta.release(ino)
    return ino


class InodeNumbers:
    """Inode numbers reserved ahead (`ReserveInodes`), handed out one at a time,
    so a create can go in a batch with what follows it."""

    def __init__(self, meta: MetaClient, batch: int = 64) -> None:
        self.meta = meta
        self.batch = batch
        self._free: list[int] = []
        self._lock = trio.Lock()

    async def take(self) -> int:
        async with self._lock:
            if not self._free:
                self._free = list(reversed(await self.meta.reserve_inodes(self.batch)))
            return self._free.pop()


async def put_small(
    meta: MetaClient,
    data: DataClient,
    inodes: InodeNumbers,
    parent: int,
    name: bytes,
    body: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    layout: Layout | None = None,
    replace: bool = True,
) -> Attr:
    """`put_file` for a body of at most one chunk, known in full: its chunk is
    stored (inline if small), then one Raft entry makes the file under a
    temporary name, commits the chunk and renames it over ``name`` (without
    ``replace``: only if ``name`` does not exist, else `AlreadyExists` and
    nothing stays behind). Returns the new file's attributes."""
    chosen = layout or await layout_for(meta, parent)
    if len(body) > chosen.chunk_size:
        raise InvalidArgument(f"put_small takes at most one chunk ({chosen.chunk_size} bytes)")
    ino = await inodes.take()
    chunks = ((0, await data.write_chunk(body, chosen)),) if body else ()
    tmp = temporary_name(name)
    now = now_ns()
    results = await meta.batch(
        [
            Mknod(
                now,
                parent,
                tmp,
                stat.S_IFREG | (mode & 0o7777),
                uid,
                gid,
                chunk_size=chosen.chunk_size,
                ino=ino,
            ),
            CommitChunks(now, ino, chunks, len(body)),
            Rename(now, parent, tmp, parent, name, 0 if replace else RENAME_NOREPLACE),
        ]
    )
    failed = next((r for r in results if isinstance(r, PrismError)), None)
    if failed is not None:
        if not isinstance(results[0], PrismError):  # made, but not renamed: remove it
            with contextlib.suppress(PrismError):
                await meta.unlink(parent, tmp)
        raise failed
    attr = results[1]
    assert isinstance(attr, Attr)
    return attr


def temporary_name(name: bytes) -> bytes:
    """A hidden name beside ``name`` for an upload in progress, at most NAME_MAX
    (255) bytes: ``name`` is cut by bytes (never in the middle of a UTF-8
    character) to leave room for the random suffix."""
    suffix = f".prismfs-{secrets.token_hex(4)}".encode()
    room = NAME_MAX - 1 - len(suffix)
    stem = name[:room]
    if len(name) > room:
        for trim in range(4):  # a UTF-8 character is at most 4 bytes
            try:
                stem[: len(stem) - trim].decode()
            except UnicodeDecodeError:
                continue
            stem = stem[: len(stem) - trim]
            break
    return b"." + stem + suffix


async def _read_exactly(read: Callable[[int], Awaitable[bytes]], n: int) -> bytes:
    parts = bytearray()
    while len(parts) < n:
        block = await read(n - len(parts))
        if not block:
            break
        if len(block) > n - len(parts):
            raise ValueError(f"reader returned {len(block)} bytes, asked for {n - len(parts)}")
        parts += block
    return bytes(parts)


async def get_file(
    meta: MetaClient,
    data: DataClient,
    ino: int,
    write: Callable[[bytes], Awaitable[None]],
    *,
    progress: Progress | None = None,
) -> int:
    """Stream the file's content to ``write``; returns the number of bytes."""
    f = await OpenFile.open(meta, data, ino)
    try:
        return await stream_range(f, data, write, progress=progress)
    finally:
        await f.close()


async def stream_range(
    f: OpenFile,
    data: DataClient,
    write: Callable[[bytes], Awaitable[None]],
    start: int = 0,
    end: int | None = None,
    *,
    progress: Progress | None = None,
) -> int:
    """Write bytes ``[start, end)`` of the open file (as of its open) to ``write``
    in order, fetching up to `PARALLEL_CHUNKS` chunks ahead; returns the count."""
    size = f.size if end is None else min(end, f.size)
    if start >= size:
        return 0
    cs = f.chunk_size
    first, last = start // cs, (size - 1) // cs
    limiter = trio.Semaphore(PARALLEL_CHUNKS)
    results: dict[int, trio.Event] = {idx: trio.Event() for idx in range(first, last + 1)}
    chunks: dict[int, bytes] = {}
    written = 0

    async def fetch(idx: int) -> None:
        async with limiter:
            record = f._records.get(idx)
            chunk = b"" if record is None else await f._read(idx, record, data.read_chunk)
            valid = min(cs, f.size - idx * cs)
            chunk = chunk[:valid] + bytes(max(0, valid - len(chunk)))
            lo = start - idx * cs if idx == first else 0
            hi = size - idx * cs if idx == last else valid
            chunks[idx] = chunk[lo:hi]
            results[idx].set()

    async with trio.open_nursery() as nursery:

        async def feeder() -> None:
            for idx in range(first, last + 1):
                # never more than 2x the window of chunks in memory
                while idx - (start + written) // cs >= 2 * PARALLEL_CHUNKS:
                    await trio.sleep(0.001)
                nursery.start_soon(fetch, idx)

        nursery.start_soon(feeder)
        for idx in range(first, last + 1):
            await results[idx].wait()
            block = chunks.pop(idx)
            await write(block)
            written += len(block)
            if progress is not None:
                progress(len(block))
    return written


def local_reader(path: str) -> tuple[Callable[[int], Awaitable[bytes]], Callable[[], None]]:
    """An async reader over a local file (reads in a worker thread) and its closer.
    A failure to open or read it is `InvalidArgument` naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror or exc}") from None

    async def read(n: int) -> bytes:
        try:
            return await trio.to_thread.run_sync(os.read, fd, n)
        except OSError as exc:
            raise InvalidArgument(f"{path}: {exc.strerror or exc}") from None

    return read, lambda: os.close(fd)
