"""The RPC server: authenticated connections, typed dispatch, cancellation, limits.

Theory of operation. Each accepted connection runs in its own nursery:

1. TLS handshake (if configured), then the HMAC handshake (`auth`), both
   within ``handshake_timeout``. Nothing else is read before it succeeds.
2. A writer task (`FramedStream.run_writer`) and a reader loop. The reader
   decodes each REQUEST header into a typed message and starts one handler
   task per request, each inside its own cancel scope kept in ``active`` by
   request id. A CANCEL frame cancels that scope; no reply follows. A
   NOTIFY frame goes to its notification handler, a plain function run
   right in the reader (no task, no reply): it must be short and must not
   block.
3. Any malformed frame, unknown frame kind or broken stream ends *this*
   connection only: it is logged with the peer address and closed, and every
   handler still running for it is cancelled. Other connections never notice.

Limits: ``max_inflight`` requests per connection (more get `Overloaded`
without running), ``max_inflight_bytes`` of request payloads held by running
handlers per connection (beyond it the reader pauses, which back-pressures
the client through TCP), ``max_connections`` accepted at once (more are
closed at accept), and the frame limits of `FrameLimits`.

Shutdown (`shutdown`): stop accepting, answer new requests with
`ShuttingDown`, give running handlers ``grace`` seconds to finish, then
cancel whatever is left and close every connection.

Invariant: ``active`` and ``_inflight`` change only in synchronous code
(no await between the check of the limit and the insertion).
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from prismfs.errors import (
    InternalError,
    Overloaded,
    PermissionDenied,
    PrismError,
    ProtocolError,
    ShuttingDown,
    Unavailable,
    UnknownMethod,
)
from prismfs.exception_groups import single_exception
from prismfs.ids import NodeId
from prismfs.stats import Stats
from prismfs.wire.address import format_address
from prismfs.wire.auth import NODE, NODES, ClusterCredentials, Peer, server_handshake
from prismfs.wire.codec import Message, decode_message
from prismfs.wire.frames import HANDSHAKE_LIMITS, Frame, FrameKind, FrameLimits, Payload
from prismfs.wire.messages import ErrorReply
from prismfs.wire.stream import FramedStream
from prismfs.wire.tls import cluster_server_context
from prismfs.wire.tlsstream import TlsStream

log = logging.getLogger("prismfs.wire.server")


M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer with a bulk payload; plain messages may be returned bare."""

    message: Message
    payload: Payload = b""


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler knows about the call besides the request message."""

    request_id: int
    payload: Payload
    peer: str
    client_name: str
    role: str = "node"
    credential: str = ""  # the authenticated node id, or client credential id


_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
"""What a broken or reset connection raises, as opposed to a peer's bad data."""

Handler = Callable[[Any, Call], Awaitable[Message | Reply]]


@dataclass(frozen=True)
class ServerLimits:
    frame: FrameLimits = field(default_factory=FrameLimits)
    max_inflight: int = 4096
    max_inflight_bytes: int = 256 * 1024 * 1024
    max_connections: int = 1024
    max_handshakes: int = 64
    """Connections not authenticated yet from hosts that are not cluster nodes;
    beyond it the oldest of them is closed to make room."""
    reserved_handshakes: int = 16
    """The same for the cluster's own nodes' hosts (`RpcServer.known_hosts`):
    strangers can never use up or evict these."""
    max_handshakes_per_address: int = 8
    """Connections not authenticated yet from one address; beyond it that
    address's oldest is closed."""
    handshake_timeout: float = 5.0
    auth_timeout: float = 2.0
    """After HELLO, how long the client has to send its AUTH frame (about
    150 bytes, sent at once by any real client)."""


