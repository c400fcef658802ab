"""Is a recorded pid still the process we started?

Pids are reused, so a pid alone proves nothing after a reboot or a long
pause. A process counts as ours only if it exists, is not a zombie, and its
command line contains a marker we passed it (its data directory).
"""

from __future__ import annotations

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
