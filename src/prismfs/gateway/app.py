"""The HTTP API: files, directories, cluster management, health and metrics.

Theory of operation. Every node with ``[http] listen`` serves this ASGI
application (starlette on hypercorn's trio worker, in the node's own event
loop) and acts as a coordinator: metadata operations go through a
`MetaClient` that forwards to the Raft leader, shard reads and writes are
done by this node itself (`DataClient`), and the admin requests (node add,
drain, remove, the cluster view) are sent to the leader (`call_leader`).

- ``PUT /v1/files/{path}`` streams the request body into `put_file`: chunk by
  chunk into a new unnamed inode, which takes the name only when complete (a
  failed or interrupted upload leaves the old file, or none). The body is
  never buffered whole: at most a few chunks are in memory.
  ``If-None-Match: *`` makes it create-only (412 if the name exists, checked
  again atomically at the final rename).
- ``GET``/``HEAD`` stream `stream_range` from one open of the file: its
  ``ETag`` (inode, mtime, size) and ``Last-Modified`` are of that open;
  ``If-None-Match`` gives 304; one ``Range: bytes=`` range gives 206 (416 if
  it lies outside the file); several ranges get the whole file (200).
- Errors are RFC 9457 problem documents (`problems`); a request that finds
  no leader gets 503 with ``Retry-After``.
- Authentication: ``Authorization: Bearer <token>`` on everything except
  ``/v1/health`` and ``/v1/openapi.json``; the scope needed is read for
  GET/HEAD, write for changes to files and directories, admin for node
  changes (`tokens`).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import re
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from prismfs.client.data import DataClient
from prismfs.client.files import (
    InodeNumbers,
    OpenFile,
    layout_for,
    put_file,
    put_small,
    stream_range,
)
from prismfs.client.leader import call_leader
from prismfs.client.paths import (
    NOBODY,
    Caller,
    R,
    W,
    X,
    make_dirs,
    remove_tree,
    resolve,
    resolve_parent,
)
from prismfs.config_files import option_number
from prismfs.data.layout import Layout
from prismfs.errors import (
    AlreadyExists,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    OutOfRange,
    PrismError,
)
from prismfs.gateway import problems
from prismfs.gateway.metrics import Metrics
from prismfs.gateway.openapi import openapi_document
from prismfs.gateway.tokens import TokenCache
from prismfs.leader.admin import (
    AddNode,
    ClusterHealth,
    ClusterHealthReply,
    DrainNode,
    NodeChanged,
    RemoveNode,
    SetVoting,
)
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import RENAME_NOREPLACE, VOTING, Attr
from prismfs.meta.schema import check_name
from prismfs.wire.address import parse_address
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import Message

log = logging.getLogger("prismfs.gateway")

T = TypeVar("T", bound=Message)


LIST_LIMIT = 1000
SMALL_BODY = 1 << 20  # bodies up to this (and one chunk) take the one-entry path
ADMIN_TIMEOUT_S = 300.0


@dataclass
class Gateway:
    """What the routes need: clients of the cluster and the node's own state."""

    meta: MetaClient
    data: DataClient
    pool: RpcPool
    addresses: list[str]  # this node first: the leader is found through it
    tokens: TokenCache
    metrics: Metrics
    ready: Callable[[], tuple[bool, dict[str, Any]]]  # readiness and details for /v1/health
    max_upload: int = 1 << 40
    inodes: InodeNumbers = field(init=False)

    def __post_init__(self) -> None:
        self.inodes = InodeNumbers(self.meta)

    async def leader(self, request: Message, expect: type[T]) -> T:
        return await call_leader(self.pool, self.addresses, request, expect, ADMIN_TIMEOUT_S)


# --- helpers ----------------------------------------------------------------------------------


def _path(request: Request) -> str:
    return "/" + str(request.path_params.get("path", "")).strip("/")


def _caller(request: Request) -> Caller:
    """Who the request acts as: its token's user, group and prefix."""
    caller = getattr(request.state, "caller", None)
    return caller if isinstance(caller, Caller) else Caller(NOBODY, NOBODY, "/")


