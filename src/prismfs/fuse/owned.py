"""Files a mount made under a delegation it still holds: their attributes
are known here, so a stat of them costs no round trip.

Theory of operation. A file's attributes are not leased (`prismfs.fuse.
leased`): any mount that opened it may write it, and its size and times
change. But a file this mount created in a directory it holds delegated
can be reached by nobody else while that delegation lasts: its inode
number came from this mount's reserved range, its only name is in the
directory, and a lookup or listing of that directory by anyone else
recalls the delegation first (the HTTP API and the CLI too). Until then
every change of the file is one of this mount's own, and each one's
result carries the attributes after it. So the mount keeps them (an
*owned* file) and answers getattr and lookup itself, for as long as:

* the delegation it was made under is held without a break: the same
  grant, or the leader's exclusive continuation of it after a change of
  this mount (a recall, a lapse, a shared grant end it, and with it every
  file owned under it);
* the file keeps that only name: a link, a rename or an unlink of it
  ends its ownership (another directory may be read by others);
* no two changes of it are on their way at once (their answers could come
  in either order), and while one is, the leader is asked.

Changes are told by `MetaClient` through `DirLeases.changing`/`changed`;
held-back changes (`prismfs.fuse.deferred`) are answered from what is held
before this is consulted. Anything not understood ends ownership: the
cost of a mistake here is only a read at the leader.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence

import msgspec

from prismfs.meta.commands import (
    Attr,
    Link,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mknod,
    Open,
    Release,
    Rename,
    Rmdir,
    Symlink,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.leases import GrantId

MAX_OWNED = 200_000  # files tracked at most (beyond: forget them all, ask the leader)

Resolve = Callable[[int, bytes], int | None]
"""The inode a name in a directory refers to if this mount's copy knows: 0
for a name it knows is free, None for one it does not know."""


class OwnedFiles:
    """The owned files of one mount (see the module docstring)."""

    def __init__(self) -> None:
        self._attr: dict[int, tuple[int, Attr]] = {}  # ino -> (its directory, attributes)
        self._by_dir: dict[int, set[int]] = {}  # directory -> its owned files
        self._grant: dict[int, GrantId] = {}  # directory -> the delegation they are owned under
        self._flying: dict[int, int] = {}  # ino -> changes of it on their way
        self._crossed: set[int] = set()  # inodes with two changes on their way at once

    def __len__(self) -> int:
        return len(self._attr)

    def get(self, ino: int, grant_of: Callable[[int], GrantId | None]) -> tuple[int, Attr] | None:
        """(directory, attributes) of owned file ``ino``, if they may be
        given now; ``grant_of(directory)`` is the delegation this mount
        holds on it now (None: none, or not exclusive, or run out)."""
        got = self._attr.get(ino)
        if got is None or ino in self._flying:
            return None
        parent = got[0]
        if grant_of(parent) != self._grant.get(parent):
            self.forget_dir(parent)  # the delegation it was owned under ended
            return None
        return got

    # --- own changes ------------------------------------------------------------------------

    def changing(self, ops: Sequence[MetaCommand], resolve: Resolve) -> None:
        """Changes of this mount are on their way (before they are sent)."""
        for ino in self._touched(ops, resolve):
            count = self._flying.get(ino, 0) + 1
            self._flying[ino] = count
            if count > 1:
                self._crossed.add(ino)
                self._drop(ino)

    def changed(
        self,
        ops: Sequence[MetaCommand],
        result: Callable[[int], object] | None,
        resolve: Resolve,
        owned_under: Callable[[int], GrantId | None],
    ) -> None:
        """Their answers (``result(i)``: op i's decoded result, asked only
        where needed; None: failed or fate unknown). ``owned_under(directory)``:
        the delegation these changes were made under there without a break
        (files they created there become owned under it), else None.
        ``resolve`` must answer as it did in `changing`: call this before the
        change is applied to the copies of the directories."""
        touched = self._touched(ops, resolve)
        if result is None:
            for ino in touched:
                self._drop(ino)
        else:
            # Names made earlier in this very change (a held-back create
            # renamed before it was sent) are not in the copies yet.
            made: dict[tuple[int, bytes], int] = {}

            def here(parent: int, name: bytes) -> int | None:
                return made.get((parent, name)) or resolve(parent, name)

            for n, op in enumerate(ops):
                self._apply(op, lambda n=n: result(n), here, owned_under, made)  # type: ignore[misc]
        for ino in touched:
            left = self._flying.get(ino, 0) - 1
            if left > 0:
                self._flying[ino] = left
            else:
                self._flying.pop(ino, None)
                self._crossed.discard(ino)

    def continued(self, parent: int, old: GrantId, new: GrantId, exclusive: bool) -> None:
        """The leader continued this mount's grant ``old`` on ``parent`` as
        ``new`` after a change of its own (nothing else happened between)."""
        if self._grant.get(parent) != old:
            return
        if exclusive:
            self._grant[parent] = new
        else:
            self.forget_dir(parent)

    def forget_dir(self, parent: int) -> None:
        for ino in self._by_dir.pop(parent, ()):
            self._attr.pop(ino, None)
        self._grant.pop(parent, None)

    def clear(self) -> None:
        self._attr.clear()
        self._by_dir.clear()
        self._grant.clear()

    # --- internals --------------------------------------------------------------------------

    def _apply(
        self,
        op: MetaCommand,
        answer: Callable[[], object],
        resolve: Resolve,
        owned_under: Callable[[int], GrantId | None],
        made: dict[tuple[int, bytes], int],
    ) -> None:
        if isinstance(op, (Open, Release)):
            return  # (attributes unchanged)
        if isinstance(op, (Link, Unlink, Rename, Rmdir)):
            for named in _named(op, resolve):
                self._drop(named)
            if isinstance(op, Rename) and (op.parent, op.name) in made:
                made[(op.new_parent, op.new_name)] = made.pop((op.parent, op.name))
            return
        if isinstance(op, (Mknod, Symlink)):
            result = answer()
            new = result.attr if isinstance(result, MetaOk) else None
            if new is not None:
                made[(op.parent, op.name)] = new.ino
            grant = owned_under(op.parent)
            if (
                grant is not None
                and new is not None
                and not stat.S_ISDIR(new.mode)
                and new.nlink == 1
                and new.ino not in self._crossed
            ):
                self._own(op.parent, grant, new)
            return
        ino = getattr(op, "ino", None)
        if not isinstance(ino, int) or ino not in self._attr:
            return
        parent, attr = self._attr[ino]
        result = answer()
        if isinstance(result, MetaFailed):
            return  # (changed nothing)
        ok = result if isinstance(result, MetaOk) else None
        if ok is not None and ok.attr is not None and ok.attr.ino == ino:
            self._attr[ino] = (parent, ok.attr)
        elif ok is not None and isinstance(op, UpdateAtime):
            atime = max(attr.atime_ns, op.atime_ns)
            self._attr[ino] = (parent, msgspec.structs.replace(attr, atime_ns=atime))
        else:
            self._drop(ino)  # changed in a way not known here

    def _own(self, parent: int, grant: GrantId, attr: Attr) -> None:
        if self._grant.get(parent) != grant:
            self.forget_dir(parent)  # owned under an earlier delegation
            self._grant[parent] = grant
        if len(self._attr) >= MAX_OWNED:
            self.clear()
            self._grant[parent] = grant
        self._attr[attr.ino] = (parent, attr)
        self._by_dir.setdefault(parent, set()).add(attr.ino)

    def _drop(self, ino: int) -> None:
        got = self._attr.pop(ino, None)
        if got is not None:
            files = self._by_dir.get(got[0])
            if files is not None:
                files.discard(ino)

    def _touched(self, ops: Sequence[MetaCommand], resolve: Resolve) -> set[int]:
        """The existing inodes ``ops`` change (a name not resolved here: every
        owned file of its directory, to be safe). One change, in order: it
        may touch an inode several times."""
        out: set[int] = set()
        for op in ops:
            if isinstance(op, (Open, Release, Mknod, Symlink)):
                if isinstance(op, Mknod) and op.ino:
                    out.add(op.ino)  # (a retry may find it made already)
                continue
            if isinstance(op, (Link, Unlink, Rename, Rmdir)):
                out.update(_named(op, resolve))
                for parent, name in _names(op):
                    if resolve(parent, name) is None and parent in self._by_dir:
                        self.forget_dir(parent)  # (it may be one of them)
                continue
            ino = getattr(op, "ino", None)
            if isinstance(ino, int):
                out.add(ino)
        return out


def _names(op: Link | Unlink | Rename | Rmdir) -> list[tuple[int, bytes]]:
    if isinstance(op, Link):
        return [(op.new_parent, op.new_name)]
    if isinstance(op, Rename):
        return [(op.parent, op.name), (op.new_parent, op.new_name)]
    return [(op.parent, op.name)]


def _named(op: Link | Unlink | Rename | Rmdir, resolve: Resolve) -> list[int]:
    """The inodes whose names ``op`` changes (as far as they are known)."""
    out = [op.ino] if isinstance(op, (Link, Unlink)) and op.ino else []
    for parent, name in _names(op):
        ino = resolve(parent, name)
        if ino:
            out.append(ino)
    return out
