"""Differential test through a real mount: random file operations on the
mount and on a local directory give the same results, errnos, contents and
trees (100 examples of 30 steps)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fuse_mount import Mount, fuse_available

NAMES = ["a", "b", "c"]
PATHS = [(a,) for a in NAMES] * 6 + [(a, b) for a in NAMES for b in NAMES]
paths = st.sampled_from(PATHS)
offsets = st.sampled_from([0, 1, 4095, 65535, 65536, 100_000])
sizes = st.sampled_from([0, 1, 100, 65536, 70_000])

_STATE: dict[str, Path] = {}


@pytest.fixture(scope="module", params=["", "sync_meta"], ids=["write-back", "sync_meta"])
def mountpoint(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A mount with write-back (the default), and one without (``sync_meta``)."""
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path_factory.mktemp("fuse-diff"))
    try:
        m.up()
        point = m.mount(request.param)
        work = point / "diff"
        work.mkdir()
        os.setxattr(work, "user.prismfs.layout", b"k=2,m=3,chunk=64K")
        yield work
    finally:
        m.cleanup()


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("err", exc.errno)


class MountVersusLocal(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = _STATE["mount"]
        self.remote = Path(tempfile.mkdtemp(dir=base))
        self.local = Path(tempfile.mkdtemp(prefix="prismfs-fuse-diff-"))

    def teardown(self) -> None:
        shutil.rmtree(self.remote, ignore_errors=True)
        shutil.rmtree(self.local, ignore_errors=True)

    def both(self, action: Callable[[Path], Any]) -> None:
        mine = outcome(lambda: action(self.remote))
        theirs = outcome(lambda: action(self.local))
        assert mine == theirs, (mine, theirs)

    @rule(path=paths, offset=offsets, size=sizes, data=st.binary(min_size=1, max_size=64))
    def write(self, path: tuple[str, ...], offset: int, size: int, data: bytes) -> None:
        blob = (data * (size // len(data) + 1))[:size]

        def act(root: Path) -> int:
            fd = os.open(root.joinpath(*path), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, blob, offset)
            finally:
                os.close(fd)

        self.both(act)

    @rule(path=paths, size=sizes)
    def truncate(self, path: tuple[str, ...], size: int) -> None:
        self.both(lambda root: os.truncate(root.joinpath(*path), size))

    @rule(path=paths, flags=st.sampled_from([os.O_APPEND, os.O_TRUNC, os.O_EXCL]))
    def open_flags(self, path: tuple[str, ...], flags: int) -> None:
        def act(root: Path) -> None:
            fd = os.open(root.joinpath(*path), os.O_WRONLY | os.O_CREAT | flags, 0o644)
            try:
                os.write(fd, b"+")
            finally:
                os.close(fd)

        self.both(act)

    @rule(path=paths)
    def mkdir(self, path: tuple[str, ...]) -> None:
        self.both(lambda root: os.mkdir(root.joinpath(*path)))

    @rule(path=paths)
    def unlink(self, path: tuple[str, ...]) -> None:
        self.both(lambda root: os.unlink(root.joinpath(*path)))

    @rule(path=paths)
    def rmdir(self, path: tuple[str, ...]) -> None:
        self.both(lambda root: os.rmdir(root.joinpath(*path)))

    @rule(src=paths, dst=paths)
    def rename(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        self.both(lambda root: os.rename(root.joinpath(*src), root.joinpath(*dst)))

    @rule(src=paths, dst=paths)
    def link(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        self.both(lambda root: os.link(root.joinpath(*src), root.joinpath(*dst)))

    @rule(path=paths, pointee=st.sampled_from(["a", "missing", "b/c"]))  # never outside
    def symlink(self, path: tuple[str, ...], pointee: str) -> None:
        self.both(lambda root: os.symlink(pointee, root.joinpath(*path)))

    @rule(path=paths, mode=st.sampled_from([0o600, 0o755, 0o4711]))
    def chmod(self, path: tuple[str, ...], mode: int) -> None:
        self.both(
            lambda root: (
                os.chmod(root.joinpath(*path), mode, follow_symlinks=False)
                if not os.path.islink(root.joinpath(*path))
                else None
            )
        )

    @rule(path=paths)
    def read(self, path: tuple[str, ...]) -> None:
        self.both(lambda root: root.joinpath(*path).read_bytes())

    @invariant()
    def same_tree(self) -> None:
        assert self.tree(self.remote) == self.tree(self.local)

    @staticmethod
    def tree(root: Path) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st_ = os.lstat(p)
                rel = str(p.relative_to(root))
                if stat.S_ISLNK(st_.st_mode):
                    out[rel] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st_.st_mode):
                    out[rel] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_nlink)
                else:
                    out[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_nlink, p.read_bytes())
        return out


@pytest.mark.timeout(900)
def test_mount_behaves_like_a_local_directory(
    mountpoint: Path, request: pytest.FixtureRequest
) -> None:
    _STATE["mount"] = mountpoint
    # Write-back is the default and gets the most examples; sync_meta (each
    # change sent at once) is the simpler path and shares everything else.
    examples = 60 if request.node.callspec.params["mountpoint"] == "sync_meta" else 100
    MountVersusLocal.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    MountVersusLocal.TestCase().runTest()
