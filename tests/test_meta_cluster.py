"""The namespace in real node processes: the client library against a 3-node
cluster, concurrent clients while the leader is killed, replicas converging
to one digest; open-but-unlinked files across clients; lease expiry of a
client that vanished."""

from __future__ import annotations

import os
import random
import signal
import stat
from pathlib import Path

import pytest
import trio

from prismfs.errors import AlreadyExists, NotEmpty, NotFound, PrismError, SessionExpired
from prismfs.meta.client import MetaClient, open_meta_client
from prismfs.meta.commands import ROOT_INO, Batch, BatchResults, Lookup, MetaOk, Mknod
from prismfs.node.consensus_messages import Propose, Proposed
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import decode_message, encode_message
from test_raft_cluster import Cluster, find_leader

pytestmark = pytest.mark.timeout(240)

REG = stat.S_IFREG | 0o644


@pytest.fixture
def cluster(tmp_path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    c.cleanup()


async def converged_digests(client: MetaClient, addresses: list[str], deadline: float = 30) -> str:
    """Wait until every replica reports the same digest (they apply at their own pace)."""
    with trio.fail_after(deadline):
        while True:
            digests = set()
            for address in addresses:
                try:
                    digests.add(await client.digest(address))
                except PrismError:
                    digests.add(f"down {address}")
            if len(digests) == 1:
                return digests.pop()
            await trio.sleep(0.2)


async def workload(client: MetaClient, who: int, ops: int, done: list[int]) -> None:
    """Random changes in the client's own directory; POSIX refusals are fine."""
    rng = random.Random(who)
    home = await client.mkdir(ROOT_INO, f"w{who}".encode(), 0o755)
    names = [f"n{i}".encode() for i in range(8)]
    for _ in range(ops):
        name = rng.choice(names)
        kind = rng.random()
        try:
            if kind < 0.35:
                await client.mknod(home.ino, name, REG)
            elif kind < 0.5:
                await client.mkdir(home.ino, name, 0o755)
            elif kind < 0.7:
                await client.rename(home.ino, name, home.ino, rng.choice(names))
            elif kind < 0.85:
                await client.unlink(home.ino, name)
            else:
                attr = await client.lookup(home.ino, name)
                await client.setxattr(attr.ino, b"user.k", os.urandom(8))
        except (NotFound, AlreadyExists, NotEmpty, PrismError) as exc:
            if exc.transient:
                raise
        done.append(who)


async def test_concurrent_clients_survive_a_leader_kill_and_replicas_converge(
    cluster: Cluster,
) -> None:
    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as client,
    ):
        done: list[int] = []
        async with trio.open_nursery() as nursery:
            for who in range(4):
                nursery.start_soon(workload, client, who, 60, done)
            with trio.fail_after(30):
                while len(done) < 40:
                    await trio.sleep(0.02)
            leader = await find_leader(pool, addresses)
            victim = next(n for n in nodes if n["id"] == leader.node_id)
            os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        assert len(done) == 240  # every operation finished, through the new leader
        survivors = [a for a in addresses if a != victim["rpc_address"]]
        new_leader = await find_leader(pool, survivors)
        assert new_leader.term > leader.term
        await trio.to_thread.run_sync(cluster.up)  # the killed node comes back and catches up
        digest = await converged_digests(client, addresses)
        assert digest
        # The workload's directories exist with consistent link counts.
        root = await client.getattr(ROOT_INO)
        assert root.nlink == 2 + 4
        entries = [e async for e in client.readdir(ROOT_INO)]
        assert sorted(e.name for e in entries) == [b"w0", b"w1", b"w2", b"w3"]
        for entry in entries:
            children = [c async for c in client.readdir(entry.attr.ino, page=3)]
            subdirs = sum(stat.S_ISDIR(c.attr.mode) for c in children)
            assert entry.attr.nlink == 2 + subdirs


