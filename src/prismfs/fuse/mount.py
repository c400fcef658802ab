"""Serving a mount: connect to the cluster, mount with pyfuse3, run until unmounted.

`run_mount` is called by ``mount.prismfs``: by default it forks, the child
detaches (new session; logs to ``log=`` or syslog) and serves the mount, and
the parent returns only when the mount answers (or prints the child's
one-line error).
``-f`` keeps it in the foreground. Unmounting (``umount``/``fusermount3 -u``)
ends `pyfuse3.main`; buffered writes are committed and the client session
closed before the process exits. SIGTERM/SIGINT unmount the same way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from prismfs.client.data import DataClient
from prismfs.client.paths import resolve
from prismfs.errors import ConfigError, NotADirectory, NotFound, PrismError
from prismfs.exception_groups import single_exception
from prismfs.fuse import kernel_root
from prismfs.fuse.deferred import MountOptions
from prismfs.fuse.ops import PrismOperations
from prismfs.fuse.subdir import SubdirOperations
from prismfs.meta.client import MetaClient, keep_session
from prismfs.node.logs import setup_logging
from prismfs.procs import raise_open_file_limit
from prismfs.wire.auth import ClusterCredentials
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.tls import client_context

log = logging.getLogger("prismfs.fuse")

MOUNT_FAILURE = 32
"""mount(8)'s exit status for a mount that failed."""


@dataclass
class MountSpec:
    addresses: list[str]
    mountpoint: Path
    creds: ClusterCredentials
    tls_ca: Path | None = None
    insecure: bool = False  # no TLS (nodes started with --insecure)
    options: MountOptions = field(default_factory=MountOptions)
    allow_other: bool = False
    failtimeout: float = 60.0
    lease_s: float = 60.0
    log_file: Path | None = None
    log_level: str = "info"
    foreground: bool = False
    pidfile: Path | None = None
    fsname: str = "prismfs"  # the SOURCE argument: findmnt and mount -a match it
    kernel_flags: tuple[str, ...] = ()  # nosuid, nodev, noexec, ... for mount(2)
    auto_unmount: bool = True
    subdir: str | None = None  # the directory shown as the mount's root


def fuse_options(spec: MountSpec) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions
    opts |= {f"fsname={_fsname(spec.fsname)}", "subtype=prismfs", *spec.kernel_flags}
    if spec.allow_other:
        opts.add("allow_other")
    if spec.options.read_only:
        opts.add("ro")
    if spec.auto_unmount:
        # libfuse then mounts through fusermount3, which keeps a process that
        # unmounts once this one's /dev/fuse descriptor closes: a daemon
        # killed with SIGKILL leaves no "Transport endpoint is not connected".
        opts.add("auto_unmount")
    return opts


async def _operations(spec: MountSpec, meta: MetaClient, data: DataClient) -> PrismOperations:
    """The mount's operations; with a subdir, rooted at it (checked first:
    a missing subdir or a file is a one-line error before mounting)."""
    if spec.subdir is None:
        return PrismOperations(meta, data, spec.options)
    try:
        attr = await resolve(meta, spec.subdir)
    except NotFound:
        raise ConfigError(f"subdir {spec.subdir}: no such directory") from None
    except NotADirectory as exc:
        raise ConfigError(f"subdir {spec.subdir}: {exc.message}") from None
    if not stat.S_ISDIR(attr.mode):
        raise ConfigError(f"subdir {spec.subdir} is not a directory")
    kernel_root.set_mount_root(attr.ino)
    return SubdirOperations(meta, data, spec.options)


def _fsname(source: str) -> str:
    """The source as a libfuse option value: its option parser splits on
    commas (escaped with a backslash), and pyfuse3 passes options as ASCII."""
    if not source.isascii():
        return "prismfs"
    return source.replace("\\", "\\\\").replace(",", "\\,")


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


