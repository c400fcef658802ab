"""Frame format and a sans-I/O incremental frame decoder.

Layout of one frame (all integers big-endian)::

    u32  length      bytes that follow this field (fixed part + header + payload)
    u8   version     PROTOCOL_VERSION; anything else is refused
    u8   kind        a `FrameKind`
    u64  request id  pairs responses, errors and cancels with their request
    u32  header len  length of the msgpack header
         header      one typed `Message` (see `codec`)
         payload     raw bytes, the rest of the frame (shard data and the like)

Why a raw payload: a 4 MiB shard copied into and out of a msgpack encoder
costs two extra copies and an allocation each way. Here the sender writes the
small head and then hands the payload buffer to the socket as it is; the
receiver allocates the payload once and, on plain TCP, lets the kernel
``recv_into`` it directly (`FrameDecoder.payload_view`).

The decoder never trusts a length before checking it against the limit, so an
oversize prefix costs nothing but the four bytes that announced it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from prismfs.errors import FrameTooLarge, ProtocolError
from prismfs.wire.messages import PROTOCOL_VERSION

Payload = bytes | bytearray | memoryview
"""What may travel as a frame payload."""

_PREFIX = struct.Struct(">I")
_FIXED = struct.Struct(">BBQI")
PREFIX_SIZE = _PREFIX.size
FIXED_SIZE = _FIXED.size
HEAD_SIZE = PREFIX_SIZE + FIXED_SIZE

MiB = 1024 * 1024
DEFAULT_MAX_PAYLOAD = 64 * MiB
DEFAULT_MAX_HEADER = 1 * MiB


class FrameKind(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    AUTH_OK = 3
    REQUEST = 4
    RESPONSE = 5
    ERROR = 6
    CANCEL = 7
    NOTIFY = 8
    """A request that gets no reply, not even an error (Raft messages: Raft
    tolerates loss, so an acknowledgement would carry nothing)."""


_KINDS = frozenset(int(k) for k in FrameKind)


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_header: int = DEFAULT_MAX_HEADER
    max_payload: int = DEFAULT_MAX_PAYLOAD

    @property
    def max_frame(self) -> int:
        return FIXED_SIZE + self.max_header + self.max_payload


HANDSHAKE_LIMITS = FrameLimits(max_header=4096, max_payload=0)
"""Frame limits before authentication: handshake messages are small and bare,
so nothing a peer announces before proving the secret is allocated beyond 4 KiB."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    request_id: int
    header: bytes
    payload: Payload


def encode_head(kind: FrameKind, request_id: int, header: bytes, payload_len: int) -> bytes:
    """Everything of a frame but its payload, ready to be sent before it."""
    length = FIXED_SIZE + len(header) + payload_len
    return (
        _PREFIX.pack(length)
        + _FIXED.pack(PROTOCOL_VERSION, int(kind), request_id, len(header))
        + header
    )


def encode_frame(kind: FrameKind, request_id: int, header: bytes, payload: Payload = b"") -> bytes:
    """A whole frame as one buffer (tests, small frames)."""
    return encode_head(kind, request_id, header, len(payload)) + bytes(payload)


