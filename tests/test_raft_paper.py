"""The rules of Figure 2 and §5.4 of the Raft paper, one test each (or close).

Single-node tests feed hand-made messages to one `RaftNode` and read its
`Ready`; cluster tests use the in-memory `Network` of `raft_network.py`.
"""

from __future__ import annotations

import random

import pytest

from prismfs.errors import NotLeader
from prismfs.raft.core import RaftNode
from prismfs.raft.messages import (
    Append,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    RaftMessage,
    Vote,
    VoteResponse,
)
from prismfs.raft.ready import RaftConfig, Ready, Role
from raft_network import Network

ABC = ("a", "b", "c")


def make(
    node_id: str = "a",
    voters: tuple[str, ...] = ABC,
    *,
    term: int = 0,
    vote: str = "",
    commit: int = 0,
    log: list[tuple[int, int]] | None = None,
    **config: object,
) -> RaftNode:
    """A node restored with ``log`` given as (index, term) pairs."""
    entries = [Entry(t, i) for i, t in (log or [])]
    return RaftNode(
        RaftConfig(node_id=node_id, **config),  # type: ignore[arg-type]
        random.Random(0),
        conf=ConfState(voters),
        hard_state=HardState(term, vote, commit),
        entries=entries,
    )


def drain(node: RaftNode) -> Ready:
    rd = node.ready()
    node.advance(rd)
    return rd


def sent(rd: Ready, kind: type[RaftMessage]) -> list[RaftMessage]:
    return [m for m in rd.messages if isinstance(m, kind)]


def ticks_to_campaign(node: RaftNode) -> None:
    for _ in range(2 * node.cfg.election_ticks):
        node.tick()
        if node.role != Role.FOLLOWER:
            return
    raise AssertionError("no election started")


# --- All servers ------------------------------------------------------------------


def test_committed_entries_are_applied_in_order() -> None:
    node = make(log=[(1, 1), (2, 1), (3, 1)], term=1)
    node.step(Heartbeat("b", "a", 1, commit=2))
    rd = drain(node)
    assert [e.index for e in rd.committed] == [1, 2]
    assert node.applied == 2
    node.step(Heartbeat("b", "a", 1, commit=3))
    assert [e.index for e in drain(node).committed] == [3]


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_higher_term_in_any_message_makes_follower(role: str) -> None:
    net = Network(ABC, pre_vote=False)
    node = net.nodes["a"]
    if role == "candidate":
        ticks_to_campaign(node)
    elif role == "leader":
        net.elect("a")
    term = node.term
    node.step(AppendResponse("b", "a", term + 5, index=0))
    assert node.role == Role.FOLLOWER
    assert node.term == term + 5
    assert node.vote == ""


def test_lower_term_messages_are_ignored() -> None:
    node = make(term=5)
    node.step(Append("b", "a", 3, prev_index=0, prev_term=0, entries=(Entry(3, 1),), commit=1))
    rd = drain(node)
    assert node.log.last_index == 0
    assert node.leader == ""
    # The stale leader is told the newer term (so it steps down).
    assert [(m.term, m.to) for m in sent(rd, AppendResponse)] == [(5, "b")]


# --- Followers ---------------------------------------------------------------------


def test_follower_responds_to_leader_and_candidate() -> None:
    node = make(term=1, check_quorum=False)
    node.step(Append("b", "a", 1, prev_index=0, prev_term=0, entries=(), commit=0))
    node.step(Vote("c", "a", 2, last_index=0, last_term=0))
    rd = drain(node)
    assert sent(rd, AppendResponse) and sent(rd, VoteResponse)


def test_follower_times_out_into_election_without_prevote() -> None:
    node = make(pre_vote=False)
    ticks_to_campaign(node)
    assert node.role == Role.CANDIDATE and node.term == 1


