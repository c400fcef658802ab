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
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
import trio

from prismfs.errors import AuthenticationFailed, NotFound, Overloaded, PermissionDenied
from prismfs.meta.client import MetaClient
from prismfs.meta.commands import TokenInfo

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


MAX_CACHED = 10_000
"""Token ids remembered at once; beyond it the least recently used is forgotten."""
LOOKUPS_PER_S = 10.0
LOOKUPS_BURST = 20.0
"""Lookups of token ids not in the cache one client address may cause."""
ALL_LOOKUPS_PER_S = 100.0
ALL_LOOKUPS_BURST = 200.0
"""The same for all addresses together."""


@dataclass
class _Bucket:
    rate: float
    burst: float
    level: float = -1.0  # (full at the first take)
    at: float = 0.0

    def take(self, now: float) -> bool:
        refill = self.burst if self.level < 0 else (now - self.at) * self.rate
        self.level = min(self.burst, max(self.level, 0.0) + refill)
        self.at = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


@dataclass
class TokenCache:
    """Tokens checked against the metadata and remembered for ``ttl`` seconds
    (unknown ids for at most a second), the least recently used forgotten
    first, so a flood of made-up ids never pushes out the tokens in use.
    Each lookup of an id not remembered is a linearizable read on the
    leader: they are limited per client address and in all (`Overloaded`,
    503 with Retry-After, beyond it)."""

    meta: MetaClient
    ttl: float = 5.0
    _known: OrderedDict[str, tuple[float, bytes, TokenInfo | None]] = field(
        default_factory=OrderedDict
    )
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _all: _Bucket = field(default_factory=lambda: _Bucket(ALL_LOOKUPS_PER_S, ALL_LOOKUPS_BURST))

    async def check(self, authorization: str | None, needed: str, client: str = "") -> TokenInfo:
        """The token of a request's ``Authorization`` header (without its
        digest) if it exists and allows ``needed``; else `AuthenticationFailed`
        (no or bad token), `PermissionDenied` (too narrow a scope) or
        `Overloaded` (``client`` looked up too many unknown ids)."""
        if not authorization:
            raise AuthenticationFailed("this API needs an Authorization: Bearer token")
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("this API needs an Authorization: Bearer token")
        token_id, secret = parse(token.strip())
        now = trio.current_time()
        cached = self._known.get(token_id)
        if cached is None or cached[0] < now:
            self._may_look_up(client, now)
            try:
                info = await self.meta.token(token_id)
                cached = (now + self.ttl, info.digest, msgspec.structs.replace(info, digest=b""))
            except NotFound:
                cached = (now + min(self.ttl, 1.0), b"", None)
            self._known[token_id] = cached
            while len(self._known) > MAX_CACHED:
                self._known.popitem(last=False)
        self._known.move_to_end(token_id)
        _, digest, known = cached
        if known is None or not hmac.compare_digest(digest, digest_of(secret)):
            raise AuthenticationFailed("unknown or revoked token")
        if not allows(known.scope, needed):
            raise PermissionDenied(f"token {token_id} is {known.scope}-only; this needs {needed}")
        return known

    def _may_look_up(self, client: str, now: float) -> None:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(LOOKUPS_PER_S, LOOKUPS_BURST)
            while len(self._buckets) > MAX_CACHED:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(client)
        if not bucket.take(now) or not self._all.take(now):
            raise Overloaded(
                f"too many unknown token ids from {client or 'clients'}; try again later"
            )
