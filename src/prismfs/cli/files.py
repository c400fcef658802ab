"""File commands: put, get, ls, stat, rm, mkdir (paths inside the cluster start at /)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat as stat_mod
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import trio

from prismfs.cli import http_files
from prismfs.client.config import ClientConfig
from prismfs.client.data import DataClient
from prismfs.client.files import get_file, local_reader, put_file
from prismfs.client.paths import (
    Caller,
    W,
    X,
    make_dirs,
    remove_tree,
    resolve,
    resolve_parent,
    split,
)
from prismfs.data.layout import LAYOUT_XATTR, Layout
from prismfs.data.stores import shard_id
from prismfs.errors import InvalidArgument, NotFound, PrismError, Unavailable
from prismfs.meta.client import MetaClient, open_meta_client
from prismfs.meta.commands import Attr, ChunkRecord, NodeInfo
from prismfs.meta.schema import NAME_MAX
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.messages import Ping

REACH_TIMEOUT_S = 5.0
"""How long a command waits for any node of its cluster to answer before it
gives up, naming the addresses it tried (the namespace calls themselves keep
the client's longer deadline, for a leader election under way)."""


class ClusterPath(click.ParamType[str, str]):
    """A path inside the cluster, checked before anything connects: absolute,
    UTF-8, no NUL, no ``.`` or ``..``, no name over NAME_MAX bytes."""

    name = "PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.startswith("/"):
            self.fail(f"cluster paths start with /: {text!r}", param, ctx)
        try:
            names = [p.encode() for p in text.split("/") if p]
        except UnicodeEncodeError:
            self.fail("a path must be valid UTF-8", param, ctx)
        for name in names:
            if b"\0" in name:
                self.fail("a path has no NUL character", param, ctx)
            if name in (b".", b".."):
                self.fail(f"cluster paths have no . or .. in them: {text!r}", param, ctx)
            if len(name) > NAME_MAX:
                self.fail(f"a name of {len(name)} bytes is longer than {NAME_MAX}", param, ctx)
        return text


CLUSTER_PATH = ClusterPath()


async def reach(pool: RpcPool, addresses: tuple[str, ...] | list[str]) -> None:
    """Return once any of ``addresses`` answers a ping; raise `Unavailable`
    naming every address and why it failed if none does within
    `REACH_TIMEOUT_S` (all are tried at once)."""
    failures: dict[str, str] = {}
    refused: list[PrismError] = []
    async with trio.open_nursery() as nursery:

        async def ping(address: str) -> None:
            try:
                await pool.call(address, Ping(), timeout=REACH_TIMEOUT_S)
            except PrismError as exc:
                if not exc.transient:  # a wrong secret or TLS setup: say so
                    refused.append(exc)
                failures[address] = exc.message
                return
            nursery.cancel_scope.cancel()

        for address in addresses:
            nursery.start_soon(ping, address)
    if len(failures) == len(addresses) and refused:
        raise refused[0]  # (raised here, not in the task: no exception group)
    if len(failures) == len(addresses):
        raise Unavailable(
            f"no node of the cluster answered within {REACH_TIMEOUT_S:g}s: "
            + "; ".join(f"{a} ({why})" for a, why in failures.items())
        )


@asynccontextmanager
async def connect(client: ClientConfig) -> AsyncIterator[tuple[MetaClient, DataClient]]:
    async with open_rpc_pool(
        client.credentials(), **client.tls(), connect_timeout=3, client_name="prismfs-cli"
    ) as pool:
        await reach(pool, client.addresses)
        async with open_meta_client(pool, client.addresses, lease_s=session_lease()) as meta:
            yield meta, DataClient(pool, meta)


def local_failure(exc: OSError, path: Path | str) -> InvalidArgument:
    """A local file problem as one line naming the file."""
    return InvalidArgument(f"{path}: {exc.strerror or exc}")


def check_destination(local: Path) -> None:
    """``get`` fails before connecting when LOCAL's directory does not exist."""
    if str(local) == "-" or local.is_dir():
        return
    parent = local.parent
    if not parent.is_dir():
        raise InvalidArgument(f"{local}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{local}: directory {parent} is not writable")


def session_lease() -> float:
    """The client session's lease: how long after a crash this client's open
    files are reclaimed. ``PRISMFS_SESSION_LEASE_S``, default 60."""
    raw = os.environ.get("PRISMFS_SESSION_LEASE_S", "60")
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"PRISMFS_SESSION_LEASE_S={raw!r} is not a number") from None
    if not 1 <= value <= 86400:
        raise InvalidArgument("PRISMFS_SESSION_LEASE_S must be between 1 and 86400")
    return value


