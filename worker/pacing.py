"""A 429 is pacing, not a failure: how long to hold back, within a documented cap.

The API names its wait two ways, ``Retry-After`` (seconds or an HTTP date) and
``X-Rate-Limit-Retry`` (epoch seconds); the later of the two wins, and neither is trusted beyond
``VOUCHERIFY_RETRY_AFTER_MAX_S`` (default one hour, the Sandbox's window): a proxy or a bug
answering "come back tomorrow" must not park the backlog for a day. A 429 never uses up one of
an event's retries; it only delays the event.
"""

from __future__ import annotations

import random
import time
from typing import Any

DEFAULT_PAUSE_S = 5.0  # a 429 that names no time
JITTER_MAX_S = 1.0

_random = random.SystemRandom()


def _header(headers: Any, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def pause_after_429(retry_after_s: float | None, headers: Any, cap_s: float,
                    now_epoch_s: float | None = None, default_s: float = DEFAULT_PAUSE_S) -> float:
    """Seconds every worker should hold back after a 429: the later of ``Retry-After`` and
    ``X-Rate-Limit-Retry`` (epoch seconds), else ``default_s``, never more than ``cap_s``.
    The one reading of the two hints (the limiter's cool-down uses it too)."""
    now = time.time() if now_epoch_s is None else now_epoch_s
    waits = [retry_after_s] if retry_after_s is not None and retry_after_s > 0 else []
    raw = _header(headers, "X-Rate-Limit-Retry")
    try:
        if raw is not None:
            waits.append(float(raw) - now)
    except ValueError:
        pass
    pause = max(waits) if waits and max(waits) > 0 else default_s
    return min(pause, cap_s)


def comeback_delay(pause_s: float, rng: random.Random | None = None) -> float:
    """When a paced event comes back: after the pause, spread by up to a second (or a tenth
    of the pause when shorter) so a parked backlog does not return as one burst."""
    return pause_s + (rng or _random).uniform(0, min(JITTER_MAX_S, pause_s / 10 + 0.05))
