"""The durable Raft log on a real file system: round trips, conflict
truncation, torn tails, corruption, segments, compaction, group commit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prismfs.errors import LogCorrupt
from prismfs.raft import durable_log
from prismfs.raft.durable_log import DurableLog, FileSink, read_image
from prismfs.raft.messages import ConfState, Entry, HardState, SnapshotMeta, image_checksum
from prismfs.raft.ready import Ready, Snapshot


def entries(first: int, last: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, "normal", bytes([i % 256]) * size) for i in range(first, last + 1)]


def reopen(path: Path, **kw: int) -> tuple[DurableLog, durable_log.Recovered]:
    dl = DurableLog(path, **kw)
    return dl, dl.open()


def test_round_trip_entries_and_hard_state(tmp_path: Path) -> None:
    dl, rec = reopen(tmp_path)
    assert rec.entries == [] and rec.hard_state == HardState() and rec.snapshot is None
    dl.save(Ready(hard_state=HardState(3, "b", 5), entries=entries(1, 5, term=3)))
    dl.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 5, term=3)
    assert rec.hard_state == HardState(3, "b", 5)


def test_conflicting_suffix_is_truncated(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 10, term=1)))
    dl.save(Ready(entries=entries(6, 7, term=2)))  # the core says: truncate from 6
    dl.close()
    _, rec = reopen(tmp_path)
    assert [(e.index, e.term) for e in rec.entries] == [(i, 1) for i in range(1, 6)] + [
        (6, 2),
        (7, 2),
    ]


@pytest.mark.parametrize("cut", [1, 5, 13])
def test_torn_tail_is_truncated_and_logged(tmp_path: Path, logs, cut: int) -> None:
    logs.allow("truncating torn tail")
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 4)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - cut)  # the last record was half written when the power went
    dl, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 3)
    assert rec.truncated_bytes > 0
    assert logs.matching("truncating torn tail")
    dl.save(Ready(entries=entries(4, 6)))  # appending continues cleanly after the cut
    dl.close()
    assert reopen(tmp_path)[1].entries == entries(1, 6)


def test_corrupt_tail_record_is_truncated(tmp_path: Path, logs) -> None:
    logs.allow("truncating torn tail")
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 3)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[-12] ^= 0xFF  # flip a byte inside the last record
    segment.write_bytes(bytes(data))
    assert reopen(tmp_path)[1].entries == entries(1, 2)


def test_corruption_before_the_last_segment_refuses_to_start(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path, segment_bytes=200)
    dl.save(Ready(entries=entries(1, 20, size=50)))
    dl.close()
    segments = sorted(tmp_path.glob("seg-*.log"))
    assert len(segments) > 2
    data = bytearray(segments[0].read_bytes())
    data[10] ^= 0x55
    segments[0].write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="corrupt record"):
        reopen(tmp_path, segment_bytes=200)


def test_segments_rotate_and_compaction_deletes_old_ones(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path, segment_bytes=500)
    for i in range(1, 101, 10):
        dl.save(Ready(entries=entries(i, i + 9, size=40)))
    before = sorted(tmp_path.glob("seg-*.log"))
    assert len(before) > 5
    # The snapshot is saved first, then the log is compacted up to it.
    dl.save_snapshot(Snapshot(SnapshotMeta(60, 1, ConfState(("a",))), b"image"))
    dl.compact(60)
    after = sorted(tmp_path.glob("seg-*.log"))
    assert len(after) < len(before)
    assert int(after[0].stem.split("-")[1]) <= 61
    dl.close()
    _, rec = reopen(tmp_path, segment_bytes=500)
    assert rec.snapshot is not None and rec.snapshot.data == b"image"
    assert [e.index for e in rec.entries] == list(range(61, 101))


def test_installed_snapshot_replaces_the_log(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 5)))
    snap = Snapshot(SnapshotMeta(50, 4, ConfState(("a", "b"))), b"state")
    dl.save(Ready(snapshot=snap, hard_state=HardState(4, "", 50)))
    dl.save(Ready(entries=entries(51, 52, term=4)))
    dl.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot == snap
    assert [e.index for e in rec.entries] == [51, 52]


def test_group_commit_one_fsync_for_many_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dl, _ = reopen(tmp_path)
    calls = []
    real = os.fsync
    monkeypatch.setattr(durable_log.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    dl.save(Ready(entries=entries(1, 500)))
    assert len(calls) <= 2  # one for the data (plus one for a new segment's directory)
    dl.close()


def test_gap_in_log_is_refused(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path, segment_bytes=100)
    dl.save(Ready(entries=entries(1, 10, size=40)))
    dl.close()
    segments = sorted(tmp_path.glob("seg-*.log"))
    segments[1].unlink()  # an operator deleted a middle segment
    with pytest.raises(LogCorrupt):
        reopen(tmp_path, segment_bytes=100)


def test_commit_only_changes_do_not_rewrite_the_hard_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dl, _ = reopen(tmp_path)
    writes: list[Path] = []
    real = durable_log.write_atomic
    monkeypatch.setattr(
        durable_log, "write_atomic", lambda p, d, **kw: (writes.append(p), real(p, d, **kw))
    )
    dl.save(Ready(hard_state=HardState(2, "a", 0), entries=entries(1, 3, term=2)))
    dl.save(Ready(hard_state=HardState(2, "a", 3)))  # commit moved: no rewrite, no fsync
    assert len(writes) == 1
    dl.save(Ready(hard_state=HardState(3, "", 3)))  # a new term must be durable
    assert len(writes) == 2
    dl.close()
    _, rec = reopen(tmp_path)
    assert (rec.hard_state.term, rec.hard_state.vote) == (3, "")


def test_crash_between_installed_snapshot_and_dropping_the_old_log(
    tmp_path: Path, logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot file is saved, then the process dies before the old
    segments are deleted: the next open must not continue the old log."""
    logs.allow("discarding log")
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 8, term=1)))  # a diverged log from an old term

    def crash(index: int) -> None:
        raise SystemExit("power cut")

    monkeypatch.setattr(dl, "_drop_from", crash)
    snap = Snapshot(SnapshotMeta(5, 3, ConfState(("a", "b"))), b"leader state")
    with pytest.raises(SystemExit):
        dl.save(Ready(snapshot=snap, hard_state=HardState(3, "", 5)))
    dl.close()
    dl, rec = reopen(tmp_path)
    assert rec.snapshot == snap
    assert rec.entries == []  # entries 1..8 of term 1 contradict the snapshot at 5 (term 3)
    assert list(tmp_path.glob("seg-*.log")) == []
    assert logs.matching("discarding log")
    dl.save(Ready(entries=entries(6, 7, term=3)))
    dl.close()
    _, rec = reopen(tmp_path)
    assert [(e.index, e.term) for e in rec.entries] == [(6, 3), (7, 3)]


