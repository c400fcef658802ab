"""Raft consensus benchmark: commit throughput, commit latency and leader failover.

What is measured, on a real 3-node cluster on loopback started with
``prismfs dev up --nodes 3`` (its own temporary cluster and state directories;
every node fsyncs its log, as it always does):

* **throughput and latency.** ``K`` proposers (K = 1, 16, 256), each a separate
  client id with its own increasing sequence number, send ``Propose`` straight
  to the leader (found with ``RaftStatus``) over one `RpcPool`, one call at a
  time each. A command is a namespace ``setxattr`` of a 150-byte value on
  the root under a name of the proposer's own (an op of about 210 bytes,
  about 255 bytes as a logged ``ClientCommand``), applied in SQLite like
  every namespace change. After a warm-up, calls that complete within a window of
  ``--seconds`` are counted: commits/s is that count divided by the window;
  latency is the time from sending ``Propose`` to receiving ``Proposed`` (the
  entry is then committed and applied on the leader), given as p50/p99/max.
  A failed call (it should not happen without faults) is retried with the
  same seq and counted under "errors". CPU time of each node process and of
  this process is given as a percentage of one core over the window.
* **failover.** ``--kills`` times: find the leader, ``SIGKILL`` its process
  (pid from ``dev.json``), and measure the time from the kill until a
  ``Propose`` succeeds again. The writer is one retry loop per surviving node,
  running at once, each attempt with a 0.5 s deadline and 10 ms between
  attempts, so the first success (on the new leader, or forwarded to it by the
  other survivor) ends the measurement. The killed node is then restarted with
  ``prismfs dev up --dir`` (it restarts dead nodes), and the next kill waits
  until it is a follower again with its commit index caught up with the
  leader's.

Usage::

    python benchmarks/bench_raft.py [--seconds 5] [--kills 20] [--json]
                                    [--profile-leader OUT]

``--profile-leader OUT`` also runs ``py-spy record`` (from the same venv) on
the leader process during the 256-proposer window and writes raw collapsed
stacks to OUT (``--format raw``; turn into a flame graph with any
flamegraph tool), plus a short top-of-stack summary on stderr.

Only 127.0.0.1 is used. Loops are bounded. The cluster is stopped with
``prismfs dev down`` in a ``finally``; any node process still alive after that
is killed by its pid (checked against its data directory), and the temporary
directories are removed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from prismfs.errors import PrismError
from prismfs.meta.commands import ROOT_INO, SetXattr
from prismfs.node.consensus_messages import Propose, Proposed, RaftStatus, RaftStatusReply
from prismfs.procs import process_alive
from prismfs.wire.auth import ClusterCredentials, read_secret_file
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.codec import encode_message

PROPOSERS = (1, 16, 256)
VALUE_BYTES = 150
WARMUP_S = 1.0
MAX_CALLS_PER_LEVEL = 2_000_000
CALL_TIMEOUT = 10.0
RETRY_SLEEP = 0.01
FAILOVER_ATTEMPT_TIMEOUT = 0.5
FAILOVER_DEADLINE = 30.0
REJOIN_DEADLINE = 60.0
CLI_TIMEOUT = 120.0
TARGET_COMMITS = 5_000.0
TARGET_FAILOVER_P99 = 1.5


# --- cluster --------------------------------------------------------------------


@dataclass
class Node:
    name: str
    node_id: str
    address: str
    pid: int
    data_dir: str


class DevCluster:
    """A `prismfs dev` cluster in a temporary directory, driven through the CLI."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="prismfs-bench-raft-"))
        self.dir = self.base / "cluster"
        self.env = {
            **os.environ,
            "PRISMFS_STATE_DIR": str(self.base / "state"),
            "PRISMFS_CONFIG": "",
        }

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prismfs", "dev", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def up(self) -> list[Node]:
        """``prismfs dev up --nodes 3 --dir D --json``: start, or restart dead nodes."""
        result = self._cli("up", "--nodes", "3", "--dir", str(self.dir), "--json")
        if result.returncode != 0:
            raise RuntimeError(f"prismfs dev up failed ({result.returncode}):\n{result.stderr}")
        json.loads(result.stdout)  # it must be valid; dev.json is the reference
        return self.nodes()

    def nodes(self) -> list[Node]:
        data = json.loads((self.dir / "dev.json").read_text())
        return [
            Node(n["name"], n["node_id"], n["rpc_address"], int(n["pid"]), n["data_dir"])
            for n in data["nodes"]
        ]

    def creds(self) -> ClusterCredentials:
        return read_secret_file(self.dir / "node1" / "cluster.secret")

    def teardown(self) -> None:
        try:
            if (self.dir / "dev.json").exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._cli("down", "--dir", str(self.dir))
                for node in self.nodes():
                    if node.pid and process_alive(node.pid, node.data_dir):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(node.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0.0 if unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def raft_status(pool: RpcPool, address: str, timeout: float = 2.0) -> RaftStatusReply:
    reply = (await pool.call(address, RaftStatus(), timeout=timeout)).message
    assert isinstance(reply, RaftStatusReply)
    return reply


async def find_leader(pool: RpcPool, nodes: list[Node], deadline: float = 20.0) -> Node:
    """The node that reports itself leader with the highest term."""
    with trio.fail_after(deadline):
        while True:
            best: tuple[int, Node] | None = None
            for node in nodes:
                try:
                    st = await raft_status(pool, node.address, timeout=1.0)
                except PrismError:
                    continue
                if st.role == "leader" and (best is None or st.term > best[0]):
                    best = (st.term, node)
            if best is not None:
                return best[1]
            await trio.sleep(0.05)


def _op(key: str, value: str) -> bytes:
    # Nodes replicate the namespace: a ~200-byte command is an xattr set on the root.
    return encode_message(
        SetXattr(time.time_ns(), ROOT_INO, f"user.{key}".encode(), value.encode())
    )


def _percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


# --- throughput and latency ------------------------------------------------------


@dataclass
class Level:
    proposers: int
    seconds: float
    commits: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    leader: str = ""

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "proposers": self.proposers,
            "commits_per_s": round(self.commits_per_s, 1),
            "commits": self.commits,
            "window_s": self.seconds,
            "latency_ms": {
                "p50": round(_percentile(lat, 50), 2),
                "p99": round(_percentile(lat, 99), 2),
                "max": round(max(lat), 2) if lat else float("nan"),
                "mean": round(statistics.fmean(lat), 2) if lat else float("nan"),
            },
            "errors": dict(self.errors),
            "cpu_pct": {k: round(v) for k, v in self.cpu_pct.items()},
            "leader": self.leader,
        }


