"""Structured logging shared by the server, the worker and the CLI.

Every log line is a structlog event with fields. Records from the standard
library's logging (uvicorn, httpx, alembic) go through the same renderer, so
a process writes one format only.
"""

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
LOG_FORMATS = ("console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Libraries whose INFO records repeat every request; they log at WARNING and
# above unless the level is debug.
NOISY_LOGGERS = ("httpx", "httpcore")


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Route structlog and standard logging to stderr in one format.

    `format` is "console" (aligned, human-readable) or "json" (one object per
    line). Timestamps are ISO 8601 in UTC. Raises ValueError on an unknown
    format or level.
    """
    format = format.lower()
    level = level.lower()
    if format not in LOG_FORMATS:
        raise ValueError(f"log format {format!r} is invalid; use one of {', '.join(LOG_FORMATS)}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is invalid; use one of {', '.join(LOG_LEVELS)}")
    numeric_level = logging.getLevelName(level.upper())

    shared_processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared_processors.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # uvicorn installs its own handlers; hand its records to the root handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger whose events carry `logger=name`."""
    return structlog.stdlib.get_logger(name)
