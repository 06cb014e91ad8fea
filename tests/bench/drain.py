"""Drain rate of a backfill: events/s delivered to a 0 ms stand-in with no rate limit.

Ours: ``voucherify-ingest worker`` (threads pool, 16) consuming batch messages as a backfill
writes them. Baseline, measured in the same run: a bare Celery one-task-per-event worker that
POSTs with ``requests`` (``tests/bench/bare_worker.py``), same pool and concurrency. The
stand-in (``python -m voucherify_ingest.standin``) runs in its own process; each side gets the same
pre-loaded queue and the rate is taken between 10% and 90% delivered (start-up excluded).
Medians of ``REPEATS`` runs. Outside quick mode a sweep over batch sizes shows where the drain
rate stops improving (how ``producers.bulk.DEFAULT_BATCH_SIZE`` was chosen).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass

import redis
import requests

from producers import Producer
from producers.bulk import DEFAULT_BATCH_SIZE
from tests.bench import BenchContext, Row, median
from tests.bench.bare_worker import TASK_NAME
from tests.support.procs import ManagedProcess
from voucherify_ingest.messages import build_message
from voucherify_ingest.settings import Settings

APP_ID, APP_TOKEN = "bench-app", "bench-token-value"
CONCURRENCY = 16  # VOUCHERIFY_WORKER_CONCURRENCY's default
REPEATS = 3
POLL_S = 0.2
SWEEP = (1, 10, 25, 50, 100, 200)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def event(n: int) -> dict:
    """A realistic event (~430 bytes of JSON), unique per n."""
    return {
        "event": "order_paid",
        "customer": {
            "source_id": f"user-{n}",
            "email": f"user{n}@example.com",
            "name": "Jane Doe",
            "address": {"city": "Warsaw", "postal_code": "00-001", "line_1": "1 Main St",
                        "country": "PL"},
            "metadata": {"plan": "pro", "signup": "2023-01-02"},
        },
        "referral": {"code": "REF-ABC"},
        "metadata": {"order_id": f"o-{n}", "total": 129.99, "currency": "PLN", "items": 3,
                     "coupon": "SPRING24", "channel": "web"},
    }


class StandInProcess:
    """``python -m voucherify_ingest.standin`` on a free port, in its own process."""

    def __init__(self, workdir: str):
        self.proc = ManagedProcess(
            [sys.executable, "-m", "voucherify_ingest.standin", "--port", "0", "--app-id", APP_ID,
             "--app-token", APP_TOKEN],
            cwd=ROOT, name="standin", log_dir=workdir,
        ).start()
        line = self.proc.wait_for_output(re.compile(r"listening on \S+"), timeout=30)
        self.url = line.split("listening on ", 1)[1]
        self.http = requests.Session()

    def delivered(self) -> int:
        return int(self.http.get(f"{self.url}/_standin/stats", timeout=30).json()["delivered"])

    def reset(self) -> None:
        self.http.post(f"{self.url}/_standin/reset", timeout=30).raise_for_status()

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Drain:
    rate: float  # events/s between 10% and 90% delivered
    cpu_us: float  # worker CPU per event over the same window
    standin_cpu_us: float  # the stand-in's CPU per event (is it the bottleneck?)


def measure(standin: StandInProcess, n: int, worker: ManagedProcess, timeout_s: float) -> Drain:
    """Rate and worker CPU between 10% and 90% of ``n`` delivered (interpolated samples)."""
    samples: list[tuple[float, int, float, float]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        count = standin.delivered()
        samples.append((time.monotonic(), count, cpu_s(worker.pid), cpu_s(standin.proc.pid)))
        if count >= n:
            break
        if not worker.is_running():
            raise RuntimeError(f"worker exited early:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count}/{n} delivered in {timeout_s:.0f}s")
        time.sleep(POLL_S)

    def when(target: float) -> tuple[float, float, float]:
        for before, after in zip(samples, samples[1:], strict=False):
            if after[1] >= target:
                c0, c1 = before[1], after[1]
                share = (target - c0) / (c1 - c0) if c1 > c0 else 1.0
                t, _, u, v = (a + (b - a) * share for a, b in zip(before, after, strict=True))
                return t, u, v
        return samples[-1][0], samples[-1][2], samples[-1][3]

    (t0, u0, v0), (t1, u1, v1) = when(0.1 * n), when(0.9 * n)
    events = 0.8 * n
    return Drain(events / max(t1 - t0, 1e-6), (u1 - u0) / events * 1e6, (v1 - v0) / events * 1e6)


def delete_namespace(client: redis.Redis, ns: str) -> None:
    """Delete every key a benchmark run made under its ``ns`` prefix."""
    for key in client.scan_iter(match=f"{ns}*", count=1000):
        client.delete(key)


def run_ours(ctx: BenchContext, standin: StandInProcess, n: int, batch_size: int, *,
             prepare=None, min_rate: float = 50) -> Drain:
    """Queue ``n`` events (``batch_size`` per message; 0: one each), run our worker, measure.

    ``prepare`` runs after queueing, before the worker starts (default: reset the stand-in);
    ``min_rate`` sets the time budget (n / min_rate seconds, at least 120).
    """
    ns = "bd" + secrets.token_hex(4)
    env = worker_env(ctx, standin, ns)
    producer = Producer(Settings.from_env(env))
    client = redis.Redis.from_url(ctx.redis_url)
    worker = None
    try:
        for start in range(0, n, 5000):
            producer.enqueue_events([event(i) for i in range(start, min(n, start + 5000))],
                                    batch_size=batch_size)
        (prepare or standin.reset)()
        worker = ManagedProcess(
            [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(CONCURRENCY), "-P",
             "threads"], env=env, cwd=ROOT, name="ours", log_dir=ctx.workdir,
        ).start()
        return measure(standin, n, worker, timeout_s=max(120.0, n / min_rate))
    finally:
        if worker is not None:
            worker.terminate()
        producer.close()
        delete_namespace(client, ns)
        client.close()


def worker_env(ctx: BenchContext, standin: StandInProcess, ns: str) -> dict[str, str]:
    """Our worker's environment for a benchmark drain (rate limit off, JSON logs)."""
    return {
        "REDIS_URL": ctx.redis_url,
        "VOUCHERIFY_API_URL": standin.url,
        "VOUCHERIFY_APP_ID": APP_ID,
        "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "VOUCHERIFY_QUEUE": f"{ns}-events",
        "VOUCHERIFY_KEY_PREFIX": ns,
        "VOUCHERIFY_RATE_LIMIT": "off",
        "VOUCHERIFY_LOG_FORMAT": "json",
        "VOUCHERIFY_LOG_LEVEL": "INFO",
    }


