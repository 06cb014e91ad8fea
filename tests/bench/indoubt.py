"""In-doubt sends: what each policy gives under faults, and what the bookkeeping costs.

1. Per policy (hold, verify, resend), the chaos kill scenario (``tests/chaos/kills.py``: two
   workers, one SIGKILLed every ~2 s, 5% of answers stalled past the read timeout): events the
   API recorded twice, lost, held, and lookups per in-doubt send.
2. The cost of the bookkeeping (a send record per event, written with the claim): one worker
   process, 0 ms stand-in, one event per message, policy ``hold`` (bookkeeping on) against
   ``resend`` (no send records: the worker as it was before in-doubt handling), interleaved in
   the same run; goal within 5%. The window between the API's answer and the ledger write
   (``answer_to_ledger_ms`` on each delivery's log line) is reported from the same runs.
"""

from __future__ import annotations

import json
import secrets
import sys

import redis

from producers import Producer
from tests.bench import BenchContext, Row, median, percentile
from tests.bench.drain import (
    CONCURRENCY,
    ROOT,
    StandInProcess,
    delete_namespace,
    event,
    measure,
    worker_env,
)
from tests.chaos.kills import run_kills
from tests.chaos.remote_standin import RemoteStandIn
from tests.support.procs import ManagedProcess
from voucherify_ingest.settings import Settings

REPEATS = 3
MARKER = "ingest_event_id"
POLICIES = {
    "hold": {"VOUCHERIFY_IN_DOUBT": "hold"},
    "verify": {"VOUCHERIFY_IN_DOUBT": "verify", "VOUCHERIFY_EVENT_ID_METADATA_KEY": MARKER,
               "VOUCHERIFY_IN_DOUBT_GRACE_S": "3"},
    "resend": {"VOUCHERIFY_IN_DOUBT": "resend"},
}


def _drain(ctx: BenchContext, standin: StandInProcess, n: int, extra: dict[str, str]):
    """Queue ``n`` single-event messages, run one worker with ``extra`` env, measure; returns
    (Drain, the answer-to-ledger times in ms from the worker's log)."""
    ns = "bi" + secrets.token_hex(4)
    env = {**worker_env(ctx, standin, ns), **extra}
    producer = Producer(Settings.from_env(env))
    client = redis.Redis.from_url(ctx.redis_url)
    worker = None
    try:
        for start in range(0, n, 5000):
            producer.enqueue_events([event(i) for i in range(start, min(n, start + 5000))])
        standin.reset()
        worker = ManagedProcess(
            [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(CONCURRENCY),
             "-P", "threads"], env=env, cwd=ROOT, name="indoubt", log_dir=ctx.workdir,
        ).start()
        result = measure(standin, n, worker, timeout_s=max(120.0, n / 20))
        windows = []
        for line in worker.output().splitlines():
            if '"answer_to_ledger_ms"' in line:
                try:
                    windows.append(float(json.loads(line)["answer_to_ledger_ms"]))
                except (ValueError, KeyError):
                    pass
        return result, windows
    finally:
        if worker is not None:
            worker.terminate()
        producer.close()
        delete_namespace(client, ns)
        client.close()


def _cost_rows(ctx: BenchContext) -> list[Row]:
    repeats = 1 if ctx.quick else REPEATS
    n = 2_000 if ctx.quick else 10_000
    standin = StandInProcess(ctx.workdir)
    ours, bare, windows = [], [], []
    try:
        for _ in range(repeats):  # interleaved: machine noise hits both sides alike
            result, _w = _drain(ctx, standin, n, POLICIES["resend"])
            bare.append(result)
            result, w = _drain(ctx, standin, n, POLICIES["hold"])
            ours.append(result)
            windows += w
    finally:
        standin.stop()
    rate, base = median([d.rate for d in ours]), median([d.rate for d in bare])
    cpu, base_cpu = median([d.cpu_us for d in ours]), median([d.cpu_us for d in bare])
    setup = f"{n:,} events, 0 ms API, 1 process threads x{CONCURRENCY}, median of {repeats}"
    return [
        Row("in-doubt bookkeeping: throughput", rate, "events/s", base,
            "same worker, no send records (resend)", goal=">= 0.95x baseline",
            met=rate >= 0.95 * base, note=setup),
        Row("in-doubt bookkeeping: CPU per event", cpu, "us", base_cpu,
            "same worker, no send records (resend)", note=setup),
        Row("window: API answer -> ledger written, p50", median(windows), "ms",
            note=f"{len(windows):,} deliveries, from the worker's log lines"),
        Row("window: API answer -> ledger written, p99", percentile(windows, 99), "ms",
            note="a SIGKILL inside this window leaves the send in doubt"),
    ]


def _policy_rows(ctx: BenchContext) -> list[Row]:
    events = 600 if ctx.quick else 1_500
    rows = []
    processes: list[ManagedProcess] = []

    def make_process(argv, *, env=None, name=None, **_kw) -> ManagedProcess:
        proc = ManagedProcess(argv, env=env, cwd=ROOT, name=name, log_dir=ctx.workdir)
        processes.append(proc)
        return proc.start()

    for policy, env in POLICIES.items():
        standin = RemoteStandIn(make_process)
        try:
            run = run_kills(f"bench {policy}", redis_url=ctx.redis_url,
                            namespace="bk" + secrets.token_hex(4), standin=standin,
                            make_process=make_process, events=events, budget_s=300,
                            p_stall=0.05, env_overrides=env)
        finally:
            standin.stop()
            for proc in reversed(processes):
                if proc.started:
                    proc.terminate(timeout=10)
            processes.clear()
        r = run.report
        lookups = run.counters.get("in_doubt:lookups", 0)
        per = lookups / r.in_doubt_sends if r.in_doubt_sends else 0.0
        note = (f"{events:,} events, {run.kills} kills, 5% stalls; in-doubt sends "
                f"{r.in_doubt_sends}, lost {len(r.missing)}, held {r.held}, "
                f"lookups/in-doubt {per:.2f}, drained in {run.elapsed_s:.0f}s")
        goal = "0 twice, 0 lost" if policy != "resend" else "counted, 0 lost"
        met = not r.missing and (policy == "resend" or r.duplicates == 0)
        rows.append(Row(f"in doubt, policy {policy}: recorded twice", len(r.duplicate_ids),
                        "events", goal=goal, met=met, note=note))
    return rows


def run(ctx: BenchContext) -> list[Row]:
    return _policy_rows(ctx) + _cost_rows(ctx)
