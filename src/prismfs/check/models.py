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
