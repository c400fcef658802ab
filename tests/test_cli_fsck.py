"""`prismfs fsck` in steps on a real 3-node cluster: findings streamed one
JSON line each, a cursor per step, Ctrl-C stops it with a cursor that
--resume goes on from, and the totals of the two runs add up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import PRISMFS
from test_admin import cli, cluster, one_per_chunk, put, shard_files  # noqa: F401
from test_cli_cluster import on_a_terminal
from test_raft_cluster import Cluster

pytestmark = pytest.mark.timeout(300)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_fsck_streams_findings_and_resumes(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    put(cluster, tmp_path, "f", 9 << 20)  # 3 chunks of 2-of-3: 9 shards
    # On a terminal: a progress bar against the cluster's 3 chunks (rich, on stderr).
    shown = on_a_terminal(cluster, "fsck", "--page", "1")
    assert "fsck chunks" in shown and "3/3" in shown, shown

    missing = one_per_chunk(shard_files(cluster))[0]
    missing.unlink()

    code, out, err = cli(cluster, "fsck", "--json", "--page", "1")
    assert code == 1, out + err
    got = lines(out)
    findings = [g for g in got if g["kind"] not in ("progress", "summary")]
    assert findings == [{"kind": "missing", "shard": missing.name}]
    steps = [g for g in got if g["kind"] == "progress"]
    cursors = [s["cursor"] for s in steps]
    # A step per chunk, one finding no more; a step per node's orphans, one finding none.
    assert [c.split(":")[0] for c in cursors[:3]] == ["chunks"] * 3
    assert cursors[3] == "orphans:" and cursors[-1] == "" and len(cursors) == 4 + 4
    assert [c.split(":")[0] for c in cursors[4:7]] == ["orphans"] * 3
    assert [s["chunks"] for s in steps[:3]] == [1, 2, 3]
    summary = got[-1]
    assert summary["kind"] == "summary" and not summary["clean"] and "t" not in summary
    assert (summary["chunks"], summary["shards_checked"]) == (3, 9)  # the missing one too
    assert summary["missing"] == [missing.name]

    # --resume from the first step's cursor checks only the two chunks after it.
    code, out, err = cli(cluster, "fsck", "--json", "--page", "1", "--resume", cursors[0])
    resumed = lines(out)[-1]
    assert resumed["chunks"] == 2 and resumed["shards_checked"] == 6, out + err

    # Interrupted (SIGINT, as Ctrl-C) after its first step, paced to 1 MB/s so
    # that each step of 6 MB takes seconds: one line with the cursor, exit 130.
    config = ["--config", str(cluster.dir / "client.toml")]
    proc = subprocess.Popen(
        [*PRISMFS, "fsck", "--json", "--page", "1", "--mb-per-s", "1", *config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **cluster.env},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        while first["kind"] != "progress":  # a finding of the first step
            first = json.loads(proc.stdout.readline())
        assert first["chunks"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("prismfs: fsck interrupted after 1 chunks; go on with: ")
    cursor = line.rsplit("--resume ", 1)[1]
    assert cursor == first["cursor"]
    code, out, err = cli(cluster, "fsck", "--json", "--resume", cursor)
    assert lines(out)[-1]["chunks"] == 2, out + err

    # Text: each finding as a line as it is found, then the totals.
    code, out, err = cli(cluster, "fsck", "--page", "2")
    assert code == 1 and f"missing shard: {missing.name}" in out, out + err
    assert "3 chunks, 9 shards checked" in out and out.strip().endswith("problems found")
