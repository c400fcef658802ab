"""The durable Raft log: segment files of checksummed records, hard state, snapshot.

This is the I/O half of the log (the core's in-memory `RaftLog` is the other).
It is synchronous and blocking; the trio driver calls it from a worker thread.

Layout of the directory (files 0600)::

    seg-<first index, 20 digits>.log   a header, then records, appended; a new
                                        segment when one passes ``segment_bytes``
    hardstate                          term, vote, commit (msgpack), replaced
                                        atomically: temp + fsync + rename, when
                                        the term or vote changes (the commit in
                                        it is a lower bound, not the latest)
    snapshot                           latest snapshot held in memory (the
                                        small state machines of tests): meta
                                        (with the image's xxh3-128) + image,
                                        replaced atomically
    snapshot.meta                      latest snapshot whose image is a file
                                        (the namespace): its meta, replaced
                                        atomically after the image is durable
    image-<index>-<term>.db            that image (a SQLite database); images
                                        of older snapshots are deleted once a
                                        newer one is durable
    incoming.tmp                       a snapshot being received from the
                                        leader (`FileSink`); deleted on open

Segment layout (big-endian)::

    "PRSMLOG2"                                         8-byte header
    u32 body length | u64 batch | body | u64 xxh3_64(length + batch + body)  ...
    body = msgpack Entry (term, index, kind, data)
    batch = index of the first entry of the `save` that wrote the record

Group commit: `save` writes every entry of one `Ready` with one ``write`` per
segment and one ``fsync``, then the hard state, so a batch of proposals costs
one disk flush. A crash can tear only the batch being written, which nobody
was told about; every record names its batch, so that is the only thing
recovery may cut.

Recovery (`open`): every record is length- and checksum-verified and must
hold the next index. A bad or incomplete record in the *last* segment is a
torn write if no intact record of a *later batch* follows it (records of its
own batch may have reached the disk out of order): the file is truncated
there and the event logged. A bad record with a later batch after it, a bad
record in an earlier segment, or a checksummed record with the wrong index is
corruption of acknowledged data and refuses to start (`LogCorrupt`); so does a
snapshot whose image does not match its checksum (a file image is hashed a
MiB at a time, never held whole). Segments left behind by a
crash during a snapshot install are deleted. Segments of the first format
(no header, no batch in records) are still read; new entries go to a new
segment.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from prismfs.durable import fsync_dir, write_all, write_atomic
from prismfs.errors import LogCorrupt, ProtocolError
from prismfs.raft.messages import Entry, HardState, SnapshotMeta, image_checksum
from prismfs.raft.ready import Ready, Snapshot
from prismfs.wire.codec import decode_message, encode_message

log = logging.getLogger("prismfs.raft.log")

SEGMENT_MAGIC = b"PRSMLOG2"
FILE_MODE = 0o600  # the log holds the whole namespace, and small files' contents
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">IQ")  # body length, batch
_SUM = struct.Struct(">Q")
MAX_RECORD = 256 * 1024 * 1024
# Every record body starts with these bytes (the msgpack map header and tag of
# an Entry); recovery looks for them to find intact records after a bad one.
_ENTRY_PREFIX = encode_message(Entry(0, 0, "normal", b""))[:14]


def file_digest(path: Path) -> tuple[bytes, int]:
    """`image_checksum` of a file's contents, read a MiB at a time, and its size."""
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.digest(), size


