"""The CLI against a real 3-node cluster: --json output checked against what
is on disk, progress bars only on a terminal, and `cluster status` exit codes
for monitoring (0 healthy; 4 once a node holding shards is killed and marked
down)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PRISMFS, run_cli
from prismfs.wire.auth import read_secret_file
from test_raft_cluster import Cluster

pytestmark = pytest.mark.timeout(300)


def test_cluster_init_json(tmp_path: Path) -> None:
    result = run_cli("cluster", "init", "--data-dir", str(tmp_path / "d"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    secret = Path(out["secret_file"])
    assert read_secret_file(secret).cluster_id == out["cluster_id"]
    assert Path(out["client_secret_file"]).is_file() and out["data_dir"] == str(tmp_path / "d")


def cli(c: Cluster, *args: str) -> tuple[int, Any, str]:
    """Run a command with --json; (exit status, parsed stdout or None, stderr)."""
    result = run_cli(*args, "--json", "--config", str(c.dir / "client.toml"), env=c.env)
    try:
        parsed = json.loads(result.stdout)
    except ValueError:
        parsed = None
    return result.returncode, parsed, result.stderr


def test_json_output_and_status_codes_on_a_real_cluster(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    up = run_cli("dev", "up", "--dir", str(c.dir), "--http", "--json", env=c.env, timeout=90)
    assert up.returncode == 0, up.stderr
    nodes = {str(n["id"]): n for n in json.loads(up.stdout)["nodes"]}
    try:
        code, status, err = cli(c, "cluster", "status")
        assert code == 0 and status["status"] == "healthy", err

        body = os.urandom(9 << 20)  # 3 chunks of 4 MiB
        src = tmp_path / "big.bin"
        src.write_bytes(body)
        code, put, err = cli(c, "put", str(src), "/big.bin")
        assert code == 0 and err == "", err  # no progress bar when stderr is not a terminal
        assert put["remote"] == "/big.bin" and put["size"] == len(body)

        code, listing, err = cli(c, "ls", "/")
        assert code == 0, err
        (entry,) = listing
        assert (entry["name"], entry["type"], entry["size"]) == ("big.bin", "file", len(body))
        assert entry["ino"] == put["ino"]

        code, info, err = cli(c, "stat", "/big.bin")
        assert code == 0, err
        assert info["size"] == len(body) and len(info["chunks"]) == 3
        assert sum(ch["length"] for ch in info["chunks"]) == len(body)
        for chunk in info["chunks"]:
            assert (chunk["k"], chunk["m"]) == (2, 3) and len(chunk["shards"]) == 3
            for shard in chunk["shards"]:
                node = nodes[shard["node"]]
                assert shard["address"] == node["rpc_address"] and shard["state"] == "up"
                held = list(Path(str(node["data_dir"])).glob(f"shards/*/*/{shard['name']}"))
                assert len(held) == 1, (shard, node["data_dir"])

        out = tmp_path / "back.bin"
        code, got, err = cli(c, "get", "/big.bin", str(out))
        assert code == 0 and got == {"remote": "/big.bin", "local": str(out), "size": len(body)}
        assert out.read_bytes() == body

        # Over HTTP too, with a token made and revoked through the CLI.
        code, token, err = cli(c, "token", "create", "--uid", "0", "--gid", "0")
        assert code == 0, err
        http = "http://" + str(next(iter(nodes.values()))["http_address"])
        via = ["--http", http, "--token", token["token"]]
        code, put2, err = cli(c, "put", *via, str(src), "/big2.bin")
        assert code == 0 and err == "", err
        assert put2 == {"local": str(src), "remote": "/big2.bin", "size": len(body)}
        code, got2, err = cli(c, "get", *via, "/big2.bin", str(tmp_path / "back2.bin"))
        assert code == 0 and got2["size"] == len(body), err
        assert (tmp_path / "back2.bin").read_bytes() == body
        code, names, err = cli(c, "ls", *via, "/")
        assert code == 0 and sorted(e["name"] for e in names) == ["big.bin", "big2.bin"]
        # A progress bar on a terminal (stderr a pty), for both transports.
        for args in (["put", str(src), "/big3.bin"], ["put", *via, str(src), "/x"]):
            shown = on_a_terminal(c, *args)
            assert "put big.bin" in shown and "MB" in shown, shown

        # A local file that fails while it is read (EIO from the first byte):
        # one line naming it, over RPC and HTTP, and nothing left behind.
        for args in (["put", "/proc/self/mem", "/mem"], ["put", *via, "/proc/self/mem", "/mem"]):
            code, _, err = cli(c, *args)
            assert code == 1 and err == "prismfs: /proc/self/mem: Input/output error\n", err
        code, names, err = cli(c, "ls", "/")
        assert sorted(e["name"] for e in names) == ["big.bin", "big2.bin", "big3.bin", "x"]

        code, revoked, err = cli(c, "token", "revoke", token["id"])
        assert code == 0 and revoked == {"id": token["id"], "revoked": True}, err
        code, tokens, err = cli(c, "token", "list")
        assert token["id"] not in [t["id"] for t in tokens]

        code, scrub, err = cli(c, "scrub", "start")
        assert code == 0 and scrub["running"] in (True, False) and "shards_checked" in scrub, err

        # kill -9 a node holding shards (not the leader): status turns 4 once
        # the leader marks it down.
        leader = status["health"]["leader"]
        victim = next(n for n in nodes.values() if n["id"] != leader)
        os.kill(int(victim["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            code, status, err = cli(c, "cluster", "status")
            if code != 0:
                break
            assert time.monotonic() < deadline, "never reported the dead node"
            time.sleep(1)
        assert code == 4 and status["status"] == "node down", (code, status, err)
        down = [n for n in status["health"]["nodes"] if n["state"] == "down"]
        assert [n["node"] for n in down] == [victim["id"]]
        text = run_cli("cluster", "status", "--config", str(c.dir / "client.toml"), env=c.env)
        assert text.returncode == 4 and "status: node down" in text.stdout
    finally:
        c.cleanup()


def on_a_terminal(c: Cluster, *args: str) -> str:
    """Run ``prismfs ARGS`` with stderr on a pseudo-terminal; what it drew there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*PRISMFS, *args, "--config", str(c.dir / "client.toml")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env={**os.environ, **c.env, "COLUMNS": "120", "TERM": "xterm"},
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                block = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not block:
                break
            chunks.append(block)
        assert proc.wait(timeout=120) == 0, b"".join(chunks)
    finally:
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_a_wrong_secret_is_one_line_naming_the_cause(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    nodes = c.up()
    try:
        init = run_cli("cluster", "init", "--data-dir", str(tmp_path / "other"), env=c.env)
        assert init.returncode == 0, init.stderr
        wrong = ["--secret-file", str(tmp_path / "other" / "cluster.secret")]
        address = str(nodes[0]["rpc_address"])
        for args in (("ls", "/"), ("token", "list"), ("stat", "/")):
            result = run_cli(*args, "--cluster", address, *wrong, env=c.env, timeout=60)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith("prismfs: ") and "no node of the cluster" not in line, line
    finally:
        c.cleanup()
