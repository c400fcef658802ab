"""`prismfs.fuse.caches` without a kernel: freshness, kept pages, held changes; and
what the mount puts in one batch (against a fake cluster)."""

from __future__ import annotations

import stat
from types import SimpleNamespace

import pytest
import trio

from prismfs.errors import Unavailable
from prismfs.fuse.caches import DirChanges, DirHandle, HeldAttrs, RecentAttrs
from prismfs.fuse.deferred import DeferredWork, MountOptions
from prismfs.meta.commands import (
    Attr,
    DirEntry,
    DirPage,
    MetaCommand,
    Mkdir,
    Open,
    SetAttr,
    Unlink,
)
from prismfs.stats import Stats


def attr(ino: int, mode: int = stat.S_IFDIR | 0o755) -> Attr:
    return Attr(ino, mode, 2, 0, 0, 0, 1, 1, 1)


def test_recent_attrs_keep_directories_and_symlinks_for_the_ttl() -> None:
    r = RecentAttrs(1.0)
    r.put(attr(5), now=10.0)
    r.put(attr(6, stat.S_IFREG | 0o644), now=10.0)  # files: never (close-to-open)
    r.put(attr(7, stat.S_IFLNK | 0o777), now=10.0)
    assert r.get(5, 10.9) is not None and r.get(7, 10.9) is not None
    assert r.get(6, 10.0) is None
    assert r.get(5, 11.0) is None
    r.drop(7)
    assert r.get(7, 10.5) is None


def test_a_kept_page_serves_positions_it_covers_while_the_directory_is_unchanged() -> None:
    changes = DirChanges()
    entries = tuple(DirEntry(f"n{i}".encode(), i, attr(i + 10)) for i in range(1, 6))
    page = DirPage(entries=entries, more=True)
    dh = DirHandle(3)
    dh.keep(0, page, now=5.0, version=changes.of(3))
    last = entries[-1].cookie
    got = dh.entries_after(entries[1].cookie, 5.5, 1.0, changes.of(3))
    assert got is not None and got[0] == entries[2:] and got[1] is True
    assert dh.entries_after(last + 1, 5.5, 1.0, changes.of(3)) is None  # beyond: next page
    # right after the last kept entry, with more to come: the next page (an
    # empty answer here made readdir spin until the page grew old, 1 s a page)
    assert dh.entries_after(last, 5.5, 1.0, changes.of(3)) is None
    assert dh.entries_after(0, 6.0, 1.0, changes.of(3)) is None  # too old
    changes.bump(3)
    assert dh.entries_after(0, 5.5, 1.0, changes.of(3)) is None  # changed here since


def test_held_changes_merge_apply_and_go_back_in_order() -> None:
    held = HeldAttrs()
    a = attr(9)
    held.hold(SetAttr(100, 9, uid=5), {"uid": 5}, now=1.0)
    held.hold(SetAttr(200, 9, mode=0o700), {"mode": 0o700}, now=2.0)
    assert 9 in held and held.since == 1.0
    shown = held.apply(a)
    assert (shown.uid, shown.mode, shown.ctime_ns) == (5, stat.S_IFDIR | 0o700, 200)
    ops = held.take()
    assert [op.now_ns for op in ops] == [100, 200] and not held
    held.hold(SetAttr(300, 9, gid=7), {"gid": 7}, now=3.0)
    held.put_back(ops, now=4.0)
    assert [op.now_ns for op in held.ops] == [100, 200, 300]
    again = held.apply(a)
    assert (again.uid, again.gid, again.mode, again.ctime_ns) == (5, 7, stat.S_IFDIR | 0o700, 300)


def test_held_changes_stay_shown_while_they_are_on_their_way() -> None:
    """Between `take` and the cluster's answer a getattr must not fall back to
    the attributes from before them (tar x then tar -d found a mode wrong)."""
    held = HeldAttrs()
    a = attr(9)
    held.hold(SetAttr(100, 9, mode=0o711), {"mode": 0o711}, now=1.0)
    ops = held.take()
    assert not held and 9 in held
    assert held.apply(a).mode == stat.S_IFDIR | 0o711
    held.done(ops)
    assert 9 not in held and held.apply(a) == a


# --- what travels with a namespace change (`DeferredWork._change`), with a fake cluster ----------


class FakeMeta:
    """Records what the mount sends; ``fail`` makes the next send fail."""

    def __init__(self) -> None:
        self.session = "s"
        self.pool = SimpleNamespace(stats=Stats())
        self.sent: list[list[MetaCommand]] = []
        self.fail = False

    async def propose(self, op: MetaCommand) -> None:
        await self.batch([op])

    async def batch(self, ops: list[MetaCommand], **_: object) -> list[None]:
        if self.fail:
            self.fail = False
            raise Unavailable("no leader")
        self.sent.append(list(ops))
        return [None] * len(ops)


def test_an_unlink_or_rename_carries_the_queued_opens_in_its_entry() -> None:
    # A file opened here (its open queued, not yet registered) and then
    # unlinked here: the open must reach the cluster no later than the unlink,
    # or the file is an orphan without an open (freed after the grace).
    meta = FakeMeta()
    work = DeferredWork(meta, None, MountOptions())  # type: ignore[arg-type]

    async def main() -> None:
        work._queue_open("s", 42)
        work._queue_open("old-session", 43)  # a lost session's: never sent
        meta.fail = True
        with pytest.raises(Unavailable):
            await work._change(Unlink(1, 1, b"f"), opens=True)
        assert work._opens == {("s", 42): 1}  # kept for the retry
        await work._change(Unlink(2, 1, b"f"), opens=True)
        ((open_op, unlink),) = meta.sent
        assert isinstance(open_op, Open) and open_op.ino == 42 and isinstance(unlink, Unlink)
        assert work._opens == {}
        work._queue_open("s", 44)
        await work._change(Mkdir(3, 1, b"d", 0o755, 0, 0))  # not one that frees a file
        assert meta.sent[-1] == [Mkdir(3, 1, b"d", 0o755, 0, 0)] and work._opens

    trio.run(main)
