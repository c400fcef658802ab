"""The storage-node daemon: wires configuration, credentials and the RPC server.

Start-up order: take the data-dir lock (a second node on the same directory
is refused before it touches anything), load the cluster credentials, set up
logging with the node id, listen, then publish ``node.json`` with the bound
address and tell systemd ``READY=1`` (under a ``Type=notify`` unit). The
daemon runs until SIGTERM or SIGINT, says ``STOPPING=1``, then shuts the RPC
server down gracefully (running calls get ``node.shutdown_grace`` seconds, new
ones are refused with `ShuttingDown`), removes ``node.json`` and releases the
lock.

Later layers (Raft, metadata, shard store) register their handlers on the
same server in `NodeService.__init__`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from prismfs import __version__, clock, faults
from prismfs.clock import wall_ns
from prismfs.data.layout import LAYOUT_XATTR, Layout
from prismfs.data.service import ShardService
from prismfs.data.stores import ShardStore, open_store
from prismfs.errors import (
    ConfChangeInProgress,
    ConfigError,
    InvalidArgument,
    NoAttribute,
    PrismError,
)
from prismfs.exception_groups import single_exception
from prismfs.gateway.server import serve_http
from prismfs.ids import NodeId
from prismfs.leader.activity import ActivityHistory
from prismfs.leader.admin import Admin
from prismfs.leader.backup import Backups
from prismfs.leader.faults import FaultBudgets
from prismfs.leader.gc import gc_loop, orphan_loop
from prismfs.leader.rebalance import Mover
from prismfs.leader.repair import Health, repair_loop, send_heartbeats, watch_nodes
from prismfs.leader.scrub import Scrub
from prismfs.meta.commands import (
    MIN_REDUNDANCY_XATTR,
    ROOT_INO,
    XATTR_CREATE,
    RegisterNode,
    SetAttr,
    SetXattr,
)
from prismfs.meta.namespace import Namespace
from prismfs.node import datadir, systemd
from prismfs.node.config import NodeConfig
from prismfs.node.consensus import Consensus
from prismfs.node.consensus_messages import ChangeMembership
from prismfs.node.leases import LeaseService
from prismfs.node.logs import setup_logging
from prismfs.node.metalink import SEEDS_FILE
from prismfs.node.root_owner import requested_root_owner, root_owner_given
from prismfs.node.sessions import SessionLeases, expire_sessions
from prismfs.procs import raise_open_file_limit
from prismfs.wire.address import format_address, parse_address
from prismfs.wire.auth import EVERYONE, ClusterCredentials
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.codec import encode_message
from prismfs.wire.messages import Echo, EchoReply, Ping, Pong
from prismfs.wire.server import Call, Reply, RpcServer
from prismfs.wire.tls import client_context, server_context

log = logging.getLogger("prismfs.node")


class NodeService:
    """The handlers a node serves, around one `RpcServer`."""

    def __init__(self, config: NodeConfig, creds: ClusterCredentials, node_id: NodeId) -> None:
        self.config = config
        self.creds = creds
        self.node_id = node_id
        tls = config.tls_config()
        self.server = RpcServer(
            creds,
            node_id,
            ssl_context=server_context(tls) if tls.serves else None,
            limits=config.server_limits(),
            insecure=tls.insecure,
        )
        self.rpc_address = ""
        self.http_address = ""
        self.consensus: Consensus | None = None
        self._zeros = b""  # shared source of Echo "source" replies, grown on demand
        self.started = trio.current_time()
        self.server.register(Ping, self.ping, roles=EVERYONE)
        self.server.register(Echo, self.echo, roles=EVERYONE)

    async def ping(self, request: Ping, call: Call) -> Pong:
        return Pong(
            node_id=self.node_id,
            cluster_id=self.creds.cluster_id,
            version=__version__,
            role=self.consensus.role if self.consensus else "starting",
            rpc_address=self.rpc_address,
            uptime_s=trio.current_time() - self.started,
            pid=os.getpid(),
            http_address=self.http_address or None,
        )

    async def echo(self, request: Echo, call: Call) -> EchoReply | Reply:
        if request.mode == "sink":
            return EchoReply(len(call.payload))
        if request.mode == "source":
            if not 0 <= request.size <= self.server.limits.frame.max_payload:
                raise InvalidArgument(
                    f"size {request.size} is outside 0..{self.server.limits.frame.max_payload}"
                )
            if len(self._zeros) < request.size:
                self._zeros = bytes(request.size)
            return Reply(EchoReply(len(call.payload)), memoryview(self._zeros)[: request.size])
        return Reply(EchoReply(len(call.payload)), call.payload)


async def serve_node(
    config: NodeConfig,
    creds: ClusterCredentials,
    node_id: NodeId,
    join: str | None = None,
    replica: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT; the caller holds the data-dir lock."""
    service = NodeService(config, creds, node_id)
    route_host = "" if config.node.advertise else _wildcard_advertise_host(config, join)
    if config.data.default_layout:
        try:
            Layout.parse(config.data.default_layout)
        except InvalidArgument as exc:
            raise ConfigError(f"[data] default_layout: {exc.message}") from None
    raise_open_file_limit()
    store = open_store(config.store.backend, config.store.store_options(config.data_dir))
    shards = ShardService(store)
    shards.register(service.server)
    host, port = config.listen_address
    tls = config.tls_config()
    peer_tls = client_context(tls.ca) if tls.ca and not tls.insecure else None
    if tls.insecure:
        log.warning(
            "running without TLS (--insecure): traffic after the handshake is not "
            "authenticated; use only on a trusted network"
        )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, single_exception():
        async with (
            open_rpc_pool(
                creds,
                ssl_context=peer_tls,
                client_name=f"node {node_id}",
                node_id=node_id,
                insecure=tls.insecure,
            ) as pool,
            trio.open_nursery() as nursery,
        ):
            pool.unreachable = faults.partition(config.data_dir)
            pool.stats = service.server.stats  # one set of counters per node (`/metrics`)
            shards.pool = pool  # copies and rebuilds read from other nodes
            try:
                addresses = await nursery.start(service.server.serve, host, port)
            except OSError as exc:
                raise InvalidArgument(
                    f"cannot listen on {config.node.listen}: {exc.strerror}"
                ) from None
            service.rpc_address = config.node.advertise or addresses[0]
            if route_host:
                service.rpc_address = format_address(route_host, parse_address(addresses[0])[1])
            namespace = _open_namespace(config.data_dir)
            leases = SessionLeases(namespace)
            consensus = Consensus(
                node_id,
                service.rpc_address,
                config.data_dir / "raft",
                pool,
                namespace,
                config.consensus_config(),
            )
            consensus.stats = service.server.stats
            consensus.register(service.server)
            leases.register(service.server, consensus)
            if config.meta.dir_lease_s > 0:
                consensus.leases = LeaseService(
                    namespace, config.meta.dir_lease_s, service.server.stats
                )
                consensus.leases.register(service.server)
            service.consensus = consensus
            health = Health()
            health.register(service.server)
            scrub = Scrub(
                consensus,
                namespace,
                pool,
                config.data.scrub_mb_per_s,
                interval_s=config.data.scrub_interval_days * 86400,
            )
            mover = Mover(
                consensus,
                namespace,
                pool,
                health,
                spread=config.data.rebalance_spread,
                mb_per_s=config.data.rebalance_mb_per_s,
                delete_after_s=config.data.move_delete_after_s,
            )
            admin = Admin(consensus, namespace, pool, health, scrub, mover)
            admin.register(service.server)
            Backups(consensus, namespace, config.data_dir, config.raft.snapshot_mb_per_s).register(
                service.server
            )
            FaultBudgets(consensus, namespace).register(service.server)
            history = ActivityHistory(
                consensus,
                health,
                mover,
                scrub,
                lambda: (shards.bytes_in, shards.bytes_out),
                node_id,
            )
            history.register(service.server)
            await nursery.start(history.run)
            await nursery.start(scrub.run)
            await nursery.start(mover.run)
            await nursery.start(consensus.run)
            http_shutdown = trio.Event()
            if config.http.listen:
                try:
                    service.http_address = await nursery.start(
                        serve_http,
                        config.http,
                        pool,
                        service.rpc_address,
                        consensus,
                        namespace,
                        health,
                        mover,
                        http_shutdown,
                    )
                except OSError as exc:
                    raise InvalidArgument(
                        f"cannot serve HTTP on {config.http.listen}: {exc.strerror}"
                    ) from None
            datadir.write_state(
                config.data_dir,
                {
                    "node_id": node_id,
                    "cluster_id": creds.cluster_id,
                    "pid": os.getpid(),
                    "rpc_address": service.rpc_address,
                    "http_address": service.http_address,
                    "listen": addresses,
                    "version": __version__,
                },
            )
            log.info(
                "node %s of cluster %s serving RPC on %s",
                node_id,
                creds.cluster_id,
                ", ".join(addresses),
            )
            if systemd.notify("READY=1"):  # Type=notify: the node answers RPCs from now on
                log.debug("told systemd the node is ready")
            nursery.start_soon(expire_sessions, consensus, leases)
            nursery.start_soon(
                admin.keep_voters, config.raft.voters, config.raft.replace_down_voter_s
            )
            nursery.start_soon(_checkpoint_loop, namespace, consensus)
            consensus.revoked = namespace.revoked_credentials
            nursery.start_soon(_keep_server_lists, service.server, consensus, namespace)
            if config.data.default_layout:
                nursery.start_soon(
                    _default_layout, consensus, namespace, config.data.default_layout
                )
            nursery.start_soon(_min_redundancy, consensus, namespace, config.data.min_redundancy)
            nursery.start_soon(gc_loop, consensus, namespace, pool, config.data.gc_interval_s)
            nursery.start_soon(
                orphan_loop,
                consensus,
                store,
                config.data.orphan_sweep_s,
                config.data.orphan_grace_s,
                node_id,
            )
            data = config.data
            nursery.start_soon(
                send_heartbeats,
                consensus,
                pool,
                node_id,
                data.heartbeat_s,
                lambda: os.kill(os.getpid(), signal.SIGTERM),
                lambda: (shards.bytes_in, shards.bytes_out),
            )
            nursery.start_soon(
                watch_nodes,
                consensus,
                namespace,
                health,
                node_id,
                data.heartbeat_s,
                data.node_down_after_s,
            )
            nursery.start_soon(
                repair_loop,
                consensus,
                namespace,
                pool,
                health,
                data.repair_after_s,
                data.repair_mb_per_s,
            )
            clean = getattr(store, "clean_temporary", None)
            if clean is not None:
                nursery.start_soon(_clean_store, clean)
            owner = requested_root_owner(config.data_dir)
            if owner is not None:
                nursery.start_soon(_give_root_owner, consensus, node_id, config.data_dir, owner)
            me = (node_id, service.rpc_address, config.node.zone, store)
            nursery.start_soon(_register, consensus, *me)
            if join and not consensus.is_member():
                # Storage-only unless asked to replicate the namespace: it
                # reaches the metadata group through ``join`` (remembered).
                consensus.link.add_seed(join, own=service.rpc_address)
                if replica:
                    nursery.start_soon(_join, pool, join, node_id, service.rpc_address)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                systemd.notify("STOPPING=1")
                http_shutdown.set()
                await service.server.shutdown(config.node.shutdown_grace)
                nursery.cancel_scope.cancel()
                break
    with trio.CancelScope(shield=True):
        await store.close()
    log.info("node %s stopped", node_id)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*"})


