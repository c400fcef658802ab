"""The wall clock of a node, with an offset tests can inject.

Nothing that decides safety reads the wall clock (leases are timed on the
leader's monotonic clock, `prismfs.node.sessions`); it stamps file times,
registry entries and progress reports. Tests that step a node's clock set
``PRISMFS_CLOCK_OFFSET_FILE`` to a file holding an offset in seconds, which
every process started with it re-reads at most twice a second: writing ``120``
there jumps that process's wall clock two minutes ahead, at once. A relative
path is taken in the node's data directory (`use_directory`), so each node
of a cluster started with one environment has a clock of its own.
"""

from __future__ import annotations

import os
import time

OFFSET_FILE_ENV = "PRISMFS_CLOCK_OFFSET_FILE"

_offset_ns = 0
_checked_at = -1.0
_directory = ""
# Read once: it is set in the environment a process starts with, and
# `os.environ` lookups cost about a microsecond on every file time stamped.
_offset_path = os.environ.get(OFFSET_FILE_ENV, "")


def use_directory(directory: str | os.PathLike[str]) -> None:
    """Relative offset files are in ``directory`` (a node's data directory)."""
    global _directory
    _directory = os.fspath(directory)


def wall_ns() -> int:
    """Nanoseconds since the epoch, as this node believes (the injected offset added)."""
    global _offset_ns, _checked_at
    path = _offset_path
    if not path:
        return time.time_ns()
    now = time.monotonic()
    if now - _checked_at >= 0.5:
        _checked_at = now
        try:
            with open(os.path.join(_directory, path)) as f:
                _offset_ns = int(float(f.read().strip() or 0) * 1e9)
        except (OSError, ValueError):
            _offset_ns = 0
    return time.time_ns() + _offset_ns
