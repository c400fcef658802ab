"""Shared read leases with recall (`prismfs.meta.leases`): the rules one by one,
and the deterministic simulation (`prismfs.sim.leases`) over hundreds of seeds,
with each rule's planted violation caught by the linearizability checker."""

from __future__ import annotations

import math

import pytest

from prismfs.meta.leases import DRIFT, MAX_FLUSH_S, HeldLeases, LeaseTable
from prismfs.sim.leases import run_seed

SEEDS = 200
D = 2.0  # lease seconds


# --- the rules -------------------------------------------------------------------------------


def test_a_change_waits_for_every_unanswered_holder_and_for_nobody_who_answered() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0  # (blindness has its own test)
    g1 = t.grant("k", "a", now=1.0)
    g2 = t.grant("k", "b", now=1.5)
    assert g1 is not None and g2 is not None and g1 < g2
    recall = t.begin_change("k", "w", now=2.0)
    assert recall == {"a": g1, "b": g2}
    assert t.grant("k", "c", now=2.1) is None  # no grants while the change is pending
    t.recalled("k", "a", g1)
    # b never answers: its lease surely ended D(1 + drift) after its grant
    assert t.ready_at("k", now=2.2) == pytest.approx(1.5 + D * (1 + DRIFT))
    t.recalled("k", "b", g2)
    assert t.ready_at("k", now=2.3) == 2.3
    t.end_change("k")
    assert t.grant("k", "c", now=2.4) is not None


def test_the_writers_own_lease_is_not_recalled_and_expired_ones_are_forgotten() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    t.grant("k", "w", now=1.0)
    t.grant("k", "old", now=1.0)
    assert t.begin_change("k", "w", now=1.0 + D * (1 + DRIFT) + 0.01) == {}
    assert t.holders("k") == set()


def test_a_new_leader_applies_no_change_until_every_old_lease_has_ended() -> None:
    t = LeaseTable(D)
    t.start(term=2, now=100.0)
    t.begin_change("k", "w", now=100.0)
    assert t.ready_at("k", now=100.5) == pytest.approx(100.0 + D * (1 + DRIFT))
    # its grants rank above every grant of the term before
    gid = t.grant("other", "a", now=101.0)
    assert gid is not None and gid > (1, 10**9)


def test_a_holder_counts_its_lease_from_the_request_and_stops_before_the_leader_stops_waiting() -> (
    None
):
    # Clock rates at the allowed extremes: the holder's clock slow, the leader's
    # fast. The read is sent at real time 0, granted at 0.1, answered at 0.9;
    # the holder is then cut off, so only the lease's end lets a change through.
    slow, fast = 1 - DRIFT * 0.99, 1 + DRIFT * 0.99
    held, table = HeldLeases(), LeaseTable(D)
    table.start(term=1, now=0.0)
    table.blind_until = 0.0
    gid = table.grant("k", "h", now=0.1 * fast)
    assert gid is not None
    mark = held.mark("k")
    assert held.granted("k", "old", gid, D, sent_at=0.0 * slow, mark=mark)
    table.begin_change("k", "w", now=0.2 * fast)
    applied_at = table.ready_at("k", now=0.2 * fast) / fast  # real time
    last_use = max(t / 1000 for t in range(0, 5000) if held.get("k", (t / 1000) * slow)[0])
    assert last_use < applied_at
    # Counted from the answer (0.9 s later), the copy would outlive the wait.
    assert 0.9 + D * (1 - DRIFT) / slow > applied_at


def test_a_grant_the_holder_got_after_its_recall_is_not_kept() -> None:
    held = HeldLeases()
    held.recall("k", (1, 5))  # the recall overtook the read's answer
    assert not held.granted("k", "old", (1, 5), D, sent_at=0.0, mark=held.mark("k"))
    assert held.get("k", 0.1) == (False, None)
    assert held.granted("k", "new", (1, 6), D, sent_at=0.0, mark=held.mark("k"))
    assert held.get("k", 0.1) == (True, "new")
    held.recall("k", (1, 6))
    assert held.get("k", 0.2) == (False, None)


