"""Hostile and broken clients: each must cost only its own connection, be
logged, and leave the server serving everybody else."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

from conftest import ServerUnderTest, start_test_server
from prismfs.wire.address import parse_address
from prismfs.wire.auth import ClusterCredentials, client_handshake
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import encode_message
from prismfs.wire.frames import FrameKind, encode_frame, encode_head
from prismfs.wire.messages import AuthProof, Ping, Pong
from prismfs.wire.stream import FramedStream


@pytest.fixture
async def rpc_server(nursery: trio.Nursery, creds: ClusterCredentials) -> ServerUnderTest:
    """A server without TLS: these attacks are on the framing and the
    handshake, which run the same inside TLS (`test_not_tls_to_a_tls_node`)."""
    return await start_test_server(nursery, creds, insecure=True)


async def _raw(address: str) -> trio.SocketStream:
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


async def _authenticated_raw(ts: ServerUnderTest) -> trio.SocketStream:
    """A raw socket past the handshake, to send broken frames after it."""
    stream = await _raw(ts.address)
    await client_handshake(FramedStream(stream), ts.creds, timeout=5)
    return stream


async def _closed_by_server(stream: trio.SocketStream) -> bool:
    """True once the server has closed: EOF or reset, within 10 s."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return True


async def _wrong_secret(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _raw(ts.address)
    wrong = ClusterCredentials(ts.creds.cluster_id, b"w" * 32)
    with pytest.raises(Exception, match="wrong cluster secret"):
        await client_handshake(FramedStream(stream), wrong, timeout=5)
    return stream


async def _no_handshake(ts: ServerUnderTest) -> trio.SocketStream:
    # Skip AUTH and send a request straight away.
    stream = await _raw(ts.address)
    await stream.send_all(encode_frame(FrameKind.REQUEST, 1, encode_message(Ping())))
    return stream


async def _garbage_frame(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _authenticated_raw(ts)
    await stream.send_all(struct.pack(">I", 40) + b"\xde\xad\xbe\xef" * 10)
    return stream


async def _garbage_header(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _authenticated_raw(ts)
    await stream.send_all(encode_frame(FrameKind.REQUEST, 7, b"\xc1\xff\x00garbage"))
    return stream


async def _oversize_length(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _authenticated_raw(ts)
    await stream.send_all(struct.pack(">I", 0xFFFFFFFF) + b"\x01\x04")
    return stream


async def _half_frame_then_disconnect(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _authenticated_raw(ts)
    head = encode_head(FrameKind.REQUEST, 3, encode_message(Ping()), 1 << 20)
    await stream.send_all(head + b"x" * 1000)
    await stream.send_eof()
    return stream


async def _garbage_instead_of_auth(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _raw(ts.address)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream


async def _auth_with_bad_nonce(ts: ServerUnderTest) -> trio.SocketStream:
    stream = await _raw(ts.address)
    proof = AuthProof(nonce=b"short", proof=b"\x00" * 32)
    await stream.send_all(encode_frame(FrameKind.AUTH, 0, encode_message(proof)))
    return stream


async def _hostile_error_instead_of_auth(ts: ServerUnderTest) -> trio.SocketStream:
    # An ERROR frame whose details would collide with constructor arguments.
    from prismfs.wire.messages import ErrorReply

    stream = await _raw(ts.address)
    reply = ErrorReply("not_found", "x\nforged log line", {"message": "boom", "remote_code": 1})
    await stream.send_all(encode_frame(FrameKind.ERROR, 0, encode_message(reply)))
    return stream


async def _big_frame_before_auth(ts: ServerUnderTest) -> trio.SocketStream:
    # Announce 60 MiB before authenticating: nothing may be allocated for it.
    stream = await _raw(ts.address)
    head = encode_head(FrameKind.AUTH, 0, encode_message(Ping()), 60 * 1024 * 1024)
    await stream.send_all(head)
    return stream


CASES: dict[str, tuple[Callable[[ServerUnderTest], Awaitable[trio.SocketStream]], str]] = {
    "wrong secret": (_wrong_secret, "handshake failed: wrong cluster secret"),
    "no handshake": (_no_handshake, "handshake failed: expected the AUTH frame"),
    "garbage frame": (
        _garbage_frame,
        "closing connection from .*: (unsupported protocol|unknown frame|bad header)",
    ),
    "garbage header": (_garbage_header, "closing connection from .*: malformed message"),
    "oversize length": (
        _oversize_length,
        "closing connection from .*: frame of 4294967295 bytes exceeds",
    ),
    "half frame": (
        _half_frame_then_disconnect,
        "closing connection from .*: connection closed in the middle",
    ),
    "http request": (_garbage_instead_of_auth, "handshake failed"),
    "bad auth nonce": (_auth_with_bad_nonce, "handshake failed: malformed AUTH"),
    "hostile error frame": (_hostile_error_instead_of_auth, "got a ERROR frame"),
    "big frame before auth": (_big_frame_before_auth, "bytes exceeds the limit of 4110"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_client_costs_only_its_connection(
    rpc_server: ServerUnderTest, logs, case: str
) -> None:
    attack, log_pattern = CASES[case]
    logs.allow(log_pattern)
    async with open_rpc_pool(rpc_server.creds, insecure=True) as pool:
        # A well-behaved client is connected before the attack ...
        bystander = await pool.connection(rpc_server.address)
        stream = await attack(rpc_server)
        assert await _closed_by_server(stream)
        # ... and keeps working on the same connection afterwards,
        reply = await bystander.call(Ping(), timeout=5)
        assert isinstance(reply.message, Pong)
    # while new clients are still served too.
    async with open_rpc_pool(rpc_server.creds, insecure=True) as pool:
        assert isinstance((await pool.call(rpc_server.address, Ping())).message, Pong)
    assert logs.matching(log_pattern), f"no log line matched {log_pattern!r}"
    # Nothing leaks: every connection, good or bad, is gone once clients left.
    with trio.fail_after(5):
        while rpc_server.server.connections:
            await trio.sleep(0.01)


async def test_silent_client_is_dropped_after_handshake_timeout(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    from conftest import start_test_server
    from prismfs.wire.server import ServerLimits

    logs.allow("no handshake within")
    ts = await start_test_server(nursery, creds, limits=ServerLimits(handshake_timeout=0.3))
    stream = await _raw(ts.address)
    assert await _closed_by_server(stream)
    assert logs.matching("no handshake within 0.3s")
    ts.server._conn_scope.cancel()


async def test_client_that_never_reads_replies_cannot_grow_node_memory(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    from conftest import start_test_server
    from prismfs.wire.messages import Echo
    from prismfs.wire.server import ServerLimits

    mib = 1024 * 1024
    ts = await start_test_server(
        nursery, creds, limits=ServerLimits(max_inflight_bytes=8 * mib), insecure=True
    )
    stream = await _authenticated_raw(ts)
    requests = b"".join(
        encode_frame(FrameKind.REQUEST, rid, encode_message(Echo(mode="source", size=4 * mib)))
        for rid in range(1, 51)
    )
    await stream.send_all(requests)  # 50 x 4 MiB asked for; nothing is read back
    peak = 0
    for _ in range(50):
        await trio.sleep(0.01)
        peak = max(peak, sum(s.unsent_bytes for s in ts.server._streams))
    # Replies waiting for the client stay within the budget plus the replies of
    # the few handlers that were already running when it was crossed (trio may
    # run the reader before a handler it just started): far below 200 MiB.
    assert 0 < peak <= 8 * mib + 4 * (4 * mib)
    await stream.aclose()
    with trio.fail_after(5):
        while ts.server.connections:
            await trio.sleep(0.01)
    ts.server._conn_scope.cancel()
