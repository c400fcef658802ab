"""Files a mount made under a delegation it still holds (`prismfs.fuse.owned`),
without a kernel or a cluster: which of its own changes keep their
attributes known here, and what ends that (a link, rename or unlink, two
changes at once, an answer not understood, the delegation ending)."""

from __future__ import annotations

from collections.abc import Sequence

from prismfs.fuse.leased import DirCopy, DirLeases
from prismfs.fuse.owned import OwnedFiles
from prismfs.meta.commands import (
    Attr,
    CommitChunks,
    Link,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mknod,
    Release,
    Rename,
    SetAttr,
    SetXattr,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.leases import GrantId
from prismfs.node.consensus_messages import LeaseGrant
from prismfs.stats import Stats
from prismfs.wire.codec import decode_message, encode_message

DIR, FILE = 0o040755, 0o100644
D, G1, G2 = 7, (1, 5), (1, 6)


def attr(ino: int, size: int = 0, nlink: int = 1, atime: int = 0, mode: int = FILE) -> Attr:
    return Attr(ino, mode, nlink, 0, 0, size, atime, 0, 0)


def raw(*results: object) -> list[bytes]:
    return [encode_message(r) for r in results]  # type: ignore[arg-type]


def no_names(parent: int, name: bytes) -> int | None:
    return None


class Owner:
    """`OwnedFiles` driven as `DirLeases` drives it, the directory held
    delegated under ``grant`` (None: not held)."""

    def __init__(self) -> None:
        self.files = OwnedFiles()
        self.grant: GrantId | None = G1
        self.names: dict[tuple[int, bytes], int] = {}  # (0: known to be free)

    def resolve(self, parent: int, name: bytes) -> int | None:
        return self.names.get((parent, name))

    def send(self, ops: Sequence[MetaCommand]) -> None:
        self.files.changing(ops, self.resolve)

    def answer(self, ops: Sequence[MetaCommand], results: list[bytes] | None) -> None:
        grant = self.grant
        answer = None if results is None else (lambda n: decode_message(results[n]))
        self.files.changed(ops, answer, self.resolve, lambda p: grant if p == D else None)

    def apply(self, ops: Sequence[MetaCommand], *results: object) -> None:
        self.send(ops)
        self.answer(ops, raw(*results))

    def get(self, ino: int) -> Attr | None:
        got = self.files.get(ino, lambda p: self.grant if p == D else None)
        return None if got is None else got[1]


def test_a_file_made_under_the_delegation_keeps_what_its_own_changes_answered() -> None:
    o = Owner()
    o.apply([Mknod(0, D, b"f", FILE, 0, 0, ino=100)], MetaOk(attr(100)))
    o.names[(D, b"f")] = 100
    assert o.get(100) == attr(100)
    o.apply([CommitChunks(0, 100, (), 4096)], MetaOk(attr(100, size=4096)))
    o.apply([UpdateAtime(0, 100, 55)], MetaOk())  # (answered without attributes)
    assert o.get(100) == attr(100, size=4096, atime=55)
    o.apply([SetAttr(0, 100, size=1)], MetaFailed("permission_denied", "x"))  # changed nothing
    o.apply([Release(0, "s", 100)], MetaOk())
    assert o.get(100) == attr(100, size=4096, atime=55)
    # A file made where this mount holds no delegation is not owned.
    o.apply([Mknod(0, 8, b"g", FILE, 0, 0, ino=101)], MetaOk(attr(101)))
    assert o.get(101) is None


def test_a_change_on_its_way_is_waited_for_and_two_at_once_end_ownership() -> None:
    o = Owner()
    o.apply([Mknod(0, D, b"f", FILE, 0, 0, ino=100)], MetaOk(attr(100)))
    o.apply([Mknod(0, D, b"g", FILE, 0, 0, ino=101)], MetaOk(attr(101)))
    grow = [SetAttr(0, 100, size=9)]
    o.send(grow)
    assert o.get(100) is None  # not known until it is answered
    o.answer(grow, raw(MetaOk(attr(100, size=9))))
    assert o.get(100) == attr(100, size=9)
    # Two changes of 101 at once: their answers could come in either order.
    first, second = [SetAttr(0, 101, size=1)], [SetAttr(0, 101, size=2)]
    o.send(first)
    o.send(second)
    o.answer(second, raw(MetaOk(attr(101, size=2))))
    o.answer(first, raw(MetaOk(attr(101, size=1))))
    assert o.get(101) is None
    # A change whose fate is unknown, and one answered without attributes.
    o.apply([Mknod(0, D, b"h", FILE, 0, 0, ino=102)], MetaOk(attr(102)))
    lost = [SetAttr(0, 102, size=3)]
    o.send(lost)
    o.answer(lost, None)
    assert o.get(102) is None
    o.apply([SetXattr(0, 100, b"user.a", b"1")], MetaOk())  # its ctime moved, by how much?
    assert o.get(100) is None


def test_a_link_a_rename_or_an_unlink_ends_it_and_a_name_not_known_ends_the_directory() -> None:
    o = Owner()
    for n, name in enumerate((b"a", b"b", b"c", b"d")):
        o.apply([Mknod(0, D, name, FILE, 0, 0, ino=100 + n)], MetaOk(attr(100 + n)))
        o.names[(D, name)] = 100 + n
    o.apply([Link(0, 100, 9, b"elsewhere")], MetaOk(attr(100, nlink=2)))
    o.names[(9, b"moved")] = 0
    o.apply([Rename(0, D, b"b", 9, b"moved")], MetaOk())
    o.apply([Unlink(0, D, b"c", ino=102)], MetaOk())
    assert [o.get(i) for i in (100, 101, 102)] == [None, None, None]
    assert o.get(103) == attr(103)  # (a name known to be free is no file of it)
    # An unlink of a name whose inode this mount does not know: any of them.
    o.apply([Unlink(0, D, b"unknown")], MetaOk())
    assert o.get(103) is None


def test_the_delegation_ending_ends_it_for_good_and_a_continuation_carries_it() -> None:
    o = Owner()
    o.apply([Mknod(0, D, b"f", FILE, 0, 0, ino=100)], MetaOk(attr(100)))
    o.files.continued(D, G1, G2, exclusive=True)  # a change of this mount, nothing between
    o.grant = G2
    assert o.get(100) == attr(100)
    o.grant = None  # recalled: another mount may reach the file now
    assert o.get(100) is None
    o.grant = G2  # (even if the same grant came back, which the leader never does)
    assert o.get(100) is None
    o.apply([Mknod(0, D, b"g", FILE, 0, 0, ino=101)], MetaOk(attr(101)))
    o.files.continued(D, G2, (1, 7), exclusive=False)  # continued shared: others hold it too
    assert o.get(101) is None
    assert len(o.files) == 0


def test_a_mount_answers_for_a_file_it_flushed_until_its_delegation_is_recalled() -> None:
    """Through `DirLeases`, as `MetaClient` tells it of a flush made under
    the delegation."""

    class Meta:
        session = "s1"

    leases = DirLeases(Meta(), Stats(), writeback=True)  # type: ignore[arg-type]
    copy = DirCopy(complete=True, attr=attr(D, mode=DIR))
    assert leases.held.granted(D, copy, G1, 5.0, 0.0, leases.held.mark(D), exclusive=True)
    ops = [Mknod(0, D, b"f", FILE, 0, 0, ino=100), CommitChunks(0, 100, (), 10)]
    delegated = ((D, *G1),)
    leases.changing(ops, delegated)
    results = raw(MetaOk(attr(100)), MetaOk(attr(100, size=10)))
    grants: tuple[LeaseGrant, ...] = ()
    leases.changed(ops, results, grants, 0.0, delegated)
    got = leases.owned_attr(100, 1.0)
    assert got is not None and got[0] == attr(100, size=10) and 3.0 < got[1] <= 5.0
    assert leases.owned_attr(100, 10.0) is None  # the delegation ran out here
    leases.held.recall(D, G1)
    assert leases.owned_attr(100, 1.0) is None


def test_a_file_made_and_renamed_in_one_change_is_not_kept_with_its_old_ctime() -> None:
    """rsync's order, held back and sent as one batch: create a temporary
    name, set its times, rename it. The copy does not know the temporary
    name yet; the rename (answered without attributes) still ends it."""
    o = Owner()
    o.names[(D, b".f.tmp")] = 0
    o.names[(D, b"f")] = 0
    ops: list[MetaCommand] = [
        Mknod(0, D, b".f.tmp", FILE, 0, 0, ino=100),
        SetAttr(0, 100, mtime_ns=5),
        Rename(0, D, b".f.tmp", D, b"f"),
    ]
    o.apply(ops, MetaOk(attr(100)), MetaOk(attr(100)), MetaOk())
    assert o.get(100) is None
