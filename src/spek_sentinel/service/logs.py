"""The daemon's logs: one JSON object per line for journald and log shippers, readable on a TTY.

``configure_logging`` sets up structlog and routes the standard library's ``logging`` through
structlog's ``ProcessorFormatter``, so the ``logging.getLogger(__name__)`` calls every module
makes (with %-style arguments) come out in the same format as structlog's own loggers:

    {"timestamp": "2026-11-25T03:05:00.123456Z", "level": "warning",
     "logger": "spek_sentinel.service.watch", "event": "page via slack not delivered: ...",
     ...any bound or ``extra=`` key-values}

A logged exception adds its formatted traceback as ``exception``. On a TTY (or with
``json=False``) structlog's ``ConsoleRenderer`` writes aligned, coloured lines instead.

Every string in a line (the message, the traceback, bound values) goes through
``spek_sentinel.secrets.redact``: passwords in URLs/DSNs (``scheme://user:***@``) and
``password=`` keywords are masked, and so is any value passed in ``secrets`` (tokens and
webhook URLs the daemon read), wherever it appears.

Calling it again (SIGHUP reload) replaces the handler it installed earlier; handlers others
installed on the root logger (pytest's, uvicorn's) are left alone. Serve uvicorn with
``log_config=None`` so its loggers propagate here.

``httpx``, ``httpcore`` and ``apscheduler`` log at WARNING and above only: their INFO lines
repeat on every poll, and httpx's name full URLs, which for a Slack webhook are the secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from spek_sentinel.secrets import redact

LEVELS = ("debug", "info", "warning", "error", "critical")
QUIET_LOGGERS = ("httpx", "httpcore", "apscheduler")
_FIRST_KEYS = ("timestamp", "level", "logger", "event")


class _Handler(logging.StreamHandler[TextIO]):
    """The root handler this module installs, told apart from any other on reconfiguration."""


def configure_logging(
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Send every log line, structlog's and the standard library's, to ``stream``.

    ``level``: one of debug, info, warning, error, critical (any case). ``json``: None picks
    JSON lines unless ``stream`` is a TTY. ``stream``: default ``sys.stderr`` at call time.
    ``secrets``: exact values to mask wherever they appear in a line.
    """
    numeric = _level(level)
    out = sys.stderr if stream is None else stream
    tty = bool(getattr(out, "isatty", lambda: False)())
    as_json = (not tty) if json is None else json

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    foreign_pre_chain: list[Processor] = [  # records from logging.getLogger(...)
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]
    renderer: list[Processor]
    if as_json:
        renderer = [_first_keys, structlog.processors.JSONRenderer()]
    else:
        renderer = [
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # before redaction: tracebacks carry DSNs
            _Redactor(tuple(secrets)),
            *renderer,
        ],
    )

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # a reload must reach loggers made before it
    )

    handler = _Handler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _level(name: str) -> int:
    if name.lower() not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; one of {', '.join(LEVELS)}")
    return logging.getLevelNamesMapping()[name.upper()]


class _Redactor:
    """Mask passwords in URLs/DSNs, ``password=`` keywords and the given secrets in every
    string of the event (nested in dicts, lists and tuples too)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        return {key: self._clean(value) for key, value in event.items()}

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if isinstance(value, dict):
            return {key: self._clean(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._clean(item) for item in value)
        return value


def _first_keys(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """timestamp, level, logger and event first in each line, then the rest as bound."""
    ordered = {key: event.pop(key) for key in _FIRST_KEYS if key in event}
    ordered.update(event)
    return ordered
