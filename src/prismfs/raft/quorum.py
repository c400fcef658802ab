"""Majority arithmetic over a set of voters (etcd-io/raft's quorum/, in small)."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def majority(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """The highest index stored on a majority of ``voters`` (0 for no voters)."""
    if not voters:
        return 0
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    return indexes[majority(len(voters)) - 1]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> bool | None:
    """True once a majority granted, False once a majority can no longer grant, else None."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return True
    if rejected > len(voters) - need:
        return False
    return None


def has_quorum(voters: Collection[str], present: Collection[str]) -> bool:
    return sum(1 for v in voters if v in present) >= majority(len(voters))
