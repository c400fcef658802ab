"""RPC client: multiplexed connections, a pool, deadlines and cancellation.

Theory of operation. An `RpcConnection` owns one authenticated `FramedStream`
and two tasks (writer, reader) that run in the pool's nursery. A call takes
the next request id, parks a `_Pending` slot in ``pending``, queues its frame
and waits for the reader to fill the slot. Many calls share the connection;
their replies may arrive in any order.

When a call's deadline passes or its caller is cancelled, the slot is
dropped and a CANCEL frame is queued without waiting (`send_nowait`), so
that the server stops working on it; a reply that still arrives is ignored.
When the connection breaks, every waiting call fails with `Unavailable` (or
the `ProtocolError` that broke it) and the pool forgets the connection, so
the next call dials again.

Calls are never retried here: whether a retry is safe depends on the
request (idempotency keys live in the layers above).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from prismfs.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    PrismError,
    ProtocolError,
    Unavailable,
)
from prismfs.exception_groups import single_exception
from prismfs.stats import Stats
from prismfs.wire.address import parse_address
from prismfs.wire.auth import ClusterCredentials, client_handshake
from prismfs.wire.codec import Message, decode_message
from prismfs.wire.frames import HANDSHAKE_LIMITS, FrameKind, FrameLimits, Payload
from prismfs.wire.messages import Cancel, ErrorReply, Hello
from prismfs.wire.stream import FramedStream
from prismfs.wire.tls import cluster_client_context
from prismfs.wire.tlsstream import TlsStream

log = logging.getLogger("prismfs.wire.client")

DEFAULT_CALL_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0


class _Default:
    pass


DEFAULT = _Default()
"""Sentinel: use the pool's call timeout."""


@dataclass(frozen=True, slots=True)
class Response:
    message: Message
    payload: Payload = b""


@dataclass(slots=True)
class _DialAttempt:
    done: trio.Event = field(default_factory=trio.Event)
    conn: RpcConnection | None = None
    error: PrismError | None = None


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    response: Response | None = None
    error: PrismError | None = None


