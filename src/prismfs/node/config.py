"""Node configuration: a TOML file, overridden by command-line flags.

Every key is documented in ``docs/configuration.md``; keep the two in step.
Unknown keys and wrong types are refused with the key's path, so a typo in a
config file is an error at start, not a silently ignored setting.

Without ``--config``, a node reads ``node.toml`` from the user's configuration
directory (``$XDG_CONFIG_HOME/prismfs``) or else the machine's
(``/etc/prismfs``, or ``$PRISMFS_ETC``), if one exists (`find_node_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from prismfs.config_files import default_config_file, read_toml
from prismfs.errors import ConfigError
from prismfs.node.consensus import ConsensusConfig
from prismfs.wire.address import parse_address
from prismfs.wire.frames import FrameLimits, MiB
from prismfs.wire.server import ServerLimits
from prismfs.wire.tls import TlsConfig

DEFAULT_PORT = 7070


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NodeSection(_Section):
    data_dir: str = ""
    """The node's data directory (--data-dir); required, in the file or as a flag."""
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    """HOST:PORT for RPC (--listen); port 0 picks a free one."""
    advertise: str = ""
    """The address others reach this node at (--advertise); empty: the
    address bound, or on 0.0.0.0/:: the interface that routes to the --join node."""
    zone: str = ""
    """Failure domain (rack, host, room) (--zone): placement spreads each
    chunk's shards over zones first."""
    shutdown_grace: float = 5.0
    """Seconds running calls get to finish after SIGTERM or SIGINT."""


ORPHAN_GRACE_S = 6 * 3600.0
"""How old an unreferenced shard must be before the orphan sweep (or fsck --repair)
deletes it: longer than any upload takes between storing a shard and committing it."""
MIN_REPAIR_GRACE_S = 600.0
"""fsck --repair refuses a shorter grace unless forced."""


