"""The dead-letter store: events that failed for good, kept in Redis with their reason.

Key layout (``{p}`` is ``VOUCHERIFY_KEY_PREFIX``):

- ``{p}:dlq:entries``           hash: entry id (the event id) -> entry JSON
- ``{p}:dlq:index``             zset: entry id -> last-failed epoch seconds (listing by time)
- ``{p}:dlq:reason:{reason}``   zset: the same, one per reason (filtered listing without scans)
- ``{p}:dlq:counts``            hash: ``{reason}|{status}`` -> entries (``stats`` without a scan;
  ``status`` is the HTTP status or ``none``)

An entry is keyed by its event id, so an event dead-lettered twice is one entry (the newest
failure wins). Every write is one of two Lua scripts, so the four keys always agree: ADD stores
(or overwrites) an entry; REMOVE takes entries out for replay, purge and retention. REMOVE in
replay mode pushes each entry's message onto the ingest queue in the same script that deletes
the entry: an entry leaves the store only with its message on the queue, a replay killed at any
point loses nothing, and of two replays racing for one entry only the first finds it. A replay
also deletes each event's in-doubt send record (``{p}:sent:{id}``): an event held in doubt keeps
that record while it sits here, so a stale copy of its message is not sent again, and the
operator's replay is what lets it go out.

Pages are read with ``ZRANGE ... BYSCORE [REV] LIMIT`` from a (score, members-seen-at-that-score)
cursor: O(log N + page) at any depth of a million entries, and ties are neither skipped nor
repeated. Filters on status or event name read the entries of each page and keep walking, so
they never load the whole hash at once; a status with no entries (per the counts) returns at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import structlog

from voucherify_ingest.deadletters.entries import (
    REASONS,
    DeadLetterFilter,
    Page,
    iso_ms,
    status_label,
)
from voucherify_ingest.jsoncodec import dumps_text as _dumps
from voucherify_ingest.keys import Keys

PAGE_SIZE = 500

# Shared by both scripts: the reason and status of a stored entry, read with a pattern (make_entry
# writes "reason" and "status" next to each other, before any caller-supplied text) and with a
# full JSON decode only when that fails.
_META = """
local function meta(raw)
  local reason, status = string.match(raw, '"reason":"([%w_]+)","status":(%w+),')
  if reason == nil then
    local ok, e = pcall(cjson.decode, raw)
    if not ok or type(e) ~= 'table' then return nil, nil end
    reason, status = tostring(e['reason']), e['status']
    if type(status) == 'number' then status = string.format('%d', status)
    elseif type(status) ~= 'string' then status = 'none' end
  elseif status == 'null' then status = 'none' end
  return reason, status
end
local function uncount(key, reason, status)
  if reason == nil then return end
  local f = reason .. '|' .. status
  if redis.call('HINCRBY', key, f, -1) <= 0 then redis.call('HDEL', key, f) end
end
"""

# KEYS[1] entries  KEYS[2] index  KEYS[3] counts  KEYS[4] this reason's zset
# KEYS[5..8] the other reasons' zsets
# ARGV[1] id  ARGV[2] entry JSON  ARGV[3] score  ARGV[4] counts field ("reason|status")
ADD_LUA = _META + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then uncount(KEYS[3], meta(old)) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
for k = 5, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return old and 1 or 0
"""

# KEYS[1] entries  KEYS[2] index  KEYS[3] counts  KEYS[4] ingest queue  KEYS[5..] reason zsets,
# then (push only) each id's send record {p}:sent:{id}, in the order of the ids
# ARGV[1] mode: 'push' = LPUSH each entry's message, delete its send record, then remove it
#         (replay); 'drop' = remove (purge, retention); 'orphans' = only clear index members of
#         ids no longer stored
# ARGV[2] highest last-failed score to take ('' = any): an entry that failed again since the
#         caller read it is left for next time
# ARGV[3] n   ARGV[4..3+n] ids   ARGV[4+n..3+2n] messages (push only)
# Returns the ids removed; an id no longer stored (replayed or purged by someone else) is skipped.
REMOVE_LUA = _META + """
local REASON_KEY = {""" + ", ".join(f"{r}={5 + i}" for i, r in enumerate(REASONS)) + """}
local LAST_REASON = """ + str(4 + len(REASONS)) + """
local mode, top, n, done = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), {}
local function unindex(id, reason)
  redis.call('ZREM', KEYS[2], id)
  local k = REASON_KEY[reason]
  if k then redis.call('ZREM', KEYS[k], id) return end
  for j = 5, LAST_REASON do redis.call('ZREM', KEYS[j], id) end
end
for i = 1, n do
  local id = ARGV[3 + i]
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then
    unindex(id, nil)
  elseif mode ~= 'orphans' then
    local score = tonumber(redis.call('ZSCORE', KEYS[2], id))
    if top == nil or score == nil or score <= top then
      if mode == 'push' then
        redis.call('DEL', KEYS[LAST_REASON + i])
        redis.call('LPUSH', KEYS[4], ARGV[3 + n + i])
      end
      redis.call('HDEL', KEYS[1], id)
      local reason, status = meta(raw)
      uncount(KEYS[3], reason, status)
      unindex(id, reason)
      done[#done + 1] = id
    end
  end
end
return done
"""


