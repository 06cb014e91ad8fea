"""Exponential backoff with full jitter."""

from __future__ import annotations

import random

from worker.backoff import backoff_delay


def test_delays_grow_exponentially_and_stay_under_the_cap():
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 60), (100, 60)]:
        delays = [backoff_delay(attempt, base_s=1, cap_s=60, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # full range is used: real jitter


def test_full_jitter_spreads_a_burst():
    rng = random.Random(7)
    delays = sorted(backoff_delay(5, base_s=1, cap_s=300, rng=rng) for _ in range(1000))
    # uniform over [0, 16]: each quarter holds roughly a quarter of the burst
    quarters = [sum(1 for d in delays if q * 4 <= d < (q + 1) * 4) for q in range(4)]
    assert all(200 < n < 300 for n in quarters), quarters


def test_retry_after_wins_when_larger():
    rng = random.Random(3)
    assert backoff_delay(1, base_s=1, cap_s=60, retry_after_s=7, rng=rng) == 7
    assert backoff_delay(8, base_s=100, cap_s=100, retry_after_s=0.001, rng=random.Random(0)) > 1
