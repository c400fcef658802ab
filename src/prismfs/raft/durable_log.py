"""The durable Raft log: segment files of checksummed records, hard state, snapshot.

This is the I/O half of the log (the core's in-memory `RaftLog` is the other).
It is synchronous and blocking; the trio driver calls it from a worker thread.

Layout of the directory::

    seg-<first index, 20 digits>.log   records, appended; a new segment when
                                        one passes ``segment_bytes``
    hardstate                          term, vote, commit (msgpack), replaced
                                        atomically: temp + fsync + rename, when
                                        the term or vote changes (the commit in
                                        it is a lower bound, not the latest)
    snapshot                           latest snapshot: meta + data, replaced
                                        atomically

Record layout (big-endian)::

    u32 body length | body | u64 xxh3_64(length + body)
    body = msgpack Entry (term, index, kind, data)

Group commit: `save` writes every entry of one `Ready` with one ``write`` per
segment and one ``fsync``, then the hard state, so a batch of proposals costs
one disk flush.

Recovery (`open`): every record is length- and checksum-verified. A bad or
incomplete record at the tail of the *last* segment is a torn write from a
crash: the file is truncated there and the event logged. A bad record
anywhere else is corruption of acknowledged data and refuses to start.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from prismfs.durable import write_atomic
from prismfs.errors import LogCorrupt, ProtocolError
from prismfs.raft.core import Ready, Snapshot
from prismfs.raft.messages import Entry, HardState, SnapshotMeta
from prismfs.wire.codec import decode_message, encode_message

log = logging.getLogger("prismfs.raft.log")

_LEN = struct.Struct(">I")
_SUM = struct.Struct(">Q")
MAX_RECORD = 256 * 1024 * 1024


def _record(entry: Entry) -> bytes:
    body = encode_message(entry)
    head = _LEN.pack(len(body))
    return head + body + _SUM.pack(xxhash.xxh3_64_intdigest(head + body))


@dataclass
class _Segment:
    path: Path
    first: int
    offsets: list[int] = field(default_factory=list)  # file offset of each record
    size: int = 0

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

    # --- recovery ------------------------------------------------------------

    def open(self) -> Recovered:
        self.dir.mkdir(parents=True, exist_ok=True)
        hard_state = self._read_hard_state()
        self._term_vote = (hard_state.term, hard_state.vote)
        snapshot = self._read_snapshot()
        entries: list[Entry] = []
        truncated = 0
        paths = sorted(self.dir.glob("seg-*.log"))
        for n, path in enumerate(paths):
            first = int(path.stem.split("-")[1])
            segment = _Segment(path, first)
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                entry = self._parse(data, pos)
                if entry is None or entry.index != first + len(segment.offsets):
                    if n != len(paths) - 1:
                        raise LogCorrupt(f"corrupt record at byte {pos} of {path}")
                    truncated = len(data) - pos
                    log.warning(
                        "truncating torn tail of %s: %d bytes after byte %d", path, truncated, pos
                    )
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                        os.fsync(f.fileno())
                    break
                segment.offsets.append(pos)
                entries.append(entry)
                pos += _LEN.size + _LEN.unpack_from(data, pos)[0] + _SUM.size
            segment.size = pos
            self._segments.append(segment)
        base = snapshot.meta.index if snapshot else 0
        entries = [e for e in entries if e.index > base]
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise LogCorrupt(f"log has a gap between {a.index} and {b.index}")
        if entries and entries[0].index != base + 1:
            raise LogCorrupt(f"log starts at {entries[0].index}, snapshot ends at {base}")
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        return Recovered(hard_state, snapshot, entries, truncated)

    def _parse(self, data: bytes, pos: int) -> Entry | None:
        if pos + _LEN.size > len(data):
            return None
        (length,) = _LEN.unpack_from(data, pos)
        end = pos + _LEN.size + length + _SUM.size
        if length > MAX_RECORD or end > len(data):
            return None
        (checksum,) = _SUM.unpack_from(data, end - _SUM.size)
        if xxhash.xxh3_64_intdigest(data[pos : end - _SUM.size]) != checksum:
            return None
        try:
            entry = decode_message(data[pos + _LEN.size : end - _SUM.size])
        except ProtocolError:
            return None
        return entry if isinstance(entry, Entry) else None

    def _read_hard_state(self) -> HardState:
        try:
            hs = decode_message((self.dir / "hardstate").read_bytes())
        except FileNotFoundError:
            return HardState()
        if not isinstance(hs, HardState):
            raise LogCorrupt(f"{self.dir / 'hardstate'} does not hold a hard state")
        return hs

    def _read_snapshot(self) -> Snapshot | None:
        try:
            raw = (self.dir / "snapshot").read_bytes()
        except FileNotFoundError:
            return None
        (meta_len,) = _LEN.unpack_from(raw, 0)
        meta = decode_message(raw[_LEN.size : _LEN.size + meta_len])
        if not isinstance(meta, SnapshotMeta):
            raise LogCorrupt(f"{self.dir / 'snapshot'} is malformed")
        return Snapshot(meta, raw[_LEN.size + meta_len :])

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
            write_atomic(self.dir / "hardstate", encode_message(hs))
            self._term_vote = (hs.term, hs.vote)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        meta = encode_message(snapshot.meta)
        write_atomic(self.dir / "snapshot", _LEN.pack(len(meta)) + meta + snapshot.data)

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if self._segments and first <= self._segments[-1].last:
            self._drop_from(first)
        pending = bytearray()
        for entry in entries:
            if not self._segments or self._segments[-1].size + len(pending) >= self.segment_bytes:
                self._flush(pending)
                pending = bytearray()
                self._new_segment(entry.index)
            segment = self._segments[-1]
            segment.offsets.append(segment.size + len(pending))
            pending += _record(entry)
        self._flush(pending)

    def _flush(self, pending: bytearray) -> None:
        if not pending:
            return
        assert self._fd is not None
        os.write(self._fd, pending)
        os.fsync(self._fd)
        self._segments[-1].size += len(pending)

    def _new_segment(self, first: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.dir / f"seg-{first:020d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._segments.append(_Segment(path, first))

    def _drop_from(self, index: int) -> None:
        """Remove every record with index >= ``index`` (conflict truncation)."""
        while self._segments and self._segments[-1].first >= index:
            segment = self._segments.pop()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            segment.path.unlink()
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
        while len(self._segments) > 1 and self._segments[1].first <= index + 1:
            self._segments.pop(0).path.unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
