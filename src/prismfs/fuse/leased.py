"""A mount's directory leases: what it may answer about a directory without
asking the cluster, and the channel on which the leader recalls that.

Theory of operation. The rules are `prismfs.meta.leases` (`HeldLeases`);
the leader's side is `prismfs.node.leases`. A lookup, listing page or
getattr of a directory sent to the leader names this mount (its session)
as holder; the answer may come with a grant on the directory. Under it the
mount keeps a `DirCopy`: the names it learned (an inode's attributes, or
"no such name"), whether it knows every name (a listing read to its end, or
a directory it created itself), and the directory's own attributes. While
the lease lasts:

* a lookup of a name the copy knows is answered here: a name that does not
  exist always (the negative lookup before every create costs nothing), a
  directory with its own leased attributes, a file or symlink only with
  attributes younger than ``attr_timeout`` (file attributes are not
  leased);
* the kernel may keep the entries it was given for the rest of the lease
  (``entry_timeout``), and a directory's attributes likewise: the names it
  was told are remembered, to be invalidated on a recall.

A change this mount makes (`changing`/`changed`, told by `MetaClient`)
hides the copies of the directories it changes until its answer is back;
then the leader's continuation lets the mount apply the change to the copy
(a name created, removed, renamed) and keep it, else the copy is dropped.
A directory this mount created comes with a first grant, on an empty,
complete copy: the creates that fill it need no lookups.

Delegations (write-back). With ``writeback`` the mount asks for its leases
exclusive; a directory it is the only holder of comes delegated. While the
delegation lasts with time to flush (`delegation`), the mount may create
and unlink in that directory without asking (`prismfs.fuse.deferred`), and
its changes there carry the delegation (`MetaClient.batch`'s
``delegated``): the leader applies them without recalling anyone, and
the copy is kept, with the change applied to it (`changed`). A recall of a
delegated directory flushes everything the mount holds back first
(``before_ack``), then acknowledges: whoever recalled it sees it all.

Recalls come on a long poll to the leader (`run`). A recalled copy is
dropped at once, then the kernel forgets what it was told of the directory
(`pyfuse3.invalidate_entry`/`invalidate_inode` in a worker thread: they
may block on the kernel's lock of a directory that has a request of this
mount in flight, so never from a handler), and the recall is acknowledged
once that is done or the kernel's own timeouts for those entries ran out,
whichever is first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import pyfuse3
import trio

from prismfs.errors import PrismError
from prismfs.fuse.kernel_root import kernel_ino
from prismfs.fuse.owned import OwnedFiles
from prismfs.meta.client import MetaClient, decode_result
from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    Attr,
    DirPage,
    GetAttr,
    Link,
    Lookup,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    ReadDir,
    Rename,
    Rmdir,
    Symlink,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.leases import CannotApply, GrantId, HeldLeases, command_keys
from prismfs.node.consensus_messages import LeaseGrant
from prismfs.stats import Stats
from prismfs.wire.codec import decode_message

log = logging.getLogger("prismfs.fuse.leases")

POLL_S = 5.0  # how long one recall poll waits at the leader
RENEW_EVERY = 0.2  # seconds between looks for leases to renew
RENEW_LEFT = 0.6  # a complete copy in use is renewed when less than this is left
RENEW_DELEGATED = 0.9  # a delegated one in busy use, when less than this is left
MARGIN_S = 0.6  # a delegation is used only with this much of it left (time to flush)
LIST_AFTER = 4  # lookups a copy could not answer before the whole listing is read
LIST_MAX = 5000  # names read that way at most
MAX_NAMES = 100_000  # names kept per directory copy (beyond: no longer complete)
STALE = -math.inf
"""When a name's attributes from a change of this mount were current: never
(the rest of its batch, a data commit, may have changed them already)."""


@dataclass
class DirCopy:
    """What this mount knows of one directory under its lease."""

    names: dict[bytes, tuple[Attr, float] | None] = field(default_factory=dict)
    # name -> (its attributes, when the cluster gave them (trio clock)) or None: no such name
    complete: bool = False  # every name of the directory is in ``names``
    listed_to: int | None = None  # a listing read from its start up to this cookie
    attr: Attr | None = None  # the directory's own attributes
    told: set[bytes] = field(default_factory=set)  # names the kernel was given
    told_until: float = 0.0  # when the kernel's entries of them surely expired
    told_all: bool = True  # False: too many names to track, a recall waits told_until
    used_at: float = -math.inf  # when it last answered something (trio clock)
    misses: int = 0  # lookups it could not answer

    def absorb(self, other: DirCopy) -> DirCopy:
        """Facts learned under the same grant (the same state): one copy."""
        self.names.update(other.names)
        self.complete = self.complete or other.complete
        if other.attr is not None:
            self.attr = other.attr
        if other.listed_to is not None:
            self.listed_to = max(self.listed_to or 0, other.listed_to)
        return self


class DirLeases:
    """The leases this mount holds (see the module docstring)."""

    def __init__(self, meta: MetaClient, stats: Stats, writeback: bool = False) -> None:
        self.meta = meta
        self.stats = stats
        self.held = HeldLeases()
        self.owned = OwnedFiles()  # files made here under a delegation still held
        self.writeback = writeback  # ask for delegations
        self._session = meta.session
        self._dirs: set[int] = set()  # inodes seen to be directories
        # Run before recalls are acknowledged: flush what is held back.
        self.before_ack: Callable[[], Awaitable[None]] | None = None
        # The directories something is held back under: their delegations
        # are renewed while they last, busy or not.
        self.keep: Callable[[], set[int]] | None = None
        # Called with a directory this mount made and its first delegation,
        # once installed: what is held back in it is sent under that from
        # now on (`DeferredWork._retag`).
        self.on_delegated: Callable[[int, tuple[int, int, int]], None] | None = None

    def delegation(self, key: int, now: float) -> tuple[int, int, int] | None:
        """``(key, term, seq)`` of this mount's delegation of directory ``key``
        if it may change the directory without asking now (it has time to
        flush), else None."""
        if not self.writeback or self.meta.session != self._session:
            return None
        if not self.held.delegated(key, now, MARGIN_S):
            return None
        gid = self.held.gid_of(key)
        return None if gid is None else (key, gid[0], gid[1])

    def delegation_left(self, key: int, now: float) -> float:
        """Seconds left of the lease of delegated directory ``key`` (0: none)."""
        peek = self.held.peek(key)
        return 0.0 if peek is None else max(0.0, peek[1] - now)

    # --- answers from the copies ------------------------------------------------------

    def _copy(self, key: int, now: float) -> tuple[DirCopy, float] | None:
        """The copy of directory ``key`` and the seconds its lease has left."""
        if self.meta.session != self._session:
            self._forget_all()
        found, value = self.held.get(key, now)
        if not found or not isinstance(value, DirCopy):
            return None
        value.used_at = now
        peek = self.held.peek(key)
        return value, (peek[1] - now if peek is not None else 0.0)

    def name(
        self, parent: int, name: bytes, now: float, ttl: float
    ) -> tuple[bool, Attr | None, float, float]:
        """(known, its attributes or None for no such name, lease seconds
        left, seconds its attributes may still be used). Attributes of a
        non-directory count only while younger than ``ttl``; a directory's
        while this mount holds a lease on it."""
        got = self._copy(parent, now)
        if got is None:
            return False, None, 0.0, 0.0
        copy, left = got
        if name in copy.names:
            fact = copy.names[name]
            if fact is None:
                return True, None, left, 0.0
            attr, at = fact
            if stat.S_ISDIR(attr.mode):
                sub = self._copy(attr.ino, now)
                if sub is not None and sub[0].attr is not None:
                    return True, sub[0].attr, left, sub[1]
            else:
                owned = self.owned_attr(attr.ino, now)
                if owned is not None:
                    return True, owned[0], left, min(ttl, owned[1])
            if now - at < ttl:
                return True, attr, left, ttl - (now - at)
            return False, None, 0.0, 0.0
        if copy.complete:
            return True, None, left, 0.0
        return False, None, 0.0, 0.0

    def named(self, parent: int, name: bytes, now: float) -> tuple[Attr, Attr, float] | None:
        """For a name the leased copy of ``parent`` has that is not a
        directory: (its attributes as last known, however old, the
        directory's, seconds left of the lease). None if it has no such
        name, does not know, or it is a directory."""
        got = self._copy(parent, now)
        if got is None:
            return None
        copy, left = got
        fact = copy.names.get(name)
        if fact is None or copy.attr is None or stat.S_ISDIR(fact[0].mode):
            return None
        return fact[0], copy.attr, left

    def owned_attr(self, ino: int, now: float) -> tuple[Attr, float] | None:
        """The attributes of file ``ino`` if this mount owns it
        (`prismfs.fuse.owned`), and the seconds they may be used."""
        if self.meta.session != self._session:
            self._forget_all()
        got = self.owned.get(ino, lambda parent: self.held.exclusive_gid(parent, now))
        if got is None:
            return None
        peek = self.held.peek(got[0])
        return got[1], 0.0 if peek is None else max(0.0, peek[1] - now)

    def ino_of(self, parent: int, name: bytes, now: float) -> int | None:
        """The inode ``name`` refers to, if the leased copy of ``parent`` knows."""
        got = self._copy(parent, now)
        fact = got[0].names.get(name) if got is not None else None
        return None if fact is None else fact[0].ino

    def left(self, key: int, now: float) -> float:
        """Seconds left of this mount's lease on directory ``key`` (0: none)."""
        got = self._copy(key, now)
        return 0.0 if got is None else max(0.0, got[1])

    def is_dir(self, ino: int) -> bool:
        """Whether ``ino`` was seen to be a directory (a getattr of anything
        else asks without naming this mount: files are not leased)."""
        return ino in self._dirs

    def saw(self, attr: Attr) -> None:
        if stat.S_ISDIR(attr.mode):
            if len(self._dirs) > MAX_NAMES:
                self._dirs.clear()
            self._dirs.add(attr.ino)

    def dir_attr(self, ino: int, now: float) -> tuple[Attr, float] | None:
        got = self._copy(ino, now)
        if got is None or got[0].attr is None:
            return None
        return got[0].attr, got[1]

    def told(self, parent: int, name: bytes, until: float) -> None:
        """The kernel was given ``name`` in ``parent`` (an entry, or its absence)."""
        peek = self.held.peek(parent)
        if peek is not None and isinstance(peek[0], DirCopy):
            copy = peek[0]
            if copy.told_all:
                copy.told.add(name)
                if len(copy.told) > MAX_NAMES:
                    copy.told.clear()
                    copy.told_all = False
            copy.told_until = max(copy.told_until, until)

    # --- reads at the leader ---------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> tuple[Attr | None, float]:
        """Ask the leader: the attributes (None: no such name) and the lease
        seconds the answer carries (0: none). Other errors are raised."""
        mark, sent = self.held.mark(parent), trio.current_time()
        raw, grant = await self.meta.query_leased(Lookup(parent, name), self.writeback)
        result = decode_message(raw)
        attr: Attr | None = None
        if not (isinstance(result, MetaFailed) and result.code == "not_found"):
            attr = _attr(decode_result(raw))
            self.saw(attr)
        left = self._keep(
            parent, grant, DirCopy(names={name: None if attr is None else (attr, sent)}), sent, mark
        )
        peek = self.held.peek(parent) if left else None
        if peek is not None and isinstance(peek[0], DirCopy) and not peek[0].complete:
            peek[0].misses += 1
            if peek[0].misses == LIST_AFTER:
                # Lookups keep missing: read the listing once (every name known).
                # Here, not in the background: while the kernel is in a lookup
                # of this directory, no change of this mount to it is on its
                # way (that would make the listing's grant unusable).
                await self._list(parent)
                # A recall may have come meanwhile: the kernel must not keep
                # this answer past it (its invalidation may have run first).
                left = min(left, self.left(parent, trio.current_time()))
        return attr, left

    async def _list(self, ino: int) -> None:
        cookie, read = 0, 0
        try:
            while read < LIST_MAX:
                page, left = await self.readdir_page(ino, cookie, 500)
                read += len(page.entries)
                if not left or not page.more:
                    break
                cookie = page.entries[-1].cookie
            self.stats.count("leases.listed")
        except PrismError as exc:
            log.debug("listing directory %d for its lease: %s", ino, exc.message)

    async def getattr(self, ino: int) -> tuple[Attr, float]:
        mark, sent = self.held.mark(ino), trio.current_time()
        raw, grant = await self.meta.query_leased(GetAttr(ino), self.writeback)
        attr = _attr(decode_result(raw))
        left = self._keep(ino, grant, DirCopy(attr=attr), sent, mark)
        return attr, left

    async def readdir_page(self, ino: int, cookie: int, limit: int) -> tuple[DirPage, float]:
        mark, sent = self.held.mark(ino), trio.current_time()
        raw, grant = await self.meta.query_leased(ReadDir(ino, cookie, limit), self.writeback)
        page = decode_result(raw)
        if not isinstance(page, DirPage):
            raise TypeError(f"expected DirPage, got {type(page).__name__}")
        copy = DirCopy(names={e.name: (e.attr, sent) for e in page.entries})
        for e in page.entries:
            self.saw(e.attr)
        last = page.entries[-1].cookie if page.entries else cookie
        before = self.held.gid_of(ino)
        if cookie == 0:
            copy.listed_to = last
            copy.complete = not page.more and len(copy.names) <= MAX_NAMES
        left = self._keep(ino, grant, copy, sent, mark)
        if left and cookie and grant is not None and before == (grant.term, grant.seq):
            # the next page of a listing read under this very lease
            kept = self.held.peek(ino)
            if kept is not None and isinstance(kept[0], DirCopy) and kept[0].listed_to == cookie:
                kept[0].listed_to = last
                kept[0].complete = not page.more and len(kept[0].names) <= MAX_NAMES
        return page, left

    def _keep(
        self, key: int, grant: LeaseGrant | None, copy: DirCopy, sent: float, mark: int
    ) -> float:
        if grant is None or grant.key != key:
            return 0.0
        if self.meta.session != self._session:
            self._forget_all()
            return 0.0
        kept = self.held.granted(
            key,
            copy,
            (grant.term, grant.seq),
            grant.seconds,
            sent,
            mark,
            merge=lambda held, new: held.absorb(new),  # type: ignore[attr-defined]
            exclusive=grant.exclusive,
        )
        if not kept:
            return 0.0
        self.stats.count("leases.kept")
        if grant.exclusive:
            self.stats.count("leases.delegated")
        peek = self.held.peek(key)
        if peek is not None and isinstance(peek[0], DirCopy):
            peek[0].used_at = trio.current_time()
        return max(0.0, peek[1] - trio.current_time()) if peek is not None else 0.0

    def _forget_all(self) -> None:
        """A new session: the leases of the old one are not ours any more."""
        self.held.clear()
        self.owned.clear()
        self._session = self.meta.session

    # --- own changes (`prismfs.meta.client.LeaseHooks`) --------------------------------------

    def changing(
        self, ops: Sequence[MetaCommand], delegated: tuple[tuple[int, int, int], ...] = ()
    ) -> None:
        if self.writeback:
            self.owned.changing(ops, self._resolve)
        own = {d[0] for d in delegated}
        for key in self._keys(ops) - own:
            self.held.changing(key)
        # (`changed` computes the same keys again: the copies it looks at
        # are hidden meanwhile, so the answer is the same)

    def changed(
        self,
        ops: Sequence[MetaCommand],
        results: Sequence[bytes] | None,
        grants: tuple[LeaseGrant, ...],
        sent_at: float,
        delegated: tuple[tuple[int, int, int], ...] = (),
    ) -> None:
        by_key = {g.key: g for g in grants}
        own = {d[0]: (d[1], d[2]) for d in delegated}
        answers = _Answers(results) if results is not None else None
        if self.writeback:
            self._changed_owned(ops, answers, by_key, own)
        keys = self._keys(ops) - set(own)
        if own and answers is not None:
            self._changed_own(own, ops, answers.all(), sent_at)
        if not keys and not by_key and not any(isinstance(op, UpdateAtime) for op in ops):
            return  # (opens, releases, data commits: nothing leased)
        decoded = answers.all() if answers is not None else None
        for op in ops:
            if isinstance(op, UpdateAtime):  # not leased: kept right in this mount's copy
                peek = self.held.peek(op.ino)
                copy = peek[0] if peek is not None else None
                if isinstance(copy, DirCopy) and copy.attr is not None:
                    atime = max(copy.attr.atime_ns, op.atime_ns)
                    copy.attr = msgspec.structs.replace(copy.attr, atime_ns=atime)
        for key in keys | set(by_key):
            grant = by_key.get(key)
            if grant is None or grant.continues == (0, 0) or decoded is None:
                self.held.changed(key)
                continue
            kept = self.held.changed(
                key,
                (grant.continues, (grant.term, grant.seq)),
                lambda copy, key=key: _apply(copy, key, ops, decoded, sent_at),  # type: ignore[misc]
                grant.seconds,
                sent_at,
                grant.exclusive,
            )
            self.stats.count("leases.continued" if kept else "leases.dropped")
        if decoded is None:
            return
        for grant in grants:  # directories this change created: empty, every name known
            if grant.continues != (0, 0):
                continue
            attr = _created_attr(grant.key, decoded)
            if attr is not None:
                self.saw(attr)
                self.held.granted(
                    grant.key,
                    DirCopy(complete=True, listed_to=0, attr=attr),
                    (grant.term, grant.seq),
                    grant.seconds,
                    sent_at,
                    self.held.mark(grant.key),
                    exclusive=grant.exclusive,
                )
                # What the same batch made in it after its mkdir (a flush of
                # a mount's write-back): the grant came after all of it.
                if self.held.gid_of(grant.key) != (grant.term, grant.seq):
                    continue
                try:
                    self.held.write_local(
                        grant.key,
                        lambda copy, key=grant.key: _apply(copy, key, ops, decoded, sent_at),  # type: ignore[misc]
                    )
                except CannotApply:
                    self.held.drop(grant.key)
                    continue
                if grant.exclusive and self.on_delegated is not None:
                    self.on_delegated(grant.key, (grant.key, grant.term, grant.seq))

    def _changed_owned(
        self,
        ops: Sequence[MetaCommand],
        answers: _Answers | None,
        by_key: dict[int, LeaseGrant],
        own: dict[int, tuple[int, int]],
    ) -> None:
        """Tell `OwnedFiles` (before the copies change: it resolves names in
        them as `changing` did)."""
        continued: dict[int, GrantId] = {}
        for key, grant in by_key.items():
            if grant.continues != (0, 0):
                new = (grant.term, grant.seq)
                self.owned.continued(key, grant.continues, new, grant.exclusive)
                if grant.exclusive:
                    continued[key] = new

        def owned_under(parent: int) -> GrantId | None:
            # (checked again at each use: `OwnedFiles.get` compares it with
            # the grant held then, so a continuation refused here is harmless)
            return own.get(parent) or continued.get(parent)

        self.owned.changed(
            ops, answers.get if answers is not None else None, self._resolve, owned_under
        )

    def _resolve(self, parent: int, name: bytes) -> int | None:
        """(`prismfs.fuse.owned.Resolve`)"""
        peek = self.held.peek(parent)
        if peek is None or not isinstance(peek[0], DirCopy):
            return None
        copy = peek[0]
        if name not in copy.names:
            return 0 if copy.complete else None
        fact = copy.names[name]
        return 0 if fact is None else fact[0].ino

    def _changed_own(
        self,
        own: dict[int, tuple[int, int]],
        ops: Sequence[MetaCommand],
        decoded: list[object],
        sent_at: float,
    ) -> None:
        """A change made under this mount's delegations: applied to their
        copies, which stay (a failed or unknown one leaves them as they are,
        and is not passed here: what it carried is still held back, or
        lost)."""
        for key, gid in own.items():
            if self.held.gid_of(key) != gid:
                # Recalled, or renewed under another grant meanwhile (its
                # delegation ran out first: the leader applied this flush
                # late, `LeaseTable.flushable`): a copy held now is from
                # before it.
                if self.held.gid_of(key) is not None:
                    self.held.drop(key)
                continue
            try:
                self.held.write_local(
                    key,
                    lambda copy, key=key: _apply(copy, key, ops, decoded, sent_at),  # type: ignore[misc]
                )
                self.stats.count("leases.written_back")
            except CannotApply:
                self.held.drop(key)

    def _keys(self, ops: Sequence[MetaCommand]) -> set[int]:
        keys: set[int] = set()
        for op in ops:
            found = command_keys(op)
            keys |= found.all()
            for parent, name in found.lookups:  # a directory renamed or removed here
                peek = self.held.peek(parent)
                if peek is not None and isinstance(peek[0], DirCopy):
                    fact = peek[0].names.get(name)
                    if fact is not None:
                        keys.add(fact[0].ino)
        return keys

    async def renew(self) -> None:
        """Keep the leases of complete copies in use: a lease that ran out
        would come back as a new grant, and the copy would no longer know
        every name. Asked again before it ends, the leader answers with the
        same grant if nothing changed (one read a second per busy directory).
        """
        while True:
            await trio.sleep(RENEW_EVERY)
            now = trio.current_time()
            kept = self.keep() if self.keep is not None else set()
            for key in self.held.held_keys():
                peek = self.held.peek(key)
                copy = peek[0] if peek is not None else None
                if peek is None or not isinstance(copy, DirCopy) or not isinstance(key, int):
                    continue
                until = peek[1]
                # A delegation in active use is renewed earlier: below its
                # margin (MARGIN_S) changes there go the synchronous way.
                busy = self.held.delegated(key, now) and (now - copy.used_at < 0.5 or key in kept)
                if (busy and 0 < until - now < RENEW_DELEGATED) or (
                    copy.complete and 0 < until - now < RENEW_LEFT and now - copy.used_at < 1.0
                ):
                    try:
                        await self.getattr(key)
                        self.stats.count("leases.renewed")
                    except PrismError as exc:
                        log.debug("lease renewal of directory %d: %s", key, exc.message)

    # --- recalls -------------------------------------------------------------------------------

    async def run(self) -> None:
        """The recall channel: poll the leader, drop and invalidate, acknowledge."""
        acks: list[tuple[int, int, int]] = []
        delay = 0.1
        while True:
            try:
                wait = min(POLL_S, self.meta.attempt_timeout / 2)  # answered within an attempt
                recalls = await self.meta.poll_recalls(acks, wait, self.writeback)
            except PrismError as exc:
                log.debug("lease poll: %s", exc.message)
                await trio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            delay = 0.1
            acks = []
            if not recalls:
                continue
            now = trio.current_time()
            todo: list[tuple[int, DirCopy]] = []
            until = forgotten = now
            peeks = {}
            for key, term, seq in recalls:
                peeks[key] = self.held.peek(key)
                self.held.recall(key, (term, seq))  # no more changes here without asking
            if self.before_ack is not None:
                # Whoever recalled it must see everything this mount did first.
                await self.before_ack()
            for key, term, seq in recalls:
                peek = peeks[key]
                self.stats.count("leases.recalls")
                if peek is not None and isinstance(peek[0], DirCopy):
                    todo.append((key, peek[0]))
                    until = max(until, peek[0].told_until)
                    if not peek[0].told_all:
                        forgotten = max(forgotten, peek[0].told_until)
                acks.append((key, term, seq))
            if todo:
                # Done, or the kernel's entries expired by themselves meanwhile.
                with trio.move_on_after(max(0.0, until - trio.current_time())):
                    await trio.to_thread.run_sync(_invalidate, todo, abandon_on_cancel=True)
                # Names not tracked: only their kernel timeouts can end them.
                await trio.sleep_until(forgotten)


def _invalidate(todo: list[tuple[int, DirCopy]]) -> None:
    for key, copy in todo:
        for name in list(copy.told):
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(kernel_ino(key), name)
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(kernel_ino(key), attr_only=True)


class _Answers:
    """A change's results, each decoded once, when first asked for."""

    def __init__(self, raw: Sequence[bytes]) -> None:
        self._raw = raw
        self._decoded: dict[int, object] = {}

    def get(self, n: int) -> object:
        if n not in self._decoded:
            self._decoded[n] = _decode(self._raw[n])
        return self._decoded[n]

    def all(self) -> list[object]:
        return [self.get(n) for n in range(len(self._raw))]


def _decode(raw: bytes) -> object:
    try:
        return decode_message(raw)
    except Exception:
        return None


def _attr(result: object) -> Attr:
    if not isinstance(result, MetaOk) or result.attr is None:
        raise TypeError(f"expected attributes, got {type(result).__name__}")
    return result.attr


def _parents(op: Rename | Rmdir) -> tuple[int, ...]:
    return (op.parent, op.new_parent) if isinstance(op, Rename) else (op.parent,)


def _created_attr(ino: int, decoded: Sequence[object]) -> Attr | None:
    for result in decoded:
        attr = result.attr if isinstance(result, MetaOk) else None
        if attr is not None and attr.ino == ino and stat.S_ISDIR(attr.mode):
            return attr
    return None


def _apply(
    copy: object, key: int, ops: Sequence[MetaCommand], results: Sequence[object], at: float
) -> object:
    """``copy`` of directory ``key`` after this mount's ``ops`` applied with
    ``results`` (the continuation says nothing else changed it meanwhile)."""
    if not isinstance(copy, DirCopy):
        raise CannotApply
    for op, result in zip(ops, results, strict=True):
        ok = result if isinstance(result, MetaOk) else None
        if ok is None and isinstance(result, MetaFailed):
            if result.code == "already_exists" or (
                result.code == "not_found"
                and isinstance(op, (Rename, Unlink))
                and op.parent == key
                and copy.names.get(op.name) is not None
            ):
                # (the copy said the name was free, or there: it is not
                # current; or a retry of a change whose first attempt
                # applied, which the copy does not have)
                raise CannotApply
            continue  # a failed op changed nothing
        if ok is None:
            raise CannotApply
        for parent in ok.parents:
            if parent.ino == key:
                copy.attr = parent
        if isinstance(op, (Mknod, Mkdir, Symlink)) and op.parent == key:
            if ok.attr is None:
                raise CannotApply
            copy.names[op.name] = (ok.attr, STALE)
        elif isinstance(op, Link) and op.new_parent == key:
            if ok.attr is None:
                raise CannotApply
            copy.names[op.new_name] = (ok.attr, STALE)
        elif isinstance(op, (Unlink, Rmdir)) and op.parent == key:
            copy.names[op.name] = None
        elif isinstance(op, (Rename, Rmdir)) and key not in (
            op.parent,
            getattr(op, "new_parent", 0),
        ):
            raise CannotApply  # the directory moved or removed itself
        elif isinstance(op, Rename) and op.flags & RENAME_EXCHANGE:
            raise CannotApply  # (rare: not worked out here)
        elif isinstance(op, Rename):
            moved = copy.names.get(op.name) if op.parent == key else None
            if op.parent == key:
                copy.names[op.name] = None
            if op.new_parent == key:
                if moved is None:
                    raise CannotApply
                copy.names[op.new_name] = (moved[0], STALE)  # (its ctime moved)
        if getattr(op, "ino", None) == key and not isinstance(op, (Mknod, Unlink)):
            copy.attr = ok.attr if ok.attr is not None and ok.attr.ino == key else None
    if len(copy.names) > MAX_NAMES:
        raise CannotApply
    return copy
