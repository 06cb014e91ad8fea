"""The billing cycle's arithmetic: when it starts and ends, the allowances, and the plan
``enqueue --file`` prints (a Business plan: 100,000 calls, 30% bulk, 20% reserve)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from voucherify_ingest.cycle import CycleQuota, plan_lines
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings


def _at(*parts) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


def test_monthly_cycles_start_on_the_reset_day_utc():
    quota = CycleQuota(quota=100_000, reset_day=15)
    cycle = quota.cycle_at(_at(2026, 12, 3, 19, 0))
    assert (cycle.start_s, cycle.end_s) == (_at(2026, 11, 15), _at(2026, 12, 15))
    cycle = quota.cycle_at(_at(2026, 12, 15, 0, 0, 1))
    assert (cycle.start_s, cycle.end_s) == (_at(2026, 12, 15), _at(2027, 1, 15))
    january = CycleQuota(quota=1, reset_day=1).cycle_at(_at(2027, 1, 1))
    assert (january.start_s, january.end_s) == (_at(2027, 1, 1), _at(2027, 2, 1))
    short = CycleQuota(quota=1, length_s=6).cycle_at(13.5)
    assert (short.start_s, short.end_s) == (12.0, 18.0)


def test_allowances_of_a_business_plan():
    quota = CycleQuota(quota=100_000, bulk_share=0.3, reserve=0.2)
    assert (quota.reserve_calls, quota.live_cap, quota.bulk_cap) == (20_000, 80_000, 30_000)
    assert CycleQuota(quota=1000, reserve=0.2).bulk_cap == 800  # no share: the reserve bounds
    assert CycleQuota(quota=1000, bulk_share=0.9, reserve=0.2).bulk_cap == 800


def test_the_plan_says_whether_a_file_fits_and_when_it_would_finish():
    quota = CycleQuota(quota=100_000, bulk_share=0.3, reserve=0.2)
    now = _at(2026, 12, 3, 19, 0)
    used = {"left_bulk": 30_000, "resets": "2027-01-01T00:00:00Z", "used": 0}
    lines = plan_lines(100_000, quota, used, 80 / 60, now)
    assert "costs at least 100,000 API calls" in lines[0]
    assert "30,000 of 30,000 calls left" in lines[1]
    assert "does NOT fit: 70,000 events" in lines[2] and "starts 2027-03-01" in lines[2]
    fits = plan_lines(20_000, quota, used, 80 / 60, now)
    assert "fits within the bulk allowance, about 4 h 10 min at 80/min" in fits[-1]
    assert "unknown" in plan_lines(5, quota, None, None, now)[-1]


def test_cycle_settings_are_checked():
    with pytest.raises(ConfigError, match="VOUCHERIFY_CYCLE_RESET_DAY"):
        Settings.from_env({"VOUCHERIFY_CYCLE_RESET_DAY": "31"})
    with pytest.raises(ConfigError, match="VOUCHERIFY_CYCLE_BULK_SHARE"):
        Settings.from_env({"VOUCHERIFY_CYCLE_BULK_SHARE": "130%"})
    with pytest.raises(ConfigError, match="VOUCHERIFY_CYCLE_QUOTA"):
        Settings.from_env({"VOUCHERIFY_CYCLE_QUOTA": "lots"})
    settings = Settings.from_env({"VOUCHERIFY_CYCLE_QUOTA": "100000",
                                  "VOUCHERIFY_CYCLE_RESERVE": "20%"})
    assert CycleQuota.from_settings(settings).live_cap == 80_000
    with pytest.raises(ConfigError, match="VOUCHERIFY_CYCLE_QUOTA needs the shared rate limiter"):
        Settings.from_env({"VOUCHERIFY_CYCLE_QUOTA": "100000", "VOUCHERIFY_RATE_LIMIT": "off"})
    assert CycleQuota.from_settings(Settings()) is None
