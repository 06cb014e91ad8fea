"""The rate grammar, one place for every rate the project reads (the limiter, ``serve``).

``100/min``, ``2000/min``, ``25/s``, ``100/hour``, with an optional burst ``100/min,burst=10``
(or ``100/min:10``); ``off``, ``0`` or empty means no limit. The limiter's Redis key is here
too, because readers of the limiter's state (``stats``, metrics, the dashboard) need it without
importing the worker.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from voucherify_ingest.errors import ConfigError

ENV_NAME = "VOUCHERIFY_RATE_LIMIT"
OFF_VALUES = {"", "off", "0", "none", "false", "no"}
MAX_BURST = 100_000

_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_SPEC_RE = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-z]+)\s*"
    r"(?:(?:,\s*burst\s*=|:)\s*(?P<burst>\d+)\s*)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RateLimit:
    """``count`` calls per ``period_s``, at most ``burst`` back to back."""

    count: float
    period_s: float
    burst: int = 1

    @property
    def interval_s(self) -> float:
        """Emission interval: the pace between two slots."""
        return self.period_s / self.count

    @property
    def per_s(self) -> float:
        return self.count / self.period_s

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "hour"}.get(self.period_s, f"{self.period_s:g}s")
        text = f"{self.count:g}/{unit}"
        return text if self.burst == 1 else f"{text},burst={self.burst}"


def parse_rate_limit(raw: str | None, *, name: str = ENV_NAME) -> RateLimit | None:
    """``"100/min"`` -> ``RateLimit(100, 60)``; ``off``/``0``/empty -> None; else ConfigError.

    ``name`` is the setting the text came from, so the error names it.
    """
    text = (raw or "").strip()
    if text.lower() in OFF_VALUES:
        return None
    match = _SPEC_RE.match(text)
    unit = _UNITS.get(match["unit"].lower()) if match else None
    count = float(match["count"]) if match else 0.0
    burst = int(match["burst"]) if match and match["burst"] else 1
    if unit is None or count <= 0 or not 1 <= burst <= MAX_BURST:
        raise ConfigError(
            f"{name} must look like 100/min, 2000/min, 25/s or 100/hour, optionally with a "
            f"burst (100/min,burst=10 or 100/min:10), or off; got {raw!r}"
        )
    return RateLimit(count=count, period_s=unit, burst=burst)


def limiter_key(prefix: str, app_id: str, api_url: str) -> str:
    """``{prefix}:rl:{h}``: ``h`` hashes the app id and API base URL (never the token).

    The braces are a Redis Cluster hash tag, so the script's three keys share one slot.
    """
    base = api_url.strip().rstrip("/").lower()
    digest = hashlib.sha256(f"{app_id}\n{base}".encode()).hexdigest()[:16]
    return f"{prefix}:rl:{{{digest}}}"


def parse_share(raw: str | None, *, name: str) -> float:
    """``"20%"`` (or ``"0.2"``) -> 0.2; empty -> 0.0; a share must be below 100%."""
    text = (raw or "").strip()
    if not text:
        return 0.0
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a share below 100%, like 20% or 0.2; got {raw!r}")
    return value


RESERVE_ENV = "VOUCHERIFY_RATE_RESERVE"


def reserve_fraction(raw: str | None, limit: RateLimit | None) -> float:
    """The share of ``limit`` that ``VOUCHERIFY_RATE_RESERVE`` keeps for other clients:
    ``20%`` is 0.2; an absolute ``20/min`` is 20/min divided by the limit (0.2 of 100/min).
    Empty: 0. A reserve that leaves the fleet nothing is a ConfigError."""
    text = (raw or "").strip()
    if not text or text.lower() in OFF_VALUES:
        return 0.0
    if "/" not in text:
        return parse_share(text, name=RESERVE_ENV)
    reserve = parse_rate_limit(text, name=RESERVE_ENV)
    if reserve is None or limit is None:
        return 0.0
    fraction = reserve.per_s / limit.per_s
    if fraction >= 1.0:
        raise ConfigError(
            f"{RESERVE_ENV}={raw!r} is not below the rate limit ({limit}): it would leave the "
            "workers nothing"
        )
    return fraction


def per_second(raw: str | None, *, name: str) -> float | None:
    """A rate in calls per second (``"50/s"`` -> 50.0), or None when off; bursts are refused."""
    limit = parse_rate_limit(raw, name=name)
    if limit is not None and limit.burst != 1:
        raise ConfigError(f"{name} takes no burst; got {raw!r}")
    return None if limit is None else limit.per_s
