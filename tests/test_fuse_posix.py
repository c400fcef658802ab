"""POSIX behaviour of a real mount of a real 3-node cluster (2-of-3).

One mount for the module (``allow_other``, so an unprivileged uid can be
tested too). A directory with 64 KiB chunks (``user.prismfs.layout``) makes
chunk boundaries easy to cross. Every test cleans up what it made; the
fixture unmounts and stops every process it started."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio

from fuse_mount import Mount, errno_of, fuse_available

pytestmark = pytest.mark.timeout(120)
CHUNK = 65536


@pytest.fixture(scope="module", params=["", "sync_meta"], ids=["write-back", "sync_meta"])
def mounted(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Mount]:
    """One mount with write-back (the default), one without (``sync_meta``):
    each test runs on both."""
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path_factory.mktemp("fuse"))
    # pytest's temporary directories are 0700: an unprivileged uid could not
    # even reach a mount inside them.
    m.point = Path(tempfile.mkdtemp(prefix="prismfs-mnt-"))
    m.point.chmod(0o755)
    try:
        m.up()
        point = m.mount(",".join(o for o in ("allow_other", request.param) if o))
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


def at_cluster(directory: Path) -> int:
    """The inode number of ``directory``, made on the mount, once the
    cluster has it: the mount holds a new directory back (write-back) until
    something sends it, and the client library asks the cluster by number,
    not by a lookup that would recall the mount's delegation first."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return directory.stat().st_ino


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as uid and gid 65534 without supplementary groups."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
    )


def errno_elsewhere(statement: str, *args: str | Path, nobody: bool = False) -> int:
    """Run one Python statement in another process (as nobody if asked), with
    the arguments as ``p[0]``, ``p[1]``...: the errno of the OSError it raised, or 0.
    Locks belong to processes, and permissions to users: neither can be tested
    from this process alone."""
    code = (
        "import fcntl, os, sys\n"
        "p = sys.argv[1:]\n"
        "try:\n"
        f"    {statement}\n"
        "except OSError as exc:\n"
        "    sys.exit(exc.errno)\n"
    )
    cmd = [sys.executable, "-I", "-c", code, *map(str, args)]
    if nobody:
        result = as_nobody(*cmd)
    else:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    # Any other exception also exits 1 (EPERM), but with a traceback.
    assert not result.stderr, result.stderr
    return result.returncode


# --- opening -----------------------------------------------------------------------------------


def test_o_creat_without_o_excl_keeps_an_existing_file(d: Path) -> None:
    write(d / "f", b"keep me")
    mode = (d / "f").stat().st_mode
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert os.read(fd, 100) == b"keep me"
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"keep me"
    assert (d / "f").stat().st_mode == mode  # the mode argument is for new files only


def test_opening_a_missing_file_without_o_creat_is_enoent(d: Path) -> None:
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        assert errno_of(os.open, d / "missing", flags) == errno.ENOENT
    assert os.listdir(d) == []


def test_o_directory(d: Path) -> None:
    write(d / "f", b"")
    assert errno_of(os.open, d / "f", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)


def test_a_directory_cannot_be_opened_for_writing_nor_read(d: Path) -> None:
    assert errno_of(os.open, d, os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.open, d, os.O_RDWR) == errno.EISDIR
    fd = os.open(d, os.O_RDONLY)
    try:
        assert errno_of(os.read, fd, 10) == errno.EISDIR
    finally:
        os.close(fd)


def test_the_access_mode_of_a_descriptor_is_enforced(d: Path) -> None:
    write(d / "f", b"data")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        assert errno_of(os.write, fd, b"x") == errno.EBADF
        assert errno_of(os.ftruncate, fd, 0) in (errno.EBADF, errno.EINVAL)  # POSIX: either
    finally:
        os.close(fd)
    fd = os.open(d / "f", os.O_WRONLY)
    try:
        assert errno_of(os.read, fd, 1) == errno.EBADF
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"data"


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


def test_read_at_and_after_the_end(d: Path) -> None:
    write(d / "f", b"0123456789")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 5) == b"56789"  # short read up to the end
        assert os.pread(fd, 100, 10) == b""
        assert os.pread(fd, 100, 10 * CHUNK) == b""
        assert os.lseek(fd, 0, os.SEEK_END) == 10
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)


def test_pwrite_leaves_the_file_offset_alone(d: Path) -> None:
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        os.pwrite(fd, b"XYZ", CHUNK)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3
        os.write(fd, b"def")
        assert os.pread(fd, 6, 0) == b"abcdef"
        assert os.fstat(fd).st_size == CHUNK + 3
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"abcdef" + bytes(CHUNK - 6) + b"XYZ"


def test_o_append_writes_at_the_end_whatever_the_offset(d: Path) -> None:
    write(d / "f", b"start")
    fd = os.open(d / "f", os.O_RDWR | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"-end")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 9
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"start-end"


def test_seek_end_sees_writes_through_another_descriptor(d: Path) -> None:
    a = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    b = os.open(d / "f", os.O_RDONLY)
    try:
        blob = os.urandom(CHUNK + 10)
        os.write(a, blob)
        assert os.fstat(b).st_size == CHUNK + 10
        assert os.lseek(b, -4, os.SEEK_END) == CHUNK + 6
        assert os.read(b, 100) == blob[-4:]
    finally:
        os.close(a)
        os.close(b)


def test_two_descriptors_see_each_others_writes_before_close(d: Path) -> None:
    write(d / "f", bytes(3 * CHUNK))
    a = os.open(d / "f", os.O_RDWR)
    b = os.open(d / "f", os.O_RDWR)
    try:
        one, two = os.urandom(5000), os.urandom(5000)
        os.pwrite(a, one, CHUNK - 2500)
        assert os.pread(b, 5000, CHUNK - 2500) == one
        os.pwrite(b, two, 2 * CHUNK - 1)
        assert os.pread(a, 5000, 2 * CHUNK - 1) == two
        assert os.pread(a, 5000, CHUNK - 2500) == one
    finally:
        os.close(a)
        os.close(b)


