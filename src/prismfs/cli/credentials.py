"""``prismfs credentials create|list|revoke``: client credentials for mount hosts.

A client credential lets its holder mount and use files (``--read-only``:
only read) but never act as a node: no Raft traffic, no internal commands,
no shard deletes, no membership changes (`prismfs.wire.auth`). Its key is
derived from the cluster secret, so making one needs the cluster secret
(an admin host's ``cluster.secret``); the cluster records its id and role
so that it can be listed and revoked. Every node refuses a revoked
credential within a second or two and closes its connections.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio

from prismfs.cli.files import connect
from prismfs.client.config import ClientConfig
from prismfs.errors import ConfigError
from prismfs.wire.auth import (
    CLIENT,
    NODE,
    READ_ONLY,
    check_credential,
    new_credential_id,
    write_secret_file,
)


def _when(ns: int) -> str:
    if not ns:
        return ""
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def register(cli: click.Group, client_options: Callable[[Any], Any], table: Any) -> None:
    @cli.group()
    def credentials() -> None:
        """Client credentials for mount hosts (revocable; cannot act as a node)."""

    @credentials.command("create")
    @client_options
    @click.option("--client", "client_role", is_flag=True, help="A client credential (default).")
    @click.option("--read-only", is_flag=True, help="Mounts read-only; can change nothing.")
    @click.option("--name", default="", help="A note for people: which host or who uses it.")
    @click.option("--id", "credential", default="", help="Its id (default: a random one).")
    @click.option(
        "--out",
        type=click.Path(path_type=Path, dir_okay=False),
        required=True,
        help="Where to write it (mode 0600); give it to the mount as -o secret=FILE.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def create(
        client: ClientConfig,
        client_role: bool,
        read_only: bool,
        name: str,
        credential: str,
        out: Path,
        as_json: bool,
    ) -> None:
        """Make a client credential and write it to --out."""
        role = READ_ONLY if read_only else CLIENT
        credential = credential or new_credential_id(role)
        check_credential(role, credential)
        if len(name) > 200:
            raise click.UsageError("--name has at most 200 characters")
        if out.exists():
            raise ConfigError(f"{out} already exists; refusing to replace a credential file")
        if not out.parent.is_dir():
            raise ConfigError(f"directory {out.parent} does not exist")
        own = client.credentials()
        if own.role != NODE:
            raise ConfigError(
                f"{client.secret_file} is a {own.role} credential: making credentials "
                "needs the cluster secret (cluster.secret)"
            )
        made = own.derive(role, credential)

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.create_credential(credential, role, name)

        trio.run(run)
        write_secret_file(out, made)
        if as_json:
            click.echo(json.dumps({"id": credential, "role": role, "name": name, "file": str(out)}))
        else:
            click.echo(f"credential {credential} ({role}) written to {out}")
            click.echo(
                f"mount with -o secret={out}; revoke with: prismfs credentials revoke {credential}"
            )

    @credentials.command("list")
    @client_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_credentials(client: ClientConfig, as_json: bool) -> None:
        """Every client credential made or revoked (never a key)."""

        async def run() -> list[dict[str, Any]]:
            async with connect(client) as (meta, _):
                return [
                    {
                        "id": c.credential,
                        "role": c.role,
                        "name": c.name,
                        "created": _when(c.created_ns),
                        "revoked": _when(c.revoked_ns),
                    }
                    for c in await meta.credentials()
                ]

        rows = trio.run(run)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            table(rows, ["id", "role", "name", "created", "revoked"])

    @credentials.command("revoke")
    @client_options
    @click.argument("credential", metavar="ID")
    def revoke(client: ClientConfig, credential: str) -> None:
        """Revoke a client credential: every node refuses it and closes its
        connections within about two seconds."""

        async def run() -> None:
            async with connect(client) as (meta, _):
                await meta.revoke_credential(credential)

        trio.run(run)
        click.echo(f"credential {credential} revoked")
