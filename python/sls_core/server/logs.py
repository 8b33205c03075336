"""Structured logs: one JSON object per line on stderr.

The server logs what happened (method, caller role, status code, duration, counts, paths),
never what was typed: no username in an access line, no token, response, code, PIN,
passcode or secret anywhere. Fields go in ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

__all__ = ["JsonFormatter", "setup_logging"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it was raised; exception text from the domain never holds a
            # secret, but a traceback is for the operator, so it goes in its own field.
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the ``sls_core`` loggers (idempotent)."""
    logger = logging.getLogger("sls_core")
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, "_sls_json", False):
            handler.setLevel(level)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._sls_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False  # one line per record, whatever the root logger does