def _above(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _etag(attr: Attr) -> str:
    return f'"{attr.ino:x}-{attr.mtime_ns:x}-{attr.size:x}"'


def _http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def file_kind(mode: int) -> str:
    """file, dir, symlink or other: the API's and the console's word for a type."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(name: str, attr: Attr) -> dict[str, Any]:
    return {
        "name": name,
        "type": file_kind(attr.mode),
        "size": attr.size,
        "mode": f"{stat.S_IMODE(attr.mode):04o}",
        "ino": attr.ino,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(attr.mtime_ns / 1e9)),
        "mtime_ns": attr.mtime_ns,
    }


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise InvalidArgument(f"{name} must be true or false")
    return value in ("true", "1")


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return int(option_number(request.query_params, name, default, lo, hi, integer=True))


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, None for the whole file
    (no header, several ranges, or a unit other than bytes); `OutOfRange` if
    it lies outside the file."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            raise OutOfRange("an empty suffix range")
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None  # invalid: ignored (RFC 9110 14.1.1)
    if start >= size:
        raise OutOfRange(f"range starts at {start}, the file has {size} bytes")
    return start, end


class BodyReader:
    """``read(n)`` over a request body stream, refusing more than ``limit`` bytes."""

    def __init__(self, stream: AsyncIterator[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.buffer = bytearray()
        self.total = 0
        self.done = False

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n and not self.done:
            try:
                block = await self.stream.__anext__()
            except StopAsyncIteration:
                self.done = True
                break
            self.total += len(block)
            if self.total > self.limit:
                raise FileTooLarge(f"the body is larger than the limit of {self.limit} bytes")
            self.buffer += block
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class FileStream(Response):
    """The body of a GET: bytes ``[start, end)`` of an open file, streamed as
    they are fetched (no whole-file buffer); the file is released at the end."""

    def __init__(
        self,
        gateway: Gateway,
        f: OpenFile,
        start: int,
        end: int,
        status: int,
        headers: dict[str, str],
        head: bool,
    ) -> None:
        super().__init__(status_code=status, headers=headers)
        self.gateway, self.f, self.start, self.end, self.head = gateway, f, start, end, head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if not self.head and self.end > self.start:

                async def write(block: bytes) -> None:
                    await send({"type": "http.response.body", "body": block, "more_body": True})
                    self.gateway.metrics.bytes_out.inc(len(block))

                await stream_range(self.f, self.gateway.data, write, self.start, self.end)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with trio.CancelScope(shield=True):
                await self.f.close()


# --- files ------------------------------------------------------------------------------------


async def get_file_route(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    caller = _caller(request)
    attr = await resolve(gw.meta, path, caller)
    if stat.S_ISDIR(attr.mode):
        raise IsADirectory(f"{path} is a directory (GET /v1/dirs{quote(path)} lists it)")
    if not stat.S_ISREG(attr.mode):
        raise InvalidArgument(f"{path} is not a regular file")
    caller.check(attr, R, path)
    f = await OpenFile.open(gw.meta, gw.data, attr.ino)
    try:
        opened = f.attr_at_open or attr
        headers = {
            "ETag": _etag(opened),
            "Last-Modified": _http_date(opened.mtime_ns),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        match = request.headers.get("if-none-match")
        if match and (
            match.strip() == "*" or headers["ETag"] in [m.strip() for m in match.split(",")]
        ):
            await f.close()
            return Response(
                status_code=304, headers={k: headers[k] for k in ("ETag", "Last-Modified")}
            )
        size = f.size
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except PrismError:
            await f.close()
            return problems.problem(
                416,
                "Range Not Satisfiable",
                f"the file has {size} bytes",
                code="out_of_range",
                headers={"Content-Range": f"bytes */{size}"},
            )
        status = 200
        start, end = 0, size
        if wanted is not None:
            start, end = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        return FileStream(gw, f, start, end, status, headers, request.method == "HEAD")
    except BaseException:
        with trio.CancelScope(shield=True):
            await f.close()
        raise


def _exists(path: str) -> Response:
    """412: ``If-None-Match: *`` and ``path`` exists."""
    return problems.problem(
        412, "Precondition Failed", f"{path} exists (If-None-Match: *)", code="already_exists"
    )


async def put_file_route(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    caller = _caller(request)
    parent_attr, name = await resolve_parent(gw.meta, path, caller)
    parent = parent_attr.ino
    check_name(name)  # before any byte is stored
    caller.check(parent_attr, W | X, _above(path))  # (a new inode is renamed over it)
    create_only = request.headers.get("if-none-match", "").strip() == "*"
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > gw.max_upload:
        raise FileTooLarge(f"the body is larger than the limit of {gw.max_upload} bytes")
    existed = True
    try:
        old = await gw.meta.lookup(parent, name)
        if stat.S_ISDIR(old.mode):
            raise IsADirectory(f"{path} is a directory")
        caller.check(old, W, path)
        caller.may_remove(parent_attr, old, path)
    except PrismError as exc:
        if exc.code != "not_found":
            raise
        existed = False
    if existed and create_only:
        return _exists(path)
    text = request.query_params.get("layout")
    layout = Layout.parse(text) if text else await layout_for(gw.meta, parent)
    body = BodyReader(request.stream(), gw.max_upload)
    request.state.body = body
    small = length is not None and length.isdigit()
    small = small and int(length or 0) <= min(SMALL_BODY, layout.chunk_size)
    try:
        if small:
            # One chunk at most: stored, then one Raft entry makes, fills and names it.
            content = await body.read(int(length or 0) + 1)
            attr = await put_small(
                gw.meta,
                gw.data,
                gw.inodes,
                parent,
                name,
                content,
                layout=layout,
                replace=not create_only,
                uid=caller.uid,
                gid=caller.gid,
            )
        else:
            ino = await put_file(
                gw.meta,
                gw.data,
                parent,
                name,
                body.read,
                layout=layout,
                replace=not create_only,
                uid=caller.uid,
                gid=caller.gid,
            )
            attr = await gw.meta.getattr(ino)
    except AlreadyExists:
        if create_only:
            return _exists(path)
        raise
    gw.metrics.bytes_in.inc(body.total)
    return JSONResponse(
        _entry(name.decode(errors="replace"), attr) | {"path": path},
        status_code=200 if existed else 201,
        headers={"ETag": _etag(attr), "Last-Modified": _http_date(attr.mtime_ns)},
    )


async def delete_file(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    caller = _caller(request)
    parent, name = await resolve_parent(gw.meta, path, caller)
    attr = await gw.meta.lookup(parent.ino, name)
    if stat.S_ISDIR(attr.mode):
        raise IsADirectory(f"{path} is a directory (DELETE /v1/dirs{quote(path)} removes it)")
    caller.may_remove(parent, attr, path)
    await gw.meta.unlink(parent.ino, name)
    return Response(status_code=204)


async def post_file(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    op = request.query_params.get("op")
    if op != "rename":
        raise InvalidArgument("POST /v1/files/{path} needs op=rename (and to=/new/path)")
    to = request.query_params.get("to", "")
    if not to.startswith("/"):
        raise InvalidArgument("to= must be an absolute path inside the cluster")
    caller = _caller(request)
    parent, name = await resolve_parent(gw.meta, path, caller)
    new_parent, new_name = await resolve_parent(gw.meta, to, caller)
    caller.may_remove(parent, await gw.meta.lookup(parent.ino, name), path)
    caller.check(new_parent, W | X, _above(to))
    with contextlib.suppress(NotFound):
        caller.may_remove(new_parent, await gw.meta.lookup(new_parent.ino, new_name), to)
    flags = RENAME_NOREPLACE if request.headers.get("if-none-match", "").strip() == "*" else 0
    try:
        await gw.meta.rename(parent.ino, name, new_parent.ino, new_name, flags)
    except AlreadyExists:
        return _exists(to)
    attr = await gw.meta.lookup(new_parent.ino, new_name)
    return JSONResponse(
        _entry(new_name.decode(errors="replace"), attr) | {"path": "/" + to.strip("/")}
    )


# --- directories ------------------------------------------------------------------------------


async def list_dir(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    caller = _caller(request)
    attr = await resolve(gw.meta, path, caller)
    if not stat.S_ISDIR(attr.mode):
        raise NotADirectory(f"{path} is not a directory")
    caller.check(attr, R, path)
    limit = _int(request, "limit", LIST_LIMIT, 1, LIST_LIMIT)
    cursor = _int(request, "cursor", 0, 0, 2**63 - 1)
    page = await gw.meta.readdir_page(attr.ino, cursor, limit)
    entries = [_entry(e.name.decode(errors="replace"), e.attr) for e in page.entries]
    nxt = str(page.entries[-1].cookie) if page.more and page.entries else None
    return JSONResponse({"path": path, "entries": entries, "next": nxt})


async def make_dir(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    parents = _flag(request, "parents")
    attr, made = await make_dirs(gw.meta, path, parents=parents, caller=_caller(request))
    status = 201 if made else 200
    return JSONResponse(_entry(path.rsplit("/", 1)[-1], attr) | {"path": path}, status_code=status)


async def delete_dir(gw: Gateway, request: Request) -> Response:
    path = _path(request)
    if path == "/":
        raise InvalidArgument("the root cannot be removed")
    caller = _caller(request)
    parent, name = await resolve_parent(gw.meta, path, caller)
    attr = await gw.meta.lookup(parent.ino, name)
    if not stat.S_ISDIR(attr.mode):
        raise NotADirectory(f"{path} is not a directory (DELETE /v1/files{quote(path)})")
    caller.may_remove(parent, attr, path)
    if _flag(request, "recursive"):
        removed = await remove_tree(gw.meta, parent.ino, name, attr, caller, path)
    else:
        await gw.meta.rmdir(parent.ino, name)
        removed = 1
    return JSONResponse({"path": path, "removed": removed})


# --- cluster ----------------------------------------------------------------------------------


def _builtins(message: Message) -> Any:
    out = msgspec.to_builtins(message)
    if isinstance(out, dict):
        out.pop("t", None)
    return out


async def cluster(gw: Gateway, request: Request) -> Response:
    return JSONResponse(_builtins(await gw.leader(ClusterHealth(), ClusterHealthReply)))


async def list_nodes(gw: Gateway, request: Request) -> Response:
    h = await gw.leader(ClusterHealth(), ClusterHealthReply)
    return JSONResponse({"nodes": [_builtins(n) for n in h.nodes]})


async def add_node(gw: Gateway, request: Request) -> Response:
    try:
        body = msgspec.json.decode(await request.body(), type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"the body must be a JSON object: {exc}") from None
    address, zone = body.get("address"), body.get("zone", "")
    voter, replica = body.get("voter", False), body.get("replica", False)
    if (
        not isinstance(address, str)
        or not isinstance(zone, str)
        or not isinstance(voter, bool)
        or not isinstance(replica, bool)
    ):
        raise InvalidArgument(
            'expected {"address": "HOST:PORT", "zone": "...", "voter": false, "replica": false}'
        )
    parse_address(address)
    reply = await gw.leader(AddNode(address, zone, voter, replica), NodeChanged)
    return JSONResponse(_builtins(reply), status_code=201)


async def drain_node(gw: Gateway, request: Request) -> Response:
    node = str(request.path_params["node"])
    return JSONResponse(_builtins(await gw.leader(DrainNode(node), NodeChanged)), status_code=202)


async def set_voting(gw: Gateway, request: Request) -> Response:
    node = str(request.path_params["node"])
    try:
        body = msgspec.json.decode(await request.body(), type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"the body must be a JSON object: {exc}") from None
    voting = body.get("voting")
    if voting not in VOTING:
        raise InvalidArgument('expected {"voting": "auto" | "pin" | "never"}')
    return JSONResponse(_builtins(await gw.leader(SetVoting(node, voting), NodeChanged)))


async def remove_node(gw: Gateway, request: Request) -> Response:
    node = str(request.path_params["node"])
    reply = await gw.leader(RemoveNode(node, _flag(request, "force")), NodeChanged)
    return JSONResponse(_builtins(reply))


async def health(gw: Gateway, request: Request) -> Response:
    if request.query_params.get("probe") == "live":
        return JSONResponse({"status": "live"})
    ready, details = gw.ready()
    if not ready:
        return problems.problem(
            503, "Not Ready", "this node knows no leader yet", code="unavailable"
        )
    return JSONResponse({"status": "ready"} | details)


async def metrics(gw: Gateway, request: Request) -> Response:
    body, content_type = await gw.metrics.render()
    return Response(body, media_type=content_type)


async def openapi(gw: Gateway, request: Request) -> Response:
    return JSONResponse(openapi_document())


# --- the application --------------------------------------------------------------------------

DRAIN_LIMIT = 16 << 20


async def drain_refused_body(request: Request) -> bool:
    """Read and drop what is left of a refused request's body, so a client that
    sends it all before reading the answer gets the answer; False if there is
    more than `DRAIN_LIMIT` (the connection is then closed after the answer)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        return False  # not worth reading: close after the answer
    reader = getattr(request.state, "body", None)
    try:
        stream = reader.stream if isinstance(reader, BodyReader) else request.stream()
        if isinstance(reader, BodyReader) and reader.done:
            return True
    except RuntimeError:  # starlette: the body was read already
        return True
    total = 0
    with trio.move_on_after(10):
        try:
            async for block in stream:
                total += len(block)
                if total > DRAIN_LIMIT:
                    return False
        except (ClientDisconnect, RuntimeError):
            return False
        return True
    return False


Handler = Callable[[Gateway, Request], Awaitable[Response]]

# (path, methods, handler, scope needed: "" = no token, route label for metrics)
ROUTES: list[tuple[str, list[str], Handler, str]] = [
    ("/v1/files/{path:path}", ["GET", "HEAD"], get_file_route, "read"),
    ("/v1/files/{path:path}", ["PUT"], put_file_route, "write"),
    ("/v1/files/{path:path}", ["DELETE"], delete_file, "write"),
    ("/v1/files/{path:path}", ["POST"], post_file, "write"),
    ("/v1/dirs", ["GET"], list_dir, "read"),
    ("/v1/dirs/{path:path}", ["GET"], list_dir, "read"),
    ("/v1/dirs/{path:path}", ["PUT"], make_dir, "write"),
    ("/v1/dirs/{path:path}", ["DELETE"], delete_dir, "write"),
    ("/v1/cluster", ["GET"], cluster, "read"),
    ("/v1/nodes", ["GET"], list_nodes, "read"),
    ("/v1/nodes", ["POST"], add_node, "admin"),
    ("/v1/nodes/{node}/drain", ["POST"], drain_node, "admin"),
    ("/v1/nodes/{node}/voting", ["PUT"], set_voting, "admin"),
    ("/v1/nodes/{node}", ["DELETE"], remove_node, "admin"),
    ("/v1/health", ["GET"], health, ""),
    ("/v1/openapi.json", ["GET"], openapi, ""),
    ("/metrics", ["GET"], metrics, "read"),
]


def build_app(gw: Gateway, extra: Sequence[BaseRoute] = ()) -> Starlette:
    """The API's routes, then ``extra`` (the web console's)."""

    def endpoint(
        handler: Handler, scope: str, label: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            status = 500
            try:
                if scope:
                    client = request.client.host if request.client else ""
                    token = await gw.tokens.check(
                        request.headers.get("authorization"), scope, client
                    )
                    request.state.caller = Caller(token.uid, token.gid, token.prefix)
                response = await handler(gw, request)
                status = response.status_code
                return response
            except PrismError as exc:
                response = problems.from_error(exc)
                status = response.status_code
                if status >= 500 and status != 503:
                    log.error("%s %s: %s", request.method, request.url.path, exc.message)
                if request.method in ("PUT", "POST") and not await drain_refused_body(request):
                    response.headers["Connection"] = "close"
                return response
            except ClientDisconnect:
                status = 499
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return problems.problem(500, "Internal Server Error", "see the node's log")
            finally:
                gw.metrics.observe(request.method, label, status, time.perf_counter() - started)

        return run

    routes: list[BaseRoute] = [
        Route(path, endpoint(handler, scope, path), methods=methods)
        for path, methods, handler, scope in ROUTES
    ]
    routes += extra

    async def not_found(request: Request, exc: Exception) -> Response:
        return problems.problem(404, "Not Found", f"no such endpoint: {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return problems.problem(405, "Method Not Allowed", f"{request.method} {request.url.path}")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return problems.problem(500, "Internal Server Error", "see the node's log")

    return Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_allowed, 500: server_error},
    )
