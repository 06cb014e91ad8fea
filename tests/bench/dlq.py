"""The dead-letter queue at 100,000 entries: replay throughput and ``dlq list`` page latency.

Replay, ours: ``DeadLetterQueue.replay`` (pages read from the index, messages built, one atomic
script per chunk of 500 that checks each entry, LPUSHes its message and deletes it). Baseline,
measured on the same entries in the same run: a naive replay with no atomicity (read the same
pages, build the same messages, pipelined LPUSH + HDEL + ZREM). The gap is what crash safety and
exclusivity cost.

List, ours: one page of 50, newest first, through ``DeadLetterQueue.list`` (ZRANGE BYSCORE REV
LIMIT + HMGET + JSON decode), also by reason, deep in the index through a cursor, and by a rare
status (which walks pages; shown without a goal). Baseline: the bare ZREVRANGE + HMGET round
trips with the same JSON decoding. The whole ``voucherify-ingest dlq list`` command is also
timed beside ``voucherify-ingest --version`` (Python start-up), both as subprocesses.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import redis

from tests.bench import BenchContext, Row, median, percentile
from tests.support.redis_server import delete_namespace_keys
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.keys import Keys

FULL_N, QUICK_N = 100_000, 10_000
PAGE = 50
RARE_EVERY = 5_000  # one status-404 entry per this many
REPLAY_GOAL = 5_000.0
BARE_LIST = "bare ZREVRANGE+HMGET+decode"
LIST_GOAL_MS = 50.0
DAY_S = 86_400


def _payload(n: int) -> dict:
    """A realistic event (~430 bytes of JSON), unique per n."""
    return {
        "event": "order_paid",
        "customer": {"source_id": f"user-{n}", "email": f"user{n}@example.com", "name": "Jane Doe",
                     "address": {"city": "Warsaw", "postal_code": "00-001", "line_1": "1 Main St",
                                 "country": "PL"},
                     "metadata": {"plan": "pro", "signup": "2023-01-02"}},
        "referral": {"code": "REF-ABC"},
        "metadata": {"order_id": f"o-{n}", "total": 129.99, "currency": "PLN", "items": 3,
                     "coupon": "SPRING24", "channel": "web"},
    }


def seed(dlq: DeadLetterQueue, n: int) -> None:
    start = time.time() - 30 * DAY_S
    step = 30 * DAY_S / n
    with dlq.redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            rare = i % RARE_EVERY == 0
            pipe_entry = make_entry(
                event_id=f"bench-{i:07d}", payload=_payload(i),
                reason="rejected" if rare else "retries_exhausted",
                error={"status": 404 if rare else 503, "message": "Service Unavailable",
                       "request_id": f"req-{i}"},
                attempts=9, enqueued_at="2024-01-01T00:00:00.000Z", now_s=start + i * step,
            )
            dlq.add(pipe_entry, pipe)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()


def _timed_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def naive_replay(dlq: DeadLetterQueue, chunk: int = 500) -> int:
    """The baseline: same reads and messages, no check and no atomicity."""
    client, keys, moved = dlq.redis, dlq.keys, 0
    while True:
        ids = [m.decode() for m in client.zrange(keys.dlq_index, 0, chunk - 1)]
        if not ids:
            return moved
        entries = dlq._load(ids)
        with client.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.queue, *[dlq.message_for(e) for e in entries if e])
            pipe.hdel(keys.dlq_entries, *ids)
            pipe.zrem(keys.dlq_index, *ids)
            for reason in ("retries_exhausted", "rejected"):
                pipe.zrem(keys.dlq_reason(reason), *ids)
            pipe.execute()
        moved += len(ids)


def _cli_ms(env: dict, argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", *argv], env=env, check=True,
                       capture_output=True, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def run(ctx: BenchContext) -> list[Row]:
    n = QUICK_N if ctx.quick else FULL_N
    repeats = 30 if ctx.quick else 100
    ns = "bdlq" + secrets.token_hex(4)
    keys = Keys(prefix=ns, queue=f"{ns}-events")
    client = redis.Redis.from_url(ctx.redis_url, socket_timeout=60)
    dlq = DeadLetterQueue(client, keys)
    rows: list[Row] = []
    try:
        seed(dlq, n)
        size = f"{n:,} entries"

        def bare_page():  # what any listing must do: the newest ids, their entries, decoded
            ids = client.zrevrange(keys.dlq_index, 0, PAGE - 1)
            [json.loads(raw) for raw in client.hmget(keys.dlq_entries, ids)]

        base = _timed_ms(bare_page, repeats)
        first = _timed_ms(lambda: dlq.list(limit=PAGE), repeats)
        rows.append(Row(f"dlq list page of {PAGE}, newest first [{size}]", median(first), "ms",
                        median(base), BARE_LIST, f"< {LIST_GOAL_MS:g} ms",
                        percentile(first, 95) < LIST_GOAL_MS,
                        note=f"p95 {percentile(first, 95):.2f} ms"))
        by_reason = _timed_ms(lambda: dlq.list(limit=PAGE, reason="retries_exhausted"), repeats)
        rows.append(Row(f"dlq list --reason page [{size}]", median(by_reason), "ms", median(base),
                        BARE_LIST, f"< {LIST_GOAL_MS:g} ms",
                        percentile(by_reason, 95) < LIST_GOAL_MS))
        deep = dlq.list(limit=PAGE, until=time.time() - 25 * DAY_S).next_cursor
        deep_ms = _timed_ms(lambda: dlq.list(limit=PAGE, cursor=deep), repeats)
        rows.append(Row(f"dlq list page deep in the index (cursor) [{size}]", median(deep_ms),
                        "ms", median(base), BARE_LIST, f"< {LIST_GOAL_MS:g} ms",
                        percentile(deep_ms, 95) < LIST_GOAL_MS))
        rare = _timed_ms(lambda: dlq.list(limit=PAGE, status=404), 3)
        rows.append(Row(f"dlq list --status 404 (1 in {RARE_EVERY:,}: walks every page) [{size}]",
                        median(rare), "ms", median(base), BARE_LIST,
                        note="no goal: a filter on a field with no index"))

        env = {**os.environ, "REDIS_URL": ctx.redis_url, "VOUCHERIFY_KEY_PREFIX": ns,
               "VOUCHERIFY_QUEUE": keys.queue}
        cli_repeats = 3 if ctx.quick else 5
        start_ms = _cli_ms(env, ["--version"], cli_repeats)
        cli_ms = _cli_ms(env, ["dlq", "list", "--limit", str(PAGE), "--json"], cli_repeats)
        rows.append(Row(f"`voucherify-ingest dlq list` whole command [{size}]", cli_ms, "ms",
                        start_ms, "`voucherify-ingest --version`",
                        note=f"{cli_ms - start_ms:.0f} ms over Python start-up"))

        started = time.perf_counter()
        result = dlq.replay(chunk_size=500)
        replay_s = time.perf_counter() - started
        assert result.replayed == n, result
        ours = result.replayed / replay_s
        client.delete(keys.queue, keys.dlq_entries, keys.dlq_index, dlq.counts_key,
                      *(keys.dlq_reason(r) for r in ("rejected", "retries_exhausted")))
        seed(dlq, n)
        started = time.perf_counter()
        moved = naive_replay(dlq)
        bare = moved / (time.perf_counter() - started)
        rows.append(Row(f"dlq replay, atomic chunks of 500 [{size}]", ours, "entries/s", bare,
                        "naive pipelined LPUSH+HDEL", f">= {REPLAY_GOAL:,.0f}/s",
                        ours >= REPLAY_GOAL))
    finally:
        delete_namespace_keys(client, ns)
        client.close()
    return rows
