"""Serving the HTTP API inside a node's event loop (hypercorn's trio worker)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from prismfs.client.data import DataClient
from prismfs.errors import PrismError
from prismfs.gateway.app import Gateway, build_app
from prismfs.gateway.console import console_routes
from prismfs.gateway.metrics import Metrics, NodeCollector
from prismfs.gateway.tokens import TokenCache
from prismfs.leader.rebalance import Mover
from prismfs.leader.repair import Health
from prismfs.meta.client import MetaClient, keep_session
from prismfs.meta.namespace import Namespace
from prismfs.node.config import HttpSection
from prismfs.node.consensus import Consensus
from prismfs.wire.client import RpcPool

log = logging.getLogger("prismfs.gateway")

SESSION_LEASE_S = 60.0
META_TIMEOUT_S = 10.0


async def serve_http(
    settings: HttpSection,
    pool: RpcPool,
    rpc_address: str,
    consensus: Consensus,
    namespace: Namespace,
    health: Health,
    mover: Mover,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set; reports the bound address (HOST:PORT)."""

    # An HTTP client waits at most META_TIMEOUT_S for a leader, then gets 503.
    meta = MetaClient(pool, [rpc_address], timeout=META_TIMEOUT_S, attempt_timeout=5.0)
    session = trio.Event()  # set once the gateway's session is open

    def ready() -> tuple[bool, dict[str, Any]]:
        status = consensus.status()
        details = {"node": status.node_id, "role": status.role, "leader": status.leader}
        return bool(status.leader) and session.is_set(), details

    gateway = Gateway(
        meta=meta,
        data=DataClient(pool, meta),
        pool=pool,
        addresses=[rpc_address],
        tokens=TokenCache(meta, settings.token_cache_s),
        metrics=Metrics(NodeCollector(consensus, namespace, health, mover)),
        ready=ready,
        max_upload=int(settings.max_upload_gib * (1 << 30)),
    )
    config = Config()
    config.bind = [settings.listen]
    if settings.tls_cert:
        config.certfile = settings.tls_cert
        config.keyfile = settings.tls_key
    elif not _loopback(settings.listen):
        log.warning(
            "the HTTP API on %s is served WITHOUT TLS: bearer tokens (admin ones too) cross "
            "the network in clear; set [http] tls_cert and tls_key, or serve it behind a "
            "TLS proxy",
            settings.listen,
        )
    config.accesslog = None
    config.errorlog = logging.getLogger("prismfs.gateway.hypercorn")
    config.graceful_timeout = 5.0
    async with trio.open_nursery() as nursery:
        # The node may not be a member yet (joining): serve at once, and open
        # the session (needed to stream uploads) as soon as a leader answers.
        nursery.start_soon(_keep_session, meta, session)
        stopped = trio.Event()
        bound = await nursery.start(
            _serve,
            build_app(gateway, console_routes(gateway)),
            config,
            settings.max_connections,
            shutdown,
            stopped,
        )
        address = bound[0].split("://", 1)[-1]
        log.info("HTTP API on %s/v1", bound[0])
        task_status.started(address)
        await shutdown.wait()
        with trio.move_on_after(config.graceful_timeout + 1):
            await stopped.wait()
        nursery.cancel_scope.cancel()
    with trio.move_on_after(5, shield=True):
        try:
            await meta.close_session()
        except PrismError as exc:
            log.info("could not close the gateway's session: %s", exc.message)


async def _keep_session(meta: MetaClient, opened: trio.Event) -> None:
    """Open the gateway's metadata session, then renew it every third of its lease."""
    while True:
        try:
            await meta.open_session(SESSION_LEASE_S)
            break
        except PrismError as exc:
            log.debug("gateway session not open yet: %s", exc.message)
            await trio.sleep(1.0)
    opened.set()
    await keep_session(meta)


async def _serve(
    app: Any,
    config: Config,
    max_connections: int,
    shutdown: trio.Event,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    try:
        await serve_capped(
            app, config, max_connections, shutdown_trigger=shutdown.wait, task_status=task_status
        )
    finally:
        stopped.set()


class _Slot(trio.abc.HalfCloseableStream):
    """A connection holding one of the listener's slots until it is closed."""

    def __init__(self, inner: trio.SocketStream, slots: trio.Semaphore) -> None:
        self._inner = inner
        self._slots: trio.Semaphore | None = slots

    @property
    def socket(self) -> trio.socket.SocketType:  # hypercorn reads the peer address from it
        return self._inner.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._slots is not None:  # closed twice by hypercorn: one release
                self._slots.release()
                self._slots = None


class _CappedListener(trio.abc.Listener[_Slot]):
    """Accepts only while fewer than the cap are open: beyond it, connections
    wait in the kernel's listen queue instead of holding files here."""

    def __init__(self, inner: trio.SocketListener, slots: trio.Semaphore) -> None:
        self._inner = inner
        self._slots = slots

    async def accept(self) -> _Slot:
        await self._slots.acquire()
        try:
            return _Slot(await self._inner.accept(), self._slots)
        except BaseException:
            self._slots.release()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve_capped(
    app: Any,
    config: Config,
    max_connections: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker (`hypercorn.trio.run.worker_serve`, HTTP or
    HTTPS), with at most ``max_connections`` connections served at once."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    slots = trio.Semaphore(max_connections)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners: list[trio.abc.Listener[Any]] = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                inner = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(_CappedListener(inner, slots))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            tls = config.create_ssl_context() if sockets.secure_sockets else None
            for sock in sockets.secure_sockets:  # [http] tls_cert and tls_key
                assert tls is not None
                sock.listen(config.backlog)
                inner = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(
                    trio.SSLListener(
                        _CappedListener(inner, slots),
                        tls,
                        https_compatible=True,
                    )
                )
                binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            handler = partial(TCPServer, wrapped, config, context, ConnectionState(state.copy()))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners, handler, listeners, handler_nursery=server_nursery
                        )
                    )
                    await trio.sleep_forever()
            except* ShutdownError:
                pass
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _loopback(listen: str) -> bool:
    """Whether HOST:PORT listens only on a loopback address."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
