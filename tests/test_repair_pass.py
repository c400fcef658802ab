"""A repair pass over many chunk records, with the rebuild itself replaced:
the records come a page at a time from a worker thread, the endangered ones
(one loss from unavailable) first, with a bounded number in flight that grows
with the nodes up."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from prismfs.leader import repair
from prismfs.leader.repair import MAX_PARALLEL_CHUNKS, PER_NODE_CHUNKS, RepairStats
from prismfs.meta.commands import (
    ROOT_INO,
    ChunkRecord,
    CommitChunks,
    Mknod,
    NodeInfo,
    RegisterNode,
)
from prismfs.meta.namespace import Namespace
from test_meta_namespace import Driver

NODES = [f"n{i}" for i in range(8)]


def fill(ns: Namespace, files: int) -> dict[bytes, int]:
    """``files`` chunks of 2-of-4 over the 8 nodes; returns each chunk's
    number of shards on the lost nodes n0 and n1."""
    d = Driver(ns)
    for node in NODES:
        d.run(RegisterNode(1, node, f"127.0.0.1:{7000 + len(node)}"))
    on_lost = {}
    for n in range(files):
        attr = d.run(Mknod(1, ROOT_INO, f"f{n}".encode(), stat.S_IFREG | 0o644, 0, 0))
        assert attr is not None
        # Every 7th chunk has two shards on lost nodes (2 live: one loss from
        # unavailable); the others one.
        nodes = ("n0", "n1", "n4", "n5") if n % 7 == 0 else ("n0", "n2", "n3", "n6")
        chunk_id = n.to_bytes(16, "big")
        rec = ChunkRecord(chunk_id, 100, 50, 2, 4, nodes)
        d.run(CommitChunks(2, attr.ino, ((0, rec),), 100))
        on_lost[chunk_id] = sum(1 for x in nodes if x in ("n0", "n1"))
    return on_lost


def test_a_pass_goes_a_page_at_a_time_endangered_first_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = Namespace(tmp_path / "meta.db")
    on_lost = fill(ns, 1300)
    order: list[bytes] = []
    in_flight = peak = 0
    threads: set[bool] = set()

    async def rebuild(consensus: Any, pool: Any, rec: ChunkRecord, *args: Any, **kw: Any) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        order.append(rec.id)
        await trio.sleep(0.001)
        in_flight -= 1
        return 1

    real_reader = ns.reader

    def reader() -> Any:
        import threading

        threads.add(threading.current_thread() is threading.main_thread())
        return real_reader()

    monkeypatch.setattr(repair, "repair_chunk", rebuild)
    monkeypatch.setattr(ns, "reader", reader)
    stats = RepairStats()
    done = trio.run(
        repair.repair_pass,
        None,
        ns,
        None,
        stats,
        {"n0", "n1"},
        1e9,  # type: ignore[arg-type]
    )
    assert done == 1300 and stats.pending == 1300
    assert sorted(order) == sorted(on_lost)  # each chunk once
    endangered = [i for i, chunk in enumerate(order) if on_lost[chunk] == 2]
    assert len(endangered) == 186 and max(endangered) == 185  # all of them first
    assert threads == {False}  # read in worker threads only
    # 6 nodes up: 2 chunks each at once.
    assert peak == min(MAX_PARALLEL_CHUNKS, PER_NODE_CHUNKS * 6)


def test_rebalance_plans_from_a_cursor_that_goes_on_from_pass_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning a pass of moves reads each node's chunk list through a cursor:
    the next pass goes on where the last one stopped instead of planning the
    same chunks again from the start (the moves here are not committed, so
    only the cursors keep the second pass off the first one's chunks)."""
    from types import SimpleNamespace

    from prismfs.leader.rebalance import MOVES_PER_PASS, Mover
    from prismfs.leader.repair import Health

    ns = Namespace(tmp_path / "meta.db")
    d = Driver(ns)
    for node in ("n0", "n1", "n2", "n3"):
        d.run(RegisterNode(1, node, f"127.0.0.1:{7000 + int(node[1])}", capacity=10**12))
    for n in range(400):  # n3 holds nothing: the others are above the mean
        attr = d.run(Mknod(1, ROOT_INO, f"f{n}".encode(), stat.S_IFREG | 0o644, 0, 0))
        assert attr is not None
        rec = ChunkRecord(n.to_bytes(16, "big"), 10**6, 5 * 10**5, 2, 3, ("n0", "n1", "n2"))
        d.run(CommitChunks(2, attr.ino, ((0, rec),), 10**6))
    planned: list[tuple[bytes, str, str]] = []

    async def move(rec: ChunkRecord, i: int, nodes: Any, to: str) -> bool:
        planned.append((rec.id, rec.nodes[i], to))
        return True  # not committed: the records stay as they were

    async def main() -> None:
        leader = SimpleNamespace(role="leader")
        mover = Mover(leader, ns, None, Health(), spread=0.01)  # type: ignore[arg-type]
        monkeypatch.setattr(mover, "move", move)
        assert await mover.rebalance_pass() == MOVES_PER_PASS
        first = {(chunk, src) for chunk, src, _ in planned}
        assert len(first) == MOVES_PER_PASS and {to for _, _, to in planned} == {"n3"}
        planned.clear()
        assert await mover.rebalance_pass() == MOVES_PER_PASS
        second = {(chunk, src) for chunk, src, _ in planned}
        # Each node's cursor went on: no chunk planned again from the same node.
        assert len(second) == MOVES_PER_PASS and not first & second

    trio.run(main)


def test_a_chunk_whose_rebuilds_fail_on_two_nodes_at_once_raises_one_error() -> None:
    """Two lost shards rebuilt on two nodes at once, both refusing (the chunk
    was freed meanwhile, say): the caller gets one `PrismError`, which its
    ``except`` handles, and not a group of two that would end the leader's
    service (as it once stopped a leader during a rebalance)."""
    from prismfs.data.rebuild import NotEnoughShardsToRepair
    from prismfs.errors import PrismError

    nodes = {
        n: NodeInfo(n, f"127.0.0.1:{7000 + i}", "", 1 << 30, "up", 0) for i, n in enumerate(NODES)
    }
    rec = ChunkRecord(b"\x01" * 16, 100, 50, 2, 4, ("n0", "n1", "n2", "n3"))
    calls: list[str] = []
    both = trio.Event()

    class Refusing:
        async def call(self, address: str, message: Any, **kw: Any) -> Any:
            calls.append(address)
            await both.wait()  # both answers arrive together, as over the network
            raise NotEnoughShardsToRepair("0 of the 2 shards needed are readable")

    async def answer_both() -> None:
        while len(calls) < 2:
            await trio.sleep(0.001)
        both.set()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_both)
            with pytest.raises(PrismError) as raised:
                await repair.repair_chunk(
                    None,  # type: ignore[arg-type]
                    Refusing(),  # type: ignore[arg-type]
                    rec,
                    {"n0", "n1"},
                    nodes,
                    RepairStats(),
                )
        assert isinstance(raised.value, NotEnoughShardsToRepair)

    trio.run(main)
    assert len(calls) == 2  # both targets were asked, at once