class RpcServer:
    def __init__(
        self,
        creds: ClusterCredentials,
        node_id: NodeId,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
        insecure: bool = False,
    ) -> None:
        """TLS with ``ssl_context`` if given, else with a certificate this node
        issues itself from the cluster CA (`wire.tls`); ``insecure``: no TLS."""
        self.creds = creds
        self.node_id = node_id
        if ssl_context is None and not insecure:
            ssl_context = cluster_server_context(creds.secret, creds.cluster_id, node_id)
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self.addresses: list[str] = []
        self.connections = 0
        self.rejected_connections = 0
        self._handlers: dict[type[Message], Handler] = {}
        self._roles: dict[type[Message], frozenset[str]] = {}
        self.refused_calls = 0
        self.revoked: frozenset[str] = frozenset()
        """Client credential ids refused at the handshake (see `revoke`)."""
        self._by_credential: dict[str, set[trio.CancelScope]] = {}
        self._inflight = 0
        self._handshaking = 0
        self._pending: dict[int, _PendingHandshake] = {}  # oldest first
        self._pending_ids = itertools.count()
        self.known_hosts: frozenset[str] = frozenset()
        """Hosts of the cluster's nodes (kept current by the node): their new
        connections draw on a budget of their own."""
        self.evicted_handshakes = 0
        self._quiet = _QuietLog()
        self._closing_since: float | None = None
        self._streams: set[FramedStream] = set()
        self._accept_scope = trio.CancelScope()
        self._conn_scope = trio.CancelScope()
        self.stats = Stats()  # calls served, by request type (the node shares its own)
        self._notices: dict[type[Message], Callable[[Any, Call], None]] = {}
        self._fast: dict[type[Message], Callable[[Any, Call], Message | Reply | None]] = {}
        self._notice_roles: dict[type[Message], frozenset[str]] = {}

    def register(
        self,
        message_type: type[M],
        handler: Callable[[M, Call], Awaitable[Message | Reply]],
        *,
        fast: Callable[[M, Call], Message | Reply | None] | None = None,
        roles: frozenset[str] = NODES,
    ) -> None:
        """``handler`` runs in a task of its own per request. ``fast``, if given,
        is tried first right in the reader: a plain function that answers at
        once (a message, or a `Reply` with its payload) or returns None for
        the usual way. ``roles``: who may call it (by default nodes only);
        anyone else gets `PermissionDenied` and the handler never runs."""
        if message_type in self._handlers:
            raise ValueError(f"a handler for {message_type.__name__} is already registered")
        self._handlers[message_type] = handler
        self._roles[message_type] = roles
        if fast is not None:
            self._fast[message_type] = fast

    def register_notification(
        self,
        message_type: type[M],
        handler: Callable[[M, Call], None],
        *,
        roles: frozenset[str] = NODES,
    ) -> None:
        """``handler(message, call)`` for each NOTIFY frame of ``message_type``
        from a peer of one of ``roles`` (others' are dropped and logged)."""
        if message_type in self._notices:
            raise ValueError(f"a notification handler for {message_type.__name__} exists")
        self._notices[message_type] = handler
        self._notice_roles[message_type] = roles

    def revoke(self, credentials: frozenset[str]) -> None:
        """From now on refuse these client credentials, and close the
        connections they opened."""
        self.revoked = credentials
        for credential in (credentials - {""}) & self._by_credential.keys():
            for scope in self._by_credential[credential]:
                scope.cancel()
            log.warning(
                "closed %d connections of revoked credential %s",
                len(self._by_credential[credential]),
                credential,
            )

    @property
    def inflight(self) -> int:
        return self._inflight

    # --- accepting -------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on HOST:PORT (port 0 picks one) until `shutdown`; reports bound addresses."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.addresses = []
        for listener in listeners:
            sockname = listener.socket.getsockname()
            self.addresses.append(format_address(sockname[0], sockname[1]))
        with self._conn_scope:
            async with trio.open_nursery() as conns:
                try:
                    with self._accept_scope:
                        async with trio.open_nursery() as accepters:
                            for listener in listeners:
                                accepters.start_soon(self._accept_loop, listener, conns)
                            task_status.started(list(self.addresses))
                finally:
                    # Refuse new clients at once (they fail over to another
                    # node) while the open connections drain in `conns`.
                    for listener in listeners:
                        with trio.CancelScope(shield=True):
                            await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (
                    errno_mod.EMFILE,
                    errno_mod.ENFILE,
                    errno_mod.ENOBUFS,
                    errno_mod.ENOMEM,
                ):
                    log.error("accept failed: %s; pausing 100 ms", exc.strerror)
                    await trio.sleep(0.1)
                    continue
                raise
            if self.connections >= self.limits.max_connections:
                self.rejected_connections += 1
                log.warning(
                    "refusing connection from %s: %d connections open",
                    _peer(stream),
                    self.connections,
                )
                await trio.aclose_forcefully(stream)
                continue
            pending = self._admit(_host(stream))
            conns.start_soon(
                self._serve_connection, stream, pending, name=f"rpc-conn {_peer(stream)}"
            )

    def _admit(self, host: str) -> _PendingHandshake:
        """Count a new connection's handshake, first closing the oldest pending
        one of the same address, then of the same budget (nodes' hosts or
        everyone else's), when either is full: a flood of silent connections
        costs its sender its own oldest ones, never a newcomer's chance."""
        limits = self.limits
        known = host in self.known_hosts
        same_host = [k for k, p in self._pending.items() if p.host == host]
        if len(same_host) >= limits.max_handshakes_per_address:
            self._evict(same_host[0])
        budget = limits.reserved_handshakes if known else limits.max_handshakes
        same_budget = [k for k, p in self._pending.items() if p.known == known]
        if len(same_budget) >= budget:
            self._evict(same_budget[0])
        key = next(self._pending_ids)
        pending = _PendingHandshake(key, host, known)
        self._pending[key] = pending
        return pending

    def _evict(self, key: int) -> None:
        pending = self._pending.pop(key)
        pending.scope.cancel()
        self.evicted_handshakes += 1
        self.stats.count("handshakes.evicted")

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let running calls finish for up to ``grace`` s, then close all."""
        self._closing_since = trio.current_time()
        self._accept_scope.cancel()
        with trio.move_on_after(grace if grace > 0 else 0):
            # A request still arriving counts as running: it began before the
            # shutdown and is served when complete (see `_on_frame`); a reply
            # still queued or being written counts too.
            while self._inflight or any(s.mid_frame or s.unsent for s in self._streams):
                await trio.sleep(0.01)
        if self._inflight:
            log.warning(
                "cancelling %d calls still running after %.1fs of grace", self._inflight, grace
            )
        self._conn_scope.cancel()

    # --- one connection --------------------------------------------------

    async def _serve_connection(self, tcp: trio.SocketStream, pending: _PendingHandshake) -> None:
        peer = _peer(tcp)
        self.connections += 1
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = TlsStream(tcp, self.ssl_context, server_side=True)
        # Until the peer has proved it holds the secret it may send only small
        # handshake frames: nothing it announces is allocated beyond 4 KiB.
        conn = FramedStream(stream, limits=HANDSHAKE_LIMITS)
        self._handshaking += 1
        try:
            peer_id = None
            try:
                with pending.scope, trio.fail_after(self.limits.handshake_timeout):
                    if isinstance(stream, TlsStream):
                        await stream.do_handshake()
                    peer_id = await server_handshake(
                        conn,
                        self.creds,
                        self.limits.auth_timeout,
                        revoked=lambda credential: credential in self.revoked,
                    )
            except trio.TooSlowError:
                limits = self.limits
                waited = trio.current_time() - pending.started
                self._quiet.warning(
                    "closing connection from %s: no handshake within %.1fs",
                    peer,
                    limits.handshake_timeout
                    if waited >= limits.handshake_timeout
                    else limits.auth_timeout,
                )
                return
            except PrismError as exc:
                self._quiet.warning(
                    "closing connection from %s: handshake failed: %s", peer, exc.message
                )
                return
            except _STREAM_ERRORS as exc:
                self._quiet.warning(
                    "closing connection from %s: handshake failed: %s", peer, _describe(exc)
                )
                return
            except Exception:
                log.exception("closing connection from %s: internal error in the handshake", peer)
                return
            finally:
                self._handshaking -= 1
                self._pending.pop(pending.key, None)
            if peer_id is None:  # evicted (see `_admit`)
                self._quiet.warning(
                    "closing connection from %s: not authenticated while %s opened more",
                    peer,
                    "its address" if pending.host else "others",
                )
                return
            conn.set_limits(self.limits.frame)
            log.debug(
                "authenticated connection from %s (%s %s, %s)",
                peer,
                peer_id.role,
                peer_id.credential or "-",
                peer_id.name or "anonymous",
            )
            self._streams.add(conn)
            scope = trio.CancelScope()
            key = "" if peer_id.role == NODE else peer_id.credential  # (revocable ones)
            self._by_credential.setdefault(key, set()).add(scope)
            try:
                with scope:
                    await self._run_connection(conn, _ConnectionState(conn, peer, peer_id))
            except PrismError as exc:
                log.warning("closing connection from %s: %s", peer, exc.message)
            except _STREAM_ERRORS as exc:
                log.info("connection from %s broke: %s", peer, _describe(exc))
            except Exception:
                # A bug must cost this connection only, never the node.
                log.exception("closing connection from %s after an internal error", peer)
            finally:
                scopes = self._by_credential.get(key, set())
                scopes.discard(scope)
                if not scopes:
                    self._by_credential.pop(key, None)
        finally:
            self.connections -= 1
            self._streams.discard(conn)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _run_connection(self, conn: FramedStream, state: _ConnectionState) -> None:
        peer = state.peer
        conn.on_sent = state.notify
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run_writer, name=f"rpc-writer {peer}")
            try:
                while True:
                    # Back-pressure: stop reading while request payloads held by
                    # running calls plus reply payloads not yet written exceed
                    # the budget; the kernel's socket buffers then slow the
                    # client down, and a client that does not read its replies
                    # stops being served instead of growing the node's memory.
                    while state.payload_bytes + conn.unsent_bytes > self.limits.max_inflight_bytes:
                        if conn.closed:  # the writer broke: nobody takes the replies
                            raise trio.BrokenResourceError("peer stopped reading and went away")
                        state.freed = trio.Event()
                        await state.freed.wait()
                    frame = await conn.receive_frame()
                    if frame is None:
                        break
                    self._on_frame(frame, state, nursery)
                    # Give the handler just started a chance to run (often up to
                    # its reply) before the budget is checked again; trio does
                    # not promise that order, so the budget can be overshot by
                    # the replies of handlers started meanwhile.
                    await trio.lowlevel.checkpoint()
            except (PrismError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failure = exc  # raised below, outside the nursery, ungrouped
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _on_frame(self, frame: Frame, state: _ConnectionState, nursery: trio.Nursery) -> None:
        rid = frame.request_id
        active = state.active
        if frame.kind == FrameKind.CANCEL:
            scope = active.get(rid)
            if scope is not None:
                scope.cancel()
            return
        if frame.kind == FrameKind.NOTIFY:
            self._on_notice(frame, state)
            return
        if frame.kind != FrameKind.REQUEST:
            raise ProtocolError(f"unexpected {frame.kind.name} frame from a client")
        request = decode_message(frame.header)
        if rid in active:
            raise ProtocolError(f"request id {rid} is already in flight")
        error: PrismError | None = None
        if self._closing_since is not None and state.conn.frame_started >= self._closing_since:
            error = ShuttingDown("node is shutting down")
        elif len(active) >= self.limits.max_inflight:
            error = Overloaded(
                f"more than {self.limits.max_inflight} calls in flight on one connection"
            )
        elif type(request) not in self._handlers:
            error = UnknownMethod(f"this node does not serve {type(request).__name__}")
        elif state.peer_id.role not in self._roles[type(request)]:
            error = self._refuse(type(request).__name__, state)
        if error is not None:
            if not state.conn.send_nowait(FrameKind.ERROR, rid, ErrorReply.from_error(error)):
                raise Overloaded("client does not read its replies")
            return
        who = state.peer_id
        call = Call(rid, frame.payload, state.peer, who.name, who.role, who.credential)
        fast = self._fast.get(type(request))
        if fast is not None and self._answer_now(fast, request, call, state):
            return
        scope = trio.CancelScope()
        active[rid] = scope
        self._inflight += 1
        state.payload_bytes += len(frame.payload)
        nursery.start_soon(self._run_handler, request, call, state, scope)

    def _answer_now(
        self,
        fast: Callable[[Any, Call], Message | Reply | None],
        request: Message,
        call: Call,
        state: _ConnectionState,
    ) -> bool:
        """Try ``fast`` in the reader; True if the call is answered."""
        name = type(request).__name__
        start = trio.current_time()
        payload: Payload = b""
        reply: Message
        try:
            answer = fast(request, call)
        except PrismError as exc:
            kind, reply = FrameKind.ERROR, ErrorReply.from_error(exc)
        except Exception:
            return False  # the task's handler runs it again and reports the bug
        else:
            if answer is None:
                return False
            if isinstance(answer, Reply):
                reply, payload = answer.message, answer.payload
            else:
                reply = answer
            kind = FrameKind.RESPONSE
        if not state.conn.send_nowait(kind, call.request_id, reply, payload):
            return False  # no room to queue the answer: the usual way waits for it
        self.stats.observe(f"served.{name}", trio.current_time() - start)
        self.stats.count(f"served.{name}.at_once")
        return True

    def _on_notice(self, frame: Frame, state: _ConnectionState) -> None:
        notice = decode_message(frame.header)  # malformed: ProtocolError ends the connection
        handler = self._notices.get(type(notice))
        name = type(notice).__name__
        if handler is None or self._closing_since is not None:
            self.stats.count(f"dropped.{name}")  # nobody to tell: there is no reply
            return
        if state.peer_id.role not in self._notice_roles[type(notice)]:
            self._refuse(name, state)
            return
        self.stats.count(f"notified.{name}")
        who = state.peer_id
        try:
            handler(notice, Call(0, frame.payload, state.peer, who.name, who.role, who.credential))
        except Exception:
            log.exception("notification handler for %s from %s failed", name, state.peer)

    async def _run_handler(
        self, request: Message, call: Call, state: _ConnectionState, scope: trio.CancelScope
    ) -> None:
        conn = state.conn
        start = trio.current_time()
        try:
            with scope:
                handler = self._handlers[type(request)]
                try:
                    # A handler that fans out in a nursery raises its one
                    # typed error inside a group; unwrap it.
                    with single_exception():
                        result = await handler(request, call)
                except PrismError as exc:
                    await self._send_error(conn, call, exc)
                    return
                except Exception as exc:
                    # A bug in a handler must not end the connection or the node.
                    log.exception(
                        "handler for %s from %s failed", type(request).__name__, call.peer
                    )
                    err = InternalError(
                        f"{type(request).__name__} failed on the server: {type(exc).__name__}"
                    )
                    await self._send_error(conn, call, err)
                    return
                reply = result if isinstance(result, Reply) else Reply(result)
                try:
                    await conn.send(
                        FrameKind.RESPONSE, call.request_id, reply.message, reply.payload
                    )
                except ProtocolError as exc:  # e.g. a reply payload over the frame limit
                    log.error("reply to %s not sent: %s", type(request).__name__, exc.message)
                    err = InternalError(f"reply could not be sent: {exc.message}")
                    await self._send_error(conn, call, err)
        except Unavailable:
            pass  # the connection closed under us; nobody is left to answer
        finally:
            self.stats.observe(f"served.{type(request).__name__}", trio.current_time() - start)
            state.active.pop(call.request_id, None)
            state.payload_bytes -= len(call.payload)
            state.notify()
            self._inflight -= 1

    @property
    def _node_only(self) -> set[str]:
        return {
            t.__name__ for t, roles in (self._roles | self._notice_roles).items() if roles == NODES
        }

    def _refuse(self, what: str, state: _ConnectionState) -> PermissionDenied:
        self.refused_calls += 1
        self.stats.count(f"refused.{what}")
        who = state.peer_id
        log.warning(
            "refused %s from %s: a %s credential (%s) may not send it",
            what,
            state.peer,
            who.role,
            who.credential or "-",
        )
        needs = "a node's (the cluster secret)" if what in self._node_only else "a writer's"
        return PermissionDenied(
            f"a {who.role} credential may not send {what}: it needs {needs} credential"
        )

    async def _send_error(self, conn: FramedStream, call: Call, error: PrismError) -> None:
        try:
            reply = ErrorReply.from_error(error)
            await conn.send(FrameKind.ERROR, call.request_id, reply)
        except ProtocolError as exc:  # cannot happen with sanitised details; never fatal
            log.error("error reply for request %d not sent: %s", call.request_id, exc.message)
            fallback = ErrorReply(InternalError.code, "error reply could not be encoded")
            await conn.send(FrameKind.ERROR, call.request_id, fallback)


@dataclass
class _PendingHandshake:
    key: int
    host: str
    known: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: float = field(default_factory=trio.current_time)


class _QuietLog:
    """Warnings about unauthenticated connections, at most `BURST` per
    `WINDOW_S` and then one line with how many were left out: anyone can
    cause them, and a flood of them must not flood the log too."""

    BURST = 10
    WINDOW_S = 10.0

    def __init__(self) -> None:
        self._window_start = -math.inf
        self._logged = 0
        self._dropped = 0

    def warning(self, message: str, *args: object) -> None:
        now = trio.current_time()
        if now - self._window_start >= self.WINDOW_S:
            if self._dropped:
                log.warning(
                    "%d more connections were closed before authenticating in %.0fs",
                    self._dropped,
                    self.WINDOW_S,
                )
            self._window_start, self._logged, self._dropped = now, 0, 0
        if self._logged < self.BURST:
            self._logged += 1
            log.warning(message, *args)
        else:
            self._dropped += 1


@dataclass
class _ConnectionState:
    """Per-connection bookkeeping of the server (see the module invariant)."""

    conn: FramedStream
    peer: str
    peer_id: Peer
    active: dict[int, trio.CancelScope] = field(default_factory=dict)
    payload_bytes: int = 0
    freed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        """Memory was released (a call ended or replies were written)."""
        self.freed.set()


def _peer(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return format_address(name[0], name[1]) if isinstance(name, tuple) else str(name)


def _host(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return ""
    return str(name[0]) if isinstance(name, tuple) else str(name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
