"""The Raft core: a pure state machine driven by ticks and messages.

Theory of operation. `RaftNode` implements Raft as in the extended paper and
Ongaro's thesis: leader election with randomized timeouts, PreVote (thesis
§9.6) and CheckQuorum; log replication with batching, pipelining and
conflict-term backtracking; commitment only of current-term entries by
counting (§5.4.2); ReadIndex (§6.4); leadership transfer (§3.10); learners
and single-server membership changes that take effect when appended (§4.1);
snapshots sent in chunks.

It does no I/O and reads no clock. The driver:

1. calls `tick()` at a fixed interval, `step(msg)` for each message received,
   and `propose`, `propose_conf_change`, `read_index`,
   `transfer_leadership`, `compact` on behalf of users;
2. when `has_ready()`, takes `ready()`, and carries it out **in this order**:
   persist the snapshot, then the entries (truncating the durable log from
   ``entries[0].index`` first), then the hard state, with fsync; then send the
   messages; then restore the snapshot and apply the committed entries; then
   calls `advance(ready)`. Nothing else may be called between `ready()` and
   `advance()`.

Roles are step functions chosen by `self._role`; legal role changes are the
`TRANSITIONS` table, which `_become` enforces.

The leader counts its own log toward commitment only once `advance`
reports it persisted, so a committed entry is always on a majority of disks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prismfs.errors import ConfChangeInProgress, InvalidArgument, LeadershipTransfer, NotLeader
from prismfs.raft.log import RaftLog
from prismfs.raft.messages import (
    Append,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    Vote,
    VoteResponse,
    image_checksum,
)
from prismfs.raft.progress import Progress
from prismfs.raft.quorum import committed_index, has_quorum, vote_result
from prismfs.raft.ready import (
    TRANSITIONS,
    ImageSink,
    MemorySink,
    RaftConfig,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from prismfs.wire.codec import decode_message, encode_message


@dataclass
class _PendingRead:
    context: int
    index: int
    requester: str
    acks: set[str]


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    voters = [v for v in conf.voters if v != change.node]
    learners = [n for n in conf.learners if n != change.node]
    book = dict(conf.addresses)
    if change.op == "add_voter":
        voters.append(change.node)
    elif change.op in ("add_learner", "demote"):
        learners.append(change.node)
    if change.op == "remove":
        book.pop(change.node, None)
    elif change.address:
        book[change.node] = change.address
    return ConfState(tuple(voters), tuple(learners), tuple(sorted(book.items())))


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        *,
        conf: ConfState,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | tuple[Entry, ...] = (),
    ) -> None:
        """Start from what the driver restored from disk (or a fresh bootstrap ``conf``)."""
        self.cfg = config
        self.id = config.node_id
        self._rng = rng
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        base = snapshot.meta if snapshot else SnapshotMeta(0, 0, conf)
        self.log = RaftLog(base.index, base.term, entries, loader=config.read_entries)
        self._snapshot = snapshot
        # A commit index beyond the log would claim entries this node does not
        # hold; never trust it past what is on disk.
        self.commit = min(max(hs.commit, base.index), max(base.index, self.log.last_index))
        self.applied = base.index
        if self.log.last_term > self.term:
            # A crash between writing entries and the hard state: the log shows
            # a leader of a later term existed, so that term is safe to adopt
            # (any vote cast in it was never sent, having not been persisted).
            self.term, self.vote = self.log.last_term, ""
        self.stable = self.log.last_index
        self._persist_from = self.stable + 1
        self._persisted_hs = hs
        self._conf_history: list[tuple[int, ConfState]] = [(base.index, base.conf)]
        self._scan_conf(base.index + 1)
        self.leader = ""
        self._role = Role.FOLLOWER
        self._step: Callable[[RaftMessage], None] = self._step_follower
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self._transferee = ""
        self._reads: list[_PendingRead] = []
        self._reads_waiting: list[tuple[int, str]] = []
        self._incoming_snapshot: tuple[SnapshotMeta, ImageSink] | None = None
        self._pending_snapshot: Snapshot | None = None
        self._msgs: list[RaftMessage] = []
        self._read_states: list[ReadState] = []
        self._append_dirty = False
        self._read_round = False  # reads wait for a heartbeat round (one for all of them)
        self._heartbeat_seq = 0  # heartbeat broadcasts of this leadership
        self._lease_void = False  # a TimeoutNow went out in this term: no lease any more
        self._quiet_ticks = config.election_ticks if config.lease else 0

    # --- views -------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot this node holds (made by `compact` or installed)."""
        return self._snapshot

    @property
    def conf(self) -> ConfState:
        return self._conf_history[-1][1]

    @property
    def promotable(self) -> bool:
        # A voter of the last *committed* membership may still campaign even if
        # an uncommitted entry removes it: otherwise a leader that removed
        # itself and then lost leadership before that entry committed could
        # leave the rest unable to elect anyone (the old membership still
        # needs its vote). Its own vote counts only where it is a voter.
        return self.id in self.conf.voters or self.id in self.conf_at(self.commit).voters

    def _committed_in_term(self) -> bool:
        return self.log.term(self.commit) == self.term

    @property
    def lease_seq(self) -> int:
        """The latest heartbeat broadcast (its ``seq``) that a quorum of voters
        acknowledged, while a lease may rest on it; 0 when none may.

        The driver keeps when it sent each broadcast; a leader whose newest
        acknowledged broadcast left less than a lease ago (an election
        timeout, less the clock-rate drift allowed) may answer reads from its
        state without a round (thesis 6.4.1): every voter that acknowledged
        refuses to vote for another candidate until an election timeout after
        it heard from this leader, so no other leader can exist yet. Not
        before this leader committed an entry of its term (its commit index
        is current only then), not while a membership change is uncommitted,
        and never again in this term once it sent TimeoutNow (a transfer
        campaign is exempt from that refusal)."""
        if (
            not self.cfg.lease
            or self._role != Role.LEADER
            or self._lease_void
            or not self._committed_in_term()
            or self._conf_history[-1][0] > self.commit
        ):
            return 0
        acked = {peer: pr.heartbeat_acked for peer, pr in self.progress.items()}
        acked[self.id] = self._heartbeat_seq
        return committed_index(self.conf.voters, acked)

    def conf_at(self, index: int) -> ConfState:
        found = self._conf_history[0][1]
        for at, conf in self._conf_history:
            if at <= index:
                found = conf
        return found

    # --- driver inputs ---------------------------------------------------------

    def tick(self) -> None:
        if self._quiet_ticks:
            self._quiet_ticks -= 1
        if self._role == Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self.promotable and self._election_elapsed >= self._timeout:
            self._election_elapsed = 0
            self._campaign("pre" if self.cfg.pre_vote else "real")

    def step(self, m: RaftMessage) -> None:
        if m.to != self.id:
            return
        if m.term > self.term:
            if isinstance(m, Vote):
                in_lease = (
                    self.cfg.check_quorum
                    and self.leader != ""
                    and self._election_elapsed < self.cfg.election_ticks
                ) or self._quiet_ticks > 0
                if in_lease and not m.transfer:
                    return  # a live leader exists: do not let a stray candidate disrupt it
            if isinstance(m, Vote) and m.pre:
                pass  # PreVote never changes our term
            elif isinstance(m, VoteResponse) and m.pre and not m.reject:
                pass  # granted pre-votes carry the future term
            else:
                lead = m.frm if isinstance(m, (Append, Heartbeat, InstallSnapshot)) else ""
                self._become_follower(m.term, lead)
        elif m.term < self.term:
            if isinstance(m, (Append, Heartbeat)) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # Tell a stale leader our term so it steps down; without this a
                # leader partitioned away could never learn it was replaced.
                self._send(AppendResponse(self.id, m.frm, self.term, index=0, reject=False))
            elif isinstance(m, Vote) and m.pre:
                self._send(VoteResponse(self.id, m.frm, self.term, reject=True, pre=True))
            return
        if isinstance(m, Vote):
            self._handle_vote(m)
        else:
            self._step(m)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its log index (the driver maps results by it)."""
        return self._propose_entry("normal", data)

    def propose_conf_change(self, change: ConfChange) -> int:
        if self._role != Role.LEADER:
            raise NotLeader("not the leader", leader=self.leader or None)
        if self._conf_history[-1][0] > self.commit:
            raise ConfChangeInProgress("the previous membership change is not committed yet")
        if not self._committed_in_term():
            raise ConfChangeInProgress("the new leader has not committed an entry in its term yet")
        conf = self.conf
        if change.op == "add_voter" and change.node in conf.voters:
            raise InvalidArgument(f"{change.node} is already a voter")
        if change.op == "add_learner" and change.node in conf.members():
            raise InvalidArgument(f"{change.node} is already a member")
        if change.op == "demote" and change.node not in conf.voters:
            raise InvalidArgument(f"{change.node} is not a voter")
        if change.op == "demote" and conf.voters == (change.node,):
            raise InvalidArgument("cannot demote the last voter")
        if change.op == "remove":
            if change.node not in conf.members():
                raise InvalidArgument(f"{change.node} is not a member")
            if conf.voters == (change.node,):
                raise InvalidArgument("cannot remove the last voter")
        return self._propose_entry("config", encode_message(change))

    def read_index(self, context: int) -> None:
        """Ask for a linearizable read point; answered as a `ReadState` in a Ready."""
        if self._role == Role.LEADER:
            self._leader_read(context, self.id)
        elif self.leader:
            self._send(ReadIndexRequest(self.id, self.leader, self.term, context=context))
        else:
            raise NotLeader("no leader known", leader=None)

    def transfer_leadership(self, target: str) -> None:
        if self._role != Role.LEADER:
            raise NotLeader("not the leader", leader=self.leader or None)
        if target == self.id or target not in self.conf.voters:
            raise InvalidArgument(f"cannot transfer leadership to {target!r}")
        self._transferee = target
        self._election_elapsed = 0  # the transfer must finish within one election timeout
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def compact(
        self,
        index: int,
        data: bytes = b"",
        *,
        file: Path | None = None,
        checksum: bytes = b"",
        size: int = 0,
    ) -> bool:
        """The driver snapshotted the state machine at ``index`` (<= applied):
        its image is ``data``, or the file ``file`` of ``size`` bytes whose
        ``checksum`` the driver computed (off the event loop). False if the log already starts
        at or after ``index`` (a newer snapshot came first): nothing changes."""
        if index > self.applied:
            raise InvalidArgument(f"cannot snapshot at {index}, applied is {self.applied}")
        if index <= self.log.offset:
            return False
        term = self.log.term(index)
        assert term is not None
        if file is None:
            checksum = image_checksum(data)
        meta = SnapshotMeta(index, term, self.conf_at(index), checksum)
        self._snapshot = Snapshot(meta, data, file, size)
        self.log.compact(index)
        keep = [(at, c) for at, c in self._conf_history if at > index]
        self._conf_history = [(index, self.conf_at(index)), *keep]
        return True

    # --- ready / advance ---------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._read_round
            or self._read_states
            or self._pending_snapshot
            or self._append_dirty
            or self._persist_from <= self.log.last_index
            or HardState(self.term, self.vote, self.commit) != self._persisted_hs
            or self.applied < min(self.commit, self.log.last_index)
        )

    def ready(self) -> Ready:
        if self._read_round:
            # One heartbeat round confirms leadership for every read registered so far.
            self._read_round = False
            if self._role == Role.LEADER and self._reads:
                self._broadcast_heartbeat(self._reads[-1].context)
        if self._append_dirty:
            self._append_dirty = False
            if self._role == Role.LEADER:
                for peer in self.progress:
                    while self._send_append(peer, allow_empty=False):
                        pass
        hs = HardState(self.term, self.vote, self.commit)
        entries = (
            self.log.slice(self._persist_from, self.log.last_index + 1)
            if self._persist_from <= self.log.last_index
            else []
        )
        start = max(self.applied, self.log.offset) + 1
        end = min(self.commit, self.log.last_index)
        rd = Ready(
            hard_state=hs if hs != self._persisted_hs else None,
            entries=entries,
            snapshot=self._pending_snapshot,
            messages=self._msgs,
            committed=self.log.slice(start, end + 1) if end >= start else [],
            read_states=self._read_states,
            role=self._role,
            leader=self.leader,
        )
        self._msgs = []
        self._read_states = []
        self._pending_snapshot = None
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.applied = max(self.applied, rd.snapshot.meta.index)
            self.stable = max(self.stable, rd.snapshot.meta.index)
        if rd.entries:
            self.stable = rd.entries[-1].index
            self._persist_from = self.stable + 1
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        # Applied and on disk: no longer needed in memory (read back for a
        # follower that lags, through RaftConfig.read_entries).
        self.log.release(min(self.applied, self.stable))
        if self._role == Role.LEADER:
            # The followers learn the new commit index from the next Append or
            # heartbeat (at most ``heartbeat_ticks`` later): no round of its own.
            self._maybe_commit()

    # --- roles -------------------------------------------------------------------

    def _become(self, role: Role) -> None:
        if role not in TRANSITIONS[self._role]:
            raise AssertionError(f"illegal Raft transition {self._role.value} -> {role.value}")
        self._role = role
        self._step = {
            Role.FOLLOWER: self._step_follower,
            Role.PRE_CANDIDATE: self._step_candidate,
            Role.CANDIDATE: self._step_candidate,
            Role.LEADER: self._step_leader,
        }[role]

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.leader = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes = {}
        self._transferee = ""
        self._reads = []
        self._reads_waiting = []
        self._read_round = False
        self._heartbeat_seq = 0
        self._lease_void = False

    def _become_follower(self, term: int, leader: str) -> None:
        self._become(Role.FOLLOWER)
        self._reset(term)
        self.leader = leader
        self.progress = {}

    def _campaign(self, kind: str) -> None:
        """kind: "pre" (PreVote round), "real", or "transfer" (after TimeoutNow)."""
        if kind == "pre":
            self._become(Role.PRE_CANDIDATE)
            self._election_elapsed = 0
            self._timeout = self._random_timeout()
            self.leader = ""
            vote_term = self.term + 1
        else:
            self._become(Role.CANDIDATE)
            self._reset(self.term + 1)
            self.vote = self.id
            vote_term = self.term
        self._votes = {self.id: True}
        if vote_result(self.conf.voters, self._votes):
            if kind == "pre":
                self._campaign("real")
            else:
                self._become_leader()
            return
        for voter in self.conf.voters:
            if voter != self.id:
                self._send(
                    Vote(
                        self.id,
                        voter,
                        vote_term,
                        last_index=self.log.last_index,
                        last_term=self.log.last_term,
                        pre=kind == "pre",
                        transfer=kind == "transfer",
                    )
                )

    def _become_leader(self) -> None:
        self._become(Role.LEADER)
        self._reset(self.term)
        self.leader = self.id
        self.progress = {}
        self._sync_progress()
        for pr in self.progress.values():
            pr.recent_active = True
        # A no-op entry of the new term lets the leader commit (and so learn the
        # commit index and serve reads) without waiting for a client write.
        self.log.append([Entry(self.term, self.log.last_index + 1, "noop")])
        self._append_dirty = True

    def _handle_vote(self, m: Vote) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == "" and self.leader == "")
            or (m.pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(self.id, m.frm, m.term, reject=False, pre=m.pre))
            if not m.pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(self.id, m.frm, self.term, reject=True, pre=m.pre))

    def _step_follower(self, m: RaftMessage) -> None:
        if isinstance(m, (Append, Heartbeat, InstallSnapshot)):
            self._election_elapsed = 0
            self.leader = m.frm
            if isinstance(m, Append):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self.commit = max(self.commit, min(m.commit, self.log.last_index))
                self._send(
                    HeartbeatResponse(self.id, m.frm, self.term, context=m.context, seq=m.seq)
                )
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.promotable:
                self._campaign("transfer")
        elif isinstance(m, ReadIndexResponse):
            self._read_states.append(ReadState(m.context, m.index))

    def _step_candidate(self, m: RaftMessage) -> None:
        if isinstance(m, (Append, Heartbeat, InstallSnapshot)):
            # A leader of our term exists (§5.2): give up and follow it.
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            if m.pre != (self._role == Role.PRE_CANDIDATE):
                return
            self._votes[m.frm] = not m.reject
            result = vote_result(self.conf.voters, self._votes)
            if result is True:
                if self._role == Role.PRE_CANDIDATE:
                    self._campaign("real")
                else:
                    self._become_leader()
            elif result is False:
                self._become_follower(self.term, "")

    def _step_leader(self, m: RaftMessage) -> None:
        pr = self.progress.get(m.frm)
        if isinstance(m, ReadIndexRequest):
            if pr is not None:
                self._leader_read(m.context, m.frm)
            return
        if pr is None:
            return
        pr.recent_active = True
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            pr.heartbeat_acked = max(pr.heartbeat_acked, m.seq)
            if pr.state == "probe":
                pr.probe_sent = False
            elif pr.state == "replicate" and pr.paused(self.cfg.max_inflight):
                # The follower is alive but none of the pipelined Appends were
                # acknowledged: they were lost (it was down, or the network
                # dropped them). Start again from what it is known to hold.
                pr.become_probe()
            if pr.match < self.log.last_index:
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.context, m.frm)
        elif (
            isinstance(m, SnapshotResponse)
            and pr.state == "snapshot"
            and m.index == pr.snapshot_index
        ):
            pr.snapshot_offset = m.offset
            pr.snapshot_idle_ticks = 0
            self._send_snapshot_chunk(m.frm, pr)

    # --- replication -------------------------------------------------------------

    def _handle_append(self, m: Append) -> None:
        if m.prev_index < self.commit:
            answer = min(self.commit, self.log.last_index)
            self._send(AppendResponse(self.id, m.frm, self.term, index=answer))
            return
        changed = self.log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if changed is None:
            if m.prev_index > self.log.last_index:
                hint_index, hint_term = self.log.last_index + 1, 0
            else:
                hint_term = self.log.term(m.prev_index) or 0
                hint_index = self.log.first_index_of_term(m.prev_index)
            self._send(
                AppendResponse(
                    self.id,
                    m.frm,
                    self.term,
                    index=m.prev_index,
                    reject=True,
                    hint_index=hint_index,
                    hint_term=hint_term,
                )
            )
            return
        if changed <= self.log.last_index:
            assert changed > self.commit, "a committed entry would be overwritten"
            self._persist_from = min(self._persist_from, changed)
            self.stable = min(self.stable, changed - 1)
            self._conf_history = [(at, c) for at, c in self._conf_history if at < changed]
            self._scan_conf(changed)
        last_new = m.prev_index + len(m.entries)
        self.commit = max(self.commit, min(m.commit, last_new))
        self._send(AppendResponse(self.id, m.frm, self.term, index=last_new))

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        if m.reject:
            if pr.state == "replicate" and m.index <= pr.match:
                return  # stale
            if pr.state == "probe" and m.index != pr.next - 1:
                return  # answer to an older probe
            if m.hint_term == 0:
                nxt = m.hint_index
            else:
                last = self.log.last_index_of_term(m.hint_term)
                nxt = last + 1 if last is not None else m.hint_index
            pr.next = max(min(nxt, m.index), pr.match + 1)
            pr.become_probe()
            self._send_append(m.frm)
            return
        was_paused = pr.paused(self.cfg.max_inflight)
        if not pr.acknowledge(m.index) and pr.state == "probe" and m.index >= pr.match:
            pr.probe_sent = False  # an answer, even if no news: probe again
        if pr.state == "probe" and pr.match >= pr.next - 1:
            pr.become_replicate()
        elif pr.state == "snapshot" and pr.match >= pr.snapshot_index:
            pr.become_probe()
        # A new commit index travels with the next Append or heartbeat.
        self._maybe_commit()
        if was_paused and pr.match < self.log.last_index:
            self._send_append(m.frm)
        if m.frm == self._transferee and pr.match == self.log.last_index:
            self._send_timeout_now(m.frm)
        while self._send_append(m.frm, allow_empty=False):
            pass

    def _maybe_commit(self) -> bool:
        match = {peer: pr.match for peer, pr in self.progress.items()}
        match[self.id] = self.stable
        index = committed_index(self.conf.voters, match)
        # §5.4.2: only entries of the current term are committed by counting.
        if index > self.commit and self.log.term(index) == self.term:
            first_in_term = not self._committed_in_term()
            self.commit = index
            if first_in_term:
                for context, requester in self._reads_waiting:
                    self._leader_read(context, requester)
                self._reads_waiting = []
            if self.id not in self.conf.voters and self.commit >= self._conf_history[-1][0]:
                self._become_follower(self.term, "")  # removed ourselves; Cnew is committed
            return True
        return False

    def _broadcast_append(self) -> None:
        for peer in list(self.progress):
            self._send_append(peer)

    def _send_append(self, to: str, *, allow_empty: bool = True) -> bool:
        pr = self.progress.get(to)
        if pr is None or pr.paused(self.cfg.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            return self._start_snapshot(to, pr)
        entries: list[Entry] = []
        size = 0
        hi = min(self.log.last_index + 1, pr.next + self.cfg.max_append_entries)
        for entry in self.log.slice(pr.next, hi, self.cfg.max_append_bytes):
            size += len(entry.data) + 32
            if entries and size > self.cfg.max_append_bytes:
                break
            entries.append(entry)
        if not entries and not allow_empty:
            return False
        self._send(
            Append(
                self.id,
                to,
                self.term,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=self.commit,
            )
        )
        if entries or pr.state == "probe":
            pr.sent(entries[-1].index if entries else prev)
        return bool(entries)

    def _start_snapshot(self, to: str, pr: Progress) -> bool:
        if self._snapshot is None:
            return False
        pr.become_snapshot(self._snapshot.meta.index)
        self._send_snapshot_chunk(to, pr)
        return False

    def _send_snapshot_chunk(self, to: str, pr: Progress) -> None:
        snap = self._snapshot
        if snap is None:
            return
        if snap.meta.index != pr.snapshot_index:
            pr.become_snapshot(snap.meta.index)  # a newer snapshot replaced the one in flight
        offset = pr.snapshot_offset
        size = snap.size
        if offset >= size and offset:
            return  # all sent; the follower answers with an AppendResponse once installed
        n = self.cfg.snapshot_chunk_bytes
        if snap.file is None:
            chunk = snap.data[offset : offset + n]
        else:
            assert self.cfg.read_image is not None, "a file snapshot needs RaftConfig.read_image"
            chunk = self.cfg.read_image(snap.file, offset, n)
        done = offset + len(chunk) >= size
        self._send(
            InstallSnapshot(
                self.id, to, self.term, meta=snap.meta, offset=offset, data=chunk, done=done
            )
        )

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self.commit:
            self._send(AppendResponse(self.id, m.frm, self.term, index=self.commit))
            return
        if self.log.match_term(meta.index, meta.term):
            # Our log already holds everything the snapshot covers: no need to
            # install it, just learn that it is committed.
            self._drop_incoming()
            self.commit = meta.index
            self._send(AppendResponse(self.id, m.frm, self.term, index=meta.index))
            return
        if m.offset == 0:
            self._drop_incoming()
            sink = (self.cfg.image_sink or MemorySink)(meta)
            self._incoming_snapshot = (meta, sink)
        incoming = self._incoming_snapshot
        if incoming is None or incoming[0] != meta or incoming[1].size != m.offset:
            have = incoming[1].size if incoming is not None and incoming[0] == meta else 0
            self._send(SnapshotResponse(self.id, m.frm, self.term, index=meta.index, offset=have))
            return
        incoming[1].write(m.data)
        if not m.done:
            self._send(
                SnapshotResponse(
                    self.id, m.frm, self.term, index=meta.index, offset=incoming[1].size
                )
            )
            return
        self._incoming_snapshot = None
        received = incoming[1].finish()
        if received is None:
            # Damaged on the way: never install it; ask for it again from the start.
            self._send(SnapshotResponse(self.id, m.frm, self.term, index=meta.index, offset=0))
            return
        snap = received
        # Ready.snapshot tells the driver to replace its whole durable log by
        # this snapshot point; the core's log does the same.
        self.log.reset(meta.index, meta.term)
        self._snapshot = snap
        self._pending_snapshot = snap
        self.commit = meta.index
        self.stable = meta.index
        self._persist_from = meta.index + 1
        self._conf_history = [(meta.index, meta.conf)]
        self._scan_conf(meta.index + 1)
        self._send(AppendResponse(self.id, m.frm, self.term, index=meta.index))

    def _drop_incoming(self) -> None:
        if self._incoming_snapshot is not None:
            self._incoming_snapshot[1].discard()
            self._incoming_snapshot = None

    # --- leader timers, reads, membership ------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            if self.cfg.check_quorum:
                active = {self.id} | {p for p, pr in self.progress.items() if pr.recent_active}
                if not has_quorum(self.conf.voters, active):
                    self._become_follower(self.term, "")  # CheckQuorum: we may be partitioned
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            self._transferee = ""  # a transfer that did not finish in time is abandoned
        for peer, pr in self.progress.items():
            if pr.state == "snapshot":
                pr.snapshot_idle_ticks += 1
                if pr.snapshot_idle_ticks >= self.cfg.election_ticks:
                    pr.snapshot_idle_ticks = 0
                    self._send_snapshot_chunk(peer, pr)
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._reads[-1].context if self._reads else 0)

    def _broadcast_heartbeat(self, context: int) -> None:
        self._heartbeat_seq += 1
        if context:
            self._read_round = False  # this round serves the reads waiting for one
        for peer, pr in self.progress.items():
            commit = min(pr.match, self.commit)
            self._send(
                Heartbeat(
                    self.id,
                    peer,
                    self.term,
                    commit=commit,
                    context=context,
                    seq=self._heartbeat_seq,
                )
            )

    def _send_timeout_now(self, to: str) -> None:
        self._lease_void = True  # the transferee's campaign ignores the followers' refusal
        self._send(TimeoutNow(self.id, to, self.term))

    def _leader_read(self, context: int, requester: str) -> None:
        if not self._committed_in_term():
            self._reads_waiting.append((context, requester))
            return
        if set(self.conf.voters) <= {self.id}:
            self._release_read(context, self.commit, requester)
            return
        self._reads.append(_PendingRead(context, self.commit, requester, {self.id}))
        self._read_round = True

    def _ack_read(self, context: int, frm: str) -> None:
        for pos, read in enumerate(self._reads):
            if read.context != context:
                continue
            read.acks.add(frm)
            if has_quorum(self.conf.voters, read.acks):
                # Leadership was confirmed after every earlier read was registered.
                for done in self._reads[: pos + 1]:
                    self._release_read(done.context, done.index, done.requester)
                del self._reads[: pos + 1]
            return

    def _release_read(self, context: int, index: int, requester: str) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(context, index))
        else:
            self._send(
                ReadIndexResponse(self.id, requester, self.term, context=context, index=index)
            )
            # The follower waits to apply ``index``; the commit index it needs
            # for that would otherwise come with the next heartbeat.
            pr = self.progress.get(requester)
            if pr is not None and min(pr.match, self.commit) >= index:
                self._send(
                    Heartbeat(self.id, requester, self.term, commit=min(pr.match, self.commit))
                )

    def _propose_entry(self, kind: EntryKind, data: bytes) -> int:
        if self._role != Role.LEADER:
            raise NotLeader("not the leader", leader=self.leader or None)
        if self._transferee:
            raise LeadershipTransfer(f"leadership is moving to {self._transferee}")
        index = self.log.last_index + 1
        self.log.append([Entry(self.term, index, kind, data)])
        if kind == "config":
            self._scan_conf(index)
            self._sync_progress()
        self._append_dirty = True
        return index

    def _scan_conf(self, start: int) -> None:
        """Membership takes effect when appended: fold config entries from ``start`` on."""
        conf = self._conf_history[-1][1]
        for entry in self.log.slice(max(start, self.log.offset + 1), self.log.last_index + 1):
            if entry.kind == "config":
                change = decode_message(entry.data)
                if isinstance(change, ConfChange):
                    conf = apply_conf_change(conf, change)
                    self._conf_history.append((entry.index, conf))

    def _sync_progress(self) -> None:
        members = sorted(set(self.conf.members()) - {self.id})  # sorted: deterministic order
        for peer in list(self.progress):
            if peer not in members:
                del self.progress[peer]
        for peer in members:
            if peer not in self.progress:
                self.progress[peer] = Progress(next=self.log.last_index + 1, recent_active=True)

    # --- helpers ---------------------------------------------------------------

    def _send(self, m: RaftMessage) -> None:
        self._msgs.append(m)

    def _random_timeout(self) -> int:
        return self._rng.randrange(self.cfg.election_ticks, 2 * self.cfg.election_ticks)

    def status(self) -> dict[str, object]:
        return {
            "id": self.id,
            "role": self._role.value,
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "last_index": self.log.last_index,
            "voters": list(self.conf.voters),
            "learners": list(self.conf.learners),
        }
