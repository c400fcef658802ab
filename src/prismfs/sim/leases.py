"""Deterministic simulation of shared read leases with recall (`prismfs.meta.leases`).

Theory of operation. This is the model of issue 17's first step, run before
the mount and the nodes use it: mounts (*clients*) read and write a few keys
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
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
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
    }
)


@dataclass
class LeaseSimConfig:
    seed: int
    clients: int = 5
    keys: int = 2
    duration: float = 30.0  # seconds of faults, then a quiet phase to finish
    bugs: frozenset[str] = frozenset()


@dataclass
class LeaseSimResult:
    seed: int
    ops: int
    local_reads: int
    recalls: int
    continued: int  # changes after which the writer kept its lease
    leader_changes: int
    linearizable: bool
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
    ) -> bool:
        self._recalled.pop(key, None)
        return super().granted(key, value, gid, seconds, sent_at, mark, merge)


class _AnyCopyLeases(HeldLeases):
    def changed(
        self,
        key: Any,
        continued: tuple[GrantId, GrantId] | None = None,
        apply: Callable[[object], object] | None = None,
        seconds: float = 0.0,
        sent_at: float = 0.0,
    ) -> bool:
        held = self._held.get(key)
        if held is not None and continued is not None:
            continued = (held.gid, continued[1])
        return super().changed(key, continued, apply, seconds, sent_at)


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
    ) -> bool:
        self._changing.pop(key, None)
        return super().granted(key, value, gid, seconds, sent_at, self.mark(key), merge)


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
        return self.now < self.faults

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

    def _on_read(self, client: _Client, key: int, rid: str) -> None:
        value = self.state.get(key)
        gid = self.table.grant(key, client.name, self._leader_now())
        self._send(
            lambda: self._on_read_reply(client, key, rid, value, gid),
            client=client,
            to_leader=False,
        )

    def _on_write(self, client: _Client, key: int, pid: str, kind: str, value: str) -> None:
        if pid in self.applied:
            # answered again, as Raft's session table does: without the lease
            self._send(
                lambda: self._on_write_ack(client, pid, None), client=client, to_leader=False
            )
            return
        waiting = self.queue.setdefault(key, [])
        if any(p == pid for _, p, _, _ in waiting):
            return  # a retry of a write that waits already
        waiting.append((client.name, pid, kind, value))
        if len(waiting) == 1:
            self._begin(key)

    def _begin(self, key: int) -> None:
        writer = self.queue[key][0][0]
        recall = self.table.begin_change(key, writer, self._leader_now())
        if "no_recall" in self.cfg.bugs:
            for holder in recall:
                self.table.recalled(key, holder, recall[holder])
            recall = {}
        by_name = {c.name: c for c in self.clients}
        term = self.term
        for holder, gid in recall.items():
            target = by_name.get(holder)
            if target is not None:
                self.recalls += 1
                self._send(
                    functools.partial(self._on_recall, target, key, gid, term),
                    client=target,
                    to_leader=False,
                )
        self._try_apply(key, term)

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
        continued = self.table.end_change(key, writer, now)
        by_name = {c.name: c for c in self.clients}
        target = by_name.get(writer)
        if target is not None:
            self._send(
                lambda: self._on_write_ack(target, pid, continued), client=target, to_leader=False
            )
        if self.queue[key]:
            self._begin(key)

    def _on_recall_ack(self, client: _Client, key: int, gid: GrantId, term: int) -> None:
        if term != self.term:
            return
        self.table.recalled(key, client.name, gid)
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
        if self.rng.random() < 0.35:
            self._values += 1
            kind = "append" if self.rng.random() < 0.3 else "put"
            value = f"v{self._values}" if kind == "put" else f"+{self._values}"
            c.ops[w] = _Op(kind, key, value, self.now, f"{c.name}/{self._values}")
            c.leases.changing(key)
            self._send_write(c, w, c.generation)
        else:
            c.ops[w] = _Op("get", key, None, self.now, "")
            found, held = c.leases.get(key, self._client_now(c))
            if found:
                self.local_reads += 1
                self._finish(c, w, held)
            else:
                self._send_read(c, w, c.generation)

    def _send_read(self, c: _Client, w: int, generation: int) -> None:
        op = c.ops.get(w)
        if op is None or op.kind != "get" or generation != c.generation:
            return
        self._seq += 1
        rid = f"{c.name}/r{self._seq}"
        op.attempts[rid] = (self._client_now(c), c.leases.mark(op.key))
        self._send(lambda: self._on_read(c, op.key, rid), client=c, to_leader=True)
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
        kind, value = op.kind, op.value
        if math.isnan(op.first_sent):
            op.first_sent = self._client_now(c)
        self._send(
            lambda: self._on_write(c, op.key, op.reqid, kind, value), client=c, to_leader=True
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
        self, c: _Client, key: int, rid: str, value: str | None, gid: GrantId | None
    ) -> None:
        w = next((w for w, op in c.ops.items() if rid in op.attempts), None)
        if w is None:
            return  # an answer to an earlier operation, or a duplicate
        if gid is not None:
            sent_at, mark = c.ops[w].attempts[rid]
            if "lease_from_receipt" in self.cfg.bugs:
                sent_at = self._client_now(c)
            c.leases.granted(key, value, gid, LEASE_S, sent_at, mark)
        self._finish(c, w, value)

    def _on_write_ack(
        self, c: _Client, pid: str, continued: tuple[GrantId, GrantId] | None
    ) -> None:
        w = next((w for w, op in c.ops.items() if op.kind != "get" and op.reqid == pid), None)
        if w is not None:
            op = c.ops[w]
            if c.leases.changed(
                op.key, continued, _apply(op.kind, op.value), LEASE_S, op.first_sent
            ):
                self.continued += 1
            self._finish(c, w, None)

    def _on_recall(self, c: _Client, key: int, gid: GrantId, term: int) -> None:
        c.leases.recall(key, gid)
        self._send(lambda: self._on_recall_ack(c, key, gid, term), client=c, to_leader=True)

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
        c.generation += 1
        c.leases.clear()
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
        stuck = [c.name for c in self.clients if c.ops]
        if stuck:
            raise AssertionError(f"seed {self.cfg.seed}: operations never finished: {stuck}")
        ok = check(KVModel(), self.history)
        return LeaseSimResult(
            self.cfg.seed,
            len(self.history),
            self.local_reads,
            self.recalls,
            self.continued,
            self.leader_changes,
            ok,
            self.history,
        )


def run_seed(seed: int, **kw: Any) -> LeaseSimResult:
    return LeaseSim(LeaseSimConfig(seed, **kw)).run()
