"""Linearizability checking: Wing & Gong's search with Lowe's memoisation.

Theory of operation (as in Porcupine's ``checkSingle``). The history becomes
a time-ordered doubly linked list of call and return events. The search walks
the list: at a call whose operation the model accepts from the current state,
it *linearizes* that operation (removes its call and return from the list,
remembers the choice on a stack) and starts over from the head; at a return
event whose operation is not linearized yet, no order consistent with real
time remains, so it backtracks. Every (set of linearized operations, model
state) pair is tried at most once (the cache), which turns the exponential
search into something that handles thousands of operations per partition.

Events at the same instant count as concurrent (calls sort before returns),
the permissive reading of equal timestamps.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from prismfs.check.models import Model, Operation


@dataclass(eq=False)
class _Event:
    op_id: int
    is_call: bool
    op: Operation
    match: _Event | None = None  # call -> its return
    prev: _Event | None = None
    next: _Event | None = None


def _build(history: Sequence[Operation]) -> _Event:
    events: list[tuple[float, int, int, _Event]] = []
    for i, op in enumerate(history):
        call = _Event(i, True, op)
        ret = _Event(i, False, op)
        call.match = ret
        events.append((op.call, 0, i, call))
        events.append((op.ret, 1, i, ret))
    events.sort(key=lambda t: (t[0], t[1], t[2]))
    head = _Event(-1, False, history[0] if history else Operation("", (), None, 0, 0))
    prev = head
    for *_, event in events:
        prev.next = event
        event.prev = prev
        prev = event
    return head


def _lift(call: _Event) -> None:
    for event in (call, call.match):
        assert event is not None and event.prev is not None
        event.prev.next = event.next
        if event.next is not None:
            event.next.prev = event.prev


def _unlift(call: _Event) -> None:
    for event in (call.match, call):
        assert event is not None and event.prev is not None
        event.prev.next = event
        if event.next is not None:
            event.next.prev = event


def check_partition(model: Model, history: Sequence[Operation]) -> bool:
    if not history:
        return True
    head = _build(history)
    state: Any = model.init()
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Event, Any]] = []
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.is_call:
            assert entry.match is not None
            ok, new_state = model.step(state, entry.op.input, entry.match.op.output)
            if ok:
                new_linearized = linearized | (1 << entry.op_id)
                key = (new_linearized, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            _unlift(call)
            entry = call.next
    return True


def check(model: Model, history: Sequence[Operation]) -> bool:
    """True if the whole history is linearizable with respect to ``model``."""
    return all(check_partition(model, part) for part in model.partition(history))
