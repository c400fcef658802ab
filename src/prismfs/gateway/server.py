"""Serving the HTTP API inside a node's event loop (hypercorn's trio worker)."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from prismfs.client.data import DataClient
from prismfs.data.rebalance import Mover
from prismfs.data.repair import Health
from prismfs.errors import PrismError
from prismfs.gateway.app import Gateway, build_app
from prismfs.gateway.metrics import Metrics, NodeCollector
from prismfs.gateway.tokens import TokenCache
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
    config.accesslog = None
    config.errorlog = logging.getLogger("prismfs.gateway.hypercorn")
    config.graceful_timeout = 5.0
    async with trio.open_nursery() as nursery:
        # The node may not be a member yet (joining): serve at once, and open
        # the session (needed to stream uploads) as soon as a leader answers.
        nursery.start_soon(_keep_session, meta, session)
        stopped = trio.Event()
        bound = await nursery.start(_serve, build_app(gateway), config, shutdown, stopped)
        address = bound[0].split("://", 1)[-1]
        log.info("HTTP API on http://%s/v1", address)
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
    shutdown: trio.Event,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    try:
        await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
    finally:
        stopped.set()
