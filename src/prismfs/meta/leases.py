"""Shared read leases with recall: the leader's table and a mount's held leases.

Theory of operation. With the answer to a read of an object (a directory's
listing, an inode's attributes: a *key* here) the metadata leader may grant
the reader a lease of ``seconds``: while it lasts, the reader answers reads
of that key from its own copy. Before a change to a key is applied and
acknowledged, the leader *recalls* every other holder's lease on it and
waits until each has acknowledged the recall or its lease has surely ended.
So a read that starts after a change was acknowledged never returns what
was there before (linearizable across mounts), and a reader cut off from
the leader stops using its copy when its lease ends.

Clocks. Each side times leases on its own monotonic clock; clock *rates*
may differ by up to ``drift`` (as for the Raft leader lease). The holder
counts its lease from the moment it *sent* the read (before the leader
granted it) and shortens it by ``drift``: it stops within ``seconds`` of
real time after the grant. The leader counts ``seconds * (1 + drift)`` of
its own clock from the grant: at least ``seconds`` of real time.

Three rules close the races:

* A change waits for every holder the table knows when it is ready to be
  applied, not only those recalled when it began. While it is pending the
  leader grants no lease on its key (a read in that window gets the current
  value without one): each new grant would hold the change back by another
  lease, and readers could starve it.
* Every grant carries an id, increasing for the leader's term, and a recall
  names the highest id it recalls. A holder remembers, per key, the highest
  id recalled and installs no grant at or below it: a read reply that
  arrives after the recall that superseded it (messages are reordered) is
  used for that one read only.
* A new leader does not know which leases the old one granted: it applies no
  change until ``seconds * (1 + drift)`` of its clock have passed since it
  took over (`LeaseTable.blind_until`).
* A mount's own change is not recalled from it: it stops answering from its
  copy when it starts the change (`HeldLeases.changing`), and keeps no grant
  from a read that overlapped a change of its own to the same key (`mark` at
  the read's start, checked by `granted`): the leader may have answered that
  read just before the change, and the change's acknowledgement may be lost
  and come again from a new leader that knows nothing of the grant. (The
  model found this race: a mount's second process read the old value while
  the first one's change was on its way.)
* The writer keeps its lease through its own change when it can (so a mount
  working alone in a directory keeps answering its lookups itself): if its
  grant was still good when the change began and no other change was
  pending, nothing changed the key between that grant and this change, so
  the leader *continues* the grant under a new id once the change is
  applied (`end_change`), and the writer applies the change to its copy
  (`HeldLeases.changed`) if the copy it holds is that very grant. Anything
  else (another grant, a recall, a lost acknowledgement answered again
  without the continuation) drops the copy.

A repeated grant to a holder whose lease the leader still counts, with no
change since, keeps the grant's id (`grant`): the holder may then add what
it learns to what it already holds under that id.

Exclusive leases (*delegations*, for write-back). A holder that asks for it
and would be the key's only holder gets its lease exclusive: it may then
change the key in its own copy, answer at once, and send the changes later
(*flush*). Four more rules keep that linearizable for everybody else:

* Nobody else reads the key at the leader while it is delegated: such a
  read first recalls the delegate (`begin_read`, the same wait as a change's)
  and the delegate flushes before it acknowledges, so the read sees every
  change the delegate acknowledged to its own callers.
* A flush is applied only while the leader still counts the delegation it
  was made under (`delegation`: the same grant id; a recalled delegate
  counts until it acknowledged), in the
  delegate's order and without waiting behind the change that recalled it
  (that one waits for the acknowledgement, which comes after the flush).
  A recalled delegate that is still flushing keeps its delegation while
  its flushes keep coming (`flushing`: each one makes the lease last
  ``seconds`` more, up to `MAX_FLUSH_S` after the recall began): the one
  that recalled it waits longer, rather than the delegate losing the rest
  of a flush bigger than what was left of its lease. (Safe: a recalled
  delegate makes no new change under it, and the wait only grows.)
  A flush the leader refuses is lost with everything queued after it: the
  delegate lost a suffix of its acknowledged changes, as a local file system
  loses what was not fsynced in a crash, and says so (EIO on fsync). A late
  flush applied anyway would be worse: others would have read the key
  without it after it was acknowledged.
* A new leader knows no delegation, so no flush of one the old leader
  granted applies as a flush (the rule above): the node applies it the
  usual way instead, a change that recalls other holders, under the
  flush's own request id (`prismfs.node.consensus.Consensus.propose`), so
  one the old leader had logged applies once. Such a change by the
  delegate itself ends its delegation of the key but not what it made
  under it and has yet to flush: that stays flushable until somebody else
  reads or changes the key (`begin_change` keeps it with the lapsed ones).
  Nor does a new leader know the old leader's shared leases: it delegates
  nothing while blind (a delegation is a change; the model found this one).
* A delegation recalled for someone else's read or change makes the key
  shared for ``pingpong_s`` (no exclusive grants): two mounts working in one
  directory fall back to the synchronous way instead of trading the
  delegation back and forth.

Both classes are pure: the caller passes the time and carries the messages.
The deterministic simulation in `prismfs.sim.leases` drives them through
delays, reordering, loss, partitions, pauses, clock-rate skew and leader
changes, and checks every history for linearizability.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from prismfs.meta.commands import (
    Batch,
    Link,
    Mkdir,
    Mknod,
    RemoveXattr,
    Rename,
    Rmdir,
    SetAttr,
    SetXattr,
    Symlink,
    Unlink,
)
from prismfs.wire.codec import decode_message

DRIFT = 0.1
"""The largest relative difference of clock rates allowed for (as `prismfs.raft.lease`)."""
MAX_LAPSED = 10_000  # delegations that ran out kept for a late flush (`LeaseTable.lapsed`)
MAX_FLUSH_S = 30.0
"""How long after a recall of a delegation began a delegate that keeps
flushing keeps it (`LeaseTable.flushing`): the recaller waits that long at most."""


class CannotApply(Exception):
    """Raised by a holder's ``apply`` that cannot work out a change's effect
    on its copy: the copy is dropped instead."""


GrantId = tuple[int, int]
"""(leader term, sequence within the term): ordered across leaders."""


@dataclass
class _Key:
    holders: dict[str, tuple[GrantId, float]] = field(default_factory=dict)
    # holder -> (its latest grant's id, the leader time by which it surely ended)
    pending: int = 0  # changes waiting for recalls
    continuing: dict[str, GrantId] = field(default_factory=dict)
    # writer -> its grant, still good when its change began with none pending
    delegate: str | None = None  # the holder whose grant is exclusive
    shared_until: float = 0.0  # no exclusive grants before (ping-pong fallback)
    touched: bool = False  # a change (or a recall) began while it was delegated
    recalled_at: float | None = None  # when the first change pending now began


class LeaseTable:
    """The leader's side: who holds a lease on which key (soft state, lost with
    the leader: a new leader starts blind, see `start`)."""

    def __init__(
        self, seconds: float, drift: float = DRIFT, pingpong_s: float | None = None
    ) -> None:
        if seconds <= 0 or not 0 <= drift < 1:
            raise ValueError("a lease lasts a positive time and drift is in [0, 1)")
        self.seconds = seconds
        self.drift = drift
        self.pingpong_s = 2 * seconds if pingpong_s is None else pingpong_s
        self.term = 0
        self.blind_until = 0.0
        self._seq = 0
        self._keys: dict[Hashable, _Key] = {}
        # delegate -> the keys of its delegations a change or read recalls
        self._recalling: dict[str, set[Hashable]] = {}
        self.delegations = 0  # keys delegated now (or until `delegate_of` sees them end)
        # key -> (holder, grant) of a delegation that ran out with nothing
        # else done to the key since: a late flush under it may still apply
        # (several: each own change of the delegate ends one, and the next
        # delegation it gets may end the same way before its flushes came)
        self.lapsed: dict[Hashable, tuple[str, frozenset[GrantId]]] = {}

    def start(self, term: int, now: float) -> None:
        """This node became leader of ``term`` at ``now``: it knows no lease,
        and every lease the old leader granted may run for ``seconds`` more."""
        self.term = term
        self._seq = 0
        self._keys.clear()
        self._recalling.clear()
        self.delegations = 0
        self.lapsed.clear()
        self.blind_until = now + self.seconds * (1 + self.drift)

    def grant(
        self, key: Hashable, holder: str, now: float, exclusive: bool = False
    ) -> GrantId | None:
        """A lease on ``key`` for ``holder``, given with a read answered at
        ``now``; None while a change to ``key`` is pending or another holder
        has it delegated (`begin_read` first). With ``exclusive`` the lease
        is a delegation if ``holder`` is the only holder and the key is not
        in its ping-pong time (`delegate_of` tells); a delegation stays one
        when renewed."""
        state = self._keys.setdefault(key, _Key())
        if state.pending:
            return None
        delegate = self.delegate_of(key, now)
        if delegate is not None and delegate != holder:
            return None
        self._touch(key, holder)
        until = now + self.seconds * (1 + self.drift)
        held = state.holders.get(holder)
        if held is not None and held[1] > now:
            gid = held[0]  # nothing changed since: the same lease, longer
        else:
            self._seq += 1
            gid = (self.term, self._seq)
        state.holders[holder] = (gid, until)
        if exclusive:
            self._delegate(state, holder, now)
        return gid

    def _delegate(self, state: _Key, holder: str, now: float) -> None:
        """Make ``holder``'s lease a delegation if the key has none, is out
        of its ping-pong time, this leader is not blind, and no other
        holder's lease lasts (the one rule for grants and continuations)."""
        if (
            state.delegate is None
            and now >= max(state.shared_until, self.blind_until)
            and all(u <= now for h, (_, u) in state.holders.items() if h != holder)
        ):
            state.delegate = holder
            state.touched = False
            self.delegations += 1

    def delegate_of(self, key: Hashable, now: float) -> str | None:
        """The holder ``key`` is delegated to (its lease exclusive and, as
        far as this leader knows, not over: a recalled delegate counts until
        it acknowledged), if any."""
        state = self._keys.get(key)
        if state is None or state.delegate is None:
            return None
        held = state.holders.get(state.delegate)
        if held is None or held[1] <= now:
            if held is not None and not state.touched and not state.pending:
                self._lapse(key, state.delegate, held[0])
            state.delegate = None
            self.delegations -= 1
            return None
        return state.delegate

    def touch(self, key: Hashable, reader: str, now: float) -> None:
        """A read of ``key`` by ``reader`` (a mount, or "" for anyone else)
        is answered at the leader (`begin_read` does this too)."""
        self.delegate_of(key, now)  # (one that ran out becomes `lapsed` first)
        self._touch(key, reader)

    def _touch(self, key: Hashable, reader: str) -> None:
        lapsed = self.lapsed.get(key)
        if lapsed is not None and lapsed[0] != reader:
            del self.lapsed[key]

    def flushable(self, key: Hashable, holder: str, gid: GrantId, now: float) -> bool:
        """Whether a flush made under ``holder``'s delegation ``gid`` of
        ``key`` may be applied: the delegation lasts, or it ran out (its
        holder was too slow to renew or flush it) or was ended by the
        holder's own change, and since then nobody else read or changed
        the key and no change of it by anybody else began, so the flush is
        as if on time. One that was recalled, or ended by somebody else's
        change, is over for good."""
        if self.delegation(key, now) == (holder, gid):
            return True
        lapsed = self.lapsed.get(key)
        return lapsed is not None and lapsed[0] == holder and gid in lapsed[1]

    def _lapse(self, key: Hashable, holder: str, gid: GrantId) -> None:
        """``holder``'s delegation ``gid`` of ``key`` ended with nobody
        else at the key: a late flush under it may still apply."""
        lapsed = self.lapsed.get(key)
        if lapsed is not None and lapsed[0] == holder:
            self.lapsed[key] = (holder, lapsed[1] | {gid})
            return
        if len(self.lapsed) >= MAX_LAPSED:
            self.lapsed.clear()  # (their late flushes are refused: the safe side)
        self.lapsed[key] = (holder, frozenset((gid,)))

    def flushing(self, holder: str, now: float) -> None:
        """A flush from ``holder`` arrived at ``now``. Each of its delegations
        being recalled stays while it flushes (a big write-back takes
        several batches, in the order made, so the recalled directory's
        changes may come after others'): its lease lasts ``seconds`` from
        now, up to `MAX_FLUSH_S` after the recall began."""
        keys = self._recalling.get(holder)
        if not keys:
            return
        for key in list(keys):
            state = self._keys.get(key)
            if (
                state is None
                or not state.pending
                or state.recalled_at is None
                or self.delegate_of(key, now) != holder
            ):
                keys.discard(key)
                continue
            held = state.holders[holder]
            until = min(now + self.seconds * (1 + self.drift), state.recalled_at + MAX_FLUSH_S)
            if until > held[1]:
                state.holders[holder] = (held[0], until)
        if not keys:
            del self._recalling[holder]

    def delegation(self, key: Hashable, now: float) -> tuple[str, GrantId] | None:
        """(delegate, its grant's id) of ``key``, as `delegate_of`. A flush is
        applied only under the grant it was made under: a new delegation
        to the same holder (after a leader change, say) may come after
        others read the key without the flushed changes."""
        delegate = self.delegate_of(key, now)
        if delegate is None:
            return None
        return delegate, self._keys[key].holders[delegate][0]

    def begin_read(self, key: Hashable, reader: str, now: float) -> dict[str, GrantId] | None:
        """A read of ``key`` by ``reader`` (a mount, or "" for anyone else)
        at the leader. None if it may be answered at once; else the key is
        delegated to another holder: the holders to recall, and the read
        waits (`ready_at`) and ends with `end_change` like a change."""
        self.touch(key, reader, now)
        delegate = self.delegate_of(key, now)
        if delegate is None or delegate == reader:
            return None
        return self.begin_change(key, reader, now)

    def begin_change(self, key: Hashable, writer: str, now: float) -> dict[str, GrantId]:
        """A change to ``key`` by ``writer`` starts: no grants on it until
        `end_change`. Returns the holders to recall, each with the highest
        grant id to recall (the writer's own lease is dropped: its change
        makes its copy old, and it knows)."""
        state = self._keys.setdefault(key, _Key())
        delegate = self.delegate_of(key, now)
        if delegate is not None and delegate != writer:
            state.shared_until = now + self.pingpong_s  # a conflict: shared for a while
            if len(self._recalling) >= MAX_LAPSED:
                # (holders gone without acknowledging: their flushes are
                # merely no longer kept going, the safe side)
                self._recalling.clear()
            self._recalling.setdefault(delegate, set()).add(key)
        state.touched = True
        self._touch(key, writer)  # (its own lapsed delegations stay)
        own = state.holders.pop(writer, None)
        if state.delegate is not None and state.delegate == writer:
            state.delegate = None
            self.delegations -= 1
            if own is not None:
                # The delegate's own change (sent the usual way: say, changes
                # of an earlier leader's delegation sent again) ends its
                # delegation, not what it made under it and has yet to flush:
                # nobody else was at the key, so those may still apply until
                # somebody else is.
                self._lapse(key, writer, own[0])
        if own is not None and own[1] > now and not state.pending:
            state.continuing[writer] = own[0]
        if not state.pending:
            state.recalled_at = now
        state.pending += 1
        recall = {}
        for holder, (gid, until) in list(state.holders.items()):
            if until > now:
                recall[holder] = gid
            else:
                del state.holders[holder]
        return recall

    def recalled(self, key: Hashable, holder: str, gid: GrantId) -> None:
        """``holder`` acknowledged the recall of its grants up to ``gid``."""
        recalling = self._recalling.get(holder)
        if recalling is not None:
            recalling.discard(key)
            if not recalling:
                del self._recalling[holder]
        state = self._keys.get(key)
        if state is None:
            return
        held = state.holders.get(holder)
        if held is not None and held[0] <= gid:
            del state.holders[holder]
            if state.delegate is not None and state.delegate == holder:
                state.delegate = None
                self.delegations -= 1

    def ready_at(self, key: Hashable, now: float) -> float:
        """When a pending change to ``key`` may be applied: ``now`` once every
        other holder acknowledged its recall (and the leader is not blind),
        else the time its last lease surely ends."""
        until = self.blind_until
        state = self._keys.get(key)
        if state is not None:
            until = max([until, *(u for _, u in state.holders.values())])
        return max(now, until)

    def end_change(
        self,
        key: Hashable,
        writer: str | None = None,
        now: float | None = None,
        exclusive: bool = False,
    ) -> tuple[GrantId, GrantId] | None:
        """The change by ``writer`` was applied at ``now`` (or abandoned: no
        writer): grants on ``key`` resume. Returns (the writer's grant, its
        continuation) when the writer keeps its lease through the change;
        with ``exclusive`` the continuation is a delegation where `grant`
        would give one (`delegate_of` tells)."""
        # (somebody else's change: a late flush would come after it)
        self._touch(key, writer or "")
        state = self._keys.get(key)
        if state is None:
            return None
        state.pending = max(0, state.pending - 1)
        own = state.continuing.pop(writer, None) if writer is not None else None
        continued = None
        if own is not None and now is not None and not state.pending:
            self._seq += 1
            gid = (self.term, self._seq)
            state.holders[writer] = (gid, now + self.seconds * (1 + self.drift))  # type: ignore[index]
            continued = (own, gid)
            if exclusive:
                self._delegate(state, writer, now)  # type: ignore[arg-type]
        if not state.pending:
            state.recalled_at = None
            state.continuing.clear()
            if not state.holders and state.shared_until <= (now or 0.0):
                del self._keys[key]
        return continued

    def holders(self, key: Hashable) -> set[str]:
        state = self._keys.get(key)
        return set(state.holders) if state else set()


