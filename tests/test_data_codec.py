"""The chunk codec: round trips for every geometry, every k-subset for
m <= 6, corruption caught before zfec, bad shard ids refused (never handed
to zfec, which hangs on duplicates)."""

from __future__ import annotations

import itertools
import os
import random

import pytest
import xxhash

from prismfs.data.codec import RANGE_BLOCK, NotEnoughShards, decode_chunk, encode_chunk
from prismfs.errors import InvalidArgument


def decode(enc, shards, k, m):  # type: ignore[no-untyped-def]
    return decode_chunk(
        shards, k=k, m=m, length=enc.length, shard_size=enc.shard_size, checksums=enc.checksums
    )


GEOMETRIES = [(k, m) for m in range(1, 17) for k in range(1, m + 1)]


@pytest.mark.parametrize(("k", "m"), GEOMETRIES, ids=[f"{k}of{m}" for k, m in GEOMETRIES])
def test_round_trip_every_geometry(k: int, m: int) -> None:
    rng = random.Random(k * 100 + m)
    for size in (1, k, k + 1, 2 * k - 1, 4097, 65_537):
        data = rng.randbytes(size)
        enc = encode_chunk(data, k, m)
        assert len(enc.shards) == m and len({len(s) for s in enc.shards}) == 1
        assert b"".join(enc.shards[:k])[:size] == data  # systematic: data shards are the data
        # from the last k shards (as much parity as possible), shuffled
        ids = list(range(m))[-k:]
        rng.shuffle(ids)
        assert decode(enc, {i: enc.shards[i] for i in ids}, k, m).data == data


@pytest.mark.parametrize("m", range(1, 7))
def test_every_k_subset_decodes(m: int) -> None:
    for k in range(1, m + 1):
        data = os.urandom(1000 + k)
        enc = encode_chunk(data, k, m)
        for subset in itertools.combinations(range(m), k):
            assert decode(enc, {i: enc.shards[i] for i in subset}, k, m).data == data, subset


def test_empty_chunk_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        encode_chunk(b"", 2, 3)


@pytest.mark.parametrize(("k", "m"), [(1, 3), (2, 3), (4, 6), (10, 16)])
def test_every_single_shard_corruption_is_detected(k: int, m: int) -> None:
    data = os.urandom(10_000)
    enc = encode_chunk(data, k, m)
    for victim in range(m):
        for position in (0, enc.shard_size // 2, enc.shard_size - 1):
            shards = dict(enumerate(enc.shards))
            broken = bytearray(shards[victim])
            broken[position] ^= 0x01
            shards[victim] = bytes(broken)
            result = decode(enc, shards, k, m)
            assert result.data == data and result.bad == [victim]
        short = dict(enumerate(enc.shards))
        short[victim] = enc.shards[victim][:-1]  # truncated shard
        assert decode(enc, short, k, m).bad == [victim]


def test_too_many_bad_shards_is_an_error_not_wrong_data() -> None:
    data = os.urandom(5000)
    enc = encode_chunk(data, 2, 3)
    shards = {0: b"x" * enc.shard_size, 1: enc.shards[1], 2: b"y" * enc.shard_size}
    with pytest.raises(NotEnoughShards) as caught:
        decode(enc, shards, 2, 3)
    assert caught.value.details["bad"] == "0,2"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("sid", [-1, 3, 99, "0"])
def test_out_of_range_ids_are_refused(sid: object) -> None:
    enc = encode_chunk(os.urandom(100), 2, 3)
    with pytest.raises(InvalidArgument):
        decode(enc, {0: enc.shards[0], sid: enc.shards[1]}, 2, 3)


@pytest.mark.timeout(10)
def test_duplicate_shard_content_under_two_ids_never_reaches_zfec() -> None:
    """The same shard offered as id 1 and id 2: checksums tell them apart, so
    only one counts, and decoding needs another intact shard."""
    enc = encode_chunk(os.urandom(100), 2, 3)
    with pytest.raises(NotEnoughShards):
        decode(enc, {1: enc.shards[1], 2: enc.shards[1]}, 2, 3)


def test_geometry_limits() -> None:
    for k, m in [(0, 1), (2, 1), (1, 17)]:
        with pytest.raises(InvalidArgument):
            encode_chunk(b"x", k, m)


def test_block_sums_cover_each_data_shard_block() -> None:
    data = os.urandom(3 * RANGE_BLOCK + 777)
    enc = encode_chunk(data, 2, 3)
    assert len(enc.block_sums) == 2  # data shards only
    for i, sums in enumerate(enc.block_sums):
        shard = enc.shards[i]
        blocks = [shard[at : at + RANGE_BLOCK] for at in range(0, len(shard), RANGE_BLOCK)]
        assert len(sums) == 8 * len(blocks)
        assert [sums[n * 8 : n * 8 + 8] for n in range(len(blocks))] == [
            xxhash.xxh3_64_digest(b) for b in blocks
        ]
    # Data shard i is the chunk's bytes [i * shard_size, (i + 1) * shard_size).
    assert bytes(enc.shards[0]) + bytes(enc.shards[1][: len(data) - enc.shard_size]) == data


def test_chunk_bytes_views_within_and_across_shards() -> None:
    from prismfs.data.codec import ChunkBytes

    data = os.urandom(3 * 1000 - 7)
    encoded = encode_chunk(data, 3, 5)
    chunk = decode_chunk(
        dict(enumerate(encoded.shards)),
        k=3,
        m=5,
        length=len(data),
        shard_size=encoded.shard_size,
        checksums=encoded.checksums,
    ).chunk
    assert isinstance(chunk, ChunkBytes) and len(chunk) == len(data)
    assert chunk.tobytes() == data
    for start, n in [(0, 10), (990, 20), (999, 1), (1000, 1000), (500, 2000), (2980, 100)]:
        got = chunk.view(start, n)
        assert bytes(got) == data[start : start + n]
    assert isinstance(chunk.view(10, 20), memoryview)  # within one shard: no copy
    assert chunk.view(len(data), 10) == b""


def test_block_cache_keeps_the_last_used_blocks_within_its_bound() -> None:
    from prismfs.client.data import BlockCache

    cache = BlockCache(max_bytes=100)
    for n in range(5):
        cache.put((b"c", 0, n), memoryview(bytes([n]) * 30))
    assert cache.size <= 100
    assert cache.get((b"c", 0, 0)) is None and cache.get((b"c", 0, 1)) is None
    assert bytes(cache.get((b"c", 0, 2)) or b"") == bytes([2]) * 30
    cache.put((b"c", 0, 5), memoryview(b"x" * 30))  # evicts 3, the least recently used
    assert cache.get((b"c", 0, 3)) is None and cache.get((b"c", 0, 2)) is not None
    cache.put((b"c", 0, 6), memoryview(b"y" * 101))  # larger than the whole cache: not kept
    assert cache.get((b"c", 0, 6)) is None and cache.size <= 100
