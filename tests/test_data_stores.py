"""One contract, three shard stores: the local disk, S3 (a real moto server
process on a loopback port, started here) and the example plugin found
through the ``prismfs.backends`` entry point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from prismfs.data.stores import ShardStore, open_store, shard_id
from prismfs.errors import ConfigError, InvalidArgument, NotFound

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3 server as a child process; stopped by pid afterwards."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(params=["local", "s3", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ShardStore]:
    if request.param == "local":
        s = open_store("local", {"path": str(tmp_path / "shards")})
    elif request.param == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        import boto3

        bucket = f"b{os.urandom(4).hex()}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket=bucket)
        s = open_store(
            "s3",
            {
                "bucket": bucket,
                "prefix": "node1/",
                "endpoint": endpoint,
                "access_key": "test",
                "secret_key": "test",
                "capacity_gb": 10,
            },
        )
    else:
        s = open_store("memory", {"capacity_mb": 64})
    yield s
    await s.close()


def sid(n: int, index: int = 0) -> str:
    return shard_id(n.to_bytes(16, "big"), index)


async def test_put_get_round_trip_and_ranges(store: ShardStore) -> None:
    data = os.urandom(100_000)
    await store.put(sid(1), data)
    assert await store.get(sid(1)) == data
    assert await store.get(sid(1), 1000, 5000) == data[1000:6000]
    assert await store.get(sid(1), 99_990) == data[99_990:]
    assert await store.get(sid(1), 99_990, 100) == data[99_990:]  # short at the end
    assert (await store.stat(sid(1))).size == 100_000
    await store.put(sid(1), b"replaced")
    assert await store.get(sid(1)) == b"replaced"


async def test_missing_shards(store: ShardStore) -> None:
    with pytest.raises(NotFound):
        await store.get(sid(2))
    with pytest.raises(NotFound):
        await store.stat(sid(2))
    assert await store.delete(sid(2)) is False
    await store.put(sid(2), b"x")
    assert await store.delete(sid(2)) is True
    with pytest.raises(NotFound):
        await store.get(sid(2))


async def test_list_in_order_with_cursor(store: ShardStore) -> None:
    ids = sorted(sid(n, i) for n in (5, 300, 70_000) for i in (0, 1, 15))
    for i in reversed(ids):
        await store.put(i, b"s")
    assert await store.list() == ids
    assert await store.list(limit=4) == ids[:4]
    assert await store.list(after=ids[3], limit=100) == ids[4:]
    assert await store.list(after=ids[-1]) == []


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "a" * 32 + ".0/../../x", "A" * 32 + ".0", "0" * 32 + ".16", "", "x"]
)
async def test_ids_that_could_escape_are_refused(store: ShardStore, bad: str) -> None:
    for call in (store.put(bad, b"x"), store.get(bad), store.delete(bad), store.stat(bad)):
        with pytest.raises(InvalidArgument):
            await call


async def test_concurrent_puts_and_capacity(store: ShardStore) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(store.put, sid(n, 3), os.urandom(1000))
    assert len(await store.list()) == 40
    capacity = await store.capacity()
    assert capacity.total > 0 and capacity.used >= 0


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="known: local, memory, s3"):
        open_store("nosuch", {})
    with pytest.raises(ConfigError):
        open_store("local", {})
    with pytest.raises(ConfigError):
        open_store("s3", {})


def test_s3_without_boto3_names_the_extra_to_install() -> None:
    """boto3 is the optional extra ``prismfs[s3]``: configuring an S3 store
    where it is not installed is a one-line ConfigError naming the extra."""
    code = (
        "import sys; sys.modules['boto3'] = None\n"  # as if not installed
        "from prismfs.data.stores import open_store\n"
        "from prismfs.errors import ConfigError\n"
        "try:\n"
        "    open_store('s3', {'bucket': 'b'})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'prismfs[s3]'" in out.stdout, out.stdout + out.stderr


def test_local_store_removes_what_a_crashed_put_left(tmp_path: Path) -> None:
    import trio

    from prismfs.data.stores.local import LocalStore

    store = LocalStore(tmp_path)
    sid = "ab" * 16 + ".0"
    trio.run(store.put, sid, b"shard")
    crumbs = tmp_path / "ab" / "ab"
    (crumbs / f".{sid}.tmp999999-1").write_bytes(b"half a shard")  # another process died
    (crumbs / f".{sid}.tmp{os.getpid()}-77").write_bytes(b"a put of this process")
    assert trio.run(store.clean_temporary) == 1
    assert sorted(p.name for p in crumbs.iterdir()) == [f".{sid}.tmp{os.getpid()}-77", sid]
    assert (crumbs / sid).stat().st_mode & 0o777 == 0o600


async def test_local_store_open_descriptors_never_serve_a_shard_that_is_gone(
    tmp_path: Path,
) -> None:
    """Reads keep shard files open; whatever happens to a file behind the
    store's back (deleted, replaced by a rename, rewritten in place), the
    next read sees the file system as it is, never the old descriptor's
    content. The descriptor cache stays within its bound."""
    from prismfs.data.stores.local import LocalStore

    store = LocalStore(tmp_path)
    store.open_shards.capacity = 4
    one = sid(1)
    await store.put(one, b"first")
    assert await store.get(one) == b"first"
    assert await store.get(one, 1, 3) == b"irs"  # (from the cached descriptor)
    path = tmp_path / one[0:2] / one[2:4] / one
    path.unlink()
    with pytest.raises(NotFound):
        await store.get(one)
    path.write_bytes(b"second")
    assert await store.get(one) == b"second"
    other = path.with_name("elsewhere")
    other.write_bytes(b"third")
    os.replace(other, path)
    assert await store.get(one) == b"third"
    fd = os.open(path, os.O_WRONLY)  # in place: the same file
    os.pwrite(fd, b"THI", 0)
    os.close(fd)
    assert await store.get(one) == b"THIrd"
    await store.put(one, b"fourth")
    assert await store.get(one) == b"fourth"
    assert await store.delete(one) is True
    with pytest.raises(NotFound):
        await store.get(one)
    # Many shards read at once by several threads: every read right, at most
    # `capacity` descriptors kept, none closed under a reader.
    bodies = {sid(n): os.urandom(5000 + n) for n in range(20)}
    for name, body in bodies.items():
        await store.put(name, body)
    for _ in range(3):
        async with trio.open_nursery() as nursery:
            for name, body in bodies.items():

                async def read(name: str = name, body: bytes = body) -> None:
                    assert await trio.to_thread.run_sync(store._get, name, 0, None) == body
                    assert await store.get(name, 100, 50) == body[100:150]

                nursery.start_soon(read)
    assert len(store.open_shards._open) <= 4
    await store.close()
    assert store.open_shards._open == {}
