"""Deterministic simulation of shared read leases with recall (`prismfs.meta.leases`).

Theory of operation. This is the model run before the mount and the
nodes use it: mounts (*clients*) read and write a few keys
through the metadata leader; a read may come with a lease, under which the
client answers later reads of that key from its own copy; a write makes the
leader recall the other holders first. The Raft group is abstracted as one
linearizable leader whose applied state survives a leader change (what the
Raft simulator in `prismfs.sim.simulator` checks on its own); what a leader
change loses is its soft state: the lease table and the writes it had not
applied yet.

One seeded ``random.Random`` decides everything; a heap of ``(time, seq,
event)`` drives the pure `LeaseTable` and `HeldLeases`. Faults: message
delays (reordering), loss and duplication; a client cut off from the leader
for a while (its recalls are not answered, so writers wait for its lease to
run out); process pauses of clients and of the leader (messages wait);
per-process clock rates within the drift allowed; leader changes with a gap
without any leader; client crashes (its cache is gone, its operation in
flight never returns). Clients retry a write with the same request id
(applied once) and a read with a new one.

With ``writeback`` the clients ask for exclusive leases (delegations) and,
while they hold one with time to spare, apply their writes to their copy,
acknowledge them at once and flush them in order within ``FLUSH_S`` or
before they acknowledge a recall; a crash, a cut or a leader change may
then lose what was not flushed. The check then covers what the contract
promises: the history stays linearizable once the reads a mount made of
changes it later lost are left out and each lost change is taken to have
happened when the leader applied it (a flush in flight) or never; and
what each life of a mount lost is a suffix of what it wrote back.
With ``flush_part`` a flush goes in parts, ``flush_pause`` apart (a mount
sends a big write-back in batches, uploading data in between): a recalled
delegate then keeps its delegation while its parts keep coming
(`LeaseTable.flushing`), or it would lose the rest of a flush that outlasts
its lease with no fault at all.

Every operation is recorded with its real call and return times and checked
for linearizability per key (`prismfs.check`): a read that starts after a
write was acknowledged must never return an older value, whether it was
answered by the leader or from a client's copy. ``bugs`` plants mistakes
the protocol rules exist to prevent; the tests check that the checker
catches each.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from prismfs.check.linearizability import check
from prismfs.check.models import UNKNOWN, KVModel, Operation
from prismfs.meta.leases import DRIFT, GrantId, HeldLeases, LeaseTable

LEASE_S = 2.0
READ_TIMEOUT_S = 0.5
WRITE_TIMEOUT_S = 1.0
WORKERS = 2  # processes per mount, sharing its leases
QUIET_S = 3.0  # after the faults: new operations for this long, then all must finish

BUGS = frozenset(
    {
        "no_recall",  # the leader applies a change without recalling the holders
        "no_blind",  # a new leader applies changes at once
        "no_grant_ids",  # a client keeps a grant that a recall already covered
        "lease_from_receipt",  # a client counts its lease from the reply, not the request
        "no_drift",  # neither side allows for clock-rate differences
        "own_change_race",  # a mount keeps a grant from a read that overlapped its own change
        "continue_any_copy",  # a writer applies its change to whatever copy it holds
        # write-back under delegations:
        "no_read_recall",  # the leader answers a read of a delegated key at once
        "ack_before_flush",  # a delegate acknowledges a recall before it flushed
        "late_flush",  # the leader applies a flush of a delegation it no longer counts
        "no_flush_extension",  # a recalled delegate's flushes do not keep its delegation
    }
)
FLUSH_S = 0.3  # a delegate flushes what it queued at most this long after
FLUSH_SLACK_S = 0.2  # and writes back only while its lease lasts this much longer


@dataclass
class LeaseSimConfig:
    seed: int
    clients: int = 5
    keys: int = 2
    duration: float = 30.0  # seconds of faults, then a quiet phase to finish
    bugs: frozenset[str] = frozenset()
    writeback: bool = False  # clients ask for delegations and write back under them
    affinity: float = 0.0  # how often a client picks its own key (the rest: any key)
    faults: bool = True  # False: no fault at all (nothing may be lost then)
    # A flush goes in parts of this many changes (0: all at once), each part
    # sent ``flush_pause`` after the last one's answer (the mount uploads
    # data between batches): a big write-back outlasts the recalled lease.
    flush_part: int = 0
    flush_pause: float = 0.0


@dataclass
class LeaseSimResult:
    seed: int
    ops: int
    local_reads: int
    recalls: int
    continued: int  # changes after which the writer kept its lease
    leader_changes: int
    linearizable: bool
    written_back: int = 0  # changes acknowledged under a delegation, flushed later
    lost: int = 0  # of those, lost with their mount (a crash) or their delegation
    prefix: bool = True  # what each mount lost was a suffix of what it wrote back
    history: list[Operation] = field(default_factory=list)


class _Clock:
    """A process's monotonic clock: ``rate`` times real time, from ``offset``."""

    def __init__(self, rate: float, offset: float) -> None:
        self.rate, self.offset = rate, offset

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate


