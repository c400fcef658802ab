"""An entry a replica cannot apply for a reason of its own (a full disk, a database
locked by another process) stops that replica instead of being skipped: its
applied index never passes the entry, and after a restart it replays the log and
ends with the same digest as a healthy replica. Only refusals every replica
makes alike (an entry that does not decode, or is no command) are skipped."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from prismfs.errors import ReplicaHalted
from prismfs.meta.commands import ROOT_INO, MetaFailed, Mkdir, Mknod, SetXattr
from prismfs.meta.namespace import Namespace
from prismfs.node.consensus import Consensus
from prismfs.raft.messages import Entry
from prismfs.raft.state_machine import CommandRejected, ExactlyOnce, client_command
from prismfs.wire.codec import decode_message, encode_message


def entries(n: int) -> list[bytes]:
    """n client commands that each change the namespace (names, files, xattrs)."""
    out = []
    for i in range(n):
        if i % 3 == 0:
            op = Mkdir(i, ROOT_INO, f"d{i}".encode(), 0o755, 0, 0)
        elif i % 3 == 1:
            op = Mknod(i, ROOT_INO, f"f{i}".encode(), stat.S_IFREG | 0o644, 0, 0)  # type: ignore[assignment]
        else:
            op = SetXattr(i, ROOT_INO, f"user.x{i}".encode(), b"v" * 3000)  # type: ignore[assignment]
        out.append(client_command("c/0", i + 1, encode_message(op)))
    return out


def healthy_digest(log: list[bytes]) -> str:
    ns = Namespace()
    with ns.batch():
        for index, data in enumerate(log, 1):
            ns.apply(index, data)
    return ns.digest()


def test_a_locked_database_stops_the_replica_and_a_restart_converges(tmp_path: Path) -> None:
    log = entries(12)
    path = tmp_path / "namespace.db"
    sick = Namespace(path)
    sick.db.execute("PRAGMA busy_timeout = 50")
    for index in range(1, 5):
        sick.apply(index, log[index - 1])
    # An operator's sqlite3 shell takes the write lock for longer than the busy timeout.
    shell = sqlite3.connect(path, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sick.apply(5, log[4])
    assert sick.halted == 5 and sick.applied == 4
    # Nothing after it is applied either: the applied index would pass entry 5.
    with pytest.raises(ReplicaHalted):
        sick.apply(6, log[5])
    shell.execute("ROLLBACK")
    shell.close()
    assert sick.applied == 4
    sick.db.close()
    restarted = Namespace(path)  # the node's restart: it replays the log from its applied index
    for index in range(1, len(log) + 1):
        restarted.apply(index, log[index - 1])
    assert restarted.applied == len(log)
    assert restarted.digest() == healthy_digest(log)


def test_a_full_disk_in_the_middle_of_a_batch_keeps_none_of_it(tmp_path: Path) -> None:
    log = entries(60)
    path = tmp_path / "namespace.db"
    sick = Namespace(path)
    with sick.batch():
        for index in range(1, 11):
            sick.apply(index, log[index - 1])
    pages = sick.db.execute("PRAGMA page_count").fetchone()[0]
    sick.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # this replica's disk is full
    with pytest.raises(sqlite3.OperationalError, match="full"), sick.batch():
        for index in range(11, 61):
            sick.apply(index, log[index - 1])
    assert sick.halted is not None and sick.applied == 10  # the whole batch is gone
    sick.db.close()
    restarted = Namespace(path)  # space was freed; the node starts again and replays
    for index in range(1, len(log) + 1):
        restarted.apply(index, log[index - 1])
    assert restarted.digest() == healthy_digest(log)


def test_an_entry_that_does_not_decode_is_refused_alike_everywhere(tmp_path: Path) -> None:
    ns = Namespace(tmp_path / "n.db")
    result = decode_message(ns.apply(1, b"\x92not a message"))
    assert isinstance(result, MetaFailed) and result.code == "protocol_error"
    wrapped = client_command("c/0", 1, b"junk")
    result = decode_message(ns.apply(2, wrapped))
    assert isinstance(result, MetaFailed) and result.code == "protocol_error"
    assert ns.apply(3, wrapped) == encode_message(result)  # its retry gets the same answer
    assert ns.applied == 3 and ns.halted is None


def test_exactly_once_wrapper_rejects_what_is_no_client_command() -> None:
    class Inner:
        def apply(self, index: int, command: bytes) -> bytes:
            return command

        def snapshot(self) -> bytes:
            return b""

        def restore(self, snapshot: bytes) -> None:
            pass

    wrapper = ExactlyOnce(Inner())
    with pytest.raises(CommandRejected):
        wrapper.apply(1, b"garbage")
    with pytest.raises(CommandRejected):
        wrapper.apply(2, encode_message(Mkdir(1, ROOT_INO, b"x", 0o755, 0, 0)))


class _Exploding:
    """A state machine whose apply fails the way a full disk makes SQLite fail."""

    exactly_once = True  # not wrapped by the driver

    def __init__(self, error: Exception) -> None:
        self.error = error

    def apply(self, index: int, command: bytes) -> bytes:
        raise self.error

    def snapshot(self) -> bytes:
        return b""

    def restore(self, snapshot: bytes) -> None:
        pass


def test_the_driver_halts_on_a_local_error_and_skips_only_a_rejection(
    tmp_path: Path, logs: object
) -> None:
    logs.allow("could not apply committed entry 7")  # type: ignore[attr-defined]
    logs.allow("entry 8 is refused")  # type: ignore[attr-defined]

    async def main() -> None:
        entry = Entry(1, 7, "normal", b"x")
        full = _Exploding(sqlite3.OperationalError("database or disk is full"))
        disk_full = Consensus("n1", "a", tmp_path, None, full)  # type: ignore[arg-type]
        with pytest.raises(ReplicaHalted, match="entry 7"):
            disk_full._apply_entry(entry)
        rejecting = Consensus("n1", "a", tmp_path, None, _Exploding(CommandRejected("bad")))  # type: ignore[arg-type]
        assert rejecting._apply_entry(Entry(1, 8, "normal", b"x")) == b""

    trio.run(main)
