"""The state-machine interface Raft drives, and exactly-once client commands.

A replicated service implements `StateMachine`: ``apply`` must be
deterministic (same commands in the same order give the same results and
state on every replica), ``snapshot``/``restore`` capture and replace the whole
state.

Clients retry after timeouts, so the same command can be committed twice.
`ExactlyOnce` wraps a state machine and makes retries harmless: every
command travels as a `ClientCommand` with the client's id and a sequence
number that the client increases by one per new command; the wrapper keeps,
per client, the last sequence applied and its result, and answers a repeat
with the stored result without applying it again. The table is part of the
snapshot, so the guarantee survives snapshot installs and restarts.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import msgspec

from prismfs.errors import ProtocolError
from prismfs.wire.codec import U64, Message, decode_message, encode_message


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed entry. Raises `CommandRejected` for an entry every
        replica refuses the same way (it is skipped); any other exception means
        this replica could not apply it and must stop (the driver halts the node)."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: bytes) -> None: ...


class CommandRejected(Exception):
    """A deterministic refusal of a committed entry: it does not decode, or is not
    a command of this state machine. Every replica refuses it the same way, so
    the driver may skip it. Nothing else may be skipped: an error that depends
    on the replica (a full disk, a locked database) would make replicas diverge."""


class ClientCommand(Message, frozen=True):
    family: ClassVar[str] = "raft"

    client: str
    seq: U64
    op: bytes


class _Session(msgspec.Struct):
    seq: int
    result: bytes


class _DedupImage(msgspec.Struct):
    sessions: dict[str, _Session]
    inner: bytes


class ExactlyOnce:
    """Deduplicates `ClientCommand`s by (client, seq) in front of ``inner``."""

    def __init__(self, inner: StateMachine) -> None:
        self.inner = inner
        self.sessions: dict[str, _Session] = {}
        self.duplicates = 0

    def apply(self, index: int, command: bytes) -> bytes:
        try:
            cmd = decode_message(command)
        except ProtocolError as exc:
            raise CommandRejected(f"entry {index} does not decode: {exc.message}") from None
        if not isinstance(cmd, ClientCommand):
            raise CommandRejected(
                f"expected a ClientCommand at index {index}, got {type(cmd).__name__}"
            )
        session = self.sessions.get(cmd.client)
        if session is not None and cmd.seq <= session.seq:
            self.duplicates += 1
            # The newest result is kept; an older sequence means the client
            # already received its answer and moved on.
            return session.result if cmd.seq == session.seq else b""
        result = self.inner.apply(index, cmd.op)
        self.sessions[cmd.client] = _Session(cmd.seq, result)
        return result

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(_DedupImage(self.sessions, self.inner.snapshot()))

    def restore(self, snapshot: bytes) -> None:
        image = msgspec.msgpack.decode(snapshot, type=_DedupImage)
        self.sessions = dict(image.sessions)
        self.inner.restore(image.inner)


def client_command(client: str, seq: int, op: bytes) -> bytes:
    return encode_message(ClientCommand(client, seq, op))
