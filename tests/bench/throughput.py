"""Worker throughput, one event per message, one worker process.

- Against a zero-latency stand-in: events/s of one ``voucherify-ingest worker`` process
  (threads x16: the default pool) vs a bare Celery task doing the same ``requests`` POST
  (``tests/bench/bare_worker.py``, same pool and concurrency). This is the per-event cost of
  what we add (ledger claim, outcome transaction, counters, atomic take, one log line).
- Against a 50 ms stand-in with the default pool: both sides approach the concurrency bound
  (16 / 0.05 s = 320 events/s, less the client's own time per call); ours must stay within
  10% of the bare task.

The stand-in runs in its own process (``python -m voucherify_ingest.standin``); the rate is taken
between
10% and 90% delivered (start-up excluded); medians of ``REPEATS`` runs (one in quick mode).
"""

from __future__ import annotations

from tests.bench import BenchContext, Row, drain, median
from tests.bench.drain import (
    CONCURRENCY,
    Drain,
    StandInProcess,
)

REPEATS = 3
LATENCY_S = 0.05


def _set_latency(standin: StandInProcess, latency_s: float) -> None:
    standin.reset()
    response = standin.http.post(f"{standin.url}/_standin/config",
                                 json={"latency_s": latency_s}, timeout=30)
    response.raise_for_status()


def run_ours(ctx: BenchContext, standin: StandInProcess, n: int, latency_s: float) -> Drain:
    """One event per message (what a web app's enqueue_event produces)."""
    return drain.run_ours(ctx, standin, n, 0,
                          prepare=lambda: _set_latency(standin, latency_s), min_rate=20)


def run_bare(ctx: BenchContext, standin: StandInProcess, n: int, latency_s: float) -> Drain:
    return drain.run_bare(ctx, standin, n, prepare=lambda: _set_latency(standin, latency_s))


def _pair(ctx, standin, n, latency_s, repeats) -> tuple[list[Drain], list[Drain]]:
    ours, bare = [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both sides alike
        bare.append(run_bare(ctx, standin, n, latency_s))
        ours.append(run_ours(ctx, standin, n, latency_s))
    return ours, bare


def run(ctx: BenchContext) -> list[Row]:
    repeats = 1 if ctx.quick else REPEATS
    n_fast = 2_000 if ctx.quick else 20_000
    n_slow = 1_000 if ctx.quick else 6_000
    standin = StandInProcess(ctx.workdir)
    try:
        ours, bare = _pair(ctx, standin, n_fast, 0.0, repeats)
        rate, bare_rate = median([d.rate for d in ours]), median([d.rate for d in bare])
        cpu, bare_cpu = median([d.cpu_us for d in ours]), median([d.cpu_us for d in bare])
        slow_ours, slow_bare = _pair(ctx, standin, n_slow, LATENCY_S, repeats)
        slow, slow_base = median([d.rate for d in slow_ours]), median([d.rate for d in slow_bare])
    finally:
        standin.stop()
    bound = CONCURRENCY / LATENCY_S
    setup = f"1 process, threads x{CONCURRENCY}, median of {repeats}"
    return [
        Row("worker throughput, 0 ms API", rate, "events/s", bare_rate,
            "bare Celery task, same POST", goal=">= 0.5x baseline", met=rate >= 0.5 * bare_rate,
            note=f"{n_fast:,} events, one per message, {setup}"),
        Row("worker CPU per event, 0 ms API", cpu, "us", bare_cpu,
            "bare Celery task, same POST", note=setup),
        Row("worker throughput, 50 ms API", slow, "events/s", slow_base,
            "bare Celery task, same POST", goal=">= 0.9x baseline", met=slow >= 0.9 * slow_base,
            note=f"{n_slow:,} events, {setup}; bound {bound:.0f}/s = 16 / 50 ms"),
    ]
