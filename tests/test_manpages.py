"""The manual pages: made from the CLI, configuration and mount-option
definitions, committed in man/ and current, rendered by groff without a
warning, and covering every command, key and option."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click
import msgspec

from prismfs.cli import mount_helper
from prismfs.cli.main import cli
from prismfs.cli.manpages import PAGES, pages
from prismfs.node.config import NodeConfig

MAN = Path(__file__).resolve().parent.parent / "man"


def test_the_committed_pages_are_the_generated_ones() -> None:
    made = pages()
    assert sorted(made) == sorted(PAGES)
    stale = [name for name, text in made.items() if (MAN / name).read_text() != text]
    assert not stale, f"man/{stale} no longer match the code: run `make man`"


def test_groff_renders_each_page_without_a_warning() -> None:
    for name in PAGES:
        result = subprocess.run(
            ["groff", "-man", "-ww", "-z", str(MAN / name)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0 and not result.stderr, (name, result.stderr)


def _commands(group: click.Group, path: tuple[str, ...]) -> list[str]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        elif not command.hidden:
            found.append(" ".join((*path, name)))
    return found


def test_every_command_key_and_option_has_its_entry() -> None:
    made = pages()
    commands = _commands(cli, ("prismfs",))
    assert len(commands) > 30
    assert ".SH EXIT STATUS" in made["prismfs.1"] and "\\fB4\\fR" in made["prismfs.1"]
    for command in commands:
        assert f'.SS "{command.replace("-", chr(92) + "-")}"' in made["prismfs.1"], command
    conf = made["prismfs.conf.5"]
    for section in msgspec.structs.fields(NodeConfig):
        value = getattr(NodeConfig(), section.name)
        if isinstance(value, msgspec.Struct):
            assert f'.SH "[{section.encode_name}]"' in conf
            for key in msgspec.structs.fields(type(value)):
                assert f"\\fB{key.encode_name.replace('-', chr(92) + '-')}\\fR" in conf
    for option in mount_helper.KNOWN | mount_helper.KERNEL_FLAGS:
        assert option.replace("-", "\\-") in made["mount.prismfs.8"], option
