"""POSIX behaviour of a real mount of a real 3-node cluster (2-of-3).

One mount for the module (``allow_other``, so an unprivileged uid can be
tested too). A directory with 64 KiB chunks (``user.prismfs.layout``) makes
chunk boundaries easy to cross. Every test cleans up what it made; the
fixture unmounts and stops every process it started."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio

from fuse_mount import Mount, fuse_available

pytestmark = pytest.mark.timeout(120)
CHUNK = 65536


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path_factory.mktemp("fuse"))
    # pytest's temporary directories are 0700: an unprivileged uid could not
    # even reach a mount inside them.
    m.point = Path(tempfile.mkdtemp(prefix="prismfs-mnt-"))
    m.point.chmod(0o755)
    try:
        m.up()
        point = m.mount("allow_other")
        small = point / "small"
        small.mkdir()
        os.setxattr(small, "user.prismfs.layout", b"k=2,m=3,chunk=64K")
        yield m
    finally:
        m.cleanup()
        m.point.rmdir()


@pytest.fixture
def mount(mounted: Mount) -> Path:
    return mounted.point


@pytest.fixture
def d(mount: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory (with 64 KiB chunks) for one test."""
    path = mount / "small" / request.node.name[:60]
    path.mkdir()
    yield path
    subprocess.run(["rm", "-rf", str(path)], timeout=60, check=True)


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or 0
    return 0


# --- reading and writing ---------------------------------------------------------------------


def test_write_then_read_back(d: Path) -> None:
    data = os.urandom(200_000)
    write(d / "f", data)
    assert (d / "f").read_bytes() == data
    assert (d / "f").stat().st_size == 200_000


def test_partial_overwrite_across_chunk_boundary(d: Path) -> None:
    data = bytearray(os.urandom(3 * CHUNK))
    write(d / "f", bytes(data))
    patch = os.urandom(1001)
    fd = os.open(d / "f", os.O_WRONLY)
    os.pwrite(fd, patch, CHUNK - 500)
    os.close(fd)
    data[CHUNK - 500 : CHUNK + 501] = patch
    assert (d / "f").read_bytes() == bytes(data)


@pytest.mark.parametrize("offset", [1, CHUNK - 1, CHUNK, 2 * CHUNK + 7, 5 * CHUNK - 3])
def test_writes_at_odd_offsets(d: Path, offset: int) -> None:
    blob = os.urandom(CHUNK + 13)
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, blob, offset)
    assert os.pread(fd, len(blob), offset) == blob  # same descriptor, before close
    os.close(fd)
    content = (d / "f").read_bytes()
    assert content[:offset] == bytes(offset) and content[offset:] == blob


