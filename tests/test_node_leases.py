"""The leader's lease service (`prismfs.node.leases`) on trio's mock clock:
grants with reads, recalls over the poll, a change waiting for each holder's
acknowledgement or its lease's end, the writer's continuation, a new
directory's first grant, exclusive keys for rename, and a new leader's blind
time."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from prismfs.errors import DelegationLost, NotLeader
from prismfs.meta.commands import (
    Attr,
    GetAttr,
    Lookup,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    ReadDir,
    Rename,
    SetAttr,
)
from prismfs.meta.leases import DRIFT, command_keys
from prismfs.node.consensus_messages import LeasePoll
from prismfs.node.leases import LeaseService
from prismfs.wire.codec import encode_message

S = 2.0
DIR = 0o040755
FILE = 0o100644


class FakeNamespace:
    def __init__(self) -> None:
        self.children: dict[tuple[int, bytes], int] = {}

    def _child(self, parent: int, name: bytes) -> int | None:
        return self.children.get((parent, name))


def attr(ino: int, mode: int = DIR) -> Attr:
    return Attr(ino, mode, 2, 0, 0, 0, 0, 0, 0)


def lookup(parent: int, name: bytes = b"x") -> bytes:
    return encode_message(Lookup(parent, name))


def ok(a: Attr | None = None) -> bytes:
    return encode_message(MetaOk(a))


NOT_FOUND = encode_message(MetaFailed("not_found", "no"))


def run(fn: Any) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def leader(ns: FakeNamespace | None = None) -> LeaseService:
    service = LeaseService(ns or FakeNamespace(), S)
    service.start(term=1)
    service.table.blind_until = 0.0  # (blindness has its own test)
    return service


def test_the_keys_of_each_change() -> None:
    assert command_keys(Mknod(0, 5, b"a", FILE, 0, 0)).all() == {5}
    keys = command_keys(Rename(0, 5, b"a", 6, b"b"))
    assert keys.exclusive == {5, 6} and keys.lookups == [(5, b"a"), (6, b"b")]
    assert command_keys(SetAttr(0, 9, mode=0o700)).all() == {9}


def test_reads_of_directories_come_with_a_lease_and_files_do_not() -> None:
    async def main() -> None:
        s = leader()
        assert s.grant(lookup(1), ok(attr(2, FILE)), "m") is not None
        assert s.grant(lookup(1), NOT_FOUND, "m") is not None  # "no such name" too
        assert s.grant(encode_message(GetAttr(2)), ok(attr(2, FILE)), "m") is None
        assert s.grant(encode_message(GetAttr(3)), ok(attr(3)), "m") is not None
        assert s.grant(encode_message(ReadDir(3)), encode_message(MetaFailed("x", "")), "m") is None
        assert s.grant(lookup(1), ok(attr(2)), "") is None  # nobody to hold it
        s.stop()
        assert s.grant(lookup(1), ok(attr(2)), "m") is None  # not the leader

    run(main)


def test_a_change_recalls_the_other_holders_and_waits_for_their_acknowledgement() -> None:
    async def main() -> None:
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "reader")
        assert g is not None
        op = encode_message(Mknod(0, 7, b"x", FILE, 0, 0))
        done: list[float] = []

        async def writer() -> None:
            change = await s.begin("writer", op)
            assert change is not None
            done.append(trio.current_time())
            change.finish(ok(attr(8, FILE)))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            recalls = await s._on_poll(LeasePoll("reader", (), 5.0), None)  # type: ignore[arg-type]
            assert recalls.recalls == ((7, g.term, g.seq),)
            await trio.sleep(0.3)
            assert not done  # not before the acknowledgement
            assert s.grant(lookup(7), NOT_FOUND, "other") is None  # none while pending
            with trio.move_on_after(1):  # the next poll carries the ack, then waits
                await s._on_poll(LeasePoll("reader", recalls.recalls, 5.0), None)  # type: ignore[arg-type]
        assert done and done[0] - start == pytest.approx(0.3, abs=0.01)
        assert s.grant(lookup(7), ok(attr(8, FILE)), "other") is not None

    run(main)


def test_a_holder_that_never_answers_holds_a_change_back_until_its_lease_ended() -> None:
    async def main() -> None:
        s = leader()
        assert s.grant(lookup(7), NOT_FOUND, "gone") is not None
        start = trio.current_time()
        change = await s.begin("writer", encode_message(Mknod(0, 7, b"x", FILE, 0, 0)))
        assert change is not None
        assert trio.current_time() - start == pytest.approx(S * (1 + DRIFT), abs=0.01)
        change.finish(ok(attr(8, FILE)))

    run(main)


def test_the_writer_keeps_its_lease_and_a_new_directory_comes_with_one() -> None:
    async def main() -> None:
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "w")
        assert g is not None
        change = await s.begin("w", encode_message(Mkdir(0, 7, b"sub", DIR, 0, 0)))
        assert change is not None
        grants = {x.key: x for x in change.finish(ok(attr(9)))}
        assert grants[7].continues == (g.term, g.seq) and grants[7].seq > g.seq
        assert grants[9].continues == (0, 0)
        assert s.table.holders(9) == {"w"}

    run(main)


def test_a_rename_locks_its_directories_and_the_one_it_moves_exclusively() -> None:
    async def main() -> None:
        ns = FakeNamespace()
        ns.children[(5, b"dir")] = 11
        s = leader(ns)
        assert s.grant(encode_message(GetAttr(11)), ok(attr(11)), "h") is not None
        rename = encode_message(Rename(0, 5, b"dir", 6, b"moved"))
        change = await s.begin("w", rename)
        assert change is not None and change.keys == {5, 6, 11}
        assert set(s._recalls["h"]) == {11}  # the moved directory's holder is recalled
        order: list[str] = []

        async def create() -> None:
            c = await s.begin("w2", encode_message(Mknod(0, 5, b"f", FILE, 0, 0)))
            assert c is not None
            order.append("create")
            c.finish(ok(attr(12, FILE)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            await trio.sleep(0.5)
            order.append("rename")
            change.finish(ok())
        assert order == ["rename", "create"]

    run(main)


def test_a_new_leader_applies_no_directory_change_for_a_lease() -> None:
    async def main() -> None:
        s = LeaseService(FakeNamespace(), S)
        s.start(term=2)
        start = trio.current_time()
        change = await s.begin("w", encode_message(Mknod(0, 7, b"x", FILE, 0, 0)))
        assert change is not None
        assert trio.current_time() - start == pytest.approx(S * (1 + DRIFT), abs=0.01)
        # commands that change no directory pass at once
        assert await s.begin("w", encode_message(Lookup(1, b"x"))) is None

    run(main)


def test_a_change_waiting_for_recalls_fails_when_leadership_moves_on() -> None:
    async def main() -> None:
        s = leader()
        s.grant(lookup(7), NOT_FOUND, "silent")
        failed: list[BaseException] = []

        async def writer() -> None:
            try:
                await s.begin("w", encode_message(Mknod(0, 7, b"x", FILE, 0, 0)))
            except NotLeader as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(0.5)
            s.stop()
        assert failed
        with pytest.raises(NotLeader):
            await s._on_poll(LeasePoll("silent", (), 1.0), None)  # type: ignore[arg-type]

    run(main)


def test_recalls_are_not_kept_for_a_mount_that_stopped_polling() -> None:
    async def main() -> None:
        s = leader()
        await s._on_poll(LeasePoll("gone", (), 0.0), None)  # type: ignore[arg-type]
        await trio.sleep(100)  # no poll since
        assert s.grant(lookup(7), NOT_FOUND, "gone") is not None
        start = trio.current_time()
        change = await s.begin("w", encode_message(Mknod(0, 7, b"x", FILE, 0, 0)))
        assert change is not None
        assert "gone" not in s._recalls  # nothing queued that nobody fetches
        assert trio.current_time() - start == pytest.approx(S * (1 + DRIFT), abs=0.01)

    run(main)


# --- delegations ---------------------------------------------------------------------------


def test_a_read_of_a_delegated_directory_waits_for_the_delegate_to_flush() -> None:
    async def main() -> None:
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g is not None and g.exclusive
        # a second holder's grant is never exclusive while the first one counts
        assert s.grant(encode_message(GetAttr(7)), ok(attr(7)), "owner", True).exclusive  # type: ignore[union-attr]
        op = lookup(7)
        assert not s.read_blocked(op, "owner") and s.read_blocked(op, "reader")
        assert s.read_blocked(encode_message(ReadDir(7)), "")  # the CLI too
        flushed: list[float] = []
        read: list[float] = []

        async def reader() -> None:
            await s.before_read(op, "reader")
            read.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            recalls = await s._on_poll(LeasePoll("owner", (), 5.0), None)  # type: ignore[arg-type]
            assert recalls.recalls == ((7, g.term, g.seq),)
            # Recalled, the owner flushes: its delegation still counts for that.
            delegated = ((7, g.term, g.seq),)
            flush = encode_message(Mknod(0, 7, b"new", FILE, 0, 0))
            assert await s.begin("owner", flush, delegated) is None  # passes at once
            flushed.append(trio.current_time())
            await trio.sleep(0.2)
            assert not read
            with trio.move_on_after(1):
                await s._on_poll(LeasePoll("owner", recalls.recalls, 5.0), None)  # type: ignore[arg-type]
        assert read and read[0] >= flushed[0] + 0.2
        # the conflict made the directory shared for a while: no ping-pong
        again = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert again is not None and not again.exclusive

    run(main)


def test_a_flush_under_a_delegation_that_ended_is_refused() -> None:
    async def main() -> None:
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g is not None and g.exclusive
        flush = encode_message(Mknod(0, 7, b"new", FILE, 0, 0))
        await trio.sleep(S * (1 + DRIFT) + 0.1)  # its lease surely ended
        s.read_blocked(lookup(7), "")  # then anyone read the directory
        with pytest.raises(DelegationLost):
            await s.begin("owner", flush, ((7, g.term, g.seq),))
        # a new delegation to the same mount does not take the old one's flush
        g2 = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g2 is not None and g2.exclusive and (g2.term, g2.seq) != (g.term, g.seq)
        with pytest.raises(DelegationLost):
            await s.begin("owner", flush, ((7, g.term, g.seq),))
        assert await s.begin("owner", flush, ((7, g2.term, g2.seq),)) is None
        # nor does another mount's
        with pytest.raises(DelegationLost):
            await s.begin("other", flush, ((7, g2.term, g2.seq),))
        # a new leader knows no delegation, and says so (the mount replays)
        s.start(term=2)
        with pytest.raises(DelegationLost) as lost:
            await s.begin("owner", flush, ((7, g2.term, g2.seq),))
        assert lost.value.details.get("new_leader") is True

    run(main)


def test_a_late_flush_of_a_delegation_nobody_touched_since_it_ran_out_applies() -> None:
    """A mount too slow to renew or flush in time (a loaded machine) loses
    nothing if nobody else read or changed the directory since: the flush
    is as if on time. Its own renewal in between (a new grant) changes
    nothing; any read, grant or change by anyone else, or a recall, does."""

    async def main() -> None:
        flush = encode_message(Mknod(0, 7, b"new", FILE, 0, 0))
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g is not None
        await trio.sleep(S * (1 + DRIFT) + 0.1)
        g2 = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)  # renewed late: a new grant
        assert g2 is not None and (g2.term, g2.seq) != (g.term, g.seq)
        assert await s.begin("owner", flush, ((7, g.term, g.seq), (7, g2.term, g2.seq))) is None
        assert s.stats.counts["leases.flushed_after_lapse"] == 1
        # another mount's read in between
        g = s.grant(lookup(8), NOT_FOUND, "owner", exclusive=True)
        assert g is not None
        await trio.sleep(S * (1 + DRIFT) + 0.1)
        assert s.grant(lookup(8), NOT_FOUND, "other") is not None
        with pytest.raises(DelegationLost):
            await s.begin("owner", flush, ((8, g.term, g.seq),))
        # a recall that was never answered (the mount was frozen, say)
        g = s.grant(lookup(9), NOT_FOUND, "owner", exclusive=True)
        assert g is not None
        assert s.read_blocked(lookup(9), "other")  # a read by another mount recalls it,
        await s.before_read(lookup(9), "other")  # which waits until its lease ran out
        with pytest.raises(DelegationLost):
            await s.begin("owner", flush, ((9, g.term, g.seq),))

    run(main)


def test_a_flush_at_a_node_that_stopped_leading_goes_to_the_leader() -> None:
    """A leadership transfer (a drain): the flush is not refused as lost by
    the node that led, it is told to go to the leader (which replays it)."""

    async def main() -> None:
        s = leader()
        g = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g is not None and g.exclusive
        flush = encode_message(Mknod(0, 7, b"new", FILE, 0, 0))
        s.stop()
        with pytest.raises(NotLeader):
            await s.begin("owner", flush, ((7, g.term, g.seq),))
        with pytest.raises(NotLeader):
            s.check_delegated("owner", ((7, g.term, g.seq),))

    run(main)


def test_a_delegates_flush_passes_a_rename_that_locked_its_directory_and_waits_for_it() -> None:
    async def main() -> None:
        ns = FakeNamespace()
        s = leader(ns)
        g = s.grant(lookup(7), NOT_FOUND, "owner", exclusive=True)
        assert g is not None and g.exclusive
        renamed: list[float] = []

        async def rename() -> None:
            change = await s.begin("other", encode_message(Rename(0, 7, b"a", 8, b"b")))
            assert change is not None
            renamed.append(trio.current_time())
            change.finish(ok())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rename)
            recalls = await s._on_poll(LeasePoll("owner", (), 5.0), None)  # type: ignore[arg-type]
            # directory 7 is locked exclusively by the waiting rename; the
            # owner's flush must not wait behind it (it would wait for itself)
            flush = encode_message(Mknod(0, 7, b"a", FILE, 0, 0))
            with trio.fail_after(0.1):
                assert await s.begin("owner", flush, ((7, g.term, g.seq),)) is None
            assert not renamed
            with trio.move_on_after(1):
                await s._on_poll(LeasePoll("owner", recalls.recalls, 5.0), None)  # type: ignore[arg-type]
        assert renamed

    run(main)
