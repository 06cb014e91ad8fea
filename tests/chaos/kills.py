"""The kill scenario shared by the chaos tests and the in-doubt benchmark: two worker processes,
one of them SIGKILLed every ~2 s and restarted at once, optionally with a share of the API's
answers stalled past the read timeout (the stand-in records those events on arrival)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from tests.chaos.accounting import (
    Report,
    account,
    answer_after_timeout,
    answer_during_kill,
    answer_not_in_ledger,
)
from tests.chaos.harness import Workers, chaos_env, enqueue, scenario, wait_until_accounted
from tests.chaos.redelivery import RedeliveryProbe
from voucherify_ingest.indoubt import OUTCOME_COUNTERS
from voucherify_ingest.stats import StatsRecorder

KILL_EVERY_S = 2.0
# The API's answer time: 2 workers x CONCURRENCY requests in flight then cap the drain at
# ~320 events/s, so the backlog outlasts several kills however little CPU a worker spends per
# event (with a 0 ms stand-in, 5,000 events drained in under 6 s: only two kills).
API_LATENCY_S = 0.05
# The shortest visibility timeout these timeouts allow (2 x (1 + 2 + 2) + 5, see Settings).
VISIBILITY_S = 15
READ_TIMEOUT_S = 2.0  # tests.support.pipeline.make_env's
CONCURRENCY = 8


@dataclass
class KillRun:
    report: Report
    done: bool
    kills: int
    probe: RedeliveryProbe
    counters: dict[str, int] = field(default_factory=dict)
    standin_stats: dict = field(default_factory=dict)
    held_ids: list[str] = field(default_factory=list)
    dead_reasons: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


def run_kills(name: str, *, redis_url: str, namespace: str, standin, make_process, events: int,
              budget_s: float, p_stall: float = 0.0, env_overrides: dict | None = None
              ) -> KillRun:
    standin.set_latency(API_LATENCY_S)
    if p_stall:
        standin.set_chaos(p_stall=p_stall, stall_s=READ_TIMEOUT_S + 1.0)
    env = chaos_env(
        redis_url, namespace, standin.url,
        VOUCHERIFY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
        VOUCHERIFY_RESTORE_INTERVAL_S="1",
        **(env_overrides or {}),
    )
    started = time.monotonic()
    with (
        scenario(env) as (producer, outcomes),
        RedeliveryProbe(redis_url, outcomes.keys.unacked_index) as probe,
    ):
        workers = Workers(make_process, env, concurrency=CONCURRENCY)
        ids = enqueue(producer, events)
        workers.start("a")
        workers.start("b")
        deadline = time.monotonic() + budget_s
        victims = ["a", "b"]
        kills: list[tuple[float, float]] = []  # (just before SIGKILL, kill returned)
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY_S)
            pending = outcomes.pending()
            if pending["queued"] == 0 and pending["delayed"] == 0:
                break  # the backlog is drained: stop killing, let the stranded come back
            victim = victims[probe.kills % 2]
            workers.wait_ready(victim)  # kill a consuming worker, not one still starting
            before = time.time()
            probe.killed(before)
            workers.kill(victim)
            kills.append((before, time.time()))
            workers.start(victim, wait=False)

        done = wait_until_accounted(
            ids, standin, outcomes, deadline - time.monotonic(),
            also=lambda: probe.outstanding() == 0,
        )
        elapsed = time.monotonic() - started
        # Stalled answers still in flight land within one stall; a resend would come sooner.
        time.sleep(READ_TIMEOUT_S + 1.5 if p_stall else 1.0)
        received = standin.received()
        dead = outcomes.dead_lettered_ids()
        entries = [outcomes.dlq.get(i) for i in dead]
        held = [e["id"] for e in entries if e and e.get("reason") == "in_doubt"]
        reasons: dict[str, int] = {}
        for entry in entries:
            if entry:
                reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
        not_in_ledger = answer_not_in_ledger(received, workers.every_output())
        stalled = answer_after_timeout()
        report = account(name, ids, received, dead, held_ids=held,
                         in_doubt=lambda r: stalled(r) or not_in_ledger(r))
        report.extra["200s answered within a kill window (timing estimate, for comparison)"] = sum(
            1 for r in received if r.status == 200 and answer_during_kill(kills)(r))
        report.extra["redelivery after SIGKILL"] = probe.summary()
        report.extra["settings"] = (
            f"visibility {VISIBILITY_S} s, restore sweep every 1 s, {events} events, "
            f"{len(kills)} kills, {p_stall:.0%} answers stalled past the read timeout, "
            f"{env_overrides or {}}"
        )
        client = redis.Redis.from_url(redis_url)
        try:
            raw = client.hgetall(StatsRecorder(namespace).counters_key)
        finally:
            client.close()
        counters = {k.decode(): int(v) for k, v in raw.items()}
        report.extra["in-doubt outcomes (worker counters)"] = {
            name: counters.get(name, 0) for name in OUTCOME_COUNTERS}
        stats = standin.stats()
        report.extra["lookups answered by the stand-in"] = stats.get("lookups", 0)
        return KillRun(report, done, len(kills), probe, counters, stats, held, reasons, elapsed)
