"""The data plane end to end on 3 real node processes (2-of-3): 1 GiB in and
out byte for byte; a node killed with SIGKILL in the middle of a get; a
shard corrupted on disk; a client killed in the middle of overwriting a
file (old content intact, its orphan shards swept); GC of replaced chunks;
the CLI's file commands."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import trio
import xxhash

from conftest import run_cli
from prismfs.client.data import INLINE_DEFAULT, BlockCache, DataClient
from prismfs.client.files import OpenFile, get_file, put_file
from prismfs.data.codec import RANGE_BLOCK, block_sums
from prismfs.data.layout import Layout
from prismfs.data.messages import ReencodeShards, ShardsReencoded
from prismfs.errors import InvalidArgument
from prismfs.meta.client import open_meta_client
from prismfs.meta.commands import LEGACY_BLOCK_SIZE, ROOT_INO
from prismfs.wire.client import open_rpc_pool
from test_raft_cluster import Cluster

pytestmark = pytest.mark.timeout(300)


def shard_files(cluster: Cluster) -> list[Path]:
    return [p for p in cluster.dir.glob("node*/shards/*/*/*") if not p.name.startswith(".")]


class RandomSource:
    """Seeded pseudo-random bytes, hashed as they are read."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.left = size
        self.hash = xxhash.xxh3_128()
        self.rng = random.Random(seed)

    async def read(self, n: int) -> bytes:
        n = min(n, self.left)
        out = self.rng.randbytes(n)
        self.left -= n
        self.hash.update(out)
        return out


def reader(payload: bytes):  # type: ignore[no-untyped-def]
    """An async reader over ``payload``, as `put_file` wants one."""
    stream = io.BytesIO(payload)

    async def read(n: int) -> bytes:
        return stream.read(n)

    return read


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "node.toml"
    config.write_text("[data]\ngc_interval_s = 0.5\norphan_sweep_s = 1.0\norphan_grace_s = 2.0\n")
    c = Cluster(tmp_path)
    c.node_config = config  # type: ignore[attr-defined]
    yield c
    c.cleanup()


def up(cluster: Cluster, nodes: int = 3) -> list[dict[str, object]]:
    """Start (or restart) the dev cluster with the fixture's node config."""
    import json

    result = run_cli(
        "dev",
        "up",
        "--nodes",
        str(nodes),
        "--dir",
        str(cluster.dir),
        "--json",
        "--node-config",
        str(cluster.node_config),  # type: ignore[attr-defined]
        env=cluster.env,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["nodes"])


async def test_one_gib_in_and_out_with_a_node_killed_mid_get(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta, hedge_after=1.0)
        source = RandomSource(1 << 30)
        ino = await put_file(meta, data, ROOT_INO, b"big", source.read)
        assert (await meta.getattr(ino)).size == 1 << 30
        assert data.stats.shards_put == 3 * 256  # 256 chunks of 4 MiB, 3 shards each

        got = xxhash.xxh3_128()
        killed: list[str] = []

        async def sink(block: bytes) -> None:
            got.update(block)
            if not killed and got_bytes[0] > 300 << 20:
                victim = nodes[1]  # not the seed node the client prefers
                os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
                killed.append(str(victim["id"]))
            got_bytes[0] += len(block)

        got_bytes = [0]
        size = await get_file(meta, data, ino, sink)
        assert size == 1 << 30 and got.digest() == source.hash.digest()
        assert killed and killed[0] in data.stats.failed_nodes
        assert data.stats.parity_reads > 0  # the dead node's shards came from parity


async def test_corrupt_shard_is_detected_and_read_around(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta)
        payload = os.urandom(3_000_000)
        read = reader(payload)
        ino = await put_file(meta, data, ROOT_INO, b"f", read, layout=Layout(2, 3, 1 << 20))
        record = (await meta.chunk_map(ino)).chunks[0][1]
        victim = Path(next(p for p in shard_files(cluster) if p.name == f"{record.id.hex()}.0"))
        raw = bytearray(victim.read_bytes())  # noqa: ASYNC240
        raw[100] ^= 0xFF  # bit rot on the disk of the node holding data shard 0
        victim.write_bytes(bytes(raw))  # noqa: ASYNC240
        out = bytearray()

        async def sink(block: bytes) -> None:
            out.extend(block)

        await get_file(meta, data, ino, sink)
        assert bytes(out) == payload
        assert f"{record.id.hex()}.0" in data.stats.corrupt
        logs = "".join(p.read_text() for p in cluster.dir.glob("node*/node.log"))
        assert f"shard {record.id.hex()}.0 is corrupt" in logs


