"""Client session leases, timed by the Raft leader on its own monotonic clock.

Theory of operation. A client keeps a session (`OpenSession`) and renews it
every third of its lease; files it holds open live as long as the session.
Timing the lease with time stamps from two machines (the client stamps, the
leader compares) lets a clock step on either side expire every session at
once, so it is timed here instead, as etcd's lessor does: every replica notes,
on its monotonic clock, when it applied each session's last renewal; the
leader ends (`ExpireSessions`, naming them) the sessions whose lease has passed
since. A node that becomes leader first gives every session a full lease from
that moment, so a change of leader never shortens one; the only clock that
matters is the current leader's, and only its rate.
"""

from __future__ import annotations

import logging

import trio

from prismfs.clock import wall_ns
from prismfs.errors import PrismError
from prismfs.meta.commands import ExpireSessions
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.wire.codec import encode_message

log = logging.getLogger("prismfs.node.sessions")

SESSION_SWEEP_S = 5.0


class SessionLeases:
    """When each session last renewed (this node's monotonic clock); a
    `SessionObserver` of the namespace."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self._renewed: dict[str, tuple[float, float]] = {}  # session -> (renewed at, lease s)
        namespace.session_observer = self

    def renewed(self, session: str, lease_ns: int) -> None:
        self._renewed[session] = (trio.current_time(), lease_ns / 1e9)

    def ended(self, session: str) -> None:
        self._renewed.pop(session, None)

    def start_leading(self) -> None:
        """A full lease for every session from now (this node just became leader)."""
        now = trio.current_time()
        self._renewed = {s: (now, lease / 1e9) for s, lease in self.namespace.session_leases()}

    def expired(self) -> list[str]:
        now = trio.current_time()
        return sorted(s for s, (at, lease) in self._renewed.items() if now - at > lease)


async def expire_sessions(consensus: Consensus, leases: SessionLeases) -> None:
    """On the leader, every `SESSION_SWEEP_S`: end the sessions whose lease ran out."""
    led_term = swept_term = 0
    while True:
        await trio.sleep(SESSION_SWEEP_S)
        if consensus.role != "leader":
            led_term = swept_term = 0
            continue
        term = consensus.status().term
        if term != led_term:
            leases.start_leading()
            led_term = term
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
