"""Admin commands that ask the Raft leader: node list/add/drain/cancel-drain/
remove, fsck, scrub, and the health part of ``cluster status`` (with
``--watch``, a live view with progress bars).

Each finds the leader through any reachable node's `RaftStatus` and sends
the request there (see `prismfs.leader.admin`); a leader that hands over
leadership meanwhile (draining or removing itself) is followed to the new
one. Errors are one line on stderr and a non-zero exit. ``prismfs fsck``
exits 0 when everything is clean, 1 when it found problems and 2 when it
could not run.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
import trio

from prismfs.client.config import ClientConfig
from prismfs.client.data import REGISTRY_TTL_S
from prismfs.client.leader import call_leader
from prismfs.errors import PrismError
from prismfs.leader.admin import (
    AddNode,
    CancelDrain,
    ClusterHealth,
    ClusterHealthReply,
    DrainNode,
    Fsck,
    FsckReport,
    NodeChanged,
    RemoveNode,
    ScrubReport,
    ScrubStart,
    ScrubStatus,
    SetVoting,
)
from prismfs.meta.commands import VOTING
from prismfs.node.config import MIN_REPAIR_GRACE_S, ORPHAN_GRACE_S
from prismfs.sizes import human_bytes
from prismfs.wire.address import parse_address
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import Message

T = TypeVar("T", bound=Message)


async def leader_call(client: ClientConfig, request: Message, expect: type[T], timeout: float) -> T:
    """Send ``request`` to the leader (found through any reachable node)."""
    async with open_rpc_pool(
        client.credentials(),
        **client.tls(),
        connect_timeout=3,
        call_timeout=10,
        client_name="prismfs-cli",
    ) as pool:
        return await call_leader(pool, client.addresses, request, expect, timeout)


def health(client: ClientConfig) -> ClusterHealthReply:
    return trio.run(leader_call, client, ClusterHealth(), ClusterHealthReply, 30.0)


NODE_COLUMNS = ["node", "address", "zone", "state", "raft", "shards", "used", "capacity", "heard"]


def node_rows(h: ClusterHealthReply) -> list[dict[str, str]]:
    return [
        {
            "node": n.node,
            "address": n.address,
            "zone": n.zone or "-",
            "state": n.state,
            "raft": (n.role or "-") + ("" if n.voting == "auto" else f" ({n.voting})"),
            "shards": str(n.shards),
            "used": human_bytes(n.used),
            "capacity": human_bytes(n.capacity),
            "heard": f"{n.silent_s:.1f}s ago",
        }
        for n in h.nodes
    ]


def summary_lines(h: ClusterHealthReply) -> list[str]:
    m = h.moves
    reduced = f" ({h.reduced} written with a reduced layout)" if h.reduced else ""
    lines = [
        f"chunks: {h.chunks} with shards: {h.healthy} healthy, {h.degraded} degraded{reduced}, "
        f"{h.unavailable} unavailable",
        f"repair: {h.repair_pending} chunks waiting; {h.repaired_chunks} rebuilt "
        f"({human_bytes(h.repaired_bytes)}) since this leader started",
        f"moves: {m.shards_moved} shards moved ({human_bytes(m.bytes_moved)})"
        + (f", {m.reencoded} chunks re-encoded to their layout" if m.reencoded else "")
        + "; rebalance: "
        + (f"about {human_bytes(m.to_move_bytes)} to move" if m.to_move_bytes else "balanced"),
    ]
    lines += [f"draining {node}: {left} of {total} shards left" for node, left, total in m.draining]
    lines.append(f"scrub: {_scrub_line(h.scrub)}")
    return lines


def print_health(h: ClusterHealthReply, table: Callable[..., None]) -> None:
    click.echo(f"leader {h.leader} (term {h.term}); voters {', '.join(h.voters)}")
    if h.learners:
        click.echo(f"learners {', '.join(h.learners)}")
    table(node_rows(h), NODE_COLUMNS)
    for line in summary_lines(h):
        click.echo(line)


def settled(h: ClusterHealthReply) -> bool:
    """Nothing left to do: every chunk fully redundant, no drain or rebalance running."""
    drained = all(left == 0 for _, left, _ in h.moves.draining)
    return h.healthy == h.chunks and drained and not h.moves.to_move_bytes


def watch(client: ClientConfig, interval: float, until_settled: bool) -> None:
    """Redraw the leader's view every ``interval`` s: nodes, and progress bars for
    repair, drains, rebalancing and scrub. On a terminal it redraws in place;
    otherwise it prints one view per interval."""
    from rich import box
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)

    def view(h: ClusterHealthReply) -> Group:
        table = Table(
            title=f"leader {h.leader}, term {h.term}; voters {', '.join(h.voters)}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for column in NODE_COLUMNS:
            table.add_column(column, justify="right" if column == "shards" else "left")
        for row in node_rows(h):
            table.add_row(*(row[c] for c in NODE_COLUMNS))
        bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), TaskProgressColumn())
        bars.add_task("redundancy", total=max(h.chunks, 1), completed=h.healthy or (not h.chunks))
        for node, left, total in h.moves.draining:
            bars.add_task(f"drain {node}", total=max(total, 1), completed=total - left)
        moved, to_move = h.moves.bytes_moved, h.moves.to_move_bytes
        bars.add_task("rebalance", total=max(moved + to_move, 1), completed=moved or (not to_move))
        if h.scrub.running:
            bars.add_task("scrub", total=max(h.chunks, 1), completed=h.scrub.chunks)
        return Group(table, bars, *summary_lines(h))

    def fetch() -> ClusterHealthReply | str:
        try:
            return health(client)
        except PrismError as exc:
            return f"no view from the leader: {exc.message}"

    def show(h: ClusterHealthReply | str) -> Any:
        return h if isinstance(h, str) else view(h)

    if not console.is_terminal:
        while True:
            h = fetch()
            console.print(show(h))
            if until_settled and not isinstance(h, str) and settled(h):
                return
            time.sleep(interval)
    with Live(show(fetch()), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            h = fetch()
            live.update(show(h))
            if until_settled and not isinstance(h, str) and settled(h):
                return


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")


def _scrub_line(s: ScrubReport) -> str:
    state = "running" if s.running else ("never run" if not s.passes else "idle")
    since = f", last started {_when(s.started_ns)}" if s.started_ns else ""
    due = f"; next scheduled pass {_when(s.next_ns)}" if s.next_ns and not s.running else ""
    return (
        f"{state}{since}: {s.chunks} chunks, {s.shards_checked} shards checked, "
        f"{s.corrupt} corrupt, {s.missing} missing, {s.repaired} rebuilt{due}"
    )


def register(
    cli: click.Group, node: click.Group, client_options: Callable[[Any], Any], table: Any
) -> None:
    def changed(reply: NodeChanged, as_json: bool) -> None:
        if as_json:
            click.echo(json.dumps(msgspec.to_builtins(reply), indent=2))
        else:
            click.echo(reply.message)

    def membership(client: ClientConfig, request: Message) -> NodeChanged:
        return trio.run(leader_call, client, request, NodeChanged, 300.0)

    json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

    @node.command("add")
    @client_options
    @click.argument("address", metavar="HOST:PORT")
    @click.option("--zone", default="", help="Failure domain to place the node in.")
    @click.option(
        "--voter", is_flag=True, help="Replicate the namespace and vote (at most 5 voters)."
    )
    @click.option(
        "--replica", is_flag=True, help="Replicate the namespace without a vote (a learner)."
    )
    @json_option
    def node_add(
        client: ClientConfig, address: str, zone: str, voter: bool, replica: bool, as_json: bool
    ) -> None:
        """Add the node running at HOST:PORT (started with the cluster secret, without
        --join) to the cluster: storage-only unless --voter or --replica. It stores
        shards at once; rebalancing moves shards to it in the background."""
        parse_address(address)
        changed(membership(client, AddNode(address, zone, voter, replica)), as_json)

    @node.command("drain")
    @client_options
    @click.argument("node_id", metavar="ID")
    @click.option("--wait", is_flag=True, help="Show progress until every shard is moved off.")
    @json_option
    def node_drain(client: ClientConfig, node_id: str, wait: bool, as_json: bool) -> None:
        """Move every shard off node ID (it takes no new ones), hand its vote to
        another node and leadership away if it leads. Then `node remove` it."""
        reply = membership(client, DrainNode(node_id))
        changed(reply, as_json)
        if wait:
            _wait_drained(client, node_id, quiet=as_json)

    @node.command("cancel-drain")
    @client_options
    @click.argument("node_id", metavar="ID")
    @json_option
    def node_cancel_drain(client: ClientConfig, node_id: str, as_json: bool) -> None:
        """Stop draining node ID: it takes new shards again."""
        changed(membership(client, CancelDrain(node_id)), as_json)

    @node.command("remove")
    @client_options
    @click.argument("node_id", metavar="ID")
    @click.option(
        "--force",
        is_flag=True,
        help="Remove it even if some chunk cannot do without its shards (they are lost).",
    )
    @json_option
    def node_remove(client: ClientConfig, node_id: str, force: bool, as_json: bool) -> None:
        """Take node ID out of the cluster (registry and Raft group). Refused while it
        holds shards some chunk cannot do without, unless --force; shards it still
        holds are rebuilt elsewhere by repair."""
        changed(membership(client, RemoveNode(node_id, force)), as_json)

    @node.command("voting")
    @client_options
    @click.argument("node_id", metavar="ID")
    @click.argument("voting", type=click.Choice(VOTING))
    @json_option
    def node_voting(client: ClientConfig, node_id: str, voting: str, as_json: bool) -> None:
        """Pin node ID to the metadata voters (pin), keep it from ever voting
        (never), or leave it to the leader (auto, the default). The leader
        keeps [raft] voters (3 or 5) voters: a pinned node that is up gets a
        vote before any other, taking it from one that is not pinned; a
        voter that must never vote hands its vote to another node."""
        changed(membership(client, SetVoting(node_id, voting)), as_json)

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
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="One JSON object per line: each finding, each step's progress, a summary.",
    )
    @click.option(
        "--orphan-grace",
        default=ORPHAN_GRACE_S,
        show_default=True,
        help="Unreferenced shards younger than this many seconds (by the clock of the "
        "node holding them) are uploads in progress, never orphans.",
    )
    @click.option(
        "--force",
        is_flag=True,
        help=f"Allow --repair with an --orphan-grace under {MIN_REPAIR_GRACE_S:g} s "
        "(it may delete the shards of uploads in progress).",
    )
    @click.option(
        "--resume",
        "cursor",
        metavar="CURSOR",
        default="",
        help="Go on from where an interrupted fsck stopped (it prints the cursor).",
    )
    @click.option(
        "--page",
        type=click.IntRange(1, 100_000),
        default=FSCK_PAGE,
        show_default=True,
        help="Chunks checked per call to the leader.",
    )
    @click.option(
        "--mb-per-s",
        type=click.FloatRange(1, None),
        default=200.0,
        show_default=True,
        help="Pace: megabytes of shards the nodes read per second.",
    )
    def fsck(
        client: ClientConfig,
        repair: bool,
        as_json: bool,
        orphan_grace: float,
        force: bool,
        cursor: str,
        page: int,
        mb_per_s: float,
    ) -> None:
        """Check that metadata and shards agree: every shard read and checksummed where it
        lives, every node's shards matched with the chunk records. Read-only unless
        --repair. Findings are printed as they are found, a step (--page chunks, then
        one node's orphans) at a time; Ctrl-C prints a cursor for --resume.
        Exit 0: clean; 1: problems found; 2: could not check; 130: interrupted."""
        if repair and orphan_grace < MIN_REPAIR_GRACE_S and not force:
            raise click.UsageError(
                f"--orphan-grace {orphan_grace:g} with --repair would delete the shards of "
                f"uploads still in progress (an upload commits its chunks in batches); use at "
                f"least {MIN_REPAIR_GRACE_S:g} s, or add --force if no client is writing"
            )
        if cursor and not cursor.startswith(("chunks:", "orphans:")):
            raise click.BadParameter("not a cursor printed by fsck", param_hint="--resume")
        run = FsckRun(client, Fsck(repair, orphan_grace, mb_per_s, page, cursor), as_json)
        try:
            run.all()
        except PrismError as exc:
            run.close()
            click.echo(f"prismfs: {exc.message}", err=True)
            raise click.exceptions.Exit(2) from None
        except KeyboardInterrupt:
            run.close()
            click.echo(
                f"prismfs: fsck interrupted after {run.total.chunks} chunks; go on with: "
                f"prismfs fsck --resume {run.request.cursor or 'chunks:'}",
                err=True,
            )
            raise click.exceptions.Exit(130) from None
        run.close()
        report = run.total
        if as_json:
            summary = {"kind": "summary", **msgspec.to_builtins(report)}
            for internal in ("cursor", "t"):
                summary.pop(internal, None)
            click.echo(json.dumps(summary))
        else:
            click.echo(
                f"{report.chunks} chunks, {report.shards_checked} shards checked"
                + (f"; {report.repaired} shards rebuilt" if repair else "")
                + (f", {report.orphans_deleted} orphans deleted" if repair else "")
            )
            click.echo("clean" if report.clean else "problems found")
        if not report.clean:
            raise click.exceptions.Exit(1)

    @cli.group()
    def scrub() -> None:
        """Re-read every shard and check it; rebuild what fails (in the background)."""

    @scrub.command("start")
    @client_options
    @json_option
    def scrub_start(client: ClientConfig, as_json: bool) -> None:
        """Start a scrub pass on the leader (one at a time)."""
        s = trio.run(leader_call, client, ScrubStart(), ScrubReport, 30.0)
        if as_json:
            click.echo(json.dumps(msgspec.to_builtins(s), indent=2))
        else:
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


FSCK_PAGE = 500
"""Chunks a paged fsck checks per call to the leader (the default of --page)."""

FINDINGS = (
    ("corrupt", "corrupt shard", "shard"),
    ("missing", "missing shard", "shard"),
    ("degraded", "chunk below full redundancy", "chunk"),
    ("unavailable", "unavailable chunk", "chunk"),
    ("unreachable", "node did not answer", "node"),
    ("orphans", "orphan shard", "shard"),
)
"""Each list of an `FsckReport`: its JSON kind (the key), its text label, and
what its items name."""


class FsckRun:
    """A paged fsck: one leader call per step, findings printed as they come,
    totals kept, progress drawn on a terminal (rich, on stderr)."""

    def __init__(self, client: ClientConfig, request: Fsck, as_json: bool) -> None:
        self.client = client
        self.request = request
        self.as_json = as_json
        self.total = FsckReport(True, 0, 0, (), (), (), (), (), (), 0, 0)
        self.unreachable: set[str] = set()
        self._bar: Any = None
        self._task: Any = None

    def all(self) -> None:
        if sys.stderr.isatty() and not self.as_json:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            try:
                chunks = health(self.client).chunks
            except PrismError:
                chunks = None  # the steps will say why
            self._bar = Progress(
                TextColumn("fsck {task.fields[phase]}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("fsck", total=chunks, phase="chunks")
        trio.run(self._steps)

    async def _steps(self) -> None:
        async with open_rpc_pool(
            self.client.credentials(),
            **self.client.tls(),
            connect_timeout=3,
            call_timeout=10,
            client_name="prismfs-cli",
        ) as pool:
            while True:
                report = await call_leader(
                    pool, self.client.addresses, self.request, FsckReport, FSCK_STEP_TIMEOUT_S
                )
                # Findings first, then the cursor moves on, then the step's
                # progress line: a cursor printed is one whose findings were
                # (Ctrl-C between them at worst checks that step again).
                self._add(report)
                self.request = msgspec.structs.replace(self.request, cursor=report.cursor)
                self._progress(report.cursor)
                if not report.cursor:
                    return

    def _add(self, r: FsckReport) -> None:
        lists = {}
        for key, label, noun in FINDINGS:
            items = [
                i for i in getattr(r, key) if key != "unreachable" or i not in self.unreachable
            ]
            if key == "unreachable":
                self.unreachable.update(items)
            lists[key] = tuple(getattr(self.total, key)) + tuple(items)
            for item in items:
                self._finding(key, label, noun, item)
        t = self.total
        self.total = FsckReport(
            clean=t.clean and r.clean,
            chunks=t.chunks + r.chunks,
            shards_checked=t.shards_checked + r.shards_checked,
            repaired=t.repaired + r.repaired,
            orphans_deleted=t.orphans_deleted + r.orphans_deleted,
            cursor=r.cursor,
            **lists,
        )

    def _progress(self, cursor: str) -> None:
        if self.as_json:
            t = self.total
            line = {"kind": "progress", "chunks": t.chunks, "shards_checked": t.shards_checked}
            click.echo(json.dumps({**line, "cursor": cursor}))
        if self._bar is not None:
            phase = "orphans" if cursor.startswith("orphans:") else "chunks"
            self._bar.update(self._task, completed=self.total.chunks, phase=phase)

    def _finding(self, key: str, label: str, noun: str, item: str) -> None:
        if self.as_json:
            line: dict[str, str] = {"kind": key}
            if key == "orphans":
                node, _, shard = item.partition(":")
                line.update(kind="orphan", node=node, shard=shard)
            else:
                line[noun] = item
            click.echo(json.dumps(line))
        elif self._bar is not None:
            self._bar.console.print(f"{label}: {item}")
        else:
            click.echo(f"{label}: {item}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


FSCK_STEP_TIMEOUT_S = 900.0
"""A bound on one step of fsck (a page of chunks or one node's orphans)."""


DRAIN_SETTLE_S = REGISTRY_TTL_S + 2.0
"""How long a drained node must stay empty before ``drain --wait`` returns."""


def _wait_drained(client: ClientConfig, node_id: str, *, quiet: bool) -> None:
    """Poll the leader until no shard is left on ``node_id``, with a progress bar."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    def left() -> tuple[int, int]:
        h = health(client)
        for node, remaining, total in h.moves.draining:
            if node == node_id:
                return remaining, total
        for n in h.nodes:
            if n.node == node_id and n.state == "draining" and n.shards:
                # Draining, but not in the movers' report yet (a drain of the
                # leader: the next one has not counted it): not done.
                return n.shards, n.shards
        return 0, 0  # not draining (any more): cancelled or removed

    with Progress(
        TextColumn(f"draining {node_id}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[left]} shards left"),
        disable=quiet,
    ) as bar:
        remaining, total = left()
        task = bar.add_task("drain", total=max(total, 1), left=remaining)
        # Done only once nothing has been left for longer than a client keeps
        # its view of the registry: a mount that had not yet seen the drain
        # may place a shard there and commit it just after the last move.
        empty_since = time.monotonic() if not remaining else None
        while empty_since is None or time.monotonic() - empty_since < DRAIN_SETTLE_S:
            time.sleep(1.0)
            remaining, total = left()
            if remaining:
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
            bar.update(task, total=max(total, 1), completed=total - remaining, left=remaining)
        bar.update(task, completed=max(total, 1), left=0)
