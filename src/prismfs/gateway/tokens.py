"""Bearer tokens of the HTTP API.

A token reads ``pfs_<id>_<secret>``: the id is public (it names the token in
``prismfs token list`` and in logs), the secret is 32 random bytes
(URL-safe base64) and only its SHA-256 is stored, in the metadata
(`CreateToken`), so a copy of the metadata grants nothing. Scopes are
ordered: ``read`` (GET/HEAD), ``write`` (also changing files and
directories), ``admin`` (also adding, draining and removing nodes).

`TokenCache` checks a presented token against the metadata (a linearizable
read) and remembers the answer for ``ttl`` seconds, so a revoked token stops
working within that time on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import trio

from prismfs.errors import AuthenticationFailed, NotFound, PermissionDenied
from prismfs.meta.client import MetaClient

SCOPES = ("read", "write", "admin")
PREFIX = "pfs_"


def new_token() -> tuple[str, str, bytes]:
    """(token as shown to the user once, its id, the digest to store)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{PREFIX}{token_id}_{secret}", token_id, digest_of(secret)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse(token: str) -> tuple[str, str]:
    """(id, secret) of a token; `AuthenticationFailed` if it is not one."""
    if not token.startswith(PREFIX):
        raise AuthenticationFailed("not a PrismFS API token")
    token_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not token_id.isalnum() or len(token_id) > 64 or not secret:
        raise AuthenticationFailed("not a PrismFS API token")
    return token_id, secret


def allows(scope: str, needed: str) -> bool:
    return SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass
class TokenCache:
    meta: MetaClient
    ttl: float = 5.0
    _known: dict[str, tuple[float, bytes, str]] = field(default_factory=dict)

    async def check(self, authorization: str | None, needed: str) -> str:
        """The token id of a request's ``Authorization`` header if its token
        exists and allows ``needed``; else `AuthenticationFailed` (no or bad
        token) or `PermissionDenied` (too narrow a scope)."""
        if not authorization:
            raise AuthenticationFailed("this API needs an Authorization: Bearer token")
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("this API needs an Authorization: Bearer token")
        token_id, secret = parse(token.strip())
        now = trio.current_time()
        cached = self._known.get(token_id)
        if cached is None or cached[0] < now:
            try:
                info = await self.meta.token(token_id)
                cached = (now + self.ttl, info.digest, info.scope)
            except NotFound:
                cached = (now + min(self.ttl, 1.0), b"", "")
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[token_id] = cached
        _, digest, scope = cached
        if not digest or not hmac.compare_digest(digest, digest_of(secret)):
            raise AuthenticationFailed("unknown or revoked token")
        if not allows(scope, needed):
            raise PermissionDenied(f"token {token_id} is {scope}-only; this needs {needed}")
        return token_id