async def test_random_writes_truncate_and_gc(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta)
        attr = await meta.mknod(ROOT_INO, b"r", 0o100644, open_it=True, chunk_size=65536)
        await meta.release(attr.ino)
        model = bytearray()
        f = await OpenFile.open(meta, data, attr.ino)
        rng = random.Random(7)
        for step in range(40):
            offset = rng.randrange(0, 400_000)
            chunk = os.urandom(rng.randrange(1, 150_000))
            await f.write(offset, chunk)
            if len(model) < offset:
                model.extend(bytes(offset - len(model)))
            model[offset : offset + len(chunk)] = chunk
            if step % 7 == 0:
                await f.flush()
            if step % 13 == 12:
                cut = rng.randrange(0, len(model))
                await f.truncate(cut)
                del model[cut:]
            start = rng.randrange(0, len(model) + 10)
            assert await f.read(start, 70_000) == bytes(model[start : start + 70_000])
        await f.close()
        g = await OpenFile.open(meta, data, attr.ino)  # another open sees the committed file
        assert await g.read(0, len(model) + 100) == bytes(model)
        await g.close()
        # Replaced chunks are collected: the shards on disk are those of the live chunks.
        live = {
            f"{r.id.hex()}.{i}"
            for _, r in (await meta.chunk_map(attr.ino)).chunks
            for i in range(r.m)
        }
        with trio.fail_after(30):
            while {p.name for p in shard_files(cluster)} != live:
                await trio.sleep(0.2)
        assert (await meta.statfs()).gc_pending == 0


