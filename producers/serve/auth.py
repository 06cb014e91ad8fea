"""Who may enqueue: ingest credentials, compared in constant time, and a per-caller rate limit.

Callers present ``X-App-Id`` + ``X-App-Token`` (what every Voucherify SDK sends) or
``Authorization: Bearer <token>``. These are the service's own credentials
(``VOUCHERIFY_INGEST_CREDENTIALS``), never forwarded: workers reach Voucherify with theirs.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Iterable

from voucherify_ingest.errors import ConfigError  # noqa: F401 - raised by parse_rate
from voucherify_ingest.rates import per_second

_CREDENTIALS_ENV = "VOUCHERIFY_INGEST_CREDENTIALS"

#: Ingest tokens shorter than this draw a warning at start-up (and from ``check --role serve``):
#: a short token can be guessed; ``openssl rand -hex 24`` gives 48 characters.
MIN_TOKEN_CHARS = 16


def short_token_warnings(credentials: Iterable[tuple[str, str]]) -> list[str]:
    """One warning per caller whose token is short (the token itself is never shown)."""
    return [
        f"{_CREDENTIALS_ENV}: the token of {app_id!r} is {len(token)} characters, under "
        f"{MIN_TOKEN_CHARS}: it could be guessed; use e.g. $(openssl rand -hex 24)"
        for app_id, token in credentials
        if len(token) < MIN_TOKEN_CHARS
    ]


class Authenticator:
    """Match presented credentials against every configured pair, in constant time.

    Every pair is compared (no early exit) with :func:`hmac.compare_digest`, so the time taken
    says nothing about which part of which pair was close.
    """

    def __init__(self, credentials: Iterable[tuple[str, str]]):
        self._pairs = [(i.encode("utf-8"), t.encode("utf-8")) for i, t in credentials]
        if not self._pairs:
            raise ConfigError(
                f"{_CREDENTIALS_ENV} is not set: the ingest endpoint needs at least one "
                "APP_ID:APP_TOKEN pair for its callers (e.g. "
                f"{_CREDENTIALS_ENV}=web-shop:$(openssl rand -hex 24))"
            )

    def identify(
        self, app_id: bytes | None, app_token: bytes | None, authorization: bytes | None
    ) -> str | None:
        """The app id the caller proved, or ``None``."""
        if app_id is not None and app_token is not None:
            found = None
            for pair_id, pair_token in self._pairs:
                same_id = hmac.compare_digest(app_id, pair_id)
                same_token = hmac.compare_digest(app_token, pair_token)
                if same_id & same_token:
                    found = pair_id
            return found.decode("utf-8") if found is not None else None
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not token:
                return None
            token = token.strip()
            found = None
            for pair_id, pair_token in self._pairs:
                if hmac.compare_digest(token, pair_token):
                    found = pair_id
            return found.decode("utf-8") if found is not None else None
        return None


def parse_rate(spec: str) -> float | None:
    """``"50/s"``, ``"600/min"``, ``"10000/hour"`` -> requests per second; ``"off"`` -> None.

    The grammar is the project's one rate grammar (``voucherify_ingest.rates``)."""
    return per_second(spec, name="rate limit")


class CallerRateLimit:
    """A token bucket per app id, in this process (``--workers N`` allows up to N times it).

    The bucket holds one second of requests (at least one), so a steady caller at the limit
    is never refused and a burst is cut after a second's worth.
    """

    def __init__(self, per_second: float, *, clock=time.monotonic):
        self.rate = per_second
        self.burst = max(1.0, per_second)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait_s(self, caller: str) -> float:
        """0 when the request may go ahead (a token is taken), else seconds until one is free."""
        now = self._clock()
        tokens, last = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[caller] = (tokens - 1.0, now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> int:
        return max(1, math.ceil(wait_s))
