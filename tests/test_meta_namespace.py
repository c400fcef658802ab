"""The namespace state machine alone: errno rules beyond what the differential
test reaches, attributes and times, xattrs, determinism, snapshots."""

from __future__ import annotations

import errno
import random
import stat

import msgspec
import pytest

from prismfs.errors import InvalidArgument, registered_errors
from prismfs.meta.commands import (
    INLINE_MAX,
    MAX_BATCH,
    RENAME_EXCHANGE,
    REPLY_RECORD_BYTES,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Batch,
    BatchResults,
    ChunkMap,
    ChunkRecord,
    CommitChunks,
    MetaCommand,
    MetaFailed,
    MetaOk,
    Mkdir,
    Mknod,
    MoveShards,
    RemoveXattr,
    Rename,
    Reserved,
    ReserveInodes,
    SetAttr,
    SetXattr,
    Symlink,
    Unlink,
)
from prismfs.meta.namespace import Namespace
from prismfs.wire.codec import decode_message, encode_message


class Driver:
    def __init__(self, ns: Namespace | None = None) -> None:
        self.ns = ns or Namespace()
        self.index = 0

    def run(self, command: MetaCommand) -> Attr | None:
        self.index += 1
        result = decode_message(self.ns.apply(self.index, encode_message(command)))
        if isinstance(result, MetaFailed):
            raise registered_errors()[result.code](result.message)
        assert isinstance(result, MetaOk)
        return result.attr

    def errno_of(self, command: MetaCommand) -> int:
        try:
            self.run(command)
        except Exception as exc:  # a PrismError rebuilt from the result
            return int(exc.errno)  # type: ignore[attr-defined]
        return 0


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_root_exists_and_counts_subdirectories(d: Driver) -> None:
    root = d.ns.getattr(ROOT_INO)
    assert stat.S_ISDIR(root.mode) and root.nlink == 2
    d.run(Mkdir(1, ROOT_INO, b"x", 0o755, 0, 0))
    assert d.ns.getattr(ROOT_INO).nlink == 3


@pytest.mark.parametrize(
    ("name", "errno_name"),
    [(b"x" * 256, "ENAMETOOLONG"), (b"a/b", "EINVAL"), (b".", "EINVAL"), (b"", "EINVAL")],
)
def test_bad_names(d: Driver, name: bytes, errno_name: str) -> None:
    import errno

    assert d.errno_of(Mknod(1, ROOT_INO, name, stat.S_IFREG | 0o644, 0, 0)) == getattr(
        errno, errno_name
    )
    assert d.ns.readdir(ROOT_INO) == []  # nothing changed


def test_times_come_from_the_command_and_move_on_changes(d: Driver) -> None:
    attr = d.run(Mknod(100, ROOT_INO, b"f", stat.S_IFREG | 0o600, 5, 6))
    assert attr is not None and (attr.mtime_ns, attr.ctime_ns, attr.uid, attr.gid) == (
        100,
        100,
        5,
        6,
    )
    assert d.ns.getattr(ROOT_INO).mtime_ns == 100
    changed = d.run(SetAttr(200, attr.ino, mode=0o640, uid=7))
    assert changed is not None and changed.ctime_ns == 200 and changed.mtime_ns == 100
    assert stat.S_IMODE(changed.mode) == 0o640 and stat.S_ISREG(changed.mode) and changed.uid == 7
    sized = d.run(SetAttr(300, attr.ino, size=4096))
    assert sized is not None and sized.size == 4096 and sized.mtime_ns == 300


def test_truncate_rules(d: Driver) -> None:
    import errno

    directory = d.run(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0))
    link = d.run(Symlink(1, ROOT_INO, b"l", b"/x", 0, 0))
    assert directory is not None and link is not None
    assert d.errno_of(SetAttr(2, directory.ino, size=0)) == errno.EISDIR
    assert d.errno_of(SetAttr(2, link.ino, size=0)) == errno.EINVAL
    assert d.errno_of(SetAttr(2, 999, size=0)) == errno.ENOENT


def test_exchange_needs_both_and_swaps(d: Driver) -> None:
    import errno

    a = d.run(Mknod(1, ROOT_INO, b"a", stat.S_IFREG | 0o644, 0, 0))
    assert d.errno_of(Rename(2, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)) == errno.ENOENT
    b = d.run(Mkdir(3, ROOT_INO, b"b", 0o755, 0, 0))
    d.run(Rename(4, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE))
    assert a is not None and b is not None
    assert d.ns.lookup(ROOT_INO, b"a").ino == b.ino and d.ns.lookup(ROOT_INO, b"b").ino == a.ino


