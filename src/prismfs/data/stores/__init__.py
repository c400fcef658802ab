"""Shard stores: where a node keeps the shards placed on it.

One interface (`ShardStore`) with three kinds of implementations: the local
disk (`local`), any S3-compatible object store (`s3`), and third-party
plugins registered under the ``prismfs.backends`` entry-point group (see
``docs/backends.md``). A node opens its store from the ``[store]`` section
of its configuration with `open_store`.

Shard ids are ``<chunk id, 32 hex digits>.<shard index>``; every store
refuses anything else (`validate_shard_id`), so no id can name a path or
key outside the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from prismfs.errors import ConfigError, InvalidArgument

_SHARD_ID = re.compile(r"[0-9a-f]{32}\.(?:[0-9]|1[0-5])")
ENTRY_POINT_GROUP = "prismfs.backends"


def validate_shard_id(shard_id: str) -> str:
    if not isinstance(shard_id, str) or _SHARD_ID.fullmatch(shard_id) is None:
        raise InvalidArgument(f"invalid shard id {shard_id!r}")
    return shard_id


def shard_id(chunk_id: bytes, index: int) -> str:
    return f"{chunk_id.hex()}.{index}"


@dataclass(frozen=True)
class ShardStat:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Capacity:
    total: int  # bytes; 0 = unknown (an object store without a configured quota)
    used: int


class ShardStore(Protocol):
    """Async shard storage. Missing shards raise `NotFound`; a full store `NoSpace`;
    other failures `StorageError`. Implementations must be safe to call concurrently."""

    name: str

    async def put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None:
        """Store durably (on return the shard survives a crash); replaces an existing one."""
        ...

    async def get(
        self, shard_id: str, offset: int = 0, length: int | None = None
    ) -> bytes | bytearray: ...

    async def delete(self, shard_id: str) -> bool:
        """True if it existed."""
        ...

    async def list(self, after: str = "", limit: int = 1000) -> list[str]:
        """Shard ids in ascending order, strictly after ``after``."""
        ...

    async def stat(self, shard_id: str) -> ShardStat: ...

    async def capacity(self) -> Capacity: ...

    async def close(self) -> None: ...


def open_store(backend: str, options: dict[str, Any]) -> ShardStore:
    """The store named ``backend`` ("local", "s3" or a plugin's entry-point name)."""
    if backend == "local":
        from prismfs.data.stores.local import LocalStore

        return LocalStore.from_options(options)
    if backend == "s3":
        from prismfs.data.stores.s3 import S3Store

        return S3Store.from_options(options)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == backend]
    if not found:
        known = sorted({"local", "s3", *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ConfigError(f"unknown shard store backend {backend!r} (known: {', '.join(known)})")
    try:
        factory = found[0].load()
        store: ShardStore = factory(dict(options))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"shard store plugin {backend!r} failed to start: {exc}") from None
    return store