def test_own_snapshot_keeps_the_entries_after_it(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 8, term=2)))
    dl.save_snapshot(Snapshot(SnapshotMeta(5, 2, ConfState(("a",))), b"mine"))
    dl.close()  # crash before compaction: harmless
    _, rec = reopen(tmp_path)
    assert [e.index for e in rec.entries] == [6, 7, 8]


def _record_offsets(segment: Path) -> list[int]:
    data = segment.read_bytes()
    offsets, pos = [], len(durable_log.SEGMENT_MAGIC)
    while pos < len(data):
        offsets.append(pos)
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big") + 8
    return offsets


def test_corrupt_record_followed_by_intact_ones_refuses_to_start(tmp_path: Path) -> None:
    """A flipped bit in an acknowledged record mid-segment is not a torn tail:
    truncating there would silently drop the acknowledged entries after it."""
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 3)))
    dl.save(Ready(entries=entries(4, 6)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[_record_offsets(segment)[2] + 9] ^= 0x04
    segment.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="intact records after it"):
        reopen(tmp_path)
    assert segment.read_bytes() == bytes(data)  # nothing was cut


def test_torn_batch_with_unwritten_sector_is_truncated(tmp_path: Path, logs) -> None:
    """A crash mid-batch can leave a zero-filled sector inside a record while
    later pages of the same (never acknowledged) batch did reach the disk."""
    logs.allow("truncating torn tail")
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 2, size=100)))
    dl.save(Ready(entries=entries(3, 6, size=1500)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    third = _record_offsets(segment)[2]
    sector = -(-third // 512) * 512 + 512
    data[sector : sector + 512] = bytes(512)
    segment.write_bytes(bytes(data))
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 2, size=100)


def test_intact_record_with_wrong_index_refuses_to_start(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 3)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    segment.rename(tmp_path / f"seg-{2:020d}.log")  # its records start at 1, not 2
    with pytest.raises(LogCorrupt, match="expected 2"):
        reopen(tmp_path)


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prismfs import durable

    real = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    dl, _ = reopen(tmp_path)
    dl.save(Ready(hard_state=HardState(2, "a", 0), entries=entries(1, 20, size=33)))
    dl.close()
    monkeypatch.undo()
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 20, size=33)
    assert rec.hard_state.term == 2


def test_a_zeroed_sector_in_an_acknowledged_batch_refuses_to_start(tmp_path: Path) -> None:
    """Only the last batch can be torn: a sector lost inside an earlier, fsynced
    batch must not cut every acknowledged batch after it."""
    dl, _ = reopen(tmp_path)
    for b in range(10):  # ten batches, each acknowledged before the next
        dl.save(Ready(entries=entries(b * 5 + 1, b * 5 + 5, size=700)))
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[2048:2560] = bytes(512)  # inside batch 1
    segment.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="intact records after it"):
        reopen(tmp_path)
    assert segment.read_bytes() == bytes(data)  # nothing was cut


