"""Raft in real node processes on loopback: leader killed with SIGKILL, whole
cluster restarted, a fourth node added as learner and promoted, a voter
removed, all while a client keeps writing; no acknowledged write is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from conftest import run_cli
from prismfs.errors import PrismError
from prismfs.meta.commands import (
    ROOT_INO,
    Lookup,
    MetaFailed,
    MetaOk,
    MetaValue,
    ReadLink,
    Symlink,
)
from prismfs.node.consensus_messages import (
    ChangeMembership,
    Propose,
    Proposed,
    Query,
    QueryResult,
    RaftStatus,
    RaftStatusReply,
)
from prismfs.procs import process_alive
from prismfs.wire.auth import read_secret_file
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.codec import Message, decode_message, encode_message

pytestmark = pytest.mark.timeout(240)


def spawn_node(*args: str) -> subprocess.Popen[bytes]:
    """Start a node process (Popen returns at once; it does not block the event loop)."""
    return subprocess.Popen(
        [sys.executable, "-m", "prismfs", "node", "start", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.env = {"PRISMFS_STATE_DIR": str(tmp_path / "state"), "PRISMFS_CONFIG": ""}
        self.dir = tmp_path / "state" / "c"
        self.extra: list[subprocess.Popen[bytes]] = []

    def up(self) -> list[dict[str, object]]:
        result = run_cli("dev", "up", "--dir", str(self.dir), "--json", env=self.env, timeout=90)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["nodes"])

    def down(self) -> None:
        run_cli("dev", "down", "--dir", str(self.dir), env=self.env, timeout=60)

    def nodes(self) -> list[dict[str, object]]:
        return list(json.loads((self.dir / "dev.json").read_text())["nodes"])

    @property
    def creds(self):  # type: ignore[no-untyped-def]
        return read_secret_file(self.dir / "node1" / "cluster.secret")

    def cleanup(self) -> None:
        self.down()
        for proc in self.extra:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for node in self.nodes():
            assert not process_alive(int(node["pid"]), str(node["data_dir"]))  # type: ignore[call-overload]


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    c.cleanup()


async def status(pool: RpcPool, address: str) -> RaftStatusReply:
    reply = (await pool.call(address, RaftStatus(), timeout=3)).message
    assert isinstance(reply, RaftStatusReply)
    return reply


async def find_leader(pool: RpcPool, addresses: list[str], deadline: float = 20) -> RaftStatusReply:
    with trio.fail_after(deadline):
        while True:
            for address in addresses:
                try:
                    st = await status(pool, address)
                except PrismError:
                    continue
                if st.role == "leader":
                    return st
            await trio.sleep(0.1)


def put_op(key: str, value: str) -> bytes:
    """A namespace command that stores a value: symlink ``key`` -> ``value`` in the root."""
    return encode_message(Symlink(time.time_ns(), ROOT_INO, key.encode(), value.encode(), 0, 0))


class Writer:
    """Writes k<i> = v<i> through any node, retrying with the same seq until acknowledged.

    A retry of a command that did apply must return its first result (not
    EEXIST): exactly-once through the namespace's client table."""

    def __init__(self, pool: RpcPool, addresses: list[str]) -> None:
        self.pool = pool
        self.addresses = addresses
        self.acked: list[int] = []
        self.seq = 0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            self.seq += 1
            op = put_op(f"k{self.seq}", f"v{self.seq}")
            attempt = 0
            while not self.stop:
                address = self.addresses[attempt % len(self.addresses)]
                attempt += 1
                try:
                    reply = await self.pool.call(
                        address, Propose("writer", self.seq, op), timeout=3
                    )
                except PrismError:
                    await trio.sleep(0.05)
                    continue
                assert isinstance(reply.message, Proposed)
                result = decode_message(reply.message.result)
                assert isinstance(result, MetaOk), result
                self.acked.append(self.seq)
                break
            await trio.sleep(0.01)

    async def wait_progress(self, writes: int, deadline: float = 20) -> None:
        target = len(self.acked) + writes
        with trio.fail_after(deadline):
            while len(self.acked) < target:
                await trio.sleep(0.05)


async def _query(pool: RpcPool, address: str, q: Message) -> Message:
    reply = (await pool.call(address, Query(encode_message(q)), timeout=5)).message
    assert isinstance(reply, QueryResult)
    return decode_message(reply.result)


