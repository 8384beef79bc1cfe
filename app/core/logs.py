"""Logging of every process (API, CLI, workers): text or JSON lines, each carrying the request id
and the run or evaluation it was logged for, taken from a context that requests and claims bind.
"""

import contextlib
import contextvars
import json
import logging
import logging.config
import re
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

# The fields a request or a claimed job binds; every record carries them (None when unbound).
CONTEXT_FIELDS = ("request_id", "run_id", "evaluation_id", "sweep_id")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "licchavi_log_context", default=None
)

# An id from a client or a proxy is kept when it is this plain (no spaces, quotes or control
# characters that would garble a log line, bounded in length); any other value is replaced.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def sane_request_id(value: str | None) -> str | None:
    """`value` when it may serve as a request id as it is, else None."""
    return value if value is not None and _SANE_REQUEST_ID.fullmatch(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current(field: str) -> Any:
    """The bound value of a context field (None when unbound)."""
    return (_context.get() or {}).get(field)


def current_request_id() -> str | None:
    value = current("request_id")
    return None if value is None else str(value)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind context fields for the block (nested binds add to the outer ones)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (on the handler, so every logger's records,
    third-party ones included, get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the bound context
    fields that are set, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The human format, with the request id (and run or evaluation) in brackets when bound."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: one stderr handler on the root logger, which
    uvicorn's loggers propagate to (so access lines carry the request id too)."""
    formatter = "json" if log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"()": TextFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["context"],
                "formatter": formatter,
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record of this process to stderr in `log_format` (text or json)."""
    logging.config.dictConfig(logging_config(level, log_format))
