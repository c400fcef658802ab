"""Reading TOML configuration files with errors a user can act on."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prismfs.errors import ConfigError, InvalidArgument


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