async def read(pool: RpcPool, address: str, key: str) -> str | None:
    found = await _query(pool, address, Lookup(ROOT_INO, key.encode()))
    if isinstance(found, MetaFailed):
        assert found.code == "not_found"
        return None
    assert isinstance(found, MetaOk) and found.attr is not None
    target = await _query(pool, address, ReadLink(found.attr.ino))
    assert isinstance(target, MetaValue)
    return target.value.decode()


async def test_failover_restart_and_membership_without_losing_writes(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        writer = Writer(pool, addresses)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.wait_progress(20)

            # 1. kill -9 the leader: a new one is elected and commits writes.
            leader = await find_leader(pool, addresses)
            victim = next(n for n in nodes if n["id"] == leader.node_id)
            os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
            survivors = [a for a in addresses if a != victim["rpc_address"]]
            new_leader = await find_leader(pool, survivors)
            assert new_leader.node_id != leader.node_id and new_leader.term > leader.term
            await writer.wait_progress(20)

            # 2. the killed node comes back and catches up.
            await trio.to_thread.run_sync(cluster.up)
            await writer.wait_progress(10)

            # 3. a fourth node joins as a learner, is promoted, and a voter is removed.
            fourth_dir = cluster.dir / "node4"
            proc = spawn_node(
                "--data-dir",
                str(fourth_dir),
                "--listen",
                "127.0.0.1:0",
                "--secret-file",
                str(cluster.dir / "node1" / "cluster.secret"),
                "--join",
                addresses[0],
                "--replica",
                "--log-file",
                str(fourth_dir / "node.log"),
            )
            cluster.extra.append(proc)
            with trio.fail_after(30):
                while not (fourth_dir / "node.json").exists():
                    await trio.sleep(0.05)
            fourth = json.loads((fourth_dir / "node.json").read_text())
            with trio.fail_after(30):
                while True:
                    st = await status(pool, addresses[0])
                    if fourth["node_id"] in st.learners:
                        break
                    await trio.sleep(0.1)
            writer.addresses = [*addresses, fourth["rpc_address"]]
            change = ChangeMembership("add_voter", fourth["node_id"], fourth["rpc_address"])
            await _retry(pool, addresses, change)
            await writer.wait_progress(10)
            leader = await find_leader(pool, writer.addresses)
            removed = next(n for n in nodes if n["id"] != leader.node_id)
            await _retry(pool, addresses, ChangeMembership("remove", str(removed["id"])))
            final = await status(pool, fourth["rpc_address"])
            assert fourth["node_id"] in final.voters and removed["id"] not in final.voters
            assert len(final.voters) == 3
            await writer.wait_progress(10)
            writer.stop = True

        # 4. every acknowledged write is there, read linearizably through a voter.
        voter_address = fourth["rpc_address"]
        for seq in writer.acked:
            assert await read(pool, voter_address, f"k{seq}") == f"v{seq}"

    # 5. restart the whole cluster: the state survives.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    await trio.to_thread.run_sync(cluster.down)
    await trio.to_thread.run_sync(cluster.up)
    proc2 = spawn_node(
        "--data-dir",
        str(fourth_dir),
        "--listen",
        fourth["rpc_address"],
        "--log-file",
        str(fourth_dir / "node.log"),
    )
    cluster.extra.append(proc2)
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        await find_leader(pool, [*addresses, fourth["rpc_address"]], deadline=30)
        last = writer.acked[-1]
        for seq in (writer.acked[0], writer.acked[len(writer.acked) // 2], last):
            with trio.fail_after(20):
                while True:
                    try:
                        value = await read(pool, fourth["rpc_address"], f"k{seq}")
                        break
                    except PrismError:
                        await trio.sleep(0.1)
            assert value == f"v{seq}"
    proc2.send_signal(signal.SIGTERM)
    assert proc2.wait(timeout=10) == 0


async def _retry(pool: RpcPool, addresses: list[str], change: ChangeMembership) -> None:
    """Apply a membership change; an attempt that timed out may still have committed."""

    def reached(st: RaftStatusReply) -> bool:
        if change.op == "remove":
            return change.node not in st.voters + st.learners
        return change.node in (st.voters if change.op == "add_voter" else st.learners)

    with trio.fail_after(30):
        while True:
            for address in addresses:
                try:
                    await pool.call(address, change, timeout=5)
                    return
                except PrismError:
                    try:
                        if reached(await status(pool, address)):
                            return
                    except PrismError:
                        pass
            await trio.sleep(0.1)


async def test_lagging_follower_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    """Real processes, small snapshot interval: a follower that was down while
    the leader compacted its log is brought back by InstallSnapshot."""
    config = tmp_path / "node.toml"
    config.write_text("[raft]\nsnapshot_every = 20\n")
    first = tmp_path / "n1"
    assert run_cli("cluster", "init", "--data-dir", str(first)).returncode == 0
    secret = str(first / "cluster.secret")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    addresses: dict[str, str] = {}

    async def start(name: str, join: str | None) -> None:
        data = tmp_path / name
        args = ["--data-dir", str(data), "--listen", addresses.get(name, "127.0.0.1:0")]
        args += ["--config", str(config), "--log-file", str(data / "node.log")]
        if name != "n1":
            args += ["--secret-file", secret]
        if join:
            args += ["--join", join, "--replica"]
        (data / "node.json").unlink(missing_ok=True)
        procs[name] = spawn_node(*args)
        with trio.fail_after(30):
            while not (data / "node.json").exists():
                await trio.sleep(0.05)
        addresses[name] = json.loads((data / "node.json").read_text())["rpc_address"]

    try:
        await start("n1", None)
        await start("n2", addresses["n1"])
        await start("n3", addresses["n1"])
        creds = read_secret_file(first / "cluster.secret")
        async with open_rpc_pool(creds, connect_timeout=1) as pool:
            for name in ("n2", "n3"):
                node_id = (await status(pool, addresses[name])).node_id
                change = ChangeMembership("add_voter", node_id, addresses[name])
                await _retry(pool, [addresses["n1"]], change)
            # n3 goes away; 120 writes make the leader snapshot and compact several times.
            procs["n3"].send_signal(signal.SIGTERM)
            assert procs["n3"].wait(timeout=10) == 0
            writer = Writer(pool, [addresses["n1"], addresses["n2"]])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                await writer.wait_progress(120, deadline=60)
                writer.stop = True
            leader = await find_leader(pool, [addresses["n1"], addresses["n2"]])
            await start("n3", None)
            with trio.fail_after(30):
                while True:
                    st3 = await status(pool, addresses["n3"])
                    if st3.applied >= leader.commit:
                        break
                    await trio.sleep(0.1)
            # The image arrived as a file, a chunk at a time, and stays one.
            raft3 = tmp_path / "n3" / "raft"
            assert (raft3 / "snapshot.meta").exists()
            assert len(list(raft3.glob("image-*.db"))) == 1
            assert not (raft3 / "snapshot").exists() and not (raft3 / "incoming.tmp").exists()
            assert "installed a snapshot" in (tmp_path / "n3" / "node.log").read_text()
            log_text = (tmp_path / "n1" / "node.log").read_text()
            assert "snapshot at index" in log_text
            for seq in (writer.acked[0], writer.acked[-1]):
                assert await read(pool, addresses["n3"], f"k{seq}") == f"v{seq}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def test_forwarded_proposal_gives_up_on_a_replaced_leader(cluster: Cluster) -> None:
    """A follower forwards a proposal to a leader that then freezes (SIGSTOP:
    the connection stays open, no answer ever comes). Once the others elect a
    new leader, the follower abandons the forward with NotLeader naming the
    new leader (or none yet), instead of holding the caller for the whole
    call timeout."""
    from prismfs.errors import NotLeader

    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        leader = await find_leader(pool, addresses)
        follower = next(a for a in addresses if a != leader.leader_address)
        frozen = next(n for n in nodes if n["id"] == leader.node_id)
        put = put_op("a", "1")
        await pool.call(follower, Propose("c1", 1, put), timeout=10)  # forwarding works
        os.kill(int(frozen["pid"]), signal.SIGSTOP)  # type: ignore[call-overload]
        try:
            # The call timeout is 10 s (node default); the election takes about 1 s.
            with pytest.raises(NotLeader, match="was replaced") as caught:
                await pool.call(follower, Propose("c1", 2, put), timeout=30)
            # The hint is the new leader, or none while the election still runs.
            assert caught.value.details.get("leader") != leader.node_id
            new_leader = await find_leader(
                pool, [a for a in addresses if a != frozen["rpc_address"]]
            )
            assert new_leader.node_id != leader.node_id
            reply = (await pool.call(follower, Propose("c1", 2, put), timeout=10)).message
            assert isinstance(reply, Proposed)  # the retry goes to the new leader
        finally:
            os.kill(int(frozen["pid"]), signal.SIGCONT)  # type: ignore[call-overload]
