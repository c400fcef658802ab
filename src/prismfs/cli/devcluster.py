"""A local development cluster: N node processes on loopback, one command.

State lives in the cluster directory ``D``::

    D/dev.json        nodes (name, data dir, address, pid), mount point, start time
    D/client.toml     what client and admin commands need (addresses, the cluster secret)
    D/mount.toml      what the mount uses (addresses, a client credential)
    D/nodeN/          each node's data directory, with node.log

``down`` stops exactly the processes recorded in ``dev.json``, and only while
their command line still names their data directory (a reused pid is left
alone). Addresses are kept, so ``up`` after ``down`` restarts the same nodes
on the same ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from prismfs.client.config import (
    CLIENT_CONFIG_NAME,
    DEV_STATE_FILE,
    DevRegistry,
    state_dir,
    write_client_toml,
)
from prismfs.config_files import default_config_file
from prismfs.durable import write_atomic
from prismfs.errors import ConfigError, DataDirLocked, InvalidArgument, PrismError, Unavailable
from prismfs.meta.commands import ListNodes, NodeList
from prismfs.node import datadir
from prismfs.node.consensus_messages import (
    ChangeMembership,
    Query,
    QueryResult,
    RaftStatus,
    RaftStatusReply,
)
from prismfs.node.root_owner import invoking_owner, request_root_owner, requested_root_owner
from prismfs.procs import process_alive
from prismfs.retry import retry_until
from prismfs.wire.auth import (
    CLIENT,
    CLIENT_SECRET_FILE_NAME,
    DEFAULT_CLIENT_CREDENTIAL,
    SECRET_FILE_NAME,
    read_secret_file,
    write_secret_file,
)
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import decode_message, encode_message
from prismfs.wire.messages import Ping, Pong

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

Say = Callable[[str], None]


def default_dir() -> Path:
    return state_dir() / "dev"


@dataclass
class DevNode:
    name: str
    data_dir: str
    rpc_address: str
    pid: int = 0
    node_id: str = ""
    http_address: str = ""  # where it serves the HTTP API ("" = none)

    @property
    def log_file(self) -> Path:
        return Path(self.data_dir) / "node.log"

    def alive(self) -> bool:
        return process_alive(self.pid, self.data_dir)


@dataclass
class DevCluster:
    directory: Path
    nodes: list[DevNode] = field(default_factory=list)
    mount: str | None = None
    started: float = 0.0
    node_config: str = ""  # a node.toml every node starts with

    @classmethod
    def load(cls, directory: Path) -> DevCluster | None:
        try:
            data = json.loads((directory / DEV_STATE_FILE).read_text())
            nodes = [DevNode(**n) for n in data["nodes"]]
            return cls(
                directory,
                nodes,
                data.get("mount"),
                float(data.get("started", 0)),
                str(data.get("node_config", "")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{directory / DEV_STATE_FILE} is unreadable: {exc}") from None

    def save(self) -> None:
        data = {
            "nodes": [asdict(n) for n in self.nodes],
            "mount": self.mount,
            "started": self.started,
            "node_config": self.node_config,
        }
        write_atomic(self.directory / DEV_STATE_FILE, json.dumps(data, indent=2).encode())

    @property
    def secret_file(self) -> Path:
        return Path(self.nodes[0].data_dir) / SECRET_FILE_NAME

    @property
    def client_secret_file(self) -> Path:
        """A client credential (made by ``cluster init`` in the first node's directory)."""
        return Path(self.nodes[0].data_dir) / CLIENT_SECRET_FILE_NAME

    def running(self) -> list[DevNode]:
        return [n for n in self.nodes if n.alive()]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(
    node: DevNode, join: str | None, node_config: str = "", replica: bool = False
) -> subprocess.Popen[bytes]:
    log = open(node.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prismfs",
                "node",
                "start",
                "--data-dir",
                node.data_dir,
                "--listen",
                node.rpc_address,
                "--log-file",
                str(node.log_file),
                *(["--join", join] if join else []),
                *(["--replica"] if join and replica else []),
                *(["--config", node_config] if node_config else []),
                *(["--http", node.http_address] if node.http_address else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a Ctrl-C in the shell that ran `dev up` must not stop it
            close_fds=True,
        )
    finally:
        log.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _cluster_lock(directory: Path) -> Iterator[None]:
    """One `up` or `down` at a time per cluster directory."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "dev.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirLocked(f"another prismfs dev command is working on {directory}") from None
        yield
    finally:
        os.close(fd)


def up(
    directory: Path,
    n_nodes: int,
    mount: str | None,
    say: Say,
    node_config: Path | None = None,
    http: bool = False,
) -> DevCluster:
    """Start (or restart) the cluster in ``directory``; idempotent while it runs.
    With ``http``, a new cluster's nodes also serve the HTTP API."""
    if not 1 <= n_nodes <= 32:
        raise InvalidArgument("--nodes must be between 1 and 32")
    directory = directory.resolve()
    with _cluster_lock(directory):
        cluster = _up(directory, n_nodes, say, node_config, http)
        if mount:
            _mount(cluster, Path(mount).resolve(), say)
    configured = default_config_file(CLIENT_CONFIG_NAME)
    if configured is not None:
        say(
            f"note: client commands use {configured} by default; for this dev cluster "
            f"pass --config {directory / 'client.toml'}"
        )
    return cluster


def _mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


def _mount(cluster: DevCluster, point: Path, say: Say) -> None:
    """Mount the dev cluster at ``point`` with mount.prismfs (log and pid in the dev dir)."""
    if _mounted(point):
        say(f"{point} is already mounted")
        return
    point.mkdir(parents=True, exist_ok=True)
    log_file = cluster.directory / "mount.log"
    pidfile = cluster.directory / "mount.pid"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prismfs.cli.mount_helper_main",
            str(cluster.directory / "mount.toml"),
            str(point),
            "-o",
            f"log={log_file},pidfile={pidfile}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise Unavailable(f"mounting at {point} failed: {result.stderr.strip()} (see {log_file})")
    cluster.mount = str(point)
    cluster.save()
    say(f"mounted at {point}")


def _unmount(cluster: DevCluster, say: Say) -> None:
    if not cluster.mount:
        return
    point = Path(cluster.mount)
    if _mounted(point):
        subprocess.run(["fusermount3", "-u", str(point)], timeout=60, check=False)
        if _mounted(point):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], timeout=60, check=False)
        say(f"unmounted {point}")
    pidfile = cluster.directory / "mount.pid"
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pidfile.read_text().strip())
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    cluster.mount = None
    cluster.save()


