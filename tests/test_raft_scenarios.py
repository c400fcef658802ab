"""Raft scenarios on the in-memory network: elections under partitions,
PreVote, CheckQuorum, log repair, ReadIndex, leadership transfer, membership
changes and snapshots."""

from __future__ import annotations

import ast
import os
import pathlib

import pytest

from prismfs.errors import ConfChangeInProgress, InvalidArgument, LeadershipTransfer, NotLeader
from prismfs.raft.durable_log import DurableLog, FileSink, read_image
from prismfs.raft.messages import (
    Append,
    ConfChange,
    Entry,
    InstallSnapshot,
    TimeoutNow,
    Vote,
    image_checksum,
)
from prismfs.raft.ready import TRANSITIONS, Role
from raft_network import Network

ABC = ("a", "b", "c")


def assert_logs_match(net: Network, ids: tuple[str, ...] | None = None) -> None:
    """Log Matching: same index and term means identical prefixes (checked whole)."""
    ids = ids or tuple(net.nodes)
    logs = {i: [(e.index, e.term, e.data) for e in net.nodes[i].log.entries] for i in ids}
    first = logs[ids[0]]
    for i in ids[1:]:
        assert logs[i] == first, f"{i} differs from {ids[0]}"


# --- elections -----------------------------------------------------------------------


def test_three_nodes_elect_exactly_one_leader() -> None:
    net = Network(ABC)
    for _ in range(40):
        net.tick()
    leaders = [n for n in net.nodes.values() if n.role == Role.LEADER]
    assert len(leaders) == 1
    assert all(n.leader == leaders[0].id for n in net.nodes.values())


def test_prevote_keeps_partitioned_node_from_inflating_terms() -> None:
    net = Network(ABC)
    net.elect("a")
    term = net.nodes["a"].term
    net.isolate("c")
    net.tick(["c"], times=100)
    assert net.nodes["c"].term == term  # pre-votes failed, so no real election
    net.heal()
    net.tick(times=3)
    assert net.nodes["a"].role == Role.LEADER and net.nodes["a"].term == term


def test_without_prevote_a_rejoining_node_disrupts_the_leader() -> None:
    net = Network(ABC, pre_vote=False, check_quorum=False)
    net.elect("a")
    net.isolate("c")
    net.tick(["c"], times=100)
    assert net.nodes["c"].term > net.nodes["a"].term
    net.heal()
    net.tick(times=30)
    assert net.leader() is not None and net.leader().term > 1  # type: ignore[union-attr]


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    net.tick(["a"], times=2 * a.cfg.election_ticks)
    assert a.role == Role.FOLLOWER


def test_vote_requests_ignored_within_leader_lease() -> None:
    net = Network(ABC)
    net.elect("a")
    b = net.nodes["b"]
    term = b.term
    b.step(Vote("c", "b", term + 1, last_index=100, last_term=100))
    assert b.term == term and b.vote == "a"


def test_partitioned_leader_rejoins_and_follows_new_leader() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    a.propose(b"lost")  # never reaches a majority
    net.stabilize()
    net.elect("b")
    net.propose("b", b"kept")
    net.heal()
    net.tick(times=3)
    assert a.role == Role.FOLLOWER and a.leader == "b"
    assert all(net.applied[n] == [b"kept"] for n in ABC)
    assert b"lost" not in [e.data for e in a.log.entries]
    assert_logs_match(net)


def test_divergent_logs_are_repaired() -> None:
    """Figure 7 in small: followers with extra, missing and conflicting entries."""
    net = Network(("a", "b", "c", "d", "e"))
    net.elect("a")
    net.propose("a", b"1")
    net.isolate("a")
    net.nodes["a"].propose(b"a-only-1")
    net.nodes["a"].propose(b"a-only-2")
    net.stabilize()
    net.heal()
    net.isolate("e")
    net.cut("a", "b")
    net.cut("a", "c")
    net.cut("a", "d")
    net.elect("b")
    net.propose("b", b"2", b"3")
    net.heal()
    net.tick(times=5)
    leader = net.leader()
    assert leader is not None and leader.id == "b"
    net.propose("b", b"4")
    assert_logs_match(net)
    assert all(net.applied[n] == [b"1", b"2", b"3", b"4"] for n in net.nodes)


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    net = Network(ABC)
    net.elect("a")
    net.isolate("a")
    for i in range(50):
        net.nodes["a"].propose(b"stale%d" % i)
    net.stabilize()
    net.heal()
    net.isolate("a")
    net.elect("b")
    net.propose("b", b"new")
    net.heal()
    net.sent.clear()
    net.tick(times=3)
    rejections = [m for m in net.sent if getattr(m, "reject", False) and m.frm == "a"]
    assert len(rejections) <= 2  # not one per stale entry
    assert_logs_match(net)


