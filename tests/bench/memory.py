"""Worker memory while draining a deep queue: peak RSS with 100,000 events queued.

A worker must not hold more of the queue than its prefetch (one message per thread), so its
memory should not depend on the queue's depth. Ours: one ``voucherify-ingest worker`` process
(threads x16, the default pool) draining 100,000 one-event messages from a zero-latency
stand-in (in its own process). Baseline, same run: the bare Celery task worker
(``tests/bench/bare_worker.py``) draining the same number. Peak RSS is the kernel's high-water
mark (``VmHWM`` in ``/proc/PID/status``), so no spike between samples is missed; the RSS once
ready is shown beside it. Quick mode drains 5,000.
"""

from __future__ import annotations

import secrets
import sys
import time

import redis

from producers import Producer
from tests.bench import BenchContext, Row
from tests.bench.drain import (
    CONCURRENCY,
    ROOT,
    StandInProcess,
    bare_worker_command,
    delete_namespace,
    event,
    measure,
    push_bare_events,
    worker_env,
)
from tests.support.procs import ManagedProcess
from voucherify_ingest.settings import Settings

MB = 1024 * 1024


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in kB."""
    values = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _drain(ctx: BenchContext, standin: StandInProcess, n: int, argv: list[str], env: dict,
           name: str) -> tuple[float, float, float]:
    """(RSS once the worker took its first messages, peak RSS, rate) in MB, MB, events/s."""
    standin.reset()
    worker = ManagedProcess(argv, env=env, cwd=ROOT, name=name, log_dir=ctx.workdir).start()
    try:
        deadline_s = max(300.0, n / 20)
        start = time.monotonic()
        while standin.delivered() < min(100, n) and time.monotonic() - start < 60:
            time.sleep(0.1)
        ready_kb = memory_kb(worker.pid)["VmRSS"]
        drain = measure(standin, n, worker, timeout_s=deadline_s)
        peak_kb = memory_kb(worker.pid)["VmHWM"]
        return ready_kb / 1024, peak_kb / 1024, drain.rate
    finally:
        worker.terminate()


def run(ctx: BenchContext) -> list[Row]:
    n = 5_000 if ctx.quick else 100_000
    standin = StandInProcess(ctx.workdir)
    client = redis.Redis.from_url(ctx.redis_url)
    ns = "bm" + secrets.token_hex(4)
    try:
        queue = f"{ns}-bare"
        push_bare_events(client, queue, n)
        bare_argv, bare_env = bare_worker_command(ctx, standin, queue, CONCURRENCY)
        bare = _drain(ctx, standin, n, bare_argv, bare_env, "bare")

        env = worker_env(ctx, standin, ns)
        producer = Producer(Settings.from_env(env))
        try:
            for start in range(0, n, 5000):
                producer.enqueue_events([event(i) for i in range(start, min(n, start + 5000))])
        finally:
            producer.close()
        ours = _drain(ctx, standin, n, [
            sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(CONCURRENCY), "-P",
            "threads",
        ], env, "ours")
    finally:
        standin.stop()
        delete_namespace(client, ns)
        client.close()
    ready, peak, rate = ours
    bare_ready, bare_peak, bare_rate = bare
    return [
        Row(f"worker peak RSS draining {n:,} queued events", peak, "MB", bare_peak,
            "bare Celery task worker", goal="< 150 MB, flat in queue depth",
            met=peak < 150 and peak - ready < 50,
            note=f"threads x{CONCURRENCY}; RSS when draining began {ready:.0f} MB "
                 f"(bare {bare_ready:.0f} MB); {rate:,.0f} vs {bare_rate:,.0f} events/s"),
    ]
