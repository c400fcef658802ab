"""The ``prismfs`` command.

Every failure a user can cause ends in one line on stderr, ``prismfs: ...``,
and a non-zero exit status (1 for errors, 2 for usage); tracebacks are for
bugs only. ``--json`` output is for scripts and keeps its keys stable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
import trio

from prismfs import __version__
from prismfs.cli import admin as admin_cli
from prismfs.cli import credentials as credentials_cli
from prismfs.cli import devcluster
from prismfs.cli import files as files_cli
from prismfs.cli import mount_stats as mount_stats_cli
from prismfs.cli import recover as recover_cli
from prismfs.cli import tokens as tokens_cli
from prismfs.cli import unmount as unmount_cli
from prismfs.client.config import ClientConfig, resolve_client_config
from prismfs.config_files import etc_dir
from prismfs.daemon import run_node
from prismfs.durable import write_atomic
from prismfs.errors import ConfigError, PrismError
from prismfs.node import datadir, systemd
from prismfs.node.config import find_node_config, load_node_config
from prismfs.node.root_owner import invoking_owner, parse_owner, request_root_owner
from prismfs.wire.address import parse_address
from prismfs.wire.auth import CLIENT_SECRET_FILE_NAME, SECRET_FILE_NAME
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.messages import Ping, Pong

F = TypeVar("F", bound=Callable[..., Any])


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A table (rich): one row per dict, "-" for a missing value. Never wrapped
    or cut when the output is not a terminal (scripts grep it)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=1000)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in columns:
        table.add_column(c.upper().replace("_", " "), no_wrap=True)
    for r in rows:
        table.add_row(*(("-" if r.get(c) is None else str(r.get(c))) for c in columns))
    console.print(table)


def client_options(func: F) -> F:
    """The options by which a client command finds its cluster (see client.config)."""

    @click.option("--cluster", metavar="ADDR[,ADDR...]", help="Node addresses to contact.")
    @click.option("--secret-file", type=click.Path(path_type=Path), help="The cluster secret file.")
    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help="A client.toml (default: $PRISMFS_CONFIG, ~/.config/prismfs/client.toml, "
        "/etc/prismfs/client.toml, else the newest running dev cluster).",
    )
    @click.option(
        "--tls-ca",
        type=click.Path(path_type=Path),
        help="The CA of nodes started with --tls-cert (default: the cluster's own CA).",
    )
    @click.option("--insecure", is_flag=True, help="No TLS (for nodes started with --insecure).")
    @click.option("-v", "--verbose", is_flag=True, help="Say which cluster and config are used.")
    @functools.wraps(func)
    def wrapper(
        cluster: str | None,
        secret_file: Path | None,
        config_file: Path | None,
        tls_ca: Path | None,
        insecure: bool,
        verbose: bool,
        **kwargs: Any,
    ) -> Any:
        # A file command sent over HTTP (--http) needs no cluster secret.
        if kwargs.get("http_url"):
            kwargs["client"] = None
        else:
            if bool(cluster) != bool(secret_file):
                raise click.UsageError("--cluster and --secret-file go together")
            kwargs["client"] = resolve_client_config(
                cluster, secret_file, config_file, tls_ca, insecure
            )
            if kwargs["client"].insecure:
                click.echo("prismfs: talking to the cluster without TLS (--insecure)", err=True)
            if verbose:
                found = kwargs["client"]
                click.echo(
                    f"prismfs: cluster {','.join(found.addresses)} from {found.source}", err=True
                )
        return func(**kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prismfs")
def cli() -> None:
    """PrismFS: a distributed file system you mount like a local disk."""


# --- cluster ----------------------------------------------------------------


@cli.group()
def cluster() -> None:
    """Create a cluster and look at it."""


@cluster.command("init")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="First node's data directory.",
)
@click.option(
    "--root-owner",
    metavar="UID:GID",
    help="Owner of the root directory (default: you, or the user behind sudo).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_init(data_dir: Path, root_owner: str | None, as_json: bool) -> None:
    """Create a new cluster: its id and secret, in the first node's data directory."""
    owner = parse_owner(root_owner) if root_owner else invoking_owner()
    creds = datadir.init_cluster(data_dir)
    request_root_owner(data_dir, owner)
    if as_json:
        out = {
            "cluster_id": creds.cluster_id,
            "data_dir": str(data_dir.resolve()),
            "secret_file": str((data_dir / SECRET_FILE_NAME).resolve()),
            "client_secret_file": str((data_dir / CLIENT_SECRET_FILE_NAME).resolve()),
            "root_owner": {"uid": owner[0], "gid": owner[1]},
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"created cluster {creds.cluster_id}")
    click.echo(f"root directory: owned by uid {owner[0]}, gid {owner[1]}, mode 0755")
    secret = data_dir / SECRET_FILE_NAME
    click.echo(f"secret: {secret} (mode 0600; copy it to every node and admin host)")
    click.echo(
        f"client credential: {data_dir / CLIENT_SECRET_FILE_NAME} (for mount hosts and file "
        "commands: it cannot act as a node; more with 'prismfs credentials create')"
    )
    click.echo(f"next: prismfs node start --data-dir {data_dir} --listen HOST:PORT")


