"""One frozen settings object, read from the environment at the entry points.

Library code takes a ``Settings`` (or plain arguments) explicitly; only the CLI, the Celery app
factory and the producer's lazily built default call :meth:`Settings.from_env`. Every variable
is listed with its default in the README's configuration table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit, urlunsplit

from voucherify_ingest.errors import ConfigError

DEFAULT_API_URL = "https://api.voucherify.io"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _parse_number(name: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _parse_credentials(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        app_id, sep, token = item.partition(":")
        if not sep or not app_id or not token:
            raise ConfigError(f"{name} must be a comma-separated list of APP_ID:APP_TOKEN pairs")
        pairs.append((app_id, token))
    return tuple(pairs)


@dataclass(frozen=True)
class Settings:
    """Everything the producers, workers and CLI need; see the README for each variable."""

    # Voucherify API
    api_url: str = field(default=DEFAULT_API_URL, metadata={"env": "VOUCHERIFY_API_URL"})
    app_id: str = field(default="", metadata={"env": "VOUCHERIFY_APP_ID"})
    app_token: str = field(default="", repr=False, metadata={"env": "VOUCHERIFY_APP_TOKEN"})
    connect_timeout_s: float = field(
        default=3.05, metadata={"env": "VOUCHERIFY_CONNECT_TIMEOUT_S"}
    )
    read_timeout_s: float = field(default=10.0, metadata={"env": "VOUCHERIFY_READ_TIMEOUT_S"})

    # Redis and the queue
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False, metadata={"env": "REDIS_URL"})
    queue: str = field(default="voucherify-events", metadata={"env": "VOUCHERIFY_QUEUE"})
    key_prefix: str = field(default="vi", metadata={"env": "VOUCHERIFY_KEY_PREFIX"})
    redis_timeout_s: float = field(default=1.0, metadata={"env": "VOUCHERIFY_REDIS_TIMEOUT_S"})
    visibility_timeout_s: float = field(
        default=45.0, metadata={"env": "VOUCHERIFY_VISIBILITY_TIMEOUT_S"}
    )
    restore_interval_s: float = field(
        default=5.0, metadata={"env": "VOUCHERIFY_RESTORE_INTERVAL_S"}
    )

    # Retries
    max_retries: int = field(default=8, metadata={"env": "VOUCHERIFY_MAX_RETRIES"})
    backoff_base_s: float = field(default=1.0, metadata={"env": "VOUCHERIFY_BACKOFF_BASE_S"})
    backoff_max_s: float = field(default=300.0, metadata={"env": "VOUCHERIFY_BACKOFF_MAX_S"})

    # Rate limit shared by all workers (see voucherify_ingest/rates.py and worker/ratelimit.py); ""
    # or "off" disables it.
    rate_limit: str = field(default="100/min", metadata={"env": "VOUCHERIFY_RATE_LIMIT"})
    rate_limit_max_wait_s: float = field(
        default=5.0, metadata={"env": "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S"}
    )

    # Lanes and the rate reserve (docs/lanes-and-rate-limit.md): calls per window kept unspent
    # for other clients of the same project ("20%" or "20/min"; "" keeps none), and the least
    # share of the rate the bulk lane gets while live events want every slot ("" = strict).
    rate_reserve: str = field(default="", metadata={"env": "VOUCHERIFY_RATE_RESERVE"})
    lane_bulk_min_share: str = field(
        default="", metadata={"env": "VOUCHERIFY_LANE_BULK_MIN_SHARE"}
    )

    # Cycle quota (docs/lanes-and-rate-limit.md, voucherify_ingest/cycle.py): API calls per
    # billing cycle (0 = no cycle accounting), the UTC day of the month it resets, the most the
    # bulk lane may spend of it ("30%"; "" = no separate cap), the share never spent by the
    # fleet ("20%"), and fixed cycles of N seconds instead of months (tests, demos; 0 = monthly).
    cycle_quota: int = field(default=0, metadata={"env": "VOUCHERIFY_CYCLE_QUOTA"})
    cycle_reset_day: int = field(default=1, metadata={"env": "VOUCHERIFY_CYCLE_RESET_DAY"})
    cycle_bulk_share: str = field(default="", metadata={"env": "VOUCHERIFY_CYCLE_BULK_SHARE"})
    cycle_reserve: str = field(default="", metadata={"env": "VOUCHERIFY_CYCLE_RESERVE"})
    cycle_length_s: float = field(default=0.0, metadata={"env": "VOUCHERIFY_CYCLE_LENGTH_S"})

    # Producers
    max_payload_bytes: int = field(
        default=64 * 1024, metadata={"env": "VOUCHERIFY_MAX_PAYLOAD_BYTES"}
    )
    spool_dir: str = field(default="", metadata={"env": "VOUCHERIFY_SPOOL_DIR"})
    spool_max_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"env": "VOUCHERIFY_SPOOL_MAX_BYTES"}
    )

    # Dead letters and the delivery ledger
    ledger_ttl_s: int = field(default=7 * 24 * 3600, metadata={"env": "VOUCHERIFY_LEDGER_TTL_S"})
    dlq_max_age_s: int = field(default=0, metadata={"env": "VOUCHERIFY_DLQ_MAX_AGE_S"})
    dlq_max_len: int = field(default=0, metadata={"env": "VOUCHERIFY_DLQ_MAX_LEN"})

    # Worker process
    worker_pool: str = field(default="threads", metadata={"env": "VOUCHERIFY_WORKER_POOL"})
    worker_concurrency: int = field(
        default=16, metadata={"env": "VOUCHERIFY_WORKER_CONCURRENCY"}
    )

    # HTTP ingest endpoint (`voucherify-ingest serve`): APP_ID:APP_TOKEN pairs callers present.
    ingest_credentials: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "VOUCHERIFY_INGEST_CREDENTIALS"}
    )

    # Logging
    log_level: str = field(default="INFO", metadata={"env": "VOUCHERIFY_LOG_LEVEL"})
    log_format: str = field(default="auto", metadata={"env": "VOUCHERIFY_LOG_FORMAT"})
    log_pii: bool = field(default=False, metadata={"env": "VOUCHERIFY_LOG_PII"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None:
                continue
            if f.type in ("float", float):
                values[f.name] = float(_parse_number(name, raw, float))
            elif f.type in ("int", int):
                values[f.name] = int(_parse_number(name, raw, int))
            elif f.type in ("bool", bool):
                values[f.name] = _parse_bool(name, raw)
            elif f.name == "ingest_credentials":
                values[f.name] = _parse_credentials(name, raw)
            else:
                values[f.name] = raw.strip()
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes) -> Settings:
        return replace(self, **changes)

    @staticmethod
    def env_names() -> dict[str, str]:
        """Map of field name -> environment variable (for docs and `check`)."""
        return {f.name: f.metadata["env"] for f in fields(Settings)}

    def validate(self) -> None:
        """Check values that can be checked without I/O; raise :class:`ConfigError`."""
        api = urlsplit(self.api_url)
        if api.scheme not in ("http", "https") or not api.hostname:
            raise ConfigError(
                f"VOUCHERIFY_API_URL must be an http(s) URL such as {DEFAULT_API_URL}, "
                f"got {self.api_url!r}"
            )
        redis = urlsplit(self.redis_url)
        if redis.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "REDIS_URL must start with redis://, rediss:// or unix://, "
                f"got {redact_url(self.redis_url)!r}"
            )
        if not self.queue:
            raise ConfigError("VOUCHERIFY_QUEUE must not be empty")
        if self.worker_pool not in ("threads", "prefork", "solo", "gevent", "eventlet"):
            raise ConfigError(
                "VOUCHERIFY_WORKER_POOL must be one of threads, prefork, solo, gevent, eventlet"
            )
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("VOUCHERIFY_LOG_FORMAT must be auto, json or console")
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("VOUCHERIFY_BACKOFF_MAX_S must be >= VOUCHERIFY_BACKOFF_BASE_S")
        from voucherify_ingest.rates import parse_rate_limit, parse_share, reserve_fraction

        limit = parse_rate_limit(self.rate_limit)  # ConfigError naming VOUCHERIFY_RATE_LIMIT
        reserve_fraction(self.rate_reserve, limit)  # ConfigError naming VOUCHERIFY_RATE_RESERVE
        parse_share(self.lane_bulk_min_share, name="VOUCHERIFY_LANE_BULK_MIN_SHARE")
        from voucherify_ingest.cycle import check_settings

        check_settings(self)  # ConfigErrors naming VOUCHERIFY_CYCLE_*

    def require_credentials(self) -> None:
        """Raise :class:`ConfigError` naming each missing credential variable."""
        missing = [
            name
            for name, value in (
                ("VOUCHERIFY_APP_ID", self.app_id),
                ("VOUCHERIFY_APP_TOKEN", self.app_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"missing {' and '.join(missing)}: the worker needs Voucherify API credentials "
                "(Project Settings > General > Application Keys)"
            )

    @property
    def api_base(self) -> str:
        return self.api_url.rstrip("/")

    @property
    def events_url(self) -> str:
        return f"{self.api_base}/v1/events"

    @property
    def safe_redis_url(self) -> str:
        return redact_url(self.redis_url)

    @property
    def max_attempt_duration_s(self) -> float:
        """The longest one delivery attempt can hold an unacknowledged message."""
        return self.connect_timeout_s + self.read_timeout_s + self.rate_limit_max_wait_s

    def check_visibility_timeout(self) -> None:
        """The broker must not hand a message to a second worker while the first still works.

        Retries are parked in our own delayed set (the message is acked), so only one attempt
        plus the bounded rate-limit wait run while a message is unacknowledged: the backoff cap
        (``VOUCHERIFY_BACKOFF_MAX_S``) and a 429's ``Retry-After`` may be far longer than the
        visibility timeout, but ``VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S`` may not (a longer wait for
        a slot parks the event instead). The factor 2 covers a prefetched message that waits
        for a busy worker thread.
        """
        needed = 2 * self.max_attempt_duration_s + 5
        if self.visibility_timeout_s < needed:
            raise ConfigError(
                f"VOUCHERIFY_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s:g} is too short: "
                f"one attempt may hold a message for {self.max_attempt_duration_s:g}s "
                "(VOUCHERIFY_CONNECT_TIMEOUT_S + VOUCHERIFY_READ_TIMEOUT_S + "
                "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S), so it must be at least "
                f"{needed:g}s or a live worker's message would be handed out twice; lower "
                "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S or raise the visibility timeout "
                "(VOUCHERIFY_BACKOFF_MAX_S does not count: retries wait acked)"
            )
