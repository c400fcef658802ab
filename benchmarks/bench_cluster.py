"""Many-node benchmark: a cluster of ``--nodes`` node processes on this machine
(20 by default), membership changes under a mount workload.

A ``prismfs dev`` cluster (5 voters; the other nodes join as ``dev up``
makes them: storage-only since storage-only nodes exist, Raft learners
before) is mounted, and a writer on the mount writes files of 64 KiB to
1 MiB (written, fsynced, closed, then read back and compared) while, in
turn:

1. **steady**: nothing else happens (``--phase-s`` seconds);
2. **add**: one more node is started and added (``prismfs node add``);
3. **drain**: a node holding shards is drained until it holds none
   (``prismfs node drain --wait``);
4. **remove**: that node is removed (``prismfs node remove``);
5. **steady** again.

For each phase: its length, the writer's files per second and errors (any
mismatch or failed call), the leader's CPU (its process's user + system
time over the phase, as a share of one core), the CPU of all node processes
together, the longest time since the leader last heard a node's heartbeat
(from ``cluster status``, polled every second) and the Raft term (a change
is an election).

    .venv/bin/python benchmarks/bench_cluster.py [--nodes 20] [--phase-s 20] [--json]

Run it on an older revision (``PYTHONPATH=<worktree>/src``) for an A/B.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_repair import CLI, _cli, _dev_down, _Mount

NODE_TOML = "[data]\nrebalance_mb_per_s = 50\nmove_delete_after_s = 5\nrepair_after_s = 30\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Writer(threading.Thread):
    """Write, fsync, read back and compare files on the mount until stopped."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.dir = directory
        self.files = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = os.urandom(64 * 1024 * (1 + n % 16))
            path = self.dir / f"w{n % 500}"
            try:
                with open(path, "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(body).digest():
                    self.errors.append(f"{path}: read back differs")
                self.files += 1
            except OSError as exc:
                self.errors.append(f"{path}: {exc}")
                time.sleep(0.2)


class Watch(threading.Thread):
    """Poll ``cluster status`` every second: worst heartbeat age, terms seen."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.stop = threading.Event()
        self.worst_silence = 0.0
        self.terms: set[int] = set()
        self.leader = ""

    def reset(self) -> None:
        self.worst_silence = 0.0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                view = health(self.env)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                continue
            self.terms.add(int(view["term"]))
            self.leader = str(view["leader"])
            for node in view["nodes"]:
                if node["state"] in ("up", "draining"):
                    self.worst_silence = max(self.worst_silence, float(node["silent_s"]))


def health(env: dict[str, str]) -> dict[str, Any]:
    """The leader's view (``cluster status --json``; exit 2, chunks degraded, is fine)."""
    out = subprocess.run(
        [*CLI, "cluster", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    view = json.loads(out.stdout).get("health") if out.stdout.strip() else None
    if out.returncode not in (0, 2) or not view:
        raise RuntimeError(f"no cluster view: {out.stderr.strip()}")
    return dict(view)


def node_pids(cluster: Path) -> dict[str, int]:
    data = json.loads((cluster / "dev.json").read_text())
    return {n["node_id"]: int(n["pid"]) for n in data["nodes"] if n.get("pid")}


def measure(n_nodes: int, phase_s: float, keep_logs: Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-cluster-"))
    cluster = base / "cluster"
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    config = base / "node.toml"
    config.write_text(NODE_TOML)
    mount = _Mount(cluster / "client.toml", base / "mnt", env)
    extra: subprocess.Popen[bytes] | None = None
    phases: list[dict[str, Any]] = []
    try:
        up = json.loads(
            _cli(
                env,
                *("dev", "up", "--nodes", str(n_nodes), "--dir", str(cluster)),
                *("--json", "--node-config", str(config)),
                timeout=600,
            )
        )
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        roles: dict[str, int] = {}
        for node in health(env)["nodes"]:
            roles[node["role"] or "-"] = roles.get(node["role"] or "-", 0) + 1
        mount.mount()
        work = base / "mnt" / "work"
        work.mkdir()
        writer, watch = Writer(work), Watch(env)
        writer.start()
        watch.start()
        pids = node_pids(cluster)

        def phase(name: str, action: Any) -> None:
            leader = watch.leader or health(env)["leader"]
            all_pids = dict(pids)
            cpu0 = {n: cpu_s(p) for n, p in all_pids.items()}
            files0, errors0 = writer.files, len(writer.errors)
            watch.reset()
            t0 = time.monotonic()
            detail = action()
            if time.monotonic() - t0 < phase_s:
                time.sleep(phase_s - (time.monotonic() - t0))
            elapsed = time.monotonic() - t0
            cpu1 = {n: cpu_s(p) for n, p in all_pids.items()}
            used = {n: cpu1[n] - cpu0[n] for n in all_pids}
            phases.append(
                {
                    "phase": name,
                    "seconds": round(elapsed, 1),
                    "files_per_s": round((writer.files - files0) / elapsed, 1),
                    "errors": len(writer.errors) - errors0,
                    "leader_cpu": round(used.get(leader, 0.0) / elapsed, 3),
                    "all_nodes_cpu": round(sum(used.values()) / elapsed, 3),
                    "worst_heartbeat_age_s": round(watch.worst_silence, 2),
                    "terms": sorted(watch.terms),
                    "leader": leader,
                    **({"detail": detail} if detail else {}),
                }
            )
            print(json.dumps(phases[-1]), file=sys.stderr, flush=True)

        phase("steady", lambda: None)

        def add() -> str:
            nonlocal extra
            data_dir = base / "extra"
            secret = cluster / "node1" / "cluster.secret"
            log = open(base / "extra.log", "ab")  # noqa: SIM115 - handed to the child
            extra = subprocess.Popen(
                [
                    *CLI,
                    *("node", "start", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"),
                    *("--secret-file", str(secret), "--config", str(config)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
            log.close()
            deadline = time.monotonic() + 60
            while not (data_dir / "node.json").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the added node did not start")
                time.sleep(0.1)
            state = json.loads((data_dir / "node.json").read_text())
            pids[state["node_id"]] = extra.pid
            t0 = time.monotonic()
            out = json.loads(_cli(env, "node", "add", state["rpc_address"], "--json"))
            return f"{out['role']} in {time.monotonic() - t0:.1f} s"

        phase("add", add)
        view = health(env)
        victim = max(
            (n for n in view["nodes"] if n["node"] != view["leader"] and n["role"] != "voter"),
            key=lambda n: n["shards"],
        )

        def drain() -> str:
            t0 = time.monotonic()
            _cli(env, "node", "drain", victim["node"], "--wait", timeout=1800)
            return f"{victim['shards']} shards moved off in {time.monotonic() - t0:.1f} s"

        phase("drain", drain)
        phase("remove", lambda: _cli(env, "node", "remove", victim["node"]).strip())
        phase("steady", lambda: None)
        writer.stop.set()
        watch.stop.set()
        writer.join(30)
        return {
            "nodes": n_nodes,
            "roles": roles,
            "dev_up_nodes": len(up["nodes"]),
            "phases": phases,
            "errors": writer.errors[:10],
        }
    finally:
        mount.unmount()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*cluster.glob("node*/node.log"), base / "extra.log"]:
                if log.exists():
                    name = log.name if log.parent == base else f"{log.parent.name}.log"
                    shutil.copy(log, keep_logs / name)
        if extra is not None:
            with contextlib.suppress(ProcessLookupError):
                extra.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                extra.wait(30)
            with contextlib.suppress(ProcessLookupError):
                extra.kill()
        _dev_down(env, cluster)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the nodes' logs there at the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep = Path(args.keep_logs) if args.keep_logs else None
    result = measure(args.nodes, args.phase_s, keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['nodes']} nodes, roles {result['roles']}")
    print(
        f"{'phase':8} {'s':>6} {'files/s':>8} {'errors':>6} {'leader CPU':>10} "
        f"{'all CPU':>8} {'hb age':>7}  terms  detail"
    )
    for p in result["phases"]:
        print(
            f"{p['phase']:8} {p['seconds']:6.1f} {p['files_per_s']:8.1f} {p['errors']:6d} "
            f"{p['leader_cpu']:10.2f} {p['all_nodes_cpu']:8.2f} "
            f"{p['worst_heartbeat_age_s']:7.2f}  {p['terms']}  {p.get('detail', '')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
