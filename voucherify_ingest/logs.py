"""Logging, configured once at the entry point.

JSON lines on stdout when it is not a TTY (for log shippers), readable console output on a
TTY. Celery's and kombu's stdlib records go through the same renderer. A last processor masks
the app token and the Redis password wherever they might appear, as a belt to the braces of
never logging them in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog

from voucherify_ingest.settings import Settings

MASK = "***"
_configured_secrets: tuple[str, ...] = ()


def _secrets_of(settings: Settings) -> tuple[str, ...]:
    from urllib.parse import unquote, urlsplit

    found = [settings.app_token, settings.redis_sentinel_password]
    for part in settings.redis_url.split(";"):  # sentinel://...;sentinel://... has several
        try:
            password = urlsplit(part.strip()).password
        except ValueError:
            password = None
        if password:
            found += [password, unquote(password)]
    found += [token for _, token in settings.ingest_credentials]
    found += [password for _, password in settings.dashboard_credentials]
    # Very short secrets would mask innocent text; they are not worth hiding from logs anyway.
    return tuple(sorted({s for s in found if s and len(s) >= 4}, key=len, reverse=True))


def mask_secrets(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in _configured_secrets if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _mask_processor(_logger, _name, event_dict):
    if not _configured_secrets:
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_secrets(value)
        elif value is not None and not isinstance(value, (int, float, bool)):
            text = str(value)
            masked = mask_secrets(text)
            if masked != text:
                event_dict[key] = masked
    return event_dict


def configure_logging(settings: Settings, *, stream=None) -> None:
    """Set up structlog and route stdlib logging (Celery, kombu) through it."""
    global _configured_secrets
    _configured_secrets = _secrets_of(settings)
    stream = stream or sys.stdout
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Celery's "Task ... received/succeeded" lines repeat our one line per delivery attempt
    # (and cost CPU per message); its warnings and errors still come through.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