def _up(
    directory: Path, n_nodes: int, say: Say, node_config: Path | None, http: bool
) -> DevCluster:
    cluster = DevCluster.load(directory)
    if cluster is not None and cluster.nodes and len(cluster.running()) == len(cluster.nodes):
        say(f"dev cluster in {directory} is already running ({len(cluster.nodes)} nodes)")
        return cluster
    if cluster is None or not cluster.nodes:
        cluster = DevCluster(
            directory, node_config=str(node_config.resolve()) if node_config else ""
        )
        for i in range(1, n_nodes + 1):
            node_dir = directory / f"node{i}"
            http_address = f"127.0.0.1:{_free_port()}" if http else ""
            cluster.nodes.append(
                DevNode(f"node{i}", str(node_dir), f"127.0.0.1:{_free_port()}", 0, "", http_address)
            )
        datadir.init_cluster(Path(cluster.nodes[0].data_dir))
        owner = invoking_owner()
        request_root_owner(Path(cluster.nodes[0].data_dir), owner)
        for node in cluster.nodes[1:]:
            datadir.import_secret(Path(node.data_dir), cluster.secret_file)
    elif len(cluster.nodes) != n_nodes:
        say(f"note: {directory} holds a {len(cluster.nodes)}-node cluster; restarting it as it was")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    voters = cluster.nodes[:MAX_VOTERS]  # the rest are storage-only
    config_file = _node_config_file(cluster)
    for node in cluster.nodes:
        if node.alive():
            continue
        first = cluster.nodes[0]
        join = None if node is first else first.rpc_address
        proc = _spawn(node, join, config_file, replica=node in voters)
        node.pid = proc.pid
        procs[node.name] = proc
    cluster.started = time.time()
    cluster.save()
    try:
        trio.run(_wait_ready, cluster, procs)
        trio.run(_form_voters, cluster)
        trio.run(_wait_registered, cluster)
        trio.run(_wait_root_owner, cluster)
    except BaseException:
        _down(directory, lambda _msg: None, STOP_TIMEOUT)
        raise
    for proc in procs.values():
        proc.returncode = 0  # detached on purpose: keep Popen.__del__ from warning
    cluster.save()
    addresses = [n.rpc_address for n in cluster.nodes]
    write_client_toml(directory / "client.toml", addresses, cluster.secret_file)
    if (
        not cluster.client_secret_file.exists()
        or not read_secret_file(cluster.client_secret_file).ca
    ):
        # (a cluster made before client credentials, or before they carried the CA)
        creds = read_secret_file(cluster.secret_file).derive(CLIENT, DEFAULT_CLIENT_CREDENTIAL)
        write_secret_file(cluster.client_secret_file, creds, overwrite=True)
    write_client_toml(directory / "mount.toml", addresses, cluster.client_secret_file)
    DevRegistry().add(directory)
    return cluster


