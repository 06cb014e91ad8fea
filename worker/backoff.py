"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): the delay is uniform in ``[0, min(cap, base * 2**attempt)]``, so a burst of failures
does not come back as a burst. A server's ``Retry-After`` wins when it asks for longer."""

from __future__ import annotations

import random

_random = random.SystemRandom()


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    exp = min(cap_s, base_s * (2 ** max(0, min(attempt - 1, 62))))
    delay = (rng or _random).uniform(0, exp)
    if retry_after_s is not None and retry_after_s > delay:
        return float(retry_after_s)
    return delay
