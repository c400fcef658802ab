"""``prismfs umount MOUNTPOINT``: flush a PrismFS mount, then unmount it.

A plain ``umount`` makes the daemon commit what it buffered too, but after
the mount is gone: an error there reaches only the daemon's log, and the
command has returned before the data is on the cluster. This first asks
the mount to make everything it holds back durable (what ``prismfs sync``
does: buffered data of open files, deferred creates and unlinks) and
refuses to unmount if that fails; then it unmounts with ``fusermount3 -u``
(``umount`` for a mount fusermount3 does not know).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from prismfs.errors import ConfigError

SYNC_XATTR = "user.prismfs.sync"


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def prismfs_mounted(point: Path) -> bool:
    """Is a PrismFS mount (type fuse.prismfs) mounted exactly at ``point``?"""
    target = str(point)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) != target or "-" not in fields:
                continue
            if fields[fields.index("-") + 1] == "fuse.prismfs":
                return True
    return False


def unmount(mountpoint: Path, say: Callable[[str], None], timeout: float = 30.0) -> None:
    point = Path(os.path.realpath(mountpoint))
    if not prismfs_mounted(point):
        raise ConfigError(f"{mountpoint} is not a PrismFS mount point")
    try:
        # A read-only mount holds nothing back (and refuses setxattr with EROFS).
        if not os.statvfs(point).f_flag & os.ST_RDONLY:
            os.setxattr(point, SYNC_XATTR, b"1")
    except OSError as exc:
        raise ConfigError(
            f"could not flush {point} ({exc.strerror}); not unmounted "
            "(umount or fusermount3 -u unmount without flushing first)"
        ) from None
    result = _run(["fusermount3", "-u", str(point)], timeout)
    # fusermount3's reason ("target is busy") is the one to tell, unless
    # umount succeeds where it did not.
    if (
        result is not None
        and prismfs_mounted(point)
        and _run(["umount", str(point)], timeout) is None
    ):
        result = None
    deadline = time.monotonic() + timeout
    while prismfs_mounted(point):
        if result is not None or time.monotonic() > deadline:
            raise ConfigError(f"cannot unmount {point}: {result or 'still mounted'}")
        time.sleep(0.05)
    say(f"flushed and unmounted {point}")


def _run(command: list[str], timeout: float) -> str | None:
    """None once ``command`` succeeded, else its last line of complaint."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"{command[0]} exited with {done.returncode}"
