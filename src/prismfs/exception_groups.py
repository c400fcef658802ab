"""Exception groups from trio nurseries, made usable by callers.

trio wraps every exception leaving a nursery in an `ExceptionGroup`, even a
single one raised by the nursery's own body. Callers of our context managers
and daemons expect ``except NotFound:`` to work, so where a nursery is an
implementation detail, a group holding exactly one exception is unwrapped to
that exception. Groups of several (real concurrent failures) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_exception() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        inner = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from inner.__cause__
