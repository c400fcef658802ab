"""Retrying an operation across transient errors until a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from prismfs.errors import PrismError, Unavailable


async def retry_until(
    attempt: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    giving_up: str,
    before: Callable[[], None] | None = None,
    interval: float = 0.1,
) -> None:
    """Await ``attempt()`` until it returns True.

    A transient `PrismError` (no leader yet, connection refused, overload)
    or a False result means "not yet": wait ``interval`` and try again. Any
    other error propagates. ``before`` runs at the top of every round,
    outside the retry (for checks that must end the wait at once, such as a
    process that exited). After ``timeout`` seconds, `Unavailable` with the
    message ``giving_up``.
    """
    deadline = trio.current_time() + timeout
    while True:
        if before is not None:
            before()
        try:
            if await attempt():
                return
        except PrismError as exc:
            if not exc.transient:
                raise
        if trio.current_time() > deadline:
            raise Unavailable(giving_up)
        await trio.sleep(interval)
