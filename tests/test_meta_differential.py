"""Differential test: random namespace operations on the state machine and on a
real local directory (os.* as root) must give the same results, the same
errnos and the same final trees."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismfs.errors import NotADirectory, NotFound, PrismError, registered_errors
from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Link,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    Rename,
    Rmdir,
    Symlink,
    Unlink,
)
from prismfs.meta.namespace import Namespace
from prismfs.wire.codec import decode_message, encode_message

NAMES = ["a", "b", "c", "d"]
# Short paths dominate, so that most operations find what they name and
# succeed; deeper ones still come often enough to test path walking.
_ALL = [(a,) for a in NAMES] * 12 + [(a, b) for a in NAMES for b in NAMES] * 2
_ALL += [(a, b, c) for a in NAMES[:2] for b in NAMES[:2] for c in NAMES[:2]]
paths = st.sampled_from(_ALL)

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, src.encode(), _AT_FDCWD, dst.encode(), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class NamespaceVersusLocal(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ns = Namespace()
        self.root = Path(tempfile.mkdtemp(prefix="prismfs-diff-"))
        self.index = 0
        self.now = 1_000

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.ns.db.close()

    # --- the two sides ----------------------------------------------------------

    def resolve_parent(self, path: tuple[str, ...]) -> int:
        """Walk to the parent directory the way the kernel would (lstat per component)."""
        ino = ROOT_INO
        for component in path[:-1]:
            attr = self.ns.lookup(ino, component.encode())
            if stat.S_ISLNK(attr.mode):
                raise NotFound("dangling symlink in the path")  # targets never exist here
            if not stat.S_ISDIR(attr.mode):
                raise NotADirectory("not a directory")
            ino = attr.ino
        return ino

    def run_meta(self, build) -> int:  # type: ignore[no-untyped-def]
        """Apply a command; 0 on success, else its errno."""
        try:
            command = build()
        except PrismError as exc:
            return exc.errno
        self.index += 1
        self.now += 1
        result = decode_message(self.ns.apply(self.index, encode_message(command)))
        if isinstance(result, MetaFailed):
            return registered_errors()[result.code].errno
        assert isinstance(result, MetaOk)
        return 0

    def run_local(self, fn) -> int:  # type: ignore[no-untyped-def]
        try:
            fn()
        except OSError as exc:
            return exc.errno or -1
        return 0

    def local(self, path: tuple[str, ...]) -> str:
        return str(self.root.joinpath(*path))

    def compare(self, meta: int, local: int, what: str) -> None:
        names = errno.errorcode
        assert meta == local, (
            f"{what}: ours {names.get(meta, meta)}, local {names.get(local, local)}"
        )

    # --- rules -----------------------------------------------------------------

    @rule(path=paths)
    def mkdir(self, path: tuple[str, ...]) -> None:
        meta = self.run_meta(
            lambda: Mkdir(self.now, self.resolve_parent(path), path[-1].encode(), 0o755, 0, 0)
        )
        self.compare(
            meta, self.run_local(lambda: os.mkdir(self.local(path), 0o755)), f"mkdir {path}"
        )

    @rule(path=paths)
    def create(self, path: tuple[str, ...]) -> None:
        meta = self.run_meta(
            lambda: Mknod(
                self.now, self.resolve_parent(path), path[-1].encode(), stat.S_IFREG | 0o644, 0, 0
            )
        )
        local = self.run_local(lambda: os.mknod(self.local(path), stat.S_IFREG | 0o644))
        self.compare(meta, local, f"create {path}")

    @rule(path=paths)
    def symlink(self, path: tuple[str, ...]) -> None:
        target = b"/nonexistent-prismfs-target"
        meta = self.run_meta(
            lambda: Symlink(self.now, self.resolve_parent(path), path[-1].encode(), target, 0, 0)
        )
        local = self.run_local(lambda: os.symlink(target, self.local(path)))
        self.compare(meta, local, f"symlink {path}")

    @rule(src=paths, dst=paths)
    def link(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        def build() -> Link:
            ino = self.ns.lookup(self.resolve_parent(src), src[-1].encode()).ino
            return Link(self.now, ino, self.resolve_parent(dst), dst[-1].encode())

        meta = self.run_meta(build)
        local = self.run_local(
            lambda: os.link(self.local(src), self.local(dst), follow_symlinks=False)
        )
        self.compare(meta, local, f"link {src} {dst}")

    @rule(path=paths)
    def unlink(self, path: tuple[str, ...]) -> None:
        meta = self.run_meta(lambda: Unlink(self.now, self.resolve_parent(path), path[-1].encode()))
        self.compare(meta, self.run_local(lambda: os.unlink(self.local(path))), f"unlink {path}")

    @rule(path=paths)
    def rmdir(self, path: tuple[str, ...]) -> None:
        meta = self.run_meta(lambda: Rmdir(self.now, self.resolve_parent(path), path[-1].encode()))
        self.compare(meta, self.run_local(lambda: os.rmdir(self.local(path))), f"rmdir {path}")

    @rule(src=paths, dst=paths, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src: tuple[str, ...], dst: tuple[str, ...], flags: int) -> None:
        meta = self.run_meta(
            lambda: Rename(
                self.now,
                self.resolve_parent(src),
                src[-1].encode(),
                self.resolve_parent(dst),
                dst[-1].encode(),
                flags,
            )
        )
        local = self.run_local(lambda: renameat2(self.local(src), self.local(dst), flags))
        self.compare(meta, local, f"rename {src} {dst} flags={flags}")

    # --- the trees agree after every step ---------------------------------------------------

    @invariant()
    def same_tree(self) -> None:
        meta_tree: dict[tuple[str, ...], tuple[str, int, bytes]] = {}
        local_tree: dict[tuple[str, ...], tuple[str, int, bytes]] = {}
        meta_ids: dict[tuple[str, ...], int] = {}
        local_ids: dict[tuple[str, ...], int] = {}

        def walk_meta(ino: int, prefix: tuple[str, ...]) -> None:
            for entry in self.ns.readdir(ino, limit=100_000):
                name, attr = entry.name, entry.attr
                path = (*prefix, name.decode())
                kind = _kind(attr.mode)
                target = self.ns.readlink(attr.ino) if kind == "link" else b""
                meta_tree[path] = (kind, attr.nlink, target)
                meta_ids[path] = attr.ino
                if kind == "dir":
                    walk_meta(attr.ino, path)

        def walk_local(directory: Path, prefix: tuple[str, ...]) -> None:
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                path = (*prefix, entry.name)
                st_ = entry.stat(follow_symlinks=False)
                kind = _kind(st_.st_mode)
                target = os.readlink(entry.path).encode() if kind == "link" else b""
                local_tree[path] = (kind, st_.st_nlink, target)
                local_ids[path] = st_.st_ino
                if kind == "dir":
                    walk_local(Path(entry.path), path)

        walk_meta(ROOT_INO, ())
        walk_local(self.root, ())
        assert meta_tree == local_tree
        # Hard links: the same paths share an inode on both sides.
        assert _groups(meta_ids) == _groups(local_ids)
        assert self.ns.getattr(ROOT_INO).nlink == os.stat(self.root).st_nlink


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "file"


def _groups(ids: dict[tuple[str, ...], int]) -> set[frozenset[tuple[str, ...]]]:
    by_ino: dict[int, set[tuple[str, ...]]] = {}
    for path, ino in ids.items():
        by_ino.setdefault(ino, set()).add(path)
    return {frozenset(group) for group in by_ino.values()}


NamespaceVersusLocal.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestNamespaceVersusLocal = NamespaceVersusLocal.TestCase
