"""Exactly-once lanes and the session of a `MetaClient`, against a scripted
cluster (a fake RPC pool that applies proposals to a real `Namespace`): a lane
whose last command may still be in flight is never reused, and a client whose
session the cluster ended is told so, starts a new one, and its files opened
before fail with ESTALE."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from prismfs.client.files import OpenFile
from prismfs.data.layout import Layout
from prismfs.errors import DeadlineExceeded, SessionExpired, Unavailable
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import ROOT_INO, ExpireSessions
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus_messages import (
    Propose,
    Proposed,
    Query,
    QueryResult,
    RaftStatus,
    RaftStatusReply,
    RenewSession,
    SessionRenewed,
)
from prismfs.raft.state_machine import client_command
from prismfs.wire.client import Response
from prismfs.wire.codec import Message, encode_message

REG = stat.S_IFREG | 0o644


class ScriptedCluster:
    """Answers `Propose` and `Query` from one namespace; ``fail`` decides, per
    proposal, whether it is lost (applied or not) before the reply."""

    def __init__(self) -> None:
        self.ns = Namespace()
        self.index = 0
        self.lanes: list[tuple[str, int]] = []  # (client, seq) of every proposal seen
        self.fail: Callable[[Propose], str] = lambda p: ""  # "", "lost", "applied-lost"

    def apply(self, command: bytes) -> bytes:
        self.index += 1
        return self.ns.apply(self.index, command)

    async def call(self, address: str, request: Message, payload: Any = b"", **kw: Any) -> Response:
        await trio.lowlevel.checkpoint()
        if isinstance(request, RaftStatus):
            return Response(RaftStatusReply("n1", "leader", 1, "n1", "a", 1, 1, 1, ("n1",), (), ()))
        if isinstance(request, Query):
            return Response(QueryResult(self.index, self.ns.query(request.op)))
        if isinstance(request, RenewSession):  # the leader's check, without its clock
            lease_ns = self.ns.session_lease(request.session)
            if lease_ns is None:
                raise SessionExpired(f"client session {request.session!r} is unknown")
            return Response(SessionRenewed(lease_ns))
        assert isinstance(request, Propose)
        self.lanes.append((request.client, request.seq))
        fate = self.fail(request)
        if fate == "lost":
            raise Unavailable("the reply was lost")
        result = self.apply(client_command(request.client, request.seq, request.op))
        if fate == "applied-lost":
            raise Unavailable("the reply was lost")
        return Response(Proposed(self.index, result))


def client(cluster: ScriptedCluster, **kw: Any) -> MetaClient:
    return MetaClient(cluster, ["a"], lanes=1, timeout=0.3, attempt_timeout=0.1, **kw)  # type: ignore[arg-type]


def test_a_lane_whose_command_may_be_in_flight_is_never_reused() -> None:
    async def main() -> None:
        cluster = ScriptedCluster()
        meta = client(cluster)
        await meta.mkdir(ROOT_INO, b"a", 0o755)
        cluster.fail = lambda p: "lost"  # every attempt times out; the command may be anywhere
        with pytest.raises(DeadlineExceeded):
            await meta.mkdir(ROOT_INO, b"b", 0o755)
        uncertain = cluster.lanes[-1][0]
        cluster.fail = lambda p: ""
        await meta.mkdir(ROOT_INO, b"c", 0o755)
        assert cluster.lanes[-1][0] != uncertain  # a fresh lane took its place
        assert cluster.lanes[-1][1] == 1
        # A definite answer (an error the cluster gave) keeps the lane in use.
        with pytest.raises(Exception, match="exists"):
            await meta.mkdir(ROOT_INO, b"c", 0o755)
        lane = cluster.lanes[-1][0]
        await meta.mkdir(ROOT_INO, b"d", 0o755)
        assert cluster.lanes[-1][0] == lane

    trio.run(main)


def test_a_client_whose_session_ended_is_told_and_goes_on_with_a_new_one(logs: Any) -> None:
    logs.allow("was ended by the cluster")

    async def main() -> None:
        cluster = ScriptedCluster()
        meta = client(cluster)
        await meta.open_session(30.0)
        first = meta.session
        attr = await meta.mknod(ROOT_INO, b"f", REG, open_it=True)
        f = OpenFile(meta, None, attr.ino, Layout(1, 1, 4096))  # type: ignore[arg-type]
        # The leader stops hearing from it for longer than the lease.
        cluster.apply(encode_message(ExpireSessions(0, (first,))))
        with pytest.raises(SessionExpired):
            await meta.renew_session()
        assert meta.session != first and meta.sessions_lost == 1
        assert cluster.ns.session_leases() == [(meta.session, 30 * 10**9)]
        # Its open file is stale: its operations fail with ESTALE.
        assert f.stale
        with pytest.raises(SessionExpired) as caught:
            await f.write(0, b"x")
        assert caught.value.errno == errno.ESTALE
        # Everything else goes on in the new session.
        await meta.mkdir(ROOT_INO, b"after", 0o755)
        reopened = await OpenFile.open(meta, None, attr.ino)  # type: ignore[arg-type]
        assert not reopened.stale

    trio.run(main)


def test_a_fenced_command_also_reveals_the_lost_session(logs: Any) -> None:
    logs.allow("was ended by the cluster")

    async def main() -> None:
        cluster = ScriptedCluster()
        meta = client(cluster)
        await meta.open_session(30.0)
        first = meta.session
        cluster.apply(encode_message(ExpireSessions(0, (first,))))
        with pytest.raises(SessionExpired):
            await meta.mkdir(ROOT_INO, b"x", 0o755)  # refused, not applied
        assert meta.session != first
        await meta.mkdir(ROOT_INO, b"x", 0o755)  # applies once, in the new session

    trio.run(main)


def test_leases_are_timed_on_the_leaders_monotonic_clock() -> None:
    """Only the time since the last renewal the leader saw counts; a new leader
    gives every session a full lease; wall clocks play no part."""
    from prismfs.meta.commands import OpenSession
    from prismfs.node.sessions import SessionLeases

    async def main() -> None:
        ns = Namespace()
        leases = SessionLeases(ns)
        index = 0

        def run(command: Any) -> None:
            nonlocal index
            index += 1
            ns.apply(index, encode_message(command))

        # Stamped by the clients with wildly wrong clocks: it makes no difference.
        run(OpenSession(10**18, "a", 10 * 10**9))
        run(OpenSession(-(10**18), "b", 10 * 10**9))
        await trio.sleep(8)
        run(OpenSession(0, "b", 10 * 10**9, renew=True))
        await trio.sleep(3)
        assert leases.expired() == ["a"]  # 11 s since a's renewal, 3 s since b's
        leases.start_leading()  # this node just became leader: full leases from now
        assert leases.expired() == []
        await trio.sleep(10.5)
        assert leases.expired() == ["a", "b"]
        run(ExpireSessions(0, ("a",)))
        assert leases.expired() == ["b"]  # an ended session is forgotten

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
