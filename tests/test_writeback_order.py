"""The mount's write-back against a fake metadata client: what is held back
under a delegation reaches the leader before a synchronous change of the
same directory. That change ends the delegation at the leader (or continues
it under a new grant), and the leader refuses a flush made under the old
grant: `benchmarks/tools_cpu.sh` lost held-back files of `tar x` that way,
when tar set a directory's times in the last MARGIN_S of its delegation."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from prismfs.errors import AlreadyExists, PrismError
from prismfs.fuse.deferred import MountOptions
from prismfs.fuse.leased import MARGIN_S, DirCopy
from prismfs.fuse.ops import PrismOperations
from prismfs.meta.commands import Attr, MetaCommand, Mkdir, Mknod, SetAttr, Symlink, Unlink
from prismfs.stats import Stats

DIR = 0o040755
FILE = 0o100644
K = 50  # the delegated directory
GRANT = (1, 5)


class FakeMeta:
    """Records what is sent, in order, with the delegations it carried."""

    session = "s"
    attempt_timeout = 5.0

    def __init__(self) -> None:
        self.pool = SimpleNamespace(stats=Stats())
        self.sent: list[tuple[list[MetaCommand], tuple[Any, ...]]] = []
        self.lease_hooks: Any = None
        self.on_parents: Any = None

    def _attr(self, op: MetaCommand) -> Attr:
        ino = getattr(op, "ino", 0) or 0
        mode = DIR if ino == K else FILE
        return Attr(ino, mode, 1, 0, 0, 0, 1, 1, 1)

    async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
        self.sent.append((list(ops), tuple(kw.get("delegated", ()))))
        await trio.lowlevel.checkpoint()
        return [self._attr(op) for op in ops]

    async def propose(self, op: MetaCommand) -> Attr:
        return (await self.batch([op]))[0]

    async def layout(self, ino: int) -> str:
        return ""

    async def getattr(self, ino: int) -> Attr:
        return Attr(ino, DIR, 2, 0, 0, 0, 1, 1, 1)

    async def reserve_inodes(self, n: int) -> range:
        return range(1000, 1000 + n)


def ctx() -> Any:
    return SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)


def fields_of(*updated: str) -> SimpleNamespace:
    """pyfuse3's SetattrFields with only ``updated`` (mode, uid, ...) set."""
    names = ("mode", "uid", "gid", "atime", "mtime", "size")
    return SimpleNamespace(**{f"update_{n}": n in updated for n in names})


def times_of_directory() -> tuple[Any, Any]:
    attr = SimpleNamespace(st_mode=DIR, st_atime_ns=7, st_mtime_ns=7)
    return attr, fields_of("atime", "mtime")


async def held_create() -> tuple[FakeMeta, PrismOperations]:
    """A mount holding directory K delegated, with a create held back in it."""
    meta = FakeMeta()
    ops = PrismOperations(meta, None, MountOptions())  # type: ignore[arg-type]
    assert ops._leases is not None
    now = trio.current_time()
    ops._leases.held.granted(K, DirCopy(complete=True), GRANT, 2.0, now, 0, exclusive=True)
    await ops.create(K, b"new", FILE, os.O_WRONLY, ctx())
    assert not meta.sent, "the create is held back"
    return meta, ops


async def held_create_then_directory_times(left: float) -> FakeMeta:
    """A create held back in delegated directory K, then K's times set when
    its delegation has ``left`` seconds left."""
    meta, ops = await held_create()
    until = ops._leases.held.peek(K)[1]  # type: ignore[index,union-attr]
    await trio.sleep_until(until - left)
    await ops.setattr(K, *times_of_directory(), None, ctx())
    return meta


def first_index(meta: FakeMeta, kind: type) -> int:
    """The position of the first op of ``kind`` in everything sent, in order."""
    sent = [op for ops, _ in meta.sent for op in ops]
    return next(i for i, op in enumerate(sent) if isinstance(op, kind))


