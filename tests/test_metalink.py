"""The storage-only node's link to the metadata group (`prismfs.node.metalink`):
what it remembers of the members, across restarts."""

from __future__ import annotations

import json
from pathlib import Path

from prismfs.node.consensus_messages import RaftStatusReply
from prismfs.node.metalink import SEEDS_FILE, MetadataLink


def status(leader: str, address: str, role: str = "leader") -> RaftStatusReply:
    return RaftStatusReply(
        node_id=leader,
        role=role,
        term=3,
        leader=leader,
        leader_address=address,
        commit=9,
        applied=9,
        last_index=9,
        voters=("a", "b"),
        learners=(),
        addresses=(("a", "10.0.0.1:7070"), ("b", "10.0.0.2:7070")),
    )


def test_seeds_are_remembered_merged_and_survive_a_restart(tmp_path: Path) -> None:
    link = MetadataLink(tmp_path, "me", None)
    assert link.seeds == [] and link.leader == ("", "")
    link.add_seed("10.0.0.1:7070", own="10.0.0.9:7070")
    link.add_seed("10.0.0.9:7070", own="10.0.0.9:7070")  # its own address is never a seed
    link.add_seed("10.0.0.2:7070")
    assert link.seeds == ["10.0.0.1:7070", "10.0.0.2:7070"]
    again = MetadataLink(tmp_path, "me", None)
    assert again.seeds == link.seeds
    # The members' answer replaces the seeds (the membership moved on).
    again.set_seeds(["10.0.0.3:7070"])
    assert MetadataLink(tmp_path, "me", None).seeds == ["10.0.0.3:7070"]
    # An empty answer leaves them alone: a node must never forget its cluster.
    again.set_seeds([])
    assert MetadataLink(tmp_path, "me", None).seeds == ["10.0.0.3:7070"]


def test_a_damaged_seeds_file_is_ignored_not_fatal(tmp_path: Path, logs) -> None:
    logs.allow("ignoring unreadable")
    (tmp_path / SEEDS_FILE).write_text("{not json")
    assert MetadataLink(tmp_path, "me", None).seeds == []
    (tmp_path / SEEDS_FILE).write_text(json.dumps({"a": 1}))
    assert MetadataLink(tmp_path, "me", None).seeds == []
    (tmp_path / SEEDS_FILE).write_text(json.dumps(["10.0.0.1:7070", 7]))
    assert MetadataLink(tmp_path, "me", None).seeds == ["10.0.0.1:7070"]


def test_the_leader_named_is_forgotten_on_request_and_never_itself(tmp_path: Path) -> None:
    link = MetadataLink(tmp_path, "me", None)
    link.status = status("a", "10.0.0.1:7070")
    assert link.leader == ("a", "10.0.0.1:7070")
    link.forget_leader()
    assert link.leader == ("", "")
    link.status = status("me", "10.0.0.9:7070")
    assert link.leader == ("", "")
