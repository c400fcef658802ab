"""The leader lease, on the driver's clock (Raft thesis 6.4.1).

The core counts which heartbeat broadcast a quorum acknowledged
(`RaftNode.lease_seq`); this keeps *when* each broadcast left, by the
driver's monotonic clock, and says whether a lease rests on it now. A
voter that acknowledged refuses to vote for anyone else until an election
timeout after it heard from the leader (``election_ticks`` of its own ticks,
the first of which may come at once after the heartbeat: so at least
``election_ticks - 1`` tick intervals), and the broadcast left before any
voter heard it. So while ``now < sent + lease_seconds`` by the leader's
clock, no other leader can have been elected, provided the clocks' *rates*
differ by less than ``drift`` (a clock's offset does not matter: each side
only measures an interval on its own clock).

A process paused longer than the lease sees the time jump when it resumes,
so it must check `valid` after it read its state and just before it
replies; reading the state first and checking after is what makes the
answer current at some instant inside the request.

Pure: the caller passes the time.
"""

from __future__ import annotations

DRIFT = 0.1
"""Assumed bound on how much faster one node's clock may run than another's."""


def lease_seconds(election_ticks: int, tick_s: float, drift: float = DRIFT) -> float:
    """How long a lease lasts after the heartbeat it rests on was sent."""
    return max(0.0, (election_ticks - 1) * tick_s * (1.0 - drift))


class LeaderLease:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._term = 0
        self._sent: dict[int, float] = {}  # heartbeat seq of this term -> when it left

    def sent(self, term: int, seq: int, now: float) -> None:
        """A heartbeat broadcast ``seq`` of ``term`` is about to leave."""
        if term != self._term:
            self._term, self._sent = term, {}
        self._sent.setdefault(seq, now)
        if len(self._sent) > 4096:  # nobody acknowledges: keep the newest only
            for old in sorted(self._sent)[:2048]:
                del self._sent[old]

    def valid(self, term: int, lease_seq: int, now: float) -> bool:
        """Does a lease rest on broadcast ``lease_seq`` (`RaftNode.lease_seq`) at ``now``?"""
        if lease_seq <= 0 or term != self._term:
            return False
        sent = self._sent.get(lease_seq)
        if sent is None:
            return False
        for old in [s for s in self._sent if s < lease_seq]:
            del self._sent[old]  # a newer broadcast is acknowledged: never needed again
        return now < sent + self.seconds
