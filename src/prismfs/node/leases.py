"""Shared directory leases on the metadata leader: grants, recalls, the gate
every namespace change passes.

Theory of operation. The rules are `prismfs.meta.leases` (modelled and
checked in `prismfs.sim.leases`); this module runs them on the leader, on
trio's monotonic clock. A *key* is a directory's inode number: a lease on it
covers the directory's names (which inode each one is, and which names do
not exist) and the directory's own attributes. File attributes are not
leased (close-to-open and ``attr_timeout`` as before).

* **Grants.** A lookup, a listing or a getattr of a directory answered by
  the leader to a mount that names itself (``holder``) comes with a grant
  (`grant`), unless a change of that directory is pending.
* **The gate.** Every client command that changes a directory passes
  `begin` before it is appended to the log: the keys it changes are
  locked (shared: many changes of a directory may be pending together;
  exclusive for rmdir and rename, whose keys depend on what a name refers
  to, looked up under the lock), the other holders are recalled (queued
  for their `LeasePoll`), and the change waits until every one acknowledged
  or its lease surely ended, and until a new leader's blind time is over.
  `Change.finish` (after the entry applied) ends the change: the writer's
  lease continues under a new id if it can (`LeaseTable.end_change`), and
  a directory it created comes with a first grant. A change whose fate is
  unknown (it timed out, its caller went away) holds its keys until its
  entry applied or leadership moved on, so no grant is given on a state
  about to change.
* **The channel.** A mount keeps one `LeasePoll` open at the leader; it
  returns as soon as a recall for that mount is queued (or after
  ``wait_s``), and the next poll carries the acknowledgements.

All of it is soft state: a new leader starts blind (`start`) and a former
leader fails its waiting changes and polls with `NotLeader` (`stop`).
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterable

import trio

from prismfs.errors import DelegationLost, NotLeader
from prismfs.meta.commands import (
    Attr,
    Batch,
    BatchResults,
    GetAttr,
    GetXattr,
    ListXattr,
    Lookup,
    MetaFailed,
    MetaOk,
    Mkdir,
    ReadDir,
)
from prismfs.meta.leases import LeaseTable, command_keys
from prismfs.node.consensus_messages import LeaseGrant, LeasePoll, LeaseRecalls
from prismfs.stats import Stats
from prismfs.wire.auth import EVERYONE
from prismfs.wire.codec import decode_message
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.leases")

MAX_QUEUED = 100_000  # recalls queued for one mount that does not poll: dropped beyond
MAX_POLL_S = 30.0


class Change:
    """One command between `LeaseService.begin` and its end."""

    def __init__(
        self, service: LeaseService, holder: str, keys: set[int], cmd: object, mkdirs: bool
    ) -> None:
        self._service = service
        self.holder = holder
        self.keys = keys
        self._cmd = cmd
        self._mkdirs = mkdirs
        self._term = service.table.term
        self._done = False

    def finish(self, result: bytes) -> tuple[LeaseGrant, ...]:
        """The entry applied with ``result``: grants resume; the writer's
        continued leases and its new directories' first grants."""
        if self._done:
            return ()
        self._done = True
        service = self._service
        service.unlock(self.keys)
        if not service.leading or service.table.term != self._term:
            return ()
        table, now = service.table, trio.current_time()
        grants = []
        wants = bool(self.holder) and self.holder in service.delegating
        for key in sorted(self.keys):
            continued = table.end_change(key, self.holder or None, now, wants)
            if continued is not None:
                (term, seq), (old_term, old_seq) = continued[1], continued[0]
                delegated = wants and table.delegate_of(key, now) == self.holder
                grants.append(
                    LeaseGrant(
                        key, term, seq, table.seconds, (old_term, old_seq), exclusive=delegated
                    )
                )
        if self.holder and self._mkdirs:
            exclusive = self.holder in service.delegating
            for ino in _new_directories(self._cmd, result):
                gid = table.grant(ino, self.holder, now, exclusive)
                if gid is not None:
                    delegated = exclusive and table.delegate_of(ino, now) == self.holder
                    grants.append(
                        LeaseGrant(ino, gid[0], gid[1], table.seconds, exclusive=delegated)
                    )
        return tuple(grants)

    def abandon(self) -> None:
        """The entry will not apply (leadership moved on): end the change."""
        if self._done:
            return
        self._done = True
        self._service.unlock(self.keys)
        if self._service.table.term == self._term:
            for key in self.keys:
                self._service.table.end_change(key)


