"""Sending a request to the Raft leader, wherever it is now.

The leader is found through any reachable node's `RaftStatus`; a leader
that hands over leadership while the request is on its way (draining or
removing itself) answers `NotLeader` naming its successor, which is asked
next. Used by the admin CLI and the HTTP gateway for the leader-only admin
RPCs (`prismfs.leader.admin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import trio

from prismfs.errors import LeadershipTransfer, NotLeader, PrismError, Unavailable
from prismfs.node.consensus_messages import RaftStatus, RaftStatusReply
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import Message

T = TypeVar("T", bound=Message)

LEADER_ATTEMPTS = 12
ELECTION_ATTEMPTS = 10
"""Nodes answer but know no leader (a cluster just started, an election under
way): asked again every 0.5 s this many times (5 s) before giving up."""


async def call_leader(
    pool: RpcPool, addresses: Sequence[str], request: Message, expect: type[T], timeout: float
) -> T:
    """Send ``request`` to the leader (found through ``addresses``); its reply."""
    hint = ""
    for attempt in range(LEADER_ATTEMPTS):
        leader = hint
        errors = []
        for address in [] if leader else addresses:
            try:
                status = (await pool.call(address, RaftStatus(), timeout=5)).message
            except PrismError as exc:
                errors.append(f"{address}: {exc.message}")
                continue
            assert isinstance(status, RaftStatusReply)
            if status.leader_address:
                leader = status.leader_address
                break
        if not leader:
            if len(errors) < len(addresses) and attempt < ELECTION_ATTEMPTS:
                await trio.sleep(0.5)  # nodes answer, an election is under way
                continue
            raise Unavailable(
                "no leader is known: " + ("; ".join(errors) or "the nodes have not elected one")
            )
        try:
            reply = (await pool.call(leader, request, timeout=timeout)).message
        except (NotLeader, LeadershipTransfer) as exc:
            if attempt == LEADER_ATTEMPTS - 1:
                raise
            # Leadership is moving: go where the node points, else ask again.
            named = exc.details.get("leader")
            hint = named if isinstance(named, str) and named != leader else ""
            await trio.sleep(0.5)
            continue
        if not isinstance(reply, expect):
            raise TypeError(f"expected {expect.__name__}, got {type(reply).__name__}")
        return reply
    raise AssertionError("unreachable")
