"""The fault budget: how many more nodes, and which zones, the cluster can lose
now with every file still readable, and which directories would go first.

A chunk coded k-of-m stays readable while k of its shards are on nodes that
are not down or removed; its *margin* is the number of such shards minus k.
Shards of one chunk are on distinct nodes, so any ``b`` more node failures
leave every chunk readable exactly when every margin is at least ``b``: the
budget is the least margin, and never more than the metadata's: the Raft
voters that are up, less a majority of all voters (losing the majority
stops every read and write). A zone can be lost whole when every chunk
keeps k readable shards outside it and a majority of voters is outside it.
The directories first to go are those holding the chunks at the least
margin (a file's chunks are where its bytes are).

Reading every chunk record is work proportional to what is stored, so it
runs in a worker thread on a read-only connection of its own, a page at a
time, within one read transaction (one snapshot), at most once per
``CACHE_S`` or ten times as long as the last scan took, whichever is
longer, and sooner (after a second, or twice the last scan's time) when a
node's state changes (`FaultBudgets`). One scan runs at a time; while it
runs, callers get the last answer. The answer says when it was computed. Chunks kept inline
in the metadata are replicated by Raft and do not count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import trio

from prismfs.clock import wall_ns
from prismfs.leader.admin import AdminMessage, leader_only
from prismfs.leader.repair import off_loop, unavailable_nodes
from prismfs.meta.cluster_tables import ClusterTables, decode_record
from prismfs.meta.commands import ROOT_INO, NodeInfo
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.auth import EVERYONE
from prismfs.wire.codec import I64, U64
from prismfs.wire.server import Call, RpcServer

CACHE_S = 5.0  # at least; ten times the last scan's time for a large namespace
WEAKEST = 5  # directories named
PAGE = 1000


class FaultBudget(AdminMessage, frozen=True):
    """The cluster's fault budget, as the leader last computed it."""


class FaultBudgetReply(AdminMessage, frozen=True):
    computed_ns: I64  # when (wall clock)
    chunks: U64  # coded chunks looked at
    nodes: I64  # more nodes that may fail with every file readable (-1: no coded chunk)
    least_margin_chunks: U64  # chunks at that least margin
    unavailable: U64  # chunks unreadable now
    zones: tuple[str, ...]  # every zone of the nodes that are not removed
    zones_survivable: tuple[str, ...]  # the zones whose loss leaves every chunk readable
    weakest: tuple[str, ...]  # up to WEAKEST directories with chunks at the least margin
    voters: U64 = 0  # Raft voters
    voters_margin: I64 = 0  # voters that may fail with a majority left


@dataclass
class _Scan:
    chunks: int = 0
    least: int | None = None
    at_least: int = 0
    unavailable: int = 0
    inos: list[int] = field(default_factory=list)  # files with chunks at the least margin
    zone_ok: dict[str, bool] = field(default_factory=dict)


def scan(view: ClusterTables, bad: set[str], zone_of: dict[str, str]) -> _Scan:
    """Every coded chunk record, a page at a time, in one read transaction: the
    pages are of one snapshot (a record rewritten meanwhile is neither seen
    twice nor missed)."""
    own = not view.db.in_transaction
    if own:
        view.db.execute("BEGIN")
    try:
        return _scan_pages(view, bad, zone_of)
    finally:
        if own:
            view.db.execute("COMMIT")


def _scan_pages(view: ClusterTables, bad: set[str], zone_of: dict[str, str]) -> _Scan:
    out = _Scan(zone_ok={z: True for z in set(zone_of.values()) if z})
    after = 0
    while True:
        rows = view.db.execute(
            "SELECT rowid, ino, record FROM chunks WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, PAGE),
        ).fetchall()
        if not rows:
            return out
        for rowid, ino, blob in rows:
            after = rowid
            rec = decode_record(blob)
            if rec.is_inline:
                continue
            out.chunks += 1
            live = [n for n in rec.nodes if n and n not in bad]
            margin = len(live) - rec.k
            if margin < 0:
                out.unavailable += 1
            if out.least is None or margin < out.least:
                out.least, out.at_least, out.inos = margin, 0, []
            if margin == out.least:
                out.at_least += 1
                if len(out.inos) < 4 * WEAKEST and int(ino) not in out.inos:
                    out.inos.append(int(ino))
            in_zone = Counter(zone_of.get(n, "") for n in live)
            for zone, ok in out.zone_ok.items():
                if ok and len(live) - in_zone[zone] < rec.k:
                    out.zone_ok[zone] = False


