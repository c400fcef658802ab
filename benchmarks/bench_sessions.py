"""Session renewals benchmark: what many mounts' session leases cost the log.

A 3-node `prismfs dev` cluster; ``--clients`` meta clients (each a mount's
session, all in this process over one `RpcPool`) open a session with a
``--lease`` second lease and renew it every third of the lease for
``--seconds``, first through the log (`OpenSession(renew=True)`, as every
renewal was before) and then outside it (`RenewSession` to the leader).
For each, the Raft entries the leader committed per second and the renewal
latency are reported; the leader's own sweeps add one entry every 5 s.

    .venv/bin/python benchmarks/bench_sessions.py [--clients 300] [--lease 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_raft import DevCluster, _percentile

from prismfs.meta.client import MetaClient
from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply
from prismfs.wire.client import RpcPool, open_rpc_pool


async def leader_commit(pool: RpcPool, addresses: list[str]) -> int:
    for address in addresses:
        reply = (await pool.call(address, RaftStatus())).message
        assert isinstance(reply, RaftStatusReply)
        if reply.role == "leader":
            return reply.commit
    raise RuntimeError("no leader")


async def measure(
    pool: RpcPool, addresses: list[str], clients: int, lease: float, seconds: float, in_log: bool
) -> dict[str, Any]:
    metas = [MetaClient(pool, addresses) for _ in range(clients)]
    async with trio.open_nursery() as nursery:
        for meta in metas:
            nursery.start_soon(meta.open_session, lease)
    latencies: list[float] = []
    for meta in metas:
        meta._renew_in_log = in_log  # the path under test
    start_commit = await leader_commit(pool, addresses)
    start = trio.current_time()

    async def renew(meta: MetaClient, offset: float) -> None:
        await trio.sleep(offset)
        while trio.current_time() - start < seconds:
            t0 = trio.current_time()
            await meta.renew_session()
            latencies.append(trio.current_time() - t0)
            await trio.sleep(lease / 3)

    async with trio.open_nursery() as nursery:
        for n, meta in enumerate(metas):
            nursery.start_soon(renew, meta, (n / clients) * lease / 3)
    elapsed = trio.current_time() - start
    entries = await leader_commit(pool, addresses) - start_commit
    async with trio.open_nursery() as nursery:
        for meta in metas:
            nursery.start_soon(meta.close_session)
    latencies.sort()
    return {
        "path": "log" if in_log else "leader",
        "renewals": len(latencies),
        "renewals_per_s": round(len(latencies) / elapsed, 1),
        "raft_entries_per_s": round(entries / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
        "sessions_lost": sum(m.sessions_lost for m in metas),
    }


async def run(clients: int, lease: float, seconds: float) -> list[dict[str, Any]]:
    cluster = DevCluster()
    try:
        nodes = await trio.to_thread.run_sync(cluster.up)
        addresses = [n.address for n in nodes]
        async with open_rpc_pool(cluster.creds(), connect_timeout=2) as pool:
            return [
                await measure(pool, addresses, clients, lease, seconds, in_log)
                for in_log in (True, False)
            ]
    finally:
        await trio.to_thread.run_sync(cluster.teardown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--lease", type=float, default=3.0, help="session lease, seconds")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = trio.run(run, args.clients, args.lease, args.seconds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