def test_the_last_batch_torn_anywhere_is_cut(tmp_path: Path, logs) -> None:
    logs.allow("truncating torn tail")
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 5, size=700)))
    dl.save(Ready(entries=entries(6, 12, size=700)))  # never acknowledged: the crash hit it
    dl.close()
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    seventh = _record_offsets(segment)[6]
    data[seventh + 40 : seventh + 60] = bytes(20)  # an early sector of it lost, later ones kept
    segment.write_bytes(bytes(data))
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 6, size=700)


def test_a_damaged_snapshot_file_refuses_to_start(tmp_path: Path) -> None:
    from prismfs.raft.messages import image_checksum

    dl, _ = reopen(tmp_path)
    image = os.urandom(100_000)
    meta = SnapshotMeta(10, 2, ConfState(("a",)), image_checksum(image))
    dl.save(Ready(snapshot=Snapshot(meta, image)))
    dl.close()
    assert reopen(tmp_path)[1].snapshot == Snapshot(meta, image)
    path = tmp_path / "snapshot"
    data = bytearray(path.read_bytes())
    data[-50_000] ^= 0x01  # one bit of the image rots
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="does not match its checksum"):
        reopen(tmp_path)
    path.write_bytes(b"\x00\x00\x00\x05junk")
    with pytest.raises(LogCorrupt, match="malformed"):
        reopen(tmp_path)


def test_log_files_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(hard_state=HardState(1, "a", 0), entries=entries(1, 3)))
    dl.save(Ready(snapshot=Snapshot(SnapshotMeta(3, 1, ConfState(("a",))), b"image")))
    dl.save(Ready(entries=entries(4, 5)))
    dl.close()
    files = [*tmp_path.glob("seg-*.log"), tmp_path / "hardstate", tmp_path / "snapshot"]
    assert len(files) >= 3
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_segments_of_the_first_format_are_read_and_not_appended_to(tmp_path: Path) -> None:
    """A data directory written by an earlier version (records without a batch,
    no header) opens; new entries go to a segment of the current format."""
    import xxhash

    from prismfs.wire.codec import encode_message

    old = bytearray()
    for entry in entries(1, 4):
        body = encode_message(entry)
        head = len(body).to_bytes(4, "big")
        old += head + body + xxhash.xxh3_64_intdigest(head + body).to_bytes(8, "big")
    (tmp_path / f"seg-{1:020d}.log").write_bytes(bytes(old))
    dl, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 4)
    dl.save(Ready(entries=entries(5, 6)))
    dl.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == entries(1, 6)
    assert len(list(tmp_path.glob("seg-*.log"))) == 2


