"""What a mount remembers between kernel requests, within the kernel's own
timeouts (``attr_timeout``, ``entry_timeout``; 1 s by default).

* `RecentAttrs`: the attributes of directories and symlinks this mount last
  gave the kernel or learned from a change it made (`MetaOk.parents`). A
  create or unlink in a directory makes the kernel drop that directory's
  attributes, and its next path walk asks for them again: the mount answers
  from here instead of asking the cluster. An entry is as old as the moment
  the cluster gave it, never older than the kernel's own copy could be.
* `DirHandle`: an open directory keeps the page of entries it last fetched
  (500 of them; the kernel asks for about 22 per READDIRPLUS request), for
  ``attr_timeout``, and only while this mount has not changed the directory
  since (`DirChanges`): a listing then sees this mount's own changes.
* `HeldAttrs`: chown, chmod and utimens of directories and symlinks held
  back, as ``cp -a`` and ``tar x`` send them one by one after making each:
  they travel with the next namespace change in one Raft entry (or when
  settled: fsync, fsyncdir, ``prismfs sync``, unmount, or after
  ``settle_s``). Until then this mount shows them itself; other mounts see
  them within ``settle_s``, as they see deferred creates.

Plain data structures: the caller passes the time (trio's clock).
"""

from __future__ import annotations

import stat
from collections.abc import Container
from dataclasses import dataclass, field

import msgspec

from prismfs.meta.commands import Attr, DirEntry, DirPage, SetAttr

MAX_KEPT = 100_000  # entries per table before it is simply emptied


class RecentAttrs:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._attrs: dict[int, tuple[float, Attr]] = {}

    def put(self, attr: Attr, now: float) -> None:
        if stat.S_ISDIR(attr.mode) or stat.S_ISLNK(attr.mode):
            if len(self._attrs) > MAX_KEPT:
                self._attrs.clear()
            self._attrs[attr.ino] = (now, attr)

    def get(self, ino: int, now: float) -> Attr | None:
        found = self.get_dated(ino, now)
        return None if found is None else found[1]

    def get_dated(self, ino: int, now: float) -> tuple[float, Attr] | None:
        """(when the cluster gave it, the attributes), if still fresh."""
        found = self._attrs.get(ino)
        if found is None or now - found[0] >= self.ttl:
            return None
        return found

    def drop(self, ino: int) -> None:
        self._attrs.pop(ino, None)


class DirChanges:
    """How many times this mount changed each directory (a kept page of an
    older count is not served)."""

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._epoch = 0

    def bump(self, *inos: int) -> None:
        if len(self._count) > MAX_KEPT:
            self._count.clear()
            self._epoch += 1  # forgotten counts restart at 0: no kept page is good now
        for ino in inos:
            self._count[ino] = self._count.get(ino, 0) + 1

    def of(self, ino: int) -> tuple[int, int]:
        return (self._epoch, self._count.get(ino, 0))


@dataclass
class DirHandle:
    ino: int
    attr: Attr | None = None  # at opendir (relatime)
    page: DirPage | None = None
    page_after: int = 0  # the cookie the kept page was read after
    page_at: float = 0.0
    page_version: tuple[int, int] = (0, 0)

    def keep(self, after: int, page: DirPage, now: float, version: tuple[int, int]) -> None:
        self.page, self.page_after, self.page_at, self.page_version = page, after, now, version

    def entries_after(
        self, cookie: int, now: float, ttl: float, version: tuple[int, int]
    ) -> tuple[tuple[DirEntry, ...], bool] | None:
        """The kept entries after ``cookie`` and whether more follow them, if the
        kept page covers that position and is still good; else None."""
        page = self.page
        if page is None or version != self.page_version or now - self.page_at >= ttl:
            return None
        last = page.entries[-1].cookie if page.entries else self.page_after
        if cookie < self.page_after or (cookie >= last and page.more):
            return None
        return tuple(e for e in page.entries if e.cookie > cookie), page.more


@dataclass
class HeldAttrs:
    ops: list[SetAttr] = field(default_factory=list)
    since: float | None = None  # when the oldest held op was held
    _changes: dict[int, dict[str, int]] = field(default_factory=dict)
    # ops taken to be sent whose answer has not come: still shown (`apply`)
    _sending: list[list[SetAttr]] = field(default_factory=list)

    def __contains__(self, ino: int) -> bool:
        return ino in self._changes or any(op.ino == ino for ops in self._sending for op in ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def hold(self, op: SetAttr, changes: dict[str, int], now: float) -> None:
        self.ops.append(op)
        merged = self._changes.setdefault(op.ino, {})
        merged.update(changes)
        merged["ctime_ns"] = op.now_ns
        if self.since is None:
            self.since = now

    def apply(self, attr: Attr) -> Attr:
        """``attr`` as it will be once the held changes of its inode land."""
        changes: dict[str, int] = {}
        for ops in self._sending:
            for op in ops:
                if op.ino == attr.ino:
                    changes.update(_fields(op))
                    changes["ctime_ns"] = op.now_ns
        changes.update(self._changes.get(attr.ino, {}))
        if not changes:
            return attr
        if "mode" in changes:
            changes["mode"] = stat.S_IFMT(attr.mode) | (changes["mode"] & 0o7777)
        changes["ctime_ns"] = max(attr.ctime_ns, changes["ctime_ns"])
        return msgspec.structs.replace(attr, **changes)

    def take(self, leave: Container[int] = ()) -> list[SetAttr]:
        """The held ops, to be sent; shown until `done` or `put_back`. Those
        of the inodes in ``leave`` (directories held back themselves: their
        changes must not reach the cluster before them) stay held, in order."""
        ops, self.ops, self._changes, since = self.ops, [], {}, self.since
        self.since = None
        stay = [op for op in ops if op.ino in leave] if leave else []
        if stay:
            ops = [op for op in ops if op.ino not in leave]
            for op in stay:
                self.hold(op, _fields(op), since if since is not None else 0.0)
        if ops:
            self._sending.append(ops)
        return ops

    def done(self, ops: list[SetAttr]) -> None:
        """The cluster applied ``ops`` (the list `take` returned)."""
        self._sending = [sent for sent in self._sending if sent is not ops]

    def put_back(self, ops: list[SetAttr], now: float) -> None:
        """Held again, before anything held since (their send failed)."""
        self.done(ops)
        later, self.ops, self._changes, self.since = self.ops, [], {}, None
        for op in [*ops, *later]:
            self.hold(op, _fields(op), now)


def _fields(op: SetAttr) -> dict[str, int]:
    return {
        k: v
        for k in ("mode", "uid", "gid", "atime_ns", "mtime_ns")
        if (v := getattr(op, k)) is not None
    }
