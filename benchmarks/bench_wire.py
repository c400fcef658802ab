"""Wire protocol benchmark: RPC bulk throughput against a raw trio socket baseline.

What is measured, in one run so that the figures can be compared as ratios on a
shared, noisy machine:

* ``upload``: the client sends ``Echo(mode="sink")`` with a 4 MiB payload and gets a
  small `EchoReply` back; ``download``: the client sends ``Echo(mode="source",
  size=4 MiB)`` and gets 4 MiB back. Each with 1 and with 4 calls in flight on one
  connection, against a real node (``prismfs node start``) in its own process.
* ``raw``: the same bytes over a plain trio TCP connection to a server in another
  process (this script re-invoked with ``--raw-server``). Requests are a 5-byte head
  (``u8 op``, ``u32 length``); an upload is the head plus ``length`` bytes and is
  answered by an 8-byte ack, a download is answered by ``u32 length`` plus ``length``
  bytes. Both ends use ``recv_into`` into buffers reused for the whole run and send
  one preallocated buffer of non-zero bytes, so the baseline is close to the best
  trio can do with these socket calls. The same number of requests is kept in flight on one
  connection by pipelining: a sender task sends while fewer than K replies are
  outstanding, a receiver task reads the replies in order.
* ``ping``: ``Ping()`` calls per second with 1 and with 64 calls in flight.

Method. Each measurement runs K looping workers for ``--seconds`` (bounded also in
call count and by a hard timeout); throughput is payload bytes moved divided by the
time from the first request to the last reply (MB = 10^6 bytes). A short warm-up
precedes the first repetition. Repetitions are interleaved (raw, rpc, raw, rpc, ...)
so that drift in machine load hits both sides alike; the table shows the median and
the range of ``--reps`` repetitions. The RPC/raw ratio is given twice: the ratio of
the medians, and the median of the ratios of each adjacent raw/rpc pair (less
sensitive to load that changes between repetitions); the target (RPC at least 70%
of raw) is judged on the paired ratio. The CPU columns are the CPU time used by the
client process (this one) and by the server process, as a percentage of one core,
over the measurement; "per cpu-s" is the figure divided by the CPU seconds both ends
used, which stays comparable when other work on the machine takes CPU away.

The RPC side is TLS (the default) unless ``--insecure``: run both to see what
TLS costs (each run's rpc/raw ratio is against the same plain-TCP baseline).

Usage::

    python benchmarks/bench_wire.py [--seconds 3] [--reps 3] [--json] [--insecure]

Only 127.0.0.1 is used. Every process started is stopped (SIGTERM, then SIGKILL)
and every temporary directory removed, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from prismfs.wire.auth import ClusterCredentials, read_secret_file
from prismfs.wire.client import RpcPool, open_rpc_pool
from prismfs.wire.messages import Echo, EchoReply, Ping, Pong

MiB = 1024 * 1024
PAYLOAD = 4 * MiB
BULK_INFLIGHT = (1, 4)
PING_INFLIGHT = (1, 64)
MAX_BULK_CALLS = 20_000
MAX_PING_CALLS = 2_000_000
SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
TARGET_RATIO = 0.70
RAW_SERVER_LIFETIME = 900.0
"""The raw server exits on its own after this long, or when its stdin closes."""

_HEAD = struct.Struct(">BI")
_ACK = struct.Struct(">Q")
_LEN = struct.Struct(">I")
OP_UPLOAD = 1
OP_DOWNLOAD = 2


def _pattern(size: int) -> bytes:
    """Non-zero data: a calloc'ed ``bytes(size)`` may be backed by the kernel's shared
    zero page, which the kernel copies from its cache and so flatters the sender."""
    return (bytes(range(1, 256)) * (size // 255 + 1))[:size]


# --- raw baseline: server (runs in a child process) ---------------------------


async def _recv_exact(sock: trio.socket.SocketType, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False on EOF before the first byte."""
    got = 0
    while got < len(view):
        n = await sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            if got == 0:
                return False
            raise EOFError("connection closed in the middle of a message")
        got += n
    return True


async def _raw_serve_connection(stream: trio.SocketStream) -> None:
    sock = stream.socket
    head = bytearray(_HEAD.size)
    buf = bytearray(PAYLOAD)
    source = _pattern(PAYLOAD)
    try:
        while True:
            if not await _recv_exact(sock, memoryview(head)):
                return
            op, length = _HEAD.unpack(head)
            if length > PAYLOAD:
                return
            if op == OP_UPLOAD:
                if not await _recv_exact(sock, memoryview(buf)[:length]):
                    return
                await stream.send_all(_ACK.pack(length))
            elif op == OP_DOWNLOAD:
                await stream.send_all(_LEN.pack(length))
                await stream.send_all(memoryview(source)[:length])
            else:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _raw_server_main() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(port, flush=True)
    async with trio.open_nursery() as nursery:

        async def watch_stdin() -> None:
            await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_stdin)
        nursery.start_soon(trio.serve_listeners, _raw_serve_connection, listeners)
        await trio.sleep(RAW_SERVER_LIFETIME)
        nursery.cancel_scope.cancel()