async def measure_level(
    pool: RpcPool,
    leader: Node,
    nodes: list[Node],
    proposers: int,
    seconds: float,
    profile: Path | None = None,
) -> Level:
    level = Level(proposers, seconds, leader=leader.name)
    value = "v" * VALUE_BYTES
    now = time.perf_counter()
    t_measure = now + WARMUP_S
    t_end = t_measure + seconds
    started = 0

    async def proposer(i: int) -> None:
        nonlocal started
        client = f"bench-{proposers}-{i}"
        op = _op(f"bench/{client}", value)
        seq = 0
        while started < MAX_CALLS_PER_LEVEL and time.perf_counter() < t_end:
            started += 1
            seq += 1
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                try:
                    reply = await pool.call(
                        leader.address, Propose(client, seq, op), timeout=CALL_TIMEOUT
                    )
                except PrismError as exc:
                    level.errors[type(exc).__name__] += 1
                    await trio.sleep(RETRY_SLEEP)
                    continue
                t1 = time.perf_counter()
                assert isinstance(reply.message, Proposed)
                if t_measure <= t1 <= t_end:
                    level.commits += 1
                    level.latencies_ms.append((t1 - t0) * 1000)
                break

    async def meter() -> None:
        await trio.sleep_until(trio.current_time() + (t_measure - time.perf_counter()))
        cpu0 = {n.name: _cpu_seconds(n.pid) for n in nodes}
        me0, w0 = time.process_time(), time.perf_counter()
        spy = _start_py_spy(leader.pid, seconds, profile) if profile else None
        await trio.sleep_until(trio.current_time() + (t_end - time.perf_counter()))
        wall = time.perf_counter() - w0
        for n in nodes:
            role = "leader" if n.name == leader.name else "follower"
            level.cpu_pct[f"{n.name} ({role})"] = 100 * (_cpu_seconds(n.pid) - cpu0[n.name]) / wall
        level.cpu_pct["client"] = 100 * (time.process_time() - me0) / wall
        if spy is not None:
            await trio.to_thread.run_sync(_finish_py_spy, spy, profile)

    with trio.fail_after(WARMUP_S + seconds + CALL_TIMEOUT + 60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meter)
            for i in range(proposers):
                nursery.start_soon(proposer, i)
    return level


