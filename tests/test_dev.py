"""`prismfs dev up/status/down` with real processes, and how client commands
find their cluster (flags, client.toml, PRISMFS_CONFIG, the dev registry)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from prismfs.procs import process_alive


@pytest.fixture
def dev_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An isolated state dir, and a guaranteed `dev down` plus pid check at the end."""
    env = {"PRISMFS_STATE_DIR": str(tmp_path / "state"), "PRISMFS_CONFIG": ""}
    yield env
    for cluster in (tmp_path / "state").glob("**/dev.json"):
        run_cli("dev", "down", "--dir", str(cluster.parent), env=env)
        for node in json.loads(cluster.read_text())["nodes"]:
            if process_alive(node["pid"], node["data_dir"]):
                os.kill(node["pid"], 9)
                raise AssertionError(f"dev down left {node['name']} (pid {node['pid']}) running")


def test_dev_up_status_down_leaves_no_process(tmp_path: Path, dev_env: dict[str, str]) -> None:
    cluster_dir = tmp_path / "state" / "c1"
    up = run_cli("dev", "up", "--nodes", "3", "--dir", str(cluster_dir), "--json", env=dev_env)
    assert up.returncode == 0, up.stderr
    nodes = json.loads(up.stdout)["nodes"]
    assert len(nodes) == 3
    pids = [n["pid"] for n in nodes]
    assert len(set(pids)) == 3 and all(process_alive(p) for p in pids)
    assert len({n["id"] for n in nodes}) == 3
    assert len({n["rpc_address"] for n in nodes}) == 3
    assert all(n["alive"] for n in nodes)
    # One Raft group: one leader, the others voting followers.
    assert sorted(n["role"] for n in nodes) == ["follower", "follower", "leader"]

    # Running `up` again is harmless: same processes.
    again = run_cli("dev", "up", "--dir", str(cluster_dir), "--json", env=dev_env)
    assert again.returncode == 0, again.stderr
    assert [n["pid"] for n in json.loads(again.stdout)["nodes"]] == pids

    status = run_cli("dev", "status", "--dir", str(cluster_dir), "--json", env=dev_env)
    rows = json.loads(status.stdout)["nodes"]
    assert [(r["name"], r["pid"], r["rpc_address"]) for r in rows] == [
        (n["name"], n["pid"], n["rpc_address"]) for n in nodes
    ]
    assert all("http_address" in r for r in rows)

    toml = (cluster_dir / "client.toml").read_text()
    assert all(n["rpc_address"] in toml for n in nodes)

    down = run_cli("dev", "down", "--dir", str(cluster_dir), env=dev_env)
    assert down.returncode == 0, down.stderr
    for n in nodes:
        assert f"{n['name']} (pid {n['pid']}): stopped" in down.stdout
    assert not any(process_alive(p) for p in pids)

    # Status after down reports them down; up restarts on the same addresses.
    rows = json.loads(
        run_cli("dev", "status", "--dir", str(cluster_dir), "--json", env=dev_env).stdout
    )["nodes"]
    assert all(not r["alive"] and r["role"] == "down" for r in rows)
    restarted = json.loads(
        run_cli("dev", "up", "--dir", str(cluster_dir), "--json", env=dev_env).stdout
    )["nodes"]
    assert [n["rpc_address"] for n in restarted] == [n["rpc_address"] for n in nodes]
    assert [n["id"] for n in restarted] == [n["id"] for n in nodes]
    run_cli("dev", "down", "--dir", str(cluster_dir), env=dev_env)
    assert not any(process_alive(n["pid"]) for n in restarted)


def test_dev_down_never_kills_a_foreign_process(tmp_path: Path, dev_env: dict[str, str]) -> None:
    import subprocess

    cluster_dir = tmp_path / "state" / "c2"
    up = run_cli("dev", "up", "--nodes", "1", "--dir", str(cluster_dir), "--json", env=dev_env)
    assert up.returncode == 0, up.stderr
    run_cli("dev", "down", "--dir", str(cluster_dir), env=dev_env)
    # A reused pid: point the record at an unrelated live process.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        state = json.loads((cluster_dir / "dev.json").read_text())
        state["nodes"][0]["pid"] = bystander.pid
        (cluster_dir / "dev.json").write_text(json.dumps(state))
        down = run_cli("dev", "down", "--dir", str(cluster_dir), env=dev_env)
        assert "was not running" in down.stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_client_commands_find_the_cluster(tmp_path: Path, dev_env: dict[str, str]) -> None:
    # No cluster anywhere: one clear line.
    none = run_cli("cluster", "status", env=dev_env)
    assert none.returncode == 1
    assert none.stderr.startswith("prismfs: no cluster given and no running dev cluster found")

    older, newer = tmp_path / "state" / "older", tmp_path / "state" / "newer"
    assert run_cli("dev", "up", "--nodes", "1", "--dir", str(older), env=dev_env).returncode == 0
    assert run_cli("dev", "up", "--nodes", "2", "--dir", str(newer), env=dev_env).returncode == 0

    # No flags: the most recently started running dev cluster.
    found = json.loads(run_cli("cluster", "status", "--json", env=dev_env).stdout)
    assert found["source"] == str(newer / "client.toml")
    assert len(found["nodes"]) == 2 and all(n["reachable"] for n in found["nodes"])

    # PRISMFS_CONFIG beats discovery; --config beats PRISMFS_CONFIG.
    env = {**dev_env, "PRISMFS_CONFIG": str(older / "client.toml")}
    assert json.loads(run_cli("cluster", "status", "--json", env=env).stdout)["source"] == str(
        older / "client.toml"
    )
    flag = run_cli("cluster", "status", "--json", "--config", str(newer / "client.toml"), env=env)
    assert json.loads(flag.stdout)["source"] == str(newer / "client.toml")

    # --cluster + --secret-file beat everything.
    address = json.loads((older / "dev.json").read_text())["nodes"][0]["rpc_address"]
    direct = run_cli(
        "cluster",
        "status",
        "--json",
        "--cluster",
        address,
        "--secret-file",
        str(older / "node1" / "cluster.secret"),
        env=env,
    )
    assert json.loads(direct.stdout)["source"] == "command line"
    half = run_cli("cluster", "status", "--cluster", address, env=env)
    assert half.returncode == 2 and "--cluster and --secret-file go together" in half.stderr

    # Once the newer one is down, discovery falls back to the older one.
    run_cli("dev", "down", "--dir", str(newer), env=dev_env)
    fallback = json.loads(run_cli("cluster", "status", "--json", env=dev_env).stdout)
    assert fallback["source"] == str(older / "client.toml")

    # A secret of another cluster is refused on every node.
    other = tmp_path / "other"
    assert run_cli("cluster", "init", "--data-dir", str(other)).returncode == 0
    wrong = run_cli(
        "cluster",
        "status",
        "--json",
        "--cluster",
        address,
        "--secret-file",
        str(other / "cluster.secret"),
        env=dev_env,
    )
    assert wrong.returncode == 1
    assert "not from this cluster's CA" in json.loads(wrong.stdout)["nodes"][0]["error"]


def test_dev_up_rejects_bad_arguments(tmp_path: Path, dev_env: dict[str, str]) -> None:
    zero = run_cli("dev", "up", "--nodes", "0", "--dir", str(tmp_path / "z"), env=dev_env)
    assert zero.returncode == 1 and "--nodes must be between 1 and 32" in zero.stderr
    missing = run_cli("dev", "down", "--dir", str(tmp_path / "nothing"), env=dev_env)
    assert missing.returncode == 1 and "no dev cluster in" in missing.stderr
