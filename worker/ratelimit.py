"""One rate limit shared by every worker on every machine: GCRA in one Lua script on Redis.

Voucherify counts calls per project and blocks a project that goes over; Celery's own
``rate_limit`` is per worker process, so it cannot hold a project-wide limit. Here the state
lives in Redis and one atomic script hands out send times (GCRA, the generic cell rate
algorithm): a caller learns exactly when its slot is, sleeps once, and sends. Times come from
the Redis server (``TIME``), never from worker clocks, and the state is one number per key.

- A slot further away than ``max_wait_s`` is not taken: the caller parks the event (no retry
  used) and is told when to come back. Parked callers also get a place in line, so a backlog
  comes back spread at the limit's pace instead of all at once every few seconds.
- A 429 starts a shared cool-down (``on_rate_limited``): every worker's next slot is after it,
  workers that slept into it re-check before sending (``paused_for``), and after it sending
  resumes at the configured pace, one slot at a time (the first one is the probe).
- A worker that wakes up too late for its slot (a stalled host) does not use it: sent late, it
  would land on top of the next slots and crowd the API's window. ``wait_for_slot`` is the
  whole dance: take, sleep, re-check, send or park.
- ``observe`` reads a 200's headers: ``X-Rate-Limit-Remaining: 0`` pauses everyone until
  ``X-Rate-Limit-Retry``; an ``X-Rate-Limit-Limit`` below the configured limit lowers the
  pace, and a later, higher one raises it again (never above the configured limit).

- Lanes: a live caller takes the next free slot, or an earlier one a bulk caller holds and
  has not used yet; a bulk caller takes only a slot within about one interval, so live events
  overtake every bulk event not yet sent, and bulk fills every slot live leaves
  (``VOUCHERIFY_LANE_BULK_MIN_SHARE`` gives bulk a floor).
- ``VOUCHERIFY_RATE_RESERVE``: the pace is the limit less the reserve, and ``keep_reserve``
  pauses everyone when ``X-Rate-Limit-Remaining`` says other clients spent into it.
- ``VOUCHERIFY_CYCLE_QUOTA``: each slot is counted against the billing cycle in the same script
  that grants it (``voucherify_ingest/cycle.py``); a 402 blocks every caller until the reset.
  See docs/lanes-and-rate-limit.md.

``VOUCHERIFY_RATE_LIMIT``: ``100/min``, ``2000/min``, ``25/s``, ``100/hour``, with an optional
burst ``100/min,burst=10`` (or ``100/min:10``); ``off``, ``0`` or empty disables the limiter.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import redis
import structlog

from voucherify_ingest.cycle import Cycle, CycleQuota, blocked_key, cycle_key
from voucherify_ingest.lanes import BULK, LIVE
from voucherify_ingest.rates import (  # noqa: F401 - re-exported for the limiter's callers
    ENV_NAME,
    OFF_VALUES,
    RateLimit,
    limiter_key,
    parse_rate_limit,
    parse_share,
    reserve_fraction,
)
from worker.pacing import pause_after_429
from worker.ratelimit_scripts import ACQUIRE_LUA, CONFIRM_LUA, COOL_DOWN_LUA, PAUSED_FOR_LUA

DEFAULT_COOLDOWN_S = 5.0  # a 429 that names no time: pause this long
MAX_COOLDOWN_S = 3600.0  # never trust a header to pause us longer than the Sandbox hour
MIN_LATE_TOLERANCE_S = 0.01
MIN_BULK_HORIZON_S = 0.02  # bulk may hold a slot this far ahead at least (thread wake-ups)
BULK_STARVED_LOG_S = 10.0  # bulk refused this long: say so (once per starvation)
QUOTA_RECHECK_S = 10.0  # an event refused for the cycle quota comes back this often to look


@dataclass(frozen=True)
class Grant:
    """One answer of the ACQUIRE script."""

    granted: bool
    wait_s: float
    redis_now_s: float
    quota: int = 0  # 1: this lane's cycle allowance is spent; 2: the API said the cycle is


class RateLimiter:
    """A limit shared through Redis by every worker of one Voucherify project.

    Keys (``h`` = 16 hex digits of sha256(app id, API base URL); the token never enters a key;
    the braces are literal, a Redis Cluster hash tag)::

        {p}:rl:{h}            string  GCRA theoretical arrival time, epoch microseconds
        {p}:rl:{h}:cooldown   string  shared cool-down after a 429, until epoch microseconds
        {p}:rl:{h}:parked     string  place in line of the last caller told to park
        {p}:rl:{h}:bulkline   string  place in line of the last bulk caller told to wait
        {p}:rl:{h}:credit     string  bulk's minimum-share credit (only with a share)
        {p}:rl:{h}:starved    string  since when bulk callers have been refused
        {p}:rl:{h}:reserve    string  reserve pause (VOUCHERIFY_RATE_RESERVE) until
        {p}:rl:{h}:bulkheld   zset    bulk slots granted, not yet used (a live caller may take one)
        {p}:rl:{h}:cycle:{s}  hash    calls counted in the cycle starting at s (total/live/bulk)
        {p}:rl:{h}:cycle_blocked  string  the API said the cycle is spent: nothing until

    Each key expires on its own once it no longer constrains anything, so an idle project
    leaves nothing behind. Workers share a budget when they share Redis, the key prefix, the
    app id and the API base URL. One instance per process, shared by its threads.
    """

    def __init__(
        self, client: redis.Redis, limit: RateLimit, *, key: str, reserve: str = "",
        bulk_min_share: float = 0.0, cycle: CycleQuota | None = None,
        cycle_clock: CycleQuota | None = None,
    ):
        self.redis = client
        self.configured = limit
        self.limit = limit
        self.key = key
        self.cooldown_key = f"{key}:cooldown"
        self.parked_key = f"{key}:parked"
        self.bulkline_key = f"{key}:bulkline"
        self.credit_key = f"{key}:credit"
        self.starved_key = f"{key}:starved"
        self.reserve_key = f"{key}:reserve"
        self.bulkheld_key = f"{key}:bulkheld"
        self.reserve_spec = reserve  # VOUCHERIFY_RATE_RESERVE: "20%", "20/min" or ""
        # Bulk's credit per live slot while bulk waits: share s of the slots is s/(1-s) per live.
        self.bulk_credit = bulk_min_share / (1 - bulk_min_share) if bulk_min_share else 0.0
        self._starved_logged = False
        self.cycle = cycle  # VOUCHERIFY_CYCLE_QUOTA (None: no cycle accounting)
        # When cycles reset (VOUCHERIFY_CYCLE_RESET_DAY), known even without a quota: a 402
        # pauses the fleet until then.
        self.cycle_clock = cycle or cycle_clock or CycleQuota(quota=0)
        self.blocked_key = blocked_key(key)
        self._quota_logged: set[tuple[str, str]] = set()  # (cycle, lane) said once
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._cool_down = client.register_script(COOL_DOWN_LUA)
        self._paused_for = client.register_script(PAUSED_FOR_LUA)
        self._confirm = client.register_script(CONFIRM_LUA)
        self._lock = threading.Lock()
        self.log = structlog.get_logger("voucherify_ingest.ratelimit")

    @classmethod
    def from_settings(cls, settings, client: redis.Redis) -> RateLimiter | None:
        """The limiter for ``settings``, or None when ``VOUCHERIFY_RATE_LIMIT`` is off."""
        limit = parse_rate_limit(settings.rate_limit)
        if limit is None:
            return None
        key = limiter_key(settings.key_prefix, settings.app_id, settings.api_base)
        return cls(client, limit, key=key, reserve=settings.rate_reserve,
                   bulk_min_share=parse_share(settings.lane_bulk_min_share,
                                              name="VOUCHERIFY_LANE_BULK_MIN_SHARE"),
                   cycle=CycleQuota.from_settings(settings),
                   cycle_clock=CycleQuota(quota=0, reset_day=settings.cycle_reset_day,
                                          length_s=settings.cycle_length_s))

    # -- taking slots -------------------------------------------------------------------------

    @property
    def reserve_fraction(self) -> float:
        """The share of the limit kept for other clients (``VOUCHERIFY_RATE_RESERVE``)."""
        return reserve_fraction(self.reserve_spec, self.limit)

    @property
    def pace_interval_s(self) -> float:
        """The fleet's own pace: the limit less the reserve."""
        return self.limit.interval_s / (1.0 - self.reserve_fraction)

    def reserve(self, max_wait_s: float, lane: str = LIVE, hold: str = "") -> Grant:
        """One round trip to the ACQUIRE script (``worker/ratelimit_scripts.py``, the
        arithmetic). ``hold`` (bulk): record a future slot under this token, so that a live
        caller may take it until :meth:`wait_for_slot` confirms it on waking."""
        limit = self.limit
        interval_us = math.ceil(self.pace_interval_s * 1_000_000)
        tau_us = interval_us * (limit.burst - 1)
        max_wait_us = max(0, int(max_wait_s * 1_000_000))
        horizon_us = max(interval_us, int(MIN_BULK_HORIZON_S * 1_000_000))
        cycle, caps = self._cycle_now()
        granted, wait_us, now_us, starved_us, quota = self._acquire(
            keys=[self.key, self.cooldown_key, self.parked_key, self.bulkline_key,
                  self.credit_key, self.starved_key, self.reserve_key,
                  cycle_key(self.key, cycle) if cycle else f"{self.key}:cycle:off",
                  self.blocked_key, self.bulkheld_key],
            args=[interval_us, tau_us, max_wait_us, 1 if lane == BULK else 0, horizon_us,
                  repr(self.bulk_credit), *caps, hold if lane == BULK else ""],
        )
        if lane == BULK:
            self._note_starvation(int(starved_us), int(now_us))
        return Grant(bool(granted), int(wait_us) / 1e6, int(now_us) / 1e6, int(quota))

    def _cycle_now(self) -> tuple[Cycle | None, list[int]]:
        """This cycle and the script's ``[cap, bulk cap, key ttl ms]`` (cap -1: no accounting)."""
        if self.cycle is None:
            return None, [-1, -1, 0]
        cycle = self.cycle.cycle_at(time.time())
        ttl_ms = int((cycle.end_s - cycle.start_s) * 1000) + 7 * 86_400_000
        return cycle, [self.cycle.live_cap, self.cycle.bulk_cap, ttl_ms]

    def _quota_wait(self, grant: Grant, lane: str) -> float:
        """How long to park an event refused for the cycle quota, saying so once per cycle."""
        cycle = self.cycle.cycle_at(time.time()) if self.cycle else None
        until_reset = (cycle.end_s - time.time()) if cycle else grant.wait_s
        if grant.quota == 2:
            until_reset = grant.wait_s
        mark = (cycle.tag if cycle else "", lane if grant.quota == 1 else "api")
        if mark not in self._quota_logged:
            self._quota_logged.add(mark)
            self.log.error(
                "cycle_quota_pause", lane=lane if grant.quota == 1 else "all",
                resumes_in_s=round(until_reset, 1),
                message=(f"the {lane} lane's allowance of this billing cycle is spent "
                         "(VOUCHERIFY_CYCLE_QUOTA, VOUCHERIFY_CYCLE_BULK_SHARE, "
                         "VOUCHERIFY_CYCLE_RESERVE); its events wait for the next cycle or a "
                         "higher allowance, nothing is dead-lettered")
                if grant.quota == 1 else
                "the API says this billing cycle's calls are spent (402 or api_calls_cycle); "
                "every worker waits until the cycle resets, nothing is dead-lettered",
            )
        return max(0.0, min(until_reset, QUOTA_RECHECK_S))

    def _refund(self, lane: str) -> None:
        """A granted slot left unused makes no call: take it off this cycle's count."""
        if self.cycle is None:
            return
        key = cycle_key(self.key, self.cycle.cycle_at(time.time()))
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "total", -1)
            pipe.hincrby(key, lane, -1)
            pipe.execute()

    def on_cycle_spent(self) -> float:
        """The API answered 402 (or 429 ``api_calls_cycle``): no worker calls it again before
        the cycle resets (``VOUCHERIFY_CYCLE_RESET_DAY``). Returns the seconds to wait."""
        until_s = max(1.0, self.cycle_clock.cycle_at(time.time()).end_s - time.time())
        self._cool_down(keys=[self.blocked_key], args=[int(until_s * 1_000_000)])
        return until_s

    def _note_starvation(self, since_us: int, now_us: int) -> None:
        """Log once when bulk has had no slot for a while (live events take them all)."""
        if not since_us:
            if self._starved_logged:
                self.log.info("bulk_lane_resumed")
            self._starved_logged = False
            return
        starved_s = (now_us - since_us) / 1e6
        if starved_s >= BULK_STARVED_LOG_S and not self._starved_logged:
            self._starved_logged = True
            self.log.warning(
                "bulk_lane_starved", starved_s=round(starved_s, 1),
                message="live events have taken every rate-limit slot; bulk events wait "
                "(set VOUCHERIFY_LANE_BULK_MIN_SHARE to give bulk a minimum share)",
            )

    def acquire(self, max_wait_s: float, lane: str = LIVE) -> tuple[bool, float]:
        """``(True, wait)``: the slot is ``wait`` seconds away (:meth:`wait_for_slot` sleeps
        and re-checks). ``(False, park)``: nothing taken; park the event ``park`` seconds.

        A parked event is told to come back half of ``max_wait_s`` before its place in line,
        so that its slot is then most likely within reach. Refused for the cycle quota: park
        until it is worth looking again (as :meth:`wait_for_slot`), not 0 s, which would spin
        on a spent allowance until the cycle resets."""
        grant = self.reserve(max_wait_s, lane)
        if grant.quota:
            return False, self._quota_wait(grant, lane)
        if grant.granted:
            return True, grant.wait_s
        return False, max(0.0, grant.wait_s - max_wait_s / 2)

    def paused_for(self) -> float:
        """Seconds of shared cool-down (or reserve pause) left. Call it after sleeping for a
        slot: a 429 seen by another worker meanwhile means this slot must not be used."""
        return int(self._paused_for(keys=[self.cooldown_key, self.reserve_key])) / 1e6

    def _confirm_hold(self, hold: str) -> tuple[float, bool]:
        """A bulk caller woke for its slot: (seconds of pause left, whether the slot is still
        its own) in one round trip; a kept slot is no longer one a live caller may take."""
        left_us, kept = self._confirm(
            keys=[self.cooldown_key, self.reserve_key, self.bulkheld_key], args=[hold])
        return int(left_us) / 1e6, bool(int(kept))

    @property
    def late_tolerance_s(self) -> float:
        """How late a sleeper may wake and still use its slot: half the burst's worth of
        intervals (at least 10 ms). Late sends crowd a window by at most the burst, which the
        limit allows anyway; the other half is left for the way from here to the wire."""
        return max(self.limit.interval_s * self.limit.burst / 2, MIN_LATE_TOLERANCE_S)

    def wait_for_slot(
        self, max_wait_s: float, sleep=time.sleep, lane: str = LIVE, give_way=None, nap=None
    ) -> float | None:
        """Take a slot and sleep until it: None means send now; a number means do not send,
        park the event that many seconds (no slot within ``max_wait_s``, or a cool-down began
        while we slept).

        Waking late (a stalled host, CPU starvation, a GC pause) would send this slot on top of
        the next ones and crowd the API's window, so a slot missed by more than
        :attr:`late_tolerance_s` is left unused and a fresh one taken within what is left of
        ``max_wait_s`` (the message stays unacknowledged no longer than that bound).

        A ``bulk`` caller is refused slots further ahead than about one interval; it sleeps
        until its place in the bulk line and asks again, within the same bound, so that a live
        caller arriving meanwhile is served first. A slot it does get is held under a token
        until it wakes: a live caller arriving meanwhile takes it, and the bulk caller, finding
        it gone, asks again. ``give_way`` (bulk): called each time the
        caller is refused; True (a live event waits for a thread) parks the event at once (0 s)
        instead of sleeping on, so the live event gets this thread without waiting for it.
        ``nap`` (bulk, refused): sleeps in place of ``sleep`` and returns True early when a
        live event is queued (``worker.livewatch``): the caller gives way at once then too."""
        budget_s = max_wait_s
        while True:
            hold = os.urandom(8).hex() if lane == BULK else ""
            grant = self.reserve(budget_s, lane, hold)
            if grant.quota:
                return self._quota_wait(grant, lane)
            if not grant.granted and lane == BULK and grant.wait_s < budget_s:
                if give_way is not None and give_way():
                    return 0.0
                if nap is not None:
                    if nap(grant.wait_s):
                        return 0.0
                else:
                    sleep(grant.wait_s)
                budget_s -= grant.wait_s
                continue
            if not grant.granted:
                return max(0.0, grant.wait_s - max_wait_s / 2)
            if grant.wait_s <= 0:
                return None
            due = time.monotonic() + grant.wait_s
            sleep(grant.wait_s)
            if hold:
                paused_s, kept = self._confirm_hold(hold)
                if not kept:  # a live caller took this slot (and its count): ask again
                    budget_s = max(0.0, budget_s - grant.wait_s)
                    continue
            else:
                paused_s = self.paused_for()
            if paused_s > 0:
                self._refund(lane)
                return paused_s
            late_s = time.monotonic() - due
            if late_s <= self.late_tolerance_s:
                return None
            self._refund(lane)
            self.log.info("rate_limit_slot_missed", late_s=round(late_s, 3))
            budget_s = max(0.0, budget_s - grant.wait_s - late_s)

    # -- feedback from the API ----------------------------------------------------------------

    def on_rate_limited(self, retry_after_s: float | None, headers: Any = None) -> float:
        """The API answered 429: pause every worker until the time it gave.

        That is the later of ``Retry-After`` and ``X-Rate-Limit-Retry`` (epoch seconds, read
        against this machine's clock only to turn it into a duration); without either,
        ``DEFAULT_COOLDOWN_S``. Returns the seconds of cool-down now left."""
        pause_s = pause_after_429(retry_after_s, headers, MAX_COOLDOWN_S,
                                  default_s=DEFAULT_COOLDOWN_S)
        left_us, moved = self._cool_down(
            keys=[self.cooldown_key], args=[int(pause_s * 1_000_000)]
        )
        left_s = int(left_us) / 1e6
        if moved:
            self.log.warning("rate_limit_cooldown", pause_s=round(left_s, 3),
                             limit=str(self.limit))
        return left_s

    def keep_reserve(self, hints: Any) -> float:
        """Keep ``VOUCHERIFY_RATE_RESERVE`` unspent: when ``X-Rate-Limit-Remaining`` is below
        the reserve's share of ``X-Rate-Limit-Limit`` (other clients of the project spent
        more than they were left), every worker pauses until the API's window has refilled
        the difference at the limit's pace. Returns the pause begun (0 when none). Never
        raises: the send itself went through."""
        fraction = self.reserve_fraction
        remaining = getattr(hints, "remaining", None)
        api_limit = getattr(hints, "limit", None)
        if not fraction or remaining is None or not api_limit or api_limit <= 0:
            return 0.0
        keep = math.ceil(fraction * api_limit)
        if remaining >= keep:
            return 0.0
        pause_s = min((keep - remaining) * self.limit.period_s / api_limit, MAX_COOLDOWN_S)
        try:
            left_us, moved = self._cool_down(
                keys=[self.reserve_key], args=[int(pause_s * 1_000_000)]
            )
        except redis.RedisError as exc:
            self.log.warning("rate_reserve_pause_not_stored", error=type(exc).__name__)
            return 0.0
        if moved:
            self.log.info("rate_reserve_pause", pause_s=round(int(left_us) / 1e6, 3),
                          remaining=remaining, keep=keep, api_limit=api_limit)
        return pause_s

    def observe(self, hints: Any) -> None:
        """Read the rate-limit headers of a successful answer. Never raises.

        - Below the reserve (``VOUCHERIFY_RATE_RESERVE``): a shared pause, :meth:`keep_reserve`.

        - ``X-Rate-Limit-Remaining: 0`` with an ``X-Rate-Limit-Retry`` in the future: the API's
          budget is spent (something else shares the project, or the plan is smaller), so the
          next call would be refused: every worker pauses until then, as after a 429.
        - ``X-Rate-Limit-Limit`` below the configured limit: lower the pace to it, logged once;
          a later, higher figure raises it again, up to the configured limit at most.
          Voucherify states plan limits per minute (per hour for the Sandbox and older plans),
          so the header is compared only with a limit given per minute or per hour, in that
          unit; a per-second limit is taken as exact (dedicated clusters, tests)."""
        self.keep_reserve(hints)
        retry_at = getattr(hints, "retry_at_epoch_s", None)
        if getattr(hints, "remaining", None) == 0 and retry_at and retry_at > time.time():
            try:
                self.on_rate_limited(None, {"X-Rate-Limit-Retry": str(retry_at)})
            except redis.RedisError as exc:  # advisory: the send itself went through
                self.log.warning("rate_limit_cooldown_not_stored", error=type(exc).__name__)
        api_limit = getattr(hints, "limit", None)
        period = self.configured.period_s
        if not api_limit or api_limit <= 0 or period not in (60.0, 3600.0):
            return
        # Follow the API both ways, never above the configured limit: a plan upgraded again
        # (or a header that was briefly wrong) brings the pace back up.
        if api_limit >= self.configured.count:
            target = self.configured
        else:
            target = replace(self.configured, count=float(api_limit),
                             burst=min(self.configured.burst, int(api_limit)))
        if target == self.limit:
            return
        with self._lock:
            if target == self.limit:
                return
            lowered = target.count < self.limit.count
            self.limit = target
        self.log.warning(
            "rate_limit_lowered" if lowered else "rate_limit_raised",
            configured=str(self.configured), api_limit=int(api_limit), effective=str(self.limit),
            message=f"the API says the plan allows {int(api_limit)} calls per "
            f"{'minute' if period == 60.0 else 'hour'}; using "
            + ("the API's figure" if target is not self.configured else ENV_NAME),
        )