@dataclass
class _Held:
    value: object
    gid: GrantId
    until: float  # on the holder's clock
    exclusive: bool = False  # a delegation: this mount may change the copy


class HeldLeases:
    """A mount's side: the keys it may answer reads of from its own copy."""

    def __init__(self, drift: float = DRIFT) -> None:
        self.drift = drift
        self._held: dict[Hashable, _Held] = {}
        self._recalled: dict[Hashable, GrantId] = {}
        self._changes: dict[Hashable, int] = {}  # key -> changes of it started or ended here
        self._changing: dict[Hashable, int] = {}  # key -> changes of it in flight from here

    def mark(self, key: Hashable) -> int:
        """Taken when a read of ``key`` is sent, passed to `granted`."""
        return self._changes.get(key, 0)

    def changing(self, key: Hashable) -> None:
        """This mount starts a change of ``key``: its copy is not used until
        the change is acknowledged (and then only if the lease continues)."""
        self._changes[key] = self._changes.get(key, 0) + 1
        self._changing[key] = self._changing.get(key, 0) + 1

    def changed(
        self,
        key: Hashable,
        continued: tuple[GrantId, GrantId] | None = None,
        apply: Callable[[object], object] | None = None,
        seconds: float = 0.0,
        sent_at: float = 0.0,
        exclusive: bool = False,
    ) -> bool:
        """That change was acknowledged (or given up: no ``continued``). With
        the leader's continuation of this mount's grant, ``apply`` turns the
        copy held under that grant into the value after the change, kept
        under the new grant until ``seconds`` after ``sent_at`` (when the
        change was first sent) at the latest; True if kept. ``exclusive``:
        the continuation is a delegation."""
        self._changes[key] = self._changes.get(key, 0) + 1
        left = self._changing.get(key, 0) - 1
        if left > 0:
            self._changing[key] = left
        else:
            self._changing.pop(key, None)
        held = self._held.get(key)
        if held is None:
            return False
        recalled = self._recalled.get(key)
        if (
            continued is None
            or apply is None
            or held.gid != continued[0]
            or (recalled is not None and continued[1] <= recalled)
        ):
            del self._held[key]
            return False
        try:
            held.value = apply(held.value)
        except CannotApply:
            del self._held[key]
            return False
        held.gid = continued[1]
        held.until = max(held.until, sent_at + seconds * (1 - self.drift))
        held.exclusive = exclusive
        return True

    def granted(
        self,
        key: Hashable,
        value: object,
        gid: GrantId,
        seconds: float,
        sent_at: float,
        mark: int,
        merge: Callable[[object, object], object] | None = None,
        exclusive: bool = False,
    ) -> bool:
        """Keep ``value`` under the lease ``gid`` from a read sent at ``sent_at``
        (this clock) with `mark` ``mark``, unless a recall already covered it
        or a change of this mount overlapped the read; True if kept. A grant
        with the id of the one held renews it, and ``merge(held, value)``
        (if given) becomes the value: both describe the same state.
        ``exclusive``: the leader delegated the key (`LeaseTable.grant`)."""
        if self._changing.get(key) or self._changes.get(key, 0) != mark:
            return False
        recalled = self._recalled.get(key)
        if recalled is not None and gid <= recalled:
            return False
        until = sent_at + seconds * (1 - self.drift)
        held = self._held.get(key)
        if held is not None and held.gid > gid:
            return False  # a newer grant is here already
        if held is not None and held.gid == gid:
            held.until = max(held.until, until)  # the same lease, renewed
            held.exclusive = held.exclusive or exclusive  # (a delegation stays one)
            if merge is not None:
                held.value = merge(held.value, value)
            return True
        self._held[key] = _Held(value, gid, until, exclusive)
        return True

    def delegated(self, key: Hashable, now: float, margin: float = 0.0) -> bool:
        """Whether this mount may change ``key`` in its copy now (write-back):
        its lease is exclusive and lasts ``margin`` longer (time to flush
        before the leader stops counting it), and no change of its own to
        it is on its way the synchronous way."""
        held = self._held.get(key)
        return (
            held is not None
            and held.exclusive
            and now + margin < held.until
            and not self._changing.get(key)
        )

    def exclusive_gid(self, key: Hashable, now: float) -> GrantId | None:
        """The grant of ``key`` held now if it is a delegation that has not
        run out here (a change of this mount to it may be on its way)."""
        held = self._held.get(key)
        if held is None or not held.exclusive or now >= held.until:
            return None
        return held.gid

    def write_local(self, key: Hashable, apply: Callable[[object], object]) -> None:
        """A change of this mount under its delegation of ``key``: its copy
        becomes ``apply(copy)`` (the change itself is flushed later)."""
        held = self._held[key]
        held.value = apply(held.value)
        # A read in flight was answered without it: its grant must not
        # replace this copy (the model found this one).
        self._changes[key] = self._changes.get(key, 0) + 1

    def get(self, key: Hashable, now: float) -> tuple[bool, object]:
        """(True, the value) while the lease on ``key`` lasts and no change of
        this mount to it is on its way; else (False, None)."""
        held = self._held.get(key)
        if held is None or self._changing.get(key):
            return False, None
        if now >= held.until:
            del self._held[key]
            return False, None
        return True, held.value

    def held_keys(self) -> list[Hashable]:
        """The keys a copy is held for (some may have expired)."""
        return list(self._held)

    def gid_of(self, key: Hashable) -> GrantId | None:
        """The grant the copy of ``key`` is held under, if any."""
        held = self._held.get(key)
        return None if held is None else held.gid

    def peek(self, key: Hashable) -> tuple[object, float] | None:
        """The copy held for ``key`` and when its lease ends, used or not."""
        held = self._held.get(key)
        return None if held is None else (held.value, held.until)

    def recall(self, key: Hashable, gid: GrantId) -> None:
        """The leader recalls this mount's grants on ``key`` up to ``gid``."""
        if gid > self._recalled.get(key, (0, 0)):
            self._recalled[key] = gid
        held = self._held.get(key)
        if held is not None and held.gid <= gid:
            del self._held[key]

    def drop(self, key: Hashable) -> None:
        """Forget the copy of ``key`` (it cannot be kept up to date here)."""
        self._held.pop(key, None)

    def clear(self) -> None:
        """Forget everything (a restart)."""
        self._held.clear()
        self._recalled.clear()
        self._changes.clear()
        self._changing.clear()


