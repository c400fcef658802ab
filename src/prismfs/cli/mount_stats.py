"""``prismfs mount stats MOUNTPOINT``: what a mount's operations cost.

The mount keeps counters and latency histograms of every FUSE request it
answered and every RPC it made (`prismfs.stats`) and hands them out as the
value of the ``user.prismfs.stats`` extended attribute of any path on it;
setting that attribute resets them. The table shows, per name, how many,
the mean and the bucket bounds of the median and the 99th percentile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from prismfs.errors import ConfigError
from prismfs.stats import Stats

STATS_XATTR = "user.prismfs.stats"


def read_mount_stats(path: Path) -> Stats:
    """The counters of the mount holding ``path``."""
    try:
        raw = os.getxattr(path, STATS_XATTR)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the counters of the mount of {path}: {exc.strerror}"
        ) from None
    return Stats.from_dict(json.loads(raw))


def stats_rows(stats: Stats) -> list[dict[str, Any]]:
    """One row per histogram (FUSE requests, RPCs), then the plain counters."""
    rows: list[dict[str, Any]] = []
    for name, h in sorted(stats.latency.items()):
        rows.append(
            {
                "name": name,
                "count": h.count,
                "mean_ms": f"{h.total_s / h.count * 1e3:.3f}" if h.count else None,
                "p50_ms": f"<{h.quantile(0.5) * 1e3:g}",
                "p99_ms": f"<{h.quantile(0.99) * 1e3:g}",
                "total_s": f"{h.total_s:.3f}",
            }
        )
    rows += [{"name": name, "count": n} for name, n in sorted(stats.counts.items())]
    return rows


def register(
    cli: click.Group, on_prismfs: Callable[[Path], bool], table: Callable[..., None]
) -> None:
    @cli.group("mount")
    def mount_group() -> None:
        """Look at a running mount."""

    @mount_group.command("stats")
    @click.argument("mountpoint", type=click.Path(exists=True, path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--reset", is_flag=True, help="Print, then set every counter to zero.")
    def mount_stats(mountpoint: Path, as_json: bool, reset: bool) -> None:
        """FUSE requests answered and RPCs made by the mount of MOUNTPOINT since it
        started (or the last --reset): counts and latency. Errors answered to the
        kernel are counted as fuse.OP.ERRNO."""
        if not on_prismfs(mountpoint):
            raise ConfigError(f"{mountpoint} is not on a PrismFS mount")
        stats = read_mount_stats(mountpoint)
        if as_json:
            click.echo(json.dumps(stats.to_dict(), indent=2))
        else:
            table(stats_rows(stats), ["name", "count", "mean_ms", "p50_ms", "p99_ms", "total_s"])
        if reset:
            try:
                os.setxattr(mountpoint, STATS_XATTR, b"reset")
            except OSError as exc:
                raise ConfigError(f"cannot reset the counters: {exc.strerror}") from None
