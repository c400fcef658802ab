"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every `PrismError` has a wire code; each code maps to one HTTP status. A
request the gateway cannot serve because no leader is known (or the leader
changed under it) is 503 with ``Retry-After``; anything unexpected is a 500
with a generic detail (the traceback goes to the node's log, never to the
client).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from prismfs.errors import PrismError

STATUS_BY_CODE: dict[str, int] = {
    "not_found": 404,
    "already_exists": 409,
    "not_empty": 409,
    "is_a_directory": 409,
    "not_a_directory": 409,
    "conflict": 409,
    "too_many_links": 409,
    "invalid_argument": 400,
    "name_too_long": 400,
    "protocol_error": 400,
    "permission_denied": 403,
    "not_permitted": 403,
    "no_attribute": 404,
    "no_space": 507,
    "not_enough_nodes": 503,
    "value_too_large": 413,
    "file_too_large": 413,
    "out_of_range": 416,
    "authentication_failed": 401,
    "unavailable": 503,
    "not_leader": 503,
    "leadership_transfer": 503,
    "conf_change_in_progress": 503,
    "deadline_exceeded": 503,
    "overloaded": 503,
    "shutting_down": 503,
    "session_expired": 503,
    "not_enough_shards": 503,
}

RETRY_AFTER_S = 1


def problem(
    status: int,
    title: str,
    detail: str = "",
    *,
    code: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:prismfs:problem:{code}" if code else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if code:
        body["code"] = code
    body.update(extra)
    out = dict(headers or {})
    if status == 503:
        out.setdefault("Retry-After", str(RETRY_AFTER_S))
    return JSONResponse(
        body, status_code=status, headers=out, media_type="application/problem+json"
    )


def from_error(exc: PrismError) -> JSONResponse:
    status = STATUS_BY_CODE.get(exc.code, 503 if exc.transient else 500)
    title = (type(exc).__doc__ or exc.code).strip().splitlines()[0]
    return problem(status, title, exc.message, code=exc.code)
