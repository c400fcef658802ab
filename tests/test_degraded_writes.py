"""Writes while a node is down, on real node processes: with one of three nodes
killed, writes of a 2-of-3 directory go on (as two replicas, 1-of-2) and each
acknowledged chunk survives one more node loss; `cluster status` shows them as
degraded and exits 2; once the node is back, the leader's mover re-encodes
them to 2-of-3 and the files read back byte for byte.

Nodes use short failure-detection times (heartbeats every 0.3 s, down after 3 s).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from prismfs.client.config import load_client_toml
from prismfs.client.data import DataClient
from prismfs.data.placement import NotEnoughNodes, fit_layout
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, ChunkRecord
from prismfs.wire.client import open_rpc_pool
from test_membership import Nodes, wait_for

pytestmark = pytest.mark.timeout(600)


def test_fit_layout_keeps_the_margin_or_says_why() -> None:
    assert fit_layout(2, 3, 3, 1) == (2, 3)
    assert fit_layout(2, 3, 2, 1) == (1, 2)  # two replicas
    assert fit_layout(4, 6, 5, 1) == (4, 5)
    assert fit_layout(4, 6, 3, 1) == (2, 3)
    assert fit_layout(1, 3, 2, 1) == (1, 2)
    assert fit_layout(2, 3, 2, 0) == (2, 2)  # min_redundancy 0: no margin asked for
    with pytest.raises(NotEnoughNodes, match=r"min_redundancy = 1\), which needs 2 nodes up"):
        fit_layout(2, 3, 1, 1)
    with pytest.raises(NotEnoughNodes, match="min_redundancy = 2"):
        fit_layout(2, 3, 2, 2)


async def records_of(meta: MetaClient, name: bytes) -> list[ChunkRecord]:
    ino = (await meta.lookup(ROOT_INO, name)).ino
    return [r for _, r in (await meta.chunk_map(ino)).chunks]


def put(nodes: Nodes, tmp_path: Path, name: str, size: int) -> bytes:
    body = os.urandom(size)
    src = tmp_path / name
    src.write_bytes(body)
    nodes.ok("put", str(src), f"/{name}")
    return body


def test_writes_go_on_with_one_node_of_three_down_and_are_reencoded_after(
    tmp_path: Path, logs: Any
) -> None:
    logs.allow("failed")  # the client's uploads to the dead node
    nodes = Nodes(tmp_path)
    try:
        started = nodes.up(3)
        before = put(nodes, tmp_path, "before", 9 << 20)
        leader = nodes.health()["leader"]
        victim = next(n for n in started if n["id"] != leader)
        os.kill(int(victim["pid"]), signal.SIGKILL)
        # At once (the leader does not know yet) and after it is marked down.
        during = put(nodes, tmp_path, "during", 9 << 20)
        wait_for(lambda: nodes.node(str(victim["id"]))["state"] == "down", 30, "node down")
        after = put(nodes, tmp_path, "after", 9 << 20)
        code, out, _ = nodes.cli("cluster", "status")
        assert code == 4 and "written with a reduced layout" in out, out  # a node is down

        async def check_redundancy() -> None:
            client = load_client_toml(nodes.client_toml)
            async with open_rpc_pool(client.credentials(), connect_timeout=2) as pool:
                meta = MetaClient(pool, list(client.addresses))
                data = DataClient(pool, meta)
                for name, body in ((b"during", during), (b"after", after)):
                    records = await records_of(meta, name)
                    assert records and all((r.k, r.m) == (1, 2) for r in records)
                    assert all(r.layout == (2, 3) for r in records)
                    assert all(str(victim["id"]) not in r.nodes for r in records)
                    # One more node lost, either one: every chunk still reads.
                    for gone in {n for r in records for n in r.nodes}:
                        chunks = []
                        for r in records:
                            without = tuple("" if n == gone else n for n in r.nodes)
                            alone = msgspec.structs.replace(r, nodes=without)
                            chunks.append(await data.read_chunk(alone))
                        assert b"".join(chunks) == body, (name, gone)

        trio.run(check_redundancy)

        # The node comes back: the mover gives the chunks their layout back.
        data_dir = Path(str(victim["data_dir"]))
        nodes.start(data_dir, str(victim["rpc_address"]), new=False)
        wait_for(lambda: nodes.cli("cluster", "status")[0] == 0, 120, "re-encoded")
        # at least the 6 chunks of "during" and "after" (repair may have reduced more)
        reencoded = re.search(
            r"(\d+) chunks re-encoded to their layout", nodes.ok("cluster", "status")
        )
        assert reencoded and int(reencoded.group(1)) >= 6
        # Each was read, encoded and stored by a node (its log says so), not
        # by the leader: the bytes went node to node.
        node_logs = [Path(str(n["data_dir"])) / "node.log" for n in started]
        node_logs.append(data_dir.parent / f"{data_dir.name}.log")  # the victim, restarted
        by_nodes = sum(log.read_text().count("re-encoded chunk ") for log in node_logs)
        assert by_nodes >= int(reencoded.group(1))

        async def check_layout() -> None:
            client = load_client_toml(nodes.client_toml)
            async with open_rpc_pool(client.credentials(), connect_timeout=2) as pool:
                meta = MetaClient(pool, list(client.addresses))
                for name in (b"during", b"after"):
                    assert all((r.k, r.m) == (2, 3) for r in await records_of(meta, name))

        trio.run(check_layout)
        for name, body in (("before", before), ("during", during), ("after", after)):
            out_path = tmp_path / f"{name}.back"
            nodes.ok("get", f"/{name}", str(out_path))
            assert out_path.read_bytes() == body, name
    finally:
        nodes.cleanup()