def test_a_read_that_overlapped_a_change_of_the_same_mount_leaves_no_copy() -> None:
    held = HeldLeases()
    assert held.granted("k", "v0", (1, 1), D, sent_at=0.0, mark=held.mark("k"))
    before = held.mark("k")  # a read sent just before the change
    held.changing("k")
    assert held.get("k", 0.1) == (False, None)  # the own copy is old now
    during = held.mark("k")
    assert not held.granted("k", "v0", (1, 2), D, sent_at=0.1, mark=during)  # in flight
    held.changed("k")
    assert not held.granted("k", "v0", (1, 3), D, sent_at=0.0, mark=before)
    assert not held.granted("k", "v0", (1, 4), D, sent_at=0.1, mark=during)
    assert held.granted("k", "v1", (1, 5), D, sent_at=0.3, mark=held.mark("k"))


def test_a_holder_asking_again_keeps_its_grant_until_a_change() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g1 = t.grant("k", "a", now=1.0)
    assert t.grant("k", "a", now=1.5) == g1  # nothing changed: the same lease, longer
    assert t.ready_at("k", now=1.6) == pytest.approx(1.5 + D * (1 + DRIFT))
    t.begin_change("k", "w", now=1.7)
    t.recalled("k", "a", g1)  # type: ignore[arg-type]
    t.end_change("k", "w", now=1.8)
    g2 = t.grant("k", "a", now=1.9)
    assert g2 is not None and g1 is not None and g2 > g1
    # the holder adds what it learns under one id to what it holds
    held = HeldLeases()
    assert held.granted("k", {"x": 1}, g2, D, 1.85, held.mark("k"))
    assert held.granted("k", {"y": 2}, g2, D, 1.95, held.mark("k"), merge=lambda a, b: {**a, **b})  # type: ignore[dict-item]
    assert held.get("k", 2.0) == (True, {"x": 1, "y": 2})


def test_a_writer_keeps_its_lease_through_its_change_only_if_nothing_came_between() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g1 = t.grant("k", "w", now=1.0)
    assert g1 is not None
    assert t.begin_change("k", "w", now=1.1) == {}
    continued = t.end_change("k", "w", now=1.2)
    assert continued is not None and continued[0] == g1 and continued[1] > g1
    assert t.holders("k") == {"w"}
    # expired before the change began: nothing to continue
    t.begin_change("k", "w", now=1.2 + D * (1 + DRIFT) + 0.1)
    assert t.end_change("k", "w", now=5.0) is None
    # another change pending when it began: that one may have changed the key
    t.grant("k", "w", now=6.0)
    t.begin_change("k", "other", now=6.1)
    t.begin_change("k", "w", now=6.2)
    t.end_change("k", "other", now=6.3)
    assert t.end_change("k", "w", now=6.4) is None
    # an abandoned change continues nothing
    t.grant("k", "w", now=7.0)
    t.begin_change("k", "w", now=7.1)
    assert t.end_change("k") is None


def test_a_writer_applies_its_change_only_to_the_copy_of_the_continued_grant() -> None:
    append = lambda old: old + "+1"  # noqa: E731
    held = HeldLeases()
    held.granted("k", "v", (1, 1), D, sent_at=0.0, mark=held.mark("k"))
    held.changing("k")
    assert held.get("k", 0.1) == (False, None)  # not used while the change is on its way
    assert held.changed("k", ((1, 1), (1, 2)), append, D, sent_at=0.1)
    assert held.get("k", 0.2) == (True, "v+1")
    # a continuation of another grant than the one held drops the copy
    held.changing("k")
    assert not held.changed("k", ((1, 9), (1, 10)), append, D, sent_at=0.2)
    assert held.get("k", 0.3) == (False, None)
    # so does a continuation a recall already covered (messages reordered)
    held.granted("k", "w", (1, 11), D, sent_at=0.3, mark=held.mark("k"))
    held.changing("k")
    held.recall("k", (1, 12))
    assert not held.changed("k", ((1, 11), (1, 12)), append, D, sent_at=0.3)
    assert held.get("k", 0.4) == (False, None)


# --- the simulation ---------------------------------------------------------------------