@dataclass
class Keys:
    shared: set[int] = field(default_factory=set)
    exclusive: set[int] = field(default_factory=set)
    lookups: list[tuple[int, bytes]] = field(default_factory=list)  # names whose inode is a key
    mkdirs: bool = False  # it makes directories (each comes with a first grant)

    def all(self) -> set[int]:
        return self.shared | self.exclusive


def command_keys(cmd: object) -> Keys:
    """The directories (keys) a namespace command changes: shared, or
    exclusive with the names whose inodes are keys too (rmdir, rename)."""
    keys = Keys()
    _add_keys(keys, cmd)
    keys.shared -= keys.exclusive
    return keys


def _add_keys(keys: Keys, cmd: object) -> None:
    if isinstance(cmd, (Mknod, Mkdir, Symlink, Unlink)):
        keys.shared.add(cmd.parent)
        keys.mkdirs = keys.mkdirs or isinstance(cmd, Mkdir)
    elif isinstance(cmd, Link):
        keys.shared.update((cmd.new_parent, cmd.ino))
    elif isinstance(cmd, (SetAttr, SetXattr, RemoveXattr)):
        keys.shared.add(cmd.ino)
    # UpdateAtime changes no key: a lease does not cover atime (relatime is
    # approximate anyway), so a listing on one mount recalls nobody's lease.
    elif isinstance(cmd, Rmdir):
        keys.exclusive.add(cmd.parent)
        keys.lookups.append((cmd.parent, cmd.name))
    elif isinstance(cmd, Rename):
        keys.exclusive.update((cmd.parent, cmd.new_parent))
        keys.lookups += [(cmd.parent, cmd.name), (cmd.new_parent, cmd.new_name)]
    elif isinstance(cmd, Batch):
        for raw in cmd.ops:
            _add_keys(keys, decode_message(raw))
