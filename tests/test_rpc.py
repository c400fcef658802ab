"""RPC behaviour over real loopback TCP: multiplexing, bulk payloads,
deadlines and cancellation, typed remote errors, limits, shutdown, TLS."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from conftest import Fail, ServerUnderTest, Sleep, Slept, Square, Squared, start_test_server
from prismfs.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    InternalError,
    NotFound,
    PrismError,
    ProtocolError,
    ShuttingDown,
    Unavailable,
    UnknownMethod,
)
from prismfs.wire.auth import ClusterCredentials
from prismfs.wire.client import dial, open_rpc_pool
from prismfs.wire.codec import Message
from prismfs.wire.frames import FrameKind
from prismfs.wire.messages import Echo, EchoReply, Ping, Pong
from prismfs.wire.server import ServerLimits


class NotServed(Message, frozen=True):
    pass


async def test_ping_returns_typed_reply(rpc_server: ServerUnderTest) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        reply = await pool.call(rpc_server.address, Ping())
    assert isinstance(reply.message, Pong)
    assert reply.message.cluster_id == rpc_server.creds.cluster_id
    assert reply.payload == b""


async def test_thousand_concurrent_calls_on_one_connection(rpc_server: ServerUnderTest) -> None:
    results: dict[int, int] = {}
    async with open_rpc_pool(rpc_server.creds) as pool:
        conn = await pool.connection(rpc_server.address)

        async def one(i: int) -> None:
            reply = await pool.call(rpc_server.address, Square(i))
            assert isinstance(reply.message, Squared)
            results[i] = reply.message.value

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
        # Every call used the one connection the pool dialled first.
        assert await pool.connection(rpc_server.address) is conn
    assert results == {i: i * i for i in range(1000)}
    assert rpc_server.server.connections == 1


async def test_64_mib_payload_round_trips(rpc_server: ServerUnderTest) -> None:
    payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    async with open_rpc_pool(rpc_server.creds) as pool:
        reply = await pool.call(rpc_server.address, Echo(), payload, timeout=60)
    assert isinstance(reply.message, EchoReply)
    assert reply.message.received == len(payload)
    assert len(reply.payload) == len(payload)
    assert reply.payload == payload


async def test_payloads_of_many_sizes_interleave_correctly(rpc_server: ServerUnderTest) -> None:
    sizes = [0, 1, 17, 65535, 65536, 65537, 1 << 20, (4 << 20) + 3]
    async with open_rpc_pool(rpc_server.creds) as pool:

        async def one(size: int) -> None:
            data = bytes([size % 251]) * size
            reply = await pool.call(rpc_server.address, Echo(), data)
            assert reply.payload == data

        async with trio.open_nursery() as nursery:
            for size in sizes * 3:
                nursery.start_soon(one, size)


async def test_deadline_cancels_a_slow_call_on_both_sides(rpc_server: ServerUnderTest) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await pool.call(rpc_server.address, Sleep(30), timeout=0.2)
        assert trio.current_time() - start < 5
        # The server stopped the handler (CANCEL frame), it did not run to the end.
        with trio.fail_after(5):
            while not rpc_server.cancelled:
                await trio.sleep(0.01)
        assert rpc_server.cancelled == [30]
        assert rpc_server.finished == []
        # The connection is still good for the next call.
        reply = await pool.call(rpc_server.address, Sleep(0.01), timeout=5)
        assert isinstance(reply.message, Slept)


async def test_caller_cancellation_cancels_server_handler(rpc_server: ServerUnderTest) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        with trio.move_on_after(0.2):
            await pool.call(rpc_server.address, Sleep(20))
        with trio.fail_after(5):
            while not rpc_server.cancelled:
                await trio.sleep(0.01)
        assert rpc_server.server.inflight == 0


async def test_handler_error_arrives_as_same_type(rpc_server: ServerUnderTest) -> None:
    # Raised through the pool's context manager: it arrives as itself, not in an ExceptionGroup.
    with pytest.raises(NotFound) as info:
        async with open_rpc_pool(rpc_server.creds) as pool:
            await pool.call(rpc_server.address, Fail("not_found", "no such file"))
    assert info.value.message == "no such file"
    assert info.value.details == {"path": "/a/b", "ino": 42}
    assert info.value.errno == NotFound.errno


async def test_handler_bug_becomes_internal_error_and_is_logged(
    rpc_server: ServerUnderTest, logs
) -> None:
    logs.allow("handler for Fail")
    async with open_rpc_pool(rpc_server.creds) as pool:
        with pytest.raises(InternalError):
            await pool.call(rpc_server.address, Fail("bug"))
        # The server and the connection survive the bug.
        assert isinstance((await pool.call(rpc_server.address, Ping())).message, Pong)
    assert logs.matching("handler for Fail")


async def test_unserved_message_type_is_unknown_method(rpc_server: ServerUnderTest) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        with pytest.raises(UnknownMethod):
            await pool.call(rpc_server.address, NotServed())


async def test_overloaded_connection_refuses_extra_calls(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    ts = await start_test_server(nursery, creds, limits=ServerLimits(max_inflight=4))
    errors: list[PrismError] = []
    async with open_rpc_pool(creds) as pool:

        async def one() -> None:
            try:
                await pool.call(ts.address, Sleep(0.5))
            except PrismError as exc:
                errors.append(exc)

        async with trio.open_nursery() as inner:
            for _ in range(10):
                inner.start_soon(one)
    assert len(errors) == 6
    assert all(type(e).__name__ == "Overloaded" for e in errors)
    ts.server._conn_scope.cancel()


async def test_shutdown_finishes_running_calls_and_refuses_new_ones(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    ts = await start_test_server(nursery, creds)
    async with open_rpc_pool(creds) as pool:
        await pool.connection(ts.address)
        results: list[object] = []

        async def slow() -> None:
            results.append((await pool.call(ts.address, Sleep(0.3))).message)

        async with trio.open_nursery() as inner:
            inner.start_soon(slow)
            await trio.sleep(0.05)
            inner.start_soon(ts.server.shutdown, 5.0)
            await trio.sleep(0.05)
            with pytest.raises(ShuttingDown):
                await pool.call(ts.address, Ping())
        assert results == [Slept()]
    assert ts.finished == [0.3]


async def test_pool_redials_after_server_restart(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    ts = await start_test_server(nursery, creds)
    host, port = ts.address.rsplit(":", 1)
    async with open_rpc_pool(creds, connect_timeout=2) as pool:
        await pool.call(ts.address, Ping())
        await ts.server.shutdown(0)
        await trio.sleep(0.1)
        with pytest.raises(Unavailable):
            await pool.call(ts.address, Ping())
        # A new server on the same port: the pool dials again by itself.
        from prismfs.wire.server import RpcServer

        again = RpcServer(creds, "again")

        async def ping(req: Ping, call: object) -> Pong:
            return Pong("again", creds.cluster_id, "t", "standalone", ts.address)

        again.register(Ping, ping)
        await nursery.start(again.serve, host, int(port))
        reply = await pool.call(ts.address, Ping())
        assert isinstance(reply.message, Pong) and reply.message.node_id == "again"
        again._conn_scope.cancel()


async def test_wrong_secret_is_refused_with_clear_error(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("handshake failed")
    wrong = ClusterCredentials(creds.cluster_id, b"x" * 32)
    # With TLS (the default) the node's certificate is from another CA ...
    ts = await start_test_server(nursery, creds)
    with pytest.raises(AuthenticationFailed, match="not from this cluster's CA"):
        await dial(ts.address, wrong)
    # ... and without it the HMAC proof is wrong.
    plain = await start_test_server(nursery, creds, insecure=True)
    with pytest.raises(AuthenticationFailed, match="wrong cluster secret"):
        await dial(plain.address, wrong, insecure=True)
    ts.server._conn_scope.cancel()
    plain.server._conn_scope.cancel()


async def test_other_cluster_is_refused_by_client(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("handshake failed")
    plain = await start_test_server(nursery, creds, insecure=True)
    other = ClusterCredentials.generate()
    with pytest.raises(AuthenticationFailed, match="belongs to cluster"):
        await dial(plain.address, other, insecure=True)
    plain.server._conn_scope.cancel()


async def test_tls_is_on_by_default_and_insecure_is_explicit(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    logs.allow("handshake failed")
    logs.allow("no handshake within")
    ts = await start_test_server(nursery, creds)
    # On the socket: the node speaks TLS with a certificate of the cluster CA.
    host, port = ts.address.rsplit(":", 1)
    raw = ssl.create_default_context()
    raw.check_hostname = False
    raw.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream(host, int(port))
    tls = trio.SSLStream(tcp, raw, server_hostname=host)
    await tls.do_handshake()
    from cryptography import x509

    der = tls.getpeercert(binary_form=True)
    assert der is not None
    issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
    assert issuer == f"CN=PrismFS cluster {creds.cluster_id}"
    await tls.aclose()
    # A client credential carries the CA and talks TLS the same way.
    client = creds.derive("client", "c-1")
    async with open_rpc_pool(client) as pool:
        assert isinstance((await pool.call(ts.address, Ping())).message, Pong)
    # A plain client to a TLS node, a TLS client to a plain one: clear errors.
    with pytest.raises(Unavailable, match="drop --insecure"):
        await dial(ts.address, creds, insecure=True, timeout=1)
    plain = await start_test_server(nursery, creds, insecure=True)
    with pytest.raises(Unavailable, match="does not speak TLS"):
        await dial(plain.address, creds, timeout=2)
    ts.server._conn_scope.cancel()
    plain.server._conn_scope.cancel()


async def test_unreachable_address_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        await dial("127.0.0.1:1", ClusterCredentials.generate(), timeout=2)


async def test_tls_round_trip_and_wrong_ca(
    nursery: trio.Nursery, creds: ClusterCredentials, logs
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ts = await start_test_server(nursery, creds, ssl_context=server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with open_rpc_pool(creds, ssl_context=client_ctx) as pool:
        data = b"tls" * 500_000
        reply = await pool.call(ts.address, Echo(), data)
        assert reply.payload == data
    # A client that trusts another CA refuses the node's certificate.
    logs.allow("handshake failed")
    other_ctx = ssl.create_default_context()
    trustme.CA().configure_trust(other_ctx)
    with pytest.raises(AuthenticationFailed, match="TLS"):
        await dial(ts.address, creds, ssl_context=other_ctx)
    # A plain-TCP client cannot talk to a TLS node either: the TLS server
    # answers with bytes that are no frame, or hangs up.
    with pytest.raises((Unavailable, ProtocolError)):
        await dial(ts.address, creds, timeout=2, insecure=True)
    ts.server._conn_scope.cancel()


class Hold(Message, frozen=True):
    seconds: float


async def test_payload_budget_pauses_reading_instead_of_buffering(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    ts = await start_test_server(
        nursery, creds, limits=ServerLimits(max_inflight_bytes=2 * 1024 * 1024)
    )
    running = [0, 0]  # now, peak

    async def hold(req: Hold, call: object) -> Slept:
        running[0] += 1
        running[1] = max(running)
        await trio.sleep(req.seconds)
        running[0] -= 1
        return Slept()

    ts.server.register(Hold, hold)
    async with open_rpc_pool(creds) as pool, trio.open_nursery() as inner:
        for _ in range(8):
            inner.start_soon(pool.call, ts.address, Hold(0.1), bytes(1024 * 1024))
    # 2 MiB budget: at most the call that crossed it runs beside the two below it.
    assert running[1] <= 3
    assert running[0] == 0
    ts.server._conn_scope.cancel()


async def test_non_plain_error_details_reach_the_caller_as_text(
    rpc_server: ServerUnderTest,
) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        slow = None

        async def bystander() -> None:
            nonlocal slow
            slow = (await pool.call(rpc_server.address, Sleep(0.2))).message

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander)
            await trio.sleep(0.05)
            with pytest.raises(NotFound) as info:
                await pool.call(rpc_server.address, Fail("odd_details"))
        assert slow == Slept()  # the concurrent call on the same connection was not hurt
    assert info.value.details == {"path": "/x", "items": "[1, 2]", "message": "m"}


async def test_typed_error_from_a_fanned_out_handler_keeps_its_type(
    rpc_server: ServerUnderTest,
) -> None:
    async with open_rpc_pool(rpc_server.creds) as pool:
        with pytest.raises(NotFound, match="deep inside a fan-out"):
            await pool.call(rpc_server.address, Fail("group"))


async def test_deadline_covers_connecting_and_dials_are_shared(nursery: trio.Nursery) -> None:
    # A listener that accepts TCP and then never says HELLO.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent: list[trio.SocketStream] = []

    async def accept_forever() -> None:
        while True:
            silent.append(await listeners[0].accept())

    accepting = trio.CancelScope()

    async def accept_until_done() -> None:
        with accepting:
            await accept_forever()

    nursery.start_soon(accept_until_done)
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    creds = ClusterCredentials.generate()
    outcomes: list[str] = []
    start = trio.current_time()
    async with open_rpc_pool(creds, connect_timeout=1.0) as pool:

        async def one() -> None:
            try:
                await pool.call(address, Ping(), timeout=0.3)
            except DeadlineExceeded:
                outcomes.append("deadline")

        async with trio.open_nursery() as inner:
            for _ in range(8):
                inner.start_soon(one)
    assert outcomes == ["deadline"] * 8
    assert trio.current_time() - start < 1.5  # all at ~0.3 s, not one after another
    assert len(silent) == 1  # one shared dial, not eight
    accepting.cancel()
    for stream in silent:
        await stream.aclose()


async def test_listener_refuses_new_clients_during_shutdown_grace(
    nursery: trio.Nursery, creds: ClusterCredentials
) -> None:
    ts = await start_test_server(nursery, creds)
    async with open_rpc_pool(creds) as pool, trio.open_nursery() as inner:
        inner.start_soon(pool.call, ts.address, Sleep(0.5))
        await trio.sleep(0.05)
        inner.start_soon(ts.server.shutdown, 5.0)
        await trio.sleep(0.05)
        start = trio.current_time()
        with pytest.raises(Unavailable, match="refused"):
            await dial(ts.address, creds, timeout=3)
        assert trio.current_time() - start < 1  # refused at once, not left hanging


async def test_cancel_is_not_lost_when_the_send_queue_is_full() -> None:
    from prismfs.wire.frames import FrameDecoder
    from prismfs.wire.messages import Cancel
    from prismfs.wire.stream import FramedStream

    left, right = trio.testing.memory_stream_pair()
    conn = FramedStream(left, queue_size=1)
    await conn.send(FrameKind.REQUEST, 1, Ping())  # fills the queue; no writer yet
    assert not conn.send_nowait(FrameKind.CANCEL, 1, Cancel())
    conn.send_control(FrameKind.CANCEL, 1, Cancel())
    decoder = FrameDecoder()
    kinds = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run_writer)
        while len(kinds) < 2:
            decoder.feed(await right.receive_some())
            while (frame := decoder.next_frame()) is not None:
                kinds.append(frame.kind)
        conn.close_writer()
    assert kinds == [FrameKind.REQUEST, FrameKind.CANCEL]


async def test_notifications_arrive_in_order_without_replies(
    rpc_server: ServerUnderTest,
) -> None:
    """NOTIFY frames run their handler in the reader, in order, and get no
    reply; one of a type nobody handles is dropped (and counted); calls on the
    same connection keep working."""
    got: list[int] = []
    rpc_server.server.register_notification(Square, lambda m, peer: got.append(m.value))
    async with open_rpc_pool(rpc_server.creds) as pool:
        for i in range(200):
            await pool.notify(rpc_server.address, Square(i), timeout=5)
        await pool.notify(rpc_server.address, NotServed(), timeout=5)
        reply = await pool.call(rpc_server.address, Square(3))  # same connection, after them
        assert isinstance(reply.message, Squared) and reply.message.value == 9
        assert got == list(range(200))
        counts = rpc_server.server.stats.counts
        assert counts["notified.Square"] == 200 and counts["dropped.NotServed"] == 1
        assert pool.stats.counts["notify.Square"] == 200
        assert rpc_server.server.connections == 1


async def test_a_failing_notification_handler_is_logged_and_the_connection_lives(
    rpc_server: ServerUnderTest, logs
) -> None:  # type: ignore[no-untyped-def]
    logs.allow("notification handler for Square")

    def boom(m: Square, peer: str) -> None:
        raise RuntimeError("bug")

    rpc_server.server.register_notification(Square, boom)
    async with open_rpc_pool(rpc_server.creds) as pool:
        await pool.notify(rpc_server.address, Square(1), timeout=5)
        reply = await pool.call(rpc_server.address, Ping())
        assert isinstance(reply.message, Pong)


async def test_direct_sends_that_the_socket_takes_in_part_stay_whole_and_in_order() -> None:
    """The writer bypass: with a tiny socket buffer and a peer that is not
    reading yet, a frame goes out in part; its rest is queued ahead of every
    later frame, and the peer decodes each frame whole, in order."""
    import socket as stdlib_socket

    from prismfs.wire.frames import FrameDecoder
    from prismfs.wire.stream import FramedStream

    a, b = stdlib_socket.socketpair()
    a.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    b.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    right = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    conn = FramedStream(left)
    sizes = [40_000, 3, 12_000, 0, 10_000, 15_000, 7, 60_000, 9_000]
    for i, size in enumerate(sizes):
        payload = bytes([i]) * size
        # up to 64 KiB goes out by writev from a view, whole or in part
        await conn.send(
            FrameKind.REQUEST, i + 1, Echo(), memoryview(payload) if i % 2 == 0 else payload
        )
    assert conn.unsent > 0  # the socket did not take everything: the writer has the rest
    decoder = FrameDecoder()
    got: list[tuple[int, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run_writer)
        while len(got) < len(sizes):
            decoder.feed(await right.receive_some(65536))
            while (frame := decoder.next_frame()) is not None:
                got.append((frame.request_id, bytes(frame.payload)))
        conn.close_writer()
    assert got == [(i + 1, bytes([i]) * size) for i, size in enumerate(sizes)]
    await left.aclose()
    await right.aclose()


async def test_a_direct_send_after_the_writer_has_gone_is_unavailable() -> None:
    """A frame the socket takes in part, once the writer has exited (the
    stream broke or its task was cancelled), is reported as ``Unavailable``,
    never as trio's raw BrokenResourceError."""
    import socket as stdlib_socket

    from prismfs.wire.stream import FramedStream

    a, b = stdlib_socket.socketpair()
    a.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    b.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    conn = FramedStream(left)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run_writer)
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()  # the writer exits and closes its queue
    with pytest.raises(Unavailable, match="closed"):
        await conn.send(FrameKind.REQUEST, 1, Echo(), b"x" * 60_000)
    assert not conn.send_nowait(FrameKind.REQUEST, 2, Echo(), b"y" * 60_000)
    left.socket.close()
    b.close()