BAR_MIN_BYTES = 8 * 1024 * 1024
"""Transfers smaller than this show no progress bar (they are over at once)."""


@contextlib.contextmanager
def transfer_bar(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for a transfer of ``total`` bytes (-1:
    unknown): none for small transfers or when stderr is not a terminal, so
    scripts and logs never see one. Yields the callback to count bytes."""
    if total < BAR_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def attr_json(name: str, a: Attr) -> dict[str, Any]:
    """One entry of ``ls --json`` (and the head of ``stat --json``)."""
    return {
        "name": name,
        "ino": a.ino,
        "type": _kind(a.mode),
        "mode": f"{a.mode & 0o7777:04o}",
        "nlink": a.nlink,
        "uid": a.uid,
        "gid": a.gid,
        "size": a.size,
        "mtime_ns": a.mtime_ns,
        "ctime_ns": a.ctime_ns,
    }


def _kind(mode: int) -> str:
    if stat_mod.S_ISDIR(mode):
        return "dir"
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


def chunk_json(index: int, r: ChunkRecord, nodes: dict[str, NodeInfo]) -> dict[str, Any]:
    """Where one chunk lives: each shard's index, node, its address and state."""

    def shard(i: int, node: str) -> dict[str, Any]:
        info = nodes.get(node)
        return {
            "index": i,
            "node": node,
            "address": info.address if info else None,
            "state": info.state if info else "unknown",
            "name": shard_id(r.id, i),
        }

    return {
        "index": index,
        "id": r.id.hex(),
        "length": r.length,
        "inline": r.is_inline,
        "k": r.k,
        "m": r.m,
        "shards": [shard(i, node) for i, node in enumerate(r.nodes)],
    }


def http_options(func: Any) -> Any:
    """--http/--token: run a file command over the HTTP API (no cluster secret)."""
    func = click.option(
        "--token", envvar="PRISMFS_TOKEN", help="API token for --http (or $PRISMFS_TOKEN)."
    )(func)
    return click.option(
        "--http",
        "http_url",
        envvar="PRISMFS_HTTP",
        metavar="URL",
        help="Use a node's HTTP API (http://HOST:PORT) instead of RPC (or $PRISMFS_HTTP).",
    )(func)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def register(cli: click.Group, client_options: Callable[[Any], Any]) -> None:
    @cli.command("put")
    @client_options
    @click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.argument("remote", type=CLUSTER_PATH)
    @click.option("--layout", help="k=,m=,chunk= for this file (default: from its directory).")
    @http_options
    @json_option
    def put(
        client: ClientConfig,
        local: Path,
        remote: str,
        layout: str | None,
        http_url: str | None,
        token: str | None,
        as_json: bool,
    ) -> None:
        """Copy a local file into the cluster (replaces REMOTE atomically)."""
        chosen = Layout.parse(layout) if layout else None
        try:  # an unreadable file fails here, before anything connects
            st = local.stat()
            if not stat_mod.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
                raise InvalidArgument(f"{local} is not a regular file: put copies files")
            os.close(os.open(local, os.O_RDONLY | os.O_NONBLOCK))
        except OSError as exc:
            raise local_failure(exc, local) from None
        size, file_mode = st.st_size, st.st_mode & 0o7777
        if http_url:
            with transfer_bar(size, f"put {local.name}") as progress:
                target = http_files.put(http_url, token, local, remote, layout, progress)
            if as_json:
                emit_json({"local": str(local), "remote": target, "size": size})
            return

        me = Caller(os.getuid(), os.getgid())  # the file is the caller's, as with cp

        async def run() -> tuple[str, int]:
            async with connect(client) as (meta, data):
                target = remote
                with contextlib.suppress(NotFound):
                    if remote.endswith("/") or stat_mod.S_ISDIR((await resolve(meta, remote)).mode):
                        target = remote.rstrip("/") + "/" + local.name
                parent, name = await resolve_parent(meta, target, me)
                me.check(parent, W | X, target.rsplit("/", 1)[0] or "/")
                read, close = local_reader(str(local))
                try:
                    with transfer_bar(size, f"put {local.name}") as progress:
                        ino = await put_file(
                            meta,
                            data,
                            parent.ino,
                            name,
                            read,
                            layout=chosen,
                            mode=file_mode,
                            uid=me.uid,
                            gid=me.gid,
                            progress=progress,
                        )
                        return target, ino
                finally:
                    close()

        target, ino = trio.run(run)
        if as_json:
            emit_json({"local": str(local), "remote": target, "size": size, "ino": ino})

    @cli.command("get")
    @client_options
    @click.argument("remote", type=CLUSTER_PATH)
    @click.argument("local", type=click.Path(dir_okay=True, path_type=Path))
    @http_options
    @json_option
    def get(
        client: ClientConfig,
        remote: str,
        local: Path,
        http_url: str | None,
        token: str | None,
        as_json: bool,
    ) -> None:
        """Copy a file out of the cluster (LOCAL "-" writes to standard output)."""
        check_destination(local)
        if as_json and str(local) == "-":
            raise click.UsageError("--json needs a LOCAL file: '-' writes the data to stdout")
        if http_url:
            written, size = http_files.get(
                http_url, token, remote, local, lambda total: transfer_bar(total, f"get {remote}")
            )
            if as_json:
                emit_json({"remote": remote, "local": written, "size": size})
            return

        local_is_dir = local.is_dir()

        async def run() -> tuple[str, int]:
            async with connect(client) as (meta, data):
                attr = await resolve(meta, remote)
                if stat_mod.S_ISDIR(attr.mode):
                    raise InvalidArgument(f"{remote} is a directory")
                target = local / split(remote)[-1].decode() if local_is_dir else local
                if str(local) == "-":
                    out = sys.stdout.buffer

                    async def write(block: bytes) -> None:
                        out.write(block)

                    await get_file(meta, data, attr.ino, write)
                    out.flush()
                    return "-", attr.size
                tmp = target.with_name(f".{target.name}.prismfs-part")
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                except OSError as exc:
                    raise local_failure(exc, target) from None
                try:
                    with transfer_bar(attr.size, f"get {target.name}") as progress:

                        async def write_fd(block: bytes) -> None:
                            view = memoryview(block)
                            try:
                                while view:
                                    written = await trio.to_thread.run_sync(os.write, fd, view)
                                    view = view[written:]
                            except OSError as exc:
                                raise local_failure(exc, target) from None

                        await get_file(meta, data, attr.ino, write_fd, progress=progress)
                    os.fsync(fd)
                except BaseException:
                    tmp.unlink(missing_ok=True)  # no partial copy left behind
                    raise
                finally:
                    os.close(fd)
                try:
                    tmp.replace(target)  # only a complete copy takes the name
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise local_failure(exc, target) from None
                return str(target), os.stat(target).st_size

        written, size = trio.run(run)
        if as_json:
            emit_json({"remote": remote, "local": written, "size": size})

    @cli.command("ls")
    @client_options
    @click.argument("path", default="/", type=CLUSTER_PATH)
    @click.option("-l", "long", is_flag=True, help="Mode, size, time.")
    @http_options
    @json_option
    def ls(
        client: ClientConfig,
        path: str,
        long: bool,
        http_url: str | None,
        token: str | None,
        as_json: bool,
    ) -> None:
        """List a directory (a file: just it)."""
        if http_url:
            http_files.ls(http_url, token, path, long, as_json)
            return

        async def run() -> list[tuple[bytes, Attr]]:
            async with connect(client) as (meta, _):
                attr = await resolve(meta, path)
                if not stat_mod.S_ISDIR(attr.mode):
                    return [(split(path)[-1], attr)]
                return sorted([(e.name, e.attr) async for e in meta.readdir(attr.ino)])

        entries = trio.run(run)
        if as_json:
            emit_json([attr_json(n.decode(errors="replace"), a) for n, a in entries])
            return
        for name, a in entries:
            shown = name.decode(errors="replace")
            if long:
                when = datetime.datetime.fromtimestamp(a.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
                click.echo(f"{stat_mod.filemode(a.mode)} {a.nlink:>3} {a.size:>12} {when} {shown}")
            else:
                click.echo(shown)

    @cli.command("stat")
    @client_options
    @click.argument("path", type=CLUSTER_PATH)
    @json_option
    def stat(client: ClientConfig, path: str, as_json: bool) -> None:
        """Attributes of a file or directory, and where a file's chunks are
        (with --json: every chunk's shards and the nodes holding them)."""

        async def run() -> tuple[Attr, dict[str, Any]]:
            async with connect(client) as (meta, data):
                a = await resolve(meta, path)
                out = {
                    "path": path,
                    **attr_json(split(path)[-1].decode() if split(path) else "/", a),
                }
                if stat_mod.S_ISDIR(a.mode):
                    text = (await meta.layout(a.ino)).decode()
                    out["layout"] = text or str(Layout())
                    out["layout_is_default"] = not text
                elif stat_mod.S_ISREG(a.mode):
                    cmap = await meta.chunk_map_all(a.ino)
                    nodes = await data.nodes()
                    out["chunk_size"] = cmap.chunk_size
                    out["chunks"] = [chunk_json(i, r, nodes) for i, r in cmap.chunks]
                return a, out

        a, info = trio.run(run)
        if as_json:
            emit_json(info)
            return
        click.echo(f"path:   {path}")
        click.echo(f"inode:  {a.ino}")
        click.echo(f"mode:   {stat_mod.filemode(a.mode)} ({a.mode & 0o7777:o})")
        click.echo(f"links:  {a.nlink}   uid: {a.uid}   gid: {a.gid}")
        click.echo(f"size:   {a.size}")
        for label, ns in (("mtime", a.mtime_ns), ("ctime", a.ctime_ns)):
            when = datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ")
            click.echo(f"{label}:  {when}")
        if "layout" in info:
            default = " (default)" if info["layout_is_default"] else ""
            click.echo(f"layout: {info['layout']}{default} (for new files)")
        if "chunks" in info:
            chunks = info["chunks"]
            geometry = sorted({(c["k"], c["m"]) for c in chunks if not c["inline"]})
            click.echo(
                f"chunks: {len(chunks)} of {info['chunk_size']} bytes, k/m {geometry or '-'}"
            )
            for c in chunks[:8]:
                where = (
                    "inline" if c["inline"] else "on " + ", ".join(s["node"] for s in c["shards"])
                )
                click.echo(f"  [{c['index']}] {c['id']} {c['length']} B {where}")
            if len(chunks) > 8:
                click.echo(f"  ... {len(chunks) - 8} more (all of them: stat --json)")

    @cli.command("rm")
    @client_options
    @click.argument("path", type=CLUSTER_PATH)
    @click.option("-r", "recursive", is_flag=True, help="Remove a directory and everything in it.")
    @http_options
    def rm(
        client: ClientConfig, path: str, recursive: bool, http_url: str | None, token: str | None
    ) -> None:
        """Remove a file (or, with -r, a directory tree)."""
        if http_url:
            http_files.rm(http_url, token, path, recursive)
            return

        async def run() -> None:
            async with connect(client) as (meta, _):
                parent, name = await resolve_parent(meta, path)
                attr = await meta.lookup(parent.ino, name)
                if stat_mod.S_ISDIR(attr.mode) and not recursive:
                    raise InvalidArgument(f"{path} is a directory (use -r)")
                await remove_tree(meta, parent.ino, name, attr)

        trio.run(run)

    @cli.command("mkdir")
    @client_options
    @click.argument("path", type=CLUSTER_PATH)
    @click.option(
        "-p", "parents", is_flag=True, help="Make parents as needed; no error if it exists."
    )
    @click.option("--layout", help="k=,m=,chunk= for new files below it (prismfs.layout).")
    def mkdir(client: ClientConfig, path: str, parents: bool, layout: str | None) -> None:
        """Make a directory."""
        if layout:
            Layout.parse(layout)

        async def run() -> None:
            async with connect(client) as (meta, _):
                me = Caller(os.getuid(), os.getgid())
                ino = (await make_dirs(meta, path, parents=parents, caller=me))[0].ino
                if layout:
                    await meta.setxattr(ino, LAYOUT_XATTR, layout.encode())

        trio.run(run)
