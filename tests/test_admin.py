"""The admin CLI against a real 3-node cluster: cluster status, node list,
fsck (read-only and --repair) and scrub, with shards deleted, corrupted and
planted on disk; and its errors (nothing reachable, wrong secret)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from test_raft_cluster import Cluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.up()
    yield c
    c.cleanup()


def cli(c: Cluster, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    result = run_cli(*args, "--config", str(c.dir / "client.toml"), env=c.env, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def shard_files(c: Cluster) -> list[Path]:
    return sorted(p for p in c.dir.glob("node*/shards/*/*/*") if not p.name.startswith("."))


def one_per_chunk(files: list[Path]) -> list[Path]:
    """One shard file of each chunk (damaging one shard per chunk keeps it readable)."""
    seen: dict[str, Path] = {}
    for path in files:
        seen.setdefault(path.name.split(".")[0], path)
    return list(seen.values())


def put(c: Cluster, tmp_path: Path, name: str, size: int) -> bytes:
    body = os.urandom(size)
    src = tmp_path / f"{name}.src"
    src.write_bytes(body)
    code, _, err = cli(c, "put", str(src), f"/{name}")
    assert code == 0, err
    return body


def get(c: Cluster, tmp_path: Path, name: str) -> bytes:
    dst = tmp_path / f"{name}.out"
    code, _, err = cli(c, "get", f"/{name}", str(dst))
    assert code == 0, err
    return dst.read_bytes()


def test_status_node_list_and_fsck_of_a_healthy_cluster(cluster: Cluster, tmp_path: Path) -> None:
    put(cluster, tmp_path, "f", 9 << 20)  # 3 chunks of 4 MiB, 2-of-3
    code, out, err = cli(cluster, "cluster", "status", "--json")
    assert code == 0, err
    health = json.loads(out)["health"]
    assert sorted(n["state"] for n in health["nodes"]) == ["up", "up", "up"]
    assert (health["chunks"], health["healthy"], health["degraded"]) == (3, 3, 0)
    assert len(health["voters"]) == 3
    code, out, _ = cli(cluster, "cluster", "status")
    assert "3 healthy, 0 degraded, 0 unavailable" in out and "scrub: never run" in out
    code, out, err = cli(cluster, "node", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == 3 and all(n["used"] > 0 for n in listed)
    code, out, err = cli(cluster, "fsck")
    assert code == 0, out + err
    assert "3 chunks, 9 shards checked" in out and out.strip().endswith("clean")


def test_fsck_reports_then_repairs_missing_corrupt_and_orphan_shards(
    cluster: Cluster, tmp_path: Path
) -> None:
    body = put(cluster, tmp_path, "f", 9 << 20)
    files = shard_files(cluster)
    assert len(files) == 9
    missing, corrupt = one_per_chunk(files)[:2]
    missing.unlink()
    raw = bytearray(corrupt.read_bytes())
    raw[1000] ^= 0x55
    corrupt.write_bytes(bytes(raw))
    store = files[7].parents[2]  # <node>/shards: shard files live in <id[0:2]>/<id[2:4]>/
    orphan = store / "00" / "00" / ("00" * 16 + ".0")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(files[7], orphan)
    old = time.time() - 7 * 3600  # older than the 6 h grace
    os.utime(orphan, (old, old))

    code, out, err = cli(cluster, "fsck", "--json")
    assert code == 1, out + err
    report = json.loads(out.splitlines()[-1])  # the summary, after a line per finding
    assert report["kind"] == "summary"
    assert report["missing"] == [missing.name] and report["corrupt"] == [corrupt.name]
    assert [o.split(":")[1] for o in report["orphans"]] == [orphan.name]
    assert not report["clean"] and report["repaired"] == 0
    assert not missing.exists() and orphan.exists()  # read-only by default

    code, out, err = cli(cluster, "fsck", "--repair")
    assert code == 1, out + err  # it found problems (and fixed them)
    assert "2 shards rebuilt, 1 orphans deleted" in out
    assert missing.exists() and not orphan.exists()
    code, out, err = cli(cluster, "fsck")
    assert code == 0, out + err
    assert get(cluster, tmp_path, "f") == body


def test_fsck_repair_never_deletes_the_shards_of_an_upload_in_progress(tmp_path: Path) -> None:
    """Shards stored a few minutes ago and not committed yet (an upload commits its
    chunks in batches) are not orphans: fsck --repair keeps them by default, even
    with the leader's clock hours ahead (ages are the holding node's), and a short
    grace needs --force."""
    c = Cluster(tmp_path)
    c.env["PRISMFS_CLOCK_OFFSET_FILE"] = "clock_offset"  # in each node's data directory
    nodes = c.up()
    try:
        put(c, tmp_path, "f", 5 << 20)
        files = shard_files(c)
        code, out, _ = cli(c, "cluster", "status", "--json")
        leader = json.loads(out)["health"]["leader"]
        for node in nodes:
            if node["id"] == leader:
                (Path(str(node["data_dir"])) / "clock_offset").write_text("25200")  # +7 h
        uploading = []
        for n, shard in enumerate(files[:3]):
            name = f"{n:02x}" * 16 + ".0"
            planted = shard.parents[2] / name[0:2] / name[2:4] / name
            planted.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shard, planted)
            two_minutes_ago = time.time() - 120
            os.utime(planted, (two_minutes_ago, two_minutes_ago))
            uploading.append(planted)
        time.sleep(1)  # the leader reads its clock offset
        code, out, err = cli(c, "fsck", "--repair")
        assert code == 0, out + err
        assert "0 orphans deleted" in out
        assert all(p.exists() for p in uploading)
        code, out, err = cli(c, "fsck", "--repair", "--orphan-grace", "60")
        assert code == 2 and "uploads still in progress" in err, out + err
        assert all(p.exists() for p in uploading)
        code, out, err = cli(c, "fsck", "--repair", "--orphan-grace", "60", "--force")
        assert "3 orphans deleted" in out, out + err
        assert not any(p.exists() for p in uploading)
    finally:
        c.cleanup()


def test_scrub_finds_and_repairs_bit_rot(cluster: Cluster, tmp_path: Path) -> None:
    body = put(cluster, tmp_path, "f", 13 << 20)  # 4 chunks: 12 shards
    flipped = one_per_chunk(shard_files(cluster))
    assert len(flipped) == 4
    for path in flipped:
        raw = bytearray(path.read_bytes())
        for at in (0, len(raw) // 2, len(raw) - 1):
            raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
    # Reads never return flipped bytes: the shards fail their checksums.
    assert get(cluster, tmp_path, "f") == body
    code, out, err = cli(cluster, "scrub", "start")
    assert code == 0, err
    deadline = time.monotonic() + 120
    while True:
        code, out, err = cli(cluster, "scrub", "status", "--json")
        assert code == 0, err
        status = json.loads(out)
        if not status["running"] and status["passes"] >= 1:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["corrupt"] == len(flipped) and status["repaired"] == len(flipped)
    assert status["shards_checked"] == 12
    code, out, err = cli(cluster, "fsck")
    assert code == 0, out + err
    code, out, _ = cli(cluster, "cluster", "status")
    assert f"{len(flipped)} corrupt" in out and "idle" in out


def test_admin_errors_are_one_line(cluster: Cluster, tmp_path: Path) -> None:
    secret = cluster.dir / "node1" / "cluster.secret"
    unreachable = ["--cluster", "127.0.0.1:1", "--secret-file", str(secret)]
    result = run_cli("fsck", *unreachable, env=cluster.env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("prismfs: no leader is known")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("node", "list", *unreachable, env=cluster.env, timeout=60)
    assert result.returncode == 1 and "no leader is known" in result.stderr
    assert "Traceback" not in result.stderr
    wrong = tmp_path / "wrong.secret"
    code = run_cli("cluster", "init", "--data-dir", str(tmp_path / "other"), env=cluster.env)
    assert code.returncode == 0
    shutil.copy(tmp_path / "other" / "cluster.secret", wrong)
    wrong.chmod(0o600)
    address = str(cluster.nodes()[0]["rpc_address"])
    result = run_cli(
        "scrub", "status", "--cluster", address, "--secret-file", str(wrong), env=cluster.env
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