def test_read_back_through_the_descriptor_that_wrote(d: Path) -> None:
    data = bytearray(os.urandom(3 * CHUNK))
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, bytes(data))
        os.lseek(fd, CHUNK - 10, os.SEEK_SET)
        os.write(fd, b"overwritten")
        data[CHUNK - 10 : CHUNK + 1] = b"overwritten"
        os.lseek(fd, 0, os.SEEK_SET)
        got = b"".join(iter(lambda: os.read(fd, 10_000), b""))
    finally:
        os.close(fd)
    assert got == bytes(data)


def test_a_hole_up_to_a_chunk_boundary_reads_zeros(d: Path) -> None:
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"head")
    os.pwrite(fd, b"tail", 2 * CHUNK)
    os.close(fd)
    assert (d / "f").read_bytes() == b"head" + bytes(2 * CHUNK - 4) + b"tail"
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, CHUNK - 5) == bytes(10)
        assert os.pread(fd, 8, 2 * CHUNK - 4) == bytes(4) + b"tail"
    finally:
        os.close(fd)


@pytest.mark.parametrize("via", ["path", "descriptor"])
def test_truncate_into_a_chunk_then_extend_reads_zeros(d: Path, via: str) -> None:
    """The bytes cut off must not come back when the file grows again."""
    data = os.urandom(2 * CHUNK)
    write(d / "f", data)
    if via == "path":
        os.truncate(d / "f", CHUNK + 100)
    fd = os.open(d / "f", os.O_RDWR)
    try:
        if via == "descriptor":
            os.ftruncate(fd, CHUNK + 100)
        os.pwrite(fd, b"Z", 3 * CHUNK)
    finally:
        os.close(fd)
    content = (d / "f").read_bytes()
    assert len(content) == 3 * CHUNK + 1
    assert content[: CHUNK + 100] == data[: CHUNK + 100]
    assert content[CHUNK + 100 : 3 * CHUNK] == bytes(2 * CHUNK - 100)
    assert content[3 * CHUNK :] == b"Z"


def test_ftruncate_grows_a_file_with_zeros(d: Path) -> None:
    write(d / "f", b"abc")
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.ftruncate(fd, 2 * CHUNK + 1)
        assert os.fstat(fd).st_size == 2 * CHUNK + 1
        assert os.pread(fd, 3 * CHUNK, 0) == b"abc" + bytes(2 * CHUNK - 2)
    finally:
        os.close(fd)
    assert (d / "f").stat().st_size == 2 * CHUNK + 1


def test_one_mebibyte_in_four_kibibyte_writes(d: Path) -> None:
    data = os.urandom(1 << 20)
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for off in range(0, len(data), 4096):
            assert os.write(fd, data[off : off + 4096]) == 4096
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == data
    with open(d / "f", "rb", buffering=0) as f:  # back in odd-sized pieces
        assert b"".join(iter(lambda: f.read(3001), b"")) == data


def test_size_of_buffered_writes_is_seen_before_close(d: Path) -> None:
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 5000)
        assert os.fstat(fd).st_size == 5000
        assert (d / "f").stat().st_size == 5000
        os.pwrite(fd, b"y", 3 * CHUNK)
        assert (d / "f").stat().st_size == 3 * CHUNK + 1
    finally:
        os.close(fd)


def test_an_open_reader_sees_a_truncate(d: Path) -> None:
    write(d / "f", os.urandom(2 * CHUNK))
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        assert len(os.pread(fd, 3 * CHUNK, 0)) == 2 * CHUNK
        os.truncate(d / "f", 10)
        assert len(os.pread(fd, 3 * CHUNK, 0)) == 10
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)


def test_rename_while_open_for_writing(d: Path) -> None:
    fd = os.open(d / "a", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"first ")
        os.rename(d / "a", d / "b")
        os.write(fd, b"second")
    finally:
        os.close(fd)
    assert (d / "b").read_bytes() == b"first second"
    assert not (d / "a").exists()


def test_unlink_and_recreate_while_open(d: Path) -> None:
    write(d / "f", b"old")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        os.unlink(d / "f")
        write(d / "f", b"new content")
        assert os.pread(fd, 100, 0) == b"old"
        assert os.fstat(fd).st_ino != (d / "f").stat().st_ino
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"new content"


def test_o_trunc_drops_writes_buffered_by_another_descriptor(d: Path) -> None:
    a = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(a, b"a" * 100_000)
        os.close(os.open(d / "f", os.O_WRONLY | os.O_TRUNC))
        assert (d / "f").stat().st_size == 0
    finally:
        os.close(a)
    assert (d / "f").read_bytes() == b""


def test_rename_over_a_file_with_buffered_writes(d: Path) -> None:
    write(d / "new", b"new content")
    fd = os.open(d / "old", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 100_000)
        os.rename(d / "new", d / "old")
        os.write(fd, b"y")  # still writable, to the unlinked file
        assert os.fstat(fd).st_size == 100_001
        assert os.pread(fd, 10, 99_995) == b"xxxxxy"
    finally:
        os.close(fd)
    assert (d / "old").read_bytes() == b"new content"
    assert os.listdir(d) == ["old"]


def test_attribute_calls_through_a_descriptor_of_an_unlinked_file(d: Path) -> None:
    write(d / "f", b"content")
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.unlink(d / "f")
        os.fchmod(fd, 0o600)
        os.fchown(fd, 1234, 5678)
        os.ftruncate(fd, 3)
        os.utime(fd, ns=(3_000_000_001, 4_000_000_002))
        os.fsync(fd)
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (1234, 5678)
        assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_001, 4_000_000_002)
        assert st.st_size == 3 and os.pread(fd, 10, 0) == b"con"
    finally:
        os.close(fd)
    assert os.listdir(d) == []


