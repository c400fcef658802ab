"""The HTTP API's token cache as pure code (a fake metadata client counts the
linearizable reads it would cost): made-up token ids cannot flush the tokens
in use nor make the leader read without bound."""

from __future__ import annotations

import contextlib

import pytest
import trio

from prismfs.errors import AuthenticationFailed, NotFound, Overloaded
from prismfs.gateway import tokens as tokens_mod
from prismfs.gateway.tokens import TokenCache, new_token
from prismfs.meta.commands import TokenInfo


class FakeMeta:
    def __init__(self) -> None:
        self.tokens: dict[str, TokenInfo] = {}
        self.reads = 0

    async def token(self, token_id: str) -> TokenInfo:
        self.reads += 1
        info = self.tokens.get(token_id)
        if info is None:
            raise NotFound(f"no token {token_id}")
        return info


def _made(meta: FakeMeta, scope: str = "read") -> str:
    secret, token_id, digest = new_token()
    meta.tokens[token_id] = TokenInfo(token_id, scope, "", 0, digest)
    return f"Bearer {secret}"


async def test_made_up_ids_are_limited_per_address_and_cannot_flush_valid_tokens(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_mod, "MAX_CACHED", 100)
    meta = FakeMeta()
    cache = TokenCache(meta, ttl=60.0)  # type: ignore[arg-type]
    good = _made(meta)
    assert (await cache.check(good, "read", "10.0.0.1")).token_id == good.split("_")[1]
    reads = meta.reads

    # One address: its burst of lookups, then refusals that cost no read.
    refused = 0
    for i in range(100):
        try:
            await cache.check(f"Bearer pfs_{i:012x}_nope", "read", "10.0.0.66")
        except Overloaded:
            refused += 1
        except AuthenticationFailed:
            pass
    assert refused == 100 - tokens_mod.LOOKUPS_BURST
    assert meta.reads - reads == tokens_mod.LOOKUPS_BURST
    # Others are not affected by that address's budget.
    other = _made(meta)
    await cache.check(other, "read", "10.0.0.2")

    # Many addresses, far more ids than the cache holds, over a minute:
    # the token in use stays remembered (no read for it), and the reads are
    # bounded by the global rate.
    reads = meta.reads
    start = trio.current_time()
    for i in range(2000):
        with contextlib.suppress(Overloaded, AuthenticationFailed):
            await cache.check(f"Bearer pfs_{i:012x}_x", "read", f"10.1.{i // 250}.{i % 250}")
        if i % 20 == 0:
            await cache.check(good, "read", "10.0.0.1")
            await trio.sleep(0.5)
    elapsed = trio.current_time() - start
    assert len(cache._known) <= 100
    allowed = tokens_mod.ALL_LOOKUPS_BURST + elapsed * tokens_mod.ALL_LOOKUPS_PER_S
    assert meta.reads - reads <= allowed
    # The good token was read again only when its ttl ran out (every 60 s).
    meta.tokens.clear()  # were it read now, it would be unknown
    await cache.check(good, "read", "10.0.0.1")


async def test_a_revoked_token_stops_within_the_ttl(autojump_clock: trio.abc.Clock) -> None:
    meta = FakeMeta()
    cache = TokenCache(meta, ttl=5.0)  # type: ignore[arg-type]
    good = _made(meta, "write")
    await cache.check(good, "write", "a")
    meta.tokens.clear()
    await cache.check(good, "write", "a")  # still remembered
    await trio.sleep(5.1)
    with pytest.raises(AuthenticationFailed, match="unknown or revoked"):
        await cache.check(good, "write", "a")
