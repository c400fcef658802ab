"""The HTTP server of the gateway serves at most ``[http] max_connections`` at
once: beyond it, it stops accepting (connections wait in the listen queue) until
one closes, so idle clients cannot exhaust a node's open files."""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config

from prismfs.gateway.server import serve_capped


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{done}.complete"})
            if done == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def ask(address: str) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream


async def answered(stream: trio.SocketStream) -> bool:
    got = b""
    while b"hello" not in got:
        more = await stream.receive_some(4096)
        if not more:
            return False
        got += more
    return True


def test_connections_beyond_the_cap_wait_until_one_closes() -> None:
    async def main() -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve_capped(
                    hello, config, 2, shutdown_trigger=shutdown.wait, task_status=task_status
                )
            )
            address = binds[0].removeprefix("http://")
            first, second = await ask(address), await ask(address)
            for stream in (first, second):  # answered, and kept open (keep-alive)
                assert await answered(stream)
            third = await ask(address)
            with trio.move_on_after(1.0) as waited:
                await third.receive_some(4096)
            assert waited.cancelled_caught  # not accepted while two are open
            await first.aclose()
            with trio.fail_after(5):
                assert await answered(third)
            for stream in (second, third):
                await stream.aclose()
            shutdown.set()

    trio.run(main)