async def set_readahead(mountpoint: Path, kb: int) -> None:
    """Set the kernel's read-ahead for this mount to ``kb`` KiB.

    The kernel gives a FUSE mount the default 128 KiB, so a sequential reader
    is sent READs of 128-256 KiB; with 1 MiB (the most one READ carries with
    libfuse's 256 pages) it sends a quarter as many requests. The knob is
    the mount's backing device's ``read_ahead_kb`` in sysfs, found by the
    mount's device number in /proc/self/mountinfo (a stat of the mount point
    would ask this very daemon). The kernel sets it again when it gets the
    daemon's answer to its INIT request, so this waits until that is done
    (the value read back). Best effort: not being root, or no sysfs, leaves
    the kernel's default, with a log line."""
    if kb <= 0:
        return
    try:
        knob = await trio.to_thread.run_sync(_readahead_knob, mountpoint)
        for _ in range(50):
            await trio.sleep(0.1)
            await trio.to_thread.run_sync(knob.write_text, f"{kb}\n")
            await trio.sleep(0.1)
            if (await trio.to_thread.run_sync(knob.read_text)).strip() == str(kb):
                return
        raise OSError(f"{knob} does not keep {kb}")
    except OSError as exc:
        log.info("kernel read-ahead left at its default (%s)", exc)


def _readahead_knob(mountpoint: Path) -> Path:
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        devices = [line.split()[2] for line in f if _unescape(line.split()[4]) == target]
    if not devices:
        raise OSError(f"{target} is not in /proc/self/mountinfo")
    return Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb")


async def serve(spec: MountSpec, ready: int | None = None) -> None:
    raise_open_file_limit()
    ssl_ctx = client_context(spec.tls_ca) if spec.tls_ca and not spec.insecure else None
    if spec.insecure:
        log.warning("talking to the cluster without TLS (-o insecure)")
    async with open_rpc_pool(
        spec.creds,
        ssl_context=ssl_ctx,
        insecure=spec.insecure,
        connect_timeout=min(5.0, spec.failtimeout),
        client_name="mount.prismfs",
    ) as pool:
        meta = MetaClient(
            pool,
            spec.addresses,
            timeout=spec.failtimeout,
            attempt_timeout=min(10.0, spec.failtimeout),
        )
        await meta.open_session(spec.lease_s)
        data = DataClient(pool, meta, shard_timeout=min(30.0, spec.failtimeout))
        try:
            ops = await _operations(spec, meta, data)
            try:
                pyfuse3.init(ops, str(spec.mountpoint), fuse_options(spec))
            except RuntimeError as exc:  # libfuse printed its reason on stderr
                raise ConfigError(f"libfuse could not mount {spec.mountpoint} ({exc})") from None
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(PrismError):
                await meta.close_session()  # not left for the leader to expire
            raise
        log.info(
            "mounted %s%s at %s",
            ",".join(spec.addresses),
            f" (subdir {spec.subdir})" if spec.subdir else "",
            spec.mountpoint,
        )
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for _ in signals:
                            log.info("signal: unmounting")
                            pyfuse3.terminate()
                            return

                nursery.start_soon(keep_session, meta)
                nursery.start_soon(on_signal)
                nursery.start_soon(ops.background)
                nursery.start_soon(set_readahead, spec.mountpoint, spec.options.readahead_kb)
                if ready is not None:
                    os.write(ready, b"ok")  # the parent stops reading here
                await pyfuse3.main()
                unmounted = True
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await ops.close_all()
                pyfuse3.close(unmount=not unmounted)
                try:
                    await meta.close_session()
                except Exception as exc:
                    log.warning("could not close the session: %s", exc)
        log.info("unmounted %s", spec.mountpoint)


def syslog_socket() -> str:
    """Where syslog (or journald, which listens there too) takes messages:
    ``$PRISMFS_SYSLOG``, else /dev/log."""
    return os.environ.get("PRISMFS_SYSLOG") or "/dev/log"


