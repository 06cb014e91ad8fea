"""One rate limit for all workers, end to end: real ``voucherify-ingest worker`` processes share
a limit through the real Redis, against the loopback stand-in, which enforces a rate itself and
records arrival times. Assertions are on what the stand-in received and what is in Redis."""

from __future__ import annotations

import json
import time

import pytest

from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.standin import respond

pytestmark = pytest.mark.e2e

LIMIT_PER_S = 20
BURST = 2
# The stand-in's own bucket is two slots (100 ms) deeper than ours: arrival times carry the
# jitter of thread wake-ups and HTTP on a shared machine; Voucherify counts per minute.
STANDIN_BURST = BURST + 2
IN_FLIGHT_GRACE_S = 0.2  # requests already on the wire when the first 429 came back


def _event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


def _worst_window(times: list[float], window_s: float = 1.0) -> int:
    """Most arrivals in any half-open window of ``window_s`` seconds."""
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


def _log_events(proc) -> list[dict]:
    out = []
    for line in proc.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _start_three(start_worker, limit: str):
    return [
        start_worker(concurrency=8, name=f"worker-{i}", VOUCHERIFY_RATE_LIMIT=limit)
        for i in range(3)
    ]


def test_three_workers_hold_one_shared_limit_and_use_it(standin, producer, start_worker):
    n = LIMIT_PER_S * 15  # 15 s of backlog
    standin.set_rate_limit(LIMIT_PER_S, burst=STANDIN_BURST)
    standin.set_latency(0.02)
    workers = _start_three(start_worker, f"{LIMIT_PER_S}/s,burst={BURST}")
    ids = producer.enqueue_events([_event(i) for i in range(n)])  # all three see the backlog
    assert standin.wait_for_delivered(n, timeout=60), f"only {len(standin.delivered())} of {n}"
    time.sleep(0.5)  # anything sent twice or late would show up now

    received = standin.received()
    assert standin.too_many_count() == 0
    assert [r.status for r in received if r.status != 200] == []
    counts = standin.delivered_ids()
    assert set(counts) == set(ids) and max(counts.values()) == 1

    arrivals = sorted(r.mono for r in received)
    worst = _worst_window(arrivals)
    assert worst <= LIMIT_PER_S + BURST, f"{worst} requests in one second"
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert achieved >= 0.95 * LIMIT_PER_S, f"achieved {achieved:.2f}/s of {LIMIT_PER_S}/s"

    per_worker = [
        sum(1 for e in _log_events(w) if e.get("event") == "delivery"
            and e.get("outcome") == "delivered")
        for w in workers
    ]
    print(f"worst 1 s window {worst}, achieved {achieved:.2f}/s, per worker {per_worker}")
    assert sum(per_worker) == n
    assert all(k > 0 for k in per_worker), f"a worker never got a slot: {per_worker}"


def test_a_429_storm_pauses_every_worker_then_resumes_at_pace(standin, producer, start_worker):
    n = LIMIT_PER_S * 10
    standin.set_latency(0.02)
    _start_three(start_worker, f"{LIMIT_PER_S}/s,burst={BURST}")
    ids = producer.enqueue_events([_event(i) for i in range(n)])
    deadline = time.monotonic() + 30
    while len(standin.delivered()) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    storm_at = time.monotonic()
    delivered_before = len(standin.delivered())
    standin.refuse_for(3, 3)  # everything 429 with Retry-After: 3 for the next 3 s
    assert standin.wait_for_delivered(n, timeout=90), f"only {len(standin.delivered())} of {n}"
    time.sleep(0.5)

    received = sorted(standin.received(), key=lambda r: r.mono)
    refused = [r for r in received if r.status == 429]
    assert refused, (
        "the storm never met a request: the test proves nothing "
        f"({delivered_before} delivered before it; arrivals around it: "
        f"{[round(r.mono - storm_at, 3) for r in received if abs(r.mono - storm_at) < 5]})"
    )
    first_429 = refused[0].mono
    cooldown_end = first_429 + 3.0  # Retry-After: 3 from the first 429 at the earliest
    during = [r for r in received if first_429 + IN_FLIGHT_GRACE_S < r.mono < cooldown_end]
    assert len(during) <= 1, f"{len(during)} requests during the cool-down (one probe allowed)"
    assert len([r for r in refused if r.mono > first_429 + IN_FLIGHT_GRACE_S]) <= 1

    # nothing lost, nothing twice, everything after the cool-down delivered
    counts = standin.delivered_ids()
    assert set(counts) == set(ids) and max(counts.values()) == 1
    after = [r for r in received if r.mono >= cooldown_end]
    assert after and all(r.status == 200 for r in after)
    # ... at the configured pace: no thundering herd when the cool-down ends
    worst = _worst_window([r.mono for r in after])
    print(f"{len(refused)} refused, {len(during)} sent in the cool-down, worst window {worst}")
    assert worst <= LIMIT_PER_S + BURST, f"{worst} requests in one second after the cool-down"


def test_quota_exhausted_pauses_the_fleet_instead_of_dead_lettering(
    standin, producer, start_worker, pipeline_settings, redis_client
):
    """Issue 19 reversed the old rule (402 / api_calls_cycle went to the dead-letter store as
    quota_exhausted): the fleet now waits for the cycle to reset and nothing is dead-lettered.
    A short cycle (VOUCHERIFY_CYCLE_LENGTH_S) stands in for the month."""
    standin.plan(
        respond(402),
        respond(429, headers={"X-Rate-Limit-Type": "api_calls_cycle", "Retry-After": "1"}),
    )
    quota_ids = producer.enqueue_events([_event(1), _event(2)])
    worker = start_worker(concurrency=1, VOUCHERIFY_RATE_LIMIT="50/s",
                          VOUCHERIFY_CYCLE_LENGTH_S="6")
    assert standin.wait_for_delivered(2, timeout=40), "delivery never resumed after the reset"
    counts = standin.delivered_ids()
    assert set(counts) == set(quota_ids) and max(counts.values()) == 1
    # after each refusal the next call comes only in a later cycle: the whole fleet waited
    received = sorted(standin.received(), key=lambda r: r.at)
    assert [r.status for r in received] == [402, 429, 200, 200]
    for refused, following in zip(received[:2], received[1:3], strict=True):
        assert following.at // 6 > refused.at // 6, "a call was made in the spent cycle"
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    assert dlq.count() == 0
    counters = redis_client.hgetall(f"{pipeline_settings.key_prefix}:stats:counters")
    assert b"dead_lettered:quota_exhausted" not in counters and b"retried" not in counters
    loud = [e for e in _log_events(worker) if e.get("why") == "cycle_spent"]
    assert loud and all(e["level"] == "error" for e in loud)
