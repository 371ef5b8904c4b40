"""Log lines for operators: JSON (FT_LOG_FORMAT=json) or readable text, one format for every
logger of a process (ours, uvicorn's, Celery's).

A record's `ft` extra (a dict) becomes fields of its JSON object, or `key=value` pairs after
the text message; the current request id (core/request_context.py) is added to every line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from core.request_context import request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_PLAIN = re.compile(r"[\w.:/{}@+=-]*")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "ft", None) or {})
    current = request_id.get()
    if current is not None:
        fields.setdefault("request_id", current)
    return fields


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER message key=value ...`"""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = " ".join(f"{key}={_quoted(value)}" for key, value in _fields(record).items() if value is not None)
        return f"{text} {pairs}" if pairs else text


def _quoted(value: object) -> str:
    """A value as it is when plain, else JSON-quoted: a client's text (a file id with spaces or a
    newline) can neither split a pair nor forge a line."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def logging_config(log_format: str, level: str, request_log: bool) -> dict[str, Any]:
    """dictConfig for the API (uvicorn applies it in every worker process): everything to stderr
    in one format; `ft.request` (one line per request) on or off by itself, whatever the level."""
    factory = "core.logs.JsonFormatter" if log_format == "json" else "core.logs.TextFormatter"
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ft": {"()": factory}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ft", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # Replaced by ft.request, which knows the route, the file id and the request id.
            "uvicorn.access": {"handlers": [], "propagate": False},
            "ft.request": {"level": "INFO" if request_log else "CRITICAL"},
        },
    }
