"""The delivery ledger: which events Voucherify already accepted, and which are being sent now.

Voucherify has no idempotency key, so a redelivered message (worker killed after the POST but
before the ack, a replay of an event that did get through) must be stopped here. ``claim`` is
one atomic script: an event already in the ledger is a duplicate; an event another worker is
sending right now (``inflight`` key, short TTL) is busy and must be retried later.
"""

from __future__ import annotations

import redis

from voucherify_ingest.keys import Keys

# KEYS[1] = {p}:delivered:{id}   KEYS[2] = {p}:inflight:{id}
# ARGV[1] = in-flight TTL in ms  ARGV[2] = owner token
# Returns 0 = claimed, 1 = already delivered, 2 = another worker holds it.
CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return 0
end
return 2
"""

# The same for a batch: KEYS = delivered_1, inflight_1, delivered_2, inflight_2, ...
# Returns one code per event, in order.
CLAIM_MANY_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local code = 2
  if redis.call('EXISTS', KEYS[i]) == 1 then code = 1
  elseif redis.call('SET', KEYS[i + 1], ARGV[2], 'NX', 'PX', ARGV[1]) then code = 0
  elseif redis.call('GET', KEYS[i + 1]) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
    code = 0
  end
  out[#out + 1] = code
end
return out
"""

CLAIMED, ALREADY_DELIVERED, BUSY = 0, 1, 2


class DeliveryLedger:
    def __init__(self, client: redis.Redis, keys: Keys, *, ttl_s: int, inflight_ttl_s: float):
        self.redis = client
        self.keys = keys
        self.ttl_s = max(1, int(ttl_s))
        self.inflight_ttl_ms = max(1000, int(inflight_ttl_s * 1000))
        self._claim = client.register_script(CLAIM_LUA)
        self._claim_many = client.register_script(CLAIM_MANY_LUA)

    def claim(self, event_id: str, owner: str) -> int:
        return int(
            self._claim(
                keys=[self.keys.delivered(event_id), self.keys.inflight(event_id)],
                args=[self.inflight_ttl_ms, owner],
            )
        )

    def claim_many(self, event_ids: list[str], owner: str) -> list[int]:
        """``claim`` for each id, in one script call (a batch message's events)."""
        keys = []
        for event_id in event_ids:
            keys += (self.keys.delivered(event_id), self.keys.inflight(event_id))
        codes = self._claim_many(keys=keys, args=[self.inflight_ttl_ms, owner])
        return [int(code) for code in codes]

    def mark_delivered(self, pipe, event_id: str) -> None:
        """Queue the ledger write on ``pipe`` (the caller's pipeline also carries counters)."""
        pipe.set(self.keys.delivered(event_id), 1, ex=self.ttl_s)
        pipe.delete(self.keys.inflight(event_id))

    def release(self, pipe, event_id: str) -> None:
        pipe.delete(self.keys.inflight(event_id))

    def is_delivered(self, event_id: str) -> bool:
        return bool(self.redis.exists(self.keys.delivered(event_id)))

    def delivered_many(self, event_ids: list[str]) -> list[bool]:
        with self.redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.exists(self.keys.delivered(event_id))
            return [bool(x) for x in pipe.execute()]
