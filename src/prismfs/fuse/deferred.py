"""What a mount holds back and sends later, in batches: the base class of
`prismfs.fuse.ops.PrismOperations`.

Deferred creates (metadata batching). ``create`` answers at once with an
inode number from a range this mount reserved (`ReserveInodes`, one Raft
commit per `RESERVE` creates) and puts the `Mknod` into the new file's
prelude; attribute changes (``fchmod``, ``fchown``) join it. The close that
follows sends prelude, data commit and any ``utimens`` as one `Batch`: a
small file written by ``cp``/``tar`` costs one Raft round trip, not four.
Until then the file exists only in this mount: it answers lookups and
getattr for it itself, and every other namespace change (and a readdir of
its directory) first *settles* the pending creates, so nothing here can see
an order the cluster does not have. Another mount sees the name once it is
closed, or at most ``settle_s`` (1 s) after the create. Releases are
sent in batches in the background. Unlinks of files not open here are
deferred the same way (``rm -rf`` sends a directory's unlinks as one batch
when it removes the directory): the name answers ENOENT here at once, and
each `Unlink` names its inode, so it never removes a file another mount put
in the name's place. ``-o sync_meta`` turns deferral off
(an ``O_EXCL`` create is then exclusive across mounts too; deferred, it is
exclusive within the mount, and a name another mount took meanwhile makes
the close fail with EEXIST).

With directory leases (the default) deferral is write-back under a
*delegation* (`prismfs.fuse.leased`): a create or unlink is deferred only in
a directory this mount holds delegated, and every deferred change carries
that delegation to the leader. No other mount can see the directory
without recalling the delegation first, and a recall flushes everything
held back before it is acknowledged, so other mounts see every name at once
and an ``O_EXCL`` create is exclusive across mounts. A close of such a
file uploads its data and stages the commit behind the create
(`OpenFile.stage`; a file of up to 4 MiB in the background, within the
window of `prismfs.client.files.Uploads`), then returns: the file stays
in ``_open`` (released) until its prelude is sent, with many others, in
creation order (`send_preludes`); one whose upload failed is uploaded
again first. A delegation something is held back under is renewed until
that is sent (`DirLeases.keep`). Elsewhere (a directory two mounts work
in) creates and unlinks are synchronous. A flush made under
a delegation granted by a leader that is gone goes the usual way at the
new one (`Consensus.propose`), once. A flush the leader refuses (the delegation ended
first and somebody else was at the directory since: a mount cut off for
longer than its lease) loses what it carried, and the next ``fsync``,
``fsyncdir`` or ``prismfs sync`` fails with EIO. Without leases
(``no_leases``) deferral is bounded by ``settle_s`` as before.

Held attribute changes (`prismfs.fuse.caches.HeldAttrs`): ``chown``,
``chmod`` and ``utimens`` of a directory or symlink whose attributes this
mount got within ``attr_timeout`` are answered at once and sent in front of
the next namespace change, in its Raft entry (``cp -a``/``tar x`` make a
directory, then set its owner, mode and times: one entry, not four), or
when settled. A create or unlink in a directory with held changes sends them
first, so the directory's times end as POSIX orders them.
"""

from __future__ import annotations

import errno
import itertools
import logging
import stat
from dataclasses import dataclass, field

import pyfuse3
import trio

