"""Five hosts under network faults, with nothing lost.

Each of five nodes runs in a network namespace of its own with its own
address (a veth pair whose other end is on a bridge the test creates); the
mount daemon runs in a sixth. A checksummed, fsync'd workload
(`crash_workload.py`) writes through the mount while the test, round after
round, isolates the leader, splits the hosts 2/3, slows every link (token
bucket shaping: queueing delay and a bandwidth cap), kills a node with
SIGKILL and restarts it, and heals. Afterwards every operation the workload
saw succeed is checked byte for byte, every replica's namespace digest is
equal, `cluster status` is clean and `fsck` finds nothing.

Partitions are made at the network level: a host's veth leaves the shared
bridge for a second one (split) or for none (isolated). This kernel has no
``sch_netem`` nor ``act_gact`` (``tc`` reports the qdisc unknown), so random
packet loss and fixed added delay cannot be injected; the ``tbf`` shaping
used instead delays packets only by queueing them.

The short version (4 rounds, one of each fault) runs with the suite;
``make jepsen`` runs the long one (``PRISMFS_JEPSEN_ROUNDS``, default 20,
faults drawn from ``PRISMFS_JEPSEN_SEED``, printed so a run can be replayed).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from crash_workload import check, replay
from fuse_mount import fuse_available, is_mounted, stop_daemon
from prismfs.client.config import load_client_toml, write_client_toml
from test_crash_consistency import digests_converged
from test_membership import wait_for

ROUNDS = int(os.environ.get("PRISMFS_JEPSEN_ROUNDS", "0"))
SEED = int(os.environ.get("PRISMFS_JEPSEN_SEED", "0")) or random.randrange(1, 10**6)

pytestmark = pytest.mark.timeout(900 if not ROUNDS else 600 + 120 * ROUNDS)

NODES = 5
SUBNET = "10.213.7"
HOST_IP = f"{SUBNET}.254"
PORT = 7070
NODE_TOML = (
    "[data]\nheartbeat_s = 0.3\nnode_down_after_s = 4\nrepair_after_s = 3\n"
    "rebalance_mb_per_s = 300\nrepair_mb_per_s = 300\nmove_delete_after_s = 5\n"
    "gc_interval_s = 1\n"
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result


class Hosts:
    """Six network namespaces on a bridge, five node processes and a mount."""

    def __init__(self, base: Path) -> None:
        self.base = base
        tag = f"{os.getpid() % 100000}"
        self.ns = [f"pf{tag}h{i}" for i in range(1, NODES + 2)]  # the last: the mount's
        self.host_veth = [f"pf{tag}v{i}" for i in range(1, NODES + 2)]
        self.bridge, self.other = f"pf{tag}b0", f"pf{tag}b1"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.data = [base / f"node{i}" for i in range(1, NODES + 1)]
        self.config = base / "node.toml"
        self.config.write_text(NODE_TOML)
        self.client_toml = base / "client.toml"
        self.point = base / "mnt"
        self.pidfile = base / "mnt.pid"
        self.mount_log = base / "mnt.log"
        self.env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
        self.shaped: list[int] = []

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}:{PORT}"

    # --- the network ------------------------------------------------------------------

    def make_network(self) -> None:
        for bridge in (self.bridge, self.other):
            sh("ip", "link", "add", bridge, "type", "bridge")
            sh("ip", "link", "set", bridge, "up")
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", self.bridge)
        for i, (ns, veth) in enumerate(zip(self.ns, self.host_veth, strict=True)):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def remove_network(self) -> None:
        for veth in self.host_veth:
            sh("ip", "link", "del", veth, check=False)
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)
        for bridge in (self.bridge, self.other):
            sh("ip", "link", "del", bridge, check=False)

    def attach(self, hosts: list[int], bridge: str | None) -> None:
        """Put the hosts' links on ``bridge`` (None: on no bridge, cut off)."""
        for i in hosts:
            if bridge is None:
                sh("ip", "link", "set", self.host_veth[i], "nomaster")
            else:
                sh("ip", "link", "set", self.host_veth[i], "master", bridge)

    def heal(self) -> None:
        self.attach(list(range(NODES + 1)), self.bridge)
        for i in self.shaped:
            sh("tc", "qdisc", "del", "dev", self.host_veth[i], "root", check=False)
            sh("ip", "netns", "exec", self.ns[i], "tc", "qdisc", "del", "dev", "eth0", "root",
               check=False)  # fmt: skip
        self.shaped.clear()

    def shape(self, hosts: list[int], rate: str = "8mbit") -> None:
        """Slow the links of ``hosts`` (both ways): a token bucket whose queue
        delays packets up to 200 ms and drops what would wait longer."""
        for i in hosts:
            sh("tc", "qdisc", "replace", "dev", self.host_veth[i], "root", "tbf", "rate", rate,
               "burst", "32kb", "latency", "200ms")  # fmt: skip
            sh("ip", "netns", "exec", self.ns[i], "tc", "qdisc", "replace", "dev", "eth0",
               "root", "tbf", "rate", rate, "burst", "32kb", "latency", "200ms")  # fmt: skip
            self.shaped.append(i)

    # --- processes --------------------------------------------------------------------

    def in_ns(self, i: int, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Run a command in host ``i``'s network namespace (only: the mount
        namespace stays the test's, so a FUSE mount made there is seen here)."""
        with open(log, "ab") as err:
            return subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns[i]}", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def start(self, i: int) -> None:
        data = self.data[i]
        (data / "node.json").unlink(missing_ok=True)
        args = [sys.executable, "-m", "prismfs", "node", "start", "--data-dir", str(data)]
        args += ["--listen", self.address(i), "--config", str(self.config)]
        args += ["--log-file", str(self.base / f"node{i + 1}.log")]
        if i:
            args += ["--secret-file", str(self.data[0] / "cluster.secret")]
        self.procs[i] = self.in_ns(i, *args, log=self.base / f"node{i + 1}.err")
        wait_for(lambda: (data / "node.json").exists(), 30, f"node{i + 1} start")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def cli(self, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        result = subprocess.run(
            [sys.executable, "-m", "prismfs", *args, "--config", str(self.client_toml)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        return result.returncode, result.stdout, result.stderr

    def up(self) -> None:
        self.make_network()
        init = subprocess.run(
            [sys.executable, "-m", "prismfs", "cluster", "init", "--data-dir", str(self.data[0])],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        assert init.returncode == 0, init.stderr
        for i in range(NODES):
            self.start(i)
        write_client_toml(
            self.client_toml,
            [self.address(i) for i in range(NODES)],
            self.data[0] / "cluster.secret",
        )
        for i in range(1, NODES):
            code, out, err = self.cli("node", "add", self.address(i), "--voter")
            assert code == 0, out + err
        wait_for(lambda: len(self.health().get("voters", ())) == NODES, 60, "five voters")

    def mount(self) -> None:
        self.point.mkdir(exist_ok=True)
        opts = f"log={self.mount_log},pidfile={self.pidfile},failtimeout=120"
        helper = [sys.executable, "-m", "prismfs.cli.mount_helper_main"]
        proc = self.in_ns(
            NODES, *helper, str(self.client_toml), str(self.point), "-o", opts, log=self.mount_log
        )
        assert proc.wait(timeout=60) == 0, self.mount_log.read_text()
        assert is_mounted(self.point)

    def health(self) -> dict[str, Any]:
        _, out, _ = self.cli("cluster", "status", "--json", timeout=60)
        try:
            return dict(json.loads(out).get("health") or {})
        except ValueError:
            return {}

    def leader(self) -> int:
        for _ in range(60):
            leader = self.health().get("leader")
            for i in range(NODES):
                info = json.loads((self.data[i] / "node.json").read_text())
                if leader and info.get("node_id") == leader:
                    return i
            time.sleep(0.5)
        raise AssertionError("no leader")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.heal()
        if is_mounted(self.point):
            subprocess.run(["fusermount3", "-u", "-z", str(self.point)], timeout=30, check=False)
        stop_daemon(self.pidfile)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.remove_network()


def netns_available() -> bool:
    return shutil.which("ip") is not None and shutil.which("nsenter") is not None


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    assert netns_available(), "iproute2 and nsenter are needed for the multi-host test"
    h = Hosts(tmp_path)
    try:
        h.up()
        h.mount()
        yield h
    finally:
        h.cleanup()


def fault_round(hosts: Hosts, kind: str, rng: random.Random) -> None:
    """One fault, held for a few seconds while the workload runs, then healed."""
    nodes = list(range(NODES))
    if kind == "isolate-leader":
        leader = hosts.leader()
        print(f"  isolating the leader, node{leader + 1}")
        hosts.attach([leader], None)
        time.sleep(rng.uniform(4, 8))
    elif kind == "split":
        rng.shuffle(nodes)
        minority = nodes[:2]
        # The mount goes with the majority (else its writes wait for the heal).
        print(f"  split: node{minority[0] + 1}, node{minority[1] + 1} apart from the rest")
        hosts.attach(minority, hosts.other)
        time.sleep(rng.uniform(4, 8))
    elif kind == "slow":
        print("  every link slowed to 8 Mbit/s with up to 200 ms of queueing")
        hosts.shape([*nodes, NODES])
        time.sleep(rng.uniform(4, 8))
    elif kind == "kill-restart":
        victim = rng.choice(nodes)
        print(f"  kill -9 of node{victim + 1}, restarted after a while")
        hosts.kill(victim)
        time.sleep(rng.uniform(3, 6))
        hosts.start(victim)
    hosts.heal()
    time.sleep(2)


def test_five_hosts_under_partitions_lose_nothing(hosts: Hosts) -> None:
    kinds = ["isolate-leader", "split", "slow", "kill-restart"]
    rng = random.Random(SEED)
    plan = kinds if not ROUNDS else [rng.choice(kinds) for _ in range(ROUNDS)]
    print(f"\nmulti-host run: seed {SEED}, rounds {plan}")
    manifest = hosts.base / "manifest.jsonl"
    workload = subprocess.Popen(
        [
            *(sys.executable, str(Path(__file__).with_name("crash_workload.py"))),
            *(str(hosts.point / "work"), str(manifest), "--seed", str(SEED)),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(4)
        for kind in plan:
            assert workload.poll() is None, "the workload died"
            fault_round(hosts, kind, rng)
        time.sleep(3)
    finally:
        workload.send_signal(signal.SIGTERM)
        try:
            workload.wait(timeout=300)
        except subprocess.TimeoutExpired:
            workload.kill()
            workload.wait(timeout=30)
    report = check(hosts.point / "work", replay(manifest))
    print(f"after {len(plan)} faults (seed {SEED}): {report.line()}")
    assert not report.wrong, f"wrong: {report.wrong[:10]}"
    assert not report.missing, f"missing: {report.missing[:10]}"
    assert not report.back, f"removed after fsyncdir, yet back: {report.back[:10]}"
    assert report.written > 10, "the workload hardly ran"
    client = load_client_toml(hosts.client_toml)
    trio.run(digests_converged, hosts.client_toml, list(client.addresses))
    wait_for(lambda: hosts.cli("cluster", "status")[0] == 0, 240, "cluster status clean")
    code, out, err = hosts.cli("fsck", timeout=600)
    assert code == 0, out + err + trail(hosts, out)


def trail(hosts: Hosts, report: str) -> str:
    """The node log lines that name a chunk fsck found a problem with: where
    its shards went, and at whose request."""
    chunks = {m.split(".")[0] for m in re.findall(r"shard: ([0-9a-f]{32}\.\d+)", report)}
    lines = [
        f"{log.name}: {line}"
        for log in sorted(hosts.base.glob("node*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if any(c in line for c in chunks)
    ]
    return "\nnode log lines about those chunks:\n" + "\n".join(lines[-60:])