def test_a_synchronous_change_of_a_directory_sends_what_is_held_back_in_it_first() -> None:
    async def main() -> None:
        # Below MARGIN_S the directory's times go the synchronous way...
        meta = await held_create_then_directory_times(MARGIN_S - 0.1)
        mknod, times = first_index(meta, Mknod), first_index(meta, SetAttr)
        # ...after the create, still under the grant it was made under.
        assert mknod < times, meta.sent
        assert meta.sent[mknod][1] == ((K, *GRANT),)
        (op,) = [o for o in meta.sent[times][0] if isinstance(o, SetAttr)]
        assert op.ino == K and op.mtime_ns == 7
        assert meta.pool.stats.counts["fuse.writeback.settled_for_change"] == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_with_time_left_the_change_rides_the_delegation_after_the_create() -> None:
    async def main() -> None:
        meta = await held_create_then_directory_times(MARGIN_S + 0.5)
        # Sent under the delegation, which goes on, but after the create
        # held back in the directory (its times must win over the create's),
        # in the same batch as the create (`_settled_with`).
        assert first_index(meta, Mknod) < first_index(meta, SetAttr), meta.sent
        assert len(meta.sent) == 1, meta.sent
        for _, delegated in meta.sent:
            assert delegated == ((K, *GRANT),)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_directorys_held_times_go_after_what_is_held_back_in_it() -> None:
    """rsync sets a directory's times after its files, whose creates may
    still be held back: whatever sends the held times (here another change
    of this mount) sends those creates first, or they would move the
    directory's times again at the cluster."""

    async def main() -> None:
        meta, ops = await held_create()
        now = trio.current_time()
        ops._recent.put(Attr(K, DIR, 2, 0, 0, 0, 1, 1, 1), now)  # (so its times are held)
        await ops.setattr(K, *times_of_directory(), None, ctx())
        assert not meta.sent, "the create and the directory's times are held back"
        await ops._change(SetAttr(0, 77, mode=0o600))  # another change of this mount
        mknod, times = first_index(meta, Mknod), first_index(meta, SetAttr)
        assert mknod < times, meta.sent

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_held_back_unlinks_and_creates_reach_the_leader_in_one_batch() -> None:
    """A create, then an unlink of another name, both held back: sent in two
    batches (unlinks first), a crash of the mount between them would keep
    the later unlink and lose the earlier create, a hole in what it did."""

    async def main() -> None:
        meta = FakeMeta()
        ops = PrismOperations(meta, None, MountOptions())  # type: ignore[arg-type]
        assert ops._leases is not None
        old = Attr(900, FILE, 1, 0, 0, 0, 1, 1, 1)
        copy = DirCopy(names={b"old": (old, trio.current_time())}, complete=True)
        ops._leases.held.granted(K, copy, GRANT, 2.0, trio.current_time(), 0, exclusive=True)
        await ops.create(K, b"new", FILE, os.O_WRONLY, ctx())
        await ops.unlink(K, b"old", ctx())
        assert not meta.sent, "both are held back"
        await ops._settle()
        (batch,) = [sent for sent, _ in meta.sent if any(isinstance(o, Mknod) for o in sent)]
        assert [type(o) for o in batch] == [Unlink, Mknod], meta.sent
        assert all(isinstance(o, Mknod) or o.ino == 900 for o in batch)
        assert not ops._unlinks and not ops._unlinked

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_change_riding_the_flush_is_sent_once_while_others_queue_more() -> None:
    """A link rides the batch of the held-back unlinks in front of it; an
    unlink another process queues while that batch is on its way goes in a
    batch after it, without the link again (sent twice, it failed as done
    already: mdtest's renames got ENOENT this way)."""

    class SlowMeta(FakeMeta):
        async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
            self.sent.append((list(ops), tuple(kw.get("delegated", ()))))
            await trio.sleep(0.01)
            return [self._attr(op) for op in ops]

    async def main() -> None:
        meta = SlowMeta()
        ops = PrismOperations(meta, None, MountOptions())  # type: ignore[arg-type]
        assert ops._leases is not None
        now = trio.current_time()
        names = {
            f"old{i}".encode(): (Attr(900 + i, FILE, 1, 0, 0, 0, 1, 1, 1), now) for i in range(3)
        }
        copy = DirCopy(names=names, complete=True)  # type: ignore[arg-type]
        ops._leases.held.granted(K, copy, GRANT, 2.0, now, 0, exclusive=True)
        await ops.unlink(K, b"old0", ctx())
        assert not meta.sent, "the unlink is held back"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ops.link, 902, K, b"hard", ctx())
            await trio.sleep(0.005)  # the link's batch is on its way
            await ops.unlink(K, b"old1", ctx())
        sent = [op for batch, _ in meta.sent for op in batch]
        assert [type(op).__name__ for op in sent].count("Link") == 1, meta.sent
        assert [op.name for op in sent if isinstance(op, Unlink)] == [b"old0", b"old1"]
        assert not ops._unlinks

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def delegated_mount(meta: FakeMeta) -> PrismOperations:
    ops = PrismOperations(meta, None, MountOptions())  # type: ignore[arg-type]
    assert ops._leases is not None
    ops._leases.held.granted(
        K, DirCopy(complete=True), GRANT, 2.0, trio.current_time(), 0, exclusive=True
    )
    return ops