@cluster.command("status")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Keep redrawing, with progress bars (Ctrl-C to stop).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between redraws.")
@click.option(
    "--until-settled",
    is_flag=True,
    help="With --watch: stop once every chunk is fully redundant and no drain or "
    "rebalance is left.",
)
def cluster_status(
    client: ClientConfig, as_json: bool, watch: bool, interval: float, until_settled: bool
) -> None:
    """Ping every node the client knows, then show the leader's view: nodes and
    their state, chunk health, repair, drain, rebalance and scrub progress.

    \b
    Exit status, for monitoring scripts:
      0  healthy: every node up, every chunk fully redundant
      1  no node answered, or no leader gave its view
      3  degraded: every chunk readable, some below their layout's redundancy
      4  some chunk unavailable, or some node down"""
    if watch:
        if as_json:
            raise click.UsageError("--watch and --json do not go together")
        admin_cli.watch(client, max(interval, 0.1), until_settled)
        return
    rows = trio.run(_probe_nodes, client)
    health: Any = None
    problem = ""
    if any(r["reachable"] for r in rows):
        try:
            health = admin_cli.health(client)
        except PrismError as exc:
            problem = exc.message
    else:
        problem = "no node answered: " + "; ".join(f"{r['address']} ({r['error']})" for r in rows)
    verdict, code = status_verdict(health)
    if as_json:
        out: dict[str, Any] = {"source": client.source, "status": verdict, "nodes": rows}
        out["health"] = msgspec.to_builtins(health) if health is not None else None
        if problem:
            out["error"] = problem
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"cluster from {client.source}")
        _print_table(rows, ["address", "id", "role", "version", "latency_ms", "error"])
        click.echo()
        if health is not None:
            admin_cli.print_health(health, _print_table)
            click.echo(f"status: {verdict}")
    if health is None:
        click.echo(f"prismfs: no cluster view from the leader: {problem}", err=True)
    if code:
        raise click.exceptions.Exit(code)


STATUS_EXIT = {"healthy": 0, "no view": 1, "degraded": 3, "unavailable": 4, "node down": 4}
"""`cluster status` exit codes by verdict (documented in docs/cli.md)."""


def status_verdict(health: Any) -> tuple[str, int]:
    """The worst of: some chunk unavailable, a node down, chunks degraded."""
    if health is None:
        verdict = "no view"
    elif health.unavailable:
        verdict = "unavailable"
    elif any(n.state == "down" for n in health.nodes):
        verdict = "node down"
    elif health.degraded:
        verdict = "degraded"
    else:
        verdict = "healthy"
    return verdict, STATUS_EXIT[verdict]


async def _probe_nodes(client: ClientConfig) -> list[dict[str, Any]]:
    creds = client.credentials()
    rows: list[dict[str, Any]] = []
    async with open_rpc_pool(
        creds, **client.tls(), connect_timeout=2.5, call_timeout=3, client_name="prismfs-cli"
    ) as pool:
        for address in client.addresses:
            start = trio.current_time()
            try:
                pong = (await pool.call(address, Ping())).message
            except PrismError as exc:
                rows.append({"address": address, "reachable": False, "error": exc.message})
                continue
            assert isinstance(pong, Pong)
            rows.append(
                {
                    "address": address,
                    "reachable": True,
                    "id": pong.node_id,
                    "role": pong.role,
                    "version": pong.version,
                    "latency_ms": round((trio.current_time() - start) * 1000, 2),
                    "pid": pong.pid,
                }
            )
    return rows


# --- node -------------------------------------------------------------------


@cli.group()
def node() -> None:
    """Run and manage storage nodes."""