def test_sendfile_and_copy_file_range_within_the_mount(d: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    write(d / "src", data)
    src = os.open(d / "src", os.O_RDONLY)
    dst = os.open(d / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    dst2 = os.open(d / "dst2", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        done = 0
        while done < len(data):
            n = os.sendfile(dst, src, done, len(data) - done)
            assert n > 0
            done += n
        done = 0
        while done < len(data):
            n = os.copy_file_range(src, dst2, len(data) - done, done, done)
            assert n > 0
            done += n
    finally:
        for fd in (src, dst, dst2):
            os.close(fd)
    assert (d / "dst").read_bytes() == data
    assert (d / "dst2").read_bytes() == data


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


def test_rename_onto_itself_does_nothing(d: Path) -> None:
    write(d / "f", b"same")
    os.rename(d / "f", d / "f")
    assert (d / "f").read_bytes() == b"same"
    os.link(d / "f", d / "g")
    os.rename(d / "f", d / "g")  # two links of one file: rename does nothing
    assert sorted(os.listdir(d)) == ["f", "g"] and (d / "f").stat().st_nlink == 2
    (d / "sub").mkdir()
    os.rename(d / "sub", d / "sub")
    assert (d / "sub").is_dir()


def test_rename_a_directory_over_an_empty_directory(d: Path) -> None:
    (d / "a").mkdir()
    write(d / "a" / "f", b"in a")
    (d / "b").mkdir()
    os.rename(d / "a", d / "b")
    assert os.listdir(d) == ["b"]
    assert (d / "b" / "f").read_bytes() == b"in a"
    assert d.stat().st_nlink == 3  # the replaced directory's '..' is gone


def test_rename_onto_a_non_empty_directory_changes_nothing(d: Path) -> None:
    (d / "a").mkdir()
    write(d / "a" / "x", b"x")
    (d / "b").mkdir()
    write(d / "b" / "y", b"y")
    assert errno_of(os.rename, d / "a", d / "b") == errno.ENOTEMPTY
    assert os.listdir(d / "a") == ["x"] and os.listdir(d / "b") == ["y"]


def test_rename_a_directory_into_its_own_descendants(d: Path) -> None:
    (d / "a" / "b" / "c").mkdir(parents=True)
    assert errno_of(os.rename, d / "a", d / "a" / "b" / "c" / "a") == errno.EINVAL
    assert errno_of(os.rename, d / "a", d / "a" / "b" / "c") == errno.EINVAL
    assert errno_of(os.rename, d / "a" / "b" / "c", d / "a") == errno.ENOTEMPTY
    assert (d / "a" / "b" / "c").is_dir()


def test_moving_a_directory_updates_both_parents_link_counts(d: Path) -> None:
    (d / "p" / "child").mkdir(parents=True)
    (d / "q").mkdir()
    assert ((d / "p").stat().st_nlink, (d / "q").stat().st_nlink) == (3, 2)
    os.rename(d / "p" / "child", d / "q" / "child")
    assert ((d / "p").stat().st_nlink, (d / "q").stat().st_nlink) == (2, 3)
    assert d.stat().st_nlink == 4


def test_a_directory_link_count_counts_its_subdirectories(d: Path) -> None:
    assert d.stat().st_nlink == 2
    for i in range(3):
        (d / f"s{i}").mkdir()
    write(d / "f", b"")
    os.symlink("s1", d / "link")
    assert d.stat().st_nlink == 5
    os.rmdir(d / "s0")
    assert d.stat().st_nlink == 4
    assert (d / "s1").stat().st_nlink == 2


def test_creating_over_an_existing_name_is_eexist(d: Path) -> None:
    write(d / "f", b"")
    (d / "sub").mkdir()
    os.symlink("f", d / "link")
    for name in ("f", "sub", "link"):
        assert errno_of(os.mkdir, d / name) == errno.EEXIST
        assert errno_of(os.symlink, "x", d / name) == errno.EEXIST
        assert errno_of(os.link, d / "f", d / name) == errno.EEXIST
        assert errno_of(os.mkfifo, d / name) == errno.EEXIST
    assert (d / "f").stat().st_nlink == 1
    assert os.readlink(d / "link") == "f"


_LONG = "n" * 256


@pytest.mark.parametrize(
    "call", ["mkdir", "symlink", "link", "rename", "mkfifo", "stat", "open", "create", "unlink"]
)
def test_a_name_of_256_bytes_is_enametoolong(d: Path, call: str) -> None:
    write(d / "f", b"")
    calls = {
        "stat": lambda: os.stat(d / _LONG),
        "open": lambda: os.open(d / _LONG, os.O_RDONLY),
        "create": lambda: os.open(d / _LONG, os.O_CREAT | os.O_WRONLY, 0o644),
        "unlink": lambda: os.unlink(d / _LONG),
        "mkdir": lambda: os.mkdir(d / _LONG),
        "symlink": lambda: os.symlink("f", d / _LONG),
        "link": lambda: os.link(d / "f", d / _LONG),
        "rename": lambda: os.rename(d / "f", d / _LONG),
        "mkfifo": lambda: os.mkfifo(d / _LONG),
    }
    assert errno_of(calls[call]) == errno.ENAMETOOLONG
    assert os.listdir(d) == ["f"]


def test_names_with_unusual_bytes(d: Path) -> None:
    base = os.fsencode(d)
    names = [
        b"with space",
        b" ",
        b"new\nline",
        b"tab\there",
        b"back\\slash",
        b"-leading-dash",
        b"...",
        b"star*?[]",
        b"quotes'\"",
        b"\xff\xfe not utf-8",
    ]
    for name in names:
        fd = os.open(os.path.join(base, name), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, name)
        os.close(fd)
    assert sorted(os.listdir(base)) == sorted(names)
    for name in names:
        path = os.path.join(base, name)
        with open(path, "rb") as f:
            assert f.read() == name
        os.rename(path, path + b".moved")
    assert sorted(os.listdir(base)) == sorted(n + b".moved" for n in names)


def test_readdir_after_many_renames_lists_each_name_once(d: Path) -> None:
    (d / "other").mkdir()
    for i in range(40):
        write(d / f"f{i}", b"")
    for rnd in range(3):
        for i in range(40):
            os.rename(d / f"f{i}" if rnd == 0 else d / f"r{rnd - 1}-{i}", d / "other" / "tmp")
            os.rename(d / "other" / "tmp", d / f"r{rnd}-{i}")
    assert sorted(os.listdir(d)) == sorted(["other"] + [f"r2-{i}" for i in range(40)])
    assert os.listdir(d / "other") == []


def test_readdir_while_unlinking_sees_every_entry(mounted: Mount, d: Path) -> None:
    """``rm -r`` unlinks each entry as it reads the directory: no entry may be
    skipped because earlier ones went away (more than two pages of entries,
    made through the client library for speed)."""
    names = {f"e{i:04d}" for i in range(1100)}
    trio.run(mounted.library, _make_entries, at_cluster(d), [n.encode() for n in names])
    seen = []
    with os.scandir(d) as it:
        for entry in it:
            seen.append(entry.name)
            os.unlink(entry.path)
    assert len(seen) == len(names) and set(seen) == names
    assert os.listdir(d) == []


class _Dirent(ctypes.Structure):  # glibc's struct dirent on 64-bit Linux
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def _next_names(libc: ctypes.CDLL, dirp: int, count: int | None = None) -> list[bytes]:
    names: list[bytes] = []
    while count is None or len(names) < count:
        entry = libc.readdir(dirp)
        if not entry:
            return names
        if entry.contents.d_name not in (b".", b".."):
            names.append(entry.contents.d_name)
    return names


def test_seekdir_returns_to_a_telldir_position(mounted: Mount, d: Path) -> None:
    """A directory offset (the kernel's cookie) stays valid: reading resumes
    after a seekdir exactly where telldir was taken."""
    names = [f"e{i:04d}".encode() for i in range(1100)]
    trio.run(mounted.library, _make_entries, at_cluster(d), names)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.readdir.restype = ctypes.POINTER(_Dirent)
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    dirp = libc.opendir(bytes(d))
    assert dirp
    try:
        first = _next_names(libc, dirp, 700)
        position = libc.telldir(dirp)
        rest = _next_names(libc, dirp)
        libc.seekdir(dirp, position)
        assert _next_names(libc, dirp) == rest
        libc.rewinddir(dirp)
        assert _next_names(libc, dirp) == first + rest
    finally:
        libc.closedir(dirp)
    assert sorted(first + rest) == names
    trio.run(mounted.library, _remove_entries, d.stat().st_ino, names)


def test_rename_exchange_of_a_file_and_a_directory_moves_link_counts(d: Path) -> None:
    write(d / "a", b"file")
    (d / "p" / "sub").mkdir(parents=True)
    write(d / "p" / "sub" / "inside", b"")
    assert (d.stat().st_nlink, (d / "p").stat().st_nlink) == (3, 3)
    assert _renameat2(d / "a", d / "p" / "sub", 2) == 0  # RENAME_EXCHANGE
    assert (d / "a" / "inside").exists() and (d / "p" / "sub").read_bytes() == b"file"
    assert (d.stat().st_nlink, (d / "p").stat().st_nlink) == (4, 2)


def test_scandir_entry_types(d: Path) -> None:
    write(d / "file", b"")
    (d / "dir").mkdir()
    os.symlink("file", d / "file-link")
    os.symlink("dir", d / "dir-link")
    os.symlink("missing", d / "dangling")
    os.mkfifo(d / "fifo")
    with os.scandir(d) as it:
        kinds = {
            e.name: (
                e.is_file(follow_symlinks=False),
                e.is_dir(follow_symlinks=False),
                e.is_symlink(),
                e.is_file(),
                e.is_dir(),
                e.inode(),
            )
            for e in it
        }
    assert kinds == {
        "file": (True, False, False, True, False, (d / "file").stat().st_ino),
        "dir": (False, True, False, False, True, (d / "dir").stat().st_ino),
        "file-link": (False, False, True, True, False, os.lstat(d / "file-link").st_ino),
        "dir-link": (False, False, True, False, True, os.lstat(d / "dir-link").st_ino),
        "dangling": (False, False, True, False, False, os.lstat(d / "dangling").st_ino),
        "fifo": (False, False, False, False, False, os.lstat(d / "fifo").st_ino),
    }


def test_special_files(d: Path) -> None:
    os.mkfifo(d / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    os.mknod(d / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(d / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    subprocess.run(
        [sys.executable, "-I", "-c", "import socket; socket.socket(socket.AF_UNIX).bind('sock')"],
        cwd=d,
        check=True,
        timeout=30,
    )
    assert stat.S_ISSOCK(os.lstat(d / "sock").st_mode)
    # A FIFO on the mount carries data between a writer and a reader.
    writer = threading.Thread(
        target=lambda: (d / "fifo").write_bytes(b"through the fifo"), daemon=True
    )
    writer.start()
    assert (d / "fifo").read_bytes() == b"through the fifo"
    writer.join(timeout=30)


def test_a_dangling_symlink(d: Path) -> None:
    os.symlink("later", d / "link")
    assert os.readlink(d / "link") == "later"
    assert errno_of(os.stat, d / "link") == errno.ENOENT
    assert errno_of(os.open, d / "link", os.O_RDONLY) == errno.ENOENT
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert errno_of(os.open, d / "link", flags) == errno.EEXIST
    write(d / "link", b"made", os.O_WRONLY | os.O_CREAT)  # creates the target
    assert (d / "later").read_bytes() == b"made"
    assert (d / "link").read_bytes() == b"made"


def test_a_symlink_loop_is_eloop(d: Path) -> None:
    os.symlink("b", d / "a")
    os.symlink("a", d / "b")
    os.symlink("self", d / "self")
    for name in ("a", "b", "self"):
        assert errno_of(os.open, d / name, os.O_RDONLY) == errno.ELOOP
        assert errno_of(os.stat, d / name) == errno.ELOOP
        assert stat.S_ISLNK(os.lstat(d / name).st_mode)


def test_lstat_and_stat_of_a_symlink(d: Path) -> None:
    write(d / "target", b"12345")
    os.symlink("target", d / "link")
    lst, st = os.lstat(d / "link"), os.stat(d / "link")
    assert stat.S_ISLNK(lst.st_mode) and lst.st_size == len("target")
    assert stat.S_IMODE(lst.st_mode) == 0o777
    assert stat.S_ISREG(st.st_mode) and st.st_size == 5
    assert st.st_ino == os.lstat(d / "target").st_ino != lst.st_ino


def test_a_long_symlink_target_round_trips(d: Path) -> None:
    target = ("component/" * 400)[:4000]
    os.symlink(target, d / "link")
    assert os.readlink(d / "link") == target
    assert os.lstat(d / "link").st_size == 4000


def test_a_symlink_to_a_directory(d: Path) -> None:
    (d / "real").mkdir()
    write(d / "real" / "f", b"inside")
    os.symlink("real", d / "alias")
    assert (d / "alias" / "f").read_bytes() == b"inside"
    assert os.listdir(d / "alias") == ["f"]
    assert errno_of(os.rmdir, d / "alias") == errno.ENOTDIR
    os.unlink(d / "alias")  # only the link goes
    assert (d / "real" / "f").read_bytes() == b"inside"


def test_hard_links_share_the_inode_and_move_its_ctime(d: Path) -> None:
    write(d / "a", b"")
    before = (d / "a").stat().st_ctime_ns
    time.sleep(0.05)
    os.link(d / "a", d / "b")
    after_link = (d / "a").stat()
    assert after_link.st_nlink == 2 and after_link.st_ctime_ns > before
    os.chmod(d / "b", 0o600)
    os.setxattr(d / "b", "user.k", b"v")
    assert stat.S_IMODE((d / "a").stat().st_mode) == 0o600
    assert os.getxattr(d / "a", "user.k") == b"v"
    time.sleep(0.05)
    before = (d / "a").stat().st_ctime_ns
    os.unlink(d / "b")
    after_unlink = (d / "a").stat()
    assert after_unlink.st_nlink == 1 and after_unlink.st_ctime_ns > before


def test_rename_over_a_hard_link_drops_one_link(d: Path) -> None:
    write(d / "a", b"A")
    os.link(d / "a", d / "a2")
    write(d / "c", b"C")
    os.rename(d / "c", d / "a2")
    assert (d / "a").stat().st_nlink == 1 and (d / "a").read_bytes() == b"A"
    assert (d / "a2").read_bytes() == b"C"


def test_fsync_of_a_directory(d: Path) -> None:
    write(d / "f", b"x")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.listdir(d) == ["f"]


def test_a_new_directory(d: Path) -> None:
    os.mkdir(d / "sub", 0o700)
    st = (d / "sub").stat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_nlink == 2 and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert os.listdir(d / "sub") == []


def test_readdir_of_ten_thousand_entries(mounted: Mount) -> None:
    """10,000 entries made through the client library (32 clients at once; the
    kernel serializes creates in one directory, which the benchmark covers),
    then listed through the mount."""
    big = mounted.point / "big"
    big.mkdir()
    names = [f"entry-{i:05d}".encode() for i in range(10_000)]
    ino = at_cluster(big)
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


def test_xattr_create_and_replace_flags(d: Path) -> None:
    write(d / "f", b"")
    f = d / "f"
    assert errno_of(os.setxattr, f, "user.a", b"1", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.a", b"1", os.XATTR_CREATE)
    assert errno_of(os.setxattr, f, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert os.getxattr(f, "user.a") == b"1"
    os.setxattr(f, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.a") == b"3"
    os.removexattr(f, "user.a")
    assert errno_of(os.setxattr, f, "user.a", b"4", os.XATTR_REPLACE) == errno.ENODATA


def test_layout_xattr_is_validated(d: Path) -> None:
    assert errno_of(os.setxattr, d, "user.prismfs.layout", b"k=9,m=2") == errno.EINVAL
    write(d / "f", b"")
    assert errno_of(os.setxattr, d / "f", "user.prismfs.layout", b"k=1,m=2") == errno.EINVAL


def test_a_file_created_empty_and_written_later_keeps_its_directorys_layout(
    d: Path, mounted: Mount
) -> None:
    # fio, `truncate -s` + write, a log opened for append: the first shard
    # write comes after a reopen, where no chunk tells the file's layout yet.
    os.setxattr(d, "user.prismfs.layout", b"k=1,m=2,chunk=64K")
    write(d / "empty", b"")
    write(d / "sized", b"")
    os.truncate(d / "sized", 3 * CHUNK)
    for name in ("empty", "sized"):
        body = os.urandom(2 * CHUNK + 100)
        write(d / name, body, os.O_WRONLY)
        assert (d / name).read_bytes()[: len(body)] == body
    inos = [(d / name).stat().st_ino for name in ("empty", "sized")]

    async def layouts(meta, ino):  # type: ignore[no-untyped-def]
        cmap = await meta.chunk_map(ino)
        return {r.layout for _, r in cmap.chunks if not r.is_inline}

    for ino in inos:
        assert trio.run(mounted.library, layouts, ino) == {(1, 2)}


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
    assert as_nobody("cat", str(d / "public")).stdout == "everyone"
    denied = as_nobody("cat", str(d / "secret"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert as_nobody("touch", str(d / "new")).returncode != 0  # no write permission on d
    os.chmod(d, 0o777)
    assert as_nobody("touch", str(d / "new")).returncode == 0
    assert (d / "new").stat().st_uid == 65534


def test_a_new_file(d: Path) -> None:
    now = time.time_ns()
    write(d / "f", b"")
    st = (d / "f").stat()
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size == 0
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    for t in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns):
        assert abs(t - now) < 10_000_000_000


def test_umask_applies_to_new_entries(d: Path) -> None:
    old = os.umask(0o027)
    try:
        os.close(os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o666))
        os.mkdir(d / "sub", 0o777)
        os.mkfifo(d / "fifo", 0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o640
    assert stat.S_IMODE((d / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(d / "fifo").st_mode) == 0o640


def test_new_entries_in_a_setgid_directory_take_its_group(d: Path) -> None:
    shared = d / "shared"
    shared.mkdir()
    os.chown(shared, 0, 4242)
    os.chmod(shared, 0o2775)
    write(shared / "f", b"x")
    (shared / "sub").mkdir(0o755)
    os.mkfifo(shared / "fifo")
    os.symlink("f", shared / "link")
    assert (shared / "f").stat().st_gid == 4242
    fd = os.open(shared / "open", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.fstat(fd).st_gid == 4242  # while its create is still deferred, too
    finally:
        os.close(fd)
    assert (shared / "open").stat().st_gid == 4242
    sub = (shared / "sub").stat()
    assert (sub.st_gid, stat.S_IMODE(sub.st_mode)) == (4242, 0o2755)
    assert (shared / "fifo").stat().st_gid == 4242
    assert os.lstat(shared / "link").st_gid == 4242
    write(shared / "sub" / "deeper", b"")
    assert (shared / "sub" / "deeper").stat().st_gid == 4242  # inherited along


def test_setgid_and_sticky_bits(d: Path) -> None:
    (d / "sub").mkdir()
    os.chmod(d / "sub", 0o3775)
    mode = (d / "sub").stat().st_mode
    assert stat.S_IMODE(mode) == 0o3775 and mode & stat.S_ISGID and mode & stat.S_ISVTX
    write(d / "f", b"")
    os.chmod(d / "f", 0o2755)
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o2755


def test_chown_clears_setuid_and_setgid(d: Path) -> None:
    write(d / "f", b"")
    os.chmod(d / "f", 0o6755)
    os.chown(d / "f", 1234, 1234)
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o755


def test_a_write_by_another_user_clears_setuid(d: Path) -> None:
    write(d / "f", b"")
    os.chmod(d / "f", 0o4777)
    assert errno_elsewhere("os.write(os.open(p[0], os.O_WRONLY), b'x')", d / "f", nobody=True) == 0
    assert (d / "f").read_bytes() == b"x"
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o777


def test_chmod_moves_ctime_but_not_mtime(d: Path) -> None:
    write(d / "f", b"")
    before = (d / "f").stat()
    time.sleep(0.05)
    os.chmod(d / "f", 0o600)
    after = (d / "f").stat()
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns


def test_reading_and_closing_change_neither_mtime_nor_ctime(d: Path) -> None:
    write(d / "f", os.urandom(2 * CHUNK))
    os.utime(d / "f", ns=(1_000_000_000, 2_000_000_000))
    before = (d / "f").stat()
    time.sleep(0.05)
    (d / "f").read_bytes()
    os.close(os.open(d / "f", os.O_RDWR))  # opened for writing, nothing written
    after = (d / "f").stat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)


def _wait_for_atime(path: Path, above: int) -> os.stat_result:
    deadline = time.monotonic() + 10
    while True:
        st = path.stat()
        if st.st_atime_ns > above or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def test_relatime_a_read_moves_an_old_atime_once(d: Path) -> None:
    write(d / "f", b"some bytes")
    os.utime(d / "f", ns=(1_000_000_000, 2_000_000_000))  # atime before mtime
    before = (d / "f").stat()
    started = time.time_ns()
    assert (d / "f").read_bytes() == b"some bytes"
    st = _wait_for_atime(d / "f", 2_000_000_000)
    assert st.st_atime_ns >= started - 10**9  # the read's time (clocks of one machine)
    assert (st.st_mtime_ns, st.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    # Now atime is after mtime and ctime and fresh: another read leaves it.
    (d / "f").read_bytes()
    time.sleep(1.5)  # a batch of updates (0.2 s) and the attribute cache (1 s)
    assert (d / "f").stat().st_atime_ns == st.st_atime_ns
    # A day-old atime moves again even though it is after mtime.
    day_old = time.time_ns() - 2 * 86_400 * 10**9
    os.utime(d / "f", ns=(day_old, 2_000_000_000))
    (d / "f").read_bytes()
    assert _wait_for_atime(d / "f", day_old).st_atime_ns > day_old + 86_400 * 10**9


def test_relatime_a_listing_moves_a_directory_atime(d: Path) -> None:
    (d / "sub").mkdir()
    (d / "sub" / "x").write_bytes(b"")
    os.utime(d / "sub", ns=(1_000_000_000, 2_000_000_000))
    assert os.listdir(d / "sub") == ["x"]
    assert _wait_for_atime(d / "sub", 2_000_000_000).st_atime_ns > 2_000_000_000


def test_readdir_has_dot_and_dotdot_with_their_inodes(d: Path) -> None:
    (d / "sub").mkdir()
    (d / "sub" / "file").write_bytes(b"")
    out = subprocess.run(
        ["ls", "-a1i", str(d / "sub")], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split("\n")
    listed = dict(reversed(line.split()) for line in out if line.strip())
    assert sorted(listed) == [".", "..", "file"]
    assert int(listed["."]) == (d / "sub").stat().st_ino
    assert int(listed[".."]) == d.stat().st_ino
    assert int(listed["file"]) == (d / "sub" / "file").stat().st_ino
    assert os.listdir(d / "sub") == ["file"]  # Python leaves them out itself


@pytest.mark.parametrize("kind", ["file", "directory", "symlink itself"])
def test_utime_round_trips_nanoseconds(d: Path, kind: str) -> None:
    path = d / "x"
    if kind == "file":
        write(path, b"")
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink("nowhere", path)
    for times in [(1_234_567_890_123_456_789, 987_654_321_987_654_321), (1, 999_999_999)]:
        os.utime(path, ns=times, follow_symlinks=False)
        st = os.lstat(path)
        assert (st.st_atime_ns, st.st_mtime_ns) == times


def test_utime_before_1970(d: Path) -> None:
    write(d / "f", b"")
    times = (-86_400_000_000_000 - 1, -1_000_000_000 + 250)
    os.utime(d / "f", ns=times)
    st = (d / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == times


def test_utime_without_times_means_now(d: Path) -> None:
    write(d / "f", b"")
    os.utime(d / "f", ns=(0, 0))
    now = time.time_ns()
    os.utime(d / "f")
    st = (d / "f").stat()
    assert abs(st.st_atime_ns - now) < 10_000_000_000
    assert abs(st.st_mtime_ns - now) < 10_000_000_000


@pytest.mark.parametrize("how", ["truncate", "ftruncate", "o_trunc"])
def test_truncate_moves_mtime_and_ctime(d: Path, how: str) -> None:
    write(d / "f", b"abc")
    os.utime(d / "f", ns=(0, 0))
    before = (d / "f").stat().st_ctime_ns
    time.sleep(0.05)
    if how == "truncate":
        os.truncate(d / "f", 1)
    elif how == "ftruncate":
        fd = os.open(d / "f", os.O_WRONLY)
        os.ftruncate(fd, 1)
        os.close(fd)
    else:
        os.close(os.open(d / "f", os.O_WRONLY | os.O_TRUNC))
    st = (d / "f").stat()
    assert st.st_mtime_ns > 0 and st.st_ctime_ns > before


_NAMESPACE_CHANGES = {
    "create": lambda d: os.close(os.open(d / "new", os.O_WRONLY | os.O_CREAT, 0o644)),
    "mkdir": lambda d: os.mkdir(d / "newdir"),
    "mkfifo": lambda d: os.mkfifo(d / "newfifo"),
    "symlink": lambda d: os.symlink("f", d / "newlink"),
    "link": lambda d: os.link(d / "f", d / "newlink"),
    "unlink": lambda d: os.unlink(d / "f"),
    "rmdir": lambda d: os.rmdir(d / "sub"),
    "rename within": lambda d: os.rename(d / "f", d / "g"),
    "rename out": lambda d: os.rename(d / "f", d / "sub" / "f"),
}


@pytest.mark.parametrize("change", list(_NAMESPACE_CHANGES))
def test_namespace_changes_move_the_parent_mtime_and_ctime(d: Path, change: str) -> None:
    write(d / "f", b"")
    (d / "sub").mkdir()
    os.utime(d, ns=(0, 0))
    before = d.stat().st_ctime_ns
    time.sleep(0.05)
    _NAMESPACE_CHANGES[change](d)
    st = d.stat()
    assert st.st_mtime_ns > 0 and st.st_ctime_ns > before


def test_st_blocks_covers_the_size(d: Path) -> None:
    write(d / "empty", b"")
    assert (d / "empty").stat().st_blocks == 0
    write(d / "f", os.urandom(100_000))
    st = (d / "f").stat()
    assert 100_000 <= st.st_blocks * 512 < 2 * 100_000 + 2 * CHUNK
    assert st.st_blksize > 0


# --- extended attributes -------------------------------------------------------------------------


def test_new_entries_have_no_xattrs(d: Path) -> None:
    write(d / "f", b"")
    (d / "sub").mkdir()
    os.symlink("f", d / "link")
    assert os.listxattr(d / "f") == []
    assert os.listxattr(d / "link", follow_symlinks=False) == []
    assert errno_of(os.getxattr, d / "f", "user.none") == errno.ENODATA


def test_xattr_values_round_trip(d: Path) -> None:
    write(d / "f", b"")
    values = {
        "user.big": os.urandom(4000),
        "user.empty": b"",
        "user.nuls": b"a\x00b\x00",
        "user.text": "naïve".encode(),
    }
    for name, value in values.items():
        os.setxattr(d / "f", name, value)
    for name, value in values.items():
        assert os.getxattr(d / "f", name) == value
    assert sorted(os.listxattr(d / "f")) == sorted(values)
    os.setxattr(d / "f", "user.big", b"small now")  # a second set replaces
    assert os.getxattr(d / "f", "user.big") == b"small now"
    assert len(os.listxattr(d / "f")) == 4


def test_many_xattrs_are_listed_once_each(d: Path) -> None:
    write(d / "f", b"")
    names = [f"user.attr-{i:02d}" for i in range(40)]
    for name in names:
        os.setxattr(d / "f", name, name.encode())
    assert sorted(os.listxattr(d / "f")) == names
    for name in names[::2]:
        os.removexattr(d / "f", name)
    assert sorted(os.listxattr(d / "f")) == names[1::2]


def test_xattrs_of_directories_and_through_symlinks(d: Path) -> None:
    (d / "sub").mkdir()
    os.setxattr(d / "sub", "user.k", b"dir value")
    os.symlink("sub", d / "link")
    assert os.getxattr(d / "link", "user.k") == b"dir value"  # follows the link
    assert "user.k" in os.listxattr(d / "link")
    os.setxattr(d / "link", "user.k2", b"via link")
    assert os.getxattr(d / "sub", "user.k2") == b"via link"
    # user.* attributes are for files and directories, never for symlinks.
    no_follow = {"follow_symlinks": False}
    assert errno_of(os.setxattr, d / "link", "user.k", b"x", **no_follow) == errno.EPERM
    assert errno_of(os.getxattr, d / "link", "user.k", **no_follow) == errno.ENODATA


def test_xattrs_survive_rename(d: Path) -> None:
    write(d / "f", b"")
    os.setxattr(d / "f", "user.k", b"v")
    (d / "sub").mkdir()
    os.rename(d / "f", d / "sub" / "g")
    assert os.getxattr(d / "sub" / "g", "user.k") == b"v"


def test_xattr_size_query_and_small_buffer(d: Path) -> None:
    write(d / "f", b"")
    os.setxattr(d / "f", "user.k", b"0123456789")
    libc = ctypes.CDLL(None, use_errno=True)
    path, name = bytes(d / "f"), b"user.k"
    assert libc.getxattr(path, name, None, 0) == 10  # the size, without the value
    buf = ctypes.create_string_buffer(64)
    assert libc.getxattr(path, name, buf, 3) == -1 and ctypes.get_errno() == errno.ERANGE
    assert libc.getxattr(path, name, buf, 64) == 10 and buf.raw[:10] == b"0123456789"
    assert libc.listxattr(path, None, 0) == len(b"user.k\0")
    assert libc.listxattr(path, buf, 2) == -1 and ctypes.get_errno() == errno.ERANGE


# --- permissions and locks -----------------------------------------------------------------------


def test_access_for_an_unprivileged_user(d: Path) -> None:
    write(d / "secret", b"")
    os.chmod(d / "secret", 0o640)
    write(d / "tool", b"")
    os.chmod(d / "tool", 0o755)
    os.chmod(d, 0o755)
    checks = [
        (d / "secret", os.R_OK, False),
        (d / "secret", os.F_OK, True),
        (d / "tool", os.R_OK | os.X_OK, True),
        (d / "tool", os.W_OK, False),
        (d, os.W_OK, False),
        (d, os.R_OK | os.X_OK, True),
    ]
    code = (
        "import os, sys; print([os.access(p, int(m)) for p, m in zip(*[iter(sys.argv[1:])] * 2)])"
    )
    args = [str(a) for path, mode, _ in checks for a in (path, mode)]
    result = as_nobody(sys.executable, "-I", "-c", code, *args)
    assert result.stdout.strip() == str([want for _, _, want in checks]), result.stderr


def test_only_the_owner_may_change_modes_owners_and_times(d: Path) -> None:
    write(d / "f", b"")
    os.chmod(d / "f", 0o644)
    os.chmod(d, 0o755)
    f = d / "f"
    assert errno_elsewhere("os.chown(p[0], 65534, 65534)", f, nobody=True) == errno.EPERM
    assert errno_elsewhere("os.chmod(p[0], 0o777)", f, nobody=True) == errno.EPERM
    assert errno_elsewhere("os.utime(p[0], ns=(1, 1))", f, nobody=True) == errno.EPERM
    assert errno_elsewhere("os.utime(p[0])", f, nobody=True) == errno.EACCES  # no write access
    assert errno_elsewhere("os.setxattr(p[0], 'user.k', b'v')", f, nobody=True) == errno.EACCES
    st = f.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    os.chown(f, 65534, 65534)  # now the owner may
    assert errno_elsewhere("os.chmod(p[0], 0o600)", f, nobody=True) == 0
    assert errno_elsewhere("os.chown(p[0], 0, -1)", f, nobody=True) == errno.EPERM
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_a_sticky_directory_protects_other_users_files(d: Path) -> None:
    os.chmod(d, 0o1777)
    write(d / "roots", b"")
    os.chmod(d / "roots", 0o666)
    assert errno_elsewhere("os.unlink(p[0])", d / "roots", nobody=True) == errno.EPERM
    assert errno_elsewhere("os.rename(p[0], p[1])", d / "roots", d / "x", nobody=True) == (
        errno.EPERM
    )
    mine = "os.close(os.open(p[0], os.O_WRONLY | os.O_CREAT, 0o644)); os.unlink(p[0])"
    assert errno_elsewhere(mine, d / "mine", nobody=True) == 0
    assert os.listdir(d) == ["roots"]


def test_search_permission_is_needed_to_reach_a_file(d: Path) -> None:
    os.chmod(d, 0o755)
    (d / "locked").mkdir()
    write(d / "locked" / "f", b"x")
    os.chmod(d / "locked" / "f", 0o644)
    os.chmod(d / "locked", 0o700)
    f = d / "locked" / "f"
    assert errno_elsewhere("os.stat(p[0])", f, nobody=True) == errno.EACCES
    assert errno_elsewhere("os.listdir(p[0])", d / "locked", nobody=True) == errno.EACCES
    os.chmod(d / "locked", 0o711)  # search, but no listing
    assert errno_elsewhere("os.stat(p[0])", f, nobody=True) == 0
    assert errno_elsewhere("os.listdir(p[0])", d / "locked", nobody=True) == errno.EACCES


def test_executing_a_script_from_the_mount(d: Path) -> None:
    write(d / "script", b'#!/bin/sh\necho ran "$1"\n')
    os.chmod(d / "script", 0o755)
    result = subprocess.run([d / "script", "x"], capture_output=True, text=True, timeout=30)
    assert result.stdout == "ran x\n"
    os.chmod(d / "script", 0o644)
    assert errno_elsewhere("os.execv(p[0], [p[0]])", d / "script") == errno.EACCES


def test_flock_excludes_another_process(d: Path) -> None:
    write(d / "f", b"")
    try_lock = "fcntl.flock(os.open(p[0], os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    try_shared = "fcntl.flock(os.open(p[0], os.O_RDONLY), fcntl.LOCK_SH | fcntl.LOCK_NB)"
    fd = os.open(d / "f", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert errno_elsewhere(try_lock, d / "f") == errno.EWOULDBLOCK
        assert errno_elsewhere(try_shared, d / "f") == errno.EWOULDBLOCK
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert errno_elsewhere(try_shared, d / "f") == 0
        assert errno_elsewhere(try_lock, d / "f") == errno.EWOULDBLOCK
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert errno_elsewhere(try_lock, d / "f") == 0
    finally:
        os.close(fd)


def test_posix_record_locks_between_processes(d: Path) -> None:
    write(d / "f", bytes(200))

    def try_lock(start: int) -> int:
        statement = (
            "fcntl.lockf(os.open(p[0], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB, 10, int(p[1]))"
        )
        return errno_elsewhere(statement, d / "f", str(start))

    fd = os.open(d / "f", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0..9
        assert try_lock(5) in (errno.EAGAIN, errno.EACCES)
        assert try_lock(100) == 0  # another range is free
        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)
        assert try_lock(5) == 0
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
    finally:
        os.close(fd)  # closing any descriptor drops the process's locks
    assert try_lock(5) == 0


# --- concurrency ------------------------------------------------------------------------------


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
