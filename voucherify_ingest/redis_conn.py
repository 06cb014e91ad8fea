"""Redis clients with bounded timeouts and errors that never show the password."""

from __future__ import annotations

import redis

from voucherify_ingest.errors import BrokerUnavailable
from voucherify_ingest.settings import Settings, redact_url


def make_redis(settings: Settings, *, timeout_s: float | None = None) -> redis.Redis:
    """A client that fails fast: a web request must not hang when Redis is down."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        client_name="voucherify-ingest",
    )


def broker_unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """Our own error for a Redis failure, naming the URL without its password."""
    detail = type(exc).__name__
    text = str(exc)
    if text and "@" not in text:
        detail = f"{detail}: {text}"
    return BrokerUnavailable(f"Redis at {redact_url(url)} did not answer ({detail})")