def _node_config_file(cluster: DevCluster) -> str:
    """The node.toml dev nodes start with: the one given to ``up``, else an empty
    one in the cluster directory. Always one, so that a dev node never reads the
    machine's default ``/etc/prismfs/node.toml``, which belongs to a real node."""
    if cluster.node_config:
        return cluster.node_config
    empty = cluster.directory / "node.toml"
    if not empty.exists():
        empty.write_text("# dev cluster nodes: every setting comes from their command line\n")
    return str(empty)


async def _wait_ready(cluster: DevCluster, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    creds = read_secret_file(cluster.secret_file)
    async with open_rpc_pool(
        creds, connect_timeout=2, call_timeout=2, client_name="dev-up"
    ) as pool:
        for node in cluster.nodes:

            def still_running(node: DevNode = node) -> None:
                proc = procs.get(node.name)
                if proc is not None and proc.poll() is not None:
                    raise Unavailable(
                        f"{node.name} exited with status {proc.returncode} during start-up; "
                        f"its log ({node.log_file}) ends with:\n{_tail(node.log_file)}"
                    )

            async def answers(node: DevNode = node) -> bool:
                reply = (await pool.call(node.rpc_address, Ping())).message
                assert isinstance(reply, Pong)
                node.node_id = reply.node_id
                return True

            await retry_until(
                answers,
                timeout=READY_TIMEOUT,
                before=still_running,
                giving_up=f"{node.name} did not answer on {node.rpc_address} within "
                f"{READY_TIMEOUT:g}s; see {node.log_file}",
            )


MAX_VOTERS = 5


async def _form_voters(cluster: DevCluster) -> None:
    """Promote the joined learners to voters (up to five), one change at a time;
    further nodes joined storage-only."""
    creds = read_secret_file(cluster.secret_file)
    seed = cluster.nodes[0].rpc_address
    async with open_rpc_pool(
        creds, connect_timeout=2, call_timeout=10, client_name="dev-up"
    ) as pool:
        for node in cluster.nodes[1:MAX_VOTERS]:

            async def is_voter(node: DevNode = node) -> bool:
                status = (await pool.call(seed, RaftStatus())).message
                assert isinstance(status, RaftStatusReply)
                if node.node_id in status.learners:
                    change = ChangeMembership("add_voter", node.node_id, node.rpc_address)
                    await pool.call(seed, change)
                    return False  # confirm through the status on the next round
                return node.node_id in status.voters

            await retry_until(
                is_voter,
                timeout=READY_TIMEOUT,
                giving_up=f"{node.name} did not become a voter within {READY_TIMEOUT:g}s; "
                f"see {node.log_file}",
            )


async def _wait_registered(cluster: DevCluster) -> None:
    """Every node is in the namespace's node registry (so data can be placed on it)."""
    creds = read_secret_file(cluster.secret_file)
    wanted = {node.node_id for node in cluster.nodes}
    async with open_rpc_pool(
        creds, connect_timeout=2, call_timeout=10, client_name="dev-up"
    ) as pool:
        rounds = 0

        async def registered() -> bool:
            # Any node can answer (a node removed from the Raft group cannot).
            nonlocal rounds
            rounds += 1
            address = cluster.nodes[rounds % len(cluster.nodes)].rpc_address
            reply = (await pool.call(address, Query(encode_message(ListNodes())))).message
            assert isinstance(reply, QueryResult)
            nodes = decode_message(reply.result)
            assert isinstance(nodes, NodeList)
            return wanted <= {n.node for n in nodes.nodes}

        await retry_until(
            registered,
            timeout=READY_TIMEOUT,
            giving_up=f"not every node entered the node registry within {READY_TIMEOUT:g}s",
        )


async def _wait_root_owner(cluster: DevCluster) -> None:
    """The root directory has the owner ``up`` asked for (`prismfs.node.root_owner`)
    before ``up`` returns: a mount made at once must let that user write."""
    first = Path(cluster.nodes[0].data_dir)

    async def given() -> bool:
        # The founding node deletes the request once the change is committed.
        return requested_root_owner(first) is None

    await retry_until(
        given,
        timeout=READY_TIMEOUT,
        giving_up=f"the root directory did not get its owner within {READY_TIMEOUT:g}s; "
        f"see {cluster.nodes[0].log_file}",
    )


def down(directory: Path, say: Say, timeout: float = STOP_TIMEOUT) -> list[tuple[DevNode, str]]:
    """Stop the recorded node processes: SIGTERM, then SIGKILL after ``timeout``."""
    directory = directory.resolve()
    if not (directory / DEV_STATE_FILE).exists():
        raise ConfigError(f"no dev cluster in {directory}")
    with _cluster_lock(directory):
        return _down(directory, say, timeout)


def _down(directory: Path, say: Say, timeout: float) -> list[tuple[DevNode, str]]:
    cluster = DevCluster.load(directory)
    if cluster is None:
        raise ConfigError(f"no dev cluster in {directory}")
    _unmount(cluster, say)  # first, while the cluster can still take the last writes
    outcomes: dict[str, str] = {}
    for node in cluster.nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):  # it may exit on its own meanwhile
                os.kill(node.pid, signal.SIGTERM)
            outcomes[node.name] = "stopped"
        else:
            outcomes[node.name] = "was not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(n.alive() for n in cluster.nodes):
        time.sleep(0.05)
    for node in cluster.nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            outcomes[node.name] = f"killed (no exit within {timeout:g}s of SIGTERM)"
    kill_deadline = time.monotonic() + 5
    while time.monotonic() < kill_deadline and any(n.alive() for n in cluster.nodes):
        time.sleep(0.05)
    DevRegistry().remove(directory)
    result = []
    for node in cluster.nodes:
        say(f"{node.name} (pid {node.pid}): {outcomes[node.name]}")
        result.append((node, outcomes[node.name]))
    return result


