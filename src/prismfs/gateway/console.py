"""The web console at ``/ui/``: overview, activity, files and node actions.

Theory of operation. The console is part of the HTTP API: the same node
serves it, asks the leader the same questions (`ClusterHealth`, and
`FaultBudget` and `Activity` for the console), and checks the same API
tokens. Signing in posts a token to ``/ui/login``; once the cluster knows it,
it is kept in a session cookie (no expiry: the browser forgets it when the
session ends; ``HttpOnly`` so no script can read it; ``SameSite=Strict`` and
``Path=/ui``). Every page checks it again, so a revoked token stops working
at its next request.

Changes (drain, cancel a drain, remove a node, start a scrub, uploads) need
the token's scope (admin for nodes and scrub, write for uploads) *and* a form
token derived from the session token (an HMAC), which only the console's own
pages carry: a request forged from another site, which can make the browser
send the cookie but cannot read the page, is refused and changes nothing.
Each node action is a GET that shows what will happen and a POST that does
it. Uploads and downloads go through the API's own file routes, acting as
the token's user, so POSIX permissions apply as they do for ``/v1/files``.

Pages are plain HTML (`console_pages`) with a strict Content-Security-Policy;
a small script adds drag-and-drop uploads.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from prismfs.client.paths import Caller, R, resolve
from prismfs.errors import (
    AuthenticationFailed,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PrismError,
)
from prismfs.gateway import console_pages as pages
from prismfs.gateway import problems
from prismfs.gateway.app import Gateway, drain_refused_body, get_file_route, put_file_route
from prismfs.gateway.console_assets import CSS, JS
from prismfs.gateway.console_pages import Viewer
from prismfs.leader.activity import Activity, ActivityReply
from prismfs.leader.admin import (
    CancelDrain,
    ClusterHealth,
    ClusterHealthReply,
    DrainNode,
    NodeChanged,
    RemoveNode,
    ScrubReport,
    ScrubStart,
)
from prismfs.leader.faults import FaultBudget, FaultBudgetReply
from prismfs.wire.codec import Message

log = logging.getLogger("prismfs.gateway.console")

COOKIE = "prismfs_console"
FORM_LIMIT = 8192
CHUNKS_PER_PAGE = 200
DIGITS = re.compile(r"[0-9]{1,18}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NODE_ACTIONS = {"drain", "cancel-drain", "remove"}

Page = Callable[[Gateway, Request, Viewer], Awaitable[Response]]
T = TypeVar("T", bound=Message)


def form_token(token: str) -> str:
    """The form token of a session: only a page served to it carries it."""
    return hmac.new(token.encode(), b"prismfs console form", hashlib.sha256).hexdigest()[:32]


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def viewer_of(gw: Gateway, request: Request, needed: str) -> Viewer:
    """Who signed in (their token checked now), or `AuthenticationFailed`."""
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise AuthenticationFailed("sign in with an API token first")
    client = request.client.host if request.client else ""
    info = await gw.tokens.check(f"Bearer {token}", needed, client)
    request.state.caller = Caller(info.uid, info.gid, info.prefix)
    return Viewer(info.scope, info.name or info.token_id, form_token(token))


async def form_of(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise InvalidArgument("the form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"the form cannot be read: {exc}") from None
    return {k: v[0] for k, v in fields.items()}


def check_form_token(viewer: Viewer, given: str) -> None:
    if not hmac.compare_digest(given.encode(), viewer.csrf.encode()):
        raise PermissionDenied(
            "this request did not come from the console's own page (its form token is "
            "missing or wrong); nothing was changed"
        )


def guarded(
    gw: Gateway, handler: Page, needed: str = "read"
) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` for a signed-in viewer with ``needed`` scope; errors as pages."""

    async def run(request: Request) -> Response:
        viewer: Viewer | None = None
        try:
            if request.method not in ("GET", "HEAD"):
                same_site(request)
            viewer = await viewer_of(gw, request, needed)
            return await handler(gw, request, viewer)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody to answer: a cancelled upload
        except AuthenticationFailed as exc:
            await refuse_body(request)
            if request.method == "GET":
                target = quote(
                    request.url.path + ("?" + request.url.query if request.url.query else "")
                )
                return RedirectResponse(f"/ui/login?next={target}", status_code=303)
            return html(pages.error_page("Sign in first", exc.message), 401)
        except PrismError as exc:
            await refuse_body(request)
            status = problems.from_error(exc).status_code
            if status >= 500 and status != 503:
                log.error("%s %s: %s", request.method, request.url.path, exc.message)
            title = {403: "Not allowed", 404: "Not found", 503: "No leader"}.get(status, "Error")
            # Unavailable (an election, say): the page keeps trying by itself.
            page = pages.error_page(title, exc.message, viewer, refresh=status == 503)
            return html(page, status)

    return run


