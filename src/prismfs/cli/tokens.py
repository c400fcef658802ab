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
from prismfs.client.paths import NOBODY
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
    @click.option(
        "--uid",
        type=click.IntRange(0, 2**32 - 1),
        default=NOBODY,
        show_default=True,
        help="The user its requests act as (modes and owners are checked; 0: root).",
    )
    @click.option(
        "--gid",
        type=click.IntRange(0, 2**32 - 1),
        default=NOBODY,
        show_default=True,
        help="The group its requests act as.",
    )
    @click.option("--prefix", default="", help="Only paths under this one (e.g. /projects/a).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def create(
        client: ClientConfig,
        read_only: bool,
        admin: bool,
        name: str,
        uid: int,
        gid: int,
        prefix: str,
        as_json: bool,
    ) -> None:
        """Make a token (read-write unless --read-only or --admin); it is shown only now."""
        if read_only and admin:
            raise click.UsageError("--read-only and --admin do not go together")
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        if prefix and not prefix.startswith("/"):
            raise click.UsageError("--prefix is an absolute path inside the cluster")
        scope = "read" if read_only else "admin" if admin else "write"
        secret, token_id, digest = new_token()

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.create_token(token_id, digest, scope, name, uid, gid, prefix)

        trio.run(run)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": token_id,
                        "scope": scope,
                        "name": name,
                        "uid": uid,
                        "gid": gid,
                        "prefix": prefix,
                        "token": secret,
                    }
                )
            )
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
                        "uid": t.uid,
                        "gid": t.gid,
                        "prefix": t.prefix or "/",
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
            table(rows, ["id", "scope", "uid", "gid", "prefix", "name", "created"])

    @token.command("revoke")
    @client_options
    @click.argument("token_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def revoke(client: ClientConfig, token_id: str, as_json: bool) -> None:
        """Revoke a token (every node stops taking it within http.token_cache_s)."""

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.revoke_token(token_id)

        trio.run(run)
        if as_json:
            click.echo(json.dumps({"id": token_id, "revoked": True}))
        else:
            click.echo(f"token {token_id} revoked")