def log_target(spec: MountSpec) -> str:
    """Where the daemon's messages go: the ``log=`` file, stderr in the
    foreground, else syslog (when nothing listens there, nowhere)."""
    if spec.log_file is not None:
        return str(spec.log_file)
    if spec.foreground:
        return "stderr"
    return f"syslog ({syslog_socket()})" if Path(syslog_socket()).exists() else "nowhere"


def _setup_logging(spec: MountSpec) -> None:
    """The node's line format, with ``node=mount``."""
    handler: logging.Handler | None = None
    if spec.log_file is None and not spec.foreground:
        try:
            syslog = logging.handlers.SysLogHandler(syslog_socket())
            syslog.ident = f"mount.prismfs[{os.getpid()}]: "
            handler = syslog
        except OSError:  # nothing listens: the parent said so before detaching
            handler = logging.NullHandler()
    setup_logging("mount", spec.log_level, str(spec.log_file or ""), handler=handler)


def _write_pidfile(spec: MountSpec) -> None:
    if spec.pidfile is None:
        return
    try:
        spec.pidfile.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the pidfile {spec.pidfile}: {exc.strerror}") from None


def run_mount(spec: MountSpec) -> int:
    """Mount; returns an exit status (0 once the mount answers). A mount that
    fails raises `PrismError` in the foreground; a daemon that fails makes
    this print its one-line reason and return `MOUNT_FAILURE`."""
    if not spec.mountpoint.is_dir():
        raise ConfigError(f"mount point {spec.mountpoint} is not a directory")
    if spec.foreground:
        _write_pidfile(spec)
        _setup_logging(spec)
        with single_exception():
            trio.run(serve, spec)
        return 0
    if log_target(spec) == "nowhere":
        print(
            f"mount.prismfs: nothing listens at {syslog_socket()}: the daemon's messages are lost "
            "(give -o log=FILE)",
            file=sys.stderr,
        )
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)  # the daemon below is adopted by init, which reaps it
        os._exit(_daemon(spec, write_end))
    os.close(write_end)
    os.waitpid(pid, 0)  # the intermediate process exits at once
    chunks = []
    while True:
        block = os.read(read_end, 4096)
        if not block:
            break
        chunks.append(block)
        if b"".join(chunks).startswith(b"ok"):
            break
    os.close(read_end)
    message = b"".join(chunks).decode(errors="replace")
    if message.startswith("ok"):
        _wait_answering(spec.mountpoint)
        return 0
    detail = message.removeprefix("error: ") or "the mount process ended before mounting"
    print(f"mount.prismfs: {detail}", file=sys.stderr)
    return MOUNT_FAILURE


def _daemon(spec: MountSpec, ready: int) -> int:
    """The detached daemon: serve until unmounted; a failure before the mount
    answers goes to the parent through ``ready``, one line, and to the log,
    with a traceback only for what is not a `PrismError` (a bug)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    out = devnull
    if spec.log_file is not None:
        # libfuse and fusermount3 print their reasons on stderr: into the log.
        with contextlib.suppress(OSError):
            out = os.open(spec.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    code = 0
    try:
        _write_pidfile(spec)
        _setup_logging(spec)
        with single_exception():
            trio.run(serve, spec, ready)
    except PrismError as exc:
        log.error("mount failed: %s", exc.message)
        reason = exc.message
        code = 1
    except BaseException as exc:  # reported to the parent through the pipe
        log.exception("mount failed")
        reason = f"{type(exc).__name__}: {exc}"
        code = 1
    if code:
        with contextlib.suppress(OSError):  # EPIPE: the parent left after "ok"
            os.write(ready, f"error: {reason}".encode()[:4000])
    os.close(ready)
    return code


def _wait_answering(mountpoint: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.stat(mountpoint)
            with open("/proc/mounts") as f:
                if any(line.split()[1] == str(mountpoint) for line in f):
                    return
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.ENOENT):
                raise
        time.sleep(0.05)