def test_many_seeds_stay_linearizable_under_every_fault() -> None:
    local = recalls = changes = crashed = continued = 0
    for seed in range(SEEDS):
        result = run_seed(seed)
        assert result.linearizable, f"seed {seed}: not linearizable"
        local += result.local_reads
        recalls += result.recalls
        continued += result.continued
        changes += result.leader_changes
        crashed += sum(1 for op in result.history if op.ret == math.inf)
    # The runs exercised what they are about.
    assert local > 10 * SEEDS and recalls > 10 * SEEDS and continued > 10 * SEEDS
    assert changes > SEEDS and crashed > SEEDS


@pytest.mark.parametrize(
    "bug",
    ["no_recall", "no_grant_ids", "own_change_race", "no_blind", "continue_any_copy"],
)
def test_each_planted_violation_is_caught(bug: str) -> None:
    caught = any(not run_seed(s, bugs=frozenset({bug})).linearizable for s in range(40))
    assert caught, f"{bug}: no seed of 40 caught it"


def test_ignoring_clock_drift_is_caught() -> None:
    # Rarer: it needs a holder cut off right after its grant and a read of its
    # copy in the few hundred milliseconds the rates open up.
    assert any(not run_seed(s, bugs=frozenset({"no_drift"})).linearizable for s in range(100))


def test_a_seed_replays_exactly() -> None:
    a, b = run_seed(7), run_seed(7)
    assert a.history == b.history and a.ops > 100


# --- delegations (exclusive leases) and write-back ------------------------------------------

WB = {"writeback": True, "keys": 5, "affinity": 0.9}


def test_only_a_sole_holder_gets_a_delegation_and_others_must_recall_it_first() -> None:
    t = LeaseTable(D, pingpong_s=4.0)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g = t.grant("k", "a", now=1.0, exclusive=True)
    assert g is not None and t.delegate_of("k", 1.1) == "a"
    assert t.grant("k", "b", now=1.2) is None  # b must recall a first
    assert t.begin_read("k", "a", now=1.2) is None  # the delegate reads its own key
    recall = t.begin_read("k", "b", now=1.3)
    assert recall == {"a": g}
    assert t.ready_at("k", now=1.4) > 1.4  # until a acknowledges (after its flush)
    assert t.delegate_of("k", 1.4) == "a"  # its flush is still taken meanwhile
    t.recalled("k", "a", g)
    assert t.delegate_of("k", 1.5) is None and t.ready_at("k", now=1.5) == 1.5
    t.end_change("k", None, now=1.5)
    # the conflict makes the key shared for pingpong_s: no ping-pong
    assert t.grant("k", "b", now=1.6, exclusive=True) is not None
    assert t.delegate_of("k", 1.6) is None
    assert t.grant("k", "a", now=1.7, exclusive=True) is not None
    assert t.delegate_of("k", 1.7) is None
    # two holders: nobody gets it exclusive, even after the ping-pong time
    t.grant("k", "a", now=5.9)
    t.grant("k", "b", now=6.0, exclusive=True)
    assert t.delegate_of("k", 6.0) is None
    # alone again once a's lease surely ended
    t.grant("k", "b", now=5.9 + D * (1 + DRIFT) + 0.1, exclusive=True)
    assert t.delegate_of("k", 8.2) == "b"


def test_a_delegation_ends_when_its_lease_surely_ended_and_a_change_recalls_it() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g = t.grant("k", "a", now=1.0, exclusive=True)
    assert t.delegate_of("k", 1.0 + D * (1 + DRIFT) - 0.01) == "a"
    assert t.delegate_of("k", 1.0 + D * (1 + DRIFT) + 0.01) is None
    g = t.grant("k", "a", now=5.0, exclusive=True)
    assert t.begin_change("k", "w", now=5.1) == {"a": g}
    assert t.delegate_of("k", 5.2) == "a"  # until it acknowledged
    t.recalled("k", "a", g)  # type: ignore[arg-type]
    assert t.delegate_of("k", 5.3) is None