def file_snapshot(dl: DurableLog, index: int, term: int, image: bytes) -> Snapshot:
    """A snapshot whose image is a file, as a compaction makes it."""
    tmp = dl.dir / "image.tmp"
    tmp.write_bytes(image)
    path = dl.adopt_image(tmp, index, term)
    meta = SnapshotMeta(index, term, ConfState(("a",)), image_checksum(image))
    return Snapshot(meta, file=path, file_size=len(image))


def test_a_file_snapshot_is_kept_as_a_file_and_read_back_a_chunk_at_a_time(
    tmp_path: Path,
) -> None:
    dl, _ = reopen(tmp_path)
    dl.save(Ready(entries=entries(1, 70)))
    image = os.urandom(3 * 1024 * 1024 + 17)
    dl.save_snapshot(file_snapshot(dl, 60, 1, image))
    dl.compact(60)
    dl.close()
    _, rec = reopen(tmp_path)
    snap = rec.snapshot
    assert snap is not None and snap.data == b"" and snap.file == dl.image_path(60, 1)
    assert snap.size == len(image)
    assert read_image(snap.file, 0, 1000) + read_image(snap.file, 1000, len(image)) == image
    assert read_image(snap.file, len(image) - 5, 100) == image[-5:]
    assert (snap.file.stat().st_mode & 0o777) == 0o600
    assert rec.entries[0].index <= 61 and rec.entries[-1].index == 70
    # A newer file snapshot replaces the image of the older one.
    dl2, _ = reopen(tmp_path)
    dl2.save_snapshot(file_snapshot(dl2, 65, 1, b"newer image"))
    assert [p.name for p in tmp_path.glob("image-*.db")] == [dl2.image_path(65, 1).name]
    dl2.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot is not None and rec.snapshot.file is not None
    assert read_image(rec.snapshot.file, 0, 100) == b"newer image"