def push_bare_events(client: redis.Redis, queue: str, n: int) -> None:
    """Queue ``n`` one-event messages for the bare Celery worker (tests/bench/bare_worker.py)."""
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.lpush(queue, build_message(TASK_NAME, [event(i), f"bare-{i}"], queue))
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()


def bare_worker_command(ctx: BenchContext, standin: StandInProcess, queue: str,
                        concurrency: int = CONCURRENCY) -> tuple[list[str], dict[str, str]]:
    """argv and env of the bare Celery worker: the baseline every worker benchmark uses."""
    env = {"BENCH_BROKER": ctx.redis_url, "BENCH_QUEUE": queue, "BENCH_API": standin.url,
           "BENCH_APP_ID": APP_ID, "BENCH_APP_TOKEN": APP_TOKEN}
    argv = [sys.executable, "-m", "celery", "-A", "tests.bench.bare_worker", "worker", "-P",
            "threads", "-c", str(concurrency), "-Q", queue, "--without-mingle",
            "--without-gossip", "--without-heartbeat", "-l", "WARNING"]
    return argv, env


def run_bare(ctx: BenchContext, standin: StandInProcess, n: int, *, prepare=None) -> Drain:
    """The baseline of ``run_ours``: ``n`` bare task messages, the bare worker, measured.

    ``prepare`` runs after queueing, before the worker starts (default: reset the stand-in).
    """
    ns = "bb" + secrets.token_hex(4)
    queue = f"{ns}-events"
    client = redis.Redis.from_url(ctx.redis_url)
    worker = None
    try:
        push_bare_events(client, queue, n)
        (prepare or standin.reset)()
        argv, env = bare_worker_command(ctx, standin, queue)
        worker = ManagedProcess(argv, env=env, cwd=ROOT, name="bare",
                                log_dir=ctx.workdir).start()
        return measure(standin, n, worker, timeout_s=max(120.0, n / 20))
    finally:
        if worker is not None:
            worker.terminate()
        client.delete(queue)
        delete_namespace(client, ns)
        client.close()


def run(ctx: BenchContext) -> list[Row]:
    n = 3_000 if ctx.quick else 20_000
    standin = StandInProcess(ctx.workdir)
    try:
        ours: list[Drain] = []
        bare: list[Drain] = []
        for _ in range(REPEATS):
            bare.append(run_bare(ctx, standin, n))
            ours.append(run_ours(ctx, standin, n, DEFAULT_BATCH_SIZE))
        rate, bare_rate = median([d.rate for d in ours]), median([d.rate for d in bare])
        cpu, bare_cpu = median([d.cpu_us for d in ours]), median([d.cpu_us for d in bare])
        standin_cpu = median([d.standin_cpu_us for d in ours + bare])
        setup = f"{n:,} events, threads x{CONCURRENCY}, median of {REPEATS}"
        rows = [
            Row("backfill drain", rate, "events/s", bare_rate, "bare Celery task per event",
                goal=">= 2x baseline", met=rate >= 2 * bare_rate,
                note=f"batch {DEFAULT_BATCH_SIZE}, {setup}"),
            Row("worker CPU per event delivered", cpu, "us", bare_cpu,
                "bare Celery task per event",
                note=f"batch {DEFAULT_BATCH_SIZE}; stand-in {standin_cpu:,.0f} us/event"),
        ]
        if not ctx.quick and os.environ.get("BENCH_DRAIN_SWEEP", "1") != "0":
            for size in SWEEP:
                drain = run_ours(ctx, standin, 10_000, size)
                rows.append(Row(f"drain at batch size {size}", drain.rate, "events/s",
                                bare_rate, "bare Celery task per event",
                                note=f"10,000 events, one run, {drain.cpu_us:,.0f} us CPU/event"))
        runs = {"ours": [round(d.rate) for d in ours], "bare": [round(d.rate) for d in bare]}
        print(f"# drain runs (events/s): {json.dumps(runs)}", flush=True)
        return rows
    finally:
        standin.stop()
