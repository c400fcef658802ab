"""``prismfs token create|list|revoke``: bearer tokens of the HTTP API.

A token is shown once, when it is made; the cluster keeps only its digest
(`prismfs.gateway.tokens`). Anyone with the cluster secret may manage them.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import click
import trio

from prismfs.cli.files import connect
from prismfs.client.config import ClientConfig
from prismfs.gateway.tokens import new_token


def register(cli: click.Group, client_options: Callable[[Any], Any], table: Any) -> None:
    @cli.group()
    def token() -> None:
        """Bearer tokens for the HTTP API."""

    @token.command("create")
    @client_options
    @click.option("--read-only", is_flag=True, help="Only GET and HEAD.")
    @click.option("--admin", is_flag=True, help="Also add, drain and remove nodes.")
    @click.option("--name", default="", help="A note for people: who or what uses it.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def create(
        client: ClientConfig, read_only: bool, admin: bool, name: str, as_json: bool
    ) -> None:
        """Make a token (read-write unless --read-only or --admin); it is shown only now."""
        if read_only and admin:
            raise click.UsageError("--read-only and --admin do not go together")
        scope = "read" if read_only else "admin" if admin else "write"
        secret, token_id, digest = new_token()

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.create_token(token_id, digest, scope, name)

        trio.run(run)
        if as_json:
            click.echo(json.dumps({"id": token_id, "scope": scope, "name": name, "token": secret}))
        else:
            click.echo(f"token {token_id} ({scope}): {secret}")
            click.echo("keep it safe: it is not shown again (revoke: prismfs token revoke ID)")

    @token.command("list")
    @client_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_tokens(client: ClientConfig, as_json: bool) -> None:
        """Every token's id, scope, name and age (never the token itself)."""

        async def run() -> list[dict[str, Any]]:
            async with connect(client) as (meta, _):
                return [
                    {
                        "id": t.token_id,
                        "scope": t.scope,
                        "name": t.name,
                        "created": datetime.datetime.fromtimestamp(
                            t.created_ns / 1e9, tz=datetime.UTC
                        ).isoformat(timespec="seconds"),
                    }
                    for t in await meta.tokens()
                ]

        rows = trio.run(run)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            table(rows, ["id", "scope", "name", "created"])

    @token.command("revoke")
    @client_options
    @click.argument("token_id", metavar="ID")
    def revoke(client: ClientConfig, token_id: str) -> None:
        """Revoke a token (every node stops taking it within http.token_cache_s)."""

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.revoke_token(token_id)

        trio.run(run)
        click.echo(f"token {token_id} revoked")
