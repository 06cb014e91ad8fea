"""Redis clients with bounded timeouts and errors that never show the password.

``REDIS_URL`` is either one server (``redis://``, ``rediss://``, ``unix://``) or Celery's
Sentinel form ``sentinel://[:password@]host:port[/db];sentinel://host:port;...``: then every
client here is a ``master_for(VOUCHERIFY_REDIS_SENTINEL_MASTER)`` client, which asks the
sentinels for the master on each new connection and drops a connection whose server turned
into a replica (redis-py turns its ``READONLY`` reply into a ``ConnectionError``), so each part
follows the master through a failover by itself. The URL's password is the Redis servers'
(as kombu reads it); ``VOUCHERIFY_REDIS_SENTINEL_PASSWORD`` is the sentinels' own.

``VOUCHERIFY_REDIS_WAIT_REPLICAS=N`` makes every ``LPUSH`` of these clients wait (``WAIT N
timeout``) until N replicas have it; fewer raises :class:`ReplicasNotConfirmed`, a
``redis.ConnectionError``, so callers treat it like a Redis that did not answer.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel

from voucherify_ingest.errors import BrokerUnavailable
from voucherify_ingest.sentinel_url import sentinel_hosts, sentinel_master_options
from voucherify_ingest.settings import Settings, redact_url

__all__ = [
    "ConfirmingRedis",
    "ReplicasNotConfirmed",
    "broker_unavailable",
    "check_replicas",
    "credentials_refused",
    "describe_redis_failure",
    "make_redis",
    "read_timeout_s",
    "sentinel_hosts",
    "sentinel_kwargs",
    "sentinel_master_options",
]


class ReplicasNotConfirmed(redis.ConnectionError):
    """The master took the write but fewer than N replicas confirmed it in time.

    The write may still be on the master (and reach the replicas later), or vanish if the
    master dies now: the caller must not report success; re-sending it may duplicate it.
    """


class ConfirmingRedis(redis.Redis):
    """A client whose ``lpush`` returns only once ``wait_replicas`` replicas have the write."""

    wait_replicas = 0
    wait_timeout_ms = 500

    def lpush(self, name: Any, *values: Any) -> Any:
        if self.wait_replicas <= 0:
            return super().lpush(name, *values)
        with self.pipeline(transaction=False) as pipe:
            pipe.lpush(name, *values)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            length, acked = pipe.execute()
        check_replicas(acked, self.wait_replicas, self.wait_timeout_ms)
        return length


    def close(self) -> None:
        """Close the sentinels' connections too (a Sentinel client holds one per sentinel)."""
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()


def check_replicas(acked: int, wanted: int, timeout_ms: int) -> None:
    if int(acked) < wanted:
        raise ReplicasNotConfirmed(
            f"only {int(acked)} of {wanted} replicas confirmed the write within {timeout_ms} ms"
        )


def read_timeout_s(settings: Settings, timeout_s: float) -> float:
    """A reply may take the WAIT's own bound on top of the usual timeout."""
    if settings.redis_wait_replicas > 0:
        return timeout_s + settings.redis_wait_timeout_ms / 1000
    return timeout_s


def sentinel_kwargs(settings: Settings, timeout: float) -> dict[str, Any]:
    """Options for the connections to the sentinels themselves (bounded, with their password)."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    return options


def make_redis(settings: Settings, *, timeout_s: float | None = None) -> redis.Redis:
    """A client that fails fast: a web request must not hang when Redis is down."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    options: dict[str, Any] = {
        "socket_timeout": read_timeout_s(settings, timeout),
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "client_name": "voucherify-ingest",
    }
    if settings.uses_sentinel:
        sentinel = redis.sentinel.Sentinel(
            sentinel_hosts(settings.redis_url),
            sentinel_kwargs=sentinel_kwargs(settings, timeout),
            **options,
            **sentinel_master_options(settings.redis_url),
        )
        client = sentinel.master_for(settings.redis_sentinel_master, redis_class=ConfirmingRedis)
    else:
        client = ConfirmingRedis.from_url(settings.redis_url, **options)
    client.wait_replicas = settings.redis_wait_replicas
    client.wait_timeout_ms = settings.redis_wait_timeout_ms
    return client


def credentials_refused(exc: BaseException) -> bool:
    """Redis answered, and refused who we are (``WRONGPASS``, ``NOAUTH``, a bad ``AUTH``):
    retrying does not help until ``REDIS_URL`` changes."""
    return isinstance(exc, (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError))


def describe_redis_failure(url: str, exc: BaseException) -> str:
    """One sentence for a Redis failure, naming the URL without its password: "refused the
    credentials" when Redis answered no to them, "still loading" when it is restarting, else
    "did not answer"."""
    detail = type(exc).__name__
    text = str(exc)
    if text and "@" not in text:
        detail = f"{detail}: {text}"
    if credentials_refused(exc):
        return (f"Redis at {redact_url(url)} refused the credentials in REDIS_URL ({detail}); "
                "check the password (and user) in REDIS_URL")
    if isinstance(exc, redis.BusyLoadingError):
        return (f"Redis at {redact_url(url)} is still loading its data after a restart "
                f"({detail}); it accepts commands once loaded")
    return f"Redis at {redact_url(url)} did not answer ({detail})"


def broker_unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """Our own error for a Redis failure, naming the URL without its password."""
    return BrokerUnavailable(describe_redis_failure(url, exc))