async def test_open_file_survives_unlink_by_another_client(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses[:1]) as a,
        open_meta_client(pool, addresses[1:]) as b,
    ):
        # Every node entered itself in the node registry at start.
        with trio.fail_after(20):
            while len(registry := await a.nodes()) < 3:
                await trio.sleep(0.1)
        assert sorted(n.address for n in registry) == sorted(addresses)
        assert {n.node for n in registry} == {str(n["id"]) for n in nodes}
        assert all(n.state == "up" and n.capacity > 0 for n in registry)
        f = await a.mknod(ROOT_INO, b"f", REG, open_it=True)
        await b.unlink(ROOT_INO, b"f")
        with pytest.raises(NotFound):
            await b.lookup(ROOT_INO, b"f")
        assert (await b.getattr(f.ino)).nlink == 0  # still there for its holder
        await a.release(f.ino)
        # Freed by the leader's sweeps (every 5 s) once a grace passed: an open
        # another mount read but has not registered yet finds it meanwhile.
        assert (await b.getattr(f.ino)).nlink == 0
        await wait_freed(b, f.ino)
        assert (await b.statfs()).files == 1


async def wait_freed(meta: MetaClient, ino: int) -> None:
    """Until the leader's sweeps (every 5 s) freed ``ino``."""
    with trio.fail_after(30):
        while True:
            try:
                await meta.getattr(ino)
            except NotFound:
                return
            await trio.sleep(0.2)


async def test_vanished_client_loses_its_open_files_after_the_lease(cluster: Cluster) -> None:
    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        gone = MetaClient(pool, addresses)
        await gone.open_session(lease_s=1.0)  # and never renews it: the client "crashed"
        f = await gone.mknod(ROOT_INO, b"f", REG, open_it=True)
        other = MetaClient(pool, addresses)
        await other.unlink(ROOT_INO, b"f")
        assert (await other.getattr(f.ino)).nlink == 0
        await wait_freed(other, f.ino)  # its session expires, then the inode goes
        assert (await other.statfs()).files == 1
        # The vanished client comes back: it is told its session ended, and
        # carries on in a new one (its files opened before are stale).
        first = gone.session
        with pytest.raises(SessionExpired):
            await gone.renew_session()
        assert gone.session != first and gone.sessions_lost == 1
        await gone.mkdir(ROOT_INO, b"back", 0o755)
        await gone.renew_session()


async def test_renewals_stay_out_of_the_log_and_survive_a_leader_change(
    cluster: Cluster,
) -> None:
    """A session renewed every 0.3 s for longer than its 2 s lease stays
    alive, and its renewals add no log entries (the leader's sweeps, every
    5 s, add one each); a new leader gives it a full lease and takes its
    renewals; once renewals stop, the session ends."""
    from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply, TransferLeadership

    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        meta = MetaClient(pool, addresses)
        await meta.open_session(lease_s=2.0)
        f = await meta.mknod(ROOT_INO, b"kept-open", REG, open_it=True)
        await meta.unlink(ROOT_INO, b"kept-open")  # lives only as long as the session
        leader = await find_leader(pool, addresses)
        start = leader.commit
        for _ in range(12):
            await meta.renew_session()
            await trio.sleep(0.3)
        leader = await find_leader(pool, addresses)
        assert leader.commit - start <= 3  # sweeps only; 12 renewals in the log would be 12+
        assert meta.sessions_lost == 0
        assert (await meta.getattr(f.ino)).nlink == 0  # still there: the session lives
        # Another node leads: the session goes on there.
        others = []
        for address in addresses:
            reply = (await pool.call(address, RaftStatus())).message
            assert isinstance(reply, RaftStatusReply)
            if reply.node_id != leader.node_id and reply.node_id in leader.voters:
                others.append(reply.node_id)
        await pool.call(leader.leader_address, TransferLeadership(others[0]))
        with trio.fail_after(10):
            while (await find_leader(pool, addresses)).node_id == leader.node_id:
                await trio.sleep(0.1)
        for _ in range(12):
            await meta.renew_session()
            await trio.sleep(0.3)
        assert meta.sessions_lost == 0
        assert (await meta.getattr(f.ino)).nlink == 0
        # Renewals stop: the lease runs out, a sweep ends the session, the file goes.
        await wait_freed(meta, f.ino)
        first = meta.session
        with pytest.raises(SessionExpired):
            await meta.renew_session()
        assert meta.session != first and meta.sessions_lost == 1


