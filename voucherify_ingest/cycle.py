"""The billing cycle: how many API calls the project may make per cycle, and who may spend them.

Voucherify counts calls per minute and per billing cycle (100,000 a cycle on the Business
plan); "exceeding this limit will block your access to the API immediately", the app's own
checkout calls included. With ``VOUCHERIFY_CYCLE_QUOTA`` set, every slot the shared rate limiter
hands out (``worker/ratelimit.py``) is counted in the same Lua script that hands it out, so many
workers on many machines never overspend:

- ``live_cap = quota - reserve``: no lane spends the reserve (``VOUCHERIFY_CYCLE_RESERVE``), the
  calls left for the app itself;
- ``bulk_cap = min(quota x bulk share, live_cap)`` (``VOUCHERIFY_CYCLE_BULK_SHARE``): the most the
  bulk lane may spend in one cycle. Empty: bulk is bounded by ``live_cap`` only.

A slot is counted when it is granted, before the call, so a slot left unused (a late wake-up, a
cool-down) is counted too: the count errs on the side of the quota. The cycle starts at 00:00
UTC on ``VOUCHERIFY_CYCLE_RESET_DAY`` (1-28, default 1) each month; ``VOUCHERIFY_CYCLE_LENGTH_S``
replaces the month with fixed cycles of that many seconds from the Unix epoch (tests, demos).
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.rates import parse_rate_limit, parse_share


@dataclass(frozen=True)
class Cycle:
    start_s: float  # epoch seconds
    end_s: float

    @property
    def tag(self) -> str:
        """The cycle's part of its Redis key: its start, epoch seconds."""
        return str(int(self.start_s))


@dataclass(frozen=True)
class CycleQuota:
    quota: int
    reset_day: int = 1
    bulk_share: float = 0.0  # 0: no separate bulk cap
    reserve: float = 0.0
    length_s: float = 0.0  # > 0: fixed cycles instead of months

    @classmethod
    def from_settings(cls, settings) -> CycleQuota | None:
        """None when ``VOUCHERIFY_CYCLE_QUOTA`` is unset or 0 (no cycle accounting)."""
        if not settings.cycle_quota:
            return None
        return cls(
            quota=int(settings.cycle_quota), reset_day=int(settings.cycle_reset_day),
            bulk_share=parse_share(settings.cycle_bulk_share, name="VOUCHERIFY_CYCLE_BULK_SHARE"),
            reserve=parse_share(settings.cycle_reserve, name="VOUCHERIFY_CYCLE_RESERVE"),
            length_s=float(settings.cycle_length_s),
        )

    @property
    def reserve_calls(self) -> int:
        return math.ceil(self.quota * self.reserve)

    @property
    def live_cap(self) -> int:
        return max(0, self.quota - self.reserve_calls)

    @property
    def bulk_cap(self) -> int:
        if not self.bulk_share:
            return self.live_cap
        return min(self.live_cap, math.floor(self.quota * self.bulk_share))

    def cycle_at(self, now_s: float) -> Cycle:
        if self.length_s > 0:
            start = math.floor(now_s / self.length_s) * self.length_s
            return Cycle(start, start + self.length_s)
        now = datetime.fromtimestamp(now_s, UTC)
        start = _reset_in(now.year, now.month, self.reset_day)
        if start > now:
            start = _reset_in(*_month_before(now.year, now.month), self.reset_day)
        end = _reset_in(*_month_after(start.year, start.month), self.reset_day)
        return Cycle(start.timestamp(), end.timestamp())


def _reset_in(year: int, month: int, day: int) -> datetime:
    day = min(day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, tzinfo=UTC)


