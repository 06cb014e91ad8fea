"""A 401/403 is a fleet-wide condition: one shared pause, a probe, and resumption by itself.

A rotated or revoked token makes every call fail the same way. Dead-lettering each event on its
own would turn the whole backlog into dead letters in minutes, so instead:

- The first 401/403 starts a pause shared by every worker of the project through Redis (the
  time it began), with a loud ``auth_paused`` error log and the ``auth_refused`` counter.
- While paused, events are not sent: each is parked in the delayed set (no retry used) for
  about ``VOUCHERIFY_AUTH_PROBE_INTERVAL_S``. One worker at a time, once per interval, sends
  the event in hand as the probe.
- The probe's 200 ends the pause (``auth_pause_ended``) and delivery resumes by itself.
- Only once the API has refused the credentials for ``VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S``
  (default one hour; 0 restores dead-lettering at once) are events sent again and each one
  refused dead-lettered as ``auth``.

Key layout: ``voucherify_ingest.keys.auth_pause_key`` (``{p}:authpause:{h}`` and its
``:probe``). Times are Redis server time, never worker clocks.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import redis

from voucherify_ingest.keys import auth_pause_key

# CHECK: is the project paused, for how long, and may this caller probe now?
#   KEYS[1] = pause key (epoch ms the pause began)   KEYS[2] = probe key
#   ARGV[1] = probe interval, ms
# Returns {elapsed ms or -1 when not paused, 1 if this caller holds the probe else 0}.
CHECK_LUA = """
local since = redis.call('GET', KEYS[1])
if not since then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local probe = redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1])
if probe then return {now - tonumber(since), 1} end
return {now - tonumber(since), 0}
"""

# BEGIN: a 401/403 was seen; start the pause unless one runs, and make the next probe wait.
#   KEYS[1] = pause key   KEYS[2] = probe key   ARGV[1] = probe interval ms   ARGV[2] = TTL ms
# Returns {elapsed ms since the pause began, 1 if this call began it else 0}.
BEGIN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local began = redis.call('SET', KEYS[1], string.format('%.0f', now), 'NX', 'PX', ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if began then return {0, 1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {now - tonumber(redis.call('GET', KEYS[1])), 0}
"""

_random = random.SystemRandom()
#: A "not paused" answer is reused this long in-process: the hot path pays no extra round trip
#: per event; a pause another worker began is seen within this long (a few more 401s at most).
NOT_PAUSED_CACHE_S = 1.0


@dataclass(frozen=True)
class AuthState:
    paused_for_s: float | None  # None: not paused
    probe: bool  # this caller is the one to send now
    expired: bool  # paused longer than the dead-letter bound: send, and dead-letter refusals

    @property
    def hold(self) -> bool:
        """Do not send this event now: park it."""
        return self.paused_for_s is not None and not self.probe and not self.expired


class AuthPause:
    def __init__(self, client: redis.Redis, key: str, *, probe_interval_s: float,
                 dead_letter_after_s: float):
        self.key = key
        self.probe_key = f"{key}:probe"
        self.probe_interval_s = probe_interval_s
        self.dead_letter_after_s = dead_letter_after_s
        # Long enough to outlive the dead-letter bound; a pause nobody renews ends by itself.
        self.ttl_ms = int((dead_letter_after_s + max(3600.0, 10 * probe_interval_s)) * 1000)
        self._not_paused_until = 0.0  # monotonic; see NOT_PAUSED_CACHE_S
        self._check = client.register_script(CHECK_LUA)
        self._begin = client.register_script(BEGIN_LUA)
        self.client = client

    @classmethod
    def from_settings(cls, settings, client: redis.Redis) -> AuthPause:
        key = auth_pause_key(settings.key_prefix, settings.app_id, settings.api_base)
        return cls(client, key, probe_interval_s=settings.auth_probe_interval_s,
                   dead_letter_after_s=settings.auth_dead_letter_after_s)

    @property
    def _probe_ms(self) -> int:
        return max(1, int(self.probe_interval_s * 1000))

    def check(self) -> AuthState:
        now = time.monotonic()
        if now < self._not_paused_until:
            return AuthState(None, False, False)
        elapsed_ms, probe = self._check(keys=[self.key, self.probe_key], args=[self._probe_ms])
        if int(elapsed_ms) < 0:
            self._not_paused_until = now + NOT_PAUSED_CACHE_S
            return AuthState(None, False, False)
        elapsed_s = int(elapsed_ms) / 1000
        return AuthState(elapsed_s, bool(probe), elapsed_s >= self.dead_letter_after_s)

    def begin(self) -> tuple[float, bool]:
        """A 401/403: (seconds the pause has lasted, True if this call began it)."""
        self._not_paused_until = 0.0
        elapsed_ms, began = self._begin(keys=[self.key, self.probe_key],
                                        args=[self._probe_ms, self.ttl_ms])
        return int(elapsed_ms) / 1000, bool(began)

    def end(self) -> bool:
        """The credentials work: end the pause. True if one was running."""
        return bool(self.client.delete(self.key, self.probe_key) and True)

    def park_s(self) -> float:
        """How long a held event waits: one to two probe intervals, spread."""
        return self.probe_interval_s * (1 + _random.random())