def test_lost_messages_are_recovered_by_heartbeats() -> None:
    net = Network(ABC)
    net.elect("a")
    net.drop = lambda m: m.to == "c" and m.__class__.__name__ == "Append"
    net.propose("a", b"1", b"2")
    assert net.applied["c"] == []
    net.drop = lambda m: False
    net.tick(times=3)
    assert net.applied["c"] == [b"1", b"2"]


def test_restart_restores_log_and_vote() -> None:
    net = Network(ABC)
    net.elect("a")
    net.propose("a", b"1", b"2")
    b = net.restart("b")
    assert b.term == net.nodes["a"].term and b.log.last_index == 3
    net.tick(times=3)
    assert net.applied["b"] == [b"1", b"2"]


def test_unpersisted_entries_are_lost_on_crash_but_not_committed_ones() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"committed")
    a.propose(b"never-persisted")  # no Ready processed before the crash
    a = net.restart("a")
    assert [e.data for e in a.log.entries if e.kind == "normal"] == [b"committed"]


# --- ReadIndex --------------------------------------------------------------------------------


def test_read_index_on_leader_needs_a_heartbeat_quorum() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1")
    net.isolate("a")
    a.read_index(7)
    net.stabilize()
    assert net.read_states["a"] == []  # no quorum confirmed leadership
    net.heal()
    net.tick(["a"])
    assert [(r.context, r.index) for r in net.read_states["a"]] == [(7, a.commit)]


def test_read_index_from_follower_goes_through_leader() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1")
    net.nodes["b"].read_index(42)
    net.stabilize()
    assert [(r.context, r.index) for r in net.read_states["b"]] == [(42, a.commit)]


def test_read_index_single_node_is_immediate() -> None:
    net = Network(("a",))
    a = net.elect("a")
    a.read_index(1)
    net.stabilize()
    assert [r.context for r in net.read_states["a"]] == [1]


def test_read_index_waits_for_first_commit_of_the_term() -> None:
    net = Network(ABC)
    net.elect("a")
    net.propose("a", b"1")
    net.drop = lambda m: isinstance(m, Append)  # b's no-op will not commit yet
    b = net.elect("b")
    b.read_index(5)
    net.stabilize()
    assert net.read_states["b"] == []  # b does not know the commit index of its term yet
    net.drop = lambda m: False
    net.tick(["b"], times=2)
    assert [(r.context, r.index) for r in net.read_states["b"]] == [(5, b.commit)]
    assert b.log.term(b.commit) == b.term


def test_read_index_without_leader_raises() -> None:
    net = Network(ABC)
    with pytest.raises(NotLeader):
        net.nodes["a"].read_index(1)


# --- leadership transfer --------------------------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1")
    a.transfer_leadership("b")
    net.stabilize()
    assert net.nodes["b"].role == Role.LEADER and a.role == Role.FOLLOWER
    assert any(isinstance(m, TimeoutNow) for m in net.sent)


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.cut("a", "c")
    net.propose("a", b"1", b"2")
    net.heal()
    a.transfer_leadership("c")
    net.stabilize()
    assert net.nodes["c"].role == Role.LEADER
    assert net.applied["c"] == [b"1", b"2"]


def test_proposals_refused_while_transferring_and_transfer_times_out() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("b")
    a.transfer_leadership("b")
    with pytest.raises(LeadershipTransfer):
        a.propose(b"x")
    net.heal()
    net.cut("a", "b")
    net.tick(["a", "c"], times=a.cfg.election_ticks + 1)
    assert a.role == Role.LEADER
    net.propose("a", b"after")  # transfer abandoned: proposals flow again
    assert b"after" in net.applied["c"]