class Halve(Message, frozen=True):
    value: int


async def test_a_fast_handler_answers_in_the_reader_or_hands_over(
    rpc_server: ServerUnderTest,
) -> None:
    """``register(fast=...)``: an answer given at once needs no task; None hands
    the call to the usual handler; a typed error arrives as itself."""
    slow_calls: list[int] = []

    async def slow(request: Halve, call: object) -> Squared:
        slow_calls.append(request.value)
        await trio.lowlevel.checkpoint()
        return Squared(request.value // 2)

    def fast(request: Halve, call: object) -> Squared | None:
        if request.value < 0:
            raise NotFound("negative")
        return Squared(request.value // 2) if request.value % 2 == 0 else None

    rpc_server.server.register(Halve, slow, fast=fast)  # type: ignore[arg-type]
    async with open_rpc_pool(rpc_server.creds) as pool:
        even = await pool.call(rpc_server.address, Halve(10))
        odd = await pool.call(rpc_server.address, Halve(7))
        with pytest.raises(NotFound, match="negative"):
            await pool.call(rpc_server.address, Halve(-1))
    assert isinstance(even.message, Squared) and even.message.value == 5
    assert isinstance(odd.message, Squared) and odd.message.value == 3
    assert slow_calls == [7]
    counts = rpc_server.server.stats.counts
    assert counts["served.Halve.at_once"] == 2
