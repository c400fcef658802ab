"""``prismfs cluster backup FILE`` and ``prismfs node recover``: the metadata's
backups, and bringing the metadata group back after a lost majority.

A backup is made online by the leader (`prismfs.leader.backup`) and read
here in pieces into ``FILE.part``, checked against the leader's checksum,
then fsynced and renamed: ``FILE`` is either a whole, checked backup or
absent. ``node recover`` runs offline on a stopped node
(`prismfs.node.recover`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio

from prismfs.client.config import ClientConfig
from prismfs.client.leader import call_leader
from prismfs.durable import fsync_dir
from prismfs.errors import ConfigError, PrismError, ProtocolError
from prismfs.leader.backup import (
    MAX_PIECE,
    BackupPiece,
    BackupReady,
    EndBackup,
    ReadBackup,
    StartBackup,
)
from prismfs.node.recover import recover
from prismfs.raft.durable_log import file_digest
from prismfs.wire.client import RpcPool, open_rpc_pool


async def _backup(
    client: ClientConfig, out: Path, progress: Callable[[int, int], None]
) -> BackupReady:
    async with open_rpc_pool(
        client.credentials(), **client.tls(), connect_timeout=3, call_timeout=60,
        client_name="prismfs-cli",
    ) as pool:  # fmt: skip
        ready = await call_leader(pool, client.addresses, StartBackup(), BackupReady, 3600.0)
        try:
            await _receive(pool, ready, out, progress)
        finally:
            # Whatever happened here, the leader's copy is released.
            with trio.CancelScope(shield=True), contextlib.suppress(PrismError):
                await pool.call(ready.address, EndBackup(ready.backup), timeout=10)
    return ready


async def _receive(
    pool: RpcPool, ready: BackupReady, out: Path, progress: Callable[[int, int], None]
) -> None:
    """Read the backup into ``.OUT.part``, check what is on disk, then rename it
    to ``out``: ``out`` is a whole, checked backup or nothing."""
    part = out.with_name(f".{out.name}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # The CLI runs nothing else on its event loop: plain blocking writes.
        with open(fd, "wb") as f:  # noqa: ASYNC230
            offset = 0
            while offset < ready.size:
                reply = await pool.call(
                    ready.address, ReadBackup(ready.backup, offset, MAX_PIECE), timeout=60
                )
                if not isinstance(reply.message, BackupPiece) or not reply.payload:
                    raise ProtocolError(f"the backup ended early at byte {offset} of {ready.size}")
                f.write(reply.payload)  # buffered: all of it, or OSError
                offset += len(reply.payload)
                progress(offset, ready.size)
            f.flush()
            os.fsync(f.fileno())
        checksum, size = await trio.to_thread.run_sync(file_digest, part)
        if (checksum, size) != (ready.checksum, ready.size):
            raise ProtocolError(
                f"the backup written ({size} bytes) does not match the leader's copy"
                f" ({ready.size} bytes): nothing was kept"
            )
        os.replace(part, out)
        fsync_dir(out.parent)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the backup to {out}: {exc.strerror or exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def register(cluster: click.Group, node: click.Group, client_options: Callable[[Any], Any]) -> None:
    @cluster.command("backup")
    @click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @client_options
    def cluster_backup(client: ClientConfig, out: Path, as_json: bool) -> None:
        """Copy the metadata (the whole namespace) into OUT, online.

        The leader makes a consistent copy at one Raft index; OUT is written
        only once the copy's checksum matched. Restore it with `prismfs node
        recover --from-backup OUT`. File contents are not in it: they stay on
        the storage nodes.
        """
        if not out.parent.is_dir():
            raise ConfigError(f"no directory {out.parent} to write the backup in")
        shown = sys.stderr.isatty() and not as_json

        def progress(done: int, total: int) -> None:
            if shown:
                click.echo(f"\r{done >> 20} of {total >> 20} MiB", err=True, nl=False)

        ready = trio.run(_backup, client, out, progress)
        if shown:
            click.echo(err=True)
        if as_json:
            click.echo(
                json.dumps(
                    {"file": str(out), "bytes": ready.size, "index": ready.index,
                     "node": ready.address, "checksum": ready.checksum.hex()}
                )
            )  # fmt: skip
        else:
            click.echo(
                f"backed up the metadata at Raft index {ready.index} ({ready.size} bytes) to {out}"
            )

    @node.command("recover")
    @click.option(
        "--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
        help="The data directory of the stopped node to recover.",
    )  # fmt: skip
    @click.option(
        "--from-backup", "backup", type=click.Path(path_type=Path, dir_okay=False),
        help="Replace the node's namespace by this backup (from `prismfs cluster backup`).",
    )  # fmt: skip
    @click.option(
        "--advertise", default="", metavar="HOST:PORT",
        help="This node's address, when its log does not record it.",
    )  # fmt: skip
    @click.option("--yes", is_flag=True, help="Do it without asking.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def node_recover(
        data_dir: Path, backup: Path | None, advertise: str, yes: bool, as_json: bool
    ) -> None:
        """Make this stopped node the only metadata voter (a lost majority).

        The last resort when a majority of the metadata voters is lost for
        good: the node keeps everything its log holds, becomes the only voter
        when it starts, and every other voter becomes a replica. Remove the
        `raft` and `meta` directories of any of those before starting it again.
        With --from-backup, the namespace is replaced by the backup.
        """
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError("node recover changes the cluster's membership: add --yes")
            what = f"replace its namespace by {backup}" if backup else "keep its namespace"
            click.confirm(
                f"Make the node in {data_dir} the only metadata voter and {what}?", abort=True
            )
        try:
            done = recover(data_dir, backup=backup, advertise=advertise)
        except OSError as exc:
            raise ConfigError(f"cannot recover {data_dir}: {exc.strerror or exc}") from None
        if as_json:
            click.echo(
                json.dumps(
                    {"node": done.node, "address": done.address, "term": done.term,
                     "index": done.index, "replicas": done.replicas,
                     "moved_aside": done.moved_aside, "changed": done.changed}
                )
            )  # fmt: skip
            return
        if not done.changed:
            click.echo(f"{done.node} is already the only voter: nothing to do")
            return
        click.echo(
            f"{done.node} ({done.address}) is the only metadata voter from term {done.term},"
            f" index {done.index}: start it now."
        )
        for path in done.moved_aside:
            click.echo(f"moved aside: {path}")
        if done.replicas:
            click.echo(
                "former voters, now replicas: " + ", ".join(done.replicas) + ". Before starting"
                " one again, remove its data directory's raft/ and meta/ (it then catches up"
                " from this node)."
            )