class FrameDecoder:
    """Turns a byte stream into `Frame`s; knows nothing about sockets.

    Usage: ``feed()`` bytes as they arrive and call ``next_frame()`` until it
    returns None. While a large payload is being received, ``payload_view()``
    exposes the unfilled rest of the payload buffer so that a caller with a
    socket can ``recv_into`` it and report ``payload_received(n)``; this skips
    the copy through the feed buffer.

    Any `ProtocolError` leaves the decoder unusable: the stream is out of sync
    and the connection must be closed.
    """

    def __init__(self, limits: FrameLimits | None = None) -> None:
        self._limits = limits or FrameLimits()
        self._buf = bytearray()
        self._pos = 0
        # Set while the head of a frame is parsed and its payload is incomplete.
        self._payload: bytearray | None = None
        self._filled = 0
        self._kind = FrameKind.REQUEST
        self._request_id = 0
        self._header = b""

    def set_limits(self, limits: FrameLimits) -> None:
        self._limits = limits

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return self._payload is None and self._pos == len(self._buf)

    @property
    def wanted(self) -> int:
        """A hint: bytes needed before the next step (end of head, header or payload).

        While the head or header is incomplete this stops at the header's end,
        so that a caller does not read a large payload through the feed buffer
        but into `payload_view` once the head is parsed.
        """
        if self._payload is not None:
            return len(self._payload) - self._filled
        avail = len(self._buf) - self._pos
        if avail < HEAD_SIZE:
            return HEAD_SIZE - avail
        header_len: int = _FIXED.unpack_from(self._buf, self._pos + PREFIX_SIZE)[3]
        return max(HEAD_SIZE + min(header_len, self._limits.max_header) - avail, 1)

    def feed(self, data: Payload) -> None:
        view = memoryview(data)
        if self._payload is not None and self._pos == len(self._buf):
            take = min(len(view), len(self._payload) - self._filled)
            self._payload[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
        if len(view):
            self._buf += view

    def payload_view(self) -> memoryview | None:
        """The unfilled part of the current payload, if reading straight into it is possible."""
        if self._payload is None or self._pos != len(self._buf):
            return None
        if self._filled >= len(self._payload):
            return None
        return memoryview(self._payload)[self._filled :]

    def payload_received(self, n: int) -> None:
        assert self._payload is not None and 0 <= n <= len(self._payload) - self._filled
        self._filled += n

    def next_frame(self) -> Frame | None:
        if self._payload is None and not self._parse_head():
            return None
        assert self._payload is not None
        if self._filled < len(self._payload):
            return None
        payload: Payload = self._payload if self._payload else b""
        frame = Frame(self._kind, self._request_id, self._header, payload)
        self._payload = None
        self._filled = 0
        self._header = b""
        return frame

    def _parse_head(self) -> bool:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < PREFIX_SIZE:
            return False
        (length,) = _PREFIX.unpack_from(buf, pos)
        if length > self._limits.max_frame:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self._limits.max_frame}",
                length=length,
                limit=self._limits.max_frame,
            )
        if length < FIXED_SIZE:
            raise ProtocolError(f"frame length {length} is shorter than a frame head")
        if avail < HEAD_SIZE:
            return False
        version, kind, request_id, header_len = _FIXED.unpack_from(buf, pos + PREFIX_SIZE)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {version} (this node speaks {PROTOCOL_VERSION})"
            )
        if kind not in _KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        if header_len > self._limits.max_header or header_len > length - FIXED_SIZE:
            raise ProtocolError(f"bad header length {header_len} in a frame of {length} bytes")
        payload_len = length - FIXED_SIZE - header_len
        if payload_len > self._limits.max_payload:
            raise FrameTooLarge(
                f"payload of {payload_len} bytes exceeds the limit of {self._limits.max_payload}",
                length=payload_len,
                limit=self._limits.max_payload,
            )
        start = pos + HEAD_SIZE
        if len(buf) - start < header_len:
            return False
        self._kind = FrameKind(kind)
        self._request_id = request_id
        self._header = bytes(buf[start : start + header_len])
        pos = start + header_len
        take = min(payload_len, len(buf) - pos)
        self._payload = bytearray(payload_len)
        if take:
            self._payload[:take] = buf[pos : pos + take]
        self._filled = take
        self._consume(pos + take)
        return True

    def _consume(self, new_pos: int) -> None:
        # Keep an offset instead of deleting from the front on every frame;
        # compact once the dead prefix dominates.
        if new_pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif new_pos > 65536 and new_pos * 2 > len(self._buf):
            del self._buf[:new_pos]
            self._pos = 0
        else:
            self._pos = new_pos
