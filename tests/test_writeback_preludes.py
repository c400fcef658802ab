"""`prismfs.client.files.send_preludes`, the write-back flush of held-back
creates, against a fake metadata client: order, batch limits, and an
attribute change that joins a prelude while its batch is on the way (the
race `rsync -a` hit: the change was dropped and the results misaligned)."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel

from prismfs.client.files import BATCH_BYTES, OpenFile, send_preludes
from prismfs.data.layout import Layout
from prismfs.errors import AlreadyExists, DelegationLost
from prismfs.meta.commands import Attr, MetaCommand, Mknod, SetAttr
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