class _Walk:
    """A cursor over one sorted set: the score edge we stand on and how many members at exactly
    that score were already seen and are still there (removed ones no longer shift the page)."""

    def __init__(self, client, key: str, lo: float | None, hi: float | None, newest_first: bool,
                 cursor: str | None = None):
        self.client, self.key, self.newest_first = client, key, newest_first
        self.lo = "-inf" if lo is None else repr(float(lo))
        self.hi = "+inf" if hi is None else repr(float(hi))
        self.edge, self.skip = (self.hi if newest_first else self.lo), 0
        if cursor:
            edge, _, skip = cursor.rpartition(":")
            try:
                self.edge, self.skip = repr(float(edge)), int(skip)
            except ValueError:
                raise ValueError(f"malformed cursor {cursor!r}") from None

    def page(self, size: int) -> list[tuple[str, float]]:
        end = self.lo if self.newest_first else self.hi
        rows = self.client.zrange(self.key, self.edge, end, desc=self.newest_first, byscore=True,
                                  offset=self.skip, num=size, withscores=True)
        return [(member.decode(), score) for member, score in rows]

    def advance(self, rows: list[tuple[str, float]], removed: Iterable[str] = ()) -> None:
        if not rows:
            return
        gone = set(removed)
        last = rows[-1][1]
        kept = sum(1 for member, score in rows if score == last and member not in gone)
        if repr(last) == self.edge:
            self.skip += kept
        else:
            self.edge, self.skip = repr(last), kept

    @property
    def cursor(self) -> str:
        return f"{self.edge}:{self.skip}"


