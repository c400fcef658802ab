"""File layouts: chunk size and (k, m) erasure-coding geometry.

Written ``k=4,m=6,chunk=4M`` (sizes take K, M, G suffixes, powers of 1024).
A directory may carry one in its ``prismfs.layout`` extended attribute; a new
file takes the nearest one up its directory chain, else the cluster default
(k=2, m=3, chunk=4M unless the root says otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prismfs.errors import InvalidArgument

LAYOUT_XATTR = b"prismfs.layout"
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024 * 1024
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass(frozen=True)
class Layout:
    k: int = 2
    m: int = 3
    chunk_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.m <= 16:
            raise InvalidArgument(f"layout needs 1 <= k <= m <= 16, got k={self.k} m={self.m}")
        if not MIN_CHUNK <= self.chunk_size <= MAX_CHUNK:
            raise InvalidArgument(
                f"chunk size {self.chunk_size} is outside {MIN_CHUNK}..{MAX_CHUNK} bytes"
            )

    def __str__(self) -> str:
        size = self.chunk_size
        for unit in ("G", "M", "K"):
            if size % _UNITS[unit] == 0:
                return f"k={self.k},m={self.m},chunk={size // _UNITS[unit]}{unit}"
        return f"k={self.k},m={self.m},chunk={size}"

    @classmethod
    def parse(cls, text: str | bytes) -> Layout:
        if isinstance(text, bytes):
            try:
                text = text.decode()
            except UnicodeDecodeError:
                raise InvalidArgument("a layout is ASCII text like k=2,m=3,chunk=4M") from None
        values: dict[str, int] = {}
        for part in text.replace(" ", "").split(","):
            match = re.fullmatch(r"(k|m|chunk)=(\d{1,12})([KMG]?)", part, flags=re.IGNORECASE)
            if match is None:
                raise InvalidArgument(f"bad layout item {part!r} (expected k=, m=, chunk=)")
            key, number, unit = match.group(1).lower(), int(match.group(2)), match.group(3).upper()
            if key in values:
                raise InvalidArgument(f"{key} given twice in layout {text!r}")
            if unit and key != "chunk":
                raise InvalidArgument(f"{key} takes no unit")
            values[key] = number * _UNITS[unit]
        defaults = cls()
        return cls(
            values.get("k", defaults.k),
            values.get("m", defaults.m),
            values.get("chunk", defaults.chunk_size),
        )
