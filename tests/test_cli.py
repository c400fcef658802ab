"""Command-line edges: help, usage errors, the mount helper's argument handling,
and client.toml parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from prismfs.client.config import load_client_toml, resolve_client_config
from prismfs.errors import ConfigError, InvalidArgument
from prismfs.wire.address import parse_address


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("cluster",),
        ("node", "start"),
        ("dev", "up"),
        ("dev", "down"),
        ("dev", "status"),
        ("cluster", "status"),
    ],
)
def test_every_command_has_help(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0
    assert "Usage: prismfs" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and "prismfs, version" in result.stdout


def _mount_helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from prismfs.cli.mount_helper import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_mount_helper_refuses_bad_arguments_with_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    cases = [
        (("host:notaport", str(tmp_path), "-o", f"secret={secret}"), "bad port"),
        (("127.0.0.1:7070", str(tmp_path)), "give the cluster secret"),
        (("127.0.0.1:7070", str(tmp_path), "-o", "nosuchoption"), "unknown mount option"),
        (("127.0.0.1:7070", str(tmp_path), "-o", "failmode=panic,secret=x"), "wait or eio"),
        (("127.0.0.1:7070", str(tmp_path), "-o", "attr_timeout=-1,secret=x"), "between"),
        ((str(tmp_path / "missing.toml"), str(tmp_path)), "missing.toml"),
    ]
    for args, message in cases:
        result = _mount_helper(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    # fstab-only options are accepted (and ignored); the missing secret is what fails.
    fstab = _mount_helper("127.0.0.1:7070", str(tmp_path), "-o", "defaults,_netdev,noauto,x-y=1")
    assert fstab.returncode == 1 and "give the cluster secret" in fstab.stderr
    usage = _mount_helper()
    assert usage.returncode == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1:7070", ("10.0.0.1", 7070)), ("[::1]:9", ("::1", 9)), ("node-a:1", ("node-a", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["nohost", "h:70000", "h:x", ":80", "[::1]"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_address(text)


def test_client_toml_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text(
        'cluster = ["127.0.0.1:1", "127.0.0.1:2"]\nsecret_file = "s/cluster.secret"\n'
    )
    config = load_client_toml(tmp_path / "client.toml")
    assert config.addresses == ("127.0.0.1:1", "127.0.0.1:2")
    assert config.secret_file == tmp_path / "s" / "cluster.secret"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cluster = ["127.0.0.1:1"]\n', "needs 'cluster'"),
        ('cluster = []\nsecret_file = "x"\n', "names no cluster address"),
        ('cluster = ["x"]\nsecret_file = "x"\n', "needs a port"),
        ('cluster = ["a:1"]\nsecret_file = "x"\nextra = 1\n', "unknown keys extra"),
        ("cluster = [", "not valid TOML"),
    ],
)
def test_bad_client_toml(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "client.toml").write_text(text)
    with pytest.raises((ConfigError, InvalidArgument), match=message):
        resolve_client_config(config=tmp_path / "client.toml")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(shell: str) -> None:
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "_PRISMFS_COMPLETE" in result.stdout and "prismfs" in result.stdout
    if shell == "bash":
        assert "_prismfs_completion()" in result.stdout
        syntax = subprocess.run(
            ["bash", "-n"], input=result.stdout, capture_output=True, text=True, timeout=30
        )
        assert syntax.returncode == 0, syntax.stderr


def test_completion_completes_commands_through_the_entry_point() -> None:
    """What the installed script asks the program, the way bash asks it."""
    env = {"_PRISMFS_COMPLETE": "bash_complete", "COMP_WORDS": "prismfs clu", "COMP_CWORD": "1"}
    result = run_cli(env=env)
    assert result.returncode == 0, result.stderr
    assert "plain,cluster" in result.stdout.splitlines()
    env = {**env, "COMP_WORDS": "prismfs cluster st", "COMP_CWORD": "2"}
    assert "plain,status" in run_cli(env=env).stdout.splitlines()
