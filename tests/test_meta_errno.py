"""Errno tables per command, in the spirit of pjdfstest: each row is one call
on a fixed tree and the errno Linux gives for it (0 = success). Rows the
differential test cannot reach reliably (devices, links to directories,
exact rename precedence) are spelled out here."""

from __future__ import annotations

import errno as E
import stat
from collections.abc import Callable

import pytest

from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Link,
    MetaCommand,
    Mkdir,
    Mknod,
    Rename,
    Rmdir,
    SetAttr,
    Symlink,
    Unlink,
)
from test_meta_namespace import Driver

REG = stat.S_IFREG | 0o644
LONG = b"n" * 256


class Tree:
    """/d/ (holding f and sub/x), /e/ (empty), /f (file), /l -> f (symlink)."""

    def __init__(self) -> None:
        self.d = Driver()
        run = self.d.run
        self.dir_d = _ino(run(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0)))
        self.d_f = _ino(run(Mknod(1, self.dir_d, b"f", REG, 0, 0)))
        self.sub = _ino(run(Mkdir(1, self.dir_d, b"sub", 0o755, 0, 0)))
        run(Mknod(1, self.sub, b"x", REG, 0, 0))
        self.e = _ino(run(Mkdir(1, ROOT_INO, b"e", 0o755, 0, 0)))
        self.f = _ino(run(Mknod(1, ROOT_INO, b"f", REG, 0, 0)))
        self.link = _ino(run(Symlink(1, ROOT_INO, b"l", b"f", 0, 0)))


def _ino(attr: object) -> int:
    return attr.ino  # type: ignore[attr-defined]


Row = tuple[str, Callable[[Tree], MetaCommand], int]