async def dial(
    address: str,
    creds: ClusterCredentials,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    limits: FrameLimits | None = None,
    client_name: str = "",
    node_id: str = "",
    insecure: bool = False,
) -> tuple[FramedStream, Hello]:
    """Open TCP + TLS to ``address`` and authenticate; raise a typed error on
    failure. TLS is checked against ``ssl_context`` if given, else against the
    cluster CA of ``creds``; ``insecure``: no TLS."""
    host, port = parse_address(address)
    stream: trio.abc.Stream | None = None
    if ssl_context is None and not insecure:
        ssl_context = cluster_tls(creds)
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = tcp
            if ssl_context is not None:
                stream = TlsStream(tcp, ssl_context, server_hostname=host)
                await stream.do_handshake()
            conn = FramedStream(stream, limits=HANDSHAKE_LIMITS)
            hello = await client_handshake(conn, creds, timeout, client_name, node_id)
            conn.set_limits(limits or FrameLimits())
    except trio.TooSlowError:
        await _close_quietly(stream)
        hint = " (a node that serves TLS says nothing until TLS begins: drop --insecure?)"
        raise Unavailable(
            f"cannot connect to {address}: no answer within {timeout:g}s"
            + (hint if ssl_context is None and stream is not None else "")
        ) from None
    except OSError as exc:
        await _close_quietly(stream)
        # trio reports "all attempts to connect failed" and keeps the real
        # reason (refused, unreachable) as the cause.
        reason = exc.strerror
        group = exc.__cause__
        if isinstance(group, BaseExceptionGroup):
            reasons = {e.strerror for e in group.exceptions if isinstance(e, OSError)}
            reason = ", ".join(sorted(r for r in reasons if r)) or reason
        raise Unavailable(f"cannot connect to {address}: {reason or exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await _close_quietly(stream)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise AuthenticationFailed(f"TLS with {address} failed: {_tls_reason(cause)}") from None
        if isinstance(cause, ssl.SSLError):
            raise Unavailable(f"TLS with {address} failed: {_tls_reason(cause)}") from None
        hint = (
            " (a node that serves TLS waits for the client to begin it: drop --insecure?)"
            if ssl_context is None
            else ""
        )
        raise Unavailable(f"connection to {address} closed during the handshake{hint}") from None
    except BaseException:
        await _close_quietly(stream)
        raise
    return conn, hello


def cluster_tls(creds: ClusterCredentials) -> ssl.SSLContext:
    """The TLS context that trusts the cluster CA of ``creds`` (one per CA)."""
    return _context_for(creds.tls_ca())


@functools.lru_cache(maxsize=8)
def _context_for(ca: bytes) -> ssl.SSLContext:
    return cluster_client_context(ca)


def _tls_reason(exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc)
    if "WRONG_VERSION_NUMBER" in reason.upper() or "record layer" in reason:
        return f"{reason} (the node does not speak TLS: started with --insecure?)"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in reason.upper():
        return (
            f"{exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else reason}"
            " (the node's certificate is not from this cluster's CA)"
        )
    return reason


async def _close_quietly(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


class RpcConnection:
    """One authenticated, multiplexed connection; see the module docstring."""

    def __init__(self, conn: FramedStream, address: str, hello: Hello) -> None:
        self.address = address
        self.hello = hello
        self._conn = conn
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._broken: PrismError | None = None
        self.closed = trio.Event()

    @property
    def is_open(self) -> bool:
        return self._broken is None and not self.closed.is_set()

    async def run(self) -> None:
        """Reader and writer; returns when the connection ends (cancel it to close)."""
        reason: PrismError = Unavailable(f"connection to {self.address} closed")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._conn.run_writer, name=f"rpc-writer {self.address}")
                try:
                    await self._read_loop()
                except ProtocolError as exc:
                    log.warning("connection to %s broke: %s", self.address, exc.message)
                    reason = exc
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    reason = Unavailable(f"connection to {self.address} broke: {exc}")
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._fail_all(reason)
            await self._conn.aclose()
            self.closed.set()

    async def _read_loop(self) -> None:
        while True:
            frame = await self._conn.receive_frame()
            if frame is None:
                return
            if frame.kind not in (FrameKind.RESPONSE, FrameKind.ERROR):
                raise ProtocolError(f"unexpected {frame.kind.name} frame from the server")
            slot = self._pending.pop(frame.request_id, None)
            try:
                message = decode_message(frame.header)
            except ProtocolError as exc:
                # The frame itself was sound, so the stream is in sync: only
                # this call fails.
                if slot is not None:
                    slot.error = ProtocolError(f"undecodable reply: {exc.message}")
                    slot.done.set()
                continue
            if slot is None:
                continue  # the caller gave up (deadline or cancel) before the reply came
            if frame.kind == FrameKind.ERROR:
                if not isinstance(message, ErrorReply):
                    raise ProtocolError("ERROR frame without an ErrorReply")
                slot.error = message.to_error()
            else:
                slot.response = Response(message, frame.payload)
            slot.done.set()

    def _fail_all(self, reason: PrismError) -> None:
        self._broken = reason
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.error = reason
            slot.done.set()

    async def call(
        self, request: Message, payload: Payload = b"", *, timeout: float | None = None
    ) -> Response:
        """Send one request and wait for its reply; a server error is re-raised as itself."""
        seconds = math.inf if timeout is None else max(0.0, timeout)
        return await self.call_until(request, payload, trio.current_time() + seconds, timeout)

    async def call_until(
        self,
        request: Message,
        payload: Payload,
        deadline: float,
        seconds: float | None = None,
    ) -> Response:
        """`call` with an absolute (trio clock) deadline: one cancel scope."""
        if self._broken is not None:
            raise Unavailable(f"connection to {self.address} is closed: {self._broken.message}")
        rid = next(self._ids)
        slot = _Pending()
        self._pending[rid] = slot
        finished = False
        try:
            with trio.move_on_at(deadline) as scope:
                await self._conn.send(FrameKind.REQUEST, rid, request, payload)
                await slot.done.wait()
                finished = True
        finally:
            if not finished and self._pending.pop(rid, None) is not None:
                self._conn.send_control(FrameKind.CANCEL, rid, Cancel())
        if scope.cancelled_caught:
            raise DeadlineExceeded(
                f"{type(request).__name__} to {self.address} did not finish within {seconds:g}s"
            )
        if slot.error is not None:
            raise slot.error
        assert slot.response is not None
        return slot.response

    async def notify(self, request: Message, payload: Payload = b"") -> None:
        """Send one request that gets no reply; returns once it is queued for the
        socket (waits only while the writer's queue is full)."""
        if self._broken is not None:
            raise Unavailable(f"connection to {self.address} is closed: {self._broken.message}")
        await self._conn.send(FrameKind.NOTIFY, 0, request, payload)

    def close(self) -> None:
        self._conn.close_writer()


class RpcPool:
    """Connections by address, dialled on first use and re-dialled after a break.

    Created by `open_rpc_pool`, whose nursery runs every connection's tasks.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        creds: ClusterCredentials,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        limits: FrameLimits | None = None,
        client_name: str = "",
        node_id: str = "",
        insecure: bool = False,
    ) -> None:
        self._nursery = nursery
        self.creds = creds
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.limits = limits
        self.client_name = client_name
        self.node_id = node_id  # the member a node's connections speak for
        self.insecure = insecure
        # Fault injection (tests, `prismfs.faults`): addresses this process cannot reach.
        self.unreachable: Callable[[str], bool] | None = None
        self.stats = Stats()  # calls made, by request type (the owner may share its own)
        self._conns: dict[str, RpcConnection] = {}
        self._dials: dict[str, _DialAttempt] = {}

    async def connection(self, address: str) -> RpcConnection:
        """The open connection to ``address``; concurrent callers share one dial."""
        conn = self._conns.get(address)
        if conn is not None and conn.is_open:
            return conn
        attempt = self._dials.get(address)
        if attempt is None:
            attempt = _DialAttempt()
            self._dials[address] = attempt
            self._nursery.start_soon(self._dial, address, attempt, name=f"rpc-dial {address}")
        await attempt.done.wait()
        if attempt.error is not None:
            raise attempt.error
        assert attempt.conn is not None
        return attempt.conn

    async def _dial(self, address: str, attempt: _DialAttempt) -> None:
        # Runs in the pool's nursery, bounded by connect_timeout, so one caller
        # giving up does not fail the others waiting on the same attempt.
        try:
            stream, hello = await dial(
                address,
                self.creds,
                ssl_context=self.ssl_context,
                timeout=self.connect_timeout,
                limits=self.limits,
                client_name=self.client_name,
                node_id=self.node_id,
                insecure=self.insecure,
            )
            conn = RpcConnection(stream, address, hello)
            self._conns[address] = conn
            self._nursery.start_soon(self._run, conn, name=f"rpc-conn {address}")
            attempt.conn = conn
        except PrismError as exc:
            attempt.error = exc
        except Exception as exc:
            log.exception("dialling %s failed unexpectedly", address)
            attempt.error = Unavailable(f"cannot connect to {address}: {exc!r}")
        finally:
            del self._dials[address]
            attempt.done.set()

    async def _run(self, conn: RpcConnection) -> None:
        try:
            await conn.run()
        finally:
            if self._conns.get(conn.address) is conn:
                del self._conns[conn.address]

    async def call(
        self,
        address: str,
        request: Message,
        payload: Payload = b"",
        *,
        timeout: float | _Default | None = DEFAULT,
    ) -> Response:
        """One call; the deadline covers connecting as well as the call itself."""
        if self.unreachable is not None and self.unreachable(address):
            raise Unavailable(f"{address} is unreachable (injected network partition)")
        seconds = self.call_timeout if isinstance(timeout, _Default) else timeout
        start = trio.current_time()
        deadline = math.inf if seconds is None else start + seconds
        name = f"rpc.{type(request).__name__}"
        conn = self._conns.get(address)
        if conn is None or not conn.is_open:
            conn = None
            with trio.move_on_at(deadline):
                conn = await self.connection(address)
            if conn is None:
                self.stats.count(f"{name}.no-connection")
                raise DeadlineExceeded(
                    f"{type(request).__name__} to {address}: no connection within {seconds:g}s"
                )
        try:
            return await conn.call_until(request, payload, deadline, seconds)
        finally:
            self.stats.observe(name, trio.current_time() - start)

    async def notify(self, address: str, request: Message, *, timeout: float | None = None) -> None:
        """One request without a reply (`RpcConnection.notify`); the deadline
        covers connecting and waiting for room in the send queue."""
        if self.unreachable is not None and self.unreachable(address):
            raise Unavailable(f"{address} is unreachable (injected network partition)")
        self.stats.count(f"notify.{type(request).__name__}")
        with trio.move_on_after(math.inf if timeout is None else timeout):
            conn = await self.connection(address)
            await conn.notify(request)
            return
        raise DeadlineExceeded(f"{type(request).__name__} to {address}: not sent in {timeout:g}s")

    async def aclose(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()


@asynccontextmanager
async def open_rpc_pool(
    creds: ClusterCredentials,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    limits: FrameLimits | None = None,
    client_name: str = "",
    node_id: str = "",
    insecure: bool = False,
) -> AsyncIterator[RpcPool]:
    with single_exception():
        async with trio.open_nursery() as nursery:
            pool = RpcPool(
                nursery,
                creds,
                ssl_context=ssl_context,
                connect_timeout=connect_timeout,
                call_timeout=call_timeout,
                limits=limits,
                client_name=client_name,
                node_id=node_id,
                insecure=insecure,
            )
            try:
                yield pool
            finally:
                await pool.aclose()
                nursery.cancel_scope.cancel()
