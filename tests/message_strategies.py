"""Hypothesis strategies for any message, derived from msgspec's type info.

Deriving them from `msgspec.inspect` (not from Python type hints) means the
constraints declared on a field (``U32``, ``max_length``...) are honoured, so
round-trip tests draw only values that are valid on the wire; every later
message family gets strategies for free.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else _INT_MIN)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else _INT_MAX)
        return st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.StrType):
        return st.text(
            min_size=t.min_length or 0, max_size=t.max_length if t.max_length is not None else 40
        )
    if isinstance(t, mi.BytesType):
        return st.binary(
            min_size=t.min_length or 0, max_size=t.max_length if t.max_length is not None else 64
        )
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([for_type(x) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(
            for_type(t.item_type), max_size=t.max_length if t.max_length is not None else 5
        )
    if isinstance(t, mi.TupleType):
        return st.tuples(*(for_type(x) for x in t.item_types))
    if isinstance(t, mi.VarTupleType):
        return st.lists(for_type(t.item_type), max_size=3).map(tuple)
    if isinstance(t, mi.DictType):
        return st.dictionaries(for_type(t.key_type), for_type(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return for_struct(t.cls)
    raise NotImplementedError(f"no strategy for {t!r}; add one to tests/message_strategies.py")


def for_struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {f.name: for_type(f.type) for f in info.fields}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


def random_value(t: mi.Type, rng: random.Random, depth: int = 0) -> Any:
    """A random valid value of ``t``: a cheap source of seeds for mutation fuzzing."""
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -1000)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 10**6)
        return rng.randint(lo, min(hi, lo + 10**6))
    if isinstance(t, mi.FloatType):
        return rng.uniform(-1e6, 1e6)
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.StrType):
        return "".join(rng.choice("abcxyz019-é") for _ in range(rng.randint(0, 12)))
    if isinstance(t, mi.BytesType):
        return rng.randbytes(rng.randint(t.min_length or 0, t.max_length or 24))
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.UnionType):
        return random_value(rng.choice(t.types), rng, depth)
    if isinstance(t, (mi.ListType, mi.VarTupleType)):
        n = 0 if depth > 2 else rng.randint(0, 3)
        items = [random_value(t.item_type, rng, depth + 1) for _ in range(n)]
        return tuple(items) if isinstance(t, mi.VarTupleType) else items
    if isinstance(t, mi.TupleType):
        return tuple(random_value(x, rng, depth + 1) for x in t.item_types)
    if isinstance(t, mi.DictType):
        n = 0 if depth > 2 else rng.randint(0, 3)
        return {
            random_value(t.key_type, rng, depth + 1): random_value(t.value_type, rng, depth + 1)
            for _ in range(n)
        }
    if isinstance(t, mi.StructType):
        return random_instance(t.cls, rng, depth + 1)
    raise NotImplementedError(f"no random value for {t!r}")


def random_instance(cls: type[msgspec.Struct], rng: random.Random, depth: int = 0) -> Any:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return cls(**{f.name: random_value(f.type, rng, depth) for f in info.fields})
