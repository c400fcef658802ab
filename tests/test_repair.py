"""Failure detection and repair on 5 real node processes (2-of-3 chunks; five
Raft voters, so two nodes may be down).

A node killed with SIGKILL is marked down after ``node_down_after_s``; every
chunk that had a shard on it is rebuilt on another node (``repair_after_s``
= 0), so a second node can then die and every byte is still readable. A
node that comes back is up again, and the copies it still holds of moved
shards are swept as orphans."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
import trio

from prismfs.client.data import DataClient
from prismfs.client.files import get_file, put_file
from prismfs.data.layout import Layout
from prismfs.meta.client import MetaClient, open_meta_client
from prismfs.meta.commands import ROOT_INO, ChunkRecord, NodeInfo
from prismfs.node.consensus_messages import TransferLeadership
from prismfs.wire.client import open_rpc_pool
from test_data_cluster import up as start_cluster
from test_raft_cluster import Cluster, find_leader

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "node.toml"
    config.write_text(
        "[data]\nheartbeat_s = 0.2\nnode_down_after_s = 1.5\nrepair_after_s = 0\n"
        "orphan_sweep_s = 1.0\norphan_grace_s = 0.5\n"
    )
    c = Cluster(tmp_path)
    c.node_config = config  # type: ignore[attr-defined]
    yield c
    c.cleanup()


def up(cluster: Cluster) -> list[dict[str, object]]:
    return start_cluster(cluster, 5)


async def records(meta: MetaClient, ino: int) -> list[ChunkRecord]:
    return [r for _, r in (await meta.chunk_map(ino)).chunks]


async def wait_until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.2)


def shard_names(node: dict[str, object]) -> set[str]:
    root = Path(str(node["data_dir"])) / "shards"
    return {p.name for p in root.glob("*/*/*") if not p.name.startswith(".")}


async def test_a_lost_node_is_repaired_around_and_a_second_loss_loses_nothing(
    cluster: Cluster,
) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    payload = os.urandom(24 << 20)  # 24 chunks of 1 MiB
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta, hedge_after=1.0)
        stream = io.BytesIO(payload)

        async def read(n: int) -> bytes:
            return stream.read(n)

        ino = await put_file(meta, data, ROOT_INO, b"f", read, layout=Layout(2, 3, 1 << 20))
        # Kill a node that holds shards and is not the leader of the client's choice.
        held = {n for r in await records(meta, ino) for n in r.nodes}
        victim = next(n for n in nodes[1:] if n["id"] in held)
        on_victim = sum(1 for r in await records(meta, ino) if victim["id"] in r.nodes)
        assert on_victim > 0
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]

        async def marked_down() -> bool:
            states = {n.node: n.state for n in await meta.nodes()}
            return states[str(victim["id"])] == "down"

        await wait_until(marked_down, 30)

        async def repaired() -> bool:
            return all(victim["id"] not in r.nodes for r in await records(meta, ino))

        await wait_until(repaired, 90)
        for r in await records(meta, ino):
            assert len(set(r.nodes)) == 3 and "" not in r.nodes  # 3 distinct live nodes
        # Each lost shard was rebuilt by the node that now holds it (its log
        # says so): the bytes went node to node, not through the leader.
        rebuilt = sum(
            (Path(str(n["data_dir"])) / "node.log").read_text().count("rebuilt shards [")
            for n in nodes
            if n is not victim
        )
        assert rebuilt >= on_victim
        # A second node dies: every chunk still has 2 of its 3 shards.
        second = next(n for n in nodes[1:] if n is not victim)
        os.kill(int(second["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        out = bytearray()

        async def sink(block: bytes) -> None:
            out.extend(block)

        data2 = DataClient(pool, meta, hedge_after=1.0)
        assert await get_file(meta, data2, ino, sink) == len(payload)
        assert bytes(out) == payload

    # The first victim comes back (dev up restarts the stopped nodes): it is up
    # again, and its copies of the moved shards are swept.
    await trio.to_thread.run_sync(up, cluster)
    victim_now = next(n for n in cluster.nodes() if n["node_id"] == victim["id"])
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):

        async def back_up() -> bool:
            states = {n.node: n.state for n in await meta.nodes()}
            return states[str(victim["id"])] == "up"

        await wait_until(back_up, 30)

        async def swept() -> bool:
            placed = {
                f"{r.id.hex()}.{i}"
                for r in await records(meta, ino)
                for i, n in enumerate(r.nodes)
                if n == victim["id"]
            }
            return shard_names(victim_now) == placed

        await wait_until(swept, 30)


@pytest.fixture
def slow_repair(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "node.toml"
    config.write_text("[data]\nheartbeat_s = 0.2\nnode_down_after_s = 1.5\nrepair_after_s = 4\n")
    c = Cluster(tmp_path)
    c.node_config = config  # type: ignore[attr-defined]
    yield c
    c.cleanup()


async def test_a_new_leader_keeps_a_node_down_and_goes_on_with_its_repair(
    slow_repair: Cluster,
) -> None:
    """When a node went down is recorded through the log: after a change of
    leader the node stays down (the new leader has not heard from it, but
    does not give it a fresh allowance and mark it up), its recorded time
    stays, and repair goes on from that time."""
    nodes = await trio.to_thread.run_sync(start_cluster, slow_repair, 5)
    addresses = [str(n["rpc_address"]) for n in nodes]
    by_id = {str(n["id"]): n for n in nodes}
    async with (
        open_rpc_pool(slow_repair.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta, hedge_after=1.0)
        stream = io.BytesIO(os.urandom(8 << 20))

        async def read(n: int) -> bytes:
            return stream.read(n)

        ino = await put_file(meta, data, ROOT_INO, b"f", read, layout=Layout(2, 3, 1 << 20))
        leader = (await find_leader(pool, addresses)).node_id
        held = {n for r in await records(meta, ino) for n in r.nodes}
        victim = next(i for i in by_id if i in held and i != leader)
        os.kill(int(by_id[victim]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]

        async def victim_info() -> NodeInfo:
            return next(n for n in await meta.nodes() if n.node == victim)

        async def marked_down() -> bool:
            return (await victim_info()).state == "down"

        await wait_until(marked_down, 30)
        down_at = (await victim_info()).state_ns
        assert down_at > 0
        # Leadership moves to a live node before repair starts (4 s after).
        target = next(i for i in by_id if i not in (leader, victim))
        await pool.call(str(by_id[leader]["rpc_address"]), TransferLeadership(target), timeout=5)

        async def repaired() -> bool:
            info = await victim_info()
            assert (info.state, info.state_ns) == ("down", down_at)  # never marked up again
            return all(victim not in r.nodes for r in await records(meta, ino))

        with trio.fail_after(60):
            while not await repaired():
                await trio.sleep(0.1)
        assert (await find_leader(pool, addresses)).node_id != leader
