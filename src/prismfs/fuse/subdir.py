"""A mount of one directory of the namespace (``-o subdir=/projects/a``).

The kernel knows a FUSE mount's root as node id 1 (`pyfuse3.ROOT_INODE`),
and everywhere else uses the inode numbers this mount gave it, which are
the namespace's. With a subdir, the directory's own inode number stands for
node id 1 on the way in: `SubdirOperations` turns the kernel's 1 into it in
every handler's inode arguments, and `kernel_root.kernel_ino` turns it back into 1 in
the notices the mount sends the kernel (entry and inode invalidations, from
leases and from held-back changes that failed). Nothing else needs mapping:

- the namespace's own root (also inode 1) is never named to the kernel by
  a lookup: it is no directory's child, and nothing below the subdir has it
  as a parent except as the ``..`` of a top-level subdir in a listing,
  where the kernel reads only the number;
- ``..`` is never looked up (``supports_dot_lookup`` is off) and the
  kernel's path walk stops at a mount's root, so ``cd ..`` at the top of
  the mount leaves the mount instead of climbing the namespace;
- ``stat`` of the mount's root shows the subdir's own inode number and
  attributes, as a bind mount of it would.

The mapping is process-wide (`kernel_root`): one process serves one mount,
and the invalidations run in plain functions and worker threads that hold
no reference to the operations object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3

from prismfs.fuse import kernel_root
from prismfs.fuse.ops import PrismOperations

_INODE_ARGS: dict[str, tuple[int, ...]] = {
    "lookup": (0,),
    "getattr": (0,),
    "setattr": (0,),
    "readlink": (0,),
    "mknod": (0,),
    "mkdir": (0,),
    "unlink": (0,),
    "rmdir": (0,),
    "symlink": (0,),
    "rename": (0, 2),
    "link": (0, 1),
    "open": (0,),
    "create": (0,),
    "opendir": (0,),
    "setxattr": (0,),
    "getxattr": (0,),
    "listxattr": (0,),
    "removexattr": (0,),
    "access": (0,),
}
"""The handlers the kernel names inodes to, and where (after ``self``)."""


class SubdirOperations(PrismOperations):
    """`PrismOperations` with the subdir's inode standing for node id 1."""


def _rooted(name: str, positions: tuple[int, ...]) -> Callable[..., Coroutine[Any, Any, Any]]:
    handler = getattr(PrismOperations, name)

    @functools.wraps(handler)
    async def rooted(self: SubdirOperations, *args: Any, **kwargs: Any) -> Any:
        mapped = list(args)
        for i in positions:
            if i < len(mapped) and mapped[i] == pyfuse3.ROOT_INODE:
                mapped[i] = kernel_root.subdir_ino
        return await handler(self, *mapped, **kwargs)

    return rooted


for _name, _positions in _INODE_ARGS.items():
    setattr(SubdirOperations, _name, _rooted(_name, _positions))
