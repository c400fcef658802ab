"""What the simulated clients do, and the state machine the nodes replicate.

A workload makes the operations (deterministically, from the simulation's
PRNG), turns writes into state-machine commands, serves reads from a
replica, and names the sequential model the history is checked against.
"""

from __future__ import annotations

import random
import stat
from typing import Any, Protocol

import msgspec

from prismfs.check.models import KVModel, Model, NamespaceModel
from prismfs.errors import NotFound
from prismfs.meta.commands import (
    ROOT_INO,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    Rename,
    Rmdir,
    Unlink,
)
from prismfs.meta.namespace import Namespace
from prismfs.node.kv_state import KVStore, encode_op
from prismfs.raft.state_machine import ExactlyOnce, StateMachine
from prismfs.wire.codec import decode_message, encode_message

Op = tuple[Any, ...]


class Workload(Protocol):
    name: str
    model: Model

    def state_machine(self) -> tuple[StateMachine, Any]:
        """A fresh replica: what Raft applies to, and the store reads and digests use."""
        ...

    def next_op(self, rng: random.Random, client: str, seq: int) -> Op: ...

    def is_read(self, op: Op) -> bool: ...

    def command(self, op: Op) -> bytes: ...

    def write_output(self, op: Op, result: bytes) -> Any: ...

    def read(self, store: Any, op: Op) -> Any: ...


class KVWorkload:
    """put/append/get on three keys, through `ExactlyOnce` around a `KVStore`."""

    name = "kv"
    model: Model = KVModel()

    def state_machine(self) -> tuple[StateMachine, Any]:
        kv = KVStore()
        return ExactlyOnce(kv), kv

    def next_op(self, rng: random.Random, client: str, seq: int) -> Op:
        key = rng.choice(["x", "y", "z"])
        kind = rng.choice(["put", "append", "get", "get"])
        return (kind, key, f"{client}.{seq}") if kind != "get" else (kind, key)

    def is_read(self, op: Op) -> bool:
        return bool(op[0] == "get")

    def command(self, op: Op) -> bytes:
        return encode_op(op)

    def write_output(self, op: Op, result: bytes) -> Any:
        return msgspec.msgpack.decode(result) if result else None

    def read(self, store: Any, op: Op) -> Any:
        return store.get(op[1])


GROUPS = {"g1": ("a", "b"), "g2": ("c", "d")}


class NamespaceWorkload:
    """create/mkdir/unlink/rmdir/rename/lookup of a few names in the root of a
    real `Namespace` (in-memory SQLite; it deduplicates retries itself)."""

    name = "namespace"
    model: Model = NamespaceModel()

    def state_machine(self) -> tuple[StateMachine, Any]:
        ns = Namespace()
        return ns, ns

    def next_op(self, rng: random.Random, client: str, seq: int) -> Op:
        group = rng.choice(sorted(GROUPS))
        names = GROUPS[group]
        kind = rng.choice(["create", "create", "mkdir", "unlink", "rmdir", "rename", "lookup"])
        if kind == "rename":
            return (kind, group, rng.choice(names), rng.choice(names))
        return (kind, group, rng.choice(names))

    def is_read(self, op: Op) -> bool:
        return bool(op[0] == "lookup")

    def command(self, op: Op) -> bytes:
        kind, name = op[0], op[2].encode()
        cmd: MetaCommand
        if kind == "create":
            cmd = Mknod(0, ROOT_INO, name, stat.S_IFREG | 0o644, 0, 0)
        elif kind == "mkdir":
            cmd = Mkdir(0, ROOT_INO, name, 0o755, 0, 0)
        elif kind == "unlink":
            cmd = Unlink(0, ROOT_INO, name)
        elif kind == "rmdir":
            cmd = Rmdir(0, ROOT_INO, name)
        else:
            cmd = Rename(0, ROOT_INO, name, ROOT_INO, op[3].encode())
        return encode_message(cmd)

    def write_output(self, op: Op, result: bytes) -> Any:
        if not result:
            return None  # a stale duplicate of an operation the client already finished
        reply = decode_message(result)
        if isinstance(reply, MetaFailed):
            return reply.code
        assert isinstance(reply, MetaOk)
        return "ok"

    def read(self, store: Any, op: Op) -> Any:
        try:
            attr = store.lookup(ROOT_INO, op[2].encode())
        except NotFound:
            return "not_found"
        return "dir" if stat.S_ISDIR(attr.mode) else "file"


WORKLOADS: dict[str, Workload] = {"kv": KVWorkload(), "namespace": NamespaceWorkload()}
