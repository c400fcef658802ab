"""Systematic k-of-m erasure coding of one chunk with zfec, checksummed.

A chunk of ``length`` bytes is padded with zeros to ``k * shard_size``
(``shard_size = ceil(length / k)``) and cut into k data shards; zfec adds
``m - k`` parity shards. Shard i of a chunk is checked with its xxh3-128
digest, kept in the chunk record. Each data shard also gets an xxh3-64
digest per `RANGE_BLOCK` bytes (`block_sums`), so a small read can fetch and
verify just the blocks it needs of one data shard (zfec is systematic: data
shard i holds the chunk's bytes ``[i * shard_size, (i + 1) * shard_size)``).
The block size is recorded with the digests (`ChunkRecord.block_size`):
32 KiB, so a random 4 KiB read moves and hashes 32 KiB, not the 128 KiB of
the chunks written before the size was recorded.

zfec 1.6 trusts its input: it decodes corrupt shards to wrong data without
a word and hangs on duplicate shard ids. So `decode_chunk` checks ids
(distinct, in range) and every shard's length and checksum *before* zfec
sees anything, drops the bad ones (reported in the result), and decodes from
k good shards. When the k data shards are all good, no decoding is needed:
they are the chunk.

Both directions are CPU work on whole chunks; callers run them in a worker
thread (`encode_chunk_async`, `decode_chunk_async`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio
import xxhash
import zfec

from prismfs.errors import InvalidArgument, PrismError

Buffer = bytes | bytearray | memoryview
MAX_M = 16
RANGE_BLOCK = 32 * 1024


class NotEnoughShards(PrismError):
    """Fewer than k intact shards of a chunk could be had."""

    code = "not_enough_shards"
    transient = True


def shard_checksum(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def block_sums(shard: bytes | bytearray | memoryview, block: int = RANGE_BLOCK) -> bytes:
    """The 8-byte xxh3-64 digests of the shard's ``block``-byte blocks, concatenated."""
    view = memoryview(shard)
    return b"".join(
        xxhash.xxh3_64_digest(view[at : at + block]) for at in range(0, len(view), block)
    )


def check_geometry(k: int, m: int) -> None:
    if not 1 <= k <= m <= MAX_M:
        raise InvalidArgument(f"need 1 <= k <= m <= {MAX_M}, got k={k} m={m}")


@dataclass(frozen=True)
class Encoded:
    shards: tuple[Buffer, ...]  # m shards, data shards first (views of the chunk's bytes)
    checksums: tuple[bytes, ...]
    shard_size: int
    length: int
    block_sums: tuple[bytes, ...] = ()  # of the k data shards
    block_size: int = RANGE_BLOCK


class ChunkBytes:
    """A chunk's bytes kept as its k data shards, as they arrived: a read of a
    part of it is a view of one shard, with no join of megabytes first."""

    __slots__ = ("length", "parts", "shard_size")

    def __init__(self, parts: Sequence[Buffer], length: int) -> None:
        self.parts = tuple(parts)
        self.shard_size = len(self.parts[0]) if self.parts else 0
        self.length = length

    def __len__(self) -> int:
        return self.length

    def view(self, start: int, n: int) -> bytes | memoryview:
        """Bytes ``[start, start + n)`` (cut at the length): a view where they
        lie in one shard, a copy where they cross into the next."""
        end = min(start + n, self.length)
        if start >= end:
            return b""
        i, within = divmod(start, self.shard_size)
        if within + (end - start) <= self.shard_size:
            return memoryview(self.parts[i])[within : within + end - start]
        out = bytearray()
        while start < end:
            i, within = divmod(start, self.shard_size)
            take = min(self.shard_size - within, end - start)
            out += memoryview(self.parts[i])[within : within + take]
            start += take
        return bytes(out)

    def tobytes(self) -> bytes:
        data = b"".join(self.parts)
        return data if len(data) == self.length else data[: self.length]


@dataclass
class Decoded:
    chunk: ChunkBytes
    bad: list[int] = field(default_factory=list)  # shard ids that failed their checksum or size

    @property
    def data(self) -> bytes:
        return self.chunk.tobytes()


def encode_chunk(data: Buffer, k: int, m: int) -> Encoded:
    """The m shards of ``data``: the k data shards are views of ``data`` (not
    copies; only a short last one is padded), zfec computes just the m - k
    parity shards."""
    check_geometry(k, m)
    length = len(data)
    if length == 0:
        raise InvalidArgument("an empty chunk is not stored")
    shard_size = -(-length // k)
    view = memoryview(data)
    blocks: list[Buffer] = []
    for i in range(k):
        block: Buffer = view[i * shard_size : (i + 1) * shard_size]
        if len(block) < shard_size:
            block = bytes(block) + bytes(shard_size - len(block))
        blocks.append(block)
    shards: tuple[Buffer, ...]
    if k == 1:
        shards = tuple(blocks[0] for _ in range(m))  # replication: m copies
    else:
        parity = zfec.Encoder(k, m).encode(blocks, list(range(k, m))) if m > k else []
        shards = (*blocks, *parity)
    return Encoded(
        shards,
        tuple(shard_checksum(s) for s in shards),
        shard_size,
        length,
        tuple(block_sums(s) for s in shards[:k]),
        RANGE_BLOCK,
    )


def decode_chunk(
    shards: Mapping[int, Buffer],
    *,
    k: int,
    m: int,
    length: int,
    shard_size: int,
    checksums: tuple[bytes, ...],
) -> Decoded:
    """The chunk from any k intact shards (ids 0..m-1); `NotEnoughShards` otherwise."""
    check_geometry(k, m)
    if len(checksums) != m:
        raise InvalidArgument(f"{len(checksums)} checksums for {m} shards")
    if not 0 < length <= k * shard_size:
        raise InvalidArgument(f"chunk length {length} does not fit {k} x {shard_size}")
    good: dict[int, Buffer] = {}
    bad: list[int] = []
    for sid, shard in shards.items():
        if not isinstance(sid, int) or not 0 <= sid < m:
            raise InvalidArgument(f"shard id {sid!r} out of range 0..{m - 1}")
        if len(shard) != shard_size or shard_checksum(shard) != checksums[sid]:
            bad.append(sid)
        else:
            good[sid] = shard
    bad.sort()
    if len(good) < k:
        raise NotEnoughShards(
            f"{len(good)} intact shards of {k} needed (bad: {bad or 'none'})",
            bad=",".join(map(str, bad)),
        )
    if all(i in good for i in range(k)):
        blocks = [good[i] for i in range(k)]
    elif k == 1:
        blocks = [next(iter(good.values()))]
    else:
        ids = tuple(sorted(good)[:k])  # distinct by construction: zfec never sees duplicates
        blocks = zfec.Decoder(k, m).decode(tuple(good[i] for i in ids), ids)
    return Decoded(ChunkBytes(blocks, length), bad)


async def encode_chunk_async(data: Buffer, k: int, m: int) -> Encoded:
    return await trio.to_thread.run_sync(encode_chunk, data, k, m)


async def decode_chunk_async(shards: Mapping[int, Buffer], **kw: object) -> Decoded:
    return await trio.to_thread.run_sync(lambda: decode_chunk(shards, **kw))  # type: ignore[arg-type]