# --- raw baseline: client ----------------------------------------------------


class RawClient:
    """One pipelined connection to the raw server."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray(PAYLOAD)
        self.payload = _pattern(PAYLOAD)
        self.small = bytearray(max(_ACK.size, _LEN.size))

    async def run(self, op: int, inflight: int, seconds: float, max_calls: int) -> int:
        """Keep ``inflight`` requests outstanding for ``seconds``; returns calls completed."""
        window = trio.Semaphore(inflight)
        send_chan, recv_chan = trio.open_memory_channel[None](inflight)
        done = 0
        deadline = trio.current_time() + seconds
        sock = self.stream.socket

        async def sender() -> None:
            async with send_chan:
                for _ in range(max_calls):
                    if trio.current_time() >= deadline:
                        break
                    await window.acquire()
                    await send_chan.send(None)
                    await self.stream.send_all(_HEAD.pack(op, PAYLOAD))
                    if op == OP_UPLOAD:
                        await self.stream.send_all(self.payload)

        async def receiver() -> None:
            nonlocal done
            async with recv_chan:
                async for _ in recv_chan:
                    if op == OP_UPLOAD:
                        await _need(sock, memoryview(self.small)[: _ACK.size])
                        assert _ACK.unpack_from(self.small)[0] == PAYLOAD
                    else:
                        await _need(sock, memoryview(self.small)[: _LEN.size])
                        (length,) = _LEN.unpack_from(self.small)
                        assert length == PAYLOAD
                        await _need(sock, memoryview(self.buf)[:length])
                    done += 1
                    window.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
        return done


async def _need(sock: trio.socket.SocketType, view: memoryview) -> None:
    if not await _recv_exact(sock, view):
        raise EOFError("raw server closed the connection")


# --- processes ---------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; only this process, by its pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0.0 if unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    # Fields 14 and 15 of /proc/PID/stat; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Servers:
    node_pid: int
    rpc_address: str
    raw_pid: int
    raw_port: int
    creds: ClusterCredentials
    data_dir: Path
    insecure: bool = False  # TLS (the default) or not


@contextlib.contextmanager
def start_servers(insecure: bool = False) -> Iterator[Servers]:
    """A real node and a raw server, each in its own process; stopped and removed on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="prismfs-bench-"))
    try:
        data_dir = tmp / "node"
        subprocess.run(
            [sys.executable, "-m", "prismfs", "cluster", "init", "--data-dir", str(data_dir)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=SERVER_START_TIMEOUT,
        )
        creds = read_secret_file(data_dir / "cluster.secret")
        log_file = data_dir / "node.log"
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prismfs",
                "node",
                "start",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
                "--log-file",
                str(log_file),
                *(["--insecure"] if insecure else []),
            ],
            stdin=subprocess.DEVNULL,
        )
        procs.append(node)
        raw = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--raw-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(raw)
        rpc_address = _wait_for_node(node, data_dir / "node.json", log_file)
        raw_port = _read_port(raw)
        yield Servers(node.pid, rpc_address, raw.pid, raw_port, creds, data_dir, insecure)
    finally:
        for proc in reversed(procs):
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_for_node(node: subprocess.Popen[bytes], state: Path, log_file: Path) -> str:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if node.poll() is not None:
            log = log_file.read_text() if log_file.exists() else ""
            raise RuntimeError(f"node exited with status {node.returncode}:\n{log}")
        try:
            address = json.loads(state.read_text())["rpc_address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
            continue
        return str(address)
    raise RuntimeError(f"node did not write {state} within {SERVER_START_TIMEOUT:g}s")


def _read_port(raw: subprocess.Popen[bytes]) -> int:
    """The port the raw server prints first thing, within SERVER_START_TIMEOUT."""
    assert raw.stdout is not None
    ready, _, _ = select.select([raw.stdout], [], [], SERVER_START_TIMEOUT)
    if not ready:
        raise RuntimeError(f"raw server printed no port within {SERVER_START_TIMEOUT:g}s")
    line = raw.stdout.readline()
    if not line:
        raise RuntimeError(f"raw server exited with status {raw.wait(STOP_TIMEOUT)}")
    return int(line)


# --- measurements -----------------------------------------------------------


@dataclass
class Sample:
    value: float
    client_cpu: float
    server_cpu: float

    @property
    def per_cpu_s(self) -> float:
        """The figure per second of CPU used by both ends: robust to CPU stolen by others."""
        return self.value / max((self.client_cpu + self.server_cpu) / 100, 1e-9)


@dataclass
class Series:
    name: str
    unit: str
    samples: list[Sample] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(s.value for s in self.samples)


@contextlib.contextmanager
def _cpu_meter(server_pid: int) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    wall, client, server = time.perf_counter(), time.process_time(), _cpu_seconds(server_pid)
    yield out
    elapsed = time.perf_counter() - wall
    out["client"] = 100 * (time.process_time() - client) / elapsed
    out["server"] = 100 * (_cpu_seconds(server_pid) - server) / elapsed


async def _workers(
    inflight: int, seconds: float, max_calls: int, one_call: Callable[[], Awaitable[None]]
) -> int:
    """``inflight`` tasks calling ``one_call`` in a loop until the time or count is spent."""
    deadline = trio.current_time() + seconds
    started = 0
    done = 0

    async def worker() -> None:
        nonlocal started, done
        while started < max_calls and trio.current_time() < deadline:
            started += 1
            await one_call()
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(worker)
    return done


class Bench:
    def __init__(self, servers: Servers, pool: RpcPool, raw: RawClient, seconds: float) -> None:
        self.servers = servers
        self.pool = pool
        self.raw = raw
        self.seconds = seconds
        self.payload = _pattern(PAYLOAD)

    async def _timed(
        self, server_pid: int, run: Callable[[], Awaitable[int]], per_call: float
    ) -> Sample:
        with trio.fail_after(self.seconds * 5 + 30), _cpu_meter(server_pid) as cpu:
            t0 = time.perf_counter()
            calls = await run()
            elapsed = time.perf_counter() - t0
        return Sample(calls * per_call / elapsed, cpu["client"], cpu["server"])

    async def raw_bulk(self, op: int, inflight: int) -> Sample:
        async def run() -> int:
            return await self.raw.run(op, inflight, self.seconds, MAX_BULK_CALLS)

        return await self._timed(self.servers.raw_pid, run, PAYLOAD / 1e6)

    async def rpc_upload(self, inflight: int) -> Sample:
        address, request = self.servers.rpc_address, Echo(mode="sink")

        async def one() -> None:
            reply = await self.pool.call(address, request, self.payload)
            assert isinstance(reply.message, EchoReply) and reply.message.received == PAYLOAD

        async def run() -> int:
            return await _workers(inflight, self.seconds, MAX_BULK_CALLS, one)

        return await self._timed(self.servers.node_pid, run, PAYLOAD / 1e6)

    async def rpc_download(self, inflight: int) -> Sample:
        address, request = self.servers.rpc_address, Echo(mode="source", size=PAYLOAD)

        async def one() -> None:
            reply = await self.pool.call(address, request)
            assert len(reply.payload) == PAYLOAD

        async def run() -> int:
            return await _workers(inflight, self.seconds, MAX_BULK_CALLS, one)

        return await self._timed(self.servers.node_pid, run, PAYLOAD / 1e6)

    async def rpc_ping(self, inflight: int) -> Sample:
        address, request = self.servers.rpc_address, Ping()

        async def one() -> None:
            reply = await self.pool.call(address, request)
            assert isinstance(reply.message, Pong)

        async def run() -> int:
            return await _workers(inflight, self.seconds, MAX_PING_CALLS, one)

        return await self._timed(self.servers.node_pid, run, 1.0)


@dataclass
class Pair:
    """A raw and an RPC series measured in alternation."""

    raw: Series
    rpc: Series

    def ratio_of_medians(self) -> float:
        return self.rpc.median() / self.raw.median()

    def median_paired_ratio(self) -> float:
        pairs = zip(self.raw.samples, self.rpc.samples, strict=True)
        return statistics.median(rpc.value / raw.value for raw, rpc in pairs)

    def median_paired_efficiency_ratio(self) -> float:
        """Like `median_paired_ratio`, of the figures per CPU-second."""
        pairs = zip(self.raw.samples, self.rpc.samples, strict=True)
        return statistics.median(rpc.per_cpu_s / raw.per_cpu_s for raw, rpc in pairs)


@contextlib.asynccontextmanager
async def _raw_connection(port: int) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield RawClient(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def run_benchmark(
    servers: Servers, seconds: float, reps: int
) -> tuple[list[Pair], list[Series]]:
    pairs = {
        (d, k): Pair(
            Series(f"raw {d}, {k} in flight", "MB/s"), Series(f"rpc {d}, {k} in flight", "MB/s")
        )
        for d in ("upload", "download")
        for k in BULK_INFLIGHT
    }
    pings = {k: Series(f"rpc ping, {k} in flight", "calls/s") for k in PING_INFLIGHT}
    async with (
        open_rpc_pool(servers.creds, client_name="bench", insecure=servers.insecure) as pool,
        _raw_connection(servers.raw_port) as raw,
    ):
        bench = Bench(servers, pool, raw, seconds)
        warm = Bench(servers, pool, raw, min(0.5, seconds))
        for k in (1, 4):
            await warm.raw_bulk(OP_UPLOAD, k)
            await warm.rpc_upload(k)
            await warm.raw_bulk(OP_DOWNLOAD, k)
            await warm.rpc_download(k)
        await warm.rpc_ping(64)
        for rep in range(reps):
            print(f"repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
            for (direction, k), pair in pairs.items():
                op = OP_UPLOAD if direction == "upload" else OP_DOWNLOAD
                rpc = bench.rpc_upload if direction == "upload" else bench.rpc_download
                pair.raw.samples.append(await bench.raw_bulk(op, k))
                pair.rpc.samples.append(await rpc(k))
            for k, series in pings.items():
                series.samples.append(await bench.rpc_ping(k))
    return list(pairs.values()), list(pings.values())


# --- report -----------------------------------------------------------------


def _row(series: Series) -> dict[str, object]:
    values = [s.value for s in series.samples]
    return {
        "measurement": series.name,
        "median": series.median(),
        "min": min(values),
        "max": max(values),
        "unit": series.unit,
        "client_cpu_pct": statistics.median(s.client_cpu for s in series.samples),
        "server_cpu_pct": statistics.median(s.server_cpu for s in series.samples),
        "per_cpu_s": statistics.median(s.per_cpu_s for s in series.samples),
        "samples": [asdict(s) for s in series.samples],
    }


def _print_table(pairs: list[Pair], pings: list[Series]) -> None:
    head = (
        f"{'measurement':<28} {'median':>9} {'min':>9} {'max':>9} {'unit':<8}"
        f" {'cpu client':>10} {'cpu server':>10} {'per cpu-s':>9}"
    )
    print(head)
    print("-" * len(head))
    for series in [s for p in pairs for s in (p.raw, p.rpc)] + pings:
        r = _row(series)
        print(
            f"{series.name:<28} {r['median']:>9.0f} {r['min']:>9.0f} {r['max']:>9.0f}"
            f" {series.unit:<8} {r['client_cpu_pct']:>9.0f}% {r['server_cpu_pct']:>9.0f}%"
            f" {r['per_cpu_s']:>9.0f}"
        )
    print()
    print(f"{'rpc / raw':<28} {'of medians':>10} {'paired':>8} {'paired per cpu-s':>17}")
    for pair in pairs:
        name = pair.rpc.name.removeprefix("rpc ")
        print(
            f"{name:<28} {pair.ratio_of_medians():>10.2f} {pair.median_paired_ratio():>8.2f}"
            f" {pair.median_paired_efficiency_ratio():>17.2f}"
        )
    print(f"target: rpc / raw >= {TARGET_RATIO:.2f} (paired throughput ratio)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, at least 3 (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--insecure", action="store_true", help="the node and the client without TLS"
    )
    parser.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_server:
        trio.run(_raw_server_main)
        return 0
    if not 0 < args.seconds <= 60 or not 3 <= args.reps <= 20:
        parser.error("--seconds must be in (0, 60] and --reps in [3, 20]")

    started = datetime.datetime.now(datetime.UTC)
    with start_servers(args.insecure) as servers:
        pairs, pings = trio.run(run_benchmark, servers, args.seconds, args.reps)
    duration = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    if args.json:
        report = {
            "date": started.isoformat(timespec="seconds"),
            "duration_s": round(duration, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "trio": trio.__version__,
                "platform": platform.platform(),
            },
            "seconds": args.seconds,
            "reps": args.reps,
            "payload_bytes": PAYLOAD,
            "measurements": [_row(s) for p in pairs for s in (p.raw, p.rpc)]
            + [_row(s) for s in pings],
            "ratios": {
                p.rpc.name.removeprefix("rpc "): {
                    "of_medians": p.ratio_of_medians(),
                    "paired_median": p.median_paired_ratio(),
                    "paired_median_per_cpu_s": p.median_paired_efficiency_ratio(),
                    "meets_target": p.median_paired_ratio() >= TARGET_RATIO,
                }
                for p in pairs
            },
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, trio {trio.__version__}; payload {PAYLOAD // MiB} MiB,"
            f" {args.seconds:g} s x {args.reps} reps, {duration:.0f} s in all\n"
        )
        _print_table(pairs, pings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
