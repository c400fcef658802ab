"""The namespace inode a mount shows as its root (see `prismfs.fuse.subdir`).

Kept apart from the operations so that every module sending the kernel
notices can map inode numbers without importing them.
"""

from __future__ import annotations

import pyfuse3

subdir_ino = int(pyfuse3.ROOT_INODE)
"""The namespace inode shown as the mount's root (the root's own: none mapped)."""


def kernel_ino(ino: int) -> int:
    """The node id the kernel knows the namespace inode ``ino`` by."""
    return int(pyfuse3.ROOT_INODE) if ino == subdir_ino else ino


def set_mount_root(ino: int) -> None:
    """Serve the namespace directory ``ino`` as the mount's root."""
    global subdir_ino
    subdir_ino = ino
