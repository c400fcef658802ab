"""Recovery benchmark: kill -9 a node holding 1 GiB of 2-of-3 data, time until
every chunk is fully redundant again.

A 4-node ``prismfs dev`` cluster (so the lost shards have a node to go to),
``node_down_after_s`` at its default (10 s), ``repair_after_s = 0`` and
``repair_mb_per_s = 1000`` (no pacing to speak of). The file is written with
``prismfs put``; the victim is a node other than the leader (the figure is
repair, not an election). From the kill, the cluster status (the leader's
chunk health) is polled every 0.2 s. Printed: seconds until the node is
marked down, until no chunk is degraded, and the repair throughput: bytes
of shards rebuilt over the window between the last status that showed the
victim up and the first that shows every chunk redundant (repair starts
when the node is marked down and may finish between two polls, so this is a
lower bound).

    .venv/bin/python benchmarks/bench_repair.py [--size-mib 1024]

``--read-during-repair`` measures instead what repair costs a reader (issue
8): foreground sequential read throughput on a FUSE mount while repair runs,
as a ratio to the same read before the kill. Same 4-node cluster and
``repair_after_s = 0``, but ``repair_mb_per_s`` is the node default (100)
unless ``--repair-mb-per-s`` sets it, since the pacing is what protects
readers. Two files are put: the repair target (``--size-mib``) and a read
target (``--read-mib``, default 512). The cluster is mounted as the tests
mount it (``python -m prismfs.cli.mount_helper_main client.toml DIR -o
log=,pidfile=``, unmounted with ``fusermount3 -u``). The read target is read
with ``dd bs=1M`` after dropping the page cache (the nodes' shard files are
on this machine too, so this also makes the nodes read from disk): twice
before the kill (the better run is the baseline), then once as soon as the
victim is marked down and repair has rebuilt its first bytes (the repair
loop starts a pass once a second after "down"). The degraded count and the
bytes repaired are sampled at the start and end of that read, to show it
overlapped repair; the output says so if repair finished first.

The read during repair also reads around the dead node: chunks of the read
target with a shard on the victim are decoded from the other two shards
(and may be rebuilt while being read). That is the real-world situation
after a crash, so the ratio is "read after a crash, with repair running"
against "read of a healthy cluster", not repair's cost alone. Needs root
(for ``drop_caches``), ``/dev/fuse`` and ``fusermount3``.

    .venv/bin/python benchmarks/bench_repair.py --read-during-repair \\
        [--size-mib 1024] [--read-mib 512] [--repair-mb-per-s 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, cast

CLI = [sys.executable, "-m", "prismfs"]
MOUNT_HELPER = [sys.executable, "-m", "prismfs.cli.mount_helper_main"]
DEAD_NODE_TIMEOUT_S = 120.0
"""How long the leader may take to mark the killed node down (node_down_after_s is 10)."""
REPAIR_TIMEOUT_S = 1800.0


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    out = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"prismfs {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _dev_up(env: dict[str, str], cluster: Path, config: Path) -> list[dict[str, Any]]:
    up = _cli(
        env,
        "dev",
        "up",
        "--nodes",
        "4",
        "--dir",
        str(cluster),
        "--json",
        "--node-config",
        str(config),
    )
    return list(json.loads(up)["nodes"])


def _dev_down(env: dict[str, str], cluster: Path) -> None:
    subprocess.run(
        [*CLI, "dev", "down", "--dir", str(cluster)],
        env=env,
        timeout=120,
        check=False,
        capture_output=True,
    )


def _put_random(env: dict[str, str], scratch: Path, size_mib: int, dest: str) -> None:
    """Put ``size_mib`` MiB of random bytes at ``dest`` with ``prismfs put``."""
    src = scratch / "upload"
    with open(src, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    try:
        _cli(env, "put", str(src), dest)
    finally:
        src.unlink()


def _health(env: dict[str, str]) -> dict[str, Any] | None:
    """The leader's chunk health, or None while no leader answers."""
    try:
        h = json.loads(_cli(env, "cluster", "status", "--json", timeout=30))["health"]
    except (RuntimeError, subprocess.TimeoutExpired):
        return None
    return cast("dict[str, Any] | None", h)


def _state_of(health: dict[str, Any], node: str) -> str | None:
    return next((n["state"] for n in health["nodes"] if n["node"] == node), None)


