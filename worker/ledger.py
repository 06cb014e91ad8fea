"""The delivery ledger: which events Voucherify already accepted, which are being sent now, and
which were sent without a recorded outcome (in doubt).

Voucherify has no idempotency key, so a redelivered message (worker killed after the POST but
before the ack, a replay of an event that did get through) must be stopped here. ``claim`` is
one atomic script: an event already in the ledger is a duplicate; an event another worker is
sending right now (``inflight`` key, short TTL) is busy and must be retried later.

Just before a request goes out, the sender writes a *send record* (``{p}:sent:{id}``: who, when;
see ``voucherify_ingest.indoubt.SendRecord``). A recorded outcome removes it. So a claim that
finds one knows the earlier request may have reached the API with no outcome recorded: the
event is in doubt, and the claim hands back the record as evidence.

Every release is owner-checked in the script: a worker whose answer came after its claim
lapsed must not release the claim another worker now holds.
"""

from __future__ import annotations

import redis

from voucherify_ingest.indoubt import SendRecord
from voucherify_ingest.keys import Keys

# KEYS[1] = {p}:delivered:{id}   KEYS[2] = {p}:inflight:{id}   KEYS[3] = {p}:sent:{id}
# ARGV[1] = in-flight TTL in ms  ARGV[2] = owner token
# ARGV[3] = a send record to write now ("" = none)   ARGV[4] = its TTL in s
# Returns {0} = claimed, {1} = already delivered, {2} = another worker holds it,
# {3, record} = claimed, and an earlier send is in doubt (its record).
CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {2} end
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
local prior = redis.call('GET', KEYS[3])
if prior then return {3, prior} end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4]) end
return {0}
"""

# The same for a batch (no send record written: each event writes its own before its POST).
# KEYS = delivered_1, inflight_1, sent_1, delivered_2, ... Returns one code per event.
CLAIM_MANY_LUA = """
local out = {}
for i = 1, #KEYS, 3 do
  local code = 2
  if redis.call('EXISTS', KEYS[i]) == 1 then code = 1
  elseif redis.call('SET', KEYS[i + 1], ARGV[2], 'NX', 'PX', ARGV[1]) then code = 0
  elseif redis.call('GET', KEYS[i + 1]) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
    code = 0
  end
  if code == 0 and redis.call('EXISTS', KEYS[i + 2]) == 1 then code = 3 end
  out[#out + 1] = code
end
return out
"""

# KEYS[1] = inflight  KEYS[2] = sent   ARGV[1] = owner
# ARGV[2] = what to do with the send record: "keep" | "drop" | "note" (replace, ARGV[3])
# The claim is deleted only when it is ours; the send record is dropped or noted only when it
# is ours or we hold the claim (a settled in-doubt send's record belongs to the dead sender).
RELEASE_LUA = """
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours then redis.call('DEL', KEYS[1]) end
if ARGV[2] ~= 'keep' then
  local rec = redis.call('GET', KEYS[2])
  if rec and (ours or string.sub(rec, 1, #ARGV[1] + 1) == ARGV[1] .. '|') then
    if ARGV[2] == 'drop' then redis.call('DEL', KEYS[2])
    else redis.call('SET', KEYS[2], ARGV[3], 'KEEPTTL') end
  end
end
return ours and 1 or 0
"""

# KEYS[1] = delivered  KEYS[2] = inflight  KEYS[3] = sent   ARGV[1] = owner  ARGV[2] = TTL s
# Delivered is a fact, whoever holds the claim: the send record goes; the claim only if ours.
DELIVERED_LUA = """
redis.call('SET', KEYS[1], 1, 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[3])
return 1
"""

CLAIMED, ALREADY_DELIVERED, BUSY, IN_DOUBT = 0, 1, 2, 3
KEEP, DROP, NOTE = "keep", "drop", "note"


class DeliveryLedger:
    def __init__(self, client: redis.Redis, keys: Keys, *, ttl_s: int, inflight_ttl_s: float):
        self.redis = client
        self.keys = keys
        self.ttl_s = max(1, int(ttl_s))
        self.inflight_ttl_ms = max(1000, int(inflight_ttl_s * 1000))
        self._claim = client.register_script(CLAIM_LUA)
        self._claim_many = client.register_script(CLAIM_MANY_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._delivered = client.register_script(DELIVERED_LUA)

    def _keys3(self, event_id: str) -> list[str]:
        k = self.keys
        return [k.delivered(event_id), k.inflight(event_id), k.sent(event_id)]

    def claim(self, event_id: str, owner: str, sending: SendRecord | None = None) -> int:
        """Claim ``event_id``; with ``sending``, write the send record in the same step (the
        request goes out right after). See :meth:`claim_with_record` for the evidence."""
        return self.claim_with_record(event_id, owner, sending)[0]

    def claim_with_record(
        self, event_id: str, owner: str, sending: SendRecord | None = None
    ) -> tuple[int, SendRecord | None]:
        """``(code, record)``: the record is the in-doubt evidence when code is IN_DOUBT."""
        reply = self._claim(
            keys=self._keys3(event_id),
            args=[self.inflight_ttl_ms, owner, sending.encode() if sending else "", self.ttl_s],
        )
        code = int(reply[0])
        return code, SendRecord.decode(reply[1]) if code == IN_DOUBT else None

    def claim_many(self, event_ids: list[str], owner: str) -> list[int]:
        """``claim`` for each id, in one script call (a batch message's events)."""
        keys = []
        for event_id in event_ids:
            keys += self._keys3(event_id)
        codes = self._claim_many(keys=keys, args=[self.inflight_ttl_ms, owner])
        return [int(code) for code in codes]

    def send_record(self, event_id: str) -> SendRecord | None:
        return SendRecord.decode(self.redis.get(self.keys.sent(event_id)))

    def mark_sending(self, event_id: str, record: SendRecord, pipe=None) -> None:
        """Write the send record just before the request goes out."""
        (pipe or self.redis).set(self.keys.sent(event_id), record.encode(), ex=self.ttl_s)

    def mark_delivered(self, pipe, event_id: str, owner: str) -> None:
        """Queue the ledger write on ``pipe`` (the caller's pipeline also carries counters)."""
        self._delivered(
            keys=self._keys3(event_id), args=[owner, self.ttl_s], client=pipe
        )

    def release(self, pipe, event_id: str, owner: str, record: str = DROP,
                note: SendRecord | None = None) -> None:
        """Queue an owner-checked release on ``pipe``. ``record``: DROP the send record (the
        outcome is known, or nothing was sent), KEEP it, or NOTE what happened (in doubt)."""
        k = self.keys
        self._release(
            keys=[k.inflight(event_id), k.sent(event_id)],
            args=[owner, record, note.encode() if note else ""],
            client=pipe,
        )

    def is_delivered(self, event_id: str) -> bool:
        return bool(self.redis.exists(self.keys.delivered(event_id)))

    def delivered_many(self, event_ids: list[str]) -> list[bool]:
        with self.redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.exists(self.keys.delivered(event_id))
            return [bool(x) for x in pipe.execute()]
