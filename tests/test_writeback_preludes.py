"""`prismfs.client.files.send_preludes`, the write-back flush of held-back
creates, against a fake metadata client: order, batch limits, and an
attribute change that joins a prelude while its batch is on the way (the
race `rsync -a` hit: the change was dropped and the results misaligned)."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel
import trio.testing

from prismfs.client.files import BATCH_BYTES, Lead, OpenFile, Uploads, send_preludes
from prismfs.data.layout import Layout
from prismfs.data.placement import NotEnoughNodes
from prismfs.errors import AlreadyExists, DelegationLost
from prismfs.meta.commands import MAX_BATCH, Attr, ChunkRecord, MetaCommand, Mknod, SetAttr
from prismfs.wire.codec import encode_message

FILE = 0o100644


class FakeMeta:
    session = "s"

    def __init__(self) -> None:
        self.batches: list[list[MetaCommand]] = []
        self.during: Any = None  # called while a batch is "on the way"
        self.fail: Exception | None = None
        self.taken: set[bytes] = set()

    async def batch(self, ops: list[MetaCommand], **kw: Any) -> list[Any]:
        self.batches.append(list(ops))
        if self.during is not None:
            self.during()
            self.during = None
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        out: list[Any] = []
        for op in ops:
            if isinstance(op, Mknod) and op.name in self.taken:
                out.append(AlreadyExists("taken"))
            else:
                out.append(Attr(getattr(op, "ino", 0), FILE, 1, 0, 0, 0, 0, 0, 0))
        return out

    async def propose(self, op: MetaCommand) -> Any:
        return (await self.batch([op]))[0]


def new_file(meta: FakeMeta, ino: int, name: bytes, data: int = 0) -> OpenFile:
    f = OpenFile(meta, None, ino, Layout())  # type: ignore[arg-type]
    f.prelude.append(Mknod(0, 1, name, FILE, 0, 0, ino=ino))
    if data:
        f.prelude.append(SetAttr(0, ino, mtime_ns=data))
    f.delegated = ((1, 1, 1),)
    return f


def test_preludes_go_in_order_and_a_change_made_meanwhile_stays_for_the_next_batch() -> None:
    async def main() -> None:
        meta = FakeMeta()
        files = [new_file(meta, 10 + n, f"f{n}".encode()) for n in range(5)]
        late = SetAttr(0, 12, mode=0o600)
        meta.during = lambda: files[2].prelude.append(late)
        errors = await send_preludes(meta, files)  # type: ignore[arg-type]
        assert errors == [None] * 5
        assert [op.name for op in meta.batches[0]] == [f"f{n}".encode() for n in range(5)]  # type: ignore[attr-defined]
        assert files[2].prelude == [late] and files[2].delegated == ((1, 1, 1),)
        assert all(not f.prelude and not f.delegated for f in files if f is not files[2])
        await send_preludes(meta, files)  # type: ignore[arg-type]
        assert meta.batches[1] == [late]

    trio.run(main)


def test_a_refused_create_loses_its_file_only_and_a_lost_delegation_loses_them_all() -> None:
    async def main() -> None:
        meta = FakeMeta()
        meta.taken = {b"f1"}
        files = [new_file(meta, 10 + n, f"f{n}".encode()) for n in range(3)]
        errors = await send_preludes(meta, files)  # type: ignore[arg-type]
        assert [e is None for e in errors] == [True, False, True]
        assert isinstance(files[1].lost, AlreadyExists)
        more = [new_file(meta, 20 + n, f"g{n}".encode()) for n in range(2)]
        meta.fail = DelegationLost("gone")
        errors = await send_preludes(meta, more)  # type: ignore[arg-type]
        assert all(isinstance(e, DelegationLost) for e in errors)
        assert all(not f.prelude for f in more)

    trio.run(main)


def test_batches_stay_under_the_byte_limit_and_never_split_a_file() -> None:
    async def main() -> None:
        meta = FakeMeta()
        big = b"x" * 200
        files = [new_file(meta, 100 + n, big + str(n).encode(), data=n + 1) for n in range(2000)]
        await send_preludes(meta, files)  # type: ignore[arg-type]
        assert len(meta.batches) > 1
        sent = [op for b in meta.batches for op in b]
        assert len(sent) == 4000
        for b in meta.batches:
            assert sum(len(encode_message(op)) for op in b) <= BATCH_BYTES
            assert isinstance(b[0], Mknod) and isinstance(b[-1], SetAttr)  # whole files

    trio.run(main)


# --- uploads in the background (a staged close returns before its shards are stored) ---


class FakeData:
    """Chunk uploads that wait for ``go`` (or fail with ``fail``)."""

    inline_max = 8192

    def __init__(self) -> None:
        self.go = trio.Event()
        self.fail: Exception | None = None
        self.stored = 0

    async def write_chunk(self, data: bytes, layout: Layout) -> ChunkRecord:
        if len(data) <= self.inline_max:  # (kept in the record, as `DataClient` does)
            return ChunkRecord(bytes(16), len(data), 0, 0, 0, (), inline=bytes(data))
        await self.go.wait()
        if self.fail is not None:
            raise self.fail
        self.stored += 1
        return ChunkRecord(bytes(16), len(data), len(data), 1, 1, ("n1",), (b"c",))


def new_written(meta: FakeMeta, data: FakeData, ino: int, size: int) -> OpenFile:
    f = OpenFile(meta, data, ino, Layout())  # type: ignore[arg-type]
    f.prelude.append(Mknod(0, 1, f"f{ino}".encode(), FILE, 0, 0, ino=ino))
    f.delegated = ((1, 1, 1),)
    return f


async def staged(
    meta: FakeMeta, data: FakeData, uploads: Uploads, ino: int, content: bytes
) -> OpenFile:
    """A new file written and closed (staged): back before its upload ends."""
    f = new_written(meta, data, ino, 0)
    await f.write(0, content)
    with trio.fail_after(5):
        await f.stage(uploads)
    return f


def kinds(ops: list[MetaCommand]) -> list[str]:
    return [type(op).__name__ for op in ops]


def test_a_staged_close_returns_while_its_data_uploads_and_its_times_follow_the_commit() -> None:
    async def main() -> None:
        meta, data = FakeMeta(), FakeData()
        async with trio.open_nursery() as nursery:
            uploads = Uploads(nursery)
            f = await staged(meta, data, uploads, 10, b"a" * 100_000)  # the upload waits for `go`
            assert f.uploading and kinds(f.prelude) == ["Mknod"]
            assert await f.read(0, 3) == b"aaa"  # read from what is uploading
            assert f.may_join(times=True)
            f.join_prelude(SetAttr(0, 10, mtime_ns=5))  # tar's futimens: behind the commit
            sending = trio.Event()

            async def send() -> None:
                sending.set()
                await send_preludes(meta, [f])  # type: ignore[arg-type]

            nursery.start_soon(send)
            await sending.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not meta.batches, "the flush waits for the upload"
            data.go.set()
        assert kinds(meta.batches[0]) == ["Mknod", "CommitChunks", "SetAttr"]
        assert not f.uploading and uploads.files == 0 and uploads.bytes == 0

    trio.run(main)


def test_a_failed_background_upload_keeps_the_data_and_the_times_for_the_next_stage() -> None:
    async def main() -> None:
        meta, data = FakeMeta(), FakeData()
        async with trio.open_nursery() as nursery:
            uploads = Uploads(nursery)
            f = await staged(meta, data, uploads, 11, b"b" * 50_000)
            f.join_prelude(SetAttr(0, 11, mtime_ns=5))
            data.fail = NotEnoughNodes("no nodes")
            data.go.set()
        assert kinds(f.prelude) == ["Mknod"] and f._dirty, "the data stays to be sent"
        data.fail = None
        await f.stage()  # (what the mount's flush does for a closed file)
        assert kinds(f.prelude) == ["Mknod", "CommitChunks", "SetAttr"]

    trio.run(main)


def test_the_window_holds_back_a_close_until_there_is_room_and_small_files_stay_inline() -> None:
    async def main() -> None:
        meta, data = FakeMeta(), FakeData()
        async with trio.open_nursery() as nursery:
            uploads = Uploads(nursery, max_bytes=400_000, max_files=2)
            files = [new_written(meta, data, 20 + n, 0) for n in range(3)]
            for f in files:
                await f.write(0, b"c" * 90_000)
            with trio.fail_after(5):
                await files[0].stage(uploads)
                await files[1].stage(uploads)
            third = trio.Event()

            async def stage_third() -> None:
                await files[2].stage(uploads)
                third.set()

            nursery.start_soon(stage_third)
            await trio.testing.wait_all_tasks_blocked()
            assert not third.is_set() and uploads.files == 2, "two files at once at most"
            data.go.set()
            await third.wait()
            small = new_written(meta, data, 30, 0)
            await small.write(0, b"d" * 100)
            await small.stage(uploads)  # inline: nothing to upload, staged at once
            assert not small.uploading and kinds(small.prelude) == ["Mknod", "CommitChunks"]
            big = new_written(meta, data, 31, 0)
            await big.write(0, b"e" * 150_000)  # over a quarter of the window: by its close
            await big.stage(uploads)
            assert not big.uploading and kinds(big.prelude) == ["Mknod", "CommitChunks"]
        assert data.stored == 4

    trio.run(main)


def test_a_close_whose_create_was_sent_while_it_waited_commits_its_data_itself() -> None:
    """The mount's flush took the file's lock and sent its create while the
    close waited to stage its data: nothing would carry a staged commit any
    more, so the close commits the data itself before it returns (a change
    of the file that follows must find the data there, or a time set would
    be overwritten by a later commit)."""

    async def main() -> None:
        meta, data = FakeMeta(), FakeData()
        data.go.set()
        async with trio.open_nursery() as nursery:
            uploads = Uploads(nursery)
            for background in (True, False):
                f = new_written(meta, data, 40 + background, 0)
                await f.write(0, b"f" * 100_000)
                closed = trio.Event()

                async def close(
                    f: OpenFile = f, background: bool = background, closed: trio.Event = closed
                ) -> None:
                    await f.stage(uploads if background else None)
                    closed.set()

                async with f._lock:  # (the flush of the mount, sending its create)
                    nursery.start_soon(close)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not closed.is_set()
                    await send_preludes_locked(meta, f)
                await closed.wait()
                assert not f.prelude and not f.uploading
                assert kinds(meta.batches[-1]) == ["CommitChunks"], meta.batches

    trio.run(main)


async def send_preludes_locked(meta: FakeMeta, f: OpenFile) -> None:
    """What `send_preludes` does to a file whose lock it holds."""
    await meta.batch(list(f.prelude))
    f.prelude, f.delegated = [], ()


def test_a_tail_rides_in_the_last_batch_or_alone_when_it_does_not_fit() -> None:
    """A change that must follow everything held back (a mkdir) goes behind
    the preludes in their last batch, with its own results; one that would
    overflow that batch goes in a batch of its own after it; a lost
    delegation is every tail op's result too."""

    async def main() -> None:
        meta = FakeMeta()
        files = [new_file(meta, 10 + n, f"f{n}".encode()) for n in range(3)]
        mkdir = SetAttr(0, 99, mode=0o700)  # (stands for any op: results by position)
        tail = Lead([mkdir], ((2, 1, 1),))
        await send_preludes(meta, files, None, tail)  # type: ignore[arg-type]
        assert len(meta.batches) == 1 and meta.batches[0][-1] is mkdir
        assert tail.results is not None and len(tail.results) == 1
        assert isinstance(tail.results[0], Attr) and tail.results[0].ino == 99

        meta = FakeMeta()
        files = [new_file(meta, 10 + n, f"f{n}".encode()) for n in range(2)]
        big = Lead([SetAttr(0, 99, mode=n) for n in range(MAX_BATCH)], ((2, 1, 1),))
        await send_preludes(meta, files, None, big)  # type: ignore[arg-type]
        assert [len(b) for b in meta.batches] == [2, MAX_BATCH]
        assert big.results is not None and len(big.results) == MAX_BATCH

        meta = FakeMeta()
        meta.fail = DelegationLost("gone")
        files = [new_file(meta, 10, b"f")]
        tail = Lead([mkdir], ((2, 1, 1),))
        await send_preludes(meta, files, None, tail)  # type: ignore[arg-type]
        assert tail.results is not None and isinstance(tail.results[0], DelegationLost)
        assert isinstance(files[0].lost, DelegationLost)

    trio.run(main)