def measure(size_mib: int = 1024) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-repair-"))
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    cluster = base / "cluster"
    config = base / "node.toml"
    config.write_text("[data]\nrepair_after_s = 0\nrepair_mb_per_s = 1000\n")
    try:
        nodes = _dev_up(env, cluster, config)
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        _put_random(env, base, size_mib, "/big")
        status = json.loads(_cli(env, "cluster", "status", "--json"))
        health = status["health"]
        leader = health["leader"]
        victim = next(n for n in nodes if n["id"] != leader)
        chunks = health["chunks"]
        repaired_before = health["repaired_bytes"]
        t0 = time.monotonic()
        os.kill(int(victim["pid"]), signal.SIGKILL)
        down_at = 0.0
        # Repair may start (and, at this size, finish) between two status
        # polls (a `prismfs cluster status` call takes about half a second):
        # its time is bounded by the last poll that still showed the victim
        # up and the first that shows everything redundant again, and its
        # rate is given as at least the bytes rebuilt over that window.
        last_up = 0.0
        while True:
            time.sleep(0.2)
            asked = time.monotonic() - t0
            h = _health(env)
            answered = time.monotonic() - t0
            if h is None:
                continue
            state = _state_of(h, victim["id"])
            if os.environ.get("BENCH_REPAIR_TRACE"):
                print(
                    f"{answered:6.1f} {state} degraded={h['degraded']} "
                    f"unavailable={h['unavailable']} repaired={h['repaired_bytes']}",
                    file=sys.stderr,
                )
            if state != "down":
                last_up = asked
            elif not down_at:
                down_at = answered
            rebuilt = h["repaired_bytes"] - repaired_before
            if down_at and rebuilt > 0 and h["degraded"] == 0 and h["unavailable"] == 0:
                done = answered
                break
            if answered > REPAIR_TIMEOUT_S:
                raise RuntimeError("not fully redundant after 30 minutes")
        window = done - last_up
        return {
            "chunks": chunks,
            "down_after_s": round(down_at, 1),
            "redundant_after_s": round(done, 1),
            "rebuilt_mb": round(rebuilt / 1e6, 1),
            "repair_window_s": round(window, 1),
            "repair_mb_per_s_at_least": round(rebuilt / 1e6 / window, 1),
        }
    finally:
        _dev_down(env, cluster)
        shutil.rmtree(base, ignore_errors=True)


# -- read throughput while repair runs (issue 8) -------------------------------------------


def _is_mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


