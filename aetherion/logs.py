"""Logging: structlog to stderr, JSON lines off a terminal, readable on one."""

from __future__ import annotations

import logging
import re
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog and the standard library (uvicorn, alembic) to stderr in one format."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_redact)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    logging.getLogger("alembic.runtime.plugins").setLevel("WARNING")  # import-time chatter
    # hmmlearn warns on every restart that stops early; the fit's own checks judge convergence
    logging.getLogger("hmmlearn").setLevel("ERROR")


_SECRET = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


def _redact(record: logging.LogRecord) -> bool:
    """A WebSocket URL's ``token`` (the API key) never reaches a log line."""
    msg = record.getMessage() if record.args else record.msg
    if isinstance(msg, str) and "token=" in msg.lower():
        record.msg, record.args = _SECRET.sub(r"\1***", msg), ()
    return True


def _identity(
    logger: object, name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event
