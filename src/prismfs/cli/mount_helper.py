"""``mount.prismfs SOURCE MOUNTPOINT [-o OPTIONS]``: the mount(8) helper.

It parses its arguments exactly as mount(8) passes them to a helper
(``-o`` options, ``-f`` fake, ``-n`` no mtab, ``-s`` sloppy, ``-v``
verbose) and validates them. The FUSE client that serves the mount is not
built yet (see docs/mount.md), so after validation it exits with status 32
("mount failure", as mount(8) defines it) and says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prismfs.errors import PrismError
from prismfs.wire.address import parse_address

MOUNT_FAILURE = 32
USAGE_ERROR = 1


def parse_options(text: str) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        options[key] = value if sep else None
    return options


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mount.prismfs", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="ADDR[,ADDR...] of cluster nodes")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="", help="comma-separated mount options")
    for flag in ("-f", "-n", "-s", "-v"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    try:
        for address in args.source.split(","):
            parse_address(address, default_port=7070)
    except PrismError as exc:
        print(f"mount.prismfs: {exc.message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    parse_options(args.options)
    print(
        "mount.prismfs: the FUSE client is not available in this version of PrismFS "
        "(see docs/mount.md); nothing was mounted",
        file=sys.stderr,
    )
    sys.exit(MOUNT_FAILURE)
