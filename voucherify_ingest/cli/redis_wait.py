"""A worker starting while Redis is unreachable: wait for it, one clear log line per attempt.

Celery alone would retry behind its banner (``Trying again in 30.00 seconds... (27/None)``),
saying neither which Redis nor why in a form a log search finds. A daemon must keep trying
(Redis may come up after the worker, e.g. in a compose file), so this waits as long as it takes,
logging ``redis_unreachable`` with the URL (password masked), the attempt and the next delay.

A Redis that answers but refuses the credentials is not late: retrying cannot help until
``REDIS_URL`` changes, so the worker logs ``redis_credentials_refused`` and exits 1 at once
(a supervisor's restart then repeats the same clear line, not an endless wait).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable

import redis

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.redis_conn import credentials_refused, describe_redis_failure, make_redis
from voucherify_ingest.settings import Settings

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0


def retry_delays(first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S):
    """1, 2, 4, ... seconds, capped at ``max_s``: quick when Redis is just late, calm after."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


def wait_for_redis(
    settings: Settings, log, *, sleep: Callable[[float], None] = time.sleep,
    delays=None,
) -> int:
    """Return once Redis answers PING; the number of failed attempts before that.

    Raises :class:`ConfigError` when Redis refuses the credentials."""
    delays = delays if delays is not None else retry_delays()
    attempt = 0
    while True:
        client = make_redis(settings, timeout_s=max(2.0, settings.redis_timeout_s))
        try:
            client.ping()
        except redis.RedisError as exc:
            if credentials_refused(exc):
                reason = describe_redis_failure(settings.redis_url, exc)
                log.error("redis_credentials_refused", redis=settings.safe_redis_url,
                          error=type(exc).__name__, detail=reason)
                raise ConfigError(reason) from None
            attempt += 1
            delay = next(delays)
            log.error(
                "redis_unreachable", redis=settings.safe_redis_url, attempt=attempt,
                error=type(exc).__name__, retry_in_s=delay,
                detail=f"{describe_redis_failure(settings.redis_url, exc)}; the worker keeps "
                       "retrying and starts once it answers",
            )
            sleep(delay)
            continue
        finally:
            client.close()
        if attempt:
            log.info("redis_reachable", redis=settings.safe_redis_url, attempts=attempt)
        return attempt


@contextlib.contextmanager
def stop_signals_exit(log):
    """While waiting (nothing started, nothing to finish), SIGTERM/SIGINT end the process at
    once with exit 0 and a ``worker_stopped`` line, as a stop of a running worker does."""

    def _exit(signum, _frame):
        log.info("worker_stopped", signal=signal.Signals(signum).name, phase="waiting for Redis")
        raise SystemExit(0)

    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _exit) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
