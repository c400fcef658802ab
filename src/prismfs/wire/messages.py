"""Messages of the protocol core: handshake, errors, liveness, diagnostics.

Later layers (raft, meta, data) define their own messages in their own
modules; importing a module registers its messages with the codec.

Bulk data is never a field here: it travels as the frame's raw payload (see
`frames`), so a 4 MiB shard is not copied through msgpack.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from prismfs.errors import PrismError, WireDetail, error_from_wire
from prismfs.wire.codec import U16, U32, U64, Message

PROTOCOL_VERSION = 1
"""The frame version byte; bumped on incompatible changes to frames or handshake."""


class HandshakeMessage(Message, frozen=True):
    abstract: ClassVar[bool] = True
    family: ClassVar[str] = "handshake"


class Hello(HandshakeMessage, frozen=True):
    """Server -> client, first frame of every connection: which cluster and a
    challenge (nothing else: anyone who connects sees it)."""

    protocol: U16
    cluster_id: str
    nonce: bytes


class AuthProof(HandshakeMessage, frozen=True):
    """Client -> server: its own challenge, the role and credential it claims,
    and proof that it holds that credential's key (see `wire.auth`)."""

    nonce: bytes
    proof: bytes
    client_name: str = ""
    role: str = "node"
    credential: str = ""


class AuthOk(HandshakeMessage, frozen=True):
    """Server -> client: proof that the server holds the secret too (mutual auth)."""

    proof: bytes


class ControlMessage(Message, frozen=True):
    abstract: ClassVar[bool] = True
    family: ClassVar[str] = "control"


class ErrorReply(ControlMessage, frozen=True):
    """The answer to a request that failed; rebuilt as the same error class."""

    code: str
    message: str
    details: dict[str, WireDetail] = {}

    @classmethod
    def from_error(cls, error: PrismError) -> ErrorReply:
        # Details are free-form on the raising side; only plain values cross.
        details = {str(k): v if _plain(v) else str(v) for k, v in error.details.items()}
        return cls(code=error.code, message=str(error.message), details=details)

    def to_error(self) -> PrismError:
        return error_from_wire(self.code, self.message, dict(self.details))


def _plain(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    return value is None or isinstance(value, (str, float, bool))


class Cancel(ControlMessage, frozen=True):
    """Client -> server: the caller gave up on the request with this frame's id."""


class NodeMessage(Message, frozen=True):
    abstract: ClassVar[bool] = True
    family: ClassVar[str] = "node"


class Ping(NodeMessage, frozen=True):
    """Liveness and identity probe."""


class Pong(NodeMessage, frozen=True):
    node_id: str
    cluster_id: str
    version: str
    role: str
    rpc_address: str
    http_address: str | None = None
    uptime_s: float = 0.0
    pid: U32 = 0


class Echo(NodeMessage, frozen=True):
    """Diagnostics and benchmarks of the bulk path.

    ``echo`` returns the request payload, ``sink`` discards it and reports its
    length, ``source`` returns ``size`` bytes of zeros.
    """

    mode: Literal["echo", "sink", "source"] = "echo"
    size: U64 = 0


class EchoReply(NodeMessage, frozen=True):
    received: U64
