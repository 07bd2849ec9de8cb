"""structlog set-up: JSON lines when stdout is not a TTY (journald), readable output on a TTY.

Libraries' own log records (the standard ``logging`` module: aiohttp, asyncio, PyMongo) go through the same
renderer, so a daemon's log is one format. A request aiohttp cannot parse (a bad request line or header) is logged
as one ``http_bad_request`` line naming the error class and status only: aiohttp's own record carries a traceback
and the raw bytes of the request line or header, which may hold a webhook path token or an API token.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError


class _BadRequestLine(logging.Filter):
    """Rewrites aiohttp's record of an unparsable request into one line without the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "http_bad_request"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.error = type(exc).__name__
            record.status = exc.code
        return True


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a redirected stream)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _extra(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The fields :class:`_BadRequestLine` set on a standard record, as event fields."""
    record = event.get("_record")
    for key in ("error", "status"):
        if record is not None and hasattr(record, key):
            event[key] = getattr(record, key)
    return event


def _json_value(value: Any) -> Any:
    """A value JSON cannot hold, as a log line gives it: a time in ISO 8601 (as the line's own timestamp), a set
    or tuple as a list, an enum, an ObjectId or anything else as its text (never a Python repr of a datetime)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str | int | float) else str(value)
    return str(value)


#: The root handler configure_logging installed (at most one).
_installed: list[logging.Handler] = []


#: syslog priorities of our levels: journald reads a line's ``<N>`` prefix (sd-daemon(3)).
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _with_priority(renderer: Any) -> Any:
    """``renderer`` with the line's syslog priority in front (``<3>{...}`` for an error): under journald every line
    was stored at the stream's default priority, info, so ``journalctl -p warning`` showed none of the errors."""

    def render(logger: Any, name: str, event_dict: Any) -> str:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")).lower(), 6)
        return f"<{priority}>{renderer(logger, name, event_dict)}"

    return render


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(default=_json_value)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    if use_json and os.environ.get("JOURNAL_STREAM"):  # under systemd: each line says its priority to journald
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler.addFilter(_BadRequestLine())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _extra,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _installed:  # configured again (a CLI run in a test, a new level): the new handler replaces ours
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
