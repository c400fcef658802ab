"""Processes: is a recorded pid still the process we started; the open-file limit.

Pids are reused, so a pid alone proves nothing after a reboot or a long
pause. A process counts as ours only if it exists, is not a zombie, and its
command line contains a marker we passed it (its data directory).
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path


def process_alive(pid: int, marker: str | None = None) -> bool:
    if pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # Field 3 of /proc/PID/stat, after the parenthesised command name, is the state.
    state = stat.rpartition(")")[2].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    return marker is None or marker in cmdline


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: every connection, log
    segment and shard being read holds one, and running out stops the node."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
