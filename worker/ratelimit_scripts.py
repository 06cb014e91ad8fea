"""The shared limiter's Redis scripts (``worker/ratelimit.py`` runs them): GCRA with lanes,
the billing-cycle count, the 429 cool-down and the pause check.

Each script reads Redis's own clock (``TIME``), so every worker on every machine agrees on
"now", and does its whole read-decide-write in one atomic step.
"""

from __future__ import annotations

# ACQUIRE: take the next slot if it is within reach, else a place in line (nothing taken).
#   KEYS[1] = {p}:rl:{h}           TAT: theoretical arrival time, epoch microseconds
#   KEYS[2] = {p}:rl:{h}:cooldown  no slot before this epoch microsecond (set after a 429)
#   KEYS[3] = {p}:rl:{h}:parked    the place in line given to the last caller told to park
#   KEYS[4] = {p}:rl:{h}:bulkline  the place in line given to the last bulk caller told to wait
#   KEYS[5] = {p}:rl:{h}:credit    bulk's minimum-share credit (slots it may take like live)
#   KEYS[6] = {p}:rl:{h}:starved   epoch us since when bulk callers have been refused
#   KEYS[7] = {p}:rl:{h}:reserve   no slot before this epoch microsecond (the rate reserve)
#   ARGV[1] = emission interval T, microseconds (period / count)
#   ARGV[2] = burst tolerance tau = T * (burst - 1), microseconds
#   ARGV[3] = max wait, microseconds
#   ARGV[4] = lane: 0 live, 1 bulk
#   ARGV[5] = bulk horizon, microseconds: the furthest ahead a bulk caller may hold a slot
#   ARGV[6] = bulk credit earned per live slot while bulk is refused (0: strict priority)
#   KEYS[8] = {p}:rl:{h}:cycle:{start}  calls counted this billing cycle (hash total/live/bulk)
#   KEYS[9] = {p}:rl:{h}:cycle_blocked  the API said the cycle is spent: nothing until then
#   ARGV[7] = cycle cap for any lane (quota - reserve), -1 when no cycle accounting
#   ARGV[8] = cycle cap for the bulk lane   ARGV[9] = the cycle key's time to live, ms
#   KEYS[10] = {p}:rl:{h}:bulkheld  zset: slots granted to bulk callers, not yet used (score:
#              the slot's time; member: the caller's hold token)
#   ARGV[10] = bulk: the caller's hold token ("" = not recorded: it cannot be taken back)
# Returns {granted (1|0), wait_us, now_us, starved_since_us, quota (0 | 1 cap spent | 2 API
# said the cycle is spent: wait_us is how long)}. granted: the slot is now + wait_us
# and is taken. Not granted: nothing taken; wait_us is how far away the caller's place in line
# is (bulk: when to try again). A slot is at max(now, TAT - tau); taking it moves TAT on by T.
# A cool-down pins TAT to cooldown + tau: the first slot after it is at its end and the rest
# follow at pace T (no burst). Live takes any slot within max wait; bulk only one within the
# horizon (about one interval), so bulk holds at most about one interval of future slots, and
# bulk still fills every slot no live caller wants. A bulk slot granted with a hold token is
# recorded until its caller wakes for it (CONFIRM); a live caller takes the nearest such
# slot ahead of its own instead of its own (TAT unchanged: that slot stays free, and the bulk
# caller, finding its hold gone, asks again), so a live event waits behind no bulk event not
# yet sent: at most one interval for its slot.
# Numbers stay below 2^53 (exact in Lua's doubles); '%.0f' writes them whole.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local bulk = tonumber(ARGV[4]) == 1
local blocked = tonumber(redis.call('GET', KEYS[9]) or 0)
if blocked > now then return {0, blocked - now, now, 0, 2} end
local cap = tonumber(ARGV[7])
local lane = 'live'
if bulk then lane = 'bulk' end
if cap >= 0 then
  local used = redis.call('HMGET', KEYS[8], 'total', 'bulk')
  if tonumber(used[1] or 0) >= cap or (bulk and tonumber(used[2] or 0) >= tonumber(ARGV[8])) then
    return {0, 0, now, 0, 1}
  end
