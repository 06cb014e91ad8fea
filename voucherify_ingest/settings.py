"""One frozen settings object, read from the environment at the entry points.

Library code takes a ``Settings`` (or plain arguments) explicitly; only the CLI, the Celery app
factory and the producer's lazily built default call :meth:`Settings.from_env`. Every variable
is listed with its default in docs/workers-and-configuration.md (generated from the
fields below by tools/gen_docs.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit, urlunsplit

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.sentinel_url import sentinel_hosts

DEFAULT_API_URL = "https://api.voucherify.io"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    if ";" in url:  # Celery's failover form: sentinel://...;sentinel://...
        return ";".join(redact_url(part) for part in url.split(";"))
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


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


# -- Roles: each entry point validates only the settings it uses (issue 18, first hour) --------

#: The entry points' roles. ``worker`` (the default) parses and validates every setting;
#: ``producer`` (enqueue, enqueue_event, dlq, stats, metrics, spool) and ``serve`` leave the
#: worker's own settings unchecked, so a bad ``VOUCHERIFY_RATE_LIMIT`` stops workers, not the
#: web app that enqueues.
ROLES = ("worker", "producer", "serve")

#: Fields only a worker (or ``check --role worker``) reads. Outside the worker role a value of
#: one of these that does not parse is ignored (the default stays; nothing there uses it).
WORKER_ONLY_FIELDS = frozenset({
    "api_url", "connect_timeout_s", "read_timeout_s", "visibility_timeout_s",
    "restore_interval_s", "max_retries", "backoff_base_s", "backoff_max_s", "rate_limit",
    "rate_limit_max_wait_s", "worker_pool", "worker_concurrency", "ledger_ttl_s",
})

#: Celery pools a worker accepts. gevent and eventlet would need the process monkey-patched
#: before anything imports sockets (requests, redis-py, our limiter); nothing does that and no
#: test runs them, so they are refused instead of half working.
WORKER_POOLS = ("threads", "prefork", "solo")

#: VOUCHERIFY_LOG_LEVEL's values (any case); anything else was a traceback at start-up.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parse_user_passwords(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``user:password[,user:password...]``; a password may hold ``:`` (a user name may not)."""
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{name} must be a comma-separated list of user:password pairs")
        pairs.append((user, password))
    return tuple(pairs)


