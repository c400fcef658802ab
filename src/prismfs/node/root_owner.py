"""Who owns the root directory of a new cluster.

Every replica creates the root inode itself, as uid 0, gid 0, mode 0755 (the
same on all of them, so their namespaces agree from the first entry on). A
file system whose root only root may write is no use to the person who set it
up as themselves, so ``prismfs cluster init`` (and ``prismfs dev up``) record
an owner in the founding node's data directory, ``root-owner`` (``UID:GID``):
by default the user who ran the command, the one behind ``sudo`` if it ran
through sudo. The founding node proposes the change of owner through Raft as
soon as it can (so every replica applies it), then deletes the file: the
owner is given once, and a later ``chown`` of the root is never undone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prismfs.durable import write_atomic
from prismfs.errors import InvalidArgument

ROOT_OWNER_FILE = "root-owner"


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID`` (numbers) as a pair; `InvalidArgument` otherwise."""
    uid, sep, gid = text.strip().partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise InvalidArgument(f"owner {text!r} is not UID:GID (numbers, as 1000:1000)")
    if max(int(uid), int(gid)) >= 2**32 - 1:
        raise InvalidArgument(f"owner {text!r}: uid and gid go up to 4294967294")
    return int(uid), int(gid)


def invoking_owner() -> tuple[int, int]:
    """The user who ran this command: behind sudo (``SUDO_UID``/``SUDO_GID``)
    if it runs as root through sudo, else this process's uid and gid."""
    sudo_uid, sudo_gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if os.getuid() == 0 and sudo_uid.isdigit() and sudo_gid.isdigit():
        return int(sudo_uid), int(sudo_gid)
    return os.getuid(), os.getgid()


def request_root_owner(data_dir: Path, owner: tuple[int, int]) -> None:
    """Record that the new cluster's root directory goes to ``owner`` (nothing
    to record for root, which owns it already)."""
    if owner != (0, 0):
        write_atomic(data_dir / ROOT_OWNER_FILE, f"{owner[0]}:{owner[1]}\n".encode())


def requested_root_owner(data_dir: Path) -> tuple[int, int] | None:
    try:
        return parse_owner((data_dir / ROOT_OWNER_FILE).read_text())
    except (OSError, InvalidArgument):
        return None


def root_owner_given(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / ROOT_OWNER_FILE).unlink()
