"""Membership changes on real node processes: zero downtime for an application
on a mount through add, rebalance, drain, remove, a leader crash and a lost
node; a node whose data directory is wiped while down, coming back empty;
and the CLI of node add/drain/cancel-drain/remove, happy paths and errors.

Nodes use short failure-detection times (heartbeats every 0.3 s, down after
3 s), repair at once, and keep the old copies of moved shards for 5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from fuse_mount import Mount, fuse_available
from prismfs.client.config import write_client_toml
from prismfs.procs import process_alive

pytestmark = pytest.mark.timeout(600)

NODE_TOML = (
    "[data]\nheartbeat_s = 0.3\nnode_down_after_s = 3\nrepair_after_s = 0\n"
    "rebalance_mb_per_s = 300\nrepair_mb_per_s = 300\nmove_delete_after_s = 5\n"
    "orphan_sweep_s = 2\norphan_grace_s = 10\ngc_interval_s = 1\n"
)
WORKLOAD = Path(__file__).with_name("mount_workload.py")


class Nodes:
    """A dev cluster started with `NODE_TOML`, plus nodes this test starts itself."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mount = Mount(base)
        self.config = base / "node.toml"
        self.config.write_text(NODE_TOML)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return self.mount.env

    @property
    def secret(self) -> Path:
        return self.mount.dir / "node1" / "cluster.secret"

    @property
    def client_toml(self) -> Path:
        return self.mount.dir / "client.toml"

    def up(self, n: int) -> list[dict[str, Any]]:
        result = run_cli(
            "dev",
            "up",
            "--nodes",
            str(n),
            "--dir",
            str(self.mount.dir),
            "--json",
            "--node-config",
            str(self.config),
            env=self.env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["nodes"])

    def start(
        self, data_dir: Path, listen: str = "127.0.0.1:0", *, new: bool = True, join: str = ""
    ) -> str:
        """Start a node process on ``data_dir`` (a new one: with the cluster secret;
        not joined unless ``join``); returns its address once it serves."""
        (data_dir / "node.json").unlink(missing_ok=True)
        args = ["--data-dir", str(data_dir), "--listen", listen, "--config", str(self.config)]
        args += ["--log-file", str(data_dir.parent / f"{data_dir.name}.log")]
        if new:
            args += ["--secret-file", str(self.secret)]
        if join:
            args += ["--join", join]
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "prismfs", "node", "start", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: (data_dir / "node.json").exists(), 30, "node start")
        return str(json.loads((data_dir / "node.json").read_text())["rpc_address"])

    def cli(self, *args: str, timeout: float = 300) -> tuple[int, str, str]:
        result = run_cli(*args, "--config", str(self.client_toml), env=self.env, timeout=timeout)
        return result.returncode, result.stdout, result.stderr

    def ok(self, *args: str, timeout: float = 300) -> str:
        code, out, err = self.cli(*args, timeout=timeout)
        assert code == 0, f"prismfs {' '.join(args)}: {out}{err}"
        return out

    def health(self) -> dict[str, Any]:
        for _ in range(20):
            _, out, _ = self.cli("cluster", "status", "--json", timeout=60)
            h = json.loads(out).get("health") if out.strip() else None
            if h:
                return dict(h)
            time.sleep(0.5)
        raise AssertionError("no cluster view from the leader")

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.health()["nodes"] if n["node"] == node_id)

    def cleanup(self) -> None:
        self.mount.cleanup(self.procs)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.3)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    yield n
    n.cleanup()


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def settled(h: dict[str, Any]) -> bool:
    draining = all(left == 0 for _, left, _ in h["moves"]["draining"])
    return h["healthy"] == h["chunks"] and draining and h["moves"]["to_move_bytes"] == 0


# --- zero downtime -------------------------------------------------------------------------


