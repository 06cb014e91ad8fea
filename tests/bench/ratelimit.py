"""The shared rate limit: how much of the limit it uses, how well it holds it, what it costs.

For limits of 10/s, 50/s and 200/s with 1 and 4 ``voucherify-ingest worker`` processes (threads
pool, 16 each) against the stand-in at 20 ms latency, a backlog of ``CELL_S`` seconds' worth of
events: achieved rate / limit (after the initial burst), the busiest one-second window / limit,
and the 429s the stand-in answered. The stand-in enforces the same rate itself, with a bucket
of our burst plus 100 ms of slots for arrival jitter (Voucherify counts per minute). Our burst
is 50 ms of slots (at least 1). Each achieved row also names what the same number of workers
deliver with the limiter off (in the same run): when that is below the limit, the machine, not
the limiter, is what falls short.

The limiter's own cost is one ``EVALSHA`` per event (two when the slot is in the future: the
cool-down re-check), measured per call beside a bare ``PING`` on the same connection, in
interleaved rounds in the same run.

    python -m tests.bench --only ratelimit [--quick]
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time

import redis

from producers import Producer
from tests.bench import BenchContext, Row, median
from tests.support.procs import ManagedProcess
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn
from worker.ratelimit import RateLimiter, limiter_key, parse_rate_limit

APP_ID, APP_TOKEN = "bench-app", "bench-token-value"
LIMITS_PER_S = (10, 50, 200)
WORKER_COUNTS = (1, 4)
CONCURRENCY = 16
LATENCY_S = 0.020
CELL_S, QUICK_CELL_S = 8.0, 3.0
READY_TIMEOUT_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def burst_for(limit_per_s: int) -> int:
    return max(1, int(limit_per_s * 0.05))


def worst_window(times: list[float], window_s: float = 1.0) -> int:
    """Most arrivals in any half-open window of ``window_s`` seconds."""
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


def _event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"},
            "metadata": {"order_id": f"o-{n}", "total": 129.99}}


def _cleanup(client: redis.Redis, ns: str) -> None:
    for key in client.scan_iter(match=f"{ns}*", count=1000):
        client.delete(key)


def _log_count(proc: ManagedProcess, event: str) -> int:
    count = 0
    for line in proc.output().splitlines():
        try:
            if json.loads(line).get("event") == event:
                count += 1
        except (ValueError, AttributeError):
            continue
    return count


def drive(ctx: BenchContext, *, workers: int, rate_limit: str, n: int,
          api_limit: tuple[int, int] | None, timeout_s: float) -> tuple[list, int]:
    """Start ``workers`` processes, enqueue ``n`` events once all are ready, wait for them.

    Returns what the stand-in received and how many late slots the workers left unused."""
    ns = "brl" + secrets.token_hex(4)
    standin = StandIn(APP_ID, APP_TOKEN).start()
    standin.set_latency(LATENCY_S)
    if api_limit is not None:
        standin.set_rate_limit(api_limit[0], burst=api_limit[1])
    env = {
        "REDIS_URL": ctx.redis_url, "VOUCHERIFY_API_URL": standin.url,
        "VOUCHERIFY_APP_ID": APP_ID, "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "VOUCHERIFY_QUEUE": f"{ns}-events", "VOUCHERIFY_KEY_PREFIX": ns,
        "VOUCHERIFY_RATE_LIMIT": rate_limit, "VOUCHERIFY_LOG_FORMAT": "json",
    }
    client = redis.Redis.from_url(ctx.redis_url)
    producer = Producer(Settings.from_env(env))
    procs: list[ManagedProcess] = []
    try:
        for i in range(workers):
            procs.append(ManagedProcess(
                [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(CONCURRENCY),
                 "-P", "threads"], env=env, cwd=ROOT, name=f"rl-{i}", log_dir=ctx.workdir,
            ).start())
        for proc in procs:
            proc.wait_for_output('"worker_ready"', timeout=READY_TIMEOUT_S)
        producer.enqueue_events([_event(i) for i in range(n)])
        if not standin.wait_for_delivered(n, timeout=timeout_s):
            raise RuntimeError(f"{rate_limit} x{workers}: only {len(standin.delivered())}/{n}")
        time.sleep(0.3)
        return standin.received(), sum(_log_count(p, "rate_limit_slot_missed") for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
        producer.close()
        standin.stop()
        _cleanup(client, ns)
        client.close()


def capacity(ctx: BenchContext, workers: int, cell_s: float) -> float:
    """Deliveries/s of ``workers`` processes with the limiter off: what this machine allows."""
    n = int(max(LIMITS_PER_S) * cell_s)
    received, _ = drive(ctx, workers=workers, rate_limit="off", n=n, api_limit=None,
                        timeout_s=cell_s * 10 + 30)
    arrivals = sorted(r.mono for r in received)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def run_cell(ctx: BenchContext, limit: int, workers: int, cell_s: float,
             bare_rate: float) -> list[Row]:
    burst = burst_for(limit)
    n = int(limit * cell_s)
    received, missed = drive(
        ctx, workers=workers, rate_limit=f"{limit}/s,burst={burst}", n=n,
        api_limit=(limit, burst + max(1, math.ceil(limit * 0.1))), timeout_s=cell_s * 5 + 30,
    )
    arrivals = sorted(r.mono for r in received)
    paced = arrivals[burst - 1:]  # after the initial burst, one interval per request
    achieved = (len(paced) - 1) / (paced[-1] - paced[0]) / limit
    worst = worst_window(arrivals)
    too_many = sum(1 for r in received if r.status == 429)
    bound = (limit + burst) / limit
    cell = f"ratelimit {limit}/s x{workers} worker{'s' if workers > 1 else ''}"
    machine = f"; limiter off: {bare_rate:.0f}/s" + (" < limit" if bare_rate < limit else "")
    return [
        Row(f"{cell}: achieved / limit", achieved, "x", goal=">= 0.97", met=achieved >= 0.97,
            note=f"burst {burst}, {n} events, {missed} late slots unused{machine}"),
        Row(f"{cell}: worst 1 s window / limit", worst / limit, "x",
            goal=f"<= {bound:.2f} (limit + burst)", met=worst / limit <= bound + 1e-9,
            note=f"{worst} requests"),
        Row(f"{cell}: 429s", too_many, "", goal="0", met=too_many == 0),
    ]


def _per_call_us(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def measure_overhead(ctx: BenchContext) -> list[Row]:
    """Median per-call time of the limiter's scripts and of PING, interleaved in rounds."""
    client = redis.Redis.from_url(ctx.redis_url)
    ns = "brlo" + secrets.token_hex(4)
    limiter = RateLimiter(client, parse_rate_limit("1000000/s"),  # always a slot: no sleeping
                          key=limiter_key(ns, APP_ID, "http://127.0.0.1"))
    rounds, calls = (5, 300) if ctx.quick else (15, 1000)
    ping, acquire, recheck = [], [], []
    try:
        limiter.acquire(1.0)
        limiter.paused_for()  # scripts loaded
        for _ in range(rounds):
            ping.append(_per_call_us(client.ping, calls))
            acquire.append(_per_call_us(lambda: limiter.acquire(1.0), calls))
            recheck.append(_per_call_us(limiter.paused_for, calls))
    finally:
        _cleanup(client, ns)
        client.close()
    base = median(ping)
    both = median(acquire) + median(recheck)
    return [
        Row("ratelimit overhead: acquire (one EVALSHA) per call", median(acquire), "us",
            baseline=base, baseline_name="bare PING", goal="<= 1.5x PING",
            met=median(acquire) <= 1.5 * base),
        Row("ratelimit overhead: acquire + cool-down re-check (slot in the future)", both,
            "us", baseline=base, baseline_name="bare PING", goal="-",
            note="two round trips when a worker sleeps for its slot"),
    ]


def run(ctx: BenchContext) -> list[Row]:
    cell_s = QUICK_CELL_S if ctx.quick else CELL_S
    rows = measure_overhead(ctx)
    bare = {workers: capacity(ctx, workers, cell_s) for workers in WORKER_COUNTS}
    for limit in LIMITS_PER_S:
        for workers in WORKER_COUNTS:
            rows += run_cell(ctx, limit, workers, cell_s, bare[workers])
    return rows