def directory_of(view: ClusterTables, ino: int) -> str:
    """A path of the directory that holds inode ``ino`` ("" if it has no name)."""
    row = view.db.execute("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)).fetchone()
    if row is None:
        return ""
    parts: list[str] = []
    current = int(row[0])
    for _ in range(4096):  # a cycle is impossible; the bound only guards the loop
        if current == ROOT_INO:
            return "/" + "/".join(reversed(parts))
        up = view.db.execute(
            "SELECT parent, name FROM dentries WHERE ino = ? LIMIT 1", (current,)
        ).fetchone()
        if up is None:
            return ""
        parts.append(bytes(up[1]).decode(errors="replace"))
        current = int(up[0])
    return ""


def weakest_dirs(view: ClusterTables, inos: list[int]) -> list[str]:
    dirs: list[str] = []
    for ino in inos:
        d = directory_of(view, ino)
        if d and d not in dirs:
            dirs.append(d)
        if len(dirs) >= WEAKEST:
            break
    return dirs


class FaultBudgets:
    """The leader's answer to `FaultBudget`, computed at most once per ``CACHE_S``."""

    def __init__(self, consensus: Consensus, namespace: Namespace) -> None:
        self.consensus = consensus
        self.namespace = namespace
        self._lock = trio.Lock()
        # (when, node states it was computed for, how long it took, the answer)
        self._last: tuple[float, tuple[tuple[str, str], ...], float, FaultBudgetReply] | None = None

    def register(self, server: RpcServer) -> None:
        server.register(FaultBudget, self._answer, roles=EVERYONE)

    async def _answer(self, request: FaultBudget, call: Call) -> FaultBudgetReply:
        leader_only(self.consensus)
        return await self.current()

    async def current(self) -> FaultBudgetReply:
        registry = [n for n in self.namespace.nodes() if n.state != "removed"]
        states = tuple(sorted((n.node, n.state) for n in registry))
        if self._last is not None:
            at, seen, took, reply = self._last
            age = trio.current_time() - at
            fresh = age < max(CACHE_S, 10 * took)
            if seen != states:  # a node went down or came back: soon, not at once
                fresh = age < max(1.0, 2 * took)
            if fresh or self._lock.locked():  # a scan is running: the last answer now
                return reply
        asked = trio.current_time()
        async with self._lock:  # one scan at a time
            if self._last is not None and self._last[0] >= asked:
                return self._last[3]  # computed while this call waited
            return await self._compute(registry, states)

    async def _compute(
        self, registry: list[NodeInfo], states: tuple[tuple[str, str], ...]
    ) -> FaultBudgetReply:
        started = trio.current_time()
        bad = unavailable_nodes(self.namespace)
        zone_of = {n.node: n.zone for n in registry}
        zones = tuple(sorted({n.zone for n in registry if n.zone}))

        def read(view: ClusterTables) -> tuple[_Scan, list[str]]:
            result = scan(view, bad, zone_of)
            return result, weakest_dirs(view, result.inos)

        result, dirs = await off_loop(self.namespace, read)
        # The metadata: a majority of the voters must stay up.
        voters = self.consensus.status().voters
        quorum = len(voters) // 2 + 1
        live_voters = [v for v in voters if v not in bad]
        voters_margin = len(live_voters) - quorum
        chunk_margin = None if result.least is None else max(0, result.least)
        nodes = -1 if chunk_margin is None else max(0, min(chunk_margin, voters_margin))

        def zone_ok(zone: str) -> bool:
            outside = sum(1 for v in live_voters if zone_of.get(v, "") != zone)
            return result.zone_ok.get(zone, True) and outside >= quorum

        reply = FaultBudgetReply(
            computed_ns=wall_ns(),
            chunks=result.chunks,
            nodes=nodes,
            least_margin_chunks=result.at_least,
            unavailable=result.unavailable,
            zones=zones,
            zones_survivable=tuple(z for z in zones if zone_ok(z)),
            weakest=tuple(dirs),
            voters=len(voters),
            voters_margin=voters_margin,
        )
        self._last = (trio.current_time(), states, trio.current_time() - started, reply)
        return reply