def test_election_timeout_is_randomized_between_t_and_2t() -> None:
    timeouts = set()
    for seed in range(30):
        node = RaftNode(RaftConfig("a", pre_vote=False), random.Random(seed), conf=ConfState(ABC))
        n = 0
        while node.role == Role.FOLLOWER:
            node.tick()
            n += 1
        timeouts.add(n)
    assert min(timeouts) >= 10 and max(timeouts) < 20 and len(timeouts) > 3


def test_heartbeat_resets_the_election_timer() -> None:
    node = make(term=1, pre_vote=False)
    for _ in range(100):
        node.tick()
        node.step(Heartbeat("b", "a", 1, commit=0))
    assert node.role == Role.FOLLOWER and node.leader == "b"


def test_granting_a_vote_resets_the_election_timer() -> None:
    node = make(term=1, pre_vote=False)
    for _ in range(9):
        node.tick()
    node.step(Vote("b", "a", 2, last_index=0, last_term=0))
    for _ in range(9):
        node.tick()
    assert node.role == Role.FOLLOWER  # 18 ticks in all, but the timer restarted at 9


# --- Candidates -----------------------------------------------------------------------


def test_candidate_increments_term_votes_for_itself_and_asks_everyone() -> None:
    node = make(term=3, pre_vote=False)
    ticks_to_campaign(node)
    rd = drain(node)
    assert node.term == 4 and node.vote == "a"
    assert rd.hard_state == HardState(4, "a", 0)
    votes = sent(rd, Vote)
    assert sorted(m.to for m in votes) == ["b", "c"]
    assert all(m.term == 4 and not m.pre for m in votes)


def test_candidate_with_majority_becomes_leader() -> None:
    node = make(pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 1, reject=False))
    assert node.role == Role.LEADER and node.leader == "a"


def test_candidate_with_majority_of_rejections_becomes_follower() -> None:
    node = make(pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 1, reject=True))
    node.step(VoteResponse("c", "a", 1, reject=True))
    assert node.role == Role.FOLLOWER and node.term == 1


def test_candidate_steps_down_on_append_from_new_leader_of_same_term() -> None:
    node = make(pre_vote=False)
    ticks_to_campaign(node)
    node.step(Append("b", "a", 1, prev_index=0, prev_term=0, entries=(), commit=0))
    assert node.role == Role.FOLLOWER and node.leader == "b" and node.term == 1


def test_candidate_starts_new_election_after_timeout() -> None:
    node = make(pre_vote=False)
    ticks_to_campaign(node)
    assert node.term == 1
    for _ in range(20):
        node.tick()
    assert node.role == Role.CANDIDATE and node.term == 2


# --- Leaders -----------------------------------------------------------------------------


def test_new_leader_appends_noop_and_replicates_it() -> None:
    net = Network(ABC)
    leader = net.elect("a")
    assert leader.log.entry(1).kind == "noop" and leader.log.entry(1).term == leader.term
    assert all(n.log.last_index == 1 for n in net.nodes.values())
    assert all(n.commit == 1 for n in net.nodes.values())


def test_leader_sends_heartbeats_when_idle() -> None:
    net = Network(ABC)
    net.elect("a")
    before = len([m for m in net.sent if isinstance(m, Heartbeat)])
    net.tick(["a"], times=3)
    after = len([m for m in net.sent if isinstance(m, Heartbeat)])
    assert after - before == 3 * 2


def test_command_is_appended_replicated_and_applied_everywhere() -> None:
    net = Network(ABC)
    net.elect("a")
    (index,) = net.propose("a", b"x=1")
    assert net.nodes["a"].log.entry(index).data == b"x=1"
    assert all(net.applied[n] == [b"x=1"] for n in ABC)


def test_follower_rejects_proposals_with_leader_hint() -> None:
    net = Network(ABC)
    net.elect("a")
    with pytest.raises(NotLeader) as info:
        net.nodes["b"].propose(b"x")
    assert info.value.details["leader"] == "a"