async def test_bad_requests_get_clear_errors_and_change_nothing(cluster: Cluster) -> None:
    from prismfs.errors import InvalidArgument, ProtocolError
    from prismfs.meta.commands import GetAttr, Mkdir
    from prismfs.node.consensus_messages import Propose, Query
    from prismfs.wire.codec import encode_message

    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with open_rpc_pool(cluster.creds, connect_timeout=1) as pool:
        client = MetaClient(pool, addresses)
        before = await converged_digests(client, addresses)
        for address in addresses:  # the leader and the followers (which would forward)
            with pytest.raises(ProtocolError):
                await pool.call(address, Propose("x", 1, b"\xc1garbage"), timeout=5)
            with pytest.raises(InvalidArgument, match="not a namespace command"):
                await pool.call(address, Propose("x", 1, encode_message(GetAttr(1))), timeout=5)
            with pytest.raises(InvalidArgument, match="not a namespace query"):
                await pool.call(address, Query(encode_message(Mkdir(0, 1, b"a", 0o755, 0, 0))))
            with pytest.raises(NotFound):
                await client.getattr(12345)
        assert await converged_digests(client, addresses) == before  # nothing was logged
        await client.mkdir(ROOT_INO, b"still-works", 0o755)
    for node in nodes:
        assert "Traceback" not in (Path(str(node["data_dir"])) / "node.log").read_text()


async def test_a_flush_under_a_failed_leaders_delegation_applies_once_through_the_new_one(
    cluster: Cluster,
) -> None:
    """A mount's write-back flush the leader logged just before it was
    killed, sent again to the new leader (which knows no delegation of the
    old one): answered as the first time, applied once, not refused and not
    lost; a later flush under that delegation goes the usual way."""
    nodes = await trio.to_thread.run_sync(cluster.up)
    addresses = [str(n["rpc_address"]) for n in nodes]
    async with (
        open_rpc_pool(cluster.creds, connect_timeout=1) as pool,
        open_meta_client(pool, addresses) as client,
    ):
        d = await client.mkdir(ROOT_INO, b"d", 0o755)
        with trio.fail_after(30):
            while True:  # (a new leader delegates nothing while blind)
                _, grant = await client.query_leased(Lookup(d.ino, b"f1"), exclusive=True)
                if grant is not None and grant.exclusive:
                    break
                await trio.sleep(0.2)
        delegated = ((d.ino, grant.term, grant.seq),)

        def flush(seq: int, name: bytes) -> Propose:
            op = encode_message(Batch(0, (encode_message(Mknod(0, d.ino, name, REG, 0, 0)),)))
            return Propose("flusher", seq, op, client.session, delegated)

        leader = await find_leader(pool, addresses)
        first = (await pool.call(leader.leader_address, flush(1, b"f1"))).message
        assert isinstance(first, Proposed)
        victim = next(n for n in nodes if n["id"] == leader.node_id)
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        survivors = [a for a in addresses if a != leader.leader_address]
        new = await find_leader(pool, survivors)
        again = (await pool.call(new.leader_address, flush(1, b"f1"), timeout=30)).message
        assert isinstance(again, Proposed) and again.result == first.result
        later = (await pool.call(new.leader_address, flush(2, b"f2"), timeout=30)).message
        assert isinstance(later, Proposed)
        results = decode_message(later.result)
        assert isinstance(results, BatchResults)
        assert isinstance(decode_message(results.results[0]), MetaOk)
        client.addresses = survivors
        assert sorted([e.name async for e in client.readdir(d.ino)]) == [b"f1", b"f2"]
