"""Where a chunk's m shards go: weighted rendezvous hashing over failure domains.

Every eligible node (state "up") gets a score for the chunk,
``weight / -ln(u)`` with ``u`` uniform in (0, 1) from xxh3(chunk id, node id):
the classic weighted rendezvous ("highest random weight") score, so a node
is chosen in proportion to its weight, and adding or removing a node moves
only the shards that must move (about 1/(n+1) of them when one node joins n).
Nodes are taken in score order, one per zone per round (so the m shards
spread over the failure domains as evenly as possible).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import xxhash

from prismfs.errors import Unavailable


@dataclass(frozen=True)
class Candidate:
    node: str
    zone: str = ""
    weight: float = 1.0


class RegistryEntry(Protocol):
    """What placement reads of a node registry entry (`NodeInfo`)."""

    @property
    def node(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def state(self) -> str: ...


def up_candidates(nodes: Iterable[RegistryEntry], exclude: Iterable[str] = ()) -> list[Candidate]:
    """The nodes that may take new shards (state "up", not in ``exclude``),
    weighted by capacity relative to the largest."""
    entries = list(nodes)
    skip = set(exclude)
    top = max((n.capacity for n in entries), default=1) or 1
    return [
        Candidate(n.node, n.zone, max(n.capacity / top, 0.01))
        for n in entries
        if n.state == "up" and n.node not in skip
    ]


class NotEnoughNodes(Unavailable):
    """A layout needs more nodes up than the cluster has."""

    code = "not_enough_nodes"


def too_few_nodes(m: int, have: int) -> NotEnoughNodes:
    """The error for a k-of-m layout on a cluster of only ``have`` usable nodes,
    saying what to do about it: more nodes, or a layout with fewer shards."""
    smaller = f"k=1,m={max(have, 1)}"
    return NotEnoughNodes(
        f"this layout needs {m} nodes up, the cluster has {have}: start more nodes "
        f"(prismfs node start --join ADDR), or use a layout of at most {have} shards, "
        f"e.g. --layout {smaller} on put or mkdir (prismfs.layout on a directory), "
        f'or [data] default_layout = "{smaller}" for the whole cluster'
    )


def fit_layout(k: int, m: int, up: int, min_redundancy: int) -> tuple[int, int]:
    """The layout to write a k-of-m chunk with when only ``up`` nodes can take a
    shard: k-of-m itself if they suffice; else the widest layout on those nodes
    that still survives ``min_redundancy`` more losses (m' = up shards of which
    at most up - min_redundancy are data: 2-of-3 on two nodes is two replicas).
    `NotEnoughNodes`, naming the setting, if not even that is possible."""
    if up >= m:
        return k, m
    k_fit = min(k, up - min_redundancy)
    if k_fit < 1:
        raise NotEnoughNodes(
            f"only {up} node{'s are' if up != 1 else ' is'} up: an acknowledged write must "
            f"survive {min_redundancy} more node loss{'es' if min_redundancy != 1 else ''} "
            f"([data] min_redundancy = {min_redundancy}), which needs {min_redundancy + 1} "
            "nodes up"
        )
    return k_fit, up


def score(chunk_id: bytes, candidate: Candidate) -> float:
    h = xxhash.xxh3_64_intdigest(chunk_id + b"\0" + candidate.node.encode())
    u = (h + 1) / (2**64 + 1)  # in (0, 1), never 0
    return candidate.weight / -math.log(u)


def place(chunk_id: bytes, candidates: Iterable[Candidate], m: int) -> list[str]:
    """m distinct nodes for the chunk, in shard order (shard i on the i-th)."""
    ranked = sorted(
        (c for c in candidates if c.weight > 0),
        key=lambda c: (-score(chunk_id, c), c.node),
    )
    if len(ranked) < m:
        raise too_few_nodes(m, len(ranked))
    # Round by round: in each round a zone gets one more shard (best score
    # first), so the shards spread over the zones as evenly as they can.
    chosen: list[Candidate] = []
    per_zone: dict[str, int] = {}
    level = 0
    while len(chosen) < m:
        for c in ranked:
            if len(chosen) == m:
                break
            if c not in chosen and per_zone.get(c.zone, 0) == level:
                chosen.append(c)
                per_zone[c.zone] = level + 1
        level += 1
    return [c.node for c in chosen]
