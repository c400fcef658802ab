"""Reading TOML configuration files with errors a user can act on."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from prismfs.errors import ConfigError


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
