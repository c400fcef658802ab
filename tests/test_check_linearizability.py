"""The linearizability checker against a brute-force checker on thousands of
small random histories, and on hand-written histories known to be (or not to
be) linearizable."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest

from prismfs.check.linearizability import check
from prismfs.check.models import UNKNOWN, KVModel, Operation

KV = KVModel()


def brute_force(history: Sequence[Operation]) -> bool:
    """Try every order that respects real time (a.ret < b.call => a first)."""
    n = len(history)
    for order in itertools.permutations(range(n)):
        position = {op: i for i, op in enumerate(order)}
        if any(
            history[a].ret < history[b].call and position[a] > position[b]
            for a in range(n)
            for b in range(n)
        ):
            continue
        states: dict[object, object] = {}
        ok = True
        for i in order:
            op = history[i]
            key = op.input[1]
            good, states[key] = KV.step(states.get(key), op.input, op.output)
            if not good:
                ok = False
                break
        if ok:
            return True
    return False


def op(client: str, inp: tuple[object, ...], out: object, call: float, ret: float) -> Operation:
    return Operation(client, inp, out, call, ret)


def random_history(rng: random.Random, n_ops: int) -> list[Operation]:
    """Concurrent ops on 1-2 keys; outputs sometimes right, sometimes made up."""
    history = []
    truth: dict[str, str | None] = {}
    t = 0.0
    for i in range(n_ops):
        key = rng.choice(["x", "y"]) if rng.random() < 0.3 else "x"
        call = t + rng.random()
        ret = call + rng.random() * 3 if rng.random() > 0.1 else math.inf
        t = call
        kind = rng.choice(["put", "get", "get", "append"])
        if kind == "put":
            value = rng.choice(["1", "2", "3"])
            truth[key] = value
            history.append(op(f"c{i}", ("put", key, value), None, call, ret))
        elif kind == "append":
            suffix = rng.choice(["a", "b"])
            truth[key] = (truth.get(key) or "") + suffix
            history.append(op(f"c{i}", ("append", key, suffix), None, call, ret))
        else:
            if ret == math.inf:
                out: object = UNKNOWN
            elif rng.random() < 0.7:
                out = truth.get(key)
            else:
                out = rng.choice([None, "1", "2", "3", "a", "ab"])
            history.append(op(f"c{i}", ("get", key), out, call, ret))
    return history


def test_agrees_with_brute_force_on_2000_random_histories() -> None:
    rng = random.Random(20261127)
    verdicts = {True: 0, False: 0}
    for _ in range(2000):
        history = random_history(rng, rng.randint(1, 6))
        expected = brute_force(history)
        assert check(KV, history) == expected, history
        verdicts[expected] += 1
    # Both kinds of verdict were exercised, not just one.
    assert verdicts[True] > 200 and verdicts[False] > 200


def test_stale_read_after_write_completed_is_not_linearizable() -> None:
    history = [
        op("a", ("put", "x", "1"), None, 0, 1),
        op("b", ("get", "x"), None, 2, 3),  # the put had finished: None is stale
    ]
    assert not check(KV, history)


def test_concurrent_read_may_see_old_or_new() -> None:
    for seen in (None, "1"):
        history = [op("a", ("put", "x", "1"), None, 0, 3), op("b", ("get", "x"), seen, 1, 2)]
        assert check(KV, history)


def test_reads_going_backwards_are_not_linearizable() -> None:
    history = [
        op("w", ("put", "x", "1"), None, 0, 10),
        op("r1", ("get", "x"), "1", 1, 2),
        op("r2", ("get", "x"), None, 3, 4),  # after r1 saw the new value, the old is gone
    ]
    assert not check(KV, history)


def test_pending_write_may_or_may_not_take_effect() -> None:
    put = op("w", ("put", "x", "1"), None, 0, math.inf)
    assert check(KV, [put, op("r", ("get", "x"), None, 1, 2)])
    assert check(KV, [put, op("r", ("get", "x"), "1", 1, 2)])


def test_lost_append_is_detected() -> None:
    history = [
        op("a", ("append", "x", "a"), None, 0, 1),
        op("b", ("append", "x", "b"), None, 2, 3),
        op("r", ("get", "x"), "b", 4, 5),
    ]
    assert not check(KV, history)


def test_keys_are_checked_independently() -> None:
    history = [
        op("a", ("put", "x", "1"), None, 0, 1),
        op("b", ("put", "y", "2"), None, 0, 1),
        op("c", ("get", "x"), "1", 2, 3),
        op("d", ("get", "y"), "1", 2, 3),  # wrong for y
    ]
    assert not check(KV, history)


@pytest.mark.parametrize("n", [200, 2000])
def test_long_sequential_history_is_fast_enough(n: int) -> None:
    history = []
    for i in range(n):
        history.append(op("a", ("put", "x", str(i)), None, 2 * i, 2 * i + 1))
    history.append(op("r", ("get", "x"), str(n - 1), 2 * n, 2 * n + 1))
    assert check(KV, history)
