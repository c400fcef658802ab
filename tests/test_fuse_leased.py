"""A mount's leased directory copies (`prismfs.fuse.leased`), without a
kernel or a cluster: what the copy answers, how this mount's own changes
are applied to it under the leader's continuation, and when it is dropped."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from prismfs.fuse.leased import STALE, DirCopy, DirLeases, _apply
from prismfs.meta.commands import (
    RENAME_EXCHANGE,
    Attr,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    Rename,
    Rmdir,
    Unlink,
    UpdateAtime,
)
from prismfs.meta.leases import CannotApply
from prismfs.node.consensus_messages import LeaseGrant
from prismfs.stats import Stats
from prismfs.wire.codec import encode_message

DIR, FILE = 0o040755, 0o100644


def attr(ino: int, mode: int = FILE, atime: int = 0) -> Attr:
    return Attr(ino, mode, 1, 0, 0, 0, atime, 0, 0)


class FakeMeta:
    session = "s1"
    attempt_timeout = 10.0


def test_own_creates_removes_and_renames_are_applied_to_the_copy() -> None:
    copy = DirCopy(names={b"old": (attr(5), 1.0)}, complete=True, attr=attr(7, DIR))
    ops = [
        Mknod(0, 7, b"new", FILE, 0, 0),
        Mkdir(0, 7, b"sub", DIR, 0, 0),
        Unlink(0, 7, b"old"),
        Rename(0, 7, b"new", 7, b"moved"),
    ]
    parent_after = attr(7, DIR, atime=99)
    results = [
        MetaOk(attr(8), parents=(parent_after,)),
        MetaOk(attr(9, DIR)),
        MetaOk(),
        MetaOk(),
    ]
    out = _apply(copy, 7, ops, results, at=5.0)
    assert isinstance(out, DirCopy) and out.complete
    assert out.names[b"old"] is None and out.names[b"new"] is None
    moved = out.names[b"moved"]
    assert moved is not None and moved[0].ino == 8
    assert moved[1] == STALE  # its attributes may have changed again in the same batch
    assert out.names[b"sub"] is not None and out.attr == parent_after


def test_a_failed_op_changes_nothing_and_what_cannot_be_worked_out_drops_the_copy() -> None:
    copy = DirCopy(names={b"a": None}, complete=True)
    failed = [MetaFailed("not_found", "x")]
    assert _apply(copy, 7, [Unlink(0, 7, b"a")], failed, at=1.0) is copy
    assert copy.names[b"a"] is None
    # A create the copy allowed that found the name taken: the copy is not current.
    with pytest.raises(CannotApply):
        _apply(copy, 7, [Mknod(0, 7, b"a", FILE, 0, 0)], [MetaFailed("already_exists", "x")], 1.0)
    for op in (
        Rename(0, 7, b"unknown", 7, b"b"),  # the moved name's inode is not known here
        Rename(0, 7, b"a", 7, b"b", RENAME_EXCHANGE),
        Rmdir(0, 3, b"this-directory"),  # key 7 is the directory removed
    ):
        with pytest.raises(CannotApply):
            _apply(DirCopy(complete=True), 7, [op], [MetaOk()], at=1.0)


def test_a_continuation_keeps_the_copy_and_anything_else_drops_it() -> None:
    async def main() -> None:
        leases = DirLeases(FakeMeta(), Stats())  # type: ignore[arg-type]
        held = leases.held
        assert held.granted(7, DirCopy(complete=True), (1, 1), 2.0, 0.0, held.mark(7))
        now = trio.current_time()
        assert leases.name(7, b"x", now, 1.0)[:2] == (True, None)  # no such name
        op = Mknod(0, 7, b"x", FILE, 0, 0)
        leases.changing([op])
        assert leases.name(7, b"x", now, 1.0)[0] is False  # hidden while on its way
        result = encode_message(MetaOk(attr(8)))
        leases.changed([op], [result], (LeaseGrant(7, 1, 2, 2.0, (1, 1)),), now)
        assert leases.ino_of(7, b"x", now) == 8
        assert leases.name(7, b"y", now, 1.0)[:2] == (True, None)  # still complete
        # an answer without the continuation (a retry, a new leader): dropped
        leases.changing([Unlink(0, 7, b"x")])
        leases.changed([Unlink(0, 7, b"x")], [encode_message(MetaOk())], (), now)
        assert leases.left(7, now) == 0.0

    trio.run(main, clock=trio.testing.MockClock())


def test_an_atime_update_here_moves_the_copys_atime_without_a_lease_change() -> None:
    async def main() -> None:
        leases = DirLeases(FakeMeta(), Stats())  # type: ignore[arg-type]
        held = leases.held
        held.granted(7, DirCopy(attr=attr(7, DIR, atime=10)), (1, 1), 2.0, 0.0, held.mark(7))
        op = UpdateAtime(0, 7, 50)
        leases.changing([op])
        leases.changed([op], [encode_message(MetaOk())], (), 0.0)
        got = leases.dir_attr(7, trio.current_time())
        assert got is not None and got[0].atime_ns == 50 and not math.isclose(got[1], 0)

    trio.run(main, clock=trio.testing.MockClock())


def test_a_name_the_copy_has_that_the_cluster_did_not_find_drops_the_copy() -> None:
    """A held-back rename or unlink sent again after a first attempt of
    unknown fate that did apply: the copy does not have that change."""
    for op in (Rename(0, 7, b"a", 7, b"b"), Unlink(0, 7, b"a")):
        copy = DirCopy(names={b"a": (attr(5), 1.0)}, complete=True)
        with pytest.raises(CannotApply):
            _apply(copy, 7, [op], [MetaFailed("not_found", "x")], at=1.0)
