"""Serving a mount: connect to the cluster, mount with pyfuse3, run until unmounted.

`run_mount` is called by ``mount.prismfs``: by default it forks, the child
detaches (new session, output to the log file) and serves the mount, and the
parent returns only when the mount answers (or with the child's error).
``-f`` keeps it in the foreground. Unmounting (``umount``/``fusermount3 -u``)
ends `pyfuse3.main`; buffered writes are committed and the client session
closed before the process exits. SIGTERM/SIGINT unmount the same way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from prismfs.client.data import DataClient
from prismfs.errors import ConfigError
from prismfs.fuse.deferred import MountOptions
from prismfs.fuse.ops import PrismOperations
from prismfs.meta.client import MetaClient, keep_session
from prismfs.procs import raise_open_file_limit
from prismfs.wire.auth import ClusterCredentials
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.tls import client_context

log = logging.getLogger("prismfs.fuse")


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
    foreground: bool = False
    pidfile: Path | None = None


def fuse_options(spec: MountSpec) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions
    opts |= {"fsname=prismfs", "subtype=prismfs"}
    if spec.allow_other:
        opts.add("allow_other")
    if spec.options.read_only:
        opts.add("ro")
    return opts


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
        ops = PrismOperations(meta, data, spec.options)
        pyfuse3.init(ops, str(spec.mountpoint), fuse_options(spec))
        log.info("mounted %s at %s", ",".join(spec.addresses), spec.mountpoint)
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
                    os.write(ready, b"ok")
                    os.close(ready)
                    ready = None
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


def _setup_logging(spec: MountSpec) -> None:
    handlers: list[logging.Handler] = []
    if spec.log_file is not None:
        handlers.append(logging.FileHandler(spec.log_file))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s mount %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def run_mount(spec: MountSpec) -> int:
    """Mount; returns an exit status (0 once the mount answers)."""
    if not spec.mountpoint.is_dir():
        raise ConfigError(f"mount point {spec.mountpoint} is not a directory")
    if spec.foreground:
        if spec.pidfile is not None:
            spec.pidfile.write_text(f"{os.getpid()}\n")
        _setup_logging(spec)
        trio.run(serve, spec)
        return 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)  # the daemon below is adopted by init, which reaps it
        if spec.pidfile is not None:
            spec.pidfile.write_text(f"{os.getpid()}\n")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        if spec.log_file is not None:
            out = os.open(spec.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(out, 1)
            os.dup2(out, 2)
        else:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        _setup_logging(spec)
        code = 0
        try:
            trio.run(serve, spec, write_end)
        except BaseException as exc:  # reported to the parent through the pipe
            log.exception("mount failed")
            with contextlib.suppress(OSError):
                os.write(write_end, f"error: {exc}".encode()[:4000])
            code = 1
        os._exit(code)
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
    return 32


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