def test_leader_sends_entries_from_next_index() -> None:
    node = make(term=1, log=[(1, 1), (2, 1)], pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 2, reject=False))
    rd = drain(node)
    appends = sent(rd, Append)
    assert {m.to for m in appends} == {"b", "c"}
    assert all(m.prev_index == 2 and [e.index for e in m.entries] == [3] for m in appends)


def test_success_updates_match_and_next() -> None:
    node = make(term=1, log=[(1, 1)], pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 2, reject=False))
    drain(node)
    node.step(AppendResponse("b", "a", 2, index=2))
    assert node.progress["b"].match == 2 and node.progress["b"].next == 3
    assert node.progress["b"].state == "replicate"


def test_failure_moves_next_back_and_retries() -> None:
    node = make(term=1, log=[(1, 1), (2, 1), (3, 1)], pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 2, reject=False))
    drain(node)
    # b's log ends at index 1: it rejects prev_index 3 and says so.
    node.step(AppendResponse("b", "a", 2, index=3, reject=True, hint_index=2, hint_term=0))
    rd = drain(node)
    retry = [m for m in sent(rd, Append) if m.to == "b"]
    assert retry and retry[-1].prev_index == 1
    assert [e.index for e in retry[-1].entries] == [2, 3, 4]


def test_commit_needs_a_majority_of_match_indexes() -> None:
    node = make(voters=("a", "b", "c", "d", "e"), pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 1, reject=False))
    node.step(VoteResponse("c", "a", 1, reject=False))
    drain(node)
    node.step(AppendResponse("b", "a", 1, index=1))
    assert node.commit == 0  # a + b: 2 of 5
    node.step(AppendResponse("c", "a", 1, index=1))
    assert node.commit == 1  # a + b + c


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    node = make(voters=("a", "b"), pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 1, reject=False))
    node.step(AppendResponse("b", "a", 1, index=1))
    assert node.commit == 0  # b has it, but a has not fsynced its own copy yet
    drain(node)
    assert node.commit == 1


# --- AppendEntries receiver ------------------------------------------------------------------


def test_append_rejected_when_prev_does_not_match() -> None:
    node = make(term=2, log=[(1, 1), (2, 1)])
    node.step(Append("b", "a", 2, prev_index=2, prev_term=2, entries=(Entry(2, 3),), commit=0))
    (resp,) = sent(drain(node), AppendResponse)
    assert resp.reject and resp.index == 2
    assert resp.hint_term == 1 and resp.hint_index == 1  # skip the whole term 1
    assert node.log.last_index == 2


def test_append_rejected_when_log_too_short_hints_its_end() -> None:
    node = make(term=2, log=[(1, 1)])
    node.step(Append("b", "a", 2, prev_index=5, prev_term=2, entries=(), commit=0))
    (resp,) = sent(drain(node), AppendResponse)
    assert resp.reject and resp.hint_index == 2 and resp.hint_term == 0


def test_conflicting_entries_are_deleted_with_all_that_follow() -> None:
    node = make(term=3, log=[(1, 1), (2, 1), (3, 1)])
    node.step(Append("b", "a", 3, prev_index=1, prev_term=1, entries=(Entry(3, 2),), commit=0))
    rd = drain(node)
    assert [(e.index, e.term) for e in node.log.entries] == [(1, 1), (2, 3)]
    assert [(e.index, e.term) for e in rd.entries] == [(2, 3)]  # the driver truncates from 2


def test_new_entries_are_appended() -> None:
    node = make(term=1, log=[(1, 1)])
    node.step(
        Append("b", "a", 1, prev_index=1, prev_term=1, entries=(Entry(1, 2), Entry(1, 3)), commit=0)
    )
    (resp,) = sent(drain(node), AppendResponse)
    assert node.log.last_index == 3 and not resp.reject and resp.index == 3


def test_stale_append_does_not_truncate_matching_entries() -> None:
    node = make(term=1, log=[(1, 1), (2, 1), (3, 1)])
    node.step(Append("b", "a", 1, prev_index=0, prev_term=0, entries=(Entry(1, 1),), commit=0))
    assert node.log.last_index == 3
    assert not drain(node).entries