@dataclass
class _Op:
    kind: str  # "get" | "put" | "append"
    key: int
    value: str | None
    call: float
    reqid: str  # a change's id (kept across retries)
    first_sent: float = math.nan  # a change's first send, on the client's clock
    # read id -> (sent at on the client's clock, the leases' mark then)
    attempts: dict[str, tuple[float, int]] = field(default_factory=dict)


class _Client:
    def __init__(self, name: str, clock: _Clock, drift: float) -> None:
        self.name = name
        self.clock = clock
        self.leases = HeldLeases(drift)
        self.ops: dict[int, _Op] = {}  # worker -> its operation in flight
        self.generation = 0  # bumped by a crash: timers of the old life do nothing
        self.cut_until = 0.0
        self.paused_until = 0.0
        # write-back: changes acknowledged under delegations, in order:
        # (change id, key, kind, value, the delegation's grant, index of its
        # operation in the history)
        self.queue: list[tuple[str, int, str, str, GrantId, int]] = []
        self.flushing = 0  # the id of the flush in flight (0: none)
        self.flush_due = False
        self.next_part_at = 0.0  # (real time) the next part of a flush goes no earlier
        self.recalls_waiting: list[tuple[int, GrantId, int]] = []
        self.epochs: list[list[str]] = [[]]  # change ids written back, per life
        self.lost_windows: list[tuple[float, float]] = []  # (first lost call, noticed)

    @property
    def holder(self) -> str:
        """Its name at the leader: a restarted mount is a new session."""
        return f"{self.name}@{self.generation}"


class _NoIdsLeases(HeldLeases):
    def granted(
        self,
        key: Any,
        value: object,
        gid: GrantId,
        seconds: float,
        sent_at: float,
        mark: int,
        merge: Callable[[object, object], object] | None = None,
        exclusive: bool = False,
    ) -> bool:
        self._recalled.pop(key, None)
        return super().granted(key, value, gid, seconds, sent_at, mark, merge, exclusive)


class _AnyCopyLeases(HeldLeases):
    def changed(
        self,
        key: Any,
        continued: tuple[GrantId, GrantId] | None = None,
        apply: Callable[[object], object] | None = None,
        seconds: float = 0.0,
        sent_at: float = 0.0,
        exclusive: bool = False,
    ) -> bool:
        held = self._held.get(key)
        if held is not None and continued is not None:
            continued = (held.gid, continued[1])
        return super().changed(key, continued, apply, seconds, sent_at, exclusive)


def _apply(kind: str, value: str | None) -> Callable[[Any], Any]:
    if kind == "put":
        return lambda _old: value
    return lambda old: (old or "") + (value or "")


