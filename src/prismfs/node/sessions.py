"""Client session leases, timed by the Raft leader on its own monotonic clock.

Theory of operation. A client opens a session (`OpenSession`, through the
log) and renews it every third of its lease; files it holds open live as
long as the session. Timing the lease with time stamps from two machines
(the client stamps, the leader compares) lets a clock step on either side
expire every session at once, so it is timed here instead, as etcd's lessor
does: the leader notes, on its monotonic clock, when each session last
renewed, and ends (`ExpireSessions`, naming them, through the log) the
sessions whose lease has passed since.

Renewals are soft state on the leader, not log entries (`RenewSession`): a
thousand mounts renewing every 20 s would otherwise be 50 entries a second,
applied and stored by every replica. Nothing is lost when the leader
changes: a node that becomes leader first gives every session it knows a
full lease from that moment (the sessions themselves are in the log), so a
change of leader never shortens one; the only clock that matters is the
current leader's, and only its rate. A renewal of a session whose lease has
already run out on the leader's clock is refused (`SessionExpired`), as the
sweep would end it: a client is never told a session lives that is about to
be ended. Renewals through the log (`OpenSession(renew=True)`, from clients
of an earlier version) are still applied and noted the same way.
"""

from __future__ import annotations

import logging

import trio

from prismfs.clock import wall_ns
from prismfs.errors import NotLeader, PrismError, SessionExpired
from prismfs.meta.commands import ExpireSessions, StatFs
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.node.consensus_messages import RenewSession, SessionRenewed
from prismfs.wire.auth import EVERYONE
from prismfs.wire.codec import encode_message
from prismfs.wire.server import Call, RpcServer

log = logging.getLogger("prismfs.node.sessions")

SESSION_SWEEP_S = 5.0


class SessionLeases:
    """When each session last renewed (this node's monotonic clock); a
    `SessionObserver` of the namespace."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self._renewed: dict[str, tuple[float, float]] = {}  # session -> (renewed at, lease s)
        self._led_term = 0  # the term `start_leading` last ran for
        self.consensus: Consensus | None = None
        self.renewals = 0  # answered by `RenewSession`, outside the log
        namespace.session_observer = self

    def register(self, server: RpcServer, consensus: Consensus) -> None:
        self.consensus = consensus
        server.register(RenewSession, self._on_renew, roles=EVERYONE)

    def renewed(self, session: str, lease_ns: int) -> None:
        self._renewed[session] = (trio.current_time(), lease_ns / 1e9)

    def ended(self, session: str) -> None:
        self._renewed.pop(session, None)

    def start_leading(self) -> None:
        """A full lease for every session from now (this node just became leader)."""
        now = trio.current_time()
        self._renewed = {s: (now, lease / 1e9) for s, lease in self.namespace.session_leases()}

    def lead(self, term: int) -> None:
        """`start_leading`, once per term this node leads."""
        if term != self._led_term:
            self.start_leading()
            self._led_term = term

    async def _on_renew(self, request: RenewSession, call: Call) -> SessionRenewed:
        consensus = self.consensus
        assert consensus is not None
        if consensus.role != "leader":
            core = consensus.core
            raise NotLeader(
                "session renewals go to the leader", leader=core.leader if core else None
            )
        self.lead(consensus.status().term)
        session = request.session
        lease_ns = self.namespace.session_lease(session)
        if lease_ns is None:
            # An OpenSession this replica has not applied yet (it leads since
            # moments ago)? A linearizable read applies everything committed.
            await consensus.query(encode_message(StatFs()))
            lease_ns = self.namespace.session_lease(session)
            if lease_ns is None:
                raise SessionExpired(f"client session {session!r} is unknown or expired")
        now = trio.current_time()
        last = self._renewed.get(session)
        if last is not None and now - last[0] > last[1]:
            raise SessionExpired(
                f"client session {session!r} ended: no renewal reached the leader within "
                f"its {last[1]:g} s lease"
            )
        self._renewed[session] = (now, lease_ns / 1e9)
        self.renewals += 1
        return SessionRenewed(lease_ns)

    def expired(self) -> list[str]:
        now = trio.current_time()
        return sorted(s for s, (at, lease) in self._renewed.items() if now - at > lease)


async def expire_sessions(consensus: Consensus, leases: SessionLeases) -> None:
    """On the leader, every `SESSION_SWEEP_S`: end the sessions whose lease ran out."""
    swept_term = 0
    while True:
        await trio.sleep(SESSION_SWEEP_S)
        if consensus.role != "leader":
            swept_term = 0
            continue
        term = consensus.status().term
        leases.lead(term)
        new_leader = term != swept_term
        expired = leases.expired()
        if expired:
            log.info("client sessions whose lease ran out: %s", ", ".join(expired))
        try:
            await consensus.propose_internal(
                encode_message(ExpireSessions(wall_ns(), tuple(expired), new_leader)),
                timeout=SESSION_SWEEP_S,
            )
            swept_term = term  # a sweep of this term applied
        except PrismError as exc:
            log.debug("session sweep skipped: %s", exc.message)
