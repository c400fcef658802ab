"""Fault injection for tests: a network partition between node processes.

Only active when ``PRISMFS_PARTITION_FILE`` is set (tests do; nothing else
should). The file (a relative path is taken in the node's data directory, like
the clock offset in `prismfs.clock`) lists, one per line, the RPC addresses
this node cannot reach: every call the node makes to one of them fails as if
the network dropped it. Writing each side's address into the other's file cuts
the two apart in both directions; emptying the files heals the partition. The
file is re-read at most twice a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PARTITION_FILE_ENV = "PRISMFS_PARTITION_FILE"


def partition(directory: str | os.PathLike[str]) -> Callable[[str], bool] | None:
    """``unreachable(address)`` for this node, or None when no fault is injected."""
    name = os.environ.get(PARTITION_FILE_ENV)
    if not name:
        return None
    path = os.path.join(os.fspath(directory), name)
    cut: set[str] = set()
    checked = -1.0

    def unreachable(address: str) -> bool:
        nonlocal cut, checked
        now = time.monotonic()
        if now - checked >= 0.5:
            checked = now
            try:
                with open(path) as f:
                    cut = {line.strip() for line in f if line.strip()}
            except OSError:
                cut = set()
        return address in cut

    return unreachable
