"""A node's data directory: identity, cluster secret, lock and run-state file.

Layout::

    D/cluster.secret   cluster id + secret, 0600 (`prismfs cluster init`, or
                       imported with --secret-file on a node's first start)
    D/node.id          this node's id, created on first start, never changed
    D/node.lock        flock()ed by the running node; holds its pid
    D/node.json        written once the node listens: pid, id, bound address;
                       removed on clean shutdown

Files that matter are written with temp + fsync + rename + fsync(dir), so a
crash leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismfs.durable import write_atomic
from prismfs.errors import AlreadyInitialized, ConfigError, DataDirLocked, NotInitialized
from prismfs.ids import NodeId
from prismfs.wire.auth import (
    CLIENT,
    CLIENT_SECRET_FILE_NAME,
    DEFAULT_CLIENT_CREDENTIAL,
    SECRET_FILE_NAME,
    ClusterCredentials,
    read_secret_file,
    write_secret_file,
)

NODE_ID_FILE = "node.id"
LOCK_FILE = "node.lock"
STATE_FILE = "node.json"


def _ensure_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise ConfigError(f"data directory {data_dir} is not a directory")


def init_cluster(data_dir: Path) -> ClusterCredentials:
    """Create a new cluster's identity in ``data_dir`` (the first node's)."""
    _ensure_dir(data_dir)
    secret_path = data_dir / SECRET_FILE_NAME
    if secret_path.exists():
        existing = read_secret_file(secret_path)
        raise AlreadyInitialized(
            f"{data_dir} already belongs to cluster {existing.cluster_id}",
            cluster_id=existing.cluster_id,
        )
    creds = ClusterCredentials.generate()
    write_secret_file(secret_path, creds)
    # What mount hosts and file commands get: a client credential, so that a
    # mount host cannot act as a node (its id is revocable like any other).
    write_secret_file(
        data_dir / CLIENT_SECRET_FILE_NAME,
        creds.derive(CLIENT, DEFAULT_CLIENT_CREDENTIAL),
        overwrite=True,
    )
    # This node founds the Raft group on its first start (see node.consensus).
    (data_dir / "raft").mkdir(exist_ok=True)
    (data_dir / "raft" / "bootstrap").touch()
    return creds


def import_secret(data_dir: Path, secret_file: Path) -> ClusterCredentials:
    """Give a new node the cluster secret; refuse to switch a node to another cluster."""
    _ensure_dir(data_dir)
    creds = read_secret_file(secret_file)
    own = data_dir / SECRET_FILE_NAME
    if own.exists():
        current = read_secret_file(own)
        if current.cluster_id != creds.cluster_id:
            raise AlreadyInitialized(
                f"{data_dir} belongs to cluster {current.cluster_id}, "
                f"but {secret_file} is for cluster {creds.cluster_id}"
            )
        return current
    write_secret_file(own, creds)
    return creds


def load_credentials(data_dir: Path) -> ClusterCredentials:
    path = data_dir / SECRET_FILE_NAME
    if not path.exists():
        raise NotInitialized(
            f"{data_dir} holds no cluster secret: run 'prismfs cluster init --data-dir {data_dir}' "
            f"for a new cluster, or pass --secret-file to join an existing one"
        )
    return read_secret_file(path)


def node_id(data_dir: Path) -> NodeId:
    """This node's id, created on first use."""
    path = data_dir / NODE_ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = secrets.token_hex(4)
        write_atomic(path, (text + "\n").encode())
    if not text or not all(c in "0123456789abcdef" for c in text):
        raise ConfigError(f"{path} is malformed; it should hold a hex node id")
    return NodeId(text)


@dataclass
class DataDirLock:
    """An exclusive flock on ``D/node.lock``; released by `release` or process exit."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        _ensure_dir(data_dir)
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {data_dir} is in use by another node (pid {holder})", pid=holder
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    write_atomic(data_dir / STATE_FILE, json.dumps(state, indent=2).encode())


def read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((data_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def clear_state(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / STATE_FILE).unlink()
