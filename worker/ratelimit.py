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

``VOUCHERIFY_RATE_LIMIT``: ``100/min``, ``2000/min``, ``25/s``, ``100/hour``, with an optional
burst ``100/min,burst=10`` (or ``100/min:10``); ``off``, ``0`` or empty disables the limiter.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import redis
import structlog

from voucherify_ingest.rates import (  # noqa: F401 - re-exported for the limiter's callers
    ENV_NAME,
    OFF_VALUES,
    RateLimit,
    limiter_key,
    parse_rate_limit,
)

DEFAULT_COOLDOWN_S = 5.0  # a 429 that names no time: pause this long
MAX_COOLDOWN_S = 3600.0  # never trust a header to pause us longer than the Sandbox hour
MIN_LATE_TOLERANCE_S = 0.01


# ACQUIRE: take the next slot if it is within max_wait, else a place in line (nothing taken).
#   KEYS[1] = {p}:rl:{h}           TAT: theoretical arrival time, epoch microseconds
#   KEYS[2] = {p}:rl:{h}:cooldown  no slot before this epoch microsecond (set after a 429)
#   KEYS[3] = {p}:rl:{h}:parked    the place in line given to the last caller told to park
#   ARGV[1] = emission interval T, microseconds (period / count)
#   ARGV[2] = burst tolerance tau = T * (burst - 1), microseconds
#   ARGV[3] = max wait, microseconds
# Returns {granted (1|0), wait_us, now_us}. granted: the slot is now + wait_us and is taken.
# Not granted: nothing taken; wait_us is how far away the caller's place in line is.
# A slot is at max(now, TAT - tau); taking it moves TAT on by T. A cool-down pins TAT to
# cooldown + tau: the first slot after it is at its end and the rest follow at pace T (no burst).
# Numbers stay below 2^53 (exact in Lua's doubles); '%.0f' writes them without an exponent.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local state = redis.call('MGET', KEYS[1], KEYS[2])
local tat = tonumber(state[1] or 0)
if tat < now then tat = now end
local cool = tonumber(state[2] or 0)
if cool > tat - tau then tat = cool + tau end
local slot = tat - tau
if slot < now then slot = now end
local wait = slot - now
if wait <= max_wait then
  local new_tat = tat + interval
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
  return {1, wait, now}
end
local place = tonumber(redis.call('GET', KEYS[3]) or 0) + interval
if place < slot then place = slot end
local ttl_ms = math.ceil((place - now) / 1000) + 1000
redis.call('SET', KEYS[3], string.format('%.0f', place), 'PX', ttl_ms)
return {0, place - now, now}
"""

# COOL_DOWN: after a 429, no slot before now + ARGV[1] (a longer cool-down already set stays).
#   KEYS[1] = {p}:rl:{h}:cooldown   ARGV[1] = cool-down, microseconds
# Returns {microseconds left, 1 if this call moved the end later else 0}.
COOL_DOWN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if cur >= want then return {cur - now, 0} end
local ttl_ms = math.ceil((want - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.0f', want), 'PX', ttl_ms)
return {want - now, 1}
"""