class HttpSection(_Section):
    """The HTTP API (docs/api.md); off unless ``listen`` is set."""

    listen: str = ""
    """HOST:PORT to serve the HTTP API on ("" = no HTTP API)."""
    max_upload_gib: float = 1024.0
    """Largest file a PUT may write (larger bodies get 413)."""
    token_cache_s: float = 5.0
    """How long a checked token is remembered (a revoked one works this long)."""
    max_connections: int = 1000
    """Connections served at once; beyond it the node stops accepting (they wait
    in the listen queue) until one closes, so clients cannot exhaust its files."""
    tls_cert: str = ""
    """Serve HTTPS with this PEM certificate (chain) and ``tls_key``."""
    tls_key: str = ""
    """Serve HTTPS with this certificate and key (PEM files)."""


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe level logged (--log-level)."""
    file: str = ""
    """Log file (--log-file); empty: stderr (the journal under systemd).
    Reopened by itself when logrotate moves it away."""
    format: Literal["text", "json"] = "text"
    """text, or json: one JSON object per line (--log-format)."""


class TlsSection(_Section):
    cert: str = ""
    """A PEM certificate (chain) to serve TLS with instead of one the node
    issues itself from the cluster CA (--tls-cert)."""
    key: str = ""
    """Its private key (--tls-key)."""
    ca: str = ""
    """The CA of such certificates, for dialling other nodes (--tls-ca;
    default: the cluster's own CA)."""
    insecure: bool = False
    """No TLS at all, for every node and client alike (--insecure)."""


class RpcSection(_Section):
    max_payload_mib: int = 64
    """Largest bulk payload of one frame (1..1024)."""
    max_inflight: int = 4096
    """Requests running at once on one connection; more are answered
    ``overloaded``."""
    max_inflight_mib: int = 256
    """Request payload held by running calls of one connection; beyond
    it the node stops reading from it (TCP back-pressure)."""
    max_connections: int = 1024
    """Connections served at once; more are closed at accept."""
    handshake_timeout: float = 5.0
    """Seconds a new connection has to authenticate (TLS included)."""
    auth_timeout: float = 2.0
    """Seconds a client has, after the node's HELLO, to send its AUTH frame."""
    max_handshakes: int = 64
    """Connections not yet authenticated from hosts that are not nodes of
    the cluster; a new one beyond it closes the oldest."""
    reserved_handshakes: int = 16
    """Handshakes kept for the cluster's own node hosts."""
    max_handshakes_per_address: int = 8
    """Connections not yet authenticated from one address; a new one
    beyond it closes that address's oldest."""


class RaftSection(_Section):
    tick_ms: int = 50
    """The Raft clock tick, in milliseconds."""
    election_ticks: int = 10
    """Election timeout: random in [this, 2 * this) ticks."""
    heartbeat_ticks: int = 2
    """The leader sends heartbeats every this many ticks."""
    snapshot_every: int = 10_000
    """Snapshot and compact the log after about this many applied entries."""
    snapshot_mb: int = 64
    """... or after about this many MiB of them."""
    snapshot_mb_per_s: float = 50.0
    """Pace of a snapshot's (and a backup's) copy of the database; 0: unpaced."""
    lease_reads: bool = True
    """The leader answers reads from its own state while a quorum heard
    its heartbeat recently; false: each read waits for a heartbeat round."""
    voters: int = 3
    """How many voters the leader keeps by itself (3 or 5; others are
    storage-only or non-voting replicas)."""
    replace_down_voter_s: float = 600.0
    """A voter down this long hands its vote to an up node."""


class MetaSection(_Section):
    """The metadata leader's service to mounts."""

    dir_lease_s: float = 2.0
    """Directory leases: how long a mount may answer lookups and listings of a
    directory from its own copy before asking again (the leader recalls the
    copy before any change). 0 turns leases off. A new leader applies no
    directory change for this long (times 1.1) after it takes over."""


class StoreSection(_Section):
    """Where this node keeps its shards (see docs/backends.md)."""

    backend: str = "local"
    """local, s3 or an installed plugin's name."""
    path: str = ""
    """local: the directory of the shards (default: <data dir>/shards)."""
    bucket: str = ""
    """s3: the bucket (it must exist)."""
    prefix: str = ""
    """s3: a prefix for this node's objects."""
    endpoint: str = ""
    """s3: the endpoint URL (empty: AWS)."""
    region: str = ""
    """s3: the region (default us-east-1)."""
    access_key: str = ""
    """s3: the access key (empty: boto3's usual chain)."""
    secret_key: str = ""
    """s3: the secret key."""
    capacity_gb: float = 0.0
    """The capacity the node reports for placement when its store cannot
    tell (s3); 0: unknown."""
    options: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    """Free-form options handed to a plugin backend."""

    def store_options(self, data_dir: Path) -> dict[str, object]:
        fields = {
            "path": self.path or (str(data_dir / "shards") if self.backend == "local" else ""),
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "capacity_gb": self.capacity_gb,
        }
        return {**{k: v for k, v in fields.items() if v}, **self.options}


class DataSection(_Section):
    """Background work on shards."""

    gc_interval_s: float = 2.0
    """How often the leader deletes the shards of replaced and freed chunks."""
    orphan_sweep_s: float = 600.0
    """How often a node looks for shards no chunk record refers to."""
    orphan_grace_s: float = ORPHAN_GRACE_S
    """Age below which an unreferenced shard is left alone (a write in progress)."""
    heartbeat_s: float = 1.0
    """How often a node tells the leader it is alive."""
    node_down_after_s: float = 10.0
    """A node whose heartbeats the leader has missed this long is "down"."""
    repair_after_s: float = 60.0
    """How long a node stays down before its shards are rebuilt elsewhere (0 = at once)."""
    repair_mb_per_s: float = 100.0
    """Bandwidth the leader's repair may use (MB/s of shards read and written)."""
    rebalance_spread: float = 0.1
    """Rebalancing moves shards while the fullest and the emptiest node's fill
    differ by more than this fraction of the mean fill."""
    rebalance_mb_per_s: float = 50.0
    """Bandwidth of draining and rebalancing (MB/s of shards read and written)."""
    move_delete_after_s: float = 30.0
    """How long the old copy of a moved shard is kept (readers that opened the
    file before the move still find it there)."""
    scrub_mb_per_s: float = 50.0
    """How fast a scrub pass reads shards (MB/s, summed over the nodes)."""
    scrub_interval_days: float = 30.0
    """The leader starts a scrub pass by itself once the last completed one is
    this old (0 = only ``prismfs scrub start``)."""
    min_redundancy: int = 1
    """How many more node losses every acknowledged chunk must survive. With too
    few nodes up for a directory's layout, writes use a smaller one that keeps
    this margin (re-encoded when nodes return); below it they fail. The
    leader's value holds for the whole cluster: set the same on every node."""
    default_layout: str = ""
    """The cluster-wide default layout (k=,m=,chunk=). If set, the leader writes it
    to the root directory's prismfs.layout once, unless the root has one."""


class NodeConfig(_Section):
    node: NodeSection = msgspec.field(default_factory=NodeSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    rpc: RpcSection = msgspec.field(default_factory=RpcSection)
    raft: RaftSection = msgspec.field(default_factory=RaftSection)
    meta: MetaSection = msgspec.field(default_factory=MetaSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    data: DataSection = msgspec.field(default_factory=DataSection)

    def consensus_config(self) -> ConsensusConfig:
        return ConsensusConfig(
            tick_s=self.raft.tick_ms / 1000,
            election_ticks=self.raft.election_ticks,
            heartbeat_ticks=self.raft.heartbeat_ticks,
            snapshot_every=self.raft.snapshot_every,
            snapshot_bytes=self.raft.snapshot_mb << 20,
            snapshot_mb_per_s=self.raft.snapshot_mb_per_s,
            lease_reads=self.raft.lease_reads,
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.node.listen, default_port=DEFAULT_PORT)

    def tls_config(self) -> TlsConfig:
        return TlsConfig(
            cert=Path(self.tls.cert) if self.tls.cert else None,
            key=Path(self.tls.key) if self.tls.key else None,
            ca=Path(self.tls.ca) if self.tls.ca else None,
            insecure=self.tls.insecure,
        )

    def server_limits(self) -> ServerLimits:
        return ServerLimits(
            frame=FrameLimits(max_payload=self.rpc.max_payload_mib * MiB),
            max_inflight=self.rpc.max_inflight,
            max_inflight_bytes=self.rpc.max_inflight_mib * MiB,
            max_connections=self.rpc.max_connections,
            handshake_timeout=self.rpc.handshake_timeout,
            auth_timeout=self.rpc.auth_timeout,
            max_handshakes=self.rpc.max_handshakes,
            reserved_handshakes=self.rpc.reserved_handshakes,
            max_handshakes_per_address=self.rpc.max_handshakes_per_address,
        )


NODE_CONFIG_NAME = "node.toml"


def find_node_config(explicit: Path | None) -> Path | None:
    """The node.toml to read: ``explicit`` (``--config``) if given, else the
    first default location that holds one, else none (flags only)."""
    return explicit if explicit is not None else default_config_file(NODE_CONFIG_NAME)


def load_node_config(path: Path | None, overrides: dict[str, dict[str, Any]]) -> NodeConfig:
    """Read ``path`` (if given), apply flag ``overrides`` per section, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, "config file")
    for section, values in overrides.items():
        current = raw.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"config key {section!r} must be a table")
        current.update({k: v for k, v in values.items() if v is not None})
    try:
        config = msgspec.convert(raw, NodeConfig)
    except msgspec.ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}: {exc}") from None
    _check(config)
    return config


def _check(config: NodeConfig) -> None:
    if not config.node.data_dir:
        raise ConfigError("no data directory: pass --data-dir or set node.data_dir")
    config.listen_address  # noqa: B018 - parses, raising InvalidArgument on a bad address
    if config.node.advertise:
        parse_address(config.node.advertise)
    if not 1 <= config.rpc.max_payload_mib <= 1024:
        raise ConfigError("rpc.max_payload_mib must be between 1 and 1024")
    if min(config.rpc.max_inflight, config.rpc.max_connections, config.rpc.max_inflight_mib) < 1:
        raise ConfigError(
            "rpc.max_inflight, rpc.max_inflight_mib and rpc.max_connections must be at least 1"
        )
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("TLS needs both tls.cert and tls.key")
    if config.node.shutdown_grace < 0:
        raise ConfigError("node.shutdown_grace must not be negative")
    raft = config.raft
    if not (1 <= raft.tick_ms <= 10_000 and 1 <= raft.heartbeat_ticks < raft.election_ticks):
        raise ConfigError("raft: need tick_ms >= 1 and 1 <= heartbeat_ticks < election_ticks")
    if raft.snapshot_every < 1:
        raise ConfigError("raft.snapshot_every must be at least 1")
    if raft.snapshot_mb < 1:
        raise ConfigError("raft.snapshot_mb must be at least 1")
    if raft.voters not in (3, 5):
        raise ConfigError("raft.voters must be 3 or 5")
    if raft.replace_down_voter_s <= 0:
        raise ConfigError("raft.replace_down_voter_s must be more than 0")
    if raft.snapshot_mb_per_s < 0:
        raise ConfigError("raft.snapshot_mb_per_s must be 0 (unpaced) or more")
    if not 0 < config.rpc.handshake_timeout <= 300:
        raise ConfigError("rpc.handshake_timeout must be more than 0 and at most 300 seconds")
    if not 0 < config.rpc.auth_timeout <= 300:
        raise ConfigError("rpc.auth_timeout must be more than 0 and at most 300 seconds")
    for key in ("max_handshakes", "reserved_handshakes", "max_handshakes_per_address"):
        if not 1 <= getattr(config.rpc, key) <= 100_000:
            raise ConfigError(f"rpc.{key} must be between 1 and 100000")
    if not 0 <= config.meta.dir_lease_s <= 60:
        raise ConfigError("meta.dir_lease_s must be between 0 (no leases) and 60 seconds")
    data = config.data
    if not 0 < data.rebalance_spread <= 10:
        raise ConfigError("data.rebalance_spread must be more than 0 and at most 10")
    if min(data.rebalance_mb_per_s, data.repair_mb_per_s, data.scrub_mb_per_s) <= 0:
        raise ConfigError("data.*_mb_per_s must be more than 0")
    if not 0 <= data.scrub_interval_days <= 3650:
        raise ConfigError("data.scrub_interval_days must be between 0 (never) and 3650")
    if data.move_delete_after_s < 0:
        raise ConfigError("data.move_delete_after_s must not be negative")
    if config.http.listen:
        parse_address(config.http.listen)
    if not 0 < config.http.max_upload_gib <= 1 << 20:
        raise ConfigError("http.max_upload_gib must be more than 0")
    if not 0 <= config.http.token_cache_s <= 3600:
        raise ConfigError("http.token_cache_s must be between 0 and 3600")
    if not 0 <= config.data.min_redundancy <= 4:
        raise ConfigError("data.min_redundancy must be between 0 and 4")
    if not 1 <= config.http.max_connections <= 1_000_000:
        raise ConfigError("http.max_connections must be between 1 and 1000000")
    if bool(config.http.tls_cert) != bool(config.http.tls_key):
        raise ConfigError("HTTPS needs both http.tls_cert and http.tls_key")
    for key in ("tls_cert", "tls_key"):
        path = getattr(config.http, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"http.{key}: {path} is not a file")
