"""Shared fixtures: an in-process RPC server with test handlers, log checking,
and real node processes that are always stopped by pid.

A test fails if a ``prismfs`` logger emits a WARNING or worse that the test
did not declare with ``logs.allow(pattern)`` (checklogs, as s3ql does):
unexpected warnings are bugs that a green run would otherwise hide.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from prismfs.errors import NotFound, PrismError
from prismfs.wire.auth import EVERYONE, ClusterCredentials
from prismfs.wire.codec import Message
from prismfs.wire.messages import Echo, EchoReply, Ping, Pong
from prismfs.wire.server import Call, Reply, RpcServer, ServerLimits

# Client commands read ~/.config/prismfs/client.toml and /etc/prismfs/client.toml
# before any dev cluster: the tests (and every process they start) must never
# find this machine's real cluster there. Tests of the default paths set both.
os.environ["PRISMFS_ETC"] = "/nonexistent/prismfs-tests/etc"
os.environ["XDG_CONFIG_HOME"] = "/nonexistent/prismfs-tests/config"

# --- test-only messages (registered with the codec on import) ---------------


class Sleep(Message, frozen=True):
    seconds: float


class Slept(Message, frozen=True):
    cancelled: bool = False


class Fail(Message, frozen=True):
    kind: str
    message: str = "failed"


class Square(Message, frozen=True):
    value: int


class Squared(Message, frozen=True):
    value: int


# --- log checking -------------------------------------------------------------


@dataclass
class LogCheck:
    caplog: pytest.LogCaptureFixture
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def matching(self, pattern: str) -> list[logging.LogRecord]:
        rx = re.compile(pattern)
        return [r for r in self.caplog.records if rx.search(r.getMessage())]

    def unexpected(self) -> list[logging.LogRecord]:
        return [
            r
            for r in self.caplog.records
            if r.levelno >= logging.WARNING
            and r.name.startswith("prismfs")
            and not any(p.search(r.getMessage()) for p in self.allowed)
        ]


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogCheck]:
    caplog.set_level(logging.INFO, logger="prismfs")
    check = LogCheck(caplog)
    yield check
    bad = check.unexpected()
    if bad:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad)
        pytest.fail(f"unexpected warnings or errors were logged:\n{lines}")


# --- in-process RPC server ----------------------------------------------------


@dataclass
class ServerUnderTest:
    server: RpcServer
    address: str
    creds: ClusterCredentials
    cancelled: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)


@pytest.fixture
def creds() -> ClusterCredentials:
    return ClusterCredentials.generate()


async def start_test_server(
    nursery: trio.Nursery,
    creds: ClusterCredentials,
    limits: ServerLimits | None = None,
    ssl_context: object = None,
    insecure: bool = False,
) -> ServerUnderTest:
    server = RpcServer(
        creds,
        "test-node",  # type: ignore[arg-type]
        limits=limits,
        ssl_context=ssl_context,  # type: ignore[arg-type]
        insecure=insecure,
    )
    ts = ServerUnderTest(server, "", creds)

    async def ping(req: Ping, call: Call) -> Pong:
        return Pong("test-node", creds.cluster_id, "test", "standalone", ts.address)

    async def echo(req: Echo, call: Call) -> Message | Reply:
        if req.mode == "source":
            return Reply(EchoReply(0), bytes(req.size))
        return Reply(EchoReply(len(call.payload)), call.payload)

    async def sleep(req: Sleep, call: Call) -> Slept:
        try:
            await trio.sleep(req.seconds)
        except trio.Cancelled:
            ts.cancelled.append(req.seconds)
            raise
        ts.finished.append(req.seconds)
        return Slept()

    async def fail(req: Fail, call: Call) -> Message:
        if req.kind == "not_found":
            raise NotFound(req.message, path="/a/b", ino=42)
        if req.kind == "bug":
            raise RuntimeError("a bug in a handler")
        if req.kind == "odd_details":
            raise NotFound("odd", path=Path("/x"), items=[1, 2], message="m")  # type: ignore[arg-type]
        if req.kind == "group":

            async def lookup() -> None:
                raise NotFound("deep inside a fan-out")

            async with trio.open_nursery() as fan_out:
                fan_out.start_soon(lookup)
        raise PrismError(req.message)

    async def square(req: Square, call: Call) -> Squared:
        await trio.sleep(0.001 * (req.value % 7))  # replies come back out of order
        return Squared(req.value * req.value)

    server.register(Ping, ping, roles=EVERYONE)
    server.register(Echo, echo)
    server.register(Sleep, sleep)
    server.register(Fail, fail)
    server.register(Square, square)
    addresses = await nursery.start(server.serve, "127.0.0.1", 0)
    ts.address = addresses[0]
    return ts


@pytest.fixture
async def rpc_server(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> AsyncIterator[ServerUnderTest]:
    ts = await start_test_server(nursery, creds)
    yield ts
    ts.server._conn_scope.cancel()


# --- real node processes --------------------------------------------------------

PRISMFS = [sys.executable, "-m", "prismfs"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRISMFS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@dataclass
class NodeProcess:
    proc: subprocess.Popen[str]
    data_dir: Path

    def wait_listening(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        state = self.data_dir / "node.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node exited early: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            if state.exists():
                import json

                try:
                    return str(json.loads(state.read_text())["rpc_address"])
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        raise AssertionError("node did not start listening in time")


@pytest.fixture
def node_procs() -> Iterator[list[NodeProcess]]:
    """Node processes started by a test; killed by pid afterwards, whatever happened."""
    procs: list[NodeProcess] = []
    yield procs
    for np in procs:
        if np.proc.poll() is None:
            np.proc.send_signal(signal.SIGKILL)
        np.proc.wait(timeout=10)
        for stream in (np.proc.stdout, np.proc.stderr):
            if stream is not None:
                stream.close()


def start_node(procs: list[NodeProcess], data_dir: Path, *extra: str) -> NodeProcess:
    proc = subprocess.Popen(
        [*PRISMFS, "node", "start", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    np = NodeProcess(proc, data_dir)
    procs.append(np)
    return np