def test_xattr_flags_and_limits(d: Driver) -> None:
    import errno

    f = d.run(Mknod(1, ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0))
    assert f is not None
    assert d.errno_of(SetXattr(2, f.ino, b"user.a", b"1", XATTR_REPLACE)) == errno.ENODATA
    d.run(SetXattr(3, f.ino, b"user.a", b"1", XATTR_CREATE))
    assert d.errno_of(SetXattr(4, f.ino, b"user.a", b"2", XATTR_CREATE)) == errno.EEXIST
    d.run(SetXattr(5, f.ino, b"user.a", b"2", XATTR_REPLACE))
    assert d.ns.getxattr(f.ino, b"user.a") == b"2"
    assert d.errno_of(SetXattr(6, f.ino, b"user.big", b"x" * 70_000)) == errno.E2BIG
    assert d.errno_of(SetXattr(6, f.ino, b"n" * 256, b"")) == errno.ERANGE
    assert d.ns.listxattr(f.ino) == [b"user.a"]
    d.run(RemoveXattr(7, f.ino, b"user.a"))
    assert d.errno_of(RemoveXattr(8, f.ino, b"user.a")) == errno.ENODATA
    assert d.ns.getattr(f.ino).ctime_ns == 7


def test_failed_command_changes_nothing_but_the_applied_index(d: Driver) -> None:
    d.run(Mkdir(1, ROOT_INO, b"d", 0o755, 0, 0))
    before = d.ns.digest()
    assert d.errno_of(Unlink(2, ROOT_INO, b"d")) != 0
    assert d.ns.applied == 2
    d.ns._set_applied(1)  # compare the trees only
    assert d.ns.digest() == before


def _random_workload(seed: int, steps: int) -> list[MetaCommand]:
    rng = random.Random(seed)
    commands: list[MetaCommand] = []
    for t in range(steps):
        name = rng.choice([b"a", b"b", b"c", b"d"])
        parent = rng.choice([ROOT_INO, 2, 3, 4])
        kind = rng.random()
        if kind < 0.3:
            commands.append(Mkdir(t, parent, name, 0o755, 0, 0))
        elif kind < 0.6:
            commands.append(Mknod(t, parent, name, stat.S_IFREG | 0o644, 0, 0))
        elif kind < 0.8:
            commands.append(
                Rename(t, parent, name, rng.choice([ROOT_INO, 2, 3]), rng.choice([b"a", b"e"]))
            )
        else:
            commands.append(Unlink(t, parent, name))
    return commands


def test_replicas_applying_the_same_log_have_the_same_digest() -> None:
    workload = _random_workload(7, 400)
    one, two = Driver(), Driver()
    for command in workload:
        one.errno_of(command)
        two.errno_of(command)
    assert one.ns.digest() == two.ns.digest()
    three = Driver()
    for command in workload[:-1]:
        three.errno_of(command)
    assert three.ns.digest() != one.ns.digest() or one.ns.applied != three.ns.applied


def test_snapshot_restore_gives_the_same_digest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = Driver()
    for command in _random_workload(11, 300):
        source.errno_of(command)
    image = source.ns.snapshot()
    target = Driver(Namespace(str(tmp_path / "meta.db")))
    target.errno_of(Mkdir(1, ROOT_INO, b"junk", 0o755, 0, 0))  # replaced entirely by the restore
    target.ns.restore(image)
    assert target.ns.digest() == source.ns.digest()
    assert target.ns.applied == source.ns.applied
    # And it keeps applying the following log entries like the source.
    target.index = source.index
    more = _random_workload(12, 50)
    for command in more:
        source.errno_of(command)
        target.errno_of(command)
    assert target.ns.digest() == source.ns.digest()


def test_reopened_database_resumes_at_its_applied_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "meta.db")
    first = Driver(Namespace(path))
    workload = _random_workload(5, 100)
    for command in workload:
        first.errno_of(command)
    digest, applied = first.ns.digest(), first.ns.applied
    first.ns.db.close()
    again = Namespace(path)
    assert again.applied == applied and again.digest() == digest


# --- batches, reserved inode numbers, inline chunks -------------------------------------


def _batch(d: Driver, *ops: MetaCommand) -> list[MetaOk | MetaFailed | Reserved]:
    d.index += 1
    raw = d.ns.apply(d.index, encode_message(Batch(1, tuple(encode_message(op) for op in ops))))
    result = decode_message(raw)
    assert isinstance(result, BatchResults)
    return [decode_message(r) for r in result.results]  # type: ignore[misc]


