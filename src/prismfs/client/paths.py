"""Paths inside the cluster ("/a/b/c", from the root) on top of `MetaClient`:
resolving them one lookup per component, making directories, and removing
trees, each as a `Caller` (a user and group, and the part of the tree it may
reach) checked against modes and owners the way the kernel checks a mount's
callers. Shared by the file CLI and the HTTP gateway."""

from __future__ import annotations

import dataclasses
import stat
from dataclasses import dataclass

from prismfs.errors import (
    AlreadyExists,
    InvalidArgument,
    NotADirectory,
    NotFound,
    PermissionDenied,
)
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, Attr

R, W, X = 4, 2, 1
NOBODY = 65534
"""The user and group a token acts as unless it was made for another."""


@dataclass(frozen=True)
class Caller:
    """Who acts on the tree: ``uid`` 0 passes every mode check but execute on
    a file nobody may execute; ``prefix`` ("" = the whole tree) bounds the
    paths it may name at all."""

    uid: int = 0
    gid: int = 0
    prefix: str = ""

    def reach(self, path: str) -> None:
        """`PermissionDenied` unless ``path`` is the prefix or below it."""
        p = self.prefix
        if p and path != p and not path.startswith(p + "/"):
            raise PermissionDenied(f"{path} is outside {p}, the only tree this token reaches")

    def check(self, attr: Attr, want: int, path: str) -> None:
        """`PermissionDenied` unless the mode bits grant ``want`` (R|W|X)."""
        if self.uid == 0:
            if want & X and not stat.S_ISDIR(attr.mode) and not attr.mode & 0o111:
                raise PermissionDenied(f"{path}: not executable")
            return
        if self.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif self.gid == attr.gid:
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        if want & ~bits:
            need = "".join(c for c, b in (("r", R), ("w", W), ("x", X)) if want & b)
            raise PermissionDenied(f"{path}: permission denied (needs {need})")

    def may_remove(self, parent: Attr, child: Attr, path: str) -> None:
        """Removing or renaming ``child`` out of ``parent``: write and search
        on the directory, and with its sticky bit, owning one of the two."""
        self.check(parent, W | X, _parent_of(path))
        if parent.mode & stat.S_ISVTX and self.uid not in (0, parent.uid, child.uid):
            raise PermissionDenied(f"{path}: the directory is sticky and not yours")


ROOT = Caller()


def _parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def split(path: str) -> list[bytes]:
    """The names of ``path`` (must start with /; empty components ignored)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"cluster paths start with /: {path!r}")
    try:
        return [p.encode() for p in path.split("/") if p]
    except UnicodeEncodeError:
        raise InvalidArgument("a path must be valid UTF-8") from None


async def resolve(meta: MetaClient, path: str, caller: Caller = ROOT) -> Attr:
    """The attributes of ``path``; ``caller`` must be able to search every
    directory on the way."""
    caller.reach("/" + path.strip("/"))
    attr = await meta.getattr(ROOT_INO)
    walked = ""
    for name in split(path):
        if not stat.S_ISDIR(attr.mode):
            raise NotADirectory(f"{walked or '/'} is not a directory")
        caller.check(attr, X, walked or "/")
        walked += "/" + name.decode(errors="replace")
        try:
            attr = await meta.lookup(attr.ino, name)
        except NotFound:
            raise NotFound(f"{walked}: no such file or directory") from None
    return attr


async def resolve_parent(meta: MetaClient, path: str, caller: Caller = ROOT) -> tuple[Attr, bytes]:
    """(attributes of the parent directory, last name) of ``path``; ``caller``
    must be able to search every directory up to the parent."""
    parts = split(path)
    if not parts:
        raise InvalidArgument("the root has no parent")
    caller.reach("/" + path.strip("/"))
    above = "/" + "/".join(p.decode(errors="replace") for p in parts[:-1])
    parent = await resolve(meta, above, _searcher(caller))
    if not stat.S_ISDIR(parent.mode):
        raise NotADirectory(f"{path}: a parent is not a directory")
    caller.check(parent, X, above)
    return parent, parts[-1]


def _searcher(caller: Caller) -> Caller:
    """``caller`` without its prefix: the parent of a path under the prefix
    may lie above it, and only searching it is needed."""
    return dataclasses.replace(caller, prefix="")


async def make_dirs(
    meta: MetaClient, path: str, *, parents: bool, mode: int = 0o755, caller: Caller = ROOT
) -> tuple[Attr, bool]:
    """mkdir ``path`` (with ``parents``: also its missing parents, and no error if
    it exists as a directory) as ``caller``, who owns what it makes; returns
    its attributes and whether it was made."""
    parts = split(path)
    if not parts:
        raise AlreadyExists("/ exists")
    caller.reach("/" + path.strip("/"))
    attr = await meta.getattr(ROOT_INO)
    made = False
    for n, name in enumerate(parts):
        last = n == len(parts) - 1
        here = "/" + b"/".join(parts[:n]).decode(errors="replace")
        there = "/" + b"/".join(parts[: n + 1]).decode(errors="replace")
        caller.check(attr, X, here)
        try:
            child = await meta.lookup(attr.ino, name)
        except NotFound:
            if not last and not parents:
                raise NotFound(f"{there}: no such file or directory") from None
            caller.check(attr, W | X, here)
            try:
                attr = await meta.mkdir(attr.ino, name, mode, uid=caller.uid, gid=caller.gid)
                made = last
                continue
            except AlreadyExists:  # made by someone else meanwhile
                child = await meta.lookup(attr.ino, name)
        if last and not parents:
            raise AlreadyExists(f"{path} exists")
        if not stat.S_ISDIR(child.mode):
            raise NotADirectory(f"{there} is not a directory")
        attr = child
    return attr, made


async def remove_tree(
    meta: MetaClient,
    parent: int,
    name: bytes,
    attr: Attr,
    caller: Caller = ROOT,
    path: str = "",
) -> int:
    """Remove ``parent/name`` (at ``path``) and, if it is a directory,
    everything below it, as ``caller`` (who must be allowed to remove it from
    its parent already); returns how many entries were removed."""
    removed = 0
    if stat.S_ISDIR(attr.mode):
        caller.check(attr, R | W | X, path or "/")
        children = [(e.name, e.attr) async for e in meta.readdir(attr.ino)]
        for child, child_attr in children:
            below = f"{path}/{child.decode(errors='replace')}"
            caller.may_remove(attr, child_attr, below)
            removed += await remove_tree(meta, attr.ino, child, child_attr, caller, below)
        await meta.rmdir(parent, name)
    else:
        await meta.unlink(parent, name)
    return removed + 1
