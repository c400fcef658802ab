"""An operator's first day: default configuration paths, the advertised address,
the root directory's owner, systemd readiness and logs, and scheduled scrubs.
Real node processes throughout; every one is stopped by pid at the end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PRISMFS, NodeProcess, run_cli, start_node
from fuse_mount import Mount
from prismfs.node.systemd import unit_text
from prismfs.procs import process_alive


@pytest.fixture
def op_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Private state, machine (PRISMFS_ETC) and user (XDG) configuration
    directories; any dev cluster a test starts is stopped at the end."""
    env = {
        "PRISMFS_STATE_DIR": str(tmp_path / "state"),
        "PRISMFS_CONFIG": "",
        "PRISMFS_ETC": str(tmp_path / "etc"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    yield env
    for cluster in (tmp_path / "state").glob("**/dev.json"):
        run_cli("dev", "down", "--dir", str(cluster.parent), env=env)
        for node in json.loads(cluster.read_text())["nodes"]:
            if process_alive(node["pid"], node["data_dir"]):
                os.kill(node["pid"], 9)
                raise AssertionError(f"dev down left {node['name']} running")


def spawn(procs: list[NodeProcess], data_dir: Path, env: dict[str, str], *args: str) -> NodeProcess:
    """``prismfs node start ARGS`` with ``env`` (the data dir may come from a config file)."""
    proc = subprocess.Popen(
        [*PRISMFS, "node", "start", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    np = NodeProcess(proc, data_dir)
    procs.append(np)
    return np


def node_id(data_dir: Path) -> str:
    return str(json.loads((data_dir / "node.json").read_text())["node_id"])


# --- default configuration paths ------------------------------------------------


def test_default_config_paths_beat_a_running_dev_cluster(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    # A dev cluster runs on this machine...
    dev_dir = tmp_path / "state" / "dev"
    up = run_cli("dev", "up", "--nodes", "1", "--dir", str(dev_dir), "--json", env=op_env)
    assert up.returncode == 0, up.stderr
    dev_id = json.loads(up.stdout)["nodes"][0]["id"]
    # ...and so does a real one, whose node reads /etc/prismfs/node.toml by itself.
    real = tmp_path / "real"
    assert run_cli("cluster", "init", "--data-dir", str(real)).returncode == 0
    etc = Path(op_env["PRISMFS_ETC"])
    etc.mkdir()
    (etc / "node.toml").write_text(
        f'[node]\ndata_dir = "{real}"\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n'
    )
    address = spawn(node_procs, real, op_env).wait_listening()
    real_id = node_id(real)
    assert json.loads((real / "node.json").read_text())["http_address"]
    assert real_id != dev_id

    # With no client.toml anywhere, client commands find the dev cluster.
    found = json.loads(run_cli("cluster", "status", "--json", env=op_env).stdout)
    assert [n["id"] for n in found["nodes"]] == [dev_id]

    # Once the machine has a client.toml, it wins over the dev cluster, and -v says so.
    (etc / "client.toml").write_text(
        f'cluster = ["{address}"]\nsecret_file = "{real / "cluster.secret"}"\n'
    )
    status = run_cli("cluster", "status", "--json", "-v", env=op_env)
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["source"] == str(etc / "client.toml")
    assert [n["id"] for n in found["nodes"]] == [real_id]
    assert f"prismfs: cluster {address} from {etc / 'client.toml'}" in status.stderr
    ls = run_cli("ls", "-v", "/", env=op_env)
    assert ls.returncode == 0, ls.stderr
    assert str(etc / "client.toml") in ls.stderr

    # `dev up` says its cluster is not the default any more.
    again = run_cli("dev", "up", "--dir", str(dev_dir), env=op_env)
    assert f"client commands use {etc / 'client.toml'} by default" in again.stdout

    # The user's own client.toml comes before the machine's; PRISMFS_CONFIG before both.
    user = Path(op_env["XDG_CONFIG_HOME"]) / "prismfs"
    user.mkdir(parents=True)
    (user / "client.toml").write_text(
        (dev_dir / "client.toml").read_text().replace("# Written", "# Copied")
    )
    found = json.loads(run_cli("cluster", "status", "--json", env=op_env).stdout)
    assert found["source"] == str(user / "client.toml")
    assert [n["id"] for n in found["nodes"]] == [dev_id]
    env = {**op_env, "PRISMFS_CONFIG": str(etc / "client.toml")}
    found = json.loads(run_cli("cluster", "status", "--json", env=env).stdout)
    assert [n["id"] for n in found["nodes"]] == [real_id]

    # A dev node never reads the machine's node.toml (which turns the HTTP API on).
    assert run_cli("dev", "down", "--dir", str(dev_dir), env=op_env).returncode == 0
    assert run_cli("dev", "up", "--dir", str(dev_dir), env=op_env).returncode == 0
    rows = json.loads(run_cli("dev", "status", "--dir", str(dev_dir), "--json", env=op_env).stdout)
    assert [(r["id"], r["role"], r["http_address"]) for r in rows["nodes"]] == [
        (dev_id, "leader", None)
    ]


def test_no_cluster_message_names_the_default_paths(op_env: dict[str, str]) -> None:
    none = run_cli("cluster", "status", env=op_env)
    assert none.returncode == 1
    assert str(Path(op_env["PRISMFS_ETC"]) / "client.toml") in none.stderr
    assert none.stderr.count("\n") == 1


# --- the README's nodes by hand ----------------------------------------------------


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_nodes_by_hand_as_the_readme_says(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    """Two nodes cannot hold a 2-of-3 file and the error says what to do; the
    third node makes the default layout work and the leader makes all three voters."""
    first = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(first)).returncode == 0
    seed = start_node(node_procs, first).wait_listening()
    secret = str(first / "cluster.secret")
    start_node(node_procs, tmp_path / "n2", "--secret-file", secret, "--join", seed)
    node_procs[-1].wait_listening()
    opts = ("--cluster", seed, "--secret-file", secret)

    def registered(n: int) -> Callable[[], bool]:
        def check() -> bool:
            out = run_cli("node", "list", "--json", *opts, env=op_env)
            return out.returncode == 0 and len(json.loads(out.stdout)) == n

        return check

    wait_for(registered(2), 30, "two nodes registered")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(100_000))
    refused = run_cli("put", str(big), "/big", *opts, env=op_env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("prismfs: this layout needs 3 nodes up, the cluster has 2: ")
    assert "start more nodes" in refused.stderr and "--layout k=1,m=2" in refused.stderr
    assert refused.stderr.count("\n") == 1
    # The advice works: two replicas fit two nodes.
    put = run_cli("put", "--layout", "k=1,m=2", str(big), "/two", *opts, env=op_env)
    assert put.returncode == 0, put.stderr

    start_node(node_procs, tmp_path / "n3", "--secret-file", secret, "--join", seed)
    node_procs[-1].wait_listening()
    wait_for(registered(3), 30, "three nodes registered")
    put = run_cli("put", str(big), "/big", *opts, env=op_env)
    assert put.returncode == 0, put.stderr
    got = tmp_path / "got"
    assert run_cli("get", "/big", str(got), *opts, env=op_env).returncode == 0
    assert got.read_bytes() == big.read_bytes()

    def three_voters() -> bool:
        out = run_cli("cluster", "status", "--json", *opts, env=op_env)
        health = json.loads(out.stdout).get("health") if out.stdout else None
        return health is not None and len(health["voters"]) == 3

    wait_for(three_voters, 60, "the leader to make three voters")


# --- listening on every interface ------------------------------------------------------


def test_wildcard_listen_advertises_the_route_to_the_join_node(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    first = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(first)).returncode == 0
    seed = start_node(node_procs, first).wait_listening()
    secret = str(first / "cluster.secret")
    second = tmp_path / "n2"
    np = spawn(
        node_procs, second, op_env, "--data-dir", str(second), "--listen", "0.0.0.0:0",
        "--secret-file", secret, "--join", seed,
    )  # fmt: skip
    advertised = np.wait_listening()
    bound = json.loads((second / "node.json").read_text())["listen"][0]
    assert bound.startswith("0.0.0.0:")
    # Loopback is the interface towards a node on 127.0.0.1; the port is the bound one.
    assert advertised == "127.0.0.1:" + bound.rsplit(":", 1)[1]
    opts = ("--cluster", seed, "--secret-file", secret)

    def registered() -> bool:
        out = run_cli("node", "list", "--json", *opts, env=op_env)
        return out.returncode == 0 and advertised in {n["address"] for n in json.loads(out.stdout)}

    wait_for(registered, 30, "the second node registered at its advertised address")


def test_wildcard_listen_without_a_peer_asks_for_advertise(
    tmp_path: Path, op_env: dict[str, str]
) -> None:
    data = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(data)).returncode == 0
    out = run_cli("node", "start", "--data-dir", str(data), "--listen", "0.0.0.0:0", env=op_env)
    assert out.returncode == 1
    assert out.stderr.startswith("prismfs: listening on 0.0.0.0:0 (every interface) needs ")
    assert "--advertise HOST:PORT" in out.stderr and out.stderr.count("\n") == 1
    assert not (data / "node.json").exists()


# --- the root directory's owner ----------------------------------------------------------


def root_line(opts: tuple[str, ...], env: dict[str, str]) -> str:
    out = run_cli("stat", "/", *opts, env=env)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if "uid:" in line)


def test_cluster_init_gives_the_root_to_root_owner(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    bad = run_cli("cluster", "init", "--data-dir", str(tmp_path / "x"), "--root-owner", "bob")
    assert bad.returncode == 1 and bad.stderr.startswith("prismfs: owner 'bob' is not UID:GID")
    assert not (tmp_path / "x" / "cluster.secret").exists()

    data = tmp_path / "n1"
    init = run_cli("cluster", "init", "--data-dir", str(data), "--root-owner", "1000:1001")
    assert init.returncode == 0, init.stderr
    assert "root directory: owned by uid 1000, gid 1001, mode 0755" in init.stdout
    address = start_node(node_procs, data).wait_listening()
    opts = ("--cluster", address, "--secret-file", str(data / "cluster.secret"))
    wait_for(lambda: not (data / "root-owner").exists(), 30, "the owner request to be applied")
    assert root_line(opts, op_env).split() == ["links:", "2", "uid:", "1000", "gid:", "1001"]
    assert "(755)" in run_cli("stat", "/", *opts, env=op_env).stdout


def test_dev_up_gives_the_root_to_the_user_behind_sudo(
    tmp_path: Path, op_env: dict[str, str]
) -> None:
    """Through sudo, the root directory is the invoking user's: that user can
    write at the top of a mount (as root's, 0755, they could not)."""
    env = {**op_env, "SUDO_UID": "1000", "SUDO_GID": "1000"}
    cluster = Mount(tmp_path, "mnt")
    cluster.env = env
    cluster.dir = tmp_path / "state" / "dev"
    point_base = Path(tempfile.mkdtemp(prefix="prismfs-owner-"))  # others may enter /tmp/X
    point_base.chmod(0o755)
    try:
        cluster.up(nodes=1)
        # `dev up` returns once the owner is given.
        opts = ("--config", str(cluster.dir / "client.toml"))
        assert root_line(opts, env).split()[2:] == ["uid:", "1000", "gid:", "1000"]
        point = cluster.mount("allow_other", point_base / "mnt")
        user = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
        wrote = subprocess.run(
            [*user, "sh", "-c", f"echo mine > {point}/mine && mkdir {point}/d"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrote.returncode == 0, wrote.stderr
        assert (os.stat(point / "mine").st_uid, os.stat(point / "d").st_gid) == (1000, 1000)
        assert (point / "mine").read_text() == "mine\n"
    finally:
        cluster.unmount(point_base / "mnt")
        cluster.cleanup()
        shutil.rmtree(point_base, ignore_errors=True)


# --- systemd: readiness, the unit, journald and log files ----------------------------------


def reachable(address: str, secret: Path) -> bool:
    out = run_cli("cluster", "status", "--json", "--cluster", address, "--secret-file", str(secret))
    return bool(json.loads(out.stdout)["nodes"][0]["reachable"])


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_node_tells_systemd_ready_once_it_answers_and_stopping(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess], abstract: bool
) -> None:
    data = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(data)).returncode == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"prismfs-test-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + name)
            notify_socket = "@" + name
        else:
            notify_socket = str(tmp_path / "notify")
            sock.bind(notify_socket)
        sock.settimeout(30)
        env = {**op_env, "NOTIFY_SOCKET": notify_socket}
        np = spawn(node_procs, data, env, "--data-dir", str(data), "--listen", "127.0.0.1:0")
        assert sock.recv(4096) == b"READY=1"
        # Ready means serving: the address is published and the node answers at once.
        address = json.loads((data / "node.json").read_text())["rpc_address"]
        assert reachable(address, data / "cluster.secret")
        np.proc.terminate()
        assert sock.recv(4096) == b"STOPPING=1"
        assert np.proc.wait(timeout=30) == 0


def test_under_journald_lines_carry_a_priority_and_no_time(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    data = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(data)).returncode == 0
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, **op_env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen(
        [*PRISMFS, "node", "start", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env=env,
    )
    os.close(write_end)
    try:
        NodeProcess(proc, data).wait_listening()  # type: ignore[arg-type]
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with os.fdopen(read_end) as stream:
        lines = stream.read().splitlines()
    serving = [line for line in lines if "serving RPC" in line]
    assert len(serving) == 1 and serving[0].startswith("<6>INFO node=")
    assert all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines
    assert not any(line[3:].startswith("20") for line in lines)  # no time stamp


def test_a_log_file_moved_away_is_recreated(
    tmp_path: Path, op_env: dict[str, str], node_procs: list[NodeProcess]
) -> None:
    data = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(data)).returncode == 0
    log = tmp_path / "logs" / "node.log"
    np = start_node(node_procs, data, "--log-file", str(log))
    np.wait_listening()
    assert "serving RPC" in log.read_text()
    log.rename(tmp_path / "logs" / "node.log.1")  # what logrotate does
    np.proc.terminate()
    assert np.proc.wait(timeout=30) == 0
    assert "received SIGTERM, shutting down" in log.read_text()
    assert "shutting down" not in (tmp_path / "logs" / "node.log.1").read_text()


def test_install_systemd_writes_a_unit_systemd_accepts(
    tmp_path: Path, op_env: dict[str, str]
) -> None:
    target = tmp_path / "units"
    out = run_cli("install-systemd", "--target", str(target), env=op_env)
    assert out.returncode == 0, out.stderr
    unit = target / "prismfs-node@.service"
    text = unit.read_text()
    etc = op_env["PRISMFS_ETC"]
    assert f"ExecStart={sys.executable} -m prismfs node start --config {etc}/%i.toml" in text
    assert "Type=notify" in text
    assert "systemctl daemon-reload && systemctl enable --now prismfs-node@node" in out.stdout
    # systemd's own checker finds nothing wrong with it (an instance of the template).
    instance = tmp_path / "check" / "prismfs-node@test.service"
    instance.parent.mkdir()
    instance.write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in verify.stderr.splitlines() if "prismfs-node@" in line]
    assert verify.returncode == 0 and not problems, verify.stderr
    # The shipped copy is the same unit for a system-wide installation.
    shipped = Path(__file__).parent.parent / "packaging" / "systemd" / "prismfs-node@.service"
    assert shipped.read_text() == unit_text("/usr/local/bin/prismfs")
    # An unwritable target is one line.
    (tmp_path / "file").write_text("")
    bad = run_cli("install-systemd", "--target", str(tmp_path / "file" / "x"), env=op_env)
    assert bad.returncode == 1 and bad.stderr.startswith("prismfs: cannot install ")
    assert bad.stderr.count("\n") == 1


# --- scheduled scrubs ----------------------------------------------------------------------


def dev_cluster(tmp_path: Path, env: dict[str, str], node_toml: str) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(node_toml)
    directory = tmp_path / "state" / "dev"
    up = run_cli(
        "dev", "up", "--dir", str(directory), "--node-config", str(config), env=env, timeout=90
    )
    assert up.returncode == 0, up.stderr
    return directory


def scrub_status(directory: Path, env: dict[str, str]) -> dict[str, int]:
    out = run_cli("scrub", "status", "--json", "--config", str(directory / "client.toml"), env=env)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_the_leader_scrubs_on_its_own_schedule(tmp_path: Path, op_env: dict[str, str]) -> None:
    """With a tiny interval, passes run by themselves and repair bit rot."""
    directory = dev_cluster(tmp_path, op_env, "[data]\nscrub_interval_days = 0.00003\n")  # 2.6 s
    body = tmp_path / "f"
    body.write_bytes(os.urandom(9 << 20))  # 3 chunks, 9 shards
    config = ("--config", str(directory / "client.toml"))
    assert run_cli("put", str(body), "/f", *config, env=op_env).returncode == 0
    shard = sorted(p for p in directory.glob("node*/shards/*/*/*") if p.name[0] != ".")[0]
    good = shard.read_bytes()
    shard.write_bytes(bytes(b ^ 0xFF for b in good[:64]) + good[64:])
    wait_for(lambda: shard.read_bytes() == good, 60, "a scheduled scrub to rewrite the shard")
    status = scrub_status(directory, op_env)
    assert status["passes"] >= 1 and status["finished_ns"] > 0, status
    assert run_cli("fsck", *config, env=op_env, timeout=120).returncode == 0


def test_the_scrub_clock_survives_a_new_leader(tmp_path: Path, op_env: dict[str, str]) -> None:
    """The last pass's time is durable: after a restart of every node the new
    leader scrubs when that pass is an interval old, not an interval after it
    took over."""
    env = {**op_env, "PRISMFS_CLOCK_OFFSET_FILE": "clock-offset"}
    directory = dev_cluster(tmp_path, env, "[data]\nscrub_interval_days = 1\n")
    config = ("--config", str(directory / "client.toml"))
    assert run_cli("scrub", "start", *config, env=env).returncode == 0
    wait_for(lambda: scrub_status(directory, env)["passes"] == 1, 30, "the pass by hand")
    time.sleep(1.5)  # its completion committed
    assert run_cli("dev", "down", "--dir", str(directory), env=env).returncode == 0
    offsets = [d / "clock-offset" for d in directory.glob("node*")]
    for offset in offsets:
        offset.write_text(str(0.6 * 86400))  # the pass was 0.6 days ago
    assert run_cli("dev", "up", "--dir", str(directory), env=env, timeout=90).returncode == 0
    time.sleep(4)
    status = scrub_status(directory, env)
    assert status["passes"] == 0  # a new leader: nothing due yet
    # It says when the next pass is due: a day after the one before the restart.
    due_in_days = (status["next_ns"] / 1e9 - (time.time() + 0.6 * 86400)) / 86400
    assert 0.35 < due_in_days < 0.41, status
    for offset in offsets:
        offset.write_text(str(1.1 * 86400))  # now 1.1 days: due by the durable time
    wait_for(lambda: scrub_status(directory, env)["passes"] >= 1, 30, "the scheduled pass")