class DeadLetterStore:
    """Writes, reads, replays and trims dead letters. ``add`` raises on Redis errors: the caller
    must then NOT ack the message, so it comes back instead of being lost."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self.counts_key = f"{keys.prefix}:dlq:counts"
        self._add = client.register_script(ADD_LUA)
        self._remove = client.register_script(REMOVE_LUA)
        self.log = structlog.get_logger("voucherify_ingest.deadletters")

    # -- writing ------------------------------------------------------------------------------

    def add(self, entry: dict[str, Any], pipe=None) -> None:
        """Store ``entry``; on ``pipe`` when given (the caller executes it), else at once."""
        reason = entry["reason"]
        others = [self.keys.dlq_reason(r) for r in REASONS if r != reason]
        self._add(
            keys=[self.keys.dlq_entries, self.keys.dlq_index, self.counts_key,
                  self.keys.dlq_reason(reason), *others],
            args=[entry["id"], _dumps(entry), entry["last_failed_ts"],
                  f"{reason}|{status_label(entry.get('status'))}"],
            client=pipe if pipe is not None else self.redis,
        )

    def _remove_ids(self, ids: list[str], messages: list[str] | None = None, *,
                    mode: str = "drop", top: float | None = None,
                    queue: str | None = None) -> list[str]:
        if not ids:
            return []
        push = messages is not None
        done = self._remove(
            keys=[self.keys.dlq_entries, self.keys.dlq_index, self.counts_key,
                  queue or self.keys.queue,
                  *(self.keys.dlq_reason(r) for r in REASONS),
                  *(self.keys.sent(i) for i in ids if push)],
            args=["push" if push else mode, "" if top is None else repr(top),
                  len(ids), *ids, *(messages or ())],
        )
        return [d.decode() for d in done]

    # -- reading ------------------------------------------------------------------------------

    def get(self, entry_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.dlq_entries, entry_id)
        return json.loads(raw) if raw else None

    def count(self) -> int:
        return int(self.redis.zcard(self.keys.dlq_index))

    def ids(self, limit: int = 100) -> list[str]:
        """Newest first."""
        return [i.decode() for i in self.redis.zrevrange(self.keys.dlq_index, 0, limit - 1)]

    def _load(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        return [json.loads(raw) if raw else None
                for raw in self.redis.hmget(self.keys.dlq_entries, ids)]

    def _expected(self, flt: DeadLetterFilter) -> int | None:
        """How many entries can match at most, from the counts (None: unknown / not exact)."""
        if flt.status is None or flt.event is not None:
            return None
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.counts_key)
            pipe.zcard(self.keys.dlq_index)
            raw, total = pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw.items()}
        if sum(counts.values()) != total:
            return None
        return sum(n for f, n in counts.items()
                   if f.endswith(f"|{flt.status}")
                   and (flt.reason is None or f.startswith(f"{flt.reason}|"))
                   and not (flt.skip_invalid and f.startswith("invalid|")))

    def _walk(
        self, flt: DeadLetterFilter, act: Callable[[list[tuple[str, float, dict | None]]], list],
        *, newest_first: bool, limit: int | None = None, cursor: str | None = None,
        page_size: int = PAGE_SIZE, load: bool = False,
    ) -> tuple[_Walk, bool, int]:
        """Feed ``act`` the matching ``(id, score, entry)`` of each page; ``act`` returns the ids
        it removed. Returns (cursor, exhausted, rows scanned)."""
        key = self.keys.dlq_reason(flt.reason) if flt.reason else self.keys.dlq_index
        walk = _Walk(self.redis, key, flt.since, flt.until, newest_first, cursor)
        expected = self._expected(flt) if cursor is None else None
        if expected == 0:
            return walk, True, 0
        taken = scanned = 0
        load = load or flt.reads_entries
        while limit is None or taken < limit:
            rows = walk.page(page_size)
            if not rows:
                return walk, True, scanned
            entries = self._load([r[0] for r in rows]) if load else [None] * len(rows)
            matched, consumed, missing = [], len(rows), []
            for i, ((entry_id, score), entry) in enumerate(zip(rows, entries, strict=True)):
                if load and entry is None:  # taken meanwhile, or an index member left behind
                    missing.append(entry_id)
                    continue
                if load and not flt.matches(entry):
                    continue
                matched.append((entry_id, score, entry))
                if limit is not None and taken + len(matched) == limit:
                    consumed = i + 1
                    break
            scanned += consumed
            removed = (act(matched) if matched else []) + self._remove_ids(missing, mode="orphans")
            walk.advance(rows[:consumed], [*removed, *missing])
            taken += len(matched)
            if expected is not None and taken >= expected:
                return walk, True, scanned
            if consumed == len(rows) and len(rows) < page_size:
                return walk, True, scanned
        return walk, False, scanned

    def _by_ids(self, flt: DeadLetterFilter, act, limit: int | None, page_size: int) -> None:
        ids = list(dict.fromkeys(flt.ids))[:limit]
        for start in range(0, len(ids), page_size):
            chunk = ids[start:start + page_size]
            act([(i, 0.0, e) for i, e in zip(chunk, self._load(chunk), strict=True)
                 if e is not None and flt.matches(e)])

    def list(self, *, limit: int = 50, cursor: str | None = None, **filters) -> Page:
        """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = DeadLetterFilter.of(**filters)
        found: list[dict[str, Any]] = []
        if flt.ids:
            self._by_ids(flt, lambda rows: found.extend(e for _, _, e in rows), limit,
                         max(1, limit))
            return Page(found, None, len(flt.ids))
        page_size = PAGE_SIZE if flt.reads_entries else max(1, min(limit, PAGE_SIZE))
        walk, done, scanned = self._walk(
            flt, lambda rows: found.extend(e for _, _, e in rows) or [],
            newest_first=True, limit=limit, cursor=cursor, page_size=page_size, load=True,
        )
        return Page(found, None if done else walk.cursor, scanned)

    def iter_entries(self, *, limit: int | None = None, page_size: int = PAGE_SIZE,
                     **filters) -> Iterable[dict[str, Any]]:
        """Matching entries oldest first, a page at a time (memory stays bounded)."""
        flt = DeadLetterFilter.of(**filters)
        batch: list[dict[str, Any]] = []
        collect = lambda rows: batch.extend(e for _, _, e in rows) or []  # noqa: E731
        if flt.ids:
            self._by_ids(flt, collect, limit, page_size)
            yield from batch
            return
        cursor, remaining = None, limit
        while remaining is None or remaining > 0:
            batch.clear()
            walk, done, _ = self._walk(
                flt, collect, newest_first=False, cursor=cursor, page_size=page_size, load=True,
                limit=page_size if remaining is None else min(page_size, remaining),
            )
            yield from list(batch)
            if remaining is not None:
                remaining -= len(batch)
            if done:
                return
            cursor = walk.cursor

    def matching(self, **filters) -> int:
        """How many entries a filter takes (ZCOUNT without status/event, else a paged walk)."""
        flt = DeadLetterFilter.of(**filters)
        if flt.ids:
            return sum(1 for _ in self.iter_entries(**filters))
        if not flt.reads_entries:
            key = self.keys.dlq_reason(flt.reason) if flt.reason else self.keys.dlq_index
            lo = "-inf" if flt.since is None else repr(float(flt.since))
            hi = "+inf" if flt.until is None else repr(float(flt.until))
            return int(self.redis.zcount(key, lo, hi))
        total = 0

        def tally(rows):
            nonlocal total
            total += len(rows)
            return []

        self._walk(flt, tally, newest_first=False)
        return total

    def stats(self, now_s: float | None = None) -> dict[str, Any]:
        """Counts by reason (exact, ZCARD) and status (the counts hash), oldest and newest."""
        now = time.time() if now_s is None else now_s
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(self.keys.dlq_index)
            pipe.hgetall(self.counts_key)
            pipe.zrange(self.keys.dlq_index, 0, 0, withscores=True)
            pipe.zrange(self.keys.dlq_index, -1, -1, withscores=True)
            for reason in REASONS:
                pipe.zcard(self.keys.dlq_reason(reason))
            total, raw_counts, oldest, newest, *per_reason = pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw_counts.items()}
        by_status: dict[str, int] = {}
        crossed: dict[str, dict[str, int]] = {}
        for name, n in counts.items():
            reason, _, status = name.partition("|")
            by_status[status] = by_status.get(status, 0) + n
            crossed.setdefault(reason, {})[status] = n

        def edge(rows):
            if not rows:
                return None
            member, score = rows[0]
            return {"id": member.decode(), "last_failed_at": iso_ms(score),
                    "age_s": round(max(0.0, now - score), 3)}

        return {
            "total": int(total),
            "by_reason": {r: int(n) for r, n in zip(REASONS, per_reason, strict=True)},
            "by_status": dict(sorted(by_status.items())),
            "by_reason_status": crossed,
            "oldest": edge(oldest),
            "newest": edge(newest),
            "counts_exact": sum(counts.values()) == int(total),
        }

    def recount(self) -> dict[str, int]:
        """Rebuild the counts hash with a full HSCAN (only for drift; run it when quiet)."""
        tally: dict[str, int] = {}
        for _, raw in self.redis.hscan_iter(self.keys.dlq_entries, count=1000):
            entry = json.loads(raw)
            name = f"{entry.get('reason')}|{status_label(entry.get('status'))}"
            tally[name] = tally.get(name, 0) + 1
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.counts_key)
            if tally:
                pipe.hset(self.counts_key, mapping=tally)
            pipe.execute()
        return tally

    def purge(self, *, limit: int | None = None, chunk_size: int = 1000, **filters) -> int:
        """Delete matching entries (oldest first); return how many were deleted."""
        if filters.get("until") is None and not filters.get("ids"):
            filters["until"] = time.time()  # only what the operator saw when confirming
        flt = DeadLetterFilter.of(**filters)
        deleted = 0

        def act(rows):
            nonlocal deleted
            ids = [r[0] for r in rows]
            deleted += len(self._remove_ids(ids, top=flt.until))
            return ids

        self._run(flt, act, limit, chunk_size)
        return deleted

    def _run(self, flt: DeadLetterFilter, act, limit, chunk_size: int) -> None:
        chunk_size = max(1, int(chunk_size))
        if flt.ids:
            self._by_ids(flt, act, limit, chunk_size)
        else:
            self._walk(flt, act, newest_first=False, limit=limit, page_size=chunk_size)

    def trim(self, *, max_age_s: float = 0, max_len: int = 0, now_s: float | None = None,
             max_drop: int | None = None) -> dict[str, int]:
        """Drop the oldest entries past ``max_age_s`` or beyond ``max_len`` (0 = no limit)."""
        now = time.time() if now_s is None else now_s
        budget = max_drop if max_drop is not None else float("inf")
        dropped = {"by_age": 0, "by_len": 0}
        while max_age_s > 0 and budget > 0:
            ids = [m.decode() for m in self.redis.zrange(
                self.keys.dlq_index, "-inf", f"({now - max_age_s!r}", byscore=True, offset=0,
                num=int(min(1000, budget)))]
            if not ids:
                break
            # index members go even when someone else took the entry; count what we dropped
            dropped["by_age"] += len(self._remove_ids(ids, top=now - max_age_s))
            budget -= len(ids)
        while max_len > 0 and budget > 0:
            excess = self.count() - max_len
            if excess <= 0:
                break
            rows = self.redis.zrange(self.keys.dlq_index, 0, int(min(excess, 1000, budget)) - 1,
                                     withscores=True)
            ids = [m.decode() for m, _ in rows]
            dropped["by_len"] += len(self._remove_ids(ids, top=rows[-1][1] if rows else None))
            budget -= len(ids)
        return dropped