def read_image(path: Path, offset: int, n: int) -> bytes:
    """``n`` bytes of a snapshot image file from ``offset`` (fewer at its end):
    the core's `RaftConfig.read_image`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


class FileSink:
    """An incoming snapshot image written to ``incoming.tmp`` as its chunks
    arrive (the core's `ImageSink`): a follower never holds a whole image in
    memory. `finish` checks the checksum and moves the file to the log's
    `image_path`; `DurableLog.save_snapshot` makes it durable."""

    def __init__(self, log: DurableLog, meta: SnapshotMeta) -> None:
        self.log = log
        self.meta = meta
        self.size = 0
        self.path = log.dir / "incoming.tmp"
        self._hash = xxhash.xxh3_128()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        write_all(self._fd, data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> Snapshot | None:
        self._close()
        if self.meta.checksum and self._hash.digest() != self.meta.checksum:
            self.path.unlink(missing_ok=True)
            return None
        final = self.log.image_path(self.meta.index, self.meta.term)
        os.replace(self.path, final)
        return Snapshot(self.meta, file=final, file_size=self.size)

    def discard(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _check_image(path: Path, meta: SnapshotMeta, checksum: bytes) -> None:
    if meta.checksum and checksum != meta.checksum:
        raise LogCorrupt(
            f"{path}: the image does not match its checksum (damaged on disk); "
            "wipe this node's data directory and add it again"
        )


def _record(entry: Entry, batch: int) -> bytes:
    body = encode_message(entry)
    head = _HEAD.pack(len(body), batch)
    return head + body + _SUM.pack(xxhash.xxh3_64_intdigest(head + body))


@dataclass
class _Segment:
    path: Path
    first: int
    offsets: list[int] = field(default_factory=list)  # file offset of each record
    size: int = 0
    version: int = 2  # 1: the first format (read only)

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1


@dataclass
class Recovered:
    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    truncated_bytes: int = 0


class DurableLog:
    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # open fd of the last segment
        self._term_vote: tuple[int, str] | None = None  # last written to "hardstate"
        self.fsyncs = 0  # made by `save` (log records, segment directory, hard state)

    # --- recovery ------------------------------------------------------------

    def open(self) -> Recovered:
        self.dir.mkdir(parents=True, exist_ok=True)
        hard_state = self._read_hard_state()
        self._term_vote = (hard_state.term, hard_state.vote)
        snapshot = self._read_snapshot()
        entries: list[Entry] = []
        truncated = 0
        paths = sorted(self.dir.glob("seg-*.log"))
        for path in [
            *paths,
            self.dir / "hardstate",
            self.dir / "snapshot",
            self.dir / "snapshot.meta",
        ]:
            if path.exists() and path.stat().st_mode & 0o077:
                path.chmod(FILE_MODE)  # made by an earlier version, readable by others
        for n, path in enumerate(paths):
            segment, loaded, cut = self._load_segment(path, is_last=n == len(paths) - 1)
            self._segments.append(segment)
            entries += loaded
            truncated += cut
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise LogCorrupt(f"log has a gap between {a.index} and {b.index}")
        if snapshot is not None:
            entries = self._reconcile_with_snapshot(snapshot.meta, entries)
        base = snapshot.meta.index if snapshot else 0
        if entries and entries[0].index != base + 1:
            raise LogCorrupt(f"log starts at {entries[0].index}, snapshot ends at {base}")
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        return Recovered(hard_state, snapshot, entries, truncated)

    def _load_segment(self, path: Path, *, is_last: bool) -> tuple[_Segment, list[Entry], int]:
        """Parse one segment; a torn tail of the last one is cut off (bytes cut returned)."""
        segment = _Segment(path, int(path.stem.split("-")[1]))
        entries: list[Entry] = []
        data = path.read_bytes()
        if data.startswith(SEGMENT_MAGIC):
            pos = len(SEGMENT_MAGIC)
        elif is_last and SEGMENT_MAGIC.startswith(data):
            # Created, but the crash came before its header was on disk.
            write_header = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                write_all(write_header, SEGMENT_MAGIC)
                os.fsync(write_header)
            finally:
                os.close(write_header)
            segment.size = len(SEGMENT_MAGIC)
            return segment, entries, len(data)
        else:
            segment.version, pos = 1, 0
        while pos < len(data):
            expect = segment.first + len(segment.offsets)
            parsed = self._parse(data, pos, segment.version)
            if parsed is None:
                if not (is_last and self._is_torn(data, pos, expect, segment.version)):
                    raise LogCorrupt(
                        f"corrupt record at byte {pos} of {path} (index {expect}) "
                        "with intact records after it"
                        if is_last
                        else f"corrupt record at byte {pos} of {path} (index {expect})"
                    )
                cut = len(data) - pos
                log.warning("truncating torn tail of %s: %d bytes after byte %d", path, cut, pos)
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())
                segment.size = pos
                return segment, entries, cut
            entry, _, end = parsed
            if entry.index != expect:
                # A checksummed record in the wrong place is not a torn write.
                raise LogCorrupt(
                    f"record at byte {pos} of {path} holds index {entry.index}, expected {expect}"
                )
            segment.offsets.append(pos)
            entries.append(entry)
            pos = end
        segment.size = pos
        return segment, entries, 0

    def _is_torn(self, data: bytes, pos: int, expect: int, version: int) -> bool:
        """Is the bad record at ``pos`` a write cut short by a crash?

        One batch is one ``write`` and one ``fsync``: a crash tears at most
        the batch being written, which nobody was told about, and the disk
        may have kept some of its later sectors and not earlier ones. So the
        bad record is torn unless an intact record of a *later batch* follows
        it (its batch begins after index ``expect``): that one was written
        after this record's batch was acknowledged, so this is corruption of
        acknowledged data, and the node must not start.
        """
        head = _HEAD.size if version == 2 else _LEN.size
        q = data.find(_ENTRY_PREFIX, pos + 1)
        while q != -1:
            start = q - head
            parsed = self._parse(data, start, version) if start > pos else None
            if parsed is not None and parsed[0].index >= expect:
                if version == 1:
                    return self._zero_sector_between(data, pos, start)
                if parsed[1] > expect:
                    return False  # a batch that began after the bad record: acknowledged
                q = parsed[2] + head - 1  # the same batch: look further on
            q = data.find(_ENTRY_PREFIX, q + 1)
        return True

    @staticmethod
    def _zero_sector_between(data: bytes, pos: int, start: int) -> bool:
        """First-format segments name no batch: a whole zero-filled 512-byte
        sector before the next intact record is taken for a torn batch."""
        first_sector = -(-pos // 512) * 512
        return any(not any(data[s : s + 512]) for s in range(first_sector, start - 511, 512))

    def _reconcile_with_snapshot(self, meta: SnapshotMeta, entries: list[Entry]) -> list[Entry]:
        """Drop log entries a snapshot covers, and the whole log if it contradicts it.

        A snapshot the node took itself ends at an entry its log holds, with
        the same term: the entries after it stay. A snapshot installed from
        the leader replaces a log that does not hold that entry; a crash
        after saving it but before the old segments were deleted leaves them
        behind, and they are deleted now (none of them can be committed: log
        matching fails at the snapshot's index).
        """
        at = meta.index - entries[0].index if entries else -1
        if 0 <= at < len(entries) and entries[at].term == meta.term:
            kept = entries[at + 1 :]
            return kept
        if entries and entries[0].index > meta.index:
            return entries  # the log already starts after the snapshot
        if entries:
            log.warning(
                "discarding log %d..%d left over from before installed snapshot at %d (term %d)",
                entries[0].index,
                entries[-1].index,
                meta.index,
                meta.term,
            )
        self._drop_from(0)
        return []

    def _parse(self, data: bytes, pos: int, version: int) -> tuple[Entry, int, int] | None:
        """The intact record at ``pos``: (entry, its batch, where the next begins)."""
        head = _HEAD if version == 2 else _LEN
        if pos < 0 or pos + head.size > len(data):
            return None
        if version == 2:
            length, batch = _HEAD.unpack_from(data, pos)
        else:
            (length,), batch = _LEN.unpack_from(data, pos), 0
        end = pos + head.size + length + _SUM.size
        if length > MAX_RECORD or end > len(data):
            return None
        (checksum,) = _SUM.unpack_from(data, end - _SUM.size)
        if xxhash.xxh3_64_intdigest(data[pos : end - _SUM.size]) != checksum:
            return None
        try:
            entry = decode_message(data[pos + head.size : end - _SUM.size])
        except ProtocolError:
            return None
        return (entry, batch, end) if isinstance(entry, Entry) else None

    def _read_hard_state(self) -> HardState:
        try:
            hs = decode_message((self.dir / "hardstate").read_bytes())
        except FileNotFoundError:
            return HardState()
        if not isinstance(hs, HardState):
            raise LogCorrupt(f"{self.dir / 'hardstate'} does not hold a hard state")
        return hs

    def image_path(self, index: int, term: int) -> Path:
        """Where the image of a file snapshot at (index, term) lives."""
        return self.dir / f"image-{index:020d}-{term}.db"

    def adopt_image(self, path: Path, index: int, term: int) -> Path:
        """Move a snapshot image made elsewhere in this directory to its
        `image_path`, readable by the owner only (it holds the namespace)."""
        final = self.image_path(index, term)
        os.chmod(path, FILE_MODE)
        os.replace(path, final)
        return final

    def _read_snapshot(self) -> Snapshot | None:
        """The newest of the in-memory and the file snapshot (a crash between
        writing one and deleting the other leaves both); stray images and an
        unfinished incoming one are deleted."""
        inline = self._read_inline_snapshot()
        in_file = self._read_file_snapshot()
        snapshot = inline
        if in_file is not None and (inline is None or in_file.meta.index >= inline.meta.index):
            snapshot = in_file
        keep = snapshot.file if snapshot is not None else None
        for path in [*self.dir.glob("image-*.db"), self.dir / "incoming.tmp"]:
            if path != keep and path.exists():
                log.info("deleting %s: no snapshot refers to it", path.name)
                path.unlink()
        return snapshot

    def _read_meta(self, path: Path) -> tuple[SnapshotMeta, bytes] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            (meta_len,) = _LEN.unpack_from(raw, 0)
            meta = decode_message(raw[_LEN.size : _LEN.size + meta_len])
        except (struct.error, ProtocolError):
            meta = None
        if not isinstance(meta, SnapshotMeta):
            raise LogCorrupt(f"{path} is malformed")
        return meta, raw[_LEN.size + meta_len :]

    def _read_inline_snapshot(self) -> Snapshot | None:
        path = self.dir / "snapshot"
        read = self._read_meta(path)
        if read is None:
            return None
        meta, image = read
        _check_image(path, meta, image_checksum(image))
        return Snapshot(meta, image)

    def _read_file_snapshot(self) -> Snapshot | None:
        path = self.dir / "snapshot.meta"
        read = self._read_meta(path)
        if read is None:
            return None
        meta, _ = read
        image = self.image_path(meta.index, meta.term)
        try:
            checksum, size = file_digest(image)
        except FileNotFoundError:
            raise LogCorrupt(
                f"{path} names the image {image.name}, which is missing; "
                "wipe this node's data directory and add it again"
            ) from None
        _check_image(image, meta, checksum)
        return Snapshot(meta, file=image, file_size=size)

    # --- reading back ------------------------------------------------------------

    def read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """The entries lo <= index < hi as written, stopping after the first
        whose record takes the bytes read past ``max_bytes`` (at least one
        entry; `prismfs.raft.log.Loader`).

        Called on the event loop while `save` may append from a worker thread:
        it reads only entries already written and made durable (the core asks
        only for entries it persisted), through a file of its own."""
        out: list[Entry] = []
        for segment in list(self._segments):
            if segment.last < lo or segment.first >= hi:
                continue
            start = max(lo, segment.first) - segment.first
            stop = min(hi, segment.last + 1) - segment.first
            # Read no further than the budget needs (the first record past it too).
            begin, budget, k = segment.offsets[start], max_bytes, start + 1
            while k < stop and segment.offsets[k] - begin <= budget:
                k += 1
            end = segment.offsets[k] if k < len(segment.offsets) else segment.size
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                data = os.pread(fd, end - begin, begin)
            finally:
                os.close(fd)
            pos = 0
            for index in range(segment.first + start, segment.first + k):
                parsed = self._parse(data, pos, segment.version)
                if parsed is None or parsed[0].index != index:
                    raise LogCorrupt(f"cannot read back entry {index} from {segment.path}")
                out.append(parsed[0])
                pos = parsed[2]
            max_bytes -= end - begin
            if k < stop or max_bytes < 0:
                return out
        if (out[-1].index + 1 if out else lo) != hi:
            raise LogCorrupt(f"the log on disk does not hold entries {lo}..{hi - 1}")
        return out

    # --- writing -----------------------------------------------------------------

    def save(self, rd: Ready) -> None:
        """Persist a Ready's snapshot, entries and hard state, in that order, durably."""
        if rd.snapshot is not None:
            self.save_snapshot(rd.snapshot)
            self._drop_from(0)  # the snapshot replaces the whole log
        if rd.entries:
            self._append(rd.entries)
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) != self._term_vote:
            # Only a new term or vote must be durable before messages go out.
            # A commit index alone is not written: it is recovered from the
            # leader after a restart (as etcd's MustSync decides), which saves
            # a create + fsync + rename + fsync(dir) in nearly every Ready.
            write_atomic(self.dir / "hardstate", encode_message(hs), mode=FILE_MODE)
            self.fsyncs += 2
            self._term_vote = (hs.term, hs.vote)

    def save_snapshot(self, snapshot: Snapshot, *, delete_stale: bool = True) -> list[Path]:
        """Make a snapshot durable and the latest. A file image must already
        be at `image_path` (it is fsynced here, before the meta that names it
        is written); the image of the snapshot it replaces is deleted after,
        or with ``delete_stale=False`` returned for the caller to delete (a
        large file takes a while to free)."""
        meta = encode_message(snapshot.meta)
        if snapshot.file is None:
            write_atomic(
                self.dir / "snapshot", _LEN.pack(len(meta)) + meta + snapshot.data, mode=FILE_MODE
            )
            stale = [self.dir / "snapshot.meta", *self.dir.glob("image-*.db")]
        else:
            if snapshot.file != self.image_path(snapshot.meta.index, snapshot.meta.term):
                raise ValueError(f"a snapshot image must be at image_path, not {snapshot.file}")
            with open(snapshot.file, "rb") as f:
                os.fsync(f.fileno())
            fsync_dir(self.dir)
            write_atomic(self.dir / "snapshot.meta", _LEN.pack(len(meta)) + meta, mode=FILE_MODE)
            # Only older images: a newer one may be an incoming snapshot that
            # was received while this one was being made, about to be saved.
            stale = [self.dir / "snapshot"]
            stale += [p for p in self.dir.glob("image-*.db") if p.name < snapshot.file.name]
        if not delete_stale:
            return stale
        for path in stale:
            path.unlink(missing_ok=True)
        return []

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if self._segments and first <= self._segments[-1].last:
            self._drop_from(first)
        pending = bytearray()
        for entry in entries:
            if (
                not self._segments
                or self._segments[-1].version != 2
                or self._segments[-1].size + len(pending) >= self.segment_bytes
            ):
                self._flush(pending)
                pending = bytearray()
                self._new_segment(entry.index)
            segment = self._segments[-1]
            segment.offsets.append(segment.size + len(pending))
            pending += _record(entry, first)
        self._flush(pending)

    def _flush(self, pending: bytearray) -> None:
        if not pending:
            return
        assert self._fd is not None
        write_all(self._fd, pending)
        # fdatasync: the data and the file size (needed to read it back), not
        # the times an fsync would also write
        os.fdatasync(self._fd)
        self.fsyncs += 1
        self._segments[-1].size += len(pending)

    def _new_segment(self, first: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.dir / f"seg-{first:020d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, FILE_MODE)
        write_all(self._fd, SEGMENT_MAGIC)  # made durable by the batch's fsync
        fsync_dir(self.dir)
        self.fsyncs += 1
        self._segments.append(_Segment(path, first, size=len(SEGMENT_MAGIC)))

    def _drop_from(self, index: int) -> None:
        """Remove every record with index >= ``index`` (conflict truncation)."""
        unlinked = False
        while self._segments and self._segments[-1].first >= index:
            segment = self._segments.pop()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            segment.path.unlink()
            unlinked = True
        if unlinked:
            fsync_dir(self.dir)
        if not self._segments:
            return
        segment = self._segments[-1]
        if index <= segment.last:
            cut = segment.offsets[index - segment.first]
            del segment.offsets[index - segment.first :]
            with open(segment.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            segment.size = cut
        if self._fd is None:
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)

    def compact(self, index: int) -> None:
        """Delete whole segments that hold only entries <= ``index``."""
        unlinked = False
        while len(self._segments) > 1 and self._segments[1].first <= index + 1:
            self._segments.pop(0).path.unlink()
            unlinked = True
        if unlinked:
            fsync_dir(self.dir)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