@node.command("start")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), help="Node data directory (node.data_dir)."
)
@click.option("--listen", metavar="HOST:PORT", help="RPC address to listen on (node.listen).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="node.toml; flags override it (default: ~/.config/prismfs/node.toml, "
    "else /etc/prismfs/node.toml, if one exists).",
)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    help="Cluster secret to import on this node's first start.",
)
@click.option(
    "--advertise", metavar="HOST:PORT", help="Address other nodes and clients use (node.advertise)."
)
@click.option("--zone", help="Failure domain of this node (node.zone).")
@click.option("--http", metavar="HOST:PORT", help="Serve the HTTP API here (http.listen).")
@click.option(
    "--join",
    metavar="HOST:PORT",
    help="Join the cluster through this member, as a storage-only node.",
)
@click.option(
    "--replica",
    is_flag=True,
    help="With --join: also replicate the namespace (a non-voting Raft learner).",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    help="Serve TLS with this certificate (tls.cert).",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path), help="Private key of --tls-cert (tls.key)."
)
@click.option("--tls-ca", type=click.Path(path_type=Path), help="The CA of --tls-cert (tls.ca).")
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="No TLS: traffic after the handshake unprotected (tls.insecure; whole cluster).",
)
@click.option("--log-file", help="Log to this file instead of stderr (log.file).")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="log.level"
)
@click.option("--log-format", type=click.Choice(["text", "json"]), help="log.format")
def node_start(
    data_dir: Path | None,
    listen: str | None,
    config_file: Path | None,
    secret_file: Path | None,
    advertise: str | None,
    zone: str | None,
    http: str | None,
    join: str | None,
    replica: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    insecure: bool | None,
    log_file: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run a storage node in the foreground until SIGTERM or SIGINT."""
    overrides: dict[str, dict[str, Any]] = {
        "node": {
            "data_dir": str(data_dir) if data_dir else None,
            "listen": listen,
            "advertise": advertise,
            "zone": zone,
        },
        "http": {"listen": http},
        "tls": {
            "cert": _str(tls_cert),
            "key": _str(tls_key),
            "ca": _str(tls_ca),
            "insecure": insecure,
        },
        "log": {"file": log_file, "level": log_level, "format": log_format},
    }
    config = load_node_config(find_node_config(config_file), overrides)
    if join:
        parse_address(join)
    elif replica:
        raise click.UsageError("--replica needs --join (or use `prismfs node add --replica`)")
    run_node(config, secret_file, join, replica)


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# --- dev cluster --------------------------------------------------------------


@cli.group()
def dev() -> None:
    """A local cluster of node processes on loopback, for trying PrismFS out."""


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="Cluster directory (default: $PRISMFS_STATE_DIR/dev or ~/.local/state/prismfs/dev).",
)


@dev.command("up")
@click.option("--nodes", "n_nodes", default=3, show_default=True, help="How many nodes.")
@_dir_option
@click.option("--mount", metavar="DIR", help="Also mount the file system at DIR (FUSE).")
@click.option("--json", "as_json", is_flag=True, help="Print the node list as JSON.")
@click.option(
    "--node-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A node.toml for every node of a new dev cluster (kept for restarts).",
)
@click.option("--http", is_flag=True, help="Nodes of a new cluster also serve the HTTP API.")
def dev_up(
    n_nodes: int,
    directory: Path | None,
    mount: str | None,
    as_json: bool,
    node_config: Path | None,
    http: bool,
) -> None:
    """Start N nodes (or restart a stopped dev cluster) and write client.toml."""
    directory = directory or devcluster.default_dir()
    say = (lambda _m: None) if as_json else click.echo
    devcluster.up(directory, n_nodes, mount, say, node_config, http)
    rows = devcluster.status(directory)
    if as_json:
        click.echo(json.dumps({"dir": str(directory.resolve()), "nodes": rows}, indent=2))
        return
    _print_table(rows, ["name", "id", "pid", "rpc_address", "role"])
    click.echo(f"\nclient config: {directory.resolve() / 'client.toml'}")
    consoles = [row["http_address"] for row in rows if row.get("http_address")]
    if consoles:
        click.echo(
            f"web console: http://{consoles[0]}/ui/ "
            "(sign in with a token from: prismfs token create --admin)"
        )
    click.echo("try: prismfs cluster status")
    click.echo(f"stop: prismfs dev down --dir {directory}")


@dev.command("down")
@_dir_option
def dev_down(directory: Path | None) -> None:
    """Stop exactly the node processes this dev cluster started."""
    devcluster.down(directory or devcluster.default_dir(), click.echo)


@dev.command("status")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dev_status(directory: Path | None, as_json: bool) -> None:
    """Every node: name, id, pid, RPC address, role, HTTP address."""
    directory = directory or devcluster.default_dir()
    rows = devcluster.status(directory)
    if as_json:
        click.echo(json.dumps({"dir": str(directory.resolve()), "nodes": rows}, indent=2))
    else:
        _print_table(rows, ["name", "id", "pid", "alive", "rpc_address", "role", "http_address"])


files_cli.register(cli, client_options)
admin_cli.register(cli, node, client_options, _print_table)
tokens_cli.register(cli, client_options, _print_table)
credentials_cli.register(cli, client_options, _print_table)
recover_cli.register(cluster, node, client_options)
mount_stats_cli.register(cli, lambda path: _on_prismfs(path), _print_table)


@cli.command("sync")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def sync(paths: tuple[Path, ...]) -> None:
    """Make everything the mounts of PATHS hold back durable on the cluster: data
    buffered in open files, deferred creates and unlinks. Linux sends a FUSE
    file system nothing on sync(1) or syncfs(2); this is their counterpart."""
    for path in paths:
        if not _on_prismfs(path):
            raise ConfigError(f"{path} is not on a PrismFS mount")
        try:
            os.setxattr(path, "user.prismfs.sync", b"1")
        except OSError as exc:
            raise ConfigError(f"sync of the mount of {path} failed: {exc.strerror}") from None
        click.echo(f"synced the mount of {path}")


def _on_prismfs(path: Path) -> bool:
    """Is ``path`` on a mounted PrismFS (type fuse.prismfs in /proc/mounts)?"""
    device = os.stat(path).st_dev
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.prismfs":
                point = fields[1].encode().decode("unicode_escape")
                with contextlib.suppress(OSError):
                    if os.stat(point).st_dev == device:
                        return True
    return False


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(mountpoint: Path) -> None:
    """Flush what the PrismFS mount at MOUNTPOINT holds back (as `prismfs sync`),
    then unmount it; nothing is unmounted if the flush fails."""
    unmount_cli.unmount(mountpoint, click.echo)


@cli.command("install-mount-helper")
@click.option(
    "--path",
    "target",
    default="/sbin/mount.prismfs",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where mount(8) looks for the helper of type prismfs.",
)
def install_mount_helper(target: Path) -> None:
    """Install mount.prismfs where `mount -t prismfs` and /etc/fstab find it: a
    script that runs this Python (and so this virtual environment, if any)."""
    script = (
        "#!/bin/sh\n"
        "# Installed by 'prismfs install-mount-helper': the PrismFS mount helper.\n"
        f'exec {sys.executable} -m prismfs.cli.mount_helper_main "$@"\n'
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(target)
    except OSError as exc:
        raise ConfigError(f"cannot install {target}: {exc.strerror}") from None
    click.echo(f"installed {target}: it runs {sys.executable}")
    if sys.prefix != sys.base_prefix:
        click.echo(
            f"note: that is the virtual environment {sys.prefix}; mount -t prismfs and "
            "/etc/fstab mounts (also at boot) need it to stay where it is "
            "(docs/mount.md: a system-wide install)"
        )
    click.echo("mount with: mount -t prismfs NODE:PORT[,...] DIR -o secret=/path/client.secret")


@cli.command("install-systemd")
@click.option(
    "--target",
    default="/etc/systemd/system",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write prismfs-node@.service to.",
)
def install_systemd(target: Path) -> None:
    """Install the prismfs-node@.service unit: prismfs-node@NAME runs a node with
    /etc/prismfs/NAME.toml."""
    etc = etc_dir()
    unit = target / systemd.UNIT_NAME
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot install {unit}: {exc.strerror}") from None
    write_atomic(unit, systemd.unit_text(f"{sys.executable} -m prismfs", str(etc)).encode())
    click.echo(f"installed {unit} (runs {sys.executable})")
    click.echo(f"next: write {etc}/node.toml ([node] data_dir, listen), then")
    click.echo("  systemctl daemon-reload && systemctl enable --now prismfs-node@node")
    click.echo("  journalctl -u prismfs-node@node   # its log")


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL. Install it with, e.g.,
    `prismfs completion bash > /etc/bash_completion.d/prismfs`, or
    `eval "$(prismfs completion bash)"` in ~/.bashrc (see docs/cli.md)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choices are the shells click knows
    click.echo(cls(cli, {}, "prismfs", "_PRISMFS_COMPLETE").source())


@cli.command("manpages")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write prismfs.1, prismfs.conf.5 and mount.prismfs.8 to.",
)
def manpages(out: Path) -> None:
    """Write the man pages, made from the commands and config keys themselves
    (read one with `man -l DIR/prismfs.1`; install into /usr/local/share/man/manN)."""
    from prismfs.cli.manpages import write_all

    try:
        written = write_all(out)
    except OSError as exc:
        raise ConfigError(f"cannot write the man pages to {out}: {exc.strerror}") from None
    for path in written:
        click.echo(str(path))


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: one clear line and a non-zero status on failure."""
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="prismfs",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("prismfs: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PrismError as exc:
        click.echo(f"prismfs: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:  # a local file or directory the command could not use
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"prismfs: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