def symlink_attr_change() -> tuple[Any, Any]:
    """lchown and utimensat(AT_SYMLINK_NOFOLLOW), as tar makes them."""
    attr = SimpleNamespace(st_uid=7, st_gid=8, st_atime_ns=5, st_mtime_ns=6)
    return attr, fields_of("uid", "gid", "atime", "mtime")


def test_a_symlink_in_a_delegated_directory_is_held_back_and_sent_in_the_order_made() -> None:
    async def main() -> None:
        meta = FakeMeta()
        ops = await delegated_mount(meta)
        await ops.create(K, b"a", FILE, os.O_WRONLY, ctx())
        entry = await ops.symlink(K, b"l", b"../t", ctx())
        await ops.create(K, b"b", FILE, os.O_WRONLY, ctx())
        ino = entry.st_ino
        # Answered here: lookup, getattr, readlink, no xattrs, its attributes set.
        assert (await ops.lookup(K, b"l", ctx())).st_ino == ino
        got = await ops.getattr(ino, ctx())
        assert stat.S_ISLNK(got.st_mode) and got.st_size == 4
        assert await ops.readlink(ino, ctx()) == b"../t"
        assert await ops.listxattr(ino, ctx()) == []
        after = await ops.setattr(ino, *symlink_attr_change(), None, ctx())
        assert (after.st_uid, after.st_gid, after.st_mtime_ns) == (7, 8, 6)
        assert not meta.sent, "all held back"
        assert meta.pool.stats.counts["fuse.writeback.symlinks"] == 1
        await ops._settle()
        ((batch, delegated),) = meta.sent
        kinds = [(type(op).__name__, getattr(op, "name", None)) for op in batch]
        assert kinds == [
            ("Mknod", b"a"),
            ("Symlink", b"l"),
            ("SetAttr", None),
            ("Mknod", b"b"),
        ], kinds
        (link,) = [op for op in batch if isinstance(op, Symlink)]
        assert (link.ino, link.target) == (ino, b"../t")
        assert delegated == ((K, *GRANT),)
        assert not ops._made and not ops._made_ino

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_unlink_of_a_held_back_symlink_goes_after_it() -> None:
    """Held-back unlinks go in front of the creates: the unlink of a symlink
    still held back is sent at once, after it, or it would remove nothing
    and the symlink would stay."""

    async def main() -> None:
        meta = FakeMeta()
        ops = await delegated_mount(meta)
        await ops.symlink(K, b"l", b"t", ctx())
        await ops.unlink(K, b"l", ctx())
        sent = [type(op).__name__ for batch, _ in meta.sent for op in batch]
        assert sent == ["Symlink", "Unlink"], meta.sent
        assert not ops._made and not ops._unlinks

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_held_back_symlink_or_directory_the_leader_refuses_is_forgotten_and_reported(
    monkeypatch: Any,
) -> None:
    # Acknowledged to the application already: the next fsync (here
    # `prismfs sync`) fails with EIO, whatever the leader's reason.
    invalidated = []
    monkeypatch.setattr(
        "pyfuse3.invalidate_entry_async", lambda *a, **kw: invalidated.append(a[:2])
    )

    class Refusing(FakeMeta):
        async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
            results = await super().batch(ops, **kw)
            return [
                AlreadyExists("taken") if isinstance(op, (Symlink, Mkdir)) else r
                for op, r in zip(ops, results, strict=True)
            ]

    async def main() -> None:
        meta = Refusing()
        ops = await delegated_mount(meta)
        entry = await ops.symlink(K, b"l", b"t", ctx())
        await ops._settle()
        assert invalidated == [(K, b"l")]
        assert not ops._made and entry.st_ino not in ops._made_ino
        with pytest.raises(pyfuse3.FUSEError) as err:
            await ops.readlink(entry.st_ino, ctx())
        assert err.value.errno in (errno.ENOENT, errno.EIO)
        with pytest.raises(PrismError) as lost:
            await ops.sync_all()
        assert lost.value.errno == errno.EIO
        await ops.sync_all()  # (once)
        d = (await ops.mkdir(K, b"d", 0o755, ctx())).st_ino
        assert d in ops._made_ino
        await ops._settle()
        assert invalidated[-1] == (K, b"d") and not ops._made_subdirs
        with pytest.raises(PrismError) as lost:
            await ops.sync_all()
        assert lost.value.errno == errno.EIO

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_directory_made_in_a_delegated_one_is_held_back_with_what_is_made_inside() -> None:
    """tar's order: a directory, the files in it, a subdirectory, its times
    set at the end. All of it is held back under the parent's delegation
    (nobody can reach the new directory before its mkdir lands, and a
    recall sends that first); lookups in it ask nobody; it goes in one
    batch, in the order made, its times after its files."""

    async def main() -> None:
        meta = FakeMeta()
        ops = await delegated_mount(meta)
        k_before = (await ops.getattr(K, ctx())).st_nlink
        d = (await ops.mkdir(K, b"d", 0o755, ctx())).st_ino
        assert (await ops.lookup(K, b"d", ctx())).st_ino == d
        got = await ops.getattr(d, ctx())
        assert stat.S_ISDIR(got.st_mode) and got.st_nlink == 2
        assert (await ops.getattr(K, ctx())).st_nlink == k_before + 1
        assert (await ops.lookup(d, b"f", ctx())).st_ino == 0  # free, known here
        await ops.create(d, b"f", FILE, os.O_WRONLY, ctx())
        sub = (await ops.mkdir(d, b"sub", 0o700, ctx())).st_ino
        await ops.symlink(sub, b"l", b"../f", ctx())
        assert (await ops.getattr(d, ctx())).st_nlink == 3
        await ops.setattr(d, *times_of_directory(), None, ctx())
        assert not meta.sent, "all held back"
        assert meta.pool.stats.counts["fuse.lookup.made_here"] == 1
        await ops._settle()
        sent = [op for batch, _ in meta.sent for op in batch]
        kinds = [(type(op).__name__, getattr(op, "parent", getattr(op, "ino", 0))) for op in sent]
        assert kinds == [
            ("Mkdir", K),
            ("Mknod", d),
            ("Mkdir", d),
            ("Symlink", sub),
            ("SetAttr", d),
        ], kinds
        assert [op.ino for op in sent if isinstance(op, Mkdir)] == [d, sub]
        assert {dl for _, dl in meta.sent} == {((K, *GRANT),)}
        assert not ops._made and not ops._made_subdirs

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_times_of_a_directory_made_while_a_flush_is_on_its_way_go_after_it() -> None:
    """``cp -a`` of small directories: one is made, filled and its mode and
    times set while the flush before it is on its way. Its held times must
    stay held until its mkdir is sent, not go in the batch that sends the
    times held before (the leader had no such inode: 13 directories of
    /usr/share/doc kept mode 0700 and the copy's time)."""

    async def main() -> None:
        made: dict[str, int] = {}

        class Busy(FakeMeta):
            async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
                if not made and any(isinstance(op, Mkdir) for op in ops):
                    # the application, meanwhile
                    made["y"] = y = (await prism.mkdir(K, b"y", 0o700, ctx())).st_ino
                    await prism.setattr(y, *times_of_directory(), None, ctx())
                return await super().batch(ops, **kw)

        meta = Busy()
        prism = await delegated_mount(meta)
        x = (await prism.mkdir(K, b"x", 0o700, ctx())).st_ino
        await prism.setattr(x, *times_of_directory(), None, ctx())
        await prism._send_held()
        sent = [op for batch, _ in meta.sent for op in batch]
        assert [type(op) for op in sent] == [Mkdir, SetAttr], sent
        assert made["y"] in prism._made_ino and made["y"] in prism._held
        await prism._settle()
        sent = [op for batch, _ in meta.sent for op in batch]
        order = [(type(op).__name__, getattr(op, "ino", None)) for op in sent]
        assert order == [
            ("Mkdir", x),
            ("SetAttr", x),
            ("Mkdir", made["y"]),
            ("SetAttr", made["y"]),
        ], order

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_times_of_a_directory_wait_for_files_made_in_it_while_it_was_on_its_way() -> None:
    """Files made in a directory while its mkdir is on its way are held
    back under its parent's delegation: its times (set after them) must
    still wait for them, or their creates move the times again (2 of 895
    directories of /usr/share/doc kept the copy's time)."""

    async def main() -> None:
        made: dict[str, int] = {}

        class Busy(FakeMeta):
            async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
                if not made and any(isinstance(op, Mkdir) for op in ops):
                    d = next(op.ino for op in ops if isinstance(op, Mkdir))
                    made["f"] = (await prism.create(d, b"f", FILE, os.O_WRONLY, ctx()))[1].st_ino
                    await prism.setattr(d, *times_of_directory(), None, ctx())
                return await super().batch(ops, **kw)

        meta = Busy()
        prism = await delegated_mount(meta)
        d = (await prism.mkdir(K, b"d", 0o700, ctx())).st_ino
        await prism._settle()
        sent = [op for batch, _ in meta.sent for op in batch]
        order = [(type(op).__name__, getattr(op, "ino", None)) for op in sent]
        assert order == [("Mkdir", d), ("Mknod", made["f"]), ("SetAttr", d)], order

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_held_back_directory_is_sent_first_by_what_must_follow_it() -> None:
    """A rename or rmdir of a directory still held back (mkdir then mv, as
    configure scripts do) goes after it; a directory made under a
    delegation that ended is no longer written back into."""

    async def main() -> None:
        meta = FakeMeta()
        ops = await delegated_mount(meta)
        await ops.mkdir(K, b"a", 0o755, ctx())
        await ops.rename(K, b"a", K, b"b", 0, ctx())
        sent = [type(op).__name__ for batch, _ in meta.sent for op in batch]
        assert sent == ["Mkdir", "Rename"], meta.sent
        meta.sent.clear()
        d = (await ops.mkdir(K, b"c", 0o755, ctx())).st_ino
        ops._leases.held.recall(K, GRANT)  # type: ignore[union-attr]
        assert ops._provisional(d) is None
        assert ops._defers(d) is None  # a create in it now goes the usual way

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