end
local state = redis.call('MGET', KEYS[1], KEYS[2], KEYS[7])
local tat = tonumber(state[1] or 0)
if tat < now then tat = now end
local cool = tonumber(state[2] or 0)
local held = tonumber(state[3] or 0)
if held > cool then cool = held end
if cool > tat - tau then tat = cool + tau end
local slot = tat - tau
if slot < now then slot = now end
local wait = slot - now
local reach = max_wait
local credit = 0
if bulk then
  reach = tonumber(ARGV[5])
  if reach > max_wait then reach = max_wait end
  if wait > reach and wait <= max_wait then
    credit = tonumber(redis.call('GET', KEYS[5]) or 0)
    if credit >= 1 then reach = max_wait end
  end
end
local taken = nil
if not bulk and slot > now then
  local from = now
  if cool > from then from = cool end
  local nearest = redis.call('ZRANGEBYSCORE', KEYS[10], string.format('%.0f', from),
    '(' .. string.format('%.0f', slot), 'WITHSCORES', 'LIMIT', 0, 1)
  if nearest[1] then
    taken = nearest[1]
    slot = tonumber(nearest[2])
    wait = slot - now
  end
end
if wait <= reach then
  if taken then
    redis.call('ZREM', KEYS[10], taken)
    if cap >= 0 then
      redis.call('HINCRBY', KEYS[8], 'bulk', -1)
      redis.call('HINCRBY', KEYS[8], 'live', 1)
    end
  else
    local new_tat = tat + interval
    local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
    if cap >= 0 then
      redis.call('HINCRBY', KEYS[8], 'total', 1)
      redis.call('HINCRBY', KEYS[8], lane, 1)
      redis.call('PEXPIRE', KEYS[8], tonumber(ARGV[9]))
    end
    if bulk and ARGV[10] ~= '' and wait > 0 then
      redis.call('ZADD', KEYS[10], string.format('%.0f', slot), ARGV[10])
      redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', string.format('%.0f', now - 60000000))
      redis.call('PEXPIRE', KEYS[10], ttl_ms + 60000)
    end
  end
  if bulk then
    redis.call('DEL', KEYS[6])
    if credit >= 1 then redis.call('SET', KEYS[5], tostring(credit - 1), 'PX', 60000) end
  else
    local share = tonumber(ARGV[6])
    if share > 0 and redis.call('EXISTS', KEYS[6]) == 1 then
      local c = tonumber(redis.call('GET', KEYS[5]) or 0) + share
      if c > 1 + share then c = 1 + share end
      redis.call('SET', KEYS[5], tostring(c), 'PX', 60000)
    end
  end
  return {1, wait, now, 0, 0}
end
if bulk then
  local since = tonumber(redis.call('GET', KEYS[6]) or 0)
  if since == 0 then since = now end
  redis.call('SET', KEYS[6], string.format('%.0f', since), 'PX', 10000)
  -- Waiters are spread over the next four intervals after the slot comes within reach
  -- (round robin), so a few try each interval: none is sent far back, and no herd wakes.
  local due = slot - reach
  local place = tonumber(redis.call('GET', KEYS[4]) or 0) + interval
  if place < due then place = due end
  place = due + math.fmod(place - due, 4 * interval)
  if place < now then place = now end
  redis.call('SET', KEYS[4], string.format('%.0f', place),
    'PX', math.ceil((place - now) / 1000) + 1000)
  return {0, place - now, now, since, 0}
end
local place = tonumber(redis.call('GET', KEYS[3]) or 0) + interval
if place < slot then place = slot end
local ttl_ms = math.ceil((place - now) / 1000) + 1000
redis.call('SET', KEYS[3], string.format('%.0f', place), 'PX', ttl_ms)
return {0, place - now, now, 0, 0}
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

# PAUSED_FOR: microseconds of shared cool-down (or reserve pause) left (0 when none).
#   KEYS[1] = {p}:rl:{h}:cooldown   KEYS[2] = {p}:rl:{h}:reserve (optional)
PAUSED_FOR_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if KEYS[2] then
  local held = tonumber(redis.call('GET', KEYS[2]) or 0)
  if held > cur then cur = held end
end
if cur > now then return cur - now end
return 0
"""

# CONFIRM: a bulk caller woke for its slot. {microseconds of cool-down or reserve pause left,
# 1 if its hold was still there (now used: removed) else 0 (a live caller took the slot)}.
#   KEYS[1] = {p}:rl:{h}:cooldown   KEYS[2] = {p}:rl:{h}:reserve   KEYS[3] = {p}:rl:{h}:bulkheld
#   ARGV[1] = the hold token
CONFIRM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mine = redis.call('ZREM', KEYS[3], ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
local held = tonumber(redis.call('GET', KEYS[2]) or 0)
if held > cur then cur = held end
if cur > now then return {cur - now, mine} end
return {0, mine}
"""
