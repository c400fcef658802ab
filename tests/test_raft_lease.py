"""Leader leases, shared ReadIndex rounds and the lean write path of the Raft
core (thesis 6.4 and 6.4.1), and the driver-side lease clock.

Message counts here are the contract the node's costs rest on: an isolated
write is two Appends and two AppendResponses in a 3-node group (the followers
learn the commit from the next heartbeat), and any number of reads waiting
together cost one heartbeat round."""

from __future__ import annotations

from prismfs.raft.lease import LeaderLease, lease_seconds
from prismfs.raft.messages import (
    Append,
    AppendResponse,
    ConfChange,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
    Vote,
)
from raft_network import Network

ABC = ("a", "b", "c")


def leased_network() -> Network:
    return Network(ABC, election_ticks=10, heartbeat_ticks=2, lease=True)


def test_an_isolated_write_costs_one_append_round_and_no_commit_round() -> None:
    net = Network(ABC)
    net.elect("a")
    net.sent.clear()
    net.nodes["a"].propose(b"x")
    net.stabilize()
    kinds = [type(m).__name__ for m in net.sent]
    assert sorted(kinds) == ["Append", "Append", "AppendResponse", "AppendResponse"]
    assert net.nodes["a"].commit == 2 and net.applied["a"] == [b"x"]
    # The followers hold the entry but learn that it is committed later...
    assert all(net.nodes[n].commit == 1 for n in "bc")
    # ...from the next heartbeat.
    net.tick(["a"])
    assert all(net.nodes[n].commit == 2 for n in "bc")
    assert net.applied["b"] == net.applied["c"] == [b"x"]


def test_reads_waiting_together_share_one_heartbeat_round() -> None:
    net = Network(ABC)
    leader = net.elect("a")
    net.sent.clear()
    for context in range(1, 6):
        leader.read_index(context)
    net.stabilize()
    heartbeats = [m for m in net.sent if isinstance(m, Heartbeat)]
    assert len(heartbeats) == 2  # one round: one per follower
    assert sorted(rs.context for rs in net.read_states["a"]) == [1, 2, 3, 4, 5]


def test_the_lease_rests_on_the_latest_heartbeat_a_quorum_answered() -> None:
    net = leased_network()
    leader = net.elect("a")
    assert leader.lease_seq >= 1
    seq = leader.lease_seq
    net.cut("a", "b")
    net.cut("a", "c")
    net.tick(["a"], times=2)  # a new broadcast that nobody answers
    assert leader.lease_seq == seq
    net.heal()
    net.cut("a", "c")  # b alone is a quorum with a
    net.tick(["a"], times=2)
    assert leader.lease_seq > seq


def test_no_lease_before_an_entry_of_the_term_is_committed() -> None:
    net = leased_network()
    net.drop = lambda m: isinstance(m, AppendResponse)  # the noop never commits
    leader = net.elect("a")
    net.tick(["a"], times=2)
    assert any(isinstance(m, HeartbeatResponse) and m.seq for m in net.sent)
    assert leader.lease_seq == 0


def test_no_lease_while_a_membership_change_is_uncommitted() -> None:
    net = leased_network()
    leader = net.elect("a")
    assert leader.lease_seq
    net.drop = lambda m: isinstance(m, AppendResponse)
    leader.propose_conf_change(ConfChange("add_learner", "d", "addr"))
    net.stabilize()
    assert leader.lease_seq == 0


def test_timeout_now_ends_the_lease_for_the_rest_of_the_term() -> None:
    net = leased_network()
    leader = net.elect("a")
    assert leader.lease_seq
    net.drop = lambda m: isinstance(m, TimeoutNow)  # the transfer never happens
    leader.transfer_leadership("b")
    net.stabilize()
    assert any(isinstance(m, TimeoutNow) for m in net.sent)
    assert leader.lease_seq == 0
    net.tick(["a"], times=2 * leader.cfg.election_ticks)  # transfer abandoned
    assert leader.role.value == "leader" and leader.lease_seq == 0


def test_a_restarted_node_refuses_votes_for_an_election_timeout() -> None:
    """It may have acknowledged a lease just before it went down."""
    net = leased_network()
    net.elect("a")
    node = net.restart("b")
    vote = Vote("c", "b", node.term + 1, last_index=99, last_term=node.term, pre=False)
    node.step(vote)
    assert not node.ready().messages  # silently refused
    for _ in range(node.cfg.election_ticks):
        node.tick()
    node.step(vote)
    granted = [m for m in node.ready().messages if m.to == "c"]
    assert granted and not getattr(granted[0], "reject", True)


def test_without_lease_a_restarted_node_votes_at_once() -> None:
    net = Network(ABC, election_ticks=10)
    net.elect("a")
    node = net.restart("b")
    node.step(Vote("c", "b", node.term + 1, last_index=99, last_term=node.term))
    assert [m for m in node.ready().messages if m.to == "c"]


def test_followers_waiting_on_a_read_get_the_commit_index_at_once() -> None:
    net = Network(ABC)
    leader = net.elect("a")
    net.drop = lambda m: isinstance(m, Append) and m.commit == 2  # lose the normal carrier
    leader.propose(b"x")
    net.stabilize()
    net.drop = lambda m: False
    assert net.nodes["b"].commit == 1
    net.nodes["b"].read_index(7)
    net.stabilize()
    assert [rs.index for rs in net.read_states["b"]] == [2]
    assert net.nodes["b"].commit == 2  # it can apply what it must read


def test_lease_clock() -> None:
    assert lease_seconds(10, 0.05) == 9 * 0.05 * 0.9
    lease = LeaderLease(0.4)
    lease.sent(term=3, seq=1, now=100.0)
    lease.sent(term=3, seq=1, now=100.2)  # the first send counts
    lease.sent(term=3, seq=2, now=100.3)
    assert lease.valid(3, 1, 100.39)
    assert not lease.valid(3, 1, 100.4)
    assert not lease.valid(4, 1, 100.1)  # another term
    assert not lease.valid(3, 0, 100.1)
    assert lease.valid(3, 2, 100.6)
    assert not lease.valid(3, 1, 100.1)  # forgotten once a later one was acknowledged
    lease.sent(term=4, seq=1, now=101.0)
    assert not lease.valid(3, 2, 101.0) and lease.valid(4, 1, 101.0)
