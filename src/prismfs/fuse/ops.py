"""The FUSE operations: POSIX calls from the kernel onto the cluster.

Theory of operation. Every handler goes through `_op`: a `PrismError`
becomes its errno (`NotFound` -> ENOENT, ...), a transient error that
outlived the retries (cluster unreachable for ``failtimeout``) becomes EIO,
and anything else is logged with its traceback and becomes EIO. Nothing may
escape to pyfuse3: an exception there ends the whole mount.

Inode numbers are the namespace's (the root is 1 in both). Metadata calls go
to the Raft leader through `MetaClient` (exactly-once retries, so a leader
change is invisible); file contents through `OpenFile`, one per inode
shared by all file handles of this mount (so two descriptors of one
process, or of two processes, see each other's writes at once). Writes are
buffered per inode up to ``writeback_mb`` and committed on flush (close),
fsync, or when the buffer fills: close-to-open consistency between mounts.

The kernel checks permissions (``default_permissions``) from the attributes
returned here; attributes and entries are cached by the kernel for
``attr_timeout``/``entry_timeout`` seconds.

Work held back (deferred creates and unlinks, held attribute changes,
batched releases) lives in `prismfs.fuse.deferred`; what the mount caches
between kernel requests in `prismfs.fuse.caches`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import stat
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import msgspec
import pyfuse3
import trio

from prismfs.client.data import DataClient
from prismfs.client.files import OpenFile, layout_for
from prismfs.data.layout import LAYOUT_XATTR, Layout
from prismfs.errors import NoAttribute, NotFound, PrismError
from prismfs.exception_groups import single_exception
from prismfs.fuse import kernel_root
from prismfs.fuse.caches import DirHandle
from prismfs.fuse.capacity import node_disks, usable
from prismfs.fuse.deferred import DeferredWork, Handle, Made, MountOptions
from prismfs.fuse.kernel_root import kernel_ino
from prismfs.meta.client import MetaClient, now_ns
from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attr,
    Link,
    Mkdir,
    Mknod,
    Rename,
    Rmdir,
    SetAttr,
    Symlink,
    Unlink,
)
from prismfs.meta.schema import check_name, inherit_from_parent
from prismfs.stats import Stats

log = logging.getLogger("prismfs.fuse")


P = ParamSpec("P")
R = TypeVar("R")


_MAKES = {"create": 1, "mknod": 1, "mkdir": 1, "symlink": 1, "link": 2}
"""Handlers that make a name: where (parent, name) are in their arguments."""


def _op(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    name = f"fuse.{func.__name__}"

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        stats: Stats = args[0].stats  # type: ignore[attr-defined]
        start = trio.current_time()
        try:
            return await func(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            stats.count(f"{name}.{errno.errorcode.get(exc.errno, exc.errno)}")
            raise
        except PrismError as exc:
            code = errno.EIO if exc.transient else exc.errno or errno.EIO
            stats.count(f"{name}.{errno.errorcode.get(code, code)}")
            if code == errno.EEXIST and func.__name__ in _MAKES:
                # Another mount made the name first: the kernel may still hold
                # the "no such name" this mount gave it before (the recall's
                # invalidation can run before that answer reached the kernel).
                parent, made = args[_MAKES[func.__name__]], args[_MAKES[func.__name__] + 1]
                pyfuse3.invalidate_entry_async(kernel_ino(parent), made, ignore_enoent=True)  # type: ignore[arg-type]
            if exc.transient:
                log.warning("%s: cluster unavailable: %s", func.__name__, exc.message)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            stats.count(f"{name}.EIO")
            log.exception("%s failed; answering EIO", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            stats.observe(name, trio.current_time() - start)

    return wrapper


class PrismOperations(DeferredWork):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, meta: MetaClient, data: DataClient, options: MountOptions) -> None:
        super().__init__(meta, data, options)
        meta.on_parents = self._note_parents

    async def _layout(self, directory: int) -> tuple[Layout, Attr]:
        """The layout for new files in ``directory`` and its attributes, cached
        for ``entry_timeout``."""
        made = self._made_ino.get(directory)
        if made is not None and stat.S_ISDIR(made.attr.mode):
            # Held back here: it has no layout of its own (yet), so its parent's.
            layout, _ = await self._layout(made.name[0])
            return layout, made.attr
        now = trio.current_time()
        cached = self._layouts.get(directory)
        if cached is not None and now - cached[0] < max(self.opts.entry_timeout, 0.1):
            return cached[1], cached[2]
        got: dict[str, Any] = {}

        async def fetch(key: str, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
            got[key] = await fn()

        with single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, "layout", lambda: layout_for(self.meta, directory))
                nursery.start_soon(fetch, "attr", lambda: self.meta.getattr(directory))
        if len(self._layouts) > 10_000:
            self._layouts.clear()
        self._layouts[directory] = (now, got["layout"], got["attr"])
        return got["layout"], got["attr"]

    # --- helpers ---------------------------------------------------------------------------

    def _negative(self, parent: int, name: bytes, leased: float = 0.0) -> pyfuse3.EntryAttributes:
        """No such name, and the kernel may remember that for ``entry_timeout``
        (a create through this mount replaces its negative entry)."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self._entry_timeout(parent, name, leased)
        return e

    def _entry_timeout(self, parent: int, name: bytes, leased: float | None = None) -> float:
        """How long the kernel may keep ``name`` in ``parent``: without leases
        ``entry_timeout``; with them what is left of this mount's lease on
        the directory (the name is then invalidated on a recall), else 0."""
        leases = self._leases
        if leases is None:
            return self.opts.entry_timeout
        now = trio.current_time()
        left = leases.left(parent, now) if leased is None else leased
        if left <= 0:
            return 0.0
        leases.told(parent, name, now + left)
        return left

    def _named(
        self, parent: int, name: bytes, attr: Attr, leased: float | None = None
    ) -> pyfuse3.EntryAttributes:
        """The entry of ``name`` in ``parent`` for the kernel (see `_entry_timeout`)."""
        e = self._entry(attr)
        e.entry_timeout = self._entry_timeout(parent, name, leased)
        return e

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        if a.ino in self._held:
            a = self._held.apply(a)
        unlinked_at = self._unlink_dirs.get(a.ino)
        if unlinked_at is not None and unlinked_at > min(a.mtime_ns, a.ctime_ns):
            # Deferred unlinks in this directory: it shows the times they will set.
            a = msgspec.structs.replace(
                a, mtime_ns=max(a.mtime_ns, unlinked_at), ctime_ns=max(a.ctime_ns, unlinked_at)
            )
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.st_mode = a.mode
        e.st_nlink = a.nlink + self._made_subdirs.get(a.ino, 0)  # (mkdirs held back in it)
        e.st_uid = a.uid
        e.st_gid = a.gid
        handle = self._open.get(a.ino)
        # Writes buffered or being committed here are ahead of the namespace:
        # their size, and the time of the last one as mtime and ctime.
        pending = handle is not None and (
            handle.file._dirty or handle.file._flushing or handle.pending
        )
        size, mtime, ctime = a.size, a.mtime_ns, a.ctime_ns
        if handle is not None and pending:
            size = handle.file.size
            if handle.file.modified_ns:  # (0: no write since its times were set)
                mtime = max(mtime, handle.file.modified_ns)
                ctime = max(ctime, handle.file.modified_ns)
        renamed_at = self._renamed_at.get(a.ino)
        if renamed_at is not None:
            ctime = max(ctime, renamed_at)  # a rename of it held back here
        created_at = self._create_dirs.get(a.ino)
        if created_at is not None and created_at > min(mtime, ctime):
            # Creates held back in this directory: it shows the times they set.
            mtime, ctime = max(mtime, created_at), max(ctime, created_at)
        e.st_size = size
        e.st_rdev = a.rdev
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = mtime
        e.st_ctime_ns = ctime
        e.st_blksize = 128 * 1024
        e.st_blocks = -(-size // 512)
        e.attr_timeout = self.opts.attr_timeout
        e.entry_timeout = self.opts.entry_timeout
        if len(self._told) > 200_000:
            self._told.clear()  # unknown again: the next open invalidates
            self._told_lossy = True
        self._told[a.ino] = (size, mtime, ctime)
        return e

    def _fresh_kernel_attrs(self, attr: Attr) -> None:
        """Close-to-open: at an open, the kernel may hold attributes it got up
        to ``attr_timeout`` ago (its reads stop at the size it holds). If they
        are not what the namespace says now, make it ask again."""
        told = self._told.get(attr.ino)
        e = self._entry(attr)
        if told != (e.st_size, e.st_mtime_ns, e.st_ctime_ns):
            # Attributes only: no lock of the open in progress is involved, and
            # the kernel drops a GETATTR answer older than this notice.
            with contextlib.suppress(OSError):  # ENOENT: the kernel holds nothing
                pyfuse3.invalidate_inode(kernel_ino(attr.ino), attr_only=True)

    def _names_ino(self, parent: int, name: bytes) -> int | None:
        """The inode ``name`` in ``parent`` refers to, as far as this mount
        knows: what it told the kernel, or its leased copy of the directory."""
        ino = self._names.get((parent, name))
        if ino is None and self._leases is not None:
            ino = self._leases.ino_of(parent, name, trio.current_time())
        return ino

    def _writable(self) -> None:
        if self.opts.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    # --- names -----------------------------------------------------------------------------

    @_op
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self.getattr(parent_inode, ctx)
        if (parent_inode, name) in self._unlinks:
            raise pyfuse3.FUSEError(errno.ENOENT)  # unlinked here, not yet at the cluster
        moved = self._renamed_to.get((parent_inode, name))
        if moved is not None:
            return await self._moved_here(parent_inode, name, *moved)
        handle = self._deferred(self._pending.get((parent_inode, name), 0))
        if handle is not None and handle.attr is not None:
            return self._entry(handle.attr)
        made = self._made.get((parent_inode, name))
        if made is not None:
            return self._entry(made.attr)
        if self._leases is not None:
            return await self._leased_lookup(parent_inode, name)
        known = self._recently_named(parent_inode, name)
        if known is not None:
            return known
        try:
            attr = await self.meta.lookup(parent_inode, name)
        except NotFound:
            self.stats.count("fuse.lookup.negative")
            return self._negative(parent_inode, name)
        self._recent.put(attr, trio.current_time())
        if attr.ino in self._unlinked:
            # Another name of it was unlinked here and the cluster does not know
            # yet: its link count and ctime are about to change.
            await self._settle_unlinks()
            attr = await self.meta.getattr(attr.ino)
        return self._named(parent_inode, name, self._known(parent_inode, name, attr))

    async def _leased_lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """A lookup answered from this mount's copy of the directory while its
        lease lasts, else by the leader (with a lease, if it grants one)."""
        leases = self._leases
        assert leases is not None
        check_name(name)  # a name too long is ENAMETOOLONG, never "not there"
        now = trio.current_time()
        under = self._provisional(parent)
        if under is not None:
            # A directory made here and held back: every name in it was made
            # here too (`lookup` checked those), so any other is free.
            self.stats.count("fuse.lookup.made_here")
            return self._negative(parent, name, leases.left(under[0], now))
        known, attr, left, attr_left = leases.name(parent, name, now, self.opts.attr_timeout)
        if known and (attr is None or attr.ino not in self._unlinked):
            self.stats.count("fuse.lookup.leased")
            if attr is None:
                return self._negative(parent, name, left)
            e = self._named(parent, name, self._known(parent, name, attr), left)
            e.attr_timeout = min(e.attr_timeout, attr_left)
            return e
        unasked = self._unasked(parent, name, now)
        if unasked is not None:
            self.stats.count("fuse.lookup.leased_name")
            return unasked
        attr, left = await leases.lookup(parent, name)
        if attr is None:
            self.stats.count("fuse.lookup.negative")
            return self._negative(parent, name, left)
        self._recent.put(attr, trio.current_time())
        if attr.ino in self._unlinked:
            await self._settle_unlinks()
            attr = await self.meta.getattr(attr.ino)
            left = leases.left(parent, trio.current_time())  # (a recall may have come)
        return self._named(parent, name, self._known(parent, name, attr), left)

    def _unasked(self, parent: int, name: bytes, now: float) -> pyfuse3.EntryAttributes | None:
        """The entry of a file or symlink whose name and inode the lease on
        ``parent`` vouches for (a change of either would recall it) but whose
        attributes are too old to give (they are not leased: a write through
        another mount changes them). Given with ``attr_timeout`` 0, so the
        kernel asks (getattr) before it uses them: a stat, an open, its
        permission checks (``default_permissions`` refreshes expired ones).
        What it takes without asking is the inode and its type, which is all
        an unlink or a rename needs, and the size it already holds: the
        answer carries the size and times last given to the kernel, so it
        never moves them back (a smaller size would cut an mmap of the file
        short). None where that is not enough: the file is open here, has a
        name unlinked here, the kernel may hold attributes this mount lost
        track of, or the directory is sticky (the kernel checks the owner of
        what is removed from it with the uid it holds)."""
        vouched = self._vouched(parent, name, now)
        if vouched is None:
            return None
        attr, left = vouched
        e = self._named(parent, name, self._known(parent, name, attr), left)
        e.attr_timeout = 0
        return e

    def _vouched(self, parent: int, name: bytes, now: float) -> tuple[Attr, float] | None:
        """What `_unasked` gives: the attributes of a file or symlink the
        lease on ``parent`` vouches for, with the size and times last given
        to the kernel, and the seconds the lease has left; None where that
        is not enough (see `_unasked`)."""
        leases = self._leases
        assert leases is not None
        known = leases.named(parent, name, now)
        if known is None:
            return None
        attr, dir_attr, left = known
        if attr.ino in self._open or attr.ino in self._unlinked or dir_attr.mode & stat.S_ISVTX:
            return None
        told = self._told.get(attr.ino)
        if told is not None:
            attr = msgspec.structs.replace(attr, size=told[0], mtime_ns=told[1], ctime_ns=told[2])
        elif self._told_lossy:
            return None
        return attr, left

    async def _moved_here(
        self, parent: int, name: bytes, ino: int, old: bytes
    ) -> pyfuse3.EntryAttributes:
        """The entry of a name a held-back rename gave ``ino`` (from ``old``):
        its attributes this mount's own if it owns the file; else, as
        `_unasked` gives a name the lease vouches for, the inode with an
        attribute timeout of 0 (the kernel asks before it uses them; an
        unlink needs none: mdtest's unlinks right after its renames, whose
        flush is on its way); else the cluster's."""
        assert self._leases is not None
        now = trio.current_time()
        self.stats.count("fuse.lookup.renamed_here")
        owned = self._leases.owned_attr(ino, now)
        if owned is not None:
            attr, attr_left = owned
        else:
            vouched = self._vouched(parent, old, now)
            if vouched is not None and vouched[0].ino == ino:
                e = self._named(parent, name, self._known(parent, name, vouched[0]), vouched[1])
                e.attr_timeout = 0
                return e
            attr, attr_left = await self.meta.getattr(ino), self.opts.attr_timeout
        e = self._named(parent, name, self._known(parent, name, attr))
        e.attr_timeout = min(e.attr_timeout, attr_left)
        return e

    def _recently_named(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes | None:
        """A directory or symlink the cluster named ``name`` in ``parent`` less
        than ``entry_timeout`` ago, with its attributes of less than
        ``attr_timeout`` ago: the answer the kernel itself could have kept.
        The kernel may keep it only for what is left of those timeouts."""
        key = (parent, name)
        at = self._named_at.get(key)
        now = trio.current_time()
        if at is None or now - at >= self.opts.entry_timeout:
            return None
        dated = self._recent.get_dated(self._names[key], now)
        if dated is None:
            return None
        self.stats.count("fuse.lookup.cached")
        e = self._entry(dated[1])
        e.entry_timeout = max(0.0, self.opts.entry_timeout - (now - at))
        e.attr_timeout = max(0.0, self.opts.attr_timeout - (now - dated[0]))
        return e

    async def forget(self, inode_list: Any) -> None:
        return None

    @_op
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        handle = self._deferred(inode)
        if handle is not None and handle.attr is not None:
            return self._entry(handle.attr)
        made = self._made_ino.get(inode)
        if made is not None:
            return self._entry(made.attr)
        if inode in self._unlinked:  # its link count is about to change
            await self._settle_unlinks()
        now = trio.current_time()
        leased = None
        if self._leases is not None:
            leased = self._leases.dir_attr(inode, now)
            if leased is None:
                leased = self._leases.owned_attr(inode, now)
                if leased is not None:
                    self.stats.count("fuse.getattr.owned")
        if leased is not None:
            self.stats.count("fuse.getattr.leased")
            e = self._entry(leased[0])
            e.attr_timeout = min(e.attr_timeout, leased[1])
            return e
        recent = self._recent.get_dated(inode, now)
        if recent is not None:
            self.stats.count("fuse.getattr.cached")
            e = self._entry(recent[1])
            e.attr_timeout = max(0.0, self.opts.attr_timeout - (now - recent[0]))
            return e
        if self._leases is not None and self._leases.is_dir(inode):
            attr, _ = await self._leases.getattr(inode)
        else:
            attr = await self.meta.getattr(inode)
            if self._leases is not None:
                self._leases.saw(attr)
        self._recent.put(attr, now)
        return self._entry(attr)

    @_op
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        self._layouts.pop(inode, None)  # a directory's mode or group may change
        if inode in self._unlinked:
            await self._settle_unlinks()
        handle = self._open.get(inode)
        changes: dict[str, int | None] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        times = "atime_ns" in changes or "mtime_ns" in changes
        if (
            times
            and handle is not None
            and handle.file._dirty
            and not fields.update_size
            and self._writes_back(handle)
        ):
            # A new file written back (tar sets its times through the open
            # descriptor, then closes it): its data is staged first, as its
            # close would (the commit sets mtime, and the time set must win),
            # and the change joins its held-back create below.
            await handle.file.stage(self._uploads)
            self.stats.count("fuse.writeback.staged_for_times")
        if (
            handle is not None
            and handle.pending
            and handle.attr is not None
            and not fields.update_size
            # times once its data is staged (a commit would set mtime after them)
            and handle.file.may_join(times)
        ):
            # A deferred create: mode and owner changes join its Mknod.
            now = now_ns()
            handle.file.join_prelude(SetAttr(now, inode, **changes))
            mode = changes.pop("mode", None)
            if mode is not None:
                changes["mode"] = stat.S_IFMT(handle.attr.mode) | mode
            if "mtime_ns" in changes:
                handle.file.modified_ns = 0  # the time set wins over the writes before it
            handle.attr = msgspec.structs.replace(handle.attr, ctime_ns=now, **changes)
            return self._entry(handle.attr)
        made = self._made_ino.get(inode)
        if made is not None and not fields.update_size and not stat.S_ISDIR(made.attr.mode):
            # A symlink held back (tar's lchown and utimensat): the change
            # joins its Symlink, in the same batch.
            now = now_ns()
            made.prelude.append(SetAttr(now, inode, **changes))
            if "mode" in changes:
                changes.pop("mode")  # (a symlink's mode stays 0777, as in Linux)
            made.attr = msgspec.structs.replace(made.attr, ctime_ns=now, **changes)
            return self._entry(made.attr)
        base = self._recent.get(inode, trio.current_time())
        if made is not None:
            base = made.attr  # a directory held back: its changes wait for what is made in it
        # With leases, only a directory this mount holds delegated, or a
        # symlink it made in one: another mount's read of it (or of its
        # directory) recalls the delegation, which sends these first.
        under = None
        if self._leases is not None:
            under = self._delegation(self._made_in.get(inode, inode))
        if (
            self.opts.batch_meta
            and handle is None
            and base is not None
            and changes
            and not fields.update_size
            and inode not in self._unlinked
            and (self._leases is None or under is not None)
        ):
            # A directory's or symlink's chown, chmod, utimens (cp -a, tar):
            # held, sent with the next namespace change.
            if under is not None:
                self._held_under[inode] = under
            op = SetAttr(now_ns(), inode, **changes)
            self._held.hold(
                op, {k: v for k, v in changes.items() if v is not None}, trio.current_time()
            )
            if "mtime_ns" in changes:
                # Sent after the creates held back in it: its time set wins
                # over theirs (rsync sets a directory's times last).
                self._create_dirs.pop(inode, None)
            self.stats.count("fuse.setattr.held")
            return self._entry(base)
        if fields.update_size:
            if handle is not None:
                await handle.file.truncate(attr.st_size)
            else:
                changes["size"] = attr.st_size
        if handle is not None and (changes or not fields.update_size):
            # Buffered writes (and a deferred create) go first, in the same batch:
            # their commit sets mtime, and an explicit time (tar, cp -p, touch -d)
            # must win over it.
            (result,) = await handle.file.flush(after=[SetAttr(now_ns(), inode, **changes)])
            assert result is not None
            return self._entry(result)
        if changes or not fields.update_size:
            result = await self._change(SetAttr(now_ns(), inode, **changes))
            assert result is not None
            self._recent.put(result, trio.current_time())
            return self._entry(result)
        return self._entry(await self.meta.getattr(inode))

    @_op
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        made = self._made_ino.get(inode)
        if made is not None:
            return made.target
        return await self.meta.readlink(inode)

    @_op
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        layout, _ = await self._layout(parent_inode)
        self._changed.bump(parent_inode)
        attr = await self._change(
            Mknod(
                now_ns(),
                parent_inode,
                name,
                mode,
                ctx.uid,
                ctx.gid,
                rdev,
                chunk_size=layout.chunk_size,
            ),
            first=True,
        )
        assert attr is not None
        return self._named(parent_inode, name, self._known(parent_inode, name, attr))

    @_op
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        self._changed.bump(parent_inode)
        held = await self._made_written_back(parent_inode, name, ctx, mode=mode)
        if held is not None:
            return held
        attr = await self._change(
            Mkdir(now_ns(), parent_inode, name, mode, ctx.uid, ctx.gid), first=True
        )
        assert attr is not None
        self._recent.put(attr, trio.current_time())
        self._bare_now(attr.ino)
        return self._named(parent_inode, name, self._known(parent_inode, name, attr))

    async def _made_written_back(
        self, parent: int, name: bytes, ctx: Any, *, target: bytes = b"", mode: int = 0
    ) -> pyfuse3.EntryAttributes | None:
        """A symlink (``target``) or directory (``mode``) made in a directory
        this mount holds delegated, to a name it knows is free: answered
        here with an inode number from the reserved range, its `Symlink` or
        `Mkdir` held back and sent with the creates, in the order made
        (`send_preludes`). A directory so made is delegated to this mount
        with its parent (`_provisional`). None where it goes the usual
        way: no delegation, held times of the directory (they go first),
        anything held back under that name, or a target the leader refuses
        (it says why)."""
        link = not mode
        if (
            self._leases is None
            or parent in self._held
            or (link and (not target or len(target) > 4095 or b"\0" in target))
        ):
            return None
        check_name(name)
        key = (parent, name)

        def free() -> bool:
            assert self._leases is not None
            if not isinstance(self._defers(parent), tuple) or self._holds_name(key):
                return False
            if self._provisional(parent) is not None:
                return True  # (every name in it was made here: `_holds_name`)
            known, there, _, _ = self._leases.name(
                parent, name, trio.current_time(), self.opts.attr_timeout
            )
            return known and there is None

        if not free():
            return None
        if parent in self._unlink_dirs:
            await self._settle_unlinks()  # (the directory's times must not go back)
        _, directory = await self._layout(parent)
        ino = await self._reserve()
        # Checked again with nothing awaited from here on (as for a create).
        if not free():
            return None  # (an unused reserved number is never used)
        defers = self._defers(parent)
        assert isinstance(defers, tuple)
        stamp = now_ns()
        op: Symlink | Mkdir
        if link:
            kind, gid = inherit_from_parent(directory, stat.S_IFLNK | 0o777, ctx.gid)
            attr = Attr(ino, kind, 1, ctx.uid, gid, len(target), stamp, stamp, stamp)
            op = Symlink(stamp, parent, name, target, ctx.uid, ctx.gid, ino=ino)
        else:
            kind, gid = inherit_from_parent(directory, stat.S_IFDIR | stat.S_IMODE(mode), ctx.gid)
            attr = Attr(ino, kind, 2, ctx.uid, gid, 0, stamp, stamp, stamp)
            op = Mkdir(stamp, parent, name, mode, ctx.uid, ctx.gid, ino=ino)
        made = Made(ino, key, attr, target, [op], (defers,), trio.current_time(), next(self._order))
        self._made[key] = self._made_ino[ino] = made
        if link:
            if len(self._made_in) > 100_000:
                self._made_in.clear()
            self._made_in[ino] = parent
        else:
            self._made_subdirs[parent] = self._made_subdirs.get(parent, 0) + 1
            self._leases.saw(attr)
            self._recent.put(attr, trio.current_time())
        self._create_dirs[parent] = max(stamp, self._create_dirs.get(parent, 0))
        self._bare_now(ino)
        self._known(parent, name, attr)
        self.stats.count("fuse.writeback.symlinks" if link else "fuse.writeback.mkdirs")
        return self._named(parent, name, attr)

    def _holds_name(self, key: tuple[int, bytes]) -> bool:
        """Whether something held back here involves (directory, name)."""
        return (
            key in self._pending
            or key in self._made
            or key in self._unlinks
            or key in self._renamed_to
        )

    @_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        key = (parent_inode, name)
        ino = self._names_ino(*key)
        self._forget_name(*key)
        self._changed.bump(parent_inode)
        if ino is not None:
            self._recent.drop(ino)  # its link count and ctime change
        if parent_inode in self._held:
            await self._settle()  # its held times first, as they were made
        defers = self._defers(parent_inode) if ino is not None else None
        if (
            defers is not None
            and ino is not None
            and ino not in self._open
            and key not in self._pending
            and key not in self._unlinks
            and key not in self._made
        ):
            # The kernel checked that the name exists and that we may remove it.
            # The Unlink carries this moment: the directory's times when it lands.
            ns = now_ns()
            if isinstance(defers, tuple):
                self._unlink_under[key] = defers
            self._unlinks[key] = (ino, trio.current_time(), ns)
            self._unlinked[ino] = self._unlinked.get(ino, 0) + 1
            self._unlink_dirs[parent_inode] = ns
            return
        await self._change(Unlink(now_ns(), parent_inode, name), opens=True, first=True)

    @_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        self._changed.bump(parent_inode)
        ino = self._forget_name(parent_inode, name)
        if ino is not None:
            self._recent.drop(ino)
        await self._change(Rmdir(now_ns(), parent_inode, name), first=True)

    @_op
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        self._changed.bump(parent_inode)
        held = await self._made_written_back(parent_inode, name, ctx, target=target)
        if held is not None:
            return held
        attr = await self._change(
            Symlink(now_ns(), parent_inode, name, target, ctx.uid, ctx.gid), first=True
        )
        assert attr is not None
        if len(self._made_in) > 100_000:
            self._made_in.clear()
        self._made_in[attr.ino] = parent_inode
        self._recent.put(attr, trio.current_time())
        self._bare_now(attr.ino)
        return self._named(parent_inode, name, self._known(parent_inode, name, attr))

    @_op
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        self._writable()
        if self._rename_held_back(parent_inode_old, name_old, parent_inode_new, name_new, flags):
            return
        if self._rename_written_back(parent_inode_old, name_old, parent_inode_new, name_new, flags):
            return
        moved = self._names_ino(parent_inode_old, name_old)
        for ino in (
            self._forget_name(parent_inode_old, name_old),
            self._forget_name(parent_inode_new, name_new),
        ):
            if ino is not None:
                self._recent.drop(ino)  # its ctime (and a directory's "..") change
        self._changed.bump(parent_inode_old, parent_inode_new)
        await self._change(
            Rename(now_ns(), parent_inode_old, name_old, parent_inode_new, name_new, flags),
            opens=True,
            first=True,
        )
        if moved is not None and not flags & RENAME_EXCHANGE:
            # The kernel moved its entry: the new name is known to refer to it.
            self._names[(parent_inode_new, name_new)] = moved
            self._named_at[(parent_inode_new, name_new)] = trio.current_time()

    def _rename_held_back(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> bool:
        """A new file renamed in the delegated directory it was made in, to a
        name this mount knows is free (rsync's temporary file, then its
        name): the `Rename` joins the file's held-back create, nothing is
        sent. Only for the newest held-back create, with no unlink or
        attribute change of the directory held back (they would be sent
        out of order), so a flush still keeps a prefix of what was done."""
        if parent != new_parent or flags & ~RENAME_NOREPLACE or self._leases is None:
            return False
        handle = self._deferred(self._pending.get((parent, name), 0))
        if (
            handle is None
            or handle.attr is None
            # its create on the way (not its data uploading): its name is known soon
            or (handle.file._lock.locked() and not handle.file.uploading)
            or not self._writes_back(handle)
            or handle.file.delegated != (self._delegation(parent),)
            or (parent, new_name) in self._pending
            or (parent, new_name) in self._made
            or self._unlinks
            or parent in self._held
        ):
            return False
        check_name(new_name)
        now = trio.current_time()
        known, attr, _, _ = self._leases.name(parent, new_name, now, self.opts.attr_timeout)
        if not known or attr is not None:
            return False  # (a name in use: replaced at the leader, the usual way)
        if any(
            h.created > handle.created
            for ino in self._pending.values()
            if (h := self._deferred(ino)) is not None
        ):
            return False
        stamp = now_ns()
        handle.file.join_prelude(Rename(stamp, parent, name, parent, new_name, flags))
        del self._pending[(parent, name)]
        self._pending[(parent, new_name)] = handle.attr.ino
        handle.name = (parent, new_name)
        handle.attr = msgspec.structs.replace(handle.attr, ctime_ns=stamp)
        self._forget_name(parent, name)
        self._known(parent, new_name, handle.attr)
        self._changed.bump(parent)
        self._create_dirs[parent] = max(stamp, self._create_dirs.get(parent, 0))
        self.stats.count("fuse.writeback.renames")
        return True

    def _rename_written_back(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> bool:
        """A file (not a directory) renamed within a directory this mount
        holds delegated, to a name it knows is free: held back in the queue
        of the unlinks (in order with them, in front of the creates, as
        `_send_with_unlinks` sends them), nothing sent now (mdtest's and
        rsync's renames). Only where nothing else held back involves either
        name, the file or the directory's held times (they would land out
        of order); otherwise the rename goes the usual way, after them."""
        if parent != new_parent or flags & ~RENAME_NOREPLACE or self._leases is None:
            return False
        defers = self._defers(parent)
        if not isinstance(defers, tuple):
            return False
        old, new = (parent, name), (parent, new_name)
        ino = self._names_ino(*old)
        if (
            ino is None
            or self._leases.is_dir(ino)
            or ino in self._open
            or ino in self._unlinked
            or ino in self._renamed_at
            or ino in self._held
            or ino in self._made_ino
            or parent in self._held
            or any(self._holds_name(k) for k in (old, new))
        ):
            return False
        check_name(new_name)
        now = trio.current_time()
        known = self._leases.named(parent, name, now)
        if known is None or known[0].ino != ino:
            return False  # (not a file the leased copy vouches for)
        free, there, _, _ = self._leases.name(parent, new_name, now, self.opts.attr_timeout)
        if not free or there is not None:
            return False  # a name in use: replaced at the leader, the usual way
        ns = now_ns()
        self._unlinks[old] = (ino, now, ns)
        self._unlink_under[old] = defers
        self._rename_to[old] = new_name
        self._renamed_to[new] = (ino, name)
        self._renamed_at[ino] = ns
        self._unlink_dirs[parent] = ns
        self._recent.drop(ino)
        self._forget_name(*old)
        self._names[new] = ino
        self._changed.bump(parent)
        self.stats.count("fuse.writeback.renames_held")
        return True

    @_op
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        self._changed.bump(new_parent_inode)
        self._recent.drop(inode)
        attr = await self._change(Link(now_ns(), inode, new_parent_inode, new_name), first=True)
        assert attr is not None
        return self._named(
            new_parent_inode, new_name, self._known(new_parent_inode, new_name, attr)
        )

    # --- files -----------------------------------------------------------------------------

    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fh[fh] = handle
        return fh

    def _inode_lock(self, inode: int) -> trio.Lock:
        lock = self._locks.get(inode)
        if lock is None:
            if len(self._locks) > 100_000:  # forget the locks nobody holds or waits for
                for ino, old in list(self._locks.items()):
                    if not old.locked() and old.statistics().tasks_waiting == 0:
                        del self._locks[ino]
            lock = self._locks[inode] = trio.Lock()
        return lock

    async def _acquire(self, inode: int, *, created: Layout | None = None) -> Handle:
        """The inode's handle, opened in the session if it is not open here yet (or
        only in a session the cluster ended). ``created``: the inode was just made
        (and opened) with this layout."""
        # One OpenFile per inode: opens and releases of one inode take turns,
        # so two concurrent opens never build two handles.
        async with self._inode_lock(inode):
            return await self._acquire_locked(inode, created)

    async def _acquire_locked(self, inode: int, created: Layout | None) -> Handle:
        handle = self._open.get(inode)
        if handle is not None and not handle.file.stale:
            handle.refs += 1
            if created is not None:
                await self.meta.release(inode)  # one session open per inode is enough
            elif not handle.pending:
                # Open already here: close-to-open still holds for this open,
                # so look at the namespace's attributes (another mount may have
                # rewritten it; a clean handle then reads the new version).
                await handle.file.reopen(await self.meta.getattr(inode))
            return handle
        if created is not None:
            # A new file: empty, no chunks, the layout of its directory; no reads needed.
            f = OpenFile(
                self.meta, self.data, inode, created, max_dirty=self.opts.writeback_mb << 20
            )
        else:
            # The open is registered in the next batch (`_queue_open`), not
            # by a Raft write of its own: the namespace keeps an unlinked
            # inode for a grace longer than that (`ORPHAN_GRACE_NS`).
            lazy = self.opts.batch_meta
            f = await OpenFile.open(self.meta, self.data, inode, register=not lazy)
            f.max_dirty = self.opts.writeback_mb << 20
            if lazy:
                self._queue_open(f.session, inode)
        f.nursery = self.nursery
        handle = self._open[inode] = Handle(f)
        return handle

    @_op
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        if inode in self._unlinked:  # opened through another of its names
            await self._settle_unlinks()
        known = self._open.get(inode)
        if known is not None and known.released and known.pending:
            if self._writes_back(known) and not flags & os.O_TRUNC:
                # Closed here with its create held back, still delegated
                # (rsync opens its temporary file again for a fchmod): the
                # open goes on held back; its first read sends it (`read`).
                known.released = False
                known.reopened = True
                known.read_noted = False
                self.stats.count("fuse.writeback.reopens")
            else:
                # Sent first, so this open is an open of an existing file
                # like any other (atime, attributes).
                await self._settle()
        shared = inode in self._open
        handle = await self._acquire(inode)
        f = handle.file
        # Close-to-open: the kernel may keep this file's cached pages only if
        # it is open here already and nobody else changed it, or unchanged
        # since the last open here; and it must not keep attributes that are
        # older than this open.
        keep = (shared and not f.changed_elsewhere) or (
            f.opened_as is not None and self._seen.get(inode) == f.opened_as
        )
        if handle.reopened:
            keep = False  # its reads must reach `read` (relatime, see there)
        if f.attr_at_open is not None and not handle.pending:
            self._fresh_kernel_attrs(f.attr_at_open)
        if f.opened_as is not None:
            self._seen[inode] = f.opened_as
            if len(self._seen) > 100_000:
                self._seen.clear()
        if flags & os.O_TRUNC:
            await f.truncate(0)
        if keep and flags & os.O_ACCMODE != os.O_WRONLY and f.attr_at_open is not None:
            # Its reads may all come from the kernel's cache and never reach us.
            self._note_access(f.attr_at_open)
        info = pyfuse3.FileInfo(fh=self._new_fh(handle))
        info.keep_cache = keep
        return info

    @_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        if parent_inode in self._held:
            # The directory's held changes go first (after what was deferred
            # before them): its times, and a mode (setgid) or group its new
            # files inherit.
            await self._settle()
        layout, parent = await self._layout(parent_inode)
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        self._changed.bump(parent_inode)
        if self._defers(parent_inode) is None:
            return await self._create_now(parent_inode, name, mode, layout, ctx)
        check_name(name)
        if self._deferred(self._pending.get((parent_inode, name), 0)) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if parent_inode in self._unlink_dirs:
            # The directory's unlinks go first: the old file of this name, and
            # the directory's times must not go back when they land.
            await self._settle_unlinks()
        ino = await self._reserve()
        # Checked again with nothing awaited from here on: a recall that came
        # meanwhile either ended the delegation (the create goes the usual
        # way) or flushes this create with the rest.
        defers = self._defers(parent_inode)
        if defers is None:
            return await self._create_now(parent_inode, name, mode, layout, ctx)
        now = now_ns()
        mode, gid = inherit_from_parent(parent, mode, ctx.gid)
        attr = Attr(ino, mode, 1, ctx.uid, gid, 0, now, now, now)
        f = OpenFile(self.meta, self.data, ino, layout, max_dirty=self.opts.writeback_mb << 20)
        order = next(self._order)
        if isinstance(defers, tuple):
            f.delegated = (defers,)
            if self._provisional(parent_inode) is not None:
                # Made in a directory held back too: whatever sends this
                # file's create alone (a truncate, an fsync) sends that
                # first, with everything made before it.
                f.depends = functools.partial(self._settle_creates, None, None, order)
        f.prelude.append(
            Mknod(
                now,
                parent_inode,
                name,
                mode,
                ctx.uid,
                ctx.gid,
                session=self.meta.session,
                chunk_size=layout.chunk_size,
                ino=ino,
            )
        )
        f.nursery = self.nursery
        handle = self._open[ino] = Handle(
            f,
            attr=attr,
            created=trio.current_time(),
            name=(parent_inode, name),
            order=order,
        )
        self._pending[(parent_inode, name)] = ino
        self._create_dirs[parent_inode] = max(now, self._create_dirs.get(parent_inode, 0))
        self._known(parent_inode, name, attr)
        return pyfuse3.FileInfo(fh=self._new_fh(handle)), self._named(parent_inode, name, attr)

    async def _create_now(
        self, parent_inode: int, name: bytes, mode: int, layout: Layout, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """A create sent at once (exclusive at the leader)."""
        await self._settle(held=False)  # (held back before it: first)
        attr = await self.meta.mknod(
            parent_inode,
            name,
            mode,
            ctx.uid,
            ctx.gid,
            open_it=True,
            chunk_size=layout.chunk_size,
        )
        handle = await self._acquire(attr.ino, created=layout)
        self._known(parent_inode, name, attr)
        return pyfuse3.FileInfo(fh=self._new_fh(handle)), self._named(parent_inode, name, attr)

    @_op
    async def read(  # type: ignore[override]
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        # (pyfuse3 replies with any buffer: a view of a cached chunk is sent as it is)
        handle = self._fh[fh]
        data = await handle.file.read_view(off, size)
        if not handle.read_noted:  # relatime: the first read of an open may move atime
            handle.read_noted = True
            attr = handle.file.attr_at_open  # None for a file created here: atime is new
            if attr is None and handle.reopened:
                # Closed and opened again with its create held back: its
                # atime may have been set since (utimens), so the read is a
                # read of an existing file: sent first, then relatime as usual.
                handle.reopened = False
                await self._settle()
                attr = await self.meta.getattr(handle.file.ino)
            if attr is not None:
                self._note_access(attr)
        return data

    @_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._writable()
        return await self._fh[fh].file.write(off, buf)

    @_op
    async def flush(self, fh: int) -> None:
        handle = self._fh.get(fh)
        if handle is not None and self._writes_back(handle):
            # A new file in a delegated directory: its data is uploaded now,
            # its create and commit go with the next flush of this mount
            # (a recall, fsync, or within settle_s): close returns here.
            await handle.file.stage(self._uploads)
            self.stats.count("fuse.writeback.closes")
            return
        if handle is not None:
            lost = handle.file.lost
            try:
                await handle.file.flush()
            except PrismError:
                if lost is None and handle.file.lost is not None:
                    self._lost(handle)
                raise

    @_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        # Everything held back before it first (a crash then loses a suffix).
        await self._settle()
        self._check_lost()
        await self._fh[fh].file.fsync()

    def _writes_back(self, handle: Handle) -> bool:
        """Whether a close of this file may return before its create is sent."""
        return (
            self._leases is not None
            and self.opts.batch_meta
            and handle.pending
            and bool(handle.file.delegated)
            and handle.file.lost is None
        )

    @_op
    async def release(self, fh: int) -> None:
        handle = self._fh.pop(fh)
        inode = handle.file.ino
        async with self._inode_lock(inode):
            handle.refs -= 1
            if handle.refs == 0 and self._writes_back(handle):
                handle.released = True  # closed when its create is sent
                return
            if handle.refs == 0:
                if self._open.get(inode) is handle:
                    del self._open[inode]
                try:
                    await handle.file.close(release=False)
                finally:
                    # sent in the next batch of releases
                    self._queue_release(handle.file.session, inode)

    # --- directories -------------------------------------------------------------------------

    @_op
    async def opendir(self, inode: int, ctx: Any) -> int:
        now = trio.current_time()
        made = self._made_ino.get(inode)
        attr = made.attr if made is not None else self._recent.get(inode, now)  # (relatime)
        if attr is None:
            attr = await self.meta.getattr(inode)
            self._recent.put(attr, now)
        fh = self._next_dh
        self._next_dh += 1
        self._dirs[fh] = DirHandle(inode, attr)
        return fh

    @_op
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # Offsets: 1 after ".", 2 after "..", then the namespace's cookie + 2.
        # A page of entries read from the cluster is kept with the handle and
        # serves the kernel's next requests (each takes about 22 entries),
        # unless this mount changed the directory since; a listing from the
        # start (opendir, rewinddir) always reads afresh.
        dh = self._dirs[fh]
        ino = dh.ino
        await self._settle(ino)
        if start_id == 0 and dh.attr is not None:
            self._note_access(dh.attr)
        cookie = max(0, start_id - 2)
        while True:
            now = trio.current_time()
            version = self._changed.of(ino)
            kept = (
                dh.entries_after(cookie, now, self.opts.attr_timeout, version)
                if start_id > 0
                else None
            )
            if kept is not None:
                entries, more = kept
                self.stats.count("fuse.readdir.kept")
                read_at = dh.page_at
                parent = dh.page.parent if dh.page is not None else 0
            else:
                if self._leases is not None:
                    page, _ = await self._leases.readdir_page(ino, cookie, 500)
                else:
                    page = await self.meta.readdir_page(ino, cookie, 500)
                dh.keep(cookie, page, now, version)
                entries, more, read_at, parent = page.entries, page.more, now, page.parent
            if cookie == 0 and start_id < 2:
                dots = ((b".", ino, 1), (b"..", parent or ino, 2))
                for name, dot_ino, after in dots[start_id:]:
                    if not pyfuse3.readdir_reply(token, name, _dot_entry(dot_ino), after):
                        return
            for entry in entries:
                self._recent.put(entry.attr, read_at)
                if not pyfuse3.readdir_reply(
                    token,
                    entry.name,
                    self._named(ino, entry.name, self._known(ino, entry.name, entry.attr, read_at)),
                    entry.cookie + 2,
                ):
                    return
                cookie = entry.cookie
            if not more:
                return
            start_id = 2

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Namespace changes that returned are durable, except the deferred ones:
        # the unlinks (all of them), the held attribute changes and the creates
        # in this directory go now (with leases: everything held back, in order).
        await self._settle(self._dirs[fh].ino if self._leases is None else None)
        self._check_lost()

    @_op
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        # Usable space for files of the mount root's layout (see fuse/capacity.py).
        stats = await self.meta.statfs()
        disks = await node_disks(self.data.pool, await self.meta.nodes())
        layout, _ = await self._layout(kernel_root.subdir_ino)
        space = usable(disks, layout)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = space.total // 4096
        s.f_bfree = s.f_bavail = space.free // 4096
        s.f_files = stats.files + 1_000_000_000
        s.f_ffree = s.f_favail = 1_000_000_000
        s.f_namemax = 255
        return s

    # --- extended attributes -----------------------------------------------------------------

    # The kernel only passes names with a namespace prefix, so the layout
    # attribute (``prismfs.layout`` in the namespace) is ``user.prismfs.layout``
    # on a mount: ``setfattr -n user.prismfs.layout -v k=4,m=6 DIR``.

    @_op
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if name == SYNC_XATTR:
            await self.sync_all()  # `prismfs sync PATH`: nothing is stored
            return
        if name == STATS_XATTR:
            self.stats.reset()  # `prismfs mount stats --reset`
            return
        self._writable()
        if name in ACL_XATTRS:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self._settle()
        try:
            await self.meta.setxattr(inode, _to_meta(name), value)
        finally:
            self._forget_xattrs(inode)
        if _to_meta(name) == LAYOUT_XATTR:
            self._layouts.clear()

    @_op
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name == STATS_XATTR:
            return json.dumps(self.stats.to_dict(), separators=(",", ":")).encode()
        if name in ACL_XATTRS or self._deferred(inode) is not None or inode in self._made_ino:
            # No ACLs (`ACL_XATTRS`); a deferred create has no attributes yet
            # (a setxattr settles it).
            raise pyfuse3.FUSEError(errno.ENODATA)
        now = trio.current_time()
        bare = self._bare.get(inode)
        if bare is not None and now - bare < self.opts.attr_timeout:
            raise pyfuse3.FUSEError(errno.ENODATA)  # made here just now, with none
        cached = self._xattrs.get((inode, name))
        if cached is None or now - cached[0] >= self.opts.attr_timeout:
            try:
                value: bytes | None = await self.meta.getxattr(inode, _to_meta(name))
            except NoAttribute:
                value = None
            if len(self._xattrs) > 10_000:
                self._xattrs.clear()
            cached = self._xattrs[(inode, name)] = (now, value)
        if cached[1] is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return cached[1]

    @_op
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if self._deferred(inode) is not None or inode in self._made_ino:
            return []
        names = await self.meta.listxattr(inode)
        # The cluster's own settings (prismfs.min_redundancy, the scrub clock)
        # have no Linux namespace: listed, they would break cp -a and rsync -X.
        return [_to_mount(n) for n in names if n == LAYOUT_XATTR or not n.startswith(b"prismfs.")]

    @_op
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        if name in ACL_XATTRS:
            raise pyfuse3.FUSEError(errno.ENODATA)
        await self._settle()
        try:
            await self.meta.removexattr(inode, _to_meta(name))
        finally:
            self._forget_xattrs(inode)

    def _forget_xattrs(self, inode: int) -> None:
        self._bare.pop(inode, None)
        for key in [key for key in self._xattrs if key[0] == inode]:
            del self._xattrs[key]

    def _bare_now(self, inode: int) -> None:
        """``inode`` was just made here and has no extended attributes: its
        getxattr answers (``security.capability`` before every write, ``cp
        -a``'s copies) need no read for ``attr_timeout``, like a cached answer."""
        if len(self._bare) > 10_000:
            self._bare.clear()
        self._bare[inode] = trio.current_time()

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True  # default_permissions: the kernel checks modes itself

    async def close_all(self) -> None:
        """At unmount: send what is held back (in the order made), commit
        what is still buffered and end the opens."""
        try:
            await self._settle()
        except PrismError as exc:  # each file's close below tries its own again
            log.warning("unmount: could not send what was held back: %s", exc.message)
        for inode, handle in list(self._open.items()):
            del self._open[inode]
            try:
                await handle.file.close(release=False)
            except PrismError as exc:
                log.error("unmount: could not flush inode %d: %s", inode, exc.message)
            self._queue_release(handle.file.session, inode)
        try:
            await self._settle_unlinks()
            if self._held:
                await self._send_held()
            await self._send_releases()
        except PrismError as exc:  # the session's close releases them as well
            log.warning(
                "unmount: could not send unlinks, attribute changes or releases: %s", exc.message
            )


MOUNT_LAYOUT_XATTR = b"user." + LAYOUT_XATTR
SYNC_XATTR = b"user.prismfs.sync"
"""Setting it on any path of a mount runs `PrismOperations.sync_all` (`prismfs sync`):
Linux sends a FUSE file system nothing on sync(2) or syncfs(2)."""
STATS_XATTR = b"user.prismfs.stats"
"""Reading it on any path of a mount gives the mount's counters as JSON (`prismfs.stats`);
setting it resets them (`prismfs mount stats`)."""
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
"""POSIX ACLs, which PrismFS does not support: the kernel passes them to a FUSE
file system without ``FUSE_POSIX_ACL`` as plain extended attributes, and
would not enforce one stored. Setting one fails with EOPNOTSUPP (``cp -a``
and ``rsync -A`` then set the mode instead, which is held back like any
chmod); reading or removing one finds none."""


def _dot_entry(ino: int) -> pyfuse3.EntryAttributes:
    """ "." or "..": the kernel uses only the inode number and type of these."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.st_mode = stat.S_IFDIR | 0o755
    return e


def _to_meta(name: bytes) -> bytes:
    return LAYOUT_XATTR if name == MOUNT_LAYOUT_XATTR else name


def _to_mount(name: bytes) -> bytes:
    return MOUNT_LAYOUT_XATTR if name == LAYOUT_XATTR else name