def test_batch_applies_each_command_on_its_own(d: Driver) -> None:
    d.run(Mknod(1, ROOT_INO, b"taken", stat.S_IFREG | 0o644, 0, 0))
    results = _batch(
        d,
        Mkdir(2, ROOT_INO, b"dir", 0o755, 0, 0),
        Mknod(3, ROOT_INO, b"taken", stat.S_IFREG | 0o644, 0, 0),  # EEXIST: only this one fails
        Symlink(4, ROOT_INO, b"link", b"dir", 0, 0),
    )
    assert [type(r).__name__ for r in results] == ["MetaOk", "MetaFailed", "MetaOk"]
    assert isinstance(results[1], MetaFailed) and results[1].code == "already_exists"
    assert d.ns.lookup(ROOT_INO, b"dir").nlink == 2
    assert d.ns.readlink(d.ns.lookup(ROOT_INO, b"link").ino) == b"dir"


def test_a_failed_command_in_a_batch_leaves_no_trace(d: Driver) -> None:
    before = d.ns.digest()
    (result,) = _batch(d, Rename(1, ROOT_INO, b"missing", ROOT_INO, b"x"))
    assert isinstance(result, MetaFailed) and result.code == "not_found"
    d2 = Driver()
    d2.index = d.index
    d2.ns._commit_applied_only(d.index)
    assert before != d.ns.digest()  # only the applied index moved ...
    assert d.ns.digest() == d2.ns.digest()  # ... exactly as in an untouched namespace


def test_batches_are_checked_before_the_log(d: Driver) -> None:
    inner = Batch(1, (encode_message(Mkdir(1, ROOT_INO, b"a", 0o755, 0, 0)),))
    with pytest.raises(InvalidArgument, match="batch inside a batch"):
        d.ns.check_command(encode_message(Batch(1, (encode_message(inner),))))
    too_many = tuple(encode_message(Unlink(1, ROOT_INO, b"x")) for _ in range(MAX_BATCH + 1))
    with pytest.raises(InvalidArgument, match="at most"):
        d.ns.check_command(encode_message(Batch(1, too_many)))
    with pytest.raises(InvalidArgument, match="not a namespace command"):
        d.ns.check_command(
            encode_message(Batch(1, (encode_message(Attr(1, 0, 0, 0, 0, 0, 0, 0, 0)),)))
        )


def test_reserved_inode_numbers_are_used_by_mknod_and_retries_succeed(d: Driver) -> None:
    d.index += 1
    reserved = decode_message(d.ns.apply(d.index, encode_message(ReserveInodes(1, 100))))
    assert isinstance(reserved, Reserved) and reserved.count == 100
    # The counter moved past the range: an ordinary create gets a number after it.
    plain = d.run(Mkdir(1, ROOT_INO, b"plain", 0o755, 0, 0))
    assert plain is not None and plain.ino == reserved.first + 100
    ino = reserved.first + 7
    create = Mknod(2, ROOT_INO, b"mine", stat.S_IFREG | 0o600, 5, 6, ino=ino)
    attr = d.run(create)
    assert attr is not None and (attr.ino, attr.uid, attr.gid) == (ino, 5, 6)
    assert d.run(create) == attr  # a retry finds its own create done
    # The same number under another name, a number never reserved, one in use: refused.
    assert d.errno_of(Mknod(3, ROOT_INO, b"other", stat.S_IFREG, 0, 0, ino=ino)) == errno.EINVAL
    assert d.errno_of(Mknod(3, ROOT_INO, b"x", stat.S_IFREG, 0, 0, ino=10**9)) == errno.EINVAL
    assert d.errno_of(Mknod(3, ROOT_INO, b"y", stat.S_IFREG, 0, 0, ino=plain.ino)) == errno.EINVAL
    assert d.errno_of(Mknod(3, ROOT_INO, b"mine", stat.S_IFREG, 0, 0, ino=ino + 1)) == errno.EEXIST
    assert d.errno_of(ReserveInodes(4, 0)) == errno.EINVAL


