"""Man pages made from the definitions they describe, so they cannot drift:
prismfs(1) from the click command tree (every command, its usage, help and
options), prismfs.conf(5) from the node.toml structs (every section and key,
its type and default), mount.prismfs(8) from the mount helper's own
description and option list.

``prismfs manpages --out DIR`` writes them; ``man -l DIR/prismfs.1`` reads one.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator
from pathlib import Path

import click
import msgspec

from prismfs import __version__

EXIT_STATUS = [
    ("0", "success"),
    ("1", "an error (the cluster refused or could not be reached, a local file problem)"),
    ("2", "a usage error; prismfs fsck: the check could not run"),
    ("3", "prismfs cluster status: degraded"),
    ("4", "prismfs cluster status: a chunk unavailable, or a node down"),
    ("130", "interrupted"),
]
ENVIRONMENT = [
    ("PRISMFS_CONFIG", "a client.toml naming the cluster (as --config)"),
    ("PRISMFS_STATE_DIR", "where the dev registry and the default dev cluster live"),
    ("PRISMFS_HTTP", "the node URL of --http"),
    ("PRISMFS_TOKEN", "the API token of --http"),
    ("PRISMFS_SESSION_LEASE_S", "the client session's lease, 1 to 86400 s (default 60)"),
]


def roff(text: str) -> str:
    """Text safe in roff: backslashes escaped, a leading . or ' escaped, blank lines
    made paragraph breaks."""
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        if not line.strip():
            out.append(".PP")  # a paragraph break (a blank line is not one in roff)
        else:
            out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _header(name: str, section: int, what: str) -> list[str]:
    day = datetime.date.today().isoformat()
    return [
        f'.TH {name.upper()} {section} "{day}" "PrismFS {__version__}" "PrismFS Manual"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(what)}",
    ]


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def prismfs_1(cli: click.Group) -> str:
    """prismfs(1): every command of the tree, with its options."""
    lines = _header("prismfs", 1, inspect.cleandoc(cli.help or "").splitlines()[0])
    lines += [".SH SYNOPSIS", ".B prismfs", "COMMAND [OPTIONS] [ARGUMENTS]", ".SH COMMANDS"]
    root = click.Context(cli, info_name="prismfs")
    for path, command in _commands(cli):
        parent = root
        for name in path[:-1]:  # a context per level: the usage line names them all
            parent = click.Context(click.Command(name), info_name=name, parent=parent)
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
        lines += [".SS " + roff(ctx.command_path), ".B " + roff(usage)]
        lines += [".PP", roff(inspect.cleandoc(command.help or "").replace("\b\n", ""))]
        for param in command.params:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            flags, text = record
            lines += [".TP", ".B " + roff(flags), roff(text)]
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f".B {code}", roff(meaning)]
    lines += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        lines += [".TP", f".B {name}", roff(meaning)]
    lines += [
        ".SH SEE ALSO",
        ".BR mount.prismfs (8),",
        ".BR prismfs.conf (5);",
        "docs/cli.md, docs/configuration.md and docs/mount.md in the PrismFS sources.",
    ]
    return "\n".join(lines) + "\n"


def prismfs_conf_5() -> str:
    """prismfs.conf(5): node.toml, every section and key with type and default."""
    from prismfs.node.config import NodeConfig

    lines = _header("prismfs.conf", 5, "the node configuration file of PrismFS (node.toml)")
    lines += [
        ".SH DESCRIPTION",
        "A TOML file given to",
        ".B prismfs node start --config",
        ".IR FILE ;",
        "flags of that command override it. Unknown sections and keys are errors.",
        "What each key does: docs/configuration.md in the PrismFS sources.",
    ]
    for section in msgspec.structs.fields(NodeConfig):
        struct = section.type
        lines += [".SH " + roff(f"[{section.name}]")]
        doc = inspect.getdoc(struct)
        if doc and struct.__doc__:
            lines += [roff(doc)]
        for key in msgspec.structs.fields(struct):
            default = key.default if key.default is not msgspec.NODEFAULT else "{}"
            kind = getattr(key.type, "__name__", None) or str(key.type).replace("typing.", "")
            lines += [".TP", ".B " + roff(key.name), roff(f"{kind}, default {default!r}")]
    lines += [".SH SEE ALSO", ".BR prismfs (1),", ".BR mount.prismfs (8)"]
    return "\n".join(lines) + "\n"


def mount_prismfs_8() -> str:
    """mount.prismfs(8): the helper's own description and its options."""
    from prismfs.cli import mount_helper

    lines = _header("mount.prismfs", 8, "mount a PrismFS file system")
    doc = inspect.cleandoc(mount_helper.__doc__ or "")
    lines += [
        ".SH SYNOPSIS",
        ".B mount.prismfs",
        "SOURCE MOUNTPOINT [\\-f] [\\-o OPTIONS]",
        ".br",
        ".B mount \\-t prismfs",
        "SOURCE MOUNTPOINT [\\-o OPTIONS]",
        ".SH DESCRIPTION",
        roff(doc.replace("``", "")),
        ".SH OPTIONS",
    ]
    lines += [
        "Accepted with \\-o (what each does: docs/mount.md in the PrismFS sources):",
        ".PP",
        roff(", ".join(sorted(mount_helper.KNOWN))) + ".",
        ".PP",
        "Accepted and ignored (fstab): " + roff(", ".join(sorted(mount_helper.IGNORED))) + ", x-*.",
    ]
    lines += [
        ".SH SEE ALSO",
        ".BR prismfs (1),",
        ".BR mount (8),",
        ".BR fstab (5)",
    ]
    return "\n".join(lines) + "\n"


def write_all(cli: click.Group, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "prismfs.1": prismfs_1(cli),
        "prismfs.conf.5": prismfs_conf_5(),
        "mount.prismfs.8": mount_prismfs_8(),
    }
    written = []
    for name, text in pages.items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