def test_transfer_rejects_unknown_target() -> None:
    net = Network(ABC)
    a = net.elect("a")
    with pytest.raises(InvalidArgument):
        a.transfer_leadership("zz")
    with pytest.raises(InvalidArgument):
        a.transfer_leadership("a")


# --- membership ---------------------------------------------------------------------------------


def test_learner_receives_log_but_does_not_vote_or_count() -> None:
    net = Network(ABC, learners=("d",))
    a = net.elect("a")
    net.propose("a", b"1")
    assert net.applied["d"] == [b"1"]
    d = net.nodes["d"]
    net.tick(["d"], times=100)
    assert d.role == Role.FOLLOWER  # a learner never campaigns
    net.isolate("b")
    net.isolate("c")
    a.propose(b"2")
    net.stabilize()
    assert a.commit < a.log.last_index  # a + learner d is not a majority of a, b, c


def test_add_learner_then_promote_to_voter() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1")
    net.add("d", conf=net.conf)
    a.propose_conf_change(ConfChange("add_learner", "d"))
    net.stabilize()
    net.tick(times=2)
    assert net.applied["d"] == [b"1"]
    assert "d" in a.conf.learners
    a.propose_conf_change(ConfChange("add_voter", "d"))
    net.stabilize()
    assert a.conf.voters == ("a", "b", "c", "d")
    assert net.nodes["d"].conf.voters == ("a", "b", "c", "d")
    net.isolate("c")
    net.propose("a", b"2")  # a, b, d are 3 of 4: still commits
    assert b"2" in net.applied["d"]


def test_remove_voter_changes_the_quorum() -> None:
    net = Network(("a", "b", "c", "d"))
    a = net.elect("a")
    a.propose_conf_change(ConfChange("remove", "d"))
    net.stabilize()
    assert a.conf.voters == ("a", "b", "c")
    assert "d" not in a.progress
    net.isolate("c")
    net.propose("a", b"x")  # a + b of a, b, c
    assert b"x" in net.applied["b"]


def test_one_membership_change_at_a_time() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    a.propose_conf_change(ConfChange("add_learner", "d"))
    with pytest.raises(ConfChangeInProgress):
        a.propose_conf_change(ConfChange("add_learner", "e"))


def test_membership_change_needs_a_commit_in_the_leaders_term() -> None:
    net = Network(ABC)
    net.elect("a")
    net.propose("a", b"1")
    # b wins the next election, but its no-op does not reach anybody.
    net.drop = lambda m: isinstance(m, Append)
    b = net.elect("b")
    with pytest.raises(ConfChangeInProgress, match="has not committed"):
        b.propose_conf_change(ConfChange("add_learner", "x"))
    net.drop = lambda m: False
    net.tick(["b"])
    assert b.log.term(b.commit) == b.term
    b.propose_conf_change(ConfChange("add_learner", "x"))


def test_leader_removing_itself_steps_down_after_commit() -> None:
    net = Network(ABC)
    a = net.elect("a")
    a.propose_conf_change(ConfChange("remove", "a"))
    net.stabilize()
    assert a.role == Role.FOLLOWER
    assert net.nodes["b"].conf.voters == ("b", "c")
    net.tick(["b", "c"], times=40)
    leader = net.leader()
    assert leader is not None and leader.id in ("b", "c")


def test_uncommitted_config_entry_is_reverted_when_truncated() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1")
    net.isolate("a")
    a.propose_conf_change(ConfChange("add_learner", "z"))
    net.stabilize()
    assert "z" in a.conf.learners  # effective as soon as appended
    net.elect("b")
    net.propose("b", b"2")
    net.heal()
    net.tick(times=3)
    assert "z" not in a.conf.learners  # the entry was overwritten, the change undone
    assert a.conf == net.nodes["b"].conf


def test_invalid_membership_changes_are_refused() -> None:
    net = Network(("a",))
    a = net.elect("a")
    with pytest.raises(InvalidArgument):
        a.propose_conf_change(ConfChange("remove", "a"))
    with pytest.raises(InvalidArgument):
        a.propose_conf_change(ConfChange("add_voter", "a"))
    with pytest.raises(InvalidArgument):
        a.propose_conf_change(ConfChange("remove", "nobody"))


# --- snapshots --------------------------------------------------------------------------------


