"""Admin commands that ask the Raft leader: node list, fsck, scrub, and the
health part of ``cluster status``.

Each finds the leader through any reachable node's `RaftStatus` and sends
the request there (see `prismfs.node.admin`). Errors are one line on stderr.
``prismfs fsck`` exits 0 when everything is clean, 1 when it found problems
and 2 when it could not run.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
import trio

from prismfs.client.config import ClientConfig
from prismfs.errors import PrismError, Unavailable
from prismfs.node.admin import (
    ClusterHealth,
    ClusterHealthReply,
    Fsck,
    FsckReport,
    ScrubReport,
    ScrubStart,
    ScrubStatus,
)
from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import Message
from prismfs.wire.tls import client_context

T = TypeVar("T", bound=Message)


async def leader_call(client: ClientConfig, request: Message, expect: type[T], timeout: float) -> T:
    """Send ``request`` to the leader (found through any reachable node)."""
    ssl_ctx = client_context(client.tls_ca) if client.tls_ca else None
    async with open_rpc_pool(
        client.credentials(),
        ssl_context=ssl_ctx,
        connect_timeout=3,
        call_timeout=10,
        client_name="prismfs-cli",
    ) as pool:
        leader = ""
        errors = []
        for address in client.addresses:
            try:
                status = (await pool.call(address, RaftStatus(), timeout=5)).message
            except PrismError as exc:
                errors.append(f"{address}: {exc.message}")
                continue
            assert isinstance(status, RaftStatusReply)
            if status.leader_address:
                leader = status.leader_address
                break
        if not leader:
            raise Unavailable(
                "no leader is known: " + ("; ".join(errors) or "the nodes have not elected one")
            )
        reply = (await pool.call(leader, request, timeout=timeout)).message
        if not isinstance(reply, expect):
            raise TypeError(f"expected {expect.__name__}, got {type(reply).__name__}")
        return reply


def health(client: ClientConfig) -> ClusterHealthReply:
    return trio.run(leader_call, client, ClusterHealth(), ClusterHealthReply, 30.0)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_health(h: ClusterHealthReply, table: Callable[..., None]) -> None:
    click.echo(f"leader {h.leader} (term {h.term}); voters {', '.join(h.voters)}")
    if h.learners:
        click.echo(f"learners {', '.join(h.learners)}")
    table(
        [
            {
                "node": n.node,
                "address": n.address,
                "zone": n.zone or "-",
                "state": n.state,
                "used": _size(n.used),
                "capacity": _size(n.capacity),
                "last heard": f"{n.silent_s:.1f}s ago",
            }
            for n in h.nodes
        ],
        ["node", "address", "zone", "state", "used", "capacity", "last heard"],
    )
    click.echo(
        f"chunks: {h.chunks} with shards: {h.healthy} healthy, {h.degraded} degraded, "
        f"{h.unavailable} unavailable"
    )
    click.echo(
        f"repair: {h.repair_pending} chunks waiting; {h.repaired_chunks} rebuilt "
        f"({_size(h.repaired_bytes)}) since this leader started"
    )
    click.echo(f"scrub: {_scrub_line(h.scrub)}")


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")


def _scrub_line(s: ScrubReport) -> str:
    state = "running" if s.running else ("never run" if not s.passes else "idle")
    since = f", last started {_when(s.started_ns)}" if s.started_ns else ""
    return (
        f"{state}{since}: {s.chunks} chunks, {s.shards_checked} shards checked, "
        f"{s.corrupt} corrupt, {s.missing} missing, {s.repaired} rebuilt"
    )


def register(
    cli: click.Group, node: click.Group, client_options: Callable[[Any], Any], table: Any
) -> None:
    @node.command("list")
    @client_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def node_list(client: ClientConfig, as_json: bool) -> None:
        """The node registry: every node, its state, zone and usage."""
        h = health(client)
        if as_json:
            click.echo(json.dumps([msgspec.to_builtins(n) for n in h.nodes], indent=2))
            return
        print_health(h, table)

    @cli.command("fsck")
    @client_options
    @click.option(
        "--repair", is_flag=True, help="Rebuild what is missing or corrupt, drop orphans."
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option(
        "--orphan-grace",
        default=60.0,
        show_default=True,
        help="Unreferenced shards younger than this many seconds are writes in progress.",
    )
    def fsck(client: ClientConfig, repair: bool, as_json: bool, orphan_grace: float) -> None:
        """Check that metadata and shards agree: every shard read and checksummed where it
        lives, every node's shards matched with the chunk records. Read-only unless
        --repair. Exit 0: clean; 1: problems found; 2: could not check."""
        try:
            report = trio.run(leader_call, client, Fsck(repair, orphan_grace), FsckReport, 3600.0)
        except PrismError as exc:
            click.echo(f"prismfs fsck: {exc.message}", err=True)
            raise click.exceptions.Exit(2) from None
        if as_json:
            click.echo(json.dumps(msgspec.to_builtins(report), indent=2))
        else:
            click.echo(
                f"{report.chunks} chunks, {report.shards_checked} shards checked"
                + (f"; {report.repaired} shards rebuilt" if repair else "")
                + (f", {report.orphans_deleted} orphans deleted" if repair else "")
            )
            for label, items in (
                ("corrupt shards", report.corrupt),
                ("missing shards", report.missing),
                ("chunks below full redundancy", report.degraded),
                ("unavailable chunks", report.unavailable),
                ("nodes that did not answer", report.unreachable),
                ("orphan shards", report.orphans),
            ):
                if items:
                    click.echo(f"{label}: {len(items)}: " + " ".join(items[:10]))
            click.echo("clean" if report.clean else "problems found")
        if not report.clean:
            raise click.exceptions.Exit(1)

    @cli.group()
    def scrub() -> None:
        """Re-read every shard and check it; rebuild what fails (in the background)."""

    @scrub.command("start")
    @client_options
    def scrub_start(client: ClientConfig) -> None:
        """Start a scrub pass on the leader (one at a time)."""
        s = trio.run(leader_call, client, ScrubStart(), ScrubReport, 30.0)
        click.echo(f"scrub: {_scrub_line(s)}")

    @scrub.command("status")
    @client_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def scrub_status(client: ClientConfig, as_json: bool) -> None:
        """Progress and findings of the current or last scrub pass."""
        s = trio.run(leader_call, client, ScrubStatus(), ScrubReport, 30.0)
        if as_json:
            click.echo(json.dumps(msgspec.to_builtins(s), indent=2))
        else:
            click.echo(f"scrub: {_scrub_line(s)}")
