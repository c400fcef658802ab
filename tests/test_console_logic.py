"""The web console's logic without a browser or a cluster: the fault budget
(`leader.faults`) over a real namespace; rates and time left over sample
series, paged chunk tables and escaping in the pages (`gateway.console_pages`)."""

from __future__ import annotations

import stat
from typing import Any

import trio

from prismfs.gateway.console_pages import (
    Viewer,
    directory_page,
    eta,
    file_page,
    rates,
    recent_rate,
)
from prismfs.leader.activity import FIELDS, ActivityReply
from prismfs.leader.faults import FaultBudgets
from prismfs.meta.commands import (
    ROOT_INO,
    Attr,
    ChunkMap,
    ChunkRecord,
    CommitChunks,
    Mkdir,
    Mknod,
    RegisterNode,
    SetNodeState,
)
from prismfs.meta.namespace import Namespace
from prismfs.wire.codec import encode_message

ZONES = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c"}


class Leader:
    role = "leader"

    def __init__(self, voters: tuple[str, ...] = ("a1", "b1", "c1")) -> None:
        self.ns = Namespace()
        self.index = 0
        self.voters = voters

    def run(self, command: Any) -> None:
        self.index += 1
        self.ns.apply(self.index, encode_message(command))

    def status(self) -> Any:
        return self


def record(tag: int, k: int, nodes: tuple[str, ...]) -> ChunkRecord:
    m = len(nodes)
    return ChunkRecord(bytes([tag]) * 16, 100, 50, k, m, nodes, (b"",) * m)


def setup(voters: tuple[str, ...] = ("a1", "b1", "c1")) -> tuple[Leader, int, int]:
    """Two files: /hot/f coded 2-of-3 over zones a, b, c; /cold/g 1-of-3 in a and b."""
    leader = Leader(voters)
    for node, zone in ZONES.items():
        leader.run(RegisterNode(0, node, f"addr-{node}", zone, 1 << 30))
    ids = []
    for d, f in ((b"hot", b"f"), (b"cold", b"g")):
        leader.run(Mkdir(0, ROOT_INO, d, stat.S_IFDIR | 0o755, 0, 0))
        parent = leader.ns.lookup(ROOT_INO, d).ino
        leader.run(Mknod(0, parent, f, stat.S_IFREG | 0o644, 0, 0))
        ids.append(leader.ns.lookup(parent, f).ino)
    leader.run(CommitChunks(1, ids[0], ((0, record(1, 2, ("a1", "b1", "c1"))),), 100))
    leader.run(CommitChunks(1, ids[1], ((0, record(2, 1, ("a1", "a2", "b1"))),), 100))
    return leader, ids[0], ids[1]


def budget(leader: Leader) -> Any:
    return trio.run(FaultBudgets(leader, leader.ns).current)  # type: ignore[arg-type]


def test_the_budget_is_the_least_margin_and_names_the_weakest_directory() -> None:
    leader, _, _ = setup()
    b = budget(leader)
    # /hot/f: 3 shards, 2 needed: margin 1. /cold/g: 3 shards, 1 needed: margin 2.
    assert (b.chunks, b.nodes, b.unavailable, b.least_margin_chunks) == (2, 1, 0, 1)
    assert b.weakest == ("/hot",)
    assert b.zones == ("a", "b", "c")
    # Losing zone a: /hot/f keeps b1, c1 (2 >= 2), /cold/g keeps b1 (1 >= 1).
    # Losing b: the same. Losing c: /hot/f keeps a1, b1. Every zone can go.
    assert b.zones_survivable == ("a", "b", "c")


def test_a_node_down_lowers_the_budget_at_once_and_zones_with_it() -> None:
    leader, _, _ = setup()
    assert budget(leader).nodes == 1
    leader.run(SetNodeState(0, "c1", "down"))
    b = budget(leader)  # the states changed: computed again, not the cached answer
    assert b.nodes == 0 and b.unavailable == 0
    assert b.weakest == ("/hot",)
    # /hot/f has a1 and b1 left: losing zone a or b loses it; c has nothing left.
    assert b.zones_survivable == ("c",)
    leader.run(SetNodeState(0, "b1", "down"))
    b = budget(leader)
    assert b.unavailable == 1 and b.nodes == 0


