"""The file commands (put, get, ls, rm) over the HTTP API instead of RPC.

``--http URL`` (or ``PRISMFS_HTTP``) and ``--token`` (or ``PRISMFS_TOKEN``)
select it: no cluster secret is needed, only a token of the right scope.
Bodies are streamed both ways; a problem document from the server becomes
the error of its code, so the CLI prints the same one line as over RPC.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO
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
    """An HTTP client for ``base``; transport failures become `Unavailable`."""
    if not base.startswith(("http://", "https://")):
        raise InvalidArgument(f"--http needs a URL like http://HOST:PORT, not {base!r}")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        # A header carries ASCII only; PrismFS tokens are never anything else.
        raise InvalidArgument("--token is not a PrismFS token (printable ASCII, no spaces)")
    try:
        url = httpx.URL(base)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidArgument(f"--http {base!r} is not a valid URL: {exc}") from None
    if not url.host:
        raise InvalidArgument(f"--http {base!r} names no host")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(headers=headers, timeout=TIMEOUT) as client:
            yield client
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Unavailable(f"{base}: {exc or type(exc).__name__}") from None


def local_failure(exc: OSError, path: Path | str) -> InvalidArgument:
    return InvalidArgument(f"{path}: {exc.strerror or exc}")


def _blocks(f: BinaryIO, path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The file's bytes in blocks of 1 MiB; a read error names the file."""
    while True:
        try:
            block = f.read(1 << 20)
        except OSError as exc:
            raise local_failure(exc, path) from None
        if not block:
            return
        if progress is not None:
            progress(len(block))
        yield block


def _is_dir(client: httpx.Client, base: str, path: str) -> bool:
    response = client.get(_url(base, "dirs", path), params={"limit": 1})
    return response.status_code == 200


def put(
    base: str,
    token: str | None,
    local: Path,
    remote: str,
    layout: str | None,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Upload ``local`` to ``remote`` (into it if it is a directory); the path written."""
    with session(base, token) as client:
        target = remote
        if remote.endswith("/") or _is_dir(client, base, remote):
            target = remote.rstrip("/") + "/" + local.name
        try:
            f = local.open("rb")
        except OSError as exc:
            raise local_failure(exc, local) from None
        with f:
            response = client.put(
                _url(base, "files", target),
                content=_blocks(f, local, progress),
                params={"layout": layout} if layout else None,
            )
        _raise(response)
        return target


def get(
    base: str,
    token: str | None,
    remote: str,
    local: Path,
    bar: Callable[[int], ContextManager[Callable[[int], None] | None]] | None = None,
) -> tuple[str, int]:
    """Download ``remote`` to ``local`` (into it if it is a directory; "-" is
    standard output); the local path written and its size. ``bar(total)``
    gives the progress callback once the size is known."""
    with session(base, token) as client:
        target = local / remote.rstrip("/").rsplit("/", 1)[-1] if local.is_dir() else local
        with client.stream("GET", _url(base, "files", remote)) as response:
            _raise(response)
            expected = int(response.headers.get("content-length", "-1"))
            if str(local) == "-":
                got = 0
                for block in response.iter_bytes(1 << 20):
                    sys.stdout.buffer.write(block)
                    got += len(block)
                sys.stdout.buffer.flush()
                return "-", got
            tmp = target.with_name(f".{target.name}.prismfs-part")
            got = 0
            try:
                out = tmp.open("wb")
            except OSError as exc:
                raise local_failure(exc, target) from None
            try:
                with out, bar(expected) if bar else nullcontext(None) as progress:
                    for block in response.iter_bytes(1 << 20):
                        out.write(block)
                        got += len(block)
                        if progress is not None:
                            progress(len(block))
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise local_failure(exc, target) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if expected >= 0 and got != expected:
                tmp.unlink(missing_ok=True)
                raise Unavailable(f"the transfer stopped after {got} of {expected} bytes")
            try:
                tmp.replace(target)  # only a complete copy takes the name
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise local_failure(exc, target) from None
            return str(target), got


def ls(base: str, token: str | None, path: str, long: bool, as_json: bool = False) -> None:
    """List ``path``; with ``as_json``, the API's entries as one JSON list."""
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
        entries.sort(key=lambda e: str(e["name"]))
        if as_json:
            click.echo(json.dumps(entries, indent=2))
            return
        for e in entries:
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