def test_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    node = make(term=1, log=[(1, 1), (2, 1), (3, 1)])
    node.step(Append("b", "a", 1, prev_index=1, prev_term=1, entries=(Entry(1, 2),), commit=3))
    assert node.commit == 2  # entry 3 was not confirmed by this message


# --- RequestVote receiver ---------------------------------------------------------------------


def test_vote_rejected_for_lower_term() -> None:
    node = make(term=5, pre_vote=False)
    node.step(Vote("b", "a", 4, last_index=10, last_term=4))
    assert drain(node).messages == []  # ignored; b learns nothing it could use
    assert node.vote == ""


def test_vote_granted_once_per_term() -> None:
    node = make(term=1, pre_vote=False, check_quorum=False)
    node.step(Vote("b", "a", 2, last_index=0, last_term=0))
    node.step(Vote("c", "a", 2, last_index=0, last_term=0))
    node.step(Vote("b", "a", 2, last_index=0, last_term=0))  # a retry from b is granted again
    answers = [(m.to, m.reject) for m in sent(drain(node), VoteResponse)]
    assert answers == [("b", False), ("c", True), ("b", False)]
    assert node.vote == "b"


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [(2, 1, False), (3, 1, True), (1, 2, True), (5, 1, True), (2, 2, True)],
)
def test_vote_only_for_an_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    node = make(term=1, log=[(1, 1), (2, 1), (3, 1)], pre_vote=False)
    node.step(Vote("b", "a", 2, last_index=last_index, last_term=last_term))
    (resp,) = sent(drain(node), VoteResponse)
    assert resp.reject is not granted


def test_vote_is_in_the_same_ready_as_the_response() -> None:
    node = make(term=1, pre_vote=False)
    node.step(Vote("b", "a", 2, last_index=0, last_term=0))
    rd = drain(node)
    # The driver persists hard_state before sending messages of the same Ready.
    assert rd.hard_state is not None and rd.hard_state.vote == "b" and rd.hard_state.term == 2
    assert sent(rd, VoteResponse)


# --- §5.4 Safety -------------------------------------------------------------------------------


def test_node_with_stale_log_cannot_be_elected() -> None:
    net = Network(ABC, pre_vote=False)
    net.elect("a")
    net.isolate("c")
    net.propose("a", b"1", b"2")
    net.heal()
    net.isolate("a")  # the leader disappears; c's log is behind b's
    c = net.nodes["c"]
    for _ in range(40):
        c.tick()
        net.stabilize()
    assert c.role != Role.LEADER
    b = net.elect("b")
    assert b.log.last_index >= 3


def test_old_term_entries_are_not_committed_by_counting() -> None:
    """Figure 8: an entry of an earlier term on a majority is still not committed."""
    node = make(voters=("a", "b", "c"), term=2, log=[(1, 1), (2, 2)], commit=1, pre_vote=False)
    ticks_to_campaign(node)  # term 3
    node.step(VoteResponse("b", "a", 3, reject=False))
    rd = drain(node)
    node.step(AppendResponse("b", "a", 3, index=2))  # b has index 2 (term 2): majority
    assert node.commit == 1
    node.step(AppendResponse("b", "a", 3, index=3))  # b has the term-3 no-op too
    assert node.commit == 3  # index 2 is committed indirectly, with index 3
    assert rd.entries and rd.entries[-1].term == 3


def test_leader_never_overwrites_its_own_entries() -> None:
    node = make(term=1, log=[(1, 1), (2, 1)], pre_vote=False)
    ticks_to_campaign(node)
    node.step(VoteResponse("b", "a", 2, reject=False))
    drain(node)
    before = list(node.log.entries)
    node.step(Append("c", "a", 2, prev_index=0, prev_term=0, entries=(Entry(2, 1),), commit=0))
    assert node.log.entries[: len(before)] == before  # same-term Append at a leader is ignored
