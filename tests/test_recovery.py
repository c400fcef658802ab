"""Backups of the metadata and recovery of the metadata group, on real node
processes: `prismfs cluster backup` while files are written; every voter
killed and one of them made the only voter by `prismfs node recover`, the
others wiped and caught up; the namespace replaced by a backup. Bad input
is one line and changes nothing."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from test_membership import Nodes, kill9, wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    yield n
    n.cleanup()


def _put(nodes: Nodes, tmp_path: Path, name: str, size: int, *extra: str) -> bytes:
    body = os.urandom(size)
    src = tmp_path / f"{name}.src"
    src.write_bytes(body)
    nodes.ok("put", str(src), f"/{name}", *extra)
    return body


def _get(nodes: Nodes, tmp_path: Path, name: str) -> bytes:
    dst = tmp_path / f"{name}.out"
    dst.unlink(missing_ok=True)
    nodes.ok("get", f"/{name}", str(dst))
    return dst.read_bytes()


def _names(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {bytes(row[0]).decode() for row in con.execute("SELECT name FROM dentries")}
    finally:
        con.close()


def _kill_all(started: list[dict[str, Any]]) -> None:
    for node in started:
        kill9(int(node["pid"]))
    for node in started:
        wait_for(lambda n=node: not (Path(n["data_dir"]) / "node.lock").exists()
                 or _unlocked(Path(n["data_dir"])), 30, "the node's lock released")  # fmt: skip


def _unlocked(data_dir: Path) -> bool:
    import fcntl

    with open(data_dir / "node.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _restart(nodes: Nodes, node: dict[str, Any], *, wipe: bool = False) -> str:
    data_dir = Path(node["data_dir"])
    if wipe:
        shutil.rmtree(data_dir / "raft")
        shutil.rmtree(data_dir / "meta")
    return nodes.start(data_dir, str(node["rpc_address"]), new=False)


def _copies(started: list[dict[str, Any]]) -> list[Path]:
    return [p for n in started for p in Path(n["data_dir"]).glob("meta/backups/*")]


def _id(node: dict[str, Any]) -> str:
    return (Path(node["data_dir"]) / "node.id").read_text().strip()


def _has_leader(nodes: Nodes) -> bool:
    _, out, _ = nodes.cli("cluster", "status", "--json", timeout=60)
    return bool(out.strip()) and bool(json.loads(out).get("health"))


def _client_on(nodes: Nodes, addresses: list[str]) -> None:
    from prismfs.client.config import write_client_toml

    write_client_toml(nodes.client_toml, addresses, nodes.secret)


def test_backup_and_a_lost_majority_recovered_from_one_voter(nodes: Nodes, tmp_path: Path) -> None:
    started = nodes.up(3)
    small = _put(nodes, tmp_path, "small", 3000)  # inline: in the namespace itself
    big = _put(nodes, tmp_path, "big", 1 << 20, "--layout", "k=1,m=3")  # a copy on each node

    # An online backup: a checked SQLite copy of the namespace.
    out = tmp_path / "meta.backup"
    made = json.loads(nodes.ok("cluster", "backup", str(out), "--json"))
    assert made["bytes"] == out.stat().st_size and made["index"] > 0
    assert {"small", "big"} <= _names(out)
    assert not _copies(started)  # the leader's copy was ended
    code, _, err = nodes.cli("cluster", "backup", str(tmp_path / "no" / "such" / "dir" / "f"))
    assert code == 1 and err.count("\n") == 1 and "no directory" in err
    # A local disk that cannot hold it (a 20 KiB file size limit): one line, no
    # file, and the leader's copy released (else two such runs block backups).
    for _ in range(3):
        cut = subprocess.run(
            [sys.executable, "-m", "prismfs", "cluster", "backup", str(tmp_path / "cut.db"),
             "--config", str(nodes.client_toml)],
            env={**os.environ, **nodes.env}, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 10, 20 << 10)),
        )  # fmt: skip
        assert cut.returncode == 1 and "cannot write the backup" in cut.stderr, cut.stderr
        assert cut.stderr.count("\n") == 1
        assert not (tmp_path / "cut.db").exists() and not list(tmp_path.glob(".cut.db*"))
    assert not _copies(started)

    after = _put(nodes, tmp_path, "after", 2000)

    # Every voter is lost at once; one of them is recovered alone.
    _kill_all(started)
    survivor, *lost = started
    data_dir = survivor["data_dir"]
    result = run_cli("node", "recover", "--data-dir", data_dir)  # stdin is not a terminal
    assert result.returncode == 1 and "--yes" in result.stderr
    assert result.stderr.count("\n") == 1
    result = run_cli("node", "recover", "--data-dir", str(tmp_path / "missing"), "--yes")
    assert result.returncode == 1 and "not a node's data directory" in result.stderr
    result = run_cli("node", "recover", "--data-dir", data_dir, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["changed"] and sorted(done["replicas"]) == sorted(_id(n) for n in lost)

    address = _restart(nodes, survivor)
    _client_on(nodes, [address])
    wait_for(lambda: _has_leader(nodes), 60, "a leader")
    h = nodes.health()
    assert h["voters"] == [_id(survivor)]
    assert _get(nodes, tmp_path, "small") == small
    assert _get(nodes, tmp_path, "big") == big
    assert _get(nodes, tmp_path, "after") == after  # acknowledged before the loss: kept
    again = _put(nodes, tmp_path, "again", 1500)  # the group of one commits

    # The lost nodes come back wiped: they catch up and vote again.
    addresses = [address] + [_restart(nodes, n, wipe=True) for n in lost]
    _client_on(nodes, addresses)
    wait_for(lambda: len(nodes.health()["voters"]) == 3, 120, "three voters again")
    assert _get(nodes, tmp_path, "again") == again
    body = _put(nodes, tmp_path, "striped", 3 << 20)  # 2-of-3 needs all three
    assert _get(nodes, tmp_path, "striped") == body


def test_the_namespace_is_restored_from_a_backup(nodes: Nodes, tmp_path: Path) -> None:
    started = nodes.up(3)
    kept = _put(nodes, tmp_path, "kept", 2 << 20)  # 2-of-3: shards on the nodes
    inline = _put(nodes, tmp_path, "inline", 1000)
    out = tmp_path / "meta.backup"
    nodes.ok("cluster", "backup", str(out))
    _put(nodes, tmp_path, "later", 1000)
    nodes.ok("rm", "/inline")
    _kill_all(started)

    first, *others = started
    data_dir = Path(first["data_dir"])
    before = sorted(p.name for p in data_dir.iterdir())
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    result = run_cli("node", "recover", "--data-dir", str(data_dir), "--from-backup", str(junk),
                     "--yes")  # fmt: skip
    assert result.returncode == 1 and "not a PrismFS metadata backup" in result.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == before  # nothing moved

    result = run_cli(
        "node", "recover", "--data-dir", str(data_dir), "--from-backup", str(out), "--yes",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert len(done["moved_aside"]) == 2 and all(Path(p).exists() for p in done["moved_aside"])

    addresses = [_restart(nodes, first)] + [_restart(nodes, n, wipe=True) for n in others]
    _client_on(nodes, addresses)
    wait_for(lambda: len(nodes.health()["voters"]) == 3, 120, "three voters again")
    assert _get(nodes, tmp_path, "kept") == kept
    assert _get(nodes, tmp_path, "inline") == inline  # removed after the backup: back
    code, _, err = nodes.cli("stat", "/later")  # written after the backup: gone
    assert code == 1 and "later" in err


def test_a_former_voter_started_with_its_old_log_stops_instead_of_diverging(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The voter recovered is behind the others (it was lost first); one of
    them, started again without removing its old log, holds entries it
    applied that the new leader replaces: it stops with a line saying what
    to do, and the recovered cluster goes on."""
    started = nodes.up(3)
    first, second, third = started
    before = _put(nodes, tmp_path, "before", 1000)
    _kill_all([first])
    _put(nodes, tmp_path, "after", 1000)  # committed by the other two, applied by both
    _kill_all([second, third])

    result = run_cli("node", "recover", "--data-dir", first["data_dir"], "--yes")
    assert result.returncode == 0, result.stderr
    address = _restart(nodes, first)
    _client_on(nodes, [address])
    wait_for(lambda: _has_leader(nodes), 60, "a leader")
    code, _, _ = nodes.cli("stat", "/after")
    assert code == 1  # the recovered voter never had it

    stale = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prismfs",
            "node",
            "start",
            "--data-dir",
            second["data_dir"],
            "--listen",
            str(second["rpc_address"]),
            "--config",
            str(nodes.config),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip  (its old log kept)
    nodes.procs.append(stale)
    _, err = stale.communicate(timeout=90)
    assert stale.returncode == 1, err
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("prismfs: this node's log diverged from the leader's"), last
    assert "remove raft/ and meta/" in last
    assert _get(nodes, tmp_path, "before") == before
    # Wiped, it catches up instead: a replica holding the recovered namespace.
    _restart(nodes, second, wipe=True)
    wait_for(lambda: _replica_with(second, "before"), 120, "the wiped node caught up")
    assert not _replica_with(second, "after")


def _replica_with(node: dict[str, Any], name: str) -> bool:
    db = Path(node["data_dir"]) / "meta" / "namespace.db"
    try:
        return db.exists() and name in _names(db)
    except sqlite3.Error:
        return False
