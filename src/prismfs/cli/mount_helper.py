"""``mount.prismfs SOURCE MOUNTPOINT [-o OPTIONS]``: the mount(8) helper.

SOURCE is ``ADDR[,ADDR...]`` of cluster nodes (with ``-o secret=FILE``), or
the path of a ``client.toml``; it becomes the mount's name (fsname). It is
called exactly as mount(8) calls a helper (``mount -t prismfs SOURCE DIR -o
...`` and ``/etc/fstab``); ``-n``, ``-s`` and ``-v`` are accepted, ``-f``
keeps the mount in the foreground. The options (``KNOWN``, the generic
``KERNEL_FLAGS`` and the ``IGNORED`` fstab-only ones) are described in
docs/mount.md, with the exit status: 0 once the mount answers, 1 for a bad
option or path, 2 for a bad command line (argparse), 32 for a failed mount.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from prismfs.client.config import ClientConfig, load_client_toml
from prismfs.config_files import option_number
from prismfs.errors import ConfigError, InvalidArgument, PrismError
from prismfs.wire.address import parse_address

MOUNT_FAILURE = 32
USAGE_ERROR = 1

KERNEL_FLAGS = {"nosuid", "nodev", "noexec", "suid", "dev", "exec", "sync", "async", "dirsync"}
"""Generic mount(8) flags libfuse hands to the kernel (``mount(2)`` flags)."""

IGNORED = {
    "defaults",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "rw",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "comment",
}
"""Options for mount(8), fstab and systemd, or VFS flags a FUSE mount cannot
take (libfuse refuses ``nodiratime`` and ``lazytime``; a FUSE file system
keeps its own times): accepted and ignored, as other mount helpers do.
``x-*`` too."""

LOG_LEVELS = ("debug", "info", "warning", "error")

OPTIONS = {
    "secret=FILE": "a credential: client.secret or one from `prismfs credentials create`"
    " (a read-only one makes the mount read-only)",
    "tls_ca=FILE": "the CA of nodes started with --tls-cert (default: the cluster CA the"
    " credential carries)",
    "insecure": "no TLS, for nodes started with --insecure",
    "subdir=/PATH": "show this directory of the file system as the mount's root",
    "ro": "a read-only mount (writes answer EROFS)",
    "allow_other": "let users other than the mounting one use the mount",
    "attr_timeout=S": "how long the kernel caches attributes (default 1)",
    "entry_timeout=S": "with no_leases, how long the kernel caches names (default 1)",
    "writeback_mb=N": "buffered writes per open file before they are committed (default 64)",
    "writeback_s=S": "buffered writes are committed at the latest this long after (default 30)",
    "failmode=wait|eio": "wait retries an unreachable cluster for failtimeout, eio for 5 s;"
    " then EIO",
    "failtimeout=S": "see failmode (default 60); also how long mounting waits for the cluster",
    "log=FILE": "the daemon's log (default: syslog; stderr with -f)",
    "loglevel=LEVEL": "debug, info (default), warning or error",
    "foreground": "serve in the foreground, logging on stderr (as -f)",
    "lease=S": "the client session's lease (default 60)",
    "pidfile=FILE": "the daemon writes its pid there",
    "sync_meta": "send every create and unlink to the cluster before it returns",
    "no_leases": "take no directory leases",
    "settle_s=S": "how long a held-back change stays unsent at most (default 1)",
    "noatime": "reads do not move atime",
    "relatime": "reads move atime as relatime does (the default)",
    "readahead_kb=N": "the kernel's read-ahead on this mount (default 1024; 0 leaves the kernel's)",
    "no_auto_unmount": "do not mount with auto_unmount (needed for suid and dev)",
}
"""The mount's own options and what they do (mount.prismfs(8) is made from
this table; docs/mount.md says more)."""
KNOWN = {name.partition("=")[0] for name in OPTIONS}


def option_help() -> list[tuple[str, str]]:
    """Every option mount.prismfs takes, with its help, for the manual page."""
    generic = sorted(KERNEL_FLAGS)
    return [
        *OPTIONS.items(),
        (", ".join(generic), "generic mount flags, given to the kernel (suid and dev only"
         " with no_auto_unmount)"),
        (", ".join(sorted(IGNORED)) + ", x-*", "mount(8), fstab and systemd options:"
         " accepted and ignored"),
    ]  # fmt: skip


def parse_options(text: str) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if key in IGNORED or key.startswith("x-"):
            continue
        if key not in KNOWN and key not in KERNEL_FLAGS:
            raise InvalidArgument(f"unknown mount option {key!r}")
        options[key] = value if sep else None
    return options


def kernel_flags(options: dict[str, str | None]) -> tuple[str, ...]:
    """The generic flags asked for, checked against ``auto_unmount``: libfuse
    mounts through fusermount3 for it, which always sets nosuid and nodev."""
    flags = tuple(sorted(key for key in options if key in KERNEL_FLAGS))
    if "no_auto_unmount" not in options:
        refused = [flag for flag in flags if flag in ("suid", "dev")]
        if refused:
            raise InvalidArgument(
                f"{' and '.join(refused)} need{'s' if len(refused) == 1 else ''} no_auto_unmount "
                "(auto_unmount mounts "
                "through fusermount3, which always sets nosuid,nodev)"
            )
    return flags


def writable_parent(path: Path, what: str) -> Path:
    """``path`` resolved, once its directory exists and can be written: the
    daemon opens it after detaching, where an error could only be reported
    through the pipe."""
    path = path.resolve()
    if not path.parent.is_dir():
        raise ConfigError(f"the directory of the {what} {path} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"the directory of the {what} {path} is not writable")
    return path


def build_spec(source: str, mountpoint: str, text: str, foreground: bool):  # type: ignore[no-untyped-def]
    import dataclasses

    from prismfs.fuse.deferred import MountOptions
    from prismfs.fuse.mount import MountSpec
    from prismfs.wire.auth import READ_ONLY

    options = parse_options(text)
    if source.endswith(".toml"):
        client = load_client_toml(Path(source))
    else:
        addresses = tuple(a.strip() for a in source.split(",") if a.strip())
        for address in addresses:
            parse_address(address, default_port=7070)
        secret = options.get("secret")
        if not secret:
            raise ConfigError("give the cluster secret: -o secret=/path/to/cluster.secret")
        client = ClientConfig(addresses, Path(secret), None, "mount source")
    failmode = options.get("failmode") or "wait"
    if failmode not in ("wait", "eio"):
        raise InvalidArgument("failmode is wait or eio")
    failtimeout = option_number(
        options, "failtimeout", 60.0 if failmode == "wait" else 5.0, 1, 86400
    )
    tls_ca = options.get("tls_ca") or (str(client.tls_ca) if client.tls_ca else None)
    log = options.get("log")
    pidfile = options.get("pidfile")
    log_level = options.get("loglevel") or "info"
    if log_level not in LOG_LEVELS:
        raise InvalidArgument(f"loglevel is one of {', '.join(LOG_LEVELS)}")
    flags = kernel_flags(options)
    mount_options = MountOptions(
        attr_timeout=option_number(options, "attr_timeout", 1.0, 0, 3600),
        entry_timeout=option_number(options, "entry_timeout", 1.0, 0, 3600),
        writeback_mb=int(option_number(options, "writeback_mb", 64, 1, 4096)),
        writeback_s=option_number(options, "writeback_s", 30.0, 0.1, 3600),
        read_only="ro" in options,
        batch_meta="sync_meta" not in options,
        settle_s=option_number(options, "settle_s", 1.0, 0, 3600),
        atime="noatime" not in options,
        leases="no_leases" not in options,
        readahead_kb=int(option_number(options, "readahead_kb", 1024, 0, 65536)),
    )
    lease = option_number(options, "lease", 60.0, 2, 3600)
    creds = client.credentials()
    if creds.role == READ_ONLY:
        # A read-only credential can change nothing: the mount says so
        # (EROFS) instead of failing each write at the cluster, and records
        # no atime.
        mount_options = dataclasses.replace(mount_options, read_only=True, atime=False)
    return MountSpec(
        addresses=list(client.addresses),
        mountpoint=Path(mountpoint).resolve(),
        creds=creds,
        tls_ca=Path(tls_ca) if tls_ca else None,
        insecure="insecure" in options or client.insecure,
        options=mount_options,
        allow_other="allow_other" in options,
        failtimeout=failtimeout,
        lease_s=lease,
        log_file=writable_parent(Path(log), "log") if log else None,
        log_level=log_level,
        pidfile=writable_parent(Path(pidfile), "pidfile") if pidfile else None,
        foreground=foreground or "foreground" in options,
        fsname=source,
        kernel_flags=flags,
        auto_unmount="no_auto_unmount" not in options,
        subdir=subdir_option(options.get("subdir")),
    )


def subdir_option(value: str | None) -> str | None:
    """``subdir=/projects/a``: the directory shown as the mount's root."""
    if value is None:
        return None
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"subdir {value!r} may not contain '..'")
    return "/" + "/".join(parts) if parts else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mount.prismfs", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="ADDR[,ADDR...] of cluster nodes, or a client.toml")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="", help="comma-separated mount options")
    parser.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    for flag in ("-n", "-s", "-v"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    try:
        spec = build_spec(args.source, args.mountpoint, args.options, args.foreground)
    except PrismError as exc:
        print(f"mount.prismfs: {exc.message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    from prismfs.fuse.mount import run_mount

    try:
        sys.exit(run_mount(spec))
    except PrismError as exc:
        print(f"mount.prismfs: {exc.message}", file=sys.stderr)
        sys.exit(MOUNT_FAILURE)