ROWS: list[Row] = [
    # rename
    ("rename missing source", lambda t: Rename(2, ROOT_INO, b"nope", ROOT_INO, b"z"), E.ENOENT),
    ("rename file over file", lambda t: Rename(2, ROOT_INO, b"f", t.dir_d, b"f"), 0),
    ("rename file over dir", lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"e"), E.EISDIR),
    ("rename dir over file", lambda t: Rename(2, ROOT_INO, b"e", ROOT_INO, b"f"), E.ENOTDIR),
    (
        "rename dir over non-empty dir",
        lambda t: Rename(2, ROOT_INO, b"e", ROOT_INO, b"d"),
        E.ENOTEMPTY,
    ),
    ("rename dir over empty dir", lambda t: Rename(2, t.dir_d, b"sub", ROOT_INO, b"e"), 0),
    ("rename dir into itself", lambda t: Rename(2, ROOT_INO, b"d", t.sub, b"in"), E.EINVAL),
    ("rename dir onto itself", lambda t: Rename(2, ROOT_INO, b"d", ROOT_INO, b"d"), 0),
    (
        "rename noreplace existing",
        lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"l", RENAME_NOREPLACE),
        E.EEXIST,
    ),
    (
        "rename noreplace free",
        lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"g", RENAME_NOREPLACE),
        0,
    ),
    (
        "rename exchange missing",
        lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"g", RENAME_EXCHANGE),
        E.ENOENT,
    ),
    (
        "rename exchange file/dir",
        lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"e", RENAME_EXCHANGE),
        0,
    ),
    (
        "rename exchange into own subtree",
        lambda t: Rename(2, ROOT_INO, b"d", t.sub, b"x", RENAME_EXCHANGE),
        E.EINVAL,
    ),
    (
        "rename both flags",
        lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, b"g", RENAME_EXCHANGE | RENAME_NOREPLACE),
        E.EINVAL,
    ),
    ("rename long name", lambda t: Rename(2, ROOT_INO, b"f", ROOT_INO, LONG), E.ENAMETOOLONG),
    ("rename into a file", lambda t: Rename(2, ROOT_INO, b"e", t.f, b"z"), E.ENOTDIR),
    ("rename from missing dir", lambda t: Rename(2, 999, b"f", ROOT_INO, b"z"), E.ENOENT),
    # link
    ("link file", lambda t: Link(2, t.f, t.e, b"hard"), 0),
    ("link symlink", lambda t: Link(2, t.link, t.e, b"hard"), 0),
    ("link directory", lambda t: Link(2, t.e, ROOT_INO, b"hard"), E.EPERM),
    ("link onto existing", lambda t: Link(2, t.f, ROOT_INO, b"e"), E.EEXIST),
    ("link missing inode", lambda t: Link(2, 999, ROOT_INO, b"z"), E.ENOENT),
    ("link into a file", lambda t: Link(2, t.f, t.f, b"z"), E.ENOTDIR),
    ("link long name", lambda t: Link(2, t.f, ROOT_INO, LONG), E.ENAMETOOLONG),
    ("link name with slash", lambda t: Link(2, t.f, ROOT_INO, b"a/b"), E.EINVAL),
    # unlink
    ("unlink file", lambda t: Unlink(2, ROOT_INO, b"f"), 0),
    ("unlink symlink", lambda t: Unlink(2, ROOT_INO, b"l"), 0),
    ("unlink missing", lambda t: Unlink(2, ROOT_INO, b"nope"), E.ENOENT),
    ("unlink directory", lambda t: Unlink(2, ROOT_INO, b"e"), E.EISDIR),
    ("unlink in a file", lambda t: Unlink(2, t.f, b"x"), E.ENOTDIR),
    ("unlink long name", lambda t: Unlink(2, ROOT_INO, LONG), E.ENAMETOOLONG),
    # rmdir
    ("rmdir empty", lambda t: Rmdir(2, ROOT_INO, b"e"), 0),
    ("rmdir non-empty", lambda t: Rmdir(2, ROOT_INO, b"d"), E.ENOTEMPTY),
    ("rmdir file", lambda t: Rmdir(2, ROOT_INO, b"f"), E.ENOTDIR),
    ("rmdir missing", lambda t: Rmdir(2, ROOT_INO, b"nope"), E.ENOENT),
    ("rmdir dot", lambda t: Rmdir(2, ROOT_INO, b"."), E.EINVAL),
    ("rmdir in a file", lambda t: Rmdir(2, t.f, b"x"), E.ENOTDIR),
    # mkdir
    ("mkdir new", lambda t: Mkdir(2, ROOT_INO, b"new", 0o755, 0, 0), 0),
    ("mkdir over dir", lambda t: Mkdir(2, ROOT_INO, b"e", 0o755, 0, 0), E.EEXIST),
    ("mkdir over file", lambda t: Mkdir(2, ROOT_INO, b"f", 0o755, 0, 0), E.EEXIST),
    ("mkdir over symlink", lambda t: Mkdir(2, ROOT_INO, b"l", 0o755, 0, 0), E.EEXIST),
    ("mkdir in missing dir", lambda t: Mkdir(2, 999, b"new", 0o755, 0, 0), E.ENOENT),
    ("mkdir in a file", lambda t: Mkdir(2, t.f, b"new", 0o755, 0, 0), E.ENOTDIR),
    ("mkdir long name", lambda t: Mkdir(2, ROOT_INO, LONG, 0o755, 0, 0), E.ENAMETOOLONG),
    ("mkdir empty name", lambda t: Mkdir(2, ROOT_INO, b"", 0o755, 0, 0), E.EINVAL),
    # symlink
    ("symlink new", lambda t: Symlink(2, ROOT_INO, b"s", b"anything", 0, 0), 0),
    ("symlink over file", lambda t: Symlink(2, ROOT_INO, b"f", b"x", 0, 0), E.EEXIST),
    ("symlink empty target", lambda t: Symlink(2, ROOT_INO, b"s", b"", 0, 0), E.ENOENT),
    ("symlink empty target over file", lambda t: Symlink(2, ROOT_INO, b"f", b"", 0, 0), E.ENOENT),
    (
        "symlink long target",
        lambda t: Symlink(2, ROOT_INO, b"s", b"t" * 4096, 0, 0),
        E.ENAMETOOLONG,
    ),
    ("symlink in a file", lambda t: Symlink(2, t.f, b"s", b"x", 0, 0), E.ENOTDIR),
    # create / mknod
    ("create new", lambda t: Mknod(2, ROOT_INO, b"n", REG, 0, 0), 0),
    ("create existing", lambda t: Mknod(2, ROOT_INO, b"f", REG, 0, 0), E.EEXIST),
    ("create in missing dir", lambda t: Mknod(2, 999, b"n", REG, 0, 0), E.ENOENT),
    ("create in a file", lambda t: Mknod(2, t.f, b"n", REG, 0, 0), E.ENOTDIR),
    ("create long name", lambda t: Mknod(2, ROOT_INO, LONG, REG, 0, 0), E.ENAMETOOLONG),
    ("mknod fifo", lambda t: Mknod(2, ROOT_INO, b"p", stat.S_IFIFO | 0o644, 0, 0), 0),
    ("mknod socket", lambda t: Mknod(2, ROOT_INO, b"s", stat.S_IFSOCK | 0o644, 0, 0), 0),
    (
        "mknod char device",
        lambda t: Mknod(2, ROOT_INO, b"c", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0103),
        0,
    ),
    (
        "mknod block device",
        lambda t: Mknod(2, ROOT_INO, b"b", stat.S_IFBLK | 0o600, 0, 0, rdev=0x0801),
        0,
    ),
    (
        "mknod directory type",
        lambda t: Mknod(2, ROOT_INO, b"x", stat.S_IFDIR | 0o755, 0, 0),
        E.EINVAL,
    ),
    # truncate
    ("truncate file", lambda t: SetAttr(2, t.f, size=10), 0),
    ("truncate directory", lambda t: SetAttr(2, t.e, size=0), E.EISDIR),
    ("truncate symlink", lambda t: SetAttr(2, t.link, size=0), E.EINVAL),
    ("truncate missing", lambda t: SetAttr(2, 999, size=0), E.ENOENT),
    ("truncate too large", lambda t: SetAttr(2, t.f, size=2**63 - 1), E.EFBIG),
    # chmod / chown
    ("chmod file", lambda t: SetAttr(2, t.f, mode=0o4700), 0),
    ("chmod directory", lambda t: SetAttr(2, t.e, mode=0o1777), 0),
    ("chmod missing", lambda t: SetAttr(2, 999, mode=0o600), E.ENOENT),
    ("chown file", lambda t: SetAttr(2, t.f, uid=1000, gid=100), 0),
    ("chown missing", lambda t: SetAttr(2, 999, uid=1), E.ENOENT),
]


@pytest.mark.parametrize(("what", "make", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_errno(what: str, make: Callable[[Tree], MetaCommand], expected: int) -> None:
    tree = Tree()
    before = tree.d.ns.digest()
    got = tree.d.errno_of(make(tree))
    assert got == expected, (
        f"{what}: errno {E.errorcode.get(got, got)}, expected {E.errorcode.get(expected, expected)}"
    )
    if expected:
        # A refused call changes nothing but the applied index.
        after = tree.d.ns.digest()
        tree2 = Tree()
        tree2.d.index = tree.d.index
        tree2.d.ns._commit_applied_only(tree.d.index)
        assert after == tree2.d.ns.digest() != before


def test_chmod_keeps_the_file_type_and_chown_moves_ctime() -> None:
    tree = Tree()
    attr = tree.d.run(SetAttr(5, tree.e, mode=stat.S_IFREG | 0o700))
    assert attr is not None and stat.S_ISDIR(attr.mode) and stat.S_IMODE(attr.mode) == 0o700
    attr = tree.d.run(SetAttr(9, tree.f, uid=7))
    assert attr is not None and attr.uid == 7 and attr.ctime_ns == 9
