"""A shard store whose work is blocking: the async interface runs it in worker threads."""

from __future__ import annotations

import abc

import trio

from prismfs.data.codec import shard_checksum
from prismfs.data.stores import Capacity, ShardStat
from prismfs.errors import InvalidArgument, NotFound


class ThreadedStore(abc.ABC):
    """Subclasses implement the blocking ``_put``, ``_get``, ``_delete``,
    ``_list``, ``_stat`` and ``_capacity``; this gives the async `ShardStore`
    interface on top, each call in a worker thread."""

    name = "threaded"

    @abc.abstractmethod
    def _put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def _get(self, shard_id: str, offset: int, length: int | None) -> bytes | bytearray: ...

    @abc.abstractmethod
    def _delete(self, shard_id: str) -> bool: ...

    @abc.abstractmethod
    def _list(self, after: str, limit: int) -> list[str]: ...

    @abc.abstractmethod
    def _stat(self, shard_id: str) -> ShardStat: ...

    @abc.abstractmethod
    def _capacity(self) -> Capacity: ...

    def _close(self) -> None:
        return None

    async def put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None:
        await trio.to_thread.run_sync(self._put, shard_id, data)

    async def put_checked(
        self, shard_id: str, data: bytes | bytearray | memoryview, checksum: bytes
    ) -> None:
        """`put`, if ``data`` matches ``checksum`` (xxh3-128), else `InvalidArgument`:
        the checksum in the same worker thread as the write, not on the event loop."""
        await trio.to_thread.run_sync(self._put_checked, shard_id, data, checksum)

    def _put_checked(
        self, shard_id: str, data: bytes | bytearray | memoryview, checksum: bytes
    ) -> None:
        if shard_checksum(data) != checksum:
            raise InvalidArgument(
                f"shard {shard_id}: payload does not match its checksum (damaged in transit)"
            )
        self._put(shard_id, data)

    def get_cached(
        self, shard_id: str, offset: int = 0, length: int | None = None
    ) -> bytes | bytearray | None:
        """`get` if it can be answered at once without blocking (from memory),
        else None: then `get`. None here; a store that can, says so."""
        return None

    async def get(
        self, shard_id: str, offset: int = 0, length: int | None = None
    ) -> bytes | bytearray:
        return await trio.to_thread.run_sync(self._get, shard_id, offset, length)

    async def delete(self, shard_id: str) -> bool:
        return await trio.to_thread.run_sync(self._delete, shard_id)

    async def delete_if(self, shard_id: str, mtime_ns: int) -> bool:
        """Delete the shard only if its file is still the one stamped ``mtime_ns``."""
        return await trio.to_thread.run_sync(self._delete_if, shard_id, mtime_ns)

    def _delete_if(self, shard_id: str, mtime_ns: int) -> bool:
        """Check, then delete; a store that can do both at once overrides this."""
        try:
            if self._stat(shard_id).mtime_ns != mtime_ns:
                return False
        except NotFound:
            return False
        return self._delete(shard_id)

    async def list(self, after: str = "", limit: int = 1000) -> list[str]:
        return await trio.to_thread.run_sync(self._list, after, limit)

    async def stat(self, shard_id: str) -> ShardStat:
        return await trio.to_thread.run_sync(self._stat, shard_id)

    async def capacity(self) -> Capacity:
        return await trio.to_thread.run_sync(self._capacity)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close)
