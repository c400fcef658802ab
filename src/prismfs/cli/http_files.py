"""The file commands (put, get, ls, rm) over the HTTP API instead of RPC.

``--http URL`` (or ``PRISMFS_HTTP``) and ``--token`` (or ``PRISMFS_TOKEN``)
select it: no cluster secret is needed, only a token of the right scope.
Bodies are streamed both ways; a problem document from the server becomes
the error of its code, so the CLI prints the same one line as over RPC.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx

from prismfs.errors import InvalidArgument, IsADirectory, PrismError, Unavailable, registered_errors

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def _url(base: str, kind: str, path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"cluster paths start with /: {path!r}")
    return f"{base.rstrip('/')}/v1/{kind}/{quote(path.strip('/'))}"


def _raise(response: httpx.Response) -> None:
    if response.is_success or response.status_code == 304:
        return
    response.read()
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    cls = registered_errors().get(str(body.get("code", "")), PrismError)
    message = body.get("detail") or body.get("title") or f"HTTP {response.status_code}"
    raise cls(str(message))


@contextmanager
def session(base: str, token: str | None) -> Iterator[httpx.Client]:
    if not base.startswith(("http://", "https://")):
        raise InvalidArgument(f"--http needs a URL like http://HOST:PORT, not {base!r}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(headers=headers, timeout=TIMEOUT) as client:
            yield client
    except httpx.HTTPError as exc:
        raise Unavailable(f"{base}: {exc}") from None


def _is_dir(client: httpx.Client, base: str, path: str) -> bool:
    response = client.get(_url(base, "dirs", path), params={"limit": 1})
    return response.status_code == 200


def put(base: str, token: str | None, local: Path, remote: str, layout: str | None) -> None:
    with session(base, token) as client:
        target = remote
        if remote.endswith("/") or _is_dir(client, base, remote):
            target = remote.rstrip("/") + "/" + local.name
        with local.open("rb") as f:
            response = client.put(
                _url(base, "files", target),
                content=iter(lambda: f.read(1 << 20), b""),
                params={"layout": layout} if layout else None,
            )
        _raise(response)


def get(base: str, token: str | None, remote: str, local: Path) -> None:
    with session(base, token) as client:
        target = local / remote.rstrip("/").rsplit("/", 1)[-1] if local.is_dir() else local
        with client.stream("GET", _url(base, "files", remote)) as response:
            _raise(response)
            if str(local) == "-":
                for block in response.iter_bytes(1 << 20):
                    sys.stdout.buffer.write(block)
                sys.stdout.buffer.flush()
                return
            expected = int(response.headers.get("content-length", "-1"))
            tmp = target.with_name(f".{target.name}.prismfs-part")
            got = 0
            with tmp.open("wb") as out:
                for block in response.iter_bytes(1 << 20):
                    out.write(block)
                    got += len(block)
                out.flush()
                os.fsync(out.fileno())
            if expected >= 0 and got != expected:
                tmp.unlink(missing_ok=True)
                raise Unavailable(f"the transfer stopped after {got} of {expected} bytes")
            tmp.replace(target)  # only a complete copy takes the name


def ls(base: str, token: str | None, path: str, long: bool) -> None:
    with session(base, token) as client:
        cursor: str | None = None
        entries: list[dict[str, Any]] = []
        while True:
            params = {"cursor": cursor} if cursor else {}
            response = client.get(_url(base, "dirs", path), params=params)
            if response.status_code == 409:  # a file: list just it
                head = client.head(_url(base, "files", path))
                _raise(head)
                size = head.headers.get("content-length", "?")
                entries = [{"name": path.rstrip("/").rsplit("/", 1)[-1], "size": size, "mode": ""}]
                break
            _raise(response)
            page = response.json()
            entries += page["entries"]
            cursor = page.get("next")
            if not cursor:
                break
        for e in sorted(entries, key=lambda e: str(e["name"])):
            if long:
                click.echo(
                    f"{e.get('type', 'file'):<7} {e.get('mode', ''):>5} {e['size']:>12} "
                    f"{e.get('mtime', ''):<20} {e['name']}"
                )
            else:
                click.echo(e["name"])


def rm(base: str, token: str | None, path: str, recursive: bool) -> None:
    with session(base, token) as client:
        response = client.delete(_url(base, "files", path))
        if response.status_code == 409 and _is_dir(client, base, path):
            if not recursive:
                raise IsADirectory(f"{path} is a directory (use -r)")
            response = client.delete(_url(base, "dirs", path), params={"recursive": "true"})
        _raise(response)