# PAUSED_FOR: microseconds of shared cool-down left (0 when none).
#   KEYS[1] = {p}:rl:{h}:cooldown
PAUSED_FOR_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if cur > now then return cur - now end
return 0
"""


def _header(headers: Any, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


@dataclass(frozen=True)
class Grant:
    """One answer of the ACQUIRE script."""

    granted: bool
    wait_s: float
    redis_now_s: float


class RateLimiter:
    """A limit shared through Redis by every worker of one Voucherify project.

    Keys (``h`` = 16 hex digits of sha256(app id, API base URL); the token never enters a key;
    the braces are literal, a Redis Cluster hash tag)::

        {p}:rl:{h}            string  GCRA theoretical arrival time, epoch microseconds
        {p}:rl:{h}:cooldown   string  shared cool-down after a 429, until epoch microseconds
        {p}:rl:{h}:parked     string  place in line of the last caller told to park

    Each key expires on its own once it no longer constrains anything, so an idle project
    leaves nothing behind. Workers share a budget when they share Redis, the key prefix, the
    app id and the API base URL. One instance per process, shared by its threads.
    """

    def __init__(self, client: redis.Redis, limit: RateLimit, *, key: str):
        self.redis = client
        self.configured = limit
        self.limit = limit
        self.key = key
        self.cooldown_key = f"{key}:cooldown"
        self.parked_key = f"{key}:parked"
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._cool_down = client.register_script(COOL_DOWN_LUA)
        self._paused_for = client.register_script(PAUSED_FOR_LUA)
        self._lock = threading.Lock()
        self.log = structlog.get_logger("voucherify_ingest.ratelimit")

    @classmethod
    def from_settings(cls, settings, client: redis.Redis) -> RateLimiter | None:
        """The limiter for ``settings``, or None when ``VOUCHERIFY_RATE_LIMIT`` is off."""
        limit = parse_rate_limit(settings.rate_limit)
        if limit is None:
            return None
        key = limiter_key(settings.key_prefix, settings.app_id, settings.api_base)
        return cls(client, limit, key=key)

    # -- taking slots -------------------------------------------------------------------------

    def reserve(self, max_wait_s: float) -> Grant:
        """One round trip to the ACQUIRE script (see above it for the arithmetic)."""
        limit = self.limit
        interval_us = math.ceil(limit.interval_s * 1_000_000)
        tau_us = interval_us * (limit.burst - 1)
        max_wait_us = max(0, int(max_wait_s * 1_000_000))
        granted, wait_us, now_us = self._acquire(
            keys=[self.key, self.cooldown_key, self.parked_key],
            args=[interval_us, tau_us, max_wait_us],
        )
        return Grant(bool(granted), int(wait_us) / 1e6, int(now_us) / 1e6)

    def acquire(self, max_wait_s: float) -> tuple[bool, float]:
        """``(True, wait)``: the slot is ``wait`` seconds away (:meth:`wait_for_slot` sleeps
        and re-checks). ``(False, park)``: nothing taken; park the event ``park`` seconds.

        A parked event is told to come back half of ``max_wait_s`` before its place in line,
        so that its slot is then most likely within reach."""
        grant = self.reserve(max_wait_s)
        if grant.granted:
            return True, grant.wait_s
        return False, max(0.0, grant.wait_s - max_wait_s / 2)

    def paused_for(self) -> float:
        """Seconds of shared cool-down left. Call it after sleeping for a slot: a 429 seen by
        another worker meanwhile means this slot must not be used."""
        return int(self._paused_for(keys=[self.cooldown_key])) / 1e6

    @property
    def late_tolerance_s(self) -> float:
        """How late a sleeper may wake and still use its slot: half the burst's worth of
        intervals (at least 10 ms). Late sends crowd a window by at most the burst, which the
        limit allows anyway; the other half is left for the way from here to the wire."""
        return max(self.limit.interval_s * self.limit.burst / 2, MIN_LATE_TOLERANCE_S)

    def wait_for_slot(self, max_wait_s: float, sleep=time.sleep) -> float | None:
        """Take a slot and sleep until it: None means send now; a number means do not send,
        park the event that many seconds (no slot within ``max_wait_s``, or a cool-down began
        while we slept).

        Waking late (a stalled host, CPU starvation, a GC pause) would send this slot on top of
        the next ones and crowd the API's window, so a slot missed by more than
        :attr:`late_tolerance_s` is left unused and a fresh one taken within what is left of
        ``max_wait_s`` (the message stays unacknowledged no longer than that bound)."""
        budget_s = max_wait_s
        while True:
            grant = self.reserve(budget_s)
            if not grant.granted:
                return max(0.0, grant.wait_s - max_wait_s / 2)
            if grant.wait_s <= 0:
                return None
            due = time.monotonic() + grant.wait_s
            sleep(grant.wait_s)
            paused_s = self.paused_for()
            if paused_s > 0:
                return paused_s
            late_s = time.monotonic() - due
            if late_s <= self.late_tolerance_s:
                return None
            self.log.info("rate_limit_slot_missed", late_s=round(late_s, 3))
            budget_s = max(0.0, budget_s - grant.wait_s - late_s)

    # -- feedback from the API ----------------------------------------------------------------

    def on_rate_limited(self, retry_after_s: float | None, headers: Any = None) -> float:
        """The API answered 429: pause every worker until the time it gave.

        That is the later of ``Retry-After`` and ``X-Rate-Limit-Retry`` (epoch seconds, read
        against this machine's clock only to turn it into a duration); without either,
        ``DEFAULT_COOLDOWN_S``. Returns the seconds of cool-down now left."""
        waits = [retry_after_s] if retry_after_s is not None and retry_after_s > 0 else []
        retry_at = _header(headers, "X-Rate-Limit-Retry")
        try:
            if retry_at is not None:
                waits.append(float(retry_at) - time.time())
        except ValueError:
            pass
        pause_s = max(waits) if waits and max(waits) > 0 else DEFAULT_COOLDOWN_S
        pause_s = min(pause_s, MAX_COOLDOWN_S)
        left_us, moved = self._cool_down(
            keys=[self.cooldown_key], args=[int(pause_s * 1_000_000)]
        )
        left_s = int(left_us) / 1e6
        if moved:
            self.log.warning("rate_limit_cooldown", pause_s=round(left_s, 3),
                             limit=str(self.limit))
        return left_s

    def observe(self, hints: Any) -> None:
        """Read the rate-limit headers of a successful answer. Never raises.

        - ``X-Rate-Limit-Remaining: 0`` with an ``X-Rate-Limit-Retry`` in the future: the API's
          budget is spent (something else shares the project, or the plan is smaller), so the
          next call would be refused: every worker pauses until then, as after a 429.
        - ``X-Rate-Limit-Limit`` below the configured limit: lower the pace to it, logged once;
          a later, higher figure raises it again, up to the configured limit at most.
          Voucherify states plan limits per minute (per hour for the Sandbox and older plans),
          so the header is compared only with a limit given per minute or per hour, in that
          unit; a per-second limit is taken as exact (dedicated clusters, tests)."""
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
