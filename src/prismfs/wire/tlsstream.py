"""A TLS stream over a trio socket that moves bulk data at the speed of OpenSSL.

`trio.SSLStream` returns at most one TLS record (16 KiB) per
``receive_some`` and goes through its locks and state checks for each, so a
4 MiB shard took 256 trips through Python and moved at about 300 MB/s on a
machine whose plain TCP does 4 GB/s (`benchmarks/bench_wire.py`). This stream
reads what the socket has (up to 1 MiB at a time) and decrypts every whole
record in it in one tight loop of `ssl.SSLObject.read` calls, and encrypts a
whole send in one `SSLObject.write`.

Theory of operation. One `ssl.SSLObject` over two memory BIOs: bytes from
the socket go into ``_in``, ciphertext to send comes out of ``_out``. The
send lock orders everything written to the socket: a send encrypts and
writes under it, and so does the receive side when reading produced bytes
to send (a TLS 1.3 key update answer, session tickets). The receive lock
keeps one reader at a time. Every `ssl.SSLError` becomes
`trio.BrokenResourceError` with the SSL error as its cause (what callers
report), and an end of the connection without TLS close_notify is an end of
stream like any other: frames carry their own lengths, so a cut one is still
caught by the framing.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import trio

RECEIVE_BYTES = 1 << 20
"""Ciphertext taken from the socket at a time."""
SEND_PIECE = 256 * 1024
"""Plaintext encrypted and written at a time."""


class TlsStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = trio.StrictFIFOLock()
        self._receive_lock = trio.Lock()
        self._handshaken = False
        self._eof = False
        self._fd = transport.socket.fileno()
        self.stash = b""
        """Ciphertext `send_now` could not write yet: it goes out first, with
        the next `send_all` (the caller must make sure one follows)."""

    # --- handshake -----------------------------------------------------------------

    async def do_handshake(self) -> None:
        if self._handshaken:
            return
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                await self._flush_quietly()  # the alert tells the peer why
                raise trio.BrokenResourceError("TLS handshake failed") from exc
        await self._flush()
        self._handshaken = True

    def getpeercert(self, binary_form: bool = False) -> object:
        return self._tls.getpeercert(binary_form)

    # --- sending -------------------------------------------------------------------

    def send_now(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data`` and write it to the socket without waiting, if no
        send is under way; what the kernel does not take stays in `stash`.
        False if nothing was done (a send is under way)."""
        if not self._handshaken or self._send_lock.locked() or self.stash:
            return False
        try:
            self._tls.write(data)
        except ssl.SSLError:
            return False  # the usual way reports it
        out = self._out.read()
        try:
            sent = os.write(self._fd, out)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # broken: the next send_all finds out
        if sent < len(out):
            self.stash = out[sent:]
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._handshaken:
            await self.do_handshake()
        if not len(data) and not self.stash:
            await trio.lowlevel.checkpoint()
            return
        view = memoryview(data).cast("B")
        async with self._send_lock:
            # A piece at a time, so that the peer decrypts one piece while
            # this side encrypts the next.
            for start in range(0, max(len(view), 1), SEND_PIECE):
                try:
                    if len(view):
                        self._tls.write(view[start : start + SEND_PIECE])
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError("TLS failed while sending") from exc
                await self._send_out()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # --- receiving -----------------------------------------------------------------

    async def receive_into(self, view: memoryview) -> int:
        """Decrypt straight into ``view`` (a frame's payload): how many bytes,
        0 at the end of the stream."""
        if not self._handshaken:
            await self.do_handshake()
        async with self._receive_lock:
            while True:
                n = self._decrypt_into(view)
                if self._out.pending:  # reading made something to answer
                    async with self._send_lock:
                        await self._send_out()
                if n or self._eof:
                    return n
                await self._fill()

    def _decrypt_into(self, view: memoryview) -> int:
        """Every whole record already received, as far as ``view`` goes."""
        n = 0
        read = self._tls.read
        try:
            while n < len(view):
                got = int(read(len(view) - n, view[n:]))  # (a count, given a buffer)
                if not got:
                    self._eof = True
                    break
                n += got
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._eof = True  # close_notify, or the socket ended without one
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError("TLS failed while receiving") from exc
        return n

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        want = RECEIVE_BYTES if max_bytes is None else max_bytes
        if want < 1:
            raise ValueError("max_bytes must be >= 1")
        buf = bytearray(want)
        with memoryview(buf) as view:
            n = await self.receive_into(view)
        del buf[n:]
        return buf

    # --- the socket ----------------------------------------------------------------

    async def _fill(self) -> None:
        data = await self.transport_stream.receive_some(RECEIVE_BYTES)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def _send_out(self) -> None:
        """Write what TLS made to the socket (call with the send lock held)."""
        data = self.stash + self._out.read() if self.stash else self._out.read()
        self.stash = b""
        if data:
            await self.transport_stream.send_all(data)

    async def _flush(self) -> None:
        async with self._send_lock:
            await self._send_out()

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def aclose(self) -> None:
        try:
            if self._handshaken and not self._send_lock.locked():
                with contextlib.suppress(ssl.SSLError):
                    self._tls.unwrap()  # close_notify (then it waits for the peer's: no)
                await self._flush_quietly()
        finally:
            await self.transport_stream.aclose()
