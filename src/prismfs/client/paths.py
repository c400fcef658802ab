"""Paths inside the cluster ("/a/b/c", from the root) on top of `MetaClient`:
resolving them one lookup per component, making directories, and removing
trees. Shared by the file CLI and the HTTP gateway."""

from __future__ import annotations

import stat

from prismfs.errors import AlreadyExists, InvalidArgument, NotADirectory, NotFound
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, Attr


def split(path: str) -> list[bytes]:
    """The names of ``path`` (must start with /; empty components ignored)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"cluster paths start with /: {path!r}")
    try:
        return [p.encode() for p in path.split("/") if p]
    except UnicodeEncodeError:
        raise InvalidArgument("a path must be valid UTF-8") from None


async def resolve(meta: MetaClient, path: str) -> Attr:
    attr = await meta.getattr(ROOT_INO)
    walked = ""
    for name in split(path):
        if not stat.S_ISDIR(attr.mode):
            raise NotADirectory(f"{walked or '/'} is not a directory")
        walked += "/" + name.decode(errors="replace")
        try:
            attr = await meta.lookup(attr.ino, name)
        except NotFound:
            raise NotFound(f"{walked}: no such file or directory") from None
    return attr


async def resolve_parent(meta: MetaClient, path: str) -> tuple[int, bytes]:
    """(inode of the parent directory, last name) of ``path``."""
    parts = split(path)
    if not parts:
        raise InvalidArgument("the root has no parent")
    parent = await resolve(meta, "/" + "/".join(p.decode() for p in parts[:-1]))
    if not stat.S_ISDIR(parent.mode):
        raise NotADirectory(f"{path}: a parent is not a directory")
    return parent.ino, parts[-1]


async def make_dirs(
    meta: MetaClient, path: str, *, parents: bool, mode: int = 0o755
) -> tuple[Attr, bool]:
    """mkdir ``path`` (with ``parents``: also its missing parents, and no error if
    it exists as a directory); returns its attributes and whether it was made."""
    parts = split(path)
    if not parts:
        raise AlreadyExists("/ exists")
    attr = await meta.getattr(ROOT_INO)
    made = False
    for n, name in enumerate(parts):
        last = n == len(parts) - 1
        if not last and not parents:
            attr = await resolve(meta, "/" + b"/".join(parts[: n + 1]).decode())
            continue
        try:
            attr = await meta.mkdir(attr.ino, name, mode)
            made = last
        except AlreadyExists:
            if last and not parents:
                raise AlreadyExists(f"{path} exists") from None
            attr = await meta.lookup(attr.ino, name)
            if not stat.S_ISDIR(attr.mode):
                raise NotADirectory(
                    f"/{b'/'.join(parts[: n + 1]).decode()} is not a directory"
                ) from None
    return attr, made


async def remove_tree(meta: MetaClient, parent: int, name: bytes, attr: Attr) -> int:
    """Remove ``parent/name`` and, if it is a directory, everything below it;
    returns how many entries were removed."""
    removed = 0
    if stat.S_ISDIR(attr.mode):
        children = [(e.name, e.attr) async for e in meta.readdir(attr.ino)]
        for child, child_attr in children:
            removed += await remove_tree(meta, attr.ino, child, child_attr)
        await meta.rmdir(parent, name)
    else:
        await meta.unlink(parent, name)
    return removed + 1