def test_reserved_inode_numbers_are_used_by_mkdir_and_symlink_and_retries_succeed(
    d: Driver,
) -> None:
    d.index += 1
    reserved = decode_message(d.ns.apply(d.index, encode_message(ReserveInodes(1, 10))))
    assert isinstance(reserved, Reserved)
    first = reserved.first
    mkdir = Mkdir(2, ROOT_INO, b"d", 0o750, 5, 6, ino=first)
    made = d.run(mkdir)
    assert made is not None and (made.ino, made.mode, made.nlink) == (first, 0o040750, 2)
    assert d.run(mkdir) == made  # a retry finds its own mkdir done
    link = Symlink(3, first, b"l", b"../target", 5, 6, ino=first + 1)
    linked = d.run(link)
    assert linked is not None and linked.ino == first + 1 and stat.S_ISLNK(linked.mode)
    assert d.ns.readlink(first + 1) == b"../target"
    assert d.run(link) == linked
    root = d.ns.getattr(ROOT_INO)
    assert root.nlink == 3  # the retry did not count the new directory twice
    # Numbers in use or never reserved are refused, and change nothing.
    assert d.errno_of(Mkdir(4, ROOT_INO, b"e", 0o755, 0, 0, ino=first + 1)) == errno.EINVAL
    assert d.errno_of(Symlink(4, first, b"m", b"t", 0, 0, ino=10**9)) == errno.EINVAL
    assert d.errno_of(Mkdir(4, ROOT_INO, b"d", 0o755, 0, 0, ino=first + 2)) == errno.EEXIST
    assert d.ns.getattr(ROOT_INO) == root


def test_inline_chunks_are_validated_kept_and_truncated(d: Driver) -> None:
    f = d.run(Mknod(1, ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0))
    assert f is not None
    body = bytes(range(256)) * 20
    good = ChunkRecord(b"i" * 16, len(body), 0, 0, 0, (), inline=body)
    assert d.run(CommitChunks(2, f.ino, ((0, good),), len(body))) is not None
    assert d.ns.chunk_map(f.ino).chunks == ((0, good),)
    for bad in (
        msgspec.structs.replace(good, length=len(body) - 1),  # length is not the bytes'
        msgspec.structs.replace(good, m=1, nodes=("n1",)),  # inline with shards
        ChunkRecord(b"j" * 16, 5, 5, 1, 1, ("n1",), inline=b"abcde"),  # coded with bytes
        ChunkRecord(b"k" * 16, INLINE_MAX + 1, 0, 0, 0, (), inline=bytes(INLINE_MAX + 1)),
    ):
        assert d.errno_of(CommitChunks(3, f.ino, ((0, bad),), bad.length)) == errno.EINVAL
    assert d.ns.chunk_map(f.ino).chunks == ((0, good),)
    d.run(SetAttr(4, f.ino, size=100))
    ((_, short),) = d.ns.chunk_map(f.ino).chunks
    assert short.length == 100 and short.inline == body  # reads stop at the length


def test_move_shards_follows_the_record_and_refuses_stale_moves(d: Driver) -> None:
    f = d.run(Mknod(1, ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0))
    assert f is not None
    rec = ChunkRecord(b"c" * 16, 1000, 500, 2, 3, ("n1", "n2", "n3"), (b"a", b"b", b"c"))
    d.run(CommitChunks(2, f.ino, ((0, rec),), 1000))
    assert list(d.ns.iter_chunks_on({"n2"})) == [rec]
    assert list(d.ns.iter_chunks_on({"n9"})) == []
    assert d.ns.referenced_shards("n2", (f"{rec.id.hex()}.1", f"{rec.id.hex()}.0", "junk")) == [
        f"{rec.id.hex()}.1"
    ]
    d.run(MoveShards(3, rec.id, ((1, "n2", "n4"),)))
    ((_, moved),) = d.ns.chunk_map(f.ino).chunks
    assert moved.nodes == ("n1", "n4", "n3") and moved.checksums == rec.checksums
    assert d.ns.referenced_shards("n4", (f"{rec.id.hex()}.1",)) == [f"{rec.id.hex()}.1"]
    assert d.ns.referenced_shards("n2", (f"{rec.id.hex()}.1",)) == []  # an orphan on n2 now
    assert dict(d.ns.statfs().node_usage) == {"n1": 500, "n3": 500, "n4": 500}
    # A move that no longer matches, onto a node already holding a shard, of a gone chunk.
    assert d.errno_of(MoveShards(4, rec.id, ((1, "n2", "n5"),))) == errno.ENOENT
    assert d.errno_of(MoveShards(4, rec.id, ((1, "n4", "n1"),))) == errno.ENOENT
    assert d.errno_of(MoveShards(4, b"x" * 16, ((0, "n1", "n5"),))) == errno.ENOENT
    assert d.ns.chunk_map(f.ino).chunks == ((0, moved),)