def test_a_delegates_own_change_leaves_its_unflushed_changes_flushable_until_another_comes() -> (
    None
):
    """A mount sends a change of a directory it holds delegated the usual
    way (changes of an earlier leader's delegation sent again): that ends
    the delegation, but what it made under it and has not flushed yet still
    applies, until somebody else reads or changes the directory. (A flush
    refused there lost closed files when leaders changed under a writer.)"""
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g = t.grant("k", "a", now=1.0, exclusive=True)
    assert g is not None and t.delegate_of("k", 1.0) == "a"
    assert t.begin_change("k", "a", now=1.1) == {}  # its own: nobody to recall
    assert t.delegate_of("k", 1.2) is None
    assert t.flushable("k", "a", g, now=1.2)  # while its own change is pending
    t.end_change("k", "a", now=1.3, exclusive=True)
    assert t.flushable("k", "a", g, now=1.4)
    assert not t.flushable("k", "b", g, now=1.4)
    # Delegated again, and ended again by its own change: both still flush.
    g2 = t.grant("k", "a", now=1.5, exclusive=True)
    assert g2 is not None and g2 != g and t.delegate_of("k", 1.5) == "a"
    t.begin_change("k", "a", now=1.6)
    t.end_change("k", "a", now=1.7)
    assert t.flushable("k", "a", g, now=1.8) and t.flushable("k", "a", g2, now=1.8)
    t.touch("k", "b", now=1.9)  # somebody else reads it at the leader
    assert not t.flushable("k", "a", g, now=2.0)
    assert not t.flushable("k", "a", g2, now=2.0)

    # Somebody else's change ends it too, at its start or, begun before, at its end.
    g = t.grant("j", "a", now=3.0, exclusive=True)
    assert g is not None
    assert t.begin_change("j", "b", now=3.1) == {"a": g}  # recalls a
    assert t.begin_change("j", "a", now=3.2) == {}
    assert t.flushable("j", "a", g, now=3.3)  # recalled, not acknowledged: still counts
    t.end_change("j", "b", now=3.4)
    assert not t.flushable("j", "a", g, now=3.5)
    g = t.grant("i", "a", now=4.0, exclusive=True)
    assert g is not None
    t.begin_change("i", "a", now=4.1)
    t.begin_change("i", "b", now=4.2)
    assert not t.flushable("i", "a", g, now=4.3)


def test_a_holder_writes_back_only_under_an_exclusive_lease_with_time_to_flush() -> None:
    held = HeldLeases()
    assert held.granted("k", "v", (1, 1), D, sent_at=0.0, mark=held.mark("k"))
    assert not held.delegated("k", 0.1)  # shared
    assert held.granted("k", "v", (1, 1), D, 0.5, held.mark("k"), exclusive=True)
    assert held.delegated("k", 0.6, margin=0.5)
    held.write_local("k", lambda old: old + "+1")
    assert held.get("k", 0.7) == (True, "v+1")
    until = 0.5 + D * (1 - DRIFT)
    assert not held.delegated("k", until - 0.4, margin=0.5)  # too late to flush in time
    held.changing("k")  # a change of its own the synchronous way
    assert not held.delegated("k", 0.8)


def test_many_seeds_with_write_back_stay_linearizable_and_lose_only_suffixes() -> None:
    written = lost = local = recalls = 0
    for seed in range(SEEDS):
        # every other seed flushes in parts, slowly (delegations recalled
        # while their flushes go on are kept meanwhile)
        slow = {"flush_part": 1, "flush_pause": 0.1} if seed % 2 else {}
        result = run_seed(seed, **WB, **slow)  # type: ignore[arg-type]
        assert result.linearizable, f"seed {seed}: not linearizable"
        assert result.prefix, f"seed {seed}: a mount lost more than a suffix"
        written += result.written_back
        lost += result.lost
        local += result.local_reads
        recalls += result.recalls
    # Delegations were used a lot, recalled a lot, and faults (crashes,
    # cuts, leader changes) lost some written-back changes.
    assert written > 50 * SEEDS and recalls > 50 * SEEDS and local > 100 * SEEDS
    assert 0 < lost < written / 4


def test_without_faults_nothing_written_back_is_lost() -> None:
    written = 0
    for seed in range(20):
        result = run_seed(seed, faults=False, duration=10.0, **WB)  # type: ignore[arg-type]
        assert result.linearizable and result.prefix
        assert result.lost == 0, f"seed {seed}: lost {result.lost} without a fault"
        written += result.written_back
    assert written > 20 * 50