def test_client_killed_mid_overwrite_keeps_the_old_file(cluster: Cluster, tmp_path: Path) -> None:
    up(cluster)
    env = {**cluster.env, "PRISMFS_SESSION_LEASE_S": "2"}
    old = tmp_path / "old"
    old.write_bytes(os.urandom(5_000_000))
    assert run_cli("put", str(old), "/f", env=env, timeout=60).returncode == 0
    after_first = {p.name for p in shard_files(cluster)}
    new = tmp_path / "new"
    with open(new, "wb") as f:
        for _ in range(400):
            f.write(os.urandom(1 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "prismfs", "put", str(new), "/f"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(shard_files(cluster)) < len(after_first) + 60:  # some of the new file is out
            assert proc.poll() is None, "the put finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait(timeout=10)
    back = tmp_path / "back"
    assert run_cli("get", "/f", str(back), env=env, timeout=60).returncode == 0
    assert back.read_bytes() == old.read_bytes()  # the old content, whole
    # The new file's shards (committed to an unnamed inode, or never committed)
    # go away: lease expiry frees the inode, GC and the orphan sweep delete them.
    deadline = time.monotonic() + 60
    while {p.name for p in shard_files(cluster)} != after_first:
        assert time.monotonic() < deadline, len(shard_files(cluster))
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in cluster.dir.glob("node*/node.log"))
    assert "orphan sweep: deleted shard" in logs or "GC: deleted" in logs


def test_file_commands(cluster: Cluster, tmp_path: Path) -> None:
    up(cluster)
    env = cluster.env
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(100_000))
    assert run_cli("mkdir", "/d", "--layout", "k=1,m=3,chunk=64K", env=env).returncode == 0
    assert run_cli("put", str(src), "/d/", env=env).returncode == 0
    listing = run_cli("ls", "-l", "/d", env=env)
    assert listing.returncode == 0 and "a.bin" in listing.stdout and "100000" in listing.stdout
    info = run_cli("stat", "/d/a.bin", env=env)
    assert "k/m [(1, 3)]" in info.stdout and "chunks: 2 of 65536" in info.stdout
    out = subprocess.run(
        [sys.executable, "-m", "prismfs", "get", "/d/a.bin", "-"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == src.read_bytes()
    back = tmp_path / "b.bin"
    assert run_cli("get", "/d/a.bin", str(back), env=env).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    # A valid name of 249 bytes (83 CJK characters): its upload's temporary
    # name is cut by bytes, so it stays within 255.
    cjk = "漢" * 83
    put = run_cli("put", str(src), f"/d/{cjk}", env=env)
    assert put.returncode == 0, put.stderr
    assert cjk in run_cli("ls", "/d", env=env).stdout
    for args, message in [
        (("rm", "/d"), "is a directory (use -r)"),
        (("get", "/nope", str(back)), "no such file or directory"),
        (("mkdir", "/x/y"), "no such file or directory"),
        (("mkdir", "/z", "--layout", "k=3,m=2"), "k <= m"),
        (("put", str(src), "/w", "--layout", "k=2,m=5"), "needs 5 nodes up"),
        (("ls", "relative"), "start with /"),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert run_cli("rm", "-r", "/d", env=env).returncode == 0
    assert run_cli("ls", "/", env=env).stdout.strip() == ""


def test_cluster_default_layout_from_config(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[data]\ndefault_layout = "k=1,m=2,chunk=64K"\n')
    c = Cluster(tmp_path)
    c.node_config = config  # type: ignore[attr-defined]
    try:
        up(c)
        src = tmp_path / "f"
        src.write_bytes(os.urandom(70_000))
        deadline = time.monotonic() + 20
        while "k=1,m=2,chunk=64K" not in run_cli("stat", "/", env=c.env).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert run_cli("put", str(src), "/f", env=c.env).returncode == 0
        info = run_cli("stat", "/f", env=c.env).stdout
        assert "k/m [(1, 2)]" in info and "chunks: 2 of 65536" in info
    finally:
        c.cleanup()
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ndefault_layout = "k=5,m=2"\n')
    result = run_cli(
        "node",
        "start",
        "--data-dir",
        str(tmp_path / "x"),
        "--listen",
        "127.0.0.1:0",
        "--config",
        str(bad),
        timeout=30,
    )
    assert result.returncode != 0 and "default_layout" in result.stderr
    assert "Traceback" not in result.stderr


async def test_slow_node_is_hedged_around(cluster: Cluster) -> None:
    """A node that stops answering (SIGSTOP: connections stay open, no reply)
    must not stall reads: after ``hedge_after`` a parity shard is fetched."""
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses[:1]) as meta,
    ):
        data = DataClient(pool, meta, hedge_after=0.3, shard_timeout=60)
        payload = os.urandom(8 << 20)
        read = reader(payload)
        ino = await put_file(meta, data, ROOT_INO, b"f", read, layout=Layout(2, 3, 1 << 20))
        frozen = nodes[2]
        os.kill(int(frozen["pid"]), signal.SIGSTOP)  # type: ignore[call-overload]
        try:
            out = bytearray()

            async def sink(block: bytes) -> None:
                out.extend(block)

            with trio.fail_after(30):  # far below the 60 s shard timeout
                await get_file(meta, data, ino, sink)
            assert bytes(out) == payload
            assert data.stats.parity_reads > 0
        finally:
            os.kill(int(frozen["pid"]), signal.SIGCONT)  # type: ignore[call-overload]


async def test_small_chunks_go_inline_and_larger_ones_to_shards(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta)
        small, large = os.urandom(INLINE_DEFAULT), os.urandom(INLINE_DEFAULT + 1)
        ino_small = await put_file(meta, data, ROOT_INO, b"small", reader(small))
        assert data.stats.shards_put == 0
        ((_, record),) = (await meta.chunk_map(ino_small)).chunks
        assert record.is_inline and record.nodes == () and record.inline == small
        ino_large = await put_file(meta, data, ROOT_INO, b"large", reader(large))
        assert data.stats.shards_put == 3
        ((_, record),) = (await meta.chunk_map(ino_large)).chunks
        assert (record.k, record.m, record.inline) == (2, 3, b"")
        for ino, body in ((ino_small, small), (ino_large, large)):
            out = bytearray()

            async def sink(block: bytes, out: bytearray = out) -> None:
                out.extend(block)

            assert await get_file(meta, data, ino, sink) == len(body) and out == body
        # A small file grown past the limit moves to shards; its inline record is
        # collected like any replaced chunk.
        f = await OpenFile.open(meta, data, ino_small)
        await f.write(len(small), b"x" * 100)
        await f.close()
        ((_, record),) = (await meta.chunk_map(ino_small)).chunks
        assert not record.is_inline and len(shard_files(cluster)) == 6
        with trio.fail_after(30):
            while (await meta.statfs()).gc_pending:
                await trio.sleep(0.2)
        g = await OpenFile.open(meta, data, ino_small)
        assert await g.read(0, 1 << 20) == small + b"x" * 100
        await g.close()


async def test_a_node_reencodes_a_chunk_onto_the_nodes_named_and_refuses_a_bad_request(
    cluster: Cluster,
) -> None:
    """`ReencodeShards`: the node asked reads the chunk from k shards, encodes it
    with the new layout and stores every new shard on its node; the record it
    answers reads back the same bytes. A malformed request stores nothing."""
    nodes = await trio.to_thread.run_sync(up, cluster)
    ids = tuple(str(n["id"]) for n in nodes)
    by_id = {str(n["id"]): str(n["rpc_address"]) for n in nodes}
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, list(by_id.values())) as meta,
    ):
        data = DataClient(pool, meta)
        payload = os.urandom(3_000_000)
        ino = await put_file(meta, data, ROOT_INO, b"f", reader(payload))
        rec = (await meta.chunk_map(ino)).chunks[0][1]
        assert (rec.k, rec.m) == (2, 3)
        sources = tuple((i, by_id[n]) for i, n in enumerate(rec.nodes))
        targets = tuple(by_id[n] for n in ids)
        new_id = os.urandom(16)
        bad = [
            ReencodeShards(rec, sources, new_id, 0, 3, ids, targets),  # k = 0
            ReencodeShards(rec, sources, new_id, 2, 3, ids[:2], targets[:2]),  # 2 nodes for 3
            ReencodeShards(rec, sources, rec.id, 1, 3, ids, targets),  # its own id
            ReencodeShards(rec, ((7, targets[0]),), new_id, 1, 3, ids, targets),  # no shard 7
        ]
        for request in bad:
            with pytest.raises(InvalidArgument):
                await pool.call(targets[0], request)
        assert not [p for p in shard_files(cluster) if p.name.startswith(new_id.hex())]

        reply = await pool.call(
            targets[1], ReencodeShards(rec, sources, new_id, 1, 3, ids, targets, 2, 3)
        )
        done = reply.message
        assert isinstance(done, ShardsReencoded)
        new = done.record
        assert (new.id, new.k, new.m, new.nodes, new.layout) == (new_id, 1, 3, ids, (2, 3))
        assert done.bytes_read >= len(payload) and done.bytes_written == 3 * len(payload)
        stored = sorted(p.name for p in shard_files(cluster) if p.name.startswith(new_id.hex()))
        assert stored == [f"{new_id.hex()}.{i}" for i in range(3)]
        # Every replica alone reads back the chunk.
        for keep in range(3):
            alone = msgspec.structs.replace(
                new, nodes=tuple(n if i == keep else "" for i, n in enumerate(new.nodes))
            )
            assert bytes(await data.read_chunk(alone)) == payload