@dataclass(frozen=True)
class Settings:
    """Everything the producers, workers and CLI need; docs/workers-and-configuration.md
    describes each variable."""

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

    # Operator dashboard (`voucherify-ingest dashboard`): user:password pairs for HTTP Basic.
    dashboard_credentials: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "VOUCHERIFY_DASHBOARD_CREDENTIALS"}
    )

    # Redis Sentinel, replica acknowledgement and OAuth (docs/redis-failover-and-oauth.md)
    redis_sentinel_master: str = field(
        default="", metadata={"env": "VOUCHERIFY_REDIS_SENTINEL_MASTER"}
    )
    redis_sentinel_password: str = field(
        default="", repr=False, metadata={"env": "VOUCHERIFY_REDIS_SENTINEL_PASSWORD"}
    )
    redis_wait_replicas: int = field(default=0, metadata={"env": "VOUCHERIFY_REDIS_WAIT_REPLICAS"})
    redis_wait_timeout_ms: int = field(
        default=500, metadata={"env": "VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS"}
    )
    auth: str = field(default="pair", metadata={"env": "VOUCHERIFY_AUTH"})
    oauth_scope: str = field(default="events", metadata={"env": "VOUCHERIFY_OAUTH_SCOPE"})
    oauth_refresh_ahead_s: float = field(
        default=60.0, metadata={"env": "VOUCHERIFY_OAUTH_REFRESH_AHEAD_S"}
    )

    # Failure handling (docs/failure-handling.md): 429 pacing and the fleet-wide auth pause.
    # A 429's Retry-After / X-Rate-Limit-Retry is trusted up to this many seconds.
    retry_after_max_s: float = field(
        default=3600.0, metadata={"env": "VOUCHERIFY_RETRY_AFTER_MAX_S"}
    )
    # After a 401/403 every worker pauses; events are dead-lettered as `auth` only once the
    # API has refused the credentials for this long without a break.
    auth_dead_letter_after_s: float = field(
        default=3600.0, metadata={"env": "VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S"}
    )
    # While paused, one worker at a time probes the API this often.
    auth_probe_interval_s: float = field(
        default=30.0, metadata={"env": "VOUCHERIFY_AUTH_PROBE_INTERVAL_S"}
    )

    # In-doubt deliveries (docs/reliability.md): a send whose outcome nobody recorded.
    # hold | verify | resend; "" = verify when a marker key is set, else hold.
    in_doubt: str = field(default="", metadata={"env": "VOUCHERIFY_IN_DOUBT"})
    in_doubt_events: str = field(default="", metadata={"env": "VOUCHERIFY_IN_DOUBT_EVENTS"})
    event_id_metadata_key: str = field(
        default="", metadata={"env": "VOUCHERIFY_EVENT_ID_METADATA_KEY"}
    )
    in_doubt_grace_s: float = field(default=60.0, metadata={"env": "VOUCHERIFY_IN_DOUBT_GRACE_S"})
    in_doubt_window_s: float = field(
        default=300.0, metadata={"env": "VOUCHERIFY_IN_DOUBT_WINDOW_S"}
    )
    in_doubt_lookup_retries: int = field(
        default=5, metadata={"env": "VOUCHERIFY_IN_DOUBT_LOOKUP_RETRIES"}
    )

    # Logging
    log_level: str = field(default="INFO", metadata={"env": "VOUCHERIFY_LOG_LEVEL"})
    log_format: str = field(default="auto", metadata={"env": "VOUCHERIFY_LOG_FORMAT"})
    log_pii: bool = field(default=False, metadata={"env": "VOUCHERIFY_LOG_PII"})

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, role: str = "worker", **overrides
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win.

        ``role`` (one of :data:`ROLES`) says which entry point asks: outside ``worker``, the
        worker's own settings (:data:`WORKER_ONLY_FIELDS`) are neither required to parse nor
        validated."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None:
                continue
            try:
                values[f.name] = cls._parse_field(f, raw)
            except ConfigError:
                if role == "worker" or f.name not in WORKER_ONLY_FIELDS:
                    raise
        values.update(overrides)
        settings = cls(**values)
        settings.validate(role=role)
        return settings

    @staticmethod
    def _parse_field(f, raw: str) -> object:
        name = f.metadata["env"]
        if f.type in ("float", float):
            return float(_parse_number(name, raw, float))
        if f.type in ("int", int):
            return int(_parse_number(name, raw, int))
        if f.type in ("bool", bool):
            return _parse_bool(name, raw)
        if f.name == "ingest_credentials":
            return _parse_credentials(name, raw)
        if f.name == "dashboard_credentials":
            return _parse_user_passwords(name, raw)
        return raw.strip()

    def replace(self, **changes) -> Settings:
        return replace(self, **changes)

    @staticmethod
    def env_names() -> dict[str, str]:
        """Map of field name -> environment variable (for docs and `check`)."""
        return {f.name: f.metadata["env"] for f in fields(Settings)}

    def validate(self, role: str = "worker") -> None:
        """Check values that can be checked without I/O; raise :class:`ConfigError`.

        Outside the ``worker`` role the worker's own settings are not checked (see
        :data:`WORKER_ONLY_FIELDS`)."""
        redis = urlsplit(self.redis_url)
        if redis.scheme not in ("redis", "rediss", "unix", "sentinel"):
            raise ConfigError(
                "REDIS_URL must start with redis://, rediss://, unix:// or sentinel://, "
                f"got {redact_url(self.redis_url)!r}"
            )
        self._validate_sentinel_and_auth()
        if not self.queue:
            raise ConfigError("VOUCHERIFY_QUEUE must not be empty")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("VOUCHERIFY_LOG_FORMAT must be auto, json or console")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"VOUCHERIFY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                f"got {self.log_level!r}"
            )
        if role == "worker":
            self.validate_worker()

    def validate_worker(self) -> None:
        """The checks of the settings only a worker uses."""
        api = urlsplit(self.api_url)
        if api.scheme not in ("http", "https") or not api.hostname:
            raise ConfigError(
                f"VOUCHERIFY_API_URL must be an http(s) URL such as {DEFAULT_API_URL}, "
                f"got {self.api_url!r}"
            )
        if self.worker_pool in ("gevent", "eventlet"):
            raise ConfigError(
                f"VOUCHERIFY_WORKER_POOL={self.worker_pool} is not supported: the worker is "
                "not monkey-patched for it (its HTTP and Redis clients would block the whole "
                "process); use threads (the default, for I/O-bound deliveries), prefork or solo"
            )
        if self.worker_pool not in WORKER_POOLS:
            raise ConfigError(
                f"VOUCHERIFY_WORKER_POOL must be one of {', '.join(WORKER_POOLS)}, "
                f"got {self.worker_pool!r}"
            )
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("VOUCHERIFY_BACKOFF_MAX_S must be >= VOUCHERIFY_BACKOFF_BASE_S")
        for name, value in (
            ("VOUCHERIFY_RETRY_AFTER_MAX_S", self.retry_after_max_s),
            ("VOUCHERIFY_AUTH_PROBE_INTERVAL_S", self.auth_probe_interval_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {value!r}")
        from voucherify_ingest.indoubt import check_in_doubt_settings

        check_in_doubt_settings(self)  # ConfigError naming the VOUCHERIFY_IN_DOUBT* variable
        from voucherify_ingest.rates import parse_rate_limit, parse_share, reserve_fraction

        limit = parse_rate_limit(self.rate_limit)  # ConfigError naming VOUCHERIFY_RATE_LIMIT
        reserve_fraction(self.rate_reserve, limit)  # ConfigError naming VOUCHERIFY_RATE_RESERVE
        parse_share(self.lane_bulk_min_share, name="VOUCHERIFY_LANE_BULK_MIN_SHARE")
        from voucherify_ingest.cycle import check_settings

        check_settings(self)  # ConfigErrors naming VOUCHERIFY_CYCLE_*

    @property
    def api_in_clear(self) -> bool:
        """The API URL is http:// to a host other than this machine: the token travels in clear
        over the network."""
        parts = urlsplit(self.api_url)
        return parts.scheme == "http" and not _is_loopback(parts.hostname or "")

    def _validate_sentinel_and_auth(self) -> None:
        if self.uses_sentinel:
            sentinel_hosts(self.redis_url)  # ConfigError naming REDIS_URL
            if not self.redis_sentinel_master:
                raise ConfigError(
                    "VOUCHERIFY_REDIS_SENTINEL_MASTER must name the master (sentinel monitor "
                    "<name>) when REDIS_URL is sentinel://"
                )
        if self.redis_wait_replicas and not 1 <= self.redis_wait_timeout_ms <= 60_000:
            raise ConfigError(
                "VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS must be 1..60000 when "
                "VOUCHERIFY_REDIS_WAIT_REPLICAS is set (0 would make WAIT block forever)"
            )
        if self.auth not in ("pair", "oauth"):
            raise ConfigError(f"VOUCHERIFY_AUTH must be pair or oauth, got {self.auth!r}")
        scopes = self.oauth_scope.split(" ")
        if self.auth == "oauth" and (not self.oauth_scope or "," in self.oauth_scope
                                     or not all(scopes)):
            raise ConfigError(
                "VOUCHERIFY_OAUTH_SCOPE must be scopes separated by single spaces, such as "
                f"'events' or 'events customers', got {self.oauth_scope!r}"
            )

    @property
    def uses_sentinel(self) -> bool:
        return self.redis_url.startswith("sentinel://")

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