def test_a_damaged_or_missing_snapshot_image_refuses_to_start(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    image = os.urandom(100_000)
    snap = file_snapshot(dl, 5, 2, image)
    dl.save_snapshot(snap)
    dl.close()
    assert snap.file is not None
    damaged = bytearray(image)
    damaged[50_000] ^= 1
    snap.file.write_bytes(damaged)
    with pytest.raises(LogCorrupt, match="does not match its checksum"):
        reopen(tmp_path)
    snap.file.unlink()
    with pytest.raises(LogCorrupt, match="missing"):
        reopen(tmp_path)


def test_strays_are_deleted_and_the_newer_of_two_snapshot_kinds_wins(tmp_path: Path) -> None:
    """A crash can leave an unfinished incoming image, an image no meta names
    (made, not yet saved), or both snapshot kinds (between writing one and
    deleting the other): open keeps the newest snapshot and deletes the rest."""
    dl, _ = reopen(tmp_path)
    dl.save_snapshot(file_snapshot(dl, 5, 1, b"file image"))
    dl.close()
    (tmp_path / "incoming.tmp").write_bytes(b"half an image")
    dl.image_path(9, 1).write_bytes(b"never saved")
    inline = Snapshot(SnapshotMeta(3, 1, ConfState(("a",))), b"older inline")
    meta = durable_log.encode_message(inline.meta)
    (tmp_path / "snapshot").write_bytes(durable_log._LEN.pack(len(meta)) + meta + inline.data)
    _, rec = reopen(tmp_path)
    assert rec.snapshot is not None and rec.snapshot.meta.index == 5
    assert rec.snapshot.file is not None and rec.snapshot.size == len(b"file image")
    assert read_image(rec.snapshot.file, 0, 100) == b"file image"
    assert sorted(p.name for p in tmp_path.iterdir() if "image" in p.name or "tmp" in p.name) == [
        dl.image_path(5, 1).name
    ]
    # An inline snapshot newer than the file one wins, and saving it drops the file.
    dl3, _ = reopen(tmp_path)
    dl3.save_snapshot(Snapshot(SnapshotMeta(8, 1, ConfState(("a",))), b"newer inline"))
    assert not list(tmp_path.glob("image-*.db")) and not (tmp_path / "snapshot.meta").exists()
    dl3.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot is not None and rec.snapshot.data == b"newer inline"


def test_saving_a_snapshot_keeps_a_newer_image_received_meanwhile(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    dl.save_snapshot(file_snapshot(dl, 5, 1, b"old"))
    received = file_snapshot(dl, 40, 2, b"received from the leader")
    dl.save_snapshot(file_snapshot(dl, 10, 1, b"made here"))
    assert received.file is not None and received.file.exists()
    assert not dl.image_path(5, 1).exists()
    dl.save(Ready(snapshot=received))
    assert [p.name for p in tmp_path.glob("image-*.db")] == [received.file.name]


def test_a_file_sink_writes_chunks_to_disk_and_checks_the_whole(tmp_path: Path) -> None:
    dl, _ = reopen(tmp_path)
    image = os.urandom(1_000_000)
    meta = SnapshotMeta(7, 3, ConfState(("a",)), image_checksum(image))
    sink = FileSink(dl, meta)
    for at in range(0, len(image), 300_000):
        sink.write(image[at : at + 300_000])
        assert (tmp_path / "incoming.tmp").stat().st_size == min(at + 300_000, len(image))
    assert sink.size == len(image)
    snap = sink.finish()
    assert snap is not None and snap.file == dl.image_path(7, 3) and snap.file.read_bytes() == image
    assert not (tmp_path / "incoming.tmp").exists()
    # A damaged chunk: nothing is kept.
    bad = FileSink(dl, SnapshotMeta(8, 3, ConfState(("a",)), image_checksum(image)))
    bad.write(image[:-1] + b"\0")
    assert bad.finish() is None
    assert not (tmp_path / "incoming.tmp").exists() and not dl.image_path(8, 3).exists()
    dropped = FileSink(dl, meta)
    dropped.write(b"part")
    dropped.discard()
    assert not (tmp_path / "incoming.tmp").exists()


def test_entries_are_read_back_across_segments_within_a_budget(tmp_path: Path) -> None:
    """`read_entries` gives back what was written, from any segment (a core
    that dropped applied entries from memory asks for them this way), stops
    after the first record past its byte budget, and names a range the log
    does not hold instead of returning less."""
    dl, _ = reopen(tmp_path, segment_bytes=600)
    written = entries(1, 40, size=50)
    for lo in range(0, 40, 7):
        dl.save(Ready(entries=written[lo : lo + 7]))
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    assert dl.read_entries(1, 41, 1 << 30) == written
    assert dl.read_entries(9, 23, 1 << 30) == written[8:22]
    some = dl.read_entries(5, 41, 200)  # records are about 80 bytes
    assert 1 <= len(some) <= 4 and some == written[4 : 4 + len(some)]
    assert dl.read_entries(7, 8, 0) == [written[6]]  # at least one entry
    # Entries written after the read-back began are found too (the same log object).
    dl.save(Ready(entries=entries(41, 45, size=50)))
    assert dl.read_entries(38, 46, 1 << 30) == [*written[37:], *entries(41, 45, size=50)]
    with pytest.raises(LogCorrupt):
        dl.read_entries(44, 50, 1 << 30)
    # A record damaged on disk is refused rather than sent to a follower.
    last = sorted(tmp_path.glob("seg-*.log"))[-1]
    data = bytearray(last.read_bytes())
    data[-5] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt):
        dl.read_entries(45, 46, 1 << 30)
    dl.close()
