"""Every command fails with one line, never a traceback, and fails fast.

The command tree is walked, so a command added later is covered without
touching this file: each gets an unknown option, its required parameters
left out, bad option values, nonexistent paths, and (if it talks to a
cluster) a cluster address where nothing listens. Most run in-process
(CliRunner's isolation around `main`); a few run as real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import PRISMFS, run_cli
from prismfs.cli.files import ClusterPath
from prismfs.cli.main import cli, main
from prismfs.wire.auth import ClusterCredentials, write_secret_file

DEAD = "127.0.0.1:1"  # nothing listens on port 1 of loopback
EXIT_CODES = {0, 1, 2, 3, 4, 130}  # docs/cli.md, "Exit status"


def invoke(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """Run ``prismfs ARGS`` in this process: (exit status, stdout, stderr)."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """No client discovery: no config, no dev cluster, no HTTP defaults."""
    (tmp_path / "state").mkdir()
    return {
        "PRISMFS_STATE_DIR": str(tmp_path / "state"),
        "PRISMFS_CONFIG": None,
        "PRISMFS_HTTP": None,
        "PRISMFS_TOKEN": None,
    }


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.secret"
    write_secret_file(path, ClusterCredentials.generate())
    return path


def assert_one_line_or_usage(code: int, err: str, what: object) -> None:
    assert "Traceback" not in err, (what, err)
    assert code in EXIT_CODES and code != 0, (what, code, err)
    lines = err.strip().splitlines()
    assert lines, (what, "nothing on stderr")
    if code == 2 and lines[0].startswith("Usage: prismfs"):
        # click's usage error form ("Choose from:" may list choices after it)
        assert any(line.startswith("Error: ") for line in lines[2:]), (what, err)
    else:
        assert len(lines) == 1 and lines[0].startswith("prismfs"), (what, err)


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def command(path: tuple[str, ...]) -> click.Command:
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return found


def plausible(param: click.Parameter, tmp_path: Path, n: int) -> str:
    """A value that parses, for a required parameter."""
    t = param.type
    if isinstance(t, ClusterPath):
        return "/x"
    if isinstance(t, click.Path):
        if t.exists:
            if t.file_okay:
                plain = tmp_path / "plain.txt"
                plain.write_text("x")
                return str(plain)
            return str(tmp_path)
        return str(tmp_path / f"new-{n}")
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, click.types.IntParamType | click.types.FloatParamType):
        low = getattr(t, "min", None)
        return str(low if low is not None else 1)
    if "HOST:PORT" in (param.metavar or "") or "ADDR" in (param.metavar or ""):
        return "127.0.0.1:2"
    return "x"


def required_args(
    cmd: click.Command, tmp_path: Path, instead: dict[str, str] | None = None
) -> list[str]:
    """Values for the required parameters (``instead``: by name, a given value)."""
    args: list[str] = []
    for n, param in enumerate(cmd.params):
        if not param.required:
            continue
        value = (instead or {}).get(str(param.name)) or plausible(param, tmp_path, n)
        args += [value] if isinstance(param, click.Argument) else [param.opts[0], value]
    return args


ALL = list(commands())


def test_the_walk_finds_every_command() -> None:
    for expected in [("put",), ("cluster", "status"), ("node", "drain"), ("token", "revoke")]:
        assert expected in ALL


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_command_refuses_bad_arguments_in_one_line(
    path: tuple[str, ...], tmp_path: Path, env: dict[str, str | None], secret: Path
) -> None:
    cmd = command(path)
    code, _, err = invoke(*path, "--no-such-option", env=env)
    assert code == 2 and "No such option" in err, err
    assert_one_line_or_usage(code, err, (path, "unknown option"))

    if any(p.required for p in cmd.params):
        code, _, err = invoke(*path, env=env)
        assert code == 2, (path, err)
        assert_one_line_or_usage(code, err, (path, "missing"))

    args = required_args(cmd, tmp_path)
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.is_flag or param.hidden:
            continue
        bad = None
        if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType):
            bad = "not-a-number"
        elif isinstance(param.type, click.Choice):
            bad = "no-such-choice"
        elif isinstance(param.type, click.Path) and param.type.exists:
            bad = str(tmp_path / "does" / "not" / "exist")
        if bad is None:
            continue
        code, _, err = invoke(*path, *args, param.opts[0], bad, env=env)
        assert code == 2 and param.opts[0] in err, (path, param.opts[0], err)
        assert_one_line_or_usage(code, err, (path, param.opts[0]))
    for param in cmd.params:
        if isinstance(param, click.Argument) and getattr(param.type, "exists", False):
            gone = str(tmp_path / "does" / "not" / "exist")
            missing = required_args(cmd, tmp_path, {str(param.name): gone})
            code, _, err = invoke(*path, *missing, env=env)
            assert code == 2 and "does not exist" in err, (path, err)
            assert_one_line_or_usage(code, err, (path, "nonexistent path"))

    if any(isinstance(p, click.Option) and "--cluster" in p.opts for p in cmd.params):
        started = time.monotonic()
        code, _, err = invoke(
            *path, *args, "--cluster", DEAD, "--secret-file", str(secret), env=env
        )
        assert_one_line_or_usage(code, err, (path, "dead cluster"))
        assert DEAD in err or "does not exist" in err, (path, err)
        assert time.monotonic() - started < 15, path


def test_http_token_that_is_not_ascii(env: dict[str, str | None]) -> None:
    code, _, err = invoke("ls", "--http", "http://127.0.0.1:1", "--token", "é", "/", env=env)
    assert code == 1 and err.strip() == (
        "prismfs: --token is not a PrismFS token (printable ASCII, no spaces)"
    )


@pytest.mark.parametrize("transport", ["rpc", "http"])
def test_get_into_a_missing_local_directory(
    transport: str, tmp_path: Path, env: dict[str, str | None], secret: Path
) -> None:
    via = (
        ["--http", "http://127.0.0.1:1"]
        if transport == "http"
        else ["--cluster", DEAD, "--secret-file", str(secret)]
    )
    out = tmp_path / "nonexistent" / "dir" / "out"
    code, _, err = invoke("get", *via, "/a", str(out), env=env)
    # Refused before connecting: the message is about the directory, not the address.
    assert code == 1 and err.strip() == (
        f"prismfs: {out}: directory {out.parent} does not exist"
    ), err


@pytest.mark.parametrize("transport", ["rpc", "http"])
def test_put_of_an_unreadable_file(transport: str, tmp_path: Path, secret: Path) -> None:
    """Run without CAP_DAC_OVERRIDE (root would read any file), as a real process."""
    assert shutil.which("setpriv")
    src = tmp_path / "locked"
    src.write_bytes(b"secret")
    src.chmod(0)
    via = (
        ["--http", "http://127.0.0.1:1"]
        if transport == "http"
        else ["--cluster", DEAD, "--secret-file", str(secret)]
    )
    no_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    result = subprocess.run(
        [*no_override, *PRISMFS, "put", *via, str(src), "/locked"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PRISMFS_STATE_DIR": str(tmp_path)},
    )
    # A usage error before anything connects (click checks readability).
    assert_one_line_or_usage(result.returncode, result.stderr, transport)
    assert result.returncode == 2 and f"'{src}' is not readable" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "/"),
        ("stat", "/x"),
        ("mkdir", "/x"),
        ("rm", "/x"),
        ("token", "list"),
    ],
)
def test_a_dead_cluster_fails_fast_as_a_process(args: tuple[str, ...], secret: Path) -> None:
    """Before, these retried for the client's 30 s deadline; now the first
    ping round (5 s at most) decides, and the line names what was tried."""
    started = time.monotonic()
    result = run_cli(*args, "--cluster", f"{DEAD},127.0.0.1:2", "--secret-file", str(secret))
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prismfs: no node of the cluster answered")
    assert DEAD in lines[0] and "127.0.0.1:2" in lines[0]
    assert took < 15, took


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stat", "relative"), "cluster paths start with /"),
        (("ls", "/a/../b"), "no . or .."),
        (("rm", "/" + "n" * 256), "longer than 255"),
    ],
)
def test_paths_are_checked_before_connecting(
    args: tuple[str, ...], message: str, env: dict[str, str | None], secret: Path
) -> None:
    code, _, err = invoke(*args, "--cluster", DEAD, "--secret-file", str(secret), env=env)
    assert code == 2 and message in err and DEAD not in err, err


def test_put_of_a_fifo_is_refused_at_once(tmp_path: Path, secret: Path) -> None:
    """A FIFO (or a device) is no file to copy: one line, without waiting for
    a writer that never comes."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = subprocess.run(
        [*PRISMFS, "put", "--cluster", DEAD, "--secret-file", str(secret), str(fifo), "/p"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        env={**os.environ, "PRISMFS_STATE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"prismfs: {fifo} is not a regular file: put copies files"