def _new_directories(cmd: object, result: bytes) -> list[int]:
    if isinstance(cmd, Mkdir):
        ok = _decode(result)
        return [ok.attr.ino] if isinstance(ok, MetaOk) and ok.attr is not None else []
    if isinstance(cmd, Batch):
        results = _decode(result)
        if not isinstance(results, BatchResults):
            return []
        out = []
        for raw, one in zip(cmd.ops, results.results, strict=False):
            out += _new_directories(decode_message(raw), one)
        return out
    return []


_REFUSED = b"\xa1t\xaaMetaFailed"  # the tag of `MetaFailed`, first in its encoding


_LOOKUP = b"\xa1t\xa6Lookup"  # the tag of `Lookup`, first in its encoding


def is_lookup(op: bytes) -> bool:
    """Whether the query ``op`` is a `Lookup`, from its first bytes."""
    return op[1:10] == _LOOKUP


def _refused(result: bytes) -> bool:
    """Whether ``result`` is a `MetaFailed`, from its first bytes."""
    return result[1:14] == _REFUSED


def _not_found(result: bytes) -> bool:
    answer = _decode(result)
    return isinstance(answer, MetaFailed) and answer.code == "not_found"


def _read_keys(q: object) -> tuple[int, ...]:
    """The directories a read covers (a delegation of them must be recalled
    first): the one looked up in, listed, or asked about by inode."""
    if isinstance(q, Lookup):
        return (q.parent,)
    if isinstance(q, (ReadDir, GetAttr, GetXattr, ListXattr)):
        return (q.ino,)
    return ()


def _decode(raw: bytes) -> object:
    try:
        return decode_message(raw)
    except Exception:
        return None