async def refuse_body(request: Request) -> None:
    """Read what is left of a refused upload, as the API does, so a browser that
    sends it all first gets the answer."""
    if request.method in ("PUT", "POST"):
        with contextlib.suppress(ClientDisconnect):
            await drain_refused_body(request)


def same_site(request: Request) -> None:
    """Changes come from the console's own pages: a browser says where a request
    comes from (``Sec-Fetch-Site``, ``Origin``); another site is refused."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        raise PermissionDenied("a request from another site; nothing was changed")
    origin = request.headers.get("origin", "")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise PermissionDenied(f"a request from {origin}; nothing was changed")


# --- signing in -------------------------------------------------------------------------------


def safe_next(target: str) -> str:
    """Only a console page: never a redirect elsewhere."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


async def login_form(gw: Gateway, request: Request) -> Response:
    return html(pages.login_page(next_url=safe_next(request.query_params.get("next", "/ui/"))))


async def login(gw: Gateway, request: Request) -> Response:
    try:
        same_site(request)
        form = await form_of(request)
    except PermissionDenied as exc:
        return html(pages.login_page(exc.message), 403)
    except InvalidArgument as exc:
        return html(pages.login_page(exc.message), 400)
    token, target = form.get("token", "").strip(), safe_next(form.get("next", "/ui/"))
    client = request.client.host if request.client else ""
    try:
        await gw.tokens.check(f"Bearer {token}", "read", client)
    except (AuthenticationFailed, PermissionDenied) as exc:
        return html(pages.login_page(f"Not signed in: {exc.message}", target), 401)
    except PrismError as exc:
        return html(pages.login_page(f"Cannot check the token now: {exc.message}", target), 503)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        path="/ui",
        httponly=True,
        samesite="strict",
        # Behind a proxy that ends TLS too (the cookie is the token itself).
        secure="https" in (request.url.scheme, request.headers.get("x-forwarded-proto", "")),
    )
    return response


async def logout(gw: Gateway, request: Request) -> Response:
    try:
        same_site(request)
    except PermissionDenied as exc:
        return html(pages.error_page("Not signed out", exc.message), 403)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# --- pages ------------------------------------------------------------------------------------


def refreshing(request: Request) -> bool:
    return request.query_params.get("refresh", "") != "0"


async def health_of(gw: Gateway) -> ClusterHealthReply:
    return await gw.leader(ClusterHealth(), ClusterHealthReply)


async def optional(gw: Gateway, request: Message, expect: type[T], what: str) -> T | None:
    """The leader's answer, or None (said in the log): a page shows what it has."""
    try:
        return await gw.leader(request, expect)
    except PrismError as exc:
        log.info("no %s for the console: %s", what, exc.message)
        return None


DONE = {
    "draining": "Node {node} is draining.",
    "drain-cancelled": "The drain of node {node} was cancelled.",
    "removed": "Node {node} was removed.",
    "scrub": "A scrub is running.",
}
"""What an action's redirect may say (``?done=CODE&node=ID``): never free text."""


def done_message(request: Request, health: ClusterHealthReply) -> str:
    template = DONE.get(request.query_params.get("done", ""), "")
    node = request.query_params.get("node", "")
    if "{node}" in template and node not in {n.node for n in health.nodes}:
        return ""
    return template.format(node=node)