def test_results_carry_the_directories_they_changed(d: Driver) -> None:
    """A mount answers the kernel's next getattr of these itself."""

    def parents(command: MetaCommand) -> tuple[Attr, ...]:
        d.index += 1
        result = decode_message(d.ns.apply(d.index, encode_message(command)))
        assert isinstance(result, MetaOk)
        return result.parents

    (root,) = parents(Mkdir(100, ROOT_INO, b"a", 0o755, 0, 0))
    assert (root.ino, root.nlink, root.mtime_ns, root.ctime_ns) == (ROOT_INO, 3, 100, 100)
    a = d.ns.lookup(ROOT_INO, b"a").ino
    (dir_a,) = parents(Mknod(200, a, b"f", stat.S_IFREG | 0o644, 0, 0))
    assert (dir_a.ino, dir_a.mtime_ns) == (a, 200)
    moved = parents(Rename(300, a, b"f", ROOT_INO, b"g"))
    assert {p.ino: p.mtime_ns for p in moved} == {a: 300, ROOT_INO: 300}
    assert parents(SetAttr(400, a, mode=0o700)) == ()  # no entry changed
    batch = decode_message(
        d.ns.apply(
            d.index + 1, encode_message(Batch(500, (encode_message(Unlink(500, ROOT_INO, b"g")),)))
        )
    )
    assert isinstance(batch, BatchResults)
    (inner,) = batch.results
    ok = decode_message(inner)
    assert isinstance(ok, MetaOk) and [p.ino for p in ok.parents] == [ROOT_INO]


def test_a_checked_command_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader checks a command before it enters the log, then applies it:
    the op (and each op of a batch) is decoded by the check only."""
    from prismfs.meta import namespace as module
    from prismfs.raft.state_machine import client_command

    ns = Namespace()
    decoded: list[bytes] = []
    real = module.decode_message

    def counting(raw: bytes) -> object:
        decoded.append(bytes(raw))
        return real(raw)

    monkeypatch.setattr(module, "decode_message", counting)
    mkdir = encode_message(Mkdir(1, ROOT_INO, b"a", 0o755, 0, 0))
    inner = encode_message(Mkdir(2, ROOT_INO, b"b", 0o755, 0, 0))
    batch = encode_message(Batch(2, (inner,)))
    for i, op in enumerate((mkdir, batch), start=1):
        ns.check_command(op)
        ns.apply(i, client_command("c", i, op))
    assert decoded.count(mkdir) == decoded.count(batch) == decoded.count(inner) == 1
    assert ns.lookup(ROOT_INO, b"a").ino and ns.lookup(ROOT_INO, b"b").ino


def test_a_big_chunk_map_comes_in_replies_that_fit_a_frame(d: Driver) -> None:
    """1,000 records of 4 MiB chunks with 32 KiB block digests weigh about
    1.2 MB: more than a reply's header may carry (1 MiB). The namespace cuts
    its answer at `REPLY_RECORD_BYTES` and says there is more; the client's
    `chunk_map_all` asks again until it has them all, in order."""
    import trio

    from prismfs.meta.client import MetaClient
    from prismfs.wire.codec import encode_message

    f = d.run(Mknod(1, ROOT_INO, b"big", stat.S_IFREG | 0o644, 0, 0))
    assert f is not None
    chunk = 4 << 20
    sums = bytes(8 * 64)
    records = [
        ChunkRecord(
            i.to_bytes(16, "big"),
            chunk,
            chunk // 2,
            2,
            3,
            ("n1", "n2", "n3"),
            (bytes(16),) * 3,
            block_sums=(sums, sums),
            block_size=32 * 1024,
        )
        for i in range(1000)
    ]
    for at in range(0, 1000, 50):
        batch = tuple((i, records[i]) for i in range(at, at + 50))
        d.run(CommitChunks(2 + at, f.ino, batch, (at + 50) * chunk))
    first = d.ns.chunk_map(f.ino, 0, 4096)
    assert first.more and 0 < len(first.chunks) < 1000
    assert len(encode_message(first)) <= REPLY_RECORD_BYTES + 64 * 1024 < 1 << 20

    class Local:
        async def chunk_map(self, ino: int, first: int = 0, count: int = 1024) -> ChunkMap:
            return d.ns.chunk_map(ino, first, count)

    whole = trio.run(MetaClient.chunk_map_all, Local(), f.ino)  # type: ignore[arg-type]
    assert [i for i, _ in whole.chunks] == list(range(1000)) and not whole.more
    assert [r for _, r in whole.chunks] == records
    part = trio.run(MetaClient.chunk_map_all, Local(), f.ino, 990, 5)  # type: ignore[arg-type]
    assert [i for i, _ in part.chunks] == [990, 991, 992, 993, 994]
