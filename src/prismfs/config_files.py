"""Reading TOML configuration files with errors a user can act on, and where
they are looked for by default."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prismfs.errors import ConfigError, InvalidArgument

ETC_ENV = "PRISMFS_ETC"


def etc_dir() -> Path:
    """The machine's configuration directory: ``/etc/prismfs`` unless ``PRISMFS_ETC``."""
    return Path(os.environ.get(ETC_ENV) or "/etc/prismfs")


def user_config_dir() -> Path:
    """The user's configuration directory (XDG): ``~/.config/prismfs`` by default."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "prismfs"


def default_config_file(name: str) -> Path | None:
    """The first of ``user_config_dir()/name`` and ``etc_dir()/name`` that exists."""
    for directory in (user_config_dir(), etc_dir()):
        candidate = directory / name
        if candidate.exists():
            return candidate
    return None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path``; any failure is one `ConfigError` line naming ``what`` and the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def option_number(
    options: Mapping[str, str | None],
    key: str,
    default: float,
    low: float,
    high: float,
    *,
    integer: bool = False,
) -> float:
    """``options[key]`` (mount options, URL query parameters) as a number in
    ``[low, high]``, ``default`` if absent; `InvalidArgument` otherwise. With
    ``integer``, only whole numbers (parsed exactly, as `int`)."""
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidArgument(f"{key}={raw!r} is not {kind}") from None
    if not low <= value <= high:
        raise InvalidArgument(f"{key} must be between {low:g} and {high:g}")
    return value
