"""Snapshots of the namespace in a running driver: made from the database
file beside the Ready loop (never stalling it), kept as a file, and used to
rebuild a replica that lost its database."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import trio

from prismfs.meta.commands import ROOT_INO, Mknod
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus, ConsensusConfig, prepare_bootstrap
from prismfs.wire.codec import encode_message


def mknod(n: int) -> bytes:
    return encode_message(Mknod(1, ROOT_INO, f"f{n}".encode(), stat.S_IFREG | 0o644, 0, 0))


def lose_database(directory: Path) -> None:
    for path in directory.glob("meta.db*"):
        path.unlink()


async def wait_for(condition, what: str, seconds: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def propose_past(consensus: Consensus, stuck: threading.Event, what: str) -> int:
    """Once leader: 25 proposals (a snapshot every 20 starts), then, while
    the snapshot is ``stuck`` in a worker thread, 40 more that must commit
    within 10 s; returns the last sequence number."""
    await wait_for(lambda: consensus.role == "leader", "leadership")
    seq = 0
    for _ in range(25):
        seq += 1
        await consensus.propose("c1", seq, mknod(seq))
    await wait_for(stuck.is_set, what)
    with trio.fail_after(10):
        for _ in range(40):
            seq += 1
            await consensus.propose("c1", seq, mknod(seq))
    return seq


async def test_a_snapshot_is_made_beside_the_loop_and_rebuilds_a_lost_database(
    tmp_path: Path,
) -> None:
    raft_dir = tmp_path / "raft"
    prepare_bootstrap(raft_dir)
    ns = Namespace(tmp_path / "meta.db")
    started, release = threading.Event(), threading.Event()
    real_snapshot_to = ns.snapshot_to

    def slow_snapshot_to(path: Path, **pace: float) -> int | None:
        started.set()
        release.wait(30)  # a copy of a large database, in its worker thread
        return real_snapshot_to(path, **pace)

    ns.snapshot_to = slow_snapshot_to  # type: ignore[method-assign]
    cfg = ConsensusConfig(snapshot_every=20)
    consensus = Consensus("n1", "127.0.0.1:1", raft_dir, None, ns, cfg)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(consensus.run)
        # The copy is stuck in its thread; proposals still commit and apply.
        seq = await propose_past(consensus, started, "the snapshot to start")
        assert ns.applied >= 65
        assert not (raft_dir / "snapshot.meta").exists()
        release.set()
        await wait_for((raft_dir / "snapshot.meta").exists, "the snapshot to be saved")
        await wait_for(lambda: not consensus._compacting, "the compaction to end")
        core = consensus.core
        assert core is not None and core.snapshot is not None
        index = core.snapshot.meta.index
        assert index >= 26 and core.log.offset == index
        assert core.snapshot.file == consensus.log.image_path(index, core.snapshot.meta.term)
        assert [p.name for p in raft_dir.glob("image-*.db")] == [core.snapshot.file.name]
        assert not (raft_dir / "image.tmp").exists()
        digest = ns.digest()
        nursery.cancel_scope.cancel()
    ns.db.close()
    # The database is lost: the replica restores the image, then replays the log after it.
    lose_database(tmp_path)
    rebuilt = Namespace(tmp_path / "meta.db")
    again = Consensus("n1", "127.0.0.1:1", raft_dir, None, rebuilt, cfg)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        await wait_for(lambda: again.role == "leader", "leadership")
        await wait_for(lambda: rebuilt.applied >= seq + 1, "the replay")
        assert rebuilt.digest() == digest
        nursery.cancel_scope.cancel()
    rebuilt.db.close()


async def test_hashing_a_snapshot_image_holds_no_lock_the_log_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's checksum is computed before the lock the Ready loop
    persists under is taken: hashing gigabytes (a 4 GB image took seconds)
    must not hold the log's fsyncs, or the leader loses its quorum."""
    from prismfs.node import consensus as consensus_module

    raft_dir = tmp_path / "raft"
    prepare_bootstrap(raft_dir)
    ns = Namespace(tmp_path / "meta.db")
    started, release = threading.Event(), threading.Event()
    real_digest = consensus_module.file_digest

    def slow_digest(path: Path) -> tuple[bytes, int]:
        started.set()
        release.wait(30)
        return real_digest(path)

    monkeypatch.setattr(consensus_module, "file_digest", slow_digest)
    cfg = ConsensusConfig(snapshot_every=20)
    consensus = Consensus("n1", "127.0.0.1:1", raft_dir, None, ns, cfg)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(consensus.run)
        # Persisted, committed and applied while the hashing is stuck.
        seq = await propose_past(consensus, started, "the hashing to start")
        assert ns.applied >= seq
        release.set()
        await wait_for((raft_dir / "snapshot.meta").exists, "the snapshot to be saved")
        await wait_for(lambda: not consensus._compacting, "the compaction to end")
        core = consensus.core
        assert core is not None and core.snapshot is not None
        assert [p.name for p in raft_dir.glob("image-*.db")] == [core.snapshot.file.name]
        nursery.cancel_scope.cancel()
    ns.db.close()


async def test_a_snapshot_is_also_made_after_enough_bytes_of_entries(tmp_path: Path) -> None:
    """Few, large entries (batches of creates) make a snapshot by their bytes,
    long before their count would: the log between snapshots is in memory."""
    from prismfs.meta.commands import Batch

    raft_dir = tmp_path / "raft"
    prepare_bootstrap(raft_dir)
    ns = Namespace(tmp_path / "meta.db")
    cfg = ConsensusConfig(snapshot_every=10**6, snapshot_bytes=64 * 1024)
    consensus = Consensus("n1", "127.0.0.1:1", raft_dir, None, ns, cfg)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(consensus.run)
        await wait_for(lambda: consensus.role == "leader", "leadership")
        for seq in range(1, 4):  # 3 entries of about 40 KB
            ops = tuple(mknod(seq * 1000 + n) for n in range(500))
            await consensus.propose("c1", seq, encode_message(Batch(0, ops)))
        await wait_for((raft_dir / "snapshot.meta").exists, "a snapshot")
        await wait_for(lambda: not consensus._compacting, "the compaction to end")
        core = consensus.core
        assert core is not None and core.log.offset >= 3
        nursery.cancel_scope.cancel()
    ns.db.close()


def test_an_old_image_is_cut_down_a_step_at_a_time_before_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freeing a large image at once is one long journal commit the log's
    fsyncs wait behind: it is truncated a step at a time first."""
    import os

    from prismfs.node import consensus

    big, small = tmp_path / "big.img", tmp_path / "small.img"
    big.write_bytes(b"x" * (10 << 20) + b"y")
    small.write_bytes(b"z" * 100)
    sizes: list[int] = []
    real = os.ftruncate

    def ftruncate(fd: int, size: int) -> None:
        sizes.append(size)
        real(fd, size)

    monkeypatch.setattr(consensus.os, "ftruncate", ftruncate)
    consensus._unlink_all([big, small, tmp_path / "gone.img"], step=1 << 20, pause=0)
    assert not big.exists() and not small.exists()
    assert sizes == [(10 << 20) + 1 - n * (1 << 20) for n in range(1, 11)]