class _Mount:
    """A FUSE mount of a dev cluster, made and torn down as tests/fuse_mount.py does.

    Every step has a timeout: the helper returns once the mount answers (or
    fails), ``fusermount3 -u`` is retried lazily (``-z``) if the mount is
    busy, and the daemon (whose pid the helper writes to ``pidfile``) is
    killed if it has not exited 10 s after the unmount.
    """

    def __init__(self, client_toml: Path, point: Path, env: dict[str, str]) -> None:
        self.client_toml = client_toml
        self.point = point
        self.env = env
        self.pidfile = point.with_name(point.name + ".pid")
        self.log = point.with_name(point.name + ".log")

    def mount(self) -> None:
        self.point.mkdir(exist_ok=True)
        out = subprocess.run(
            [
                *MOUNT_HELPER,
                str(self.client_toml),
                str(self.point),
                "-o",
                f"log={self.log},pidfile={self.pidfile}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            check=False,
        )
        if out.returncode != 0 or not _is_mounted(self.point):
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"mount failed ({out.returncode}): {out.stderr.strip()} {log}")

    def unmount(self) -> None:
        if _is_mounted(self.point):
            subprocess.run(
                ["fusermount3", "-u", str(self.point)], timeout=30, check=False, capture_output=True
            )
            deadline = time.monotonic() + 10
            while _is_mounted(self.point) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_mounted(self.point):
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(self.point)],
                    timeout=30,
                    check=False,
                    capture_output=True,
                )
        self._stop_daemon()

    def _stop_daemon(self) -> None:
        from prismfs.procs import process_alive  # here: `measure` alone needs no prismfs import

        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        # The daemon is a fork of the helper: its command line names the mountpoint.
        deadline = time.monotonic() + 10
        while process_alive(pid, str(self.point)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid, str(self.point)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _drop_caches() -> None:
    """Empty the page cache: the mount's pages and the nodes' shard files both."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _timed_read(path: Path, size: int) -> float:
    """Read ``path`` sequentially in 1 MiB blocks from a cold cache; MB/s.

    ``dd`` in a child process so that a hung mount ends in a timeout (FUSE
    waits are killable) instead of hanging this script.
    """
    _drop_caches()
    timeout = 60 + size / 1e6  # no slower than 1 MB/s
    t0 = time.monotonic()
    out = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"dd {path}: {out.stderr.strip()}")
    # dd's summary line: "N bytes (...) copied, S s, R MB/s"
    copied = next(
        (int(line.split()[0]) for line in out.stderr.splitlines() if " bytes " in line), -1
    )
    if copied != size:
        raise RuntimeError(f"dd {path}: read {copied} bytes, expected {size}")
    return size / 1e6 / elapsed


def _wait_down(env: dict[str, str], victim: str, t0: float) -> dict[str, Any]:
    while time.monotonic() - t0 < DEAD_NODE_TIMEOUT_S:
        time.sleep(0.2)
        h = _health(env)
        if h is not None and _state_of(h, victim) == "down":
            return h
    raise RuntimeError(f"{victim} not marked down {DEAD_NODE_TIMEOUT_S:g} s after the kill")


def _wait_repairing(env: dict[str, str], t0: float) -> dict[str, Any]:
    """Wait until repair has rebuilt something (its loop starts a pass once a
    second, so "down" alone does not mean repair is running yet)."""
    while time.monotonic() - t0 < REPAIR_TIMEOUT_S:
        h = _health(env)
        if h is not None and h["repaired_bytes"] > 0:
            if h["degraded"] == 0:
                raise RuntimeError("repair finished before the read could start: use more data")
            return h
        time.sleep(0.1)
    raise RuntimeError(f"repair had not started {REPAIR_TIMEOUT_S:g} s after the kill")


def _wait_redundant(env: dict[str, str], t0: float) -> dict[str, Any]:
    while time.monotonic() - t0 < REPAIR_TIMEOUT_S:
        h = _health(env)
        if h is not None and h["degraded"] == 0 and h["unavailable"] == 0:
            return h
        time.sleep(0.2)
    raise RuntimeError(f"not fully redundant {REPAIR_TIMEOUT_S:g} s after the kill")


def measure_read_during_repair(
    size_mib: int = 1024,
    read_mib: int = 512,
    repair_mb_per_s: float | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Sequential read MB/s through a FUSE mount while repair runs, against a healthy read.

    ``repair_mb_per_s`` None leaves the node default in force. See the module
    docstring for the procedure and what the ratio includes.
    """
    from prismfs.node.config import DataSection

    if os.geteuid() != 0:
        raise RuntimeError("needs root: the page cache is dropped before each read")
    pacing = DataSection().repair_mb_per_s if repair_mb_per_s is None else repair_mb_per_s
    base = Path(tempfile.mkdtemp(prefix="prismfs-bench-repair-read-"))
    env = {**os.environ, "PRISMFS_STATE_DIR": str(base / "state"), "PRISMFS_CONFIG": ""}
    cluster = base / "cluster"
    config = base / "node.toml"
    config.write_text(
        "[data]\nrepair_after_s = 0\n"
        + ("" if repair_mb_per_s is None else f"repair_mb_per_s = {repair_mb_per_s}\n")
    )
    mount = _Mount(cluster / "client.toml", base / "mnt", env)
    try:
        say(f"4-node cluster, repair_mb_per_s = {pacing:g}")
        nodes = _dev_up(env, cluster, config)
        env["PRISMFS_CONFIG"] = str(cluster / "client.toml")
        say(f"put {size_mib} MiB repair target and {read_mib} MiB read target")
        _put_random(env, base, size_mib, "/big")
        _put_random(env, base, read_mib, "/read")
        mount.mount()
        target = mount.point / "read"
        size = read_mib << 20
        baseline_runs = [_timed_read(target, size) for _ in range(2)]
        say(f"baseline reads: {', '.join(f'{r:.1f}' for r in baseline_runs)} MB/s")

        health = _health(env)
        if health is None:
            raise RuntimeError("no leader answers cluster status")
        # A non-leader (the figure is repair, not an election); of those, the one
        # holding the most bytes (with 4 nodes and 3 shards a chunk, any node
        # holds shards of about 3/4 of the chunks of each file).
        pid_of = {n["id"]: int(n["pid"]) for n in nodes}
        victim = max(
            (n for n in health["nodes"] if n["node"] != health["leader"] and n["node"] in pid_of),
            key=lambda n: n["used"],
        )["node"]
        t0 = time.monotonic()
        os.kill(pid_of[victim], signal.SIGKILL)
        say(f"killed {victim}; waiting until it is marked down")
        if _wait_down(env, victim, t0)["degraded"] == 0:
            raise RuntimeError("no chunk is degraded after the kill: the victim held no shards")
        down_at = time.monotonic() - t0
        start = _wait_repairing(env, t0)
        repairing_at = time.monotonic() - t0
        say(f"{victim} down after {down_at:.1f} s, repair running after {repairing_at:.1f} s")
        start_sampled = time.monotonic()
        during = _timed_read(target, size)
        end = _health(env)
        end_sampled = time.monotonic()
        if end is None:
            raise RuntimeError("no leader answers cluster status after the read")
        say("waiting for full redundancy")
        done = _wait_redundant(env, t0)
        redundant_at = time.monotonic() - t0
        baseline = max(baseline_runs)
        # Repair's rate between the two samples (each taken by a `prismfs cluster
        # status` call, so the window is the read plus about one call).
        repaired_in_read = end["repaired_bytes"] - start["repaired_bytes"]
        sample_window_s = end_sampled - start_sampled
        overlap = "whole read" if end["degraded"] > 0 else "repair finished before the read did"
        return {
            "repair_mb_per_s_setting": pacing,
            "repair_target_mib": size_mib,
            "read_target_mib": read_mib,
            "chunks": done["chunks"],
            "victim": victim,
            "baseline_read_mb_per_s": round(baseline, 1),
            "baseline_runs_mb_per_s": [round(r, 1) for r in baseline_runs],
            "read_during_repair_mb_per_s": round(during, 1),
            "ratio": round(during / baseline, 3),
            "degraded_at_read_start": start["degraded"],
            "degraded_at_read_end": end["degraded"],
            "overlap": overlap,
            "read_s": round(size / 1e6 / during, 2),
            "rebuilt_mb_during_read": round(repaired_in_read / 1e6, 1),
            "repair_mb_per_s_during_read": round(repaired_in_read / 1e6 / sample_window_s, 1),
            "down_after_s": round(down_at, 1),
            "read_started_after_s": round(repairing_at, 1),
            "redundant_after_s": round(redundant_at, 1),
            "rebuilt_mb": round(done["repaired_bytes"] / 1e6, 1),
            "repair_mb_per_s": round(
                done["repaired_bytes"] / 1e6 / max(redundant_at - down_at, 1e-3), 1
            ),
        }
    finally:
        mount.unmount()
        _dev_down(env, cluster)
        shutil.rmtree(base, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not cut the teardown (unmount, dev down) short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the file repair rebuilds")
    parser.add_argument(
        "--read-during-repair",
        action="store_true",
        help="measure FUSE read MB/s while repair runs, against a healthy read (issue 8)",
    )
    parser.add_argument(
        "--read-mib", type=int, default=512, help="the file read (with --read-during-repair)"
    )
    parser.add_argument(
        "--repair-mb-per-s",
        type=float,
        default=None,
        help="the nodes' repair pacing with --read-during-repair (default: the node default)",
    )
    args = parser.parse_args(argv)
    # SIGTERM and SIGHUP tear down what was started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    if args.read_during_repair:
        try:
            summary = measure_read_during_repair(
                args.size_mib,
                args.read_mib,
                args.repair_mb_per_s,
                say=lambda m: print(f"bench_repair: {m}", file=sys.stderr, flush=True),
            )
        except KeyboardInterrupt as exc:
            print(f"bench_repair: interrupted ({exc or 'Ctrl-C'}); torn down", file=sys.stderr)
            return 130
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"bench_repair: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(summary, indent=2))
        if summary["degraded_at_read_end"] == 0:
            print(
                "bench_repair: repair finished before the read did: "
                "the read overlapped repair only in part",
                file=sys.stderr,
            )
        return 0
    result = measure(args.size_mib)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
