"""A framed, full-duplex connection over a trio stream.

Theory of operation. Reading is done by exactly one task (the server's or
client's reader loop) through `receive_frame`. Writing goes through one writer
task fed by a bounded memory channel: a caller that is cancelled while its
frame waits in the channel simply loses its place, and a frame that the writer
has started is always finished. Writing directly from the calling task would
let a cancelled ``send_all`` leave half a frame on the socket and desynchronise
the peer. The bounded channel is the back-pressure: when the socket is slow,
callers wait in ``send``.

The writer coalesces queued small frames into one ``send_all`` (fewer
syscalls at high call rates) but sends a large payload as its own buffer,
never copying it.

Bypass: on plain TCP, a frame of up to 64 KiB sent while nothing is queued
or being written goes straight to the socket with one non-blocking
``writev`` (header and payload, no copy) from the caller, which cannot be
interrupted half-way (it is not an await). If the kernel takes only part
of it, the rest is queued first for the writer, so
the peer still sees whole frames in order. That saves a task switch per
message on the common, uncongested path.

On plain TCP the reader receives large payloads with ``recv_into`` straight
into the payload buffer; on TLS it falls back to ``receive_some``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import trio

from prismfs.errors import ProtocolError, Unavailable
from prismfs.wire.codec import Message, encode_message
from prismfs.wire.frames import Frame, FrameDecoder, FrameKind, FrameLimits, Payload, encode_head
from prismfs.wire.tlsstream import TlsStream

_COALESCE_LIMIT = 64 * 1024
_RECEIVE_MIN = 64 * 1024
"""Small reads are rounded up to this: fewer syscalls, a little copying."""
_RECEIVE_MAX = 4 * 1024 * 1024

OutFrame = tuple[int, int, bytes, Payload]
"""(kind, request id, header, payload); kind `_RAW`: header holds bytes to send as they are."""
_RAW = 0
_BYPASS_LIMIT = 64 * 1024  # larger frames always go through the writer (a reply of one
# 32 KiB verified block fits: a random read's reply costs no task switch on the node)


class FramedStream:
    """One connection's framing. Call `run_writer` in a task before `send`."""

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream | trio.abc.Stream,
        *,
        limits: FrameLimits | None = None,
        queue_size: int = 256,
    ) -> None:
        self.stream = stream
        self.limits = limits or FrameLimits()
        self._decoder = FrameDecoder(self.limits)
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._tls = stream if isinstance(stream, TlsStream) else None
        self._send_q, self._recv_q = trio.open_memory_channel[OutFrame](queue_size)
        self.closed = False
        self._writer_closed = False  # close_writer: nothing more may be written
        self.unsent = 0
        """Frames queued or being written; a graceful close waits for zero."""
        self.unsent_bytes = 0
        """Payload bytes of those frames: memory the peer has not taken yet."""
        self._control: list[OutFrame] = []  # CANCELs that found the queue full
        self.on_sent: Callable[[], None] | None = None
        """Called after each batch is written (the server's budget waits on it)."""
        self.frame_started = 0.0
        """trio time when the first bytes of the frame being received arrived."""

    def set_limits(self, limits: FrameLimits) -> None:
        """New frame limits (after the handshake); applies from the next frame."""
        self.limits = limits
        self._decoder.set_limits(limits)

    # --- writing ---------------------------------------------------------

    async def send(
        self, kind: FrameKind, request_id: int, message: Message, payload: Payload = b""
    ) -> None:
        """Queue one frame; waits only for room in the queue."""
        header = encode_message(message)
        if len(payload) > self.limits.max_payload:
            raise ProtocolError(
                f"payload of {len(payload)} bytes exceeds the limit of {self.limits.max_payload}"
            )
        if self._send_now(kind, request_id, header, payload):
            return
        self.unsent += 1  # before the await: the writer may take the frame at once
        self.unsent_bytes += len(payload)
        try:
            await self._send_q.send((kind, request_id, header, payload))
        except BaseException as exc:
            self.unsent -= 1
            self.unsent_bytes -= len(payload)
            if isinstance(exc, (trio.ClosedResourceError, trio.BrokenResourceError)):
                raise Unavailable("connection is closed") from None
            raise

    def _send_now(self, kind: FrameKind, request_id: int, header: bytes, payload: Payload) -> bool:
        """The bypass (module docstring): True if the frame is sent or queued."""
        if (
            (self._sock is None and self._tls is None)
            or self.unsent
            or self._control
            or self.closed
            or self._writer_closed
            or len(payload) + len(header) > _BYPASS_LIMIT
        ):
            return False
        head = encode_head(kind, request_id, header, len(payload))
        rest = b""
        if self._tls is not None:
            # Encrypted and written from the caller; what the kernel does not
            # take waits in the stream, sent first by the writer.
            if not self._tls.send_now(head + bytes(payload) if payload else head):
                return False
            partial = bool(self._tls.stash)
        else:
            assert self._sock is not None
            try:
                if payload:
                    sent = os.writev(self._sock.fileno(), (head, payload))  # no payload copy
                else:
                    sent = os.write(self._sock.fileno(), head)
            except BlockingIOError:
                return False  # the socket buffer is full: the writer waits for room
            except OSError:
                return False  # broken: the writer finds out and closes the connection
            partial = sent < len(head) + len(payload)
            if partial:
                rest = (head + bytes(payload))[sent:]  # rare: a full socket buffer
        if partial:
            try:
                self._send_q.send_nowait((_RAW, 0, rest, b""))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # The writer has gone (the stream broke under it): the rest
                # of this frame can never be written.
                self.closed = True
                raise Unavailable("connection is closed") from None
            self.unsent += 1
        elif self.on_sent is not None:
            self.on_sent()
        return True

    def send_nowait(
        self, kind: FrameKind, request_id: int, message: Message, payload: Payload = b""
    ) -> bool:
        """Queue a frame without waiting; False if there was no room."""
        header = encode_message(message)
        try:
            if self._send_now(kind, request_id, header, payload):
                return True
        except Unavailable:
            return False
        try:
            self._send_q.send_nowait((kind, request_id, header, payload))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self.unsent += 1
        return True

    def send_control(self, kind: FrameKind, request_id: int, message: Message) -> None:
        """Queue a control frame (CANCEL) that must not be lost to a full queue.

        A full queue means the writer is busy; it sends these after its
        current batch.
        """
        if not self.send_nowait(kind, request_id, message) and not self.closed:
            self._control.append((kind, request_id, encode_message(message), b""))

    async def send_direct(self, kind: FrameKind, request_id: int, message: Message) -> None:
        """Write one frame from the calling task (handshake, before the writer runs)."""
        header = encode_message(message)
        await self.stream.send_all(encode_head(kind, request_id, header, 0))

    async def run_writer(self) -> None:
        """Drain the queue to the socket until it is closed or the stream breaks."""
        try:
            async with self._recv_q:
                async for first in self._recv_q:
                    batch = [first]
                    while True:
                        try:
                            batch.append(self._recv_q.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._write_batch(batch)
                    if self._control:
                        control, self._control = self._control, []
                        await self._write_batch(control)
                    self.unsent -= len(batch)
                    self.unsent_bytes -= sum(len(frame[3]) for frame in batch)
                    if self.on_sent is not None:
                        self.on_sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
        finally:
            if self.on_sent is not None:
                self.on_sent()  # wake a reader waiting for the writer to make room

    async def _write_batch(self, batch: Sequence[OutFrame]) -> None:
        pending = bytearray()
        for kind, request_id, header, payload in batch:
            if kind == _RAW:
                pending += header  # the rest of a frame the bypass began
                continue
            pending += encode_head(FrameKind(kind), request_id, header, len(payload))
            if len(payload) <= _COALESCE_LIMIT:
                pending += payload
                if len(pending) < _COALESCE_LIMIT:
                    continue
                await self.stream.send_all(pending)
                pending = bytearray()
            else:
                await self.stream.send_all(pending)
                pending = bytearray()
                await self.stream.send_all(payload)
        if pending or (self._tls is not None and self._tls.stash):
            await self.stream.send_all(pending)  # (on TLS, the rest of a bypass first)

    def close_writer(self) -> None:
        """No more frames; the writer finishes what is queued and returns."""
        self._writer_closed = True
        self._send_q.close()

    # --- reading ---------------------------------------------------------

    async def receive_frame(self) -> Frame | None:
        """The next frame, or None on a clean EOF between frames.

        Raises `ProtocolError` for malformed input or EOF inside a frame.
        """
        decoder = self._decoder
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                return frame
            view = decoder.payload_view() if self._sock or self._tls else None
            if view is not None:
                if self._tls is not None:
                    n = await self._tls.receive_into(view[:_RECEIVE_MAX])
                else:
                    assert self._sock is not None
                    n = await self._sock.recv_into(view, min(len(view), _RECEIVE_MAX))
                if n == 0:
                    raise ProtocolError("connection closed in the middle of a frame")
                decoder.payload_received(n)
                continue
            size = min(max(decoder.wanted, _RECEIVE_MIN), _RECEIVE_MAX)
            data = await self.stream.receive_some(size)
            if not data:
                if decoder.at_boundary:
                    return None
                raise ProtocolError("connection closed in the middle of a frame")
            if decoder.at_boundary:
                self.frame_started = trio.current_time()
            decoder.feed(data)

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return not self._decoder.at_boundary

    async def receive_within(self, seconds: float) -> Frame | None:
        """`receive_frame` bounded in time (handshake); raises trio.TooSlowError."""
        with trio.fail_after(seconds if seconds > 0 else math.inf):
            return await self.receive_frame()

    async def aclose(self) -> None:
        self.closed = True
        self._send_q.close()
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(1):
                    await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