class App:
    """The checksummed workload process on the mount, and its counters."""

    def __init__(self, directory: Path, status: Path) -> None:
        self.status = status
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(directory), str(status)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def counters(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"written": 0, "read": 0, "anchor_reads": 0, "errors": [], "wrong": []}

    def progress(self, more_than: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Wait until the app wrote and read more than at ``more_than``; no errors."""

        def moved() -> bool:
            now = self.counters()
            assert not now["errors"] and not now["wrong"], now
            return all(now[k] > more_than[k] for k in ("written", "read", "anchor_reads"))

        wait_for(moved, timeout, "the application to make progress")
        return self.counters()

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("the application did not finish its final check") from None
        final = self.counters()
        assert final["done"], final
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_an_application_on_a_mount_sees_no_error_through_membership_changes(
    nodes: Nodes, tmp_path: Path
) -> None:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    started = nodes.up(4)
    point = nodes.mount.mount()
    os.setxattr(point, "prismfs.layout", b"k=2,m=3,chunk=1M")
    app = App(point / "app", tmp_path / "app.json")
    try:
        seen = app.progress({"written": 3, "read": 3, "anchor_reads": 1})

        # 1. A fifth node joins as a voter; shards are rebalanced onto it.
        n5_dir = tmp_path / "node5"
        n5_address = nodes.start(n5_dir)
        out = json.loads(nodes.ok("node", "add", n5_address, "--voter", "--json"))
        n5 = out["node"]
        assert out["role"] == "voter" and out["state"] == "up"

        def balanced() -> bool:
            h = nodes.health()
            counts = [n["shards"] for n in h["nodes"] if n["state"] == "up"]
            mine = next(n["shards"] for n in h["nodes"] if n["node"] == n5)
            return mine > 0 and mine >= 0.6 * sum(counts) / len(counts)

        wait_for(balanced, 120, "shards to be rebalanced onto the new node")
        moved = nodes.health()["moves"]["shards_moved"]
        assert moved > 0
        # The nodes that took them copied them from the old ones themselves
        # (node to node, not through the leader).
        logs = [tmp_path / "node5.log", *tmp_path.glob("state/*/node*/node.log")]
        copied = sum(log.read_text().count("copied shard ") for log in logs)
        assert copied >= moved
        seen = app.progress(seen)

        # 2. Drain the leader: leadership and its vote move away, then its shards.
        h = nodes.health()
        leader = h["leader"]
        out = json.loads(nodes.ok("node", "drain", leader, "--wait", "--json"))
        assert out["state"] == "draining"
        assert nodes.node(leader)["shards"] == 0  # --wait returned once the drain was done
        h = nodes.health()
        assert h["leader"] != leader and leader not in h["voters"]
        seen = app.progress(seen)

        # 3. Remove it: it leaves the registry and the Raft group, and stops itself.
        out = json.loads(nodes.ok("node", "remove", leader, "--json"))
        assert out["state"] == "removed" and out["role"] == ""
        drained = next(n for n in started if n["id"] == leader)
        wait_for(lambda: not process_alive(int(drained["pid"])), 30, "the removed node to stop")
        seen = app.progress(seen)

        # 4. kill -9 the leader; a new one takes over; the old one restarts.
        dirs = {str(n["id"]): Path(str(n["data_dir"])) for n in started} | {n5: n5_dir}

        def pid_of(node: str) -> int:
            return int(json.loads((dirs[node] / "node.json").read_text())["pid"])

        h = nodes.health()
        crashed = h["leader"]
        crashed_address = next(n["address"] for n in h["nodes"] if n["node"] == crashed)
        kill9(pid_of(crashed))
        wait_for(lambda: nodes.health()["leader"] not in ("", crashed), 60, "a new leader")
        seen = app.progress(seen)
        nodes.start(dirs[crashed], crashed_address, new=False)
        wait_for(lambda: nodes.node(crashed)["state"] == "up", 60, "the restarted node")

        # 5. kill -9 a storage node for good; repair rebuilds its shards elsewhere.
        h = nodes.health()
        victim = next(n for n in h["nodes"] if n["state"] == "up" and n["node"] != h["leader"])
        kill9(pid_of(victim["node"]))
        wait_for(lambda: nodes.node(victim["node"])["state"] == "down", 60, "the node down")
        wait_for(lambda: nodes.node(victim["node"])["shards"] == 0, 180, "repair")
        seen = app.progress(seen)
        # Nothing needs the dead node any more: it can be removed without --force.
        nodes.ok("node", "remove", victim["node"])
        wait_for(lambda: settled(nodes.health()), 180, "full redundancy")
        final = app.stop()
    finally:
        app.kill()
    assert final["errors"] == [] and final["wrong"] == [], final
    assert final["written"] > seen["written"] and final["read"] > seen["read"]
    check_after_kills(nodes)
    h = nodes.health()
    assert h["degraded"] == 0 and h["unavailable"] == 0 and h["healthy"] == h["chunks"] > 0
    states = {n["node"]: n["state"] for n in h["nodes"]}
    assert states[leader] == states[victim["node"]] == "removed"
    assert sorted(s for s in states.values() if s != "removed") == ["up", "up", "up"]


def check_after_kills(nodes: Nodes) -> None:
    """fsck finds every chunk whole. The one thing a leader killed mid-move may
    leave is the copy of a shard whose move it never committed: one shard of a
    chunk (a lost upload would leave every shard of its chunks on the nodes
    still there). Those are what the orphan sweep is for: fsck --repair must
    remove them, and fsck is then clean."""
    code, out, err = nodes.cli("fsck", "--orphan-grace", "30", "--json", timeout=300)
    assert code in (0, 1), out + err
    report = json.loads(out.splitlines()[-1])  # the summary line of fsck --json
    for problem in ("corrupt", "missing", "degraded", "unavailable", "unreachable"):
        assert report[problem] == [], report
    assert_one_shard_per_chunk(report)
    if report["orphans"]:
        args = ("fsck", "--repair", "--force", "--orphan-grace", "30", "--json")
        code, out, err = nodes.cli(*args, timeout=300)
        assert code in (0, 1), out + err
        repaired = json.loads(out.splitlines()[-1])
        # It deletes every orphan it finds: what the first run reported and
        # came past the grace since (a shard rebuilt by repair for a chunk the
        # application then rewrote, say), less what the nodes' own orphan
        # sweeps or the mover's delayed deletes removed in between (seen: four
        # of one node's). The last fsck below, clean with the same grace,
        # shows none of the first run's is left; "missing" there would show a
        # live shard deleted.
        assert repaired["orphans_deleted"] == len(repaired["orphans"]), repaired
        assert_one_shard_per_chunk(repaired)
        code, out, err = nodes.cli("fsck", "--orphan-grace", "30", timeout=300)
        assert code == 0 and out.strip().endswith("clean"), out + err


def assert_one_shard_per_chunk(report: dict[str, Any]) -> None:
    chunks = [orphan.split(":", 1)[1].rsplit(".", 1)[0] for orphan in report["orphans"]]
    assert len(set(chunks)) == len(chunks), f"every shard of a chunk left behind: {report}"


# --- a node lost for good, its data dir wiped, back empty ----------------------------------


def put(nodes: Nodes, tmp_path: Path, name: str, size: int) -> bytes:
    body = os.urandom(size)
    src = tmp_path / f"{name}.src"
    src.write_bytes(body)
    nodes.ok("put", str(src), f"/{name}")
    return body


def get(nodes: Nodes, tmp_path: Path, name: str) -> bytes:
    dst = tmp_path / f"{name}.out"
    nodes.ok("get", f"/{name}", str(dst))
    return dst.read_bytes()


def test_a_node_wiped_while_down_is_rebuilt_around_and_rejoins_empty(
    nodes: Nodes, tmp_path: Path
) -> None:
    started = nodes.up(4)
    body = put(nodes, tmp_path, "f", 24 << 20)  # 6 chunks of 4 MiB, 2-of-3
    h = nodes.health()
    victim = next(
        n for n in h["nodes"] if n["node"] != h["leader"] and n["shards"] > 0 and n["state"] == "up"
    )
    dev = next(n for n in started if n["id"] == victim["node"])
    kill9(int(dev["pid"]))
    # Lost for good: its data directory is gone.
    shutil.rmtree(str(dev["data_dir"]))
    wait_for(lambda: nodes.node(victim["node"])["state"] == "down", 60, "the node down")
    wait_for(lambda: nodes.node(victim["node"])["shards"] == 0, 120, "repair")
    h = nodes.health()
    assert h["healthy"] == h["chunks"] == 6
    assert get(nodes, tmp_path, "f") == body

    # The machine comes back with an empty disk: a new node, added as before.
    wiped = Path(str(dev["data_dir"]))
    address = nodes.start(wiped, str(dev["rpc_address"]))
    out = json.loads(nodes.ok("node", "add", address, "--voter", "--json"))
    assert out["node"] != victim["node"] and out["role"] == "voter"
    # The old identity is removed (nothing needs it), the new one fills up again.
    nodes.ok("node", "remove", victim["node"])
    wait_for(lambda: nodes.node(out["node"])["shards"] > 0, 120, "shards on the new node")
    wait_for(lambda: settled(nodes.health()), 120, "a settled cluster")
    assert get(nodes, tmp_path, "f") == body
    new_files = [p for p in (wiped / "shards").glob("*/*/*") if not p.name.startswith(".")]
    assert new_files
    code, out2, err = nodes.cli("fsck", "--orphan-grace", "30")
    assert code == 0, out2 + err


def test_storage_only_nodes_hold_shards_and_no_namespace(nodes: Nodes, tmp_path: Path) -> None:
    """Nodes outside the Raft group: one joins with --join, one is added with
    `node add`. They store shards and serve them, replay no log and hold no
    copy of the namespace, answer a client's calls by forwarding them, find a
    new leader after the old one is killed, find the cluster again after a
    restart from the addresses they remember, and stop once removed."""
    started = nodes.up(3)
    seed = str(started[0]["rpc_address"])
    joined_dir, added_dir = tmp_path / "node4", tmp_path / "node5"
    joined = nodes.start(joined_dir, join=seed)
    added = nodes.start(added_dir)
    out = json.loads(nodes.ok("node", "add", added, "--json"))
    assert out["role"] == "storage" and "storage-only" in out["message"], out
    storage = {joined, added}

    def storage_rows() -> list[dict[str, Any]]:
        return [n for n in nodes.health()["nodes"] if n["address"] in storage]

    wait_for(lambda: len(storage_rows()) == 2, 60, "both storage-only nodes registered")
    assert all(n["role"] == "storage" and n["state"] == "up" for n in storage_rows())

    # A 2-of-5 file puts a shard of every chunk on each of the five nodes.
    body = os.urandom(6 << 20)
    (tmp_path / "f.src").write_bytes(body)
    nodes.ok("put", "--layout", "k=2,m=5", str(tmp_path / "f.src"), "/f")
    for data_dir in (joined_dir, added_dir):
        shards = [p for p in (data_dir / "shards").glob("*/*/*") if not p.name.startswith(".")]
        assert len(shards) == 2, data_dir  # one shard of each of the two chunks
        assert not list((data_dir / "raft").glob("seg-*.log"))  # no Raft log replayed
        db = sqlite3.connect(f"file:{data_dir / 'meta' / 'namespace.db'}?mode=ro", uri=True)
        try:
            assert db.execute("SELECT count(*) FROM dentries").fetchone()[0] == 0
        finally:
            db.close()
        remembered = json.loads((data_dir / "raft" / "seeds.json").read_text())
        assert set(remembered) == {str(n["rpc_address"]) for n in started}

    # A client that knows only a storage-only node is served through it.
    def get_through(address: str) -> bytes:
        dst = tmp_path / "through.out"
        dst.unlink(missing_ok=True)
        result = run_cli(
            "get", "/f", str(dst), "--cluster", address, "--secret-file", str(nodes.secret),
            env=nodes.env, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return dst.read_bytes()

    assert get_through(joined) == body

    # The leader is killed: the storage-only nodes find the next one (their
    # heartbeats reach it, so it never marks them down).
    leader = nodes.health()["leader"]
    victim = next(n for n in started if n["id"] == leader)
    kill9(int(victim["pid"]))
    wait_for(lambda: nodes.health()["leader"] not in ("", leader), 60, "a new leader")
    time.sleep(4)  # past node_down_after_s on the new leader
    assert all(n["state"] == "up" and n["silent_s"] < 2 for n in storage_rows()), storage_rows()

    # Restarted without --join, a storage-only node finds the cluster from
    # the members it remembers (one of them is down).
    pid = json.loads((joined_dir / "node.json").read_text())["pid"]
    os.kill(int(pid), signal.SIGTERM)
    wait_for(lambda: not process_alive(int(pid)), 30, "the node to stop")
    nodes.start(joined_dir, joined, new=False)
    wait_for(
        lambda: all(n["state"] == "up" and n["silent_s"] < 1 for n in storage_rows()),
        30,
        "the restarted node heard from",
    )
    assert get_through(joined) == body

    # A voter drained while one is down: its vote goes to a storage-only node,
    # which becomes a learner, receives the namespace and then votes.
    view = nodes.health()
    drained = next(v for v in view["voters"] if v != view["leader"] and v != leader)
    out = json.loads(nodes.ok("node", "drain", drained, "--json"))
    heir = out["message"].rsplit("its vote went to ", 1)[-1]
    assert heir in {n["node"] for n in storage_rows()}, out["message"]
    view = nodes.health()
    assert heir in view["voters"] and drained not in view["voters"]
    assert len(view["voters"]) == 3
    heir_dir = next(d for d in (joined_dir, added_dir) if heir in (d / "node.id").read_text())
    db = sqlite3.connect(f"file:{heir_dir / 'meta' / 'namespace.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM dentries").fetchone()[0] >= 1
    finally:
        db.close()
    storage.discard(next(n["address"] for n in storage_rows() if n["node"] == heir))

    # Removed, a storage-only node is told so by the leader and stops.
    added = next(iter(storage))
    added_dir = added_dir if added != joined else joined_dir
    added_id = next(n["node"] for n in storage_rows() if n["address"] == added)
    # (its pid read first: a node that stops removes its node.json)
    added_pid = int(json.loads((added_dir / "node.json").read_text())["pid"])
    nodes.ok("node", "remove", added_id, "--force")
    wait_for(lambda: not process_alive(added_pid), 30, "the removed node to stop")


def test_nodes_started_by_hand_get_three_voters_and_a_lost_voter_is_replaced(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The README's way: one node founds the cluster, the others join with
    --join (storage-only). The leader grows the group to three voters once
    two more nodes are there (never to an even number on the way from one),
    leaves further nodes storage-only, and hands the vote of a voter down
    for `replace_down_voter_s` to an up node."""
    nodes.config.write_text(NODE_TOML + "[raft]\nreplace_down_voter_s = 4\n")
    founder = nodes.mount.dir / "node1"
    assert run_cli("cluster", "init", "--data-dir", str(founder)).returncode == 0
    first = nodes.start(founder, new=False)
    write_client_toml(nodes.client_toml, [first], nodes.secret)
    second = nodes.start(tmp_path / "n2", join=first)
    wait_for(lambda: len(nodes.health()["nodes"]) == 2, 30, "the second node registered")
    time.sleep(3)  # two voters would be worse than one: it waits for a third node
    assert len(nodes.health()["voters"]) == 1
    third = nodes.start(tmp_path / "n3", join=first)
    wait_for(lambda: len(nodes.health()["voters"]) == 3, 90, "three voters")
    fourth = nodes.start(tmp_path / "n4", join=first)
    write_client_toml(nodes.client_toml, [first, second, third, fourth], nodes.secret)
    wait_for(lambda: len(nodes.health()["nodes"]) == 4, 30, "the fourth node registered")
    view = nodes.health()
    roles = {n["address"]: n["role"] for n in view["nodes"]}
    assert roles[fourth] == "storage" and len(view["voters"]) == 3

    # A voter (not the leader) is lost: after the delay its vote goes to the
    # fourth node, which receives the namespace first.
    lost = next(n for n in view["nodes"] if n["role"] == "voter" and n["node"] != view["leader"])
    lost_dir = next(
        d for d in (founder, tmp_path / "n2", tmp_path / "n3")
        if (d / "node.id").read_text().strip() == lost["node"]
    )  # fmt: skip
    kill9(int(json.loads((lost_dir / "node.json").read_text())["pid"]))
    wait_for(
        lambda: (
            roles_of(nodes).get(fourth) == "voter" and lost["node"] not in nodes.health()["voters"]
        ),
        90,
        "the lost voter replaced",
    )
    assert len(nodes.health()["voters"]) == 3
    body = os.urandom(5 << 20)
    (tmp_path / "f.src").write_bytes(body)
    nodes.ok("put", str(tmp_path / "f.src"), "/f")  # the group of three commits
    assert get(nodes, tmp_path, "f") == body


def test_an_operator_pins_and_excludes_voters(nodes: Nodes, tmp_path: Path) -> None:
    """`prismfs node voting`: a pinned storage-only node takes the vote of a
    voter that is not pinned (the group stays at three); a voter that must
    never vote hands its vote on, the leader its leadership first; bad
    input is one line and changes nothing."""
    started = nodes.up(3)
    first = str(started[0]["rpc_address"])
    fourth = nodes.start(tmp_path / "n4", join=first)
    addresses = [str(n["rpc_address"]) for n in started] + [fourth]
    write_client_toml(nodes.client_toml, addresses, nodes.secret)
    wait_for(lambda: len(nodes.health()["nodes"]) == 4, 30, "the fourth node registered")
    n4 = next(n["node"] for n in nodes.health()["nodes"] if n["address"] == fourth)
    assert roles_of(nodes)[fourth] == "storage"

    out = json.loads(nodes.ok("node", "voting", n4, "pin", "--json"))
    assert out["node"] == n4 and "vote" in out["message"]
    wait_for(lambda: n4 in voters_of(nodes), 90, "the pinned node votes")
    wait_for(lambda: len(voters_of(nodes)) == 3, 60, "three voters again")
    view = nodes.health()
    assert next(n["voting"] for n in view["nodes"] if n["node"] == n4) == "pin"
    assert "voter (pin)" in nodes.ok("cluster", "status")

    # The leader itself must never vote: leadership moves, then its vote.
    leader = view["leader"]
    nodes.ok("node", "voting", leader, "never")
    wait_for(
        lambda: (h := nodes.health())["leader"] != leader and leader not in h["voters"],
        90,
        "the excluded leader hands leadership and vote away",
    )
    assert len(voters_of(nodes)) == 3 and n4 in voters_of(nodes)
    time.sleep(3)  # (the keeper does not give it a vote back)
    assert leader not in voters_of(nodes)

    # Bad input: one line, exit non-zero, nothing changes.
    before = {n["node"]: n["voting"] for n in nodes.health()["nodes"]}
    for args in (("nosuchnode", "pin"), (n4, "always")):
        code, out, err = nodes.cli("node", "voting", *args)
        assert code != 0 and "Traceback" not in err and err.strip(), (args, out, err)
    assert {n["node"]: n["voting"] for n in nodes.health()["nodes"]} == before


def roles_of(nodes: Nodes) -> dict[str, str]:
    return {n["address"]: n["role"] for n in nodes.health()["nodes"]}


def voters_of(nodes: Nodes) -> list[str]:
    return list(nodes.health()["voters"])


# --- the CLI -----------------------------------------------------------------------------


def test_node_commands_happy_paths_and_errors(nodes: Nodes, tmp_path: Path) -> None:
    # min_redundancy 2: once a node is removed, repair may not turn the chunks
    # it cannot rebuild elsewhere into two replicas (which would make the
    # refused removal below allowed, depending on timing).
    nodes.config.write_text(NODE_TOML + "min_redundancy = 2\n")
    started = nodes.up(3)
    put(nodes, tmp_path, "f", 9 << 20)
    ids = [str(n["id"]) for n in started]

    # add: storage-only, in a zone; then again with --voter promotes it.
    address = nodes.start(tmp_path / "node4")
    out = nodes.ok("node", "add", address, "--zone", "rack-b")
    assert "is storage-only" in out
    listed = {n["node"]: n for n in json.loads(nodes.ok("node", "list", "--json"))}
    new = next(n for n in listed if n not in ids)
    assert listed[new]["zone"] == "rack-b" and listed[new]["state"] == "up"
    out = json.loads(nodes.ok("node", "add", address, "--voter", "--json"))
    assert out["role"] == "voter" and out["node"] == new
    # status --watch draws progress bars until rebalancing onto it is done.
    out = nodes.ok("cluster", "status", "--watch", "--until-settled", "--interval", "0.3")
    assert "redundancy" in out and "rebalance" in out and "100%" in out
    assert nodes.node(new)["shards"] > 0

    # drain, then cancel: the node takes shards again.
    out = json.loads(nodes.ok("node", "drain", ids[1], "--json"))
    assert out["state"] == "draining" and "draining" in out["message"]
    assert nodes.node(ids[1])["state"] == "draining"
    out = json.loads(nodes.ok("node", "cancel-drain", ids[1], "--json"))
    assert out["state"] == "up"

    # remove: a drained node, and an undrained one whose chunks keep k shards elsewhere.
    nodes.ok("node", "drain", ids[2])
    wait_for(lambda: nodes.node(ids[2])["shards"] == 0, 120, "the drain")
    out = nodes.ok("node", "remove", ids[1])
    assert "rebuilt by repair" in out
    # Now every chunk has its two remaining shards on ids[0] and the new node:
    # removing either is refused (2-of-3 needs both), and changes nothing.
    code, _, err = nodes.cli("node", "remove", new)
    assert code == 1 and "cannot do without" in err and "--force" in err, err
    assert nodes.node(new)["state"] == "up"
    out = json.loads(nodes.ok("node", "remove", ids[2], "--json"))
    assert out["state"] == "removed"

    # Errors: one line, non-zero exit, nothing changed.
    before = {n["node"]: n["state"] for n in nodes.health()["nodes"]}
    for args, message in (
        (("node", "drain", "nosuch"), "no node nosuch"),
        (("node", "remove", "nosuch"), "no node nosuch"),
        (("node", "cancel-drain", new), "not draining"),
        (("node", "drain", ids[2]), "was removed"),
        (("node", "add", "127.0.0.1:1"), "127.0.0.1:1"),
        (("node", "add", "no-port"), "HOST:PORT"),
    ):
        code, out, err = nodes.cli(*args, timeout=60)
        assert code != 0 and message in err, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {n["node"]: n["state"] for n in nodes.health()["nodes"]} == before
    # Nothing reachable; and the wrong secret.
    secret = str(nodes.mount.dir / "node1" / "cluster.secret")
    result = run_cli(
        "node", "drain", ids[0], "--cluster", "127.0.0.1:1", "--secret-file", secret, env=nodes.env
    )
    assert result.returncode != 0 and "no leader is known" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    wrong = tmp_path / "wrong.secret"
    other = tmp_path / "other"
    assert run_cli("cluster", "init", "--data-dir", str(other)).returncode == 0
    shutil.copy(other / "cluster.secret", wrong)
    address0 = str(started[0]["rpc_address"])
    result = run_cli(
        "node", "drain", ids[0], "--cluster", address0, "--secret-file", str(wrong), env=nodes.env
    )
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert nodes.node(ids[0])["state"] == "up"
