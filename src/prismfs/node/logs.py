"""Structured logs: one line per event, every line naming the node.

Text lines read ``TIME LEVEL node=ID logger: message``; with ``log.format =
"json"`` each line is a JSON object with the same fields (plus ``exc`` for a
traceback), for log shippers. Times are UTC with milliseconds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from prismfs.errors import ConfigError

_TEXT = "%(asctime)s %(levelname)-7s node=%(node_id)s %(name)s: %(message)s"


class _NodeIdFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _JsonFormatter(_UtcFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "node": getattr(record, "node_id", "-"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(
    node_id: str,
    level: str,
    file: str = "",
    fmt: str = "text",
    handler: logging.Handler | None = None,
) -> None:
    """Route the ``prismfs`` loggers to stderr, ``file`` or ``handler`` (a
    mount's syslog) for this process."""
    if handler is None:
        handler = _file_or_stderr(file)
    handler.addFilter(_NodeIdFilter(node_id))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _UtcFormatter(_TEXT))
    root = logging.getLogger("prismfs")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def _file_or_stderr(file: str) -> logging.Handler:
    if not file:
        return logging.StreamHandler(sys.stderr)
    try:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        return logging.FileHandler(file)
    except OSError as exc:
        raise ConfigError(f"cannot open log file {file}: {exc.strerror or exc}") from None