def test_lagging_follower_catches_up_through_a_chunked_snapshot() -> None:
    net = Network(ABC, snapshot_chunk_bytes=1000)
    a = net.elect("a")
    net.isolate("c")
    net.propose("a", *[b"cmd%d" % i for i in range(20)])
    state = b"S" * 4500  # the "state machine" image at the applied index
    a.compact(a.applied, state)
    assert a.log.offset == a.applied
    net.heal()
    net.tick(times=5)
    chunks = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.to == "c"]
    assert len(chunks) == 5 and chunks[-1].done
    c = net.nodes["c"]
    assert net.disks["c"].snapshot is not None and net.disks["c"].snapshot.data == state
    assert c.log.offset == a.log.offset and c.commit >= a.log.offset
    net.propose("a", b"after")
    assert net.applied["c"][-1] == b"after"


def test_a_snapshot_damaged_on_the_way_is_never_installed_and_is_sent_again() -> None:
    import msgspec

    net = Network(ABC, snapshot_chunk_bytes=1000)
    a = net.elect("a")
    net.isolate("c")
    net.propose("a", *[b"cmd%d" % i for i in range(20)])
    state = bytes(range(256)) * 18
    a.compact(a.applied, state)
    damaged: list[InstallSnapshot] = []

    def flip_once(m: object) -> bool:
        if isinstance(m, InstallSnapshot) and m.to == "c" and m.offset == 2000 and not damaged:
            bad = msgspec.structs.replace(m, data=b"\xff" + m.data[1:])
            damaged.append(bad)
            net.queue.append(bad)  # delivered instead of the real one
            return True
        return False

    net.drop = flip_once  # type: ignore[assignment]
    net.heal()
    net.tick(times=20)
    assert damaged
    chunks = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.to == "c"]
    assert [m.offset for m in chunks].count(0) >= 2  # sent again from the start
    assert net.disks["c"].snapshot is not None and net.disks["c"].snapshot.data == state
    net.propose("a", b"after")
    assert net.applied["c"][-1] == b"after"


def test_a_file_snapshot_goes_out_and_comes_in_a_chunk_at_a_time(tmp_path: pathlib.Path) -> None:
    """The leader's image is a file it reads a chunk at a time; the follower
    writes each chunk to its own file (`FileSink`) and installs the file."""
    c_log = DurableLog(tmp_path / "c")
    c_log.open()
    net = Network(
        ABC,
        snapshot_chunk_bytes=64 * 1024,
        image_sink=lambda meta: FileSink(c_log, meta),
        read_image=read_image,
    )
    a = net.elect("a")
    net.isolate("c")
    net.propose("a", *[b"cmd%d" % i for i in range(20)])
    image = os.urandom(300_000)
    made = tmp_path / "a-image.db"
    made.write_bytes(image)
    assert a.compact(a.applied, file=made, checksum=image_checksum(image), size=len(image))
    assert not a.compact(a.applied, file=made, checksum=b"")  # nothing newer to compact
    net.heal()
    net.tick(times=10)
    chunks = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.to == "c"]
    assert len(chunks) == 5 and chunks[-1].done
    assert all(len(m.data) <= 64 * 1024 for m in chunks)
    installed = net.disks["c"].snapshot
    assert installed is not None and installed.file == c_log.image_path(a.log.offset, a.term)
    assert installed.file.read_bytes() == image
    net.propose("a", b"after")
    assert net.applied["c"][-1] == b"after"


def test_snapshot_not_installed_when_log_already_has_it() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1", b"2")
    c = net.nodes["c"]
    a.compact(a.applied, b"image")
    meta = a._snapshot.meta  # type: ignore[union-attr]
    c.step(InstallSnapshot("a", "c", a.term, meta=meta, offset=0, data=b"image", done=True))
    rd = c.ready()
    assert rd.snapshot is None
    c.advance(rd)


def test_restart_from_snapshot_and_remaining_entries() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"1", b"2")
    a.compact(a.applied, b"image")
    net.disks["a"].snapshot = a._snapshot
    net.disks["a"].entries = [e for e in net.disks["a"].entries if e.index > a.log.offset]
    net.propose("a", b"3")
    a = net.restart("a")
    assert a.log.offset == 3 and a.log.last_index == 4
    net.tick(times=40)
    assert net.leader() is not None
    assert_logs_match(net, ("b", "c"))


