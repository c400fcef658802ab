"""What the leader knows about each follower's log (etcd-io/raft's tracker/).

States:

* ``probe``: the leader does not know where the follower's log matches; it
  sends one Append at a time and waits for the answer (or a heartbeat reply).
* ``replicate``: the follower is matching; Appends are pipelined, ``next``
  advances optimistically, at most ``max_inflight`` unacknowledged messages.
* ``snapshot``: the follower needs entries the leader compacted away; a
  snapshot is being sent in chunks and appends wait for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

ProgressState = Literal["probe", "replicate", "snapshot"]


@dataclass
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = "probe"
    probe_sent: bool = False
    inflight: deque[int] = field(default_factory=deque)
    recent_active: bool = False
    snapshot_index: int = 0
    snapshot_offset: int = 0
    snapshot_idle_ticks: int = 0
    heartbeat_acked: int = 0  # the latest heartbeat ``seq`` of this term it answered

    def become_probe(self) -> None:
        self.state = "probe"
        self.probe_sent = False
        self.inflight.clear()
        self.next = max(self.next, self.match + 1)

    def become_replicate(self) -> None:
        self.state = "replicate"
        self.inflight.clear()
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self.state = "snapshot"
        self.inflight.clear()
        self.snapshot_index = index
        self.snapshot_offset = 0
        self.snapshot_idle_ticks = 0

    def paused(self, max_inflight: int) -> bool:
        if self.state == "probe":
            return self.probe_sent
        if self.state == "snapshot":
            return True
        return len(self.inflight) >= max_inflight

    def acknowledge(self, index: int) -> bool:
        """A successful AppendResponse up to ``index``; True if it told us anything new."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index > self.match:
            self.match = index
            self.next = max(self.next, index + 1)
            self.probe_sent = False
            return True
        return False

    def sent(self, last_index: int) -> None:
        if self.state == "replicate":
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True
