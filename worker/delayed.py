"""Messages that must wait (a retry's backoff, a rate-limit deferral) park in a Redis sorted set.

Why not Celery's ``countdown``: an ETA message stays unacknowledged in the worker's memory
until it is due, so the Redis ``visibility_timeout`` would have to exceed the longest backoff
(minutes) and a killed worker's messages would come back only that late. Here the waiting
message is acked, and every worker's mover (a thread, see ``worker.app``) pushes due messages
back onto the ingest queue atomically, so two movers never move the same message twice.
Times come from the Redis server (``TIME``), never from worker clocks. Each lane has its own
delayed set, and its due messages go back to their own lane's list (a parked bulk event stays
bulk).
"""

from __future__ import annotations

import redis

from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import LANES, LIVE

# KEYS[1] = {p}:delayed   ARGV[1] = delay in ms   ARGV[2] = message JSON
SCHEDULE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), ARGV[2])
return now_ms
"""

# KEYS[1] = {p}:delayed   KEYS[2] = the ingest queue (list)   ARGV[1] = max messages to move
# Due messages go to the consuming end of the queue (RPUSH; workers BRPOP): they waited enough.
MOVE_DUE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due do
  redis.call('RPUSH', KEYS[2], due[i])
  redis.call('ZREM', KEYS[1], due[i])
end
return #due
"""


class DelayedQueue:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self._schedule = client.register_script(SCHEDULE_LUA)
        self._move_due = client.register_script(MOVE_DUE_LUA)

    def schedule(self, message: str, delay_s: float, lane: str = LIVE) -> None:
        self.schedule_on(self.redis, message, delay_s, lane)

    def schedule_on(self, client_or_pipe, message: str, delay_s: float, lane: str = LIVE) -> None:
        """Schedule via ``client_or_pipe`` (a pipeline lets it share a transaction)."""
        self._schedule(
            keys=[self.keys.lane_delayed(lane)], args=[max(0, int(delay_s * 1000)), message],
            client=client_or_pipe,
        )

    def move_due(self, limit: int = 500) -> int:
        """Move up to ``limit`` due messages of each lane onto that lane's list; return the
        most moved from one lane (``limit`` means: call again)."""
        return max(
            int(self._move_due(
                keys=[self.keys.lane_delayed(lane), self.keys.lane_queue(lane)], args=[limit]
            ))
            for lane in LANES
        )

    def size(self) -> int:
        return sum(int(self.redis.zcard(self.keys.lane_delayed(lane))) for lane in LANES)