class _RacyLeases(HeldLeases):
    def granted(
        self,
        key: Any,
        value: object,
        gid: GrantId,
        seconds: float,
        sent_at: float,
        mark: int,
        merge: Callable[[object, object], object] | None = None,
        exclusive: bool = False,
    ) -> bool:
        self._changing.pop(key, None)
        return super().granted(key, value, gid, seconds, sent_at, self.mark(key), merge, exclusive)


class LeaseSim:
    def __init__(self, cfg: LeaseSimConfig) -> None:
        unknown = cfg.bugs - BUGS
        if unknown:
            raise ValueError(f"unknown planted bugs {sorted(unknown)}")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.drift = 0.0 if "no_drift" in cfg.bugs else DRIFT
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.history: list[Operation] = []
        self.local_reads = 0
        self.recalls = 0
        self.continued = 0
        self.written_back = 0
        self.lost = 0
        self.lost_ops: dict[int, str] = {}  # history index -> change id, of lost changes
        self.applied_at: dict[str, float] = {}  # change id -> when the leader applied it
        # the leader: applied state (survives a change of leader) and soft state
        self.state: dict[int, str | None] = {}
        self.applied: set[str] = set()  # put ids applied (exactly once)
        self.term = 0
        self.leader_up = False
        self.leader_paused_until = 0.0
        self.leader_clock = _Clock(1.0, 0.0)
        self.table = LeaseTable(LEASE_S, self.drift)
        # key -> (client, change id, kind, value)
        self.queue: dict[int, list[tuple[str, str, str, str]]] = {}
        self.leader_changes = 0
        self.clients = [self._new_client(f"c{i}") for i in range(cfg.clients)]
        self._values = 0
        self.faults = cfg.duration

    # --- plumbing -------------------------------------------------------------------

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn))

    def _rate(self) -> float:
        """A clock rate within the drift allowed, at either extreme half the time."""
        if self.rng.random() < 0.5:
            return 1 + self.rng.choice((-1, 1)) * DRIFT * 0.95
        return 1 + self.rng.uniform(-DRIFT, DRIFT) * 0.95

    def _new_client(self, name: str) -> _Client:
        drift = self.drift
        c = _Client(name, _Clock(self._rate(), self.rng.uniform(0, 1000)), drift)
        if "no_grant_ids" in self.cfg.bugs:
            c.leases = _NoIdsLeases(drift)
        elif "own_change_race" in self.cfg.bugs:
            c.leases = _RacyLeases(drift)
        elif "continue_any_copy" in self.cfg.bugs:
            c.leases = _AnyCopyLeases(drift)
        return c

    def _faulty(self) -> bool:
        return self.cfg.faults and self.now < self.faults

    def _send(self, deliver: Callable[[], None], *, client: _Client, to_leader: bool) -> None:
        """One message between ``client`` and the leader (either way)."""
        if self._faulty():
            if self.rng.random() < 0.03 or self.now < client.cut_until:
                return
            copies = 2 if self.rng.random() < 0.02 else 1
        else:
            copies = 1
        for _ in range(copies):
            delay = self.rng.uniform(0.0005, 0.004)
            if self._faulty() and self.rng.random() < 0.1:
                delay += self.rng.uniform(0.01, 1.0)  # a slow one: reordered
            self._at(self.now + delay, lambda: self._arrive(deliver, client, to_leader))

    def _arrive(self, deliver: Callable[[], None], client: _Client, to_leader: bool) -> None:
        if self.now < client.cut_until:
            return  # cut off: what was in flight is lost too
        if to_leader:
            if not self.leader_up:
                return
            if self.now < self.leader_paused_until:
                self._at(self.leader_paused_until, lambda: self._arrive(deliver, client, True))
                return
        elif self.now < client.paused_until:
            self._at(client.paused_until, lambda: self._arrive(deliver, client, False))
            return
        deliver()

    # --- the leader ---------------------------------------------------------------------

    def _leader_now(self) -> float:
        return self.leader_clock.local(self.now)

    def _start_term(self) -> None:
        if self.leader_up:
            return
        self.term += 1
        self.leader_up = True
        self.leader_clock = _Clock(self._rate(), self.rng.uniform(0, 1000))
        self.table.start(self.term, self._leader_now())
        if "no_blind" in self.cfg.bugs:
            self.table.blind_until = 0.0
        self.queue = {}

    def _on_read(self, client: _Client, key: int, rid: str, holder: str) -> None:
        now = self._leader_now()
        recall = None
        if "no_read_recall" not in self.cfg.bugs:
            recall = self.table.begin_read(key, holder, now)
        if recall:
            self._send_recalls(key, recall)
            self._read_when_ready(client, key, rid, self.term, holder)
            return
        if recall is not None:
            self.table.end_change(key, None, now)  # (nobody left to recall)
        self._answer_read(client, key, rid, holder)

    def _read_when_ready(self, client: _Client, key: int, rid: str, term: int, holder: str) -> None:
        if not self.leader_up or term != self.term:
            return
        if self.now < self.leader_paused_until:
            self._at(
                self.leader_paused_until,
                lambda: self._read_when_ready(client, key, rid, term, holder),
            )
            return
        now = self._leader_now()
        ready = self.table.ready_at(key, now)
        if ready > now:
            at = max(self.leader_clock.real(ready), self.now + 1e-6)
            self._at(at, lambda: self._read_when_ready(client, key, rid, term, holder))
            return
        self.table.end_change(key, None, now)
        self._answer_read(client, key, rid, holder)

    def _answer_read(self, client: _Client, key: int, rid: str, holder: str) -> None:
        now = self._leader_now()
        value = self.state.get(key)
        gid = self.table.grant(key, holder, now, exclusive=self.cfg.writeback)
        exclusive = gid is not None and self.table.delegate_of(key, now) == holder
        self._send(
            lambda: self._on_read_reply(client, key, rid, value, gid, exclusive),
            client=client,
            to_leader=False,
        )

    def _on_flush(
        self,
        client: _Client,
        fid: int,
        batch: list[tuple[str, int, str, str, GrantId]],
        holder: str,
    ) -> None:
        """A delegate's queued changes, in its order: each applied once, and
        only while this leader counts the very delegation it was made under;
        the first refused one ends the flush (the rest are refused too: a
        suffix is lost)."""
        now = self._leader_now()
        if "no_flush_extension" not in self.cfg.bugs:
            self.table.flushing(holder, now)
        ok = 0
        for pid, key, kind, value, gid in batch:
            if pid not in self.applied:
                if (
                    not self.table.flushable(key, holder, gid, now)
                    and "late_flush" not in self.cfg.bugs
                ):
                    break
                self.state[key] = _apply(kind, value)(self.state.get(key))
                self.applied.add(pid)
                self.applied_at[pid] = self.now
            ok += 1
        self._send(
            lambda: self._on_flush_reply(client, fid, ok, len(batch)),
            client=client,
            to_leader=False,
        )

    def _on_write(
        self, client: _Client, key: int, pid: str, kind: str, value: str, holder: str
    ) -> None:
        if pid in self.applied:
            # answered again, as Raft's session table does: without the lease
            self._send(
                lambda: self._on_write_ack(client, pid, None), client=client, to_leader=False
            )
            return
        waiting = self.queue.setdefault(key, [])
        if any(p == pid for _, p, _, _ in waiting):
            return  # a retry of a write that waits already
        waiting.append((holder, pid, kind, value))
        if len(waiting) == 1:
            self._begin(key)

    def _begin(self, key: int) -> None:
        writer = self.queue[key][0][0]
        recall = self.table.begin_change(key, writer, self._leader_now())
        if "no_recall" in self.cfg.bugs:
            for holder in recall:
                self.table.recalled(key, holder, recall[holder])
            recall = {}
        self._send_recalls(key, recall)
        self._try_apply(key, self.term)

    def _send_recalls(self, key: int, recall: dict[str, GrantId]) -> None:
        by_name = {c.holder: c for c in self.clients}
        term = self.term
        for holder, gid in recall.items():
            target = by_name.get(holder)
            if target is not None:
                self.recalls += 1
                self._send(
                    functools.partial(self._on_recall, target, key, gid, term, holder),
                    client=target,
                    to_leader=False,
                )

    def _try_apply(self, key: int, term: int) -> None:
        if not self.leader_up or term != self.term or not self.queue.get(key):
            return
        if self.now < self.leader_paused_until:
            self._at(self.leader_paused_until, lambda: self._try_apply(key, term))
            return
        now = self._leader_now()
        ready = self.table.ready_at(key, now)
        if ready > now:
            # (never at this very instant: the clock conversion may round down)
            at = max(self.leader_clock.real(ready), self.now + 1e-6)
            self._at(at, lambda: self._try_apply(key, term))
            return
        writer, pid, kind, value = self.queue[key].pop(0)
        self.state[key] = _apply(kind, value)(self.state.get(key))
        self.applied.add(pid)
        continued = self.table.end_change(key, writer, now, exclusive=self.cfg.writeback)
        exclusive = continued is not None and self.table.delegate_of(key, now) == writer
        by_name = {c.holder: c for c in self.clients}
        target = by_name.get(writer)
        if target is not None:
            self._send(
                lambda: self._on_write_ack(target, pid, continued, exclusive),
                client=target,
                to_leader=False,
            )
        if self.queue[key]:
            self._begin(key)

    def _on_recall_ack(self, holder: str, key: int, gid: GrantId, term: int) -> None:
        if term != self.term:
            return
        self.table.recalled(key, holder, gid)
        self._try_apply(key, term)

    # --- clients --------------------------------------------------------------------------

    def _client_now(self, c: _Client) -> float:
        return c.clock.local(self.now)

    def _client_at(self, c: _Client, t: float, fn: Callable[[], None]) -> None:
        """A timer of client ``c``: a paused process runs it only once it resumes."""

        def fire() -> None:
            if self.now < c.paused_until:
                self._at(c.paused_until, fire)
            else:
                fn()

        self._at(t, fire)

    def _next_op(self, c: _Client, w: int) -> None:
        if self.now >= self.faults + QUIET_S or w in c.ops:
            return
        key = self.rng.randrange(self.cfg.keys)
        if self.rng.random() < self.cfg.affinity:
            key = self.clients.index(c) % self.cfg.keys
        if self.rng.random() < 0.35:
            self._values += 1
            kind = "append" if self.rng.random() < 0.3 else "put"
            value = f"v{self._values}" if kind == "put" else f"+{self._values}"
            op = c.ops[w] = _Op(kind, key, value, self.now, f"{c.name}/{self._values}")
            if self.cfg.writeback and c.leases.delegated(
                key, self._client_now(c), margin=FLUSH_S + FLUSH_SLACK_S
            ):
                self._write_back(c, w, op)
                return
            # The synchronous way: after everything written back before it.
            self._when_flushed(c, w, c.generation, self._start_write)
        else:
            c.ops[w] = _Op("get", key, None, self.now, "")
            found, held = c.leases.get(key, self._client_now(c))
            if found:
                self.local_reads += 1
                self._finish(c, w, held)
            else:
                self._when_flushed(c, w, c.generation, self._send_read)

    def _start_write(self, c: _Client, w: int, generation: int) -> None:
        op = c.ops.get(w)
        if op is None or generation != c.generation:
            return
        c.leases.changing(op.key)
        self._send_write(c, w, generation)

    # --- write-back -----------------------------------------------------------------------

    def _write_back(self, c: _Client, w: int, op: _Op) -> None:
        """A change under this client's delegation: applied to its copy and
        acknowledged now, flushed within FLUSH_S (or when recalled)."""
        assert op.value is not None
        gid = c.leases.gid_of(op.key)
        assert gid is not None
        c.leases.write_local(op.key, _apply(op.kind, op.value))
        c.queue.append((op.reqid, op.key, op.kind, op.value, gid, len(self.history)))
        c.epochs[-1].append(op.reqid)
        self.written_back += 1
        self._finish(c, w, None)
        if not c.flush_due:
            c.flush_due = True
            generation = c.generation
            self._client_at(
                c,
                c.clock.real(self._client_now(c) + FLUSH_S),
                lambda: self._flush(c) if generation == c.generation else None,
            )

    def _when_flushed(
        self, c: _Client, w: int, generation: int, then: Callable[[_Client, int, int], None]
    ) -> None:
        """Run ``then`` once nothing written back waits (flushing it first)."""
        if generation != c.generation or w not in c.ops:
            return
        if not c.queue:
            then(c, w, generation)
            return
        self._flush(c)
        self._client_at(c, self.now + 0.005, lambda: self._when_flushed(c, w, generation, then))

    def _flush(self, c: _Client, fid: int = 0) -> None:
        """Send the queue (all of it, in order); resent until answered."""
        c.flush_due = False
        if not c.queue or (c.flushing and fid != c.flushing):
            return
        if not fid and self.now < c.next_part_at:
            # (the last part's data still uploading)
            generation = c.generation
            self._client_at(
                c, c.next_part_at, lambda: self._flush(c) if generation == c.generation else None
            )
            return
        if not fid:
            self._seq += 1
            c.flushing = self._seq
        queue = c.queue[: self.cfg.flush_part] if self.cfg.flush_part else c.queue
        batch = [(pid, key, kind, value, gid) for pid, key, kind, value, gid, _ in queue]
        flushing, generation = c.flushing, c.generation
        holder = c.holder  # (who sent it: a restarted mount is another)
        self._send(lambda: self._on_flush(c, flushing, batch, holder), client=c, to_leader=True)
        self._client_at(
            c,
            c.clock.real(self._client_now(c) + WRITE_TIMEOUT_S),
            lambda: (
                self._flush(c, flushing)
                if generation == c.generation and c.flushing == flushing
                else None
            ),
        )

    def _on_flush_reply(self, c: _Client, fid: int, ok: int, sent: int) -> None:
        if fid != c.flushing:
            return  # a duplicate, or an answer to an earlier life
        c.flushing = 0
        del c.queue[:ok]
        if ok < sent:
            self._lose(c)  # the delegation was over: this and what follows are lost
        elif c.queue:
            # written back meanwhile, or the next part
            if self.cfg.flush_pause:
                c.next_part_at = c.clock.real(self._client_now(c) + self.cfg.flush_pause)
            self._flush(c)
            return
        for key, gid, term in c.recalls_waiting:
            self._send(
                functools.partial(self._on_recall_ack, c.holder, key, gid, term),
                client=c,
                to_leader=True,
            )
        c.recalls_waiting.clear()

    def _lose(self, c: _Client) -> None:
        """What ``c`` wrote back and did not flush is gone: those changes may
        or may not have been applied (a flush in flight), and what its
        processes read meanwhile (its copy had them) is not checked."""
        if not c.queue:
            return
        first = min(self.history[i].call for *_, i in c.queue)
        c.lost_windows.append((first, self.now))
        for pid, *_, i in c.queue:
            self.lost_ops[i] = pid
        self.lost += len(c.queue)
        c.queue.clear()
        c.flushing = 0
        c.epochs.append([])
        c.leases.clear()

    def _send_read(self, c: _Client, w: int, generation: int) -> None:
        op = c.ops.get(w)
        if op is None or op.kind != "get" or generation != c.generation:
            return
        self._seq += 1
        rid = f"{c.name}/r{self._seq}"
        # A retry keeps the first attempt's mark: its answer may predate a
        # change this mount wrote back since (it is not at the leader yet).
        first = next(iter(op.attempts.values()), None)
        mark = c.leases.mark(op.key) if first is None else first[1]
        op.attempts[rid] = (self._client_now(c), mark)
        holder = c.holder
        self._send(lambda: self._on_read(c, op.key, rid, holder), client=c, to_leader=True)
        self._client_at(
            c,
            c.clock.real(self._client_now(c) + READ_TIMEOUT_S),
            lambda: self._retry(c, w, op, generation, self._send_read),
        )

    def _send_write(self, c: _Client, w: int, generation: int) -> None:
        op = c.ops.get(w)
        if op is None or op.kind == "get" or generation != c.generation:
            return
        assert op.value is not None
        kind, value, holder = op.kind, op.value, c.holder
        if math.isnan(op.first_sent):
            op.first_sent = self._client_now(c)
        self._send(
            lambda: self._on_write(c, op.key, op.reqid, kind, value, holder),
            client=c,
            to_leader=True,
        )
        self._client_at(
            c,
            c.clock.real(self._client_now(c) + WRITE_TIMEOUT_S),
            lambda: self._retry(c, w, op, generation, self._send_write),
        )

    def _retry(
        self,
        c: _Client,
        w: int,
        op: _Op,
        generation: int,
        send: Callable[[_Client, int, int], None],
    ) -> None:
        if c.ops.get(w) is op and generation == c.generation:
            send(c, w, generation)

    def _on_read_reply(
        self,
        c: _Client,
        key: int,
        rid: str,
        value: str | None,
        gid: GrantId | None,
        exclusive: bool = False,
    ) -> None:
        w = next((w for w, op in c.ops.items() if rid in op.attempts), None)
        if w is None:
            return  # an answer to an earlier operation, or a duplicate
        if gid is not None:
            sent_at, mark = c.ops[w].attempts[rid]
            if "lease_from_receipt" in self.cfg.bugs:
                sent_at = self._client_now(c)
            c.leases.granted(key, value, gid, LEASE_S, sent_at, mark, exclusive=exclusive)
        self._finish(c, w, value)

    def _on_write_ack(
        self,
        c: _Client,
        pid: str,
        continued: tuple[GrantId, GrantId] | None,
        exclusive: bool = False,
    ) -> None:
        w = next((w for w, op in c.ops.items() if op.kind != "get" and op.reqid == pid), None)
        if w is not None:
            op = c.ops[w]
            if c.leases.changed(
                op.key, continued, _apply(op.kind, op.value), LEASE_S, op.first_sent, exclusive
            ):
                self.continued += 1
            self._finish(c, w, None)

    def _on_recall(self, c: _Client, key: int, gid: GrantId, term: int, holder: str) -> None:
        if holder != c.holder:
            return  # for a life of this mount that crashed
        c.leases.recall(key, gid)
        if c.queue and "ack_before_flush" not in self.cfg.bugs:
            # what was written back goes first (all of it: in order)
            c.recalls_waiting.append((key, gid, term))
            self._flush(c)
            return
        self._send(lambda: self._on_recall_ack(holder, key, gid, term), client=c, to_leader=True)

    def _record(self, c: _Client, w: int, op: _Op, output: Any, ret: float) -> None:
        inp = ("get", op.key) if op.kind == "get" else (op.kind, op.key, op.value)
        self.history.append(Operation(f"{c.name}.{w}", inp, output, op.call, ret))

    def _finish(self, c: _Client, w: int, output: Any) -> None:
        self._record(c, w, c.ops.pop(w), output, self.now)
        think = self.rng.uniform(0, 0.05)
        self._client_at(c, self.now + think, lambda: self._next_op(c, w))

    def _crash(self, c: _Client) -> None:
        """The mount dies: its copy is gone, its operations never return."""
        for w, op in sorted(c.ops.items()):
            self._record(c, w, op, UNKNOWN, math.inf)
        c.ops.clear()
        self._lose(c)
        c.generation += 1
        c.leases.clear()
        c.flush_due = False
        c.recalls_waiting.clear()
        for w in range(WORKERS):
            self._client_at(
                c, self.now + self.rng.uniform(0.1, 1.0), functools.partial(self._next_op, c, w)
            )

    # --- faults -----------------------------------------------------------------------------

    def _fault(self) -> None:
        if not self._faulty():
            return
        roll = self.rng.random()
        if roll < 0.25:
            # Most cuts hit a client holding a lease: its recalls go unanswered,
            # so changes wait for its lease to run out, the case to get right.
            holding = [
                c
                for c in self.clients
                if any(c.leases.get(k, self._client_now(c))[0] for k in range(self.cfg.keys))
            ]
            c = self.rng.choice(holding if holding and self.rng.random() < 0.8 else self.clients)
            c.cut_until = self.now + self.rng.uniform(0.2, 2 * LEASE_S)
        elif roll < 0.4:
            c = self.rng.choice(self.clients)
            c.paused_until = self.now + self.rng.uniform(0.05, 1.5 * LEASE_S)
        elif roll < 0.5:
            self.leader_paused_until = self.now + self.rng.uniform(0.05, 0.5)
        elif roll < 0.65 and self.leader_up:
            self.leader_up = False
            self.leader_changes += 1
            self._at(self.now + self.rng.uniform(0.0, 1.0), self._start_term)
        elif roll < 0.7:
            self._crash(self.rng.choice(self.clients))
        self._at(self.now + self.rng.uniform(0.2, 2.0), self._fault)

    def run(self) -> LeaseSimResult:
        self._start_term()
        for c in self.clients:
            for w in range(WORKERS):
                self._client_at(c, self.rng.uniform(0, 0.1), functools.partial(self._next_op, c, w))
        if self.cfg.faults:
            self._at(self.rng.uniform(0.5, 2.0), self._fault)
        end = self.faults + 120
        while self._events:
            t, _, fn = heapq.heappop(self._events)
            if t > end:
                break
            self.now = t
            if self.now >= self.faults and not self.leader_up:
                self._start_term()
            fn()
        stuck = [c.name for c in self.clients if c.ops or c.queue]
        if stuck:
            raise AssertionError(f"seed {self.cfg.seed}: operations never finished: {stuck}")
        history = self._checked_history()
        ok = check(KVModel(), history)
        # Each life of a mount lost at most a suffix of what it wrote back.
        prefix = all(
            _is_prefix([pid in self.applied for pid in epoch])
            for c in self.clients
            for epoch in c.epochs
        )
        return LeaseSimResult(
            self.cfg.seed,
            len(history),
            self.local_reads,
            self.recalls,
            self.continued,
            self.leader_changes,
            ok,
            written_back=self.written_back,
            lost=self.lost,
            prefix=prefix,
            history=history,
        )

    def _checked_history(self) -> list[Operation]:
        """The history without the reads a mount answered while it held
        changes it then lost (they may show them: like reads of unsynced
        data on a machine that crashed). A lost change took effect when the
        leader applied it (a flush in flight), or never (it is left out)."""
        windows = {c.name: c.lost_windows for c in self.clients}
        out = []
        for index, op in enumerate(self.history):
            pid = self.lost_ops.get(index)
            if pid is not None:
                if pid not in self.applied_at:
                    continue
                op = replace(op, ret=max(op.call, self.applied_at[pid]))
            name = op.client.split(".")[0]
            if op.input[0] == "get" and any(
                op.ret >= first and op.call < noticed for first, noticed in windows[name]
            ):
                continue
            out.append(op)
        return out


def _is_prefix(flags: list[bool]) -> bool:
    return all(a or not b for a, b in itertools.pairwise(flags))


def run_seed(seed: int, **kw: Any) -> LeaseSimResult:
    return LeaseSim(LeaseSimConfig(seed, **kw)).run()
