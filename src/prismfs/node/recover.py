"""Recovering the metadata group offline: after a lost Raft majority, or from a backup.

``prismfs node recover --data-dir D`` runs on a stopped node that held the
namespace (a voter or a replica). It makes that node the only voter, in the
way etcd's ``--force-new-cluster`` does, by appending to its own durable log,
in a new term, the membership changes that leave it alone (it becomes a
voter if it was a replica; every other voter becomes a replica). Started
again, the node elects itself, and its first commit commits everything its
log holds, those changes included. Entries no majority had acknowledged are
kept, not lost: the node keeps all it has.

``--from-backup FILE`` (a copy made by ``prismfs cluster backup``) replaces
the node's namespace by the backup instead: the Raft log and the database
are moved aside (``D/raft.before-recover-*``, ``D/meta/before-recover-*``)
and a new log starts from a snapshot whose image is the backup, with this
node the only voter.

Either way the other members stay in the membership as replicas, so a node
whose ``raft`` and ``meta`` directories were removed catches up from the
recovered one when it starts, and the leader makes voters again as usual.
One that still holds its old log must not be started: with another old
member it could elect a leader of its own.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from prismfs.durable import fsync_dir
from prismfs.errors import ConfigError, LogCorrupt
from prismfs.meta.namespace import Namespace
from prismfs.node.datadir import DataDirLock, node_id
from prismfs.raft.core import apply_conf_change
from prismfs.raft.durable_log import DurableLog, Recovered, file_digest
from prismfs.raft.messages import ConfChange, ConfState, Entry, HardState, SnapshotMeta
from prismfs.raft.ready import Ready, Snapshot
from prismfs.wire.address import parse_address
from prismfs.wire.codec import decode_message, encode_message


@dataclass
class Recovery:
    """What `recover` did, for the operator."""

    node: str
    address: str
    term: int
    index: int
    """The last index of the log (without a backup) or the backup's index."""
    replicas: list[str] = field(default_factory=list)
    """Former voters, now replicas: wipe them before they start again."""
    moved_aside: list[str] = field(default_factory=list)
    changed: bool = True


def _membership(recovered: Recovered) -> ConfState:
    conf = recovered.snapshot.meta.conf if recovered.snapshot is not None else ConfState()
    for entry in recovered.entries:
        if entry.kind == "config":
            change = decode_message(entry.data)
            if isinstance(change, ConfChange):
                conf = apply_conf_change(conf, change)
    return conf


def _last(recovered: Recovered) -> tuple[int, int]:
    if recovered.entries:
        return recovered.entries[-1].index, recovered.entries[-1].term
    if recovered.snapshot is not None:
        return recovered.snapshot.meta.index, recovered.snapshot.meta.term
    return 0, 0


def _address(conf: ConfState, me: str, given: str) -> str:
    if given:
        parse_address(given)  # InvalidArgument for a malformed one
        return given
    known = dict(conf.addresses).get(me, "")
    if not known:
        raise ConfigError(
            "the log does not record this node's address: give it with --advertise HOST:PORT"
        )
    return known


def backup_index(path: Path) -> int:
    """The Raft index a backup holds, after SQLite checked the whole file."""
    if not path.is_file():
        raise ConfigError(f"no backup file at {path}")
    try:
        Namespace(":memory:").check_image(path)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM state WHERE key = 'applied'").fetchone()
        finally:
            db.close()
    except (sqlite3.Error, LogCorrupt) as exc:
        raise ConfigError(f"{path} is not a PrismFS metadata backup: {exc}") from None
    if row is None:
        raise ConfigError(f"{path} is not a PrismFS metadata backup (no applied index)")
    return int(row[0])


