"""Sequential specifications the checker tests histories against.

A model is pure: ``init()`` gives the start state, ``step(state, input,
output)`` says whether ``output`` is what the operation ``input`` returns in
``state`` and gives the next state. States must be hashable (the checker
memoises on them). ``partition`` splits a history into independent parts
(per key for a key-value store), each checked on its own: this is what
makes checking long histories tractable.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

UNKNOWN: Any = object()
"""The output of an operation that never returned: any output is accepted."""


@dataclass(frozen=True)
class Operation:
    client: str
    input: tuple[Any, ...]
    output: Any
    call: float
    ret: float  # math.inf for an operation that never returned


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Any, input: tuple[Any, ...], output: Any) -> tuple[bool, Hashable]: ...

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]: ...


class KVModel:
    """A register per key. Inputs: ("put", key, value), ("get", key),
    ("append", key, suffix). put and append return None; get returns the value
    (None for a missing key)."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Any, input: tuple[Any, ...], output: Any) -> tuple[bool, Hashable]:
        op = input[0]
        if op == "put":
            return True, input[2]
        if op == "append":
            return True, (state or "") + input[2]
        if op == "get":
            return output is UNKNOWN or output == state, state
        raise ValueError(f"unknown KV operation {op!r}")

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_key: dict[Any, list[Operation]] = {}
        for op in history:
            by_key.setdefault(op.input[1], []).append(op)
        return list(by_key.values())


class NamespaceModel:
    """Names in one directory, each absent, a file or an (empty) directory.

    Inputs carry a group first: ("create", group, name), ("mkdir", group,
    name), ("unlink", group, name), ("rmdir", group, name), ("rename",
    group, src, dst), ("lookup", group, name). Changes return "ok" or an
    error code (`prismfs.errors` codes: "already_exists", "not_found",
    "is_a_directory", "not_a_directory"); lookup returns "file", "dir" or
    "not_found". A rename stays inside its group, so groups are checked
    independently. The state is a sorted tuple of (name, kind).
    """

    def init(self) -> Hashable:
        return ()

    def step(self, state: Any, input: tuple[Any, ...], output: Any) -> tuple[bool, Hashable]:
        names: dict[str, str] = dict(state)
        expected, names = _namespace_step(names, input)
        new_state = tuple(sorted(names.items()))
        return output is UNKNOWN or output == expected, new_state

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_group: dict[Any, list[Operation]] = {}
        for op in history:
            by_group.setdefault(op.input[1], []).append(op)
        return list(by_group.values())


def _namespace_step(names: dict[str, str], input: tuple[Any, ...]) -> tuple[str, dict[str, str]]:
    op, name = input[0], input[2]
    kind = names.get(name)
    if op == "lookup":
        return kind or "not_found", names
    if op in ("create", "mkdir"):
        if kind is not None:
            return "already_exists", names
        return "ok", {**names, name: "file" if op == "create" else "dir"}
    if op in ("unlink", "rmdir"):
        if kind is None:
            return "not_found", names
        if op == "unlink" and kind == "dir":
            return "is_a_directory", names
        if op == "rmdir" and kind == "file":
            return "not_a_directory", names
        return "ok", {n: k for n, k in names.items() if n != name}
    if op == "rename":
        dst = input[3]
        target = names.get(dst)
        if kind is None:
            return "not_found", names
        if name == dst:
            return "ok", names
        if target == "dir" and kind == "file":
            return "is_a_directory", names
        if target == "file" and kind == "dir":
            return "not_a_directory", names
        moved = {n: k for n, k in names.items() if n != name}
        moved[dst] = kind
        return "ok", moved
    raise ValueError(f"unknown namespace operation {op!r}")