class LeaseService:
    def __init__(self, namespace: object, seconds: float, stats: Stats | None = None) -> None:
        self.ns = namespace
        self.table = LeaseTable(seconds if seconds > 0 else 1.0)
        self.enabled = seconds > 0
        self.leading = False
        self.stats = stats or Stats()
        self._locks: dict[int, int] = {}  # key -> shared holders (> 0) or -1: exclusive
        self._unlocked = trio.Event()
        self._acked = trio.Event()  # set (and replaced) when a recall is acknowledged
        self._recalls: dict[str, dict[int, tuple[int, int]]] = {}  # holder -> key -> gid
        self._polls: dict[str, trio.Event] = {}
        self._polled: dict[str, float] = {}  # holder -> when its last poll came
        self.delegating: set[str] = set()  # holders that asked for delegations

    def register(self, server: RpcServer) -> None:
        server.register(LeasePoll, self._on_poll, roles=EVERYONE)

    # --- leadership ---------------------------------------------------------------------

    def start(self, term: int) -> None:
        """This node became leader of ``term``: blind for one lease."""
        self.table.start(term, trio.current_time())
        self.leading = True
        self._recalls.clear()
        self._polled.clear()
        self._wake_all()

    def stop(self) -> None:
        """This node no longer leads: waiting changes and polls end (NotLeader)."""
        self.leading = False
        self._recalls.clear()
        self._wake_all()

    def _wake_all(self) -> None:
        for event in self._polls.values():
            event.set()
        self._acked.set()
        self._acked = trio.Event()

    # --- reads --------------------------------------------------------------------------

    def grant(
        self, op: bytes, result: bytes, holder: str, exclusive: bool = False
    ) -> LeaseGrant | None:
        """The lease that goes with the answer ``result`` to the query ``op``,
        if any; with ``exclusive``, a delegation where the rules allow one."""
        if not (self.enabled and self.leading and holder):
            return None
        q = _decode(op)
        if isinstance(q, (Lookup, ReadDir, GetAttr)):
            # (answers are decoded only where their first bytes cannot tell)
            if isinstance(q, Lookup):
                key = q.parent
                ok = not _refused(result) or _not_found(result)
            elif isinstance(q, ReadDir):
                key, ok = q.ino, not _refused(result)
            else:
                answer = _decode(result)
                key = q.ino
                ok = (
                    isinstance(answer, MetaOk)
                    and isinstance(answer.attr, Attr)
                    and stat.S_ISDIR(answer.attr.mode)
                )
            if ok:
                now = trio.current_time()
                if exclusive:
                    self._wants_delegations(holder)
                gid = self.table.grant(key, holder, now, exclusive)
                if gid is not None:
                    self.stats.count("leases.granted")
                    delegated = exclusive and self.table.delegate_of(key, now) == holder
                    if delegated:
                        self.stats.count("leases.delegated")
                    return LeaseGrant(key, gid[0], gid[1], self.table.seconds, exclusive=delegated)
                self.stats.count("leases.withheld")
        return None

    def _wants_delegations(self, holder: str) -> None:
        if holder not in self.delegating:
            if len(self.delegating) > MAX_QUEUED:
                self.delegating.clear()
            self.delegating.add(holder)

    # --- reads of delegated directories ----------------------------------------------------

    def read_blocked(self, op: bytes, holder: str) -> bool:
        """Whether the read ``op`` by ``holder`` touches a directory another
        mount holds delegated (it must recall it first: `before_read`)."""
        table = self.table
        if not (self.enabled and self.leading and (table.delegations or table.lapsed)):
            return False
        now = trio.current_time()
        blocked = False
        for key in _read_keys(_decode(op)):
            table.touch(key, holder, now)  # (no late flush of a lapsed delegation after this)
            blocked = blocked or table.delegate_of(key, now) not in (None, holder)
        return blocked

    def blocked_inode(self, result: bytes, holder: str) -> int | None:
        """A lookup's answer naming a directory another mount holds delegated
        (its attributes may be behind: recall it, then read again)."""
        table = self.table
        if not (self.enabled and self.leading and (table.delegations or table.lapsed)):
            return None
        if _refused(result):
            return None
        answer = _decode(result)
        if not isinstance(answer, MetaOk) or answer.attr is None:
            return None
        ino = answer.attr.ino
        now = trio.current_time()
        table.touch(ino, holder, now)
        delegate = table.delegate_of(ino, now)
        return ino if delegate not in (None, holder) else None

    async def before_read(self, op: bytes, holder: str, extra: Iterable[int] = ()) -> None:
        """Recall the delegations of other mounts on what the read ``op`` (and
        the keys ``extra``) covers, and wait until each flushed and
        acknowledged or surely ended."""
        keys = set(_read_keys(_decode(op))) | set(extra)
        table = self.table
        begun: list[int] = []
        try:
            self._check_leading()
            now = trio.current_time()
            for key in keys:
                recall = table.begin_read(key, holder, now)
                if recall is not None:
                    begun.append(key)
                    self._queue_recalls(key, recall, now)
                    self.stats.count("leases.read_recalls")
            if begun:
                await self._wait_ready(begun)
        finally:
            if self.table is table and self.leading:
                for key in begun:
                    table.end_change(key, None, trio.current_time())

    def check_delegated(self, holder: str, delegated: Iterable[tuple[int, int, int]]) -> set[int]:
        """The keys of a flush made under ``delegated``, if the leader still
        counts each of those delegations; else `DelegationLost` (the flush
        must not be applied: others may have read the directory since).
        `NotLeader` on a node that does not lead (yet, or any more: a
        leadership transfer): the flush goes to the leader, which tells."""
        self._check_leading()
        now = trio.current_time()
        self.table.flushing(holder, now)  # (its recalled delegations last while it flushes)
        keys = set()
        for key, term, seq in delegated:
            if self.table.delegation(key, now) != (holder, (term, seq)):
                if self.table.flushable(key, holder, (term, seq), now):
                    # It ran out (the mount was slow to renew or flush),
                    # and nobody read or changed the directory since.
                    self.stats.count("leases.flushed_after_lapse")
                    log.info(
                        "directory %d: a flush under a delegation that ran out applied "
                        "(nobody else was at the directory since)",
                        key,
                    )
                    keys.add(key)
                    continue
                self.stats.count("leases.flush_refused")
                if term == self.table.term:
                    log.warning(
                        "directory %d: a flush from %s under its delegation (%d, %d) refused: "
                        "the delegation now is %s, a late flush would be under %s",
                        key,
                        holder,
                        term,
                        seq,
                        self.table.delegation(key, now),
                        self.table.lapsed.get(key),
                    )
                raise DelegationLost(
                    f"the delegation of directory {key} ended before its changes were "
                    "flushed; they were not applied",
                    ino=key,
                    # granted by an earlier leader (see `MetaClient.batch`)
                    new_leader=term < self.table.term,
                )
            keys.add(key)
        return keys

    # --- changes ------------------------------------------------------------------------

    async def begin(
        self, holder: str, op: bytes, delegated: tuple[tuple[int, int, int], ...] = ()
    ) -> Change | None:
        """Lock what ``op`` changes, recall the other holders and wait until the
        change may be applied; None for a command that changes no directory.
        A flush made under ``delegated`` passes its own delegated directories
        at once (`check_delegated`): the change that recalled them waits for
        the acknowledgement, which comes after this flush."""
        if not self.enabled:
            return None
        own = self.check_delegated(holder, delegated) if delegated else set()
        cmd = _decode(op)
        keys = command_keys(cmd)
        keys.shared -= own
        keys.exclusive -= own
        if not keys.all():
            # (a delegate's own mkdir still gets its new directory's first grant)
            return Change(self, holder, set(), cmd, True) if keys.mkdirs and holder else None
        while True:
            self._check_leading()
            if self._free(keys.shared, keys.exclusive):
                self._lock(keys.shared, keys.exclusive)
                targets = self._targets(keys.lookups) - keys.all() - own
                if not targets or self._free((), targets):
                    self._lock((), targets)
                    keys.exclusive |= targets
                    break
                self.unlock(keys.all())
            await self._unlocked.wait()
        change = Change(self, holder, keys.all(), cmd, keys.mkdirs)
        try:
            await self._recall_and_wait(holder, change.keys)
        except BaseException:
            change.abandon()
            raise
        return change

    def _targets(self, lookups: Iterable[tuple[int, bytes]]) -> set[int]:
        child = getattr(self.ns, "_child", None)
        if child is None:
            return set()
        return {ino for parent, name in lookups if (ino := child(parent, name)) is not None}

    def _free(self, shared: Iterable[int], exclusive: Iterable[int]) -> bool:
        return all(self._locks.get(k, 0) >= 0 for k in shared) and all(
            k not in self._locks for k in exclusive
        )

    def _lock(self, shared: Iterable[int], exclusive: Iterable[int]) -> None:
        for k in shared:
            self._locks[k] = self._locks.get(k, 0) + 1
        for k in exclusive:
            self._locks[k] = -1

    def unlock(self, keys: Iterable[int]) -> None:
        for k in keys:
            held = self._locks.get(k, 0)
            if held > 1:
                self._locks[k] = held - 1
            else:
                self._locks.pop(k, None)
        self._unlocked.set()
        self._unlocked = trio.Event()

    async def _recall_and_wait(self, holder: str, keys: set[int]) -> None:
        table = self.table
        now = trio.current_time()
        for key in keys:
            self._queue_recalls(key, table.begin_change(key, holder, now), now)
        await self._wait_ready(keys)

    def _queue_recalls(self, key: int, recall: dict[str, tuple[int, int]], now: float) -> None:
        for other, gid in recall.items():
            if now - self._polled.get(other, now) > 2 * MAX_POLL_S:
                # Gone (a mount that stopped, a session replaced): nobody
                # will fetch this; its lease just runs out.
                self._recalls.pop(other, None)
                self._polled.pop(other, None)
                continue
            self._polled.setdefault(other, now)
            queued = self._recalls.setdefault(other, {})
            if len(queued) >= MAX_QUEUED:
                queued.clear()  # it has not polled for long: its leases end anyway
            queued[key] = max(gid, queued.get(key, gid))
            self.stats.count("leases.recalled")
            event = self._polls.get(other)
            if event is not None:
                event.set()

    async def _wait_ready(self, keys: Iterable[int]) -> None:
        keys = list(keys)
        table = self.table
        now = trio.current_time()
        waited = False
        while True:
            self._check_leading()
            now = trio.current_time()
            ready = max(table.ready_at(key, now) for key in keys)
            if ready <= now:
                break
            waited = True
            with trio.move_on_after(ready - now):
                await self._acked.wait()
        if waited:
            self.stats.observe("leases.recall_wait", trio.current_time() - now)

    def _check_leading(self) -> None:
        if not self.leading:
            raise NotLeader("this node does not lead now (leadership changed)")

    # --- the channel --------------------------------------------------------------------

    async def _on_poll(self, request: LeasePoll, call: Call) -> LeaseRecalls:
        self._check_leading()
        holder = request.holder
        self._polled[holder] = trio.current_time()
        if request.writeback:
            self._wants_delegations(holder)
        if request.acks:
            for key, term, seq in request.acks:
                self.table.recalled(key, holder, (term, seq))
            self._acked.set()
            self._acked = trio.Event()
        if not self._recalls.get(holder):
            event = self._polls[holder] = trio.Event()
            with trio.move_on_after(max(0.0, min(request.wait_s, MAX_POLL_S))):
                await event.wait()
            if self._polls.get(holder) is event:
                del self._polls[holder]
            self._check_leading()
        queued = self._recalls.pop(holder, {})
        return LeaseRecalls(tuple((key, gid[0], gid[1]) for key, gid in queued.items()))