def recover(data_dir: Path, *, backup: Path | None = None, advertise: str = "") -> Recovery:
    """Make the stopped node at ``data_dir`` the only voter (module docstring)."""
    if not (data_dir / "node.id").exists():
        raise ConfigError(f"{data_dir} is not a node's data directory (no node.id)")
    index_of_backup = backup_index(backup) if backup is not None else 0
    lock = DataDirLock.acquire(data_dir)  # refused while the node runs
    try:
        me = str(node_id(data_dir))
        raft_dir = data_dir / "raft"
        recovered = Recovered(HardState(), None, [])
        if raft_dir.exists():
            old = DurableLog(raft_dir)
            try:
                recovered = old.open()
            finally:
                old.close()
        conf = _membership(recovered)
        address = _address(conf, me, advertise)
        last_index, last_term = _last(recovered)
        term = max(recovered.hard_state.term, last_term) + 1
        others = [v for v in conf.voters if v != me]
        if backup is None:
            return _force_alone(raft_dir, recovered, conf, me, address, term, others, last_index)
        assert backup is not None
        return _from_backup(
            data_dir, backup, index_of_backup, conf, me, address, term, others, recovered
        )
    finally:
        lock.release()


def _force_alone(
    raft_dir: Path,
    recovered: Recovered,
    conf: ConfState,
    me: str,
    address: str,
    term: int,
    others: list[str],
    last_index: int,
) -> Recovery:
    if recovered.snapshot is None and not recovered.entries:
        raise ConfigError(
            "this node holds no metadata (it was storage-only): recover a node that was a"
            " voter or a replica, or give --from-backup"
        )
    changes = [] if me in conf.voters else [ConfChange("add_voter", me, address)]
    changes += [ConfChange("demote", v) for v in others]
    if not changes:
        return Recovery(me, address, recovered.hard_state.term, last_index, changed=False)
    entries = [
        Entry(term, last_index + 1 + i, "config", encode_message(change))
        for i, change in enumerate(changes)
    ]
    log = DurableLog(raft_dir)
    try:
        log.open()
        log.save(
            Ready(entries=entries, hard_state=HardState(term, me, recovered.hard_state.commit))
        )
    finally:
        log.close()
    return Recovery(me, address, term, entries[-1].index, replicas=others)


def _from_backup(
    data_dir: Path,
    backup: Path,
    index: int,
    conf: ConfState,
    me: str,
    address: str,
    term: int,
    others: list[str],
    recovered: Recovered,
) -> Recovery:
    """The new log is made whole in ``D/raft.recovering-TIME`` first; only then
    are the old log and database moved aside and the new log renamed in, so a
    failure (a full disk) leaves the node as it was."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    learners = sorted({*others, *conf.learners} - {me})
    book = {k: v for k, v in conf.addresses if k in learners}
    book[me] = address
    new_conf = ConfState((me,), tuple(learners), tuple(sorted(book.items())))
    building = data_dir / f"raft.recovering-{stamp}"
    building.mkdir(mode=0o700)
    try:
        log = DurableLog(building)
        try:
            log.open()
            copy = building / "incoming-backup.db"
            shutil.copyfile(backup, copy)
            checksum, size = file_digest(copy)
            image = log.adopt_image(copy, index, term)
            meta = SnapshotMeta(index, term, new_conf, checksum)
            log.save(
                Ready(
                    snapshot=Snapshot(meta, file=image, file_size=size),
                    hard_state=HardState(term, me, index),
                )
            )
        finally:
            log.close()
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    moved: list[str] = []
    raft_dir = data_dir / "raft"
    if raft_dir.exists():
        aside = data_dir / f"raft.before-recover-{stamp}"
        raft_dir.rename(aside)
        moved.append(str(aside))
    meta_dir = data_dir / "meta"
    databases = sorted(meta_dir.glob("namespace.db*")) if meta_dir.exists() else []
    if databases:
        aside = meta_dir / f"before-recover-{stamp}"
        aside.mkdir(mode=0o700)
        for path in databases:
            path.rename(aside / path.name)
        moved.append(str(aside))
    building.rename(raft_dir)
    fsync_dir(data_dir)
    return Recovery(me, address, term, index, replicas=learners, moved_aside=moved)