def _start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print(f"py-spy not found at {exe}; no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish_py_spy(spy: subprocess.Popen[bytes], out: Path | None) -> None:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode != 0 or out is None or not out.exists():
        print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')}", file=sys.stderr)
        return
    _summarize_profile(out)


def _summarize_profile(out: Path, top: int = 25) -> None:
    """Print the share of samples per leaf function and per selected frames."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return
    print(f"\npy-spy profile of the leader: {total} samples -> {out}", file=sys.stderr)
    print("top leaf frames:", file=sys.stderr)
    for f, n in leaf.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}", file=sys.stderr)
    print("top inclusive frames:", file=sys.stderr)
    for f, n in inclusive.most_common(top * 2):
        print(f"  {100 * n / total:5.1f}%  {f}", file=sys.stderr)


# --- failover ---------------------------------------------------------------------


@dataclass
class Failover:
    killed: str
    old_term: int
    seconds: float | None
    answered_by: str = ""
    new_leader: str = ""
    new_term: int = 0
    attempts_failed: int = 0
    rejoin_s: float = 0.0


async def propose_until_success(
    pool: RpcPool, survivors: list[Node], round_no: int, t_kill: float
) -> tuple[float | None, str, int]:
    """One retry loop per survivor, concurrently; the first success ends all."""
    done: list[tuple[float, str]] = []
    failed = 0
    value = "f" * VALUE_BYTES

    async def writer(node: Node, cancel: trio.CancelScope) -> None:
        nonlocal failed
        client = f"failover-{round_no}-{node.name}"
        op = _op(f"failover/{round_no}", value)
        while True:
            try:
                reply = await pool.call(
                    node.address, Propose(client, 1, op), timeout=FAILOVER_ATTEMPT_TIMEOUT
                )
            except PrismError:
                failed += 1
                await trio.sleep(RETRY_SLEEP)
                continue
            assert isinstance(reply.message, Proposed)
            done.append((time.perf_counter() - t_kill, node.name))
            cancel.cancel()
            return

    with trio.move_on_after(FAILOVER_DEADLINE):
        async with trio.open_nursery() as nursery:
            for node in survivors:
                nursery.start_soon(writer, node, nursery.cancel_scope)
    if not done:
        return None, "", failed
    first = min(done)
    return first[0], first[1], failed


async def wait_rejoined(pool: RpcPool, node: Node, nodes: list[Node]) -> None:
    """Until ``node`` is a follower of a known leader, caught up with the leader's commit."""
    with trio.fail_after(REJOIN_DEADLINE):
        while True:
            try:
                st = await raft_status(pool, node.address, timeout=1.0)
                if st.role == "follower" and st.leader:
                    leader = next((n for n in nodes if n.node_id == st.leader), None)
                    if leader is not None:
                        lst = await raft_status(pool, leader.address, timeout=1.0)
                        if lst.role == "leader" and st.commit >= lst.commit:
                            return
            except PrismError:
                pass
            await trio.sleep(0.05)


async def run_failovers(cluster: DevCluster, pool: RpcPool, kills: int) -> list[Failover]:
    results = []
    for k in range(kills):
        nodes = cluster.nodes()
        leader = await find_leader(pool, nodes)
        old = await raft_status(pool, leader.address)
        if not process_alive(leader.pid, leader.data_dir):
            raise RuntimeError(f"leader {leader.name} pid {leader.pid} is not its process")
        survivors = [n for n in nodes if n.name != leader.name]
        # Open connections to the survivors first, so dialing is not measured.
        for n in survivors:
            await raft_status(pool, n.address)
        t_kill = time.perf_counter()
        os.kill(leader.pid, signal.SIGKILL)
        seconds, answered_by, failed = await propose_until_success(pool, survivors, k, t_kill)
        result = Failover(leader.name, old.term, seconds, answered_by, attempts_failed=failed)
        try:
            new = await find_leader(pool, survivors, deadline=10)
            st = await raft_status(pool, new.address)
            result.new_leader, result.new_term = new.name, st.term
        except (PrismError, trio.TooSlowError):
            pass
        shown = "none" if seconds is None else f"{seconds:.3f} s"
        print(
            f"kill {k + 1}/{kills}: {leader.name} (term {old.term}) -> {result.new_leader} "
            f"(term {result.new_term}), first commit after {shown}",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        await trio.to_thread.run_sync(cluster.up)
        restarted = next(n for n in cluster.nodes() if n.name == leader.name)
        await wait_rejoined(pool, restarted, cluster.nodes())
        result.rejoin_s = time.perf_counter() - t0
        results.append(result)
    return results


# --- main -------------------------------------------------------------------------


async def run_benchmark(
    cluster: DevCluster, seconds: float, kills: int, profile: Path | None
) -> tuple[list[Level], list[Failover]]:
    async with open_rpc_pool(cluster.creds(), connect_timeout=1, client_name="bench-raft") as pool:
        nodes = cluster.nodes()
        levels = []
        for k in PROPOSERS:
            leader = await find_leader(pool, nodes)
            print(f"{k} proposers -> leader {leader.name}", file=sys.stderr, flush=True)
            levels.append(
                await measure_level(
                    pool, leader, nodes, k, seconds, profile if k == max(PROPOSERS) else None
                )
            )
        failovers = await run_failovers(cluster, pool, kills)
    return levels, failovers


def _failover_summary(failovers: list[Failover]) -> dict[str, Any]:
    times = [f.seconds for f in failovers if f.seconds is not None]
    lost = len(failovers) - len(times)
    return {
        "kills": len(failovers),
        "no_recovery": lost,
        "p50_s": round(_percentile(times, 50), 3),
        "p99_s": round(_percentile(times, 99), 3) if not lost else float("inf"),
        "max_s": round(max(times), 3) if times and not lost else float("inf"),
        "min_s": round(min(times), 3) if times else float("nan"),
        "mean_rejoin_s": round(statistics.fmean(f.rejoin_s for f in failovers), 2)
        if failovers
        else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="window per level (default 5)")
    parser.add_argument("--kills", type=int, default=20, help="leader kills (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--profile-leader",
        type=Path,
        metavar="OUT",
        help="py-spy the leader during the 256-proposer window; raw stacks to OUT",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 <= args.kills <= 100:
        parser.error("--seconds must be in (0, 60] and --kills in [0, 100]")

    started = datetime.datetime.now(datetime.UTC)
    cluster = DevCluster()
    try:
        cluster.up()
        levels, failovers = trio.run(
            run_benchmark, cluster, args.seconds, args.kills, args.profile_leader
        )
    finally:
        cluster.teardown()
    duration = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    top = max(levels, key=lambda lv: lv.proposers)
    summary = _failover_summary(failovers)
    targets = {
        f"commits_per_s_at_{top.proposers}_proposers >= {TARGET_COMMITS:g}": (
            top.commits_per_s >= TARGET_COMMITS
        ),
        f"failover_p99_s <= {TARGET_FAILOVER_P99:g}": (
            bool(failovers) and summary["p99_s"] <= TARGET_FAILOVER_P99
        ),
    }
    if args.json:
        report = {
            "date": started.isoformat(timespec="seconds"),
            "duration_s": round(duration, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "trio": trio.__version__,
                "platform": platform.platform(),
            },
            "seconds": args.seconds,
            "warmup_s": WARMUP_S,
            "value_bytes": VALUE_BYTES,
            "levels": [lv.row() for lv in levels],
            "failover": {**summary, "runs": [f.__dict__ for f in failovers]},
            "targets": targets,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, trio {trio.__version__}; 3 nodes, {VALUE_BYTES}-byte "
        f"values, {args.seconds:g} s per level, {duration:.0f} s in all\n"
    )
    head = (
        f"{'proposers':>9} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'errors':>6}  cpu % (leader, followers, client)"
    )
    print(head)
    print("-" * len(head))
    for lv in levels:
        r = lv.row()
        cpu = lv.cpu_pct
        lead = [v for k, v in cpu.items() if "(leader)" in k]
        foll = [v for k, v in cpu.items() if "(follower)" in k]
        print(
            f"{lv.proposers:>9} {lv.commits_per_s:>10.0f} {r['latency_ms']['p50']:>8.1f}"
            f" {r['latency_ms']['p99']:>8.1f} {r['latency_ms']['max']:>8.1f}"
            f" {sum(lv.errors.values()):>6}  {lead[0]:.0f}, "
            + ", ".join(f"{v:.0f}" for v in foll)
            + f", {cpu['client']:.0f}"
        )
    print()
    print(
        f"failover ({summary['kills']} kills): p50 {summary['p50_s']:.3f} s,"
        f" p99 {summary['p99_s']:.3f} s, max {summary['max_s']:.3f} s,"
        f" min {summary['min_s']:.3f} s; no recovery: {summary['no_recovery']};"
        f" mean restart+catch-up {summary['mean_rejoin_s']:.2f} s"
    )
    print(
        "failover times (s): "
        + " ".join("-" if f.seconds is None else f"{f.seconds:.3f}" for f in failovers)
    )
    print()
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
