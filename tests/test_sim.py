"""Deterministic simulation in CI: hundreds of seeds with every fault, online
invariants, linearizable histories, convergence; reproducibility; and proof
that the harness catches planted bugs."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prismfs.meta.namespace import Namespace
from prismfs.raft import core, state_machine
from prismfs.raft.core import RaftNode
from prismfs.raft.lease import LeaderLease
from prismfs.sim.__main__ import main as sim_main
from prismfs.sim.simulator import Faults, Simulation, Violation, run_seed

SEEDS_PER_SIZE = 200


@pytest.mark.timeout(600)
@pytest.mark.parametrize("nodes", [1, 3, 5])
def test_many_seeds_keep_every_invariant(nodes: int) -> None:
    seen: collections.Counter[str] = collections.Counter()
    for seed in range(SEEDS_PER_SIZE):
        sim = Simulation(1000 * nodes + seed, nodes)
        faults = sim.faults
        result = sim.run()
        assert result.linearizable and result.completed == result.operations
        seen["crash"] += bool(faults.crash_every)
        seen["torn"] += bool(faults.torn_crash)
        seen["drop"] += bool(faults.drop)
        seen["duplicate"] += bool(faults.duplicate)
        seen["partition"] += bool(faults.partition_every)
        seen["no_check_quorum"] += not sim.check_quorum
        seen["no_pre_vote"] += not sim.pre_vote
        seen["deduplicated"] += sum(n.sm.duplicates for n in sim.nodes.values()) > 0
        seen["membership"] += sim.conf_changes > 0
        seen["transfer"] += sim.delivered["TimeoutNow"] > 0
        seen["snapshot"] += sim.delivered["InstallSnapshot"] > 0
        seen["snapshot_chunks"] += sim.delivered["InstallSnapshot chunk > 0"] > 0
        seen["namespace"] += sim.workload.name == "namespace"
        seen["lease_reads"] += sim.lease_reads > 0
        seen["pause"] += sim.pauses > 0
        seen["clock_skew"] += len(set(sim.rates.values())) > 1
        seen["read_back"] += sum(n.disk.reads for n in sim.nodes.values()) > 0
    # Every kind of fault was exercised by a good share of the seeds.
    kinds = ["crash", "torn", "drop", "duplicate", "partition", "membership", "namespace"]
    kinds += ["lease_reads", "pause", "clock_skew"]
    if nodes > 1:
        kinds += ["no_check_quorum", "transfer", "snapshot", "snapshot_chunks", "read_back"]
    for kind in kinds:
        assert seen[kind] >= SEEDS_PER_SIZE // 20, (kind, seen)


@pytest.mark.parametrize(("seed", "nodes"), [(3, 3), (11, 5), (42, 1)])
def test_same_seed_same_trace(seed: int, nodes: int) -> None:
    first = run_seed(seed, nodes)
    second = run_seed(seed, nodes)
    assert first.trace_hash == second.trace_hash
    assert first.digest == second.digest
    assert run_seed(seed + 1, nodes).trace_hash != first.trace_hash


def test_trace_does_not_depend_on_hash_seed() -> None:
    """Set and dict iteration must not leak into the schedule: the same seed
    under different PYTHONHASHSEEDs gives the same trace."""
    traces = set()
    for hash_seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-m", "prismfs.sim", "--seed", "23", "--nodes", "5"],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        traces.add(out.split("trace ")[1].split()[0])
    assert len(traces) == 1, traces


def _regressions() -> list[tuple[int, int]]:
    lines = (Path(__file__).parent / "sim_regressions.txt").read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split("#")[0].split()
        if fields:
            out.append((int(fields[0]), int(fields[1])))
    return out


@pytest.mark.parametrize(("seed", "nodes"), _regressions())
def test_seeds_that_once_failed(seed: int, nodes: int) -> None:
    assert run_seed(seed, nodes).linearizable


def test_harness_catches_lost_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug (retried commands applied twice): the checker must see it."""

    def apply_twice(self: state_machine.ExactlyOnce, index: int, command: bytes) -> bytes:
        cmd = state_machine.decode_message(command)
        assert isinstance(cmd, state_machine.ClientCommand)
        return self.inner.apply(index, cmd.op)

    monkeypatch.setattr(state_machine.ExactlyOnce, "apply", apply_twice)
    caught = 0
    for seed in range(30):
        try:
            run_seed(seed, 3)
        except Violation:
            caught += 1
    assert caught > 0


