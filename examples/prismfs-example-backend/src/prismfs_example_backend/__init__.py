"""An example shard store plugin: shards kept in a dict.

A plugin is any callable registered under the ``prismfs.backends`` entry
point group that takes the ``[store]`` options (a dict) and returns an
object with the `prismfs.data.stores.ShardStore` methods.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from prismfs.data.stores import Capacity, ShardStat, validate_shard_id
from prismfs.errors import ConfigError, NoSpace, NotFound


class MemoryStore:
    name = "memory"

    def __init__(self, options: dict[str, Any]) -> None:
        try:
            self.capacity_bytes = int(float(options.get("capacity_mb", 256)) * 1024 * 1024)
        except ValueError:
            raise ConfigError("capacity_mb must be a number") from None
        self._data: dict[str, tuple[bytes, int]] = {}
        self._ids: list[str] = []
        self._used = 0

    async def put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None:
        validate_shard_id(shard_id)
        old = self._data.get(shard_id)
        grow = len(data) - (len(old[0]) if old else 0)
        if self._used + grow > self.capacity_bytes:
            raise NoSpace(f"memory store full ({self.capacity_bytes} bytes)")
        if old is None:
            bisect.insort(self._ids, shard_id)
        self._data[shard_id] = (bytes(data), time.time_ns())
        self._used += grow

    async def get(self, shard_id: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_shard_id(shard_id)
        try:
            data = self._data[shard_id][0]
        except KeyError:
            raise NotFound(f"no shard {shard_id}") from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    async def delete(self, shard_id: str) -> bool:
        validate_shard_id(shard_id)
        old = self._data.pop(shard_id, None)
        if old is None:
            return False
        self._ids.remove(shard_id)
        self._used -= len(old[0])
        return True

    async def list(self, after: str = "", limit: int = 1000) -> list[str]:
        start = bisect.bisect_right(self._ids, after)
        return self._ids[start : start + limit]

    async def stat(self, shard_id: str) -> ShardStat:
        validate_shard_id(shard_id)
        try:
            data, mtime = self._data[shard_id]
        except KeyError:
            raise NotFound(f"no shard {shard_id}") from None
        return ShardStat(len(data), mtime)

    async def capacity(self) -> Capacity:
        return Capacity(self.capacity_bytes, self._used)

    async def close(self) -> None:
        self._data.clear()
        self._ids.clear()
