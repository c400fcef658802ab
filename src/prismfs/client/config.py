"""How every client command finds its cluster.

In order of precedence:

1. ``--cluster ADDR[,ADDR...]`` with ``--secret-file F`` (and ``--tls-ca``);
2. ``--config F`` or ``PRISMFS_CONFIG=F``: a ``client.toml``::

       cluster = ["127.0.0.1:7070", "127.0.0.1:7071"]
       secret_file = "/var/lib/prismfs/cluster.secret"   # relative to the file
       tls_ca = ""                                        # optional

3. the user's ``client.toml`` in ``$XDG_CONFIG_HOME/prismfs/`` (default
   ``~/.config/prismfs/``), then the machine's, ``/etc/prismfs/client.toml``
   (``PRISMFS_ETC`` names another directory than ``/etc/prismfs``);
4. the most recently started ``prismfs dev`` cluster that still has a live
   node, found through the dev registry (see `DevRegistry`).

The first source that gives anything wins; a half-given first source (an
address without a secret) is an error, not a reason to look further. A
configuration file that exists always beats a dev cluster, so a machine set
up for a real cluster never talks to a dev cluster by accident. The user's
file comes before the machine's because a user cannot edit ``/etc``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismfs.config_files import default_config_file, etc_dir, read_toml, user_config_dir
from prismfs.errors import ClusterNotFound, ConfigError
from prismfs.procs import process_alive
from prismfs.wire.address import parse_address
from prismfs.wire.auth import ClusterCredentials, read_secret_file
from prismfs.wire.tls import client_context

CONFIG_ENV = "PRISMFS_CONFIG"
DEV_STATE_FILE = "dev.json"
STATE_ENV = "PRISMFS_STATE_DIR"
CLIENT_CONFIG_NAME = "client.toml"


@dataclass(frozen=True)
class ClientConfig:
    addresses: tuple[str, ...]
    secret_file: Path
    tls_ca: Path | None = None
    source: str = ""
    insecure: bool = False
    """Talk to the nodes without TLS (they must run ``--insecure`` too)."""

    def credentials(self) -> ClusterCredentials:
        return read_secret_file(self.secret_file)

    def tls(self) -> dict[str, Any]:
        """How to talk TLS (`open_rpc_pool`'s ``ssl_context`` and ``insecure``):
        with the operator's CA if given, else the cluster CA of the credential."""
        if self.insecure:
            return {"ssl_context": None, "insecure": True}
        return {"ssl_context": client_context(self.tls_ca) if self.tls_ca else None}


def state_dir() -> Path:
    """Where per-user PrismFS state lives (the dev registry, default dev cluster)."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "prismfs"


def _addresses(items: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    out = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                parse_address(part.strip())
                out.append(part.strip())
    if not out:
        raise ConfigError(f"{where} names no cluster address")
    return tuple(out)


def load_client_toml(path: Path) -> ClientConfig:
    data = read_toml(path, "client config")
    unknown = set(data) - {"cluster", "secret_file", "tls_ca", "insecure"}
    if unknown:
        raise ConfigError(f"client config {path}: unknown keys {', '.join(sorted(unknown))}")
    cluster = data.get("cluster")
    if isinstance(cluster, str):
        cluster = [cluster]
    if not isinstance(cluster, list) or not isinstance(data.get("secret_file"), str):
        raise ConfigError(f"client config {path} needs 'cluster' (addresses) and 'secret_file'")
    base = path.parent
    tls_ca = data.get("tls_ca") or None
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"client config {path}: insecure is true or false")
    return ClientConfig(
        addresses=_addresses(cluster, str(path)),
        secret_file=base / data["secret_file"],
        tls_ca=base / tls_ca if isinstance(tls_ca, str) else None,
        source=str(path),
        insecure=insecure,
    )


def write_client_toml(
    path: Path, addresses: list[str], secret_file: Path, *, insecure: bool = False
) -> None:
    lines = [
        "# Written by prismfs; used by client commands with --config or PRISMFS_CONFIG.",
        "cluster = [" + ", ".join(json.dumps(a) for a in addresses) + "]",
        f"secret_file = {json.dumps(str(secret_file))}",
    ]
    if insecure:
        lines.append("insecure = true  # the nodes run without TLS")
    path.write_text("\n".join(lines) + "\n")


def resolve_client_config(
    cluster: str | None = None,
    secret_file: Path | None = None,
    config: Path | None = None,
    tls_ca: Path | None = None,
    insecure: bool = False,
) -> ClientConfig:
    if cluster or secret_file:
        if not (cluster and secret_file):
            raise ConfigError("--cluster and --secret-file go together")
        addresses = _addresses([cluster], "--cluster")
        return ClientConfig(addresses, secret_file, tls_ca, "command line", insecure)
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    path = path or default_config_file(CLIENT_CONFIG_NAME)
    if path is not None:
        loaded = load_client_toml(path)
        return dataclasses.replace(
            loaded, tls_ca=tls_ca or loaded.tls_ca, insecure=insecure or loaded.insecure
        )
    found = DevRegistry().most_recent_running()
    if found is None:
        raise ClusterNotFound(
            "no cluster given and no running dev cluster found: pass --cluster ADDR "
            "--secret-file F, or --config F (or set PRISMFS_CONFIG), write "
            f"{user_config_dir() / CLIENT_CONFIG_NAME} or {etc_dir() / CLIENT_CONFIG_NAME}, "
            "or start one with 'prismfs dev up'"
        )
    return load_client_toml(found / "client.toml")


class DevRegistry:
    """Which local dev clusters exist: one small JSON file per cluster directory.

    One file per cluster (named by a hash of its path) means two ``dev up``
    runs never write the same file.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or state_dir()) / "dev-clusters"

    def _entry(self, cluster_dir: Path) -> Path:
        digest = hashlib.sha256(str(cluster_dir.resolve()).encode()).hexdigest()[:16]
        return self.root / f"{digest}.json"

    def add(self, cluster_dir: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"dir": str(cluster_dir.resolve()), "started": time.time()}
        self._entry(cluster_dir).write_text(json.dumps(entry))

    def remove(self, cluster_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._entry(cluster_dir).unlink()

    def entries(self) -> list[tuple[float, Path]]:
        out = []
        for file in self.root.glob("*.json"):
            try:
                data = json.loads(file.read_text())
                out.append((float(data["started"]), Path(data["dir"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(out, reverse=True)

    def most_recent_running(self) -> Path | None:
        """The newest registered cluster with a live node (per its ``dev.json``)."""
        for _started, directory in self.entries():
            try:
                state = json.loads((directory / DEV_STATE_FILE).read_text())
                nodes = state["nodes"]
                if any(process_alive(int(n["pid"]), str(n["data_dir"])) for n in nodes):
                    return directory
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None