def _wildcard_advertise_host(config: NodeConfig, join: str | None) -> str:
    """The host to advertise for a node listening on every interface without
    ``node.advertise`` ("" if it listens on one address, which it advertises).
    The wildcard itself means nothing to other machines, so take the address
    of the interface that routes to a peer: ``--join``, else a member this node
    remembers from an earlier run. With no peer, refuse: only the operator
    knows which of the addresses the others can reach."""
    host, _port = config.listen_address
    if host not in WILDCARD_HOSTS:
        return ""
    peers = [join] if join else _remembered_seeds(config.data_dir)
    if not peers:
        raise ConfigError(
            f"listening on {config.node.listen} (every interface) needs --advertise HOST:PORT "
            "(node.advertise): the address other nodes and clients reach this node at; "
            "a node started with --join uses its interface towards that node by itself"
        )
    return route_source(peers[0])


def route_source(peer: str) -> str:
    """This machine's address on the interface that routes to ``peer``. A UDP
    socket's connect only chooses the route: no packet is sent."""
    host, port = parse_address(peer)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _name, target = found[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise ConfigError(
            f"cannot find this machine's address towards {peer} ({exc.strerror or exc}): "
            "pass --advertise HOST:PORT"
        ) from None


def _remembered_seeds(data_dir: Path) -> list[str]:
    """The cluster members a storage-only node learnt of in an earlier run."""
    try:
        seeds = json.loads((data_dir / "raft" / SEEDS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [s for s in seeds if isinstance(s, str)] if isinstance(seeds, list) else []


async def _clean_store(clean: Callable[[], Awaitable[int]]) -> None:
    """Remove what a crash of an earlier run left in the shard store (half-written
    temporary files)."""
    try:
        removed = await clean()
    except OSError as exc:
        log.warning("could not clean the shard store's temporary files: %s", exc)
        return
    if removed:
        log.info("removed %d temporary files an earlier run left in the shard store", removed)


CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024  # about SQLite's own default of 1000 pages


async def _checkpoint_loop(namespace: Namespace, consensus: Consensus) -> None:
    """The metadata database's WAL checkpoints, in a worker thread, off the
    event loop where entries are applied."""
    while True:
        await trio.sleep(0.5)
        if namespace.wal_bytes() < CHECKPOINT_WAL_BYTES:
            continue
        start = trio.current_time()
        try:
            await trio.to_thread.run_sync(namespace.checkpoint)
        except sqlite3.Error as exc:  # the next round tries again; commits go on meanwhile
            log.warning("metadata checkpoint failed, will retry: %s", exc)
            continue
        consensus.stats.observe("sqlite.checkpoint", trio.current_time() - start)


SERVER_LISTS_S = 1.0
"""How soon a revoked client credential is refused (and its connections
closed), and a new node's host gets the handshake budget of the nodes."""


async def _keep_server_lists(server: RpcServer, consensus: Consensus, namespace: Namespace) -> None:
    """Keep the server's lists current: the revoked client credentials and the
    hosts of the cluster's nodes. From the namespace on a member, from the
    members' answers on a storage-only node."""
    while True:
        if consensus.is_member():
            revoked = consensus.revoked()
            addresses = [n.address for n in namespace.nodes()]
        else:
            revoked = consensus.link.revoked
            status = consensus.link.status
            addresses = [a for _, a in status.addresses] if status is not None else []
        if revoked != server.revoked:
            server.revoke(revoked)
        hosts = set()
        for address in addresses:
            with contextlib.suppress(PrismError):
                hosts.add(parse_address(address)[0])
        server.known_hosts = frozenset(hosts)
        await trio.sleep(SERVER_LISTS_S)


def _open_namespace(data_dir: Path) -> Namespace:
    meta_dir = data_dir / "meta"
    meta_dir.mkdir(mode=0o700, exist_ok=True)
    return Namespace(meta_dir / "namespace.db")


async def _default_layout(consensus: Consensus, namespace: Namespace, layout: str) -> None:
    """Give the root directory the configured layout, once, if it has none."""
    while True:
        await trio.sleep(1.0)
        if consensus.role != "leader":
            continue
        try:
            namespace.getxattr(ROOT_INO, LAYOUT_XATTR)
            return  # already set (by this, or by an administrator)
        except NoAttribute:
            pass
        command = SetXattr(wall_ns(), ROOT_INO, LAYOUT_XATTR, layout.encode(), XATTR_CREATE)
        try:
            await consensus.propose_internal(encode_message(command))
            log.info("cluster default layout set on / : %s", layout)
            return
        except PrismError as exc:
            log.debug("default layout not set yet: %s", exc.message)


async def _min_redundancy(consensus: Consensus, namespace: Namespace, value: int) -> None:
    """On the leader: publish ``[data] min_redundancy`` to the clients (an
    attribute of the root directory, read with the node registry)."""
    while True:
        await trio.sleep(1.0)
        if consensus.role != "leader" or namespace.min_redundancy() == value:
            continue
        command = SetXattr(wall_ns(), ROOT_INO, MIN_REDUNDANCY_XATTR, str(value).encode())
        try:
            await consensus.propose_internal(encode_message(command))
            log.info("cluster min_redundancy set to %d", value)
        except PrismError as exc:
            log.debug("min_redundancy not set yet: %s", exc.message)


async def _register(
    consensus: Consensus, node_id: str, address: str, zone: str, store: ShardStore
) -> None:
    """Enter (or update) this node in the namespace's node registry, retrying
    until a leader accepts it. Each start registers under a client id of its
    own (random, never a clock reading: a clock set back must not make a new
    start look like a retry of an old one); all attempts of one start share
    it, so a retry of an attempt that did apply is answered from the
    exactly-once table."""
    capacity = (await store.capacity()).total
    command = encode_message(RegisterNode(wall_ns(), node_id, address, zone, capacity))
    client, seq = f"node:{node_id}:{secrets.token_hex(8)}", 1
    delay = 0.2
    while True:
        try:
            await consensus.propose(client, seq, command)
            log.info("registered in the node registry as %s (zone %r)", address, zone)
            return
        except PrismError as exc:
            if not exc.transient:
                log.error("node registration refused: %s", exc.message)
                return
        await trio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _give_root_owner(
    consensus: Consensus, node_id: str, data_dir: Path, owner: tuple[int, int]
) -> None:
    """Give the root directory to the owner ``cluster init`` recorded (see
    `prismfs.node.root_owner`), through Raft, retrying until a leader takes
    it; then forget the request, so it is given once."""
    command = encode_message(SetAttr(wall_ns(), ROOT_INO, uid=owner[0], gid=owner[1]))
    client, delay = f"node:{node_id}:root:{secrets.token_hex(8)}", 0.1
    while True:
        try:
            await consensus.propose(client, 1, command)
            break
        except PrismError as exc:
            if not exc.transient:
                log.error("could not give the root directory to %d:%d: %s", *owner, exc.message)
                return
        await trio.sleep(delay)
        delay = min(delay * 2, 2.0)
    root_owner_given(data_dir)
    log.info("the root directory belongs to uid %d, gid %d", *owner)


async def _join(pool: RpcPool, seed: str, node_id: str, address: str) -> None:
    """Ask the cluster (through any member at ``seed``) to add this node as a learner."""
    delay = 0.2
    while True:
        try:
            await pool.call(seed, ChangeMembership("add_learner", node_id, address), timeout=10)
            log.info("joined the cluster through %s as a learner", seed)
            return
        except PrismError as exc:
            if not exc.transient and not isinstance(exc, ConfChangeInProgress):
                log.error("joining through %s failed: %s", seed, exc.message)
                return
            log.info("joining through %s: %s; retrying", seed, exc.message)
        await trio.sleep(delay)
        delay = min(delay * 2, 5.0)


def run_node(
    config: NodeConfig,
    secret_file: Path | None = None,
    join: str | None = None,
    replica: bool = False,
) -> None:
    """Blocking entry point of ``prismfs node start``."""
    data_dir = config.data_dir
    clock.use_directory(data_dir)
    parse_address(config.node.listen)
    if secret_file is None:
        datadir.load_credentials(data_dir)  # fail before creating anything
    lock = datadir.DataDirLock.acquire(data_dir)
    try:
        creds = (
            datadir.import_secret(data_dir, secret_file)
            if secret_file is not None
            else datadir.load_credentials(data_dir)
        )
        node_id = datadir.node_id(data_dir)
        setup_logging(node_id, config.log.level, config.log.file, config.log.format)
        try:
            trio.run(serve_node, config, creds, node_id, join, replica)
        finally:
            datadir.clear_state(data_dir)
    finally:
        lock.release()
