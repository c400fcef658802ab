"""Layouts (parse, print, limits) and placement (distinct nodes, zones,
minimal movement when a node joins, weights)."""

from __future__ import annotations

import collections
import os

import pytest

from prismfs.data.layout import Layout
from prismfs.data.placement import Candidate, NotEnoughNodes, place
from prismfs.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "layout"),
    [
        ("k=4,m=6,chunk=4M", Layout(4, 6, 4 << 20)),
        ("k=1, m=3", Layout(1, 3, 4 << 20)),
        ("chunk=64K", Layout(2, 3, 64 << 10)),
        (b"K=2,M=2,CHUNK=1m", Layout(2, 2, 1 << 20)),
    ],
)
def test_layout_parse(text: str, layout: Layout) -> None:
    assert Layout.parse(text) == layout
    assert Layout.parse(str(layout)) == layout


@pytest.mark.parametrize(
    "text",
    ["k=0", "k=4,m=3", "m=17", "chunk=1K", "chunk=1G", "k=2,k=3", "x=1", "k=2M", "", b"\xff"],
)
def test_bad_layouts_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Layout.parse(text)


NODES = [Candidate(f"n{i}", zone=f"z{i % 3}") for i in range(9)]


def test_placement_is_distinct_deterministic_and_spreads_zones() -> None:
    for _ in range(500):
        chunk = os.urandom(16)
        nodes = place(chunk, NODES, 3)
        assert len(set(nodes)) == 3 and nodes == place(chunk, list(reversed(NODES)), 3)
        assert {n.zone for n in NODES if n.node in nodes} == {"z0", "z1", "z2"}
    six = place(b"c", NODES, 6)
    zones = collections.Counter(n.zone for n in NODES if n.node in six)
    assert sorted(zones.values()) == [2, 2, 2]


def test_too_few_nodes_is_a_clear_error() -> None:
    with pytest.raises(NotEnoughNodes, match="needs 4 nodes up, the cluster has 3"):
        place(b"c", NODES[:3], 4)


def test_adding_a_node_moves_about_one_in_n_plus_one() -> None:
    before_nodes = [Candidate(f"n{i}") for i in range(10)]
    after_nodes = [*before_nodes, Candidate("new")]
    chunks = [i.to_bytes(8, "big") for i in range(20_000)]
    moved = sum(set(place(c, before_nodes, 3)) != set(place(c, after_nodes, 3)) for c in chunks)
    # A chunk moves when "new" enters its top 3: probability 3/11 per chunk.
    assert abs(moved / len(chunks) - 3 / 11) < 0.02, moved
    # And only onto the new node: every moved chunk holds "new".
    assert all(
        "new" in place(c, after_nodes, 3)
        for c in chunks[:2000]
        if set(place(c, before_nodes, 3)) != set(place(c, after_nodes, 3))
    )


def test_weights_are_honoured() -> None:
    nodes = [Candidate("big", weight=3.0), Candidate("a"), Candidate("b"), Candidate("c")]
    firsts = collections.Counter(place(i.to_bytes(8, "big"), nodes, 1)[0] for i in range(30_000))
    share = firsts["big"] / 30_000
    assert abs(share - 3 / 6) < 0.02, firsts