# --- structure ----------------------------------------------------------------------------------


def test_transition_table_is_respected() -> None:
    net = Network(ABC)
    a = net.nodes["a"]
    with pytest.raises(AssertionError, match="illegal Raft transition"):
        a._become(Role.LEADER)  # a follower cannot become leader without an election
    assert Role.LEADER not in TRANSITIONS[Role.FOLLOWER]
    assert TRANSITIONS[Role.LEADER] == {Role.FOLLOWER}


def test_raft_core_imports_no_io() -> None:
    banned = {"trio", "socket", "time", "os", "asyncio", "threading", "select"}
    root = pathlib.Path(__file__).parent.parent / "src" / "prismfs" / "raft"
    pure = ["core", "ready", "log", "progress", "quorum", "messages", "__init__"]
    for path in (root / f"{name}.py" for name in pure):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_entries_keep_their_identity_through_the_codec() -> None:
    from prismfs.wire.codec import decode_message, encode_message

    entry = Entry(3, 9, "config", b"\x00\x01")
    assert decode_message(encode_message(entry)) == entry


def test_pipeline_full_of_lost_appends_recovers_on_heartbeat() -> None:
    """A follower down while the leader filled its whole pipeline: once it is
    back, its heartbeat answer makes the leader probe and resend."""
    net = Network(ABC, max_inflight=4)
    a = net.elect("a")
    net.propose("a", b"0")
    net.drop = lambda m: m.to == "c" and isinstance(m, Append)
    for i in range(10):
        net.propose("a", b"%d" % (i + 1))
    assert a.progress["c"].paused(4)  # four Appends in flight, all lost
    net.drop = lambda m: False
    net.tick(["a"], times=3)
    assert net.applied["c"] == net.applied["a"]


def test_leader_that_removed_itself_and_stepped_down_does_not_deadlock_the_group() -> None:
    """Found by review: two voters, the leader appends its own removal, loses
    leadership before it commits; the old voter may still campaign, so the
    group elects a leader again."""
    net = Network(("a", "b"))
    a = net.elect("a")
    net.propose("a", b"x")
    net.isolate("b")
    a.propose_conf_change(ConfChange("remove", "a"))
    net.stabilize()
    net.tick(["a"], times=2 * a.cfg.election_ticks + 1)  # CheckQuorum: a steps down
    assert a.role == Role.FOLLOWER
    net.heal()
    net.tick(times=300)
    assert net.leader() is not None


# --- entries released from memory ------------------------------------------------------


def test_applied_entries_leave_memory_and_a_lagging_follower_gets_them_from_disk() -> None:
    """With `RaftConfig.read_entries`, entries both applied and persisted keep
    only their terms in memory; a follower that was cut off is sent them read
    back from the leader's disk, within the append byte budget, and ends
    with the same log and the same applied commands."""
    net = Network(ABC, read_back=True, max_append_bytes=3000)
    leader = net.elect("a")
    net.isolate("c")
    commands = [bytes([n]) * 1000 for n in range(60)]
    for command in commands:
        net.propose("a", command)
    net.stabilize()
    assert leader.commit == leader.applied == leader.log.last_index
    kept = [e for e in leader.log.entries if e.kind == "normal" and e.data]
    assert kept == []  # every applied entry's data left memory
    assert leader.log.released == leader.applied
    assert net.disks["a"].reads == 0  # no follower needed one yet
    net.heal()
    for _ in range(5):
        net.tick()
        net.stabilize()
    assert net.applied["c"] == net.applied["a"] and net.applied["c"][-60:] == commands
    assert net.disks["a"].reads >= 60
    # Read back a few at a time: no Append carried more than the budget (+1 entry).
    sizes = [
        sum(len(e.data) for e in m.entries)
        for m in net.sent
        if isinstance(m, Append) and m.to == "c" and m.entries
    ]
    assert sizes and max(sizes) <= 3000 + 1000
    full = {i: [(e.index, e.term, e.data) for e in net.nodes[i].log.slice(1, 62)] for i in ABC}
    assert full["a"] == full["b"] == full["c"]
    assert [data for _, _, data in full["a"] if data][-60:] == commands