def test_a_recalled_delegate_flushing_in_parts_keeps_its_delegation_meanwhile() -> None:
    # Each part waits 0.3 s behind the one before (a mount uploading data
    # between batches): a flush of a few parts outlasts the lease left at
    # the recall. Kept while its parts come, nothing is lost without a
    # fault; without that rule, the leader refuses the rest.
    slow = {"flush_part": 1, "flush_pause": 0.3}
    kept = lost = 0
    for seed in range(20):
        result = run_seed(seed, faults=False, duration=10.0, **WB, **slow)  # type: ignore[arg-type]
        assert result.linearizable and result.prefix
        assert result.lost == 0, f"seed {seed}: lost {result.lost} without a fault"
        kept += result.written_back
        bug = frozenset({"no_flush_extension"})
        lost += run_seed(seed, faults=False, duration=10.0, bugs=bug, **WB, **slow).lost  # type: ignore[arg-type]
    assert kept > 20 * 30 and lost > 0


def test_a_recalled_delegation_lasts_while_its_holder_flushes_up_to_a_bound() -> None:
    t = LeaseTable(D)
    t.start(term=1, now=0.0)
    t.blind_until = 0.0
    g = t.grant("k", "a", now=1.0, exclusive=True)
    t.grant("j", "a", now=1.0, exclusive=True)
    end = 1.0 + D * (1 + DRIFT)
    t.flushing("a", now=1.5)  # not recalled: its own renewals keep it
    assert t.delegate_of("k", end + 0.01) is None
    g = t.grant("k", "a", now=5.0, exclusive=True)
    assert t.begin_read("k", "b", now=5.1) == {"a": g}
    end = 5.0 + D * (1 + DRIFT)
    assert t.ready_at("k", now=5.2) == end
    t.flushing("a", now=end - 0.1)  # a batch of its flush (of any directory)
    assert t.delegate_of("k", end + 0.5) == "a"
    assert t.flushable("k", "a", g, end + 0.5)  # type: ignore[arg-type]
    assert t.ready_at("k", now=end) == end - 0.1 + D * (1 + DRIFT)
    # the other delegation, not recalled, is not made longer
    assert t.delegate_of("j", 1.0 + D * (1 + DRIFT) + 0.01) is None
    # at most MAX_FLUSH_S after the recall began
    at = end - 0.1
    while at < 5.1 + MAX_FLUSH_S + 5:
        t.flushing("a", now=at)
        at += 1.0
    assert t.delegate_of("k", 5.1 + MAX_FLUSH_S + 0.01) is None
    # a flush after the lease ran out revives nothing; the acknowledgement ends it
    t.end_change("k", None, now=100.0)
    g = t.grant("k", "a", now=100.0, exclusive=True)
    assert t.begin_read("k", "b", now=100.1) == {"a": g}
    t.recalled("k", "a", g)  # type: ignore[arg-type]
    t.flushing("a", now=100.2)
    assert t.delegate_of("k", 100.2) is None and t.ready_at("k", 100.2) == 100.2
    assert not t._recalling  # (an acknowledged recall is not kept)


@pytest.mark.parametrize(
    ("bug", "faults"),
    [("no_read_recall", False), ("no_recall", False), ("late_flush", True)],
)
def test_each_planted_write_back_violation_is_caught(bug: str, faults: bool) -> None:
    caught = any(
        not run_seed(s, bugs=frozenset({bug}), faults=faults, duration=10.0, **WB).linearizable  # type: ignore[arg-type]
        for s in range(40)
    )
    assert caught, f"{bug}: no seed of 40 caught it"


def test_acknowledging_a_recall_before_flushing_loses_changes_without_any_fault() -> None:
    # The leader then refuses the late flush (the rule that keeps others
    # linearizable), so the mistake shows as loss where nothing failed.
    lost = sum(
        run_seed(s, faults=False, duration=10.0, bugs=frozenset({"ack_before_flush"}), **WB).lost  # type: ignore[arg-type]
        for s in range(5)
    )
    assert lost > 0


def test_a_new_leader_delegates_nothing_while_blind() -> None:
    # It does not know the old leader's shared leases: a delegation now would
    # let one mount change a directory another still reads from its copy.
    t = LeaseTable(D)
    t.start(term=2, now=100.0)
    assert t.grant("k", "a", now=101.0, exclusive=True) is not None
    assert t.delegate_of("k", 101.0) is None
    assert t.grant("k", "a", now=100.0 + D * (1 + DRIFT) + 0.01, exclusive=True) is not None
    assert t.delegate_of("k", 102.3) == "a"