async def overview(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    health = await health_of(gw)
    budget = await optional(gw, FaultBudget(), FaultBudgetReply, "fault budget")
    if budget is not None:  # directories beyond the token's prefix are not named
        caller: Caller = request.state.caller
        weakest = tuple(d for d in budget.weakest if within(caller, d))
        budget = msgspec.structs.replace(budget, weakest=weakest)
    message = done_message(request, health)
    return html(pages.overview_page(health, budget, viewer, refreshing(request), message))


def within(caller: Caller, path: str) -> bool:
    try:
        caller.reach(path)
    except PermissionDenied:
        return False
    return True


async def activity(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    health = await health_of(gw)
    history = await optional(gw, Activity(), ActivityReply, "activity history")
    message = done_message(request, health)
    return html(pages.activity_page(health, history, viewer, refreshing(request), message))


async def files(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    path = "/" + str(request.path_params.get("path", "")).strip("/")
    caller: Caller = request.state.caller
    attr = await resolve(gw.meta, path, caller)
    if stat.S_ISDIR(attr.mode):
        caller.check(attr, R, path)
        cursor = number(request, "cursor")
        page = await gw.meta.readdir_page(attr.ino, cursor, 500)
        entries = [(en.name.decode(errors="replace"), en.attr) for en in page.entries]
        more = str(page.entries[-1].cookie) if page.more and page.entries else None
        return html(pages.directory_page(path, entries, more, viewer))
    if not stat.S_ISREG(attr.mode):
        return html(
            pages.error_page("Not a file", f"{path} is neither a file nor a directory", viewer), 400
        )
    caller.check(attr, R, path)  # as a GET of the file would
    first = number(request, "chunk")
    # A page of chunks at a time: a terabyte file has a quarter of a million.
    cmap = await gw.meta.chunk_map_all(attr.ino, first, CHUNKS_PER_PAGE)
    health = await health_of(gw)
    states = {n.node: n.state for n in health.nodes}
    return html(pages.file_page(path, attr, cmap, first, CHUNKS_PER_PAGE, states, viewer))


def number(request: Request, name: str) -> int:
    text = request.query_params.get(name, "0")
    if not DIGITS.fullmatch(text):
        raise InvalidArgument(f"{name} must be a whole number below 10^18")
    return int(text)


async def download(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    response = await get_file_route(gw, request)
    # Saved, never shown: what a user stored is not a page of the console.
    name = quote(request.url.path.rsplit("/", 1)[-1])
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{name}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


async def upload(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    try:
        check_form_token(viewer, request.headers.get("x-console-csrf", ""))
        return await put_file_route(gw, request)
    except PrismError as exc:  # the script shows the problem's detail
        response = problems.from_error(exc)
        if not await drain_refused_body(request):
            response.headers["Connection"] = "close"
        return response


# --- actions ----------------------------------------------------------------------------------


def explain(action: str, node: str, health: ClusterHealthReply) -> tuple[str, str, str]:
    """(title, what will happen, button) for a node action."""
    n = next((x for x in health.nodes if x.node == node), None)
    if n is None:
        raise NotFound(f"no node {node} in the cluster")
    up = [x for x in health.nodes if x.state == "up" and x.node != node]
    e = pages.e
    held = f"<p>Node <code>{e(node)}</code> ({e(n.address)}, {e(n.state)}) holds {n.shards} shards."
    if action == "drain":
        return (
            f"Drain node {node}?",
            held + " Draining moves each of them to another node that is up "
            f"({len(up)}: {', '.join(e(x.node) for x in up) or 'none'}), without lowering "
            "redundancy; new data no longer goes there. The node stays in the cluster and serves "
            "reads until its shards are gone; then it can be removed. A drain can be "
            "cancelled.</p>",
            "Drain",
        )
    if action == "cancel-drain":
        return (
            f"Cancel the drain of node {node}?",
            held + " It goes back to taking new data; the shards moved off it so far stay "
            "where they are now.</p>",
            "Cancel the drain",
        )
    return (
        f"Remove node {node}?",
        held + " Removing it takes it out of the cluster for good (and out of the Raft group if "
        "it votes). Shards still on it are rebuilt from the others, which lowers redundancy "
        "until they are; the leader refuses if some chunk could not be rebuilt. Draining first "
        "keeps full redundancy throughout.</p>",
        "Remove",
    )


async def node_action_form(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    node, action = str(request.path_params["node"]), str(request.path_params["action"])
    if action not in NODE_ACTIONS:
        raise NotFound(f"no action {action}")
    title, text, button = explain(action, node, await health_of(gw))
    target = f"/ui/nodes/{quote(node)}/{action}"
    return html(pages.confirm_page(title, text, target, button, viewer, "/ui/"))


async def node_action(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    node, action = str(request.path_params["node"]), str(request.path_params["action"])
    if action not in NODE_ACTIONS:
        raise NotFound(f"no action {action}")
    check_form_token(viewer, (await form_of(request)).get("csrf", ""))
    if action == "drain":
        await gw.leader(DrainNode(node), NodeChanged)
        log.info("console: %s drained node %s", viewer.name, node)
        return RedirectResponse(f"/ui/activity?done=draining&node={quote(node)}", 303)
    if action == "cancel-drain":
        await gw.leader(CancelDrain(node), NodeChanged)
        log.info("console: %s cancelled the drain of node %s", viewer.name, node)
        return RedirectResponse(f"/ui/?done=drain-cancelled&node={quote(node)}", 303)
    await gw.leader(RemoveNode(node, False), NodeChanged)
    log.info("console: %s removed node %s", viewer.name, node)
    return RedirectResponse(f"/ui/?done=removed&node={quote(node)}", 303)


async def scrub_form(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    health = await health_of(gw)
    text = (
        f"<p>A scrub reads every shard of the cluster's {health.chunks} chunks on the node that "
        "holds it and checks it against its checksum, paced so it does not crowd out other "
        "work; what is corrupt or missing is rebuilt from the other shards. Progress shows on "
        "the Activity page.</p>"
    )
    return html(pages.confirm_page("Start a scrub?", text, "/ui/scrub/start", "Start the scrub",
                                   viewer, "/ui/activity"))  # fmt: skip


async def scrub_start(gw: Gateway, request: Request, viewer: Viewer) -> Response:
    check_form_token(viewer, (await form_of(request)).get("csrf", ""))
    await gw.leader(ScrubStart(), ScrubReport)
    log.info("console: %s started a scrub", viewer.name)
    return RedirectResponse("/ui/activity?done=scrub", 303)


# --- the routes -------------------------------------------------------------------------------


def console_routes(gw: Gateway) -> list[Route]:
    def plain(
        handler: Callable[[Gateway, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            return await handler(gw, request)

        return run

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308)

    async def css(request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def js(request: Request) -> Response:
        return Response(JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})

    return [
        Route("/ui", root, methods=["GET"]),
        Route("/ui/", guarded(gw, overview), methods=["GET"]),
        Route("/ui/activity", guarded(gw, activity), methods=["GET"]),
        Route("/ui/files/{path:path}", guarded(gw, files), methods=["GET"]),
        Route("/ui/download/{path:path}", guarded(gw, download), methods=["GET", "HEAD"]),
        Route("/ui/upload/{path:path}", guarded(gw, upload, "write"), methods=["PUT"]),
        Route("/ui/nodes/{node}/{action}", guarded(gw, node_action_form, "admin"), methods=["GET"]),
        Route("/ui/nodes/{node}/{action}", guarded(gw, node_action, "admin"), methods=["POST"]),
        Route("/ui/scrub/start", guarded(gw, scrub_form, "admin"), methods=["GET"]),
        Route("/ui/scrub/start", guarded(gw, scrub_start, "admin"), methods=["POST"]),
        Route("/ui/login", plain(login_form), methods=["GET"]),
        Route("/ui/login", plain(login), methods=["POST"]),
        Route("/ui/logout", plain(logout), methods=["POST"]),
        Route("/ui/console.css", css, methods=["GET"]),
        Route("/ui/console.js", js, methods=["GET"]),
    ]
