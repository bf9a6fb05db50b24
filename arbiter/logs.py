"""Structured logging with structlog.

JSON lines when stderr is not a terminal (systemd, containers, CI), readable console
output when it is. Every line carries ``component`` (``daemon``, ``store``,
``poller``, ...) and, where relevant, ``workload`` and ``migration`` ids: bind them
with :func:`get_logger` and ``log.bind(workload=...)``.

Values of keys that look like secrets are replaced by ``***`` before rendering,
database URLs have their password masked, and the secret values of the configuration
(:func:`register_secrets`) are masked wherever they appear, so neither a careless
``log.info(..., url=url)`` nor an error quoting what a server echoed back can leak
credentials.

structlog is imported by :func:`configure` and :func:`get_logger`, not by this module:
the read-only commands mask secrets (through the configuration) but never log, and
they should not pay for structlog's import.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|credential)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def mask_secrets_in_text(text: str) -> str:
    """Mask the password part of any ``scheme://user:password@host`` URL in ``text``."""
    return _URL_PASSWORD.sub(r"\g<head>***", text)


_CONFIGURED_SECRETS: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Secret values from the configuration (passwords, tokens, API keys) that every log
    line masks wherever they appear, even inside a message a server echoed back."""
    _CONFIGURED_SECRETS.update(v for v in values if len(v) >= 6)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***`` (for messages
    that may quote what a server echoed back, such as a refused token)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return mask_secrets_in_text(text)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide secret-looking keys and passwords inside URLs."""
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key):
            event[key] = "***"
        elif isinstance(value, str) and _CONFIGURED_SECRETS:
            event[key] = mask_values(value, _CONFIGURED_SECRETS)
        elif isinstance(value, str) and "://" in value:
            event[key] = mask_secrets_in_text(value)
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the process. ``fmt`` is auto, json or console."""
    import structlog

    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (APScheduler, alembic) go to
    # the same stream at the same level.
    logging.basicConfig(stream=stream, level=max(_LEVELS[level], logging.WARNING), force=True)


def get_logger(component: str, **context: Any) -> Any:
    """A logger whose every line carries ``component`` and the given context."""
    import structlog

    return structlog.get_logger().bind(component=component, **context)
