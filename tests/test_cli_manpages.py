"""The man pages are made from the command tree and the config structs: a
command or key added later is in them without anyone writing roff, and
groff reads them without a warning."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec

from conftest import run_cli
from prismfs.node.config import NodeConfig
from test_cli_errors import ALL, command


def test_man_pages_cover_every_command_and_key(tmp_path: Path) -> None:
    result = run_cli("manpages", "--out", str(tmp_path / "man"))
    assert result.returncode == 0, result.stderr
    pages = {p.name: p.read_text() for p in (tmp_path / "man").iterdir()}
    assert sorted(pages) == ["mount.prismfs.8", "prismfs.1", "prismfs.conf.5"]

    one = pages["prismfs.1"]
    for path in ALL:
        assert f".SS prismfs {' '.join(path)}\n" in one, path
        for param in command(path).params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                assert param.opts[0] in one, (path, param.opts[0])
    assert ".SH EXIT STATUS" in one and ".B 4\n" in one

    conf = pages["prismfs.conf.5"]
    for section in msgspec.structs.fields(NodeConfig):
        assert f".SH [{section.name}]" in conf
        for key in msgspec.structs.fields(section.type):
            assert f".B {key.name}\n" in conf, (section.name, key.name)
    assert "failmode" in pages["mount.prismfs.8"] and "_netdev" in pages["mount.prismfs.8"]

    for name in pages:
        check = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(tmp_path / "man" / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0 and check.stderr == "", (name, check.stderr)
    shown = subprocess.run(
        ["man", "-l", str(tmp_path / "man" / "prismfs.1")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"},
    )
    assert shown.returncode == 0 and "EXIT STATUS" in shown.stdout
    assert "prismfs cluster status" in shown.stdout