from prismfs.client.data import DataClient
from prismfs.client.files import Held, Lead, OpenFile, Uploads, send_preludes
from prismfs.data.layout import Layout
from prismfs.errors import DelegationLost, PrismError, WriteBackLost
from prismfs.exception_groups import single_exception
from prismfs.fuse.caches import DirChanges, DirHandle, HeldAttrs, RecentAttrs
from prismfs.fuse.kernel_root import kernel_ino
from prismfs.fuse.leased import DirLeases
from prismfs.meta.client import MetaClient, now_ns
from prismfs.meta.commands import (
    MAX_BATCH,
    RENAME_NOREPLACE,
    Attr,
    MetaCommand,
    Open,
    Release,
    Rename,
    SetAttr,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.leases import command_keys

log = logging.getLogger("prismfs.fuse")

Delegation = tuple[int, int, int]
"""(directory, grant term, grant seq): a delegation a change was made under."""
HeldUnlink = tuple[tuple[int, bytes], tuple[int, float, int]]
"""A deferred unlink (or rename, `_rename_to`): ((parent, name), (inode,
trio time, ns timestamp))."""

RESERVE = 1024  # inode numbers reserved per ReserveInodes
RELEASE_EVERY = 0.2  # seconds between batches of releases
FLUSH_LEFT = 0.4  # held-back changes are flushed when their delegation has this much left
DAY_NS = 86_400 * 10**9


@dataclass
class MountOptions:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    writeback_mb: int = 64
    read_only: bool = False
    batch_meta: bool = True
    atime: bool = True  # relatime; False: noatime
    settle_s: float = 1.0  # how long a deferred create may stay unknown to other mounts
    writeback_s: float = 30.0  # how long written data may stay buffered in an open file
    leases: bool = True  # directory leases (`prismfs.fuse.leased`); False: no_leases
    readahead_kb: int = 1024  # the kernel's read-ahead on this mount (`set_readahead`)


@dataclass
class Handle:
    file: OpenFile
    refs: int = 1
    attr: Attr | None = None  # while its create is deferred: the attributes known here
    created: float = 0.0  # trio time of a deferred create
    name: tuple[int, bytes] = (0, b"")  # (parent, name) of a deferred create
    read_noted: bool = False  # a read through this open was seen (relatime)
    released: bool = False  # closed, its create (and data commit) still held back
    reopened: bool = False  # opened again after such a close, still held back
    order: int = 0  # of a deferred create: its place among the changes held back

    @property
    def pending(self) -> bool:
        return self.attr is not None and bool(self.file.prelude)


@dataclass
class Made:
    """A symlink or directory made in a directory this mount holds
    delegated, held back: its `Symlink` or `Mkdir` (with a reserved inode
    number) and any attribute changes of a symlink made since, sent in
    creation order with the held-back creates (`send_preludes`)."""

    ino: int
    name: tuple[int, bytes]  # (directory, name)
    attr: Attr
    target: bytes
    prelude: list[MetaCommand]
    delegated: tuple[Delegation, ...]
    created: float  # trio time
    order: int  # its place among the changes held back (`Handle.order`)
    lost: PrismError | None = None
    _lock: trio.Lock = field(default_factory=trio.Lock)


class DeferredWork(pyfuse3.Operations):
    """The mount's state, and the work it holds back (see the module docstring)."""

    def __init__(self, meta: MetaClient, data: DataClient, options: MountOptions) -> None:
        super().__init__()
        self.meta = meta
        self.data = data
        self.opts = options
        # FUSE requests answered (`_op`) and RPCs made: `prismfs mount stats`
        self.stats = meta.pool.stats
        self._open: dict[int, Handle] = {}  # by inode
        # file handle -> its inode's handle (the one current when it was opened:
        # after a session loss a new open gets a new one, the old stay stale)
        self._fh: dict[int, Handle] = {}
        self._next_fh = 1
        # directory -> (read at, layout for new files, its attributes)
        self._layouts: dict[int, tuple[float, Layout, Attr]] = {}
        self._locks: dict[int, trio.Lock] = {}
        self._seen: dict[int, tuple[int, int]] = {}  # inode -> (mtime, size) at its last open
        # (inode, name) -> (read at, value or None for "no such attribute"), kept
        # for attr_timeout: the kernel asks for security.capability before every write.
        self._xattrs: dict[tuple[int, bytes], tuple[float, bytes | None]] = {}
        self._bare: dict[int, float] = {}  # inodes made here, without xattrs: when
        self._inos: range = range(0)  # reserved inode numbers not used yet
        self._reserving = trio.Lock()
        self._pending: dict[tuple[int, bytes], int] = {}  # (parent, name) -> deferred inode
        # (parent, name) -> inode, of the entries this mount told the kernel about
        self._names: dict[tuple[int, bytes], int] = {}
        self._named_at: dict[tuple[int, bytes], float] = {}  # when the cluster said so
        # (parent, name) -> (inode, queued at (trio clock), time of the unlink (ns))
        self._unlinks: dict[tuple[int, bytes], tuple[int, float, int]] = {}
        self._unlink_dirs: dict[int, int] = {}  # parent -> time of its latest pending unlink
        self._unlinked: dict[int, int] = {}  # inode -> its names in _unlinks
        # Held-back renames within a delegated directory travel in the same
        # queue as the unlinks (in order, in front of the creates), keyed by
        # the name they take away: (parent, old name) -> new name, and
        # (parent, new name) -> (the inode now there, its old name), not yet
        # at the cluster.
        self._rename_to: dict[tuple[int, bytes], bytes] = {}
        self._renamed_to: dict[tuple[int, bytes], tuple[int, bytes]] = {}
        self._renamed_at: dict[int, int] = {}  # inode -> time of its held rename (its ctime)
        self._unlink_lock = trio.Lock()
        self._releases: list[tuple[str, int]] = []  # (session, inode) releases not sent yet
        self._opens: dict[tuple[str, int], int] = {}  # (session, inode) opens not sent yet
        self._atimes: dict[int, int] = {}  # atime updates not sent yet
        # within the kernel's timeouts (see `prismfs.fuse.caches`)
        self._recent = RecentAttrs(options.attr_timeout)
        self._changed = DirChanges()
        self._dirs: dict[int, DirHandle] = {}  # open directories by handle
        self._next_dh = 1
        self._held = HeldAttrs()
        # inode -> (size, mtime, ctime) last given to the kernel (`_entry`)
        self._told: dict[int, tuple[int, int, int]] = {}
        self._told_lossy = False  # ``_told`` was cleared once: a missing inode proves nothing
        self._leases = (
            DirLeases(meta, self.stats, writeback=options.batch_meta) if options.leases else None
        )
        meta.lease_hooks = self._leases
        # the delegations deferred changes were made under (see the docstring)
        self._unlink_under: dict[tuple[int, bytes], Delegation] = {}
        self._held_under: dict[int, Delegation] = {}  # held attribute changes, by inode
        self._made_in: dict[int, int] = {}  # symlinks made here -> their directory
        # symlinks made here and held back, by (directory, name) and by inode
        self._made: dict[tuple[int, bytes], Made] = {}
        self._made_ino: dict[int, Made] = {}
        self._made_subdirs: dict[int, int] = {}  # directory -> held-back mkdirs in it (nlink)
        self._order = itertools.count(1)  # creation order of held-back creates and symlinks
        self._create_dirs: dict[int, int] = {}  # directory -> time of its latest held create
        self._wb_lost: PrismError | None = None  # a flush refused since the last fsync
        self._uploads: Uploads | None = None  # background uploads (while `background` runs)
        self.nursery: trio.Nursery | None = None  # `background`'s, while it runs
        if self._leases is not None:
            self._leases.before_ack = self._flush_for_recall
            # A delegation something is held back under stays renewed until
            # it is flushed (an upload in the background may take a while).
            self._leases.keep = self._held_keys
            self._leases.on_delegated = self._retag

    # --- write-back under delegations --------------------------------------------------------

    def _delegation(self, key: int) -> Delegation | None:
        """This mount's delegation of directory ``key``, if it may defer a
        change in it now."""
        if self._leases is None or not self.opts.batch_meta:
            return None
        own = self._leases.delegation(key, trio.current_time())
        if own is not None:
            return own
        return self._provisional(key)

    def _provisional(self, key: int) -> Delegation | None:
        """For a directory this mount made and still holds back (`Made`): the
        delegation of the directory it was made in, if that still lasts
        under the same grant. Nobody else can reach the new directory
        before the leader has its `Mkdir`, which comes with what this mount
        held back under that delegation (a recall sends it first), so what
        is made inside it is held back under that delegation too."""
        made = self._made_ino.get(key)
        if made is None or not made.delegated or not stat.S_ISDIR(made.attr.mode):
            return None
        under = made.delegated[0]
        if self._leases is None:
            return None
        return under if self._leases.delegation(under[0], trio.current_time()) == under else None

    def _defers(self, parent: int) -> Delegation | bool | None:
        """Whether a create or unlink in ``parent`` may be deferred: its
        delegation, True without leases (bounded by ``settle_s``), or None."""
        if not self.opts.batch_meta:
            return None
        if self._leases is None:
            return True
        return self._delegation(parent)

    def _note_lost(self, exc: PrismError) -> None:
        """Held-back changes the leader refused: the next fsync says so (EIO)."""
        log.error("changes held back in this mount were lost: %s", exc.message)
        self.stats.count("fuse.writeback.lost")
        if exc.errno != errno.EIO:
            exc = WriteBackLost(f"changes held back in this mount were refused: {exc.message}")
        self._wb_lost = exc

    def _check_lost(self) -> None:
        """fsync, fsyncdir, ``prismfs sync``: EIO once for what was lost before."""
        lost, self._wb_lost = self._wb_lost, None
        if lost is not None:
            raise lost

    async def _flush_for_recall(self) -> None:
        """Before a recall is acknowledged: flush everything held back (in
        the order made: a prefix survives). Transient errors are retried
        for as long as a delegation could last; then the recall is
        acknowledged anyway (the leader refuses a later flush)."""
        if not (self._unlinks or self._pending or self._held or self._made):
            return
        deadline = trio.current_time() + 3.0
        delay = 0.05
        while True:
            try:
                await self._settle()
                self.stats.count("fuse.writeback.recall_flushes")
                return
            except PrismError as exc:
                if not exc.transient or trio.current_time() > deadline:
                    log.warning("flush before a recall: %s", exc.message)
                    return
            await trio.sleep(delay)
            delay = min(2 * delay, 0.5)

    def _retag(self, key: int, delegation: Delegation) -> None:
        """Directory ``key``, made here, got its first delegation: what is
        held back in it (made while it was held back itself, under its
        parent's delegation) is sent under this one from now on. Sent under
        the parent's, it would be a change of ``key`` under no delegation of
        it, which the leader applies by continuing this one under a new
        grant, and then refuses what was held back under the old one."""
        for handle in self._open.values():
            if handle.pending and handle.name[0] == key and handle.file.delegated:
                handle.file.delegated = (delegation,)
        for made in self._made.values():
            if made.name[0] == key and made.delegated:
                made.delegated = (delegation,)
        for held in self._unlink_under:
            if held[0] == key:
                self._unlink_under[held] = delegation
        if key in self._held_under:
            self._held_under[key] = delegation

    def _held_keys(self) -> set[int]:
        """The directories whose delegations held-back changes were made under."""
        keys = {d[0] for d in self._unlink_under.values()}
        keys |= {d[0] for d in self._held_under.values()}
        for handle in self._open.values():
            if handle.pending:
                keys |= {d[0] for d in handle.file.delegated}
        for made in self._made.values():
            keys |= {d[0] for d in made.delegated}
        return keys

    def _held_dirs(self) -> set[int]:
        """The inodes with attribute changes held (`HeldAttrs`)."""
        return {op.ino for op in self._held.ops}

    def _held_waits(self) -> bool:
        """Whether held attribute changes must wait for what is held back:
        in the directories they change, or those directories themselves."""
        dirs = self._held_dirs()
        return bool(dirs and dirs & (self._held_keys() | self._waiting()))

    def _waiting(self) -> set[int]:
        """The directories whose held attribute changes must not go yet:
        those held back themselves, and those something is held back in.
        (By directory, not by delegation: what is made in a directory held
        back itself goes under its parent's, `_provisional`.) A create or
        unlink in a directory with held changes sends those first, so what
        is held back in it was made before them."""
        waiting = set(self._made_ino)
        waiting |= {h.name[0] for h in self._open.values() if h.pending}
        waiting |= {m.name[0] for m in self._made.values()}
        waiting |= {parent for parent, _ in self._unlinks}
        return waiting

    def _expiring(self, now: float) -> bool:
        """Whether a delegation held-back changes were made under is about to end."""
        leases = self._leases
        if leases is None:
            return False
        return any(leases.delegation_left(k, now) < FLUSH_LEFT for k in self._held_keys())

    def _ends_held(self, op: MetaCommand) -> bool:
        """Whether ``op`` changes a directory something is held back under:
        what is held back must go first. Sent the synchronous way, the change
        ends that delegation or continues it under a new grant
        (`LeaseTable.end_change`), and the leader refuses a later flush made
        under the old one; sent under the delegation, it would be applied
        before the held-back changes it came after (a directory's times set
        by rsync, then moved by its files' creates and renames)."""
        if self._leases is None:
            return False
        held = self._held_keys()
        if not held:
            return False
        keys = command_keys(op)
        if keys.all() & held:
            return True
        now = trio.current_time()
        return any(self._leases.ino_of(p, n, now) in held for p, n in keys.lookups)

    def _note_parents(self, parents: tuple[Attr, ...]) -> None:
        """Directories a change of this mount changed, as they are now."""
        now = trio.current_time()
        for attr in parents:
            self._recent.put(attr, now)

    # --- deferred creates (see the module's docstring) -------------------------------------

    def _deferred(self, inode: int) -> Handle | None:
        handle = self._open.get(inode)
        return handle if handle is not None and handle.pending else None

    async def _settle(self, parent: int | None = None, *, held: bool = True) -> None:
        """Send every deferred unlink, then the deferred creates (in ``parent``
        only, if given), then (with ``held``) the held attribute changes to the
        cluster. A create the cluster refuses (another mount took the name) is
        logged here and fails the file's close; a transient error fails the
        caller."""
        if self._leases is None:
            await self._settle_unlinks()
        await self._settle_creates(parent)  # (with leases, the unlinks in front)
        await self._settle_unlinks()
        for _ in range(5):
            # Creates held back in a directory while those were sent (after a
            # background upload, say), and then its times (rsync sets them
            # after its files): the creates go first, or they would move the
            # times again. (Bounded: a program that keeps creating there
            # gets its directory's times sent after five rounds.)
            if not (held and self._held and self._held_waits()):
                break
            await self._settle_creates(None)
            await self._settle_unlinks()
        if held and self._held:
            await self._send_held()

    async def _send_held(self) -> None:
        """The held chown/chmod/utimens of directories and symlinks, in order
        (after the directories they change, if those are held back)."""
        if self._held_waits():
            await self._settle_creates(None)
        # (what was made meanwhile in a directory whose times are held, or
        # the directory itself: the times go after it, next time)
        ops = self._held.take(leave=self._waiting())
        try:
            for start in range(0, len(ops), MAX_BATCH):
                part = ops[start : start + MAX_BATCH]
                try:
                    results = await self.meta.batch(part, delegated=self._held_delegations(part))
                except DelegationLost as exc:
                    self._note_lost(exc)
                    results = [exc] * len(part)
                for op, result in zip(part, results, strict=True):
                    self._held_result(op, result)
        except BaseException:
            self._held.put_back(ops, trio.current_time())
            raise
        self._held.done(ops)
        for op in ops:
            self._held_under.pop(op.ino, None)

    def _held_delegations(self, ops: list[SetAttr]) -> tuple[Delegation, ...]:
        return tuple({d for op in ops if (d := self._held_under.get(op.ino)) is not None})

    def _held_result(self, op: SetAttr, result: Attr | PrismError | None) -> None:
        if isinstance(result, PrismError):  # e.g. another mount removed it meanwhile
            log.info("held attribute change of inode %d: %s", op.ino, result.message)
        elif result is not None:
            self._recent.put(result, trio.current_time())  # never the attributes before it

    async def _change(
        self, op: MetaCommand, *, opens: bool = False, first: bool = False
    ) -> Attr | None:
        """Send one namespace change; the held attribute changes go in front of
        it, in the same Raft entry. With ``opens`` (an unlink or rename, which
        may take a file's last name), so do the queued opens: an open file
        must never be an orphan without its open (the namespace would free it
        once the orphan grace, counted from the change's own time, is over).
        With ``first``, every create and unlink held back goes before it
        (a flush keeps a prefix of what this mount did); what is held back
        in a directory ``op`` changes always does."""
        if len(self._held.ops) >= MAX_BATCH:
            await self._send_held()
        while opens and len(self._held.ops) + sum(self._opens.values()) >= MAX_BATCH:
            await self._send_opens()
        own = self._own_delegations(op)
        settle = (
            (first and bool(self._unlinks or self._pending or self._made))
            or self._ends_held(op)
            or self._held_waits()
        )
        if settle:
            self.stats.count("fuse.writeback.settled_for_change")
        if settle and not own:
            # What is held back in a directory goes before a change of it
            # (`_ends_held`) and before its held times, which go in front of
            # ``op`` (as `_settle` orders them). Under its delegations, ``op``
            # rides in the last batch of that flush instead (`_settled_with`).
            await self._settle(held=False)
            settle = False
        todo, open_ops = self._take_opens(len(self._opens)) if opens else ([], [])
        if not settle and not self._held and not open_ops and not own:
            return await self.meta.propose(op)
        # Riding a flush (``settle``), the held changes go after everything
        # held back now; sent after a flush (`_settle` above), those of a
        # directory made meanwhile wait for it (they were made after ``op``).
        ops = self._held.take() if settle else self._held.take(leave=self._waiting())
        parents: list[Attr] = []
        try:
            delegated = tuple(set(own) | set(self._held_delegations(ops)))
            try:
                batch = [*ops, *open_ops, op]
                sent = await self._settled_with(Lead(batch, delegated)) if settle else None
                if sent is None:
                    results = await self.meta.batch(batch, parents=parents, delegated=delegated)
                else:
                    results = sent
            except DelegationLost as exc:
                # A delegation ended before the leader saw this: the held
                # changes are lost; the change itself goes the usual way.
                if ops:
                    self._note_lost(exc)
                for held_op in ops:
                    self._held_under.pop(held_op.ino, None)
                self._held.done(ops)
                ops = []
                results = await self.meta.batch([*open_ops, op], parents=parents)
        except BaseException:
            self._held.put_back(ops, trio.current_time())
            self._put_back_opens(todo)
            raise
        for held_op, result in zip(ops, results, strict=False):
            self._held_result(held_op, result)
        for open_op, result in zip(open_ops, results[len(ops) :], strict=False):
            self._opens_result(open_op, result)
        # After the held results: a directory the op changed is newer there.
        self._note_parents(tuple(parents))
        self._held.done(ops)
        for held_op in ops:
            self._held_under.pop(held_op.ino, None)
        last = results[-1]
        if isinstance(last, PrismError):
            raise last
        return last

    async def _settled_with(self, tail: Lead) -> list[Attr | PrismError | None] | None:
        """Everything held back (as `_settle` with ``held=False`` sends it),
        with ``tail`` in its last batch: a change under delegations that
        must come after it costs no Raft entry of its own. The tail's
        results, or None if nothing was held back to send it with; its
        `DelegationLost` raised (the batch was refused as a whole)."""
        await self._settle_creates(None, tail)
        if tail.results is None:
            await self._settle_unlinks(tail)
        if tail.results is None:
            return None
        results: list[Attr | PrismError | None] = []
        for result in tail.results:
            if isinstance(result, DelegationLost):
                raise result
            results.append(result if isinstance(result, (Attr, PrismError)) else None)
        self.stats.count("fuse.writeback.change_with_flush")
        return results

    def _own_delegations(self, op: MetaCommand) -> tuple[Delegation, ...]:
        """The delegations of this mount that cover every directory ``op``
        changes, if there are such (the leader then applies it without a
        recall and the mount keeps its copies); else () (it goes the usual
        way, and the delegations it touches end)."""
        if self._leases is None or not self.opts.batch_meta:
            return ()
        keys = command_keys(op)
        out = []
        for key in keys.all():
            d = self._delegation(key)
            if d is None:
                return ()
            out.append(d)
        for parent, name in keys.lookups:  # a directory moved or removed: its own key
            ino = self._leases.ino_of(parent, name, trio.current_time())
            if ino is not None and self._leases.is_dir(ino):
                d = self._delegation(ino)
                if d is None:
                    return ()
                out.append(d)
        return tuple(out)

    async def _settle_creates(
        self, parent: int | None, tail: Lead | None = None, upto: int | None = None
    ) -> None:
        """Send the deferred creates (see `_settle`); with ``upto``, only
        those (and the held-back symlinks and directories) made before the
        one of that `Handle.order`."""
        if self._leases is not None:
            parent = None  # all of them, in order: a flush keeps a prefix
        todo: list[Handle] = []
        for key, ino in list(self._pending.items()):
            handle = self._deferred(ino)
            if handle is None:
                del self._pending[key]
            elif (parent is None or key[0] == parent) and (upto is None or handle.order < upto):
                todo.append(handle)
        made = list(self._made.values()) if self._leases is not None else []
        if upto is not None:
            made = [m for m in made if m.order < upto]
        if not todo and not made:
            return

        async def one(handle: Handle) -> None:
            try:
                await handle.file.settle()
            except PrismError as exc:
                if exc.transient:
                    raise
                if isinstance(exc, DelegationLost):
                    self._note_lost(exc)
                self._lost(handle)

        if self._leases is not None:
            # In the order they were made, in as few batches as can be: a
            # crash meanwhile leaves the earlier ones, never a later one alone.
            todo.sort(key=lambda h: h.order)
            for handle in todo:
                if handle.released and handle.file._dirty:
                    # closed, and its upload in the background failed: now
                    # (its create must not go without its data)
                    try:
                        await handle.file.stage()
                    except PrismError as exc:
                        if exc.transient:
                            raise
                        handle.file.abandon(exc)  # (its session ended, say)
            held: list[tuple[int, Held]] = [(h.order, h.file) for h in todo]
            held += [(m.order, m) for m in made]
            held.sort(key=lambda pair: pair[0])
            await self._send_with_unlinks([item for _, item in held], tail)
            if upto is None:
                self._create_dirs = {}  # (the directories' own times now come from the cluster)
            for m in made:
                self._made_sent(m)
            for handle in todo:
                if handle.file.lost is not None:
                    # (closed already: nobody else can tell the application)
                    if isinstance(handle.file.lost, DelegationLost) or handle.released:
                        self._note_lost(handle.file.lost)
                    self._lost(handle)
                if handle.released and not handle.pending:
                    self._closed_now(handle)
            return
        with single_exception():
            async with trio.open_nursery() as nursery:
                for handle in todo:
                    nursery.start_soon(one, handle)

    def _made_sent(self, made: Made) -> None:
        """A held-back symlink's or directory's flush came back: it exists now (or never
        will: the kernel forgets its name)."""
        if self._made_ino.get(made.ino) is not made:
            return  # (a flush that ran meanwhile took care of it)
        if made.lost is not None:
            # Acknowledged to the application: the next fsync says so,
            # whatever the reason (the leader refused its delegation, or
            # the change itself).
            self._note_lost(made.lost)
            kind = "directory" if stat.S_ISDIR(made.attr.mode) else "symlink"
            log.warning("held-back %s %r failed: %s", kind, made.name[1], made.lost.message)
            pyfuse3.invalidate_entry_async(
                kernel_ino(made.name[0]), made.name[1], ignore_enoent=True
            )
        elif made.prelude:
            return  # an attribute change joined it on the way: the next flush
        if self._made.get(made.name) is made:
            del self._made[made.name]
        if self._made_ino.pop(made.ino, None) is not None and stat.S_ISDIR(made.attr.mode):
            parent = made.name[0]
            left = self._made_subdirs.get(parent, 0) - 1
            if left > 0:
                self._made_subdirs[parent] = left
            else:
                self._made_subdirs.pop(parent, None)
        elif made.lost is None:
            # (a directory's attributes come from the batch: what was made
            # in it moved its times and link count since)
            self._recent.put(made.attr, trio.current_time())

    async def _send_with_unlinks(self, files: list[Held], tail: Lead | None = None) -> None:
        """`send_preludes` of ``files``, with the deferred unlinks in front of
        them in the first batch if they fit in one: some of those unlinks
        may have been made after some of these creates, and a crash between
        two batches would keep a later change and lose an earlier one."""
        async with self._unlink_lock:
            lead = None
            while self._unlinks:
                items = list(self._unlinks.items())
                if len(items) <= MAX_BATCH:
                    lead = Lead(*self._unlink_ops(items))
                    break
                await self._send_unlinks(items[:MAX_BATCH])
            try:
                await send_preludes(self.meta, files, lead, tail)
            finally:
                if lead is not None and lead.results is not None:
                    self._unlinks_sent(items, lead.results)

    async def _settle_unlinks(self, tail: Lead | None = None) -> None:
        """Send the deferred unlinks, in batches (``tail`` in the last). One
        that fails (another mount removed or replaced the name meanwhile)
        only gets a log line."""
        async with self._unlink_lock:
            while self._unlinks:
                # Others may queue more while a batch is on its way, and the
                # loop sends those too: ``tail`` goes once (again, a rename
                # or mkdir would fail as done already, and say so).
                if tail is not None and tail.results is not None:
                    tail = None
                last = len(self._unlinks) <= MAX_BATCH - (len(tail.ops) if tail else 0)
                items = list(self._unlinks.items())[:MAX_BATCH]
                await self._send_unlinks(items, tail if last else None)

    async def _send_unlinks(self, items: list[HeldUnlink], tail: Lead | None = None) -> None:
        ops, under = self._unlink_ops(items)
        extra = tail.ops if tail is not None else []
        delegated = tuple(set(under) | set(tail.delegated)) if tail is not None else under
        try:
            results: list[object] = list(await self.meta.batch([*ops, *extra], delegated=delegated))
        except DelegationLost as exc:
            results = [exc] * (len(ops) + len(extra))
        if tail is not None:
            tail.results = results[len(ops) :]
        self._unlinks_sent(items, results[: len(ops)])

    def _unlink_ops(
        self, items: list[HeldUnlink]
    ) -> tuple[list[MetaCommand], tuple[Delegation, ...]]:
        """The `Unlink` of each deferred unlink in ``items``, and the
        delegations they were made under."""
        under = {d for key, _ in items if (d := self._unlink_under.get(key)) is not None}
        ops: list[MetaCommand] = []
        for (parent, name), (ino, _, ns) in items:
            new_name = self._rename_to.get((parent, name))
            if new_name is None:
                ops.append(Unlink(ns, parent, name, ino=ino))
            else:
                ops.append(Rename(ns, parent, name, parent, new_name, RENAME_NOREPLACE))
        return ops, tuple(under)

    def _unlinks_sent(self, items: list[HeldUnlink], results: list[object]) -> None:
        lost = None
        for (key, (ino, _, ns)), result in zip(items, results, strict=True):
            del self._unlinks[key]
            self._unlink_under.pop(key, None)
            new_name = self._rename_to.pop(key, None)
            if new_name is not None:
                self._renamed_to.pop((key[0], new_name), None)
                if self._renamed_at.get(ino) == ns:
                    del self._renamed_at[ino]
            else:
                left = self._unlinked.pop(ino) - 1
                if left:
                    self._unlinked[ino] = left
            if isinstance(result, DelegationLost):
                lost = result  # the name is back: nothing was removed
            elif isinstance(result, PrismError):
                what = "unlink" if new_name is None else "rename"
                log.info("deferred %s of %r: %s", what, key[1], result.message)
        if lost is not None:
            self._note_lost(lost)
        self._unlink_dirs = {}
        for (parent, _), (_, _, ns) in self._unlinks.items():
            self._unlink_dirs[parent] = max(ns, self._unlink_dirs.get(parent, 0))

    def _known(self, parent: int, name: bytes, attr: Attr, at: float | None = None) -> Attr:
        """Remember which inode a name the kernel now knows refers to, and when
        the cluster said so (``at``, trio time; default now)."""
        if len(self._names) > 200_000:
            self._names.clear()
            self._named_at.clear()
        self._names[(parent, name)] = attr.ino
        self._named_at[(parent, name)] = trio.current_time() if at is None else at
        return attr

    def _forget_name(self, parent: int, name: bytes) -> int | None:
        self._named_at.pop((parent, name), None)
        return self._names.pop((parent, name), None)

    def _closed_now(self, handle: Handle) -> None:
        """A file closed while its create was held back: now sent (or lost),
        its open ends like any other."""
        inode = handle.file.ino
        if self._open.get(inode) is handle and handle.refs == 0:
            del self._open[inode]
            self._pending.pop(handle.name, None)
            handle.file.mark_closed()
            self._queue_release(handle.file.session, inode)

    def _lost(self, handle: Handle) -> None:
        """A deferred create the cluster refused: the kernel forgets its name."""
        assert handle.file.lost is not None
        log.warning("deferred create of %r failed: %s", handle.name[1], handle.file.lost.message)
        self._pending.pop(handle.name, None)
        pyfuse3.invalidate_entry_async(
            kernel_ino(handle.name[0]), handle.name[1], ignore_enoent=True
        )

    async def _reserve(self) -> int:
        async with self._reserving:
            if not self._inos:
                self._inos = await self.meta.reserve_inodes(RESERVE)
            ino, self._inos = self._inos[0], self._inos[1:]
            return ino

    def _note_access(self, attr: Attr) -> None:
        """relatime: atime moves on a read if it is not after mtime and ctime,
        or is a day old; sent with the next batch of releases."""
        if not self.opts.atime:
            return
        now = now_ns()
        if attr.atime_ns <= max(attr.mtime_ns, attr.ctime_ns) or now - attr.atime_ns >= DAY_NS:
            self._atimes[attr.ino] = now

    def _queue_open(self, session: str, ino: int) -> None:
        key = (session, ino)
        self._opens[key] = self._opens.get(key, 0) + 1

    def _queue_release(self, session: str, ino: int) -> None:
        key = (session, ino)
        pending = self._opens.get(key, 0)
        if pending:  # never sent: the open and its release cancel out
            if pending == 1:
                del self._opens[key]
            else:
                self._opens[key] = pending - 1
            return
        self._releases.append(key)

    def _take_opens(self, limit: int) -> tuple[list[tuple[tuple[str, int], int]], list[Open]]:
        """Up to ``limit`` queued opens, taken to be sent: (what to put back if
        the send fails, the ops)."""
        todo = list(self._opens.items())[:limit]
        for key, _ in todo:
            del self._opens[key]
        opens = [
            Open(now_ns(), s, i) for (s, i), n in todo for _ in range(n) if s == self.meta.session
        ]
        return todo, opens

    def _put_back_opens(self, todo: list[tuple[tuple[str, int], int]]) -> None:
        """Queued again (their send failed); a lost session's are dropped."""
        for key, n in todo:
            if key[0] == self.meta.session:
                self._opens[key] = self._opens.get(key, 0) + n

    def _opens_result(self, op: Open, result: Attr | PrismError | None) -> None:
        if isinstance(result, PrismError):  # its last name went long ago
            log.info("open of inode %d not registered: %s", op.ino, result.message)

    async def _send_opens(self) -> None:
        """Register the opens of existing files made since the last batch:
        those queued now (opens made while these are on their way wait for
        the next round, with those after them, rather than going one or two
        a batch behind each other)."""
        left = len(self._opens)
        while left > 0 and self._opens:
            todo, opens = self._take_opens(min(left, MAX_BATCH))
            left -= len(todo)
            if not opens:
                continue
            try:
                results = await self.meta.batch(opens)
            except BaseException:
                self._put_back_opens(todo)
                raise
            for op, result in zip(opens, results, strict=True):
                self._opens_result(op, result)

    async def _send_releases(self) -> None:
        """Send the queued opens, then the releases and atime updates, in batches."""
        await self._send_opens()
        while self._releases or self._atimes:
            ops: list[MetaCommand] = []
            while self._atimes and len(ops) < MAX_BATCH:
                ino, ns = self._atimes.popitem()
                ops.append(UpdateAtime(ns, ino, ns))
            todo, self._releases = (
                self._releases[: MAX_BATCH - len(ops)],
                self._releases[MAX_BATCH - len(ops) :],
            )
            # The opens of a session the cluster ended went with it.
            ops += [Release(now_ns(), s, i) for s, i in todo if s == self.meta.session]
            if not ops:
                continue
            try:
                await self.meta.batch(ops)
            except BaseException:
                self._releases[:0] = todo
                raise

    async def background(self) -> None:
        """For the mount's lifetime: send releases in batches, settle the
        deferred creates and unlinks older than ``settle_s`` (so other mounts
        see them), and commit data buffered in open files for longer than
        ``writeback_s`` (the kernel never tells a FUSE daemon of ``sync``)."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery  # reads ahead of open files run here
            if self._leases is not None:
                nursery.start_soon(self._leases.run)
                nursery.start_soon(self._leases.renew)
                if self.opts.batch_meta:
                    self._uploads = Uploads(nursery)
            while True:
                await trio.sleep(RELEASE_EVERY)
                try:
                    await self._send_releases()
                    now = trio.current_time()
                    if (
                        any(
                            h.pending and now - h.created > self.opts.settle_s
                            for h in self._open.values()
                        )
                        or any(now - at > self.opts.settle_s for _, at, _ in self._unlinks.values())
                        or any(now - m.created > self.opts.settle_s for m in self._made.values())
                        or self._expiring(now)
                    ):
                        await self._settle()
                    since = self._held.since
                    if since is not None and now - since > self.opts.settle_s:
                        # In the order they were made: deferred unlinks and
                        # creates (whose directory times the held utimens of
                        # that directory, made later, must override) first.
                        await self._settle()
                    for handle in list(self._open.values()):
                        f = handle.file
                        if (
                            f.dirty_since is not None
                            and now - f.dirty_since > self.opts.writeback_s
                        ):
                            f.dirty_since = None  # one writeback at a time per file
                            nursery.start_soon(self._write_back, handle)
                except PrismError as exc:
                    log.warning("background namespace work failed, will retry: %s", exc.message)
                except Exception:
                    log.exception("background namespace work failed, will retry")

    async def _write_back(self, handle: Handle) -> None:
        try:
            await handle.file.flush()
        except PrismError as exc:  # kept dirty: the next writeback, fsync or close retries
            log.warning(
                "writeback of inode %d failed, will retry: %s", handle.file.ino, exc.message
            )

    async def sync_all(self) -> None:
        """``prismfs sync``: everything this mount holds back reaches the cluster
        (deferred unlinks and creates, data buffered in open files) and is
        durable when this returns (EIO if held-back changes were lost since
        the last such call)."""
        await self._settle()
        self._check_lost()
        failures: list[PrismError] = []

        async def flush(handle: Handle) -> None:
            try:
                await handle.file.flush()
            except PrismError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for handle in list(self._open.values()):
                if not handle.file.stale:
                    nursery.start_soon(flush, handle)
        if failures:
            raise failures[0]
