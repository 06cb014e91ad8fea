"""The API misbehaves: 10% 503, 5% stalls past the read timeout, 2% dropped connections, and a
429 storm every few seconds, with the shared rate limiter on. Everything must arrive, once:
the stalled requests (processed by the API, answered too late for the worker) and the dropped
ones (not processed) are in doubt, and the ``verify`` policy looks each up before resending.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.accounting import account, answer_after_timeout
from tests.chaos.harness import (
    Workers,
    chaos_env,
    drain_budget_s,
    enqueue,
    event_count,
    scenario,
    wait_until_accounted,
)
from tests.support.pipeline import wait_quiet
from voucherify_ingest.indoubt import LOOKUPS, VERIFIED_ABSENT, VERIFIED_DELIVERED
from voucherify_ingest.stats import StatsRecorder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.06, 240))]

READ_TIMEOUT_S = 2.0  # make_env's; the stalls below outlast it
CHAOS = {"p_503": 0.10, "p_stall": 0.05, "p_drop": 0.02, "stall_s": READ_TIMEOUT_S + 1.0}
STORM_EVERY_S = 6.0
STORM_S = 1.5


def test_api_chaos_and_429_storms(
    redis_url, namespace, remote_standin, make_process, chaos_events, chaos_report
):
    standin = remote_standin
    env = chaos_env(
        redis_url, namespace, standin.url,
        # The shared limiter is on (a high pace: only its 429 cool-down matters here).
        VOUCHERIFY_RATE_LIMIT="2000/s,burst=100",
        VOUCHERIFY_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        VOUCHERIFY_IN_DOUBT="verify",
        VOUCHERIFY_EVENT_ID_METADATA_KEY="ingest_event_id",
        VOUCHERIFY_IN_DOUBT_GRACE_S="3",
    )
    with scenario(env) as (producer, outcomes):
        # The default 16 deliveries per worker: a stalled request holds a thread for 2 s.
        workers = Workers(make_process, env, concurrency=16)
        ids = enqueue(producer, chaos_events)
        standin.set_chaos(**CHAOS)
        workers.start("a")
        workers.start("b")
        budget = drain_budget_s(chaos_events, 0.05, 120)
        deadline = time.monotonic() + budget
        storms = 0
        while time.monotonic() < deadline and outcomes.pending()["queued"] > 0:
            standin.refuse_for(STORM_S, retry_after_s=1)
            storms += 1
            time.sleep(STORM_EVERY_S)
        assert storms >= 2, "the queue drained before the 429 storms: proves nothing"

        done = wait_until_accounted(ids, standin, outcomes, deadline - time.monotonic())
        # Stalled answers still in flight keep their message unacked: wait until none is.
        wait_quiet(outcomes.redis, outcomes.settings, timeout=60)
        received = standin.received()
        report = account("API chaos + 429 storms", ids, received, outcomes.dead_lettered_ids(),
                         in_doubt=answer_after_timeout())
        counters = {k.decode(): int(v) for k, v in outcomes.redis.hgetall(
            StatsRecorder(outcomes.settings.key_prefix).counters_key).items()}
        report.extra["in-doubt outcomes"] = {
            name: counters.get(name, 0) for name in (VERIFIED_DELIVERED, VERIFIED_ABSENT, LOOKUPS)}
        outcomes_seen = {}
        for record in received:
            outcomes_seen[record.outcome] = outcomes_seen.get(record.outcome, 0) + 1
        report.extra["stand-in outcomes"] = dict(sorted(outcomes_seen.items()))
        report.extra["429 storms"] = f"{storms} x {STORM_S:g} s, every {STORM_EVERY_S:g} s"
        chaos_report(report)
        assert done, f"not all accounted for within {budget:.0f}s: {outcomes.pending()}"
        report.check()
        for kind in ("chaos_503", "chaos_stall", "chaos_drop", "refused"):
            assert outcomes_seen.get(kind), f"no {kind} happened: the scenario proves less"
        assert report.dead_lettered == 0, "an event used up its 8 retries, or was held"
        assert counters.get(VERIFIED_DELIVERED) and counters.get(VERIFIED_ABSENT)
        assert workers.all_running()