def _month_before(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def _month_after(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def check_settings(settings) -> None:
    """ConfigErrors naming the variable (called from ``Settings.validate``)."""
    if not 1 <= settings.cycle_reset_day <= 28:
        raise ConfigError(
            f"VOUCHERIFY_CYCLE_RESET_DAY must be a day of the month from 1 to 28 (UTC), got "
            f"{settings.cycle_reset_day}"
        )
    bulk = parse_share(settings.cycle_bulk_share, name="VOUCHERIFY_CYCLE_BULK_SHARE")
    reserve = parse_share(settings.cycle_reserve, name="VOUCHERIFY_CYCLE_RESERVE")
    if settings.cycle_quota and (bulk or reserve) and settings.cycle_quota * (1 - reserve) < 1:
        raise ConfigError("VOUCHERIFY_CYCLE_RESERVE leaves the workers no call of "
                          "VOUCHERIFY_CYCLE_QUOTA")
    if settings.cycle_quota and parse_rate_limit(settings.rate_limit) is None:
        # The count is kept by the limiter's script: without it nothing would be counted, and
        # a backfill could spend the cycle the quota was set to protect.
        raise ConfigError("VOUCHERIFY_CYCLE_QUOTA needs the shared rate limiter, which counts "
                          "the calls: set VOUCHERIFY_RATE_LIMIT (e.g. 100/min), not off")


def cycle_key(limiter_key: str, cycle: Cycle) -> str:
    """``{p}:rl:{h}:cycle:{start}``: a hash of calls counted this cycle (total, live, bulk)."""
    return f"{limiter_key}:cycle:{cycle.tag}"


def blocked_key(limiter_key: str) -> str:
    """``{p}:rl:{h}:cycle_blocked``: the API said the cycle is spent; no call until then."""
    return f"{limiter_key}:cycle_blocked"


def usage(client, limiter_key: str, quota: CycleQuota, now_s: float) -> dict:
    """What ``stats`` shows of the cycle: used, left per lane, the reset, a projection."""
    cycle = quota.cycle_at(now_s)
    raw = client.hgetall(cycle_key(limiter_key, cycle))
    used = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    total, bulk = used.get("total", 0), used.get("bulk", 0)
    blocked = client.get(blocked_key(limiter_key))
    blocked_s = max(0.0, float(blocked) / 1e6 - now_s) if blocked else 0.0
    elapsed = max(1.0, now_s - cycle.start_s)
    per_day = total / elapsed * 86400
    runs_out = None
    if total and per_day > 0:
        at = now_s + (quota.live_cap - total) / per_day * 86400
        runs_out = _iso(at) if at < cycle.end_s else None
    return {
        "quota": quota.quota, "used": total, "used_live": used.get("live", 0),
        "used_bulk": bulk, "reserve": quota.reserve_calls,
        "live_allowance": quota.live_cap, "bulk_allowance": quota.bulk_cap,
        "left_live": max(0, quota.live_cap - total),
        "left_bulk": max(0, min(quota.bulk_cap - bulk, quota.live_cap - total)),
        "bulk_paused": bulk >= quota.bulk_cap or total >= quota.live_cap,
        "live_paused": total >= quota.live_cap,
        "api_blocked_s": round(blocked_s, 1),
        "started": _iso(cycle.start_s), "resets": _iso(cycle.end_s),
        "per_day": round(per_day, 1), "runs_out": runs_out,
    }


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_lines(events: int, quota: CycleQuota, used: dict | None, per_s: float | None,
               now_s: float) -> list[str]:
    """What a backfill of ``events`` costs against the bulk allowance (``enqueue --file``).

    Each event is at least one API call (a retry is one more). ``used`` is :func:`usage` (None
    when Redis could not be read); ``per_s`` the fleet's pace for bulk (the rate limit less the
    reserve; None when the limiter is off)."""
    lines = [f"cycle: this file costs at least {events:,} API calls (one per event; retries "
             f"cost one more each)"]
    if used is None:
        lines.append("cycle: what is left of this cycle is unknown (Redis could not be read)")
        return lines
    left = used["left_bulk"]
    cycle = quota.cycle_at(now_s)
    lines.append(f"cycle: the bulk lane has {left:,} of {quota.bulk_cap:,} calls left this "
                 f"cycle (resets {used['resets']}); {used['used']:,} of {quota.quota:,} used")
    pace_s = events / per_s if per_s else 0.0
    if events <= left:
        finish = f", about {_duration(pace_s)} at {per_s * 60:,.0f}/min" if per_s else ""
        lines.append(f"cycle: it fits within the bulk allowance{finish}")
        return lines
    rest = events - left
    cycles = math.ceil(rest / quota.bulk_cap) if quota.bulk_cap else 0
    if cycles:
        done_at = cycle.end_s
        for _ in range(cycles - 1):
            done_at = quota.cycle_at(done_at).end_s
        done_at = max(done_at, now_s + pace_s)
        when = f"; at this allowance it finishes in the cycle that starts {_iso(done_at)[:10]}"
    else:
        when = "; with no bulk allowance it never finishes"
    lines.append(f"cycle: it does NOT fit: {rest:,} events would wait for later cycles "
                 f"(VOUCHERIFY_CYCLE_BULK_SHARE){when}")
    return lines


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{max(1, rest // 60)} min"
