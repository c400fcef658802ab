"""How a storage-only node reaches the metadata group it is not part of.

Theory of operation. Only the Raft members (the voters, and optional
non-voting replicas) hold the namespace. Every other node is storage-only:
it stores shards and serves them, but it replays no log and holds no copy of
the namespace. What it still needs from the metadata group (who leads, to
register itself, send its heartbeats, ask whether an unknown shard is an
orphan, and forward the metadata calls of a mount or HTTP client that reached
it) it gets over RPC: `MetadataLink` keeps the addresses of the members
(``seeds``, persisted in the raft directory so a restart finds the cluster
again), asks them for `RaftStatus` in turn, and remembers the last answer.
The members' addresses in each answer replace the seeds, so a node follows
the membership as it changes (a node down during the whole change relies
on one old member still being there, as a mount does).

Seeds come from ``--join`` at the node's first start, or from the leader in
`ClusterSeeds` when an administrator adds the node (`prismfs node add`).
A node that becomes a member later (a replica or a voter) stops polling: it
learns the leader through the log like every member.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import trio

from prismfs.durable import write_atomic
from prismfs.errors import PrismError
from prismfs.node.consensus_messages import (
    ClusterSeeds,
    ClusterSeedsAck,
    RaftStatus,
    RaftStatusReply,
)
from prismfs.wire.client import RpcPool
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.raft")

SEEDS_FILE = "seeds.json"
POLL_S = 1.0
"""How often a storage-only node asks the metadata group who leads."""


class MetadataLink:
    def __init__(self, raft_dir: Path, node_id: str, pool: RpcPool | None) -> None:
        self.file = raft_dir / SEEDS_FILE
        self.node_id = node_id
        self.pool = pool
        self.seeds: list[str] = self._load()
        self.status: RaftStatusReply | None = None  # the members' last answer
        self.revoked: frozenset[str] = frozenset()  # client credentials, as last told
        self._poke = trio.Event()

    def _load(self) -> list[str]:
        try:
            seeds = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.file, exc)
            return []
        return [s for s in seeds if isinstance(s, str)] if isinstance(seeds, list) else []

    def set_seeds(self, addresses: list[str] | tuple[str, ...], *, own: str = "") -> None:
        """Remember where the members are (durably); ``own`` is left out."""
        seeds = sorted({a for a in addresses if a and a != own})
        if seeds and seeds != self.seeds:
            self.seeds = seeds
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, json.dumps(seeds).encode(), mode=0o600)
            self._poke.set()

    def add_seed(self, address: str, *, own: str = "") -> None:
        """One more address to try (``--join``), beside those remembered."""
        self.set_seeds([*self.seeds, address], own=own)

    @property
    def leader(self) -> tuple[str, str]:
        """(id, address) of the leader the members last named, or ("", "")."""
        status = self.status
        if status is None or not status.leader_address or status.leader == self.node_id:
            return "", ""
        return status.leader, status.leader_address

    def forget_leader(self) -> None:
        """The named leader did not answer as one: ask the members again now."""
        self.status = None
        self._poke.set()

    def register(self, server: RpcServer) -> None:
        server.register(ClusterSeeds, self._on_seeds)

    async def _on_seeds(self, request: ClusterSeeds, call: Call) -> ClusterSeedsAck:
        self.set_seeds(request.addresses)
        return ClusterSeedsAck()

    async def run(self, is_member: Callable[[], bool], own_address: str) -> None:
        """Poll the members while this node is not one of them."""
        while True:
            if not is_member() and self.seeds and self.pool is not None:
                await self._poll(own_address)
            with trio.move_on_after(POLL_S):
                await self._poke.wait()
            self._poke = trio.Event()

    async def _poll(self, own_address: str) -> None:
        assert self.pool is not None
        for address in list(self.seeds):
            try:
                reply = (
                    await self.pool.call(address, RaftStatus(revoked=True), timeout=2.0)
                ).message
            except PrismError as exc:
                log.debug("metadata member %s did not answer: %s", address, exc.message)
                continue
            if not isinstance(reply, RaftStatusReply) or reply.role == "storage":
                continue  # a storage-only node knows no more than this one
            self.revoked = frozenset(reply.revoked)
            if reply.leader_address:
                if self.status is None or self.status.leader != reply.leader:
                    log.info("the metadata leader is %s at %s", reply.leader, reply.leader_address)
                self.status = reply
                members = set(reply.voters) | set(reply.learners)
                self.set_seeds(
                    [a for node, a in reply.addresses if node in members], own=own_address
                )
                return