def test_o_append_from_two_descriptors(d: Path) -> None:
    a = os.open(d / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
    for i in range(10):
        os.write(a if i % 2 else b, f"line {i}\n".encode())
    os.close(a)
    os.close(b)
    assert (d / "log").read_text().splitlines() == [f"line {i}" for i in range(10)]


def test_o_excl(d: Path) -> None:
    write(d / "f", b"x")
    assert errno_of(os.open, d / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    fd = os.open(d / "g", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    assert stat.S_IMODE((d / "g").stat().st_mode) == 0o600


def test_o_trunc(d: Path) -> None:
    write(d / "f", os.urandom(100_000))
    write(d / "f", b"short")
    assert (d / "f").read_bytes() == b"short"


def test_truncate_both_ways(d: Path) -> None:
    data = os.urandom(150_000)
    write(d / "f", data)
    os.truncate(d / "f", 70_000)
    assert (d / "f").read_bytes() == data[:70_000]
    os.truncate(d / "f", 200_000)
    assert (d / "f").read_bytes() == data[:70_000] + bytes(130_000)
    os.truncate(d / "f", 0)
    assert (d / "f").read_bytes() == b""


def test_ftruncate_on_open_file_with_buffered_writes(d: Path) -> None:
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"a" * 100_000)
    os.ftruncate(fd, 10)
    os.write(fd, b"b")  # the offset is still 100,000: a hole from 10
    os.close(fd)
    content = (d / "f").read_bytes()
    assert content[:10] == b"a" * 10 and content[10:100_000] == bytes(99_990)
    assert content[100_000:] == b"b"


def test_sparse_file_reads_zeros(d: Path) -> None:
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"end", 10 * CHUNK + 5)
    os.close(fd)
    content = (d / "f").read_bytes()
    assert len(content) == 10 * CHUNK + 8 and content[:-3] == bytes(10 * CHUNK + 5)


def test_mmap_shared_writes(d: Path) -> None:
    write(d / "f", bytes(3 * CHUNK))
    with open(d / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[CHUNK - 2 : CHUNK + 2] = b"MMAP"
        mm.flush()
    assert (d / "f").read_bytes()[CHUNK - 2 : CHUNK + 2] == b"MMAP"


def test_fsync_and_fdatasync(d: Path) -> None:
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    assert (d / "f").read_bytes() == b"durable"


def test_concurrent_writers_to_distinct_files(d: Path) -> None:
    blobs = {i: os.urandom(50_000 + i) for i in range(16)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: write(d / f"f{i}", blobs[i]), blobs))
    for i, blob in blobs.items():
        assert (d / f"f{i}").read_bytes() == blob


# --- names --------------------------------------------------------------------------------------


def test_rename_over_file_and_between_directories(d: Path) -> None:
    write(d / "a", b"A")
    write(d / "b", b"B")
    os.rename(d / "a", d / "b")
    assert (d / "b").read_bytes() == b"A" and not (d / "a").exists()
    (d / "sub").mkdir()
    os.rename(d / "b", d / "sub" / "c")
    assert (d / "sub" / "c").read_bytes() == b"A"
    os.rename(d / "sub", d / "sub2")
    assert (d / "sub2" / "c").exists()


def test_rename_over_an_open_file(d: Path) -> None:
    write(d / "old", b"old content")
    write(d / "new", b"new content")
    fd = os.open(d / "old", os.O_RDONLY)
    os.rename(d / "new", d / "old")
    assert os.pread(fd, 100, 0) == b"old content"  # the open file lives on
    os.close(fd)
    assert (d / "old").read_bytes() == b"new content"


def test_rename_errors(d: Path) -> None:
    (d / "dir").mkdir()
    (d / "dir" / "x").write_bytes(b"")
    (d / "empty").mkdir()
    write(d / "f", b"")
    assert errno_of(os.rename, d / "f", d / "dir") == errno.EISDIR
    assert errno_of(os.rename, d / "empty", d / "f") == errno.ENOTDIR
    assert errno_of(os.rename, d / "empty", d / "dir") in (errno.ENOTEMPTY, errno.EEXIST)
    assert errno_of(os.rename, d / "dir", d / "dir" / "inside") == errno.EINVAL
    assert errno_of(os.rename, d / "missing", d / "x") == errno.ENOENT


def _renameat2(src: Path, dst: Path, flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(-100, bytes(src), -100, bytes(dst), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def test_rename_noreplace_and_exchange(d: Path) -> None:
    write(d / "a", b"A")
    write(d / "b", b"B")
    assert _renameat2(d / "a", d / "b", 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert _renameat2(d / "a", d / "c", 1) == 0
    assert _renameat2(d / "c", d / "b", 2) == 0  # RENAME_EXCHANGE
    assert (d / "b").read_bytes() == b"A" and (d / "c").read_bytes() == b"B"
    assert _renameat2(d / "c", d / "zz", 2) == errno.ENOENT


def test_unlink_while_open(d: Path) -> None:
    data = os.urandom(100_000)
    write(d / "f", data)
    fd = os.open(d / "f", os.O_RDWR)
    os.unlink(d / "f")
    assert not (d / "f").exists()
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, 200_000, 0) == data
    os.pwrite(fd, b"still writable", 0)
    assert os.pread(fd, 14, 0) == b"still writable"
    os.close(fd)
    assert os.listdir(d) == []


def test_hard_links_and_nlink(d: Path) -> None:
    write(d / "a", b"shared")
    os.link(d / "a", d / "b")
    assert (d / "a").stat().st_nlink == 2 and (d / "a").stat().st_ino == (d / "b").stat().st_ino
    write(d / "b", b"changed", os.O_WRONLY | os.O_TRUNC)
    assert (d / "a").read_bytes() == b"changed"
    os.unlink(d / "a")
    assert (d / "b").stat().st_nlink == 1
    (d / "sub").mkdir()
    assert d.stat().st_nlink == 3  # ., its entry in the parent, sub/..
    assert errno_of(os.link, d / "sub", d / "sub2") == errno.EPERM


def test_symlinks(d: Path) -> None:
    write(d / "target", b"t")
    os.symlink("target", d / "link")
    assert os.readlink(d / "link") == "target"
    assert (d / "link").read_bytes() == b"t"
    assert stat.S_ISLNK(os.lstat(d / "link").st_mode)
    os.symlink("/nowhere/at/all", d / "dangling")
    assert not (d / "dangling").exists() and (d / "dangling").is_symlink()


def test_long_and_unicode_names(d: Path) -> None:
    name = "x" * 255
    write(d / name, b"ok")
    assert (d / name).read_bytes() == b"ok"
    assert errno_of(os.open, d / ("y" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    for uname in ("naïve café", "日本語のファイル", "emoji 🎉", "ελληνικά"):
        write(d / uname, uname.encode())
        assert (d / uname).read_bytes() == uname.encode()
    assert len(os.listdir(d)) == 5


def test_directory_errors(d: Path) -> None:
    (d / "sub").mkdir()
    write(d / "sub" / "f", b"")
    assert errno_of(os.rmdir, d / "sub") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, d / "sub" / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, d / "sub") == errno.EISDIR
    assert errno_of(os.mkdir, d / "sub") == errno.EEXIST
    assert errno_of(os.mkdir, d / "missing" / "x") == errno.ENOENT
    assert errno_of(os.open, d / "sub" / "f" / "x", os.O_RDONLY) == errno.ENOTDIR


def test_readdir_of_ten_thousand_entries(mounted: Mount) -> None:
    """10,000 entries made through the client library (32 clients at once; the
    kernel serializes creates in one directory, which the benchmark covers),
    then listed through the mount."""
    big = mounted.point / "big"
    big.mkdir()
    names = [f"entry-{i:05d}".encode() for i in range(10_000)]
    ino = big.stat().st_ino
    trio.run(mounted.library, _make_entries, ino, names)
    listed = os.listdir(big)
    assert sorted(listed) == sorted(n.decode() for n in names)
    with os.scandir(big) as it:
        assert sum(1 for e in it if e.is_file()) == 10_000
    assert (big / "entry-04242").stat().st_size == 0
    trio.run(mounted.library, _remove_entries, ino, names)
    assert os.listdir(big) == []
    big.rmdir()


async def _make_entries(meta, ino: int, names: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        for part in range(32):
            nursery.start_soon(_each, meta, names[part::32], lambda n: meta.mknod(ino, n, 0o100644))


async def _remove_entries(meta, ino: int, names: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        for part in range(32):
            nursery.start_soon(_each, meta, names[part::32], lambda n: meta.unlink(ino, n))


async def _each(meta, names, call) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        await call(name)


# --- attributes ---------------------------------------------------------------------------------


def test_chmod_chown(d: Path) -> None:
    write(d / "f", b"")
    os.chmod(d / "f", 0o4750)
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o4750
    os.chown(d / "f", 1234, 5678)
    st = (d / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    before = st.st_ctime_ns
    os.chmod(d / "f", 0o644)
    assert (d / "f").stat().st_ctime_ns >= before


def test_utimens_and_utime_omit(d: Path) -> None:
    write(d / "f", b"x")
    os.utime(d / "f", ns=(1_000_000_000_123, 2_000_000_000_456))
    st = (d / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    # touch -m changes only mtime: atime goes as UTIME_OMIT.
    subprocess.run(
        ["touch", "-m", "-d", "2001-02-03 04:05:06", str(d / "f")], check=True, timeout=30
    )
    st = (d / "f").stat()
    assert st.st_atime_ns == 1_000_000_000_123 and st.st_mtime_ns != 2_000_000_000_456


def test_mtime_moves_on_write_and_parent_on_create(d: Path) -> None:
    write(d / "f", b"1")
    os.utime(d / "f", ns=(0, 0))
    before_parent = d.stat().st_mtime_ns
    write(d / "f", b"2", os.O_WRONLY)
    assert (d / "f").stat().st_mtime_ns > 0
    write(d / "g", b"")
    assert d.stat().st_mtime_ns >= before_parent


def test_xattrs(d: Path) -> None:
    write(d / "f", b"")
    os.setxattr(d / "f", "user.color", b"blue")
    assert os.getxattr(d / "f", "user.color") == b"blue"
    assert "user.color" in os.listxattr(d / "f")
    os.removexattr(d / "f", "user.color")
    assert errno_of(os.getxattr, d / "f", "user.color") == errno.ENODATA
    assert errno_of(os.removexattr, d / "f", "user.color") == errno.ENODATA


def test_layout_xattr_is_validated(d: Path) -> None:
    assert errno_of(os.setxattr, d, "user.prismfs.layout", b"k=9,m=2") == errno.EINVAL
    write(d / "f", b"")
    assert errno_of(os.setxattr, d / "f", "user.prismfs.layout", b"k=1,m=2") == errno.EINVAL


def test_statvfs(mount: Path) -> None:
    s = os.statvfs(mount)
    assert s.f_bsize > 0 and s.f_blocks > 0 and s.f_bavail <= s.f_blocks
    assert s.f_namemax == 255 and s.f_files > 0


def test_permissions_for_an_unprivileged_user(d: Path) -> None:
    write(d / "secret", b"root only")
    os.chmod(d / "secret", 0o600)
    write(d / "public", b"everyone")
    os.chmod(d / "public", 0o644)
    os.chmod(d, 0o755)
    os.chmod(d.parent, 0o755)

    def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert as_nobody("cat", str(d / "public")).stdout == "everyone"
    denied = as_nobody("cat", str(d / "secret"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert as_nobody("touch", str(d / "new")).returncode != 0  # no write permission on d
    os.chmod(d, 0o777)
    assert as_nobody("touch", str(d / "new")).returncode == 0
    assert (d / "new").stat().st_uid == 65534


def test_two_threads_read_while_one_writes(d: Path) -> None:
    write(d / "f", bytes(4 * CHUNK))
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(20):
                assert len((d / "f").read_bytes()) == 4 * CHUNK
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    fd = os.open(d / "f", os.O_WRONLY)
    for i in range(20):
        os.pwrite(fd, os.urandom(1000), i * 1000)
    os.close(fd)
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_concurrent_writers_to_one_file(d: Path) -> None:
    """Eight threads write disjoint pieces of the same chunks through their own
    descriptors: every piece must land (no read-modify-write loses another)."""
    write(d / "f", bytes(2 * CHUNK))
    pieces = {i: os.urandom(1000) for i in range(16)}

    def put(i: int) -> None:
        fd = os.open(d / "f", os.O_WRONLY)
        try:
            os.pwrite(fd, pieces[i], i * 8000)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, pieces))
    content = (d / "f").read_bytes()
    for i, piece in pieces.items():
        assert content[i * 8000 : i * 8000 + 1000] == piece, i