def status(directory: Path) -> list[dict[str, Any]]:
    """Every node with its id, pid, liveness, address and role (asked over RPC)."""
    directory = directory.resolve()
    cluster = DevCluster.load(directory)
    if cluster is None:
        raise ConfigError(f"no dev cluster in {directory}")
    return trio.run(_status, cluster)


async def _status(cluster: DevCluster) -> list[dict[str, Any]]:
    rows = []
    creds = read_secret_file(cluster.secret_file)
    async with open_rpc_pool(
        creds, connect_timeout=2, call_timeout=2, client_name="dev-status"
    ) as pool:
        for node in cluster.nodes:
            row: dict[str, Any] = {
                "name": node.name,
                "id": node.node_id,
                "pid": node.pid,
                "alive": node.alive(),
                "rpc_address": node.rpc_address,
                "http_address": None,
                "role": "down",
                "data_dir": node.data_dir,
                "log": str(node.log_file),
            }
            if row["alive"]:
                try:
                    pong = (await pool.call(node.rpc_address, Ping())).message
                    assert isinstance(pong, Pong)
                    row.update(id=pong.node_id, role=pong.role, http_address=pong.http_address)
                except PrismError as exc:
                    row["role"] = "unreachable"
                    row["error"] = exc.message
            rows.append(row)
    return rows
