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




def per_second(raw: str | None, *, name: str) -> float | None:
    """A rate in calls per second (``"50/s"`` -> 50.0), or None when off; bursts are refused."""
    limit = parse_rate_limit(raw, name=name)
    if limit is not None and limit.burst != 1:
        raise ConfigError(f"{name} takes no burst; got {raw!r}")
    return None if limit is None else limit.per_s