def test_harness_catches_learners_counted_for_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a membership bug (a learner's copy counts towards commitment):
    the simulator must find a committed entry that a later leader lacks."""
    real = core.committed_index
    monkeypatch.setattr(core, "committed_index", lambda voters, match: real(tuple(match), match))
    with pytest.raises(Violation, match="leader completeness"):
        for seed in range(300):
            Simulation(seed, (1, 3, 5)[seed % 3], membership=True, workload="kv").run()


def test_namespace_retries_apply_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespace workload only: passes as is; with the namespace's own
    deduplication planted out (a retried create applies again and answers
    EEXIST), the checker must reject some history."""
    for seed in range(20):
        result = Simulation(seed, (1, 3, 5)[seed % 3], workload="namespace").run()
        assert result.linearizable and result.completed == result.operations

    real_apply = Namespace.apply

    def no_dedup(self: Namespace, index: int, command: bytes) -> bytes:
        cmd = state_machine.decode_message(command)
        if isinstance(cmd, state_machine.ClientCommand):
            command = cmd.op
        return real_apply(self, index, command)

    monkeypatch.setattr(Namespace, "apply", no_dedup)
    with pytest.raises(Violation, match="not linearizable"):
        for seed in range(300):
            Simulation(seed, (1, 3, 5)[seed % 3], workload="namespace").run()


def test_harness_catches_reads_without_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug (ReadIndex without confirming leadership): stale reads appear."""

    def unsafe_read(self: RaftNode, context: int, requester: str) -> None:
        self._release_read(context, self.commit, requester)

    monkeypatch.setattr(RaftNode, "_leader_read", unsafe_read)
    with pytest.raises(Violation, match="not linearizable"):
        for seed in range(300):
            run_seed(seed, (1, 3, 5)[seed % 3])


@pytest.mark.timeout(600)
def test_harness_catches_a_lease_that_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug (the leader trusts its lease forever): stale reads appear
    under pauses and partitions."""
    monkeypatch.setattr(LeaderLease, "valid", lambda self, term, seq, now: True)
    faults = Faults(pause_every=300, max_delay=40, partition_every=300)
    with pytest.raises(Violation, match="not linearizable"):
        for seed in range(200):
            Simulation(seed, 3, faults=faults, clients=6, think_ms=20, workload="kv").run()


@pytest.mark.timeout(600)
def test_lease_reads_stay_linearizable_under_pauses_and_partitions() -> None:
    """The same heavy faults with the real lease: every seed linearizable, and
    most reads served from the lease."""
    faults = Faults(pause_every=300, max_delay=40, partition_every=300)
    lease_reads = 0
    for seed in range(60):
        sim = Simulation(seed, 3, faults=faults, clients=6, think_ms=20, workload="kv")
        assert sim.run().linearizable
        lease_reads += sim.lease_reads
    assert lease_reads > 500


def test_cli_prints_the_replay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_main(["--seeds", "3"]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out

    def broken(self: Simulation, **kwargs: object) -> None:
        raise Violation("planted")

    monkeypatch.setattr(Simulation, "run", broken)
    assert sim_main(["--seeds", "2", "--start", "7"]) == 1
    err = capsys.readouterr().err
    assert "seed 7 (3 nodes) FAILED: planted" in err
    assert "replay: python -m prismfs.sim --seed 7 --nodes 3" in err
