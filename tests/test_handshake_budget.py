"""Unauthenticated connections get a bounded share of a node and nothing else:
silent floods from one address cost that address its own oldest
connections, the cluster's own hosts have a budget strangers cannot touch,
and a real cluster under 200 silent connections still takes a new mount
and a restarted node."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from conftest import start_test_server
from fuse_mount import Mount, fuse_available
from prismfs.procs import process_alive
from prismfs.wire.address import parse_address
from prismfs.wire.auth import ClusterCredentials
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.messages import Ping, Pong
from prismfs.wire.server import ServerLimits


async def _silent(address: str, source: str) -> trio.SocketStream:
    """A TCP connection from ``source`` that never says a word."""
    host, port = parse_address(address)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect((host, port))
    return trio.SocketStream(sock)


async def _is_closed(stream: trio.SocketStream, within: float) -> bool:
    """True if the server closes ``stream`` within ``within`` seconds (it
    reads only the HELLO the server sends first)."""
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_a_flood_from_one_address_costs_that_address_its_oldest(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("closing connection from")
    logs.allow("more connections were closed")
    limits = ServerLimits(max_handshakes_per_address=4, handshake_timeout=30, auth_timeout=30)
    ts = await start_test_server(nursery, creds, limits=limits)
    first = [await _silent(ts.address, "127.0.0.2") for _ in range(4)]
    await trio.sleep(0.2)
    assert not await _is_closed(first[0], 0.2)  # four fit
    await _silent(ts.address, "127.0.0.2")
    assert await _is_closed(first[0], 5)  # the fifth pushed out the oldest ...
    assert not await _is_closed(first[1], 0.3)  # ... and only it
    # Another address is not affected, and a client authenticates at once.
    other = await _silent(ts.address, "127.0.0.3")
    async with open_rpc_pool(creds) as pool:
        assert isinstance((await pool.call(ts.address, Ping(), timeout=5)).message, Pong)
    assert not await _is_closed(other, 0.3)
    assert ts.server.evicted_handshakes == 1
    assert logs.matching("not authenticated while its address opened more")
    ts.server._conn_scope.cancel()


async def test_strangers_cannot_evict_the_nodes_own_hosts(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("closing connection from")
    logs.allow("more connections were closed")
    limits = ServerLimits(
        max_handshakes=8, reserved_handshakes=2, handshake_timeout=30, auth_timeout=30
    )
    ts = await start_test_server(nursery, creds, limits=limits)
    ts.server.known_hosts = frozenset({"127.0.0.9"})
    peer = await _silent(ts.address, "127.0.0.9")  # a node's host, slow to authenticate
    strangers = [await _silent(ts.address, f"127.0.1.{i}") for i in range(1, 41)]
    await trio.sleep(0.5)
    assert not await _is_closed(peer, 0.5)  # 40 strangers did not push it out
    assert await _is_closed(strangers[0], 5)  # they pushed out each other
    assert ts.server.evicted_handshakes >= 32
    # The oldest-first eviction means a stranger that authenticates right
    # away still gets in during the flood.
    async with open_rpc_pool(creds) as pool:
        assert isinstance((await pool.call(ts.address, Ping(), timeout=5)).message, Pong)
    ts.server._conn_scope.cancel()


async def test_a_client_that_says_nothing_after_hello_is_closed_soon(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("no handshake within 0.5s")
    limits = ServerLimits(handshake_timeout=30, auth_timeout=0.5)
    ts = await start_test_server(nursery, creds, limits=limits, insecure=True)
    stream = await _silent(ts.address, "127.0.0.1")
    start = trio.current_time()
    assert await _is_closed(stream, 5)
    assert trio.current_time() - start < 3  # the AUTH deadline, not the 30 s one
    assert logs.matching("no handshake within 0.5s")
    ts.server._conn_scope.cancel()


class _Flood:
    """``count`` silent connections from ``source`` to each address, each
    opened again as soon as the server closes it (in a thread of its own)."""

    def __init__(self, addresses: list[str], source: str, count: int) -> None:
        self.targets = [parse_address(a) for a in addresses]
        self.source = source
        self.count = count
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _open(self, target: tuple[str, int]) -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        s.bind((self.source, 0))
        with contextlib.suppress(BlockingIOError):
            s.connect(target)
        self.opened += 1
        return s

    def _run(self) -> None:
        import select

        socks = {self._open(t): t for t in self.targets for _ in range(self.count)}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(list(socks), [], [], 0.2)
                for s in readable:
                    try:
                        data = s.recv(65536)
                    except OSError as exc:
                        if exc.errno not in (errno.ECONNRESET, errno.EAGAIN, errno.ECONNREFUSED):
                            raise  # (refused: the node is restarting)
                        data = b""
                    if not data:  # closed by the node: open another
                        target = socks.pop(s)
                        s.close()
                        time.sleep(0.005)
                        socks[self._open(target)] = target
        finally:
            for s in socks:
                s.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Mount]:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    m = Mount(tmp_path)
    try:
        m.up()
        yield m
    finally:
        m.cleanup()


def test_200_silent_connections_stop_neither_a_new_mount_nor_a_restarted_node(
    cluster: Mount, tmp_path: Path
) -> None:
    from conftest import run_cli

    nodes = cluster.nodes()
    addresses = [str(n["rpc_address"]) for n in nodes]
    with _Flood(addresses, "127.0.0.2", 200) as flood:
        time.sleep(3)  # every node's budget long full, connections churning
        point = cluster.mount()
        (point / "during-flood.txt").write_text("ok")
        assert (point / "during-flood.txt").read_text() == "ok"
        # A node restarts (SIGTERM, then started again as it was) and rejoins.
        victim = nodes[2]
        pid = int(victim["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        up = run_cli("dev", "up", "--dir", str(cluster.dir), env=cluster.env, timeout=120)
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            out = run_cli("cluster", "status", "--json", env=_env(cluster), timeout=60)
            if out.returncode == 0:
                status = json.loads(out.stdout).get("health") or {}
                states = [n["state"] for n in status.get("nodes", [])]  # type: ignore[attr-defined]
                if states == ["up"] * 3:
                    break
            time.sleep(1)
        assert [n["state"] for n in status["nodes"]] == ["up"] * 3, status  # type: ignore[index]
        (point / "after-restart.txt").write_text("still")
        time.sleep(11)  # one more window of the quiet log
        assert flood.alive() and flood.opened > 600  # the flood went on all along
    assert (point / "after-restart.txt").read_text() == "still"
    logs = "".join((Path(str(n["data_dir"])) / "node.log").read_text() for n in nodes)
    assert "more connections were closed before authenticating" in logs


def _env(cluster: Mount) -> dict[str, str]:
    return {**cluster.env, "PRISMFS_CONFIG": str(cluster.dir / "client.toml")}