async def test_small_reads_fetch_verified_blocks_and_read_around_bit_rot(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(up, cluster)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as meta,
    ):
        data = DataClient(pool, meta)
        payload = os.urandom((4 << 20) + 300_000)  # a full 4 MiB chunk and a partial one
        ino = await put_file(meta, data, ROOT_INO, b"f", reader(payload))
        record = (await meta.chunk_map(ino)).chunks[0][1]
        assert len(record.block_sums) == 2 and record.shard_size == 2 << 20
        f = await OpenFile.open(meta, data, ino)
        got_before = data.stats.shards_got
        # Out of sequence, each within a block, across blocks, across the two data
        # shards (2 MiB), across the chunk boundary (4 MiB), past the end.
        for offset, size in [
            (10, 4096),
            (3_000_000, 4096),
            (RANGE_BLOCK - 100, 300),
            ((2 << 20) - 2000, 4096),
            ((4 << 20) - 1000, 5000),
            (len(payload) - 10, 4096),
            (5_000, 4096),
        ]:
            assert await f.read(offset, size) == payload[offset : offset + size]
        assert data.stats.range_reads >= 7
        assert data.stats.shards_got == got_before  # no whole shard was fetched
        assert record.block_size == RANGE_BLOCK == 32 * 1024
        assert len(record.block_sums[0]) == 8 * (record.shard_size // RANGE_BLOCK)
        # A read within blocks read before is served from the verified blocks kept.
        hits = data.stats.block_hits
        assert await f.read(20, 1000) == payload[20:1020]
        assert data.stats.block_hits == hits + 1
        # A record from before block sizes were recorded (128 KiB blocks, size 0)
        # is read by its own blocks.
        shards = {p.name: p.read_bytes() for p in shard_files(cluster)}
        legacy = msgspec.structs.replace(
            record,
            id=record.id,
            block_size=0,
            block_sums=tuple(
                block_sums(shards[f"{record.id.hex()}.{i}"], LEGACY_BLOCK_SIZE) for i in range(2)
            ),
        )
        data.blocks = BlockCache()
        at = 3 * LEGACY_BLOCK_SIZE + 77
        assert await data.read_range(legacy, at, 4096) == payload[at : at + 4096]
        assert data.stats.shards_got == got_before
        # Bit rot in block 5 of data shard 0 (not read yet): that read is served
        # whole, from parity, and the shard reported.
        victim = next(p for p in shard_files(cluster) if p.name == f"{record.id.hex()}.0")
        raw = bytearray(victim.read_bytes())
        raw[5 * RANGE_BLOCK + 5] ^= 0xFF
        victim.write_bytes(bytes(raw))
        at = 5 * RANGE_BLOCK + 1000
        corrupt_before = data.stats.corrupt.count(f"{record.id.hex()}.0")
        assert await f.read(at, 4096) == payload[at : at + 4096]
        assert data.stats.corrupt.count(f"{record.id.hex()}.0") > corrupt_before
        assert data.stats.parity_reads >= 1
        await f.close()