def test_the_metadata_majority_caps_the_budget_and_the_zones() -> None:
    # Three voters, two in zone a, one (b2) holding no shard at all.
    leader, _, _ = setup(voters=("a1", "a2", "b2"))
    b = budget(leader)
    assert (b.voters, b.voters_margin, b.nodes) == (3, 1, 1)
    # The chunks would survive zone a; the metadata would not (one voter left).
    assert b.zones_survivable == ("b", "c")
    leader.run(SetNodeState(0, "b2", "down"))
    b = budget(leader)
    assert b.voters_margin == 0 and b.nodes == 0  # the chunks could still lose one
    assert b.least_margin_chunks == 1 and b.unavailable == 0
    assert b.zones_survivable == ("b", "c")


def test_no_coded_chunk_means_no_budget_to_speak_of() -> None:
    leader = Leader()
    leader.run(RegisterNode(0, "n1", "addr", "", 1 << 30))
    b = budget(leader)
    assert (b.chunks, b.nodes, b.weakest) == (0, -1, ())


def activity(points: list[tuple[float, int]]) -> ActivityReply:
    samples = tuple(
        tuple(int(t * 1e9) if f == "t_ns" else (v if f == "moved_shards" else 0) for f in FIELDS)
        for t, v in points
    )
    return ActivityReply(5.0, FIELDS, samples)


def test_rates_skip_a_counter_reset_and_time_left_follows() -> None:
    # 10 shards every 5 s, then a new leader counts from zero, then 10 per 5 s again.
    points = [(0, 0), (5, 10), (10, 20), (15, 0), (20, 10), (25, 20)]
    a = activity(points)
    assert recent_rate(a, "moved_shards", window_s=60) == 40 / 20  # not over the reset
    per_step = [r for _, r in rates([(t, float(v)) for t, v in points])]
    assert per_step == [2.0, 2.0, 2.0, 2.0]  # the reset gives no rate at all
    assert recent_rate(a, "moved_shards", window_s=10) == 2.0
    assert eta(0, 0.0) == "done"
    assert eta(120, 2.0) == "1 min 0 s"
    assert eta(5, 0.0).startswith("unknown")


VIEWER = Viewer("read", "reader", "f" * 32)
MiB = 1 << 20


def attr(mode: int, size: int) -> Attr:
    return Attr(7, mode, 1, 0, 0, size, 0, 0, 0)


def test_a_file_page_shows_one_page_of_chunks_with_links_to_the_others() -> None:
    size = 450 * 4 * MiB  # 450 chunks of 4 MiB
    page = [(i, record(i % 250, 2, ("a1", "b1", "c1"))) for i in range(200, 400)]
    cmap = ChunkMap(4 * MiB, size, tuple(page))
    html = file_page("/big", attr(stat.S_IFREG | 0o644, size), cmap, 200, 200, {}, VIEWER)
    assert "450 chunks of up to 4.0 MiB, coded 2 of 3" in html
    assert "Chunks 200 to 399 of 450." in html
    assert 'href="/ui/files/big?chunk=0">Earlier chunks' in html
    assert 'href="/ui/files/big?chunk=400">Later chunks' in html
    assert html.count('<tr><td class="num">') == 200
    last = ChunkMap(4 * MiB, size, tuple(page[:50]))
    html = file_page("/big", attr(stat.S_IFREG | 0o644, size), last, 400, 200, {}, VIEWER)
    assert "Chunks 400 to 449 of 450." in html and "Later chunks" not in html


def test_names_from_the_cluster_are_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    html = directory_page("/d", [(hostile, attr(stat.S_IFREG | 0o644, 1))], None, VIEWER)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    # A read-only viewer is offered no upload.
    assert 'id="upload"' not in html
    writer = Viewer("write", "w", "f" * 32)
    assert 'id="upload"' in directory_page("/d", [], None, writer)
