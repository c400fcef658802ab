"""Structured logs: one line per event, every line naming the node.

Text lines read ``TIME LEVEL node=ID logger: message``; with ``log.format =
"json"`` each line is a JSON object with the same fields (plus ``exc`` for a
traceback), for log shippers. Times are UTC with milliseconds.

Where lines go: to ``log.file`` if set, reopened when logrotate (or anyone)
has moved or removed it (`WatchedFileHandler` checks before each line, so no
signal is needed); else to stderr. Under systemd, whose journal holds stderr,
text lines carry a ``<N>`` syslog priority prefix instead of the time stamp
(journald stores the level and adds its own time).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

from prismfs.errors import ConfigError
from prismfs.node.systemd import journald_stderr

_TEXT = "%(asctime)s %(levelname)-7s node=%(node_id)s %(name)s: %(message)s"
_JOURNAL_TEXT = "%(levelname)s node=%(node_id)s %(name)s: %(message)s"
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


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


class _JournalFormatter(logging.Formatter):
    """``<N>`` (the syslog priority journald reads) before each line of a record:
    a traceback's lines keep the record's level."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def setup_logging(
    node_id: str,
    level: str,
    file: str = "",
    fmt: str = "text",
    handler: logging.Handler | None = None,
) -> None:
    """Route the ``prismfs`` loggers to stderr, ``file`` or ``handler`` (a
    mount's syslog) for this process."""
    journal = handler is None and not file and journald_stderr()
    if handler is None:
        handler = _file_or_stderr(file)
    handler.addFilter(_NodeIdFilter(node_id))
    formatter: logging.Formatter = _JsonFormatter() if fmt == "json" else _UtcFormatter(_TEXT)
    if journal:
        formatter = _JournalFormatter(
            _JsonFormatter() if fmt == "json" else logging.Formatter(_JOURNAL_TEXT)
        )
    handler.setFormatter(formatter)
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
        return logging.handlers.WatchedFileHandler(file)
    except OSError as exc:
        raise ConfigError(f"cannot open log file {file}: {exc.strerror or exc}") from None
