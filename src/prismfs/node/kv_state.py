"""A key-value state machine: what nodes replicate until the metadata state
machine exists, and the simulator's workload. Deterministic, snapshottable."""

from __future__ import annotations

import msgspec
import xxhash

Op = tuple[str, ...]


def encode_op(op: Op) -> bytes:
    return msgspec.msgpack.encode(op)


class KVStore:
    """Operations: ("put", k, v), ("append", k, v), ("get", k); results are msgpack."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, index: int, command: bytes) -> bytes:
        op = msgspec.msgpack.decode(command, type=list[str])
        self.applied = index
        if op[0] == "put":
            self.data[op[1]] = op[2]
        elif op[0] == "append":
            self.data[op[1]] = self.data.get(op[1], "") + op[2]
        elif op[0] == "get":
            return msgspec.msgpack.encode(self.data.get(op[1]))
        return msgspec.msgpack.encode(None)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def query(self, op: bytes) -> bytes:
        """A read-only operation, served after a ReadIndex round (never logged)."""
        request = msgspec.msgpack.decode(op, type=list[str])
        if len(request) != 2 or request[0] != "get":
            raise ValueError(f"unsupported query {request!r}")
        return msgspec.msgpack.encode(self.data.get(request[1]))

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(sorted(self.data.items()))

    def restore(self, snapshot: bytes) -> None:
        self.data = dict(msgspec.msgpack.decode(snapshot, type=list[tuple[str, str]]))

    def digest(self) -> str:
        return xxhash.xxh3_64_hexdigest(self.snapshot())
